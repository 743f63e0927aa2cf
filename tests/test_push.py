"""Pushing trained models to the Hugging Face Hub (vitkit/push.py), offline: the folder `push_to_hub` uploads
(written by `save_for_hub` / `vitkit push --dry-run`) for a real one-epoch `vitkit train` run, its model card
read back by huggingface_hub, the folder loaded back by vitkit and by timm to the same outputs, and the errors
raised before anything is uploaded."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import vitkit
from vitkit.push import PushError, read_run, save_for_hub, training_command
from vitkit.train import TrainConfig, apply_overrides, train

hf = pytest.importorskip("huggingface_hub")
timm = pytest.importorskip("timm")

REPO = "someone/vit-digits"
FILES = {"config.json", "model.safetensors", "README.md"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """One epoch of the default `vitkit train` run (a ViT on the digits), on a third of the train split."""
    out = tmp_path_factory.mktemp("run") / "digits"
    cfg = TrainConfig()
    apply_overrides(
        cfg,
        [
            "--sched.epochs=1",
            "--sched.warmup_epochs=0",
            "--data.train_fraction=0.3",
            "--run.progress=false",
            "--run.tensorboard=false",
            "--run.threads=1",
            "--model.overrides.drop_path_rate=0.1",
        ],
    )
    cfg.run.out = str(out)
    train(cfg)
    return out


@pytest.fixture(scope="module")
def hub_dir(run_dir, tmp_path_factory) -> Path:
    model = vitkit.from_pretrained(run_dir / "model")
    return save_for_hub(model, tmp_path_factory.mktemp("hub") / "folder", run_dir=run_dir, repo_id=REPO)


def images(model, n=3) -> torch.Tensor:
    c = model.config.in_chans
    h, w = vitkit.layers.to_2tuple(model.config.img_size)
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(0))


def randomised(model: nn.Module) -> nn.Module:
    """Every weight drawn at random (heads are zero-initialised by design): outputs tell weights apart."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


# ============================================================================ the folder of a trained run
def test_folder_holds_config_weights_and_card(hub_dir, run_dir):
    assert {p.name for p in hub_dir.iterdir()} == FILES
    assert not [p for p in hub_dir.parent.iterdir() if p.name.startswith(".")]  # no staging folder left behind
    card = hf.ModelCard.load(hub_dir / "README.md")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    data = card.data
    assert data.library_name == "timm"  # timm loads it (below), so the Hub shows timm's snippet
    assert {"vitkit", "timm", "image-classification", "vit"} <= set(data.tags)
    assert data.license == "apache-2.0" and data.pipeline_tag == "image-classification"
    assert data.metrics == ["accuracy"] and data.datasets is None  # the digits have no Hub dataset id
    top1, top5 = data.eval_results
    assert (top1.metric_type, top1.metric_value, top1.dataset_split) == ("accuracy", metrics["test_acc"], "test")
    assert (top5.metric_type, top5.metric_value) == ("top_5_accuracy", metrics["test_top5"])
    assert data.model_name == "vit-digits"
    text = card.text
    model = vitkit.from_pretrained(run_dir / "model")
    assert f"**Parameters:** {sum(p.numel() for p in model.parameters()):,}" in text
    assert "**Image size:** 1 x 8 x 8" in text and "**Classes:** 10 (0, 1, 2" in text
    assert f"| test top-1 accuracy | {metrics['test_acc']}% |" in text
    assert f'vitkit.from_pretrained(snapshot_download("{REPO}"))' in text
    assert f'timm.create_model("hf-hub:{REPO}", pretrained=True)' in text


def test_card_training_command_reproduces_the_run_config(hub_dir, run_dir):
    """The command in the card, parsed as `vitkit train` parses it, gives back the run's config.yaml."""
    command = hf.ModelCard.load(hub_dir / "README.md").text.split("```bash\n")[1].split("\n```")[0]
    assert command.startswith("vitkit train ") and "--sched.epochs=1 " in command
    assert "--model.overrides.drop_path_rate=0.1" in command and "run.out" not in command
    rebuilt = apply_overrides(TrainConfig(), shlex.split(command)[2:]).to_dict()
    saved = read_run(run_dir).config
    for key in ("out", "progress", "tensorboard"):  # bookkeeping, left out of the command
        rebuilt["run"].pop(key), saved["run"].pop(key)
    assert rebuilt == saved


def test_training_command_round_trips_awkward_values():
    cfg = TrainConfig()
    apply_overrides(
        cfg,
        [
            "--optim.betas=[0.9, 0.95]",
            "--data.data_dir=/data/my images",
            "--run.precision=auto",
            "--optim.clip_grad=1.0",
            "--model.name=deit_tiny_patch16_224",
            "--optim.lr=1e-3",
        ],
    )
    command = training_command(cfg.to_dict())
    assert apply_overrides(TrainConfig(), shlex.split(command)[2:]).to_dict() == cfg.to_dict()
    assert training_command(TrainConfig().to_dict()) == "vitkit train"


def test_folder_loads_back_in_vitkit_to_identical_outputs(hub_dir, run_dir):
    original = vitkit.from_pretrained(run_dir / "model")
    loaded = vitkit.from_pretrained(hub_dir)
    assert loaded.model_name == original.model_name == "vit_micro_patch2_8"
    assert loaded.pretrained_cfg == original.pretrained_cfg and loaded.config == original.config
    x = images(original)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), original(x), atol=0, rtol=0)


def test_folder_loads_in_timm_to_the_same_outputs(hub_dir, run_dir):
    cfg = json.loads((hub_dir / "config.json").read_text())
    assert cfg["architecture"] == "vit_base_patch16_224" and cfg["vitkit"]["model_name"] == "vit_micro_patch2_8"
    assert cfg["model_args"]["embed_dim"] == 64 and "drop_path_rate" not in cfg["model_args"]
    assert cfg["pretrained_cfg"]["input_size"] == [1, 8, 8] and cfg["label_names"] == [str(i) for i in range(10)]
    ref = timm.create_model(f"local-dir:{hub_dir}", pretrained=True).eval()
    ours = vitkit.from_pretrained(run_dir / "model")
    assert tuple(ref.pretrained_cfg["mean"]) == pytest.approx(ours.pretrained_cfg["mean"])
    x = images(ours)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), ours(x), atol=1e-5, rtol=1e-5)


# ============================================================================ other models
@pytest.mark.parametrize(
    "name, overrides",
    [
        ("vit_tiny_patch16_224", dict(img_size=32, patch_size=8, depth=2, num_classes=5, global_pool="avg")),
        ("deit_tiny_distilled_patch16_224", dict(img_size=32, depth=2, num_classes=5)),
        ("mixer_s32_224", dict(img_size=64, num_classes=5)),  # timm's factory fixes the depth (num_blocks)
    ],
)
def test_timm_named_models_load_in_timm_and_vitkit(name, overrides, tmp_path):
    model = randomised(vitkit.create_model(name, **overrides))
    folder = save_for_hub(model, tmp_path / "hub")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == name and cfg["num_classes"] == 5
    x = images(model)
    ref = timm.create_model(f"local-dir:{folder}", pretrained=True).eval()
    back = vitkit.from_pretrained(folder)
    with torch.no_grad():
        torch.testing.assert_close(ref(x), model(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(x), model(x), atol=0, rtol=0)


def test_settings_timm_lacks_give_a_vitkit_only_folder(tmp_path):
    """A LayerNorm eps timm's ViT cannot take: config.json is save_pretrained's, and the card says vitkit only."""
    model = randomised(vitkit.create_model("vit_tiny_patch16_224", img_size=32, depth=2, num_classes=5, norm_eps=1e-3))
    folder = save_for_hub(model, tmp_path / "hub")
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architecture"] == "vit" and "vitkit" not in cfg and "model_args" not in cfg
    card = hf.ModelCard.load(folder / "README.md")
    assert card.data.library_name == "vitkit" and "timm" not in card.data.tags and "timm.create_model" not in card.text
    assert card.data.eval_results is None  # no run: no results claimed
    with pytest.raises(ValueError, match="cannot write a timm-loadable folder.*norm_eps"):
        save_for_hub(model, tmp_path / "strict", timm_compatible=True)
    assert not (tmp_path / "strict").exists()
    x = images(model)
    with torch.no_grad():
        torch.testing.assert_close(vitkit.from_pretrained(folder)(x), model(x), atol=0, rtol=0)


def test_family_timm_lacks(tmp_path):
    model = randomised(vitkit.create_model("cvt_micro_28", num_classes=4))
    folder = save_for_hub(model, tmp_path / "hub", model_card={"license": "mit", "tags": ["cvt-demo"]})
    assert json.loads((folder / "config.json").read_text())["architecture"] == "cvt"
    card = hf.ModelCard.load(folder / "README.md")
    assert card.data.license == "mit" and "cvt-demo" in card.data.tags
    x = images(model)
    with torch.no_grad():
        torch.testing.assert_close(vitkit.from_pretrained(folder)(x), model(x), atol=0, rtol=0)


def test_save_for_hub_replaces_its_own_folder_and_refuses_others(run_dir, tmp_path):
    model = vitkit.from_pretrained(run_dir / "model")
    folder = save_for_hub(model, tmp_path / "hub", model_card="---\nlicense: mit\n---\n# first\n")
    assert hf.ModelCard.load(folder / "README.md").text.strip() == "# first"
    save_for_hub(model, folder)  # a folder save_for_hub wrote: replaced whole
    assert "# first" not in (folder / "README.md").read_text()
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="notes.txt.*new or empty directory"):
        save_for_hub(model, other)
    assert [p.name for p in other.iterdir()] == ["notes.txt"]


# ============================================================================ pushing: errors before any upload
def test_push_to_hub_offline_raises_before_uploading(run_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = vitkit.from_pretrained(run_dir / "model")
    with pytest.raises(PushError, match=r"HF_HUB_OFFLINE=1.*vitkit push --dry-run"):
        model.push_to_hub(REPO, token="hf_not_a_real_token")


def test_push_without_a_token_exits_2_with_one_line(run_dir, tmp_path):
    """No offline switch and no token anywhere (a fresh HF_HOME): the token check stops it, no request made."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    }
    env.update(HF_HOME=str(tmp_path / "hf_home"), OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-m", "vitkit.cli", "push", str(run_dir), REPO],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Hugging Face token" in lines[0] and "hf auth login" in lines[0], r.stderr


# ============================================================================ vitkit push
def test_cli_dry_run_writes_the_folder(run_dir, tmp_path, capsys):
    from vitkit.cli import main

    out = tmp_path / "dry"
    assert main(["push", str(run_dir), REPO, "--dry-run", str(out), "--license", "cc-by-4.0"]) == 0
    assert {p.name for p in out.iterdir()} == FILES
    assert "nothing uploaded" in capsys.readouterr().out
    assert hf.ModelCard.load(out / "README.md").data.license == "cc-by-4.0"
    # RUN/model also finds its run: same card metrics
    assert main(["push", str(run_dir / "model"), REPO, "--local-dir", str(out), "--no-timm"]) == 0
    assert json.loads((out / "config.json").read_text())["architecture"] == "vit"
    assert (
        hf.ModelCard.load(out / "README.md").data.eval_results[0].metric_value
        == json.loads((run_dir / "metrics.json").read_text())["test_acc"]
    )


def test_cli_not_a_run_directory_exits_2_with_one_line(tmp_path, capsys):
    from vitkit.cli import main

    (tmp_path / "empty").mkdir()
    assert main(["push", str(tmp_path / "empty"), REPO, "--dry-run", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "neither a run directory" in err[0] and "vitkit train" in err[0]
    assert not (tmp_path / "out").exists()


def test_cli_bad_repo_id_exits_2_before_writing(run_dir, tmp_path, capsys):
    from vitkit.cli import main

    assert main(["push", str(run_dir), "my models/vit", "--dry-run", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'my models/vit' is not a Hugging Face Hub repository id" in err[0]
    assert not (tmp_path / "out").exists()
    model = vitkit.from_pretrained(run_dir / "model")
    with pytest.raises(ValueError, match="'a/b/c' is not a Hugging Face Hub repository id"):
        model.push_to_hub("a/b/c", token="hf_not_a_real_token")  # refused before the Hub is contacted


def test_without_huggingface_hub_the_error_says_what_to_install(run_dir, tmp_path, monkeypatch, capsys):
    from vitkit.cli import main

    model = vitkit.from_pretrained(run_dir / "model")
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what `import huggingface_hub` meets uninstalled
    with pytest.raises(ImportError, match=r'pip install "vitkit\[hub\]"'):
        model.push_to_hub(REPO)
    assert main(["push", str(run_dir), REPO, "--dry-run", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install "vitkit[hub]"' in err[0]
    assert not (tmp_path / "out").exists()


def test_finetune_reads_a_pushed_backbone(tmp_path):
    """`vitkit train --finetune FOLDER` on a folder downloaded from the Hub takes its model, as from RUN/backbone."""
    from vitkit.train.pretrain import finetune_settings

    backbone = randomised(
        vitkit.create_model(
            "vit_tiny_patch16_224", img_size=32, depth=2, num_classes=0, global_pool="avg", class_token=False
        )
    )
    folder = save_for_hub(backbone, tmp_path / "hub")
    assert "vitkit" in json.loads((folder / "config.json").read_text())  # timm's keys at the top level
    cfg = TrainConfig()
    finetune_settings(cfg, folder)
    assert cfg.model.name == "vit_tiny_patch16_224" and cfg.model.pretrained == str(folder)
    assert cfg.model.overrides["global_pool"] == "avg" and cfg.model.overrides["class_token"] is False

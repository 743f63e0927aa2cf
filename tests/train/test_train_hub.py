"""Fine-tuning Hub weights from the command line, offline: `vitkit train --model.name=NAME.TAG
--model.pretrained=true` (and `hf-hub:ORG/NAME`) loads the weights through huggingface_hub's cache and
the run keeps the checkpoint's preprocessing (mean, std, crop, interpolation) in its saved model.

The Hub cache holds tiny timm ViTs saved by timm's `save_for_hf` (tests/hub_helpers.py) under the repo
ids the names resolve to; a learning rate of 1e-12 leaves the fine-tuned backbone at the loaded
weights, so comparing it with timm's model proves which weights were loaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vitkit
from hub_helpers import offline_hub_cache, put_in_cache, timm_saved
from vitkit.cli import main
from vitkit.train import TrainConfig, apply_overrides

pytest.importorskip("huggingface_hub")
pytest.importorskip("timm")

TAG = "vit_small_patch16_224.augreg_in21k"
TINY = dict(embed_dim=32, depth=1, num_heads=2, img_size=32)
TINY_FLAGS = [f"--model.overrides.{k}={v}" for k, v in TINY.items() if k != "img_size"]  # the same model on the CLI
RUN = [
    "--sched.epochs=1",
    "--optim.lr=1e-12",
    "--run.batch_size=8",
    "--run.progress=false",
    "--run.tensorboard=false",
    "--run.threads=1",
    "--data.num_workers=0",
    "--data.val_fraction=0",
    "--data.name=folder",
    "--data.img_size=32",
]


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return offline_hub_cache(tmp_path, monkeypatch)


@pytest.fixture
def folder(tmp_path):
    """Two classes of random RGB images (40x36: resized and cropped by the data config)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in ("ants", "bees"):
        (tmp_path / "data" / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(rng.integers(0, 256, (40, 36, 3), dtype=np.uint8)).save(tmp_path / "data" / c / f"{i}.png")
    return tmp_path / "data"


def assert_backbone_is(run, ref):
    saved = vitkit.from_pretrained(run / "model").state_dict()
    theirs = ref.state_dict()
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "pos_embed", "norm.weight"):
        torch.testing.assert_close(saved[key], theirs[key], atol=1e-6, rtol=0)


@pytest.mark.parametrize("pretrained", ["true", "True", "'true'"])
def test_pretrained_true_is_a_bool(pretrained):
    cfg = apply_overrides(TrainConfig(), [f"--model.pretrained={pretrained}"])
    assert cfg.model.pretrained is True
    assert apply_overrides(TrainConfig(), ["--model.pretrained=false"]).model.pretrained is False
    assert apply_overrides(TrainConfig(), ["--model.pretrained=runs/x"]).model.pretrained == "runs/x"
    with pytest.raises(ValueError, match="expects true, false or the path of a checkpoint"):
        apply_overrides(TrainConfig(), ["--model.pretrained=3"])


def test_finetune_a_tag_from_the_hub(hub_cache, tmp_path, folder, capsys):
    ref, saved = timm_saved(tmp_path, TAG, safe_serialization=True, **TINY)
    put_in_cache(hub_cache, f"timm/{TAG}", saved)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                f"--model.name={TAG}",
                "--model.pretrained=true",
                *TINY_FLAGS,
                f"--data.data_dir={folder}",
                *RUN,
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert_backbone_is(run, ref)
    model = vitkit.from_pretrained(run / "model")
    cfg, theirs = model.pretrained_cfg, ref.pretrained_cfg
    assert tuple(cfg["mean"]) == theirs["mean"] == (0.5, 0.5, 0.5) and tuple(cfg["std"]) == theirs["std"]
    assert cfg["crop_pct"] == theirs["crop_pct"] == 0.9 and cfg["interpolation"] == theirs["interpolation"]
    assert model.num_classes == 2 and cfg["label_names"] == ["ants", "bees"]
    assert (run / "config.yaml").read_text().count("pretrained: true") == 1  # a bool, not the string 'True'


def test_finetune_an_hf_hub_repo(hub_cache, tmp_path, folder, capsys):
    stats = dict(mean=(0.4, 0.3, 0.2), std=(0.2, 0.25, 0.3), crop_pct=0.8)
    ref, saved = timm_saved(
        tmp_path, "vit_base_patch16_224", safe_serialization=True, pretrained_cfg_overlay=stats, **TINY
    )
    put_in_cache(hub_cache, "someone/tiny-vit", saved)
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--out",
                str(run),
                "--model.name=hf-hub:someone/tiny-vit",
                "--model.pretrained=true",
                f"--data.data_dir={folder}",
                *RUN,
            ]
        )
        == 0
    ), capsys.readouterr().err
    assert_backbone_is(run, ref)
    cfg = vitkit.from_pretrained(run / "model").pretrained_cfg
    assert (tuple(cfg["mean"]), tuple(cfg["std"]), cfg["crop_pct"]) == (stats["mean"], stats["std"], 0.8)


def test_pretrain_from_a_tag(hub_cache, tmp_path, folder, capsys):
    """`vitkit pretrain` takes the same model settings: a tagged backbone starts from its Hub weights and the
    run's backbone keeps the checkpoint's statistics."""
    ref, saved = timm_saved(tmp_path, TAG, safe_serialization=True, **TINY)
    put_in_cache(hub_cache, f"timm/{TAG}", saved)
    run = tmp_path / "pre"
    assert (
        main(
            [
                "pretrain",
                "dino",
                "--out",
                str(run),
                f"--model.name={TAG}",
                "--model.pretrained=true",
                *TINY_FLAGS,
                f"--data.data_dir={folder}",
                *RUN,
            ]
        )
        == 0
    ), capsys.readouterr().err
    cfg = vitkit.from_pretrained(run / "backbone").pretrained_cfg
    assert tuple(cfg["mean"]) == (0.5, 0.5, 0.5) and tuple(cfg["std"]) == (0.5, 0.5, 0.5)


def test_clear_errors_before_any_data_is_read(capsys, tmp_path):
    def error(*argv):
        assert main(["train", "--out", str(tmp_path / "run"), *argv]) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "unknown pretrained tag 'nope'" in error("--model.name=vit_small_patch16_224.nope")
    assert "knows no weights for 'vit_micro_patch2_8'" in error("--model.pretrained=true")
    assert "does not exist" in error(f"--model.pretrained={tmp_path / 'missing'}")
    assert not (tmp_path / "run").exists()  # refused by the settings check, before the run directory is made
    # hf:ORG/NAME is a dataset source: past the name check, to the loader (offline: not in the cache)
    err = error("--data.name=hf:someone/not-cached")
    assert "is not a dataset vitkit reads" not in err and "someone/not-cached" in err

"""The pre-training loop (vitkit/train/pretrain.py) for real on the scikit-learn digits at tiny
size: a run of each method, its outputs, resume, 2 processes under torchrun, fine-tuning from
the pre-trained backbone, the CLI."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.train import TrainConfig, apply_overrides, train
from vitkit.train.pretrain import finetune_settings, pretrain, pretrain_config

pytest.importorskip("sklearn")
TINY = [
    "--model.overrides.depth=1",
    "--model.overrides.embed_dim=32",
    "--model.overrides.num_heads=2",
    "--run.progress=false",
    "--run.threads=1",
    "--data.num_workers=0",
    "--run.batch_size=256",
]


def run(method, out, *overrides):
    return pretrain(pretrain_config(method, overrides=[f"--run.out={out}", *TINY, *overrides]))


@pytest.mark.parametrize("method", ["mae", "mpp"])
def test_pretrain_run_outputs(tmp_path, method):
    m = run(method, tmp_path / "r", "--sched.epochs=2")
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert "feature_std" in rows[0] and rows[0]["feature_std"] > 0  # the collapse monitor
    assert m["processes"] == 1 and (tmp_path / "r" / "curves.png").is_file()
    backbone = vitkit.from_pretrained(tmp_path / "r" / "backbone")
    assert backbone.num_classes == 0 and backbone.pretrained_cfg["dataset"] == "digits"
    if method == "mae":
        assert (tmp_path / "r" / "reconstruction.png").is_file()
        assert isinstance(vitkit.from_pretrained(tmp_path / "r" / "model"), vitkit.methods.mae.MaskedAutoencoder)


class Stop(BaseException):
    """A simulated kill (nothing catches a BaseException)."""


def test_resume_gives_the_same_weights(tmp_path, monkeypatch):
    """A run stopped after its first epoch's checkpoint and resumed ends with the weights of an uninterrupted
    one (inside an epoch and for DINO's schedules too: tests/train/test_run_safety.py)."""
    import vitkit.train.runner as runner

    run("mae", tmp_path / "full", "--sched.epochs=2")

    def stop(run_dir, history):
        raise Stop

    with monkeypatch.context() as m:
        m.setattr(runner, "write_history", stop)  # right after the first checkpoint
        with pytest.raises(Stop):
            run("mae", tmp_path / "part", "--sched.epochs=2")
    run("mae", tmp_path / "part", "--sched.epochs=2", "--run.resume=true")
    a = load_file(str(tmp_path / "full" / "checkpoint" / "method.safetensors"))
    b = load_file(str(tmp_path / "part" / "checkpoint" / "method.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=0, rtol=0)


SMALL_DINO = [
    '--method.options={"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_local": 2}',
    "--data.train_fraction=0.1",
    "--run.batch_size=32",
]


@pytest.mark.parametrize(
    ("method", "extra"), [("mae", []), ("mpp", []), ("dino", SMALL_DINO)], ids=["mae", "mpp", "dino"]
)
def test_kept_gradients_pretrain_as_set_to_none(tmp_path, method, extra):
    """On CPU the loop keeps the gradients from step to step (allocator.KeptGradients): the same weights as
    setting them to None (DINO: with its frozen teacher and its last layer's gradient cancelled for the first
    1% of the steps; parameters without a gradient: tests/test_allocator.py)."""
    run(method, tmp_path / "kept", "--sched.epochs=1", *extra)
    run(method, tmp_path / "fresh", "--sched.epochs=1", *extra, "--run.reuse_cpu_memory=false")
    a = load_file(str(tmp_path / "kept" / "checkpoint" / "method.safetensors"))
    b = load_file(str(tmp_path / "fresh" / "checkpoint" / "method.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("method", ["mae", "mpp"])  # DINO and MSN: tests/methods/test_msn.py
def test_torchrun_two_processes(tmp_path, method):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vitkit.cli",
        "pretrain",
        method,
        f"--run.out={tmp_path / 'ddp'}",
        *TINY,
        "--sched.epochs=1",
    ]
    res = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    m = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert m["processes"] == 2 and m["final_loss"] == m["final_loss"]  # not NaN
    assert vitkit.from_pretrained(tmp_path / "ddp" / "backbone").embed_dim == 32


def test_finetune_from_the_pretrained_backbone(tmp_path):
    run("mpp", tmp_path / "pre", "--sched.epochs=1")
    cfg = apply_overrides(
        TrainConfig(),
        [
            f"--run.out={tmp_path / 'ft'}",
            "--sched.epochs=1",
            "--run.progress=false",
            "--run.threads=1",
            "--data.num_workers=0",
            "--model.overrides.depth=1",
            "--model.overrides.embed_dim=32",
            "--model.overrides.num_heads=2",
        ],
    )
    finetune_settings(cfg, tmp_path / "pre")
    assert cfg.model.pretrained.endswith("backbone") and cfg.optim.layer_decay == 0.75
    m = train(cfg)
    assert m["test_acc"] > 10
    pre = load_file(str(tmp_path / "pre" / "backbone" / "model.safetensors"))
    ft = vitkit.create_model(
        "vit_micro_patch2_8",
        num_classes=10,
        depth=1,
        embed_dim=32,
        num_heads=2,
        pretrained=tmp_path / "pre" / "backbone",
    )
    torch.testing.assert_close(ft.state_dict()["blocks.0.mlp.fc1.weight"], pre["blocks.0.mlp.fc1.weight"])


def test_cli_and_config_errors(tmp_path):
    from vitkit.cli import main

    assert (
        main(
            [
                "pretrain",
                "mae",
                "--out",
                str(tmp_path / "c"),
                *TINY,
                "--sched.epochs=1",
                "--method.options.mask_ratio=0.5",
            ]
        )
        == 0
    )
    cfg = json.loads((tmp_path / "c" / "backbone" / "config.json").read_text())
    assert cfg["model_name"] == "vit_micro_patch2_8"
    assert main(["pretrain", "nosuch", "--out", str(tmp_path / "d"), *TINY]) == 2
    with pytest.raises(ValueError, match="unknown setting"):
        pretrain_config("mae", overrides=["--method.nosuch=1"])


def test_recipes_parse():
    from pathlib import Path

    recipes = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("pretrain_*.yaml"))
    assert len(recipes) >= 2
    for path in recipes:
        cfg = pretrain_config(None, str(path))
        assert cfg.method.name in vitkit.methods.list_methods()
        assert path.read_text().startswith("# vitkit pretrain ")  # each opens with its command

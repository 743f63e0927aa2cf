"""TensorBoard logging: event files with the per-epoch scalars when installed, nothing otherwise."""

import builtins
import json

import pytest

from vitkit.train import TrainConfig, apply_overrides, train
from vitkit.train.logging import TensorBoardLogger


def _events(run_dir):
    return sorted(run_dir.glob("events.out.tfevents.*"))


def _tiny_run(tmp_path, *extra):
    cfg = apply_overrides(
        TrainConfig(),
        [
            "--model.name=vit_micro_patch2_8",
            "--model.overrides.depth=1",
            "--model.overrides.embed_dim=16",
            "--model.overrides.num_heads=2",
            "--sched.epochs=2",
            "--sched.warmup_epochs=0",
            "--run.batch_size=128",
            f"--run.out={tmp_path / 'run'}",
            "--run.progress=false",
            *extra,
        ],
    )
    return train(cfg), tmp_path / "run"


def test_event_files_hold_the_epoch_scalars(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    metrics, run_dir = _tiny_run(tmp_path)  # the default, --run.tensorboard=auto
    assert len(_events(run_dir)) == 1
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr", "test/acc"} <= tags
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    val = acc.Scalars("accuracy/val")
    assert [e.step for e in val] == [1, 2]
    assert [e.value for e in val] == pytest.approx([r["val_acc"] for r in rows], rel=1e-6)
    assert acc.Scalars("test/acc")[0].value == pytest.approx(metrics["test_acc"], rel=1e-6)


def test_disabled_writes_nothing(tmp_path):
    _, run_dir = _tiny_run(tmp_path, "--run.tensorboard=false")
    assert _events(run_dir) == [] and (run_dir / "metrics.json").is_file()


def test_without_tensorboard(tmp_path, monkeypatch):
    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith(("torch.utils.tensorboard", "tensorboard")):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    auto = TensorBoardLogger(tmp_path, "auto")
    assert not auto.active
    auto.log_epoch({"epoch": 1, "train_loss": 1.0})  # a no-op
    assert _events(tmp_path) == []
    with pytest.raises(ImportError, match="pip install tensorboard"):
        TensorBoardLogger(tmp_path, True)
    with pytest.raises(ValueError, match="auto, true or false"):
        TensorBoardLogger(tmp_path, "sometimes")


def test_only_rank_zero_writes(tmp_path):
    pytest.importorskip("tensorboard")
    other = TensorBoardLogger(tmp_path, "true", main=False)
    assert not other.active
    other.log_epoch({"epoch": 1, "train_loss": 1.0})
    assert _events(tmp_path) == []

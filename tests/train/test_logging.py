"""Run logging: TensorBoard event files when installed, RunLogger's per-step CSV, and Weights & Biases runs
(offline, read back from the file W&B writes)."""

import builtins
import csv
import json
import signal
import struct
import subprocess
import sys

import pytest
import torch

from vitkit.train import TrainConfig, apply_overrides, train
from vitkit.train.config import RunConfig
from vitkit.train.logging import RunLogger, TensorBoardLogger


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


# RunLogger: steps.csv on the main process, TensorBoard, Weights & Biases (offline, read back from its run file)


def _run_cfg(**fields):
    cfg = RunConfig(tensorboard="false")
    for key, value in {"wandb": "false", "log_every": 1, **fields}.items():
        setattr(cfg, key, value)
    return cfg


def _csv_rows(run_dir):
    with open(run_dir / "steps.csv", newline="") as f:
        return list(csv.reader(f))


def test_steps_csv_every_log_every_steps(tmp_path):
    with RunLogger(tmp_path, _run_cfg(log_every=2), main=True, config={}) as log:
        for step in range(1, 8):
            log.log_step(step, {"loss": 1.0 / step, "lr": torch.tensor(0.5 * step)})
        # each row is on disk as soon as it is logged (flushed), before close
        assert [r[0] for r in _csv_rows(tmp_path)] == ["step", "2", "4", "6"]
    rows = _csv_rows(tmp_path)
    assert rows[0] == ["step", "loss", "lr"]
    assert [(int(s), float(a), float(b)) for s, a, b in rows[1:]] == [(2, 0.5, 1.0), (4, 0.25, 2.0), (6, 1 / 6, 3.0)]


def test_a_new_key_adds_a_column(tmp_path):
    with RunLogger(tmp_path, _run_cfg(), main=True) as log:
        log.log_step(1, {"loss": 2.0})
        log.log_step(2, {"loss": 1.5, "grad_norm": 3})
        log.log_step(3, {"grad_norm": 4})
    assert _csv_rows(tmp_path) == [
        ["step", "loss", "grad_norm"],
        ["1", "2.0", ""],
        ["2", "1.5", "3"],
        ["3", "", "4"],
    ]


def test_bad_values_are_clear_errors(tmp_path):
    with RunLogger(tmp_path, _run_cfg(), main=True) as log:
        with pytest.raises(TypeError, match="loss='nan-ish' is not a number"):
            log.log_step(1, {"loss": "nan-ish"})
        with pytest.raises(ValueError, match="first argument"):
            log.log_step(1, {"step": 1})
    with pytest.raises(ValueError, match="log_every must be a positive"):
        RunLogger(tmp_path, _run_cfg(log_every=-1), main=True)
    with pytest.raises(ValueError, match="--run.wandb must be auto, true or false"):
        RunLogger(tmp_path, _run_cfg(wandb="maybe"), main=True)


def test_only_the_main_process_writes_steps(tmp_path):
    with RunLogger(tmp_path, _run_cfg(), main=False) as log:
        log.log_step(1, {"loss": 1.0})
        log.log_epoch({"epoch": 1, "train_loss": 1.0})
        log.truncate(0)
    assert not (tmp_path / "steps.csv").exists()


def test_a_killed_run_keeps_its_rows_and_resume_logs_each_step_once(tmp_path):
    # A process that logs 6 steps and dies without closing anything (SIGKILL: no flush at exit).
    script = (
        "import os, signal, sys\n"
        "from vitkit.train.config import RunConfig\n"
        "from vitkit.train.logging import RunLogger\n"
        "cfg = RunConfig(tensorboard='false')\n"
        "log = RunLogger(sys.argv[1], cfg, main=True, config={})\n"
        "for step in range(1, 7):\n"
        "    log.log_step(step, {'loss': float(step)})\n"
        "log.csv.file.write('7,7.')  # a row cut short by the kill\n"
        "log.csv.file.flush()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert [r[0] for r in _csv_rows(tmp_path)] == ["step", "1", "2", "3", "4", "5", "6", "7"]

    # Resumed from a checkpoint taken after step 4: steps 5 and 6 are done again.
    with RunLogger(tmp_path, _run_cfg(resume=True), main=True) as log:
        log.truncate(4)
        assert [r[0] for r in _csv_rows(tmp_path)] == ["step", "1", "2", "3", "4"]
        for step in range(5, 9):
            log.log_step(step, {"loss": float(step)})
    rows = _csv_rows(tmp_path)
    assert [int(r[0]) for r in rows[1:]] == list(range(1, 9))
    assert [float(r[1]) for r in rows[1:]] == [float(s) for s in range(1, 9)]

    # A file that holds nothing yet (emptied by a full disk, say) resumes as a new one; another CSV is refused.
    (tmp_path / "steps.csv").write_text("")
    with RunLogger(tmp_path, _run_cfg(resume=True), main=True) as log:
        log.truncate(4)
        log.log_step(5, {"loss": 5.0})
    assert _csv_rows(tmp_path) == [["step", "loss"], ["5", "5.0"]]
    (tmp_path / "steps.csv").write_text("epoch,loss\n1,2.0\n")
    with pytest.raises(ValueError, match="not a vitkit steps file"):
        RunLogger(tmp_path, _run_cfg(resume=True), main=True)

    # A new run (not resumed) in the same directory starts the file again.
    with RunLogger(tmp_path, _run_cfg(), main=True) as log:
        log.log_step(1, {"other": 1.0})
    assert _csv_rows(tmp_path) == [["step", "other"], ["1", "1.0"]]


def test_run_logger_writes_tensorboard_steps_and_epochs(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with RunLogger(tmp_path, _run_cfg(tensorboard="true"), main=True) as log:
        for step in (1, 2):
            log.log_step(step, {"loss": float(step)})
        log.log_epoch({"epoch": 1, "train_loss": 0.5, "val_acc": 0.25})
    acc = EventAccumulator(str(tmp_path))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("step/loss")] == [(1, 1.0), (2, 2.0)]
    assert acc.Scalars("accuracy/val")[0].value == 0.25


def _wandb_records(run_dir):
    """The records of each offline W&B run under run_dir/wandb, read from its run-<id>.wandb file: W&B's
    LevelDB-style log (a 7-byte file header, 32 KiB blocks of checksum/length/type chunks) of protobuf Records."""
    from wandb.proto import wandb_internal_pb2

    runs = []
    for path in sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb")):
        data, records, pos, buf = path.read_bytes(), [], 7, b""
        assert data[:4] == b":W&B"
        while pos + 7 <= len(data):
            if 32768 - pos % 32768 < 7:  # a block's tail too short for a chunk header is padding
                pos += 32768 - pos % 32768
                continue
            _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
            chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
            buf = chunk if kind in (1, 2) else buf + chunk  # FULL, FIRST start a record; MIDDLE, LAST continue
            if kind in (1, 4):
                record = wandb_internal_pb2.Record()
                record.ParseFromString(buf)
                records.append(record)
        runs.append(records)
    return runs


def _history(records):
    return [
        {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in r.history.item}
        for r in records
        if r.WhichOneof("record_type") == "history"
    ]


@pytest.fixture
def wandb_offline(monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")


def test_wandb_offline_run_holds_the_steps_epochs_config_and_summary(tmp_path, wandb_offline):
    config = {"optim": {"lr": 0.003}, "model": {"name": "vit_micro_patch2_8"}}
    with RunLogger(tmp_path, _run_cfg(wandb="true", wandb_project="proj"), main=True, config=config) as log:
        assert log.wandb_active
        for step in (1, 2, 3):
            log.log_step(step, {"loss": 1.0 / step})
        log.log_epoch({"epoch": 1, "train_loss": 0.4, "val_acc": 0.75, "note": "text is left out"})
        log.log_final({"test_acc": 0.5, "epochs": 1})
    run_id = (tmp_path / "wandb_id.txt").read_text().strip()
    [records] = _wandb_records(tmp_path)
    [run] = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert (run.run_id, run.project) == (run_id, "proj")
    assert {u.key: json.loads(u.value_json) for u in run.config.update}["optim"] == {"lr": 0.003}
    history = _history(records)
    assert [(h["_step"], h["step/loss"]) for h in history] == [(1, 1.0), (2, 0.5), (3, 1 / 3)]
    assert history[-1]["loss/train"] == 0.4 and history[-1]["accuracy/val"] == 0.75 and history[-1]["epoch"] == 1
    summary = {
        u.key or "/".join(u.nested_key): json.loads(u.value_json)
        for r in records
        if r.WhichOneof("record_type") == "summary"
        for u in r.summary.update
    }
    assert summary["test_acc"] == 0.5

    # --run.resume continues the same W&B run (its id kept in the run directory); a new run gets a new id
    with RunLogger(tmp_path, _run_cfg(wandb="true", resume=True), main=True) as log:
        log.truncate(2)
        log.log_step(3, {"loss": 0.3})
    runs = _wandb_records(tmp_path)
    assert len(runs) == 2
    assert {r.run.run_id for records in runs for r in records if r.WhichOneof("record_type") == "run"} == {run_id}
    with RunLogger(tmp_path, _run_cfg(wandb="true"), main=True):
        pass
    assert (tmp_path / "wandb_id.txt").read_text().strip() != run_id


def test_wandb_auto_and_missing(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    for var in ("WANDB_API_KEY", "WANDB_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with RunLogger(tmp_path, _run_cfg(wandb="auto"), main=True) as log:
        assert not log.wandb_active  # installed, but nowhere to log: auto stays off instead of prompting

    real_import = builtins.__import__

    def no_wandb(name, *args, **kwargs):
        if name == "wandb" or name.startswith("wandb."):
            raise ImportError("No module named 'wandb'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_wandb)
    monkeypatch.setenv("WANDB_MODE", "offline")
    with RunLogger(tmp_path, _run_cfg(wandb="auto"), main=True) as log:
        assert not log.wandb_active
    with pytest.raises(ImportError, match=r"pip install vitkit\[wandb\]"):
        RunLogger(tmp_path, _run_cfg(wandb="true"), main=True)

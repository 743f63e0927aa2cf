"""Runs that never lose work (docs/reliability.md, "Guarantees"), on the real scikit-learn digits at tiny size:
a kill at every file operation of a run, of the checkpoint swap and of its recovery, and of --overwrite's
deletion, a torn write, a full disk, SIGKILL of a real process, two runs into one directory, --overwrite,
resuming with changed settings, NaN weights on the last step of an epoch, and checkpoints inside an epoch
that resume to the same weights (torch.equal) as an uninterrupted run.

A simulated kill raises `Killed`, a BaseException that no code catches: the checkpoint write has no
clean-up step, so the files on disk are what a real kill at that instant leaves (the lock, which the
kernel drops on a real kill, is released on the way out). A real SIGKILL runs in a subprocess."""

import contextlib
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit.train.engine as engine
import vitkit.train.runner as runner
from vitkit.cli import main
from vitkit.train import TrainConfig, TrainingDiverged, apply_overrides, train
from vitkit.train.checkpoint import CheckpointWriteError, RunInUse, RunLock, read_marker, recover

pytest.importorskip("sklearn")
REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--model.overrides.depth=1",
    "--model.overrides.embed_dim=32",
    "--model.overrides.num_heads=2",
    "--run.progress=false",
    "--run.threads=1",
    "--data.num_workers=0",
    "--run.tensorboard=false",
    "--run.batch_size=128",
    "--sched.epochs=2",
]


class Killed(BaseException):
    """A simulated kill."""


@pytest.fixture(autouse=True)
def no_figure(monkeypatch):
    """curves.png (tested in test_train.py) costs 0.8 s of matplotlib per run and is not what is tested here."""
    monkeypatch.setattr(engine, "plot_history", lambda *a, **kw: None)


def args(out, *extra) -> list[str]:
    return [f"--run.out={out}", *TINY, *extra]


def run(out, *extra):
    return train(apply_overrides(TrainConfig(), args(out, *extra)))


def weights(run_dir) -> dict:
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def assert_same(a, b):
    a, b = weights(a), weights(b)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def finish(out, *extra):
    """What a user does after a crash: --resume, or, when the run had no checkpoint yet, start again."""
    try:
        return run(out, *extra, "--run.resume=true")
    except FileNotFoundError as e:
        assert "no checkpoint yet" in str(e) or "no vitkit run" in str(e), e
        return run(out, *extra, "--run.overwrite=true")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs to compare with, by their extra settings."""
    root = tmp_path_factory.mktemp("straight")
    done = {}

    def get(*extra):
        if extra not in done:
            done[extra] = root / f"r{len(done)}"
            run(done[extra], *extra)
        return done[extra]

    return get


# ------------------------------------------------------------------------------------ kills
FILE_OPS = (("os", "replace"), ("os", "fsync"), ("shutil", "rmtree"))


def kill_at(monkeypatch, k: int) -> list:
    """Make the k-th file operation (rename, fsync, directory removal) inside the run's checkpoint writes
    raise `Killed` before it happens (k = -1: count them only). Returns the list of operations seen."""
    seen, inside = [], []
    modules = {"os": os, "shutil": shutil}
    for mod, name in FILE_OPS:
        real = getattr(modules[mod], name)

        def op(*a, _real=real, _name=name, **kw):
            if inside:
                if len(seen) == k:
                    raise Killed(f"{_name} #{k}")
                seen.append(_name)
            return _real(*a, **kw)

        monkeypatch.setattr(modules[mod], name, op)
    real_write = runner.write_checkpoint

    def write(*a, **kw):
        inside.append(1)
        try:
            return real_write(*a, **kw)
        finally:
            inside.clear()

    monkeypatch.setattr(runner, "write_checkpoint", write)
    return seen


def test_a_kill_at_every_file_operation_resumes_to_the_same_weights(tmp_path, monkeypatch, straight):
    """Every rename, fsync and removal in the two checkpoint writes of a 2-epoch run (the first, and the
    second with its full swap): kill just before it, resume (or start again when there was no checkpoint
    yet), and the final weights equal an uninterrupted run's. (Three batches an epoch: the file operations are
    what is tested; every one of them is still there.)"""
    small = ("--data.train_fraction=0.3",)
    with monkeypatch.context() as m:
        ops = kill_at(m, -1)
        run(tmp_path / "count", *small)
    assert ops.count("replace") >= 6 and ops.count("fsync") >= 10, ops
    for k in range(len(ops)):
        out = tmp_path / f"k{k}"
        with monkeypatch.context() as m:
            kill_at(m, k)
            with pytest.raises(Killed):
                run(out, *small)
        markers = [read_marker(out / d) for d in ("checkpoint", ".checkpoint.tmp", ".checkpoint.old")]
        newest = max((m["epoch"] for m in markers if m is not None), default=None)
        recover(out, "state.pt")  # what every start-up does first: no complete checkpoint is lost
        assert (read_marker(out / "checkpoint") or {}).get("epoch") == newest, (k, ops[k])
        finish(out, *small)
        assert_same(out, straight(*small))
        assert not (out / ".checkpoint.tmp").exists() and not (out / ".checkpoint.old").exists()


def test_the_newest_checkpoint_is_found_after_a_kill_between_the_two_renames(tmp_path, monkeypatch, straight, capsys):
    """Killed right after `checkpoint` was moved aside to `.checkpoint.old` and before `.checkpoint.tmp` (the
    newest, complete) was moved in: a restart without --resume deletes nothing (it finishes the swap and
    refuses, pointing at --resume), and the README's `vitkit train --out DIR --resume` continues from the
    newest."""
    out = tmp_path / "run"
    real = os.replace

    def replace(src, dst):
        real(src, dst)
        if str(dst).endswith(".checkpoint.old"):
            raise Killed  # the swap of the second epoch's checkpoint, between its two renames

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(Killed):
            run(out)
    assert not (out / "checkpoint").exists() and read_marker(out / ".checkpoint.tmp")["epoch"] == 2
    assert (out / ".checkpoint.old" / "state.pt").is_file()
    assert main(["train", "--out", str(out), *TINY]) == 2
    assert "holds an unfinished run (checkpoint: " in capsys.readouterr().err
    assert read_marker(out / "checkpoint")["epoch"] == 2 and not (out / ".checkpoint.old").exists()
    assert main(["train", "--out", str(out), "--resume"]) == 0  # the README's form
    assert read_marker(out / "checkpoint")["epoch"] == 2 and not (out / ".checkpoint.old").exists()
    assert_same(out, straight())


def test_a_torn_write_is_never_taken_for_a_checkpoint(tmp_path, monkeypatch, straight):
    """Killed half-way through writing state.pt of the second checkpoint: the torn file stays in
    .checkpoint.tmp without a marker, start-up deletes it and resumes from the first."""
    out = tmp_path / "run"
    real = torch.save
    calls = []

    def torn(obj, path, *a, **kw):
        calls.append(path)
        if len(calls) == 2:
            real(obj, path, *a, **kw)
            size = Path(path).stat().st_size
            with open(path, "r+b") as f:
                f.truncate(size // 2)
            raise Killed("torn")
        return real(obj, path, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", torn)
        with pytest.raises(Killed):
            run(out)
    assert read_marker(out / ".checkpoint.tmp") is None and read_marker(out / "checkpoint")["epoch"] == 1
    run(out, "--run.resume=true")
    assert_same(out, straight())


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, monkeypatch, straight, capsys):
    """The second checkpoint's state.pt hits ENOSPC (injected: the write fails part-way with the errno a full
    disk gives; a real full tmpfs: the next test). The run stops with a message, the first checkpoint is
    intact, the partial one is gone, and --resume (after freeing space) ends with the same weights."""
    out = tmp_path / "run"
    real = torch.save

    def full(obj, path, *a, **kw):
        if obj["epoch"] == 2:
            with open(path, "wb") as f:
                f.write(b"\0" * 1000)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(obj, path, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(torch, "save", full)
        with pytest.raises(CheckpointWriteError, match="disk is full.*previous checkpoint is intact.*--resume"):
            run(out)
        assert main(["train", "--out", str(tmp_path / "cli"), *TINY]) == 2  # the CLI: one line, no traceback
    assert "disk is full" in capsys.readouterr().err
    assert not (out / ".checkpoint.tmp").exists() and read_marker(out / "checkpoint")["epoch"] == 1
    run(out, "--run.resume=true")
    assert_same(out, straight())


def _checkpoint_bytes(run_dir: Path) -> int:
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in (run_dir / "checkpoint").rglob("*") if p.is_file())


def test_a_real_full_disk(tmp_path, straight):
    """A tmpfs (mounted in a user namespace: `unshare -rm`) with room for one checkpoint and a half: the
    second checkpoint write fails (torch.save reports the ENOSPC as a RuntimeError), `vitkit train` exits
    with code 2 and a message, the first checkpoint is intact; copied to a disk with room, --resume ends
    with the uninterrupted weights."""
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-rm", "true"], capture_output=True).returncode:
        pytest.skip("unshare -rm (user namespaces) is not available: the injected ENOSPC test covers this")
    ref = straight()
    size = _checkpoint_bytes(ref) * 3 // 2 + 16 * 4096
    mnt, keep = tmp_path / "mnt", tmp_path / "kept"
    mnt.mkdir()
    cli = f"{sys.executable} -m vitkit.cli train --out {mnt / 'run'} {' '.join(TINY)}"
    script = (
        f"mount -t tmpfs -o size={size} tmpfs {mnt} || exit 77; {cli} 2> {tmp_path / 'err'}; echo $? > "
        f"{tmp_path / 'rc'}; cp -r {mnt / 'run'} {keep}"
    )
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    if res.returncode == 77:
        pytest.skip(f"cannot mount a tmpfs in a user namespace here: {res.stderr.strip()}")
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "2", err[-2000:]
    assert "the disk is full" in err and "Traceback" not in err, err[-2000:]
    assert read_marker(keep / "checkpoint")["epoch"] == 1 and not (keep / ".checkpoint.tmp").exists()
    assert main(["train", "--out", str(keep), "--resume"]) == 0
    assert_same(keep, ref)


def test_sigkill_a_real_run_then_resume_and_the_lock(tmp_path, straight):
    """SIGKILL a real `vitkit train` process inside an epoch (checkpoints every 3 batches); while it runs a
    second run into the same directory is refused, naming its process; after the kill the lock is free and
    `vitkit train --out DIR --resume` ends with the weights of an uninterrupted run."""
    extra = ["--sched.epochs=3", "--run.batch_size=64", "--run.checkpoint_every=3", "--aug.random_erasing=0.5"]
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitkit.cli", "train", *args(out, *extra)],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and read_marker(out / "checkpoint") is None:
            time.sleep(0.005)
        with pytest.raises(RunInUse, match=f"in use by another vitkit run \\(process {proc.pid}\\)"):
            run(out, *extra, "--run.overwrite=true")
        assert main(["train", "--out", str(out), "--resume"]) == 2  # refused too, without a traceback
        if proc.poll() is not None:
            pytest.fail("the run finished before it could be killed; make it longer")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "metrics.json").exists()
    assert main(["train", "--out", str(out), "--resume"]) == 0
    assert_same(out, straight(*extra))


def test_the_lock_is_released_when_the_run_ends_or_fails(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    held = RunLock(out)
    with pytest.raises(RunInUse, match=str(os.getpid())):
        run(out)
    held.release()
    with pytest.raises(TrainingDiverged):  # a run that fails lets go of the lock too
        run(out, "--optim.lr=1e30")
    RunLock(out).release()


def _checkpoint_writer(tag: bytes):
    def write(directory: Path) -> None:
        (directory / "ema").mkdir()
        (directory / "state.pt").write_bytes(tag * 3000)
        (directory / "ema" / "model.safetensors").write_bytes(tag * 700)

    return write


def _contents(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name != "complete.json"
    }


SWAP_OPS = ("replace", "rename", "fsync", "mkdir", "unlink", "rmdir")  # rmtree deletes with unlink and rmdir


def kill_os_at(monkeypatch, k: int) -> list:
    """Make the k-th call of the os functions in SWAP_OPS raise `Killed` before it acts (k = -1: count only):
    a kill in the middle of a directory removal leaves it half removed, as a real one does."""
    seen = []
    for name in SWAP_OPS:
        real = getattr(os, name)

        def op(*a, _real=real, _name=name, **kw):
            if len(seen) == k:
                raise Killed(f"{_name} #{k}")
            seen.append(_name)
            return None if _name == "fsync" else _real(*a, **kw)  # a process kill makes no use of fsync

        monkeypatch.setattr(os, name, op)
    return seen


def test_a_kill_at_every_step_of_the_swap_and_of_its_recovery(tmp_path, monkeypatch):
    """The swap alone, with every step a kill can interrupt, each directory removal file by file: a checkpoint
    replacing an earlier one (and a run's first checkpoint) is killed before each os call, then the start-up
    recovery is killed before each of its own calls, then a recovery runs to its end. Whatever the two kills
    interrupted, the result is one complete checkpoint, and it is the newest that was complete when the
    first kill came; nothing is left in .checkpoint.tmp or .checkpoint.old."""
    from vitkit.train.checkpoint import write_checkpoint

    old_bytes, new_bytes = _checkpoint_writer(b"a"), _checkpoint_writer(b"b")
    (tmp_path / "ref_old").mkdir()
    old_bytes(tmp_path / "ref_old")
    (tmp_path / "ref_new").mkdir()
    new_bytes(tmp_path / "ref_new")
    expected_old, expected_new = _contents(tmp_path / "ref_old"), _contents(tmp_path / "ref_new")

    def newest_complete(run_dir: Path) -> dict | None:
        found = [read_marker(run_dir / d) for d in ("checkpoint", ".checkpoint.tmp", ".checkpoint.old")]
        epochs = [m["epoch"] for m in found if m is not None]
        return None if not epochs else expected_new if max(epochs) == 2 else expected_old

    cases = 0
    for first in (True, False):

        def start(run_dir: Path, first: bool = first) -> None:
            run_dir.mkdir()
            if not first:
                write_checkpoint(run_dir, old_bytes, {"epoch": 1, "step": 0})

        with monkeypatch.context() as m:
            writes = kill_os_at(m, -1)
            start(tmp_path / f"count{first}")
            writes.clear()
            write_checkpoint(tmp_path / f"count{first}", new_bytes, {"epoch": 2, "step": 0})
        assert {"replace", "fsync", "unlink", "rmdir"} <= set(writes) or first, writes
        for k in range(len(writes) + 1):
            run_dir = tmp_path / f"w{first}{k}"
            start(run_dir)
            with monkeypatch.context() as m:
                kill_os_at(m, k)
                with pytest.raises(Killed) if k < len(writes) else contextlib.nullcontext():
                    write_checkpoint(run_dir, new_bytes, {"epoch": 2, "step": 0})
            want = newest_complete(run_dir)
            snapshot = tmp_path / "snapshot"
            shutil.rmtree(snapshot, ignore_errors=True)
            shutil.copytree(run_dir, snapshot, symlinks=True)
            with monkeypatch.context() as m:
                steps = kill_os_at(m, -1)
                recover(run_dir, "state.pt")
            for j in range(len(steps) + 1):  # j = len(steps): the recovery is not interrupted
                shutil.rmtree(run_dir)
                shutil.copytree(snapshot, run_dir, symlinks=True)
                with monkeypatch.context() as m:
                    kill_os_at(m, j)
                    with pytest.raises(Killed) if j < len(steps) else contextlib.nullcontext():
                        recover(run_dir, "state.pt")
                assert newest_complete(run_dir) is want, (first, k, j)
                recover(run_dir, "state.pt")
                cases += 1
                if want is None:
                    assert not (run_dir / "checkpoint").exists(), (first, k, j)
                else:
                    assert read_marker(run_dir / "checkpoint") is not None, (first, k, j)
                    assert _contents(run_dir / "checkpoint") == want, (first, k, j)
                assert sorted(p.name for p in run_dir.iterdir()) == (["checkpoint"] if want else []), (first, k, j)
    assert cases > 20


# ------------------------------------------------------------------------------------ the run directory
def test_an_existing_directory_is_not_overwritten_unless_asked(tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match=r"not a vitkit run \(it holds notes.txt\).*--overwrite"):
        run(mine)
    run(mine, "--run.overwrite=true")
    assert (mine / "notes.txt").read_text() == "keep me" and (mine / "metrics.json").is_file()

    done = tmp_path / "done"
    run(done, "--sched.epochs=3")
    with pytest.raises(FileExistsError, match="finished run"):
        run(done)
    assert main(["train", "--out", str(done), *TINY]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["train", "--out", str(done), *TINY, "--overwrite"]) == 0
    assert len((done / "metrics.jsonl").read_text().splitlines()) == 2  # the new run's history only
    early = tmp_path / "early"  # killed before its first checkpoint: --resume has nothing to resume from
    early.mkdir()
    shutil.copy(done / "config.yaml", early)
    with pytest.raises(FileExistsError, match="stopped before its first checkpoint: pass --overwrite"):
        run(early)

    with pytest.raises(FileExistsError, match="holds a `vitkit train` run"):
        from vitkit.train.pretrain import pretrain, pretrain_config

        pretrain(pretrain_config("mae", overrides=args(done)))
    (tmp_path / "empty").mkdir()
    run(tmp_path / "empty")  # an empty directory is fine
    (tmp_path / "a-file").write_text("mine")
    for resume in ("false", "true"):
        with pytest.raises(NotADirectoryError, match="is a file, not a directory: choose another --out"):
            run(tmp_path / "a-file", f"--run.resume={resume}")
    assert (tmp_path / "a-file").read_text() == "mine"


def test_a_run_stopped_by_its_data_leaves_the_directory_for_the_corrected_command(tmp_path, capsys):
    """A run that stops before its first step (a missing image folder, a batch larger than the training set)
    takes back the config.yaml it wrote: the corrected command runs in the same --out without --overwrite."""
    out = tmp_path / "r"
    missing = ["train", "--out", str(out), *TINY, "--data.name=folder", f"--data.data_dir={tmp_path / 'nope'}"]
    assert main(missing) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(ValueError, match="fewer than one batch"):
        run(out, "--run.batch_size=100000")
    assert [p.name for p in out.iterdir() if p.name != ".lock"] == []
    run(out, "--sched.epochs=1")  # no --overwrite needed
    assert (out / "metrics.json").is_file()
    # --overwrite deletes the finished run's outputs first, as asked; the failed run then leaves nothing either
    with pytest.raises(ValueError, match="fewer than one batch"):
        run(out, "--run.batch_size=100000", "--run.overwrite=true")
    assert [p.name for p in out.iterdir() if p.name != ".lock"] == []


def test_a_kill_during_overwrite_is_finished_by_the_next_overwrite(tmp_path, monkeypatch):
    """--overwrite killed before each os call of its deletion: the directory is left to a new run only with
    --overwrite again (the refusal says so), which finishes the deletion; the user's own file stays."""
    from vitkit.train.checkpoint import open_run

    def finished_run(run_dir: Path) -> None:
        run_dir.mkdir()
        (run_dir / "notes.txt").write_text("mine")
        for name in (
            "config.yaml",
            "metrics.json",
            "metrics.jsonl",
            "model/model.safetensors",
            "checkpoint/state.pt",
            "checkpoint/ema/model.safetensors",
        ):
            (run_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (run_dir / name).write_text("x")
        (run_dir / "config.yaml").write_text((tmp_path / "config.yaml").read_text())

    def start(run_dir: Path, overwrite: bool) -> None:
        cfg = apply_overrides(TrainConfig(), [f"--run.out={run_dir}", f"--run.overwrite={str(overwrite).lower()}"])
        lock, _ = open_run(run_dir, "train", cfg, state_name="state.pt", main=True)
        lock.release()

    from vitkit.train.config import save_config

    save_config(TrainConfig(), tmp_path / "config.yaml")
    finished_run(tmp_path / "count")
    with monkeypatch.context() as m:
        ops = kill_os_at(m, -1)
        start(tmp_path / "count", overwrite=True)
    assert ops.count("unlink") >= 6, ops
    for k in range(len(ops)):
        run_dir = tmp_path / f"k{k}"
        finished_run(run_dir)
        with monkeypatch.context() as m:
            kill_os_at(m, k)
            with pytest.raises(Killed):
                start(run_dir, overwrite=True)
        with pytest.raises(FileExistsError, match="--overwrite") as refused:
            start(run_dir, overwrite=False)
        # config.yaml goes last: a half-deleted run still reads as a vitkit run, not as someone's files
        assert "not a vitkit run" not in str(refused.value) or "(it holds notes.txt)" in str(refused.value), k
        start(run_dir, overwrite=True)
        assert sorted(p.name for p in run_dir.iterdir()) == [".lock", "config.yaml", "notes.txt"], k
        assert (run_dir / "notes.txt").read_text() == "mine"


def test_resume_takes_the_runs_own_settings_and_refuses_changes(tmp_path, monkeypatch, capsys, caplog):
    """The README's `vitkit train --out DIR --resume` continues with the settings the run was started with
    (here 2 epochs at lr 1e-3, not the defaults' 100 at 3e-3), never rewrites config.yaml, refuses a setting
    that would change the result (naming it and both values) and applies one that cannot."""
    import logging

    started = ["--optim.lr=0.001", "--aug.hflip=0.5"]
    out = tmp_path / "run"

    def stop(run_dir, history):
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(runner, "write_history", stop)  # right after the first checkpoint
        with pytest.raises(Killed):
            assert main(["train", "--out", str(out), *TINY, *started])
    saved = (out / "config.yaml").read_bytes()

    for change, key, old, new in [
        ("--optim.lr=0.003", "optim.lr", "0.001", "0.003"),
        ("--sched.epochs=100", "sched.epochs", "2", "100"),
        ("--model.overrides.depth=2", "model.overrides.depth", "1", "2"),
        ("--run.seed=1", "run.seed", "0", "1"),
    ]:
        assert main(["train", "--out", str(out), "--resume", change]) == 2
        err = capsys.readouterr().err
        assert f"{key}: the run has {old}, given {new}" in err and "Traceback" not in err, err
    with pytest.raises(ValueError, match="optim.lr: the run has 0.001, given 0.003"):  # the Python API
        run(out, "--run.resume=true")
    assert (out / "config.yaml").read_bytes() == saved

    with caplog.at_level(logging.INFO, logger="vitkit"):
        assert main(["train", "--out", str(out), "--resume", "--run.checkpoint_every=4"]) == 0
    assert "run.checkpoint_every: the run has None, given 4" in caplog.text and "run.resume" not in caplog.text
    assert (out / "config.yaml").read_bytes() == saved
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2
    run(tmp_path / "straight", *started)
    assert_same(out, tmp_path / "straight")
    assert main(["train", "--out", str(tmp_path / "nothing"), "--resume"]) == 2
    assert "does not exist" in capsys.readouterr().err
    edited = tmp_path / "edited"  # a config.yaml edited by hand: the message names the file
    shutil.copytree(out, edited)
    (edited / "config.yaml").write_text(saved.decode().replace("  epochs: 2\n", "  epochs: -2\n"))
    assert main(["train", "--out", str(edited), "--resume"]) == 2
    assert f"{edited / 'config.yaml'}: --sched.epochs=-2 is out of range" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ NaN and infinity
def _lr_inf_at(monkeypatch, last_step_of_epoch: int, module=runner):
    """The learning rate is infinite on the last step of epoch `last_step_of_epoch` (1-based): Adam's update
    makes the weights NaN/inf while the loss of that step was still finite."""
    from vitkit.train.schedule import cosine_schedule as real

    def schedule(base_lr, total_steps, warmup_steps, min_lr=0.0):
        lrs = real(base_lr, total_steps, warmup_steps, min_lr)
        lrs[total_steps // 2 * last_step_of_epoch - 1] = float("inf")  # 2 epochs
        return lrs

    monkeypatch.setattr(module, "cosine_schedule", schedule)


def test_nonfinite_weights_on_the_last_step_of_an_epoch_are_never_checkpointed(tmp_path, monkeypatch):
    out = tmp_path / "run"
    _lr_inf_at(monkeypatch, 2)
    with pytest.raises(
        TrainingDiverged,
        match=r"NaN or infinite during epoch 2 .* the last good checkpoint is "
        r".*checkpoint \(after epoch 1\).*start a run in another --out "
        r"from them with --model.pretrained=.*checkpoint",
    ):
        run(out)
    assert read_marker(out / "checkpoint")["epoch"] == 1
    saved = load_file(str(out / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in saved.values())

    _lr_inf_at(monkeypatch, 1)
    with pytest.raises(TrainingDiverged, match="no checkpoint was written before it") as info:
        run(tmp_path / "first")
    assert "--model.pretrained" not in str(info.value)  # no weights to start from
    assert not (tmp_path / "first" / "checkpoint").exists()
    with pytest.raises(TrainingDiverged, match=r"loss became .*no checkpoint was written"):
        run(tmp_path / "huge", "--optim.lr=1e30")

    import vitkit.train.pretrain as pre  # the same in `vitkit pretrain`

    _lr_inf_at(monkeypatch, 2)
    with pytest.raises(
        TrainingDiverged,
        match=r"mae weights became NaN or infinite during epoch 2 .*checkpoint "
        r"\(after epoch 1\)",
    ):
        pre.pretrain(pre.pretrain_config("mae", overrides=args(tmp_path / "pre")))
    assert read_marker(tmp_path / "pre" / "checkpoint")["epoch"] == 1


# ------------------------------------------------------------------------------------ inside an epoch
def test_checkpoints_inside_an_epoch_resume_exactly(tmp_path, monkeypatch, straight):
    """Checkpoints every 3 batches with augmentation, EMA and gradient accumulation (2 batches per step):
    stopped right after each step checkpoint of the run in turn, resumed, the weights and the history
    equal an uninterrupted run's (which takes no step checkpoints)."""
    extra = (
        "--run.batch_size=64",
        "--aug.random_resized_crop=true",
        "--aug.random_erasing=0.5",
        "--run.ema_decay=0.9",
        "--optim.accum_steps=2",
    )
    ref = straight(*extra)
    real = runner.Runner._save  # (self, task, model, optimizer_state, scaler, ema, epoch, history, step=, partial=)
    positions = []

    def count(*a, **kw):
        positions.append((a[6], kw.get("step", 0)))
        return real(*a, **kw)

    with monkeypatch.context() as m:
        m.setattr(runner.Runner, "_save", count)
        run(tmp_path / "count", *extra, "--run.checkpoint_every=3")
    inside = [k for k, (_, step) in enumerate(positions) if step]
    assert len(inside) >= 4 and all(step % 2 == 0 for _, step in positions), positions  # at optimizer steps
    for k in (inside[0], inside[-1]):  # in the first epoch; in the second, after an epoch-end checkpoint
        out = tmp_path / f"k{k}"
        calls = []

        def stop_after(*a, _k=k, _calls=calls, **kw):
            real(*a, **kw)
            _calls.append(1)
            if len(_calls) == _k + 1:
                raise Killed

        with monkeypatch.context() as m:
            m.setattr(runner.Runner, "_save", stop_after)
            with pytest.raises(Killed):
                run(out, *extra, "--run.checkpoint_every=3")
        assert read_marker(out / "checkpoint")["step"] == positions[k][1]
        run(out, *extra, "--run.checkpoint_every=3", "--run.resume=true")
        assert_same(out, ref)
        ema = (load_file(str(d / "checkpoint" / "ema" / "model.safetensors")) for d in (out, ref))
        assert all(torch.equal(a, b) for a, b in zip(*(v.values() for v in ema)))
        rows = [[json.loads(r) for r in (d / "metrics.jsonl").read_text().splitlines()] for d in (out, ref)]
        assert [(r["train_loss"], r["train_acc"], r["val_acc"]) for r in rows[0]] == [
            (r["train_loss"], r["train_acc"], r["val_acc"]) for r in rows[1]
        ]


@pytest.mark.parametrize("method", ["mae", "dino"])
def test_pretrain_checkpoints_inside_an_epoch_resume_exactly(tmp_path, monkeypatch, capsys, method):
    """`vitkit pretrain` shares the checkpoint code: stopped after a step checkpoint and resumed, the method's
    weights (DINO: with its teacher, centre, and the teacher temperature its schedule advanced) equal an
    uninterrupted run's."""
    import vitkit.train.pretrain as pre

    extra = ["--run.batch_size=32", "--data.train_fraction=0.2"]
    if method == "dino":
        extra.append(
            '--method.options={"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_local": 2, '
            '"teacher_temp_warmup": 0.8}'
        )  # the temperature changes at every step of the run

    def go(out, *more):
        return pre.pretrain(pre.pretrain_config(method, overrides=[*args(out, *extra), *more]))

    go(tmp_path / "straight")
    real = runner.Runner._save
    calls = []

    def stop_after(*a, **kw):
        real(*a, **kw)
        calls.append(kw.get("step", 0))
        if len(calls) == 3:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(runner.Runner, "_save", stop_after)
        with pytest.raises(Killed):
            go(tmp_path / "part", "--run.checkpoint_every=2")
    assert calls[-1] > 0  # stopped inside an epoch
    go(tmp_path / "part", "--run.checkpoint_every=2", "--run.resume=true")
    a, b = (load_file(str(tmp_path / d / "checkpoint" / "method.safetensors")) for d in ("straight", "part"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = "mpp" if method == "mae" else "mae"
    assert main(["pretrain", other, "--out", str(tmp_path / "part"), "--resume"]) == 2
    assert f"method.name: the run has '{method}', given '{other}'" in capsys.readouterr().err


def test_a_stream_of_tar_shards_resumes_inside_an_epoch_exactly(tmp_path, monkeypatch):
    """Tar shards have no random access: the resumed run reads and drops the batches already trained on, and
    puts back torch's global RNG, which the stream's DataLoader draws from (random erasing draws from it too)."""
    from vitkit.cli import main as cli

    assert cli(["make-shards", "digits", str(tmp_path / "shards"), "--maxcount", "100"]) == 0
    extra = [
        "--data.name=shards",
        f"--data.data_dir={tmp_path}/shards/train-{{000000..000003}}.tar",
        "--run.batch_size=64",
        "--aug.random_erasing=0.5",
        "--run.checkpoint_every=4",
    ]
    run(tmp_path / "straight", *extra)
    real = runner.Runner._save
    calls = []

    def stop_after(*a, **kw):
        real(*a, **kw)
        calls.append(1)
        if len(calls) == 3:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(runner.Runner, "_save", stop_after)
        with pytest.raises(Killed):
            run(tmp_path / "part", *extra)
    assert read_marker(tmp_path / "part" / "checkpoint")["step"] > 0
    run(tmp_path / "part", *extra, "--run.resume=true")
    assert_same(tmp_path / "part", tmp_path / "straight")

"""Image-folder training as a user runs it: PNG files of several sizes in 3 classes, decoded, cropped, flipped
and normalised in 2 DataLoader workers, random erasing on the batch. A run stopped right after a checkpoint
inside an epoch and resumed ends with the weights of an uninterrupted run (torch.equal), and 2 torchrun
processes train the weights and log the per-step values of 1 process."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import vitkit.train.engine as engine
import vitkit.train.runner as runner
from vitkit.train import TrainConfig, apply_overrides, train
from vitkit.train.checkpoint import read_marker

AUG = ("--aug.random_resized_crop=true", "--aug.hflip=0.5")


class Killed(BaseException):
    """A simulated kill (nothing catches a BaseException)."""


@pytest.fixture(autouse=True)
def no_figure(monkeypatch):
    monkeypatch.setattr(engine, "plot_history", lambda *a, **kw: None)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("test", 2)):
        for c in range(3):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(count):
                h, w = rng.integers(14, 30, 2)
                a = rng.integers(0, 256, (h, w, 3)).astype(np.float64)
                a[..., c] = 0.3 * a[..., c] + 170  # a class is a brighter channel
                Image.fromarray(a.clip(0, 255).astype(np.uint8)).save(root / split / f"c{c}" / f"{i}.png")
    return root


def args(out, folder, *extra) -> list[str]:
    return [
        f"--run.out={out}",
        "--data.name=folder",
        f"--data.data_dir={folder}",
        "--data.img_size=16",
        "--data.val_fraction=0",
        "--data.num_workers=2",
        "--model.name=vit_micro_patch2_8",
        "--model.overrides.depth=1",
        "--model.overrides.embed_dim=32",
        "--model.overrides.num_heads=2",
        "--run.batch_size=6",
        "--sched.epochs=2",
        "--sched.warmup_epochs=0",
        "--run.progress=false",
        "--run.threads=1",
        "--run.tensorboard=false",
        *AUG,
        *extra,
    ]


def weights(run_dir) -> dict:
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def steps(run_dir) -> list[dict]:
    with open(Path(run_dir) / "steps.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_a_folder_run_with_workers_resumes_inside_an_epoch_exactly(tmp_path, folder, monkeypatch):
    """Crop and flip in the workers draw per (seed, epoch, item); random erasing draws from torch's global RNG,
    which the checkpoint saves. Stopped after the checkpoint at step 2 of epoch 1 and resumed (whose first
    batch then goes to worker 0, not worker 2 % 2), the run equals an uninterrupted one."""
    extra = ("--aug.random_erasing=0.5", "--run.checkpoint_every=2")
    train(apply_overrides(TrainConfig(), args(tmp_path / "straight", folder, *extra)))
    real = runner.Runner._save
    calls = []

    def stop_after(*a, **kw):
        real(*a, **kw)
        calls.append(1)
        if len(calls) == 3:  # epoch 1 step 2, the end of epoch 1, epoch 2 step 2
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(runner.Runner, "_save", stop_after)
        with pytest.raises(Killed):
            train(apply_overrides(TrainConfig(), args(tmp_path / "part", folder, *extra)))
    marker = read_marker(tmp_path / "part" / "checkpoint")
    assert (marker["epoch"], marker["step"]) == (1, 2)  # inside epoch 2
    train(apply_overrides(TrainConfig(), args(tmp_path / "part", folder, *extra, "--run.resume=true")))
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "part")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["loss"] for r in steps(tmp_path / "part")] == [r["loss"] for r in steps(tmp_path / "straight")]
    train(apply_overrides(TrainConfig(), args(tmp_path / "plain", folder, "--run.checkpoint_every=2")))
    plain = weights(tmp_path / "plain")
    assert not all(torch.equal(a[k], plain[k]) for k in a)  # the erasing did change the training


def test_torchrun_folder_run_equals_one_process(tmp_path, folder):
    """2 processes x 3 images (each with 2 workers) == 1 process x 6 images: the workers' crops and flips are
    drawn per item, so each process decodes exactly its slice of the one-process batch, and random erasing and
    mixup on the batch draw for the whole global batch, as one process does. steps.csv holds the values of the
    whole batch (averaged over the processes), so it matches the one-process file too. SGD keeps the
    comparison linear in the gradients."""
    common = ["--optim.name=sgd", "--optim.lr=0.1", "--aug.random_erasing=0.5", "--aug.mixup=0.8"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitkit.cli"]
    res = subprocess.run(
        [*cmd, "train", *args(tmp_path / "ddp", folder, *common)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    train(apply_overrides(TrainConfig(), args(tmp_path / "one", folder, *common)))
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    ddp, one = steps(tmp_path / "ddp"), steps(tmp_path / "one")
    assert len(ddp) == len(one) == 8
    for key in ("loss", "acc"):
        torch.testing.assert_close([float(r[key]) for r in ddp], [float(r[key]) for r in one], atol=1e-5, rtol=1e-5)


def test_a_folder_model_evaluates_the_same_with_decoding_workers(tmp_path, folder):
    """`vitkit eval --workers 2` (DataLoader processes decode the test files) gives the numbers of 0 workers."""
    from vitkit.eval import evaluate_dir

    train(apply_overrides(TrainConfig(), args(tmp_path / "run", folder, "--sched.epochs=1")))
    plain = evaluate_dir(tmp_path / "run", data_dir=str(folder), check=False)
    workers = evaluate_dir(tmp_path / "run", data_dir=str(folder), check=False, num_workers=2)
    assert plain["images"] == workers["images"] == 6
    assert (plain["acc"], plain["loss"], plain["per_class_acc"]) == (
        workers["acc"],
        workers["loss"],
        workers["per_class_acc"],
    )

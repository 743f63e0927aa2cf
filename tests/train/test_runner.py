"""The one runner (vitkit/train/runner.py) and its tasks (vitkit/train/tasks.py), for real on the scikit-learn
digits at tiny size: pre-training honours gradient accumulation, the EMA, torch.compile and the logs; settings
that mean nothing for a task are refused before any data is read; fp16 with a gradient scaler (an overflowing
step is skipped, and a killed run resumes to the same weights); `train(cfg, data=...)` takes any Dataset; the
supervised task follows the model's public attributes."""

import csv
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
import vitkit.train.runner as runner
from vitkit.train import Task, TrainConfig, apply_overrides, train
from vitkit.train.pretrain import PretrainConfig, pretrain, pretrain_config

pytest.importorskip("sklearn")
TINY = [
    "--model.overrides.depth=1",
    "--model.overrides.embed_dim=32",
    "--model.overrides.num_heads=2",
    "--run.progress=false",
    "--run.threads=1",
    "--data.num_workers=0",
    "--run.tensorboard=false",
]


class Killed(BaseException):
    """A simulated kill (nothing catches a BaseException)."""


def pre(out, *overrides, method="mae"):
    return pretrain(pretrain_config(method, overrides=[f"--run.out={out}", *TINY, *overrides]))


def sup(out, *overrides, **kw):
    return train(apply_overrides(TrainConfig(), [f"--run.out={out}", *TINY, *overrides]), **kw)


def weights(path) -> dict:
    return load_file(str(path))


def steps(run_dir) -> list[dict]:
    with open(Path(run_dir) / "steps.csv", newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ pre-training settings
def test_pretrain_accumulation_of_two_half_batches_equals_the_whole_batch(tmp_path):
    """MAE draws its masks from torch's global RNG: 2 micro-batches of 32 draw the noise of one batch of 64, see
    its images, and the runner's schedule counts optimizer updates, so the weights match the batch-64 run's;
    ignoring accum_steps would take twice the updates."""
    # SGD keeps the comparison linear in the gradients (Adam divides by ~|g|, amplifying rounding on tiny ones)
    common = ["--sched.epochs=2", "--data.train_fraction=0.3", "--optim.name=sgd", "--optim.lr=0.05"]
    pre(tmp_path / "whole", *common, "--run.batch_size=64")
    pre(tmp_path / "accum", *common, "--run.batch_size=32", "--optim.accum_steps=2")
    pre(tmp_path / "ignored", *common, "--run.batch_size=32")
    a, b, c = (weights(tmp_path / d / "checkpoint" / "method.safetensors") for d in ("whole", "accum", "ignored"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-5, rtol=1e-4)
    assert any((a[k] - c[k]).abs().max() > 1e-3 for k in a)
    # one steps.csv row per optimizer update: the same count as the batch-64 run's
    assert len(steps(tmp_path / "accum")) == len(steps(tmp_path / "whole")) == len(steps(tmp_path / "ignored")) // 2
    # and each row's loss is the whole update's (the mean over its micro-batches), not its last micro-batch's
    whole, accum = ([float(r["loss"]) for r in steps(tmp_path / d)] for d in ("whole", "accum"))
    torch.testing.assert_close(accum, whole, atol=1e-4, rtol=1e-4)


def test_pretrain_ema_gives_the_saved_backbone_and_resumes(tmp_path, monkeypatch):
    """--run.ema_decay: the checkpoint holds the EMA of the method; RUN/backbone is the EMA's encoder (not the
    last step's); a run stopped after its first epoch resumes to the same EMA."""
    extra = ["--sched.epochs=2", "--data.train_fraction=0.3", "--run.batch_size=64", "--run.ema_decay=0.9"]
    m = pre(tmp_path / "full", *extra)
    ckpt = tmp_path / "full" / "checkpoint"
    ema, live = weights(ckpt / "ema.safetensors"), weights(ckpt / "method.safetensors")
    backbone = weights(tmp_path / "full" / "backbone" / "model.safetensors")
    enc = {k[len("encoder.") :]: v for k, v in ema.items() if k.startswith("encoder.")}
    assert backbone.keys() == enc.keys()
    assert all(torch.equal(backbone[k], enc[k]) for k in backbone)
    assert any(not torch.equal(ema[k], live[k]) for k in ema if k.startswith("encoder."))
    assert m["backbone_dir"] == str(tmp_path / "full" / "backbone")

    def stop(run_dir, history):
        raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(runner, "write_history", stop)  # right after the first epoch's checkpoint
        with pytest.raises(Killed):
            pre(tmp_path / "part", *extra)
    pre(tmp_path / "part", *extra, "--run.resume=true")
    again = weights(tmp_path / "part" / "checkpoint" / "ema.safetensors")
    assert all(torch.equal(ema[k], again[k]) for k in ema)


def test_pretrain_cli_summary_rounds_its_numbers(tmp_path, capsys):
    """The closing line of `vitkit pretrain` shows the loss and the collapse monitor to 4 decimals."""
    import re

    from vitkit.cli import main

    assert (
        main(["pretrain", "mae", "--out", str(tmp_path / "p"), *TINY, "--sched.epochs=1", "--data.train_fraction=0.2"])
        == 0
    )
    out = capsys.readouterr().out
    assert re.search(r"final loss \d+\.\d{4}, feature std \d+\.\d{4}, 1 epochs in", out), out


def test_pretrain_logs_every_step_and_honours_tensorboard(tmp_path):
    """steps.csv holds one row per optimizer step with the method's logs; --run.tensorboard=true writes the
    step and epoch scalars, or, without the tensorboard package, stops before any data is read, naming the
    install."""
    extra = ["--sched.epochs=1", "--data.train_fraction=0.3", "--run.batch_size=64"]
    pre(tmp_path / "r", *extra)
    rows = steps(tmp_path / "r")
    assert [int(r["step"]) for r in rows] == list(range(1, len(rows) + 1)) and len(rows) >= 5
    assert {"loss", "lr", "feature_std", "images_per_second"} <= set(rows[0])
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        with pytest.raises(ImportError, match="--run.tensorboard=true needs TensorBoard: pip install tensorboard"):
            pre(tmp_path / "tb", *extra, "--run.tensorboard=true")
        return
    pre(tmp_path / "tb", *extra, "--run.tensorboard=true")
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert {"step/loss", "step/feature_std", "loss", "lr"} <= set(acc.Tags()["scalars"])


@pytest.mark.slow  # inductor compiles the forward and backward: about a minute on 2 cores
def test_pretrain_compiles(tmp_path, monkeypatch):
    """--run.compile=true trains the compiled method (inductor on the CPU) to the eager run's weights (SGD: Adam
    would amplify the compiled kernels' rounding on tiny gradients)."""
    extra = [
        "--sched.epochs=1",
        "--data.train_fraction=0.1",
        "--run.batch_size=64",
        "--optim.name=sgd",
        "--optim.lr=0.05",
    ]
    import torch._inductor.config

    # compiled code draws its random numbers (MPP's masks) from torch's generator, as eager code does
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    pre(tmp_path / "eager", *extra, method="mpp")
    pre(tmp_path / "compiled", *extra, "--run.compile=true", method="mpp")
    a, b = (weights(tmp_path / d / "checkpoint" / "method.safetensors") for d in ("eager", "compiled"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)


@pytest.mark.parametrize(
    "setting, message",
    [
        ("--optim.label_smoothing=0.1", r"--optim.label_smoothing=0.1: pre-training has no labels"),
        ("--optim.layer_decay=0.75", r"--optim.layer_decay=0.75 is for fine-tuning"),
    ],
)
def test_pretrain_refuses_settings_it_cannot_honour(tmp_path, setting, message):
    with pytest.raises(ValueError, match=message):
        pretrain_config("mae", overrides=[setting])
    cfg = PretrainConfig()  # the Python API checks too, before any data is read or any directory made
    apply_overrides(cfg, [setting, f"--run.out={tmp_path / 'r'}"])
    with pytest.raises(ValueError, match=message):
        pretrain(cfg)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------ fp16
def big_head_model():
    """A ViT whose head starts at std 1 (timm's starts at 0): scaled by the GradScaler's first scale (2^16),
    its float16 gradients overflow."""
    torch.manual_seed(0)
    model = vitkit.create_model("vit_micro_patch2_8", num_classes=10, depth=1, embed_dim=32, num_heads=2)
    with torch.no_grad():
        model.head.weight.normal_(0.0, 1.0)
    return model


def test_fp16_skips_overflowing_steps_and_resumes_exactly(tmp_path, monkeypatch):
    """--run.precision=fp16 on the CPU: float16 autocast with a GradScaler. The first steps' gradients
    overflow: the scaler skips them and halves its scale (no NaN stop), and the run trains on. Stopped after
    a checkpoint inside an epoch and resumed, it ends with the uninterrupted run's weights (the scaler's state
    is in the checkpoint)."""
    extra = ["--run.precision=fp16", "--sched.epochs=2", "--run.batch_size=128", "--run.checkpoint_every=3"]
    m = sup(tmp_path / "straight", *extra, model=big_head_model())
    assert m["precision"] == "fp16"
    scales = [float(r["loss_scale"]) for r in steps(tmp_path / "straight")]
    assert scales[0] == 2.0**15 and min(scales) < 2.0**15 <= 2.0**16  # overflowed, skipped, scaled down
    final = weights(tmp_path / "straight" / "model" / "model.safetensors")
    assert all(torch.isfinite(v).all() for v in final.values())
    start = big_head_model().state_dict()
    assert not torch.equal(final["head.weight"], start["head.weight"])  # later steps did train

    real = runner.Runner._save
    calls = []

    def stop_after(*a, **kw):
        real(*a, **kw)
        calls.append(kw.get("step", 0))
        if len(calls) == 2:
            raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(runner.Runner, "_save", stop_after)
        with pytest.raises(Killed):
            sup(tmp_path / "part", *extra, model=big_head_model())
    assert calls[-1] > 0  # inside an epoch
    sup(tmp_path / "part", *extra, "--run.resume=true", model=big_head_model())
    again = weights(tmp_path / "part" / "model" / "model.safetensors")
    assert all(torch.equal(final[k], again[k]) for k in final)


def test_a_short_last_step_of_an_epoch_takes_the_mean_of_its_gradients(tmp_path, caplog):
    """With --optim.accum_steps=2 and one batch per epoch, every optimizer step has one micro-batch: its gradient
    is that batch's (as timm divides by the micro-batches the step has), so the run equals the one without
    accumulation instead of stepping with half the gradient."""
    common = ["--sched.epochs=2", "--data.train_fraction=0.1", "--run.batch_size=100", "--optim.name=sgd"]
    sup(tmp_path / "one", *common)
    with caplog.at_level("WARNING", logger="vitkit"):
        sup(tmp_path / "accum", *common, "--optim.accum_steps=2")
    assert "the last 1 batch(es) of each epoch make an optimizer step of their own" in caplog.text
    a, b = (weights(tmp_path / d / "model" / "model.safetensors") for d in ("one", "accum"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_resumed_run_reports_the_throughput_of_what_it_trained(tmp_path, monkeypatch):
    """steps.csv's images_per_second divides the images trained since the epoch (re)started by the time since
    then: a run resumed inside an epoch does not count the images trained before the kill. A clock that moves
    one second per batch (of 64 images) makes the expected value exactly 64 in every row."""
    import types

    from vitkit.train.tasks import ClassificationTask

    clock = [0.0]
    real_step = ClassificationTask.step

    def step(self, *a, **kw):
        clock[0] += 1.0
        return real_step(self, *a, **kw)

    monkeypatch.setattr(ClassificationTask, "step", step)
    monkeypatch.setattr(runner, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    extra = ["--sched.epochs=1", "--run.batch_size=64", "--run.checkpoint_every=4"]
    real = runner.Runner._save

    def stop(*a, **kw):
        real(*a, **kw)
        raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(runner.Runner, "_save", stop)
        with pytest.raises(Killed):
            sup(tmp_path / "part", *extra)
    sup(tmp_path / "part", *extra, "--run.resume=true")
    rows = steps(tmp_path / "part")
    assert len(rows) > 8
    for r in rows:
        assert float(r["images_per_second"]) == pytest.approx(64.0), r


# ------------------------------------------------------------------------------------ any Dataset
class Plain(torch.utils.data.Dataset):
    """A plain map-style Dataset of (CHW float image in [0, 1], int label), with class names."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, classes: list[str] | None = None) -> None:
        self.images, self.labels = images, labels
        if classes is not None:
            self.classes = classes

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        return self.images[i], int(self.labels[i])


def plain_splits():
    from vitkit.data import load_dataset

    s = load_dataset("digits")
    out = {}
    for name in ("train", "val", "test"):
        x, y = s.__dict__[name].batch(torch.arange(len(s.__dict__[name])))
        out[name] = Plain(x, y, list(s.classes))
    return s, out


def test_train_takes_any_dataset_and_matches_the_named_dataset(tmp_path):
    """The digits as plain Datasets (read through a DataLoader) train to the weights of `--data.name=digits`
    (in memory) when the statistics are the same; metrics, the saved model's labels and normalisation follow."""
    s, data = plain_splits()
    stats = [f"--data.mean={list(s.mean)}", f"--data.std={list(s.std)}"]
    common = ["--sched.epochs=2", "--run.batch_size=128", *stats]
    named = sup(tmp_path / "named", *common)
    mine = sup(tmp_path / "mine", *common, data=data)
    a, b = (weights(tmp_path / d / "model" / "model.safetensors") for d in ("named", "mine"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert mine["test_acc"] == pytest.approx(named["test_acc"], abs=0.2) and mine["dataset"] == "custom"
    cfg = json.loads((tmp_path / "mine" / "model" / "config.json").read_text())
    assert cfg["pretrained_cfg"]["label_names"] == list(s.classes)

    # no statistics given: the train set's; no val split; classes from the model when the Dataset has none
    bare = {k: Plain(v.images, v.labels) for k, v in data.items() if k != "val"}
    model = vitkit.create_model("vit_micro_patch2_8", num_classes=10, depth=1, embed_dim=32, num_heads=2)
    m = sup(tmp_path / "bare", "--sched.epochs=1", data=bare, model=model)
    assert m["best_val_acc"] is None and 0 <= m["test_acc"] <= 100


def test_pretrain_takes_any_dataset_without_classes(tmp_path):
    _, data = plain_splits()
    bare = {k: Plain(v.images[:512], v.labels[:512]) for k, v in data.items()}  # no class names: none needed
    cfg = pretrain_config("mae", overrides=[f"--run.out={tmp_path / 'r'}", *TINY, "--sched.epochs=1"])
    cfg.run.batch_size = 64
    m = pretrain(cfg, data=bare)
    assert m["dataset"] == "custom" and m["final_loss"] > 0
    assert vitkit.from_pretrained(tmp_path / "r" / "backbone").num_classes == 0


def test_train_data_errors_name_the_fix(tmp_path):
    _, data = plain_splits()
    with pytest.raises(TypeError, match="keys 'train', 'test' and optionally 'val'"):
        sup(tmp_path / "a", data={"train": data["train"]})
    with pytest.raises(ValueError, match="give the dataset a `classes` list"):
        sup(tmp_path / "b", data={k: Plain(v.images, v.labels) for k, v in data.items()})
    as_uint8 = Plain((data["train"].images * 255).to(torch.uint8), data["train"].labels, ["0"] * 10)
    with pytest.raises(TypeError, match=r"float CHW image tensor in \[0, 1\].*ToTensor"):
        sup(tmp_path / "c", data={"train": as_uint8, "test": data["test"]})


# ------------------------------------------------------------------------------------ tasks
def test_the_supervised_task_follows_the_models_public_attributes():
    from vitkit.train import ClassificationTask, DistillationTask, MultiExitTask, task_for

    small = {"depth": 1, "embed_dim": 32, "num_heads": 2}
    assert task_for(vitkit.create_model("vit_micro_patch2_8", **small)) is ClassificationTask
    assert task_for(vitkit.create_model("vit_micro_patch2_8", **small), "soft") is DistillationTask
    assert task_for(vitkit.create_model("vit_micro_patch2_8", distilled=True, **small)) is DistillationTask
    dvt = vitkit.create_model("dvt_micro_28")
    assert dvt.num_exits > 1 and task_for(dvt) is MultiExitTask


def test_pretraining_processes_draw_their_own_masks_and_resume_draws_them_again():
    """Under torchrun every process holds the same RNG state; a pre-training step draws the method's masks from a
    stream of (seed, step, rank), so two processes mask the same images differently, and a step draws the same
    masks whatever the global RNG holds (a resumed run). One process keeps drawing from the global RNG."""
    import types

    from vitkit.methods import create_method
    from vitkit.train.runner import Dist
    from vitkit.train.tasks import PretrainTask

    cfg = pretrain_config("mae", overrides=TINY)
    torch.manual_seed(0)
    method = create_method("mae", vitkit.create_model("vit_micro_patch2_8", num_classes=0, depth=1, embed_dim=32))
    x = torch.rand(4, 1, 8, 8)

    def loss(rank, world, global_seed):
        task = PretrainTask(method, None, torch.nn.Identity(), cfg, types.SimpleNamespace(d=Dist(rank, world)))
        torch.manual_seed(global_seed)
        return task.step(method, [x], 7)[0].item()

    assert loss(0, 2, 0) != loss(1, 2, 0)  # the same images, the same global RNG: different masks per process
    assert loss(0, 2, 0) == loss(0, 2, 123) and loss(1, 2, 0) == loss(1, 2, 5)  # independent of the global RNG
    assert loss(0, 1, 0) == loss(0, 1, 0) != loss(0, 1, 1)  # one process: the global RNG


def test_classifier_processes_draw_their_own_stochastic_depth():
    """The same for a classifier's dropout and stochastic depth (drop_path_rate): under torchrun two processes
    drop different blocks for the same images, independently of the global RNG; one process draws from it."""
    import types

    from vitkit.data.augment import AugmentConfig, BatchAugment
    from vitkit.methods.distill import build_distillation
    from vitkit.train.runner import Dist
    from vitkit.train.tasks import ClassificationTask

    cfg = apply_overrides(TrainConfig(), TINY)
    torch.manual_seed(0)
    model = vitkit.create_model("vit_micro_patch2_8", num_classes=3, depth=2, embed_dim=32, drop_path_rate=0.5)
    torch.nn.init.normal_(model.head.weight)  # a zero head would make every loss log(3)
    model.train()
    x, y = torch.rand(8, 1, 8, 8), torch.arange(8) % 3
    distill = build_distillation(cfg.distill, model, None, None, False, 0.0, "cpu")

    def loss(rank, world, global_seed):
        run = types.SimpleNamespace(d=Dist(rank, world))
        task = ClassificationTask(model, None, torch.nn.Identity(), BatchAugment(AugmentConfig(), 3), distill, cfg, run)
        torch.manual_seed(global_seed)
        return task.step(model, [x, y], 3)[0].item()

    assert loss(0, 2, 0) != loss(1, 2, 0)
    assert loss(0, 2, 0) == loss(0, 2, 9) and loss(1, 2, 0) == loss(1, 2, 4)
    assert loss(0, 1, 0) == loss(0, 1, 0) != loss(0, 1, 1)


def test_fsdp_needs_torchrun_and_refuses_what_it_cannot_shard(tmp_path):
    with pytest.raises(ValueError, match="--run.fsdp=true shards the model over torchrun's processes"):
        sup(tmp_path / "r", "--run.fsdp=true")
    for setting, message in [
        ("--run.ema_decay=0.9", "--run.ema_decay with --run.fsdp=true"),
        ("--run.precision=fp16", "--run.precision=fp16 with --run.fsdp=true"),
    ]:
        with pytest.raises(ValueError, match=message):
            runner.check_fsdp(apply_overrides(TrainConfig(), ["--run.fsdp=true", setting]).run, world=2)
    assert not (tmp_path / "r").exists()


def test_torchrun_fsdp_equals_one_process(tmp_path):
    """--run.fsdp=true in 2 gloo processes (batch 32 each, accumulation over 2 micro-batches, a checkpoint
    inside each epoch gathered from the shards) trains the weights of 1 process with the whole batch; the
    checkpoint and the model directory are the one-process files."""
    import os
    import subprocess
    import sys

    common = [*TINY, "--sched.epochs=2", "--optim.name=sgd", "--optim.lr=0.1", "--run.batch_size=64"]
    common += ["--optim.accum_steps=2", "--run.checkpoint_every=2", "--optim.clip_grad=1.0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "vitkit.cli"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(
        [*cmd, "train", f"--run.out={tmp_path / 'fsdp'}", *common, "--run.fsdp=true"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    sup(tmp_path / "one", *[c for c in common if not c.startswith("--run.out")])
    a, b = (weights(tmp_path / d / "model" / "model.safetensors") for d in ("fsdp", "one"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    c = weights(tmp_path / "fsdp" / "checkpoint" / "model.safetensors")
    assert all(torch.equal(a[k], c[k]) for k in a)
    assert json.loads((tmp_path / "fsdp" / "metrics.json").read_text())["processes"] == 2


class LinearProbe(Task):
    """A task of one's own: a linear classifier on the flattened pixels, its weights in a .pt file."""

    name = "probe"

    def __init__(self, in_features: int, classes: int) -> None:
        self.module = torch.nn.Linear(in_features, classes)

    def step(self, net, batch, step):
        x, y = batch
        logits = net(x.flatten(1))
        return torch.nn.functional.cross_entropy(logits, y), {"acc": (logits.argmax(-1) == y).float().mean()}

    def save_weights(self, model, ema, directory):
        torch.save(model.state_dict(), directory / "probe.pt")

    def load_weights(self, model, ema, directory):
        model.load_state_dict(torch.load(directory / "probe.pt"))


def test_a_task_of_ones_own_gets_the_runner(tmp_path, monkeypatch):
    """`Task` + `Runner`: the loop, the logs, the checkpoints and resume come with it."""
    from vitkit.data import load_dataset
    from vitkit.train import Runner

    def run(out, *more):
        cfg = apply_overrides(TrainConfig(), [f"--run.out={out}", *TINY, "--sched.epochs=2", "--optim.lr=0.01", *more])
        with Runner(cfg, "train", tmp_path / "unused") as r:
            return r.fit(LinearProbe(64, 10), load_dataset("digits").train)

    m = run(tmp_path / "a")
    rows = [json.loads(x) for x in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and rows[1]["loss"] < rows[0]["loss"] and rows[1]["acc"] > rows[0]["acc"]
    assert m["processes"] == 1 and (tmp_path / "a" / "checkpoint" / "probe.pt").is_file()

    def stop(run_dir, history):
        raise Killed

    with monkeypatch.context() as mp:
        mp.setattr(runner, "write_history", stop)
        with pytest.raises(Killed):
            run(tmp_path / "b")
    run(tmp_path / "b", "--run.resume=true")
    a, b = (torch.load(tmp_path / d / "checkpoint" / "probe.pt") for d in ("a", "b"))
    assert all(torch.equal(a[k], b[k]) for k in a)


NAN_ON_RANK_1 = """
import os
import sys

import vitkit.train.tasks as tasks
from vitkit.train import TrainConfig, TrainingDiverged, apply_overrides, train

step_of = tasks.ClassificationTask.step


def step(self, net, batch, step):  # the loss of process 1 only turns NaN at its fourth step
    loss, logs = step_of(self, net, batch, step)
    return (loss * float("nan") if os.environ["RANK"] == "1" and step == 3 else loss), logs


tasks.ClassificationTask.step = step
try:
    train(apply_overrides(TrainConfig(), sys.argv[1:]))
except TrainingDiverged as e:
    print(f"process {os.environ['RANK']} stopped: {e}", flush=True)
    sys.exit(3)
"""


def test_a_nan_in_one_process_stops_every_process_with_its_cause(tmp_path):
    """Under torchrun a NaN loss in process 1 alone stops both processes at that step, each naming process 1,
    instead of process 1 leaving the others waiting in their next collective."""
    import os
    import subprocess
    import sys

    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    res = subprocess.run(
        [*cmd, f"--run.out={tmp_path / 'run'}", *TINY, "--sched.epochs=1", "--run.batch_size=64"],
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert res.returncode != 0
    for rank in (0, 1):
        assert f"process {rank} stopped: the loss became nan in process 1 at epoch 1, step 4" in res.stdout, (
            res.stdout[-2000:] + res.stderr[-2000:]
        )

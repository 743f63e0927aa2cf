"""The training loop, for real on the scikit-learn digits at tiny size: recipes and overrides,
parameter groups, resume after a kill (same final weights), torchrun with 2 processes (same
result as 1 process with the same global batch), NaN detection, and the outputs of a run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import vitkit
from vitkit.train import TrainConfig, TrainingDiverged, apply_overrides, load_recipe, train
from vitkit.train.optim import layer_ids, param_groups

pytest.importorskip("sklearn")
REPO = Path(__file__).resolve().parents[2]
TINY = [
    "--model.overrides.depth=1",
    "--model.overrides.embed_dim=32",
    "--model.overrides.num_heads=2",
    "--run.progress=false",
    "--run.threads=1",
    "--data.num_workers=0",
]


def config(out, *overrides) -> TrainConfig:
    return apply_overrides(TrainConfig(), [f"--run.out={out}", *TINY, *overrides])


def weights(run_dir) -> dict:
    return load_file(str(Path(run_dir) / "model" / "model.safetensors"))


def test_overrides_and_recipes(tmp_path):
    cfg = apply_overrides(
        TrainConfig(),
        [
            "--optim.lr=1e-3",
            "--optim.betas=[0.9, 0.95]",
            "--run.precision=bf16",
            "--optim.clip_grad=null",
            "--model.overrides.drop_path_rate=0.1",
        ],
    )
    assert cfg.optim.lr == 1e-3 and cfg.optim.betas == (0.9, 0.95) and cfg.run.precision == "bf16"
    assert cfg.model.overrides == {"drop_path_rate": 0.1}
    with pytest.raises(ValueError, match="optim has: .*lr"):
        apply_overrides(TrainConfig(), ["--optim.learning_rate=1"])
    with pytest.raises(ValueError, match="expects a number"):
        apply_overrides(TrainConfig(), ["--optim.lr=fast"])
    with pytest.raises(ValueError, match="section.field=value"):
        apply_overrides(TrainConfig(), ["--optim.lr"])
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        if recipe.name.startswith("pretrain_"):  # `vitkit pretrain` recipes: tests/methods/test_pretrain.py
            continue
        text = recipe.read_text()
        assert text.startswith("#") and "vitkit train" in text.splitlines()[0], f"{recipe} must open with its command"
        load_recipe(recipe)  # parses and type-checks
    (tmp_path / "bad.yaml").write_text("optim:\n  lr: [1, 2]\n")
    with pytest.raises(ValueError, match="optim.lr expects a number"):
        load_recipe(tmp_path / "bad.yaml")


def test_param_groups_weight_decay_and_layer_decay():
    model = vitkit.create_model("vit_micro_patch2_8")
    cfg = TrainConfig().optim
    cfg.layer_decay = 0.5
    ids, last = layer_ids(model)
    assert ids["pos_embed"] == 0 and ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.3.mlp.fc2.bias"] == 4
    assert ids["head.weight"] == last == 5 and ids["norm.weight"] == 5
    groups = param_groups(model, cfg)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert scale_of[id(named["head.weight"])] == 1.0
    assert scale_of[id(named["blocks.0.attn.qkv.weight"])] == 0.5**4
    assert scale_of[id(named["patch_embed.proj.weight"])] == 0.5**5
    assert decay_of[id(named["pos_embed"])] == 0.0 and decay_of[id(named["blocks.0.norm1.weight"])] == 0.0
    assert decay_of[id(named["blocks.0.attn.qkv.weight"])] == cfg.weight_decay
    assert sum(len(g["params"]) for g in groups) == len(named)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_fused_optimizer_by_default_and_it_matches_the_loop(name):
    from vitkit.train.optim import build_optimizer

    torch.manual_seed(0)
    models = [vitkit.create_model("vit_micro_patch2_8") for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = torch.cat([p.detach().flatten() for p in models[0].parameters()])
    opts = []
    for model, fused in zip(models, (True, False)):
        cfg = apply_overrides(TrainConfig(), [f"--optim.name={name}", f"--optim.fused={str(fused).lower()}"]).optim
        opts.append(build_optimizer(model, cfg))
        assert bool(opts[-1].defaults["fused"]) is fused
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    for _ in range(3):
        for model, opt in zip(models, opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    # the same updates up to rounding (Adam turns the rounding noise of near-zero gradients, e.g. the key bias's,
    # into lr-sized steps of either sign, so compare the whole update, not each element)
    fused_update, loop_update = (torch.cat([p.detach().flatten() for p in m.parameters()]) - start for m in models)
    assert (fused_update - loop_update).norm() <= 1e-3 * loop_update.norm()


def test_run_outputs(tmp_path):
    m = train(config(tmp_path / "run", "--sched.epochs=2"))
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.json", "metrics.jsonl", "model/model.safetensors", "checkpoint/state.pt"):
        assert (run / name).is_file(), name
    saved = json.loads((run / "metrics.json").read_text())
    for key in ("test_acc", "test_loss", "best_val_acc", "epochs", "train_seconds", "images_per_second", "params"):
        assert key in saved
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    assert m["test_acc"] == saved["test_acc"]
    # the saved model reloads and scores the same; it remembers its dataset and normalisation
    from vitkit.eval import evaluate_dir

    r = evaluate_dir(run)
    assert abs(r["acc"] - m["test_acc"]) < 1e-3 and r["dataset"] == "digits"  # metrics.json rounds to 3 places
    assert len(r["per_class_acc"]) == 10 and all(0.0 <= a <= 100.0 for a in r["per_class_acc"].values())
    assert Path(r["figure"]).read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError, match="finished run .*--overwrite"):  # tests/train/test_run_safety.py
        train(config(tmp_path / "run", "--sched.epochs=2"))


def test_resume_after_kill_gives_the_same_weights(tmp_path):
    """Kill a real run part-way (SIGKILL), resume it, and compare with an uninterrupted run.
    Augmentation is on: its randomness must replay from the checkpointed RNG state too."""
    aug = ["--aug.random_resized_crop=true", "--aug.scale=[0.6, 1.0]", "--aug.random_erasing=0.5"]
    args = [f"--run.out={tmp_path / 'killed'}", *TINY, *aug, "--sched.epochs=8"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vitkit.cli", "train", *args],
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    history = tmp_path / "killed" / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if history.is_file() and len(history.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        pytest.fail("the run finished before it could be killed; make it longer")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(history.read_text().splitlines())
    assert 2 <= done < 8 and not (tmp_path / "killed" / "metrics.json").exists()

    train(apply_overrides(TrainConfig(), [*args, "--run.resume=true"]))
    train(config(tmp_path / "straight", *aug, "--sched.epochs=8"))
    a, b = weights(tmp_path / "killed"), weights(tmp_path / "straight")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert (
        json.loads((tmp_path / "killed" / "metrics.json").read_text())["test_acc"]
        == json.loads((tmp_path / "straight" / "metrics.json").read_text())["test_acc"]
    )


def test_torchrun_two_processes_equal_one(tmp_path):
    """2 processes x batch 32 (gloo) == 1 process x batch 64. SGD keeps the comparison linear in
    the gradients (Adam's first steps divide by ~|g|, which amplifies rounding on near-zero gradients)."""
    common = [*TINY, "--sched.epochs=2", "--optim.name=sgd", "--optim.lr=0.1", "--run.batch_size=64"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "vitkit.cli",
        "train",
        f"--run.out={tmp_path / 'ddp'}",
        *common,
    ]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    train(apply_overrides(TrainConfig(), [f"--run.out={tmp_path / 'one'}", *common]))
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-5)
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert ddp["processes"] == 2


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """The learning rate jumps to 1e30 early in epoch 2: the next loss is not finite, the run stops and
    names the checkpoint after epoch 1, which stays as it was (the last step of an epoch, and a run with no
    checkpoint yet: tests/train/test_run_safety.py)."""
    import vitkit.train.runner as runner

    real = runner.cosine_schedule

    def exploding(base_lr, total_steps, warmup_steps, min_lr=0.0):
        lrs = real(base_lr, total_steps, warmup_steps, min_lr)
        second_epoch = total_steps // 3
        return lrs[: second_epoch + 1] + [1e30] * (total_steps - second_epoch - 1)

    monkeypatch.setattr(runner, "cosine_schedule", exploding)
    with pytest.raises(
        TrainingDiverged,
        match=r"the loss became .* at epoch 2, step \d+; the last good checkpoint is "
        r".*checkpoint \(after epoch 1\)",
    ):
        train(config(tmp_path / "run", "--sched.epochs=3"))
    after = load_file(str(tmp_path / "run" / "checkpoint" / "model.safetensors"))
    assert all(torch.isfinite(v).all() for v in after.values())
    assert json.loads((tmp_path / "run" / "checkpoint" / "complete.json").read_text())["epoch"] == 1


def test_bf16_accumulation_clipping_ema_checkpointing_augmentation_run(tmp_path):
    m = train(
        config(
            tmp_path / "run",
            "--sched.epochs=1",
            "--run.precision=bf16",
            "--optim.accum_steps=2",
            "--optim.clip_grad=1.0",
            "--run.ema_decay=0.9",
            "--run.grad_checkpointing=true",
            "--optim.layer_decay=0.75",
            "--aug.mixup=0.8",
            "--aug.cutmix=1.0",
            "--aug.randaugment=rand-m9-n2",
            "--aug.random_erasing=0.25",
        )
    )
    assert 0.0 <= m["test_acc"] <= 100.0 and (tmp_path / "run" / "checkpoint" / "ema" / "model.safetensors").is_file()


def test_training_on_cpu_reuses_freed_memory_unless_told_not_to(tmp_path, monkeypatch):
    import vitkit.train.runner as runner

    calls = []
    monkeypatch.setattr(runner, "reuse_freed_memory", lambda: calls.append(1))  # the effect: tests/test_allocator.py
    kept = []
    real = runner.KeptGradients
    monkeypatch.setattr(runner, "KeptGradients", lambda params: kept.append(real(params)) or kept[-1])
    more = ["--sched.epochs=1", "--optim.accum_steps=2", "--optim.clip_grad=1.0"]
    train(config(tmp_path / "a", *more))
    assert calls == [1]
    train(config(tmp_path / "b", *more, "--run.reuse_cpu_memory=false"))
    assert calls == [1]
    # run a kept its gradients from step to step (allocator.KeptGradients), run b set them to None: same weights
    assert len(kept) == 1 and kept[0].params
    assert all(p.grad is None for p in kept[0].params) and not kept[0]._hooks  # closed at the end of the run
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    # `vitkit eval` too (inference batches fault their activations in anew as well), with the same opt-out
    import vitkit.allocator
    from vitkit.cli import main

    monkeypatch.setattr(vitkit.allocator, "reuse_freed_memory", lambda: calls.append(2))
    assert main(["eval", str(tmp_path / "a")]) == 0
    assert calls == [1, 2]
    assert main(["eval", str(tmp_path / "a"), "--no-reuse-cpu-memory"]) == 0
    assert calls == [1, 2]

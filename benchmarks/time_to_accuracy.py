"""Time to accuracy: vitkit's ViT and vit-pytorch's ViT, trained by the same loop under the same budget.

    OMP_NUM_THREADS=2 python benchmarks/time_to_accuracy.py --threads 2          # MNIST (300 s) + Fashion-MNIST (900 s)
    OMP_NUM_THREADS=2 python benchmarks/time_to_accuracy.py --threads 2 --tasks mnist --budget-seconds 300
    python benchmarks/time_to_accuracy.py --smoke                                 # digits, tiny budget: seconds

The targets on 2 CPU cores: full MNIST >= 99.0% test accuracy within 5 minutes, Fashion-MNIST
>= 92.0% within 15 minutes, compared in the same run with vit-pytorch's `ViT` (PyPI `vit-pytorch`,
`pip install vitkit[bench]`). Results: docs/benchmarks.md#time-to-accuracy.

Same loop: both models are trained by `vitkit.train.train` (data order, augmentation, AdamW with
the same no-weight-decay rule, warm-up + cosine, label smoothing, evaluation): vit-pytorch's model is
wrapped as a `VitkitModel` and passed in prebuilt. Same size: vit-pytorch gets the recipe's
width, depth, heads (dim_head = width / heads), MLP width and patch size, so the parameter
counts agree to within a few LayerNorms (vit-pytorch normalises the patch vectors before and after
the patch projection; vitkit, like timm, does not).

Same budget: the cosine schedule must end when the budget does, so the number of epochs is set
from a measured step time. Before each run, `calibrate` times `--calib-steps` training steps of the
same model, batch and threads on random data; epochs = floor(0.95 x budget / (steps per epoch x
step time)), at least 1. The budget covers the training loop (the engine's `train_seconds`); the
test evaluation after it is not counted. Rows whose training overran the budget say so. All 60k
training images are used (no validation split is carved: `--data.val_fraction=0`).

Output: a Markdown table (stdout and `--markdown FILE`) and `results.json` in `--out`.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from vitkit.precision import resolve_precision

REPO = Path(__file__).resolve().parents[1]
TASKS = {  # dataset -> (recipe, budget seconds, target test accuracy %)
    "mnist": ("recipes/mnist_vit_fast.yaml", 300.0, 99.0),
    "fashion_mnist": ("recipes/fmnist_vit_fast.yaml", 900.0, 92.0),
}
SHAPES = {"mnist": (10, 1, 28), "fashion_mnist": (10, 1, 28), "digits": (10, 1, 8)}  # classes, channels, size
INSTALL_VIT_PYTORCH = "pip install vit-pytorch==1.26.11  (or pip install vitkit[bench])"
CALIB_SECONDS = 10.0  # time spent measuring each model's step time (not counted in the budget)
SAFETY = 0.95  # plan for 95% of the budget: the per-epoch checkpoint and step-time noise take the rest


# ------------------------------------------------------------------------------------ vit-pytorch
@dataclass
class VitPytorchConfig:
    img_size: int = 28
    patch_size: int = 7
    in_chans: int = 1
    num_classes: int = 10
    embed_dim: int = 128
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 2.0


def vit_pytorch_class():
    from vitkit.compat import make_torchvision_importable
    from vitkit.models._base import VitkitModel

    make_torchvision_importable()  # vit_pytorch/__init__ imports torchvision (for its DINO module)
    try:
        from vit_pytorch import ViT
    except ImportError as e:
        raise ImportError(f"vit-pytorch is not installed ({e}): {INSTALL_VIT_PYTORCH}") from None

    class VitPytorchViT(VitkitModel):
        """lucidrains' vit-pytorch `ViT` as a model the vitkit engine trains and saves (not registered)."""

        family = "vit_pytorch"
        config_class = VitPytorchConfig

        def __init__(self, config: VitPytorchConfig) -> None:
            super().__init__(config)
            c = config
            self.net = ViT(image_size=c.img_size, patch_size=c.patch_size, num_classes=c.num_classes, dim=c.embed_dim,
                           depth=c.depth, heads=c.num_heads, mlp_dim=int(c.embed_dim * c.mlp_ratio), pool="cls",
                           channels=c.in_chans, dim_head=c.embed_dim // c.num_heads)
            self.model_name = "vit_pytorch.ViT"

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

        def no_weight_decay(self) -> set[str]:  # the same exclusions as vitkit's ViT
            return {"net.pos_embedding", "net.cls_token"}

    return VitPytorchViT


def matched_vit_pytorch(cfg, classes: int, chans: int, size: int) -> nn.Module:
    """vit-pytorch's ViT with the width/depth/heads/MLP/patch of the recipe's vitkit model."""
    from vitkit import create_model

    with torch.device("meta"):
        ref = create_model(cfg.model.name, num_classes=classes, in_chans=chans, img_size=size,
                           **cfg.model.overrides).config
    cls = vit_pytorch_class()
    return cls(VitPytorchConfig(img_size=size, patch_size=ref.patch_size, in_chans=chans, num_classes=classes,
                                embed_dim=ref.embed_dim, depth=ref.depth, num_heads=ref.num_heads,
                                mlp_ratio=ref.mlp_ratio))


def vitkit_model(cfg, classes: int, chans: int, size: int) -> nn.Module:
    from vitkit import create_model

    return create_model(cfg.model.name, num_classes=classes, in_chans=chans, img_size=size, **cfg.model.overrides)


MODELS = {"vitkit": vitkit_model, "vit_pytorch": matched_vit_pytorch}


# ------------------------------------------------------------------------------------ the budget
def training_step(model: nn.Module, cfg, chans: int, size: int, classes: int = 10):
    """One training step of the recipe on a fixed random batch, as a closure: its batch augmentation,
    forward (bf16 autocast if the recipe asks for it), cross-entropy, backward and optimizer step."""
    from vitkit.data.augment import BatchAugment
    from vitkit.train.optim import build_optimizer

    model.train()
    opt = build_optimizer(model, cfg.optim)
    augment = BatchAugment(cfg.aug, classes, label_smoothing=cfg.optim.label_smoothing)
    x = torch.rand(cfg.run.batch_size, chans, size, size)
    y = torch.randint(0, classes, (cfg.run.batch_size,))
    bf16 = resolve_precision(cfg.run.precision, "cpu", warn=False) == "bf16"

    def step():
        xb, _ = augment(x, y) if augment.active else (x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(xb).float(), y, label_smoothing=cfg.optim.label_smoothing)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def calibrate(model: nn.Module, cfg, chans: int, size: int, steps: int, classes: int = 10) -> float:
    """Seconds per training step (`training_step`) of this model, batch and thread count, on random data; the
    model passed in is a throw-away copy (its weights change).
    The caller runs it twice for the first model of a process: the first call also pays one-time start-up
    costs (thread pool, bf16 kernel creation) that would make whichever model runs first look slower."""
    step = training_step(model, cfg, chans, size, classes)
    for _ in range(5):  # warm-up: allocator, kernels (bf16 kernels take a few steps to settle)
        step()
    # A 20-step (1-2 s) timing is too noisy on a shared VM: it can plan 12 epochs for one model and 20 for another
    # that then trains at the same speed. So: chunks of `steps` steps for at least CALIB_SECONDS, and the median
    # chunk.
    chunks, start = [], time.perf_counter()
    while len(chunks) < 3 or time.perf_counter() - start < CALIB_SECONDS:
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        chunks.append((time.perf_counter() - t0) / steps)
    return statistics.median(chunks)


def plan_epochs(budget: float, step_seconds: float, steps_per_epoch: int) -> int:
    """Whole epochs that fit into SAFETY x budget at the measured step time (at least 1)."""
    return max(1, math.floor(SAFETY * budget / (step_seconds * steps_per_epoch)))


def train_images(name: str, cfg) -> int:
    from vitkit.data import load_dataset

    splits = load_dataset(name, cfg.data.data_dir, val_fraction=cfg.data.val_fraction, seed=cfg.data.seed,
                          img_size=cfg.data.img_size)
    return round(len(splits.train) * cfg.data.train_fraction)


_WARM = False


def budgeted_run(cfg, build, dataset: str, budget: float, calib_steps: int) -> dict:
    """Calibrate, set the schedule for the budget, train with the vitkit engine; the result row."""
    from vitkit.train import train

    classes, chans, size = SHAPES[dataset]
    size = cfg.data.img_size or size
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    global _WARM
    if not _WARM:  # a throw-away first calibration: process start-up costs must not count against one model
        calibrate(build(cfg, classes, chans, size), cfg, chans, size, calib_steps, classes)
        _WARM = True
    step_seconds = calibrate(build(cfg, classes, chans, size), cfg, chans, size, calib_steps, classes)
    steps_per_epoch = train_images(dataset, cfg) // cfg.run.batch_size
    epochs = plan_epochs(budget, step_seconds, steps_per_epoch)
    cfg.sched.warmup_epochs = min(cfg.sched.warmup_epochs, epochs / 4)
    cfg.sched.epochs = epochs
    torch.manual_seed(cfg.run.seed)
    model = build(cfg, classes, chans, size)
    t0 = time.perf_counter()
    m = train(cfg, model=model)
    wall = time.perf_counter() - t0
    return {"params": m["params"], "epochs": epochs, "calib_img_s": round(cfg.run.batch_size / step_seconds, 1),
            "planned_s": round(epochs * steps_per_epoch * step_seconds, 1), "train_s": m["train_seconds"],
            "wall_s": round(wall, 1), "img_s": m["images_per_second"], "test_acc": m["test_acc"],
            "within_budget": m["train_seconds"] <= budget, "run_dir": m["run_dir"]}


# ------------------------------------------------------------------------------------ main
def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| dataset | model | params | budget | epochs | train s | wall s | img/s | test acc | target | met |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|:---:|"]
    for r in rows:
        met = "yes" if r["test_acc"] >= r["target"] and r["within_budget"] else "no"
        over = "" if r["within_budget"] else " (over)"
        lines.append(f"| {r['dataset']} | {r['model']} | {r['params']:,} | {r['budget']:.0f} s | {r['epochs']} | "
                     f"{r['train_s']:.0f}{over} | {r['wall_s']:.0f} | {r['img_s']:.0f} | {r['test_acc']:.2f}% | "
                     f"{r['target']:.1f}% | {met} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    from vitkit.train import apply_overrides, load_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--budget-seconds", type=float, default=None, help="override every task's budget")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-steps", type=int, default=20, help="timed steps before each run (default 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="where runs go (default runs/time_to_accuracy[_smoke])")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--smoke", action="store_true", help="digits, a 3 s budget, a 1-block ViT: runs in seconds")
    p.add_argument("overrides", nargs="*", help="--section.field=value applied to every run (after the recipe)")
    args, extra = p.parse_known_args(argv)
    overrides = list(args.overrides) + extra
    out = Path(args.out or f"runs/time_to_accuracy{'_smoke' if args.smoke else ''}")
    if args.smoke:
        global CALIB_SECONDS
        CALIB_SECONDS = 0.1
    tasks = {"digits": ("recipes/mnist_vit_fast.yaml", 3.0, 50.0)} if args.smoke else {t: TASKS[t] for t in args.tasks}
    import logging

    logging.basicConfig(level=logging.WARNING)
    rows = []
    for dataset, (recipe, budget, target) in tasks.items():
        budget = args.budget_seconds or budget
        for name in args.models:
            cfg = load_recipe(REPO / recipe)
            apply_overrides(cfg, [f"--data.name={dataset}", "--data.val_fraction=0", f"--run.threads={args.threads}",
                                  f"--run.seed={args.seed}", f"--run.out={out / f'{dataset}-{name}-seed{args.seed}'}",
                                  "--run.progress=false"])
            if args.smoke:
                apply_overrides(cfg, ["--model.name=vit_micro_patch2_8", "--model.overrides={depth: 1}",
                                      "--data.img_size=null", "--run.batch_size=64", "--aug.random_resized_crop=false"])
            apply_overrides(cfg, overrides)
            if (Path(cfg.run.out) / "checkpoint").exists():
                raise FileExistsError(f"{cfg.run.out} holds an earlier run: pass another --out or delete it")
            print(f"[{dataset}] {name}: calibrating, then training for a {budget:.0f} s budget", file=sys.stderr)
            row = budgeted_run(cfg, MODELS[name], dataset, budget, 3 if args.smoke else args.calib_steps)
            row.update(dataset=dataset, model=name if name != "vitkit" else f"vitkit {cfg.model.name}",
                       budget=budget, target=target)
            rows.append(row)
            print(f"[{dataset}] {name}: {row['test_acc']:.2f}% after {row['epochs']} epochs, {row['train_s']:.0f} s",
                  file=sys.stderr)
    header = (f"Time to accuracy, {args.threads} thread(s), torch {torch.__version__}, seed {args.seed}"
              + (" -- SMOKE RUN (digits, tiny budget): not a measurement" if args.smoke else ""))
    table = markdown(rows, header)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return rows


if __name__ == "__main__":
    main()

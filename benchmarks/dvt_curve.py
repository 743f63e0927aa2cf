"""DVT accuracy vs average GMACs (the budgeted batch classification of Wang et al., NeurIPS 2021,
fig. 4-5) on Fashion-MNIST and MNIST, against single ViTs at each token count, with ablations.

For each dataset it trains, from scratch and with the same recipe (AdamW, cosine schedule, label
smoothing 0.1, the sum of all exits' losses for the cascades):
    - dvt_micro_28: the 3-stage cascade, 4x4 / 7x7 / 14x14 tokens (patches 7, 4, 2), both reuses;
    - the ablations: without feature reuse, without relationship reuse;
    - single ViTs with the same backbone (vit_micro, D=64, depth 4) at 4x4, 7x7 and 14x14 tokens.
Then, for a sweep of budgets between the first and the last exit's cost, it calibrates the
thresholds on the held-out split of the training data (`calibrate_thresholds`, MSDNet/DVT's
procedure) and reports test accuracy against test mean GMACs per image (counted with
vitkit.profile: matmuls and convolutions). The target: the cascade matches the largest single ViT's
accuracy (within 0.3 points) at <= 60% of its GMACs. With --timing it also times batched early-exit
inference against the single 14x14 ViT (only meaningful on a quiet machine).

Outputs (in --out, default docs/img/dvt/): curve_<dataset>.png, results_<dataset>.json and a
Markdown table results_<dataset>.md.

Usage
    python benchmarks/dvt_curve.py --smoke                  # a minute: tiny subsets, checks the pipeline
    python benchmarks/dvt_curve.py --threads 2 --epochs 10  # the full runs (see docs/dvt.md for the time)
    python benchmarks/dvt_curve.py --datasets fashion_mnist --train-images 10000 --epochs 5 --threads 1
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

import vitkit
from vitkit.data import load_dataset
from vitkit.hub import atomic_write
from vitkit.models.dvt import calibrate_thresholds, collect_exit_logits, simulate_exits
from vitkit.profile import model_gmacs
from vitkit.train.config import OptimConfig
from vitkit.train.engine import Normalise, eval_batches
from vitkit.train.optim import build_optimizer
from vitkit.train.schedule import cosine_schedule

CASCADES = {  # label -> create_model overrides of dvt_micro_28
    "DVT": {},
    "DVT w/o feature reuse": dict(feature_reuse=False),
    "DVT w/o relationship reuse": dict(relation_reuse=False),
}
SINGLES = {"ViT 4x4 (patch 7)": 7, "ViT 7x7 (patch 4)": 4, "ViT 14x14 (patch 2)": 2}


def train_model(model, splits, norm, args, desc: str) -> float:
    """The engine's recipe on a subset of the training split; returns the training seconds."""
    g = torch.Generator().manual_seed(args.seed)
    n = min(args.train_images or len(splits.train), len(splits.train))
    subset = torch.randperm(len(splits.train), generator=g)[:n]
    steps_per_epoch = n // args.batch_size
    optim_cfg = OptimConfig(lr=args.lr, weight_decay=0.05, label_smoothing=0.1)
    optimizer = build_optimizer(model, optim_cfg)
    lrs = cosine_schedule(args.lr, args.epochs * steps_per_epoch, round(args.warmup_epochs * steps_per_epoch), 0.0)
    model.train()
    t0 = time.perf_counter()
    bar = tqdm(total=args.epochs * steps_per_epoch, desc=desc, unit="step", leave=False)
    for epoch in range(args.epochs):
        order = subset[torch.randperm(n, generator=g)]
        for i in range(steps_per_epoch):
            x, y = splits.train.batch(order[i * args.batch_size:(i + 1) * args.batch_size])
            x, y = x.to(args.device), y.to(args.device)
            with torch.autocast(torch.device(args.device).type, torch.bfloat16, enabled=args.use_bf16):
                out = model(norm(x))
            outs = out if isinstance(out, list) else [out]  # a cascade: the sum of its exits' losses
            loss = sum(F.cross_entropy(o.float(), y, label_smoothing=optim_cfg.label_smoothing) for o in outs)
            for group in optimizer.param_groups:
                group["lr"] = lrs[epoch * steps_per_epoch + i] * group["lr_scale"]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    return time.perf_counter() - t0


@torch.no_grad()
def logits_of(model, data, norm) -> tuple[torch.Tensor, torch.Tensor]:
    out, labels = [], []
    device = next(model.parameters()).device
    for x, y in eval_batches(data, 512):
        out.append(model(norm(x.to(device))).float().cpu())
        labels.append(y)
    return torch.cat(out), torch.cat(labels)


def subset_split(split, n: int | None):
    if not n or n >= len(split):
        return split
    from vitkit.data.embedded import Split

    return Split(split.images[:n], split.labels[:n], split.classes)


@torch.no_grad()
def time_batches(fn, x: torch.Tensor, batch: int, repeats: int) -> float:
    """Median seconds per image over `repeats` passes of `fn` over `x` in batches."""
    times = []
    for _ in range(repeats + 1):  # the first pass warms up
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            fn(x[i:i + batch])
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) / len(x))
    return sorted(times[1:])[len(times[1:]) // 2]


def run_dataset(name: str, args) -> dict:
    splits = load_dataset(name, val_fraction=0.1, seed=0)
    norm = Normalise(splits.mean, splits.std).to(args.device)
    val = subset_split(splits.val, args.val_images or args.eval_images)
    test = subset_split(splits.test, args.eval_images)
    acc = lambda logits, y: 100.0 * float((logits.argmax(-1) == y).float().mean())
    result = {"dataset": name, "train_images": min(args.train_images or len(splits.train), len(splits.train)),
              "epochs": args.epochs, "bf16_training": args.use_bf16, "val_images": len(val), "test_images": len(test),
              "singles": {}, "cascades": {}}
    models = {}

    for label, patch in SINGLES.items():
        torch.manual_seed(args.seed)
        model = vitkit.create_model("vit_micro_patch4_28", patch_size=patch, **args.model_kw).to(args.device)
        seconds = load_or_train(model, splits, norm, args, name, label)
        logits, y = logits_of(model, test, norm)
        g = model_gmacs("vit_micro_patch4_28", patch_size=patch, **args.model_kw)
        result["singles"][label] = {"tokens": (28 // patch) ** 2, "gmacs": g, "test_acc": acc(logits, y),
                                    "train_seconds": seconds}
        models[label] = model
        save_model(model, args, name, label)

    for label, kw in CASCADES.items():
        if label != "DVT" and args.no_ablations:
            continue
        torch.manual_seed(args.seed)
        model = vitkit.create_model("dvt_micro_28", **args.model_kw, **kw).to(args.device)
        if args.load_models and not (model_dir(args.load_models, name, label) / "config.json").is_file():
            print(f"{label}: no saved model in {args.load_models}, skipped")
            continue
        seconds = load_or_train(model, splits, norm, args, name, label)
        costs = list(model.measure_exit_gmacs())
        val_logits, val_y = collect_exit_logits(model, val, norm)
        test_logits, test_y = collect_exit_logits(model, test, norm)
        curve = []

        def point(target: float) -> dict:
            cal = calibrate_thresholds(val_logits, val_y, costs, target)
            exits, logits = simulate_exits(test_logits, cal["thresholds"])
            return {"target_gmacs": target, "thresholds": cal["thresholds"], "val_acc": cal["heldout_acc"],
                    "val_gmacs": cal["heldout_gmacs"],
                    "test_gmacs": float(torch.tensor(costs, dtype=torch.float64)[exits].mean()),
                    "test_acc": acc(logits, test_y),
                    "exit_fractions": (torch.bincount(exits, minlength=len(costs)) / len(exits)).tolist()}

        for target in torch.linspace(costs[0], costs[-1], args.points, dtype=torch.float64).tolist():
            curve.append(point(target))
        budget = 0.6 * result["singles"]["ViT 14x14 (patch 2)"]["gmacs"]
        result["cascades"][label] = {"exit_gmacs": costs, "exit_test_acc": [acc(lg, test_y) for lg in test_logits],
                                     "exit_val_acc": [acc(lg, val_y) for lg in val_logits],
                                     "train_seconds": seconds, "curve": curve,
                                     "at_budget": point(budget) if budget >= costs[0] else None}
        models[label] = model
        save_model(model, args, name, label)

    big = result["singles"]["ViT 14x14 (patch 2)"]
    budget = 0.6 * big["gmacs"]
    within = [p for p in result["cascades"]["DVT"]["curve"] if p["test_gmacs"] <= budget]
    best = max(within, key=lambda p: p["test_acc"]) if within else None
    at = result["cascades"]["DVT"]["at_budget"]  # thresholds calibrated on held-out data for exactly the budget
    result["target"] = {
        "budget_gmacs": budget, "single_14x14_acc": big["test_acc"],
        "dvt_acc_at_budget": at["test_acc"] if at else None, "dvt_gmacs_at_budget": at["test_gmacs"] if at else None,
        "dvt_best_acc_within_budget": best["test_acc"] if best else None,
        "dvt_gmacs_at_best": best["test_gmacs"] if best else None,
        "met": bool(at and at["test_gmacs"] <= budget * 1.005 and at["test_acc"] >= big["test_acc"] - 0.3),
    }

    if args.timing:  # wall clock of batched early-exit inference at the budget point (quiet machine only)
        x = norm(test.batch(torch.arange(len(test)))[0].to(args.device))
        dvt = models["DVT"]
        thresholds = at["thresholds"] if at else result["cascades"]["DVT"]["curve"][-1]["thresholds"]
        result["timing"] = {
            "threads": torch.get_num_threads(), "batch": args.timing_batch,
            "dvt_ms_per_image": 1e3 * time_batches(lambda b: dvt.forward_dynamic(b, thresholds), x,
                                                   args.timing_batch, args.repeats),
            "single_14x14_ms_per_image": 1e3 * time_batches(models["ViT 14x14 (patch 2)"], x, args.timing_batch,
                                                            args.repeats),
        }
    return result


def model_dir(root, dataset: str, label: str) -> Path:
    return Path(root) / dataset / label.lower().replace(" ", "_").replace("/", "").replace("(", "").replace(")", "")


def save_model(model, args, dataset: str, label: str) -> None:
    """With --save-models DIR: the trained model under DIR/<dataset>/<label> (for benchmarks/dvt_timing.py)."""
    if args.save_models:
        from vitkit.hub import save_pretrained

        save_pretrained(model, model_dir(args.save_models, dataset, label))


def load_or_train(model, splits, norm, args, dataset: str, label: str) -> float | None:
    """With --load-models DIR: the weights saved there by --save-models (no training; returns None);
    otherwise trains and returns the training seconds."""
    if not args.load_models:
        return round(train_model(model, splits, norm, args, label), 1)
    from vitkit.hub import from_pretrained

    model.load_state_dict(from_pretrained(model_dir(args.load_models, dataset, label)).state_dict())
    model.eval()
    return None


def write_outputs(result: dict, out: Path) -> None:
    name = result["dataset"]
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / f"results_{name}.json", lambda t: Path(t).write_text(json.dumps(result, indent=2) + "\n"))
    lines = [(f"### {name}: {result['train_images']} training images, {result['epochs']} epochs, "
              f"{result['test_images']} test images"
              + (", bf16 autocast in training" if result.get("bf16_training") else "")), "",
             "| model | GMACs / image | test top-1 (%) |", "|---|---:|---:|"]
    for label, s in result["singles"].items():
        lines.append(f"| {label} | {s['gmacs']:.4f} | {s['test_acc']:.2f} |")
    for label, c in result["cascades"].items():
        for k, (g, a) in enumerate(zip(c["exit_gmacs"], c["exit_test_acc"])):
            lines.append(f"| {label}, exit {k + 1} (all images) | {g:.4f} | {a:.2f} |")
        points = c["curve"] + ([dict(c["at_budget"], budget_point=True)] if c.get("at_budget") else [])
        for p in sorted(points, key=lambda p: p["target_gmacs"]):
            fr = "/".join(f"{f:.2f}" for f in p["exit_fractions"])
            star = " **(60% budget)**" if p.get("budget_point") else ""
            lines.append(f"| {label}, budget {p['target_gmacs']:.4f}{star} (exits {fr}) | {p['test_gmacs']:.4f} | "
                         f"{p['test_acc']:.2f} |")
    t = result["target"]
    at = (f"{t['dvt_acc_at_budget']:.2f}% at {t['dvt_gmacs_at_budget']:.4f} GMACs"
          if t.get("dvt_acc_at_budget") is not None else "none")
    best = (f"{t['dvt_best_acc_within_budget']:.2f}% at {t['dvt_gmacs_at_best']:.4f} GMACs"
            if t["dvt_best_acc_within_budget"] is not None else "none")
    lines += ["", (f"Target (14x14 ViT accuracy {t['single_14x14_acc']:.2f}% within 0.3 points at <= "
                   f"{t['budget_gmacs']:.4f} GMACs): DVT calibrated on held-out data for that budget {at} -> "
                   f"{'met' if t['met'] else 'NOT met'} (best sweep point within the budget, chosen on test: "
                   f"{best}).")]
    if "timing" in result:
        tm = result["timing"]
        lines.append(f"Wall clock ({tm['threads']} threads, batch {tm['batch']}): DVT {tm['dvt_ms_per_image']:.3f} "
                     f"ms/image, 14x14 ViT {tm['single_14x14_ms_per_image']:.3f} ms/image.")
    text = "\n".join(lines) + "\n"
    atomic_write(out / f"results_{name}.md", lambda t: Path(t).write_text(text))
    print(text)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5), layout="constrained")
    for (label, c), style in zip(result["cascades"].items(), ("o-", "s--", "^:")):
        ax.plot([p["test_gmacs"] for p in c["curve"]], [p["test_acc"] for p in c["curve"]], style, ms=3,
                label=f"{label} (calibrated on held-out data)")
    singles = list(result["singles"].items())
    ax.plot([s["gmacs"] for _, s in singles], [s["test_acc"] for _, s in singles], "k*-", ms=10, label="single ViTs")
    for label, s in singles:
        ax.annotate(label.split(" (")[0], (s["gmacs"], s["test_acc"]), textcoords="offset points", xytext=(4, -10),
                    fontsize=8)
    ax.axvline(t["budget_gmacs"], color="grey", lw=0.8, ls="--", label="60% of the 14x14 ViT's GMACs")
    ax.set_xlabel("average GMACs per image (test)")
    ax.set_ylabel("test top-1 accuracy (%)")
    ax.set_title(f"DVT budgeted classification, {name} ({result['train_images']} train images, "
                 f"{result['epochs']} epochs)")
    ax.legend(fontsize=8)
    atomic_write(out / f"curve_{name}.png", lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["fashion_mnist", "mnist"])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup-epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--train-images", type=int, default=None, help="train on a random subset (default: all)")
    p.add_argument("--eval-images", type=int, default=None, help="evaluate on the first N val/test images")
    p.add_argument("--val-images", type=int, default=None, help="calibrate on the first N val images "
                   "(default: --eval-images)")
    p.add_argument("--save-models", default=None, help="save every trained model under DIR/<dataset>/<label>")
    p.add_argument("--load-models", default=None, help="evaluate the models --save-models saved in DIR instead of "
                   "training (cascades not there are skipped); the other options must match that run")
    p.add_argument("--points", type=int, default=15, help="budgets on the curve")
    p.add_argument("--no-ablations", action="store_true", help="skip the two ablation cascades")
    p.add_argument("--timing", action="store_true", help="also time batched inference (quiet machine only)")
    p.add_argument("--timing-batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--bf16", default="auto", choices=["auto", "true", "false"],
                   help="bf16 autocast in training (auto: where bf16 is native, e.g. AMX); evaluation is fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="output folder (default docs/img/dvt; --smoke: runs/dvt_curve_smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny subsets and widths: checks the pipeline in ~1 minute")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vitkit.precision import resolve_bf16

    args.use_bf16 = resolve_bf16(args.bf16, args.device)
    args.model_kw = {}
    if args.smoke:
        args.datasets, args.epochs, args.train_images, args.eval_images, args.points = ["fashion_mnist"], 1, 256, 200, 5
        args.batch_size, args.warmup_epochs = 64, 0.0
        args.model_kw = dict(embed_dim=16, depth=1, num_heads=2)
        out = Path(args.out or "runs/dvt_curve_smoke")  # smoke results never overwrite the docs' figures
    else:
        out = Path(args.out or "docs/img/dvt")
    results = []
    for name in args.datasets:
        results.append(run_dataset(name, args))
        write_outputs(results[-1], out)
    print(f"outputs in {out}")
    return results


if __name__ == "__main__":
    main()

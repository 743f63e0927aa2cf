"""ViT, Swin, CvT and MLP-Mixer on Fashion-MNIST at an equal wall-clock budget, several seeds.

    OMP_NUM_THREADS=2 python benchmarks/family_compare.py --threads 2 --budget-seconds 300 --seeds 0 1 2
    python benchmarks/family_compare.py --smoke                      # digits at 28 px, 2 s per model: seconds

Each family trains from its recipe, recipes/fmnist_{vit,swin,cvt,mixer}_micro.yaml, which differ only
in `model.name` (same data, augmentation, AdamW, warm-up + cosine, label smoothing, batch), with the
vitkit engine. Equal budget: before a model's runs, `calibrate` (benchmarks/time_to_accuracy.py)
times training steps of that model at this batch and thread count, and the number of epochs is set
so that the schedule ends within the budget (floor of 0.95 x budget / epoch time, at least 1); all
seeds of a model use the same number of epochs. The budget covers the training loop, not the final
test evaluation. Seeds change the initialisation, data order and augmentation (`--run.seed`); the
train/val split is fixed.

Prints a Markdown table (model, parameters, GMACs per image, epochs, training seconds, test accuracy
mean ± standard deviation over seeds, and each seed's accuracy), and writes `results.json` to `--out`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import torch
from time_to_accuracy import REPO, calibrate, plan_epochs, train_images, vitkit_model

FAMILIES = ("vit", "swin", "cvt", "mixer")


def markdown(rows: list[dict], header: str, budget: float) -> str:
    lines = [header, "",
             "| model | params | GMACs | epochs | train s | test acc (mean ± sd) | per seed |",
             "|---|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        accs = r["test_accs"]
        sd = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
        lines.append(f"| {r['model']} | {r['params']:,} | {r['gmacs']:.4f} | {r['epochs']} | "
                     f"{statistics.fmean(r['train_s']):.0f}{' (over)' if max(r['train_s']) > budget else ''} | "
                     f"{statistics.fmean(accs):.2f}%{sd} | "
                     f"{', '.join(f'{a:.2f}' for a in accs)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    from vitkit.profile import model_gmacs
    from vitkit.train import apply_overrides, load_recipe, train

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    p.add_argument("--budget-seconds", type=float, default=300.0, help="training budget per run (default 300)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--calib-steps", type=int, default=20)
    p.add_argument("--out", default=None, help="where runs go (default runs/family_compare[_smoke])")
    p.add_argument("--markdown", default=None, help="also write the table to this file")
    p.add_argument("--smoke", action="store_true", help="digits resized to 28 px, 2 s per model, one seed")
    args, overrides = p.parse_known_args(argv)
    if args.smoke:
        args.budget_seconds, args.seeds, args.calib_steps = 2.0, [0], 2
        overrides = ["--data.name=digits", "--data.img_size=28", "--data.val_fraction=0.1", "--data.train_fraction=0.15",
                     "--run.batch_size=32", "--aug.hflip=0.0", *overrides]
    out = Path(args.out or f"runs/family_compare{'_smoke' if args.smoke else ''}")
    import logging

    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    rows = []
    for family in args.families:
        recipe = REPO / "recipes" / f"fmnist_{family}_micro.yaml"
        cfg = load_recipe(recipe)
        apply_overrides(cfg, [f"--run.threads={args.threads}", "--run.progress=false", *overrides])
        size = cfg.data.img_size or 28
        step = calibrate(vitkit_model(cfg, 10, 1, size), cfg, 1, size, args.calib_steps)
        epochs = plan_epochs(args.budget_seconds, step, train_images(cfg.data.name, cfg) // cfg.run.batch_size)
        row = {"model": cfg.model.name, "epochs": epochs, "test_accs": [], "train_s": [], "runs": [],
               "gmacs": model_gmacs(cfg.model.name, img_size=size, **cfg.model.overrides)}
        for seed in args.seeds:
            run_cfg = load_recipe(recipe)
            apply_overrides(run_cfg, [f"--run.threads={args.threads}", "--run.progress=false", *overrides,
                                      f"--run.seed={seed}", f"--sched.epochs={epochs}",
                                      f"--sched.warmup_epochs={min(run_cfg.sched.warmup_epochs, epochs / 4)}",
                                      f"--run.out={out / f'{family}-seed{seed}'}"])
            if (Path(run_cfg.run.out) / "checkpoint").exists():
                raise FileExistsError(f"{run_cfg.run.out} holds an earlier run: pass another --out or delete it")
            print(f"{cfg.model.name} seed {seed}: {epochs} epoch(s) for a {args.budget_seconds:.0f} s budget",
                  file=sys.stderr)
            m = train(run_cfg)
            row["params"] = m["params"]
            row["test_accs"].append(m["test_acc"])
            row["train_s"].append(m["train_seconds"])
            row["runs"].append(m["run_dir"])
        rows.append(row)
    header = (f"{', '.join(args.families)} on {cfg.data.name}: {args.budget_seconds:.0f} s of training per run, "
              f"{args.threads} thread(s), seeds {args.seeds}, torch {torch.__version__}"
              + (" -- SMOKE RUN (digits, tiny budget): not a measurement" if args.smoke else ""))
    table = markdown(rows, header, args.budget_seconds)
    print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2) + "\n")
    if args.markdown:
        Path(args.markdown).write_text(table)
    return rows


if __name__ == "__main__":
    main()

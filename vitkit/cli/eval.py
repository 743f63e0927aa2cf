"""`vitkit eval` (vitkit/eval/saved.py `evaluate_dir`) and `vitkit calibrate` (vitkit/eval/early_exit.py
`calibrate_dir`): a saved model on held-out data."""

from __future__ import annotations

import argparse

from .common import BF16_HELP, add_engine_flags, add_reuse_cpu_memory_flag, ranged, reuse_cpu_memory


def cmd_eval(args: argparse.Namespace) -> int:
    from ..eval.saved import evaluate_dir

    reuse_cpu_memory(args)
    r = evaluate_dir(
        args.model,
        dataset=args.data,
        data_dir=args.data_dir,
        split=args.split,
        bf16=args.bf16,
        engine=args.engine,
        threads=args.threads,
        check=not args.no_check,
        num_workers=args.workers,
    )
    engine = f" with onnxruntime ({r['engine']['onnx']})" if "engine" in r else ""
    print(
        f"{r['model_dir']} on {r['dataset']} ({r['split']}, {r['images']} images){engine}: top-1 {r['acc']:.2f}%, "
        f"top-5 {r['top5']:.2f}%, loss {r['loss']:.4f}"
    )
    worst = sorted(r["per_class_acc"].items(), key=lambda kv: kv[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{c} {a:.1f}%" for c, a in worst))
    if "figure" in r:
        print(f"confusion matrix: {r['figure']}")
    if "exits" in r:  # early-exit models (DVT)
        e = r["exits"]
        print(
            f"exits (images per exit): {e['exit_counts']}, thresholds {e['thresholds']}, mean "
            f"{e['mean_gmacs']:.5f} GMACs per image (exit costs {[round(g, 5) for g in e['exit_gmacs']]})"
        )
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from ..eval.early_exit import calibrate_dir

    r = calibrate_dir(
        args.model,
        budget=args.budget,
        target_gmacs=args.gmacs,
        dataset=args.data,
        data_dir=args.data_dir,
        val_fraction=args.val_fraction,
        seed=args.seed,
    )
    print(
        f"{r['model_dir']}: thresholds {[round(t, 4) for t in r['thresholds']]} for {r['target_gmacs']:.5f} GMACs "
        f"per image (exit costs {[round(g, 5) for g in r['exit_gmacs']]})"
    )
    print(
        f"held-out {r['dataset']} ({r['heldout_images']} images): top-1 {r['heldout_acc']:.2f}%, "
        f"{r['heldout_gmacs']:.5f} GMACs per image, exit fractions {r['heldout_exit_fractions']}; "
        f"saved to {r['model_dir']}/config.json"
    )
    return 0


def add_parser(sub) -> None:
    """Register `vitkit eval` on the command line's sub-parsers."""
    p = sub.add_parser("eval", help="evaluate a trained model on its dataset's test split")
    p.add_argument("model", help="a run directory (vitkit train --out) or a model directory")
    p.add_argument("--data", default=None, help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument(
        "-j",
        "--workers",
        type=ranged(int, 0),
        default=0,
        help="DataLoader processes that decode image files (timm's -j); in-memory datasets need none",
    )
    p.add_argument("--bf16", action="store_true", help=BF16_HELP)
    add_engine_flags(p)
    add_reuse_cpu_memory_flag(p)
    p.set_defaults(func=cmd_eval)


def add_calibrate_parser(sub) -> None:
    """Register `vitkit calibrate` on the command line's sub-parsers."""
    p = sub.add_parser(
        "calibrate",
        help="set a DVT's early-exit thresholds for a compute budget (held-out data)",
        description="Choose the exit thresholds of a trained DVT (dvt_*) so that its average GMACs "
        "per image meet a budget on the held-out split of its training data, and store "
        "them (with each exit's GMACs) in the model's config.json.",
    )
    p.add_argument("model", help="a run directory (vitkit train --out) or a model directory")
    p.add_argument(
        "--budget",
        type=ranged(float, 0, 1, low_open=True),
        default=None,
        help="average cost as a fraction of the last exit's GMACs",
    )
    p.add_argument(
        "--gmacs",
        type=ranged(float, 0, low_open=True),
        default=None,
        help="average cost in GMACs per image (instead of --budget)",
    )
    p.add_argument("--data", default=None, help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument(
        "--val-fraction",
        type=ranged(float, 0, 1, low_open=True, high_open=True),
        default=0.1,
        help="held-out fraction (as vitkit train's)",
    )
    p.add_argument("--seed", type=int, default=0, help="split seed (as vitkit train's --data.seed)")
    p.set_defaults(func=cmd_calibrate)

"""`vitkit` command line: a thin dispatcher over importable functions.

    vitkit train [--recipe R] [--out DIR] [--resume] [--section.field=value ...]
    vitkit eval RUN_OR_MODEL_DIR                  top-1/top-5 on the test split the model was trained on
    vitkit models [PATTERN]                       registered model names with parameter counts
    vitkit info NAME                              a model's configuration and size
    vitkit predict MODEL_DIR IMAGE...             classify images with a saved model
"""

from __future__ import annotations

import argparse
import json
import logging
import sys


def _count_params(name: str) -> int:
    import torch

    from .profile import count_params
    from .registry import create_model

    with torch.device("meta"):
        return count_params(create_model(name))


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, apply_overrides, load_recipe, train

    cfg = load_recipe(args.recipe) if args.recipe else TrainConfig()
    apply_overrides(cfg, args.overrides)
    if args.out:
        cfg.run.out = args.out
    if args.resume:
        cfg.run.resume = True
    m = train(cfg)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"\n{m['model']} ({m['params']:,} parameters) on {m['dataset']}: test accuracy {m['test_acc']:.2f}% "
              f"(top-5 {m['test_top5']:.2f}%), best val {m['best_val_acc']}%, {m['epochs']} epochs in "
              f"{m['train_seconds']:.0f} s ({m['images_per_second']:.0f} img/s, {m['processes']} process(es) x "
              f"{m['threads']} threads)")
        print(f"run directory: {m['run_dir']}  (model: {m['model_dir']}, curves: {m.get('figure', 'no matplotlib')})")
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_cli import evaluate_dir

    r = evaluate_dir(args.model, dataset=args.data, data_dir=args.data_dir, split=args.split)
    print(f"{r['model_dir']} on {r['dataset']} ({r['split']}, {r['images']} images): top-1 {r['acc']:.2f}%, "
          f"top-5 {r['top5']:.2f}%, loss {r['loss']:.4f}")
    worst = sorted(r["per_class_acc"].items(), key=lambda kv: kv[1])[:5]
    print("lowest per-class accuracy: " + ", ".join(f"{c} {a:.1f}%" for c, a in worst))
    if "figure" in r:
        print(f"confusion matrix: {r['figure']}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    from .profile import model_gmacs

    width = max(map(len, names))
    if args.params:
        print(f"{'model':<{width}}  {'params':>13}  {'GMACs':>8}")
    for name in names:
        print(f"{name:<{width}}  {_count_params(name):>13,}  {model_gmacs(name):>8.2f}" if args.params else name)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from .registry import get_model_spec

    spec = get_model_spec(args.name)
    from .profile import model_gmacs

    info = {"name": spec.name, "family": spec.family, "parameters": _count_params(args.name),
            "gmacs": round(model_gmacs(args.name), 3),
            "config": spec.config, "pretrained_cfg": spec.pretrained_cfg}
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_files

    for path, top in predict_files(args.model, args.images, top_k=args.top_k):
        print(f"{path}: " + ", ".join(f"{label} {p:.1%}" for label, p in top))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="vitkit", description="The Vision Transformer family in PyTorch.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train", help="train a model (no arguments: a ViT on the real scikit-learn digits, about a minute)",
        description="Train a model. Settings come from the defaults, then --recipe, then --SECTION.FIELD=VALUE "
                    "overrides (sections: data, model, optim, sched, run), e.g. --optim.lr=1e-3 --sched.epochs=10 "
                    "--model.name=vit_micro_patch4_28 --data.name=mnist. Under torchrun it trains data-parallel.",
    )
    p.add_argument("--recipe", help="a YAML recipe (see recipes/)")
    p.add_argument("--out", help="run directory (default: runs/MODEL-DATA-TIME)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a trained model on its dataset's test split")
    p.add_argument("model", help="a run directory (vitkit train --out) or a model directory")
    p.add_argument("--data", default=None, help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list registered model names")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style wildcard, e.g. 'deit_*'")
    p.add_argument("--params", action="store_true", help="also print parameter counts and GMACs per image")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="configuration and parameter count of a model")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("predict", help="classify image files with a saved model directory")
    p.add_argument("model", help="a vitkit directory (save_pretrained) or a Hugging Face ViT/DeiT directory")
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--top-k", type=int, default=5)
    p.set_defaults(func=cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command == "train":
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, ImportError, RuntimeError) as e:  # user errors: one clear line, no traceback
        print(f"vitkit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

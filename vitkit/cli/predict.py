"""`vitkit predict`: classify image files with a saved model (vitkit/predict.py `predict_files`)."""

from __future__ import annotations

import argparse

from .common import BF16_HELP, add_engine_flags, add_reuse_cpu_memory_flag, ranged, reuse_cpu_memory


def cmd_predict(args: argparse.Namespace) -> int:
    from ..predict import predict_files

    reuse_cpu_memory(args)
    costs = []
    for path, top, info in predict_files(
        args.model,
        args.images,
        top_k=args.top_k,
        bf16=args.bf16,
        details=True,
        engine=args.engine,
        threads=args.threads,
        check=not args.no_check,
    ):
        extra = f"  [exit {info['exit']}, {info['gmacs']:.5f} GMACs]" if info else ""
        print(f"{path}: " + ", ".join(f"{label} {p:.1%}" for label, p in top) + extra)
        costs += [info["gmacs"]] if info else []
    if costs:  # early-exit models (DVT)
        print(f"mean GMACs per image: {sum(costs) / len(costs):.5f}")
    return 0


def add_parser(sub) -> None:
    """Register `vitkit predict` on the command line's sub-parsers."""
    p = sub.add_parser("predict", help="classify image files with a saved model directory")
    p.add_argument(
        "model",
        help="a vitkit directory (save_pretrained), a run directory, a Hugging Face ViT/DeiT "
        "directory, or (--engine onnxruntime) an .onnx file written by vitkit export",
    )
    p.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...)")
    p.add_argument("--top-k", type=ranged(int, 1), default=5, help="classes shown per image (default 5)")
    p.add_argument("--bf16", action="store_true", help=BF16_HELP)
    add_engine_flags(p)
    add_reuse_cpu_memory_flag(p)
    p.set_defaults(func=cmd_predict)

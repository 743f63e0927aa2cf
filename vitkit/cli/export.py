"""`vitkit export`: ONNX with a dynamic batch axis, checked with onnxruntime (vitkit/export.py `export`)."""

from __future__ import annotations

import argparse


def cmd_export(args: argparse.Namespace) -> int:
    from ..export import export

    result = export(args.checkpoint, fmt=args.format, out=args.out, opset=args.opset, check=not args.no_check)
    print(result.summary())
    return 0


def add_parser(sub) -> None:
    """Register `vitkit export` on the command line's sub-parsers."""
    p = sub.add_parser("export", help="export a model to ONNX (dynamic batch), checked against onnxruntime")
    p.add_argument(
        "checkpoint",
        help="a run directory, a vitkit or Hugging Face model directory, or a registered model name (random weights)",
    )
    p.add_argument("--format", default="onnx", help="export format (supported: onnx)")
    p.add_argument("--out", default=None, help="output file (default: model.onnx next to the weights, or NAME.onnx)")
    p.add_argument("--opset", type=int, default=18, help="ONNX opset version (default 18)")
    p.add_argument("--no-check", action="store_true", help="skip the onnxruntime comparison")
    p.set_defaults(func=cmd_export)

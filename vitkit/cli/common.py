"""Flags and argparse types that several subcommands share."""

from __future__ import annotations

import argparse
import math

BF16_HELP = (
    "bf16 autocast inference: fast on CPUs with AMX or AVX512-BF16 and on CUDA; elsewhere bf16 is "
    "emulated, slower than fp32, and a warning says so"
)


class SettingsHelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, except that the settings listing (vitkit/train/config.py `settings_help`, the epilog of
    `vitkit train --help` and `vitkit pretrain --help`) keeps its lines."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("settings ("):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


def ranged(
    kind: type, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
):
    """An argparse `type` that parses `kind` and checks the range, so a bad flag fails as a usage error (exit 2)."""
    span = ("(" if low_open else "[") + f"{low}, {high}" + (")" if high_open else "]")

    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
        bad = (
            not math.isfinite(value)
            or (low is not None and (value <= low if low_open else value < low))
            or (high is not None and (value >= high if high_open else value > high))
        )
        if bad:
            what = f"in {span}" if high is not None else (f"> {low}" if low_open else f">= {low}")
            raise argparse.ArgumentTypeError(f"{text} is out of range: it must be {what}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def add_run_flags(p: argparse.ArgumentParser, recipes: str, default_out: str) -> None:
    """--recipe, --out, --resume and --overwrite of `vitkit train` and `vitkit pretrain`."""
    p.add_argument("--recipe", help=f"a YAML recipe (see {recipes})")
    p.add_argument("--out", help=f"run directory (default: {default_out})")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with the settings saved in its config.yaml",
    )
    p.add_argument("--overwrite", action="store_true", help="let a new run replace the outputs of an existing --out")


def add_engine_flags(p: argparse.ArgumentParser) -> None:
    """--engine, --threads and --no-check of `vitkit predict` and `vitkit eval` (vitkit/predict.py `load_model`)."""
    p.add_argument(
        "--engine",
        default="torch",
        choices=["torch", "onnxruntime"],
        help="torch (default), or onnxruntime: the model's ONNX export (vitkit export; cached as "
        'MODEL_DIR/model.onnx) run by onnxruntime on the CPU (pip install "vitkit[onnx]")',
    )
    p.add_argument("--threads", type=ranged(int, 1), default=None, help="intra-op threads (default: torch's)")
    p.add_argument(
        "--no-check",
        action="store_true",
        help="--engine onnxruntime: skip the comparison with PyTorch on the first batch",
    )


def add_reuse_cpu_memory_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-reuse-cpu-memory",
        dest="reuse_cpu_memory",
        action="store_false",
        help="leave glibc's allocator defaults (by default freed blocks are kept for the next forward "
        "pass, as in `vitkit train`: ViT-S inference 1.07x at batch 1, 1.16x at 32; "
        "docs/benchmarks.md#the-allocator)",
    )


def reuse_cpu_memory(args: argparse.Namespace) -> None:
    """Keep freed blocks for the next batch (vitkit/allocator.py) unless --no-reuse-cpu-memory: each forward pass
    frees and re-allocates its activations, which glibc's defaults fault in anew (ViT-S inference 1.07x at batch 1,
    1.16x at 32)."""
    if args.reuse_cpu_memory:
        from ..allocator import reuse_freed_memory

        reuse_freed_memory()


def is_rank_zero() -> bool:
    """True in a single process and in the first process of a `torchrun` job: the one that prints the summary."""
    import os

    return int(os.environ.get("RANK", "0")) == 0

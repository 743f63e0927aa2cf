"""`vitkit` command line: every subcommand's parser and `cmd_*` function, over importable library functions.

vitkit train [--recipe R] [--out DIR] [--resume] [--section.field=value ...]
vitkit pretrain METHOD [--recipe R] [...]     self-supervised pre-training (mae, mpp, dino, msn)
vitkit eval RUN_OR_MODEL_DIR                  top-1/top-5 on the test split the model was trained on
vitkit models [PATTERN] [--pretrained]        registered model names (--pretrained: their weights' tags)
vitkit info NAME                              a model's configuration and size
vitkit predict MODEL_DIR IMAGE...             classify images with a saved model
vitkit calibrate RUN_OR_MODEL_DIR --budget F  early-exit thresholds of a DVT for a compute budget
vitkit make-shards DATASET OUT_DIR            write a dataset as WebDataset tar shards
vitkit push RUN_DIR REPO_ID [--dry-run DIR]   upload a model with a model card to the Hugging Face Hub
vitkit export CHECKPOINT [--format onnx]      ONNX with a dynamic batch axis, checked with onnxruntime
vitkit inspect MODEL [IMAGE...] --out DIR     attention maps, rollout, attention distance, embeddings

One module per subcommand (or small group): train.py, pretrain.py, eval.py (eval, calibrate), models.py
(models, info), predict.py, data.py (make-shards), push.py, export.py, inspect.py. Each has `add_parser(sub)`
and `cmd_*(args)`; a `cmd_*` function reads the parsed arguments, calls the library and prints for a terminal.
The library (vitkit.train, vitkit.eval, vitkit.predict, ...) never imports this package. common.py holds the
shared flags, errors.py the rule that turns a user's mistake into one line (`user_error_message`).

`python -m vitkit.cli` (and `torchrun -m vitkit.cli`) runs the same `main` as the `vitkit` script.
"""

from __future__ import annotations

import argparse
import logging
import sys
import traceback

from . import data, eval, export, inspect, models, predict, pretrain, push, train
from .errors import DEBUG_HELP, user_error_message

__all__ = ["build_parser", "main", "user_error_message"]


def build_parser() -> argparse.ArgumentParser:
    """The `vitkit` parser with every subcommand; each sub-parser's `func` default is its `cmd_*` function, and
    `settings=True` marks the commands that take --SECTION.FIELD=VALUE settings (train, pretrain)."""
    from .. import __version__

    parser = argparse.ArgumentParser(prog="vitkit", description="The Vision Transformer family in PyTorch.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    train.add_parser(sub)
    pretrain.add_parser(sub)
    eval.add_parser(sub)
    models.add_parser(sub)
    models.add_info_parser(sub)
    predict.add_parser(sub)
    eval.add_calibrate_parser(sub)
    data.add_parser(sub)
    push.add_parser(sub)
    export.add_parser(sub)
    inspect.add_parser(sub)
    return parser


def resume_hint(args: argparse.Namespace) -> str:
    """For an interrupted training run: the command that continues it from its last checkpoint."""
    if args.command not in ("train", "pretrain"):
        return ""
    out = getattr(args, "out", None) or next(
        (o.split("=", 1)[1] for o in getattr(args, "overrides", None) or [] if o.startswith("--run.out=")), None
    )
    method = f" {args.method}" if args.command == "pretrain" else ""
    return (
        f"; continue it from its last checkpoint with `vitkit {args.command}{method} --out {out or 'RUN_DIR'} --resume`"
    )


def main(argv: list[str] | None = None) -> int:
    """`vitkit ...`: 0 on success; a user's mistake (a setting, a file, the environment) gives one message on stderr
    and exit code 2 (`--debug`: its traceback too); anything else is a bug and shows its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "settings", False):  # train, pretrain: the rest are --SECTION.FIELD=VALUE settings
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted{resume_hint(args)}", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- sorted below: a user's mistake gets a message, a bug its traceback
        message = user_error_message(e)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"vitkit {args.command}: error: {message}", file=sys.stderr)
        return 2

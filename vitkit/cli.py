"""`vitkit` command line: a thin dispatcher over importable functions.

vitkit train [--recipe R] [--out DIR] [--resume] [--section.field=value ...]
vitkit eval RUN_OR_MODEL_DIR                  top-1/top-5 on the test split the model was trained on
vitkit models [PATTERN] [--pretrained]        registered model names (--pretrained: their weights' tags)
vitkit info NAME                              a model's configuration and size
vitkit predict MODEL_DIR IMAGE...             classify images with a saved model
vitkit pretrain METHOD [--recipe R] [...]     self-supervised pre-training (mae, mpp, dino, msn)
vitkit calibrate RUN_OR_MODEL_DIR --budget F  early-exit thresholds of a DVT for a compute budget
vitkit inspect MODEL [IMAGE...] --out DIR     attention maps, rollout, attention distance, embeddings
vitkit make-shards DATASET OUT_DIR            write a dataset as WebDataset tar shards
vitkit export CHECKPOINT [--format onnx]      ONNX with a dynamic batch axis, checked with onnxruntime
"""

from __future__ import annotations

import argparse
import errno
import json
import logging
import re
import sys
import traceback

BF16_HELP = (
    "bf16 autocast inference: fast on CPUs with AMX or AVX512-BF16 and on CUDA; elsewhere bf16 is "
    "emulated, slower than fp32, and a warning says so"
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


def ranged(
    kind: type, low: float | None = None, high: float | None = None, low_open: bool = False, high_open: bool = False
):
    """An argparse `type` that parses `kind` and checks the range, so a bad flag fails as a usage error (exit 2)."""
    import math

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
    if args.finetune:  # a pre-trained backbone (vitkit pretrain): its model, layer-wise LR decay 0.75
        from .train.pretrain import finetune_settings

        finetune_settings(cfg, args.finetune)
    if args.out:
        cfg.run.out = args.out
    if args.resume:
        cfg.run.resume = True
    if args.overwrite:
        cfg.run.overwrite = True
    if cfg.run.resume:  # the run's own settings (its config.yaml), then only what this command line states
        from .train.checkpoint import resumed_config

        cfg = resumed_config(
            cfg,
            "train",
            args.recipe,
            args.overrides,
            (lambda c: finetune_settings(c, args.finetune)) if args.finetune else None,
        )
    from .train.config import check_config

    check_config(cfg)  # every setting in range and the model buildable, before any data is read
    m = train(cfg)
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        val = f"best val {m['best_val_acc']}%" if m["best_val_acc"] is not None else "no validation split"
        print(
            f"\n{m['model']} ({m['params']:,} parameters) on {m['dataset']}: test accuracy {m['test_acc']:.2f}% "
            f"(top-5 {m['test_top5']:.2f}%), {val}, {m['epochs']} epochs in "
            f"{m['train_seconds']:.0f} s ({m['images_per_second']:.0f} img/s, {m['processes']} process(es) x "
            f"{m['threads']} threads)"
        )
        print(f"run directory: {m['run_dir']}  (model: {m['model_dir']}, curves: {m.get('figure', 'no matplotlib')})")
    return 0


def reuse_cpu_memory(args: argparse.Namespace) -> None:
    """Keep freed blocks for the next batch (vitkit/allocator.py) unless --no-reuse-cpu-memory: each forward pass
    frees and re-allocates its activations, which glibc's defaults fault in anew (ViT-S inference 1.07x at batch 1,
    1.16x at 32)."""
    if args.reuse_cpu_memory:
        from .allocator import reuse_freed_memory

        reuse_freed_memory()


def cmd_eval(args: argparse.Namespace) -> int:
    from .eval_cli import evaluate_dir

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


def _print_pretrained(pattern: str | None) -> int:
    """`vitkit models --pretrained`: every known pretrained weight (name.tag), where it comes from and its
    preprocessing; the pattern matches the model name or the whole name.tag."""
    import fnmatch

    from .pretrained import list_pretrained
    from .registry import resolve_pretrained_cfg

    full = [
        n
        for n in list_pretrained()
        if not pattern or fnmatch.fnmatch(n, pattern) or fnmatch.fnmatch(n.partition(".")[0], pattern)
    ]
    if not full:
        print(f"no pretrained weights match {pattern!r}", file=sys.stderr)
        return 1
    width = max(map(len, full))
    print(
        f"{'model.tag':<{width}}  {'classes':>7}  {'input':>9}  {'mean / std':<34}  {'crop':>5}  {'interp':<8}  source"
    )
    for n in full:
        name, tag = n.split(".", 1)
        c = resolve_pretrained_cfg(name, tag)
        size = "x".join(str(v) for v in c["input_size"][1:])
        stats = "/".join(f"{v:.3g}" for v in c["mean"]) + " / " + "/".join(f"{v:.3g}" for v in c["std"])
        where = f"hf://{c['hf_hub_id']}" if c.get("hf_hub_id") else c.get("url", "")
        print(
            f"{n:<{width}}  {c['num_classes']:>7}  {size:>9}  {stats:<34}  {c['crop_pct']:>5.3g}  "
            f"{c['interpolation']:<8}  {where} ({c['format']})"
        )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .registry import list_models

    if getattr(args, "pretrained", False):
        return _print_pretrained(args.pattern)
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

    info = {
        "name": spec.name,
        "family": spec.family,
        "parameters": _count_params(args.name),
        "gmacs": round(model_gmacs(args.name), 3),
        "config": spec.config,
        "pretrained_cfg": {  # class names as a count: ImageNet's are 1000 lines
            k: f"{len(v)} class names" if k == "label_names" else v for k, v in spec.pretrained_cfg.items()
        },
    }
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from .inspect.run import run_inspect

    s = run_inspect(
        args.model,
        args.out,
        images=args.images,
        data=args.data,
        num_images=args.num_images,
        show=args.show,
        head_fusion=args.head_fusion,
        discard_ratio=args.discard_ratio,
        data_dir=args.data_dir,
        photos=args.photos,
    )
    print(f"{s['model_name']} on {s['num_images']} images ({s['images']}); figures in {args.out}:")
    for key, value in s["figures"].items():
        print(f"  {key}: {', '.join(value) if isinstance(value, list) else value}")
    print(f"numbers: {s['summary']}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict_files

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


def cmd_calibrate(args: argparse.Namespace) -> int:
    from .eval.early_exit import calibrate_dir

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


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    result = export(args.checkpoint, fmt=args.format, out=args.out, opset=args.opset, check=not args.no_check)
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    from .train.config import SettingsHelpFormatter, TrainConfig, settings_help

    parser = argparse.ArgumentParser(prog="vitkit", description="The Vision Transformer family in PyTorch.")
    parser.add_argument("--version", action="version", version=f"vitkit {__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "train",
        help="train a model (no arguments: a ViT on the real scikit-learn digits, about a minute)",
        description="Train a model. Settings come from the defaults, then --recipe, then --SECTION.FIELD=VALUE "
        "overrides (sections: data, aug, model, optim, sched, run, distill), e.g. --optim.lr=1e-3 "
        "--sched.epochs=10 "
        "--model.name=vit_micro_patch4_28 --data.name=mnist. Under torchrun it trains data-parallel.",
        epilog=settings_help(TrainConfig()),
        formatter_class=SettingsHelpFormatter,
    )
    p.add_argument("--recipe", help="a YAML recipe (see recipes/)")
    p.add_argument("--out", help="run directory (default: runs/MODEL-DATA-TIME)")
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its last checkpoint, with the settings saved in its config.yaml",
    )
    p.add_argument("--overwrite", action="store_true", help="let a new run replace the outputs of an existing --out")
    p.add_argument(
        "--finetune",
        metavar="PATH",
        help="fine-tune a pre-trained backbone (vitkit pretrain's RUN or "
        "RUN/backbone): its model, new head, --optim.layer_decay 0.75",
    )
    p.set_defaults(func=cmd_train)

    from .train.pretrain import add_parser as add_pretrain_parser  # vitkit pretrain (vitkit/train/pretrain.py)

    add_pretrain_parser(sub)

    p = sub.add_parser("eval", help="evaluate a trained model on its dataset's test split")
    p.add_argument("model", help="a run directory (vitkit train --out) or a model directory")
    p.add_argument("--data", default=None, help="dataset name (default: the one the model was trained on)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--bf16", action="store_true", help=BF16_HELP)
    add_engine_flags(p)
    add_reuse_cpu_memory_flag(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("models", help="list registered model names")
    p.add_argument("pattern", nargs="?", default=None, help="shell-style wildcard, e.g. 'deit_*'")
    p.add_argument("--params", action="store_true", help="also print parameter counts and GMACs per image")
    p.add_argument(
        "--pretrained",
        action="store_true",
        help="list the known pretrained weights (name.tag for "
        "create_model(..., pretrained=True)), their source and preprocessing",
    )
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("info", help="configuration and parameter count of a model")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

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

    from .data.shards import add_parser as add_make_shards_parser  # vitkit make-shards (vitkit/data/shards.py)

    add_make_shards_parser(sub)
    from .push import add_push_parser  # vitkit push (vitkit/push.py)

    add_push_parser(sub)

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
    p = sub.add_parser(
        "inspect",
        help="attention maps, rollout, attention distance and embedding figures of a model",
        description="Write the ViT paper's figure 6-7 analyses for a model into --out: attention rollout, "
        "the last layer's [CLS] attention per head, mean attention distance per head and layer, "
        "position-embedding similarity, principal components of the patch filters (summary.json "
        "holds the numbers). Images: the files given, else --data, else the dataset the model was "
        "trained on, else scikit-image's bundled photos (--photos forces them).",
    )
    p.add_argument("model", help="a run directory, a model directory, or a registered name (random weights)")
    p.add_argument("images", nargs="*", help="image files (default: see above)")
    p.add_argument("--out", required=True, help="folder for the PNG figures and summary.json")
    p.add_argument("--data", default=None, help="take test images of this dataset (e.g. mnist)")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--photos", action="store_true", help="use scikit-image's bundled photos")
    p.add_argument("--num-images", type=ranged(int, 1), default=128, help="dataset images the distance averages over")
    p.add_argument("--show", type=ranged(int, 1), default=8, help="images shown in the map figures")
    p.add_argument("--head-fusion", default="mean", choices=["mean", "max", "min"], help="rollout head fusion")
    p.add_argument(
        "--discard-ratio",
        type=ranged(float, 0, 1, high_open=True),
        default=0.0,
        help="rollout: drop this fraction of the lowest weights",
    )
    p.set_defaults(func=cmd_inspect)
    return parser


DEBUG_HELP = "show the traceback of an error as well as its message (the flag may also follow the command)"
_WRITE_HINTS = {
    errno.EACCES: "no permission to write there: choose another --out, or fix the permissions",
    errno.EPERM: "no permission to write there: choose another --out, or fix the permissions",
    errno.EROFS: "the file system is read-only: choose another --out",
    errno.ENOSPC: "the disk is full: free some space or choose another --out",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another --out",
    errno.EFBIG: "the file is larger than this file system or the process's file-size limit allows",
    errno.ENAMETOOLONG: "the path is too long",
}


_PIP_NAMES = {
    "sklearn": "scikit-learn",
    "PIL": "Pillow",
    "yaml": "pyyaml",
    "skimage": "scikit-image",
    "cv2": "opencv-python",
}


def _os_error_message(e: OSError) -> str:
    what = e.strerror or str(e)
    hint = _WRITE_HINTS.get(e.errno)
    return (f"{e.filename}: " if e.filename else "") + what + (f" ({hint})" if hint else "")


def _raised_by_vitkit(e: BaseException) -> bool:
    """True when `e` comes from a `raise` statement in vitkit's own code: an error vitkit raises on purpose, with a
    message for the user (e.g. TrainingDiverged), rather than one from inside torch (a bug), including a torch
    operator that fails on a line of vitkit's (a shape mismatch in a forward pass)."""
    import linecache
    import os

    tb = e.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return False
    package = os.path.dirname(os.path.abspath(__file__))
    filename = os.path.abspath(tb.tb_frame.f_code.co_filename)
    if not filename.startswith(package + os.sep):
        return False
    line = linecache.getline(filename, tb.tb_lineno).strip()
    return not line or line.startswith("raise")  # no source to read (an installed .pyc only): vitkit's file decides


def user_error_message(e: BaseException) -> str | None:
    """The message for an error the user can fix (a setting, a file, the environment), None for anything else
    (a bug in vitkit: the CLI lets its traceback through)."""
    import pickle

    try:
        from safetensors import SafetensorError
    except ImportError:  # pragma: no cover -- safetensors is a dependency
        SafetensorError = ()  # noqa: N806
    try:
        from yaml import YAMLError
    except ImportError:  # pragma: no cover
        YAMLError = ()  # noqa: N806
    try:
        from PIL.Image import DecompressionBombError
    except ImportError:  # Pillow is optional
        DecompressionBombError = ()  # noqa: N806
    text = " ".join(str(e).split()) if str(e) else type(e).__name__
    if isinstance(e, pickle.UnpicklingError):
        if text.startswith(("could not read", "refusing to load")):  # vitkit's readers name the file
            return text
        # torch's own text advises weights_only=False, which would run code from the file: keep only the detail
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip() and "weights_only" not in ln]
        detail = next((ln for ln in lines if "GLOBAL" in ln or "Unsupported" in ln), lines[0] if lines else "")
        return (
            f"could not read a pickle file as data ({detail[:300]}): vitkit reads tensors and plain data only "
            f"and never runs code from a file; check the file, or re-save it with safetensors"
        )
    if isinstance(e, EOFError):
        return f"a file ended early: it is truncated or still being written ({text})"
    if isinstance(e, YAMLError):
        return f"not a plain YAML file: {text}"
    if isinstance(e, SafetensorError):
        code = re.search(r"\(os error (\d+)\)", text)
        hint = _WRITE_HINTS.get(int(code.group(1))) if code else None
        return f"safetensors could not read or write a file: {text}" + (f" ({hint})" if hint else "")
    if isinstance(e, DecompressionBombError):
        return f"{text}: resize the image first"
    if (
        isinstance(e, MemoryError)
        or type(e).__name__ == "OutOfMemoryError"
        or (isinstance(e, RuntimeError) and "can't allocate memory" in text)
    ):  # torch's CPU allocator
        return (
            f"out of memory ({text}): use a smaller --run.batch_size or model, or --run.grad_checkpointing=true "
            f"when training"
        )
    if isinstance(e, OSError):  # missing files, permissions, read-only or full disks
        return _os_error_message(e) if e.errno is not None else text
    if isinstance(e, ImportError):
        if (e.name or "").split(".")[0] == "vitkit":  # vitkit's own modules failing to import: a bug
            return None
        if isinstance(e, ModuleNotFoundError) and e.name:  # an optional package that is not installed
            package = _PIP_NAMES.get(e.name.split(".")[0], e.name.split(".")[0])
            return f"{text}: this needs the {package!r} package (pip install {package})"
        return text  # vitkit's own ImportErrors say what to install
    if isinstance(e, ValueError):
        return text
    if isinstance(e, RuntimeError) and _raised_by_vitkit(e):
        return text
    return None


def main(argv: list[str] | None = None) -> int:
    """`vitkit ...`: 0 on success; a user's mistake (a setting, a file, the environment) gives one message on stderr
    and exit code 2 (`--debug`: its traceback too); anything else is a bug and shows its traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.command in ("train", "pretrain"):
        args.overrides = extra
    elif extra:
        parser.error(f"unrecognised arguments: {' '.join(extra)}")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"vitkit {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 -- sorted below: a user's mistake gets a message, a bug its traceback
        message = user_error_message(e)
        if message is None:
            raise
        if debug:
            traceback.print_exc()
        print(f"vitkit {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

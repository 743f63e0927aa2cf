"""`vitkit models` and `vitkit info`: the registry (vitkit/registry.py) and the known pretrained weights."""

from __future__ import annotations

import argparse
import json
import sys


def count_params_by_name(name: str) -> int:
    """The parameter count of a registered model, built on the meta device (no memory, no initialisation):
    what `vitkit models --params` and `vitkit info` print."""
    import torch

    from ..profile import count_params
    from ..registry import create_model

    with torch.device("meta"):
        return count_params(create_model(name))


def print_pretrained(pattern: str | None) -> int:
    """`vitkit models --pretrained`: every known pretrained weight (name.tag), where it comes from and its
    preprocessing; the pattern matches the model name or the whole name.tag."""
    import fnmatch

    from ..pretrained import list_pretrained
    from ..registry import resolve_pretrained_cfg

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
    from ..registry import list_models

    if getattr(args, "pretrained", False):
        return print_pretrained(args.pattern)
    names = list_models(args.pattern)
    if not names:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
    from ..profile import model_gmacs

    width = max(map(len, names))
    if args.params:
        print(f"{'model':<{width}}  {'params':>13}  {'GMACs':>8}")
    for name in names:
        print(f"{name:<{width}}  {count_params_by_name(name):>13,}  {model_gmacs(name):>8.2f}" if args.params else name)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from ..profile import model_gmacs
    from ..registry import get_model_spec

    spec = get_model_spec(args.name)
    info = {
        "name": spec.name,
        "family": spec.family,
        "parameters": count_params_by_name(args.name),
        "gmacs": round(model_gmacs(args.name), 3),
        "config": spec.config,
        "pretrained_cfg": {  # class names as a count: ImageNet's are 1000 lines
            k: f"{len(v)} class names" if k == "label_names" else v for k, v in spec.pretrained_cfg.items()
        },
    }
    print(json.dumps(info, indent=2, default=str))
    return 0


def add_parser(sub) -> None:
    """Register `vitkit models` on the command line's sub-parsers."""
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


def add_info_parser(sub) -> None:
    """Register `vitkit info` on the command line's sub-parsers."""
    p = sub.add_parser("info", help="configuration and parameter count of a model")
    p.add_argument("name")
    p.set_defaults(func=cmd_info)

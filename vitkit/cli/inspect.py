"""`vitkit inspect`: attention maps, rollout, attention distance and embedding figures of a model
(vitkit/inspect/run.py `run_inspect`)."""

from __future__ import annotations

import argparse

from .common import ranged


def cmd_inspect(args: argparse.Namespace) -> int:
    from ..inspect.run import run_inspect

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


def add_parser(sub) -> None:
    """Register `vitkit inspect` on the command line's sub-parsers."""
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

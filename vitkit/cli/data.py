"""`vitkit make-shards`: write a dataset as WebDataset tar shards (vitkit/data/shards.py `write_shards`)."""

from __future__ import annotations

import argparse


def cmd_make_shards(args: argparse.Namespace) -> int:
    from ..data.datasets import load_dataset
    from ..data.shards import write_shards

    splits = load_dataset(args.dataset, args.data_dir, val_fraction=args.val_fraction, seed=args.seed)
    written = write_shards(splits, args.out, maxcount=args.maxcount, shuffle=not args.no_shuffle, seed=args.seed)
    for split, paths in written.items():
        last = len(paths) - 1
        print(f"{split}: {len(paths)} shard(s), {args.out}/{split}-{{000000..{last:06d}}}.tar")
    last_train = len(written["train"]) - 1
    print(
        f"train with: vitkit train --data.name=shards --data.data_dir='{args.out}/train-{{000000..{last_train:06d}}}.tar'"
    )
    return 0


def add_parser(sub) -> None:
    """Register `vitkit make-shards` on the command line's sub-parsers."""
    p = sub.add_parser(
        "make-shards",
        help="write a dataset as WebDataset tar shards (train/val/test-NNNNNN.tar)",
        description="Write any dataset `vitkit train` reads as WebDataset tar shards (PNG + .cls "
        "per sample) plus dataset.json; train on them with --data.name=shards "
        "--data.data_dir='OUT/train-{000000..N}.tar'.",
    )
    p.add_argument("dataset", help="a dataset name (digits, mnist, fashion_mnist, cifar10, folder, ...)")
    p.add_argument("out", help="output directory")
    p.add_argument("--data-dir", default=None, help="where the dataset is (as --data.data_dir of vitkit train)")
    p.add_argument("--maxcount", type=int, default=10_000, help="samples per shard (default 10000)")
    p.add_argument(
        "--val-fraction",
        type=float,
        default=0.0,
        help="also write val shards carved from train (default 0: train and test only)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the split and of the shuffle before writing")
    p.add_argument("--no-shuffle", action="store_true", help="keep the source order")
    p.set_defaults(func=cmd_make_shards)

"""`vitkit pretrain METHOD`: self-supervised pre-training (vitkit/train/pretrain.py `pretrain`)."""

from __future__ import annotations

import argparse

from .common import SettingsHelpFormatter, add_run_flags, is_rank_zero


def cmd_pretrain(args: argparse.Namespace) -> int:
    """`vitkit pretrain METHOD [--recipe R] [--out DIR] [--resume] [--section.field=value ...]`."""
    from ..train.pretrain import pretrain, pretrain_config

    cfg = pretrain_config(args.method, args.recipe, args.overrides)
    if args.out:
        cfg.run.out = args.out
    if args.resume:
        cfg.run.resume = True
    if args.overwrite:
        cfg.run.overwrite = True
    if cfg.run.resume:  # the run's own settings (its config.yaml), then only what this command line states
        from ..train.checkpoint import resumed_config

        cfg = resumed_config(
            cfg, "pretrain", args.recipe, args.overrides, lambda c: setattr(c.method, "name", args.method)
        )
    m = pretrain(cfg)
    if is_rank_zero():
        std = m["final_feature_std"]
        print(
            f"\n{m['method']} pre-training of {m['model']} ({m['params']:,} parameters, {m['trainable_params']:,} "
            f"trainable) on {m['dataset']}: final loss {m['final_loss']:.4f}, feature std "
            f"{'n/a' if std is None else f'{std:.4f}'}, {m['epochs']} epochs in {m['train_seconds']:.0f} s ({m['processes']} "
            f"process(es) x {m['threads']} threads)"
        )
        print(
            f"run directory: {m['run_dir']}  (backbone: {m['backbone_dir']}; fine-tune it with "
            f"`vitkit train --finetune {m['backbone_dir']} --data.name={m['dataset']}`)"
        )
    return 0


def add_parser(sub) -> None:
    """Register `vitkit pretrain` on the command line's sub-parsers."""
    from ..train.config import settings_help
    from ..train.pretrain import PretrainConfig

    p = sub.add_parser(
        "pretrain",
        help="self-supervised pre-training of a ViT backbone (mae, mpp, dino, msn)",
        description="Pre-train a backbone without labels. Settings come from the defaults, then --recipe, then "
        "--SECTION.FIELD=VALUE overrides (sections: method, data, model, optim, sched, run; method "
        "options as --method.options.mask_ratio=0.75), e.g. `vitkit pretrain mae --data.name=mnist "
        "--model.name=vit_micro_patch4_28`. Under torchrun it trains data-parallel. The encoder is "
        "written to RUN/backbone for `vitkit train --finetune`.",
        epilog=settings_help(PretrainConfig()),
        formatter_class=SettingsHelpFormatter,
    )
    p.add_argument("method", help="mae | mpp | dino | msn")
    add_run_flags(p, "recipes/pretrain_*.yaml", "runs/pretrain-METHOD-MODEL-DATA-TIME")
    p.set_defaults(func=cmd_pretrain, settings=True)

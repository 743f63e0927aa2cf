"""`vitkit train`: supervised training (vitkit/train/engine.py `train`)."""

from __future__ import annotations

import argparse

from .common import SettingsHelpFormatter, add_run_flags, is_rank_zero


def cmd_train(args: argparse.Namespace) -> int:
    from ..train import TrainConfig, apply_overrides, load_recipe, train
    from ..train.pretrain import finetune_settings

    cfg = load_recipe(args.recipe) if args.recipe else TrainConfig()
    apply_overrides(cfg, args.overrides)
    if args.finetune:  # a pre-trained backbone (vitkit pretrain): its model, layer-wise LR decay 0.75
        finetune_settings(cfg, args.finetune)
    if args.out:
        cfg.run.out = args.out
    if args.resume:
        cfg.run.resume = True
    if args.overwrite:
        cfg.run.overwrite = True
    if cfg.run.resume:  # the run's own settings (its config.yaml), then only what this command line states
        from ..train.checkpoint import resumed_config

        cfg = resumed_config(
            cfg,
            "train",
            args.recipe,
            args.overrides,
            (lambda c: finetune_settings(c, args.finetune)) if args.finetune else None,
        )
    from ..train.config import check_config

    check_config(cfg)  # every setting in range and the model buildable, before any data is read
    m = train(cfg)
    if is_rank_zero():
        val = f"best val {m['best_val_acc']}%" if m["best_val_acc"] is not None else "no validation split"
        print(
            f"\n{m['model']} ({m['params']:,} parameters) on {m['dataset']}: test accuracy {m['test_acc']:.2f}% "
            f"(top-5 {m['test_top5']:.2f}%), {val}, {m['epochs']} epochs in "
            f"{m['train_seconds']:.0f} s ({m['images_per_second']:.0f} img/s, {m['processes']} process(es) x "
            f"{m['threads']} threads)"
        )
        print(f"run directory: {m['run_dir']}  (model: {m['model_dir']}, curves: {m.get('figure', 'no matplotlib')})")
    return 0


def add_parser(sub) -> None:
    """Register `vitkit train` on the command line's sub-parsers."""
    from ..train.config import TrainConfig, settings_help

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
    add_run_flags(p, "recipes/", "runs/MODEL-DATA-TIME")
    p.add_argument(
        "--finetune",
        metavar="PATH",
        help="fine-tune a pre-trained backbone (vitkit pretrain's RUN or "
        "RUN/backbone): its model, new head, --optim.layer_decay 0.75",
    )
    p.set_defaults(func=cmd_train, settings=True)

"""`vitkit push`: a trained model to the Hugging Face Hub with a model card (vitkit/push.py `save_for_hub`,
`push_to_hub`)."""

from __future__ import annotations

import argparse
import json


def cmd_push(args: argparse.Namespace) -> int:
    from ..hub import CONFIG_NAME, CheckpointError, from_pretrained
    from ..push import HUB_FILES, push_to_hub, read_run, save_for_hub

    run = read_run(args.run)
    try:
        model = from_pretrained(run.model_dir)
    except CheckpointError as e:
        raise ValueError(str(e)) from None
    card = {"license": args.license} if args.license else None
    if args.replace_card and card is None:
        card = {}
    run_dir = run.run_dir if run.run_dir is not None else run.model_dir
    timm_compatible = False if args.no_timm else None
    if args.local_dir:
        out = save_for_hub(
            model,
            args.local_dir,
            model_card=card,
            run_dir=run_dir,
            repo_id=args.repo_id,
            timm_compatible=timm_compatible,
        )
        cfg = json.loads((out / CONFIG_NAME).read_text())
        loads = "vitkit and timm" if "vitkit" in cfg else "vitkit"
        print(f"wrote {', '.join(HUB_FILES)} to {out} (loads with {loads}); nothing uploaded")
        return 0
    info = push_to_hub(
        model,
        args.repo_id,
        commit_message=args.commit_message,
        private=args.private,
        revision=args.revision,
        create_pr=args.create_pr,
        model_card=card,
        run_dir=run_dir,
        timm_compatible=timm_compatible,
    )
    where = getattr(info, "pr_url", None) or getattr(info, "commit_url", None) or info
    print(f"pushed {run.model_dir} to {getattr(info, 'repo_url', None) or args.repo_id}: {where}")
    return 0


def add_parser(sub) -> None:
    """Register `vitkit push` on the command line's sub-parsers."""
    p = sub.add_parser(
        "push",
        help="upload a trained model to the Hugging Face Hub (with a model card)",
        description="Upload a run's model (or a model directory) to a Hugging Face Hub repository: config.json "
        "(read by vitkit, and by timm where timm builds the same network), model.safetensors and a "
        "README.md model card with the run's metrics and training command. --dry-run DIR writes the "
        "folder without uploading.",
    )
    p.add_argument("run", metavar="RUN_DIR", help="a run directory (vitkit train --out) or a model directory")
    p.add_argument("repo_id", metavar="REPO_ID", help="the Hub repository, USER/NAME or ORG/NAME (created if needed)")
    p.add_argument("--private", action="store_true", default=None, help="create the repository private")
    p.add_argument("--revision", default=None, help="branch to push to (created if needed)")
    p.add_argument("--commit-message", default=None, help='commit message (default "Upload model")')
    p.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")
    p.add_argument("--license", default=None, help="the card's license (default apache-2.0)")
    p.add_argument(
        "--replace-card",
        action="store_true",
        help="upload the generated README.md even if the repository has one (kept by default)",
    )
    p.add_argument("--no-timm", action="store_true", help="write vitkit's config.json only, without timm's keys")
    p.add_argument(
        "--dry-run",
        "--local-dir",
        dest="local_dir",
        metavar="DIR",
        default=None,
        help="write the folder that would be uploaded into DIR and upload nothing",
    )
    p.set_defaults(func=cmd_push)

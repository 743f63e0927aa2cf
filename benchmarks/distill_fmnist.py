"""DeiT's distillation ordering in miniature: Fashion-MNIST (a 10% subset or all of it), a CNN teacher,
one micro ViT student, four ways of training it, several seeds.

    python benchmarks/distill_fmnist.py --fraction 0.1 --augment --threads 1 --bf16 false   # 10% (docs, section 2)
    python benchmarks/distill_fmnist.py --fraction 1.0 --augment --threads 1 --batch-size 128 --epochs 10  # all (section 3)
    python benchmarks/distill_fmnist.py --smoke [--augment]                    # the pipeline in a minute

What it does (every step is a `vitkit.train.train` run, i.e. `vitkit train` with these settings):
1. Train the teacher (`resnet_micro_28` by default, 12 epochs) once on the same training images
   the students get; it is kept in OUT/teacher and reused by later invocations (delete it to retrain).
2. Train the student for each method and seed, with the same budget (epochs, batch, schedule):
     none        the student (`vit_micro_patch7_28`), cross-entropy on the labels
     soft        the student, (1 - 0.1) CE + 0.1 tau^2 KL (tau 3)                         DeiT eq. 2
     hard        the student, 1/2 CE(labels) + 1/2 CE(teacher argmax)                     DeiT eq. 3
     hard+token  the student plus DeiT's distillation token and head (`distilled=True`): label
                 term on the class head, teacher term on the distillation head; tested with the
                 mean of the two heads (DeiT's default)
   Without --augment the students see the un-augmented images, so the teacher's train-set logits
   are computed once and cached (`--distill.cache_logits=true`, valid exactly then); with
   --augment teacher and students train on crops + flips and the teacher labels every batch.
3. Print a Markdown table (test accuracy mean +- sample std over seeds, min-max, each seed) and
   write OUT/results.json.

No validation split is carved (`val_fraction=0`): `--fraction` is a share of the official 60,000
training images; the test set is the official 10,000.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

METHODS = {  # method -> (distillation token?, distill settings)
    "none": (False, {"type": "none"}),
    "soft": (False, {"type": "soft"}),
    "hard": (False, {"type": "hard"}),
    "hard+token": (True, {"type": "hard", "token": True}),
}


# --augment: random resized crops and horizontal flips, for the teacher and the students. The teacher then
# runs on every augmented batch, as in DeiT, and its labels can differ from the ground truth; without
# augmentation a teacher that fits its training images labels them exactly as the ground truth does.
AUGMENT = ["--aug.random_resized_crop=true", "--aug.scale=[0.6, 1.0]", "--aug.hflip=0.5"]


def run(overrides: list[str]) -> dict:
    from vitkit.train import TrainConfig, apply_overrides, train

    return train(apply_overrides(TrainConfig(), overrides))


def common(args: argparse.Namespace) -> list[str]:
    return [f"--data.name={args.data}", "--data.val_fraction=0", f"--data.train_fraction={args.fraction}",
            f"--run.threads={args.threads}", "--run.progress=false", f"--run.batch_size={args.batch_size}",
            "--data.num_workers=0", f"--run.precision={dict(auto='auto', true='bf16', false='fp32')[args.bf16]}"]


def train_teacher(args: argparse.Namespace, out: Path) -> dict:
    teacher_dir = out / "teacher"
    if (teacher_dir / "metrics.json").is_file():
        print(f"teacher: reusing {teacher_dir}", file=sys.stderr)
        return json.loads((teacher_dir / "metrics.json").read_text())
    overrides = [*common(args), f"--model.name={args.teacher}", f"--sched.epochs={args.teacher_epochs}",
                 "--sched.warmup_epochs=1", "--optim.lr=0.003", "--run.seed=0", f"--run.out={teacher_dir}"]
    if args.augment:  # a teacher trained on the kind of images it will label (DeiT trains it with augmentation)
        overrides += AUGMENT
    if args.smoke:
        overrides.append("--model.overrides.widths=[8, 16, 32]")
        overrides.append("--model.overrides.stem_width=8")
    return run(overrides)


def train_student(args: argparse.Namespace, out: Path, method: str, seed: int) -> dict:
    run_dir = out / f"{method.replace('+', '_')}-seed{seed}"
    if (run_dir / "metrics.json").is_file():
        return json.loads((run_dir / "metrics.json").read_text())
    token, distill = METHODS[method]
    overrides = [*common(args), f"--model.name={args.student}", f"--sched.epochs={args.epochs}",
                 f"--sched.warmup_epochs={args.warmup_epochs}", f"--optim.lr={args.lr}", f"--run.seed={seed}",
                 f"--run.out={run_dir}"]
    overrides += [f"--distill.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in distill.items()]
    if token:  # the same ViT plus DeiT's distillation token and head
        overrides.append("--model.overrides.distilled=true")
    if distill["type"] != "none":
        overrides.append(f"--distill.teacher={out / 'teacher'}")
        if not args.augment:  # the student sees exactly the un-augmented images: caching is valid
            overrides.append("--distill.cache_logits=true")
    if args.augment:
        overrides += AUGMENT
    if args.smoke:
        overrides += ["--model.overrides.embed_dim=32", "--model.overrides.depth=1", "--model.overrides.num_heads=2"]
    return run(overrides)


def summary(accs: list[float]) -> str:
    mean = statistics.fmean(accs)
    spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
    return f"{mean:.2f}{spread}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="fashion_mnist")
    p.add_argument("--fraction", type=float, default=0.1, help="share of the train set (stratified); 1.0 = all")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--teacher", default="resnet_micro_28")
    p.add_argument("--student", default="vit_micro_patch7_28", help="a ViT; hard+token adds the distillation token")
    p.add_argument("--teacher-epochs", type=int, default=12)
    p.add_argument("--epochs", type=int, default=12, help="student epochs (the same for every method)")
    p.add_argument("--warmup-epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=0.002)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bf16", default="auto", choices=["auto", "true", "false"],
                   help="bf16 autocast for teacher and students (auto: where bf16 is native, e.g. AMX)")
    p.add_argument("--out", default=None, help="default: runs/distill_<data>_<fraction>")
    p.add_argument("--augment", action="store_true", help="train the students with crop + flip (see AUGMENT)")
    p.add_argument("--smoke", action="store_true", help="2%% of the data, 1 epoch, tiny models, 1 seed")
    args = p.parse_args(argv)
    if args.smoke:
        args.fraction, args.seeds, args.teacher_epochs, args.epochs, args.warmup_epochs = 0.02, [0], 1, 1, 0.0
    tag = ("_aug" if args.augment else "") + ("_smoke" if args.smoke else "")
    out = Path(args.out or f"runs/distill_{args.data}_{args.fraction:g}{tag}")
    out.mkdir(parents=True, exist_ok=True)

    import logging

    logging.basicConfig(level=logging.WARNING)
    teacher = train_teacher(args, out)
    print(f"teacher {args.teacher}: test accuracy {teacher['test_acc']:.2f}%", file=sys.stderr)
    results: dict[str, dict] = {}
    for method in args.methods:
        for seed in args.seeds:
            m = train_student(args, out, method, seed)
            name = m["model"] + (" + dist. token" if METHODS[method][0] else "")
            results.setdefault(method, {"model": name, "params": m["params"], "acc": [], "heads": []})
            results[method]["acc"].append(m["test_acc"])
            if "test_acc_heads" in m:
                results[method]["heads"].append(m["test_acc_heads"])
            print(f"{method} seed {seed}: test accuracy {m['test_acc']:.2f}%", file=sys.stderr)

    n_train = round(60000 * args.fraction) if args.data == "fashion_mnist" else None
    print(f"\n{args.data}, {args.fraction:.0%} of the train set" + (", crop + flip" if args.augment else "")
          + (f" ({n_train:,} images)" if n_train else "") + f", {args.epochs} student epochs, batch {args.batch_size}, "
          f"bf16 {args.bf16}, seeds {args.seeds}; "
          f"teacher {args.teacher} ({teacher['params']:,} params, {args.teacher_epochs} epochs): "
          f"{teacher['test_acc']:.2f}% test\n")
    print("| method | student | params | test acc. % (mean ± std) | min – max | per seed |")
    print("|---|---|---:|---:|---:|---|")
    for method, r in results.items():
        accs = r["acc"]
        print(f"| {method} | {r['model']} | {r['params']:,} | {summary(accs)} | {min(accs):.2f} – {max(accs):.2f} | "
              f"{', '.join(f'{a:.2f}' for a in accs)} |")
    for method, r in results.items():
        if r["heads"]:
            heads = {k: summary([h[k] for h in r["heads"]]) for k in ("cls", "dist", "mean")}
            print(f"\n{method}: class head {heads['cls']}, distillation head {heads['dist']}, "
                  f"mean of both {heads['mean']} (test acc. %)")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "teacher_test_acc": teacher["test_acc"],
                                                  "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

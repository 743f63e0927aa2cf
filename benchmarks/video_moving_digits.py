"""The video models side by side on moving digits: accuracy, accuracy with the frames shuffled,
parameters, GMACs per clip and time per clip; plus the GMACs of the paper-size models.

    python benchmarks/video_moving_digits.py --threads 2                 # the timed run (~9 min on 2 quiet cores)
    python benchmarks/video_moving_digits.py --smoke                     # the whole pipeline in ~2 minutes
    python benchmarks/video_moving_digits.py --models vivit_micro_4x2_28 vivit_micro_fe_4x2_28
    python benchmarks/video_moving_digits.py --models timesformer_micro_patch4_28 --init runs/frame_vit.pt --epochs 8

Every model gets the same recipe: the moving-digits clips of `vitkit.data.moving_digits` (8 frames
of 28x28, 4 directions; `--train-clips` from MNIST train digits, `--test-clips` from MNIST test
digits, seed 0), AdamW (lr 3e-3 -- `vitkit train`'s default --, weight decay 0.05, no decay on
norms/biases/embeddings), linear warm-up for a fifth of an epoch then cosine, batch 64, label
smoothing 0.1, no augmentation. Columns:
    acc            top-1 on the test clips (%)
    acc shuffled   the same model on the test clips with the frames of every clip permuted at
                   random: a model that uses motion falls towards 50%, the order-blind ceiling
                   with 4 directions (the frames without their order give the axis, not the sign)
    GMACs          multiply-accumulates per clip (vitkit.profile: matmuls and convolutions,
                   attention on the eager path), counted, not timed
    ms/clip        median inference time per clip at batch 64 (timed: run on a quiet machine)
    train s        training wall time
`--init FILE` starts each model from an image ViT (benchmarks/video_frame_pretrain.py makes one for
this task), as the papers start from ImageNet; without it every model starts from scratch.
The second table counts params and GMACs of the paper-size models (32x224 ViViT-B, 8x224
TimeSformer-B, 16x224 MViT-B) on the meta device: no weights, no time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

MODELS = {  # name -> what it is
    "vivit_micro_4x2_28": "ViViT Model 1: spatio-temporal attention",
    "vivit_micro_fe_4x2_28": "ViViT Model 2: factorised encoder",
    "vivit_micro_fsa_4x2_28": "ViViT Model 3: factorised self-attention",
    "vivit_micro_fdp_4x2_28": "ViViT Model 4: factorised dot-product",
    "timesformer_micro_patch4_28": "TimeSformer: divided space-time",
    "timesformer_micro_joint_patch4_28": "TimeSformer: joint space-time",
    "timesformer_micro_space_patch4_28": "TimeSformer: space only (order-blind)",
    "mvit_micro_28": "MViT: pooling attention",
}
PAPER = ["vivit_base_16x2_224", "vivit_base_fe_16x2_224", "vivit_base_fsa_16x2_224", "vivit_base_fdp_16x2_224",
         "timesformer_base_patch16_224", "timesformer_base_joint_patch16_224", "timesformer_base_space_patch16_224",
         "mvit_base_16x4"]


def shuffle_frames(x: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """(N, C, T, H, W): the frames of every clip in a random order (one permutation per clip)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.stack([torch.randperm(x.shape[2], generator=g) for _ in range(len(x))])
    return torch.gather(x, 2, perm[:, None, :, None, None].expand_as(x))


def train_step(model, optimizer, x: torch.Tensor, y: torch.Tensor, norm, lr: float) -> torch.Tensor:
    """One step of the benchmark recipe on uint8 images `x`: every group's lr (times its lr_scale),
    cross-entropy with label smoothing 0.1, backward, optimizer step. Returns the loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    loss = F.cross_entropy(model(norm(x.float() / 255)), y, label_smoothing=0.1)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


@torch.no_grad()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, norm, batch: int = 256) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x), batch):
        correct += (model(norm(x[i:i + batch].float() / 255)).argmax(-1) == y[i:i + batch]).sum().item()
    return 100.0 * correct / len(x)


@torch.no_grad()
def ms_per_clip(model, x: torch.Tensor, norm, batch: int, repeats: int) -> float:
    model.eval()
    xb = norm(x[:batch].float() / 255)
    model(xb)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model(xb)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / len(xb)


def train_one(name: str, data, args) -> dict:
    from vitkit import create_model
    from vitkit.profile import count_params, gmacs
    from vitkit.train.config import OptimConfig
    from vitkit.train.engine import Normalise
    from vitkit.train.optim import build_optimizer
    from vitkit.train.schedule import cosine_schedule

    torch.manual_seed(args.seed)
    model = create_model(name, num_classes=len(data.classes), **({"pretrained": str(args.init)} if args.init else {}))
    norm = Normalise(data.mean, data.std)
    opt_cfg = OptimConfig(lr=args.lr, weight_decay=0.05)
    optimizer = build_optimizer(model, opt_cfg)
    x, y = data.train.images, data.train.labels
    steps_per_epoch = len(x) // args.batch_size
    lrs = cosine_schedule(args.lr, args.epochs * steps_per_epoch, max(1, steps_per_epoch // 5))
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.perf_counter()
    step = 0
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is a core dependency; keep the script usable without it
        def tqdm(it, **kw):
            return it
    for epoch in range(args.epochs):
        model.train()
        order = torch.randperm(len(x), generator=g)
        bar = tqdm(range(steps_per_epoch), desc=f"{name} epoch {epoch + 1}/{args.epochs}", leave=False,
                   disable=not args.progress)
        for i in bar:
            idx = order[i * args.batch_size:(i + 1) * args.batch_size]
            loss = train_step(model, optimizer, x[idx], y[idx], norm, lrs[step])
            step += 1
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_s = time.perf_counter() - t0
    xt, yt = data.test.images, data.test.labels
    c = model.config
    return {
        "model": name, "what": MODELS.get(name, ""), "params": count_params(model),
        "gmacs": gmacs(model, (c.in_chans, c.num_frames, 28, 28)),
        "acc": accuracy(model, xt, yt, norm), "acc_shuffled": accuracy(model, shuffle_frames(xt), yt, norm),
        "ms_per_clip": ms_per_clip(model, xt, norm, 64, args.repeats), "train_s": train_s,
        "epochs": args.epochs, "train_clips": len(x), "threads": torch.get_num_threads(),
        "init": str(args.init) if args.init else "scratch",
    }


def paper_sizes() -> list[dict]:
    from vitkit import create_model
    from vitkit.profile import count_params, model_gmacs

    rows = []
    for name in PAPER:
        with torch.device("meta"):
            params = count_params(create_model(name))
        rows.append({"model": name, "params": params, "gmacs": model_gmacs(name)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--train-clips", type=int, default=6000)
    p.add_argument("--test-clips", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=10, help="timing repeats for ms/clip")
    p.add_argument("--out", type=Path, default=Path("runs/video_moving_digits"))
    p.add_argument("--init", type=Path, default=None,
                   help="start every model from this image-ViT state dict (filter inflation, position embeddings "
                        "repeated over time), e.g. from benchmarks/video_frame_pretrain.py; default: from scratch")
    p.add_argument("--smoke", action="store_true", help="tiny data and 1 epoch: checks the pipeline, numbers mean nothing")
    p.add_argument("--no-progress", dest="progress", action="store_false")
    args = p.parse_args(argv)
    if args.smoke:
        args.train_clips, args.test_clips, args.epochs, args.repeats = 256, 128, 1, 2
    torch.set_num_threads(args.threads)

    from vitkit.data.moving_digits import load_moving_digits

    data = load_moving_digits(val_fraction=0.0, seed=args.seed, num_train=args.train_clips, num_test=args.test_clips)
    rows = []
    for name in args.models:
        rows.append(train_one(name, data, args))
        r = rows[-1]
        print(f"{name}: acc {r['acc']:.1f}%, frames shuffled {r['acc_shuffled']:.1f}%, {r['gmacs']:.4f} GMACs, "
              f"{r['train_s']:.0f} s of training", flush=True)
    paper = paper_sizes()

    print(f"\nMoving digits: {len(data.train)} train / {len(data.test)} test clips (8 x 28x28, 4 directions), "
          f"{args.epochs} epoch(s), batch {args.batch_size}, {args.threads} thread(s), "
          f"{'from ' + str(args.init) if args.init else 'from scratch'}"
          + (" -- SMOKE RUN, the numbers mean nothing" if args.smoke else ""))
    print("\n| model | what | params | GMACs/clip | acc % | acc % frames shuffled | ms/clip | train s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['what']} | {r['params']:,} | {r['gmacs']:.4f} | {r['acc']:.1f} | "
              f"{r['acc_shuffled']:.1f} | {r['ms_per_clip']:.2f} | {r['train_s']:.0f} |")
    print("\nPaper sizes (counted on the meta device):\n\n| model | params | GMACs/clip |\n|---|---:|---:|")
    for r in paper:
        print(f"| {r['model']} | {r['params']:,} | {r['gmacs']:.1f} |")
    args.out.mkdir(parents=True, exist_ok=True)
    from vitkit.hub import atomic_write

    result = {"args": {k: str(v) for k, v in vars(args).items()}, "micro": rows, "paper": paper}
    atomic_write(args.out / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    print(f"\nresults: {args.out / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Image pre-training for the micro video models: a `vit_micro_patch4_28` trained to name the digit
in single frames of moving-digits clips -- this task's stand-in for the ImageNet ViT that TimeSformer
and ViViT start from (docs/video.md, "Starting from an image ViT").

The frames come from clips drawn exactly as `load_dataset("moving_digits")` draws them (MNIST train
digits downscaled to 14x14 on a 28x28 canvas) but with their own seed, one random frame per clip,
labelled with the *digit* (0-9), not the direction; the test frames use MNIST test digits. The
normalisation is the moving-digits training split's, so the checkpoint plugs into
`benchmarks/video_probe.py --init` and `create_model(video_name, pretrained=...)` (filter
inflation, position embeddings repeated over time).

    python benchmarks/video_frame_pretrain.py --out runs/frame_vit.pt                 # 60k frames x 5 epochs, ~5 min/thread
    python benchmarks/video_frame_pretrain.py --frames 2000 --epochs 1 --out /tmp/f.pt  # smoke

Writes the state dict without its head (atomically) and prints the digit accuracy on 2,000 test frames.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

import vitkit
from vitkit.data.moving_digits import _mnist_digits, load_moving_digits, make_moving_digits
from vitkit.hub import atomic_write
from vitkit.train.config import OptimConfig
from vitkit.train.engine import Normalise
from vitkit.train.optim import build_optimizer
from vitkit.train.schedule import cosine_schedule

sys.path.insert(0, str(Path(__file__).resolve().parent))
from video_moving_digits import accuracy, train_step  # noqa: E402


def frames(digits, num: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(num, 1, 28, 28) uint8 single frames of moving-digits clips and their digit classes."""
    clips, _, digit = make_moving_digits(digits.images, digits.labels, num, generator=generator)
    t = torch.randint(clips.shape[2], (num,), generator=generator)
    return clips[torch.arange(num), :, t], digit


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="where to write the state dict (.pt)")
    p.add_argument("--model", default="vit_micro_patch4_28")
    p.add_argument("--frames", type=int, default=60000, help="training frames (one per generated clip)")
    p.add_argument("--epochs", type=float, default=5)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=123, help="seed of the frames (the probe's clips use seed 0)")
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.frames < a.batch_size:
        p.error(f"--frames {a.frames} is smaller than one batch ({a.batch_size})")
    torch.set_num_threads(a.threads)

    stats = load_moving_digits(val_fraction=0.0, seed=0, num_train=8000, num_test=16)  # the moving-digits normalisation
    norm = Normalise(stats.mean, stats.std)
    train_digits, test_digits = _mnist_digits(None, 0)
    g = torch.Generator().manual_seed(a.seed)
    x, y = frames(train_digits, a.frames, g)
    xt, yt = frames(test_digits, 2000, g)

    torch.manual_seed(a.seed)
    model = vitkit.create_model(a.model, num_classes=10)
    opt = build_optimizer(model, OptimConfig(lr=a.lr, weight_decay=0.05))
    steps_per_epoch = a.frames // a.batch_size
    total = max(1, int(a.epochs * steps_per_epoch))
    lrs = cosine_schedule(a.lr, total, max(1, steps_per_epoch // 5))
    start = time.time()
    model.train()
    with tqdm(total=total, desc="frame ViT", unit="step") as bar:
        step = 0
        while step < total:
            order = torch.randperm(a.frames, generator=g)
            for i in range(steps_per_epoch):
                if step >= total:
                    break
                idx = order[i * a.batch_size:(i + 1) * a.batch_size]
                loss = train_step(model, opt, x[idx], y[idx], norm, lrs[step])
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - start
    acc = accuracy(model, xt, yt, norm)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: torch.save(state, tmp))
    print(f"{a.model}: digit accuracy {acc:.1f}% on 2,000 test frames after {total} steps ({seconds:.0f} s); "
          f"wrote {a.out}")
    return {"digit_acc": acc, "steps": total, "seconds": seconds}


if __name__ == "__main__":
    main()

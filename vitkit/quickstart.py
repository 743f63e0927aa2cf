"""The README's main job until `vitkit train` lands: train a small ViT on real handwritten digits.

It runs end to end on a laptop CPU in under a minute: the scikit-learn digits (1,797 real 8x8
scans, bundled with scikit-learn, so nothing is downloaded), `vit_micro_patch2_8` (16 patches of
2x2 pixels, 4 blocks, 135k parameters), AdamW with a warm-up + cosine schedule, a progress bar,
then `save_pretrained`, a reload with `vitkit.from_pretrained` that must reproduce the held-out
accuracy exactly, and a PNG with the training curves and a page of test predictions.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .data import Split, load_digits
from .hub import _atomic_write, from_pretrained
from .registry import create_model


def cosine_schedule(base_lr: float, total_steps: int, warmup_steps: int) -> list[float]:
    """Per-step learning rates: linear warm-up, then cosine decay to 0 (explicit values, as DINO)."""
    lrs = []
    for step in range(total_steps):
        if step < warmup_steps:
            lrs.append(base_lr * (step + 1) / warmup_steps)
        else:
            t = (step - warmup_steps) / max(1, total_steps - warmup_steps)
            lrs.append(0.5 * base_lr * (1 + math.cos(math.pi * t)))
    return lrs


def normalise(images: torch.Tensor, model) -> torch.Tensor:
    mean = torch.tensor(model.pretrained_cfg["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(model.pretrained_cfg["std"]).view(1, -1, 1, 1)
    return (images - mean) / std


@torch.no_grad()
def evaluate(model, split: Split, batch_size: int = 512) -> tuple[float, torch.Tensor]:
    """Top-1 accuracy (%) and the predictions over a split."""
    model.eval()
    preds = torch.cat([
        model(normalise(split.images[i : i + batch_size], model)).argmax(-1)
        for i in range(0, len(split), batch_size)
    ])
    return 100.0 * (preds == split.labels).float().mean().item(), preds


def run_quickstart(
    out_dir: str | Path = "runs/quickstart",
    model_name: str = "vit_micro_patch2_8",
    epochs: int = 40,
    batch_size: int = 64,
    lr: float = 3e-3,
    weight_decay: float = 0.05,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    train, test = load_digits(seed=seed)
    model = create_model(model_name, num_classes=len(train.classes), in_chans=1, img_size=8)
    model.pretrained_cfg["label_names"] = train.classes
    n_params = sum(p.numel() for p in model.parameters())

    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and n not in model.no_weight_decay()]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or n in model.no_weight_decay()]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    steps_per_epoch = math.ceil(len(train) / batch_size)
    lrs = cosine_schedule(lr, epochs * steps_per_epoch, warmup_steps=steps_per_epoch * 2)
    g = torch.Generator().manual_seed(seed)

    history: dict[str, list[float]] = {"loss": [], "test_acc": []}
    start = time.perf_counter()
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"train {model_name}", unit="step", disable=not progress)
    step = 0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=g)
        epoch_loss = 0.0
        for i in range(0, len(train), batch_size):
            idx = order[i : i + batch_size]
            x = normalise(train.images[idx], model)  # no augmentation: shifts of 1 px (12% of 8 px) hurt
            loss = F.cross_entropy(model(x), train.labels[idx], label_smoothing=0.1)
            for group in optimizer.param_groups:
                group["lr"] = lrs[step]
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            epoch_loss += loss.item() * len(idx)
            step += 1
            bar.update(1)
        history["loss"].append(epoch_loss / len(train))
        acc, _ = evaluate(model, test)
        history["test_acc"].append(acc)
        bar.set_postfix(epoch=epoch + 1, loss=f"{history['loss'][-1]:.3f}", test_acc=f"{acc:.1f}%")
    bar.close()
    train_seconds = time.perf_counter() - start

    model.eval()
    test_acc, preds = evaluate(model, test)
    model_dir = model.save_pretrained(out_dir / "model")
    reloaded = from_pretrained(model_dir)
    reload_acc, _ = evaluate(reloaded, test)
    if reload_acc != test_acc:
        raise RuntimeError(f"reloaded model scores {reload_acc:.2f}% but the trained one {test_acc:.2f}%")

    metrics = {
        "model": model_name, "parameters": n_params, "dataset": "scikit-learn digits (8x8, 10 classes)",
        "train_images": len(train), "test_images": len(test), "epochs": epochs, "batch_size": batch_size,
        "lr": lr, "seed": seed, "threads": torch.get_num_threads(), "train_seconds": round(train_seconds, 1),
        "test_accuracy": round(test_acc, 2), "reloaded_test_accuracy": round(reload_acc, 2),
        "checkpoint": str(model_dir), "history": history,
    }
    _atomic_write(out_dir / "metrics.json", lambda tmp: Path(tmp).write_text(json.dumps(metrics, indent=2) + "\n"))
    figure = _plot(out_dir / "quickstart.png", history, test, preds)
    if figure:
        metrics["figure"] = str(figure)
    return metrics


def _plot(path: Path, history: dict[str, list[float]], test: Split, preds: torch.Tensor) -> Path | None:
    """Training curves and the first 32 test digits with their predictions (red = wrong)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig = plt.figure(figsize=(13, 5), layout="constrained")
    left, right = fig.subfigures(1, 2, width_ratios=[1.0, 1.2])
    ax = left.subplots()
    epochs = range(1, len(history["loss"]) + 1)
    ax.plot(epochs, history["loss"], color="tab:blue")
    ax.set_xlabel("epoch")
    ax.set_ylabel("train loss (label smoothing 0.1)", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(epochs, history["test_acc"], color="tab:orange")
    ax2.set_ylabel("held-out accuracy (%)", color="tab:orange")
    ax.set_title(f"ViT on real 8x8 digits: {history['test_acc'][-1]:.1f}% held-out")
    right.suptitle("first 32 held-out digits: prediction (truth if wrong)")
    for k, a in enumerate(right.subplots(4, 8).flat):
        a.imshow(test.images[k, 0].numpy(), cmap="gray_r")
        pred, true = preds[k].item(), test.labels[k].item()
        a.set_title(f"{pred}" if pred == true else f"{pred} ({true})", color="green" if pred == true else "red")
        a.axis("off")

    def write(tmp: str) -> None:
        fig.savefig(tmp, dpi=100, format="png")

    _atomic_write(path, write)
    plt.close(fig)
    return path

"""Supervised training: `train(cfg, model=None, data=None)` builds the classification task of a model
(vitkit/train/tasks.py) and runs it with the runner (vitkit/train/runner.py), which holds the loop, the
checkpoints, DDP and the precision.

The run directory holds `config.yaml`, `metrics.jsonl` (per epoch), `steps.csv` (per optimizer step),
`metrics.json`, `curves.png`, `checkpoint/` and `model/` (the final weights, the EMA's with
`--run.ema_decay`, as a vitkit model directory with its data config and label names).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.augment import BatchAugment
from ..data.transforms import apply_data_config, data_args, training_data_config, worker_pipeline
from ..hub import atomic_write
from ..registry import create_model
from .config import TrainConfig
from .runner import (  # noqa: F401  (the loop's pieces, importable from here too)
    AUTOCAST_DTYPES,
    STATE_NAME,
    Batches,
    Dist,
    Normalise,
    Runner,
    TrainingDiverged,
    diverged_advice,
    epoch_batches,
    eval_batches,
    init_distributed,
    last_good,
    resolve_device,
)
from .tasks import task_for

logger = logging.getLogger("vitkit")


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model.name}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module,
    data,
    norm: nn.Module,
    device: str,
    bf16: bool = False,
    return_logits: bool = False,
    dtype: str | None = None,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a split (+ logits and labels on request), under
    bf16 autocast with `bf16`, or the autocast of `dtype` ('bf16', 'fp16', 'fp32') when given; files are
    decoded by `num_workers` DataLoader processes."""
    was_training = model.training
    model.eval()
    autocast_dtype = AUTOCAST_DTYPES.get(dtype or ("bf16" if bf16 else "fp32"))
    device_type = torch.device(device).type
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in eval_batches(data, num_workers=num_workers):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            logits = model(norm(x))
        logits = logits.float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += (top[:, 0] == y).sum().item()
        correct5 += (top == y[:, None]).any(-1).sum().item()
        n += len(y)
        if return_logits:
            kept.append((logits.cpu(), y.cpu()))
    model.train(was_training)
    result: dict[str, Any] = {"acc": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n}
    if return_logits:
        result["logits"] = torch.cat([k[0] for k in kept])
        result["labels"] = torch.cat([k[1] for k in kept])
    return result


# ------------------------------------------------------------------------------------ outputs
# per panel: (title, y label, [(curve label, metrics.jsonl key), ...])
SUPERVISED_PANELS = (
    ("loss (train: with label smoothing / mixing)", "cross-entropy", [("train", "train_loss"), ("val", "val_loss")]),
    ("accuracy", "top-1 accuracy (%)", [("train", "train_acc"), ("val", "val_acc")]),
)
PRETRAIN_PANELS = (
    ("loss", "pre-training loss", [("train", "loss")]),
    ("collapse monitor (0 = collapsed)", "std of normalised features", [("train", "feature_std")]),
)


def plot_history(path: Path, history: list[dict], title: str, panels=SUPERVISED_PANELS) -> Path | None:
    """The per-epoch curves of a run (`curves.png`), one panel each; a key the history lacks is left out."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4), layout="constrained")
    for ax, (name, ylabel, curves) in zip(axes, panels):
        for label, key in curves:
            if history and key in history[0]:
                ax.plot(epochs, [h[key] for h in history], label=label)
        ax.set_xlabel("epoch"), ax.set_ylabel(ylabel), ax.set_title(name)
        if len(curves) > 1:
            ax.legend()
    fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ data
def train_subset(data, fraction: float, seed: int):
    """A stratified `fraction` of an in-memory train split (`--data.train_fraction`), the same for a given seed."""
    from ..data import stratified_split

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--data.train_fraction={fraction} must be in (0, 1]")
    if not hasattr(data, "subset"):
        raise ValueError(
            "--data.train_fraction needs an in-memory dataset (digits, mnist, fashion_mnist, cifar*), "
            "not an image folder, tar shards or a Dataset passed to train()"
        )
    _, keep = stratified_split(data.labels, fraction, seed + 2)  # the `fraction` share of every class
    return data.subset(keep)


def load_splits(cfg: Any, data: Any = None, model: nn.Module | None = None, labels: bool = True):
    """The run's splits: `cfg.data`'s dataset (`load_dataset`), or `data` as given to `train()` / `pretrain()`:
    a `vitkit.data.DatasetSplits`, or a mapping {"train": ds, "val": ds or None, "test": ds} of any
    `torch.utils.data.Dataset` whose items are (CHW float image in [0, 1], int label). Classes come from the
    train set's `classes`, else from `model.num_classes`; mean/std from `--data.mean/std`, else the train
    set's (over up to 2,048 images). `labels=False` (pre-training) needs no classes."""
    from ..data import DatasetSplits, load_dataset

    if data is None:
        return load_dataset(
            cfg.data.name,
            cfg.data.data_dir,
            val_fraction=cfg.data.val_fraction,
            seed=cfg.data.seed,
            strict=cfg.data.strict,
            img_size=cfg.data.img_size,
        )
    if isinstance(data, DatasetSplits):
        return data
    if not isinstance(data, Mapping) or not {"train", "test"} <= set(data) or set(data) - {"train", "val", "test"}:
        raise TypeError(
            f"data must be a vitkit.data.DatasetSplits or a mapping with keys 'train', 'test' and optionally 'val' "
            f"(torch Datasets of (image, label)), got {type(data).__name__}"
            + (f" with keys {sorted(data)}" if isinstance(data, Mapping) else "")
        )
    train_set = data["train"]
    if len(train_set) == 0:
        raise ValueError("data['train'] is empty")
    image, label = train_set[0][:2]
    if not (isinstance(image, torch.Tensor) and image.is_floating_point() and image.ndim in (3, 4)):
        raise TypeError(
            f"data['train'][0] must be (image, label) with a float CHW image tensor in [0, 1], got "
            f"{type(image).__name__}{tuple(image.shape) if isinstance(image, torch.Tensor) else ''}: convert the "
            f"images with torchvision.transforms.ToTensor() (or vitkit.data.transforms.create_transform)"
        )
    classes = getattr(train_set, "classes", None)
    if classes is None and model is not None and getattr(model, "num_classes", 0):
        classes = [str(i) for i in range(model.num_classes)]
    if not classes and labels:
        raise ValueError(
            "the classes of data['train'] are unknown: give the dataset a `classes` list (its class names), or "
            "pass a model built with num_classes"
        )
    mean, std = cfg.data.mean, cfg.data.std
    if mean is None or std is None:
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(train_set, range(min(2048, len(train_set)))), 256)
        x = torch.cat([b[0] for b in loader]).transpose(0, 1).flatten(1)  # (C, everything else)
        mean = tuple(x.mean(1).tolist()) if mean is None else mean
        std = tuple(x.std(1).clamp_min(1e-6).tolist()) if std is None else std
    in_chans = image.shape[0]
    channels = len(mean)
    mean, std = tuple(mean) * (in_chans if channels == 1 else 1), tuple(std) * (in_chans if len(std) == 1 else 1)
    return DatasetSplits(
        name=str(getattr(train_set, "name", None) or "custom"),
        train=train_set,
        val=data.get("val"),
        test=data["test"],
        classes=list(classes or []),
        mean=mean,
        std=std,
        in_chans=in_chans,
        img_size=tuple(image.shape[-2:]),
    )


# ------------------------------------------------------------------------------------ training
def train(cfg: TrainConfig, model: nn.Module | None = None, data: Any = None) -> dict[str, Any]:
    """Train as configured; returns the final metrics (also written to RUN_DIR/metrics.json).

    `model`: a prebuilt model (a `VitkitModel`, e.g. a wrapped third-party ViT in
    benchmarks/time_to_accuracy.py) used instead of `create_model(cfg.model.name, ...)`.
    `data`: the data instead of `cfg.data.name`'s: a `vitkit.data.DatasetSplits`, or a mapping
    {"train": ds, "val": ds or None, "test": ds} of torch Datasets of (CHW float image in [0, 1], int label)
    (`load_splits`).
    """
    with Runner(cfg, "train", default_run_dir(cfg)) as runner:
        from ..methods.distill import build_distillation

        splits = load_splits(cfg, data, model)
        if cfg.data.train_fraction != 1.0:
            splits.train = train_subset(splits.train, cfg.data.train_fraction, cfg.data.seed)
        if model is None:
            model = create_model(
                cfg.model.name,
                pretrained=cfg.model.pretrained,
                num_classes=len(splits.classes),
                in_chans=splits.in_chans,
                img_size=splits.img_size,
                **cfg.model.overrides,
            )
        # One data config for the loaders, the normalisation and the saved model (vitkit/data/transforms.py):
        # fine-tuning keeps the checkpoint's statistics and crop, unless --data.mean/std/crop_pct/... say otherwise
        data_config = training_data_config(splits, model, cfg.model.pretrained, data_args(cfg.data))
        apply_data_config(splits, data_config)
        model.pretrained_cfg.update(data_config, label_names=list(splits.classes), dataset=splits.name)
        if cfg.run.grad_checkpointing:
            model.set_grad_checkpointing(True)
        model.to(runner.device_str)
        norm = Normalise(data_config["mean"], data_config["std"]).to(runner.device_str)
        # Files (image folders): the random resized crop, the flip and, when nothing on the batch needs [0, 1]
        # images, the normalisation run in the DataLoader workers (vitkit/data/transforms.py). A teacher
        # normalises the [0, 1] images its own way, so distillation keeps them unnormalised.
        train_data, aug_cfg, normalised = worker_pipeline(
            splits.train, cfg.aug, data_config, seed=cfg.run.seed, normalise=cfg.distill.type == "none"
        )
        # Augmentation draws from torch's global RNG, which the checkpoint saves: a resumed run replays the same
        # augmentations. Label smoothing is folded into mixup/cutmix soft targets. Random erasing draws noise
        # that is standard normal once normalised (timm's pixel mode), before or after the normalisation.
        later = {} if normalised else {"mean": data_config["mean"], "std": data_config["std"]}
        augment = BatchAugment(
            aug_cfg, len(splits.classes), label_smoothing=cfg.optim.label_smoothing, normalised=normalised, **later
        )
        smoothing = 0.0 if augment.mixing else cfg.optim.label_smoothing
        # The loss: cross-entropy, or DeiT distillation against a frozen teacher (vitkit/methods/distill.py).
        distill = build_distillation(
            cfg.distill,
            model,
            splits,
            train_data,
            augment.active or train_data is not splits.train,
            smoothing,
            runner.device_str,
            progress=cfg.run.progress and runner.main,
        )
        task = task_for(model, cfg.distill.type)(
            model, splits, norm, augment, distill, cfg, runner, train_norm=nn.Identity() if normalised else None
        )
        return runner.fit(task, train_data)

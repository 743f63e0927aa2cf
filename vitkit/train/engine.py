"""The training loop: one process or many (`torchrun`), CPU or GPU, resumable.

Determinism: the data order of epoch e is a permutation drawn from (seed, e) over the whole
training set; a step takes the next `batch_size` indices of it and each process takes its own
contiguous slice, so N processes with batch B/N see exactly the batches one process with B
sees, and DDP's gradient averaging reproduces the single-process gradient. The last partial
batch is dropped for that reason. A checkpoint at the end of every epoch (and, with
`--run.checkpoint_every=N`, every N batches inside it) stores the weights, the EMA, the
optimizer state, the RNG state, the history and the position in the epoch, so `--resume`
continues a killed run to the same final weights as an uninterrupted one. The run directory,
its lock and the crash-safe checkpoint swap are vitkit/train/checkpoint.py's.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import logging
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..allocator import KeptGradients, reuse_freed_memory
from ..data.augment import BatchAugment
from ..data.transforms import (
    RandomCropFiles,
    RandomResizedCrop,
    apply_data_config,
    data_args,
    training_data_config,
)
from ..hub import atomic_write, save_pretrained
from ..precision import resolve_bf16
from ..registry import create_model
from .checkpoint import (
    CHECKPOINT_DIR,
    nonfinite_tensors,
    open_run,
    rng_state,
    set_rng_state,
    write_checkpoint,
)
from .config import TrainConfig
from .logging import TensorBoardLogger
from .optim import build_optimizer, optimizer_step
from .schedule import cosine_schedule

logger = logging.getLogger("vitkit")
STATE_NAME = "state.pt"  # in the checkpoint directory: optimizer, RNG, history, position in the epoch


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ------------------------------------------------------------------------------------ set-up
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module created the process group, so it also destroys it

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str) -> Dist:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), owns)


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--run.device=cuda but no CUDA device is available; use --run.device=cpu")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--run.device must be auto, cpu or cuda, got {name!r}")
    return name


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.model.name}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"


# ------------------------------------------------------------------------------------ data
class Batches:
    """Per-epoch batches of a dataset for this process (see the module docstring)."""

    def __init__(self, data, batch_size: int, d: Dist, seed: int, num_workers: int = 0) -> None:
        if batch_size % d.world:
            raise ValueError(f"--run.batch_size={batch_size} must be divisible by the number of processes ({d.world})")
        if len(data) < batch_size:
            raise ValueError(
                f"the training set has {len(data)} images, fewer than one batch ({batch_size}): lower --run.batch_size"
            )
        self.data, self.batch_size, self.d, self.seed = data, batch_size, d, seed
        self.per_rank = batch_size // d.world
        self.num_workers = num_workers
        self.steps = len(data) // batch_size

    def __len__(self) -> int:
        return self.steps

    def indices(self, epoch: int) -> list[torch.Tensor]:
        """This process's dataset indices of every step of `epoch` (what `epoch()` yields, in order)."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.data), generator=g)
        lo = self.d.rank * self.per_rank
        return [order[s * self.batch_size + lo : s * self.batch_size + lo + self.per_rank] for s in range(self.steps)]

    def epoch(self, epoch: int, start: int = 0):
        """The batches of `epoch` from its `start`-th on (a run resumed inside an epoch)."""
        mine = self.indices(epoch)[start:]
        if hasattr(self.data, "set_epoch"):  # per-item random crops in the workers (RandomCropFiles)
            self.data.set_epoch(epoch)
        if hasattr(self.data, "batch"):  # in-memory tensors: no workers, no per-item Python
            for idx in mine:
                yield self.data.batch(idx)
        else:
            # the loader's own generator: creating it draws nothing from torch's global RNG, whose state the
            # checkpoint saves, so a run resumed inside an epoch continues the same random stream
            loader = torch.utils.data.DataLoader(
                self.data,
                batch_sampler=[idx.tolist() for idx in mine],
                num_workers=self.num_workers,
                persistent_workers=False,
                generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch),
            )
            yield from loader


def epoch_batches(batches, epoch: int, start: int = 0):
    """`batches.epoch(epoch)` from batch `start` on. A stream (tar shards) has no random access: its first
    `start` batches are read and dropped, and torch's global RNG, which its DataLoader draws a seed from,
    is put back as the checkpoint left it."""
    if start == 0:
        return batches.epoch(epoch)
    if isinstance(batches, Batches):
        return batches.epoch(epoch, start)
    saved = torch.get_rng_state()
    stream = iter(batches.epoch(epoch))
    for _ in range(start):
        next(stream)
    torch.set_rng_state(saved)
    return stream


def eval_batches(data, batch_size: int = 512):
    if hasattr(data, "batch"):
        for i in range(0, len(data), batch_size):
            yield data.batch(torch.arange(i, min(i + batch_size, len(data))))
    else:
        yield from torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=0)


class Normalise(nn.Module):
    """(x - mean) / std inside the graph, so the data pipeline stays in [0, 1]."""

    def __init__(self, mean, std) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 5:  # video clips (B, C, T, H, W): per-channel statistics broadcast over time
            return (x - self.mean.unsqueeze(2)) / self.std.unsqueeze(2)
        return (x - self.mean) / self.std


# ------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(
    model: nn.Module, data, norm: Normalise, device: str, bf16: bool = False, return_logits: bool = False
) -> dict[str, Any]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over a split (+ logits and labels on request)."""
    was_training = model.training
    model.eval()
    n = correct1 = correct5 = 0
    loss_sum = 0.0
    kept: list[tuple[torch.Tensor, torch.Tensor]] = []
    for x, y in eval_batches(data):
        x, y = x.to(device), y.to(device)
        with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
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


# ------------------------------------------------------------------------------------ checkpoints
def save_checkpoint(
    run_dir: Path,
    model: nn.Module,
    optimizer,
    ema: nn.Module | None,
    epoch: int,
    history: list[dict],
    best_val: float,
    step: int = 0,
    partial: dict | None = None,
) -> None:
    """Weights (safetensors) + training state, swapped in whole (vitkit/train/checkpoint.py): a kill at any
    instant leaves one complete checkpoint. `epoch` epochs are done, and `step` batches of the next one
    (`partial`: that epoch's running sums)."""
    state = {
        "epoch": epoch,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "history": history,
        "best_val_acc": best_val,
        "partial": partial,
    }

    def write(directory: Path) -> None:
        save_pretrained(model, directory)
        if ema is not None:
            save_pretrained(ema, directory / "ema")
        torch.save(state, directory / STATE_NAME)

    write_checkpoint(run_dir, write, {"command": "train", "epoch": epoch, "step": step})


def load_checkpoint(run_dir: Path, model: nn.Module, optimizer, ema: nn.Module | None) -> dict[str, Any]:
    from ..hub import load_pretrained

    ckpt = run_dir / CHECKPOINT_DIR
    if not (ckpt / STATE_NAME).is_file():
        raise FileNotFoundError(f"--resume: {ckpt} has no checkpoint; start the run again with --overwrite")
    load_pretrained(model, ckpt)
    if ema is not None:
        load_pretrained(ema, ckpt / "ema")
    from ..torch_load import load_torch_file

    state = load_torch_file(ckpt / STATE_NAME)  # tensors and plain data only; a CheckpointError if damaged
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    state.setdefault("step", 0)
    state.setdefault("partial", None)
    return state


def last_good(run_dir: Path, position: tuple[int, int] | None) -> str:
    """The sentence naming the run's last good checkpoint (`position`: (epoch, step) of the newest one this
    run wrote or resumed from), or saying there is none."""
    if position is None:
        return "no checkpoint was written before it, so there is none to go back to"
    epoch, step = position
    where = f"epoch {epoch + 1}, step {step}" if step else f"after epoch {epoch}"
    return f"the last good checkpoint is {run_dir / CHECKPOINT_DIR} ({where})"


def diverged_advice(run_dir: Path, lr: float, position: tuple[int, int] | None) -> str:
    """What to do after a divergence; with a good checkpoint (`position` not None), how to start from its weights
    (in another directory: --overwrite would delete them first)."""
    keep = (
        (
            f"; to keep the good weights, start a run in another --out from them with "
            f"--model.pretrained={run_dir / CHECKPOINT_DIR}"
        )
        if position is not None
        else ""
    )
    return (
        f"Lower --optim.lr (now {lr}) or set --optim.clip_grad=1.0 and start the run again (--overwrite, or "
        f"another --out){keep}"
    )


# ------------------------------------------------------------------------------------ outputs
def _write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def _write_history(run_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(text))


def plot_history(path: Path, history: list[dict], title: str) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    a.plot(epochs, [h["train_loss"] for h in history], label="train")
    if history and "val_loss" in history[0]:
        a.plot(epochs, [h["val_loss"] for h in history], label="val")
    a.set_xlabel("epoch"), a.set_ylabel("cross-entropy"), a.legend()
    a.set_title("loss (train: with label smoothing / mixing)")
    b.plot(epochs, [h["train_acc"] for h in history], label="train")
    if history and "val_acc" in history[0]:
        b.plot(epochs, [h["val_acc"] for h in history], label="val")
    b.set_xlabel("epoch"), b.set_ylabel("top-1 accuracy (%)"), b.legend(), b.set_title("accuracy")
    fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


def train_subset(data, fraction: float, seed: int):
    """A stratified `fraction` of an in-memory train split (`--data.train_fraction`), the same for a given seed."""
    from ..data import stratified_split

    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"--data.train_fraction={fraction} must be in (0, 1]")
    if not hasattr(data, "subset"):
        raise ValueError(
            "--data.train_fraction needs an in-memory dataset (digits, mnist, fashion_mnist, cifar*), "
            "not an image folder or tar shards"
        )
    _, keep = stratified_split(data.labels, fraction, seed + 2)  # the `fraction` share of every class
    return data.subset(keep)


def _head_accuracies(model: nn.Module, data, norm: Normalise, device: str, bf16: bool) -> dict[str, float]:
    """Test top-1 of a distilled (DeiT) model with the class head, the distillation head, and their mean."""
    saved = model.config.distilled_output
    try:
        result = {}
        for mode in ("cls", "dist", "mean"):
            model.config.distilled_output = mode
            result[mode] = round(evaluate(model, data, norm, device, bf16)["acc"], 3)
        return result
    finally:
        model.config.distilled_output = saved


# ------------------------------------------------------------------------------------ the loop
def train(cfg: TrainConfig, model: nn.Module | None = None) -> dict[str, Any]:
    """Train as configured; returns the final metrics (also written to RUN_DIR/metrics.json).

    `model`: a prebuilt model (a `VitkitModel`, e.g. a wrapped third-party ViT in
    benchmarks/time_to_accuracy.py) used instead of `create_model(cfg.model.name, ...)`.
    """
    device = resolve_device(cfg.run.device)
    d = init_distributed(device)
    if device == "cuda":
        torch.cuda.set_device(d.local_rank)
        device_str = f"cuda:{d.local_rank}"
    else:
        device_str = "cpu"
    bf16 = resolve_bf16(cfg.run.bf16, device, warn=d.main)  # 'auto': only where bf16 is native (vitkit/precision.py)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    reuse_cpu = device == "cpu" and cfg.run.reuse_cpu_memory
    if reuse_cpu:
        reuse_freed_memory()  # vitkit/allocator.py: no page faults for the activations of every step
    run_dir = Path(cfg.run.out) if cfg.run.out else default_run_dir(cfg)
    if d.world > 1 and not cfg.run.out:
        raise ValueError("with torchrun, name the run directory: --run.out=DIR (every process must agree on it)")
    # the lock, an interrupted checkpoint swap finished, the settings of a resumed run checked, config.yaml
    lock, _ = open_run(run_dir, "train", cfg, state_name=STATE_NAME, main=d.main)  # vitkit/train/checkpoint.py
    try:
        if d.world > 1:
            dist.barrier()  # the other processes read the run directory only once the main one has prepared it
        return _train(cfg, model, d, device, device_str, bf16, reuse_cpu, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _train(
    cfg: TrainConfig,
    model: nn.Module | None,
    d: Dist,
    device: str,
    device_str: str,
    bf16: bool,
    reuse_cpu: bool,
    run_dir: Path,
) -> dict[str, Any]:
    from ..data import load_dataset

    tb = TensorBoardLogger(run_dir, cfg.run.tensorboard, main=d.main)  # vitkit/train/logging.py

    torch.manual_seed(cfg.run.seed)
    random.seed(cfg.run.seed)
    splits = load_dataset(
        cfg.data.name,
        cfg.data.data_dir,
        val_fraction=cfg.data.val_fraction,
        seed=cfg.data.seed,
        strict=cfg.data.strict,
        img_size=cfg.data.img_size,
    )
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
    model.to(device_str)
    norm = Normalise(data_config["mean"], data_config["std"]).to(device_str)
    ema = copy.deepcopy(model).eval().requires_grad_(False) if cfg.run.ema_decay else None
    params = sum(p.numel() for p in model.parameters())

    optimizer = build_optimizer(model, cfg.optim)
    # gradients allocated once, before any activation: a heap that keeps freed memory stays near the live size
    kept = KeptGradients(model.parameters()) if reuse_cpu else None
    # Augmentation draws from torch's global RNG, which the checkpoint saves: a resumed run
    # replays the same augmentations. Label smoothing is folded into mixup/cutmix soft targets.
    aug_cfg, crop_in_workers = cfg.aug, False
    if (
        cfg.aug.random_resized_crop
        and hasattr(splits.train, "preprocess")
        and not isinstance(splits.train, torch.utils.data.IterableDataset)
    ):
        # files (image folders): the random resized crop is cut from the original image in the loader's workers,
        # as timm's RandomResizedCropAndInterpolation, rather than from the already resized image on the batch
        crop = RandomResizedCrop(
            data_config["input_size"][1:], cfg.aug.scale, cfg.aug.ratio, data_config["interpolation"]
        )
        splits.train = RandomCropFiles(splits.train, crop, seed=cfg.run.seed)
        aug_cfg, crop_in_workers = dataclasses.replace(cfg.aug, random_resized_crop=False), True
    augment = BatchAugment(aug_cfg, len(splits.classes), label_smoothing=cfg.optim.label_smoothing)
    smoothing = 0.0 if augment.mixing else cfg.optim.label_smoothing
    if isinstance(splits.train, torch.utils.data.IterableDataset):  # tar shards (vitkit/data/shards.py)
        from ..data.shards import ShardBatches

        batches = ShardBatches(splits.train, cfg.run.batch_size, d.rank, d.world, cfg.run.seed, cfg.data.num_workers)
    else:
        batches = Batches(splits.train, cfg.run.batch_size, d, cfg.run.seed, cfg.data.num_workers)
    from ..methods.distill import build_distillation

    # The loss: cross-entropy, or DeiT distillation against a frozen teacher (vitkit/methods/distill.py).
    distill = build_distillation(
        cfg.distill,
        model,
        splits,
        splits.train,
        augment.active or crop_in_workers,
        smoothing,
        device_str,
        progress=cfg.run.progress and d.main,
    )
    if len(batches) % cfg.optim.accum_steps:
        logger.warning(
            "%d batches per epoch is not a multiple of --optim.accum_steps=%d: the last %d batch(es) of "
            "each epoch make an optimizer step of their own",
            len(batches),
            cfg.optim.accum_steps,
            len(batches) % cfg.optim.accum_steps,
        )
    steps_per_epoch = len(batches)
    lrs = cosine_schedule(
        cfg.optim.lr,
        cfg.sched.epochs * steps_per_epoch,
        round(cfg.sched.warmup_epochs * steps_per_epoch),
        cfg.sched.min_lr,
    )

    start_epoch, start_step, partial, history, best_val = 0, 0, None, [], -1.0
    good: tuple[int, int] | None = None  # (epoch, step) of the newest checkpoint written or resumed from
    if cfg.run.resume:
        state = load_checkpoint(run_dir, model, optimizer, ema)
        start_epoch, start_step, history, best_val = (
            state["epoch"],
            state["step"],
            state["history"],
            state["best_val_acc"],
        )
        partial = state["partial"]
        good = (start_epoch, start_step)
        if d.main:
            where = f"at epoch {start_epoch + 1}, step {start_step}" if start_step else f"after epoch {start_epoch}"
            logger.info("resuming %s %s", run_dir, where)
            if start_epoch >= cfg.sched.epochs:
                logger.info("all %d epochs are done: writing the final outputs again", cfg.sched.epochs)
    net = (
        nn.parallel.DistributedDataParallel(model, device_ids=[d.local_rank] if device == "cuda" else None)
        if d.world > 1
        else model
    )
    if cfg.run.compile:  # the compiled wrapper shares the parameters; checkpoints still save `model`
        net = torch.compile(net)

    def checked_state(where: str) -> None:
        """Never checkpoint NaN or infinite weights: stop naming the last good checkpoint instead."""
        named = [
            *((f"model.{k}", v) for k, v in model.state_dict().items()),
            *((f"ema.{k}", v) for k, v in (ema.state_dict() if ema is not None else {}).items()),
            ("optimizer", optimizer.state_dict()["state"]),
        ]
        bad = nonfinite_tensors(named)
        if bad:
            raise TrainingDiverged(
                f"the weights became NaN or infinite {where} ({', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}); "
                f"they are not checkpointed: {last_good(run_dir, good)}. {diverged_advice(run_dir, cfg.optim.lr, good)}"
            )

    def gathered(loss_sum, correct, count, seconds) -> dict[str, Any]:
        """This epoch's running sums, over all processes (the main one resumes with them, the others with 0)."""
        totals = torch.stack([loss_sum, correct, torch.tensor(float(count), device=device_str)])
        if d.world > 1:
            totals = totals.clone()
            dist.all_reduce(totals)
        return {
            "loss_sum": totals[0].cpu(),
            "correct": totals[1].cpu(),
            "count": int(totals[2].item()),
            "seconds": seconds,
        }

    train_seconds = sum(h["seconds"] for h in history)
    images_seen = 0
    try:
        for epoch in range(start_epoch, cfg.sched.epochs):
            net.train()
            t0 = time.perf_counter()
            first = start_step if epoch == start_epoch else 0
            loss_sum = torch.zeros((), device=device_str)
            correct = torch.zeros((), device=device_str)
            count, before = 0, 0.0
            if first and partial is not None and d.main:  # resumed inside this epoch: its sums so far
                loss_sum += partial["loss_sum"].to(device_str)
                correct += partial["correct"].to(device_str)
                count, before = partial["count"], partial["seconds"]
            since_checkpoint = 0
            bar = tqdm(
                total=steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.sched.epochs}",
                unit="step",
                disable=not (cfg.run.progress and d.main),
                leave=False,
            )
            step_indices = batches.indices(epoch) if distill.cached is not None else None
            for i, (x, y) in enumerate(epoch_batches(batches, epoch, first), start=first):
                step = epoch * steps_per_epoch + i
                x, y = x.to(device_str, non_blocking=True), y.to(device_str, non_blocking=True)
                target = y
                if augment.active:
                    x, target = augment(x, y)  # target: (B,) labels, or (B, K) soft targets when mixing
                teacher_logits = distill.teacher_logits(x, step_indices[i] if step_indices is not None else None)
                last_micro = (i + 1) % cfg.optim.accum_steps == 0 or i + 1 == steps_per_epoch
                sync = net.no_sync() if (d.world > 1 and not last_micro) else contextlib.nullcontext()
                with sync, torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                    out = net(norm(x))
                    exits = out if isinstance(out, list) else None  # multi-exit models (DVT): one logits per exit
                    if exits is not None:
                        out = exits[-1]  # accuracy is reported for the last exit
                    logits = out[0] if isinstance(out, tuple) else out  # distilled: the class head
                    # no teacher: CE on the labels (both heads of a distilled student); else DeiT eq. 2 / 3
                    loss = distill.criterion(out, target, teacher_logits)
                    if exits is not None:  # the sum of all exits' losses (DVT, Wang et al. 2021, sec. 3.3)
                        loss = loss + sum(
                            F.cross_entropy(e.float(), target, label_smoothing=smoothing) for e in exits[:-1]
                        )
                    (loss / cfg.optim.accum_steps).backward()
                if not torch.isfinite(loss):
                    bar.close()
                    raise TrainingDiverged(
                        f"the loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                        f"{last_good(run_dir, good)}. {diverged_advice(run_dir, cfg.optim.lr, good)}"
                    )
                if last_micro:
                    optimizer_step(optimizer, lrs[step], model.parameters(), cfg.optim.clip_grad, kept)
                    if ema is not None:
                        with torch.no_grad():
                            for e, p in zip(ema.parameters(), model.parameters()):
                                e.lerp_(p.detach(), 1.0 - cfg.run.ema_decay)
                loss_sum += loss.detach() * len(y)
                correct += (logits.detach().argmax(-1) == y).sum()
                count += len(y)
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(
                        loss=f"{loss.item():.3f}", img_s=f"{count * d.world / (time.perf_counter() - t0 + 1e-9):.0f}"
                    )
                since_checkpoint += 1
                if (
                    cfg.run.checkpoint_every
                    and since_checkpoint >= cfg.run.checkpoint_every
                    and last_micro
                    and i + 1 < steps_per_epoch
                ):  # at an optimizer step: no gradients half accumulated
                    since_checkpoint = 0
                    sums = gathered(loss_sum, correct, count, before + time.perf_counter() - t0)
                    if d.main:
                        checked_state(f"by epoch {epoch + 1}, step {i + 1}")
                        save_checkpoint(run_dir, model, optimizer, ema, epoch, history, best_val, i + 1, sums)
                    good = (epoch, i + 1)
            bar.close()
            seconds = before + time.perf_counter() - t0
            if d.world > 1:  # metrics over all processes
                totals = torch.stack([loss_sum, correct, torch.tensor(float(count), device=device_str)])
                dist.all_reduce(totals)
                loss_sum, correct, count = totals[0], totals[1], int(totals[2].item())
            train_seconds += seconds
            images_seen += count
            row = {
                "epoch": epoch + 1,
                "train_loss": loss_sum.item() / count,
                "train_acc": 100.0 * correct.item() / count,
                "lr": lrs[min((epoch + 1) * steps_per_epoch, len(lrs)) - 1],
                "seconds": round(seconds, 3),
                "images_per_second": round(count / seconds, 1),
            }
            if splits.val is not None:
                val = evaluate(ema if ema is not None else model, splits.val, norm, device, bf16)
                row.update(val_loss=val["loss"], val_acc=val["acc"])
                best_val = max(best_val, val["acc"])
            history.append(row)
            if d.main:
                checked_state(f"during epoch {epoch + 1}")
                save_checkpoint(run_dir, model, optimizer, ema, epoch + 1, history, best_val)
                _write_history(run_dir, history)
                tb.log_epoch(row)
                msg = (
                    f"epoch {epoch + 1}/{cfg.sched.epochs}: loss {row['train_loss']:.4f}, "
                    f"train acc {row['train_acc']:.2f}%"
                )
                if "val_acc" in row:
                    msg += f", val acc {row['val_acc']:.2f}%"
                logger.info("%s, %.0f img/s", msg, row["images_per_second"])
            good = (epoch + 1, 0)
            if d.world > 1:
                dist.barrier()
    except BaseException:
        tb.close()
        raise
    finally:
        if kept is not None:
            kept.close()  # hooks off, gradients None: the model leaves as zero_grad(set_to_none=True) would leave it

    final_model = ema if ema is not None else model
    test = evaluate(final_model, splits.test, norm, device, bf16)
    metrics = {
        "model": cfg.model.name,
        "dataset": splits.name,
        "params": params,
        "epochs": cfg.sched.epochs,
        "test_acc": round(test["acc"], 3),
        "test_top5": round(test["top5"], 3),
        "test_loss": round(test["loss"], 5),
        "best_val_acc": round(best_val, 3) if best_val >= 0 else None,
        "train_seconds": round(train_seconds, 2),
        "images_per_second": round(sum(h["images_per_second"] for h in history) / max(1, len(history)), 1),
        "processes": d.world,
        "threads": torch.get_num_threads(),
        "device": device,
        "bf16": bf16,
        "run_dir": str(run_dir),
        "model_dir": str(run_dir / "model"),
    }
    if getattr(final_model, "dist_token", None) is not None:  # DeiT: each head alone and their mean
        metrics["test_acc_heads"] = _head_accuracies(final_model, splits.test, norm, device, bf16)
    if distill.teacher is not None:
        teacher_test = evaluate(distill.teacher, splits.test, nn.Identity(), device, bf16)
        metrics.update(
            distill_type=cfg.distill.type, teacher=cfg.distill.teacher, teacher_test_acc=round(teacher_test["acc"], 3)
        )
    if d.main:
        save_pretrained(final_model, run_dir / "model")
        _write_json(run_dir / "metrics.json", metrics)
        tb.log_final(metrics)
        figure = plot_history(run_dir / "curves.png", history, f"{cfg.model.name} on {splits.name}")
        if figure:
            metrics["figure"] = str(figure)
    tb.close()
    if d.owns_group:
        dist.barrier()
        dist.destroy_process_group()  # torchrun processes exit cleanly, with no NCCL/gloo warnings
    return metrics

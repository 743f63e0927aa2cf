"""One training runner for every task: supervised classification, distillation, multi-exit models and
self-supervised pre-training (vitkit/train/tasks.py) share the set-up, the batches, the optimizer, the
schedule, accumulation, clipping, precision, EMA, `torch.compile`, DDP, checkpoints and logging.

    with Runner(cfg, "train", default_dir) as runner:     # device, processes, threads, run directory + lock
        task = ClassificationTask(...)                    # what to train and how a step makes a loss
        metrics = runner.fit(task, train_dataset)

Determinism: the data order of epoch e is a permutation drawn from (seed, e) over the whole training set;
a step takes the next `batch_size` indices of it and each process takes its own contiguous slice, so N
processes with batch B/N see exactly the batches one process with B sees (the batch augmentation draws for the
gathered global batch: `ClassificationTask.augment_batch`), and DDP's gradient averaging reproduces the
single-process gradient. What the forward draws (dropout, stochastic depth, a method's masks) comes from a
stream per process and step (`tasks.process_stream`), so the processes draw differently from one another. The last partial batch is dropped for that reason. A checkpoint
at the end of every epoch (and, with `--run.checkpoint_every=N`, every N batches inside it) stores the
task's weights, the EMA, the optimizer, the fp16 loss scaler, the RNG state, the history and the position
in the epoch, so `--resume` continues a killed run to the same final weights as an uninterrupted one. The
run directory, its lock and the crash-safe checkpoint swap are vitkit/train/checkpoint.py's.

The learning rate follows warm-up + cosine per optimizer update (`cosine_schedule`): with
`--optim.accum_steps=k` and batch B/k, every update sees the images and the learning rate of the update
with batch B and no accumulation.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..allocator import KeptGradients, reuse_freed_memory
from ..hub import atomic_write
from ..precision import resolve_precision
from .checkpoint import (
    CHECKPOINT_DIR,
    clear_outputs,
    module_scalars,
    nonfinite_tensors,
    open_run,
    rng_state,
    set_module_scalars,
    set_rng_state,
    write_checkpoint,
)
from . import fsdp
from .logging import RunLogger
from .optim import build_optimizer, optimizer_step
from .schedule import cosine_schedule

logger = logging.getLogger("vitkit")
STATE_NAME = "state.pt"  # in the checkpoint directory: optimizer, scaler, RNG, history, position in the epoch
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


# ------------------------------------------------------------------------------------ processes and devices
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


def eval_batches(data, batch_size: int = 512, num_workers: int = 0):
    """A split in order, in batches: in-memory tensors directly, files through a DataLoader whose
    `num_workers` processes decode them (`--data.num_workers` during training, `vitkit eval --workers`)."""
    if hasattr(data, "batch"):
        for i in range(0, len(data), batch_size):
            yield data.batch(torch.arange(i, min(i + batch_size, len(data))))
    else:
        yield from torch.utils.data.DataLoader(data, batch_size=batch_size, num_workers=num_workers)


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


# ------------------------------------------------------------------------------------ messages and files
def last_good(run_dir: Path, position: tuple[int, int] | None) -> str:
    """The sentence naming the run's last good checkpoint (`position`: (epoch, step) of the newest one this
    run wrote or resumed from), or saying there is none."""
    if position is None:
        return "no checkpoint was written before it, so there is none to go back to"
    epoch, step = position
    where = f"epoch {epoch + 1}, step {step}" if step else f"after epoch {epoch}"
    return f"the last good checkpoint is {run_dir / CHECKPOINT_DIR} ({where})"


def diverged_advice(run_dir: Path, lr: float, position: tuple[int, int] | None, model_dir: bool = True) -> str:
    """What to do after a divergence; with a good checkpoint that is a model directory (`model_dir`), how to
    start from its weights (in another directory: --overwrite would delete them first)."""
    keep = (
        f"; to keep the good weights, start a run in another --out from them with "
        f"--model.pretrained={run_dir / CHECKPOINT_DIR}"
        if position is not None and model_dir
        else ""
    )
    return (
        f"Lower --optim.lr (now {lr}) or set --optim.clip_grad=1.0 and start the run again (--overwrite, or "
        f"another --out){keep}"
    )


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2) + "\n"))


def write_history(run_dir: Path, history: list[dict]) -> None:
    text = "".join(json.dumps(h) + "\n" for h in history)
    atomic_write(run_dir / "metrics.jsonl", lambda tmp: Path(tmp).write_text(text))


# ------------------------------------------------------------------------------------ the runner
class Runner:
    """Runs a task (vitkit/train/tasks.py `Task`) as `cfg.optim`, `cfg.sched` and `cfg.run` say.

    Used as a context manager: entering picks the device and the precision, joins the process group under
    torchrun, sets the threads and the allocator, seeds torch and Python, and takes the run directory's
    lock (writing config.yaml, or checking a resumed run's); leaving releases the lock and, after a
    finished run, leaves the process group it created. `fit(task, train_data)` then trains."""

    def __init__(self, cfg: Any, command: str, default_dir: Path) -> None:
        self.cfg, self.command = cfg, command
        self.optim, self.sched, self.run = cfg.optim, cfg.sched, cfg.run
        self.run_dir = Path(cfg.run.out) if cfg.run.out else default_dir
        self._lock = None
        self._new_run = False  # this run wrote config.yaml into run_dir (not a resumed one)
        self._started = False  # fit() reached its first step

    # ---------------------------------------------------------------- set-up
    def __enter__(self) -> Runner:  # noqa: PYI034
        run = self.run
        self.device = resolve_device(run.device)
        self.d = init_distributed(self.device)
        if run.fsdp:
            check_fsdp(run, self.d.world)
        if self.device == "cuda":
            torch.cuda.set_device(self.d.local_rank)
        self.device_str = f"cuda:{self.d.local_rank}" if self.device == "cuda" else "cpu"
        # 'auto': bf16 only where it is native (vitkit/precision.py)
        self.precision = resolve_precision(run.precision, self.device, warn=self.d.main)
        if run.threads:
            torch.set_num_threads(run.threads)
        self.reuse_cpu = self.device == "cpu" and run.reuse_cpu_memory
        if self.reuse_cpu:
            reuse_freed_memory()  # vitkit/allocator.py: no page faults for the activations of every step
        if self.d.world > 1 and not run.out:
            raise ValueError("with torchrun, name the run directory: --run.out=DIR (every process must agree on it)")
        # the lock, an interrupted checkpoint swap finished, the settings of a resumed run checked, config.yaml
        self._lock, _ = open_run(self.run_dir, self.command, self.cfg, state_name=STATE_NAME, main=self.d.main)
        self._new_run = not run.resume
        if self.d.world > 1:
            dist.barrier()  # the other processes read the run directory only once the main one has prepared it
        torch.manual_seed(run.seed)
        random.seed(run.seed)
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is not None and self._new_run and not self._started and self.main and self._lock is not None:
            # stopped before its first step (the data, a setting the data decides): the run wrote only its
            # config.yaml, which goes, so the corrected command can take the same --out without --overwrite
            clear_outputs(self.run_dir)
        if self._lock is not None:
            self._lock.release()
        if kind is None and self.d.owns_group:
            dist.barrier()
            dist.destroy_process_group()  # torchrun processes exit cleanly, with no NCCL/gloo warnings

    @property
    def main(self) -> bool:
        return self.d.main

    def autocast(self):
        """The autocast context of the run's precision (none for fp32)."""
        dtype = AUTOCAST_DTYPES[self.precision]
        return torch.autocast(device_type=self.device, dtype=dtype or torch.float32, enabled=dtype is not None)

    def batches(self, data, num_workers: int = 0):
        """This process's per-epoch batches of `data` (tar shards: a stream, vitkit/data/shards.py)."""
        if isinstance(data, torch.utils.data.IterableDataset):
            from ..data.shards import ShardBatches

            return ShardBatches(data, self.run.batch_size, self.d.rank, self.d.world, self.run.seed, num_workers)
        return Batches(data, self.run.batch_size, self.d, self.run.seed, num_workers)

    # ---------------------------------------------------------------- checkpoints
    def _save(
        self, task, model, optimizer_state, scaler, ema, epoch: int, history: list[dict], step=0, partial=None
    ) -> None:
        """The task's weights (`model`: the unsharded module) + the training state, swapped in whole
        (vitkit/train/checkpoint.py): a kill at any instant leaves one complete checkpoint. `epoch` epochs are
        done, and `step` batches of the next one (`partial`: that epoch's running sums)."""
        state = {
            "epoch": epoch,
            "step": step,
            "optimizer": optimizer_state,
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": rng_state(),
            "history": history,
            "partial": partial,
            "scalars": module_scalars(model),
        }

        def write(directory: Path) -> None:
            task.save_weights(model, ema, directory)
            torch.save(state, directory / STATE_NAME)

        write_checkpoint(self.run_dir, write, {"command": self.command, "epoch": epoch, "step": step})

    def _load(self, task, optimizer, scaler, ema, shadow=None) -> dict[str, Any]:
        """Every process reads the checkpoint; a sharded module (`shadow`: its unsharded copy) takes its shard."""
        from ..torch_load import load_torch_file

        ckpt = self.run_dir / CHECKPOINT_DIR
        if not (ckpt / STATE_NAME).is_file():
            raise FileNotFoundError(f"--resume: {ckpt} has no checkpoint; start the run again with --overwrite")
        task.load_weights(task.module if shadow is None else shadow, ema, ckpt)
        state = load_torch_file(ckpt / STATE_NAME)  # tensors and plain data only; a CheckpointError if damaged
        if shadow is not None:
            fsdp.load_full_state_dict(task.module, shadow.state_dict())
            fsdp.load_optimizer_state_dict(task.module, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        set_module_scalars(task.module, state.get("scalars", {}))  # e.g. DINO's teacher temperature
        state.setdefault("step", 0)
        state.setdefault("partial", None)
        return state

    # ---------------------------------------------------------------- the loop
    def fit(self, task, train_data) -> dict[str, Any]:
        """Train `task` on `train_data` (a Dataset, or one with a `.batch(indices)` fast path), then return
        `task.finish(...)`'s metrics."""
        optim, sched, run, d, device = self.optim, self.sched, self.run, self.d, self.device_str
        module = task.module
        batches = self.batches(train_data, getattr(self.cfg.data, "num_workers", 0))
        channels_last = fsdp.use_channels_last(run.channels_last, module, device)
        if channels_last:  # NHWC convolutions (cuDNN's fast kernels); the batches follow
            module.to(memory_format=torch.channels_last)
        shadow = None
        if run.fsdp:  # the unsharded copy that checkpoints and the final outputs read and write
            shadow = copy.deepcopy(module).cpu()
            fsdp.shard(module)
        ema = copy.deepcopy(module).eval().requires_grad_(False) if run.ema_decay else None
        optimizer = build_optimizer(module, optim)
        # gradients allocated once, before any activation: a heap that keeps freed memory stays near the live size
        kept = KeptGradients(module.parameters()) if self.reuse_cpu and shadow is None else None
        # fp16: the loss is scaled so small gradients survive; a step whose gradients overflow is skipped
        scaler = torch.amp.GradScaler(self.device) if self.precision == "fp16" else None
        accum, steps_per_epoch = optim.accum_steps, len(batches)
        if steps_per_epoch % accum and d.main:
            logger.warning(
                "%d batches per epoch is not a multiple of --optim.accum_steps=%d: the last %d batch(es) of "
                "each epoch make an optimizer step of their own (the mean of their gradients, as timm's)",
                steps_per_epoch,
                accum,
                steps_per_epoch % accum,
            )
        updates_per_epoch = math.ceil(steps_per_epoch / accum)
        total_updates = sched.epochs * updates_per_epoch
        lrs = cosine_schedule(optim.lr, total_updates, round(sched.warmup_epochs * updates_per_epoch), sched.min_lr)

        start_epoch, start_step, partial, history = 0, 0, None, []
        good: tuple[int, int] | None = None  # (epoch, step) of the newest checkpoint written or resumed from
        if run.resume:
            state = self._load(task, optimizer, scaler, ema, shadow)
            start_epoch, start_step, partial, history = (
                state["epoch"],
                state["step"],
                state["partial"],
                state["history"],
            )
            good = (start_epoch, start_step)
            if d.main:
                where = f"at epoch {start_epoch + 1}, step {start_step}" if start_step else f"after epoch {start_epoch}"
                logger.info("resuming %s %s", self.run_dir, where)
                if start_epoch >= sched.epochs:
                    logger.info("all %d epochs are done: writing the final outputs again", sched.epochs)
        net = module
        if d.world > 1 and shadow is None:
            net = nn.parallel.DistributedDataParallel(
                module, device_ids=[d.local_rank] if self.device == "cuda" else None
            )
        wrapped = net  # what no_sync acts on (DDP or FSDP)
        if run.compile:  # the compiled wrapper shares the parameters; checkpoints still save `module`
            net = torch.compile(net)
        # steps.csv, TensorBoard, W&B (vitkit/train/logging.py); a resumed run drops the rows after its checkpoint
        log = RunLogger(self.run_dir, run, d.main, self.cfg.to_dict())
        if run.resume:
            log.truncate(start_epoch * updates_per_epoch + math.ceil(start_step / accum))
        what = f"{task.name} " if task.name else ""

        def diverged(problem: str) -> TrainingDiverged:
            advice = diverged_advice(self.run_dir, optim.lr, good, model_dir=task.checkpoint_is_model)
            return TrainingDiverged(f"{problem}{last_good(self.run_dir, good)}. {advice}")

        def snapshot() -> tuple[nn.Module, dict]:
            """(the unsharded module, the optimizer state) to check and save; sharded: gathered on the main
            process (a collective: every process calls it)."""
            if shadow is None:
                return module, optimizer.state_dict()
            weights, opt_state = fsdp.full_state_dict(module), fsdp.optimizer_state_dict(module, optimizer)
            if d.main:
                shadow.load_state_dict(weights)
            return shadow, opt_state

        def checkpoint(where: str, epoch: int, step: int = 0, partial: dict | None = None) -> None:
            """Never checkpoint NaN or infinite weights: stop naming the last good checkpoint instead."""
            model, opt_state = snapshot()
            bad = []
            if d.main:
                named = [
                    *((f"model.{k}", v) for k, v in model.state_dict().items()),
                    *((f"ema.{k}", v) for k, v in (ema.state_dict() if ema is not None else {}).items()),
                    ("optimizer", opt_state["state"]),
                ]
                bad = nonfinite_tensors(named)
            if d.world > 1:  # every process stops together, with the same message
                shared = [bad]
                dist.broadcast_object_list(shared, src=0)
                bad = shared[0]
            if bad:
                names = f"{', '.join(bad[:4])}{', ...' if len(bad) > 4 else ''}"
                raise diverged(
                    f"the {what}weights became NaN or infinite {where} ({names}); they are not checkpointed: "
                )
            if d.main:
                self._save(task, model, opt_state, scaler, ema, epoch, history, step=step, partial=partial)

        def nonfinite_loss(loss: Tensor) -> tuple[float, int] | None:
            """(value, process) of the first process whose loss is NaN or infinite, else None. Under torchrun
            a collective, so that every process stops at the same step and names the same cause."""
            if d.world == 1:
                return None if torch.isfinite(loss) else (loss.item(), 0)
            losses = torch.zeros(d.world, device=device)
            losses[d.rank] = loss.detach().float()
            dist.all_reduce(losses)  # a sum with zeros elsewhere: each process's own value, NaN and inf kept
            bad = (~torch.isfinite(losses)).nonzero().flatten().tolist()
            return (losses[bad[0]].item(), bad[0]) if bad else None

        def gathered(sums: dict[str, Tensor], count: int) -> tuple[dict[str, Tensor], int]:
            """This epoch's running sums over all processes."""
            keys = list(sums)  # the same order on every process (the task's logs)
            totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), device=device)])
            if d.world > 1:
                dist.all_reduce(totals)
            return {k: totals[j].cpu() for j, k in enumerate(keys)}, int(totals[-1].item())

        train_seconds = sum(h["seconds"] for h in history)
        self._started = True
        try:
            for epoch in range(start_epoch, sched.epochs):
                net.train()
                task.start_epoch(epoch, batches)
                t0 = time.perf_counter()
                first = start_step if epoch == start_epoch else 0
                sums: dict[str, Tensor] = {}
                count, before = 0, 0.0
                seen = 0  # images this process loaded since t0 (the throughput's numerator)
                step_sums: dict[str, Tensor] = {}  # the current optimizer step's micro-batches (steps.csv)
                step_count = 0
                if first and partial is not None:  # resumed inside this epoch: its sums so far (on the main process)
                    sums = {k: (v if d.main else torch.zeros_like(v)).to(device) for k, v in partial["sums"].items()}
                    count, before = (partial["count"], partial["seconds"]) if d.main else (0, 0.0)
                since_checkpoint = 0
                bar = tqdm(
                    total=steps_per_epoch,
                    initial=first,
                    desc=f"epoch {epoch + 1}/{sched.epochs}",
                    unit="step",
                    disable=not (run.progress and d.main),
                    leave=False,
                )
                for i, batch in enumerate(epoch_batches(batches, epoch, first), start=first):
                    step = epoch * steps_per_epoch + i
                    update = epoch * updates_per_epoch + i // accum
                    batch = [t.to(device, non_blocking=True) if isinstance(t, Tensor) else t for t in batch]
                    if channels_last:
                        batch[0] = fsdp.to_channels_last(batch[0])
                    n = len(batch[0])
                    last_micro = (i + 1) % accum == 0 or i + 1 == steps_per_epoch
                    with fsdp.no_sync(wrapped, not last_micro):  # accumulate locally; reduce on the last micro-batch
                        with self.autocast():
                            loss, logs = task.step(net, batch, step)
                        # the mean over the step's micro-batches: fewer than accum in an epoch's last, short step
                        scaled = loss / min(accum, steps_per_epoch - i // accum * accum)
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    nonfinite = nonfinite_loss(loss)
                    if nonfinite is not None:
                        bar.close()
                        value, process = nonfinite
                        where = f" in process {process}" if d.world > 1 else ""
                        raise diverged(f"the {what}loss became {value}{where} at epoch {epoch + 1}, step {i + 1}; ")
                    if last_micro:
                        grad_norm = fsdp.grad_norm(
                            optimizer_step(optimizer, lrs[update], module.parameters(), optim.clip_grad, kept, scaler)
                        )
                        task.on_step_end(update, total_updates)
                        if ema is not None:
                            update_ema(ema, module, run.ema_decay)
                    for k, v in {"loss": loss, **logs}.items():
                        weighted = v.detach().float() * n
                        sums[k] = sums.get(k, 0.0) + weighted
                        step_sums[k] = step_sums.get(k, 0.0) + weighted
                    count += n
                    seen += n
                    step_count += n
                    bar.update(1)
                    if last_micro and (update + 1) % log.log_every == 0:
                        # the step's values: means over its micro-batches and every process (a collective, on
                        # every process), so they are those of the whole batch of one process without accumulation
                        step_totals, step_images = gathered(step_sums, step_count)
                        if d.main:
                            values = {"epoch": epoch + 1, "lr": lrs[update]}
                            values.update({k: (v / step_images).item() for k, v in step_totals.items()})
                            if grad_norm is not None:
                                values["grad_norm"] = float(grad_norm)
                            if scaler is not None:
                                values["loss_scale"] = scaler.get_scale()
                            values["images_per_second"] = seen * d.world / (time.perf_counter() - t0 + 1e-9)
                            log.log_step(update + 1, values)
                    if last_micro:
                        step_sums, step_count = {}, 0
                    if i % 10 == 0:
                        bar.set_postfix(
                            loss=f"{loss.item():.4f}",
                            img_s=f"{seen * d.world / (time.perf_counter() - t0 + 1e-9):.0f}",
                        )
                    since_checkpoint += 1
                    if (
                        run.checkpoint_every
                        and since_checkpoint >= run.checkpoint_every
                        and last_micro
                        and i + 1 < steps_per_epoch
                    ):  # at an optimizer step: no gradients half accumulated
                        since_checkpoint = 0
                        totals, total_count = gathered(sums, count)
                        partial_now = {
                            "sums": totals,
                            "count": total_count,
                            "seconds": before + time.perf_counter() - t0,
                        }
                        checkpoint(f"by epoch {epoch + 1}, step {i + 1}", epoch, i + 1, partial_now)
                        good = (epoch, i + 1)
                bar.close()
                seconds = before + time.perf_counter() - t0
                totals, total_count = gathered(sums, count)  # metrics over all processes
                train_seconds += seconds
                row = {
                    "epoch": epoch + 1,
                    **{task.log_prefix + k: (v / total_count).item() for k, v in totals.items()},
                    "lr": lrs[min((epoch + 1) * updates_per_epoch, len(lrs)) - 1],
                    "seconds": round(seconds, 3),
                    "images_per_second": round(total_count / seconds, 1),
                }
                row.update(task.evaluate(ema if ema is not None else module) or {})
                history.append(row)
                checkpoint(f"during epoch {epoch + 1}", epoch + 1)
                if d.main:
                    write_history(self.run_dir, history)
                    log.log_epoch(row)
                    shown = ", ".join(
                        f"{k} {v:.4f}"
                        for k, v in row.items()
                        if k not in ("epoch", "lr", "seconds", "images_per_second")
                    )
                    logger.info("epoch %d/%d: %s, %.0f img/s", epoch + 1, sched.epochs, shown, row["images_per_second"])
                good = (epoch + 1, 0)
                if d.world > 1:
                    dist.barrier()
        except BaseException:
            log.close(failed=True)
            raise
        finally:
            if kept is not None:
                kept.close()  # hooks off, gradients None: as zero_grad(set_to_none=True) would leave them

        summary = {
            "train_seconds": round(train_seconds, 2),
            "images_per_second": round(sum(h["images_per_second"] for h in history) / max(1, len(history)), 1),
            "processes": d.world,
            "threads": torch.get_num_threads(),
            "device": self.device,
            "precision": self.precision,
            "run_dir": str(self.run_dir),
        }
        final = ema if ema is not None else module
        if shadow is not None:  # the whole model, for the test metrics and the saved outputs
            final = snapshot()[0].to(device)
        metrics = task.finish(final, self, history, summary)
        if d.main:
            write_json(self.run_dir / "metrics.json", {k: v for k, v in metrics.items() if k != "figure"})
            log.log_final(metrics)
        log.close()
        return metrics


def check_fsdp(run: Any, world: int) -> None:
    """`--run.fsdp=true` needs torchrun, and combines with neither the EMA nor fp16 (their state is per
    full parameter; bf16 and fp32 autocast are fine)."""
    if world <= 1:
        raise ValueError(
            "--run.fsdp=true shards the model over torchrun's processes: launch with torchrun --nproc_per_node=N, "
            "or leave --run.fsdp=false"
        )
    if run.ema_decay:
        raise ValueError("--run.ema_decay with --run.fsdp=true is not supported: drop one of them")
    if str(run.precision).lower() == "fp16":
        raise ValueError("--run.precision=fp16 with --run.fsdp=true is not supported: use --run.precision=bf16 or fp32")


@torch.no_grad()
def update_ema(ema: nn.Module, module: nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights, for the trained parameters; what the optimizer does not train
    (buffers, a method's momentum teacher) is copied as it is."""
    for e, p in zip(ema.parameters(), module.parameters()):
        if p.requires_grad:
            e.lerp_(p.detach(), 1.0 - decay)
        else:
            e.copy_(p)
    for e, b in zip(ema.buffers(), module.buffers()):
        e.copy_(b)

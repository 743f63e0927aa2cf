"""Self-supervised pre-training: one loop for every method of `vitkit.methods` (MAE, masked patch
prediction, DINO, MSN), one process or many (`torchrun`), resumable.

    vitkit pretrain mae --recipe recipes/pretrain_mae_fashion_mnist.yaml --sched.epochs=10
    vitkit pretrain mpp --data.name=fashion_mnist --model.name=vit_micro_patch4_28

The images come from `load_dataset` (labels are never used), are normalised with the dataset's
mean and std and handed to the method, which makes its own masks or views on the tensor
(vitkit/methods/base.py). Everything else is the supervised loop's (vitkit/train/engine.py):
the deterministic per-process batches, warm-up + cosine per step, AdamW without weight decay on
norms, biases, tokens and position embeddings, DDP with gloo/NCCL, an atomic checkpoint every
epoch (and every `--run.checkpoint_every` batches) with optimizer and RNG state, `--resume` to the
same final weights, a NaN stop; the run directory's lock and checkpoint swap are
vitkit/train/checkpoint.py's.

The run directory holds `config.yaml`, `metrics.jsonl` (per epoch: every scalar the method logs,
averaged, including the collapse monitor `feature_std`), `metrics.json`, `curves.png`,
`checkpoint/` and `backbone/`: the pre-trained encoder as a vitkit model directory, which
`vitkit train --finetune RUN/backbone` fine-tunes (and `vitkit.eval` probes). MAE runs also write
the whole MAE model (`model/`) and `reconstruction.png`.

Learning rate: `optim.lr` is the peak rate for the global batch, as in `vitkit train`; the MAE
paper's rule is lr = blr * batch / 256 with blr = 1.5e-4 (recipes state the product).
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ..allocator import KeptGradients, reuse_freed_memory
from ..data.transforms import apply_data_config, data_args, training_data_config
from ..hub import save_pretrained
from ..precision import resolve_bf16
from ..registry import create_model
from .config import (
    DataConfig,
    ModelConfig,
    OptimConfig,
    RunConfig,
    ScheduleConfig,
    _yaml,
    apply_overrides,
    set_field,
)
from .checkpoint import (
    CHECKPOINT_DIR,
    module_scalars,
    nonfinite_tensors,
    open_run,
    rng_state,
    set_module_scalars,
    set_rng_state,
    write_checkpoint,
)
from .engine import (
    Batches,
    Normalise,
    TrainingDiverged,
    _write_history,
    _write_json,
    epoch_batches,
    eval_batches,
    init_distributed,
    last_good,
    resolve_device,
    train_subset,
)
from .optim import build_optimizer, optimizer_step
from .schedule import cosine_schedule

logger = logging.getLogger("vitkit")


@dataclass
class MethodConfig:
    name: str = "mae"  # mae | mpp | dino | msn (vitkit.methods.list_methods())
    options: dict[str, Any] = field(default_factory=dict)  # the method's keyword options, e.g. mask_ratio


def _pretrain_optim() -> OptimConfig:
    # MAE's pre-training optimizer (appendix A.1): AdamW, betas (0.9, 0.95), weight decay 0.05. The
    # peak lr suits the small CPU models; the paper's rule for ViT-B on ImageNet is 1.5e-4 * batch / 256.
    return OptimConfig(lr=1e-3, weight_decay=0.05, betas=(0.9, 0.95), label_smoothing=0.0)


@dataclass
class PretrainConfig:
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)  # the backbone (any registered ViT)
    optim: OptimConfig = field(default_factory=_pretrain_optim)
    sched: ScheduleConfig = field(default_factory=lambda: ScheduleConfig(epochs=20, warmup_epochs=2.0))
    run: RunConfig = field(default_factory=lambda: RunConfig(batch_size=128))

    def to_dict(self) -> dict[str, Any]:
        import json

        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainConfig:
        cfg = cls()
        for section, entries in (values or {}).items():
            if section not in {f.name for f in dataclasses.fields(cls)}:
                raise ValueError(
                    f"unknown recipe section {section!r}; a pre-training recipe has "
                    f"{[f.name for f in dataclasses.fields(cls)]}"
                )
            for key, value in (entries or {}).items():
                set_field(cfg, f"{section}.{key}", value)
        return cfg


def load_pretrain_recipe(path: str | Path) -> PretrainConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist (recipes live in the repository's recipes/ folder)")
    values = _yaml().safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping of sections (method, data, model, optim, sched, run)")  # noqa: TRY004
    return PretrainConfig.from_dict(values)


def pretrain_config(
    method: str | None, recipe: str | None = None, overrides: list[str] | None = None
) -> PretrainConfig:
    """Defaults, then the recipe, then `--section.field=value` overrides; `method` (the CLI's
    positional argument) must agree with the recipe's."""
    cfg = load_pretrain_recipe(recipe) if recipe else PretrainConfig()
    if method is not None:
        if recipe and cfg.method.name != method:
            raise ValueError(f"the recipe {recipe} is for method {cfg.method.name!r}, not {method!r}")
        cfg.method.name = method
    apply_overrides(cfg, overrides or [])
    from .config import check_config

    check_config(cfg)  # every setting in range and the backbone buildable, before any data is read
    return cfg


# ------------------------------------------------------------------------------------ checkpoints
STATE_NAME = "state.pt"  # in the checkpoint directory: optimizer, RNG, history, position in the epoch


def _save_state(
    run_dir: Path,
    method: nn.Module,
    optimizer,
    epoch: int,
    history: list[dict],
    step: int = 0,
    partial: dict | None = None,
) -> None:
    """The whole method (weights + buffers: a DINO teacher and centre too, and the Python numbers its schedules
    advance) + training state, swapped in whole (vitkit/train/checkpoint.py)."""
    from safetensors.torch import save_file

    weights = {k: v.detach().cpu().contiguous().clone() for k, v in method.state_dict().items()}
    state = {
        "epoch": epoch,
        "step": step,
        "optimizer": optimizer.state_dict(),
        "rng": rng_state(),
        "history": history,
        "partial": partial,
        "scalars": module_scalars(method),
    }

    def write(directory: Path) -> None:
        save_file(weights, str(directory / "method.safetensors"), metadata={"format": "pt"})
        torch.save(state, directory / STATE_NAME)

    write_checkpoint(run_dir, write, {"command": "pretrain", "epoch": epoch, "step": step})


def _load_state(run_dir: Path, method: nn.Module, optimizer) -> dict[str, Any]:
    from safetensors.torch import load_file

    from ..hub import load_state_dict_checked

    ckpt = run_dir / CHECKPOINT_DIR
    if not (ckpt / STATE_NAME).is_file() or not (ckpt / "method.safetensors").is_file():
        raise FileNotFoundError(
            f"--resume: {ckpt} has no pre-training checkpoint; start the run again with --overwrite"
        )
    load_state_dict_checked(method, load_file(str(ckpt / "method.safetensors")), source=str(ckpt))
    from ..torch_load import load_torch_file

    state = load_torch_file(ckpt / STATE_NAME)  # tensors and plain data only; a CheckpointError if damaged
    optimizer.load_state_dict(state["optimizer"])
    set_rng_state(state["rng"])
    set_module_scalars(method, state.get("scalars", {}))  # e.g. DINO's teacher temperature for the next step
    state.setdefault("step", 0)
    state.setdefault("partial", None)
    return state


def save_backbone(method, directory: Path) -> Path:
    """The method's encoder (`encoder_state_dict()`: e.g. DINO's teacher) as a vitkit model directory."""
    backbone = copy.deepcopy(method.backbone).cpu()
    backbone.load_state_dict(method.encoder_state_dict())
    backbone.requires_grad_(True)
    return save_pretrained(backbone, directory)


def plot_pretrain_history(path: Path, history: list[dict], title: str) -> Path | None:
    """Loss and the collapse monitor (feature std) per epoch."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    from ..hub import atomic_write

    epochs = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    a.plot(epochs, [h["loss"] for h in history])
    a.set_xlabel("epoch"), a.set_ylabel("pre-training loss"), a.set_title("loss")
    if history and "feature_std" in history[0]:
        b.plot(epochs, [h["feature_std"] for h in history])
    b.set_xlabel("epoch"), b.set_ylabel("std of normalised features")
    b.set_title("collapse monitor (0 = collapsed)")
    fig.suptitle(title)
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=100, format="png"))
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------ the loop
def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Pre-train as configured; returns the final metrics (also written to RUN_DIR/metrics.json)."""
    device = resolve_device(cfg.run.device)
    d = init_distributed(device)
    device_str = f"cuda:{d.local_rank}" if device == "cuda" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(d.local_rank)
    bf16 = resolve_bf16(cfg.run.bf16, device, warn=d.main)  # 'auto': only where bf16 is native
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    reuse_cpu = device == "cpu" and cfg.run.reuse_cpu_memory
    if reuse_cpu:
        reuse_freed_memory()  # vitkit/allocator.py: no page faults for the activations of every step
    default_dir = (
        Path("runs") / f"pretrain-{cfg.method.name}-{cfg.model.name}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    run_dir = Path(cfg.run.out) if cfg.run.out else default_dir
    if d.world > 1 and not cfg.run.out:
        raise ValueError("with torchrun, name the run directory: --run.out=DIR (every process must agree on it)")
    # the lock, an interrupted checkpoint swap finished, the settings of a resumed run checked, config.yaml
    lock, _ = open_run(run_dir, "pretrain", cfg, state_name=STATE_NAME, main=d.main)  # vitkit/train/checkpoint.py
    try:
        if d.world > 1:
            dist.barrier()  # the other processes read the run directory only once the main one has prepared it
        return _pretrain(cfg, d, device, device_str, bf16, reuse_cpu, run_dir)
    finally:
        if lock is not None:
            lock.release()


def _pretrain(
    cfg: PretrainConfig, d, device: str, device_str: str, bf16: bool, reuse_cpu: bool, run_dir: Path
) -> dict[str, Any]:
    from ..data import load_dataset
    from ..methods import create_method

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
    if cfg.data.train_fraction != 1.0:  # pre-train on a stratified share (smoke runs)
        splits.train = train_subset(splits.train, cfg.data.train_fraction, cfg.data.seed)
    backbone = create_model(
        cfg.model.name,
        pretrained=cfg.model.pretrained,
        num_classes=0,
        in_chans=splits.in_chans,
        img_size=splits.img_size,
        **cfg.model.overrides,
    )
    # The data config (normalisation, resize and crop) travels with the backbone, so fine-tuning and probing
    # reuse it and a method can undo the normalisation (masked patch prediction's colour targets).
    data_config = training_data_config(splits, backbone, cfg.model.pretrained, data_args(cfg.data))
    apply_data_config(splits, data_config)
    backbone.pretrained_cfg.update(data_config, dataset=splits.name)
    method = create_method(cfg.method.name, backbone, **cfg.method.options)
    if cfg.run.grad_checkpointing:
        method.backbone.set_grad_checkpointing(True)
    method.to(device_str)
    norm = Normalise(data_config["mean"], data_config["std"]).to(device_str)
    params = sum(p.numel() for p in method.parameters())
    trainable = sum(p.numel() for p in method.parameters() if p.requires_grad)

    optimizer = build_optimizer(method, cfg.optim)
    # gradients allocated once, before any activation (vitkit/allocator.py)
    kept = KeptGradients(method.parameters()) if reuse_cpu else None
    batches = Batches(splits.train, cfg.run.batch_size, d, cfg.run.seed, cfg.data.num_workers)
    steps_per_epoch = len(batches)
    total_steps = cfg.sched.epochs * steps_per_epoch
    lrs = cosine_schedule(cfg.optim.lr, total_steps, round(cfg.sched.warmup_epochs * steps_per_epoch), cfg.sched.min_lr)

    start_epoch, start_step, partial, history = 0, 0, None, []
    good: tuple[int, int] | None = None  # (epoch, step) of the newest checkpoint written or resumed from
    if cfg.run.resume:
        state = _load_state(run_dir, method, optimizer)
        start_epoch, start_step, partial, history = state["epoch"], state["step"], state["partial"], state["history"]
        good = (start_epoch, start_step)
        if d.main:
            where = f"at epoch {start_epoch + 1}, step {start_step}" if start_step else f"after epoch {start_epoch}"
            logger.info("resuming %s %s", run_dir, where)
    net = (
        nn.parallel.DistributedDataParallel(method, device_ids=[d.local_rank] if device == "cuda" else None)
        if d.world > 1
        else method
    )
    advice = (
        f"Lower --optim.lr (now {cfg.optim.lr}) or set --optim.clip_grad=1.0 and start the run again "
        f"(--overwrite, or another --out)"
    )

    def checked_state(where: str) -> None:
        """Never checkpoint NaN or infinite weights: stop naming the last good checkpoint instead."""
        bad = nonfinite_tensors([*method.state_dict().items(), ("optimizer", optimizer.state_dict()["state"])])
        if bad:
            raise TrainingDiverged(
                f"the {cfg.method.name} weights became NaN or infinite {where} ({', '.join(bad[:4])}"
                f"{', ...' if len(bad) > 4 else ''}); they are not checkpointed: {last_good(run_dir, good)}. {advice}"
            )

    def gathered(sums: dict[str, torch.Tensor], count: int, seconds: float) -> dict[str, Any]:
        """This epoch's running sums, over all processes (the main one resumes with them, the others with 0)."""
        keys = sorted(sums)
        totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), device=device_str)])
        if d.world > 1:
            dist.all_reduce(totals)
        return {
            "sums": {k: totals[j].cpu() for j, k in enumerate(keys)},
            "count": int(totals[-1].item()),
            "seconds": seconds,
        }

    try:
        for epoch in range(start_epoch, cfg.sched.epochs):
            net.train()
            t0 = time.perf_counter()
            first = start_step if epoch == start_epoch else 0
            sums: dict[str, torch.Tensor] = {}
            count, before = 0, 0.0
            if first and partial is not None and d.main:  # resumed inside this epoch: its sums so far
                sums = {k: v.to(device_str) for k, v in partial["sums"].items()}
                count, before = partial["count"], partial["seconds"]
            elif first and partial is not None:
                sums = {k: torch.zeros_like(v, device=device_str) for k, v in partial["sums"].items()}
            since_checkpoint = 0
            bar = tqdm(
                total=steps_per_epoch,
                initial=first,
                desc=f"epoch {epoch + 1}/{cfg.sched.epochs}",
                unit="step",
                disable=not (cfg.run.progress and d.main),
                leave=False,
            )
            for i, (x, _) in enumerate(epoch_batches(batches, epoch, first), start=first):  # labels unused
                step = epoch * steps_per_epoch + i
                x = x.to(device_str, non_blocking=True)
                with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=bf16):
                    out = net(norm(x))
                loss = out["loss"]
                if not torch.isfinite(loss):
                    bar.close()
                    raise TrainingDiverged(
                        f"the {cfg.method.name} loss became {loss.item()} at epoch {epoch + 1}, step {i + 1}; "
                        f"{last_good(run_dir, good)}. {advice}"
                    )
                loss.backward()
                optimizer_step(optimizer, lrs[step], method.parameters(), cfg.optim.clip_grad, kept)
                method.on_step_end(step, total_steps)
                for k, v in out.items():
                    sums[k] = sums.get(k, 0.0) + v.detach().float() * len(x)
                count += len(x)
                bar.update(1)
                if i % 10 == 0:
                    bar.set_postfix(
                        loss=f"{loss.item():.4f}", img_s=f"{count * d.world / (time.perf_counter() - t0 + 1e-9):.0f}"
                    )
                since_checkpoint += 1
                if (
                    cfg.run.checkpoint_every
                    and since_checkpoint >= cfg.run.checkpoint_every
                    and i + 1 < steps_per_epoch
                ):
                    since_checkpoint = 0
                    partial_now = gathered(sums, count, before + time.perf_counter() - t0)
                    if d.main:
                        checked_state(f"by epoch {epoch + 1}, step {i + 1}")
                        _save_state(run_dir, method, optimizer, epoch, history, i + 1, partial_now)
                    good = (epoch, i + 1)
            bar.close()
            seconds = before + time.perf_counter() - t0
            keys = sorted(sums)
            totals = torch.stack([sums[k] for k in keys] + [torch.tensor(float(count), device=device_str)])
            if d.world > 1:
                dist.all_reduce(totals)
            row = {
                "epoch": epoch + 1,
                **{k: round((totals[j] / totals[-1]).item(), 6) for j, k in enumerate(keys)},
                "lr": lrs[min((epoch + 1) * steps_per_epoch, len(lrs)) - 1],
                "seconds": round(seconds, 3),
                "images_per_second": round(totals[-1].item() / seconds, 1),
            }
            history.append(row)
            if d.main:
                checked_state(f"during epoch {epoch + 1}")
                _save_state(run_dir, method, optimizer, epoch + 1, history)
                _write_history(run_dir, history)
                logs = ", ".join(f"{k} {row[k]:.4f}" for k in keys)
                logger.info("epoch %d/%d: %s, %.0f img/s", epoch + 1, cfg.sched.epochs, logs, row["images_per_second"])
            good = (epoch + 1, 0)
            if d.world > 1:
                dist.barrier()
    finally:
        if kept is not None:
            kept.close()  # hooks off, gradients None, as zero_grad(set_to_none=True) would leave them

    metrics = {
        "method": cfg.method.name,
        "model": cfg.model.name,
        "dataset": splits.name,
        "params": params,
        "trainable_params": trainable,
        "epochs": cfg.sched.epochs,
        "final_loss": history[-1]["loss"] if history else None,
        "final_feature_std": history[-1].get("feature_std") if history else None,
        "train_seconds": round(sum(h["seconds"] for h in history), 2),
        "processes": d.world,
        "threads": torch.get_num_threads(),
        "device": device,
        "run_dir": str(run_dir),
        "backbone_dir": str(run_dir / "backbone"),
    }
    if d.main:
        method.eval()
        save_backbone(method, run_dir / "backbone")
        if hasattr(method, "save_pretrained"):  # MAE: the whole model (encoder + decoder) too
            method.save_pretrained(run_dir / "model")
        if hasattr(method, "save_figure"):  # e.g. MAE's reconstructions of test images
            x, _ = next(iter(eval_batches(splits.test, batch_size=8)))
            metrics["reconstruction"] = str(method.save_figure(norm(x.to(device_str)), run_dir / "reconstruction.png"))
        _write_json(run_dir / "metrics.json", metrics)
        figure = plot_pretrain_history(
            run_dir / "curves.png", history, f"{cfg.method.name} pre-training of {cfg.model.name} on {splits.name}"
        )
        if figure:
            metrics["figure"] = str(figure)
    if d.owns_group:
        dist.barrier()
        dist.destroy_process_group()
    return metrics


# ------------------------------------------------------------------------------------ fine-tuning
def finetune_settings(cfg, path: str | Path) -> None:
    """`vitkit train --finetune PATH`: start from a pre-trained backbone directory (a pre-training
    run's `backbone/`, or the run directory itself). Unless a model name is set (recipe or
    `--model.name`; anything but the default), the model is
    the one saved there; unless `--optim.layer_decay` is given it is 0.75 (layer-wise LR decay,
    BEiT/MAE fine-tuning: block i of L learns at lr * 0.75^(L + 1 - i)). The head is new."""
    from ..hub import CONFIG_NAME, read_json, vitkit_config

    path = Path(path)
    if (path / "backbone" / CONFIG_NAME).is_file():
        path = path / "backbone"
    if not path.exists():
        raise FileNotFoundError(
            f"--finetune {path} does not exist: give a pre-training run directory "
            f"(vitkit pretrain --out) or its backbone/ directory"
        )
    if path.is_dir() and cfg.model.name == ModelConfig.name:
        meta = vitkit_config(read_json(path / CONFIG_NAME)) if (path / CONFIG_NAME).is_file() else {}
        if meta.get("model_name"):
            cfg.model.name = meta["model_name"]
            saved = meta.get("config") or {}
            # structural settings of the pre-trained backbone that its registered name may not carry
            for key in ("global_pool", "class_token", "fc_norm", "init_values", "qkv_bias", "norm_eps", "act"):
                if key in saved and key not in cfg.model.overrides:
                    cfg.model.overrides[key] = saved[key]
    cfg.model.pretrained = str(path)
    if cfg.optim.layer_decay is None:
        cfg.optim.layer_decay = 0.75

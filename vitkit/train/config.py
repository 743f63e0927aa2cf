"""Training configuration: one dataclass per concern, YAML recipe files, dotted overrides.

    vitkit train --recipe recipes/digits_vit.yaml --optim.lr=1e-3 --sched.epochs=10

A recipe is a YAML mapping with the same sections as `TrainConfig` (data, aug, model, optim,
sched, run, distill); anything it leaves out keeps the default below. Overrides are `--section.field=value`, the
value parsed as YAML (so `1e-3`, `true`, `[0.9, 0.95]` and `null` mean what they look like).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.augment import AugmentConfig


@dataclass
class DataConfig:
    name: str = "digits"  # digits | mnist | mnist5k | fashion_mnist | cifar10 | cifar100 | folder
    data_dir: str | None = None
    val_fraction: float = 0.1
    seed: int = 0  # the split seed (fixed by default: every run sees the same split)
    strict: bool = False  # image folders: stop at the first unreadable file instead of skipping it
    img_size: int | None = None  # image folders: resize to this size
    num_workers: int = 2  # DataLoader workers for datasets decoded on the fly (image folders)
    train_fraction: float = 1.0  # train on this stratified share of the train split (after carving val)


@dataclass
class ModelConfig:
    name: str = "vit_micro_patch2_8"
    pretrained: str | None = None  # fine-tune from a checkpoint (resampled to the data's image size)
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields, e.g. drop_path_rate


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 3e-3  # peak learning rate for the global batch (no implicit scaling)
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    momentum: float = 0.9  # sgd
    layer_decay: float | None = None  # layer-wise LR decay (BEiT/MAE fine-tuning), e.g. 0.75
    clip_grad: float | None = None  # max global gradient norm
    accum_steps: int = 1  # micro-batches per optimizer step
    label_smoothing: float = 0.1
    # torch's fused AdamW/SGD kernel (CPU and CUDA): one pass per tensor instead of ~10 ops per parameter
    # (ViT-S: 34 -> 9 ms per step on the Zen 4); false: the per-parameter loop
    fused: bool = True


@dataclass
class ScheduleConfig:
    epochs: int = 100
    warmup_epochs: float = 5.0
    min_lr: float = 0.0


@dataclass
class RunConfig:
    out: str | None = None  # run directory; default runs/<model>-<data>-<time>
    seed: int = 0
    batch_size: int = 64  # global batch (all processes together, before accumulation)
    # bf16 autocast (CPU and CUDA; never fp16 on CPU): true | false | auto = only where bf16 is native (CPUs with
    # AMX or AVX512-BF16, CUDA GPUs with bf16); emulated bf16 is ~10x slower than fp32 (vitkit/precision.py)
    bf16: bool | str = False
    grad_checkpointing: bool = False
    compile: bool = False  # torch.compile the training forward/backward (measure first: docs/performance.md)
    ema_decay: float | None = None  # exponential moving average of the weights, e.g. 0.999
    resume: bool = False  # continue the run in `out` from its last checkpoint
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads
    # on CPU, glibc keeps freed memory for the next step instead of faulting it in again (vitkit/allocator.py):
    # ViT-S training steps 1.2x, Swin-T 1.7x on the Zen 4; the gradients are allocated once and zeroed in place
    # (allocator.KeptGradients), so the heap stays near the live tensors; false leaves the C library's defaults
    reuse_cpu_memory: bool = True
    progress: bool = True
    tensorboard: str = "auto"  # auto (when `tensorboard` is installed) | true | false; rank 0, in the run dir


@dataclass
class DistillConfig:
    """DeiT knowledge distillation (vitkit/methods/distill.py, docs/distillation.md)."""

    teacher: str | None = None  # a model or run directory (vitkit train --out), or a weights file + teacher_model
    teacher_model: str | None = None  # registered name of the teacher when `teacher` is a state-dict file
    type: str = "none"  # none | soft | hard
    token: bool | None = None  # the distillation head takes the teacher term; None: whenever the student has one
    alpha: float | None = None  # weight of the teacher term; None: 0.1 for soft, 0.5 for hard (DeiT)
    tau: float = 3.0  # soft distillation temperature
    kl_reduction: str = "batchmean"  # batchmean: the paper's KL per image (timm); deit: DeiT's code, sum / (B K)
    cache_logits: bool = False  # compute the teacher's train-set logits once (only without augmentation)


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    aug: AugmentConfig = field(default_factory=AugmentConfig)  # training augmentation (vitkit/data/augment.py)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sched: ScheduleConfig = field(default_factory=ScheduleConfig)
    run: RunConfig = field(default_factory=RunConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)

    def to_dict(self) -> dict[str, Any]:
        import json

        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists: plain YAML/JSON

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        cfg = cls()
        for section, entries in (values or {}).items():
            for key, value in (entries or {}).items():
                set_field(cfg, f"{section}.{key}", value)
        return cfg


def _yaml():
    try:
        import yaml
    except ImportError:
        raise ImportError("recipes are YAML files: pip install pyyaml") from None
    return yaml


def load_recipe(path: str | Path) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"recipe {path} does not exist (recipes live in the repository's recipes/ folder)")
    values = _yaml().safe_load(path.read_text()) or {}
    if not isinstance(values, dict):
        raise ValueError(f"recipe {path} must be a YAML mapping of sections (data, aug, model, optim, sched, run, "
                         f"distill)")
    return TrainConfig.from_dict(values)


def _coerce(value: Any, annotation: str, key: str) -> Any:
    """Check a parsed value against the field's annotation (a string under `from __future__`)."""
    if value is None:
        if "None" not in annotation:
            raise ValueError(f"{key} cannot be null")
        return None
    if annotation.startswith("tuple"):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{key} expects a list such as [0.9, 0.999], got {value!r}")
        return tuple(_coerce(v, "float", key) for v in value)
    if annotation.startswith("dict"):
        if not isinstance(value, dict):
            raise ValueError(f"{key} expects a mapping such as {{drop_path_rate: 0.1}}, got {value!r}")
        return value
    if annotation == "bool | str":  # true | false | auto (run.bf16)
        from ..precision import parse_bf16

        try:
            return parse_bf16(value)
        except ValueError:
            raise ValueError(f"{key} expects true, false or auto, got {value!r}") from None
    if annotation.startswith("bool"):
        if not isinstance(value, bool):
            raise ValueError(f"{key} expects true or false, got {value!r}")
        return value
    if annotation.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key} expects an integer, got {value!r}")
        return value
    if annotation.startswith("float"):
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key} expects a number, got {value!r}")
        return float(value)
    return value if isinstance(value, str) or "str" not in annotation else str(value)


def set_field(cfg: TrainConfig, dotted: str, value: Any) -> None:
    """Set `section.field` (or `model.overrides.NAME`) on `cfg`, checking the name and the type."""
    parts = dotted.split(".")
    sections = {f.name: f for f in dataclasses.fields(cfg)}
    if len(parts) == 3 and parts[:2] == ["model", "overrides"]:
        cfg.model.overrides[parts[2]] = value
        return
    if len(parts) == 3 and parts[0] in sections and isinstance(getattr(getattr(cfg, parts[0]), parts[1], None), dict):
        getattr(getattr(cfg, parts[0]), parts[1])[parts[2]] = value  # any mapping field, e.g. method.options.NAME
        return
    if len(parts) != 2 or parts[0] not in sections:
        raise ValueError(f"unknown setting {dotted!r}: settings are SECTION.FIELD with SECTION one of {sorted(sections)}")
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise ValueError(f"unknown setting {dotted!r}; {parts[0]} has: {', '.join(sorted(fields))}")
    setattr(section, parts[1], _coerce(value, str(fields[parts[1]].type), dotted))


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `--section.field=value` (or `section.field=value`) strings."""
    yaml = _yaml()
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ValueError(f"override {item!r} must look like --section.field=value (e.g. --optim.lr=1e-3)")
        key, raw = text.split("=", 1)
        set_field(cfg, key, yaml.safe_load(raw) if raw != "" else None)
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    from ..hub import _atomic_write

    text = _yaml().safe_dump(cfg.to_dict(), sort_keys=False)
    _atomic_write(path, lambda tmp: Path(tmp).write_text(text))

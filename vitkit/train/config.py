"""Training configuration: one dataclass per concern, YAML recipe files, dotted overrides.

    vitkit train --recipe recipes/digits_vit.yaml --optim.lr=1e-3 --sched.epochs=10

A recipe is a YAML mapping with the same sections as `TrainConfig` (data, aug, model, optim,
sched, run, distill); anything it leaves out keeps the default below. Overrides are `--section.field=value`, the
value parsed as YAML (so `1e-3`, `true`, `[0.9, 0.95]` and `null` mean what they look like).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.augment import AugmentConfig


@dataclass
class DataConfig:
    # digits | mnist | mnist5k | fashion_mnist | cifar10 | cifar100 | folder | shards | moving_digits | video_folder
    name: str = "digits"
    data_dir: str | None = None  # the dataset's files (IDX, CIFAR batches, an image folder); None: its default source
    val_fraction: float = 0.1  # share of the train split held out for validation (0: none)
    seed: int = 0  # the split seed (fixed by default: every run sees the same split)
    strict: bool = False  # image folders: stop at the first unreadable file instead of skipping it
    img_size: int | None = None  # image folders: resize to this size
    num_workers: int = 2  # DataLoader workers for datasets decoded on the fly (image folders)
    train_fraction: float = 1.0  # train on this stratified share of the train split (after carving val)
    # preprocessing (timm's data config; docs/data.md "Preprocessing"); None: the checkpoint's when fine-tuning,
    # else the dataset's. Saved in the model's config.json, which predict and eval follow.
    mean: tuple[float, ...] | None = None  # per-channel normalisation mean (one value: every channel)
    std: tuple[float, ...] | None = None  # per-channel normalisation std
    interpolation: str | None = None  # image folders: resize filter (bilinear, bicubic, lanczos, ...)
    crop_pct: float | None = None  # image folders: centre crop share (the shorter side resized to size/crop_pct)
    crop_mode: str | None = None  # image folders: center | squash | border


@dataclass
class ModelConfig:
    # a registered model name (`vitkit models` lists them), NAME.TAG (`vitkit models --pretrained`) or hf-hub:ORG/NAME
    name: str = "vit_micro_patch2_8"
    # fine-tune from weights (resampled to the data's image size): true = the name's Hub weights (its tag, else
    # its default tag), or the path of a checkpoint (a model or run directory, a weights file); false/null: none
    pretrained: bool | str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)  # model config fields, e.g. drop_path_rate


@dataclass
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 3e-3  # peak learning rate for the global batch (no implicit scaling)
    weight_decay: float = 0.05  # decoupled weight decay (none on norms, biases, tokens, position embeddings)
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW moment decay rates
    momentum: float = 0.9  # SGD momentum (optim.name=sgd)
    layer_decay: float | None = None  # layer-wise LR decay (BEiT/MAE fine-tuning), e.g. 0.75
    clip_grad: float | None = None  # max global gradient norm
    accum_steps: int = 1  # micro-batches per optimizer step
    label_smoothing: float = 0.1  # cross-entropy label smoothing (DeiT, timm: 0.1)
    # torch's fused AdamW/SGD kernel (CPU and CUDA): one pass per tensor instead of ~10 ops per parameter
    # (ViT-S: 34 -> 9 ms per step, docs/performance.md#fused-optimizer); false: the per-parameter loop
    fused: bool = True


@dataclass
class ScheduleConfig:
    epochs: int = 100  # passes over the training data
    warmup_epochs: float = 5.0  # linear warm-up from 0 to optim.lr (per step), then cosine decay
    min_lr: float = 0.0  # learning rate at the end of the cosine decay


@dataclass
class RunConfig:
    out: str | None = None  # run directory; default runs/<model>-<data>-<time>
    seed: int = 0  # seed of the initialisation, the batch order and the augmentation
    batch_size: int = 64  # global batch (all processes together, before accumulation)
    # autocast precision: fp32 | bf16 | fp16 (float16 with a gradient scaler, CPU and CUDA) | auto = bf16 where it is
    # native (CPUs with AMX or AVX512-BF16, CUDA GPUs with bf16), else fp32; emulated bf16 is ~10x slower than fp32
    # (vitkit/precision.py)
    precision: str = "fp32"
    grad_checkpointing: bool = False  # recompute block activations in the backward pass: less memory, more compute
    compile: bool = False  # torch.compile the training forward/backward (measure first: docs/performance.md)
    ema_decay: float | None = None  # exponential moving average of the weights, e.g. 0.999
    resume: bool = False  # continue the run in `out` from its last checkpoint, with the settings it was started with
    overwrite: bool = False  # let a new run replace the outputs in an existing `out` (otherwise refused)
    checkpoint_every: int | None = None  # also checkpoint every N batches inside an epoch (None: at epoch ends only)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads
    # on CPU, glibc keeps freed memory for the next step instead of faulting it in again (vitkit/allocator.py):
    # ViT-S training steps 1.2x, Swin-T 1.7x (docs/benchmarks.md#the-allocator); the gradients are allocated once
    # and zeroed in place (allocator.KeptGradients), so the heap stays near the live tensors; false leaves the C
    # library's defaults
    reuse_cpu_memory: bool = True
    progress: bool = True  # a progress bar per epoch
    tensorboard: str = "auto"  # auto (when `tensorboard` is installed) | true | false; rank 0, in the run dir
    log_every: int = 1  # per-step logs (TensorBoard, W&B, steps.csv) every N optimizer steps
    # Weights & Biases logging (rank 0): false | true (requires the `wandb` package) | auto (when it is installed
    # and has somewhere to log: WANDB_API_KEY, WANDB_MODE or `wandb login`)
    wandb: str = "false"
    wandb_project: str | None = None  # the W&B project; None: "vitkit"
    # channels-last memory format for convolutional models: auto (on CUDA for models with convolutions) | true | false
    channels_last: str = "auto"
    fsdp: bool = False  # shard parameters, gradients and optimizer state over the torchrun processes (FSDP2)


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
    yaml = _yaml()
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:  # syntax errors, and tags such as !!python/object that safe_load refuses to build
        raise ValueError(
            f"recipe {path} is not a plain YAML file: {' '.join(str(e).split())}. Recipes hold "
            f"sections of plain values (numbers, strings, lists); no !!python tags"
        ) from None
    if not isinstance(values, dict):
        raise ValueError(
            f"recipe {path} must be a YAML mapping of sections (data, aug, model, optim, sched, run, distill)"
        )
    try:
        return TrainConfig.from_dict(values)
    except ValueError as e:  # say which file the setting came from
        raise ValueError(f"recipe {path}: {e}") from None


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
    if annotation == "bool | str | None":  # true | false | a path (model.pretrained)
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):  # a quoted 'true' (YAML: a str)
            return value.strip().lower() == "true"
        if isinstance(value, str):
            return value or None
        raise ValueError(f"{key} expects true, false or the path of a checkpoint, got {value!r}")
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
    if dotted == "run.bf16":
        raise ValueError(
            "run.bf16 is replaced by run.precision: use --run.precision=bf16 (was true), fp32 (was false) or auto "
            "(bf16 where it is native), or fp16; in a recipe, write `precision:` under `run:`"
        )
    if len(parts) != 2 or parts[0] not in sections:
        raise ValueError(
            f"unknown setting {dotted!r}: settings are SECTION.FIELD with SECTION one of {sorted(sections)}"
        )
    section = getattr(cfg, parts[0])
    fields = {f.name: f for f in dataclasses.fields(section)}
    if parts[1] not in fields:
        raise ValueError(f"unknown setting {dotted!r}; {parts[0]} has: {', '.join(sorted(fields))}")
    value = _coerce(value, str(fields[parts[1]].type), dotted)
    check_setting(dotted, value)
    setattr(section, parts[1], value)


def apply_overrides(cfg: TrainConfig, overrides: list[str]) -> TrainConfig:
    """Apply `--section.field=value` (or `section.field=value`) strings."""
    yaml = _yaml()
    for item in overrides:
        text = item[2:] if item.startswith("--") else item
        if "=" not in text:
            raise ValueError(f"override {item!r} must look like --section.field=value (e.g. --optim.lr=1e-3)")
        key, raw = text.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as e:
            raise ValueError(f"override {item!r}: the value is not plain YAML ({' '.join(str(e).split())})") from None
        set_field(cfg, key, value)
    return cfg


def save_config(cfg: TrainConfig, path: Path) -> None:
    from ..hub import atomic_write

    text = _yaml().safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# ------------------------------------------------------------------------------------ ranges
def _number(check, text: str):
    def rule(v: Any) -> str | None:
        return None if isinstance(v, (int, float)) and math.isfinite(v) and check(v) else text

    return rule


def _choice(*options: str):
    def rule(v: Any) -> str | None:
        return None if v in options else "one of " + ", ".join(options)

    return rule


def _switch(v: Any) -> str | None:
    """auto | true | false, as YAML reads them (a bool) or as text in any case."""
    return None if str(v).strip().lower() in ("auto", "true", "false") else "auto, true or false"


def _device(v: Any) -> str | None:
    ok = v in ("auto", "cpu", "cuda") or (isinstance(v, str) and v.startswith("cuda:") and v[5:].isdigit())
    return None if ok else "auto, cpu, cuda or cuda:N"


def _betas(v: Any) -> str | None:
    ok = len(v) == 2 and all(math.isfinite(b) and 0 <= b < 1 for b in v)
    return None if ok else "two numbers in [0, 1), e.g. [0.9, 0.999]"


_AT_LEAST_1 = _number(lambda v: v >= 1, "at least 1")
_NON_NEGATIVE = _number(lambda v: v >= 0, "a finite number >= 0")
_POSITIVE = _number(lambda v: v > 0, "a finite number > 0")
_PROBABILITY = _number(lambda v: 0 <= v <= 1, "in [0, 1]")
_BELOW_1 = _number(lambda v: 0 <= v < 1, "in [0, 1)")

# SECTION.FIELD -> rule (None when the value is fine, else what it must be). Checked whenever a setting is set
# (defaults, recipe, --section.field=value), so a bad value stops `vitkit train` before any data is read.
RULES: dict[str, Any] = {
    "data.val_fraction": _BELOW_1,
    "data.train_fraction": _number(lambda v: 0 < v <= 1, "in (0, 1]"),
    "data.img_size": _AT_LEAST_1,
    "data.num_workers": _NON_NEGATIVE,
    "data.crop_pct": _number(lambda v: 0 < v <= 1, "in (0, 1]"),
    "data.interpolation": _choice("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos"),
    "data.crop_mode": _choice("center", "squash", "border"),
    "data.std": lambda v: None if all(isinstance(s, (int, float)) and s > 0 for s in v) else "numbers > 0",
    "aug.hflip": _PROBABILITY,
    "aug.mixup": _NON_NEGATIVE,
    "aug.cutmix": _NON_NEGATIVE,
    "aug.mix_prob": _PROBABILITY,
    "aug.switch_prob": _PROBABILITY,
    "aug.random_erasing": _PROBABILITY,
    "optim.name": _choice("adamw", "sgd"),
    "optim.lr": _POSITIVE,
    "optim.weight_decay": _NON_NEGATIVE,
    "optim.betas": _betas,
    "optim.momentum": _BELOW_1,
    "optim.layer_decay": _number(lambda v: 0 < v <= 1, "in (0, 1]"),
    "optim.clip_grad": _POSITIVE,
    "optim.accum_steps": _AT_LEAST_1,
    "optim.label_smoothing": _BELOW_1,
    "sched.epochs": _AT_LEAST_1,
    "sched.warmup_epochs": _NON_NEGATIVE,
    "sched.min_lr": _NON_NEGATIVE,
    "run.batch_size": _AT_LEAST_1,
    "run.ema_decay": _BELOW_1,
    "run.device": _device,
    "run.precision": _choice("auto", "bf16", "fp16", "fp32"),
    "run.tensorboard": _switch,
    "run.wandb": _switch,
    "run.channels_last": _switch,
    "run.log_every": _AT_LEAST_1,
    "run.threads": _AT_LEAST_1,
    "run.checkpoint_every": _AT_LEAST_1,
    "distill.type": _choice("none", "soft", "hard"),
    "distill.alpha": _PROBABILITY,
    "distill.tau": _POSITIVE,
    "distill.kl_reduction": _choice("batchmean", "deit"),
}


def check_setting(dotted: str, value: Any) -> None:
    """Raise ValueError if `value` is out of range for the setting `dotted` (RULES); None passes (the field's
    type already said whether None is allowed)."""
    rule = RULES.get(dotted)
    problem = None if rule is None or value is None else rule(value)
    if problem:
        raise ValueError(f"--{dotted}={value!r} is out of range: it must be {problem}")


def check_config(cfg: Any) -> None:
    """Check every setting of a TrainConfig / PretrainConfig against RULES, and that its model (name and
    overrides) can be built, before any data is read. `vitkit train` and `vitkit pretrain` call it."""
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        for f in dataclasses.fields(values):
            check_setting(f"{section.name}.{f.name}", getattr(values, f.name))
    data = getattr(cfg, "data", None)
    if data is not None:
        from ..data.datasets import DATASETS

        kind = "hf" if data.name.lower().startswith("hf:") else data.name  # hf:ORG/NAME: the Hub id is the source's
        if kind.lower().replace("-", "_") not in DATASETS:
            raise ValueError(
                f"--data.name={data.name!r} is not a dataset vitkit reads; known: {', '.join(DATASETS)} "
                f"(and hf:ORG/NAME)"
            )
    teacher = getattr(getattr(cfg, "distill", None), "teacher", None)
    if teacher is not None and not Path(teacher).expanduser().exists():
        raise FileNotFoundError(
            f"--distill.teacher={teacher} does not exist: give a model directory, a run directory "
            f"(vitkit train --out), or a weights file with --distill.teacher_model=NAME"
        )
    model = getattr(cfg, "model", None)
    if model is not None:
        import difflib

        from ..models import FAMILIES
        from ..validate import check_model_config

        family, values = model_family_values(model.name, model.pretrained)
        cls = FAMILIES[family]
        known = sorted(f.name for f in dataclasses.fields(cls.config_class))
        for key in model.overrides:
            if key not in known:
                close = difflib.get_close_matches(str(key), known, n=1)
                raise ValueError(
                    f"--model.overrides.{key}: {model.name} ({cls.config_class.__name__}) has no field "
                    f"{key!r}{f' (did you mean {close[0]!r}?)' if close else ''}. Its fields: "
                    f"{', '.join(known)}"
                )
        from_data = {
            "num_classes": "the run sets the classifier's size (the dataset's classes; none when pre-training)",
            "in_chans": "the number of channels comes from the dataset",
            "img_size": "the image size comes from the dataset (image folders: --data.img_size)",
        }
        for key, why in from_data.items():
            if key in model.overrides:
                raise ValueError(f"--model.overrides.{key}: {why}; leave it out")
        check_model_config(
            {**values, **model.overrides},
            config_class=cls.config_class,
            source=f"--model.name={model.name} with --model.overrides",
        )


def model_family_values(name: str, pretrained: bool | str | None = None) -> tuple[str, dict[str, Any]]:
    """(family, config values) of `--model.name` -- a registered name, NAME.TAG, hf-hub:ORG/NAME (its
    config.json, read through the Hub cache) or local-dir:PATH, as `create_model` takes them -- with the weights `--model.pretrained` asks for checked to
    exist: a path on disk, or (true) Hub weights the name's tag points to."""
    from ..registry import get_model_spec, resolve_pretrained_cfg, split_model_name_tag

    if isinstance(pretrained, str) and not Path(pretrained).expanduser().exists():
        raise FileNotFoundError(
            f"--model.pretrained={pretrained} does not exist: give a model or run directory, a "
            f"weights file, or true for the Hub weights of --model.name's tag"
        )
    source, sep, repo = name.partition(":")
    if sep:
        from ..hub import describe_directory, download_model, split_revision

        source = source.lower().replace("_", "-")
        if source == "local-dir":
            directory = Path(repo).expanduser()
            if not directory.is_dir():
                raise FileNotFoundError(f"--model.name={name}: {directory} is not a model directory")
        elif source == "hf-hub":
            repo_id, revision = split_revision(repo)
            directory = download_model(repo_id, revision=revision, weights=False)
        else:
            raise ValueError(
                f"--model.name={name!r}: unknown source {source!r}; a Hub model is hf-hub:ORG/NAME, a "
                f"local one local-dir:PATH"
            )
        _, family, values, _, _ = describe_directory(directory, weights=False)
        return family, values
    base, tag = split_model_name_tag(name)
    spec = get_model_spec(base)
    cfg = resolve_pretrained_cfg(base, tag or None)  # an unknown tag is an error naming the known ones
    if pretrained is True and not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise ValueError(
            f"--model.pretrained=true: vitkit knows no weights for {name!r}; `vitkit models --pretrained "
            f"'{base}*'` lists the NAME.TAG that have them, or give the path of a checkpoint"
        )
    return spec.family, dict(spec.config)


# ------------------------------------------------------------------------------------ help
def _field_comments(cls: type) -> dict[str, str]:
    """Each field's comment in `cls`'s source: the end-of-line comment, or the comment lines just above it."""
    import inspect
    import re

    try:
        lines = inspect.getsource(cls).splitlines()
    except (OSError, TypeError):
        return {}
    comments: dict[str, str] = {}
    above: list[str] = []
    for line in lines[1:]:
        stripped = line.strip()
        if stripped.startswith("#"):
            above.append(stripped.lstrip("#").strip())
            continue
        m = re.match(r"\s+(\w+)\s*:[^=]*=.*?(?:\s#\s*(.*))?$", line)
        if m:
            comments[m.group(1)] = " ".join([*above, m.group(2) or ""]).strip()
        above = []
    return comments


def _yaml_text(value: Any) -> str:
    """A default as one would type it on the command line (YAML)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml_text(v) for v in value) + "]"
    return str(value)


# descriptions of settings whose dataclass (outside this file) has no comment for them
_HELP = {"aug.random_resized_crop": "random-resized crop of the training images (area aug.scale, aspect aug.ratio)"}


def settings_help(cfg: Any) -> str:
    """Every setting of a config (TrainConfig, PretrainConfig): `--section.field`, its type, its default and the
    comment beside it in the source, for `vitkit train --help` / `vitkit pretrain --help`."""
    out = ["settings (--SECTION.FIELD=VALUE, the value read as YAML; a recipe sets the same names):"]
    for section in dataclasses.fields(cfg):
        values = getattr(cfg, section.name)
        comments = _field_comments(type(values))
        out.append(f"  {section.name}:")
        for f in dataclasses.fields(values):
            kind = str(f.type).replace("tuple[float, float]", "[float, float]").replace("dict[str, Any]", "mapping")
            default = _yaml_text(getattr(values, f.name))
            text = comments.get(f.name) or _HELP.get(f"{section.name}.{f.name}", "")
            out.append(f"    --{section.name}.{f.name} ({kind}, default {default}): {text}")
    return "\n".join(out)

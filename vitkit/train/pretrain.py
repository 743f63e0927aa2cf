"""Self-supervised pre-training: every method of `vitkit.methods` (MAE, masked patch prediction, DINO,
MSN) as a `PretrainTask` (vitkit/train/tasks.py) of the runner that `vitkit train` uses
(vitkit/train/runner.py), one process or many (`torchrun`), resumable.

    vitkit pretrain mae --recipe recipes/pretrain_mae_fashion_mnist.yaml --sched.epochs=10
    vitkit pretrain mpp --data.name=fashion_mnist --model.name=vit_micro_patch4_28

The images come from `load_dataset` (labels are never used), are normalised with the dataset's
mean and std and handed to the method, which makes its own masks or views on the tensor
(vitkit/methods/base.py). The runner brings the rest: the deterministic per-process batches,
warm-up + cosine per optimizer step, AdamW without weight decay on norms, biases, tokens and
position embeddings, gradient accumulation (`--optim.accum_steps`), clipping, the precision
(`--run.precision`), an EMA of the trained weights (`--run.ema_decay`: the saved backbone is the
EMA's), `torch.compile` (`--run.compile`), per-step logs (`steps.csv`, TensorBoard, W&B), DDP with
gloo/NCCL, an atomic checkpoint every epoch (and every `--run.checkpoint_every` batches) with the
whole method, optimizer and RNG state, `--resume` to the same final weights, and a NaN stop.
Settings that mean nothing without labels (`optim.label_smoothing`, `optim.layer_decay`) are refused.

The run directory holds `config.yaml`, `metrics.jsonl` (per epoch: every scalar the method logs,
averaged, including the collapse monitor `feature_std`), `steps.csv`, `metrics.json`, `curves.png`,
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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..data.transforms import apply_data_config, data_args, training_data_config
from ..hub import save_pretrained
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
from .engine import load_splits, train_subset
from .runner import Normalise, Runner, TrainingDiverged  # noqa: F401  (TrainingDiverged: importable from here)
from .tasks import PretrainTask

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
    check_pretrain_settings(cfg)
    return cfg


# ------------------------------------------------------------------------------------ outputs
def save_backbone(method, directory: Path) -> Path:
    """The method's encoder (`encoder_state_dict()`: e.g. DINO's teacher) as a vitkit model directory."""
    backbone = copy.deepcopy(method.backbone).cpu()
    backbone.load_state_dict(method.encoder_state_dict())
    backbone.requires_grad_(True)
    return save_pretrained(backbone, directory)


# ------------------------------------------------------------------------------------ the loop
def check_pretrain_settings(cfg: PretrainConfig) -> None:
    """Refuse the settings that mean nothing for pre-training (every other one is honoured)."""
    if cfg.optim.label_smoothing:
        raise ValueError(
            f"--optim.label_smoothing={cfg.optim.label_smoothing}: pre-training has no labels to smooth; leave it "
            f"out (0)"
        )
    if cfg.optim.layer_decay is not None:
        raise ValueError(
            f"--optim.layer_decay={cfg.optim.layer_decay} is for fine-tuning a pre-trained backbone (vitkit train "
            f"--finetune); pre-training trains every layer at --optim.lr: leave it out"
        )


def pretrain(cfg: PretrainConfig, data: Any = None) -> dict[str, Any]:
    """Pre-train as configured; returns the final metrics (also written to RUN_DIR/metrics.json).

    `data`: the images instead of `cfg.data.name`'s, as `vitkit.train.train` takes them (`load_splits`; the
    labels are not used)."""
    check_pretrain_settings(cfg)
    default_dir = (
        Path("runs") / f"pretrain-{cfg.method.name}-{cfg.model.name}-{cfg.data.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    )
    with Runner(cfg, "pretrain", default_dir) as runner:
        from ..methods import create_method

        splits = load_splits(cfg, data, labels=False)
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
        method.to(runner.device_str)
        norm = Normalise(data_config["mean"], data_config["std"]).to(runner.device_str)
        return runner.fit(PretrainTask(method, splits, norm, cfg, runner), splits.train)


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

"""Saving and loading: `save_pretrained`, `from_pretrained`, and `create_model(pretrained=PATH)`.

Formats read (detected from the path, never from a flag):
    - a vitkit directory: `config.json` (with "architecture") + `model.safetensors`;
    - a Hugging Face model directory: `config.json` (with "model_type") + `model.safetensors`
      or `pytorch_model.bin`, for the model types of `convert.hf.SUPPORTED_MODEL_TYPES`: "vit" and
      "deit" (convert/hf.py), "swin" (hf_swin.py), "cvt" (hf_cvt.py), "vit_mae" (hf_mae.py:
      `ViTMAEForPreTraining` -> the MAE model, `ViTMAEModel` -> a headless ViT), "vivit" (hf_vivit.py)
      and "timesformer" (hf_timesformer.py);
    - a state-dict file: `.safetensors`, or a PyTorch file (`.pth`, `.pt`, `.bin`, `.ckpt`) with
      timm-style keys, possibly inside a wrapper dict (`model`, `state_dict`, `teacher`, ...) and
      with a `module.` / `backbone.` prefix, as the official DeiT, DINO and MAE releases ship.

Checkpoints never execute code: safetensors, or `torch.load(weights_only=True)`, which refuses any
pickled object other than tensors and plain containers. Every mismatch between a checkpoint and a
model is reported in full; nothing is silently skipped.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("vitkit")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
_TORCH_SUFFIXES = {".pth", ".pt", ".bin", ".ckpt", ".tar"}
# Wrapper keys of training checkpoints, in the order we look for the weights: DINO keeps both
# `student` and `teacher` (the teacher is the one evaluated in the paper).
_WRAPPER_KEYS = ("state_dict", "model", "teacher", "model_ema", "module", "student", "net")


class CheckpointError(ValueError):
    """A checkpoint could not be read, or does not fit the model it is loaded into."""


# ------------------------------------------------------------------------------------ saving
def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (/proc/self/status)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write) -> None:
    """Write through a temporary file in the same directory, then rename: never a half file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: give the file the mode open() would
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_pretrained(model, directory: str | Path) -> Path:
    from safetensors.torch import save_file

    from . import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "vitkit_version": __version__,
        "architecture": model.family,
        "model_name": model.model_name,
        "config": model.config_dict(),
        "pretrained_cfg": model.pretrained_cfg,
    }
    # safetensors refuses shared storage; clone so tied or expanded views save as plain tensors.
    state = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    _atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))

    def write_config(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(config, indent=2) + "\n")

    _atomic_write(directory / CONFIG_NAME, write_config)
    return directory


# ------------------------------------------------------------------------------------ reading
def _read_torch_file(path: Path) -> Any:
    # torch.load(weights_only=True), and for pickle protocols its unpickler lacks (0, 1, 4, 5) the standard
    # unpickler restricted to the same globals; a CheckpointError naming the problem otherwise
    from .torch_load import load_torch_file

    return load_torch_file(path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(
            f"could not read {path} as safetensors: the file is truncated, corrupt, or not a safetensors "
            f"file ({type(e).__name__}: {e})"
        ) from None


def _sniff(path: Path) -> str:
    """'safetensors' or 'torch', from the suffix, else from the first bytes."""
    if path.suffix == ".safetensors":
        return "safetensors"
    if path.suffix in _TORCH_SUFFIXES:
        return "torch"
    with open(path, "rb") as f:
        head = f.read(9)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80":  # torch zip archive / legacy pickle
        return "torch"
    if len(head) == 9 and head[8:9] == b"{":  # safetensors: u64 header length, then JSON
        return "safetensors"
    raise CheckpointError(
        f"cannot tell the format of {path}: expected a .safetensors file, a PyTorch .pth/.pt/.bin file, "
        f"a vitkit directory or a Hugging Face model directory"
    )


def read_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a file, unwrapping training checkpoints and common key prefixes."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    obj = _read_safetensors(path) if _sniff(path) == "safetensors" else _read_torch_file(path)
    return unwrap_state_dict(obj, source=str(path))


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(isinstance(v, torch.Tensor) for v in obj.values())


def unwrap_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Find the weights in a training checkpoint and strip DDP/compile/DINO prefixes."""
    if not _is_state_dict(obj):
        if isinstance(obj, Mapping):
            for key in _WRAPPER_KEYS:
                if _is_state_dict(obj.get(key)):
                    logger.info("%s: using the weights under %r", source, key)
                    obj = obj[key]
                    break
            else:
                raise CheckpointError(
                    f"{source} holds no state dict: its top-level keys are {sorted(map(str, obj))[:12]}; "
                    f"expected tensors, or weights under one of {list(_WRAPPER_KEYS)}"
                )
        else:
            raise CheckpointError(f"{source} holds a {type(obj).__name__}, not a state dict of tensors")
    state = dict(obj)
    for prefix in ("module.", "_orig_mod."):  # DistributedDataParallel, torch.compile
        if all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        # DINO/MSN wrap the ViT as `backbone` next to their projection head (`head.mlp...`).
        dropped = sorted(k for k in state if not k.startswith("backbone."))
        if dropped:
            logger.warning("%s: keeping the backbone, ignoring %d other key(s) such as %s (the method's "
                           "projection head)", source, len(dropped), dropped[0])
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"could not read {path}: {e}") from None


def vitkit_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """vitkit's part of a config.json: the whole file, or its "vitkit" entry in a folder written for the Hub
    that timm reads too (timm's save_for_hf keys at the top level; vitkit/push.py)."""
    sub = cfg.get("vitkit")
    return sub if isinstance(sub, dict) and "architecture" in sub and "config" in sub else cfg


def directory_kind(directory: Path) -> str:
    """'vitkit' or 'hf' for a model directory; an error naming what is missing otherwise."""
    cfg_path = directory / CONFIG_NAME
    if not cfg_path.is_file():
        raise CheckpointError(
            f"{directory} has no {CONFIG_NAME}: expected a vitkit directory (written by save_pretrained) or a "
            f"Hugging Face model directory"
        )
    cfg = vitkit_config(_read_json(cfg_path))
    if "architecture" in cfg and "config" in cfg:
        return "vitkit"
    if "model_type" in cfg:
        return "hf"
    raise CheckpointError(
        f"{cfg_path} is neither a vitkit config (keys 'architecture', 'config') nor a Hugging Face config "
        f"(key 'model_type')"
    )


def _hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (directory / name).is_file():
            return read_state_dict_file(directory / name)
    raise CheckpointError(f"{directory} has a config.json but no model.safetensors or pytorch_model.bin")


def _hf_weight_keys(directory: Path) -> list[str]:
    """The key names of a Hugging Face directory's weights (for safetensors, from the header alone)."""
    path = directory / "model.safetensors"
    if path.is_file():
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(f"could not read {path} as safetensors: the file is truncated, corrupt, or "
                                  f"not a safetensors file ({type(e).__name__}: {e})") from None
    return list(_hf_weights(directory))


def read_checkpoint(path: str | Path, model=None) -> dict[str, torch.Tensor]:
    """A vitkit-keyed state dict from any supported path (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        kind = directory_kind(path)
        if kind == "vitkit":
            if not (path / WEIGHTS_NAME).is_file():
                raise CheckpointError(f"{path} has a vitkit config.json but no {WEIGHTS_NAME}")
            return read_state_dict_file(path / WEIGHTS_NAME)
        from .convert.hf import convert_hf_state_dict

        return convert_hf_state_dict(_hf_weights(path), _read_json(path / CONFIG_NAME), source=str(path))
    state = read_state_dict_file(path)
    from .convert.hf import convert_hf_state_dict, looks_like_hf

    if looks_like_hf(state):
        return convert_hf_state_dict(state, None, source=str(path))
    return state


# ------------------------------------------------------------------------------------ fitting
def load_pretrained(model, path: str | Path, strict: bool = True) -> None:
    """Load weights from `path` into `model`, adapting what can be adapted and reporting the rest."""
    state = read_checkpoint(path, model)
    adapt = getattr(model, "adapt_checkpoint", None)
    if adapt is None:
        from .convert.timm import adapt_checkpoint

        state = adapt_checkpoint(model, state, source=str(path))
    else:
        state = adapt(state, source=str(path))
    load_state_dict_checked(model, state, source=str(path), strict=strict)


def load_state_dict_checked(model, state: Mapping[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """`load_state_dict` that lists every missing, unexpected and mis-shaped key and guesses why."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected if k in state and state[k].shape != expected[k].shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        raise CheckpointError(_mismatch_message(model, source, missing, unexpected, mismatched))
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)


def _listing(items: list[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def _mismatch_message(model, source, missing, unexpected, mismatched) -> str:
    name = model.model_name or type(model).__name__
    lines = [f"checkpoint {source} does not fit model {name}:"]
    if missing:
        lines.append(f"  {len(missing)} missing key(s): {_listing(missing)}")
    if unexpected:
        lines.append(f"  {len(unexpected)} unexpected key(s): {_listing(unexpected)}")
    if mismatched:
        lines.append(f"  {len(mismatched)} key(s) of the wrong shape (checkpoint vs model): "
                     + _listing([f"{k} {a} vs {b}" for k, a, b in mismatched]))
    n_model = len(model.state_dict())
    if missing and unexpected and len(missing) > n_model // 2:
        lines.append("Likely cause: the checkpoint is for another architecture (or in a format vitkit does not "
                     "recognise); check the model name and the file.")
    elif mismatched:
        lines.append("Likely cause: the checkpoint is for another size of this architecture (embedding width, "
                     "depth, patch size or number of classes); check the model name.")
    elif missing or unexpected:
        lines.append("Likely cause: a different variant (class token, distillation token, pooling, LayerScale, "
                     "pre-logits head) or another depth; check the model name and overrides.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ from_pretrained
def from_pretrained(directory: str | Path, **overrides: Any):
    """Rebuild a model from a vitkit directory or a Hugging Face model directory.

    Hugging Face model types read (`convert.hf.SUPPORTED_MODEL_TYPES`): ViT ("vit"), DeiT ("deit"),
    Swin ("swin"), CvT ("cvt"), ViTMAE ("vit_mae": `ViTMAEForPreTraining` becomes vitkit's MAE model,
    `ViTMAEModel` a ViT without a head), ViViT ("vivit") and TimeSformer ("timesformer").

    `overrides` change config fields before the weights are loaded (for example `num_classes=10`,
    which re-initialises the head, or `img_size=384`, which resamples the position embeddings)."""
    from .models._base import FAMILIES, config_from_dict

    directory = Path(directory)
    if not directory.exists():
        raise CheckpointError(f"{directory} does not exist")
    if not directory.is_dir():
        raise CheckpointError(
            f"from_pretrained takes a model directory, but {directory} is a file: to load a state-dict file, "
            f"name the architecture: vitkit.create_model('vit_base_patch16_224', pretrained='{directory}')"
        )
    kind = directory_kind(directory)
    if kind == "vitkit":
        meta = vitkit_config(_read_json(directory / CONFIG_NAME))
        family, values = meta["architecture"], dict(meta["config"])
        model_name, pretrained_cfg = meta.get("model_name"), meta.get("pretrained_cfg") or {}
    else:
        from .convert.hf import config_from_hf

        family, values, pretrained_cfg = config_from_hf(
            _read_json(directory / CONFIG_NAME), source=str(directory), state_keys=_hf_weight_keys(directory)
        )
        model_name = None
    if family not in FAMILIES:
        raise CheckpointError(f"{directory} is a {family!r} model, which this vitkit does not know "
                              f"(known: {sorted(FAMILIES)})")
    cls = FAMILIES[family]
    values.update(overrides)
    from .validate import check_hf_classifier, check_model_config

    check_model_config(values, source=str(directory / CONFIG_NAME), config_class=cls.config_class)  # before building
    config = config_from_dict(cls.config_class, values)
    if kind == "hf" and "num_classes" not in overrides:  # a head that disagrees with config.json is not dropped
        check_hf_classifier(directory, config.num_classes, source=str(directory / CONFIG_NAME))
    model = cls(config)
    model.model_name = model_name
    model.pretrained_cfg = dict(pretrained_cfg)
    load_pretrained(model, directory)
    return model.eval()

"""Saving and loading: `save_pretrained`, `from_pretrained`, `create_model(pretrained=...)`, and the
Hugging Face Hub (through huggingface_hub's cache: `from_pretrained("org/name")`, `hub_download`,
`download_model`, `download_weights`; docs/hub.md).

Formats read (detected from the path, never from a flag):
    - a vitkit directory: `config.json` (with "architecture") + `model.safetensors`;
    - a Hugging Face model directory: `config.json` (with "model_type") + `model.safetensors`
      or `pytorch_model.bin`, either one possibly sharded (`*.index.json` + its shards), for the model types of `convert.hf.SUPPORTED_MODEL_TYPES`: "vit" and
      "deit" and "vit_msn" (convert/hf.py), "swin" (hf_swin.py), "cvt" (hf_cvt.py), "vit_mae" (hf_mae.py:
      `ViTMAEForPreTraining` -> the MAE model, `ViTMAEModel` -> a headless ViT), "vivit" (hf_vivit.py)
      and "timesformer" (hf_timesformer.py);
    - a timm model directory (timm's `save_for_hf` / `push_to_hf_hub`): `config.json` whose
      "architecture" is a timm model name, with "model_args" / "num_classes" / "pretrained_cfg"
      (convert/timm.py `config_from_timm`) + `model.safetensors` or `pytorch_model.bin` in timm's keys;
    - a state-dict file: `.safetensors`, a sharded checkpoint's `*.index.json`, or a PyTorch file (`.pth`, `.pt`, `.bin`, `.ckpt`) with
      timm-style keys, possibly inside a wrapper dict (`model`, `state_dict`, `teacher`, ...) and
      with a `module.` / `backbone.` prefix, as the official DeiT, DINO and MAE releases ship.

Checkpoints never execute code: safetensors, or `torch.load(weights_only=True)`, which refuses any
pickled object other than tensors and plain containers (pickle protocols its unpickler lacks, 0, 1, 4
and 5, go through the standard unpickler restricted to the same objects: vitkit/torch_load.py). Every
mismatch between a checkpoint and a model is reported in full; nothing is silently skipped.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("vitkit")

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS = WEIGHTS_NAME
TORCH_WEIGHTS = "pytorch_model.bin"
SAFE_INDEX = "model.safetensors.index.json"  # a sharded checkpoint (transformers' max_shard_size)
TORCH_INDEX = "pytorch_model.bin.index.json"
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


@contextmanager
def atomic_path(path: Path) -> Iterator[str]:
    """A temporary path in `path`'s directory, renamed onto `path` only if the block succeeds: never a half
    file. The file gets the mode `open()` would give it; a full disk is an OSError naming `path`."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # name the file asked for, not the temporary one
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 (and a writer may re-create it): open()'s mode
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        code = re.search(r"\(os error (\d+)\)", str(e)) if not isinstance(e, OSError) else None
        if code:  # safetensors' SafetensorError on a full disk: an OSError naming the file
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1))), str(path)) from e
        raise


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp)` on a temporary path, then rename it onto `path` (see `atomic_path`)."""
    with atomic_path(path) as tmp:
        write(tmp)


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
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))

    def write_config(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(config, indent=2) + "\n")

    atomic_write(directory / CONFIG_NAME, write_config)
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
    if path.name.endswith(".index.json"):  # a sharded checkpoint: the index names its shards
        return unwrap_state_dict(read_sharded(path), source=str(path))
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
            state = {k[len(prefix) :]: v for k, v in state.items()}
    if any(k.startswith("backbone.") for k in state):
        # DINO/MSN wrap the ViT as `backbone` next to their projection head (`head.mlp...`).
        dropped = sorted(k for k in state if not k.startswith("backbone."))
        if dropped:
            logger.warning(
                "%s: keeping the backbone, ignoring %d other key(s) such as %s (the method's projection head)",
                source,
                len(dropped),
                dropped[0],
            )
        state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    return state


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file as a dict; an unreadable or malformed file is a CheckpointError naming it."""
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
    cfg = vitkit_config(read_json(cfg_path))
    if "architecture" in cfg and "config" in cfg:
        return "vitkit"
    if "model_type" in cfg:
        return "hf"
    if isinstance(cfg.get("architecture"), str) and "vitkit_version" not in cfg:
        # timm's save_for_hf / push_to_hf_hub: "architecture" is a timm model name, beside "num_classes",
        # "pretrained_cfg" and "model_args" (or, in timm's older single-dict layout, the pretrained cfg itself)
        return "timm"
    raise CheckpointError(
        f"{cfg_path} is neither a vitkit config (keys 'architecture', 'config'), a Hugging Face config "
        f"(key 'model_type') nor a timm config (key 'architecture' naming a timm model)"
    )


def weights_file(directory: Path) -> Path:
    """A model directory's weights, in the order transformers prefers them: model.safetensors, its sharded
    index (model.safetensors.index.json), pytorch_model.bin, its sharded index."""
    for name in (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX):
        if (directory / name).is_file():
            return directory / name
    raise CheckpointError(
        f"{directory} has a config.json but no weights: expected {SAFE_WEIGHTS} or {TORCH_WEIGHTS} (or a sharded "
        f"{SAFE_INDEX} / {TORCH_INDEX} with its shards)"
    )


def read_shard_index(path: Path) -> dict[str, str]:
    """The `weight_map` of a sharded checkpoint's index (`*.index.json`, as transformers' `save_pretrained(
    max_shard_size=...)` writes it): parameter name -> shard file name, every shard a plain file beside the
    index."""
    index = read_json(path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path} is not a sharded-checkpoint index: it has no 'weight_map' of names to files")
    for key, shard in weight_map.items():
        if not isinstance(shard, str) or Path(shard).name != shard or shard in ("", ".", ".."):
            raise CheckpointError(f"{path}: the shard of {key!r} is {shard!r}, not the name of a file beside the index")
    missing = sorted({s for s in weight_map.values() if not (path.parent / s).is_file()})
    if missing:
        raise CheckpointError(
            f"{path} names shard(s) that are not there: {_listing(missing)}; download the whole checkpoint again"
        )
    return weight_map


def read_sharded(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a sharded checkpoint, read shard by shard; each shard must hold the names the index
    gives it (and may hold nothing else)."""
    weight_map = read_shard_index(path)
    by_shard: dict[str, set[str]] = {}
    for key, shard in weight_map.items():
        by_shard.setdefault(shard, set()).add(key)
    state: dict[str, torch.Tensor] = {}
    for shard, keys in sorted(by_shard.items()):
        file = path.parent / shard
        part = _read_safetensors(file) if _sniff(file) == "safetensors" else _read_torch_file(file)
        if not _is_state_dict(part):
            raise CheckpointError(f"{file} (a shard named by {path.name}) is not a state dict of tensors")
        if set(part) != keys:
            absent, extra = sorted(keys - set(part)), sorted(set(part) - keys)
            raise CheckpointError(
                f"{file} does not hold what {path.name} says: "
                + "; ".join(
                    x
                    for x in (
                        f"missing {_listing(absent)}" if absent else "",
                        f"not in the index {_listing(extra)}" if extra else "",
                    )
                    if x
                )
            )
        state.update(part)
    return state


def _hf_weights(directory: Path) -> dict[str, torch.Tensor]:
    return read_state_dict_file(weights_file(directory))


def _hf_weight_keys(directory: Path) -> list[str]:
    """The key names of a Hugging Face directory's weights (for safetensors and shard indexes, from the
    headers alone)."""
    path = weights_file(directory)
    if path.name.endswith(".index.json"):
        return list(read_shard_index(path))
    if path.name == SAFE_WEIGHTS:
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return list(f.keys())
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"could not read {path} as safetensors: the file is truncated, corrupt, or "
                f"not a safetensors file ({type(e).__name__}: {e})"
            ) from None
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
        if kind == "timm":  # timm's own key names, which vitkit keeps
            return _hf_weights(path)
        from .convert.hf import convert_hf_state_dict

        return convert_hf_state_dict(_hf_weights(path), read_json(path / CONFIG_NAME), source=str(path))
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
    from .convert.timm import adapt_input_convs

    adapt_input_convs(model, state, source=str(path))  # e.g. RGB weights into an in_chans=1 model, as timm
    load_state_dict_checked(model, state, source=str(path), strict=strict)


def load_state_dict_checked(model, state: Mapping[str, torch.Tensor], source: str, strict: bool = True) -> None:
    """`load_state_dict` that lists every missing, unexpected and mis-shaped key and guesses why."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        (k, tuple(state[k].shape), tuple(expected[k].shape))
        for k in expected
        if k in state and state[k].shape != expected[k].shape
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
        lines.append(
            f"  {len(mismatched)} key(s) of the wrong shape (checkpoint vs model): "
            + _listing([f"{k} {a} vs {b}" for k, a, b in mismatched])
        )
    n_model = len(model.state_dict())
    if missing and unexpected and len(missing) > n_model // 2:
        lines.append(
            "Likely cause: the checkpoint is for another architecture (or in a format vitkit does not "
            "recognise); check the model name and the file."
        )
    elif mismatched:
        lines.append(
            "Likely cause: the checkpoint is for another size of this architecture (embedding width, "
            "depth, patch size or number of classes); check the model name."
        )
    elif missing or unexpected:
        lines.append(
            "Likely cause: a different variant (class token, distillation token, pooling, LayerScale, "
            "pre-logits head) or another depth; check the model name and overrides."
        )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ from_pretrained
def describe_directory(
    directory: Path, weights: bool = True
) -> tuple[str, str, dict[str, Any], str | None, dict[str, Any]]:
    """(kind, family, config values, model name, pretrained cfg) of a vitkit, Hugging Face or timm model
    directory. `weights=False` reads config.json alone (a Hugging Face model's pooler and classifier
    are then decided by its `architectures` entry instead of its weights' key names)."""
    kind = directory_kind(directory)
    if kind == "vitkit":
        meta = vitkit_config(read_json(directory / CONFIG_NAME))
        family, values = meta["architecture"], dict(meta["config"])
        model_name, pretrained_cfg = meta.get("model_name"), dict(meta.get("pretrained_cfg") or {})
    elif kind == "timm":
        from .convert.timm import config_from_timm

        model_name, family, values, pretrained_cfg = config_from_timm(
            read_json(directory / CONFIG_NAME), source=str(directory / CONFIG_NAME)
        )
    else:
        from .convert.hf import config_from_hf

        family, values, pretrained_cfg = config_from_hf(
            read_json(directory / CONFIG_NAME),
            source=str(directory),
            state_keys=_hf_weight_keys(directory) if weights else None,
        )
        model_name = None
    return kind, family, values, model_name, pretrained_cfg


def from_pretrained(
    name_or_path: str | Path, *, revision: str | None = None, cache_dir: str | Path | None = None, **overrides: Any
):
    """Rebuild a model from a local model directory or a Hugging Face Hub repo.

    `name_or_path`: a local directory -- vitkit's (`save_pretrained`, `push_to_hub`), a Hugging Face
    `transformers` model's (`save_pretrained`) or a timm model's (`save_for_hf`) -- or, when no such path
    exists, a Hub repo id 'ORG/NAME' (also written 'hf-hub:ORG/NAME[@REVISION]'), downloaded with
    huggingface_hub into its cache (`cache_dir`, default HF_HUB_CACHE; HF_HUB_OFFLINE=1 reads the cache
    only) at `revision` (a branch, tag or commit; default 'main'). An existing local path always wins.

    Hugging Face model types read (`convert.hf.SUPPORTED_MODEL_TYPES`): ViT ("vit"), DeiT ("deit"),
    ViTMSN ("vit_msn"), Swin ("swin"), CvT ("cvt"), ViTMAE ("vit_mae": `ViTMAEForPreTraining` becomes
    vitkit's MAE model, `ViTMAEModel` a ViT without a head), ViViT ("vivit") and TimeSformer ("timesformer").

    `overrides` change config fields before the weights are loaded (for example `num_classes=10`,
    which re-initialises the head, or `img_size=384`, which resamples the position embeddings); an
    unknown field raises TypeError."""
    from .models import FAMILIES, config_from_dict

    directory, hub_id = _resolve_location(name_or_path, revision, cache_dir)
    if not directory.is_dir():
        raise CheckpointError(
            f"from_pretrained takes a model directory, but {directory} is a file: to load a state-dict file, "
            f"name the architecture: vitkit.create_model('vit_base_patch16_224', pretrained='{directory}')"
        )
    kind, family, values, model_name, pretrained_cfg = describe_directory(directory)
    if family not in FAMILIES:
        raise CheckpointError(
            f"{directory} is a {family!r} model, which this vitkit does not know (known: {sorted(FAMILIES)})"
        )
    cls = FAMILIES[family]
    from .registry import _check_kwargs

    _check_kwargs(family, overrides, f"from_pretrained({str(name_or_path)!r})")
    values.update(overrides)
    from .validate import check_hf_classifier, check_model_config

    # sizes and divisibility, before the config's own checks divide by them and before anything is allocated
    check_model_config(values, source=str(directory / CONFIG_NAME), config_class=cls.config_class)
    config = config_from_dict(cls.config_class, values)
    # a head that disagrees with config.json is not dropped (MAE pre-training models have no head)
    if kind == "hf" and "num_classes" not in overrides and hasattr(config, "num_classes"):
        check_hf_classifier(directory, config.num_classes, source=str(directory / CONFIG_NAME))
    model = cls(config)
    model.model_name = model_name
    model.pretrained_cfg = dict(pretrained_cfg)
    if hub_id:
        model.pretrained_cfg["hf_hub_id"] = hub_id
    from .registry import complete_pretrained_cfg

    complete_pretrained_cfg(model)
    load_pretrained(model, directory)
    return model.eval()


def _resolve_location(name_or_path: str | Path, revision: str | None, cache_dir) -> tuple[Path, str | None]:
    """(local directory, Hub repo id or None): an existing path, else a Hub repo downloaded into the cache."""
    text = str(name_or_path)
    if isinstance(name_or_path, str) and text.lower().startswith(("hf-hub:", "hf_hub:")):
        repo_id, at_revision = split_revision(text[len("hf-hub:") :])
    else:
        path = Path(name_or_path)
        if path.exists():
            if revision is not None:
                logger.warning("%s is a local path: revision=%r applies to Hub repos and is ignored", path, revision)
            return path, None
        if not isinstance(name_or_path, str) or not is_repo_id(text):
            raise CheckpointError(f"{path} does not exist (and is not a Hugging Face Hub repo id 'ORG/NAME')")
        repo_id, at_revision = split_revision(text)
    if revision is not None and at_revision is not None and revision != at_revision:
        raise CheckpointError(f"two revisions for {repo_id}: {at_revision!r} in the name and revision={revision!r}")
    revision = revision or at_revision
    try:
        directory = download_model(repo_id, revision=revision, cache_dir=cache_dir)
    except HubError as e:
        if text.lower().startswith(("hf-hub:", "hf_hub:")):
            raise
        raise HubError(f"{text} is not a local path, and as a Hugging Face Hub repo id: {e}") from None
    return directory, repo_id + (f"@{revision}" if revision else "")


# ------------------------------------------------------------------------------------ the Hugging Face Hub
INSTALL_HUB = 'pip install "vitkit[hub]"'
_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9_.-]+(@[^\s@]+)?$")


class HubError(CheckpointError):
    """A model could not be fetched from the Hugging Face Hub (or its cache); the message says what to do."""


def is_repo_id(text: str) -> bool:
    """True for 'ORG/NAME' or 'ORG/NAME@REVISION' (the shape of a Hub model id)."""
    return bool(_REPO_ID_RE.match(text)) and ".." not in text


def split_revision(repo: str) -> tuple[str, str | None]:
    """'org/name@rev' -> ('org/name', 'rev'); timm's `hf-hub:org/name@rev` syntax."""
    repo_id, sep, revision = repo.partition("@")
    if sep and (not revision or "@" in revision):
        raise HubError(f"{repo!r}: a Hub id takes one '@' before its revision ('org/name@v1.0')")
    return repo_id, (revision or None)


def _huggingface_hub(repo_id: str):
    try:
        import huggingface_hub
    except ImportError:
        raise HubError(
            f"loading {repo_id!r} from the Hugging Face Hub needs the huggingface_hub package: "
            f"{INSTALL_HUB} (or pip install huggingface_hub)"
        ) from None
    return huggingface_hub


def hub_download(
    repo_id: str,
    filename: str,
    *,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    required: bool = True,
) -> Path | None:
    """`huggingface_hub.hf_hub_download`, with its cache, offline mode and authentication, and errors that say
    what to do. A file the repo does not have (or, offline, that is not cached) gives None when not `required`."""
    from . import __version__

    hf = _huggingface_hub(repo_id)
    from huggingface_hub import constants
    from huggingface_hub import utils as errors  # the error classes, where every version since 0.23 exports them

    where = f"{repo_id}" + (f" (revision {revision!r})" if revision else "")
    try:
        return Path(
            hf.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=cache_dir,
                library_name="vitkit",
                library_version=__version__,
            )
        )
    except errors.GatedRepoError:
        raise HubError(
            f"{repo_id} is a gated repo: accept its conditions at https://huggingface.co/{repo_id} and "
            f"log in (`huggingface-cli login`, or set HF_TOKEN)"
        ) from None
    except errors.RepositoryNotFoundError:
        raise HubError(
            f"{repo_id} is not a model repo on the Hugging Face Hub (or it is private: log in with "
            f"`huggingface-cli login` or set HF_TOKEN); check the name, e.g. "
            f"'google/vit-base-patch16-224'"
        ) from None
    except errors.RevisionNotFoundError:
        raise HubError(f"{repo_id} has no revision {revision!r} (a branch, tag or commit hash)") from None
    except errors.LocalEntryNotFoundError as e:
        if not required:
            return None
        cache = Path(cache_dir or constants.HF_HUB_CACHE)
        if constants.HF_HUB_OFFLINE:
            raise HubError(
                f"{filename} of {where} is not in the Hugging Face cache ({cache}) and HF_HUB_OFFLINE=1 forbids "
                f"downloading it: run once online (unset HF_HUB_OFFLINE), or fetch the repo with "
                f"`huggingface-cli download {repo_id}` (`hf download {repo_id}`), or pass a local directory"
            ) from None
        # huggingface_hub falls back to its cache on any failure to reach the file; the failure is the cause
        cause = e.__cause__
        first = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else ""
        why = f"{type(cause).__name__}: {first}" if cause is not None else "no connection to the Hugging Face Hub?"
        raise HubError(
            f"could not download {filename} of {where} ({why}) and it is not in the cache ({cache}): retry online, "
            f"or fetch it with `huggingface-cli download {repo_id}`"
        ) from None
    except errors.EntryNotFoundError:
        if not required:
            return None
        raise HubError(f"{where} has no file {filename}") from None
    except errors.HFValidationError as e:
        raise HubError(f"{repo_id!r} is not a valid Hugging Face Hub repo id: {e}") from None


def download_weights(repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """The repo's weights: model.safetensors, else its sharded index with every shard, else pytorch_model.bin,
    else its sharded index with every shard (transformers' order). Returns the file, or the index of a sharded
    checkpoint, which `read_state_dict_file` and `create_model(pretrained=...)` read like a file."""
    path = None
    for name in (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX):
        path = hub_download(repo_id, name, revision=revision, cache_dir=cache_dir, required=False)
        if path is not None:
            break
    if path is not None and path.name.endswith(".index.json"):
        index = read_json(path)
        shards = index.get("weight_map") if isinstance(index, dict) else None
        for shard in sorted(set(shards.values()) if isinstance(shards, dict) else ()):
            if isinstance(shard, str) and Path(shard).name == shard:  # read_shard_index reports anything else
                hub_download(repo_id, shard, revision=revision, cache_dir=cache_dir)
    if path is None:  # none: the error names the preferred file (and, offline, how to fetch it)
        hub_download(repo_id, SAFE_WEIGHTS, revision=revision, cache_dir=cache_dir)
        raise HubError(f"{repo_id} has neither {SAFE_WEIGHTS} nor {TORCH_WEIGHTS}")  # pragma: no cover
    return path


def download_model(
    repo_id: str, *, revision: str | None = None, cache_dir: str | Path | None = None, weights: bool = True
) -> Path:
    """Fetch a model repo's config.json, preprocessor_config.json (if any) and weights into the Hub cache and
    return their snapshot directory (`<cache>/models--ORG--NAME/snapshots/<commit>`), which the local loaders
    read like any model directory."""
    config = hub_download(repo_id, CONFIG_NAME, revision=revision, cache_dir=cache_dir)
    directory = config.parent
    if weights:
        path = download_weights(repo_id, revision=revision, cache_dir=cache_dir)
        if path.parent != directory:  # another commit between the two calls: read both from one snapshot
            raise HubError(f"{repo_id} changed while it was downloaded: retry")
    hub_download(repo_id, "preprocessor_config.json", revision=revision, cache_dir=cache_dir, required=False)
    return directory


def download_url(url: str, cache_dir: str | Path | None = None) -> Path:
    """A weights file at `url` (torchvision's), cached where torchvision caches it (`torch.hub.get_dir()/
    checkpoints`, or `cache_dir`); the SHA-256 prefix in a torchvision file name is checked on download."""
    import re as _re
    from urllib.parse import urlparse

    directory = Path(cache_dir) if cache_dir else Path(torch.hub.get_dir()) / "checkpoints"
    name = os.path.basename(urlparse(url).path)
    path = directory / name
    if path.is_file():
        return path
    directory.mkdir(parents=True, exist_ok=True)
    m = _re.search(r"-([a-f0-9]{6,})\.", name)
    try:
        torch.hub.download_url_to_file(url, str(path), hash_prefix=m.group(1) if m else None, progress=True)
    except Exception as e:  # noqa: BLE001 -- URLError, HTTPError, hash mismatch, disk full: all mean "not there"
        raise HubError(f"could not download {url} ({type(e).__name__}: {e}); download it by hand to {path}") from None
    return path

"""Checks on model configurations, run before a model is built.

A model configuration comes from a registered spec plus overrides (`create_model`), from a vitkit
`config.json` or from a Hugging Face `config.json` (`from_pretrained`). Either way the sizes are
checked here before any parameter is allocated: a value that cannot build a model (`depth=-1`,
`num_heads` not dividing the width, `patch_size=0`, a value of another type than its field's
annotation, such as `qkv_bias='maybe'`) or a size far beyond any real model
(`hidden_size=10**9`, `num_hidden_layers=10**6`, which would try to allocate terabytes) is refused with
a message naming the field, instead of an allocation that exhausts memory or a ZeroDivisionError deep
in a layer.

The caps are generous: about ten times the largest published vision transformers (ViT-22B: width
6144, 48 blocks, 2.2e10 parameters).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["ModelConfigError", "check_model_config", "estimate_params", "MAX_PARAMS", "LIMITS"]

MAX_PARAMS = 2 * 10**11  # 800 GB of fp32 weights; ViT-22B has 2.2e10
# field -> (smallest, largest) for integer sizes; a tuple field is checked entry by entry
LIMITS: dict[str, tuple[int, int]] = {
    "img_size": (1, 2**15),
    "patch_size": (1, 2**15),
    "patch_sizes": (1, 2**15),
    "patch_strides": (1, 2**15),
    "tubelet_size": (1, 2**15),
    "in_chans": (1, 4096),
    "num_classes": (0, 10**7),
    "embed_dim": (1, 2**16),
    "embed_dims": (1, 2**16),
    "widths": (1, 2**16),
    "stem_width": (1, 2**16),
    "representation_size": (1, 2**16),
    "feature_reuse_dim": (1, 2**16),
    "relation_reuse_hidden": (1, 2**16),
    "group_width": (1, 2**16),
    "depth": (1, 1024),
    "depths": (1, 1024),
    "temporal_depth": (0, 1024),
    "num_heads": (1, 4096),
    "num_frames": (1, 4096),
    "window_size": (1, 2**15),
    "strides": (1, 64),
}
_RATES = ("drop_rate", "pos_drop_rate", "proj_drop_rate", "attn_drop_rate", "drop_path_rate", "patch_drop_rate")
_WIDTHS = ("embed_dim", "embed_dims", "widths", "stem_width")
_DEPTHS = ("depth", "depths", "temporal_depth")


class ModelConfigError(ValueError):
    """A model configuration that cannot (or should not) be built."""


def _entries(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _pair(value: Any) -> tuple[Any, Any]:
    return (value[0], value[1]) if isinstance(value, (list, tuple)) and len(value) == 2 else (value, value)


def _split_union(annotation: str) -> list[str]:
    """'int | tuple[int, int]' -> ['int', 'tuple[int, int]'] (a `|` inside brackets stays)."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(annotation):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "|" and depth == 0:
            parts.append(annotation[start:i].strip())
            start = i + 1
    return [*parts, annotation[start:].strip()]


def _matches(value: Any, annotation: str) -> bool | None:
    """Whether `value` (as read from Python or JSON: lists for tuples, ints for floats) fits a config field's
    annotation (a string, as `from __future__ import annotations` keeps it); None for an annotation not
    understood here, which is not checked."""
    results = []
    for kind in _split_union(annotation):
        if kind == "None":
            results.append(value is None)
        elif kind == "bool":
            results.append(isinstance(value, bool))
        elif kind == "int":
            results.append(_is_int(value))
        elif kind == "float":
            results.append(isinstance(value, (int, float)) and not isinstance(value, bool))
        elif kind == "str":
            results.append(isinstance(value, str))
        elif kind.startswith("dict"):
            results.append(isinstance(value, Mapping))
        elif kind.startswith("tuple[") and kind.endswith("]"):
            items = [t.strip() for t in kind[len("tuple[") : -1].split(",")]
            if not isinstance(value, (list, tuple)):
                results.append(False)
            elif len(items) == 2 and items[1] == "...":
                results.append(all(_matches(v, items[0]) is not False for v in value))
            else:
                results.append(
                    len(value) == len(items) and all(_matches(v, t) is not False for v, t in zip(value, items))
                )
        else:
            return None
    return any(results)


def _describe(annotation: str) -> str:
    words = {"None": "null", "bool": "true or false", "int": "an integer", "float": "a number", "str": "a string"}
    plural = {"bool": "true/false values", "int": "integers", "float": "numbers", "str": "strings"}
    out = []
    for kind in _split_union(annotation):
        if kind.startswith("tuple[") and kind.endswith("]"):
            items = [t.strip() for t in kind[len("tuple[") : -1].split(",")]
            if len(items) == 2 and items[1] == "...":
                out.append(f"a list of {plural.get(items[0], items[0])}")
            else:
                out.append(f"a list of {len(items)} {plural.get(items[0], items[0])}")
        elif kind.startswith("dict"):
            out.append("a mapping")
        else:
            out.append(words.get(kind, kind))
    return " or ".join(out)


def estimate_params(values: Mapping[str, Any]) -> int:
    """A rough upper estimate of the parameter count a configuration implies (blocks of width W cost about
    (4 + 2 * mlp_ratio) * W**2 each, plus the classifier), cheap enough to run before building anything."""
    widths = [w for name in _WIDTHS for w in _entries(values.get(name)) if _is_int(w)]
    width = max(widths, default=1)
    stages = values.get("depths")
    if isinstance(stages, (list, tuple)) and "embed_dims" not in values and "widths" not in values:
        width *= 2 ** max(len(stages) - 1, 0)  # Swin, MViT: the width doubles at every stage
    blocks = sum(d for name in _DEPTHS for d in _entries(values.get(name)) if _is_int(d))
    ratios = [
        r
        for r in _entries(values.get("mlp_ratio", values.get("mlp_ratios", 4.0)))
        if isinstance(r, (int, float)) and math.isfinite(r)
    ]
    ratio = max(ratios, default=4.0)
    classes = values.get("num_classes") if _is_int(values.get("num_classes")) else 0
    return int(max(blocks, 1) * (4 + 2 * ratio) * width * width + (classes + 1) * width)


def _with_defaults(config_class: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """`values` completed with `config_class`'s defaults, without constructing it (its __post_init__ may divide)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(config_class):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    out.update(values)
    return out


def check_model_config(
    config: Any,
    source: str | None = None,
    field_names: Mapping[str, str] | None = None,
    config_class: type | None = None,
) -> None:
    """Raise `ModelConfigError` naming the first field of `config` (a model config dataclass, or a mapping of its
    fields: then pass `config_class` to fill in the defaults) that cannot build a model. Run it before the config
    dataclass is constructed, as `create_model` and `from_pretrained` do. `source` (a file or model name) starts
    the message; `field_names` maps vitkit field names to the names the source uses (e.g. embed_dim ->
    hidden_size)."""
    if dataclasses.is_dataclass(config):
        values = dataclasses.asdict(config)
    else:
        values = _with_defaults(config_class, config) if config_class is not None else dict(config)
    names = field_names or {}
    where = f"{source}: " if source else ""

    def name(field: str) -> str:
        return f"{field} ({names[field]} in the config)" if field in names else field

    def fail(field: str, problem: str) -> None:
        raise ModelConfigError(f"{where}{name(field)} = {values[field]!r} {problem}")

    for field, (low, high) in LIMITS.items():
        value = values.get(field)
        if value is None:
            continue
        for v in _entries(value):
            if not _is_int(v):
                fail(
                    field,
                    "must be an integer" + (" (or a list of integers)" if isinstance(value, (list, tuple)) else ""),
                )
            if v < low:
                fail(field, f"must be at least {low}")
            if v > high:
                fail(
                    field,
                    f"is over vitkit's limit of {high:,} for this field (about ten times the largest "
                    f"published model); check the config",
                )
    if config_class is not None:  # each field of the type its annotation names (true/false for a flag, ...)
        per_stage = getattr(config_class, "per_stage_fields", ())
        for f in dataclasses.fields(config_class):
            annotation = str(f.type)
            if f.name in per_stage and annotation.startswith("tuple[") and annotation.endswith(", ...]"):
                annotation += f" | {annotation[len('tuple[') : -len(', ...]')]}"  # one value for every stage
            if f.name in values and _matches(values[f.name], annotation) is False:
                fail(f.name, f"must be {_describe(annotation)}")
    for field in _RATES:
        for v in _entries(values.get(field, 0.0)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0 <= v < 1:
                fail(field, "must be a probability in [0, 1)")
    for field in ("mlp_ratio", "mlp_ratios"):
        for v in _entries(values.get(field, 1.0)):
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not (0 < v <= 64):
                fail(field, "must be a number in (0, 64]")
    eps = values.get("norm_eps", values.get("bn_eps"))
    if eps is not None and (not isinstance(eps, (int, float)) or not 0 < eps < 1):
        fail("norm_eps" if "norm_eps" in values else "bn_eps", "must be in (0, 1)")

    # heads divide the width they split
    dim, heads = values.get("embed_dim"), values.get("num_heads")
    if _is_int(dim) and _is_int(heads) and dim % heads:
        fail(
            "num_heads",
            f"with {name('embed_dim')} = {dim}: embed_dim is not divisible by num_heads (each head "
            f"takes embed_dim / num_heads channels)",
        )
    stage_depths = values.get("depths")
    if isinstance(heads, (list, tuple)) and isinstance(stage_depths, (list, tuple)):
        if len(heads) != len(stage_depths):
            fail("num_heads", f"has {len(heads)} entries but depths has {len(stage_depths)}: one per stage")
        dims = values.get("embed_dims")
        if not isinstance(dims, (list, tuple)):  # Swin: the width doubles at every stage
            dims = [dim * 2**i for i in range(len(heads))] if _is_int(dim) else []
        for i, (d, h) in enumerate(zip(dims, heads)):
            if d % h:
                fail("num_heads", f"stage {i}: the stage's width {d} is not divisible by num_heads {h}")
    # a patch larger than the image leaves no token
    img, patch = values.get("img_size"), values.get("patch_size")
    if img is not None and _is_int(patch):
        for side in _pair(img):
            if _is_int(side) and patch > side:
                fail("patch_size", f"is larger than {name('img_size')} = {img!r}: the image would give no patch")

    n = estimate_params(values)
    if n > MAX_PARAMS:
        raise ModelConfigError(
            f"{where}this configuration implies about {n:.2g} parameters ({n * 4 / 2**30:,.0f} GiB in fp32), over "
            f"vitkit's limit of {MAX_PARAMS:.0e}: check the width and depth fields "
            f"({', '.join(name(f) for f in (*_WIDTHS, *_DEPTHS) if f in values)})"
        )


# Hugging Face config.json fields that size a model: (smallest, largest); lists are checked entry by entry
HF_LIMITS: dict[str, tuple[int, int]] = {
    "hidden_size": (1, 2**16),
    "intermediate_size": (1, 2**20),
    "num_hidden_layers": (1, 1024),
    "num_attention_heads": (1, 4096),
    "image_size": (1, 2**15),
    "patch_size": (1, 2**15),
    "num_channels": (1, 4096),
    "num_labels": (0, 10**7),
    "num_frames": (1, 4096),
    "tubelet_size": (1, 2**15),
    "pooler_output_size": (1, 2**16),
    "embed_dim": (1, 2**16),  # Swin (one int), CvT (per stage)
    "depths": (1, 1024),
    "depth": (1, 1024),
    "num_heads": (1, 4096),
    "window_size": (1, 2**15),
    "decoder_hidden_size": (1, 2**16),
    "decoder_intermediate_size": (1, 2**20),
    "decoder_num_hidden_layers": (1, 1024),
    "decoder_num_attention_heads": (1, 4096),
}


def check_hf_config(hf_config: Mapping[str, Any], source: str = "config.json") -> None:
    """Raise `ModelConfigError` for a Hugging Face config.json field that cannot size a model (not an integer,
    below 1, or far beyond any real model: `hidden_size=10**9` would ask for terabytes) -- before any division
    by it and before anything is allocated."""
    for field, (low, high) in HF_LIMITS.items():
        value = hf_config.get(field)
        if value is None:
            continue
        for v in _entries(value):
            if not _is_int(v):
                raise ModelConfigError(
                    f"{source}: {field} = {value!r} must be an integer"
                    + (" (or a list of integers)" if isinstance(value, (list, tuple)) else "")
                )
            if not low <= v <= high:
                limit = (
                    f"at least {low}"
                    if v < low
                    else f"at most {high:,} (vitkit's limit, about ten times the largest published model)"
                )
                raise ModelConfigError(f"{source}: {field} = {value!r} must be {limit}; fix config.json")


def check_hf_classifier(directory: Any, num_classes: int, source: str) -> None:
    """The classifier in a Hugging Face directory's weights must have as many outputs as config.json has classes
    (`num_labels` / `id2label`): otherwise the trained head would be dropped. The weights are the truth: the message
    says to fix config.json (or to ask for a new head with num_classes=N)."""
    from pathlib import Path

    directory = Path(directory)
    rows: dict[str, int] = {}
    weights = directory / "model.safetensors"
    if weights.is_file():
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:  # the header alone: no tensor is read
            for key in f.keys():
                if key.endswith("classifier.weight"):
                    rows[key] = int(f.get_slice(key).get_shape()[0])
    elif (directory / "pytorch_model.bin").is_file():
        from .hub import read_state_dict_file

        weights = directory / "pytorch_model.bin"
        rows = {
            k: int(v.shape[0])
            for k, v in read_state_dict_file(weights).items()
            if k.endswith("classifier.weight") and v.ndim == 2
        }
    wrong = {k: n for k, n in rows.items() if n != num_classes}
    if num_classes > 0 and wrong:
        key, n = next(iter(wrong.items()))
        raise ModelConfigError(
            f"{source} describes {num_classes} classes (num_labels / id2label), but {key} in {weights.name} has "
            f"{n} outputs: the weights are the truth, so fix id2label (and num_labels) in config.json to list the {n} "
            f"classes the model was trained on; to replace the head with a new, untrained one instead, pass "
            f"num_classes={num_classes} (from_pretrained(..., num_classes={num_classes}))"
        )

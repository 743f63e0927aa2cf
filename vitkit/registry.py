"""Model names -> (family, config), and `create_model` with timm's semantics.

Sizes are data: each family file registers its table of named configurations here under the names timm
users know. Every name has a pretrained cfg with timm's fields (`input_size`, `fixed_input_size`,
`interpolation`, `crop_pct`, `crop_mode`, `mean`, `std`, `num_classes`, `pool_size`, `first_conv`,
`classifier`, `license`, `hf_hub_id`, `tag`, `architecture`): for a name timm publishes weights for, the
values of timm's default tag (vitkit/pretrained.py), so `timm.data.resolve_data_config(model=m)` gives
what timm gives.
"""

from __future__ import annotations

import dataclasses
import difflib
import fnmatch
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF_MEAN = (0.5, 0.5, 0.5)  # the original ViT / big_vision preprocessing: x in [-1, 1]
HALF_STD = (0.5, 0.5, 0.5)
# Per-channel statistics for the small CPU models: MNIST / Fashion-MNIST (grayscale) and CIFAR (RGB).
MNIST_MEAN = (0.1307,)
MNIST_STD = (0.3081,)
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# family -> (first_conv, classifier, fixed_input_size): the module names timm's pretrained cfgs give.
_FAMILY_FIELDS: dict[str, tuple[str, Any, bool]] = {
    "vit": ("patch_embed.proj", "head", True),
    "swin": ("patch_embed.proj", "head.fc", True),
    "mixer": ("stem.proj", "head", True),
    "cvt": ("stage0.patch_embed.proj", "head", False),  # convolutional token embeddings: any input size
    "cnn": ("stem.0", "head", False),
    "dvt": ("stages.0.patch_embed.proj", "head", True),
    "mae": ("encoder.patch_embed.proj", None, True),
    "mvit": ("patch_embed.proj", "head", True),
    "timesformer": ("patch_embed.proj", "head", True),
    "vivit": ("patch_embed.proj", "head", True),
}
# create_model arguments that are not config fields (timm's factory and feature-extraction arguments)
_FEATURE_ARGS = ("features_only", "out_indices", "output_fmt", "feature_cls")


class UnknownArgumentError(TypeError, ValueError):
    """A keyword argument the model does not take. A TypeError, as timm raises (Python does for an unexpected
    keyword argument), and a ValueError, as vitkit's other configuration errors are."""


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str
    config: dict[str, Any]
    preprocessing: dict[str, Any] = field(default_factory=dict)  # as registered by the family file

    @cached_property
    def pretrained_cfg(self) -> dict[str, Any]:
        """The name's default pretrained cfg: that of its default tag where it has one (see `resolve_pretrained_cfg`)."""
        return resolve_pretrained_cfg(self.name)


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, family: str, config: dict[str, Any], **pretrained_cfg: Any) -> None:
    if name in _MODELS:
        raise ValueError(f"model name {name!r} is registered twice")
    if "." in name:
        raise ValueError(f"model name {name!r} contains '.', which separates a name from its pretrained tag")
    cfg = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD, crop_pct=0.875, interpolation="bicubic")
    cfg.update(pretrained_cfg)
    _MODELS[name] = ModelSpec(name, family, dict(config), cfg)


def list_models(pattern: str | None = None, pretrained: bool = False) -> list[str]:
    """Registered model names, sorted; `pattern` is a shell-style wildcard such as 'vit_*_224'.

    `pretrained=True` lists '<name>.<tag>' for every known pretrained weight instead (as timm's
    `list_models(pretrained=True)`); the pattern then matches the whole string."""
    if pretrained:
        from .pretrained import list_pretrained

        return list_pretrained(pattern)
    names = sorted(_MODELS)
    return [n for n in names if fnmatch.fnmatch(n, pattern)] if pattern else names


def is_model(model_name: str) -> bool:
    """Whether `model_name` (with or without a '.tag') names a registered architecture, as timm's `is_model`."""
    return split_model_name_tag(model_name)[0] in _MODELS


def list_pretrained(pattern: str | None = None) -> list[str]:
    """'<name>.<tag>' for every known pretrained weight, as timm's `list_pretrained`; `pattern` is a shell-style
    wildcard matched against the whole string."""
    from .pretrained import list_pretrained as _list

    return _list(pattern)


def get_model_spec(name: str) -> ModelSpec:
    try:
        return _MODELS[name]
    except KeyError:
        close = difflib.get_close_matches(name, _MODELS, n=3, cutoff=0.6)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise ValueError(
            f"unknown model {name!r}.{hint} `vitkit.list_models('vit_*')` lists the {len(_MODELS)} registered names."
        ) from None


def split_model_name_tag(model_name: str) -> tuple[str, str]:
    """'vit_base_patch16_224.augreg_in1k' -> ('vit_base_patch16_224', 'augreg_in1k'), as timm's function."""
    name, _, tag = model_name.partition(".")
    return name, tag


def _config_values(spec: ModelSpec) -> dict[str, Any]:
    """The registered config with the family's defaults filled in."""
    from .models import FAMILIES

    cls = FAMILIES[spec.family].config_class
    values = {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}
    values.update(spec.config)
    return values


def _size2(value: Any) -> tuple[int, int]:
    return (int(value[0]), int(value[1])) if isinstance(value, (list, tuple)) else (int(value), int(value))


def architecture_cfg(family: str, values: dict[str, Any], name: str | None = None) -> dict[str, Any]:
    """timm's pretrained-cfg fields that follow from a model's family and config (no preprocessing, no
    weights): `input_size`, `fixed_input_size`, `num_classes`, `pool_size`, `first_conv`, `classifier`, ..."""
    first_conv, classifier, fixed = _FAMILY_FIELDS.get(family, (None, "head", True))
    if family == "vit":
        if values.get("hybrid_layers"):
            first_conv = "patch_embed.backbone.stem.conv"
        if values.get("distilled"):
            classifier = ["head", "head_dist"]
        if values.get("dynamic_img_size"):
            fixed = False
    elif family == "dvt":
        classifier = [f"stages.{i}.head" for i in range(len(values.get("patch_sizes") or (0, 0, 0)))]
    elif family == "swin" and values.get("strict_img_size") is False:
        fixed = False
    h, w = _size2(values.get("img_size", 224))
    pool_size = None
    if family == "swin":
        stride = int(values.get("patch_size", 4)) * 2 ** (len(values.get("depths") or (0,)) - 1)
        pool_size = (h // stride, w // stride)
    elif family == "cnn":  # the stride-s 3x3 convolutions (padding 1) of each stage: ceil(size / s)
        ph, pw = h, w
        for s in values.get("strides") or ():
            ph, pw = -(-ph // int(s)), -(-pw // int(s))
        pool_size = (ph, pw)
    cfg: dict[str, Any] = dict(
        url="",
        hf_hub_id=None,
        architecture=name,
        tag=None,
        input_size=(int(values.get("in_chans", 3)), h, w),
        fixed_input_size=fixed,
        crop_mode="center",
        num_classes=values.get("num_classes", 0),
        pool_size=pool_size,
        first_conv=first_conv,
        classifier=classifier,
        license=None,
    )
    if values.get("num_frames") is not None:  # video models: clips of num_frames frames of input_size
        cfg["num_frames"] = int(values["num_frames"])
    return cfg


def complete_pretrained_cfg(model) -> dict[str, Any]:
    """Add the timm fields `model.pretrained_cfg` lacks (a model read from a Hugging Face or vitkit folder
    carries its preprocessing only), from the model's family and config; the fields present are kept."""
    values = {f.name: getattr(model.config, f.name) for f in dataclasses.fields(model.config)}
    for key, value in architecture_cfg(model.family, values, getattr(model, "model_name", None)).items():
        model.pretrained_cfg.setdefault(key, value)
    return model.pretrained_cfg


def base_pretrained_cfg(name: str) -> dict[str, Any]:
    """The cfg of architecture `name` without pretrained weights: its input size, classes, layer names and
    registered preprocessing (timm's, where timm has the architecture without weights)."""
    from .pretrained import timm_untrained_cfg

    spec = get_model_spec(name)
    cfg = architecture_cfg(spec.family, _config_values(spec), name)
    cfg.update(interpolation="bicubic", crop_pct=0.875, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    cfg.update(spec.preprocessing)
    untrained = timm_untrained_cfg(name)
    if untrained:
        cfg.update(untrained)
    return cfg


def resolve_pretrained_cfg(name: str, tag: str | None = None, overlay: dict[str, Any] | None = None) -> dict[str, Any]:
    """The pretrained cfg of `name.tag` (no tag: the name's default tag, if it has any), with `overlay`
    replacing fields, as timm's `resolve_pretrained_cfg`."""
    from .pretrained import default_tag, pretrained_tags

    cfg = base_pretrained_cfg(name)
    tags = pretrained_tags(name)
    tag = tag or default_tag(name)
    if tag:
        if tag not in tags:
            known = ", ".join(tags) if tags else "none"
            raise ValueError(
                f"unknown pretrained tag {tag!r} for {name!r}; its tags: {known} "
                f"(`vitkit models --pretrained '{name}*'` lists them)"
            )
        cfg.update(tags[tag])
    if overlay:
        cfg.update(overlay)
    return cfg


def _check_kwargs(family: str, kwargs: dict[str, Any], what: str) -> None:
    """timm raises TypeError for an argument the model does not take: name it and the known ones."""
    from .models import FAMILIES

    cls = FAMILIES[family].config_class
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        close = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
        hint = "".join(f" ({u!r}: did you mean {c[0]!r}?)" for u, c in close.items() if c)
        raise UnknownArgumentError(
            f"{what} got unexpected keyword argument(s) {unknown}: unknown {cls.__name__} field(s) {unknown}{hint}; "
            f"known fields: {sorted(known)}; create_model also takes pretrained, pretrained_cfg, "
            f"pretrained_cfg_overlay, checkpoint_path, cache_dir, scriptable, exportable, no_jit, "
            f"{', '.join(_FEATURE_ARGS)}"
        )


def create_model(
    model_name: str,
    pretrained: bool | str | Path | None = False,
    pretrained_cfg: str | dict[str, Any] | None = None,
    pretrained_cfg_overlay: dict[str, Any] | None = None,
    checkpoint_path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    scriptable: bool | None = None,
    exportable: bool | None = None,
    no_jit: bool | None = None,
    **kwargs: Any,
):
    """Build a model, as `timm.create_model`.

    `model_name`: a registered name (`vitkit.list_models()`), optionally with a pretrained tag
    ('vit_base_patch16_224.augreg2_in21k_ft_in1k'; `vitkit.list_models(pretrained=True)`), or
    'hf-hub:ORG/NAME[@REVISION]', a Hugging Face Hub repo written by timm (`save_for_hf` /
    `push_to_hf_hub`), by vitkit (`push_to_hub`) or by transformers (`save_pretrained`).

    `pretrained`: False (or None): random initialisation; True: the weights of the tag (the name's default
    tag when none is given) from the Hugging Face Hub (cached by huggingface_hub; `pip install
    "vitkit[hub]"`); a path: a local checkpoint -- a vitkit directory, a Hugging Face or timm model
    directory, a timm state dict (.safetensors/.pth/.bin) or an official DeiT/DINO/MAE checkpoint.
    `pretrained_cfg`: a tag, or a whole pretrained cfg (a dict, or timm's `PretrainedCfg`);
    `pretrained_cfg_overlay`: fields replacing the cfg's (e.g. `{'file': 'weights.safetensors'}` loads that
    file with pretrained=True, `{'hf_hub_id': 'org/name'}` another Hub repo). `checkpoint_path`: a local checkpoint loaded after everything else.
    `cache_dir`: the Hugging Face cache directory to use instead of HF_HUB_CACHE.

    As in timm, the pretrained cfg of named weights (a tag, `pretrained_cfg`, or `pretrained=True`) sets the
    defaults of `num_classes` (e.g. 21843 for '*.augreg_in21k', 0 for '*.dino') and of `in_chans`; a bare
    name keeps its registered head (timm also takes the default tag's classes there, so
    `timm.create_model('vit_huge_patch14_224')` is headless). Every other keyword argument is a config field
    (`num_classes`, `img_size`, `drop_path_rate=0.1`, `global_pool='avg'`, `dynamic_img_size=True`, ...),
    and an unknown one raises TypeError. Loading weights trained at another image size resamples the
    position embeddings; another `num_classes` re-initialises the head (and says so).
    `features_only=True` (with `out_indices`, `output_fmt`, `feature_cls`) returns the model wrapped for
    feature extraction (vitkit.models.features).

    timm's layer switches: `exportable` and `no_jit` change nothing (every vitkit model is built of plain
    PyTorch layers that `torch.export`, `torch.fx` and ONNX export take as they are, and none is scripted);
    `scriptable=True` is refused, as vitkit's models are not written for TorchScript.
    """
    from .models import FAMILIES, config_from_dict
    from .validate import check_model_config

    if not isinstance(pretrained_cfg, (str, dict, type(None))) and hasattr(pretrained_cfg, "to_dict"):
        pretrained_cfg = pretrained_cfg.to_dict()  # timm's PretrainedCfg (timm.get_pretrained_cfg(name))
    if scriptable:
        raise ValueError(
            f"create_model({model_name!r}, scriptable=True): vitkit's models are not written for "
            f"TorchScript; trace them with torch.export.export or torch.fx.symbolic_trace instead"
        )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}  # timm: None means "the default"
    feature_kwargs = {k: kwargs.pop(k) for k in _FEATURE_ARGS if k in kwargs}
    features_only = bool(feature_kwargs.pop("features_only", False))
    if feature_kwargs and not features_only:
        raise UnknownArgumentError(f"{sorted(feature_kwargs)} apply to features_only=True models only")
    if pretrained is None or (isinstance(pretrained, str) and not pretrained):  # timm: a falsy value, no weights
        pretrained = False
    if not isinstance(pretrained, (bool, str, os.PathLike)):
        raise TypeError(f"pretrained must be False, True or the path of a checkpoint, not {pretrained!r}")

    source, _, repo = model_name.partition(":") if ":" in model_name else ("", "", model_name)
    hub_dir: Path | None = None
    if source:
        if source.lower().replace("_", "-") not in ("hf-hub", "local-dir"):
            raise ValueError(f"unknown model source {source!r} in {model_name!r}; valid sources: hf-hub, local-dir")
        if pretrained_cfg:
            raise ValueError(
                "pretrained_cfg cannot be combined with an hf-hub: or local-dir: model name: "
                "the repository's config.json is the pretrained cfg"
            )
        name, family, values, cfg, hub_dir = _from_repo(
            source.lower().replace("_", "-"), repo, bool(pretrained is True), cache_dir
        )
        if pretrained_cfg_overlay:
            cfg.update(pretrained_cfg_overlay)
        what = f"create_model({model_name!r})"
    else:
        if "/" in model_name or "\\" in model_name:
            raise ValueError(
                f"model name {model_name!r} looks like a Hugging Face Hub repo id or a path: use "
                f"'hf-hub:{model_name}' for the Hub, 'local-dir:{model_name}' for a local folder, or "
                f"vitkit.from_pretrained({model_name!r})"
            )
        name, tag = split_model_name_tag(model_name)
        spec = get_model_spec(name)
        family = spec.family
        if isinstance(pretrained_cfg, dict):
            cfg = base_pretrained_cfg(name)
            cfg.update(pretrained_cfg)
            cfg.update(pretrained_cfg_overlay or {})
        else:
            cfg = resolve_pretrained_cfg(name, pretrained_cfg or tag or None, pretrained_cfg_overlay)
        values = dict(spec.config)
        # timm's `_update_default_model_kwargs`: the weights' classes and channels are the defaults -- where
        # weights are named (a tag, a cfg, pretrained=True); a bare name keeps its registered head
        named = bool(tag or pretrained_cfg or pretrained_cfg_overlay or pretrained is True)
        fields = {f.name for f in dataclasses.fields(FAMILIES[family].config_class)}
        if named and "num_classes" in fields and isinstance(cfg.get("num_classes"), int) and cfg["num_classes"] >= 0:
            values["num_classes"] = cfg["num_classes"]
        if (
            named
            and "in_chans" in fields
            and isinstance(cfg.get("input_size"), (list, tuple))
            and len(cfg["input_size"]) == 3
        ):
            values["in_chans"] = int(cfg["input_size"][0])
        if pretrained is True and cfg.get("format") == "transformers" and not cfg.get("file"):
            # the network the weights were trained as: the repo's config.json (e.g. LayerNorm eps 1e-12)
            hub_dir, hf_values = _transformers_values(cfg, family, cache_dir)
            values.update(hf_values)
        what = f"create_model({name!r})"
    _check_kwargs(family, kwargs, what)
    values.update(kwargs)
    cls = FAMILIES[family]
    # sizes and divisibility, before the config's own checks divide by them and before anything is allocated
    check_model_config(values, source=name or model_name, config_class=cls.config_class)
    config = config_from_dict(cls.config_class, values)
    model = cls(config)
    model.model_name = name
    model.pretrained_cfg = cfg
    complete_pretrained_cfg(model)
    names = cfg.get("label_names")
    if names is not None and len(names) != getattr(model, "num_classes", len(names)):
        del cfg["label_names"]  # a new head: the weights' class names no longer apply (timm's save_for_hf rule)

    if pretrained is True:
        _load_pretrained_weights(model, cfg, hub_dir, cache_dir)
    elif pretrained is not False:
        from .hub import load_pretrained

        load_pretrained(model, pretrained)
    if checkpoint_path:
        from .hub import load_pretrained

        load_pretrained(model, checkpoint_path)
    if features_only:
        from .models.features import features_model

        return features_model(model, **feature_kwargs)
    return model


def _from_repo(source: str, repo: str, weights: bool, cache_dir):
    """(name, family, values, pretrained cfg, local directory) of an hf-hub: or local-dir: model."""
    from .hub import CheckpointError, describe_directory, download_model, split_revision

    if source == "local-dir":
        directory = Path(repo)
        if not directory.is_dir():
            raise CheckpointError(f"local-dir:{repo}: {directory} is not a directory")
        hub_id = None
    else:
        repo_id, revision = split_revision(repo)
        directory = download_model(repo_id, revision=revision, cache_dir=cache_dir, weights=weights)
        hub_id = repo
    kind, family, values, model_name, cfg = describe_directory(directory, weights=weights)
    if hub_id:
        cfg["hf_hub_id"] = hub_id
    cfg.setdefault("format", {"hf": "transformers"}.get(kind, kind))
    return model_name, family, values, cfg, directory


def _transformers_values(cfg: dict[str, Any], family: str, cache_dir) -> tuple[Path, dict[str, Any]]:
    from .hub import CheckpointError, describe_directory, download_model, split_revision

    repo_id, revision = split_revision(cfg["hf_hub_id"])
    directory = download_model(repo_id, revision=revision, cache_dir=cache_dir)
    _, hf_family, values, _, hf_cfg = describe_directory(directory)
    if hf_family != family:
        raise CheckpointError(f"{cfg['hf_hub_id']} holds a {hf_family!r} model, not a {family!r} one")
    # the repo's preprocessor_config.json, where it has one, and its class names (config.json's id2label)
    keys = ("mean", "std", "interpolation", "crop_pct") if (directory / "preprocessor_config.json").is_file() else ()
    for key in (*keys, "label_names"):
        if key in hf_cfg:
            cfg[key] = hf_cfg[key]
    return directory, values


def _load_pretrained_weights(model, cfg: dict[str, Any], hub_dir: Path | None, cache_dir) -> None:
    """Load the weights `cfg` locates (timm's order: a file, then the Hub, then a URL)."""
    from .hub import CheckpointError, download_url, download_weights, load_pretrained, split_revision

    if cfg.get("file"):
        load_pretrained(model, cfg["file"])
    elif hub_dir is not None:
        load_pretrained(model, hub_dir)
    elif cfg.get("hf_hub_id"):
        repo_id, revision = split_revision(cfg["hf_hub_id"])
        load_pretrained(model, download_weights(repo_id, revision=revision, cache_dir=cache_dir))
    elif cfg.get("url"):
        load_pretrained(model, download_url(cfg["url"], cache_dir=cache_dir))
    else:
        from .pretrained import pretrained_tags

        name = cfg.get("architecture") or model.model_name
        tags = list(pretrained_tags(name)) if name in _MODELS else []
        known = f"its tags: {', '.join(f'{name}.{t}' for t in tags)}" if tags else "vitkit knows no weights for it"
        raise CheckpointError(
            f"no pretrained weights exist for {name!r} ({known}). Use pretrained=False for random initialisation, "
            f"or pretrained='path/to/checkpoint' for local weights"
        )

"""Known pretrained weights for vitkit's models, as timm-style tags: `<model name>.<tag>`.

Three kinds of source, each tag's `format` says which:
    - "timm": the weights timm publishes on the Hugging Face Hub (`hf_hub_id` `timm/<name>.<tag>`), in
      timm's state-dict layout, which vitkit keeps. The tags, their order (the first is timm's default)
      and their preprocessing come from timm's own registry, through `pretrained_tags.json`, which
      `scripts/gen_pretrained_tags.py` writes from the installed timm (vitkit never imports timm).
    - "transformers": a Hugging Face `transformers` repo (google/vit-*, facebook/deit-*, microsoft/swin-*,
      microsoft/cvt-*, facebook/vit-mae-*, facebook/dino-vit*, facebook/vit-msn-*, google/vivit-*,
      facebook/timesformer-*), converted on load (vitkit/convert/hf*.py). These tags start with `hf_` so
      they never collide with timm's. The model is built from the repo's config.json (for example the
      ViT checkpoints' LayerNorm eps 1e-12), so its outputs are the transformers model's; the
      preprocessing listed is the image processor's, and the repo's `preprocessor_config.json`, read on
      load, has the last word.
    - "torchvision": a torchvision weights file at `url` (MViT-B's `mvit_v1_b`), cached where torchvision
      caches it (`torch.hub.get_dir()/checkpoints`).

The 1000-class tags carry the ImageNet-1k class names as `label_names` (timm's `ImageNetInfo` descriptions,
the names the transformers repos' `id2label` holds too).

`create_model(name, pretrained=True)` loads the default tag: timm's default where timm has weights for
the name, else the first tag listed here.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from functools import lru_cache
from pathlib import Path
from typing import Any

TAGS_FILE = Path(__file__).with_name("pretrained_tags.json")

_IN_MEAN, _IN_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_HALF = (0.5, 0.5, 0.5)
# The image processors of the repos below (their preprocessor_config.json).
_PROC = {
    "vit": dict(mean=_HALF, std=_HALF, interpolation="bilinear", crop_pct=1.0),  # ViTImageProcessor
    "deit": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bicubic", crop_pct=0.875),  # 256 -> crop 224
    "deit384": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bicubic", crop_pct=1.0),
    "dino": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bicubic", crop_pct=1.0),  # DINO, MSN
    "swin": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bicubic", crop_pct=1.0),
    "cvt": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bicubic", crop_pct=0.875),  # ConvNext processor
    "cvt384": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bicubic", crop_pct=1.0),
    "mae": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bilinear", crop_pct=1.0),
    "vivit": dict(mean=(0.75,) * 3, std=(0.25,) * 3, interpolation="bilinear", crop_pct=224 / 256),
    "timesformer": dict(mean=_IN_MEAN, std=_IN_STD, interpolation="bilinear", crop_pct=1.0),
    "kinetics": dict(mean=(0.45, 0.45, 0.45), std=(0.225, 0.225, 0.225), interpolation="bilinear", crop_pct=224 / 256),
}

# (vitkit model name, tag, Hugging Face repo, number of classes (0: no classifier), preprocessing, license)
_HF_REPOS: tuple[tuple[str, str, str, int, str, str | None], ...] = (
    # Original ViT (Dosovitskiy et al.): in21k pre-trained (with the paper's pre-logits pooler), in1k fine-tuned.
    ("vit_base_patch16_224", "hf_goog_in21k_ft_in1k", "google/vit-base-patch16-224", 1000, "vit", "apache-2.0"),
    ("vit_base_patch16_224", "hf_goog_in21k", "google/vit-base-patch16-224-in21k", 0, "vit", "apache-2.0"),
    ("vit_base_patch16_384", "hf_goog_in21k_ft_in1k", "google/vit-base-patch16-384", 1000, "vit", "apache-2.0"),
    ("vit_base_patch32_224", "hf_goog_in21k", "google/vit-base-patch32-224-in21k", 0, "vit", "apache-2.0"),
    ("vit_base_patch32_384", "hf_goog_in21k_ft_in1k", "google/vit-base-patch32-384", 1000, "vit", "apache-2.0"),
    ("vit_large_patch16_224", "hf_goog_in21k_ft_in1k", "google/vit-large-patch16-224", 1000, "vit", "apache-2.0"),
    ("vit_large_patch16_224", "hf_goog_in21k", "google/vit-large-patch16-224-in21k", 0, "vit", "apache-2.0"),
    ("vit_large_patch16_384", "hf_goog_in21k_ft_in1k", "google/vit-large-patch16-384", 1000, "vit", "apache-2.0"),
    ("vit_large_patch32_224", "hf_goog_in21k", "google/vit-large-patch32-224-in21k", 0, "vit", "apache-2.0"),
    ("vit_large_patch32_384", "hf_goog_in21k_ft_in1k", "google/vit-large-patch32-384", 1000, "vit", "apache-2.0"),
    ("vit_huge_patch14_224", "hf_goog_in21k", "google/vit-huge-patch14-224-in21k", 0, "vit", "apache-2.0"),
    # DINO (self-supervised, no classifier) and MSN (ViTMSNModel, no classifier).
    ("vit_small_patch16_224", "hf_dino", "facebook/dino-vits16", 0, "dino", "apache-2.0"),
    ("vit_small_patch8_224", "hf_dino", "facebook/dino-vits8", 0, "dino", "apache-2.0"),
    ("vit_base_patch16_224", "hf_dino", "facebook/dino-vitb16", 0, "dino", "apache-2.0"),
    ("vit_base_patch8_224", "hf_dino", "facebook/dino-vitb8", 0, "dino", "apache-2.0"),
    ("vit_small_patch16_224", "hf_msn", "facebook/vit-msn-small", 0, "dino", "apache-2.0"),
    ("vit_base_patch16_224", "hf_msn", "facebook/vit-msn-base", 0, "dino", "apache-2.0"),
    ("vit_large_patch16_224", "hf_msn", "facebook/vit-msn-large", 0, "dino", "apache-2.0"),
    # DeiT (the plain ones are ViTForImageClassification checkpoints, the distilled ones DeiT's with teacher head).
    ("deit_tiny_patch16_224", "hf_fb_in1k", "facebook/deit-tiny-patch16-224", 1000, "deit", "apache-2.0"),
    ("deit_small_patch16_224", "hf_fb_in1k", "facebook/deit-small-patch16-224", 1000, "deit", "apache-2.0"),
    ("deit_base_patch16_224", "hf_fb_in1k", "facebook/deit-base-patch16-224", 1000, "deit", "apache-2.0"),
    ("deit_base_patch16_384", "hf_fb_in1k", "facebook/deit-base-patch16-384", 1000, "deit384", "apache-2.0"),
    (
        "deit_tiny_distilled_patch16_224",
        "hf_fb_in1k",
        "facebook/deit-tiny-distilled-patch16-224",
        1000,
        "deit",
        "apache-2.0",
    ),
    (
        "deit_small_distilled_patch16_224",
        "hf_fb_in1k",
        "facebook/deit-small-distilled-patch16-224",
        1000,
        "deit",
        "apache-2.0",
    ),
    (
        "deit_base_distilled_patch16_224",
        "hf_fb_in1k",
        "facebook/deit-base-distilled-patch16-224",
        1000,
        "deit",
        "apache-2.0",
    ),
    (
        "deit_base_distilled_patch16_384",
        "hf_fb_in1k",
        "facebook/deit-base-distilled-patch16-384",
        1000,
        "deit384",
        "apache-2.0",
    ),
    # Swin.
    (
        "swin_tiny_patch4_window7_224",
        "hf_ms_in1k",
        "microsoft/swin-tiny-patch4-window7-224",
        1000,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_small_patch4_window7_224",
        "hf_ms_in1k",
        "microsoft/swin-small-patch4-window7-224",
        1000,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_base_patch4_window7_224",
        "hf_ms_in22k_ft_in1k",
        "microsoft/swin-base-patch4-window7-224",
        1000,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_base_patch4_window7_224",
        "hf_ms_in22k",
        "microsoft/swin-base-patch4-window7-224-in22k",
        21841,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_base_patch4_window12_384",
        "hf_ms_in22k_ft_in1k",
        "microsoft/swin-base-patch4-window12-384",
        1000,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_base_patch4_window12_384",
        "hf_ms_in22k",
        "microsoft/swin-base-patch4-window12-384-in22k",
        21841,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_large_patch4_window7_224",
        "hf_ms_in22k_ft_in1k",
        "microsoft/swin-large-patch4-window7-224",
        1000,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_large_patch4_window7_224",
        "hf_ms_in22k",
        "microsoft/swin-large-patch4-window7-224-in22k",
        21841,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_large_patch4_window12_384",
        "hf_ms_in22k_ft_in1k",
        "microsoft/swin-large-patch4-window12-384",
        1000,
        "swin",
        "apache-2.0",
    ),
    (
        "swin_large_patch4_window12_384",
        "hf_ms_in22k",
        "microsoft/swin-large-patch4-window12-384-in22k",
        21841,
        "swin",
        "apache-2.0",
    ),
    # CvT.
    ("cvt_13", "hf_ms_in1k", "microsoft/cvt-13", 1000, "cvt", "apache-2.0"),
    ("cvt_13_384", "hf_ms_in1k", "microsoft/cvt-13-384", 1000, "cvt384", "apache-2.0"),
    ("cvt_13_384", "hf_ms_in22k_ft_in1k", "microsoft/cvt-13-384-22k", 1000, "cvt384", "apache-2.0"),
    ("cvt_21", "hf_ms_in1k", "microsoft/cvt-21", 1000, "cvt", "apache-2.0"),
    ("cvt_21_384", "hf_ms_in1k", "microsoft/cvt-21-384", 1000, "cvt384", "apache-2.0"),
    ("cvt_21_384", "hf_ms_in22k_ft_in1k", "microsoft/cvt-21-384-22k", 1000, "cvt384", "apache-2.0"),
    ("cvt_w24_384", "hf_ms_in22k_ft_in1k", "microsoft/cvt-w24-384-22k", 1000, "cvt384", "apache-2.0"),
    # MAE pre-training (encoder and decoder: ViTMAEForPreTraining).
    ("mae_vit_base_patch16", "hf_fb_in1k", "facebook/vit-mae-base", 0, "mae", "cc-by-nc-4.0"),
    ("mae_vit_large_patch16", "hf_fb_in1k", "facebook/vit-mae-large", 0, "mae", "cc-by-nc-4.0"),
    ("mae_vit_huge_patch14", "hf_fb_in1k", "facebook/vit-mae-huge", 0, "mae", "cc-by-nc-4.0"),
    # Video.
    ("vivit_base_16x2_224", "hf_goog_k400", "google/vivit-b-16x2-kinetics400", 400, "vivit", "mit"),
    (
        "timesformer_base_patch16_224",
        "hf_fb_k400",
        "facebook/timesformer-base-finetuned-k400",
        400,
        "timesformer",
        "cc-by-nc-4.0",
    ),
    (
        "timesformer_base_patch16_224",
        "hf_fb_k600",
        "facebook/timesformer-base-finetuned-k600",
        600,
        "timesformer",
        "cc-by-nc-4.0",
    ),
    (
        "timesformer_base_patch16_224",
        "hf_fb_ssv2",
        "facebook/timesformer-base-finetuned-ssv2",
        174,
        "timesformer",
        "cc-by-nc-4.0",
    ),
    (
        "timesformer_hr_patch16_448",
        "hf_fb_k400",
        "facebook/timesformer-hr-finetuned-k400",
        400,
        "timesformer",
        "cc-by-nc-4.0",
    ),
    (
        "timesformer_hr_patch16_448",
        "hf_fb_k600",
        "facebook/timesformer-hr-finetuned-k600",
        600,
        "timesformer",
        "cc-by-nc-4.0",
    ),
    (
        "timesformer_hr_patch16_448",
        "hf_fb_ssv2",
        "facebook/timesformer-hr-finetuned-ssv2",
        174,
        "timesformer",
        "cc-by-nc-4.0",
    ),
    (
        "timesformer_large_patch16_224",
        "hf_fb_k400",
        "facebook/timesformer-large-finetuned-k400",
        400,
        "timesformer",
        "cc-by-nc-4.0",
    ),
    (
        "timesformer_large_patch16_224",
        "hf_fb_k600",
        "facebook/timesformer-large-finetuned-k600",
        600,
        "timesformer",
        "cc-by-nc-4.0",
    ),
)

# torchvision weights files: (model name, tag, url, number of classes, preprocessing, license)
_URLS: tuple[tuple[str, str, str, int, str, str | None], ...] = (
    (
        "mvit_base_16x4",
        "tv_k400",
        "https://download.pytorch.org/models/mvit_v1_b-dbeb1030.pth",
        400,
        "kinetics",
        None,
    ),  # torchvision states no license for its weights files
)


@lru_cache(maxsize=1)
def _table() -> dict[str, Any]:
    return json.loads(TAGS_FILE.read_text())


def _timm_table() -> dict[str, Any]:
    return _table()["models"]


def label_set(key: str) -> list[str]:
    """Class names of a label set of the table ('imagenet-1k': timm's ImageNetInfo descriptions, in class order)."""
    return list(_table()["label_sets"][key])


def _tuples(cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON lists -> tuples, as timm's pretrained cfgs hold them (classifier lists stay lists)."""
    return {k: tuple(v) if isinstance(v, list) and k != "classifier" else v for k, v in cfg.items()}


@lru_cache(maxsize=None)
def _tags_of(name: str) -> dict[str, dict[str, Any]]:
    tags: dict[str, dict[str, Any]] = {}
    for tag, cfg in _timm_table().get(name, {}).get("tags", {}).items():
        tags[tag] = dict(_tuples(cfg), format="timm")
        if "label_set" in cfg:
            tags[tag]["label_names"] = label_set(tags[tag].pop("label_set"))
    for model, tag, repo, num_classes, proc, license_ in _HF_REPOS:
        if model == name:
            tags[tag] = dict(
                hf_hub_id=repo,
                architecture=name,
                tag=tag,
                num_classes=num_classes,
                **_PROC[proc],
                license=license_,
                format="transformers",
            )
            if num_classes == 1000:  # every 1000-class repo listed is an ImageNet-1k classifier
                tags[tag]["label_names"] = label_set("imagenet-1k")
    for model, tag, url, num_classes, proc, license_ in _URLS:
        if model == name:
            tags[tag] = dict(
                url=url,
                architecture=name,
                tag=tag,
                num_classes=num_classes,
                **_PROC[proc],
                license=license_,
                format="torchvision",
            )
    return tags


def pretrained_tags(name: str) -> dict[str, dict[str, Any]]:
    """The tags of model `name` (timm's first, in timm's order), each with its pretrained cfg (a copy)."""
    return copy.deepcopy(_tags_of(name))


def default_tag(name: str) -> str | None:
    """The tag `create_model(name, pretrained=True)` loads: timm's default, else the first listed; None if none."""
    entry = _timm_table().get(name, {})
    if entry.get("default_tag"):
        return entry["default_tag"]
    return next(iter(_tags_of(name)), None)


def timm_untrained_cfg(name: str) -> dict[str, Any] | None:
    """timm's preprocessing for a name timm knows but has no weights for (e.g. mixer_s16_224)."""
    cfg = _timm_table().get(name, {}).get("untrained")
    return _tuples(cfg) if cfg else None


def list_pretrained(pattern: str | None = None) -> list[str]:
    """'<name>.<tag>' of every known pretrained weight, by model name then in tag order (as
    `timm.list_pretrained`); `pattern` is a shell-style wildcard matched against the whole string."""
    from .registry import list_models

    out = [f"{name}.{tag}" for name in list_models() for tag in _tags_of(name)]
    return [n for n in out if fnmatch.fnmatch(n, pattern)] if pattern else out

"""The registry API: `list_models` filtering, `create_model` overrides and their errors, and the
preprocessing config (`pretrained_cfg`) every model carries."""

from __future__ import annotations

import pytest
import torch

import vitkit
import vitkit.pretrained
from vitkit import create_model, list_models
from vitkit.registry import get_model_spec

TINY = dict(embed_dim=32, depth=2, num_heads=2)


def test_list_models_sorted_and_unique():
    names = list_models()
    assert names == sorted(names) and len(names) == len(set(names))
    assert len(names) >= 50
    for expected in (
        "vit_base_patch16_224",
        "vit_base_r50_s16_384",
        "deit_tiny_distilled_patch16_224",
        "vit_micro_patch4_28",
    ):
        assert expected in names


@pytest.mark.parametrize(
    "pattern, must, must_not",
    [
        (
            "vit_*_224",
            ["vit_base_patch16_224", "vit_base_r50_s16_224"],
            ["vit_base_patch16_384", "deit_tiny_patch16_224"],
        ),
        (
            "deit_*distilled*",
            ["deit_tiny_distilled_patch16_224", "deit_base_distilled_patch16_384"],
            ["deit_tiny_patch16_224"],
        ),
        ("*patch8*", ["vit_small_patch8_224"], ["vit_small_patch16_224"]),
        ("vit_base_patch16_224", ["vit_base_patch16_224"], ["vit_base_patch16_384"]),
    ],
)
def test_list_models_pattern(pattern, must, must_not):
    import fnmatch

    names = list_models(pattern)
    assert names == sorted(names)
    assert all(fnmatch.fnmatch(n, pattern) for n in names)
    assert set(must) <= set(names) and not set(must_not) & set(names)
    assert names == [n for n in list_models() if fnmatch.fnmatch(n, pattern)]


def test_list_models_no_match():
    assert list_models("nosuchfamily_*") == []


def test_create_model_overrides():
    model = create_model("vit_tiny_patch16_224", num_classes=7, img_size=48, in_chans=1, drop_path_rate=0.2, **TINY)
    c = model.config
    assert (c.num_classes, c.img_size, c.in_chans, c.drop_path_rate) == (7, 48, 1, 0.2)
    assert (c.embed_dim, c.depth, c.num_heads, c.patch_size) == (32, 2, 2, 16)
    assert model.patch_embed.proj.weight.shape == (32, 1, 16, 16)
    assert model.patch_embed.grid_size == (3, 3)
    assert model.head.out_features == 7
    assert model.blocks[-1].drop_path1.drop_prob == pytest.approx(0.2)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 1, 48, 48)).shape == (1, 7)
    # the registered config itself is untouched
    assert get_model_spec("vit_tiny_patch16_224").config["embed_dim"] == 192


def test_create_model_keeps_registered_structure():
    model = create_model("deit_tiny_distilled_patch16_224", **TINY)
    assert model.config.distilled and model.num_prefix_tokens == 2
    assert model.config.img_size == 224 and model.config.num_classes == 1000
    micro = create_model("vit_micro_patch4_28")
    assert (micro.config.in_chans, micro.config.img_size, micro.config.num_classes) == (1, 28, 10)


def test_unknown_override_names_known_fields():
    """timm raises TypeError for a keyword argument the model does not take; so does vitkit (an error that
    is also a ValueError, as vitkit's other configuration errors), naming it, the closest field and every
    known one."""
    with pytest.raises(
        TypeError,
        match=r"(?s)unexpected keyword argument\(s\) \['drop_path'\].*did you mean "
        r"'drop_path_rate'.*known fields.*'weight_init'",
    ):
        create_model("vit_tiny_patch16_224", drop_path=0.1, **TINY)
    with pytest.raises(TypeError, match=r"\['depth'\].*did you mean 'depths'"):
        create_model("swin_micro_patch2_window4_32", depth=2)
    with pytest.raises(ValueError, match=r"unknown SwinConfig field\(s\) \['depth'\]"):
        create_model("swin_micro_patch2_window4_32", depth=2)


def test_invalid_override_values_are_clear():
    with pytest.raises(ValueError, match="global_pool"):
        create_model("vit_tiny_patch16_224", global_pool="max", **TINY)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        create_model("vit_tiny_patch16_224", embed_dim=30, depth=1, num_heads=4)


@pytest.mark.parametrize("name", list_models())
def test_pretrained_cfg(name):
    spec = get_model_spec(name)
    cfg = spec.pretrained_cfg
    in_chans = spec.config.get("in_chans", 3)
    assert len(cfg["mean"]) == len(cfg["std"]) == in_chans
    assert all(s > 0 for s in cfg["std"])
    assert 0 < cfg["crop_pct"] <= 1 and cfg["interpolation"] in ("bicubic", "bilinear")


def test_model_carries_pretrained_cfg():
    model = create_model("vit_tiny_patch16_224", **TINY)
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["std"] == (0.5, 0.5, 0.5)
    deit = create_model("deit_tiny_patch16_224", **TINY)
    assert deit.pretrained_cfg["mean"] == pytest.approx((0.485, 0.456, 0.406))
    assert deit.pretrained_cfg["std"] == pytest.approx((0.229, 0.224, 0.225))
    # a copy: changing one model's cfg does not change the registry or other models
    model.pretrained_cfg["mean"] = (0.0,)
    assert create_model("vit_tiny_patch16_224", **TINY).pretrained_cfg["mean"] == (0.5, 0.5, 0.5)


def test_public_api():
    assert set(vitkit.__all__) >= {"create_model", "list_models", "from_pretrained", "CheckpointError"}
    assert issubclass(vitkit.CheckpointError, ValueError)


# ------------------------------------------------------------------------------------ timm's pretrained cfgs
TIMM_FIELDS = (
    "input_size",
    "fixed_input_size",
    "min_input_size",
    "interpolation",
    "crop_pct",
    "crop_mode",
    "mean",
    "std",
    "num_classes",
    "pool_size",
    "first_conv",
    "classifier",
    "license",
    "hf_hub_id",
    "tag",
    "architecture",
)


def _timm():
    timm = pytest.importorskip("timm")
    return timm


def _plain(v):
    return tuple(v) if isinstance(v, list) else v


@pytest.mark.parametrize("name", list_models())
def test_every_model_has_timms_cfg_fields(name):
    """Every name's pretrained cfg has timm's fields, and its layer names are the model's own modules."""
    spec = get_model_spec(name)
    cfg = spec.pretrained_cfg
    for key in TIMM_FIELDS:
        if key != "min_input_size":  # timm sets it only for some models
            assert key in cfg, key
    assert cfg["architecture"] == name and len(cfg["input_size"]) == 3
    with torch.device("meta"):
        model = create_model(name)
    assert model.default_cfg is model.pretrained_cfg
    modules = dict(model.named_modules())
    assert cfg["input_size"][0] == model.config.in_chans
    assert isinstance(modules[cfg["first_conv"]], (torch.nn.Conv2d, torch.nn.Conv3d))
    first = next(k for k, m in modules.items() if isinstance(m, (torch.nn.Conv2d, torch.nn.Conv3d)))
    assert cfg["first_conv"] == first
    classifiers = [cfg["classifier"]] if isinstance(cfg["classifier"], str) else list(cfg["classifier"] or [])
    for head in classifiers:
        assert isinstance(modules[head], torch.nn.Linear), head


def _timm_names():
    try:
        from vitkit.pretrained import _timm_table
    except ImportError:  # pragma: no cover
        return []
    return sorted(_timm_table())


@pytest.mark.parametrize("name", _timm_names())
def test_pretrained_cfg_is_timms(name):
    """For the names timm also has, the cfg (default tag) is timm's, and timm's own resolve_data_config
    reads a vitkit model as it reads timm's (e.g. 384 x 384 for '*_384')."""
    timm = _timm()
    from timm.data import resolve_data_config
    from timm.models import get_pretrained_cfg

    ref = get_pretrained_cfg(name).to_dict()
    cfg = get_model_spec(name).pretrained_cfg
    for key in TIMM_FIELDS:
        if ref.get(key) not in (None, ""):
            assert _plain(cfg[key]) == _plain(ref[key]), key
    with torch.device("meta"):
        model = create_model(name)
    assert resolve_data_config(model=model) == resolve_data_config(pretrained_cfg=ref)
    for tag, tag_cfg in vitkit.pretrained.pretrained_tags(name).items():
        if tag_cfg["format"] == "timm":
            assert tag_cfg["hf_hub_id"] == get_pretrained_cfg(f"{name}.{tag}").hf_hub_id == f"timm/{name}.{tag}"
    del timm


def test_tag_sets_num_classes_as_timm():
    """A tag's classes are the default (timm's `_update_default_model_kwargs`); an argument wins."""
    timm = _timm()
    for full, classes in (
        ("vit_tiny_patch16_224.augreg_in21k", 21843),
        ("vit_small_patch16_224.dino", 0),
        ("swin_tiny_patch4_window7_224.ms_in22k", 21841),
    ):
        with torch.device("meta"):
            model = create_model(full)
            assert model.num_classes == classes == timm.create_model(full).num_classes
            assert create_model(full, num_classes=3).num_classes == 3
        assert model.pretrained_cfg["tag"] == full.split(".")[1]
    assert create_model("vit_tiny_patch16_224", pretrained_cfg="augreg_in21k", **TINY).num_classes == 21843


@pytest.mark.parametrize("full", vitkit.list_models(pretrained=True))
def test_every_tag_builds(full):
    """Every known name.tag builds (on the meta device: no memory, no download), with the tag's classes."""
    with torch.device("meta"):
        model = create_model(full)
    name, tag = full.split(".")
    cfg = vitkit.pretrained.pretrained_tags(name)[tag]
    assert model.pretrained_cfg["tag"] == tag and model.model_name == name
    if hasattr(model.config, "num_classes"):
        assert model.config.num_classes == cfg["num_classes"]


def test_pretrained_table_matches_installed_timm():
    """vitkit/pretrained_tags.json is what scripts/gen_pretrained_tags.py writes from the installed timm."""
    import importlib.util
    import json
    from pathlib import Path

    timm = _timm()
    root = Path(__file__).resolve().parents[1]
    table = json.loads((root / "vitkit" / "pretrained_tags.json").read_text())
    if table["timm_version"] != timm.__version__:
        pytest.skip(f"the table is from timm {table['timm_version']}, timm {timm.__version__} is installed")
    spec = importlib.util.spec_from_file_location("gen_pretrained_tags", root / "scripts" / "gen_pretrained_tags.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    built = gen.build_table()
    assert built["models"] == table["models"] and built["label_sets"] == table["label_sets"]


def test_imagenet_label_names():
    with torch.device("meta"):
        model = create_model("deit_tiny_patch16_224.fb_in1k")
        assert len(model.pretrained_cfg["label_names"]) == 1000
        assert model.pretrained_cfg["label_names"][0] == "tench, Tinca tinca"
        assert "label_names" not in create_model("deit_tiny_patch16_224.fb_in1k", num_classes=10).pretrained_cfg
        assert "label_names" not in create_model("vit_tiny_patch16_224.augreg_in21k").pretrained_cfg
        hf = create_model("deit_tiny_patch16_224.hf_fb_in1k")
    assert hf.pretrained_cfg["label_names"] == model.pretrained_cfg["label_names"]


def test_list_pretrained():
    names = list_models(pretrained=True)
    assert "vit_base_patch16_224.augreg2_in21k_ft_in1k" in names and "cvt_13.hf_ms_in1k" in names
    assert "mvit_base_16x4.tv_k400" in names
    assert list_models("deit_tiny_*", pretrained=True) == [
        "deit_tiny_distilled_patch16_224.fb_in1k",
        "deit_tiny_distilled_patch16_224.hf_fb_in1k",
        "deit_tiny_patch16_224.fb_in1k",
        "deit_tiny_patch16_224.hf_fb_in1k",
    ]
    for full in names:
        name, tag = full.split(".")
        assert name in list_models()
        cfg = vitkit.pretrained.pretrained_tags(name)[tag]
        assert cfg["format"] in ("timm", "transformers", "torchvision")
        assert cfg.get("hf_hub_id") or cfg.get("url")


def test_cli_models_pretrained(capsys):
    from vitkit.cli import main

    assert main(["models", "--pretrained", "deit_tiny_patch16_224"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:2] == ["model.tag", "classes"]
    assert [line.split()[0] for line in out[1:]] == [
        "deit_tiny_patch16_224.fb_in1k",
        "deit_tiny_patch16_224.hf_fb_in1k",
    ]
    assert "hf://timm/deit_tiny_patch16_224.fb_in1k (timm)" in out[1] and "224x224" in out[1] and "0.9" in out[1]
    assert "hf://facebook/deit-tiny-patch16-224 (transformers)" in out[2]
    assert main(["models", "--pretrained", "mvit_base_16x4.*"]) == 0
    assert "mvit_v1_b-dbeb1030.pth (torchvision)" in capsys.readouterr().out
    assert main(["models", "--pretrained", "nosuch*"]) == 1
    assert "no pretrained weights match" in capsys.readouterr().err


def test_is_model_and_list_pretrained_as_timm():
    import timm

    for name in ("vit_small_patch16_224", "vit_small_patch16_224.augreg_in21k_ft_in1k", "swin_tiny_patch4_window7_224"):
        assert vitkit.is_model(name) and timm.is_model(name)
    assert not vitkit.is_model("not_a_model") and not vitkit.is_model("not_a_model.tag")
    tags = vitkit.list_pretrained("vit_small_patch16_224.*")
    assert tags and all(t.startswith("vit_small_patch16_224.") for t in tags)
    assert set(tags) == set(vitkit.list_models("vit_small_patch16_224.*", pretrained=True))
    # every timm tag of this architecture is known; the default tag comes first, as in timm's registry
    assert set(timm.list_pretrained("vit_small_patch16_224.*")) <= set(tags)
    assert tags[0] == "vit_small_patch16_224." + timm.models.get_pretrained_cfg("vit_small_patch16_224").tag

"""timm's model contract, run on vitkit's timm-named models.

The checks mirror timm's own `tests/test_models.py` (forward with gradient checkpointing, backward,
the default-cfg checks, `features_only`, `forward_intermediates`, torch.fx forward/backward with
timm's tracer settings, `torch.export`, `prune_intermediate_layers`), on tiny configurations of each
family (`create_model(name, depth=..., embed_dim=...)`). Where timm builds the same network, timm's
model is built from the same config, randomised, and its weights loaded into vitkit's (the
state-dict keys are shared): the same operations must then give the same shapes, feature metadata
and outputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

import vitkit
from vitkit.layers import to_2tuple
from vitkit.models.features import FeatureInfo, features_model

timm = pytest.importorskip("timm")

ATOL = RTOL = 1e-5


@dataclass(frozen=True)
class Case:
    name: str
    kw: dict  # vitkit create_model overrides
    timm_kw: dict | None = None  # the same network in timm (None: timm has no such model)
    std: bool = False  # timm's "standard" (spatial NCHW/NHWC forward_features) model, not in NON_STD_FILTERS
    extra: dict = field(default_factory=dict)


VIT = dict(embed_dim=32, depth=4, num_heads=2, img_size=64)
SWIN = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), img_size=64, window_size=4)
CASES = {
    "vit": Case("vit_tiny_patch16_224", VIT, VIT),
    "deit": Case("deit_tiny_patch16_224", VIT, VIT),
    "deit_distilled": Case("deit_tiny_distilled_patch16_224", VIT, VIT),
    # the R50 hybrid's ResNetV2 stem with fewer blocks per stage (timm's `_resnetv2(layers)`, see timm_model):
    # every block kind, at a fifth of the trace and export time; "hybrid_r50" below is the full stem (timm's
    # default cfg for this name has no classifier)
    "hybrid": Case(
        "vit_base_r50_s16_224",
        dict(VIT, num_classes=10, hybrid_layers=(1, 2, 1)),
        dict(VIT, num_classes=10),
        extra=dict(layers=(1, 2, 1)),
    ),
    "hybrid_r50": Case("vit_base_r50_s16_224", dict(VIT, num_classes=10), dict(VIT, num_classes=10)),
    "swin": Case("swin_tiny_patch4_window7_224", SWIN, SWIN, std=True),
    # timm's mixer_s16_224 fixes embed_dim and num_blocks: its builder takes the tiny sizes (see timm_model)
    "mixer": Case(
        "mixer_s16_224",
        dict(embed_dim=32, depth=4, img_size=64),
        dict(patch_size=16, embed_dim=32, num_blocks=4, img_size=64),
    ),
    "cvt": Case("cvt_13", dict(embed_dims=(16, 32, 48), depths=(1, 1, 1), num_heads=(1, 2, 3), img_size=64)),
}
FAMILIES = sorted(set(CASES) - {"hybrid_r50"})
TIMM_FAMILIES = [f for f in FAMILIES if CASES[f].timm_kw is not None]


def build(family: str, **kw) -> nn.Module:
    case = CASES[family]
    torch.manual_seed(0)
    model = vitkit.create_model(case.name, **{**case.kw, **kw})
    _randomise_zero_heads(model)
    return model.eval()


def _randomise_zero_heads(model: nn.Module) -> None:
    """vitkit zero-initialises some heads (ViT, Mixer, CvT): give every all-zero matrix random values so an
    output check cannot pass on zeros and gradients reach the body."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def input_size(model: nn.Module) -> tuple[int, int, int]:
    """timm's `_get_input_size`: the model's default cfg input size; these tiny configs override the
    image size, so it is the config's (the registered cfg's input_size describes the full-size weights)."""
    return (model.config.in_chans, *to_2tuple(model.config.img_size))


def images(model: nn.Module, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, *input_size(model), generator=torch.Generator().manual_seed(1))


def spatial_axes(fmt: str) -> tuple[tuple[int, int], int]:
    return ((1, 2), 3) if fmt == "NHWC" else ((2, 3), 1)


def check_feature_maps(outputs, channels, reductions, size, fmt: str, batch: int) -> None:
    """timm's features checks: one map per level, its channels, a spatial size within the reduction."""
    (sh, sw), c = spatial_axes(fmt)
    assert len(outputs) == len(channels)
    for e, r, o in zip(channels, reductions, outputs):
        assert o.shape[c] == e
        assert o.shape[sh] <= math.ceil(size[0] / r) + 1 and o.shape[sw] <= math.ceil(size[1] / r) + 1
        assert o.shape[0] == batch and not torch.isnan(o).any()


# ------------------------------------------------------------------------------ timm's checks
@pytest.mark.parametrize("family", FAMILIES)
def test_model_forward(family):
    model = build(family)
    x = images(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape[0] == 1 and not torch.isnan(out).any()
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_backward(family):
    model = build(family, num_classes=42).train()
    out = model(images(model, 2))
    if isinstance(out, tuple):
        out = torch.cat(out)
    out.mean().backward()
    assert out.shape[-1] == 42 and not torch.isnan(out).any()
    assert not [n for n, p in model.named_parameters() if p.grad is None]


@pytest.mark.parametrize("family", FAMILIES)
def test_model_default_cfgs(family):
    case = CASES[family]
    model = build(family)
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    cfg = model.default_cfg
    assert cfg is model.pretrained_cfg
    state = model.state_dict()
    x = images(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        pre = model.forward_head(feats, pre_logits=True)
        if case.std:  # timm's test_model_default_cfgs: spatial features at pool_size, in output_fmt
            (sh, sw), c = spatial_axes(model.output_fmt)
            reduction = model.feature_info[-1]["reduction"]
            pool = tuple(s // reduction for s in to_2tuple(model.config.img_size))
            assert (feats.shape[sh], feats.shape[sw]) == pool and feats.shape[c] == model.num_features
        else:  # test_model_default_cfgs_non_std: tokens (B, N, C)
            assert feats.ndim == 3 and feats.shape[-1] == model.num_features
        assert pre.shape[1] == model.head_hidden_size

        model.reset_classifier(0)
        assert model.num_classes == 0
        out = model(x)
        assert out.shape == pre.shape and out.shape[1] == model.head_hidden_size
        if case.std:
            model.reset_classifier(0, "")
            out = model(x)
            assert out.ndim == 4 and (out.shape[sh], out.shape[sw]) == pool
            out = build(family, num_classes=0, global_pool="")(x)
            assert out.ndim == 4 and (out.shape[sh], out.shape[sw]) == pool
        else:
            assert build(family, num_classes=0)(x).shape[-1] == model.num_features

    # the classifier and first conv the cfg names exist
    classifier = cfg.get("classifier")
    if classifier:
        for c in (classifier,) if isinstance(classifier, str) else classifier:
            assert c + ".weight" in state, c
    first_conv = cfg.get("first_conv")
    if first_conv:
        for c in (first_conv,) if isinstance(first_conv, str) else first_conv:
            assert c + ".weight" in state, c


@pytest.mark.parametrize("family", [f for f in FAMILIES if CASES[f].std or f == "cvt"])
def test_model_forward_features(family):
    """features_only with the family's default wrapper (hierarchical models: every stage)."""
    case = CASES[family]
    model = vitkit.create_model(case.name, features_only=True, **case.kw).eval()
    channels, reductions = model.feature_info.channels(), model.feature_info.reduction()
    assert len(channels) >= 3
    x = torch.randn(1, 3, *to_2tuple(case.kw["img_size"]))
    with torch.no_grad():
        out = model(x)
    check_feature_maps(out, channels, reductions, x.shape[-2:], model.output_fmt, 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_forward_intermediates_features(family):
    case = CASES[family]
    model = vitkit.create_model(case.name, features_only=True, feature_cls="getter", **case.kw).eval()
    assert model.output_fmt == "NCHW"
    # timm's feature models keep the model's cfg less its classifier fields (pretrained_cfg_for_features)
    assert (
        model.default_cfg is model.pretrained_cfg and model.pretrained_cfg["mean"] == model.model.pretrained_cfg["mean"]
    )
    assert not {"num_classes", "classifier", "global_pool"} & set(model.pretrained_cfg)
    assert timm.data.resolve_data_config(model=model)["input_size"] == model.model.pretrained_cfg["input_size"]
    x = torch.randn(1, 3, *to_2tuple(case.kw["img_size"]))
    with torch.no_grad():
        out = model(x)
    check_feature_maps(out, model.feature_info.channels(), model.feature_info.reduction(), x.shape[-2:], "NCHW", 1)


@pytest.mark.parametrize("family", FAMILIES)
def test_model_forward_intermediates(family):
    model = build(family)
    info = timm.models.FeatureInfo(model.feature_info, len(model.feature_info))  # timm's own class reads it
    ours = FeatureInfo(model.feature_info, len(model.feature_info))
    assert ours.get_dicts() == info.get_dicts()
    channels, reductions = info.channels(), info.reduction()
    assert len(channels) >= 3
    x = images(model)
    with torch.no_grad():
        output, intermediates = model.forward_intermediates(x, output_fmt="NCHW")
        check_feature_maps(intermediates, channels, reductions, x.shape[-2:], "NCHW", 1)
        assert torch.allclose(output, model.forward_features(x))
        model.set_grad_checkpointing()
        output3, _ = model.forward_intermediates(x, output_fmt="NCHW")
        assert torch.allclose(output, output3, rtol=1e-4, atol=1e-5)


def _fx_model(model: nn.Module, train: bool = False) -> nn.Module:
    """timm's `_create_fx_model`: torchvision's feature extractor with timm's leaf modules and functions."""
    from timm.models import get_notrace_functions, get_notrace_modules
    from torchvision.models.feature_extraction import (
        NodePathTracer,
        create_feature_extractor,
        get_graph_node_names,
    )

    tracer_kwargs = dict(
        leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(), param_shapes_constant=True
    )
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    eval_return_nodes, train_return_nodes = [eval_nodes[-1]], [train_nodes[-1]]
    if train:
        graph = NodePathTracer(**tracer_kwargs).trace(model)
        graph_nodes = list(reversed(graph.nodes))
        output_node_names = [n.name for n in graph_nodes[0]._input_nodes.keys()]
        graph_node_names = [n.name for n in graph_nodes]
        output_node_indices = [-graph_node_names.index(node_name) for node_name in output_node_names]
        train_return_nodes = [train_nodes[ix] for ix in output_node_indices]
    return create_feature_extractor(
        model, train_return_nodes=train_return_nodes, eval_return_nodes=eval_return_nodes, tracer_kwargs=tracer_kwargs
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_model_forward_fx(family):
    model = build(family)
    x = images(model)
    with torch.inference_mode():
        outputs = model(x)
        fx_outputs = torch.cat(tuple(_fx_model(model)(x).values()))
    assert torch.all(fx_outputs == outputs)
    assert outputs.shape[0] == 1 and not torch.isnan(outputs).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_model_backward_fx(family):
    model = build(family, num_classes=42).train()
    num_params = sum(p.numel() for p in model.parameters())
    fx = _fx_model(model, train=True)
    outputs = torch.cat(tuple(fx(images(model, 2)).values()))
    outputs.mean().backward()
    assert not [n for n, p in fx.named_parameters() if p.grad is None]
    assert sum(p.grad.numel() for p in fx.parameters()) == num_params
    assert outputs.shape[-1] == 42 and not torch.isnan(outputs).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_export(family):
    model = build(family)
    x = images(model, 2)
    with torch.no_grad():
        expected = model(x)
        exported = torch.export.export(model, (x,)).module()
        torch.testing.assert_close(exported(x), expected, atol=ATOL, rtol=RTOL)
        # the distilled model's train-mode pair (timm's set_distilled_training) exports too
    if family == "deit_distilled":
        model.set_distilled_training(True)
        model.train()
        with torch.no_grad():
            pair = torch.export.export(model, (x,)).module()(x)
            ref = model(x)
        assert isinstance(pair, tuple) and len(pair) == 2
        for a, b in zip(pair, ref):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_prune_intermediate_layers(family):
    model = build(family)
    x = images(model, 2)
    n = len(model.feature_info)
    with torch.no_grad():
        before = model.forward_intermediates(x, indices=[0, 1], intermediates_only=True)
        kept = model.prune_intermediate_layers([0, -(n - 1)], prune_norm=True)
        assert kept == [0, 1]
        assert model.num_classes == 0
        after = model.forward_intermediates(x, indices=kept, intermediates_only=True)
        for a, b in zip(after, before):
            torch.testing.assert_close(a, b, atol=0, rtol=0)
        out = model(x)  # no head, no pooling: the last kept level's raw output
    # (a distilled DeiT's head takes its two tokens whatever the pooling, as timm's)
    assert out.shape[0] == 2 and out.ndim == (2 if family == "deit_distilled" else 3 if not CASES[family].std else 4)


# ------------------------------------------------------------------------------ against timm
def timm_model(family: str, **kw) -> nn.Module:
    case = CASES[family]
    if family == "mixer":
        from timm.models.mlp_mixer import _create_mixer

        return _create_mixer(case.name, pretrained=False, **case.timm_kw, **kw)
    if "layers" in case.extra:  # timm's hybrid builder with a ResNetV2 of other stage depths
        from timm.models.vision_transformer_hybrid import _create_vision_transformer_hybrid, _resnetv2

        return _create_vision_transformer_hybrid(
            case.name, backbone=_resnetv2(case.extra["layers"]), pretrained=False, **case.timm_kw, **kw
        )
    return timm.create_model(case.name, pretrained=False, **case.timm_kw, **kw)


def timm_pair(family: str):
    """(timm model with random weights, vitkit model holding them)."""
    case = CASES[family]
    torch.manual_seed(0)
    ref = timm_model(family)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in ref.named_parameters():
            centre = 1.0 if (p.ndim == 1 and "norm" in n and n.endswith("weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "relative_position" in n else 0.05) + centre)
    ours = vitkit.create_model(case.name, **case.kw)
    missing, unexpected = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return ref.eval(), ours.eval()


@pytest.mark.parametrize("family", [*TIMM_FAMILIES, "hybrid_r50"])
def test_same_as_timm(family):
    ref, ours = timm_pair(family)
    x = torch.randn(2, *input_size(ours))
    assert (ours.num_features, ours.head_hidden_size) == (ref.num_features, ref.head_hidden_size)
    assert getattr(ours, "output_fmt", None) == getattr(ref, "output_fmt", None)
    assert [{k: d[k] for k in ("num_chs", "reduction", "module")} for d in ours.feature_info] == [
        {k: d[k] for k in ("num_chs", "reduction", "module")} for d in ref.feature_info
    ]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=ATOL, rtol=RTOL)
        final, inter = ours.forward_intermediates(x)
        final_ref, inter_ref = ref.forward_intermediates(x)
        torch.testing.assert_close(final, final_ref, atol=ATOL, rtol=RTOL)
        assert len(inter) == len(inter_ref)
        for a, b in zip(inter, inter_ref):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)
    if family == "deit_distilled":  # timm's default: one tensor in training too; both with the switch
        ref.train(), ours.train()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
            ref.set_distilled_training(True), ours.set_distilled_training(True)
            for a, b in zip(ours(x), ref(x)):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("feature_cls", [None, "getter"])
@pytest.mark.parametrize("family", TIMM_FAMILIES)
def test_features_only_same_as_timm(family, feature_cls):
    """`create_model(..., features_only=True)`: the same feature_info and maps (layout included) as timm's."""
    ref, ours = timm_pair(family)
    kw = {} if feature_cls is None else dict(feature_cls=feature_cls)
    ref_f = timm_model(family, features_only=True, **kw).eval()
    ref_f.load_state_dict(_feature_state(ref_f, ref))
    ours_f = features_model(ours, feature_cls=feature_cls)
    keys = ("num_chs", "reduction", "module")
    assert ours_f.feature_info.get_dicts(keys) == ref_f.feature_info.get_dicts(keys)
    assert ours_f.feature_info.out_indices == tuple(ref_f.feature_info.out_indices)
    ref_fmt = getattr(ref_f, "output_fmt", "NCHW")
    assert ours_f.output_fmt == getattr(ref_fmt, "value", ref_fmt)
    x = torch.randn(2, *input_size(ours))
    with torch.no_grad():
        got, want = ours_f(x), ref_f(x)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def _feature_state(feature_model: nn.Module, full: nn.Module) -> dict:
    """`full`'s weights under a timm feature model's keys (its list wrapper flattens `layers.0` to `layers_0`)."""
    state = full.state_dict()
    out = {}
    for k in feature_model.state_dict():
        src = k[len("model.") :] if k.startswith("model.") else k
        if src not in state:
            head, _, rest = src.partition(".")
            src = head.replace("_", ".", 1) + "." + rest if "_" in head else src
        out[k] = state[src]
    return out


@pytest.mark.parametrize("family", TIMM_FAMILIES)
def test_prune_same_as_timm(family):
    ours = build(family)
    n = len(ours.feature_info)
    x = torch.randn(2, *input_size(ours))
    for indices in (1, [0, -2]):
        ref_p, ours_p = timm_pair(family)
        kept_ref = ref_p.prune_intermediate_layers(indices, prune_norm=False)
        kept = ours_p.prune_intermediate_layers(indices, prune_norm=False)
        assert kept == list(kept_ref) and max(kept) < n
        assert (ours_p.num_classes, ours_p.num_features, ours_p.head_hidden_size) == (
            ref_p.num_classes,
            ref_p.num_features,
            ref_p.head_hidden_size,
        )
        with torch.no_grad():
            torch.testing.assert_close(ours_p(x), ref_p(x), atol=ATOL, rtol=RTOL)
            for a, b in zip(
                ours_p.forward_intermediates(x, indices=kept, intermediates_only=True),
                ref_p.forward_intermediates(x, indices=kept, intermediates_only=True),
            ):
                torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


@pytest.mark.parametrize("family", ["vit", "deit_distilled", "swin"])
def test_set_input_size_same_as_timm(family, tmp_path):
    ref, ours = timm_pair(family)
    new = (96, 80) if family != "swin" else (128, 128)
    ref.set_input_size(img_size=new)
    ours.set_input_size(img_size=new)
    assert to_2tuple(ours.config.img_size) == new
    x = torch.randn(2, 3, *new)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
    assert ours.pretrained_cfg["input_size"] == (3, *new)
    if family == "swin":  # an explicit window, the bias tables resampled by timm's rule
        ref.set_input_size(img_size=(64, 64), window_size=8)
        ours.set_input_size(img_size=(64, 64), window_size=8)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
        assert ours.pretrained_cfg["pool_size"] == (2, 2) and ours.config.window_size == 8
    else:  # another patch size: the projection resampled (FlexiViT's pseudo-inverse), as timm
        ref.set_input_size(img_size=(64, 64), patch_size=8)
        ours.set_input_size(img_size=(64, 64), patch_size=8)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(ours.patch_embed.proj.weight, ref.patch_embed.proj.weight, atol=1e-6, rtol=1e-5)
            torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
        assert ours.config.patch_size == 8 and ours.feature_info[0]["reduction"] == 8
    # the new size is the model's: it survives save_pretrained / from_pretrained
    ours.save_pretrained(tmp_path)
    again = vitkit.from_pretrained(tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x), atol=0, rtol=0)


def test_set_input_size_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="patch size"):
        build("hybrid").set_input_size(patch_size=8)
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        build("vit").set_input_size(patch_size=12)
    with pytest.raises(ValueError, match="patch size"):
        build("swin").set_input_size(patch_size=2)
    with pytest.raises(ValueError, match="always_partition"):
        build("swin").set_input_size(always_partition=True)
    with pytest.raises(ValueError, match="distilled model"):
        build("vit").set_distilled_training(True)


def test_features_model_arguments():
    model = build("swin")
    f = features_model(model, out_indices=(1, 3), output_fmt="NCHW")
    assert f.feature_info.out_indices == (1, 3) and f.feature_info.channels() == [32, 128]
    with torch.no_grad():
        out = f(torch.randn(1, 3, 64, 64))
    assert [tuple(o.shape) for o in out] == [(1, 32, 8, 8), (1, 128, 2, 2)]
    assert len(model.layers) == 4 and model.num_classes == 0  # nothing after stage 3 to prune, the head went
    vit = features_model(build("vit"), out_indices=2)
    assert vit.feature_info.out_indices == (2, 3) and len(vit.model.blocks) == 4
    with pytest.raises(ValueError, match="feature_cls"):
        features_model(build("vit"), feature_cls="hook")
    with pytest.raises(ValueError, match="out of range|cannot take"):
        features_model(build("vit"), out_indices=(7,))


def test_resnet_micro_features_prune_and_tracing():
    """The small CNN teachers (not timm names) follow the same interface: every stage as features."""
    model = vitkit.create_model("resnet_micro_32", features_only=True).eval()
    assert model.feature_info.channels() == [32, 64, 128] and model.feature_info.module_name() == [
        "stages.0",
        "stages.1",
        "stages.2",
    ]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
    check_feature_maps(out, model.feature_info.channels(), model.feature_info.reduction(), (32, 32), "NCHW", 2)
    cnn = vitkit.create_model("resnet_micro_32")
    _randomise_zero_heads(cnn)
    cnn.eval()
    with torch.inference_mode():
        expected = cnn(x)
        # timm's test_model_default_cfgs: the unpooled map has the cfg's pool_size
        assert tuple(cnn.forward_features(x).shape[-2:]) == cnn.pretrained_cfg["pool_size"] == (4, 4)
        assert torch.equal(torch.fx.symbolic_trace(cnn)(x), expected)
        torch.testing.assert_close(torch.export.export(cnn, (x,)).module()(x), expected, atol=ATOL, rtol=RTOL)
    assert cnn.prune_intermediate_layers([1]) == [1] and cnn.num_features == 64 and len(cnn.stages) == 2
    with torch.no_grad():
        assert cnn(x).shape == (2, 64, 8, 8)


def test_swin_window_ratio_same_as_timm():
    ref, ours = timm_pair("swin")
    ref.set_input_size(img_size=(96, 96), window_ratio=4)
    ours.set_input_size(img_size=(96, 96), window_ratio=4)
    assert ours.config.window_size == 6  # the 24x24 patch grid // 4
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="window_ratio"):
        ours.set_input_size(window_ratio=(2, 4))


def test_timm_factory_switches():
    """timm's create_model arguments beyond the config: exportable / no_jit build the same network (vitkit's
    layers are plain PyTorch), scriptable=True is refused by name, a falsy pretrained means no weights."""
    torch.manual_seed(0)
    plain = vitkit.create_model("vit_micro_patch4_28")
    torch.manual_seed(0)
    switched = vitkit.create_model("vit_micro_patch4_28", exportable=True, no_jit=True, scriptable=False, pretrained="")
    assert switched.config == plain.config
    for a, b in zip(plain.state_dict().values(), switched.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="scriptable=True.*TorchScript.*torch.export"):
        vitkit.create_model("vit_micro_patch4_28", scriptable=True)
    with pytest.raises(TypeError, match="pretrained must be False, True or the path"):
        vitkit.create_model("vit_micro_patch4_28", pretrained=1)
    # timm's PretrainedCfg object is a whole cfg, as in timm
    timm_cfg = timm.models.get_pretrained_cfg("vit_tiny_patch16_224.augreg_in21k")
    with torch.device("meta"):
        model = vitkit.create_model("vit_tiny_patch16_224", pretrained_cfg=timm_cfg)
    assert model.num_classes == 21843 and model.pretrained_cfg["hf_hub_id"] == "timm/vit_tiny_patch16_224.augreg_in21k"
    # a video model's spatio-temporal maps are not timm's 2-D features: said so, with what to use instead
    with pytest.raises(ValueError, match=r"mvit_micro_28 does not support features_only.*forward_intermediates"):
        vitkit.create_model("mvit_micro_28", features_only=True)


@pytest.mark.parametrize(
    "name", ["mvit_micro_28", "timesformer_micro_space_patch4_28", "vivit_micro_fdp_4x2_28", "vivit_micro_fsa_4x2_28"]
)
def test_video_models_trace_and_export(name):
    """The video models (no timm counterpart) trace with torch.fx and export as the image models do; these four
    regroup tokens by frame, the shape arithmetic fx cannot follow unless written as unflatten/flatten."""
    torch.manual_seed(0)
    model = vitkit.create_model(name)
    _randomise_zero_heads(model)
    model.eval()
    c, t = model.config.in_chans, model.config.num_frames
    x = torch.randn(2, c, t, *to_2tuple(model.config.img_size), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model(x)
        assert torch.equal(torch.fx.symbolic_trace(model)(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(torch.export.export(model, (x,)).module()(x), expected, atol=ATOL, rtol=RTOL)

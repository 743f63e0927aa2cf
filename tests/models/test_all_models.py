"""The registry-wide tiny-model harness: EVERY name in `vitkit.list_models()` honours the backbone contract.

For each registered name the model is built at a tiny size (its structural options kept: patch
size, window, distillation token, hybrid stem, input channels, frames) and checked for:

- forward: eval output (B, num_classes), finite; train-mode outputs finite;
- forward_features -> forward_head gives forward's output; `forward_head(pre_logits=True)` is
  (B, num_features);
- `num_classes=0` at construction and `reset_classifier(0)` give (B, num_features) (equal to the
  pre-logits); `reset_classifier(3)` gives (B, 3);
- gradients flow: every parameter gets a finite gradient in a training step;
- `save_pretrained` -> `from_pretrained`: same class/config/outputs/state dict (tests/models/contract.py);
- the state-dict keys are stable: two builds give the same keys in the same order;
- the full-size configuration builds (on the meta device, no memory) and, where a family test file
  tabulates the reference implementation's count (timm's or transformers' model of the paper's
  configuration), the count `vitkit models --params` prints equals it.

EXTENSION POINT (a new family adds itself here, one entry, and nothing else):

    TINY["myfamily"] = lambda name, cfg: Tiny(overrides=dict(embed_dim=16, depth=1, num_classes=NUM_CLASSES,
                                                               img_size=...),
                                              input_shape=None)   # or (C, T, H, W) for video models

`cfg` is the registered config of `name` (`get_model_spec(name).config`). `overrides` are
`create_model` keyword arguments that make the model tiny; keep `num_classes=NUM_CLASSES`.
`input_shape` is one sample's shape: None means an image (in_chans, *img_size) read from the built
model's config; video families give (C, T, H, W). `skip={"check": "why"}` opts out of a check
(one of CHECKS) with a reason that is printed. A family missing from TINY fails
`test_every_family_has_a_tiny_entry` with the instructions above.

Zero-initialised classifier heads (ViT's `head_zeroinit`) output zeros and send no gradient into
the body, which would make the output checks pass vacuously: every all-zero weight matrix gets
random values before the checks. Family-specific behaviour (parity with timm/HF, intermediates,
attention paths, checkpointing) stays in the family test files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn

from vitkit import create_model, list_models
from vitkit.layers import to_2tuple
from vitkit.models.vit import ViTConfig
from vitkit.registry import get_model_spec

from contract import check_save_roundtrip

B = 2
NUM_CLASSES = 5
CHECKS = ("forward", "features_head", "num_classes_0", "reset_classifier", "gradients", "roundtrip", "keys")


@dataclass(frozen=True)
class Tiny:
    overrides: dict
    input_shape: tuple[int, ...] | None = None  # one sample; None: (in_chans, *img_size) of the config
    skip: dict[str, str] = field(default_factory=dict)  # check -> reason


def _vit(name: str, cfg: dict) -> Tiny:
    kw = dict(embed_dim=32, depth=2, num_heads=2, num_classes=NUM_CLASSES)
    if cfg.get("hybrid_layers"):
        return Tiny(dict(kw, hybrid_layers=(1, 1, 1), img_size=(48, 32)))  # ResNet stride 16 -> 3x2 grid
    p = cfg.get("patch_size", ViTConfig.patch_size)
    return Tiny(dict(kw, img_size=(3 * p, 2 * p)))  # non-square: a swapped H/W shows up


def _swin(name: str, cfg: dict) -> Tiny:
    from vitkit.models.swin import SwinConfig

    p, m = cfg.get("patch_size", SwinConfig.patch_size), cfg.get("window_size", SwinConfig.window_size)
    return Tiny(
        dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), num_classes=NUM_CLASSES, img_size=(2 * m * p, 4 * m * p))
    )  # shifted windows along both axes in stage 1


def _cvt(name: str, cfg: dict) -> Tiny:
    r = math.prod(cfg.get("patch_strides", (4, 2, 2)))
    return Tiny(
        dict(
            embed_dims=(8, 16, 32),
            depths=(1, 1, 2),
            num_heads=(1, 2, 2),
            num_classes=NUM_CLASSES,
            img_size=(3 * r, 2 * r),
        )
    )


def _mixer(name: str, cfg: dict) -> Tiny:
    from vitkit.models.mixer import MixerConfig

    p = cfg.get("patch_size", MixerConfig.patch_size)
    return Tiny(dict(embed_dim=32, depth=2, num_classes=NUM_CLASSES, img_size=(3 * p, 2 * p)))


def _dvt(name: str, cfg: dict) -> Tiny:
    kw = dict(embed_dim=16, depth=1, num_heads=2, feature_reuse_dim=8, relation_reuse_hidden=8, num_classes=NUM_CLASSES)
    if cfg.get("stage_img_sizes"):  # DVT-DeiT: one patch size, the input resized per stage -> 2x2, 3x3, 4x4 tokens
        return Tiny(dict(kw, img_size=64, stage_img_sizes=(32, 48, 64)))
    return Tiny(dict(kw, img_size=(56, 28)))  # patches 7, 4, 2 -> 8x4, 14x7, 28x14 tokens (non-square)


def _video(name: str, cfg: dict) -> Tiny:
    """ViViT (tubelets), TimeSformer (one-frame patches), MViT (overlapping 3x7x7 patchify, stride 2x4x4):
    2 temporal positions of a non-square 3x2-patch grid (MViT: 8x4 tokens, one pooling stage)."""
    family, c = get_model_spec(name).family, cfg.get("in_chans", 3)
    if family == "vivit":
        t, h, w = cfg.get("tubelet_size", (2, 16, 16))
        kw = dict(embed_dim=16, depth=1, temporal_depth=1, num_heads=2, img_size=(3 * h, 2 * w), num_frames=2 * t)
        shape = (c, 2 * t, 3 * h, 2 * w)
    elif family == "timesformer":
        p = cfg.get("patch_size", 16)
        kw = dict(embed_dim=16, depth=1, num_heads=2, img_size=(3 * p, 2 * p), num_frames=2)
        shape = (c, 2, 3 * p, 2 * p)
    else:  # mvit
        kw = dict(embed_dim=8, depths=(1, 1), num_heads=1, stride_kv=(1, 2, 2), img_size=(32, 16), num_frames=4)
        shape = (c, 4, 32, 16)
    return Tiny(dict(kw, num_classes=NUM_CLASSES), input_shape=shape)


def _mae(name: str, cfg: dict) -> Tiny:
    """The MAE pre-training model (vitkit/models/mae.py): forward returns a loss dict, not logits, and
    masks at random, so only the build and the keys are checked here; tests/methods/test_mae.py covers
    gradients, save/load with fixed masking noise and the HF parity."""
    p = cfg.get("patch_size", 16)
    why = "a pre-training model (loss dict, random masking): tests/methods/test_mae.py"
    return Tiny(
        dict(
            embed_dim=32,
            depth=1,
            num_heads=2,
            decoder_embed_dim=16,
            decoder_depth=1,
            decoder_num_heads=2,
            img_size=(3 * p, 2 * p),
        ),
        skip={c: why for c in CHECKS if c != "keys"},
    )


# family -> tiny builder (see the module docstring: the extension point)
TINY: dict[str, Callable[[str, dict], Tiny]] = {
    "vit": _vit,
    "swin": _swin,
    "cvt": _cvt,
    "mixer": _mixer,
    "dvt": _dvt,
    "vivit": _video,
    "timesformer": _video,
    "mvit": _video,
    "mae": _mae,
    "cnn": lambda name, cfg: Tiny(
        dict(stem_width=8, widths=(16, 16, 32), group_width=8, num_classes=NUM_CLASSES, img_size=(24, 16))
    ),  # vitkit/models/cnn.py; 3x2 feature map
}

NAMES = list_models()
FAMILY_OF = {n: get_model_spec(n).family for n in NAMES}

HOW_TO_ADD = (
    "add an entry for the family to TINY in tests/models/test_all_models.py: "
    "TINY['{family}'] = lambda name, cfg: Tiny(overrides=dict(<tiny sizes>, num_classes=NUM_CLASSES), "
    "input_shape=None or (C, T, H, W)); see that file's docstring"
)


def test_every_family_has_a_tiny_entry():
    missing = sorted({f for f in FAMILY_OF.values() if f not in TINY})
    assert not missing, "\n".join(
        f"model family {f!r} ({sum(v == f for v in FAMILY_OF.values())} names, e.g. "
        f"{next(n for n in NAMES if FAMILY_OF[n] == f)}) has no tiny configuration: " + HOW_TO_ADD.format(family=f)
        for f in missing
    )


def _tiny(name: str) -> Tiny:
    family = FAMILY_OF[name]
    if family not in TINY:
        pytest.fail(f"{name}: family {family!r} is unknown to the harness; " + HOW_TO_ADD.format(family=family))
    return TINY[family](name, dict(get_model_spec(name).config))


def _randomise_zero_weights(model: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.copy_(0.5 * torch.randn(p.shape, generator=g))


def _build(name: str, tiny: Tiny, **kw) -> nn.Module:
    torch.manual_seed(0)
    model = create_model(name, **{**tiny.overrides, **kw})
    _randomise_zero_weights(model)
    return model.eval()


def _input(model: nn.Module, tiny: Tiny) -> torch.Tensor:
    shape = tiny.input_shape or (model.config.in_chans, *to_2tuple(model.config.img_size))
    return torch.randn(B, *shape, generator=torch.Generator().manual_seed(1))


def _tensors(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    return [t for o in out for t in _tensors(o)]  # DeiT train mode: a tuple; multi-exit models: a list


@pytest.mark.parametrize("name", NAMES)
def test_contract(name, tmp_path):
    tiny = _tiny(name)
    bad = set(tiny.skip) - set(CHECKS)
    assert not bad, f"unknown check(s) {bad} in skip; checks are {CHECKS}"
    model = _build(name, tiny)
    x = _input(model, tiny)
    run = [c for c in CHECKS if c not in tiny.skip]

    with torch.no_grad():
        out = model(x)
        if "forward" in run:
            assert isinstance(out, torch.Tensor) and out.shape == (B, NUM_CLASSES), f"eval output {type(out)}"
            assert torch.isfinite(out).all()
            assert model.num_classes == NUM_CLASSES
        if "features_head" in run:
            feats = model.forward_features(x)
            torch.testing.assert_close(model.forward_head(feats), out, atol=1e-5, rtol=1e-5)
            pre = model.forward_head(feats, pre_logits=True)
            assert pre.shape == (B, model.head_hidden_size)  # timm's name for the pre-logits width
        if "num_classes_0" in run:
            headless = _build(name, tiny, num_classes=0)
            y = headless(x)
            assert y.shape == (B, headless.num_features) and headless.num_classes == 0 and torch.isfinite(y).all()
        if "reset_classifier" in run:
            pre = model.forward_head(model.forward_features(x), pre_logits=True)
            model.reset_classifier(3)
            assert model(x).shape == (B, 3) and model.num_classes == 3
            model.reset_classifier(0)
            torch.testing.assert_close(model(x), pre)  # no head: the pooled features
            # a new head takes the model's dtype (and device) and its train/eval mode, as timm's
            model = _build(name, tiny).double()
            for training in (False, True):
                model.train(training)
                model.reset_classifier(4)
                assert {p.dtype for p in model.parameters()} == {torch.float64}
                assert all(m.training == training for m in model.modules()), f"train={training}"
            assert model.eval()(x.double()).shape == (B, 4)
            model = _build(name, tiny)

    if "gradients" in run:
        model.train()
        outs = _tensors(model(x))
        assert all(torch.isfinite(o).all() for o in outs)
        sum((o.float() ** 2).mean() for o in outs).backward()
        no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not no_grad, f"no gradient reaches {no_grad[:5]}{'...' if len(no_grad) > 5 else ''}"
        bad_grad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
        assert not bad_grad, f"non-finite gradients in {bad_grad[:5]}"
        assert sum(p.grad.abs().sum() for p in model.parameters() if p.grad is not None) > 0
        model.zero_grad(set_to_none=True)
        model.eval()

    if "roundtrip" in run:
        check_save_roundtrip(model, x, tmp_path, name)
    if "keys" in run:
        assert list(_build(name, tiny).state_dict()) == list(model.state_dict())


def _reference_counts() -> dict[str, int]:
    """The reference implementations' exact counts, as the family test files tabulate them."""
    import test_cvt
    import test_mixer
    import test_param_counts
    import test_swin

    return {**test_param_counts.REFERENCE, **test_swin.REFERENCE, **test_cvt.REFERENCE, **test_mixer.PAPER}


def test_full_size_configs_build_and_cli_counts_match_reference():
    from vitkit.cli.models import count_params_by_name  # what `vitkit models --params` prints

    ref = _reference_counts()
    assert set(ref) <= set(NAMES), f"reference names not registered: {sorted(set(ref) - set(NAMES))}"
    for name in NAMES:
        with torch.device("meta"):
            model = create_model(name)
        n = sum(p.numel() for p in model.parameters())
        assert n > 0 and model.model_name == name
        if name in ref:
            assert count_params_by_name(name) == n == ref[name], name

"""MLP-Mixer: exact parameter counts, outputs identical to timm after weight import, and the model
contract for every registered mixer_* name.

Contract tests build each name at a tiny size (width, depth, classes and image size overridden;
patch size and input channels kept) on a non-square 3x2 patch grid, so a swapped height/width or
a transposed token-mixing MLP shows up. Parity references are timm's MlpMixer, randomly built from
configs (no downloads), every parameter re-drawn (LayerNorms and the zero head included), with the
weights travelling through a real file and `create_model(pretrained=...)`.
"""

from __future__ import annotations

import logging
import re

import pytest
import torch
from torch import nn

from vitkit import CheckpointError, create_model, from_pretrained, list_models
from vitkit.layers import eager_attention, to_2tuple
from vitkit.models.mixer import MixerConfig, MlpMixer
from vitkit.registry import get_model_spec

from contract import check_grad_checkpointing, check_save_roundtrip, save_state

NAMES = list_models("mixer_*")
PAPER = {  # the paper's configurations, counted on timm 1.0.31's models, 1000-class head
    "mixer_s32_224": 19_104_624,
    "mixer_s16_224": 18_528_264,
    "mixer_b32_224": 60_293_428,
    "mixer_b16_224": 59_880_472,
    "mixer_l32_224": 206_939_264,  # timm's count, cross-checked below
    "mixer_l16_224": 208_196_168,
}
B = 2
NUM_CLASSES = 5
EMBED_DIM = 32
DEPTH = 2
ATOL = RTOL = 1e-4


def tiny_overrides(name: str) -> dict:
    p = get_model_spec(name).config.get("patch_size", MixerConfig.patch_size)
    return dict(embed_dim=EMBED_DIM, depth=DEPTH, num_classes=NUM_CLASSES, img_size=(3 * p, 2 * p))


def randomise_head(model: nn.Module) -> None:
    # The head is zero-initialised (timm and the paper): it would hide every output difference and
    # block every gradient into the body, so give it random weights.
    if isinstance(model.head, nn.Linear):
        with torch.no_grad():
            nn.init.normal_(model.head.weight, std=0.5)
            nn.init.normal_(model.head.bias, std=0.1)


def build(name: str, seed: int = 0, **kw) -> MlpMixer:
    torch.manual_seed(seed)
    model = create_model(name, **{**tiny_overrides(name), **kw})
    randomise_head(model)
    return model.eval()


def images(model, batch: int = B, size=None, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    h, w = size or to_2tuple(model.config.img_size)
    return torch.randn(batch, model.config.in_chans, h, w, generator=g)


def loss_of(out: torch.Tensor) -> torch.Tensor:
    return (out.float() ** 2).mean()


def block_outputs(model, x) -> list[torch.Tensor]:
    outs = []
    hooks = [b.register_forward_hook(lambda m, i, o: outs.append(o)) for b in model.blocks]
    try:
        with torch.no_grad():
            model.forward_features(x)
    finally:
        for h in hooks:
            h.remove()
    return outs


# ----------------------------------------------------------------------------- parameter counts
def count(name: str, **kw) -> int:
    with torch.device("meta"):
        model = create_model(name, **kw)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(PAPER))
def test_paper_param_counts(name):
    assert count(name) == PAPER[name]


@pytest.mark.parametrize("name", NAMES)
def test_closed_form(name):
    """stem p²·C_in·C + C; per layer: token MLP 2·N·D_S + D_S + N, channel MLP 2·C·D_C + D_C + C,
    two LNs 4C; final LN 2C; head C·K + K."""
    with torch.device("meta"):
        model = create_model(name)
    c = model.config
    C, K, p, n = c.embed_dim, c.num_classes, c.patch_size, model.stem.num_patches
    ds, dc = int(c.mlp_ratio[0] * C), int(c.mlp_ratio[1] * C)
    layer = 2 * n * ds + ds + n + 2 * C * dc + dc + C + 4 * C
    expected = p * p * c.in_chans * C + C + c.depth * layer + 2 * C + C * K + K
    assert sum(p.numel() for p in model.parameters()) == expected


def test_l32_count_is_timms():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ref = timm.create_model("mixer_l32_224")
    assert sum(p.numel() for p in ref.parameters()) == PAPER["mixer_l32_224"]


def test_registered_names_and_small_models():
    assert set(PAPER) <= set(NAMES)
    assert {"mixer_micro_patch4_28", "mixer_micro_patch4_32"} <= set(NAMES)
    assert 100_000 < count("mixer_micro_patch4_28") < 200_000
    m = create_model("mixer_micro_patch4_28")
    assert (m.config.in_chans, m.config.img_size, m.config.num_classes) == (1, 28, 10)
    assert m.pretrained_cfg["mean"] == (0.1307,)
    assert create_model("mixer_micro_patch4_32").pretrained_cfg["std"] == (0.2470, 0.2435, 0.2616)
    assert get_model_spec("mixer_b16_224").pretrained_cfg["mean"] == (0.5, 0.5, 0.5)  # timm's cfg


# ----------------------------------------------------------------------------- parity with timm
def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


def timm_tiny(**kw) -> nn.Module:
    timm_mixer = pytest.importorskip("timm.models.mlp_mixer")
    kw = dict(kw)
    kw["num_blocks"] = kw.pop("depth")
    return timm_mixer.MlpMixer(**kw)


TINY = dict(embed_dim=48, depth=2, num_classes=10)
CASES = {
    "p4_16": dict(img_size=16, patch_size=4),
    "p8_32": dict(img_size=32, patch_size=8),
    "p16_64": dict(img_size=64, patch_size=16),
    "nonsquare": dict(img_size=(32, 48), patch_size=8),
    "gray": dict(img_size=28, patch_size=4, in_chans=1),
    "mlp_ratio": dict(img_size=32, patch_size=8, mlp_ratio=(0.25, 2.0)),
    "no_pool": dict(img_size=32, patch_size=8, global_pool=""),
    "features_only": dict(img_size=32, patch_size=8, num_classes=0),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_timm_parity(case, fmt, tmp_path):
    kw = dict(TINY, **CASES[case])
    ref = randomise(timm_tiny(**kw))
    path = save_state(ref.state_dict(), tmp_path / f"w.{fmt}", fmt)
    ours = create_model("mixer_s16_224", pretrained=path, **kw).eval()
    x = torch.randn(2, kw.get("in_chans", 3), *to_2tuple(kw["img_size"]))
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(ours.forward_features(x), ref.forward_features(x), atol=ATOL, rtol=RTOL)


def test_forward_intermediates_parity(tmp_path):
    kw = dict(TINY, depth=3, img_size=(32, 48), patch_size=8)
    ref = randomise(timm_tiny(**kw))
    ours = create_model(
        "mixer_s16_224", pretrained=save_state(ref.state_dict(), tmp_path / "w.safetensors", "safetensors"), **kw
    ).eval()
    x = torch.randn(2, 3, 32, 48)
    with torch.no_grad():
        for kwargs in (
            dict(indices=2),
            dict(indices=[0, -1], norm=True),
            dict(indices=None, output_fmt="NLC"),
            dict(indices=[1], stop_early=True),
        ):
            final_ref, inter_ref = ref.forward_intermediates(x, **kwargs)
            final, inter = ours.forward_intermediates(x, **kwargs)
            torch.testing.assert_close(final, final_ref, atol=ATOL, rtol=RTOL)
            assert len(inter) == len(inter_ref)
            for a, b in zip(inter, inter_ref):
                assert a.shape == b.shape
                torch.testing.assert_close(a, b, atol=ATOL, rtol=RTOL)


def test_named_model_parity_s32(tmp_path):
    """A full-size named model: timm's and vitkit's mixer_s32_224 take the same weights."""
    timm = pytest.importorskip("timm")
    ref = randomise(timm.create_model("mixer_s32_224", pretrained=False))
    ours = create_model(
        "mixer_s32_224", pretrained=save_state(ref.state_dict(), tmp_path / "w.safetensors", "safetensors")
    )
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), ref(x), atol=ATOL, rtol=RTOL)


def test_init_matches_timm_scheme():
    """Same initialisation rules as timm: zero head, unit LNs, tiny MLP biases, zero stem bias,
    weight scales of Xavier-uniform / truncated LeCun-normal."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    ref = timm.create_model("mixer_s32_224", num_classes=10)
    ours = create_model("mixer_s32_224", num_classes=10)
    ref_sd, sd = ref.state_dict(), ours.state_dict()
    assert ref_sd.keys() == sd.keys()
    for k in sd:
        a, b = sd[k], ref_sd[k]
        if k.startswith("head.") or k.endswith(("norm1.bias", "norm2.bias", "norm.bias", "stem.proj.bias")):
            assert torch.count_nonzero(a) == 0 and torch.count_nonzero(b) == 0, k
        elif ".norm" in k or k.startswith("norm."):
            assert torch.all(a == 1) and torch.all(b == 1), k
        elif k.endswith(".bias"):
            assert a.abs().max() < 1e-4 and b.abs().max() < 1e-4, k
        else:
            assert a.std().item() == pytest.approx(b.std().item(), rel=0.05), k
            assert a.abs().max() <= b.abs().max() * 1.1 + 1e-3, k


# ----------------------------------------------------------------------------- every name
@pytest.mark.parametrize("name", NAMES)
def test_forward_shape_train_and_eval(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        out = model(x)
        assert out.shape == (B, NUM_CLASSES) and torch.isfinite(out).all()
        with eager_attention():  # no attention in a Mixer: the switch changes nothing
            torch.testing.assert_close(model(x), out, atol=0, rtol=0)
        model.train()
        torch.testing.assert_close(model(x), out)  # no dropout configured: train == eval


@pytest.mark.parametrize("name", NAMES)
def test_attributes(name):
    model = build(name)
    assert model.embed_dim == model.num_features == EMBED_DIM
    assert model.num_classes == NUM_CLASSES and model.num_prefix_tokens == 0
    assert model.model_name == name
    assert model.patch_embed is model.stem and model.stem.grid_size == (3, 2)
    assert not any(k.startswith("patch_embed.") for k in model.state_dict())  # alias, not a 2nd module
    assert len(model.blocks) == DEPTH
    tok = model.blocks[0].mlp_tokens
    assert (tok.fc1.in_features, tok.fc1.out_features) == (6, EMBED_DIM // 2)  # over the 6 positions
    assert model.blocks[0].mlp_channels.fc1.out_features == 4 * EMBED_DIM
    assert model.get_classifier() is model.head
    assert model.no_weight_decay() == set()


@pytest.mark.parametrize("name", NAMES)
def test_every_parameter_gets_a_gradient(name):
    model = build(name)
    loss_of(model(images(model))).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, f"{n}: zero or non-finite gradient"


@pytest.mark.parametrize("name", NAMES)
def test_grad_checkpointing_same_outputs_and_gradients(name, monkeypatch):
    import vitkit.models._base as base_mod  # Backbone._checkpointed runs the blocks

    model = build(name).train()
    check_grad_checkpointing(model, images(model), base_mod, monkeypatch, expected_calls=DEPTH, loss_fn=loss_of)


@pytest.mark.parametrize("name", NAMES)
def test_save_pretrained_roundtrip(name, tmp_path):
    model = build(name, mlp_ratio=0.75)  # float -> pair; tuples come back from JSON as lists
    loaded = check_save_roundtrip(model, images(model), tmp_path, name)
    assert loaded.config.mlp_ratio == (0.75, 0.75)


@pytest.mark.parametrize("name", NAMES)
def test_forward_intermediates_contract(name):
    model = build(name)
    x = images(model)
    ref = block_outputs(model, x)
    h, w = model.stem.grid_size
    with torch.no_grad():
        final, inter = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(inter) == DEPTH
        for y, r in zip(inter, ref):
            assert y.shape == (B, EMBED_DIM, h, w)
            torch.testing.assert_close(y, r.reshape(B, h, w, -1).permute(0, 3, 1, 2))
        nlc = model.forward_intermediates(x, indices=[-1, 0], output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(nlc[0], ref[0])
        torch.testing.assert_close(nlc[1], ref[-1])
        normed = model.forward_intermediates(x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True)
        torch.testing.assert_close(normed[0], model.forward_features(x))
        ((spatial, prefix),) = model.forward_intermediates(
            x, indices=1, return_prefix_tokens=True, intermediates_only=True
        )
        assert spatial.shape == (B, EMBED_DIM, h, w) and prefix.shape == (B, 0, EMBED_DIM)
        for bad in (DEPTH + 1, 0, [DEPTH], [-DEPTH - 1], []):
            with pytest.raises(ValueError, match="blocks"):
                model.forward_intermediates(x, indices=bad)
        with pytest.raises(ValueError, match="output_fmt"):
            model.forward_intermediates(x, output_fmt="NHWC")

    ran = []
    hooks = [b.register_forward_hook(lambda m, i, o, j=j: ran.append(j)) for j, b in enumerate(model.blocks)]
    with torch.no_grad():
        early = model.forward_intermediates(x, indices=[0], stop_early=True, intermediates_only=True)
    for hk in hooks:
        hk.remove()
    assert ran == [0], "stop_early ran blocks after the last one requested"
    torch.testing.assert_close(early[0], inter[0])


@pytest.mark.parametrize("name", NAMES)
def test_forward_head_and_reset_classifier(name):
    model = build(name)
    x = images(model)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (B, 6, EMBED_DIM)
        pre = model.forward_head(feats, pre_logits=True)
        torch.testing.assert_close(pre, feats.mean(1))
        model.reset_classifier(3)
        assert model.num_classes == model.config.num_classes == 3
        out = model(x)
        assert out.shape == (B, 3) and torch.count_nonzero(out) == 0  # fresh head: zeros
        model.reset_classifier(0)
        assert isinstance(model.head, nn.Identity)
        torch.testing.assert_close(model(x), pre)
        model.reset_classifier(0, global_pool="")
        assert model(x).shape == (B, 6, EMBED_DIM)
    with pytest.raises(ValueError, match="global_pool"):
        model.reset_classifier(3, global_pool="token")


@pytest.mark.parametrize("name", NAMES)
def test_group_matcher(name):
    model = build(name)
    for coarse in (False, True):
        gm = model.group_matcher(coarse=coarse)
        patterns = [gm["stem"]] + [p for p, _ in gm["blocks"]]
        for n, _ in model.named_parameters():
            if n.startswith("head."):
                continue  # unmatched: timm puts it in the last group
            assert any(re.match(p, n) for p in patterns), f"{n} matched by no group"
            if n.startswith("blocks."):
                i = re.match(r"^blocks\.(\d+)", n).group(1)
                assert re.match(gm["blocks"][0][0], n).groups() == (i,)


def test_group_matcher_with_timm_grouping():
    pytest.importorskip("timm")
    from timm.models._manipulate import group_with_matcher

    model = build("mixer_s16_224")
    layer_of = group_with_matcher(model.named_parameters(), model.group_matcher(), reverse=True)
    assert layer_of["stem.proj.weight"] == 0
    assert [layer_of[f"blocks.{i}.norm1.weight"] for i in range(DEPTH)] == list(range(1, DEPTH + 1))
    assert layer_of["norm.weight"] == DEPTH and layer_of["head.weight"] == DEPTH + 1


@pytest.mark.parametrize("name", NAMES)
def test_wrong_input_size_is_a_clear_error(name):
    model = build(name)
    p = model.stem.patch_size[0]
    for size in ((2 * p, 3 * p), (4 * p, 2 * p)):  # transposed grid; more patches
        with pytest.raises(ValueError, match=r"(?s)does not match.*token-mixing.*per patch position"):
            model(images(model, size=size))
        with pytest.raises(ValueError, match="token-mixing"):
            model.forward_intermediates(images(model, size=size))
    other = 3 if model.config.in_chans == 1 else 1
    with pytest.raises(ValueError, match=f"in_chans={other}"):
        model(torch.randn(B, other, 3 * p, 2 * p))


# ----------------------------------------------------------------------------- loading
def test_num_classes_mismatch_reinitialises_head(tmp_path, caplog):
    src = build("mixer_micro_patch4_28")
    src.save_pretrained(tmp_path / "m")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        model = from_pretrained(tmp_path / "m", num_classes=3)
    assert model.head.out_features == 3 and torch.count_nonzero(model.head.weight) == 0
    assert any("head" in r.getMessage() and "re-initialised" in r.getMessage() for r in caplog.records)
    sd, src_sd = model.state_dict(), src.state_dict()
    assert all(torch.equal(sd[k], src_sd[k]) for k in sd if not k.startswith("head."))

    # a timm-keyed file through create_model, and a feature checkpoint without a head
    path = save_state(src.state_dict(), tmp_path / "w.safetensors", "safetensors")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        create_model(
            "mixer_micro_patch4_28", pretrained=path, embed_dim=EMBED_DIM, depth=DEPTH, num_classes=7, img_size=(12, 8)
        )
    assert any("re-initialised" in r.getMessage() for r in caplog.records)
    no_head = save_state(
        {k: v for k, v in src.state_dict().items() if not k.startswith("head.")},
        tmp_path / "f.safetensors",
        "safetensors",
    )
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        create_model("mixer_micro_patch4_28", pretrained=no_head, **tiny_overrides("mixer_micro_patch4_28"))
    assert any("has no head" in r.getMessage() for r in caplog.records)
    feats = create_model(
        "mixer_micro_patch4_28", pretrained=path, **{**tiny_overrides("mixer_micro_patch4_28"), "num_classes": 0}
    )
    assert isinstance(feats.head, nn.Identity)


def test_checkpoint_for_another_img_size_is_refused(tmp_path):
    src = build("mixer_micro_patch4_28", img_size=16)  # 4x4 grid
    path = save_state(src.state_dict(), tmp_path / "w.safetensors", "safetensors")
    with pytest.raises(CheckpointError, match=r"(?s)16 patches.*img_size=16.*per patch position"):
        create_model("mixer_micro_patch4_28", pretrained=path, **tiny_overrides("mixer_micro_patch4_28"))


def test_another_architecture_is_reported(tmp_path):
    vit = create_model("vit_micro_patch4_28")
    path = save_state(vit.state_dict(), tmp_path / "vit.safetensors", "safetensors")
    with pytest.raises(CheckpointError, match="another architecture"):
        create_model("mixer_micro_patch4_28", pretrained=path)


# ----------------------------------------------------------------------------- options
def test_config_validation():
    with pytest.raises(ValueError, match="global_pool"):
        build("mixer_s16_224", global_pool="token")
    with pytest.raises(ValueError, match="mlp_ratio"):
        build("mixer_s16_224", mlp_ratio=(0.5, 4.0, 1.0))
    assert build("mixer_s16_224", mlp_ratio=[0.5, 2.0]).config.mlp_ratio == (0.5, 2.0)
    with pytest.raises(ValueError, match=r"unknown MixerConfig field\(s\) \['num_heads'\]"):
        build("mixer_s16_224", num_heads=4)


def test_drop_path_same_rate_every_block_train_random_eval_deterministic():
    model = build("mixer_s16_224", drop_path_rate=0.5, depth=3)
    assert [b.drop_path.drop_prob for b in model.blocks] == [0.5, 0.5, 0.5]  # timm: uniform
    x = images(model, batch=8)
    with torch.no_grad():
        ev = model(x)
        torch.testing.assert_close(model(x), ev, atol=0, rtol=0)
        model.train()
        torch.manual_seed(0)
        tr1, tr2 = model(x), model(x)
    assert not torch.allclose(tr1, ev) and not torch.allclose(tr1, tr2)

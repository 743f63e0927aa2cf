"""Hugging Face Swin -> vitkit: outputs identical to a randomly initialised HF model (every parameter
re-drawn) after `vitkit.from_pretrained(dir)`, at the configured size and at sizes that need
padding to the window grid (HF pads as the official detection code, so does vitkit), and above and
below the configured size, where HF shrinks windows per input (`window_rule="hf"`)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import vitkit

transformers = pytest.importorskip("transformers")

ATOL = RTOL = 1e-4
CFG = dict(
    image_size=32,
    patch_size=2,
    num_channels=3,
    embed_dim=16,
    depths=[2, 2],
    num_heads=[2, 4],
    window_size=4,
    num_labels=5,
    drop_path_rate=0.0,
)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            centre = 1.0 if (p.ndim == 1 and ("norm" in n or "layernorm" in n) and n.endswith("weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if "relative_position" in n else 0.05) + centre)
    return model.eval()


def hf_model(cls_name: str = "SwinForImageClassification", **kw):
    config = transformers.SwinConfig(**{**CFG, **kw})
    return randomise(getattr(transformers, cls_name)(config))


def hf_out(ref, x):
    out = ref(pixel_values=x)
    return out.logits if hasattr(out, "logits") else out.pooler_output


def test_hf_classifier_parity_any_size(tmp_path):
    ref = hf_model()
    ref.save_pretrained(tmp_path)
    ours = vitkit.from_pretrained(tmp_path)
    assert ours.family == "swin" and ours.config.num_classes == 5
    with torch.no_grad():
        for hw in [(32, 32), (30, 30), (36, 44), (18, 50), (33, 31)]:
            x = torch.randn(2, 3, *hw)
            torch.testing.assert_close(ours(x), hf_out(ref, x), atol=ATOL, rtol=RTOL, msg=str(hw))


def test_hf_base_model_and_transformers4_key_names(tmp_path):
    """A bare SwinModel saved with the transformers-4 key names of the hub checkpoints
    (`attention.self.query`, `intermediate.dense`, persistent `relative_position_index`)."""
    ref = hf_model("SwinModel")
    state = {}
    names = {"q": "query", "k": "key", "v": "value"}
    for k, v in ref.state_dict().items():
        k = re.sub(r"attention\.([qkv])_proj", lambda m: "attention.self." + names[m.group(1)], k)
        k = k.replace("attention.o_proj", "attention.output.dense").replace("mlp.fc1", "intermediate.dense")
        k = k.replace("mlp.fc2", "output.dense")
        k = k.replace(
            "attention.relative_position_bias.relative_position_bias_table",
            "attention.self.relative_position_bias_table",
        )
        state[k] = v
    state["encoder.layers.0.blocks.0.attention.self.relative_position_index"] = torch.zeros(16, 16, dtype=torch.long)
    torch.save(state, tmp_path / "pytorch_model.bin")
    cfg = dict(CFG, model_type="swin", architectures=["SwinModel"])
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    ours = vitkit.from_pretrained(tmp_path)
    assert ours.config.num_classes == 0
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), hf_out(ref, x), atol=ATOL, rtol=RTOL)
        hidden = ref(pixel_values=x).last_hidden_state  # (B, N, C), final LayerNorm applied
        torch.testing.assert_close(ours.forward_features(x).flatten(1, 2), hidden, atol=ATOL, rtol=RTOL)


def test_hf_absolute_embeddings_refused(tmp_path):
    ref = hf_model(use_absolute_embeddings=True)
    ref.save_pretrained(tmp_path)
    with pytest.raises(vitkit.CheckpointError, match="use_absolute_embeddings"):
        vitkit.from_pretrained(tmp_path)


# A third stage whose 4x4 grid at the configured 32x32 equals the window: HF and timm both run it
# unshifted there, but HF decides per forward pass (an 8x8 grid at 64x64 gets its shifted windows
# back) where timm fixes it at build time.
DEEP = dict(depths=[2, 2, 2], num_heads=[2, 4, 8])
# above and below the configured 32x32; 28x28 pads stage 2 (7 -> 8); (30, 70) is non-square
WINDOW_RULE_SIZES = [(32, 32), (64, 64), (48, 40), (28, 28), (30, 70)]


def fresh_hf(state, **kw):
    """A new HF model holding `state`: HF's SwinLayer keeps a window it shrank for one input size for
    every later call, so each size gets a model that has not run yet (its documented per-input rule)."""
    model = hf_model(**kw)
    model.load_state_dict(state)
    return model


def test_hf_window_rule_follows_each_input(tmp_path):
    ref = hf_model(**DEEP)
    ref.save_pretrained(tmp_path)
    ours = vitkit.from_pretrained(tmp_path)
    assert ours.config.window_rule == "hf"
    state = ref.state_dict()
    with torch.no_grad():
        for hw in WINDOW_RULE_SIZES:
            x = torch.randn(2, 3, *hw)
            torch.testing.assert_close(ours(x), hf_out(fresh_hf(state, **DEEP), x), atol=1e-5, rtol=1e-5, msg=str(hw))


def test_timm_window_rule_differs_from_hf_above_the_configured_size(tmp_path):
    """The same weights under timm's build-time rule: equal at the configured size, not at 64x64 (the
    third stage stays unshifted) -- the difference the 'hf' rule exists for."""
    ref = hf_model(**DEEP)
    ref.save_pretrained(tmp_path)
    hf_rule = vitkit.from_pretrained(tmp_path)
    timm_rule = vitkit.create_model("swin_micro_patch2_window4_32", **{**hf_rule.config_dict(), "window_rule": "timm"})
    timm_rule.load_state_dict(hf_rule.state_dict())
    timm_rule.eval()
    state = ref.state_dict()
    with torch.no_grad():
        x = torch.randn(2, 3, 32, 32)
        torch.testing.assert_close(timm_rule(x), hf_rule(x), atol=1e-6, rtol=1e-6)
        x = torch.randn(2, 3, 64, 64)
        assert (timm_rule(x) - hf_out(fresh_hf(state, **DEEP), x)).abs().max() > 1e-3
        torch.testing.assert_close(hf_rule(x), hf_out(fresh_hf(state, **DEEP), x), atol=1e-5, rtol=1e-5)


def test_hf_window_rule_survives_save_pretrained(tmp_path):
    ref = hf_model(**DEEP)
    ref.save_pretrained(tmp_path / "hf")
    ours = vitkit.from_pretrained(tmp_path / "hf")
    ours.save_pretrained(tmp_path / "ours")
    again = vitkit.from_pretrained(tmp_path / "ours")
    assert again.config.window_rule == "hf"
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again(x), ours(x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="window_rule must be"):
        vitkit.create_model("swin_micro_patch2_window4_32", window_rule="official")


def test_hf_state_dict_file_without_config(tmp_path):
    """A bare HF Swin weights file (no config.json) is recognised by its key names and converted as Swin."""
    from safetensors.torch import save_file

    from vitkit.hub import load_pretrained

    ref = hf_model()
    ref.save_pretrained(tmp_path / "dir")
    architecture = vitkit.from_pretrained(tmp_path / "dir")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "weights.safetensors"))
    fresh = type(architecture)(architecture.config).eval()
    load_pretrained(fresh, tmp_path / "weights.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), hf_out(ref, x), atol=ATOL, rtol=RTOL)

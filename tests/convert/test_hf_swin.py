"""Hugging Face Swin -> vitkit: outputs identical to a randomly initialised HF model (every parameter
re-drawn) after `vitkit.from_pretrained(dir)`, at the configured size and at sizes that need
padding to the window grid (HF pads as the official detection code, so does vitkit)."""

from __future__ import annotations

import json
import re

import pytest
import torch

import vitkit

transformers = pytest.importorskip("transformers")

ATOL = RTOL = 1e-4
CFG = dict(image_size=32, patch_size=2, num_channels=3, embed_dim=16, depths=[2, 2], num_heads=[2, 4],
           window_size=4, num_labels=5, drop_path_rate=0.0)


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
    for k, v in ref.state_dict().items():
        names = {"q": "query", "k": "key", "v": "value"}
        k = re.sub(r"attention\.([qkv])_proj", lambda m: "attention.self." + names[m.group(1)], k)
        k = k.replace("attention.o_proj", "attention.output.dense").replace("mlp.fc1", "intermediate.dense")
        k = k.replace("mlp.fc2", "output.dense")
        k = k.replace("attention.relative_position_bias.relative_position_bias_table",
                      "attention.self.relative_position_bias_table")
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

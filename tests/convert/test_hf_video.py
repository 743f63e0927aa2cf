"""Hugging Face ViViT and TimeSformer -> vitkit: after `vitkit.from_pretrained(dir)` of a saved,
randomly initialised HF model (every parameter re-drawn, so no zero-initialised tensor hides a
wrong mapping), the logits equal HF's to 1e-4. HF takes (B, T, C, H, W), vitkit (B, C, T, H, W)."""

from __future__ import annotations

import json

import pytest
import torch

import vitkit

transformers = pytest.importorskip("transformers")

ATOL = RTOL = 1e-4
VIVIT = dict(
    image_size=16,
    num_frames=4,
    tubelet_size=[2, 4, 4],
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    num_labels=5,
)
TIMESFORMER = dict(
    image_size=16,
    num_frames=4,
    patch_size=4,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    num_labels=5,
)


def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            centre = 1.0 if (p.ndim == 1 and "norm" in n and n.endswith("weight")) else 0.0
            p.copy_(torch.randn(p.shape, generator=g) * 0.1 + centre)
    return model.eval()


def clips(seed: int = 1, frames: int = 4) -> torch.Tensor:
    return torch.randn(2, frames, 3, 16, 16, generator=torch.Generator().manual_seed(seed))  # HF layout


def test_vivit_parity(tmp_path):
    ref = randomise(transformers.VivitForVideoClassification(transformers.VivitConfig(**VIVIT)))
    ref.save_pretrained(tmp_path)
    ours = vitkit.from_pretrained(tmp_path)
    assert ours.family == "vivit" and ours.config.attention_type == "spatio_temporal"
    assert ours.config.act == "gelu_tanh" and ours.config.num_classes == 5
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = clips()
    with torch.no_grad():
        torch.testing.assert_close(ours(x.transpose(1, 2)), ref(pixel_values=x).logits, atol=ATOL, rtol=RTOL)
        hidden = ref.vivit(pixel_values=x).last_hidden_state
        torch.testing.assert_close(ours.forward_features(x.transpose(1, 2)), hidden, atol=ATOL, rtol=RTOL)


def test_vivit_transformers5_names_and_bare_model(tmp_path):
    """A bare VivitModel (with its pooler, which is dropped) saved as `torch.save(state_dict())`,
    i.e. with transformers 5's module names (`layers.{i}.attention.q_proj`)."""
    ref = randomise(transformers.VivitModel(transformers.VivitConfig(**VIVIT)))
    assert any(".q_proj." in k for k in ref.state_dict())
    torch.save(ref.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "config.json").write_text(json.dumps({**ref.config.to_dict(), "architectures": ["VivitModel"]}))
    ours = vitkit.from_pretrained(tmp_path)
    assert ours.num_classes == 0
    x = clips()
    with torch.no_grad():
        torch.testing.assert_close(
            ours.forward_features(x.transpose(1, 2)), ref(pixel_values=x).last_hidden_state, atol=ATOL, rtol=RTOL
        )


@pytest.mark.parametrize("attention_type", ["divided_space_time", "joint_space_time"])
def test_timesformer_parity(tmp_path, attention_type):
    cfg = transformers.TimesformerConfig(**TIMESFORMER, attention_type=attention_type)
    ref = randomise(transformers.TimesformerForVideoClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = vitkit.from_pretrained(tmp_path)
    assert ours.family == "timesformer" and ours.config.attention_type == attention_type
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
    x = clips()
    with torch.no_grad():
        torch.testing.assert_close(ours(x.transpose(1, 2)), ref(pixel_values=x).logits, atol=ATOL, rtol=RTOL)


def test_timesformer_space_only_matches_hf_per_frame_average(tmp_path):
    """HF's space-only model classifies every frame ((B*T, K) logits); the reference code (and
    vitkit) average the frames' tokens before the final LN. Equal through the last block."""
    cfg = transformers.TimesformerConfig(**TIMESFORMER, attention_type="space_only")
    ref = randomise(transformers.TimesformerForVideoClassification(cfg))
    ref.save_pretrained(tmp_path)
    ours = vitkit.from_pretrained(tmp_path)
    x = clips()
    with torch.no_grad():
        hf_tokens = ref.timesformer.encoder(ref.timesformer.embeddings(x)).last_hidden_state  # (B*T, 1 + S, D)
        expected = ref.timesformer.layernorm(hf_tokens.reshape(2, 4, *hf_tokens.shape[1:]).mean(1))
        torch.testing.assert_close(ours.forward_features(x.transpose(1, 2)), expected, atol=ATOL, rtol=RTOL)


def test_unsupported_architecture_is_named(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "vivit", "architectures": ["VivitForSomething"]}))
    from safetensors.torch import save_file

    save_file({"classifier.weight": torch.zeros(2, 4)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match="VivitForSomething"):
        vitkit.from_pretrained(tmp_path)

"""Hugging Face transformers ViT/DeiT checkpoints load into vitkit and compute the same function.

Every test builds a tiny random HF model, randomises all of its parameters (LayerNorms included,
so a swapped or transposed mapping changes the output), saves it with `save_pretrained` and loads
it back through vitkit. Offline, CPU, tiny configs."""

from __future__ import annotations

import json

import pytest
import torch

import vitkit
from vitkit import CheckpointError
from vitkit.convert.hf import config_from_hf, convert_hf_state_dict, looks_like_hf

transformers = pytest.importorskip("transformers")

ATOL = dict(atol=1e-4, rtol=1e-4)
TINY = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=128,
    image_size=32,
    patch_size=8,
    num_labels=5,
)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if "layernorm" in name and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            elif "position_embeddings" in name or name.endswith(("cls_token", "distillation_token")):
                p.copy_(0.5 * noise)  # large, so that resampling differences are visible
            else:
                p.copy_(0.05 * noise)
    return model.eval()


def _hf_model(cls_name: str, tmp_path, seed: int = 0, config_cls=None, init_kwargs=None, **config):
    config_cls = config_cls or (transformers.DeiTConfig if cls_name.startswith("DeiT") else transformers.ViTConfig)
    hf = _randomise(getattr(transformers, cls_name)(config_cls(**dict(TINY, **config)), **(init_kwargs or {})), seed)
    directory = tmp_path / cls_name
    hf.save_pretrained(directory)
    return hf, directory


def _images(hf, batch: int = 2, size=None) -> torch.Tensor:
    c = hf.config
    h, w = size or ((c.image_size, c.image_size) if isinstance(c.image_size, int) else c.image_size)
    return torch.randn(batch, c.num_channels, h, w, generator=torch.Generator().manual_seed(1))


# ------------------------------------------------------------------------------------ ViTMSN
def test_vit_msn_model(tmp_path):
    """`ViTMSNModel` (facebook/vit-msn-*): a ViT without pooler; LayerNorm eps 1e-6 from its config."""
    hf, directory = _hf_model("ViTMSNModel", tmp_path, config_cls=transformers.ViTMSNConfig)
    model = vitkit.from_pretrained(directory)
    assert model.num_classes == 0 and model.config.representation_size is None
    assert model.config.norm_eps == hf.config.layer_norm_eps == 1e-6
    x = _images(hf)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), hf(pixel_values=x).last_hidden_state, **ATOL)


def test_vit_msn_for_image_classification(tmp_path):
    """transformers 5's `save_pretrained` writes this classifier's encoder layers without the `vit.` prefix
    and its embeddings with it; its in-memory state dict (transformers 5's module names) has the prefix on
    every key. Both load, and the logits are HF's."""
    hf, directory = _hf_model("ViTMSNForImageClassification", tmp_path, config_cls=transformers.ViTMSNConfig)
    model = vitkit.from_pretrained(directory)
    assert model.num_classes == 5
    x = _images(hf)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, **ATOL)
    prefixed = hf.state_dict()
    assert all(k.startswith(("vit.", "classifier.")) for k in prefixed)
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in prefixed.items()}, str(directory / "model.safetensors"))
    with torch.no_grad():
        torch.testing.assert_close(vitkit.from_pretrained(directory)(x), hf(pixel_values=x).logits, **ATOL)


# ------------------------------------------------------------------------------------ ViT
@pytest.mark.parametrize(
    "config",
    [
        {},
        dict(qkv_bias=False),
        dict(hidden_act="gelu_new"),
        dict(num_channels=1),
        dict(image_size=(32, 48)),  # HF takes a (height, width) pair
        dict(layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
    ],
    ids=["default", "no_qkv_bias", "gelu_new", "grayscale", "non_square", "eps1e-6"],
)
def test_vit_for_image_classification(tmp_path, config):
    hf, directory = _hf_model("ViTForImageClassification", tmp_path, **config)
    model = vitkit.from_pretrained(directory)
    assert not model.training
    assert model.num_classes == 5 and model.config.norm_eps == hf.config.layer_norm_eps
    x = _images(hf)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, **ATOL)


def test_vit_model_pooler_is_pre_logits(tmp_path):
    hf, directory = _hf_model("ViTModel", tmp_path)
    model = vitkit.from_pretrained(directory)
    assert model.num_classes == 0 and model.config.representation_size == 64
    x = _images(hf)
    with torch.no_grad():
        out = hf(pixel_values=x)
        feats = model.forward_features(x)
        torch.testing.assert_close(feats, out.last_hidden_state, **ATOL)
        torch.testing.assert_close(model.forward_head(feats, pre_logits=True), out.pooler_output, **ATOL)
        torch.testing.assert_close(model(x), out.pooler_output, **ATOL)


def test_vit_model_without_pooler(tmp_path):
    hf, directory = _hf_model("ViTModel", tmp_path, init_kwargs=dict(add_pooling_layer=False))
    model = vitkit.from_pretrained(directory)
    assert model.num_classes == 0 and model.config.representation_size is None
    x = _images(hf)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_features(x), hf(pixel_values=x).last_hidden_state, **ATOL)


def test_masked_image_modeling_keeps_the_encoder(tmp_path, caplog):
    hf, directory = _hf_model("ViTForMaskedImageModeling", tmp_path)
    with caplog.at_level("INFO", logger="vitkit"):
        model = vitkit.from_pretrained(directory)
    assert "mask_token" in caplog.text and "decoder" in caplog.text
    x = _images(hf)
    with torch.no_grad():
        ref = hf.vit(pixel_values=x).last_hidden_state
        torch.testing.assert_close(model.forward_features(x), ref, **ATOL)


# ------------------------------------------------------------------------------------ DeiT
def test_deit_with_teacher(tmp_path):
    hf, directory = _hf_model("DeiTForImageClassificationWithTeacher", tmp_path)
    model = vitkit.from_pretrained(directory)
    assert model.config.distilled and model.config.distilled_output == "mean"
    x = _images(hf)
    with torch.no_grad():
        out = hf(pixel_values=x)
        torch.testing.assert_close(model(x), out.logits, **ATOL)
        model.train()  # no dropout in this config: with timm's set_distilled_training(True), both heads,
        model.set_distilled_training(True)  # in order (class, distillation)
        cls_logits, dist_logits = model(x)
    torch.testing.assert_close(cls_logits, out.cls_logits, **ATOL)
    torch.testing.assert_close(dist_logits, out.distillation_logits, **ATOL)


def test_deit_without_teacher_classifies_from_cls(tmp_path):
    hf, directory = _hf_model("DeiTForImageClassification", tmp_path)
    model = vitkit.from_pretrained(directory)
    assert model.config.distilled and model.config.distilled_output == "cls"
    assert torch.count_nonzero(model.head_dist.weight) == 0
    x = _images(hf)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, **ATOL)


def test_deit_model_features(tmp_path):
    hf, directory = _hf_model("DeiTModel", tmp_path)
    model = vitkit.from_pretrained(directory)
    x = _images(hf)
    with torch.no_grad():
        out = hf(pixel_values=x)
        torch.testing.assert_close(model.forward_features(x), out.last_hidden_state, **ATOL)
        torch.testing.assert_close(model(x), out.pooler_output, **ATOL)  # distilled_output='cls'


# ------------------------------------------------------------------------------------ resolution
@pytest.mark.parametrize("cls_name", ["ViTForImageClassification", "DeiTForImageClassificationWithTeacher"])
def test_other_resolution_matches_interpolate_pos_encoding(tmp_path, cls_name):
    """32 -> 64 (4x4 -> 8x8 grid): equal to HF's plain bicubic, not to the antialiased one (torch's
    antialiased bicubic uses the PIL kernel, which differs even when upsampling)."""
    hf, directory = _hf_model(cls_name, tmp_path)
    x = _images(hf, size=(64, 64))
    with torch.no_grad():
        ref = hf(pixel_values=x, interpolate_pos_encoding=True).logits
        model = vitkit.from_pretrained(directory, img_size=64)
        assert model.config.pos_embed_antialias is False
        torch.testing.assert_close(model(x), ref, **ATOL)
        timm_style = vitkit.from_pretrained(directory, img_size=64, pos_embed_antialias=True)
        assert (timm_style(x) - ref).abs().max() > 1e-3


# ------------------------------------------------------------------------------------ create_model
def test_create_model_with_hf_directory(tmp_path):
    # vit_micro_patch4_32: D=64, depth 4, 4 heads, mlp_ratio 2, 10 classes, 32x32 RGB, patch 4
    hf, directory = _hf_model("ViTForImageClassification", tmp_path, num_hidden_layers=4, patch_size=4, num_labels=10)
    model = vitkit.create_model("vit_micro_patch4_32", pretrained=directory, norm_eps=1e-12).eval()
    x = _images(hf)
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, **ATOL)


def test_state_dict_files_in_both_key_styles(tmp_path):
    """A single file of HF keys is recognised: the on-disk names of save_pretrained and the
    transformers-5 module names that `torch.save(model.state_dict())` writes."""
    hf, directory = _hf_model("ViTForImageClassification", tmp_path, num_hidden_layers=4, patch_size=4, num_labels=10)
    torch.save(hf.state_dict(), tmp_path / "in_memory.bin")
    assert any(".q_proj." in k for k in hf.state_dict())
    x = _images(hf)
    with torch.no_grad():
        ref = hf(pixel_values=x).logits
        for path in (directory / "model.safetensors", tmp_path / "in_memory.bin"):
            model = vitkit.create_model("vit_micro_patch4_32", pretrained=path, norm_eps=1e-12).eval()
            torch.testing.assert_close(model(x), ref, **ATOL)


def test_looks_like_hf():
    t = torch.zeros(1)
    assert looks_like_hf({"vit.embeddings.cls_token": t, "classifier.weight": t})
    assert looks_like_hf({"embeddings.patch_embeddings.projection.weight": t})
    assert looks_like_hf({"encoder.layer.0.layernorm_before.weight": t})
    assert looks_like_hf({"deit.layers.0.attention.q_proj.weight": t})
    assert not looks_like_hf({"cls_token": t, "pos_embed": t, "blocks.0.norm1.weight": t})
    assert not looks_like_hf({"vit.blocks.0.norm1.weight": t})  # a timm ViT wrapped as `vit`


def test_unknown_keys_are_left_for_the_loader():
    t = torch.zeros(3)
    out = convert_hf_state_dict(
        {"vit.layernorm.weight": t, "vit.mystery.weight": t, "vit.encoder.layer.0.attention.attention.query.weight": t},
        None,
    )
    assert set(out) == {"norm.weight", "vit.mystery.weight", "vit.encoder.layer.0.attention.attention.query.weight"}


def test_unknown_key_is_reported_by_from_pretrained(tmp_path):
    from safetensors.torch import load_file, save_file

    _, directory = _hf_model("ViTForImageClassification", tmp_path)
    state = load_file(directory / "model.safetensors")
    state["vit.extra.weight"] = torch.zeros(2)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="vit.extra.weight"):
        vitkit.from_pretrained(directory)


# ------------------------------------------------------------------------------------ config
def test_config_from_hf_fields_and_preprocessing(tmp_path):
    hf, directory = _hf_model(
        "DeiTForImageClassificationWithTeacher", tmp_path, id2label={0: "cat", 1: "dog", 2: "emu"}, num_labels=3
    )
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "DeiTImageProcessor",
                "do_center_crop": True,
                "resample": 3,
                "size": {"height": 256, "width": 256},
                "crop_size": {"height": 224, "width": 224},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            }
        )
    )
    model = vitkit.from_pretrained(directory)
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == ["cat", "dog", "emu"]
    assert cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["std"] == (0.229, 0.224, 0.225)
    assert model.config.norm_eps == 1e-12  # HF's default, not timm's 1e-6


def test_config_defaults_without_preprocessor():
    family, values, cfg = config_from_hf(
        {
            "model_type": "vit",
            "architectures": ["ViTForImageClassification"],
            "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
        }
    )
    assert family == "vit" and values["num_classes"] == 2 and values["norm_eps"] == 1e-12
    assert values["embed_dim"] == 768 and values["depth"] == 12 and values["mlp_ratio"] == 4.0
    assert cfg["mean"] == (0.5, 0.5, 0.5) and cfg["crop_pct"] == 1.0 and "label_names" not in cfg
    _, values, _ = config_from_hf({"model_type": "vit", "architectures": ["ViTModel"]})
    assert values["num_classes"] == 0 and values["representation_size"] == 768  # HF's add_pooling_layer=True
    _, values, _ = config_from_hf(
        {"model_type": "vit", "architectures": ["ViTModel"]}, state_keys=["embeddings.cls_token", "layernorm.weight"]
    )
    assert values["num_classes"] == 0 and "representation_size" not in values


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(hidden_act="quick_gelu"), "hidden_act 'quick_gelu'"),
        (dict(hidden_size=224, intermediate_size=230, num_attention_heads=4), "intermediate_size 230"),
        (dict(pooler_act="relu", architectures=["ViTModel"]), "pooler"),
        (dict(architectures=["ViTForSomething"]), "architecture 'ViTForSomething'"),
    ],
)
def test_config_errors(config, match):
    with pytest.raises(CheckpointError, match=match):
        config_from_hf(dict({"model_type": "vit"}, **config), source="test")


# ------------------------------------------------------------------------------------ bad inputs
def test_unsupported_model_type(tmp_path):
    from safetensors.torch import save_file

    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    save_file({"embeddings.word_embeddings.weight": torch.zeros(4, 2)}, tmp_path / "model.safetensors")
    for load in (
        lambda: vitkit.from_pretrained(tmp_path),
        lambda: vitkit.create_model("vit_micro_patch4_32", pretrained=tmp_path),
    ):
        with pytest.raises(CheckpointError, match=r"model_type 'bert' is not supported.*'vit'.*'deit'"):
            load()


def test_missing_weights_file(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(transformers.ViTConfig(**TINY).to_dict()))
    with pytest.raises(CheckpointError, match="no weights: expected model.safetensors or pytorch_model.bin"):
        vitkit.from_pretrained(tmp_path)

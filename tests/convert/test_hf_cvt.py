"""Hugging Face transformers CvT checkpoints load into vitkit's CvT and compute the same function.

Every test builds a tiny random HF model and randomises all of it (LayerNorms, BatchNorm affine
parameters and running statistics, [CLS]), so a swapped or transposed mapping changes the output;
it is saved with `save_pretrained` and loaded back through vitkit. Offline, CPU, eval mode.
HF's CvtStage indexes its per-stage drop-path list with the stage number, so stage i needs at
least i + 1 blocks: the tiny configs use depths 1/2/3."""

from __future__ import annotations

import json

import pytest
import torch

import vitkit
from vitkit import CheckpointError
from vitkit.convert.hf import config_from_hf, convert_hf_state_dict, looks_like_hf

transformers = pytest.importorskip("transformers")

ATOL = dict(atol=1e-4, rtol=1e-4)
TINY = dict(embed_dim=[16, 32, 48], depth=[1, 2, 3], num_heads=[1, 2, 3], num_labels=5)


def _randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if ("layernorm" in name or "normalization" in name) and name.endswith("weight"):
                p.copy_(1.0 + 0.3 * noise)
            else:
                p.copy_(0.2 * noise)
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
            elif name.endswith("running_var"):
                b.copy_(0.5 + torch.rand(b.shape, generator=g))
    return model.eval()


def _hf_model(cls_name: str, tmp_path, seed: int = 0, **config):
    hf = _randomise(getattr(transformers, cls_name)(transformers.CvtConfig(**dict(TINY, **config))), seed)
    directory = tmp_path / cls_name
    hf.save_pretrained(directory)
    return hf, directory


def _images(hf, size=(64, 48), batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, hf.config.num_channels, *size, generator=torch.Generator().manual_seed(1))


def _hf_logits_without_cls(hf, x):
    """CvtForImageClassification's no-[CLS] branch (LayerNorm on every token, mean, classifier),
    which its forward cannot reach: it reads `outputs[1]`, absent when there is no [CLS]."""
    tokens = hf.cvt(pixel_values=x).last_hidden_state.flatten(2).transpose(1, 2)
    return hf.classifier(hf.layernorm(tokens).mean(dim=1))


@pytest.mark.parametrize(
    "config",
    [
        {},
        dict(qkv_bias=[True, False, True]),
        dict(num_channels=1),
        dict(cls_token=[False, False, False]),  # no [CLS]: LayerNorm on every token, then the mean
        dict(
            patch_sizes=[3, 3, 3],
            patch_stride=[2, 2, 2],
            patch_padding=[1, 1, 1],
            stride_kv=[1, 2, 2],
            mlp_ratio=[2.0, 3.0, 4.0],
        ),
    ],
    ids=["default", "qkv_bias", "grayscale", "no_cls_token", "strides"],
)
def test_cvt_for_image_classification(tmp_path, config):
    hf, directory = _hf_model("CvtForImageClassification", tmp_path, **config)
    model = vitkit.from_pretrained(directory)
    assert model.family == "cvt" and not model.training and model.num_classes == 5
    assert model.config.global_pool == ("token" if hf.config.cls_token[-1] else "avg")
    for size in ((64, 48), (40, 56)):  # no position embeddings: any size
        x = _images(hf, size)
        with torch.no_grad():
            ref = hf(pixel_values=x).logits if hf.config.cls_token[-1] else _hf_logits_without_cls(hf, x)
            assert ref.abs().max() > 0.1
            assert (model(x) - ref).abs().max() <= 1e-4
        with torch.no_grad(), vitkit.layers.eager_attention():
            torch.testing.assert_close(model(x), ref, **ATOL)


def test_cvt_model_features_and_stages(tmp_path):
    hf, directory = _hf_model("CvtModel", tmp_path)
    model = vitkit.from_pretrained(directory)
    assert model.num_classes == 0 and model.config.final_norm is False
    x = _images(hf)
    with torch.no_grad():
        out = hf(pixel_values=x, output_hidden_states=True)
        tokens = torch.cat([out.cls_token_value, out.last_hidden_state.flatten(2).transpose(1, 2)], dim=1)
        torch.testing.assert_close(model.forward_features(x), tokens, **ATOL)
        torch.testing.assert_close(model(x), out.cls_token_value[:, 0], **ATOL)
        inter = model.forward_intermediates(x, intermediates_only=True)
        assert len(inter) == len(out.hidden_states) == 3
        for a, b in zip(inter, out.hidden_states):
            torch.testing.assert_close(a, b, **ATOL)


def test_create_model_with_hf_directory_and_files(tmp_path):
    # cvt_micro_32's architecture, with depths HF can build
    micro = dict(
        embed_dim=[32, 64, 96],
        num_heads=[1, 2, 3],
        mlp_ratio=[2.0] * 3,
        patch_sizes=[3] * 3,
        patch_stride=[2] * 3,
        patch_padding=[1] * 3,
        num_labels=10,
    )
    hf, directory = _hf_model("CvtForImageClassification", tmp_path, **micro)
    torch.save(hf.state_dict(), tmp_path / "in_memory.bin")
    x = _images(hf, (32, 32))
    with torch.no_grad():
        ref = hf(pixel_values=x).logits
        for path in (directory, directory / "model.safetensors", tmp_path / "in_memory.bin"):
            model = vitkit.create_model("cvt_micro_32", pretrained=path, depths=(1, 2, 3)).eval()
            torch.testing.assert_close(model(x), ref, **ATOL)


def test_key_mapping():
    t = torch.zeros(1)
    state = {
        "cvt.encoder.stages.2.cls_token": t,
        "cvt.encoder.stages.0.embedding.convolution_embeddings.projection.weight": t,
        "cvt.encoder.stages.1.embedding.convolution_embeddings.normalization.bias": t,
        "cvt.encoder.stages.2.layers.3.attention.attention.convolution_projection_key.convolution_projection"
        ".normalization.running_var": t,
        "cvt.encoder.stages.2.layers.3.attention.attention.convolution_projection_query.convolution_projection"
        ".convolution.weight": t,
        "cvt.encoder.stages.2.layers.3.attention.attention.projection_value.bias": t,
        "cvt.encoder.stages.2.layers.3.attention.output.dense.weight": t,
        "cvt.encoder.stages.2.layers.3.output.dense.weight": t,
        "cvt.encoder.stages.2.layers.3.intermediate.dense.bias": t,
        "cvt.encoder.stages.2.layers.3.layernorm_before.weight": t,
        "layernorm.weight": t,
        "classifier.bias": t,
        "cvt.encoder.stages.0.mystery.weight": t,
    }
    assert looks_like_hf(state) and looks_like_hf({"encoder.stages.0.cls_token": t})
    out = convert_hf_state_dict(state, {"model_type": "cvt"})
    assert set(out) == {
        "stage2.cls_token",
        "stage0.patch_embed.proj.weight",
        "stage1.patch_embed.norm.bias",
        "stage2.blocks.3.attn.conv_proj_k.bn.running_var",
        "stage2.blocks.3.attn.conv_proj_q.conv.weight",
        "stage2.blocks.3.attn.proj_v.bias",
        "stage2.blocks.3.attn.proj.weight",
        "stage2.blocks.3.mlp.fc2.weight",
        "stage2.blocks.3.mlp.fc1.bias",
        "stage2.blocks.3.norm1.weight",
        "norm.weight",
        "head.bias",
        "cvt.encoder.stages.0.mystery.weight",  # unknown: left for the strict loader to report
    }
    assert set(convert_hf_state_dict(state, None)) == set(out)  # recognised from the keys alone


def test_config_and_preprocessing(tmp_path):
    hf, directory = _hf_model(
        "CvtForImageClassification", tmp_path, id2label={0: "a", 1: "b", 2: "c"}, num_labels=3, layer_norm_eps=1e-12
    )
    (directory / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "ConvNextImageProcessor",
                "crop_pct": 0.875,
                "resample": 3,
                "size": {"shortest_edge": 224},
                "image_mean": [0.485, 0.456, 0.406],
                "image_std": [0.229, 0.224, 0.225],
            }
        )
    )
    model = vitkit.from_pretrained(directory)
    cfg = model.pretrained_cfg
    assert cfg["label_names"] == ["a", "b", "c"] and cfg["crop_pct"] == 0.875 and cfg["interpolation"] == "bicubic"
    assert model.config.norm_eps == 1e-5  # HF's CvT LayerNorms ignore layer_norm_eps
    family, values, cfg = config_from_hf({"model_type": "cvt", "architectures": ["CvtModel"]})
    assert family == "cvt" and values["num_classes"] == 0 and values["final_norm"] is False
    assert values["depths"] == (1, 2, 10) and cfg["mean"] == (0.485, 0.456, 0.406) and cfg["crop_pct"] == 0.875
    _, values, _ = config_from_hf({"model_type": "cvt"})  # HF's defaults: CvT-13, classification
    assert values["num_classes"] == 2 and values["final_norm"] is True
    with torch.device("meta"):
        model = vitkit.create_model("cvt_13", **{k: v for k, v in values.items() if k != "num_classes"})
    assert sum(p.numel() for p in model.parameters()) == 19_997_480


@pytest.mark.parametrize(
    "config, match",
    [
        (dict(architectures=["CvtForSomething"]), "architecture 'CvtForSomething'"),
        (dict(qkv_projection_method=["dw_bn", "avg", "dw_bn"]), "qkv_projection_method"),
        (dict(cls_token=[True, False, True]), "last stage only"),
        (dict(embed_dim=[64, 192]), "2 values for 3 stages"),
        (dict(num_heads=[1, 5, 6]), "not divisible"),
    ],
)
def test_config_errors(config, match):
    with pytest.raises(CheckpointError, match=match):
        config_from_hf(dict({"model_type": "cvt"}, **config), source="test")


def test_broken_directories(tmp_path):
    from safetensors.torch import load_file, save_file

    hf, directory = _hf_model("CvtForImageClassification", tmp_path)
    state = load_file(directory / "model.safetensors")
    state["cvt.encoder.extra.weight"] = torch.zeros(2)
    save_file(state, directory / "model.safetensors")
    with pytest.raises(CheckpointError, match="cvt.encoder.extra.weight"):
        vitkit.from_pretrained(directory)
    with pytest.raises(CheckpointError, match="wrong shape"):  # a CvT-13 does not fit a tiny one
        vitkit.create_model("cvt_13", pretrained=directory, num_classes=5, depths=(1, 2, 3))

    (directory / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no weights: expected model.safetensors or pytorch_model.bin"):
        vitkit.from_pretrained(directory)
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    save_file({"x": torch.zeros(1)}, tmp_path / "bert" / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model_type 'bert' is not supported.*'cvt' \(CvtModel"):
        vitkit.from_pretrained(tmp_path / "bert")

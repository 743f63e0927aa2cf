"""Checkpoint loading and saving: what loads (timm state dicts, training-checkpoint wrappers,
DINO/MAE/DeiT releases, other sizes and class counts) and how everything else fails -- with a
`CheckpointError`/`ValueError` whose message says what is wrong and what to do."""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import vitkit
from vitkit import CheckpointError, create_model, from_pretrained
from vitkit.layers import resample_abs_pos_embed

BASE = "vit_tiny_patch16_224"
DISTILLED = "deit_tiny_distilled_patch16_224"
HYBRID = "vit_base_r50_s16_224"
TINY = dict(embed_dim=32, depth=2, num_heads=2, num_classes=5, img_size=32)
B = 2


def tiny(name: str = BASE, seed: int = 0, **kw) -> nn.Module:
    torch.manual_seed(seed)
    overrides = {**TINY, **({"hybrid_layers": (1, 1, 1)} if "r50" in name else {}), **kw}
    model = create_model(name, **overrides)
    # heads are zero-initialised by design; random ones make output comparisons meaningful
    with torch.no_grad():
        for head in (model.head, getattr(model, "head_dist", None)):
            if isinstance(head, nn.Linear):
                nn.init.normal_(head.weight)
                nn.init.normal_(head.bias)
    return model.eval()


def images(model, size=None) -> torch.Tensor:
    h, w = vitkit.layers.to_2tuple(size or model.config.img_size)
    return torch.randn(B, model.config.in_chans, h, w, generator=torch.Generator().manual_seed(0))


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def save(state, path) -> str:
    path = str(path)
    if path.endswith(".safetensors"):
        save_file(state, path)
    else:
        torch.save(state, path)
    return path


def assert_same_outputs(a, b, x, features_only=False):
    with torch.no_grad():
        torch.testing.assert_close(a.forward_features(x), b.forward_features(x), atol=0, rtol=0)
        if not features_only:
            torch.testing.assert_close(a(x), b(x), atol=0, rtol=0)


# ============================================================================ bad inputs
def test_img_size_not_divisible_by_patch_size_at_create():
    with pytest.raises(ValueError, match=r"not divisible by the patch size 16.*multiple of 16"):
        create_model(BASE, **{**TINY, "img_size": 40})
    with pytest.raises(ValueError, match=r"width 40 is not divisible"):
        create_model(BASE, **{**TINY, "img_size": (32, 40)})


def test_img_size_not_divisible_at_forward_with_dynamic_img_size():
    model = tiny(dynamic_img_size=True)
    with pytest.raises(ValueError, match=r"input size \(40x32\) is not divisible by the patch size 16x16"):
        model(torch.randn(B, 3, 40, 32))


@pytest.mark.parametrize("name", [BASE, HYBRID])
def test_wrong_channel_count(name):
    model = tiny(name)
    with pytest.raises(ValueError, match=r"(?s)expects.*3.*in_chans=1"):
        model(torch.randn(B, 1, 32, 32))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)|shape"):
        model(torch.randn(3, 32, 32))


@pytest.mark.parametrize("name", [BASE, DISTILLED, HYBRID])
def test_wrong_input_size_without_dynamic_img_size(name):
    model = tiny(name)
    with pytest.raises(
        ValueError, match=r"(?s)input size \(64x32\) does not match.*img_size 32x32.*dynamic_img_size=True"
    ):
        model(torch.randn(B, 3, 64, 32))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ".bin", ""])
def test_corrupt_file(tmp_path, suffix):
    path = tmp_path / f"random{suffix}"
    path.write_bytes(random.Random(len(suffix)).randbytes(4096))
    with pytest.raises(CheckpointError, match=r"corrupt|cannot tell the format") as e:
        create_model(BASE, pretrained=path, **TINY)
    assert str(path) in str(e.value)
    assert "run code" not in str(e.value)  # random bytes are not a refused pickle


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors", ""])
def test_damaged_files_always_give_checkpoint_error(tmp_path, suffix):
    # short byte strings that look like the start of a pickle / zip / safetensors file: a damaged
    # pickle stream raises IndexError or KeyError inside torch.load, which must come out as CheckpointError
    rng = random.Random(0)
    heads = [b"", b"\x80", b"\x80\x02", b"PK\x03\x04", (20).to_bytes(8, "little") + b"{", b"\x80\x02\x8a\x0a"]
    for i in range(60):
        n = rng.choice([0, 1, 2, 8, 9, 64])
        data = heads[i % len(heads)] + bytes(rng.getrandbits(8) for _ in range(n))
        path = tmp_path / f"damaged{i}{suffix}"
        path.write_bytes(data)
        with pytest.raises(CheckpointError):
            vitkit.hub.read_state_dict_file(path)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_checkpoint(tmp_path, suffix):
    full = save(state_of(tiny()), tmp_path / f"full{suffix}")
    data = Path(full).read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"truncated"):
        create_model(BASE, pretrained=cut, **TINY)
    create_model(BASE, pretrained=full, **TINY)  # the whole file loads


class _RunsCode:
    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.system, (f"echo pwned > {self.target}",))


@pytest.mark.parametrize("wrap", ["bare", "in_state_dict", "legacy_format"])
def test_pickle_that_would_run_code_is_refused(tmp_path, wrap):
    target = tmp_path / "PWNED"
    evil = _RunsCode(target)
    path = tmp_path / "evil.pth"
    if wrap == "bare":
        torch.save(evil, path)
    elif wrap == "in_state_dict":
        torch.save({"model": {"pos_embed": torch.zeros(1), "x": evil}}, path)
    else:
        torch.save({"x": evil}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"(?s)refusing to load.*could run code.*safetensors"):
        create_model(BASE, pretrained=path, **TINY)
    assert not target.exists(), "loading the checkpoint executed code"


def test_checkpoint_for_another_architecture(tmp_path):
    # keys of a Swin checkpoint
    state = {"patch_embed.proj.weight": torch.randn(96, 3, 4, 4), "patch_embed.norm.weight": torch.ones(96)}
    for stage in range(2):
        for blk in range(2):
            p = f"layers.{stage}.blocks.{blk}."
            state[p + "attn.relative_position_bias_table"] = torch.randn(169, 3)
            state[p + "attn.relative_position_index"] = torch.zeros(49, 49, dtype=torch.long)
            state[p + "attn.qkv.weight"] = torch.randn(288, 96)
            state[p + "norm1.weight"] = torch.ones(96)
    state.update(
        {
            "norm.weight": torch.ones(768),
            "norm.bias": torch.zeros(768),
            "head.weight": torch.randn(1000, 768),
            "head.bias": torch.zeros(1000),
        }
    )
    path = save(state, tmp_path / "swin.safetensors")
    with pytest.raises(CheckpointError, match=r"another architecture") as e:
        create_model(BASE, pretrained=path, **TINY)
    msg = str(e.value)
    assert "missing key(s)" in msg and "unexpected key(s)" in msg
    assert "layers.0.blocks.0" in msg and "cls_token" in msg
    assert path in msg and BASE in msg


def test_checkpoint_of_another_size(tmp_path):
    path = save(state_of(tiny(embed_dim=48, num_heads=2)), tmp_path / "wider.safetensors")
    with pytest.raises(CheckpointError, match=r"another size") as e:
        create_model(BASE, pretrained=path, **TINY)
    msg = str(e.value)
    assert "wrong shape" in msg
    assert "cls_token (1, 1, 48) vs (1, 1, 32)" in msg
    assert "pos_embed" in msg and "patch_embed.proj.weight" in msg
    assert "more)" in msg  # long listings say how many keys are not shown


def test_missing_and_unexpected_keys_are_all_listed(tmp_path):
    state = state_of(tiny())
    dropped = ["norm.weight", "blocks.1.mlp.fc2.bias", "blocks.0.attn.qkv.weight"]
    for k in dropped:
        del state[k]
    state["blocks.0.attn.q_norm.weight"] = torch.ones(16)
    path = save(state, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as e:
        create_model(BASE, pretrained=path, **TINY)
    msg = str(e.value)
    assert "3 missing key(s)" in msg and all(k in msg for k in dropped)
    assert "1 unexpected key(s): blocks.0.attn.q_norm.weight" in msg
    assert "Likely cause" in msg


def test_checkpoint_of_another_depth(tmp_path):
    path = save(state_of(tiny(depth=3)), tmp_path / "deeper.pth")
    with pytest.raises(CheckpointError, match=r"(?s)unexpected key\(s\): blocks\.2\..*depth"):
        create_model(BASE, pretrained=path, **TINY)


def test_checkpoint_without_tensors(tmp_path):
    path = tmp_path / "meta.pth"
    torch.save({"epoch": 3, "best_acc": 0.5}, path)
    with pytest.raises(CheckpointError, match=r"no state dict.*best_acc"):
        create_model(BASE, pretrained=path, **TINY)


def test_missing_checkpoint_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        create_model(BASE, pretrained=tmp_path / "nope.pth", **TINY)


def test_unknown_model_name_suggests_close_matches():
    with pytest.raises(ValueError, match=r"unknown model 'vit_tiny_patch16_225'.*Did you mean 'vit_tiny_patch16_224'"):
        create_model("vit_tiny_patch16_225")
    with pytest.raises(ValueError, match=r"Did you mean.*'deit_small_patch16_224'"):
        create_model("deit_smal_patch16_224")
    with pytest.raises(ValueError, match=r"list_models"):
        create_model("resnet50")


def test_from_pretrained_on_a_file_says_use_create_model(tmp_path):
    path = save(state_of(tiny()), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match=r"is a file.*create_model\("):
        from_pretrained(path)


def test_from_pretrained_on_a_dir_without_config(tmp_path):
    save(state_of(tiny()), tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        from_pretrained(tmp_path)
    with pytest.raises(CheckpointError, match=r"does not exist"):
        from_pretrained(tmp_path / "missing")


def test_from_pretrained_on_a_dir_without_weights(tmp_path):
    tiny().save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        from_pretrained(tmp_path)


def test_from_pretrained_with_a_bad_config(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"could not read"):
        from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match=r"neither a vitkit config"):
        from_pretrained(tmp_path)


# ============================================================================ what loads
@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".bin"])
def test_timm_style_state_dict(tmp_path, suffix):
    src = tiny(seed=1)
    path = save(state_of(src), tmp_path / f"w{suffix}")
    model = create_model(BASE, pretrained=path, **TINY).eval()
    assert_same_outputs(model, src, images(src))


@pytest.mark.parametrize("wrapper", ["model", "state_dict", "module_prefix", "compile_prefix", "model_ema"])
def test_wrapped_state_dicts(tmp_path, wrapper):
    src = tiny(seed=2)
    sd = state_of(src)
    if wrapper == "module_prefix":
        ckpt = {"model": {"module." + k: v for k, v in sd.items()}}
    elif wrapper == "compile_prefix":
        ckpt = {"_orig_mod." + k: v for k, v in sd.items()}
    else:
        ckpt = {wrapper: sd, "epoch": 7}
    path = save(ckpt, tmp_path / "ckpt.pth")
    assert_same_outputs(create_model(BASE, pretrained=path, **TINY).eval(), src, images(src))


@pytest.mark.parametrize("layout", ["teacher", "student_ddp", "teacher_ddp"])
def test_dino_checkpoint(tmp_path, layout, caplog):
    src = tiny(seed=3, num_classes=0)  # DINO's ViT has no classifier head
    sd = state_of(src)
    prefix = "module." if layout.endswith("ddp") else ""
    weights = {f"{prefix}backbone.{k}": v for k, v in sd.items()}
    weights[f"{prefix}head.mlp.0.weight"] = torch.randn(64, 32)  # DINO's projection head
    weights[f"{prefix}head.last_layer.weight_g"] = torch.ones(100, 1)
    key = layout.split("_")[0]
    path = save({key: weights, "epoch": 100, "args": argparse.Namespace(arch="vit_tiny")}, tmp_path / "dino.pth")
    with caplog.at_level(logging.INFO, logger="vitkit"):
        model = create_model(BASE, pretrained=path, **TINY).eval()
    assert_same_outputs(model, src, images(src), features_only=True)
    assert torch.count_nonzero(model.head.weight) == 0  # fresh head, and the log says so
    text = caplog.text
    assert "projection head" in text  # DINO's head.* keys were dropped, and said so
    assert "has no head" in text and "freshly initialised" in text


def test_dino_backbone_into_headless_model(tmp_path):
    src = tiny(seed=3, num_classes=0)
    weights = {f"backbone.{k}": v for k, v in state_of(src).items()}
    weights["head.mlp.0.weight"] = torch.randn(64, 32)
    path = save({"teacher": weights}, tmp_path / "dino.pth")
    model = create_model(BASE, pretrained=path, **{**TINY, "num_classes": 0}).eval()
    assert_same_outputs(model, src, images(src))


def test_deit_checkpoint_with_argparse_namespace(tmp_path):
    src = tiny(DISTILLED, seed=4)
    ckpt = {
        "model": state_of(src),
        "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0, 1]}]},
        "lr_scheduler": {"last_epoch": 299},
        "epoch": 299,
        "args": argparse.Namespace(model="deit_tiny_distilled_patch16_224", lr=5e-4, input_size=224),
    }
    path = save(ckpt, tmp_path / "deit.pth")
    model = create_model(DISTILLED, pretrained=path, **TINY).eval()
    assert_same_outputs(model, src, images(src))


def test_mae_decoder_keys_are_dropped(tmp_path, caplog):
    src = tiny(seed=5, num_classes=0, global_pool="avg")
    sd = state_of(src)
    sd.update(
        {
            "mask_token": torch.zeros(1, 1, 16),
            "decoder_embed.weight": torch.randn(16, 32),
            "decoder_pos_embed": torch.zeros(1, 5, 16),
            "decoder_blocks.0.norm1.weight": torch.ones(16),
            "decoder_norm.weight": torch.ones(16),
            "decoder_pred.weight": torch.randn(768, 16),
        }
    )
    path = save({"model": sd}, tmp_path / "mae.pth")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        model = create_model(BASE, pretrained=path, **{**TINY, "num_classes": 0, "global_pool": "avg"}).eval()
    assert_same_outputs(model, src, images(src))
    assert "MAE decoder" in caplog.text and "6 MAE decoder key(s)" in caplog.text


def test_other_num_classes_reinitialises_the_head(tmp_path, caplog):
    src = tiny(seed=6)  # 5 classes
    path = save(state_of(src), tmp_path / "w.safetensors")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        model = create_model(BASE, pretrained=path, **{**TINY, "num_classes": 7}).eval()
    rec = [r for r in caplog.records if r.name == "vitkit" and r.levelno == logging.WARNING]
    assert rec and "5 classes" in rec[-1].getMessage() and "7" in rec[-1].getMessage()
    assert "re-initialised" in rec[-1].getMessage()
    assert model.head.weight.shape == (7, 32) and torch.count_nonzero(model.head.weight) == 0
    x = images(src)
    assert_same_outputs(model, src, x, features_only=True)
    assert model(x).shape == (B, 7)


def test_other_num_classes_distilled(tmp_path, caplog):
    src = tiny(DISTILLED, seed=6)
    path = save(state_of(src), tmp_path / "w.pth")
    with caplog.at_level(logging.WARNING, logger="vitkit"):
        model = create_model(DISTILLED, pretrained=path, **{**TINY, "num_classes": 3}).eval()
    assert "re-initialised" in caplog.text
    assert model.head_dist.weight.shape == (3, 32) and torch.count_nonzero(model.head_dist.weight) == 0


@pytest.mark.parametrize("name", [BASE, DISTILLED])
@pytest.mark.parametrize("new_size", [96, 32, (64, 96)])
def test_other_img_size_resamples_pos_embed(tmp_path, caplog, name, new_size):
    src = tiny(name, seed=7, img_size=64)  # 4x4 grid
    sd = state_of(src)
    path = save(sd, tmp_path / "w.safetensors")
    with caplog.at_level(logging.INFO, logger="vitkit"):
        model = create_model(name, pretrained=path, **{**TINY, "img_size": new_size}).eval()
    assert "resampled position embeddings from a 4x4" in caplog.text

    expected = tiny(name, seed=99, img_size=new_size)
    manual = dict(sd)
    manual["pos_embed"] = resample_abs_pos_embed(
        sd["pos_embed"], expected.patch_embed.grid_size, num_prefix_tokens=expected.num_prefix_tokens
    )
    expected.load_state_dict(manual)
    torch.testing.assert_close(model.pos_embed, expected.pos_embed, atol=0, rtol=0)
    assert_same_outputs(model, expected, images(expected))


def test_from_pretrained_overrides(tmp_path, caplog):
    src = tiny(seed=8, img_size=64)
    src.save_pretrained(tmp_path)
    with caplog.at_level(logging.INFO, logger="vitkit"):
        model = from_pretrained(tmp_path, img_size=96, num_classes=3)
    assert model.config.img_size == 96 and model.head.out_features == 3
    assert "resampled" in caplog.text and "re-initialised" in caplog.text
    assert not model.training


# ============================================================================ saving
def test_save_pretrained_is_atomic_and_writes_json(tmp_path):
    model = tiny(DISTILLED)
    out = model.save_pretrained(tmp_path / "new" / "dir")
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architecture"] == "vit"
    assert cfg["model_name"] == DISTILLED
    assert cfg["config"]["embed_dim"] == 32 and cfg["config"]["distilled"] is True
    assert cfg["pretrained_cfg"]["mean"] == list(model.pretrained_cfg["mean"])
    assert cfg["vitkit_version"] == vitkit.__version__
    # saving again over an existing directory replaces the files, leaving nothing else behind
    model.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]


def test_save_pretrained_failure_leaves_no_partial_file(tmp_path, monkeypatch):
    import safetensors.torch

    model = tiny()
    model.save_pretrained(tmp_path)
    before = (tmp_path / "model.safetensors").read_bytes()

    def broken_save_file(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", broken_save_file)
    with pytest.raises(OSError, match="disk full"):
        tiny(seed=1).save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "model.safetensors"]
    assert (tmp_path / "model.safetensors").read_bytes() == before  # the old weights are intact
    from_pretrained(tmp_path)

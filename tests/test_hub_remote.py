"""Loading from the Hugging Face Hub, offline: `from_pretrained("org/name")`, `create_model(name.tag,
pretrained=True)` and `create_model("hf-hub:org/name")` read through huggingface_hub's own cache lookup.

Each test writes real repos into a temporary Hub cache in the layout huggingface_hub keeps
(`models--ORG--NAME/{blobs, snapshots/<commit>, refs/<branch>}`, snapshot files linked to blobs),
from randomly initialised reference models -- transformers' `save_pretrained`, timm's `save_for_hf` --
and runs with HF_HUB_OFFLINE=1 and HF_HUB_CACHE pointing there (and huggingface_hub's constants, which
it reads from the environment at import). `hf_hub_download` then resolves every file as it would after
a download: refs -> commit -> snapshot; nothing here reads the temporary folders directly. No network.

The online tests talk to a local HTTP server that answers the Hub's file endpoint the way the Hub does
(headers, bytes, and its X-Error-Code answers for gated / missing repos and revisions): huggingface_hub's
own client downloads into the cache and raises its own errors. What no test here proves: that the real
Hub still answers so, and that the full-size files of the tags load (that needs their download).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

import vitkit
from hub_helpers import offline_hub_cache, put_in_cache, randomise, timm_saved
from vitkit import CheckpointError, create_model, from_pretrained

huggingface_hub = pytest.importorskip("huggingface_hub")
transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")

ATOL = dict(atol=1e-5, rtol=1e-5)
HF_TINY = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    num_labels=5,
)
TIMM_TINY = dict(embed_dim=32, depth=2, num_heads=2, img_size=32)


# ------------------------------------------------------------------------------------ a Hub cache (tests/hub_helpers.py)
@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    return offline_hub_cache(tmp_path, monkeypatch)


def images(c: int = 3, hw: int = 32) -> torch.Tensor:
    return torch.randn(2, c, hw, hw, generator=torch.Generator().manual_seed(1))


def hf_saved(tmp_path, cls_name: str, config_cls, seed: int = 0, **config):
    hf = randomise(getattr(transformers, cls_name)(config_cls(**config)), seed)
    folder = tmp_path / f"{cls_name}-{seed}"
    hf.save_pretrained(folder)
    return hf, folder


def hf_logits(hf, x):
    out = hf(pixel_values=x)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


# ------------------------------------------------------------------------------------ transformers repos
SWIN_TINY = dict(
    image_size=32, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=4, num_labels=5
)


@pytest.mark.parametrize(
    "cls_name, config_cls, config, repo",
    [
        ("ViTForImageClassification", "ViTConfig", HF_TINY, "google/vit-base-patch16-224"),
        ("DeiTForImageClassificationWithTeacher", "DeiTConfig", HF_TINY, "facebook/deit-base-distilled-patch16-224"),
        ("SwinForImageClassification", "SwinConfig", SWIN_TINY, "microsoft/swin-tiny-patch4-window7-224"),
        (
            "ViTMSNModel",
            "ViTMSNConfig",
            {k: v for k, v in HF_TINY.items() if k != "num_labels"},
            "facebook/vit-msn-small",
        ),
    ],
)
def test_from_pretrained_transformers_repo(hub_cache, tmp_path, cls_name, config_cls, config, repo):
    hf, folder = hf_saved(tmp_path, cls_name, getattr(transformers, config_cls), **config)
    put_in_cache(hub_cache, repo, folder)
    model = from_pretrained(repo)
    x = images()
    with torch.no_grad():
        ours = model(x) if model.num_classes else model.forward_features(x)
        torch.testing.assert_close(ours, hf_logits(hf, x), **ATOL)
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == repo and cfg["input_size"] == (3, 32, 32) and cfg["num_classes"] == model.num_classes
    assert cfg["first_conv"] == "patch_embed.proj" and cfg["crop_mode"] == "center" and "mean" in cfg
    # the same through the hf-hub: prefix of create_model, with the weights (timm: pretrained=True)
    again = create_model(f"hf-hub:{repo}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x) if again.num_classes else again.forward_features(x), ours, **ATOL)


def test_transformers_tag_builds_the_repos_network(hub_cache, tmp_path):
    """`name.hf_*` tags load a transformers repo; the network is the repo's config.json's (here a tiny ViT
    stored under google/vit-base-patch16-224, LayerNorm eps 1e-12), so no size overrides are needed and the
    logits are the transformers model's."""
    hf, folder = hf_saved(tmp_path, "ViTForImageClassification", transformers.ViTConfig, **HF_TINY)
    put_in_cache(hub_cache, "google/vit-base-patch16-224", folder)
    model = create_model("vit_base_patch16_224.hf_goog_in21k_ft_in1k", pretrained=True).eval()
    assert model.config.embed_dim == 32 and model.config.norm_eps == 1e-12 and model.num_classes == 5
    assert model.pretrained_cfg["hf_hub_id"] == "google/vit-base-patch16-224"
    assert model.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) and model.pretrained_cfg["interpolation"] == "bilinear"
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), hf(pixel_values=x).logits, **ATOL)
    # a repo's preprocessor_config.json has the last word on preprocessing
    (folder / "preprocessor_config.json").write_text(
        '{"image_processor_type": "ViTImageProcessor", "image_mean": [0.485, 0.456, 0.406], '
        '"image_std": [0.229, 0.224, 0.225], "resample": 3, "do_resize": true, "size": {"height": 32, "width": 32}}'
    )
    put_in_cache(hub_cache, "google/vit-base-patch16-224", folder, revision="with-processor")
    cfg = create_model(
        "vit_base_patch16_224.hf_goog_in21k_ft_in1k",
        pretrained=True,
        pretrained_cfg_overlay=dict(hf_hub_id="google/vit-base-patch16-224@with-processor"),
    ).pretrained_cfg
    assert cfg["mean"] == (0.485, 0.456, 0.406) and cfg["interpolation"] == "bicubic"


# ------------------------------------------------------------------------------------ timm repos
@pytest.mark.parametrize("safe_serialization", [True, False], ids=["safetensors", "pytorch_model.bin"])
def test_hf_hub_timm_repo(hub_cache, tmp_path, safe_serialization):
    """A repo written by timm's save_for_hf (config.json: architecture = the timm name, model_args,
    pretrained_cfg): create_model('hf-hub:...', pretrained=True) and from_pretrained give timm's outputs;
    pretrained=False builds the same network with random weights, as timm does."""
    ref, folder = timm_saved(
        tmp_path, "vit_base_patch16_224", safe_serialization=safe_serialization, num_classes=7, **TIMM_TINY
    )
    put_in_cache(hub_cache, "someone/tiny-vit", folder)
    x = images()
    with torch.no_grad():
        expected = ref(x)
        model = create_model("hf-hub:someone/tiny-vit", pretrained=True).eval()
        torch.testing.assert_close(model(x), expected, **ATOL)
        torch.testing.assert_close(from_pretrained("someone/tiny-vit")(x), expected, **ATOL)
        random = create_model("hf-hub:someone/tiny-vit").eval()
        assert random.config == model.config and not torch.allclose(random(x), expected, atol=1e-3)
    assert model.model_name == "vit_base_patch16_224" and model.num_classes == 7
    cfg = model.pretrained_cfg
    assert cfg["hf_hub_id"] == "someone/tiny-vit" and cfg["input_size"] == (3, 32, 32)
    assert cfg["mean"] == ref.pretrained_cfg["mean"] and cfg["crop_pct"] == ref.pretrained_cfg["crop_pct"]


def test_hf_hub_timm_swin_repo(hub_cache, tmp_path):
    ref, folder = timm_saved(
        tmp_path,
        "swin_tiny_patch4_window7_224",
        num_classes=4,
        img_size=32,
        patch_size=2,
        embed_dim=16,
        depths=(1, 1),
        num_heads=(2, 2),
        window_size=4,
    )
    put_in_cache(hub_cache, "someone/tiny-swin", folder)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained("hf-hub:someone/tiny-swin")(x), ref(x), **ATOL)


def test_timm_argument_vitkit_lacks_is_named(hub_cache, tmp_path):
    _, folder = timm_saved(tmp_path, "vit_base_patch16_224", reg_tokens=2, **TIMM_TINY)
    put_in_cache(hub_cache, "someone/registers", folder)
    with pytest.raises(CheckpointError, match=r"reg_tokens=2.*no vitkit equivalent"):
        from_pretrained("someone/registers")


def test_name_with_tag_loads_timms_repo(hub_cache, tmp_path):
    """`create_model('vit_base_patch16_224.augreg2_in21k_ft_in1k', pretrained=True)` reads the repo
    `timm/vit_base_patch16_224.augreg2_in21k_ft_in1k`. The real weights are ViT-B/16; here the repo holds a
    tiny timm ViT of that architecture (save_for_hf of timm's model created with the same tag and size
    overrides), and vitkit is created with the same overrides. What this proves: the tag resolves to
    timm's repo id, huggingface_hub finds the file, timm's keys load, outputs are timm's, and the
    pretrained cfg is timm's. It does not prove that the full-size Hub file loads (that needs a download)."""
    name = "vit_base_patch16_224.augreg2_in21k_ft_in1k"
    ref, folder = timm_saved(tmp_path, name, safe_serialization=True, **TIMM_TINY)
    assert ref.pretrained_cfg["hf_hub_id"] == f"timm/{name}"
    put_in_cache(hub_cache, f"timm/{name}", folder)
    x = images()
    with torch.no_grad():
        model = create_model(name, pretrained=True, **TIMM_TINY).eval()
        torch.testing.assert_close(model(x), ref(x), **ATOL)
        # without a tag, pretrained=True takes timm's default tag: the same repo
        default = create_model("vit_base_patch16_224", pretrained=True, **TIMM_TINY).eval()
        torch.testing.assert_close(default(x), ref(x), **ATOL)
    for key in (
        "hf_hub_id",
        "architecture",
        "tag",
        "input_size",
        "fixed_input_size",
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
    ):
        assert model.pretrained_cfg[key] == ref.pretrained_cfg[key], key
    assert model.default_cfg is model.pretrained_cfg


def test_pretrained_cfg_overlay_file(tmp_path):
    """timm's idiom for local weights: pretrained=True with pretrained_cfg_overlay=dict(file=...)."""
    ref, folder = timm_saved(tmp_path, "vit_base_patch16_224", safe_serialization=True, **TIMM_TINY)
    model = create_model(
        "vit_base_patch16_224",
        pretrained=True,
        pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
        **TIMM_TINY,
    ).eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(x), **ATOL)
    # checkpoint_path loads after creation, as timm's
    other = create_model("vit_base_patch16_224", checkpoint_path=folder / "model.safetensors", **TIMM_TINY).eval()
    with torch.no_grad():
        torch.testing.assert_close(other(x), ref(x), **ATOL)


@pytest.mark.parametrize("in_chans", [1, 4])
def test_other_in_chans_adapt_the_first_conv_as_timm(tmp_path, in_chans):
    """timm's test_model_load_pretrained creates every pretrained model with in_chans=1: RGB weights are summed
    into one channel (repeated and rescaled for more), by timm's rule, and the outputs are timm's."""
    swin = dict(img_size=32, patch_size=2, embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4)
    for name, kw in (("vit_base_patch16_224", TIMM_TINY), ("swin_tiny_patch4_window7_224", swin)):
        _, folder = timm_saved(tmp_path / name, name, safe_serialization=True, **kw)
        file = dict(file=str(folder / "model.safetensors"))
        ours = create_model(name, pretrained=True, pretrained_cfg_overlay=file, in_chans=in_chans, **kw).eval()
        ref = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=file, in_chans=in_chans, **kw).eval()
        x = images(c=in_chans)
        with torch.no_grad():
            torch.testing.assert_close(ours(x), ref(x), **ATOL)
    with pytest.raises(CheckpointError, match=r"patch_embed.proj.weight \(32, 3, 16, 16\) vs \(32, 1, 8, 8\)"):
        create_model(
            "vit_base_patch16_224",
            pretrained=True,
            pretrained_cfg_overlay=dict(
                file=str(tmp_path / "vit_base_patch16_224" / "timm-0-True" / "model.safetensors")
            ),
            in_chans=1,
            patch_size=8,
            **TIMM_TINY,
        )  # another kernel too: not a channel count to adapt, reported


# ------------------------------------------------------------------------------------ revisions and formats
def test_revision_picks_the_snapshot(hub_cache, tmp_path):
    hf_a, folder_a = hf_saved(tmp_path, "ViTForImageClassification", transformers.ViTConfig, seed=0, **HF_TINY)
    hf_b, folder_b = hf_saved(tmp_path, "ViTForImageClassification", transformers.ViTConfig, seed=1, **HF_TINY)
    commit_a = put_in_cache(hub_cache, "org/vit", folder_a, revision="main")
    commit_b = put_in_cache(hub_cache, "org/vit", folder_b, revision="v2")
    assert commit_a != commit_b
    x = images()
    with torch.no_grad():
        a, b = hf_a(pixel_values=x).logits, hf_b(pixel_values=x).logits
        assert not torch.allclose(a, b, atol=1e-3)
        torch.testing.assert_close(from_pretrained("org/vit")(x), a, **ATOL)
        torch.testing.assert_close(from_pretrained("org/vit", revision="v2")(x), b, **ATOL)
        torch.testing.assert_close(from_pretrained("org/vit", revision=commit_b)(x), b, **ATOL)
        torch.testing.assert_close(from_pretrained("hf-hub:org/vit@v2")(x), b, **ATOL)
        torch.testing.assert_close(create_model("hf-hub:org/vit@v2", pretrained=True).eval()(x), b, **ATOL)
    with pytest.raises(CheckpointError, match=r"revision 'v3'.*HF_HUB_OFFLINE"):
        from_pretrained("org/vit", revision="v3")


def test_cache_dir_argument(hub_cache, tmp_path):
    hf, folder = hf_saved(tmp_path, "ViTForImageClassification", transformers.ViTConfig, **HF_TINY)
    other = tmp_path / "elsewhere"
    put_in_cache(other, "org/vit", folder)
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        from_pretrained("org/vit")  # not in HF_HUB_CACHE
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained("org/vit", cache_dir=other)(x), hf(pixel_values=x).logits, **ATOL)


def test_safetensors_preferred_over_pytorch_model_bin(hub_cache, tmp_path):
    """A repo with both files (timm's push_to_hf_hub writes both) is read from model.safetensors."""
    ref_a, folder = timm_saved(tmp_path, "vit_base_patch16_224", seed=0, safe_serialization=True, **TIMM_TINY)
    ref_b, folder_b = timm_saved(tmp_path, "vit_base_patch16_224", seed=1, safe_serialization=False, **TIMM_TINY)
    (folder / "pytorch_model.bin").write_bytes((folder_b / "pytorch_model.bin").read_bytes())
    put_in_cache(hub_cache, "someone/both", folder)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained("someone/both")(x), ref_a(x), **ATOL)


def test_local_path_wins(hub_cache, tmp_path, monkeypatch):
    hf_a, folder_a = hf_saved(tmp_path, "ViTForImageClassification", transformers.ViTConfig, seed=0, **HF_TINY)
    hf_b, _ = hf_saved(tmp_path, "ViTForImageClassification", transformers.ViTConfig, seed=1, **HF_TINY)
    put_in_cache(hub_cache, "org/vit", folder_a)
    monkeypatch.chdir(tmp_path)
    hf_b.save_pretrained(tmp_path / "org" / "vit")  # a local folder that looks like the repo id
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained("org/vit")(x), hf_b(pixel_values=x).logits, **ATOL)


# ------------------------------------------------------------------------------------ errors
def test_offline_and_not_cached(hub_cache):
    with pytest.raises(CheckpointError) as e:
        from_pretrained("google/vit-base-patch16-224")
    msg = str(e.value)
    for part in (
        "google/vit-base-patch16-224",
        "config.json",
        "HF_HUB_OFFLINE",
        "huggingface-cli download",
        str(hub_cache),
    ):
        assert part in msg, part
    with pytest.raises(CheckpointError, match=r"timm/vit_base_patch16_224\.augreg2_in21k_ft_in1k.*HF_HUB_OFFLINE"):
        create_model("vit_base_patch16_224", pretrained=True, **TIMM_TINY)


def test_snapshot_without_ref_is_not_found(hub_cache, tmp_path):
    """huggingface_hub resolves 'main' through refs/main: without it the snapshot is not found, so the files
    are looked up by huggingface_hub, not read from the folder by vitkit."""
    _, folder = hf_saved(tmp_path, "ViTForImageClassification", transformers.ViTConfig, **HF_TINY)
    put_in_cache(hub_cache, "org/vit", folder)
    (hub_cache / "models--org--vit" / "refs" / "main").unlink()
    with pytest.raises(CheckpointError, match="not in the Hugging Face cache"):
        from_pretrained("org/vit")


def test_huggingface_hub_not_installed(hub_cache, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # what `import huggingface_hub` sees when absent
    with pytest.raises(CheckpointError, match=r'org/name.*huggingface_hub.*pip install "vitkit\[hub\]"'):
        from_pretrained("org/name")


def test_not_a_path_nor_a_repo_id(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="does not exist"):
        from_pretrained("no/such/dir")


def test_no_weights_for_the_name():
    with pytest.raises(
        CheckpointError, match=r"no pretrained weights exist for 'vit_micro_patch4_28'.*pretrained=False"
    ):
        create_model("vit_micro_patch4_28", pretrained=True)
    with pytest.raises(ValueError, match=r"unknown pretrained tag 'nope'.*augreg2_in21k_ft_in1k"):
        create_model("vit_base_patch16_224.nope")
    with pytest.raises(ValueError, match="hf-hub:org/name"):
        create_model("org/name")


def test_unknown_argument_is_a_type_error():
    with pytest.raises(TypeError, match=r"\['pretrained_tag'\]"):
        create_model("vit_micro_patch4_28", pretrained_tag="x")
    with pytest.raises(TypeError, match=r"\['drop_path'\].*drop_path_rate"):
        vitkit.create_model("mixer_micro_patch4_28", drop_path=0.1)


# ------------------------------------------------------------------------------------ torchvision URL weights
def test_torchvision_weights_from_torch_hub_cache(tmp_path, monkeypatch):
    """`mvit_base_16x4.tv_k400` is torchvision's mvit_v1_b file, looked up where torchvision caches it
    (TORCH_HOME/hub/checkpoints, or cache_dir). The file here is a small torchvision MViT (mvit_v1_b's
    block rules at micro size) stored under mvit_v1_b's file name, and vitkit is created with the same
    micro sizes: this proves the lookup, the key conversion and the outputs, not the real file."""
    mvit_tv = pytest.importorskip("torchvision.models.video.mvit")
    cfg = mvit_tv.MSBlockConfig
    blocks = [
        cfg(1, 32, 64, [], [3, 3, 3], [], [1, 4, 4]),
        cfg(2, 64, 64, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 2, 2]),
        cfg(2, 64, 128, [], [3, 3, 3], [], [1, 2, 2]),
        cfg(4, 128, 128, [3, 3, 3], [3, 3, 3], [1, 2, 2], [1, 1, 1]),
    ]
    torch.manual_seed(0)
    ref = mvit_tv.MViT(
        (28, 28),
        8,
        blocks,
        residual_pool=False,
        residual_with_cls_embed=False,
        rel_pos_embed=False,
        proj_after_attn=False,
        num_classes=4,
    ).eval()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    checkpoints = tmp_path / "torch" / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(ref.state_dict(), checkpoints / "mvit_v1_b-dbeb1030.pth")
    micro = dict(
        img_size=28,
        num_frames=8,
        num_classes=4,
        embed_dim=32,
        depths=(1, 2, 1),
        stride_kv=(1, 4, 4),
        drop_rate=0.0,
        drop_path_rate=0.0,
    )
    x = torch.randn(2, 3, 8, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = create_model("mvit_base_16x4", pretrained=True, **micro).eval()
        torch.testing.assert_close(ours(x), ref(x), atol=1e-4, rtol=1e-4)
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        (checkpoints / "mvit_v1_b-dbeb1030.pth").rename(elsewhere / "mvit_v1_b-dbeb1030.pth")
        again = create_model("mvit_base_16x4.tv_k400", pretrained=True, cache_dir=elsewhere, **micro).eval()
        torch.testing.assert_close(again(x), ref(x), atol=1e-4, rtol=1e-4)
    assert ours.pretrained_cfg["url"].endswith("mvit_v1_b-dbeb1030.pth") and ours.pretrained_cfg["num_classes"] == 400


def test_vitkit_repo(hub_cache, tmp_path):
    """A repo holding what vitkit's save_pretrained writes loads by repo id and by hf-hub: name."""
    torch.manual_seed(0)
    src = randomise(create_model("vit_micro_patch4_28", depth=2))
    src.save_pretrained(tmp_path / "saved")
    put_in_cache(hub_cache, "me/micro", tmp_path / "saved")
    x = images(c=1, hw=28)
    with torch.no_grad():
        expected = src(x)
        torch.testing.assert_close(from_pretrained("me/micro")(x), expected, **ATOL)
        model = create_model("hf-hub:me/micro", pretrained=True).eval()
        torch.testing.assert_close(model(x), expected, **ATOL)
    assert model.model_name == "vit_micro_patch4_28" and model.pretrained_cfg["hf_hub_id"] == "me/micro"


def test_mistyped_local_path_says_both(hub_cache):
    with pytest.raises(
        CheckpointError,
        match=r"runs/model is not a local path, and as a Hugging Face Hub repo id: "
        r"config.json of runs/model is not in the Hugging Face cache",
    ):
        from_pretrained("runs/model")


def test_features_only_through_the_factory(tmp_path):
    """features_only=True wraps the (loaded) model for feature extraction, as timm's factory does."""
    ref, folder = timm_saved(tmp_path, "vit_base_patch16_224", safe_serialization=True, **TIMM_TINY)
    feats = create_model(
        "vit_base_patch16_224",
        pretrained=folder / "model.safetensors",
        features_only=True,
        out_indices=(0, 1),
        **TIMM_TINY,
    ).eval()
    timm_feats = timm.create_model(
        "vit_base_patch16_224",
        features_only=True,
        out_indices=(0, 1),
        pretrained_cfg_overlay=dict(file=str(folder / "model.safetensors")),
        pretrained=True,
        **TIMM_TINY,
    ).eval()
    x = images()
    with torch.no_grad():
        ours, theirs = feats(x), timm_feats(x)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, **ATOL)
    with pytest.raises(TypeError, match="features_only"):
        create_model("vit_micro_patch4_28", out_indices=(0,))


# ------------------------------------------------------------------------------------ online, against a local server
class _FakeHub:
    """A local HTTP server that answers `/ORG/NAME/resolve/REVISION/FILE` as the Hub does: HEAD with the
    X-Repo-Commit / ETag / Content-Length headers huggingface_hub reads, GET with the bytes, and the Hub's
    X-Error-Code headers for what is not there. Not the Hub: huggingface_hub's real client talks to it."""

    def __init__(self):
        import http.server
        import threading

        self.files: dict[tuple[str, str], bytes] = {}
        self.errors: dict[str, tuple[int, str]] = {}  # repo -> (status, X-Error-Code)
        self.requests: list[str] = []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_HEAD(self, body=False):
                parts = self.path.split("?")[0].split("/")
                hub.requests.append(f"{self.command} {self.path}")
                repo = "/".join(parts[1:3])
                if len(parts) < 6 or parts[3] != "resolve":
                    return self._answer(404, "")
                if repo in hub.errors:
                    return self._answer(*hub.errors[repo])
                data = hub.files.get((repo, "/".join(parts[5:])))
                if data is None:
                    return self._answer(404, "EntryNotFound")
                self.send_response(200)
                self.send_header("X-Repo-Commit", hashlib.sha1(repo.encode()).hexdigest())
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def do_GET(self):
                self.do_HEAD(body=True)

            def _answer(self, status, code):
                self.send_response(status)
                if code:
                    self.send_header("X-Error-Code", code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, repo_id: str, folder: Path) -> None:
        for path in folder.iterdir():
            self.files[(repo_id, path.name)] = path.read_bytes()


@pytest.fixture
def fake_hub(hub_cache, monkeypatch):
    hub = _FakeHub()
    c = huggingface_hub.constants
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", hub.url)
    monkeypatch.setattr(c, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    yield hub
    hub.server.shutdown()


def test_download_into_the_cache_then_offline(fake_hub, hub_cache, tmp_path, monkeypatch):
    """Online, hf_hub_download fetches config.json and model.safetensors (never pytorch_model.bin when the
    safetensors file exists) into the cache; offline afterwards, the same call reads the cache."""
    ref, folder = timm_saved(tmp_path, "vit_base_patch16_224", safe_serialization="both", **TIMM_TINY)
    fake_hub.add("someone/tiny-vit", folder)
    x = images()
    with torch.no_grad():
        expected = ref(x)
        torch.testing.assert_close(create_model("hf-hub:someone/tiny-vit", pretrained=True).eval()(x), expected, **ATOL)
    fetched = [r for r in fake_hub.requests if r.startswith("GET /someone/")]
    assert fetched == [
        "GET /someone/tiny-vit/resolve/main/config.json",
        "GET /someone/tiny-vit/resolve/main/model.safetensors",
    ]
    assert (hub_cache / "models--someone--tiny-vit" / "refs" / "main").is_file()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fake_hub.requests.clear()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained("someone/tiny-vit")(x), expected, **ATOL)
    assert fake_hub.requests == []


def test_pytorch_model_bin_when_no_safetensors(fake_hub, tmp_path):
    ref, folder = timm_saved(tmp_path, "vit_base_patch16_224", safe_serialization=False, **TIMM_TINY)
    fake_hub.add("someone/bin-only", folder)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained("someone/bin-only")(x), ref(x), **ATOL)
    assert "HEAD /someone/bin-only/resolve/main/model.safetensors" in fake_hub.requests


@pytest.mark.parametrize(
    "status, code, match",
    [
        (
            401,
            "GatedRepo",
            r"org/repo is a gated repo: accept its conditions at https://huggingface.co/org/repo and log in",
        ),
        (401, "RepoNotFound", r"org/repo is not a model repo on the Hugging Face Hub \(or it is private: log in"),
        (404, "RevisionNotFound", r"org/repo has no revision 'v9'"),
        # any other refusal: huggingface_hub falls back to its (empty) cache; the message carries the Hub's answer
        (403, "", r"could not download config.json of org/repo \(HfHubHTTPError: 403 Forbidden.*not in the cache"),
    ],
)
def test_hub_errors(fake_hub, status, code, match):
    fake_hub.errors["org/repo"] = (status, code)
    with pytest.raises(CheckpointError, match=match):
        from_pretrained("org/repo", revision="v9" if code == "RevisionNotFound" else None)


def test_repo_without_weights(fake_hub, tmp_path):
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "config.json").write_text('{"model_type": "vit"}')
    fake_hub.add("org/config-only", tmp_path / "cfg")
    with pytest.raises(CheckpointError, match=r"org/config-only has no file model.safetensors"):
        from_pretrained("org/config-only")


# ------------------------------------------------------------------------------------ sharded checkpoints
def hf_sharded(tmp_path, safe: bool = True):
    """A transformers ViT saved in shards (`max_shard_size`), as larger Hub models are."""
    hf = randomise(transformers.ViTForImageClassification(transformers.ViTConfig(**HF_TINY)), 0)
    folder = tmp_path / ("sharded-safe" if safe else "sharded-bin")
    hf.save_pretrained(folder, max_shard_size="20KB")
    if not safe:  # transformers writes safetensors only; huggingface_hub's writer still makes .bin shards
        for p in folder.glob("model*.safetensors*"):
            p.unlink()
        huggingface_hub.save_torch_state_dict(hf.state_dict(), folder, max_shard_size="20KB", safe_serialization=False)
    index = "model.safetensors.index.json" if safe else "pytorch_model.bin.index.json"
    assert (folder / index).is_file() and len({p.name for p in folder.iterdir()}) > 3  # really sharded
    return hf, folder


@pytest.mark.parametrize("safe", [True, False])
def test_sharded_directory_loads(tmp_path, safe):
    hf, folder = hf_sharded(tmp_path, safe)
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained(folder)(x), hf_logits(hf, x), **ATOL)


def test_sharded_repo_is_downloaded_whole_then_read_offline(fake_hub, hub_cache, tmp_path, monkeypatch):
    hf, folder = hf_sharded(tmp_path)
    fake_hub.add("someone/sharded-vit", folder)
    x = images()
    with torch.no_grad():
        expected = hf_logits(hf, x)
        torch.testing.assert_close(from_pretrained("someone/sharded-vit")(x), expected, **ATOL)
    shards = sorted(p.name for p in folder.glob("model-*.safetensors"))
    fetched = {r.rsplit("/", 1)[-1] for r in fake_hub.requests if r.startswith("GET /someone/")}
    assert set(shards) <= fetched and "model.safetensors.index.json" in fetched
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    fake_hub.requests.clear()
    with torch.no_grad():
        torch.testing.assert_close(from_pretrained("someone/sharded-vit")(x), expected, **ATOL)
    assert fake_hub.requests == []


def test_sharded_checkpoint_errors(tmp_path):
    import json

    _, folder = hf_sharded(tmp_path)
    index_path = folder / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]

    (folder / shard).rename(folder / "moved.safetensors")
    with pytest.raises(CheckpointError, match=rf"names shard\(s\) that are not there: {shard}"):
        from_pretrained(folder)
    (folder / "moved.safetensors").rename(folder / shard)

    key = next(k for k, v in index["weight_map"].items() if v == shard)
    bad = dict(index, weight_map={**index["weight_map"], key: "../" + shard})
    index_path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=r"not the name of a file beside the index"):
        from_pretrained(folder)

    other = sorted(set(index["weight_map"].values()))[1]
    bad = dict(index, weight_map={**index["weight_map"], key: other})  # the index puts a key in the wrong shard
    index_path.write_text(json.dumps(bad))
    with pytest.raises(CheckpointError, match=rf"{other} does not hold what model.safetensors.index.json says"):
        from_pretrained(folder)

"""MAE (vitkit/methods/mae.py): exact masking, loss on masked patches only, unshuffling, Hugging
Face parity after conversion, the paper's parameter count, the figure, save/load."""

import pytest
import torch

import vitkit
from vitkit.methods import create_method
from vitkit.methods.mae import (
    MaskedAutoencoder,
    patchify,
    random_masking,
    sincos_pos_embed_2d,
    unpatchify,
)


def tiny_mae(**kw) -> MaskedAutoencoder:
    torch.manual_seed(0)
    backbone = vitkit.create_model("vit_micro_patch4_28", num_classes=0, embed_dim=32, depth=2, num_heads=2)
    return create_method("mae", backbone, **kw)


def test_random_masking_ratio_and_indices_exact():
    B, N = 4, 49
    ids_keep, mask, ids_restore = random_masking(B, N, 0.75, generator=torch.Generator().manual_seed(0))
    keep = int(N * 0.25)
    assert ids_keep.shape == (B, keep)
    assert (mask.sum(1) == N - keep).all()
    for b in range(B):  # the kept indices are exactly the unmasked positions
        assert sorted(ids_keep[b].tolist()) == torch.nonzero(mask[b] == 0).flatten().tolist()
    # unshuffle: [visible, masked] put back with ids_restore gives the image order
    x = torch.arange(N).expand(B, N)
    ids_shuffle = torch.argsort(ids_restore, dim=1)
    shuffled = torch.gather(x, 1, ids_shuffle)
    assert torch.equal(shuffled[:, :keep], ids_keep)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), x)


def test_masking_is_deterministic_with_seed_or_noise():
    a = random_masking(2, 16, 0.5, generator=torch.Generator().manual_seed(3))
    b = random_masking(2, 16, 0.5, generator=torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    noise = torch.rand(2, 16)
    keep, _mask, _ = random_masking(2, 16, 0.5, noise=noise)
    assert torch.equal(keep, torch.argsort(noise, 1)[:, :8])
    with pytest.raises(ValueError, match="mask_ratio"):
        random_masking(2, 16, 1.0)


def test_encoder_sees_only_visible_patches():
    model = tiny_mae().eval()
    x = torch.randn(2, 1, 28, 28)
    latent, _mask, _ = model.forward_encoder(x, generator=torch.Generator().manual_seed(0))
    assert latent.shape == (2, 1 + int(49 * 0.25), 32)
    # keeping every patch in image order is the plain encoder
    full = model.encoder.forward_features(x, keep_indices=torch.arange(49).expand(2, 49))
    torch.testing.assert_close(full, model.encoder.forward_features(x))


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_ignores_visible_patches(norm_pix):
    model = tiny_mae(norm_pix_loss=norm_pix)
    x = torch.randn(2, 1, 28, 28)
    pred = torch.randn(2, 49, 16)
    _, mask, _ = random_masking(2, 49, 0.75, generator=torch.Generator().manual_seed(1))
    patches = patchify(x, 4)
    changed_visible = unpatchify(patches + 5 * torch.randn_like(patches) * (1 - mask)[..., None], 4, (7, 7), 1)
    changed_masked = unpatchify(patches + 5 * torch.randn_like(patches) * mask[..., None], 4, (7, 7), 1)
    base = model.forward_loss(x, pred, mask)
    torch.testing.assert_close(model.forward_loss(changed_visible, pred, mask), base)
    assert not torch.allclose(model.forward_loss(changed_masked, pred, mask), base)


def test_patchify_roundtrip_and_sincos():
    x = torch.randn(2, 3, 8, 12)
    assert torch.equal(unpatchify(patchify(x, 4), 4, (2, 3), 3), x)
    pe = sincos_pos_embed_2d(16, (2, 3), num_prefix_tokens=1)
    assert pe.shape == (1, 7, 16) and torch.equal(pe[0, 0], torch.zeros(16))
    # column first: patches in one column share the first half
    torch.testing.assert_close(pe[0, 1, :8], pe[0, 4, :8])


def test_train_step_no_nan_all_parameters_get_gradients():
    model = tiny_mae()
    out = model(torch.randn(4, 1, 28, 28))
    assert set(out) >= {"loss", "feature_std"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert not model.encoder.pos_embed.requires_grad and not model.decoder_pos_embed.requires_grad


def test_mae_base_parameter_count():
    with torch.device("meta"):
        model = vitkit.create_model("mae_vit_base_patch16")
    assert (
        sum(p.numel() for p in model.parameters()) == 111_907_840
    )  # HF ViTMAEForPreTraining (ViT-B/16, 8x512 decoder)
    frozen = 197 * 768 + 197 * 512  # the two sin-cos tables
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 111_907_840 - frozen


@pytest.mark.parametrize("norm_pix", [False, True])
def test_hf_vitmae_parity(tmp_path, norm_pix):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.ViTMAEConfig(
        image_size=32,
        patch_size=8,
        num_channels=3,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        decoder_hidden_size=16,
        decoder_num_hidden_layers=2,
        decoder_num_attention_heads=2,
        decoder_intermediate_size=48,
        mask_ratio=0.75,
        norm_pix_loss=norm_pix,
    )
    hf = transformers.ViTMAEForPreTraining(cfg).eval()
    with torch.no_grad():  # HF zero-initialises biases: randomise everything so the comparison can fail
        for p in hf.parameters():
            p.add_(0.05 * torch.randn_like(p))
    hf.save_pretrained(tmp_path)
    model = vitkit.from_pretrained(tmp_path)
    assert isinstance(model, MaskedAutoencoder)
    x, noise = torch.randn(3, 3, 32, 32), torch.rand(3, 16)
    with torch.no_grad():
        ref = hf(pixel_values=x, noise=noise)
        loss, pred, mask, _ = model.forward_mae(x, noise=noise)
    assert (ref.logits - pred).abs().max() <= 1e-4
    assert (ref.loss - loss).abs() <= 1e-4
    assert torch.equal(ref.mask, mask)
    assert pred.abs().max() > 0.1  # not vacuous
    # the encoder alone (ViTMAEModel layout) loads as a plain vitkit ViT
    encoder_dir = tmp_path / "encoder"
    hf.vit.save_pretrained(encoder_dir)
    vit = vitkit.from_pretrained(encoder_dir)
    assert type(vit).__name__ == "VisionTransformer"
    torch.testing.assert_close(vit.forward_features(x), model.encoder.forward_features(x))


def test_save_load_roundtrip_and_official_layout(tmp_path):
    model = tiny_mae(norm_pix_loss=True).eval()
    model.save_pretrained(tmp_path / "m")
    again = vitkit.from_pretrained(tmp_path / "m")
    x, noise = torch.randn(2, 1, 28, 28), torch.rand(2, 49)
    torch.testing.assert_close(again.forward_mae(x, noise=noise)[1], model.forward_mae(x, noise=noise)[1])
    # official MAE checkpoints keep the encoder at the top level
    official = {k.removeprefix("encoder."): v for k, v in model.state_dict().items()}
    assert set(model.adapt_checkpoint(official)) == set(model.state_dict())


def test_reconstruction_figure(tmp_path):
    model = tiny_mae()
    path = model.save_figure(torch.randn(3, 1, 28, 28), tmp_path / "rec.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_backbone_is_refused():
    with pytest.raises(ValueError, match="plain ViT"):
        create_method("mae", vitkit.create_model("mixer_micro_patch4_28"))
    with pytest.raises(ValueError, match="unknown MAE option"):
        tiny_mae(mask_rate=0.5)

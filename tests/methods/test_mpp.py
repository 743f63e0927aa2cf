"""Masked patch prediction (vitkit/methods/mpp.py): 3-bit mean-colour targets, the 50% / 80-10-10
corruption, the loss on corrupted patches only, a training step."""

import pytest
import torch

import vitkit
from vitkit.methods import create_method
from vitkit.methods.mpp import mean_color_targets


def tiny(name="vit_micro_patch4_28", **kw):
    torch.manual_seed(0)
    backbone = vitkit.create_model(name, num_classes=0, embed_dim=32, depth=2, num_heads=2)
    return create_method("mpp", backbone, **kw)


def test_mean_color_targets():
    img = torch.zeros(1, 3, 4, 8)
    img[0, :, :, :4] = torch.tensor([1.0, 0.0, 0.5]).view(3, 1, 1)  # left patch: r=7, g=0, b=4
    img[0, :, :, 4:] = torch.tensor([0.2, 0.99, 0.0]).view(3, 1, 1)  # right: r=1, g=7, b=0
    assert mean_color_targets(img, 4).tolist() == [[7 * 64 + 0 * 8 + 4, 1 * 64 + 7 * 8 + 0]]
    grey = torch.full((1, 1, 4, 4), 0.3)
    assert mean_color_targets(grey, 2).tolist() == [[2, 2, 2, 2]]


def test_number_of_classes():
    assert tiny().num_classes == 8  # grey: 3 bits
    assert tiny("vit_micro_patch4_32").num_classes == 512  # RGB: the paper's 512 colours


def test_corruption_fractions():
    model = tiny()
    tokens = torch.randn(64, 49, 32)
    out, corrupted = model.corrupt(tokens, torch.Generator().manual_seed(0))
    assert (corrupted.sum(1) == 24).all()  # exactly int(0.5 * 49) per image
    assert torch.equal(out[~corrupted], tokens[~corrupted])  # the others are untouched
    is_mask = (out == model.mask_token.detach().view(1, 1, -1)).all(-1)
    assert not (is_mask & ~corrupted).any()
    changed = corrupted & ~is_mask & (out != tokens).any(-1)
    kept = corrupted & (out == tokens).all(-1)
    n = corrupted.sum().item()
    assert is_mask.sum().item() / n == pytest.approx(0.8, abs=0.03)
    assert changed.sum().item() / n == pytest.approx(0.1, abs=0.02)
    assert kept.sum().item() / n == pytest.approx(0.1, abs=0.02)


def test_loss_ignores_uncorrupted_patches():
    """Changing the targets of uncorrupted patches leaves the loss unchanged; changing a corrupted
    patch's target changes it."""
    model = tiny()
    x = torch.rand(2, 1, 28, 28)
    tokens, corrupted = model.corrupt(model.backbone.patch_embed(x), torch.Generator().manual_seed(5))
    out = model.backbone.forward_tokens(tokens)[:, 1:]
    targets = torch.randint(0, 8, (2, 49))
    loss, _ = model.loss(out, targets, corrupted)
    other = torch.where(corrupted, targets, (targets + 3) % 8)
    torch.testing.assert_close(model.loss(out, other, corrupted)[0], loss)
    changed = torch.where(corrupted, (targets + 3) % 8, targets)
    assert not torch.allclose(model.loss(out, changed, corrupted)[0], loss)
    assert model(x)["loss"].requires_grad


def test_training_step_lowers_the_loss():
    model = tiny()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.rand(16, 1, 28, 28) * 2 - 1
    first = None
    for _ in range(15):
        out = model(x, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        first = first if first is not None else out["loss"].item()
    assert out["loss"].item() < first
    assert {"loss", "acc", "feature_std"} <= set(out)


def test_bad_options():
    with pytest.raises(ValueError, match="mask_prob"):
        tiny(mask_prob=1.5)
    with pytest.raises(ValueError, match="unexpected keyword argument 'nosuch'"):
        tiny(nosuch=1)
    with pytest.raises(ValueError, match="plain vitkit ViT"):
        create_method("mpp", vitkit.create_model("mixer_micro_patch4_28"))

"""The small CNNs (vitkit/models/cnn.py): exact parameter counts by hand, the backbone contract
(features, head, intermediates, reset_classifier, gradient checkpointing, save/load), the
identity start of the residual blocks, input checks, and a short real training run."""

from __future__ import annotations

import pytest
import torch
from contract import check_grad_checkpointing, check_save_roundtrip
from torch import nn

import vitkit
from vitkit import create_model, list_models
from vitkit.models import _base as base_mod  # Backbone._checkpointed runs the stages
from vitkit.models import cnn
from vitkit.registry import get_model_spec

NAMES = [n for n in list_models() if get_model_spec(n).family == "cnn"]


def randomise(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random head, BN affine and running statistics: the zero head / zero last-BN init would make
    outputs and gradients vanish and the checks below pass vacuously."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(0.5 + torch.rand(m.weight.shape, generator=g))
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(m.running_mean.shape, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=g))
        model.head.weight.copy_(0.5 * torch.randn(model.head.weight.shape, generator=g))
        model.head.bias.copy_(0.1 * torch.randn(model.head.bias.shape, generator=g))
    return model


def test_registered_names():
    assert {"resnet_micro_28", "regnety_micro_28", "resnet_micro_32", "regnety_micro_32"} <= set(NAMES)
    assert vitkit.models.FAMILIES["cnn"] is cnn.ConvNet


def conv_bn(c_in, c_out, k, groups=1):
    return c_in // groups * c_out * k * k + 2 * c_out


def test_resnet_param_count_by_hand():
    # stem 3x3 1->32; basic blocks 32->32 (s2), 32->64 (s2), 64->128 (s2), each with a 1x1 projection
    # shortcut (the stride changes the shape); a 128->10 head
    stem = conv_bn(1, 32, 3)
    blocks = sum(conv_bn(a, b, 3) + conv_bn(b, b, 3) + conv_bn(a, b, 1) for a, b in ((32, 32), (32, 64), (64, 128)))
    expected = stem + blocks + 128 * 10 + 10
    assert expected == 309_162
    assert sum(p.numel() for p in create_model("resnet_micro_28").parameters()) == expected


def test_regnety_param_count_by_hand():
    def block(a, b, projection):  # 1x1, 3x3 group conv (b / 16 groups), SE (width a / 4, with biases), 1x1
        se = a // 4
        n = conv_bn(a, b, 1) + conv_bn(b, b, 3, groups=b // 16) + (b * se + se) + (se * b + b) + conv_bn(b, b, 1)
        return n + (conv_bn(a, b, 1) if projection else 0)  # first block of a stage (stride 2): projection

    expected = (
        conv_bn(1, 32, 3)
        + block(32, 32, True)
        + block(32, 64, True)
        + block(64, 64, False)
        + block(64, 128, True)
        + block(128, 128, False)
        + 128 * 10
        + 10
    )
    assert sum(p.numel() for p in create_model("regnety_micro_28").parameters()) == expected


@pytest.mark.parametrize("name", NAMES)
def test_backbone_contract(name, tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = randomise(create_model(name, num_classes=5, img_size=(20, 12)))
    spec = get_model_spec(name).config
    x = torch.randn(2, spec["in_chans"], 20, 12)
    model.eval()
    feats = model.forward_features(x)
    assert feats.shape == (2, 128, 3, 2)  # 20x12 -> /8 (three stride-2 stages, rounding up)
    pooled = model.forward_head(feats, pre_logits=True)
    assert pooled.shape == (2, model.num_features) == (2, 128)
    logits = model(x)
    assert logits.shape == (2, 5) and model.num_classes == 5
    torch.testing.assert_close(logits, model.head(pooled))
    final, inter = model.forward_intermediates(x)
    assert [t.shape[1:] for t in inter] == [(32, 10, 6), (64, 5, 3), (128, 3, 2)]
    torch.testing.assert_close(final, feats)
    assert len(model.forward_intermediates(x, indices=1, intermediates_only=True)) == 1
    # a new head: fresh and zero, and the state dict follows
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == model.config.num_classes == 3
    assert torch.count_nonzero(model(x)) == 0
    model.reset_classifier(0)
    assert model(x).shape == (2, 128)
    model = randomise(create_model(name, num_classes=5, img_size=(20, 12)))
    check_save_roundtrip(model.eval(), x, tmp_path, name)
    model.train()
    check_grad_checkpointing(model, x, base_mod, monkeypatch, expected_calls=3, loss_fn=lambda out: out.square().sum())


@pytest.mark.parametrize("name", ["resnet_micro_28", "regnety_micro_28"])
def test_blocks_start_as_identity_and_head_at_zero(name):
    """Zero last-BN gamma (timm's zero_init_last): each residual block starts as ReLU(shortcut);
    the zero head gives uniform predictions."""
    model = create_model(name).eval()
    block = model.stages[2].blocks[-1]
    x = torch.randn(2, block.last_bn().num_features, 4, 4)
    if block.shortcut.proj is None:
        torch.testing.assert_close(block(x), torch.relu(x))
    assert torch.count_nonzero(model(torch.rand(2, 1, 28, 28))) == 0


def test_input_and_config_errors():
    model = create_model("resnet_micro_28")
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 1, H, W\).*in_chans=3"):
        model(torch.rand(1, 3, 28, 28))
    with pytest.raises(ValueError, match="block must be 'basic'"):
        create_model("resnet_micro_28", block="dense")
    with pytest.raises(ValueError, match="one entry per stage"):
        create_model("resnet_micro_28", depths=(1, 1))
    with pytest.raises(ValueError, match="not a multiple of group_width"):
        create_model("regnety_micro_28", group_width=24)


def test_layer_decay_groups():
    from vitkit.train import TrainConfig
    from vitkit.train.optim import layer_ids

    model = create_model("resnet_micro_28")
    ids, last = layer_ids(model)
    assert ids["stem.0.weight"] == 0 and ids["stages.0.blocks.0.conv1.0.weight"] == 1
    assert ids["stages.2.blocks.0.conv2.1.weight"] == 3 and ids["head.weight"] == last == 4
    cfg = TrainConfig().optim
    cfg.layer_decay = 0.5
    from vitkit.train.optim import param_groups

    assert sum(len(g["params"]) for g in param_groups(model, cfg)) == len(list(model.parameters()))


def test_trains_on_digits(tmp_path):
    """Real data, `vitkit train`: three epochs of the ResNet on the scikit-learn digits beat chance by far."""
    pytest.importorskip("sklearn")
    from vitkit.train import TrainConfig, apply_overrides, train

    cfg = apply_overrides(
        TrainConfig(),
        [
            f"--run.out={tmp_path / 'run'}",
            "--model.name=resnet_micro_28",
            "--sched.epochs=3",
            "--sched.warmup_epochs=0",
            "--run.progress=false",
            "--run.threads=1",
        ],
    )
    m = train(cfg)
    assert m["test_acc"] > 80.0  # 95.5% measured
    loaded = vitkit.from_pretrained(tmp_path / "run" / "model")
    assert loaded.config.img_size == (8, 8) and loaded.num_classes == 10

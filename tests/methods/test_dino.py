"""DINO (vitkit/methods/dino.py): head size, loss and centring by hand, EMA, schedules, a training
step, the last-layer freeze and the [CLS] attention figure. The centre's all-reduce across 2
processes and DINO under torchrun are tested in test_msn.py (one torchrun start-up for both methods)."""

import math

import pytest
import torch

import vitkit
from vitkit.methods import create_method, list_methods
from vitkit.methods.dino import (
    DINO,
    DINOHead,
    DINOLoss,
    cls_attention_maps,
    cosine_momentum,
    ema_update,
    plot_cls_attention,
    teacher_temperature,
)

MEAN, STD = (0.1307,), (0.3081,)


def tiny_dino(**kw) -> DINO:
    torch.manual_seed(0)
    backbone = vitkit.create_model("vit_micro_patch4_28", num_classes=0, dynamic_img_size=True)
    opts = {
        "out_dim": 64,
        "hidden_dim": 32,
        "bottleneck_dim": 16,
        "num_local": 2,
        "mean": MEAN,
        "std": STD,
        "generator": torch.Generator().manual_seed(0),
    }
    opts.update(kw)
    return create_method("dino", backbone, **opts)


def test_registered():
    assert {"dino", "msn"} <= set(list_methods())


def test_head_on_vit_s_has_the_papers_parameter_count():
    head = DINOHead(384)  # in 384, hidden 2048, bottleneck 256, out 65,536
    assert sum(p.numel() for p in head.parameters()) == 22_352_128  # the whole head, g included
    assert sum(p.numel() for p in head.parameters() if p.requires_grad) == 22_352_128 - 65_536  # g frozen at 1
    w = head.last_layer.weight
    torch.testing.assert_close(w.norm(dim=1), torch.ones(65_536))
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]
    assert DINOHead(384, norm_last_layer=False).last_layer.parametrizations.weight.original0.requires_grad
    bn = DINOHead(8, out_dim=16, hidden_dim=4, bottleneck_dim=2, use_bn=True)
    assert [type(m).__name__ for m in bn.mlp] == ["Linear", "BatchNorm1d", "GELU"] * 2 + ["Linear"]


def _log_softmax(v):
    z = sum(math.exp(a) for a in v)
    return [a - math.log(z) for a in v]


def test_dino_loss_and_centring_by_hand():
    t = [[1.0, 0.0, -1.0], [0.5, 0.5, 0.0]]  # teacher logits of the 2 global crops (batch 1)
    s = [[0.2, 0.1, 0.0], [0.0, 0.3, -0.2], [0.1, -0.1, 0.4]]  # student: 2 globals + 1 local
    c, tt, st = [0.2, -0.1, 0.0], 0.05, 0.1
    loss_fn = DINOLoss(3, student_temp=st, center_momentum=0.9)
    loss_fn.center.copy_(torch.tensor([c]))
    loss, entropy = loss_fn([torch.tensor([v]) for v in s], [torch.tensor([v]) for v in t], tt)

    q = [[math.exp(a) for a in _log_softmax([(ti - ci) / tt for ti, ci in zip(row, c)])] for row in t]
    terms = [
        -sum(qi * li for qi, li in zip(q[iq], _log_softmax([a / st for a in s[v]])))
        for iq in range(2)
        for v in range(3)
        if v != iq
    ]
    assert len(terms) == 4
    assert loss.item() == pytest.approx(sum(terms) / 4, rel=1e-5)
    h = [-sum(p * math.log(p) for p in row) for row in q]
    assert entropy.item() == pytest.approx(sum(h) / 2, rel=1e-5)
    new_c = [0.9 * ci + 0.1 * (t[0][k] + t[1][k]) / 2 for k, ci in enumerate(c)]
    torch.testing.assert_close(loss_fn.center, torch.tensor([new_c]))


def test_ema_update_is_exact():
    teacher, student = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.detach().clone() for p in teacher.parameters()]
    ema_update(teacher, student, 0.9)
    for t, b, s in zip(teacher.parameters(), before, student.parameters()):
        torch.testing.assert_close(t, 0.9 * b + 0.1 * s)


def test_schedule_endpoints():
    assert cosine_momentum(0, 100) == pytest.approx(0.996)
    assert cosine_momentum(100, 100) == pytest.approx(1.0)
    assert cosine_momentum(50, 100) == pytest.approx(0.998)
    assert teacher_temperature(0, 1000) == pytest.approx(0.04)
    assert teacher_temperature(150, 1000) == pytest.approx(0.055)  # halfway through the 30% warm-up
    assert teacher_temperature(300, 1000) == pytest.approx(0.07)
    assert teacher_temperature(999, 1000) == pytest.approx(0.07)
    assert teacher_temperature(0, 1000, warmup=0.0) == pytest.approx(0.07)


def test_a_training_step_and_the_teacher_update():
    m = tiny_dino(freeze_last_layer=0.0)
    x = torch.randn(4, 1, 28, 28)
    out = m(x)
    assert set(out) >= {"loss", "teacher_entropy", "kl", "feature_std", "teacher_temp", "momentum"}
    assert all(torch.isfinite(v) for v in out.values())
    assert all(not v.requires_grad for k, v in out.items() if k != "loss")
    out["loss"].backward()
    for name, p in m.named_parameters():
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    assert not any(p.requires_grad for p in m.teacher.parameters())
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    t_before = [p.detach().clone() for p in m.teacher.parameters()]
    m.on_step_end(0, 10)
    for t, b, s in zip(m.teacher.parameters(), t_before, m.backbone.parameters()):
        torch.testing.assert_close(t, 0.996 * b + 0.004 * s)
    assert m.teacher_temp == pytest.approx(0.04 + 0.03 / 3)  # step 1 of a 3-step warm-up
    assert not m.teacher.training and m.backbone.training
    sd = m.encoder_state_dict()
    fresh = vitkit.create_model("vit_micro_patch4_28", num_classes=0, dynamic_img_size=True)
    fresh.load_state_dict(sd)


def test_last_layer_frozen_for_the_first_steps():
    m = tiny_dino(freeze_last_layer=0.5)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    v = m.head.last_layer.parametrizations.weight.original1
    x = torch.randn(4, 1, 28, 28)
    for step in range(4):
        before = v.detach().clone()
        m(x)["loss"].backward()
        frozen = m.last_layer_frozen
        opt.step()
        opt.zero_grad()
        m.on_step_end(step, 4)
        assert torch.equal(v, before) == frozen, step
    assert m.last_layer_frozen is False


def test_cls_attention_maps_and_figure(tmp_path):
    torch.manual_seed(0)
    backbone = vitkit.create_model("vit_micro_patch4_28", num_classes=0)
    x = torch.randn(2, 1, 28, 28)
    maps = cls_attention_maps(backbone, x)
    heads = backbone.config.num_heads
    assert maps.shape == (2, heads, 7, 7)
    assert (maps >= 0).all() and (maps.sum((-1, -2)) <= 1 + 1e-5).all()  # the rest goes to [CLS] itself
    path = plot_cls_attention(backbone, x, tmp_path / "attn.png", MEAN, STD)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    no_cls = vitkit.create_model("vit_micro_patch4_28", num_classes=0, class_token=False, global_pool="avg")
    with pytest.raises(ValueError, match="no \\[CLS\\] token"):
        cls_attention_maps(no_cls, x)


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="momentum"):
        tiny_dino(momentum=1.5)
    with pytest.raises(ValueError, match="temperature"):
        tiny_dino(teacher_temp=0.0)
    backbone = vitkit.create_model("vit_micro_patch4_28", num_classes=0)
    backbone.pretrained_cfg = {}  # no normalisation known: the views cannot be made
    with pytest.raises(ValueError, match="mean"):
        create_method("dino", backbone, out_dim=8, hidden_dim=8, bottleneck_dim=4, num_local=0)(
            torch.randn(2, 1, 28, 28)
        )

"""DeiT distillation (vitkit/methods/distill.py): the losses against hand-computed values, the two
KL normalisations, label smoothing and mixup targets, gradients into the distillation token, the
teacher checks and their errors, cached logits, and `vitkit train` end to end on the digits."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitkit
from vitkit.methods.distill import (
    DistillationLoss,
    Teacher,
    build_distillation,
    check_teacher,
    hard_distillation_loss,
    load_teacher,
    precompute_logits,
    soft_distillation_loss,
)
from vitkit.train import TrainConfig, apply_overrides

LN3 = math.log(3.0)


def ce(p_label: float) -> float:
    return -math.log(p_label)


# ------------------------------------------------------------------------------------ losses by hand
def test_soft_term_by_hand():
    # student logits (0, 0): p_s = (1/2, 1/2); teacher (ln 3, 0): p_t = (3/4, 1/4) at tau = 1
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]])
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert soft_distillation_loss(s, t, tau=1.0).item() == pytest.approx(kl, abs=1e-6)
    assert soft_distillation_loss(s, t, tau=1.0, kl_reduction="deit").item() == pytest.approx(kl / 2, abs=1e-6)
    # tau = 2: teacher (ln 3 / 2, 0) -> p_t = (sqrt 3, 1) / (sqrt 3 + 1); times tau^2 = 4
    q = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = q * math.log(q / 0.5) + (1 - q) * math.log((1 - q) / 0.5)
    assert soft_distillation_loss(s, t, tau=2.0).item() == pytest.approx(4 * kl2, abs=1e-6)
    # the same student and teacher agree: zero
    assert soft_distillation_loss(t, t, tau=3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_soft_term_normalisations_against_timm_and_deit_formulas():
    """'batchmean' is timm's task formula; 'deit' is DeiT's losses.py (sum / numel), i.e. batchmean / K."""
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 7, generator=g), torch.randn(6, 7, generator=g)
    tau = 3.0
    ls, lt = F.log_softmax(s / tau, dim=-1), F.log_softmax(t / tau, dim=-1)
    timm = F.kl_div(ls, lt, reduction="batchmean", log_target=True) * tau**2
    deit = F.kl_div(ls, lt, reduction="sum", log_target=True) * (tau * tau) / s.numel()
    torch.testing.assert_close(soft_distillation_loss(s, t, tau), timm)
    torch.testing.assert_close(soft_distillation_loss(s, t, tau, "deit"), deit)
    torch.testing.assert_close(deit * 7, timm)


def test_soft_loss_by_hand():
    # label 0, student (0, 0): CE = ln 2; lambda = 0.1, tau = 1
    s, t, y = torch.tensor([[0.0, 0.0]]), torch.tensor([[LN3, 0.0]]), torch.tensor([0])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    loss = DistillationLoss("soft", alpha=0.1, tau=1.0)(s, y, t)
    assert loss.item() == pytest.approx(0.9 * math.log(2) + 0.1 * kl, abs=1e-6)
    assert DistillationLoss("soft").alpha == 0.1 and DistillationLoss("hard").alpha == 0.5  # defaults


def test_hard_loss_by_hand():
    # student (2, 0): p = (1, e^-2) / (1 + e^-2); label 0; the teacher (0, 1) says class 1
    s, t, y = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    p0 = 1 / (1 + math.exp(-2))
    assert hard_distillation_loss(s, t).item() == pytest.approx(ce(1 - p0), abs=1e-6)
    loss = DistillationLoss("hard")(s, y, t)
    assert loss.item() == pytest.approx(0.5 * ce(p0) + 0.5 * ce(1 - p0), abs=1e-6)


def test_distillation_token_splits_the_terms():
    """Class head <- label term, distillation head <- teacher term (DeiT section 4)."""
    cls, dist = torch.tensor([[2.0, 0.0]]), torch.tensor([[0.0, 0.0]])
    t, y = torch.tensor([[LN3, 0.0]]), torch.tensor([0])
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    p0 = 1 / (1 + math.exp(-2))
    soft = DistillationLoss("soft", alpha=0.25, tau=1.0)((cls, dist), y, t)
    assert soft.item() == pytest.approx(0.75 * ce(p0) + 0.25 * kl, abs=1e-6)
    hard = DistillationLoss("hard")((cls, dist), torch.tensor([1]), t)  # label 1, teacher says 0
    assert hard.item() == pytest.approx(0.5 * ce(1 - p0) + 0.5 * math.log(2), abs=1e-6)
    # no teacher: both heads on the labels
    none = DistillationLoss("none")((cls, dist), y)
    assert none.item() == pytest.approx(0.5 * (ce(p0) + math.log(2)), abs=1e-6)


def test_label_smoothing_and_mixup_targets():
    s, t = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([[0.0, 5.0, 0.0]])
    logp = [2 - math.log(math.exp(2) + 2), -math.log(math.exp(2) + 2), -math.log(math.exp(2) + 2)]
    eps = 0.3  # label 0 gets 1 - eps + eps / 3, the others eps / 3
    smooth_ce = -((1 - eps + eps / 3) * logp[0] + eps / 3 * (logp[1] + logp[2]))
    hard_teacher = -logp[1]  # the teacher's label is never smoothed
    loss = DistillationLoss("hard", label_smoothing=eps)(s, torch.tensor([0]), t)
    assert loss.item() == pytest.approx(0.5 * smooth_ce + 0.5 * hard_teacher, abs=1e-6)
    mixed = torch.tensor([[0.6, 0.4, 0.0]])  # soft targets carry their own smoothing: none added
    loss = DistillationLoss("hard", label_smoothing=eps)(s, mixed, t)
    assert loss.item() == pytest.approx(0.5 * -(0.6 * logp[0] + 0.4 * logp[1]) + 0.5 * hard_teacher, abs=1e-6)


def test_loss_argument_errors():
    with pytest.raises(ValueError, match="one of"):
        DistillationLoss("medium")
    with pytest.raises(ValueError, match=r"alpha=1.5 must be in \[0, 1\]"):
        DistillationLoss("soft", alpha=1.5)
    with pytest.raises(ValueError, match="tau"):
        DistillationLoss("soft", tau=0)
    with pytest.raises(ValueError, match="kl_reduction"):
        DistillationLoss("soft", kl_reduction="mean")
    with pytest.raises(ValueError, match="needs the teacher's logits"):
        DistillationLoss("hard")(torch.zeros(1, 2), torch.tensor([0]))


# ------------------------------------------------------------------------------------ gradients
def tiny_deit() -> nn.Module:
    torch.manual_seed(0)
    model = vitkit.create_model("deit_micro_distilled_patch4_28", embed_dim=32, depth=1, num_heads=2)
    with torch.no_grad():  # zero heads would stop every gradient: give them random weights
        for head in (model.head, model.head_dist):
            nn.init.normal_(head.weight, std=0.5)
    model.set_distilled_training(True)  # both heads' logits in training, as `vitkit train` sets
    return model.train()


@pytest.mark.parametrize("kind", ["soft", "hard"])
def test_gradients_reach_the_distillation_token(kind):
    model = tiny_deit()
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    teacher_logits = torch.randn(4, 10)
    DistillationLoss(kind, tau=1.0)(model(x), y, teacher_logits).backward()
    assert model.dist_token.grad is not None and model.dist_token.grad.abs().sum() > 0
    assert model.head_dist.weight.grad.abs().sum() > 0 and model.head.weight.grad.abs().sum() > 0
    # alpha = 0: the teacher term is off, so the distillation head gets no gradient at all
    model.zero_grad(set_to_none=False)
    DistillationLoss(kind, alpha=0.0)(model(x), y, teacher_logits).backward()
    assert model.head_dist.weight.grad.abs().sum() == 0 and model.head.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ the teacher
def fake_splits(num_classes=10, in_chans=1, size=(28, 28), classes=None, name="fashion_mnist"):
    classes = classes or [str(i) for i in range(num_classes)]
    return SimpleNamespace(
        classes=classes, in_chans=in_chans, img_size=size, name=name, mean=(0.5,) * in_chans, std=(0.25,) * in_chans
    )


def test_teacher_mismatches_are_clear_errors():
    teacher = vitkit.create_model("resnet_micro_28", num_classes=5)
    with pytest.raises(ValueError, match=r"predicts 5 classes but fashion_mnist has 10.*vitkit train --model.name="):
        check_teacher(teacher, 10, 1, (28, 28), dataset="fashion_mnist")
    teacher = vitkit.create_model("resnet_micro_32")
    with pytest.raises(ValueError, match="takes 3-channel images but mnist has 1 channel"):
        check_teacher(teacher, 10, 1, (32, 32), dataset="mnist")
    with pytest.raises(ValueError, match="built for 32x32 images but cifar10 has 28x28.*--data.img_size=32"):
        check_teacher(teacher, 10, 3, (28, 28), dataset="cifar10")
    vit = vitkit.create_model("vit_micro_patch4_28", img_size=32, dynamic_img_size=True)
    check_teacher(vit, 10, 1, (28, 28))  # takes any size: accepted
    teacher = vitkit.create_model("resnet_micro_28")
    teacher.pretrained_cfg.update(label_names=[str(i) for i in range(10)], dataset="mnist")
    with pytest.raises(ValueError, match=r"trained on classes .*\(mnist\) but fashion_mnist has"):
        check_teacher(teacher, 10, 1, (28, 28), classes=["T-shirt"] + ["x"] * 9, dataset="fashion_mnist")


def distill_cfg(**kw):
    cfg = TrainConfig().distill
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


def test_build_distillation_switches_on_distilled_training():
    """timm's distilled models return one tensor in training unless `set_distilled_training(True)`:
    the training loss needs both heads, with or without a teacher."""
    deit = vitkit.create_model("deit_micro_distilled_patch4_28", embed_dim=32, depth=1, num_heads=2).train()
    x = torch.rand(2, 1, 28, 28)
    assert isinstance(deit(x), torch.Tensor)
    build_distillation(distill_cfg(), deit, fake_splits(), None, False, 0.0, "cpu", progress=False)
    assert deit.distilled_training and isinstance(deit(x), tuple) and len(deit(x)) == 2


def test_build_distillation_errors(tmp_path):
    teacher = vitkit.create_model("resnet_micro_28")
    teacher.save_pretrained(tmp_path / "teacher")
    student = vitkit.create_model("vit_micro_patch4_28", embed_dim=32, depth=1, num_heads=2)
    deit = vitkit.create_model("deit_micro_distilled_patch4_28", embed_dim=32, depth=1, num_heads=2)
    splits = fake_splits()
    t = str(tmp_path / "teacher")

    def build(model, augment=False, **kw):
        return build_distillation(distill_cfg(**kw), model, splits, None, augment, 0.0, "cpu", progress=False)

    with pytest.raises(ValueError, match="has no distillation token.*deit_micro_distilled_patch4_28"):
        build(student, teacher=t, type="hard", token=True)
    with pytest.raises(ValueError, match="has a distillation token"):
        build(deit, teacher=t, type="hard", token=False)
    with pytest.raises(ValueError, match="needs a teacher"):
        build(student, type="soft")
    with pytest.raises(ValueError, match="but --distill.type=none"):
        build(student, teacher=t)
    with pytest.raises(ValueError, match="cache_logits=true is only valid"):
        build(student, augment=True, teacher=t, type="soft", cache_logits=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build(student, teacher=str(tmp_path / "nothing"), type="soft")
    d = build(deit, teacher=t, type="hard")  # token=None: automatic
    assert isinstance(d.teacher, Teacher) and d.criterion.type == "hard" and d.cached is None
    assert not d.teacher.training and not any(p.requires_grad for p in d.teacher.parameters())
    d.teacher.train()
    assert not d.teacher.model.training  # a teacher stays in eval mode


def test_teacher_from_weights_file_and_run_dir(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = vitkit.create_model("resnet_micro_28", num_classes=7).eval()
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match="teacher_model=NAME"):
        load_teacher(tmp_path / "w.safetensors")
    loaded = load_teacher(tmp_path / "w.safetensors", "resnet_micro_28")
    assert loaded.num_classes == 7
    model.save_pretrained(tmp_path / "run" / "model")  # the layout of `vitkit train --out run`
    x = torch.rand(2, 1, 28, 28)
    torch.testing.assert_close(load_teacher(tmp_path / "run")(x), model(x))


def test_teacher_normalises_its_own_way_and_cached_logits_match():
    from vitkit.data import load_digits
    from vitkit.train.engine import Batches, Dist

    pytest.importorskip("sklearn")
    torch.manual_seed(0)
    model = vitkit.create_model("resnet_micro_28", img_size=8).eval()
    with torch.no_grad():
        nn.init.normal_(model.head.weight)
    teacher = Teacher(model, (0.3,), (0.2,))
    x = torch.rand(3, 1, 8, 8)
    torch.testing.assert_close(teacher(x), model((x - 0.3) / 0.2))
    train, _ = load_digits()
    cached = precompute_logits(teacher, train, "cpu", batch_size=300, progress=False)
    batches = Batches(train, 64, Dist(), seed=1)
    for idx, (xb, _) in zip(batches.indices(2), batches.epoch(2)):
        torch.testing.assert_close(cached[idx], teacher(xb), atol=1e-5, rtol=1e-5)


# ------------------------------------------------------------------------------------ end to end
def test_vitkit_train_end_to_end(tmp_path, capsys):
    """A CNN teacher, then a DeiT student with hard distillation through the token, by the CLI."""
    pytest.importorskip("sklearn")
    from vitkit.cli import main

    common = ["--run.progress=false", "--run.threads=1", "--sched.epochs=2", "--sched.warmup_epochs=0"]
    assert main(["train", "--model.name=resnet_micro_28", "--out", str(tmp_path / "teacher"), *common]) == 0
    tiny = ["--model.overrides.embed_dim=32", "--model.overrides.depth=1", "--model.overrides.num_heads=2"]
    assert (
        main(
            [
                "train",
                "--model.name=vit_micro_patch2_8",
                "--model.overrides.distilled=true",
                *tiny,
                f"--distill.teacher={tmp_path / 'teacher'}",
                "--distill.type=hard",
                "--distill.token=true",
                "--out",
                str(tmp_path / "student"),
                *common,
            ]
        )
        == 0
    )
    m = json.loads((tmp_path / "student" / "metrics.json").read_text())
    teacher_m = json.loads((tmp_path / "teacher" / "metrics.json").read_text())
    assert m["teacher_test_acc"] == teacher_m["test_acc"] and m["distill_type"] == "hard"
    assert set(m["test_acc_heads"]) == {"cls", "dist", "mean"} and m["test_acc_heads"]["mean"] == m["test_acc"]
    # a soft student without a token, with cached teacher logits (no augmentation: valid)
    assert (
        main(
            [
                "train",
                "--model.name=vit_micro_patch2_8",
                *tiny,
                f"--distill.teacher={tmp_path / 'teacher'}",
                "--distill.type=soft",
                "--distill.cache_logits=true",
                "--data.train_fraction=0.5",
                "--out",
                str(tmp_path / "soft"),
                *common,
            ]
        )
        == 0
    )
    # a teacher for another number of classes: one clear line, exit code 2
    vitkit.create_model("resnet_micro_28", num_classes=4, img_size=8).save_pretrained(tmp_path / "t4")
    capsys.readouterr()
    assert (
        main(
            [
                "train",
                "--model.name=vit_micro_patch2_8",
                *tiny,
                f"--distill.teacher={tmp_path / 't4'}",
                "--distill.type=soft",
                "--out",
                str(tmp_path / "bad"),
                *common,
            ]
        )
        == 2
    )
    assert "predicts 4 classes but digits has 10" in capsys.readouterr().err


def test_train_fraction_is_stratified():
    from vitkit.data import load_digits
    from vitkit.train.engine import train_subset

    pytest.importorskip("sklearn")
    train, _ = load_digits()
    sub = train_subset(train, 0.1, seed=0)
    assert abs(len(sub) - 0.1 * len(train)) <= 10
    assert torch.bincount(sub.labels, minlength=10).min() >= 13  # every class, ~14 each
    assert torch.equal(train_subset(train, 0.1, seed=0).labels, sub.labels)
    with pytest.raises(ValueError, match="train_fraction=0"):
        train_subset(train, 0.0, seed=0)
    assert apply_overrides(TrainConfig(), ["--data.train_fraction=0.1"]).data.train_fraction == 0.1

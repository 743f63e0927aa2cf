import pytest
import torch

from vitkit.eval import fit_logistic_regression, linear_probe


def clusters(n_per_class, num_classes=4, dim=8, seed=0, spread=0.3):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123)) * 2
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def test_linear_probe_separable_clusters():
    train_x, train_y = clusters(15, seed=0)
    test_x, test_y = clusters(10, seed=1)
    res = linear_probe(train_x, train_y, test_x, test_y, weight_decays=(1e-3, 1e-1))
    assert res.top1 == 100.0 and res.top5 is None  # 4 classes: no top-5
    assert res.weight_decay in (1e-3, 1e-1) and set(res.val_top1) == {1e-3, 1e-1}
    assert torch.equal(res.probe.predict(test_x), test_y)


def test_linear_probe_is_deterministic():
    train_x, train_y = clusters(12, num_classes=5, seed=2, spread=1.5)  # overlapping: not trivial
    test_x, test_y = clusters(8, num_classes=5, seed=3, spread=1.5)
    a = linear_probe(train_x, train_y, test_x, test_y, seed=7)
    b = linear_probe(train_x, train_y, test_x, test_y, seed=7)
    assert (a.top1, a.top5, a.weight_decay, a.val_top1) == (b.top1, b.top5, b.weight_decay, b.val_top1)
    assert torch.equal(a.probe.weight, b.probe.weight) and torch.equal(a.probe.bias, b.probe.bias)
    assert a.top5 is not None


def test_logistic_regression_optimum_and_weight_decay():
    """At the optimum the gradient vanishes: X^T (softmax - onehot) / N + wd W = 0 (bias: no wd)."""
    x, y = clusters(10, num_classes=3, spread=2.0)
    wd = 0.1
    probe = fit_logistic_regression(x, y, 3, weight_decay=wd)
    xs = (x - probe.mean) / probe.std
    residual = torch.softmax(xs @ probe.weight.T + probe.bias, 1) - torch.nn.functional.one_hot(y, 3)
    grad_w = residual.T @ xs / len(y) + wd * probe.weight
    assert grad_w.abs().max() < 1e-4 and (residual.mean(0)).abs().max() < 1e-4
    strong = fit_logistic_regression(x, y, 3, weight_decay=10.0)
    assert strong.weight.norm() < probe.weight.norm()


def test_linear_probe_too_few_samples():
    x, y = torch.randn(3, 4), torch.tensor([0, 1, 2])  # one per class: nothing to hold out
    with pytest.raises(ValueError, match="too few train samples"):
        linear_probe(x, y, x, y)
    assert linear_probe(x, y, x, y, weight_decays=(1e-2,)).top1 == 100.0

import statistics

import numpy as np
import pytest
import torch

from vitkit.eval import few_shot_lsr, ridge_regression, sample_shots
from vitkit.eval.few_shot import BIAS_CONSTANT, L2_REG


def clusters(n_per_class, num_classes=5, dim=12, seed=0, spread=0.2):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99)) * 2
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


def numpy_ridge(x, y, lam):
    # ||x w - y||^2 + lam ||w||^2 == ||[x; sqrt(lam) I] w - [y; 0]||^2: plain least squares
    d = x.shape[1]
    a = np.vstack([x, np.sqrt(lam) * np.eye(d)])
    b = np.vstack([y, np.zeros((d, y.shape[1]))])
    return np.linalg.lstsq(a, b, rcond=None)[0]


@pytest.mark.parametrize("n, d", [(20, 6), (6, 20)])  # primal (N >= D) and dual (D > N) solves
@pytest.mark.parametrize("lam", [0.5, 1024.0])
def test_ridge_regression_matches_numpy_lstsq(n, d, lam):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(n, d)), rng.normal(size=(n, 3))
    w = ridge_regression(torch.from_numpy(x), torch.from_numpy(y), lam)
    assert w.dtype == torch.float64 and w.shape == (d, 3)
    np.testing.assert_allclose(w.numpy(), numpy_ridge(x, y, lam), rtol=1e-9, atol=1e-12)


def test_ridge_regression_without_regulariser_is_least_squares():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 4)), rng.normal(size=(10, 2))
    w = ridge_regression(torch.from_numpy(x), torch.from_numpy(y), 0.0)
    np.testing.assert_allclose(w.numpy(), np.linalg.lstsq(x, y, rcond=None)[0], rtol=1e-9, atol=1e-12)


def test_few_shot_pipeline_matches_numpy_reference():
    """big_vision's steps, in numpy: standardise by the shots, bias feature 100, {-1, 1} targets."""
    train_x, train_y = clusters(8, spread=1.5)
    test_x, test_y = clusters(6, seed=1, spread=1.5)
    res = few_shot_lsr(train_x, train_y, test_x, test_y, shots=(3,), seeds=(4,))
    idx, _ = sample_shots(train_y, 3, seed=4, num_classes=5)
    x, y = train_x[idx].double().numpy(), train_y[idx].numpy()
    mean, std = x.mean(0), x.std(0) + 1e-5
    design = lambda f: np.hstack([(f - mean) / std, np.full((len(f), 1), BIAS_CONSTANT)])  # noqa: E731
    w = numpy_ridge(design(x), 2.0 * np.eye(5)[y] - 1.0, L2_REG)
    preds = (design(test_x.double().numpy()) @ w).argmax(1)
    assert res[3]["accs"] == [100.0 * (preds == test_y.numpy()).sum() / len(test_y)]
    assert res[3]["l2_reg"] == [L2_REG]


def test_few_shot_on_clusters_and_std_over_seeds():
    train_x, train_y = clusters(30)
    test_x, test_y = clusters(10, seed=1)
    res = few_shot_lsr(train_x, train_y, test_x, test_y, shots=(1, 5, 10), seeds=(0, 1, 2))
    assert set(res) == {1, 5, 10}
    for r in res.values():
        assert r["mean"] == 100.0 and r["std"] == 0.0 and len(r["accs"]) == 3

    # overlapping clusters: the seeds draw different shots, so accuracies differ
    train_x, train_y = clusters(30, spread=2.5)
    test_x, test_y = clusters(20, seed=1, spread=2.5)
    res = few_shot_lsr(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=range(5))
    for r in res.values():
        assert len(set(r["accs"])) > 1
        assert r["mean"] == pytest.approx(statistics.mean(r["accs"]))
        assert r["std"] == pytest.approx(statistics.stdev(r["accs"]))
    assert res[5]["mean"] > res[1]["mean"]
    # deterministic given the seeds
    assert few_shot_lsr(train_x, train_y, test_x, test_y, shots=(1, 5), seeds=range(5)) == res


def test_sample_shots_and_l2_sweep():
    _, labels = clusters(12)
    idx, held = sample_shots(labels, 5, seed=0, num_classes=5, extra=4)
    assert torch.bincount(labels[idx]).tolist() == [5] * 5 and torch.bincount(labels[held]).tolist() == [4] * 5
    assert not set(idx.tolist()) & set(held.tolist())
    assert not torch.equal(idx, sample_shots(labels, 5, seed=1, num_classes=5)[0])
    with pytest.raises(ValueError, match="class 0 has 12 train examples"):
        sample_shots(labels, 13, seed=0, num_classes=5)

    train_x, train_y = clusters(20, spread=1.5)
    test_x, test_y = clusters(10, seed=1, spread=1.5)
    sweep = [2.0**i for i in (-4, 0, 4, 10)]
    res = few_shot_lsr(train_x, train_y, test_x, test_y, shots=(2,), seeds=(0, 1), l2_reg=sweep, val_per_class=5)
    assert all(lam in sweep for lam in res[2]["l2_reg"])

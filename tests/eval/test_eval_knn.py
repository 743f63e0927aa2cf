import logging
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from vitkit.data import load_digits
from vitkit.eval import knn_classifier, knn_predict, knn_scores


def reference_knn(train_x, train_y, test_x, test_y, k, T, num_classes):
    """DINO's eval_knn.py written plainly, one test image at a time, in float64."""

    def normalise(row):
        norm = math.sqrt(sum(v * v for v in row))
        return [v / norm for v in row]

    train_x = [normalise(row) for row in train_x.tolist()]
    test_x = [normalise(row) for row in test_x.tolist()]
    train_y = train_y.tolist()
    k = min(k, len(train_x))
    all_scores, top1, top5 = [], 0, 0
    for x, y in zip(test_x, test_y.tolist()):
        sims = [sum(a * b for a, b in zip(x, t)) for t in train_x]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        scores = [0.0] * num_classes
        for i in nearest:
            scores[train_y[i]] += math.exp(sims[i] / T)
        ranking = sorted(range(num_classes), key=lambda c: -scores[c])  # stable: lower class first
        top1 += ranking[0] == y
        top5 += y in ranking[: min(5, k)]
        all_scores.append(scores)
    n = len(test_x)
    return torch.tensor(all_scores, dtype=torch.float64), 100.0 * top1 / n, 100.0 * top5 / n


def random_problem(seed, n_train=40, n_test=25, dim=6, num_classes=7):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(n_train, dim, generator=g, dtype=torch.float64),
        torch.randint(0, num_classes, (n_train,), generator=g),
        torch.randn(n_test, dim, generator=g, dtype=torch.float64),
        torch.randint(0, num_classes, (n_test,), generator=g),
    )


def clusters(n_per_class, num_classes, dim=16, seed=0, spread=0.05):
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=g) * 3
    labels = torch.arange(num_classes).repeat_interleave(n_per_class)
    return centres[labels] + spread * torch.randn(len(labels), dim, generator=g), labels


@pytest.mark.parametrize("seed", [0, 1])
def test_knn_matches_brute_force_reference(seed):
    train_x, train_y, test_x, test_y = random_problem(seed)
    ks = (1, 3, 10, 20, 100)  # 100 > 40 train samples: clipped to 40
    res = knn_classifier(train_x, train_y, test_x, test_y, ks=ks, num_classes=7, chunk_size=8)
    scores = knn_scores(train_x, train_y, test_x, ks=ks, num_classes=7, chunk_size=8)
    for k in ks:
        ref_scores, ref_top1, ref_top5 = reference_knn(train_x, train_y, test_x, test_y, k, 0.07, 7)
        torch.testing.assert_close(scores[k], ref_scores, rtol=1e-9, atol=0)
        assert res[k] == {"top1": ref_top1, "top5": ref_top5}
        assert torch.equal(knn_predict(train_x, train_y, test_x, k=k, num_classes=7), ref_scores.argmax(1))


def test_knn_chunking_does_not_change_results():
    train_x, train_y, test_x, test_y = random_problem(3, n_test=23)
    results = [knn_classifier(train_x, train_y, test_x, test_y, ks=(5, 20), chunk_size=c) for c in (1, 7, 1024)]
    assert results[0] == results[1] == results[2]


def test_knn_small_clusters_and_k_larger_than_train_set(caplog):
    train_x, train_y = clusters(10, 6, seed=0)  # 60 train samples
    test_x, test_y = clusters(5, 6, seed=0)[0] + 0.01, clusters(5, 6, seed=0)[1]  # 30 test samples
    with caplog.at_level(logging.INFO, logger="vitkit"):
        res = knn_classifier(train_x, train_y, test_x, test_y)  # DINO's k in {10, 20, 100, 200}
    assert set(res) == {10, 20, 100, 200}
    assert all(r == {"top1": 100.0, "top5": 100.0} for r in res.values())
    assert "k=200 is larger than the train set (60 samples)" in caplog.text


def test_knn_no_top5_below_five_classes_and_bad_input():
    train_x, train_y = clusters(4, 3)
    res = knn_classifier(train_x, train_y, train_x, train_y, ks=(1, 10))
    assert res == {1: {"top1": 100.0}, 10: {"top1": 100.0}}
    with pytest.raises(ValueError, match="same D"):
        knn_classifier(train_x, train_y, train_x[:, :3], train_y)
    with pytest.raises(ValueError, match="k must be"):
        knn_classifier(train_x, train_y, train_x, train_y, ks=(0,))


def test_knn_on_raw_digit_pixels():
    """Sanity anchor on real data: flattened 8x8 digits, k=10, well above 90%."""
    train, test = load_digits()
    res = knn_classifier(train.images.flatten(1), train.labels, test.images.flatten(1), test.labels, ks=(10,))
    assert res[10]["top1"] > 90.0


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n_train=st.integers(1, 30),
    n_test=st.integers(1, 12),
    dim=st.integers(1, 5),
    k=st.integers(1, 40),
    exponents=st.lists(st.integers(-20, 20), min_size=42, max_size=42),
)
def test_knn_invariant_to_feature_scaling(seed, n_train, n_test, dim, k, exponents):
    """L2 normalisation makes the vote blind to each feature vector's scale. Scales are powers of
    two so the normalised vectors are bit-identical (any other scale rounds differently)."""
    g = torch.Generator().manual_seed(seed)
    # features on a 0.01 grid (few exact zeros, no subnormals after scaling), 3 classes
    train_x = torch.randint(-300, 300, (n_train, dim), generator=g).double() / 100
    test_x = torch.randint(-300, 300, (n_test, dim), generator=g).double() / 100
    train_y = torch.randint(0, 3, (n_train,), generator=g)
    scale = torch.tensor(exponents, dtype=torch.float64).exp2()
    base = knn_predict(train_x, train_y, test_x, k=k, num_classes=3)
    scaled = knn_predict(train_x * scale[:n_train, None], train_y, test_x * scale[-n_test:, None], k=k, num_classes=3)
    assert torch.equal(base, scaled)

"""Weighted k-nearest-neighbour classifier on frozen features: the DINO protocol.

Paper
    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers", ICCV 2021
    (arXiv:2104.14294), section 4.1 and appendix: weighted k-NN with k = 20, T = 0.07.
Reference code
    facebookresearch/dino `eval_knn.py` (`knn_classifier`), followed step by step: features
    L2-normalised, cosine similarity to every train feature, the top-k neighbours, each votes for
    its class with weight exp(sim / T), class scores are the summed votes; top-1 is the best score
    and top-5 the 5 best (among min(5, k) ranked classes, as DINO counts it).
Deviations
    - DINO splits the test set into 100 chunks of N // 100 images, which is a zero step (a crash)
      below 100 test images and drops nothing only by luck; we use chunks of a fixed number of test
      images (`chunk_size`), so memory is bounded by chunk_size x N_train similarities.
    - A k larger than the train set is clipped to its size (DINO's `topk` raises), with a log note.
    - Ties between class scores break towards the lower class index (stable sort; DINO's sort
      leaves them unspecified), so results are deterministic.
    - Accuracies are percentages like DINO's; top-5 is only reported with at least 5 classes.
"""

from __future__ import annotations

import logging
from typing import Sequence

import torch
import torch.nn.functional as F

logger = logging.getLogger("vitkit")

DINO_KS = (10, 20, 100, 200)  # eval_knn.py's default --nb_knn
DINO_TEMPERATURE = 0.07  # eval_knn.py's default --temperature


def _prepare(train_features, train_labels, test_features, num_classes):
    train_features = torch.as_tensor(train_features)
    test_features = torch.as_tensor(test_features, device=train_features.device)
    if train_features.ndim != 2 or test_features.ndim != 2 or train_features.shape[1] != test_features.shape[1]:
        raise ValueError(
            f"features must be (N, D) with the same D, got train {tuple(train_features.shape)} "
            f"and test {tuple(test_features.shape)}"
        )
    train_labels = torch.as_tensor(train_labels, device=train_features.device).long().flatten()
    if train_labels.shape[0] != train_features.shape[0]:
        raise ValueError(f"{train_features.shape[0]} train features but {train_labels.shape[0]} labels")
    if train_labels.numel() == 0:
        raise ValueError("the train set is empty")
    if train_labels.min() < 0:
        raise ValueError("labels must be >= 0")
    if num_classes is None:
        num_classes = int(train_labels.max()) + 1
    elif train_labels.max() >= num_classes:
        raise ValueError(f"train labels go up to {int(train_labels.max())} but num_classes={num_classes}")
    if not train_features.is_floating_point():
        train_features = train_features.float()
    # DINO: `nn.functional.normalize(features, dim=1, p=2)` on both sets, so a dot product is
    # the cosine similarity.
    train_features = F.normalize(train_features, dim=1, p=2)
    test_features = F.normalize(test_features.to(train_features.dtype), dim=1, p=2)
    return train_features, train_labels, test_features, num_classes


def _clip_k(k: int, n_train: int) -> int:
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k > n_train:
        logger.info("k-NN: k=%d is larger than the train set (%d samples): using k=%d", k, n_train, n_train)
        return n_train
    return k


def knn_scores(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    ks: Sequence[int] = DINO_KS,
    temperature: float = DINO_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, torch.Tensor]:
    """Class scores (N_test, K) of the weighted k-NN vote, for each k in `ks` (keys are the
    requested k, clipped to the train-set size). One similarity pass serves every k."""
    train_features, train_labels, test_features, num_classes = _prepare(
        train_features, train_labels, test_features, num_classes
    )
    n_train = train_features.shape[0]
    k_used = {int(k): _clip_k(int(k), n_train) for k in ks}
    k_max = max(k_used.values())
    scores = {k: [] for k in k_used}
    for start in range(0, test_features.shape[0], chunk_size):
        sim = test_features[start : start + chunk_size] @ train_features.T  # (b, N_train) cosine
        # sorted=True: the first k of the k_max neighbours are the top k
        dist, idx = sim.topk(k_max, dim=1, largest=True, sorted=True)
        neighbours = train_labels[idx]  # (b, k_max)
        weights = (dist / temperature).exp()  # exp(sim / T)
        for k, kk in k_used.items():
            votes = torch.zeros(sim.shape[0], num_classes, dtype=weights.dtype, device=weights.device)
            votes.scatter_add_(1, neighbours[:, :kk], weights[:, :kk])  # sum of one-hot x weight
            scores[k].append(votes)
    return {
        k: torch.cat(v) if v else torch.zeros(0, num_classes, device=train_features.device) for k, v in scores.items()
    }


def knn_predict(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    k: int = 20,
    temperature: float = DINO_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> torch.Tensor:
    """(N_test,) predicted classes of the weighted k-NN (ties to the lower class index)."""
    scores = knn_scores(train_features, train_labels, test_features, (k,), temperature, num_classes, chunk_size)[k]
    return scores.argmax(1)  # argmax returns the first maximum: the lower class index


def knn_classifier(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    test_features: torch.Tensor,
    test_labels: torch.Tensor,
    ks: Sequence[int] = DINO_KS,
    temperature: float = DINO_TEMPERATURE,
    num_classes: int | None = None,
    chunk_size: int = 1024,
) -> dict[int, dict[str, float]]:
    """DINO's weighted k-NN evaluation: {k: {'top1': %, 'top5': %}} ('top5' with >= 5 classes).

    `num_classes` defaults to 1 + the largest train or test label."""
    test_labels = torch.as_tensor(test_labels).long().flatten()
    if test_labels.shape[0] != torch.as_tensor(test_features).shape[0]:
        raise ValueError(f"{torch.as_tensor(test_features).shape[0]} test features but {test_labels.shape[0]} labels")
    if num_classes is None:
        top = [int(torch.as_tensor(train_labels).max())] + ([int(test_labels.max())] if test_labels.numel() else [])
        num_classes = max(top) + 1
    all_scores = knn_scores(train_features, train_labels, test_features, ks, temperature, num_classes, chunk_size)
    n_train = torch.as_tensor(train_labels).numel()
    results = {}
    for k, scores in all_scores.items():
        test_labels = test_labels.to(scores.device)
        order = scores.sort(dim=1, descending=True, stable=True).indices  # DINO: probs.sort(1, True)
        correct = order == test_labels[:, None]
        n = max(test_labels.numel(), 1)
        res = {"top1": 100.0 * correct[:, :1].sum().item() / n}
        if num_classes >= 5:
            res["top5"] = 100.0 * correct[:, : min(5, min(k, n_train))].sum().item() / n
        results[k] = res
    return results

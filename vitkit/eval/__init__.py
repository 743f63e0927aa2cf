"""Evaluation of frozen backbones and classifiers: metrics, feature extraction, DINO's weighted
k-NN, a logistic-regression linear probe, the ViT paper's few-shot least-squares protocol, and a
saved model on its dataset's test split (`evaluate_dir`, what `vitkit eval` runs).

Accuracies are percentages in [0, 100] throughout; the evaluators take features (N, D) and
labels (N,), so they work with any backbone (see `extract_features`).
"""

from .features import extract_features
from .few_shot import L2_REG, few_shot_lsr, ridge_regression, sample_shots
from .knn import DINO_KS, DINO_TEMPERATURE, knn_classifier, knn_predict, knn_scores
from .linear_probe import LinearProbe, LinearProbeResult, fit_logistic_regression, linear_probe
from .metrics import (
    class_ranks,
    confusion_matrix,
    per_class_accuracy,
    per_class_accuracy_from_cm,
    plot_confusion_matrix,
    topk_accuracy,
)
from .saved import evaluate_dir

__all__ = [
    "DINO_KS",
    "DINO_TEMPERATURE",
    "L2_REG",
    "LinearProbe",
    "LinearProbeResult",
    "class_ranks",
    "confusion_matrix",
    "evaluate_dir",
    "extract_features",
    "few_shot_lsr",
    "fit_logistic_regression",
    "knn_classifier",
    "knn_predict",
    "knn_scores",
    "linear_probe",
    "per_class_accuracy",
    "per_class_accuracy_from_cm",
    "plot_confusion_matrix",
    "ridge_regression",
    "sample_shots",
    "topk_accuracy",
]

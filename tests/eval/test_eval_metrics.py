import math

import pytest
import torch

from vitkit.eval import (
    class_ranks,
    confusion_matrix,
    per_class_accuracy,
    per_class_accuracy_from_cm,
    plot_confusion_matrix,
    topk_accuracy,
)

# Hand-worked example. Ties break towards the lower class index (argmax's rule):
#   row 0: y=2 ties with class 1 at 0.5 -> rank 1      row 1: all tied, y=0 -> rank 0
#   row 2: all tied, y=3 -> rank 3                      row 3: y=0 is the max -> rank 0
#   row 4: y=0 is the minimum -> rank 3
LOGITS = torch.tensor(
    [
        [0.1, 0.5, 0.5, 0.2],
        [0.3, 0.3, 0.3, 0.3],
        [0.3, 0.3, 0.3, 0.3],
        [0.9, 0.0, 0.1, 0.2],
        [0.0, 0.1, 0.2, 0.9],
    ]
)
LABELS = torch.tensor([2, 0, 3, 0, 0])


def test_class_ranks_with_ties():
    assert class_ranks(LOGITS, LABELS).tolist() == [1, 0, 3, 0, 3]


def test_topk_accuracy_hand_computed():
    acc = topk_accuracy(LOGITS, LABELS, ks=(1, 2, 3, 4, 5))
    assert acc == {1: 40.0, 2: 60.0, 3: 60.0, 4: 100.0, 5: 100.0}
    # top-1 is exactly argmax accuracy, ties included
    assert acc[1] == 100.0 * (LOGITS.argmax(1) == LABELS).sum().item() / len(LABELS)
    assert topk_accuracy(LOGITS, LABELS) == {1: 40.0, 5: 100.0}  # default ks=(1, 5)


def test_topk_accuracy_bad_input():
    with pytest.raises(ValueError, match="labels must be in"):
        topk_accuracy(LOGITS, torch.tensor([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="score rows"):
        topk_accuracy(LOGITS, torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="k must be"):
        topk_accuracy(LOGITS, LABELS, ks=(0,))


def test_confusion_matrix_and_per_class():
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    labels = torch.tensor([0, 0, 1, 2, 2, 1])
    cm = confusion_matrix(preds, labels, num_classes=4)
    expected = torch.tensor(
        [
            [1, 1, 0, 0],  # true 0: once right, once taken for 1
            [0, 1, 1, 0],
            [0, 0, 2, 0],
            [0, 0, 0, 0],  # class 3 never occurs
        ]
    )
    assert cm.dtype == torch.int64 and torch.equal(cm, expected)
    assert cm.sum() == len(labels)
    # logits are reduced with argmax
    assert torch.equal(confusion_matrix(torch.nn.functional.one_hot(preds, 4).float(), labels, 4), expected)
    pc = per_class_accuracy(preds, labels, 4)
    assert pc[:3].tolist() == [50.0, 50.0, 100.0] and math.isnan(pc[3])
    assert torch.equal(per_class_accuracy_from_cm(cm)[:3], pc[:3])
    with pytest.raises(ValueError, match="predictions must be in"):
        confusion_matrix(torch.tensor([4]), torch.tensor([0]), 4)


def test_plot_confusion_matrix_writes_a_png_atomically(tmp_path):
    import matplotlib.image

    cm = confusion_matrix(torch.tensor([0, 1, 1, 2]), torch.tensor([0, 1, 2, 2]), 3)
    path = tmp_path / "sub" / "cm.png"
    out = plot_confusion_matrix(cm, ["zero", "one", "two"], path)
    assert out == path
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    plot_confusion_matrix(cm, None, path, normalize=False)  # overwrite in place
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["cm.png"]  # no temporary file left
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(cm, ["a", "b"], tmp_path / "x.png")

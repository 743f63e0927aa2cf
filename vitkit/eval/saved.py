"""`evaluate_dir` (`vitkit eval`): a saved model on the test split of the dataset it was trained on:
top-1/top-5, loss, per-class accuracy and a confusion-matrix PNG next to the model.

The images are preprocessed by the model's data config (`vitkit.data.resolve_data_config(model=model)`:
its image size, interpolation, crop_pct, crop_mode, mean and std), as `vitkit predict` and the
training run's own evaluation do."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger("vitkit")

__all__ = ["evaluate_dir"]


def evaluate_dir(
    path: str | Path,
    dataset: str | None = None,
    data_dir: str | None = None,
    split: str = "test",
    bf16: bool = False,
    engine: str = "torch",
    threads: int | None = None,
    check: bool = True,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate a saved model (`bf16`: under bf16 autocast, as `vitkit eval --bf16`).

    `engine='onnxruntime'` runs the model's ONNX export (`path` may be an `.onnx` file written by `vitkit
    export`) with onnxruntime, compared with PyTorch on the first batch unless `check` is False
    (vitkit/predict.py `load_model`); `threads`: intra-op threads of either engine; `num_workers`: DataLoader
    processes that decode image files (the results do not depend on it)."""
    from ..data.datasets import load_dataset
    from ..data.transforms import apply_data_config, model_data_config
    from ..precision import resolve_bf16
    from ..predict import OnnxRuntimeModel, load_model, model_directory
    from ..train.engine import Normalise, evaluate

    if engine == "onnxruntime" and bf16:
        raise ValueError("--bf16 applies to --engine torch; onnxruntime runs the exported graph in fp32")
    path = Path(path)
    model = load_model(path, engine, threads, check)
    onnx = isinstance(model, OnnxRuntimeModel)
    model_dir = model.path if onnx and path.suffix.lower() == ".onnx" else model_directory(path)
    out_dir = path.parent if path.is_file() else path  # the confusion matrix goes next to the model
    name = dataset or model.pretrained_cfg.get("dataset")
    if not name:
        raise ValueError(f"{model_dir} does not say which dataset it was trained on: pass --data NAME")
    config = model.data_config if onnx else model_data_config(model)
    splits = load_dataset(name, data_dir, img_size=tuple(config["input_size"][1:]))
    apply_data_config(splits, config)  # image folders: resized and cropped as the model's data config says
    data = getattr(splits, split)
    if data is None:
        raise ValueError(f"dataset {name} has no {split} split")
    from .metrics import confusion_matrix, per_class_accuracy_from_cm, plot_confusion_matrix

    norm = Normalise(config["mean"], config["std"])
    result = evaluate(
        model, data, norm, "cpu", bf16=resolve_bf16(bf16, "cpu"), return_logits=True, num_workers=num_workers
    )
    logits, labels = result.pop("logits"), result.pop("labels")
    cm = confusion_matrix(logits, labels, len(splits.classes))
    per_class = per_class_accuracy_from_cm(cm)
    result["per_class_acc"] = {c: round(float(a), 2) for c, a in zip(splits.classes, per_class)}
    if hasattr(model, "forward_dynamic"):  # early-exit models (DVT): which exit each image took, mean GMACs
        from ..models.dvt import exit_statistics

        result["exits"] = exit_statistics(model, data, norm)
    try:
        figure = plot_confusion_matrix(
            cm, splits.classes, out_dir / f"confusion_{split}.png", title=f"{name} {split}: top-1 {result['acc']:.2f}%"
        )
        result["figure"] = str(figure)
    except ImportError:  # matplotlib is optional
        pass
    except OSError as e:  # a read-only or full model directory: the numbers stand without the figure
        logger.warning(
            "could not write the confusion matrix into %s (%s); the results are complete without it",
            out_dir,
            e.strerror or e,
        )
    if onnx:
        result["engine"] = {"name": "onnxruntime", "onnx": str(model.path), "check_max_abs_diff": model.checked}
    return {**result, "model_dir": str(model_dir), "dataset": name, "split": split, "images": len(data)}

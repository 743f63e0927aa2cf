"""`vitkit eval`: a saved model on the test split of the dataset it was trained on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .hub import from_pretrained


def evaluate_dir(path: str | Path, dataset: str | None = None, data_dir: str | None = None,
                 split: str = "test") -> dict[str, Any]:
    from .data import load_dataset
    from .train.engine import Normalise, evaluate

    path = Path(path)
    model_dir = path / "model" if (path / "model" / "config.json").is_file() else path
    model = from_pretrained(model_dir)
    name = dataset or model.pretrained_cfg.get("dataset")
    if not name:
        raise ValueError(f"{model_dir} does not say which dataset it was trained on: pass --data NAME")
    splits = load_dataset(name, data_dir)
    data = getattr(splits, split)
    if data is None:
        raise ValueError(f"dataset {name} has no {split} split")
    cfg = model.pretrained_cfg
    result = evaluate(model, data, Normalise(cfg.get("mean", splits.mean), cfg.get("std", splits.std)), "cpu")
    return {**result, "model_dir": str(model_dir), "dataset": name, "split": split, "images": len(data)}

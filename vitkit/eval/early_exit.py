"""`vitkit calibrate`: early-exit thresholds of a saved DVT for a compute budget, on held-out data.

The calibration itself (`calibrate_thresholds`, `collect_exit_logits`) is the model's
(vitkit/models/dvt.py); this module finds the model directory, loads the held-out split that
`vitkit train` carved from the training data and writes the thresholds into the model's config.json.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..data import load_dataset
from ..hub import from_pretrained, save_pretrained
from ..models.dvt import DynamicVisionTransformer, calibrate_thresholds, collect_exit_logits
from ..train.engine import Normalise

__all__ = ["calibrate_dir"]


def calibrate_dir(
    path,
    budget: float | None = None,
    target_gmacs: float | None = None,
    dataset: str | None = None,
    data_dir: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
) -> dict[str, Any]:
    """`vitkit calibrate`: set a saved DVT's thresholds on held-out training data for an average cost
    (`budget` x the last exit's GMACs, or `target_gmacs`), and store them with each exit's GMACs in its
    config.json. The held-out data is the validation split `vitkit train` carved (same fraction and seed)."""
    path = Path(path)
    model_dir = path / "model" if (path / "model" / "config.json").is_file() else path
    model = from_pretrained(model_dir)
    if not isinstance(model, DynamicVisionTransformer):
        raise ValueError(
            f"{model_dir} holds a {model.family!r} model; calibration sets the exit thresholds of a "  # noqa: TRY004
            f"DVT (dvt_*) model"
        )
    if (budget is None) == (target_gmacs is None):
        raise ValueError("give exactly one of --budget (a fraction of the last exit's GMACs, e.g. 0.6) or --gmacs")
    if budget is not None and not 0 < budget <= 1:
        raise ValueError(f"--budget is a fraction of the last exit's GMACs in (0, 1], got {budget}")
    name = dataset or model.pretrained_cfg.get("dataset")
    if not name:
        raise ValueError(f"{model_dir} does not say which dataset it was trained on: pass --data NAME")
    splits = load_dataset(name, data_dir, val_fraction=val_fraction, seed=seed)
    if splits.val is None:
        raise ValueError(f"dataset {name} has no held-out split to calibrate on: use --val-fraction > 0")
    cfg = model.pretrained_cfg
    norm = Normalise(cfg.get("mean", splits.mean), cfg.get("std", splits.std))
    costs = model.measure_exit_gmacs()
    target = target_gmacs if target_gmacs is not None else budget * costs[-1]
    exit_logits, labels = collect_exit_logits(model, splits.val, norm, desc="calibrating")
    result = calibrate_thresholds(exit_logits, labels, costs, target)
    model.set_exit_thresholds(result["thresholds"])
    model.config.exit_gmacs = tuple(costs)
    model.config.calibration = {
        "dataset": name,
        "split": f"val (val_fraction={val_fraction}, seed={seed})",
        **{k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.items() if k != "thresholds"},
    }
    save_pretrained(model, model_dir)
    return {**result, "exit_gmacs": list(costs), "model_dir": str(model_dir), "dataset": name}

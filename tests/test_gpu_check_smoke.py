"""benchmarks/gpu_check.py (the timing half of benchmarks/gpu_check.sh) runs end to end in its --smoke mode on the
CPU (tiny ViT and Swin, one round) and writes its JSON and table. No timing is asserted: only that the libraries
agreed on the logits and every library, model and ratio is there. The CUDA tests themselves are tests/test_cuda.py."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_gpu_check_smoke(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    check = importlib.import_module("gpu_check")
    out = tmp_path / "gpu_check.json"
    args = [
        "--smoke",
        "--device",
        "cpu",
        "--precision",
        "fp32",
        "--json",
        str(out),
        "--markdown",
        str(tmp_path / "g.md"),
    ]
    report = check.main(args)
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert report["smoke"] and report["device"] == "cpu" and report["precision"] == "fp32"
    models = ["vit_base_patch16_224", "swin_tiny_patch4_window7_224"]
    assert list(report["max_logit_diff_fp32"]) == models
    assert all(d <= 1e-4 for d in report["max_logit_diff_fp32"].values())
    metrics = [(r["model"], r["metric"]) for r in report["results"]]
    assert metrics == [(m, k) for m in models for k in ("infer b2 img/s", "train b2 img/s", "train peak MiB")]
    for r in report["results"]:
        assert set(r["values"]) == {"vitkit", "timm", "transformers"}
        assert all(v > 0 if "img/s" in r["metric"] else v >= 0 for v in r["values"].values())  # CPU RSS may not grow
        assert set(r["ratios"]) == {"vitkit/timm", "vitkit/transformers"}
    text = (tmp_path / "g.md").read_text()
    assert "SMOKE RUN" in text and "vitkit/transformers" in text and text.count("\n| ") == 1 + 6


def test_gpu_check_refuses_cpu_timing():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    pytest.importorskip("timm")
    check = importlib.import_module("gpu_check")
    with pytest.raises(SystemExit):
        check.parse_args(["--device", "cpu"])

"""benchmarks/cpu_gemm.py runs end to end in its --smoke mode (tiny shapes, one round) and writes its tables.
No timing is asserted: only that every kernel, GEMM, variant and column is there and the outputs agree."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_cpu_gemm_smoke(tmp_path):
    pytest.importorskip("timm")
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench = importlib.import_module("cpu_gemm")
    out = tmp_path / "cpu_gemm.md"
    result = bench.main(["--smoke", "--threads", "1", "--markdown", str(out)])
    text = out.read_text()
    assert "SMOKE RUN" in text and "threads" in text and "command:" in text
    kernels = {(r["dtype"], r["kernel"]) for r in result["hardware"]}
    assert {("fp32", "torch.mm (default BLAS)"), ("fp32", "oneDNN packed"), ("bf16", "oneDNN packed")} <= kernels
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
        assert ("fp32", "onnxruntime MatMul (MLAS)") in kernels
    assert {(r["dtype"], r["GEMM"]) for r in result["gemm"]} == {
        (d, g) for d in ("fp32", "bf16") for g in ("fwd", "dgrad", "wgrad")
    }
    assert all((r["bwd-weights primitive/F.linear"] != "") == (r["GEMM"] == "wgrad") for r in result["gemm"])
    assert all(r["F.linear GFLOP/s"] > 0 and r["oneDNN GFLOP/s"] > 0 for r in result["gemm"])
    assert [r["what"] for r in result["models"]] == ["inference", "training step"]
    for r in result["models"]:
        assert r["vitkit auto img/s"] > 0 and r["vitkit off img/s"] > 0 and r["timm img/s"] > 0
    # vitkit on every path computes timm's outputs on the same weights
    text_diffs = result["models"][0]["max abs diff vs timm"].split()
    assert text_diffs[0::2] == ["auto", "off", "onednn"] and all(float(v) < 1e-4 for v in text_diffs[1::2])
    assert text.count("\n| ") == 3 + len(result["hardware"]) + len(result["gemm"]) + len(result["models"])

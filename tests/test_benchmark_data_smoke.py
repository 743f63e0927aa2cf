"""benchmarks/data_throughput.py runs end to end in its --smoke mode (64 generated JPEGs, 2 batches) and writes its
table. No timing is asserted: only that both pipelines produced normalised 224x224 batches and every row is there."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def test_data_throughput_smoke(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("PIL")
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench = importlib.import_module("data_throughput")
    out = tmp_path / "data_throughput.md"
    result = bench.main(["--smoke", "--root", str(tmp_path / "data"), "--markdown", str(out)])
    text = out.read_text()
    assert "SMOKE RUN" in text and "command:" in text and "torch " in text and "timm " in text
    assert result["files"] == 64
    folder = Path(result["folder"])
    assert len(list(folder.glob("*/*.jpg"))) == 64 and len([p for p in folder.iterdir() if p.is_dir()]) == 4
    assert len(list((tmp_path / "data").glob("copies-*/*/*.jpg"))) == 256
    for part in ("steady", "large"):
        names = ("vitkit", "timm", "vitkit, flip + normalise on the batch") if part == "steady" else ("vitkit", "timm")
        for name in names:
            r = result[part][name]
            assert r["shape"] == (8, 3, 224, 224) and r["dtype"] == "float32" and r["first"] > 0
            if part == "steady":
                assert r["img_s"] > 0
            assert r["min"] < 0.0, (part, name, r["min"])  # normalised batches go below 0
    assert result["cpu"]["vitkit"] > 0 and result["cpu"]["timm"] > 0
    assert [row[0].split(",")[0] for row in result["rows"]] == [
        "images/s (steady)",
        "images/s (steady)",
        "CPU ms per image",
        "time to first batch (s)",
        "time to first batch (s)",
    ]
    assert text.count("\n| ") == 1 + len(result["rows"])  # the header and one line per row
    # a second run reuses the generated folders
    again = bench.main(["--smoke", "--root", str(tmp_path / "data")])
    assert again["folder"] == result["folder"]

"""benchmarks/study.py: the verdict rule against scipy's Welch test, and one claim end to end in --smoke
mode (the digits, tiny budgets) with its outputs and the resume after a stop (--max-runs)."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def study():
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("study")


def test_welch_interval_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    s = study()
    a, b = [91.2, 92.5, 90.8, 93.0], [88.1, 90.9, 87.5]
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    t = s.welch(a, b)
    assert t["lo"] == pytest.approx(ref.low, rel=1e-9) and t["hi"] == pytest.approx(ref.high, rel=1e-9)
    assert s.verdict(t, "greater") == ("reproduced" if ref.low > 0 else "inconclusive")
    # the same data read the other way round: the interval excludes 0 in the other direction, or not at all
    assert s.verdict(s.welch(b, a), "greater") == ("contradicted" if ref.low > 0 else "inconclusive")


def test_verdict_rule_cases():
    s = study()
    assert s.verdict({"lo": 0.1, "hi": 2.0}, "greater") == "reproduced"
    assert s.verdict({"lo": -2.0, "hi": -0.1}, "greater") == "contradicted"
    assert s.verdict({"lo": -0.1, "hi": 2.0}, "greater") == "inconclusive"
    assert s.verdict({"lo": None, "hi": None}, "greater") == "inconclusive"  # n < 2
    # "no worse than" with margin 0.5: the interval must lie above -0.5 (reproduced) or below it (contradicted)
    assert s.verdict({"lo": -0.4, "hi": 0.3}, "no_worse", 0.5) == "reproduced"
    assert s.verdict({"lo": -0.6, "hi": 0.3}, "no_worse", 0.5) == "inconclusive"
    assert s.verdict({"lo": -1.6, "hi": -0.6}, "no_worse", 0.5) == "contradicted"
    assert s.welch([1.0, 1.0], [0.0, 0.0]) == {"diff": 1.0, "lo": 1.0, "hi": 1.0, "df": float("inf")}


def test_study_smoke_outputs_and_resume(tmp_path):
    """Two seeds of the two arms of vit_cnn_small; stopped after 3 arm-seeds, resumed, resumed again."""
    s = study()
    out = tmp_path / "study"
    argv = ["--smoke", "--out", str(out), "--claims", "vit_cnn_small", "--seeds", "0", "1", "--threads", "1"]
    assert s.main([*argv, "--max-runs", "3"]) == 0
    runs = sorted(p.relative_to(out / "runs").as_posix() for p in (out / "runs").rglob("seed*.json"))
    assert runs == ["cnn_small/seed0.json", "cnn_small/seed1.json", "vit_small/seed0.json"]
    by_id = {c["id"]: c for c in json.loads((out / "results.json").read_text())["claims"]}
    partial = by_id["vit_cnn_small"]
    assert partial["verdict"] == "incomplete" and partial["arms"]["ViT"]["n"] == 1
    # the claims not named are listed as they stand, and nothing of theirs is run
    assert by_id["vit_cnn_gap"]["verdict"] == "incomplete" and by_id["vit_cnn_gap"]["arms"]["ViT large"]["n"] == 0
    assert by_id["deit_hard_vs_soft"]["verdict"] == "not run"
    first = {p: (out / "runs" / p).read_bytes() for p in runs}
    stamps = {p: (out / "runs" / p).stat().st_mtime_ns for p in runs}

    assert s.main(argv) == 0  # the resume: only vit_small seed 1 is trained
    assert {p: (out / "runs" / p).stat().st_mtime_ns for p in runs} == stamps
    assert {p: (out / "runs" / p).read_bytes() for p in runs} == first
    assert (out / "runs" / "vit_small" / "seed1.json").is_file()
    done = (out / "results.json").read_text()
    claim = next(c for c in json.loads(done)["claims"] if c["id"] == "vit_cnn_small")
    for key in ("id", "paper", "claim", "metric", "arms", "verdict", "budget", "test", "rule"):
        assert key in claim
    assert claim["id"] == "vit_cnn_small"
    assert set(claim["arms"]) == {"ResNet", "ViT"}
    for arm in claim["arms"].values():
        assert arm["n"] == 2 and len(arm["values"]) == 2 and arm["sd"] is not None
        assert arm["mean"] == pytest.approx(sum(arm["values"]) / 2)
        assert all(0.0 <= v <= 100.0 for v in arm["values"])
    assert claim["verdict"] in {"reproduced", "contradicted", "inconclusive"}
    t = claim["test"]
    assert t["lo"] <= t["diff"] <= t["hi"]
    md = (out / "results.md").read_text()
    assert "SMOKE RUN" in md and "`vit_cnn_small`" in md and f"**{claim['verdict']}**" in md
    assert (out / "vit.png").is_file()

    assert s.main(argv) == 0  # nothing left to run: the same results
    assert (out / "results.json").read_text() == done

    with pytest.raises(SystemExit):  # other settings in the same folder are refused, not mixed in
        s.main(["--smoke", "--out", str(out), "--claims", "vit_cnn_small", "--seeds", "0"])


def test_claim_without_its_data_is_skipped(tmp_path):
    """A claim whose data is not installed is reported as skipped, with the loader's reason, and runs nothing
    (CIFAR-10 ships with no package: it is missing unless a folder is given)."""
    s = study()
    ctx = s.Ctx(tmp_path, dict(s.SMOKE, data="cifar10"), True, 1, {})
    claim = next(c for c in s.build_claims() if c.id == "vit_cnn_small")
    r = s.run_claim(ctx, claim)
    assert r["verdict"].startswith("skipped: cifar10: pass data_dir=")
    assert all(a["n"] == 0 for a in r["arms"].values())
    assert not (tmp_path / "runs").exists() and not (tmp_path / "train").exists()

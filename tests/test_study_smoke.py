"""benchmarks/study.py: the verdict rules against scipy (Welch's interval, Spearman's rho), one claim end to
end in --smoke mode (the digits, tiny budgets) with its outputs and the resume after a stop (--max-runs), and
the few-shot / fine-tuning transfer arms on two models."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

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


def test_rank_correlation_matches_scipy():
    """Spearman's rho (ties averaged) equals scipy's; the interval is Fisher's z with se sqrt(1.06 / (n - 3))."""
    stats = pytest.importorskip("scipy.stats")
    s = study()
    x = [88.0, 91.5, 91.5, 70.2, 65.0, 80.1, 93.3, 77.7]
    y = [97.1, 96.0, 98.2, 90.5, 91.0, 95.5, 98.9, 93.0]
    t = s.rank_correlation(x, y)
    assert t["diff"] == pytest.approx(stats.spearmanr(x, y).statistic, rel=1e-12) and t["n"] == 8
    z, half = np.arctanh(t["diff"]), stats.norm.ppf(0.975) * np.sqrt(1.06 / 5)
    assert (t["lo"], t["hi"]) == pytest.approx((np.tanh(z - half), np.tanh(z + half)), rel=1e-9)
    assert s.verdict(t, "rank_correlation") == ("reproduced" if t["lo"] > 0 else "inconclusive")
    flipped = s.rank_correlation(x, [-v for v in y])
    assert flipped["diff"] == pytest.approx(-t["diff"])
    assert s.verdict(flipped, "rank_correlation") == ("contradicted" if t["lo"] > 0 else "inconclusive")
    assert s.rank_correlation([1.0, 2.0, 3.0], [1.0, 3.0, 2.0])["lo"] is None  # fewer than 4 points: no interval
    assert s.rank_correlation([1.0, 1.0, 1.0, 1.0], [1.0, 2.0, 3.0, 4.0])["diff"] is None  # no spread: undefined
    with pytest.raises(ValueError, match="pairs"):
        s.rank_correlation([1.0, 2.0], [1.0])


def test_fewshot_claim_end_to_end(tmp_path):
    """The few-shot / fine-tuning claim's machinery on two upstream models and two seeds (smoke budgets): each
    transfer arm trains its upstream model first, fine-tunes it on the downstream digits from its saved weights
    with a new head, and the claim's rho is Spearman's over the four (few-shot, fine-tuned) points."""
    stats = pytest.importorskip("scipy.stats")
    s = study()
    ctx = s.Ctx(tmp_path, dict(s.SMOKE, seeds=(0, 1)), True, 1, {})
    models = {"ViT": "vit_micro_patch4_28", "Mixer": "mixer_micro_patch4_28"}
    transfer = {
        m: s.transfer_arm(s.classify(f"up_{m}", name, "small", "small_epochs"), name) for m, name in models.items()
    }
    claim = s.Claim(
        "fewshot_test",
        "ViT",
        "test",
        "few-shot tracks fine-tuning",
        "Spearman rho",
        {
            f"{m}: {how}": (transfer[m], key)
            for m in transfer
            for how, key in (("few-shot", "few_shot"), ("fine-tuned", "finetune_acc"))
        },
        {},
        {},
        kind="rank_correlation",
        pairs=tuple((f"{m}: few-shot", f"{m}: fine-tuned") for m in transfer),
    )
    r = s.run_claim(ctx, claim)
    assert set(r["arms"]) == {"ViT: few-shot", "ViT: fine-tuned", "Mixer: few-shot", "Mixer: fine-tuned"}
    for arm in r["arms"].values():
        assert arm["n"] == 2 and all(0.0 <= v <= 100.0 for v in arm["values"])
    xs = r["arms"]["ViT: few-shot"]["values"] + r["arms"]["Mixer: few-shot"]["values"]
    ys = r["arms"]["ViT: fine-tuned"]["values"] + r["arms"]["Mixer: fine-tuned"]["values"]
    if len(set(xs)) > 1 and len(set(ys)) > 1:
        assert r["test"]["diff"] == pytest.approx(stats.spearmanr(xs, ys).statistic)
    assert r["verdict"] in {"reproduced", "contradicted", "inconclusive"} and r["pairs"][0] == [
        "ViT: few-shot",
        "ViT: fine-tuned",
    ]
    for m, name in models.items():  # fine-tuned from the upstream model's directory, on the digits, 10 classes
        for seed in (0, 1):
            cfg = yaml.safe_load((ctx.run_dir(f"transfer_up_{m}", seed) / "config.yaml").read_text())
            assert cfg["model"]["pretrained"] == str(ctx.run_dir(f"up_{m}", seed) / "model")
            assert cfg["model"]["name"] == name and cfg["data"]["name"] == "digits"
            saved = json.loads((tmp_path / "runs" / f"transfer_up_{m}" / f"seed{seed}.json").read_text())["result"]
            assert saved["shots"] == 5
    assert s.rule_text(claim) == "Spearman rho(few-shot, fine-tuned) over models x seeds > 0"

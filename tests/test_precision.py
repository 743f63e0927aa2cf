"""`--run.precision=auto|bf16|fp16|fp32` (training) and `--bf16=auto|true|false` (eval, predict): bf16 autocast
only where the hardware computes bf16 natively."""

import logging

import pytest
import torch

import vitkit.precision as precision
from vitkit.precision import bf16_is_native, parse_bf16, resolve_bf16, resolve_precision
from vitkit.train import TrainConfig, apply_overrides, train


@pytest.mark.parametrize(
    "given, parsed",
    [(True, True), (False, False), ("auto", "auto"), ("AUTO", "auto"), ("true", True), ("false", False)],
)
def test_parse(given, parsed):
    assert parse_bf16(given) == parsed


def test_bad_values_name_the_choices():
    with pytest.raises(ValueError, match="auto, true or false"):
        parse_bf16("maybe")
    with pytest.raises(ValueError, match=r"--run.precision='sometimes' is out of range: it must be one of auto, bf16"):
        apply_overrides(TrainConfig(), ["--run.precision=sometimes"])
    assert apply_overrides(TrainConfig(), ["--run.precision=auto"]).run.precision == "auto"
    assert TrainConfig().run.precision == "fp32"
    for old in ("true", "auto"):  # the setting it replaces names the new one
        with pytest.raises(ValueError, match=r"run.bf16 is replaced by run.precision: use --run.precision=bf16"):
            apply_overrides(TrainConfig(), [f"--run.bf16={old}"])


def test_a_recipe_naming_bf16_is_refused_with_the_new_name(tmp_path):
    from vitkit.train import load_recipe

    (tmp_path / "old.yaml").write_text("run:\n  bf16: auto\n")
    with pytest.raises(ValueError, match=r"old.yaml: run.bf16 is replaced by run.precision"):
        load_recipe(tmp_path / "old.yaml")


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware_and_true_warns_when_emulated(monkeypatch, caplog, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_bf16("auto", "cpu") is native
    assert resolve_bf16(False, "cpu") is False
    with caplog.at_level(logging.WARNING, logger="vitkit.precision"):
        assert resolve_bf16(True, "cpu") is True  # honoured either way
    assert ("emulated" in caplog.text) is (not native)
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")
    assert [resolve_precision(p, "cpu", warn=False) for p in ("fp32", "fp16", "BF16")] == ["fp32", "fp16", "bf16"]


def test_native_query_is_torchs():
    expected = any(
        bool(getattr(torch.cpu, q, lambda: False)()) for q in ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    )
    assert bf16_is_native("cpu") is expected
    if not torch.cuda.is_available():
        assert bf16_is_native("cuda") is False


@pytest.mark.parametrize("native", [True, False])
def test_training_records_what_auto_chose(tmp_path, monkeypatch, native):
    pytest.importorskip("sklearn")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    cfg = apply_overrides(
        TrainConfig(),
        [
            f"--run.out={tmp_path / 'run'}",
            "--run.precision=auto",
            "--sched.epochs=1",
            "--model.overrides.depth=1",
            "--model.overrides.embed_dim=32",
            "--model.overrides.num_heads=2",
            "--run.progress=false",
            "--run.threads=1",
            "--data.num_workers=0",
        ],
    )
    m = train(cfg)
    assert m["bf16"] is native and m["precision"] == ("bf16" if native else "fp32")

"""`--run.bf16=auto|true|false`: bf16 autocast only where the hardware computes bf16 natively."""

import logging

import pytest
import torch

import vitkit.precision as precision
from vitkit.precision import bf16_is_native, parse_bf16, resolve_bf16
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
    with pytest.raises(ValueError, match="run.bf16 expects true, false or auto"):
        apply_overrides(TrainConfig(), ["--run.bf16=sometimes"])
    assert apply_overrides(TrainConfig(), ["--run.bf16=auto"]).run.bf16 == "auto"
    assert apply_overrides(TrainConfig(), ["--run.bf16=true"]).run.bf16 is True


@pytest.mark.parametrize("native", [True, False])
def test_auto_follows_the_hardware_and_true_warns_when_emulated(monkeypatch, caplog, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert resolve_bf16("auto", "cpu") is native
    assert resolve_bf16(False, "cpu") is False
    with caplog.at_level(logging.WARNING, logger="vitkit.precision"):
        assert resolve_bf16(True, "cpu") is True  # honoured either way
    assert ("emulated" in caplog.text) is (not native)


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
            "--run.bf16=auto",
            "--sched.epochs=1",
            "--model.overrides.depth=1",
            "--model.overrides.embed_dim=32",
            "--model.overrides.num_heads=2",
            "--run.progress=false",
            "--run.threads=1",
            "--data.num_workers=0",
        ],
    )
    assert train(cfg)["bf16"] is native

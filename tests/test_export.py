"""ONNX export (vitkit/export.py): every family round-trips through onnxruntime within 1e-4, the
batch axis is dynamic, files are written atomically, and bad requests fail with clear errors."""

import sys
import warnings

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.export import (
    INPUT_NAME,
    OUTPUT_NAME,
    example_input,
    export,
    export_onnx,
    randomise_heads,
)

# Mixer goes through the command line in test_cli_exports_a_saved_model_with_dynamic_batch (one export each).
FAMILY_MODELS = [
    "vit_micro_patch4_28",
    "deit_micro_distilled_patch4_28",
    "swin_micro_patch2_window7_28",
    "cvt_micro_28",
]
pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch.export internals


def needs_onnx():
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason="ONNX export needs pip install 'vitkit[onnx]'")


def random_model(name: str):
    torch.manual_seed(0)
    model = vitkit.create_model(name).eval()
    randomise_heads(model)  # vitkit's heads start at zero: compare real logits, not zeros
    return model


def assert_runs_at_any_batch(path, model):
    """Independently of export's own check: exported at batch 2, run at batches 1, 3 and 5."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].name == INPUT_NAME
    for batch in (1, 3, 5):
        x = example_input(model, batch)
        with torch.inference_mode():
            ref = model(x).numpy()
        got = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        assert got.shape == ref.shape == (batch, model.num_classes)
        assert np.abs(ref).max() > 1e-3  # non-trivial outputs
        np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", FAMILY_MODELS)
def test_round_trip_with_dynamic_batch(name, tmp_path):
    needs_onnx()
    model = random_model(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = export_onnx(model, tmp_path / "m.onnx", batch=2)
    # Swin's inference-time bias cache must stay out of the traced graph ("assigned during export")
    assert not [w for w in caught if "assigned during export" in str(w.message)]
    assert result.path.is_file() and result.max_abs_diff <= 1e-4 and result.checked_batches == (2, 3)
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary file left behind
    assert_runs_at_any_batch(result.path, model)


def test_cli_exports_a_saved_model_with_dynamic_batch(tmp_path, capsys):
    needs_onnx()
    model = random_model("mixer_micro_patch4_28")
    model.save_pretrained(tmp_path / "model")
    assert main(["export", str(tmp_path), "--format", "onnx"]) == 0  # a run directory: RUN/model/model.onnx
    out = capsys.readouterr().out
    assert "onnxruntime check: max |onnxruntime - PyTorch|" in out and "OK" in out
    assert_runs_at_any_batch(tmp_path / "model" / "model.onnx", model)


def test_failed_check_leaves_no_file(tmp_path):
    needs_onnx()
    model = random_model("mixer_micro_patch4_28")
    with pytest.raises(RuntimeError, match="differ by up to"):
        export_onnx(model, tmp_path / "m.onnx", atol=-1.0)  # no export can meet a negative tolerance
    assert list(tmp_path.iterdir()) == []


def test_unknown_format_is_a_clear_error(tmp_path, capsys):
    model = random_model("mixer_micro_patch4_28")
    with pytest.raises(ValueError, match="unknown export format 'tflite'; supported: onnx"):
        export(model, fmt="tflite", out=tmp_path / "m.tflite")
    assert main(["export", "mixer_micro_patch4_28", "--format", "tflite", "--out", str(tmp_path / "x")]) == 2
    assert "unknown export format 'tflite'" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_onnxruntime_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install 'vitkit\[onnx\]'"):
        export(random_model("mixer_micro_patch4_28"), out=tmp_path / "m.onnx")
    assert list(tmp_path.iterdir()) == []


def test_unknown_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a checkpoint directory"):
        export(tmp_path / "nothing-here")


def test_the_opset_asked_for_is_the_opset_written(tmp_path):
    # opset 17 is below the exporter's own (18): it converts the graph, and the file must say 17
    needs_onnx()
    import os
    import stat

    import onnx

    model = random_model("vit_micro_patch4_28")
    old = os.umask(0o022)
    try:
        result = export_onnx(model, tmp_path / "m.onnx", opset=17)
    finally:
        os.umask(old)
    written = {entry.domain: entry.version for entry in onnx.load(str(result.path)).opset_import}
    assert result.opset == 17 and written.get("", written.get("ai.onnx")) == 17
    assert result.max_abs_diff <= 1e-4
    assert stat.S_IMODE(result.path.stat().st_mode) == 0o644  # what open() gives under umask 022, not mkstemp's 0600

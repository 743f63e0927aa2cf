"""`vitkit predict` / `vitkit eval --engine onnxruntime` (vitkit/predict.py `load_model`): the model's ONNX
export run by onnxruntime gives the PyTorch engine's predictions (top-1 identical, probabilities within 1e-4)
and metrics on a trained digits run and on image files; the export is cached next to the weights and
reused only while it matches them; unsupported models and a missing onnxruntime are clear errors."""

import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.data import load_dataset
from vitkit.eval import evaluate_dir
from vitkit.predict import OnnxRuntimeModel, load_model, predict_files

pytestmark = pytest.mark.filterwarnings("ignore:.*LeafSpec.*:FutureWarning")  # torch.export internals

TRAIN = [
    "--sched.epochs=6",
    "--sched.warmup_epochs=0",
    "--run.batch_size=32",
    "--run.progress=false",
    "--run.tensorboard=false",
    "--model.overrides.depth=1",
    "--model.overrides.embed_dim=32",
    "--model.overrides.num_heads=2",
    "--run.threads=1",
    "--data.num_workers=0",
]


def needs_onnx():
    for module in ("onnx", "onnxruntime", "onnxscript"):
        pytest.importorskip(module, reason="--engine onnxruntime needs pip install 'vitkit[onnx]'")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A real `vitkit train` run on the scikit-learn digits (tiny ViT, six epochs: it has learnt something)."""
    pytest.importorskip("sklearn")
    needs_onnx()
    out = tmp_path_factory.mktemp("runs") / "digits"
    assert main(["train", "--out", str(out), *TRAIN]) == 0
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Twelve test digits written as PNG files (upscaled 4x and in RGB: predict resizes them back)."""
    from PIL import Image

    test = load_dataset("digits").test
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i in range(12):
        x, _ = test[i]
        pixels = (x[0].numpy() * 255).round().astype(np.uint8)
        path = folder / f"{i}.png"
        Image.fromarray(pixels).resize((32, 32), Image.Resampling.NEAREST).convert("RGB").save(path)
        paths.append(path)
    return paths


def test_both_engines_agree_on_the_test_split(run, caplog):
    with caplog.at_level(logging.INFO, logger="vitkit"):
        ort_model = load_model(run, "onnxruntime", threads=1)
    assert isinstance(ort_model, OnnxRuntimeModel) and ort_model.path == run / "model" / "model.onnx"
    assert "exported" in caplog.text
    torch_model = load_model(run, "torch")
    data = load_dataset("digits").test
    x = torch.stack([data[i][0] for i in range(len(data))])
    mean, std = (torch.tensor(ort_model.data_config[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
    assert ort_model.data_config == {
        k: tuple(v) if isinstance(v, list) else v for k, v in vitkit.data.resolve_model_data_config(torch_model).items()
    }
    x = (x - mean) / std
    with torch.inference_mode():
        ref = torch_model(x).softmax(-1)
        got = ort_model(x).softmax(-1)
    assert ort_model.checked is not None and ort_model.checked < 1e-4  # the first call was checked against PyTorch
    assert ref.max(-1).values.mean() > 0.25  # a trained model, not uniform outputs
    assert torch.equal(got.argmax(-1), ref.argmax(-1))
    assert (got - ref).abs().max() <= 1e-4


def test_eval_with_both_engines(run, capsys, caplog):
    a = evaluate_dir(run)
    b = evaluate_dir(run, engine="onnxruntime", threads=1)
    assert a["acc"] > 30 and a["acc"] == b["acc"] and a["top5"] == b["top5"]
    assert a["per_class_acc"] == b["per_class_acc"] and abs(a["loss"] - b["loss"]) <= 1e-5
    assert b["engine"]["name"] == "onnxruntime" and b["engine"]["check_max_abs_diff"] < 1e-4
    assert "engine" not in a and a["images"] == b["images"] == 359
    # the command line: the check is in the log, the same metrics line as the torch engine's
    with caplog.at_level(logging.INFO, logger="vitkit"):
        assert main(["eval", str(run), "--engine", "onnxruntime", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert f"top-1 {a['acc']:.2f}%, top-5 {a['top5']:.2f}%" in out and "with onnxruntime" in out
    assert "onnxruntime check on the first batch (359 image(s))" in caplog.text and "OK" in caplog.text
    assert "(the export of these weights)" in caplog.text  # the cached export, not a new one
    # the .onnx file itself, with the model directory beside it checked against
    c = evaluate_dir(run / "model" / "model.onnx", engine="onnxruntime")
    assert c["acc"] == a["acc"] and c["engine"]["check_max_abs_diff"] is not None
    d = evaluate_dir(run, engine="onnxruntime", check=False)
    assert d["acc"] == a["acc"] and d["engine"]["check_max_abs_diff"] is None


def test_predict_with_both_engines(run, images, capsys):
    a = list(predict_files(run, images, top_k=10))
    b = list(predict_files(run, images, top_k=10, engine="onnxruntime", threads=1))
    assert [p for p, _ in a] == [p for p, _ in b] == [str(p) for p in images]
    for (_, top_a), (_, top_b) in zip(a, b):
        assert top_a[0][0] == top_b[0][0]  # top-1 identical
        pa, pb = dict(top_a), dict(top_b)
        assert pa.keys() == pb.keys() and max(abs(pa[k] - pb[k]) for k in pa) <= 1e-4
    assert np.mean([top[0][1] for _, top in a]) > 0.2  # confident predictions, not uniform ones
    # an .onnx file given directly: the class names and preprocessing travel in its metadata
    onnx_file = run / "model" / "model.onnx"
    alone = shutil.copy(onnx_file, images[0].parent / "alone.onnx")
    c = list(predict_files(alone, images, top_k=10, engine="onnxruntime"))
    assert [t[0] for _, t in c] == [t[0] for _, t in b]
    assert main(["predict", str(run), *map(str, images[:2]), "--engine", "onnxruntime", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(f"{images[0]}: {a[0][1][0][0]} ")


def test_a_stale_export_is_not_used_nor_overwritten(run, images, tmp_path, caplog):
    model_dir = tmp_path / "model"
    shutil.copytree(run / "model", model_dir)
    model = vitkit.from_pretrained(model_dir)
    with torch.no_grad():
        model.head.weight.mul_(-1)  # other weights: model.onnx beside them no longer their export
    model.save_pretrained(model_dir)
    before = (model_dir / "model.onnx").read_bytes()
    with caplog.at_level(logging.INFO, logger="vitkit"):
        ort_model = load_model(model_dir, "onnxruntime")
    assert "is not the export of the weights" in caplog.text
    assert (model_dir / "model.onnx").read_bytes() == before
    assert not ort_model.path.exists()  # a temporary export, removed once loaded
    x = torch.randn(3, *ort_model.data_config["input_size"])
    with torch.inference_mode():
        torch.testing.assert_close(ort_model(x), model.eval()(x), atol=1e-4, rtol=0)
    info = json.loads(ort_model.session.get_modelmeta().custom_metadata_map["vitkit.model"])
    assert info["dataset"] == "digits" and len(info["label_names"]) == 10


def test_errors_are_clear(run, images, tmp_path, capsys, monkeypatch):
    def error(*argv):
        assert main(list(map(str, argv))) == 2
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return err

    assert "--bf16 applies to --engine torch" in error("predict", run, images[0], "--engine", "onnxruntime", "--bf16")
    assert "run it with --engine onnxruntime" in error("predict", run / "model" / "model.onnx", images[0])
    for name, what in (("vivit_micro_4x2_28", "is a video model"), ("dvt_micro_28", "early-exit model (DVT)")):
        vitkit.create_model(name).save_pretrained(tmp_path / name)
        assert what in error("eval", tmp_path / name, "--engine", "onnxruntime", "--data", "digits")
        assert not (tmp_path / name / "model.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert "pip install 'vitkit[onnx]'" in error("predict", run, images[0], "--engine", "onnxruntime")
    assert "pip install 'vitkit[onnx]'" in error("eval", run, "--engine", "onnxruntime")

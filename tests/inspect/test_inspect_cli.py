"""The figures are real PNG files with content, and `vitkit inspect` runs end to end."""

from __future__ import annotations

import json

import pytest
import torch

import vitkit
from vitkit.cli import main
from vitkit.inspect import patch_embed_pca, pos_embed_similarity
from vitkit.inspect.plots import (
    plot_attention_distance,
    plot_attention_overlays,
    plot_cls_heads,
    plot_patch_pca,
    plot_pos_embed_similarity,
)

pytest.importorskip("matplotlib")
PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000, path


def test_figures_are_written(tmp_path):
    model = vitkit.create_model("vit_micro_patch4_32")
    images = torch.rand(2, 32, 32, 3)
    assert_png(plot_attention_overlays(images, torch.rand(2, 32, 32), tmp_path / "a" / "o.png", "t", ["x", "y"]))
    assert_png(plot_cls_heads(images[0], torch.rand(4, 32, 32), tmp_path / "c.png", "t"))
    d = torch.rand(4, 4) * 20
    d[0, 3] = float("nan")  # fewer heads in a layer
    assert_png(plot_attention_distance(d, tmp_path / "d.png", "t", ["b0", "b1", "b2", "b3"]))
    assert_png(plot_pos_embed_similarity(pos_embed_similarity(model), tmp_path / "p.png", "t"))
    assert_png(plot_patch_pca(patch_embed_pca(model), tmp_path / "f.png", "t"))
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files


def test_cli_inspect_trained_dir_on_its_dataset(tmp_path, capsys):
    model = vitkit.create_model("vit_micro_patch2_8")
    model.pretrained_cfg["dataset"] = "digits"
    model.save_pretrained(tmp_path / "m")
    out = tmp_path / "figs"
    assert (
        main(
            [
                "inspect",
                str(tmp_path / "m"),
                "--out",
                str(out),
                "--num-images",
                "20",
                "--show",
                "3",
                "--head-fusion",
                "max",
                "--discard-ratio",
                "0.5",
            ]
        )
        == 0
    )
    assert "figures in" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_images"] == 20 and summary["images"] == "digits test[:20]"
    assert len(summary["mean_attention_distance_px"]) == 4 and len(summary["mean_attention_distance_px"][0]) == 4
    for name in ("rollout", "attention_distance", "pos_embed_similarity", "patch_embed_pca", "cls_attention_0"):
        assert_png(out / f"{name}.png")


def test_cli_inspect_photos_and_files(tmp_path):
    pytest.importorskip("skimage")
    from PIL import Image

    out = tmp_path / "swin"
    # a hierarchical model: rollout is skipped, the distance is measured per window
    assert main(["inspect", "swin_micro_patch2_window4_32", "--photos", "--out", str(out), "--show", "2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == "scikit-image photos" and summary["num_images"] == 4
    assert "skipped" in summary["rollout"] and "skipped" in summary["pos_embed"]
    assert_png(out / "attention_distance.png")
    assert_png(out / "patch_embed_pca.png")
    Image.fromarray((torch.rand(40, 50, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    assert main(["inspect", "vit_micro_patch2_8", str(tmp_path / "a.png"), "--out", str(tmp_path / "v")]) == 0
    assert_png(tmp_path / "v" / "rollout.png")


def test_cli_inspect_errors(tmp_path, capsys):
    assert main(["inspect", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "neither a model/run directory nor a registered model name" in err and "Traceback" not in err
    assert main(["inspect", "mixer_micro_patch4_28", "--photos", "--out", str(tmp_path / "o")]) == 2
    assert "recorded no attention" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a usage error, refused by the parser before anything loads
        main(["inspect", "vit_micro_patch2_8", "--photos", "--discard-ratio", "1", "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "--discard-ratio: 1 is out of range: it must be in [0, 1)" in capsys.readouterr().err

"""The command line and the embedded dataset, run for real on small settings."""

import argparse
import json
import subprocess
import sys

import pytest
import torch

from vitkit.cli import build_parser, main
from vitkit.data import load_digits
from vitkit.train.schedule import cosine_schedule

pytest.importorskip("sklearn")


def test_digits_split_is_deterministic_and_stratified():
    train, test = load_digits(seed=0)
    train2, test2 = load_digits(seed=0)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert torch.equal(test.labels, test2.labels) and torch.equal(train.images, train2.images)
    assert train.images.shape[1:] == (1, 8, 8) and 0.0 <= train.images.min() and train.images.max() <= 1.0
    counts = torch.bincount(test.labels, minlength=10)
    assert counts.min() >= 35 and counts.max() <= 37  # ~20% of each class's ~180 images
    assert not set(load_digits(seed=1)[1].labels.tolist()) ^ set(range(10))


def test_cosine_schedule():
    lrs = cosine_schedule(1.0, total_steps=10, warmup_steps=2)
    assert lrs[0] == 0.5 and lrs[1] == 1.0 and lrs[2] == 1.0
    assert all(a >= b for a, b in zip(lrs[2:], lrs[3:])) and lrs[-1] < 0.05


def test_cli_models_and_info(capsys):
    assert main(["models", "deit_*_distilled_*", "--params"]) == 0
    out = capsys.readouterr().out
    assert "deit_tiny_distilled_patch16_224" in out and "5,910,800" in out
    assert main(["info", "vit_base_r50_s16_224"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == 98_659_112 and info["config"]["hybrid_layers"] == [3, 4, 9]
    assert abs(info["gmacs"] - 21.66) < 0.2  # timm's R50+ViT-B/16 hybrid, fvcore-style count (matmuls and convs)


def test_cli_errors_are_one_line(capsys):
    assert main(["info", "vit_tiny_patch16_22"]) == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and "vit_tiny_patch16_224" in err and "Traceback" not in err
    assert main(["models", "nothing_like_this*"]) == 1


def test_cli_predict(tmp_path, capsys, monkeypatch):
    from PIL import Image

    import vitkit.allocator

    reused = []  # predict keeps freed CPU memory for the next image unless told not to (effect: test_allocator.py)
    monkeypatch.setattr(vitkit.allocator, "reuse_freed_memory", lambda: reused.append(True))

    model = vitkit.create_model("vit_micro_patch2_8")
    model.pretrained_cfg["label_names"] = [f"digit {i}" for i in range(10)]
    torch.nn.init.normal_(model.head.weight)
    model.save_pretrained(tmp_path / "m")
    Image.fromarray((torch.rand(40, 30, 3) * 255).byte().numpy()).save(tmp_path / "a.png")
    Image.fromarray((torch.rand(8, 8) * 255).byte().numpy(), mode="L").save(tmp_path / "b.jpg")
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "a.png"), str(tmp_path / "b.jpg"), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and all(line.count("digit ") == 2 for line in lines)
    assert reused == [True]
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "a.png"), "--no-reuse-cpu-memory"]) == 0
    assert reused == [True] and capsys.readouterr().out.count("digit ") == 5
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["predict", str(tmp_path / "m"), str(tmp_path / "bad.png")]) == 2
    assert "not a readable image" in capsys.readouterr().err


def test_every_subcommand_has_its_help(capsys):
    """`vitkit --help` lists every subcommand of the vitkit/cli/ modules, and each one's --help works."""
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands = list(sub.choices)
    assert commands == [
        "train",
        "pretrain",
        "eval",
        "models",
        "info",
        "predict",
        "calibrate",
        "make-shards",
        "push",
        "export",
        "inspect",
    ]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        out = capsys.readouterr().out
        assert exit_info.value.code == 0 and out.startswith(f"usage: vitkit {command} "), command
        assert sub.choices[command].get_default("func").__module__ == "vitkit.cli." + {
            "models": "models",
            "info": "models",
            "calibrate": "eval",
            "make-shards": "data",
        }.get(command, command)


@pytest.mark.parametrize("module", ["vitkit", "vitkit.cli"])
def test_python_dash_m(module):
    """`python -m vitkit` and `python -m vitkit.cli` (what torchrun runs) are the `vitkit` command, errors included."""
    run = subprocess.run(
        [sys.executable, "-m", module, "models", "vit_micro_patch2_*"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 0 and "vit_micro_patch2_8" in run.stdout.split(), run.stderr
    run = subprocess.run(
        [sys.executable, "-m", module, "info", "vit_micro_patch2_9"], capture_output=True, text=True, timeout=120
    )
    assert run.returncode == 2 and "vitkit info: error: unknown model" in run.stderr and "Traceback" not in run.stderr

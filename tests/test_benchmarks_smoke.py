"""The benchmark scripts run end to end in their --smoke mode (tiny models, one round) and write
their tables. No timing is asserted: only that every library, family and column is there."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def script(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


def test_suite_smoke(tmp_path):
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    suite = script("suite")
    out = tmp_path / "suite.md"
    rows = suite.main(["--smoke", "--threads", "1", "--markdown", str(out)])
    text = out.read_text()
    assert "SMOKE RUN" in text and "threads" in text and "the hardware's fp32 GEMM rate" in text and "set by" in text
    families = {r.family for r in rows}
    assert families == {"vit", "deit", "swin", "cvt", "mixer"}
    by_key = {(r.family, r.metric): r.values for r in rows}
    assert set(by_key["vit", "train b2 img/s"]) == {"vitkit", "timm", "transformers"}
    assert set(by_key["cvt", "train b2 img/s"]) == {"vitkit", "transformers"}  # timm has no CvT
    assert set(by_key["mixer", "train b2 img/s"]) == {"vitkit", "timm"}  # transformers has no Mixer
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnxscript"):
        assert "onnxruntime" in by_key["vit", "infer b1 img/s"]
    for values in by_key.values():
        assert all(v >= 0 for v in values.values())
    assert text.count("\n| ") == 1 + 5 * 6  # header + 6 metrics per family
    shares = [r for r in rows if r.metric == "train % of the hardware's fp32 GEMM rate"]
    assert len(shares) == 5 and all("GEMMs between the training rounds" in r.note for r in shares)
    best = [r for r in rows if r.metric == "train % of the hardware's best fp32 GEMM rate"]
    assert len(best) == 5 and all("best of the rounds at the start" in r.note for r in best)


def test_suite_profile_rows(tmp_path):
    """--profile adds, per library, the training step's milliseconds by op group, each group finding its ops."""
    pytest.importorskip("timm")
    pytest.importorskip("transformers")
    rows = script("suite").main(["--smoke", "--threads", "1", "--families", "vit", "--no-onnx", "--profile"])
    prof = {r.metric.removeprefix("train ms/step: "): r.values for r in rows if r.metric.startswith("train ms/step")}
    for lib in ("vitkit", "timm", "transformers"):
        assert prof["matmul"][lib] > 0 and prof["layer norm"][lib] > 0 and prof["gelu"][lib] > 0
    # timm and transformers always call SDPA; the op names of the group must catch it
    assert prof["attention (SDPA)"]["timm"] > 0 and prof["attention (SDPA)"]["transformers"] > 0


def test_bench_vs_timm_smoke(tmp_path, capsys):
    pytest.importorskip("timm")
    bench = script("bench_vs_timm")
    out = tmp_path / "bench.md"
    rows = bench.main(["--smoke", "--threads", "1", "--markdown", str(out)])
    # every architecture at batches 1 and 2 (inference) and one training step, timm's weights loaded strictly
    assert [(r.model, r.mode, r.batch) for r in rows] == [
        (m, mode, b) for m in bench.SMOKE for mode, b in (("infer", 1), ("infer", 2), ("train", 2))
    ]
    for r in rows:
        assert r.timm_ips > 0 and r.vitkit_ips > 0 and len(r.paired) == 1 and r.gflop_per_img > 0
    text = out.read_text()
    assert "SMOKE RUN" in text and "the hardware's fp32 GEMM rate (2048x2048)" in text and "set by" in text
    assert "| " + " | ".join(bench.HEADERS) + " |" in text
    assert text.count("\n| ") == 1 + len(rows)  # header + one line per row
    printed = capsys.readouterr().out
    assert "paired ratio [min-max]" in printed and all(m in printed for m in bench.SMOKE)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_hardware_gemm_rate_is_the_best_kernel_of_one_gemm(dtype):
    """Every kernel timed computes the same product (so each rate is of the same GEMM), and the rate reported is
    the best of them, named: MKL, oneDNN packed, and MLAS for fp32 where onnxruntime is installed."""
    common = script("_common")
    kernels, notes = common.gemm_kernels("cpu", dtype)
    ref = kernels[common.torch_matmul_name("cpu", dtype)]().float()
    names = {common.torch_matmul_name("cpu", dtype), common.ONEDNN}
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():  # AVX2-only: noted instead
        names.discard(common.ONEDNN)
        notes = [n for n in notes if not n.startswith(common.ONEDNN)]
    has_ort = importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx")
    if dtype == torch.float32 and has_ort:
        names.add(common.MLAS)
    if dtype == torch.float32:
        assert common.torch_matmul_name("cpu", dtype) == common.MKL
    assert set(kernels) == names and (notes == [] if has_ort or dtype != torch.float32 else len(notes) == 1)
    tol = 0.5 if dtype == torch.bfloat16 else 2e-2  # sums of 2048 products of N(0, 1) values: |c| ~ 45
    for name, fn in kernels.items():
        out = fn()
        out = torch.from_numpy(out[0]) if isinstance(out, list) else out.float()
        torch.testing.assert_close(out, ref, atol=tol, rtol=2e-2, msg=name)
    rate = common.hardware_gemm_rate("cpu", 1, dtype)
    assert set(rate.rates) == names and rate.gflops == max(rate.rates.values()) > 0
    assert rate.rates[rate.kernel] == rate.gflops and rate.kernel in rate.describe()
    assert rate.torch_matmul[0] == common.torch_matmul_name("cpu", dtype)
    with pytest.raises(ValueError, match="float32 or torch.bfloat16"):
        common.gemm_kernels("cpu", torch.float16)
    with pytest.raises(ValueError, match="available"):
        common.gemm_sampler("cpu", "no such kernel", dtype)


def test_bench_vs_timm_smoke_needs_a_tiny_config():
    pytest.importorskip("timm")
    bench = script("bench_vs_timm")
    with pytest.raises(SystemExit):
        bench.parse_args(["--smoke", "--models", "vit_small_patch16_224"])


def test_scaling_smoke(tmp_path, capsys):
    scaling = script("scaling")
    plot = tmp_path / "scaling.png" if importlib.util.find_spec("matplotlib") else None
    rows = scaling.main(["--smoke", "--threads", "1"] + (["--plot", str(plot)] if plot else []))
    assert [(r[0], r[1]) for r in rows] == [(m, res) for res in scaling.SMOKE_RESOLUTIONS for m in scaling.MODELS]
    for name, res, tokens, macs, median_ms, min_ms in rows:
        patch = 16 if name.startswith("vit") else 4
        assert tokens == (res // patch) ** 2 and macs > 0 and median_ms >= min_ms > 0
    # GMACs grow with the input size for both models (ViT-S: dynamic_img_size, Swin-T: padded windows)
    for name in scaling.MODELS:
        macs = [r[3] for r in rows if r[0] == name]
        assert macs == sorted(macs) and macs[0] < macs[-1]
    printed = capsys.readouterr().out
    assert "SMOKE RUN" in printed
    table = [line for line in printed.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| model | resolution | tokens (first stage) | GMACs |") and len(table) == 1 + len(rows)
    if plot:
        assert plot.stat().st_size > 0


def test_bf16_accuracy_smoke(tmp_path):
    bf16 = script("bf16_accuracy")
    rows = bf16.main(["--smoke", "--markdown", str(tmp_path / "bf16.md")])
    assert [r["model"] for r in rows] == bf16.SMOKE_MODELS
    for r in rows:
        assert 0 <= r["top-1 agreement %"] <= 100 and r["relative"] < 0.1 and r["speed-up"] > 0
    assert "top-1 agreement %" in (tmp_path / "bf16.md").read_text()


def test_attention_paths_smoke(tmp_path):
    attention = script("attention_paths")
    rows = attention.main(["--smoke", "--markdown", str(tmp_path / "attn.md")])
    assert {(r["dtype"], r["N"]) for r in rows} == {("fp32", 16), ("fp32", 40), ("bf16", 16), ("bf16", 40)}
    assert "Suggested `SDPA_MIN_SEQ_LEN` entries" in (tmp_path / "attn.md").read_text()
    rows = attention.main(["--smoke", "--train", "--dtypes", "fp32", "--markdown", str(tmp_path / "train.md")])
    assert all(r["sdpa ms"] > 0 and r["eager ms"] > 0 and r["max abs diff"] < 1e-4 for r in rows)
    assert "training (forward + backward)" in (tmp_path / "train.md").read_text()


def test_threshold_rule():
    attention = script("attention_paths")

    def rows(*pairs):
        return [{"dtype": "bf16", "N": n, "sdpa ms": s, "eager ms": e} for n, s, e in pairs]

    # eager wins at 197, SDPA from 257 on (as the GUIDE's measurement): the entry is 257
    assert attention.threshold(rows((50, 2, 1), (197, 3, 2), (257, 3, 4), (785, 9, 20)), "bf16") == 257
    # a noisy win for SDPA below a longer eager win does not count
    assert attention.threshold(rows((50, 1, 2), (197, 3, 2), (785, 9, 20)), "bf16") == 785
    assert attention.threshold(rows((50, 2, 1), (785, 9, 8)), "bf16") is None


@pytest.mark.slow  # two fresh Python processes
def test_memory_smoke(tmp_path):
    memory = script("memory")
    rows = memory.main(["--smoke", "--libs", "vitkit", "--threads", "1", "--markdown", str(tmp_path / "m.md")])
    assert [r["checkpointing"] for r in rows] == ["no", "yes"] and all(r["vitkit MiB"] > 0 for r in rows)
    # live tensors: at the optimizer step weights, gradients and both AdamW moments are all alive
    import vitkit

    weights_mib = sum(p.numel() for p in vitkit.create_model("vit_tiny_patch16_224").parameters()) * 4 / 2**20
    assert all(r["vitkit live MiB"] >= 4 * weights_mib for r in rows)
    assert rows[1]["vitkit live MiB"] < rows[0]["vitkit live MiB"]  # checkpointing keeps fewer activations
    assert "live = the peak of the bytes of live tensors" in (tmp_path / "m.md").read_text()


def test_live_tensor_peak_counts_tensors_not_the_heap():
    """Freed blocks do not add up, kept ones do, and what existed before the block is not counted."""
    live_tensor_peak = script("_common").LiveTensorPeak
    before = torch.empty(8 * 2**20, dtype=torch.uint8)  # alive through the block, not counted
    with live_tensor_peak() as m:
        for _ in range(3):  # 10 MiB allocated and freed three times: a peak of 10 MiB, not 30
            a = torch.empty(10 * 2**20, dtype=torch.uint8)
            a.fill_(1)
            del a
        kept = torch.ones(2**20)  # 4 MiB, alive at the end, below the earlier peak
    assert m.peak == pytest.approx(10 * 2**20, abs=64 * 2**10)
    assert m.allocations >= 4 and kept.numel() == 2**20 and before.numel() == 8 * 2**20
    with live_tensor_peak() as m2:  # a second measurement in the same process starts from its own entry
        b = torch.empty(3 * 2**20, dtype=torch.uint8)
        c = torch.empty(2 * 2**20, dtype=torch.uint8)
        del b, c
    assert m2.peak == pytest.approx(5 * 2**20, abs=64 * 2**10)


def test_allocator_smoke(tmp_path):  # three fresh Python processes
    bench = script("allocator")
    rows = bench.main(
        ["--smoke", "--threads", "1", "--settings", "glibc", "reuse", "kept", "--markdown", str(tmp_path / "a.md")]
    )
    assert [r["setting"] for r in rows] == ["glibc", "reuse", "kept"] and all(r["img/s"] > 0 for r in rows)
    assert rows[0]["vs glibc"] == 1.0 and "| reuse |" in (tmp_path / "a.md").read_text()


def test_step_profile_smoke(capsys):
    profile = script("step_profile")
    result = profile.main(["--smoke", "--threads", "1"])
    ms = result["ms_per_step"]
    assert set(ms) == {*profile.GROUPS, "other", "total"} and ms["matmul"] > 0
    assert ms["total"] == pytest.approx(sum(v for k, v in ms.items() if k != "total"))
    printed = capsys.readouterr().out
    assert "SMOKE RUN" in printed and "| matmul |" in printed


def test_step_profile_attention_paths_smoke(capsys):
    """--attention-paths times the step and inference under both attention policies, every round."""
    result = script("step_profile").main(["--smoke", "--threads", "1", "--attention-paths"])
    rates = result["attention_paths"]
    assert set(rates) == {"train fused", "train eager", "infer fused", "infer eager"}
    assert all(len(v) == 1 and v[0] > 0 for v in rates.values())  # --smoke: one round
    assert "eager/fused" in capsys.readouterr().out


@pytest.mark.slow  # ~1 min: a pre-training, frozen evaluations and two fine-tunings on the 8x8 digits
def test_ssl_eval_smoke_with_a_recipe(tmp_path):
    """benchmarks/ssl_eval.py --smoke, pre-training DINO from its MNIST recipe (the recipe's head and crops, the
    smoke's data, model and epochs on top): every evaluation of both backbones and both fine-tunings are there."""
    ssl_eval = script("ssl_eval")
    recipe = BENCH.parent / "recipes" / "pretrain_dino_mnist.yaml"
    r = ssl_eval.main(
        [
            "--smoke",
            "--method",
            "dino",
            "--recipe",
            str(recipe),
            "--out",
            str(tmp_path),
            "--",
            "--method.options.out_dim=256",
            "--method.options.num_local=2",
        ]
    )
    assert r["args"]["epochs"] == 1 and r["args"]["recipe"] == str(recipe)
    for backbone in ("pretrained", "random_init"):
        assert set(r["frozen"][backbone]) == {"knn20", "linear_probe", "few_shot_1", "few_shot_5", "few_shot_10"}
    assert set(r["finetune"]["0.1"]) == {"pretrained", "scratch"}
    config = (tmp_path / "dino-digits-smoke" / "pretrain-dino" / "config.yaml").read_text()
    assert "out_dim: 256" in config and "name: digits" in config and "clip_grad: 3.0" in config  # recipe + overrides


@pytest.mark.slow  # ~1 min: a teacher and four students on 2% of Fashion-MNIST
def test_distill_fmnist_smoke(tmp_path, capsys):
    """benchmarks/distill_fmnist.py --smoke --augment: the teacher, every method, the table and results.json."""
    import json

    distill = script("distill_fmnist")
    assert distill.main(["--smoke", "--augment", "--out", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "bf16 auto" in table and "| hard+token |" in table and "class head" in table
    r = json.loads((tmp_path / "results.json").read_text())
    assert set(r["results"]) == {"none", "soft", "hard", "hard+token"}
    assert r["results"]["hard+token"]["params"] > r["results"]["hard"]["params"]  # the token and its head
    assert all(len(m["acc"]) == 1 for m in r["results"].values())


def test_flop_counter_counts_a_depthwise_convolution_backward_like_its_forward():
    """Each gradient of a convolution costs its forward's FLOPs, groups or not (torch 2.13's own count of a
    depth-wise weight gradient is `channels` times too high)."""
    common = script("_common")
    for groups in (1, 8):
        conv = torch.nn.Conv2d(8, 16, 3, padding=1, groups=groups, bias=False)
        x = torch.randn(2, 8, 10, 10, requires_grad=True)
        with common.flop_counter() as fc:
            conv(x).sum().backward()
        forward = 2 * 2 * 16 * (8 // groups) * 3 * 3 * 10 * 10  # 2 FLOPs per MAC x batch x c_out x c_in/g x k^2 x HW
        assert fc.get_total_flops() == 3 * forward
        with common.flop_counter() as fc:
            conv(x.detach()).sum().backward()  # no input gradient: forward + weight gradient
        assert fc.get_total_flops() == 2 * forward


def test_ssl_eval_frozen_evals_take_uint8_splits_as_pixels_in_0_1():
    """ssl_eval's frozen evaluations on a split stored as uint8 (as MNIST's and Fashion-MNIST's are) equal those on
    the same pixels stored as float in [0, 1]: the images reach the backbone in the range the data's mean/std
    describe, not as 0..255."""
    import argparse
    import dataclasses

    import vitkit
    from vitkit.data import load_dataset
    from vitkit.data.embedded import Split

    ssl_eval = script("ssl_eval")
    digits = load_dataset("digits", val_fraction=0.0)

    def stored(split, as_uint8):
        u8 = split.images.mul(255).round().to(torch.uint8)
        return Split(u8 if as_uint8 else u8.float() / 255, split.labels, split.classes)

    as_float = dataclasses.replace(digits, train=stored(digits.train, False), test=stored(digits.test, False))
    as_uint8 = dataclasses.replace(digits, train=stored(digits.train, True), test=stored(digits.test, True))
    assert as_uint8.train.images.dtype == torch.uint8
    torch.manual_seed(0)
    backbone = vitkit.create_model("vit_micro_patch2_8", num_classes=0)
    args = argparse.Namespace(probe_train=500, probe_iter=30)
    from_float = ssl_eval.frozen_evals(backbone, as_float, args)
    assert ssl_eval.frozen_evals(backbone, as_uint8, args) == from_float
    assert set(from_float) == {"knn20", "linear_probe", "few_shot_1", "few_shot_5", "few_shot_10"}

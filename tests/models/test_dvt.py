"""Dynamic Vision Transformer (vitkit/models/dvt.py): early-exit logic against hand-set thresholds,
batch inference with mixed exits equal to per-sample inference (and only the remaining images running
the next stage), the shapes and effect of feature / relationship reuse, GMACs per exit (exactly the sum
of the single ViTs' costs without reuse, plus the closed-form reuse overhead), threshold calibration,
save/load of the thresholds, and a tiny real training run through `vitkit train` / calibrate / eval /
predict on the scikit-learn digits."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit import create_model, from_pretrained
from vitkit.eval.early_exit import calibrate_dir
from vitkit.layers import eager_attention
from vitkit.models import dvt as dvt_mod
from vitkit.models.dvt import (
    calibrate_thresholds,
    exit_confidences,
    resize_attention,
    resize_tokens,
    simulate_exits,
    thresholds_for_proportions,
)
from vitkit.precision import cpu_has_native_bf16
from vitkit.profile import model_gmacs

from contract import check_grad_checkpointing, check_save_roundtrip

TINY = dict(embed_dim=16, depth=2, num_heads=2, feature_reuse_dim=8, relation_reuse_hidden=8, num_classes=5)
B = 12


def build(seed: int = 0, **kw) -> dvt_mod.DynamicVisionTransformer:
    torch.manual_seed(seed)
    model = create_model("dvt_micro_28", **{**TINY, **kw})
    with torch.no_grad():  # the heads are zero-initialised: give them weights so the exits differ
        for stage in model.stages:
            nn.init.normal_(stage.head.weight, std=1.0)
            nn.init.normal_(stage.head.bias, std=0.3)
    return model.eval()


def images(n: int = B, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 1, 28, 28, generator=torch.Generator().manual_seed(seed))


def mixed_thresholds(model, x) -> tuple[float, float]:
    """Thresholds half-way between neighbouring confidences (never equal to one), so that about a
    third of the images leave at each exit."""
    with torch.no_grad():
        conf = exit_confidences(model.forward_exits(x))
    c0 = conf[0].sort().values
    t0 = float(c0[2 * B // 3] + c0[2 * B // 3 - 1]) / 2
    c1 = conf[1][conf[0] < t0].sort().values
    t1 = float(c1[len(c1) // 2] + c1[len(c1) // 2 - 1]) / 2
    return t0, t1


# ----------------------------------------------------------------------------- exit logic
def test_thresholds_zero_and_above_one():
    model, x = build(), images()
    with torch.no_grad():
        exits = model.forward_exits(x)
        assert len(exits) == 3 and all(e.shape == (B, 5) for e in exits)
        logits, taken = model.forward_dynamic(x, thresholds=(0.0, 0.0))  # everything leaves at exit 0
        assert taken.tolist() == [0] * B
        torch.testing.assert_close(logits, exits[0])
        logits, taken = model.forward_dynamic(x, thresholds=(1.01, 1.01))  # nothing leaves early
        assert taken.tolist() == [2] * B
        torch.testing.assert_close(logits, exits[2])
        torch.testing.assert_close(model(x), exits[2])  # uncalibrated eval forward: the last exit
        model.set_exit_thresholds((0.0, 0.0))
        torch.testing.assert_close(model(x), exits[0])  # calibrated eval forward: early exit
    with pytest.raises(ValueError, match="takes 2 thresholds"):
        model.set_exit_thresholds((0.5,))
    model.train()
    out = model(x)
    assert isinstance(out, list) and len(out) == 3  # training: every exit, for the summed loss


def test_batch_with_mixed_exits_equals_per_sample_and_saves_compute():
    model, x = build(), images()
    thresholds = mixed_thresholds(model, x)
    seen = []
    hooks = [s.register_forward_hook(lambda m, i, o: seen.append(i[0].shape[0])) for s in model.stages]
    with torch.no_grad():
        logits, taken = model.forward_dynamic(x, thresholds)
    for h in hooks:
        h.remove()
    counts = torch.bincount(taken, minlength=3).tolist()
    assert all(c > 0 for c in counts), counts  # every exit is used
    assert seen == [B, B - counts[0], B - counts[0] - counts[1]]  # only the remaining images run on
    with torch.no_grad():
        for i in range(B):
            one, k = model.forward_dynamic(x[i : i + 1], thresholds)
            assert k.item() == taken[i].item()
            torch.testing.assert_close(one[0], logits[i], atol=1e-5, rtol=1e-5)
        sim_exits, sim_logits = simulate_exits(model.forward_exits(x), thresholds)
    assert torch.equal(sim_exits, taken)
    torch.testing.assert_close(sim_logits, logits, atol=1e-5, rtol=1e-5)


def test_fused_attention_equals_eager():
    model, x = build(), images(4)
    with torch.no_grad():
        fused = model.forward_exits(x)
        with eager_attention():
            eager = model.forward_exits(x)
    for a, b in zip(fused, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- reuse paths
def test_resize_helpers():
    x = torch.randn(2, 1 + 16, 3)
    y = resize_tokens(x, (4, 4), (7, 7))
    assert y.shape == (2, 1 + 49, 3) and torch.equal(y[:, 0], x[:, 0])
    const = torch.full((2, 1 + 16, 3), 0.7)
    torch.testing.assert_close(resize_tokens(const, (4, 4), (7, 7)), torch.full((2, 50, 3), 0.7))

    a = torch.randn(2, 5, 17, 17)
    r = resize_attention(a, (4, 4), (7, 7))
    assert r.shape == (2, 5, 50, 50) and torch.equal(r[:, :, 0, 0], a[:, :, 0, 0])
    assert resize_attention(a, (4, 4), (4, 4)) is a
    # nearest neighbour on both grids, by F.interpolate's rule, [CLS] to [CLS]
    cell = F.interpolate(torch.arange(16.0).reshape(1, 1, 4, 4), size=(7, 7), mode="nearest").long().flatten()
    full = torch.cat([torch.zeros(1, dtype=torch.long), cell + 1])
    assert torch.equal(r, a[:, :, full][:, :, :, full])
    # 7x7 -> 14x14 replicates every cell 2x2 along queries and keys
    b = torch.randn(1, 1, 50, 50)
    up = resize_attention(b, (7, 7), (14, 14))[0, 0, 1:, 1:].reshape(14, 14, 14, 14)
    torch.testing.assert_close(up[::2, ::2, ::2, ::2], b[0, 0, 1:, 1:].reshape(7, 7, 7, 7), atol=0, rtol=0)
    torch.testing.assert_close(up[1::2, 1::2, 1::2, 1::2], b[0, 0, 1:, 1:].reshape(7, 7, 7, 7), atol=0, rtol=0)


def test_reuse_shapes_and_effect():
    model, x = build(), images(3)
    D, L, H, r = 16, 2, 2, 8
    with torch.no_grad():
        _, up = model.stages[0](x, None, return_logits=True)
        assert up.tokens.shape == (3, 1 + 16, D) and up.logits.shape == (3, L * H, 17, 17)
        feats, biases = model.stages[1].reused(up)
        assert len(feats) == len(biases) == L
        assert all(f.shape == (3, 1 + 49, r) for f in feats)
        assert all(b.shape == (3, H, 1 + 49, 1 + 49) for b in biases)
    assert model.stages[0].reuse_dim == 0 and model.stages[0].relation_reuse is None
    assert model.stages[1].blocks[0].mlp.fc1.in_features == D + r

    # reuse makes the downstream exit depend on the upstream stage: perturb stage 0, exit 1 changes
    with torch.no_grad():
        before = model.forward_exits(x)[1]
        model.stages[0].blocks[-1].mlp.fc2.bias.add_(torch.randn(16))
        assert not torch.allclose(model.forward_exits(x)[1], before)

    for kw, feat, rel in (
        (dict(feature_reuse=False), False, True),
        (dict(relation_reuse=False), True, False),
        (dict(feature_reuse=False, relation_reuse=False), False, False),
    ):
        m = build(**kw)
        assert (m.stages[1].reuse_dim > 0) == feat and hasattr(m.stages[1], "feature_reuse") == feat
        assert (m.stages[1].relation_reuse is not None) == rel
        assert m.stages[2].blocks[0].mlp.fc1.in_features == D + (r if feat else 0)
        with torch.no_grad():
            assert all(o.shape == (3, 5) for o in m.forward_exits(x))
        if not (feat or rel):  # no reuse: stage 1 is independent of stage 0
            with torch.no_grad():
                before = m.forward_exits(x)[1]
                m.stages[0].blocks[-1].mlp.fc2.bias.add_(torch.randn(16))
                torch.testing.assert_close(m.forward_exits(x)[1], before, atol=0, rtol=0)


def test_every_parameter_gets_a_gradient_from_the_summed_loss():
    model = build().train()
    sum(nn.functional.cross_entropy(o, torch.arange(B) % 5) for o in model(images())).backward()
    for n, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, n


def test_grad_checkpointing(monkeypatch):
    model = build().train()
    check_grad_checkpointing(
        model,
        images(4),
        dvt_mod,
        monkeypatch,
        expected_calls=3 * TINY["depth"],
        loss_fn=lambda out: sum((o**2).mean() for o in out),
    )


# ----------------------------------------------------------------------------- cost
def test_gmacs_per_exit():
    kw = dict(embed_dim=64, depth=4, num_heads=4, mlp_ratio=2.0)
    singles = [model_gmacs("vit_micro_patch4_28", patch_size=p, **kw) for p in (7, 4, 2)]
    plain = create_model("dvt_micro_28", feature_reuse=False, relation_reuse=False).measure_exit_gmacs()
    # without reuse the cascade is three independent ViTs: the exits cost their running sums
    for k in range(3):
        assert plain[k] == pytest.approx(sum(singles[: k + 1]), rel=1e-9)

    model = create_model("dvt_micro_28")
    costs = model.measure_exit_gmacs()
    c = model.config
    D, L, H, r, hid, h_rel = (
        c.embed_dim,
        c.depth,
        c.num_heads,
        c.feature_reuse_dim,
        int(c.embed_dim * c.mlp_ratio),
        c.relation_reuse_hidden,
    )
    overhead = 0
    for n_up, n in ((17, 50), (50, 197)):  # tokens (with [CLS]) of the upstream and the downstream stage
        overhead += n_up * (D * hid + hid * r) + n_up * r * L * r  # f = LN -> MLP, then h_l of every layer
        overhead += L * n * r * hid  # the wider first MLP layer of every downstream block
        overhead += n_up * n_up * (L * H * h_rel + h_rel * L * H)  # relationship MLP, at the upstream grid
    assert costs[0] == pytest.approx(plain[0], rel=1e-9)
    assert costs[2] - plain[2] == pytest.approx(overhead / 1e9, rel=1e-9)
    assert model.expected_gmacs(torch.tensor([0, 2, 2, 1])) == pytest.approx((costs[0] + 2 * costs[2] + costs[1]) / 4)


# ----------------------------------------------------------------------------- calibration
def test_thresholds_for_proportions_by_hand():
    conf = torch.tensor([[0.9, 0.8, 0.7, 0.6], [0.5, 0.95, 0.6, 0.4], [0.1, 0.1, 0.1, 0.1]])
    # half leave at exit 0 (0.9, 0.8), one of the remaining two at exit 1 (the 0.6 of image 2)
    assert thresholds_for_proportions(conf, [0.5, 0.25, 0.25]) == pytest.approx([0.8, 0.6])
    assert thresholds_for_proportions(conf, [0.0, 0.0, 1.0]) == [2.0, 2.0]  # NEVER: nobody leaves early


def test_calibrate_thresholds_meets_the_budget():
    g = torch.Generator().manual_seed(0)
    N, K = 2000, 10
    labels = torch.randint(0, K, (N,), generator=g)
    exit_logits = []
    for scale in (1.0, 2.0, 4.0):  # later exits more confident and more accurate
        lg = torch.randn(N, K, generator=g)
        lg[torch.arange(N), labels] += scale
        exit_logits.append(lg)
    costs = [1.0, 3.0, 10.0]
    for target in (2.0, 4.0, 6.0):
        r = calibrate_thresholds(exit_logits, labels, costs, target)
        assert r["heldout_gmacs"] == pytest.approx(target, rel=0.02)
        exits, logits = simulate_exits(exit_logits, r["thresholds"])
        assert float(torch.tensor(costs)[exits].mean()) == pytest.approx(r["heldout_gmacs"])
        assert r["heldout_acc"] == pytest.approx(100.0 * float((logits.argmax(-1) == labels).float().mean()))
    full = calibrate_thresholds(exit_logits, labels, costs, 10.0)
    assert full["heldout_exit_fractions"][2] > 0.99
    with pytest.raises(ValueError, match="below the cost of the first exit"):
        calibrate_thresholds(exit_logits, labels, costs, 0.5)


def test_save_load_keeps_thresholds(tmp_path):
    model, x = build(), images()
    model.set_exit_thresholds(mixed_thresholds(model, x))
    model.config.exit_gmacs = model.measure_exit_gmacs()
    model.config.calibration = {"dataset": "synthetic", "q": 1.5}
    loaded = check_save_roundtrip(model, x, tmp_path, "dvt_micro_28")
    assert loaded.exit_thresholds == model.exit_thresholds and loaded.config.exit_gmacs == model.config.exit_gmacs
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert saved["config"]["exit_thresholds"] == list(model.exit_thresholds)
    with torch.no_grad():
        a, ea = model.forward_dynamic(x)
        b, eb = loaded.forward_dynamic(x)
    assert torch.equal(ea, eb) and len(set(ea.tolist())) > 1 and torch.equal(a, b)


def test_config_errors():
    with pytest.raises(ValueError, match="at least 2 stages"):
        create_model("dvt_micro_28", patch_sizes=(4,))
    with pytest.raises(ValueError, match="one threshold per exit"):
        create_model("dvt_micro_28", exit_thresholds=(0.5,))
    with pytest.raises(ValueError, match="one size per stage"):
        create_model("dvt_micro_28", stage_img_sizes=(28,))


def test_resized_stage_inputs():
    # the paper's DVT-DeiT tokenisation: the same patch size on a resized image per stage
    model = create_model("dvt_micro_28", patch_sizes=(4, 4, 4), stage_img_sizes=(16, 20, 28), **TINY).eval()
    assert [s.grid_size for s in model.stages] == [(4, 4), (5, 5), (7, 7)]
    with torch.no_grad():
        assert all(o.shape == (2, 5) for o in model.forward_exits(images(2)))


# ----------------------------------------------------------------------------- end to end
def test_tiny_training_calibrate_eval_predict(tmp_path, capsys):
    pytest.importorskip("sklearn")
    from PIL import Image

    from vitkit.cli import main
    from vitkit.eval import evaluate_dir
    from vitkit.predict import predict_files
    from vitkit.train import TrainConfig, apply_overrides, train

    run = tmp_path / "run"
    cfg = apply_overrides(
        TrainConfig(),
        [
            f"--run.out={run}",
            "--model.name=dvt_micro_28",
            "--model.overrides.patch_sizes=[4, 2, 1]",
            "--model.overrides.embed_dim=16",
            "--model.overrides.depth=1",
            "--model.overrides.num_heads=2",
            "--sched.epochs=3",
            "--sched.warmup_epochs=0",
            "--run.progress=false",
            "--run.threads=1",
            "--data.num_workers=0",
            "--run.batch_size=32",
            "--optim.lr=0.005",
            "--optim.label_smoothing=0",
        ],
    )
    metrics = train(cfg)
    assert metrics["test_acc"] > 15  # 10 classes, 360 test images: chance is 10 +- 1.6%
    trained = from_pretrained(run / "model")
    assert all(s.head.weight.abs().sum() > 0 for s in trained.stages)  # every exit was trained (zero-init heads)

    assert main(["calibrate", str(run), "--budget", "0.5"]) == 0
    saved = json.loads((run / "model" / "config.json").read_text())["config"]
    assert len(saved["exit_thresholds"]) == 2 and len(saved["exit_gmacs"]) == 3
    assert saved["calibration"]["heldout_gmacs"] <= 0.5 * saved["exit_gmacs"][2] * 1.05
    assert "thresholds" in capsys.readouterr().out

    r = evaluate_dir(run)
    e = r["exits"]
    assert sum(e["exit_counts"]) == r["images"] and e["acc"] == pytest.approx(r["acc"])
    assert e["mean_gmacs"] < e["exit_gmacs"][2]

    png = tmp_path / "digit.png"
    Image.fromarray((torch.rand(8, 8) * 255).to(torch.uint8).numpy()).save(png)
    ((_, _, info),) = predict_files(run / "model", [png], details=True)
    assert set(info) == {"exit", "gmacs"} and info["gmacs"] == saved["exit_gmacs"][info["exit"]]
    assert main(["predict", str(run / "model"), str(png)]) == 0
    assert "mean GMACs per image" in capsys.readouterr().out

    vit_dir = tmp_path / "vit"
    create_model("vit_micro_patch2_8", embed_dim=16, depth=1, num_heads=2).save_pretrained(vit_dir)
    with pytest.raises(ValueError, match="DVT"):
        calibrate_dir(vit_dir, budget=0.5)


@pytest.mark.slow
def test_benchmark_smoke(tmp_path):
    """benchmarks/dvt_curve.py --smoke end to end (tiny models on 256 Fashion-MNIST images)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "dvt_curve.py"
    spec = importlib.util.spec_from_file_location("dvt_curve", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    (r,) = bench.main(["--smoke", "--out", str(tmp_path), "--save-models", str(tmp_path / "models")])
    assert set(r["singles"]) == set(bench.SINGLES) and set(r["cascades"]) == set(bench.CASCADES)
    for c in r["cascades"].values():
        gmacs = [p["test_gmacs"] for p in c["curve"]]
        assert all(c["exit_gmacs"][0] <= g <= c["exit_gmacs"][-1] for g in gmacs)
        assert gmacs[0] < gmacs[-1] == pytest.approx(c["exit_gmacs"][-1])  # the largest budget: no early exit
    for name in ("curve_fashion_mnist.png", "results_fashion_mnist.md", "results_fashion_mnist.json"):
        assert (tmp_path / name).is_file()

    # benchmarks/dvt_timing.py on the models the smoke run saved (one round, bf16 autocast where it is native)
    spec = importlib.util.spec_from_file_location("dvt_timing", path.with_name("dvt_timing.py"))
    timing = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(timing)
    t = timing.main(
        [
            "--models",
            str(tmp_path / "models"),
            "--results",
            str(tmp_path),
            "--images",
            "64",
            "--batch",
            "32",
            "--rounds",
            "1",
            "--out",
            str(tmp_path / "timing.json"),
            "--target",
            "0",
            *(["--bf16"] if cpu_has_native_bf16() else []),
        ]
    )
    assert sum(t["exit_fractions"]) == pytest.approx(1.0) and len(t["seconds_per_pass"]["dvt"]) == 1
    assert t["target_gmacs"] == r["cascades"]["DVT"]["curve"][0]["target_gmacs"]  # --target: the nearest point
    assert (tmp_path / "timing.json").is_file()


@pytest.mark.parametrize(("src", "dst"), [((7, 7), (14, 14)), ((4, 4), (7, 7)), ((2, 3), (4, 9)), ((4, 4), (4, 4))])
def test_relation_bias_add_equals_the_dense_resized_map(src, dst):
    """`RelationBias.add_to` (in place, no resized map for integer ratios) = logits + resize_attention(maps),
    values and gradients of both inputs (double precision, exact up to summation order)."""
    n, N = 1 + src[0] * src[1], 1 + dst[0] * dst[1]
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(2, n, n, 8, generator=g, dtype=torch.float64)  # (B, n, n, C): as the reuse MLP's output
    maps = maps.permute(0, 3, 1, 2)[:, 4:]  # a non-contiguous (B, 4, n, n) view, as a chunk of the reuse MLP's output
    base = torch.randn(2, 4, N, N, generator=g, dtype=torch.float64)
    w = torch.randn(2, 4, N, N, generator=g, dtype=torch.float64)
    results = []
    for structured in (True, False):
        m = maps.detach().clone().requires_grad_(True)
        q = base.clone().requires_grad_(True)
        bias = dvt_mod.RelationBias(m, src, dst)
        assert bias.shape == (2, 4, N, N)
        assert torch.equal(bias.dense(), resize_attention(m, src, dst))
        out = bias.add_to(q * 1.0) if structured else q * 1.0 + bias.dense()
        (out * w).sum().backward()
        results.append((out.detach(), q.grad, m.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_relation_bias_gradcheck():
    m = torch.randn(1, 1, 7, 7, dtype=torch.float64, requires_grad=True)  # a 2x3 grid, replicated to 4x9
    q = torch.randn(1, 1, 37, 37, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda m, q: dvt_mod.RelationBias(m, (2, 3), (4, 9)).add_to(q * 1.0), (m, q))


@pytest.mark.parametrize(("src", "dst"), [((7, 7), (14, 14)), ((2, 3), (4, 9)), ((3, 2), (9, 2))])
def test_relation_bias_attend_equals_sdpa_with_the_dense_map(src, dst):
    """`RelationBias.attend` (one SDPA call per query group, no resized map) = SDPA with the dense resized
    map as its mask, for square and non-square integer ratios (a factor of 1 along one axis included)."""
    n, N = 1 + src[0] * src[1], 1 + dst[0] * dst[1]
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, n, n, 8, generator=g).permute(0, 3, 1, 2)[:, 4:]  # a non-contiguous chunk
    q, k, v = torch.randn(3, 3, 4, N, 16, generator=g).unbind(0)
    bias = dvt_mod.RelationBias(maps, src, dst)
    groups, inverse = dvt_mod.query_groups(src, bias.factor(), q.device)
    assert sorted(torch.cat(groups).tolist()) == list(range(N)) and groups[0][0] == 0  # a partition, [CLS] first
    got = bias.attend(q, k, v)
    torch.testing.assert_close(
        got, F.scaled_dot_product_attention(q, k, v, attn_mask=bias.dense()), atol=1e-5, rtol=1e-5
    )
    logits = (q @ k.transpose(-2, -1)) / 16**0.5 + resize_attention(maps, src, dst)
    torch.testing.assert_close(got, logits.softmax(-1) @ v, atol=1e-5, rtol=1e-5)  # and the definition
    with pytest.raises(ValueError, match="integer grid ratio"):
        dvt_mod.RelationBias(maps[..., :17, :17], (4, 4), (7, 7)).attend(q, k, v)


def test_attend_after_a_first_call_under_inference_mode_still_records_gradients():
    """The query groups are cached; built under inference_mode they must still serve an autograd call."""
    src, dst = (3, 3), (6, 6)  # a ratio no other test uses first, so this call builds the cache entry
    dvt_mod.query_groups.cache_clear()
    maps = torch.randn(1, 2, 10, 10)
    q, k, v = torch.randn(3, 1, 2, 37, 8).unbind(0)
    with torch.inference_mode():
        dvt_mod.RelationBias(maps, src, dst).attend(q, k, v)
    q = q.clone().requires_grad_(True)
    dvt_mod.RelationBias(maps, src, dst).attend(q, k, v).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_inference_takes_the_grouped_path_and_equals_training_mode_math(monkeypatch):
    """In eval under no_grad, the 14x14 stage's attention runs `RelationBias.attend` (fused policy) and
    gives the same exits' logits as the explicit path with gradients enabled."""
    model, x = build(), images(4)
    calls = []
    attend = dvt_mod.RelationBias.attend
    monkeypatch.setattr(
        dvt_mod.RelationBias, "attend", lambda self, *a, **kw: calls.append(1) or attend(self, *a, **kw)
    )
    from vitkit.layers.attention import attention_policy

    with attention_policy("fused"), torch.no_grad():
        fast = model.forward_exits(x)
    assert len(calls) == model.config.depth  # every layer of the last stage (7x7 -> 14x14); none elsewhere
    explicit = model.forward_exits(x)  # grad enabled: the explicit softmax path with the in-place add
    for a, b in zip(fast, explicit):
        torch.testing.assert_close(a, b.detach(), atol=1e-5, rtol=1e-5)

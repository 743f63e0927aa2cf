"""MSN (vitkit/methods/msn.py): sharpening, soft nearest neighbours, ME-MAX and the loss by hand,
Sinkhorn's marginals, token dropping, a training step with the target update, and DINO and MSN
through `vitkit.train.pretrain` in one process and in two under torchrun."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import vitkit
from vitkit.methods import create_method
from vitkit.methods.msn import (
    MSN,
    me_max,
    msn_loss,
    random_keep_indices,
    sharpen,
    sinkhorn,
    snn,
)

MEAN, STD = (0.1307,), (0.3081,)


def tiny_msn(**kw) -> MSN:
    torch.manual_seed(0)
    backbone = vitkit.create_model("vit_micro_patch4_28", num_classes=0, dynamic_img_size=True)
    opts = {
        "num_prototypes": 16,
        "hidden_dim": 32,
        "out_dim": 8,
        "num_focal": 2,
        "mean": MEAN,
        "std": STD,
        "generator": torch.Generator().manual_seed(0),
    }
    opts.update(kw)
    return create_method("msn", backbone, **opts)


def test_sharpen_and_snn_by_hand():
    p = torch.tensor([[0.5, 0.3, 0.2]])
    four = [0.5**4, 0.3**4, 0.2**4]
    torch.testing.assert_close(sharpen(p, 0.25), torch.tensor([[v / sum(four) for v in four]]))
    q = torch.tensor([[3.0, 4.0]])  # cosine 0.6 / 0.8 / -1 with the prototypes below
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, -4.0]])
    logits = [0.6 / 0.1, 0.8 / 0.1, -1.0 / 0.1]
    z = sum(math.exp(v) for v in logits)
    torch.testing.assert_close(snn(q, protos, 0.1), torch.tensor([[math.exp(v) / z for v in logits]]))
    # sharpening a softmax at 0.1 with T = 0.25 is a softmax at 0.025 (MSN's target temperature)
    torch.testing.assert_close(sharpen(snn(q, protos, 0.1), 0.25), snn(q, protos, 0.025))


def test_me_max_by_hand():
    probs = torch.tensor([[0.7, 0.3], [0.1, 0.9]])  # mean (0.4, 0.6)
    expected = 0.4 * math.log(0.4) + 0.6 * math.log(0.6) + math.log(2)
    assert me_max(probs).item() == pytest.approx(expected, rel=1e-6)
    assert me_max(torch.full((3, 4), 0.25)).item() == pytest.approx(0.0, abs=1e-7)  # uniform: no penalty


def test_msn_loss_by_hand():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    target = torch.tensor([[1.0, 0.0]])  # cosines (1, 0)
    anchors = torch.tensor([[0.0, 1.0], [1.0, 1.0]])  # 2 views of the one image: cosines (0, 1), (.707, .707)
    t = [math.exp(1 / 0.025), 1.0]
    t = [v / sum(t) for v in t]

    def soft(c):
        e = [math.exp(v / 0.1) for v in c]
        return [v / sum(e) for v in e]

    p = [soft([0.0, 1.0]), soft([math.sqrt(0.5), math.sqrt(0.5)])]
    ce = sum(-sum(ti * math.log(pi) for ti, pi in zip(t, row)) for row in p) / 2
    avg = [(p[0][k] + p[1][k]) / 2 for k in range(2)]
    reg = sum(a * math.log(a) for a in avg) + math.log(2)
    out = msn_loss(anchors, target, protos, use_sinkhorn=False)
    assert out["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert out["me_max"].item() == pytest.approx(reg, rel=1e-5)
    assert out["loss"].item() == pytest.approx(ce + reg, rel=1e-5)
    assert out["prototypes_used"].item() == 1


def test_sinkhorn_marginals():
    q = torch.softmax(torch.randn(12, 4, generator=torch.Generator().manual_seed(0)) * 3, dim=1)
    out = sinkhorn(q)  # MSN's 3 iterations
    torch.testing.assert_close(out.sum(dim=1), torch.ones(12))  # each sample: a distribution
    assert (out >= 0).all()
    balanced = sinkhorn(q, num_iters=500)
    torch.testing.assert_close(balanced.sum(dim=1), torch.ones(12))
    torch.testing.assert_close(balanced.sum(dim=0), torch.full((4,), 12 / 4), atol=1e-4, rtol=0)  # B/K each


def test_keep_indices_are_exact():
    keep = random_keep_indices(5, 49, 0.15, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (5, 41)  # floor(49 * 0.85): 8 of 49 patches dropped
    for row in keep:
        assert row.unique().numel() == 41 and (row.diff() > 0).all() and row.min() >= 0 and row.max() < 49
    assert not all(torch.equal(keep[0], r) for r in keep[1:])  # a mask per sample
    assert random_keep_indices(2, 10, 0.0).shape == (2, 10)
    with pytest.raises(ValueError, match="mask_ratio"):
        random_keep_indices(2, 10, 1.0)


def test_the_encoder_sees_only_the_kept_patches():
    m = tiny_msn(mask_ratio=0.5).eval()
    x = torch.randn(2, 1, 28, 28)
    keep = random_keep_indices(2, 49, 0.5, generator=torch.Generator().manual_seed(5))
    m._views["generator"] = torch.Generator().manual_seed(5)
    base = m.encode_masked(x)
    dropped = sorted(set(range(49)) - set(keep[0].tolist()))
    y = x.clone()
    for idx in dropped:  # change every dropped patch of image 0: nothing changes
        r, c = divmod(idx, 7)
        y[0, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 5.0
    m._views["generator"] = torch.Generator().manual_seed(5)
    torch.testing.assert_close(m.encode_masked(y), base)
    r, c = divmod(int(keep[0, 0]), 7)  # change one kept patch: the [CLS] output changes
    y[0, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] = 5.0
    m._views["generator"] = torch.Generator().manual_seed(5)
    assert not torch.allclose(m.encode_masked(y)[0], base[0])


def test_a_training_step_and_the_target_update():
    m = tiny_msn()
    out = m(torch.randn(4, 1, 28, 28))
    assert set(out) >= {"loss", "ce", "me_max", "feature_std", "target_entropy", "prototypes_used"}
    assert all(torch.isfinite(v) for v in out.values())
    out["loss"].backward()
    for name, p in m.named_parameters():
        assert (p.grad is not None) == p.requires_grad, name
    assert m.prototypes.grad.abs().sum() > 0
    assert "prototypes" in m.no_weight_decay()
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=0.1)
    opt.step()
    before = [p.detach().clone() for p in m.target_projector.parameters()]
    m.on_step_end(0, 100)
    for t, b, s in zip(m.target_projector.parameters(), before, m.projector.parameters()):
        torch.testing.assert_close(t, 0.996 * b + 0.004 * s)
    fresh = vitkit.create_model("vit_micro_patch4_28", num_classes=0, dynamic_img_size=True)
    fresh.load_state_dict(m.encoder_state_dict())


def test_bad_options_are_named():
    with pytest.raises(ValueError, match="mask_ratio"):
        tiny_msn(mask_ratio=1.0)
    with pytest.raises(ValueError, match="num_prototypes"):
        tiny_msn(num_prototypes=1)
    mixer = vitkit.create_model("mixer_micro_patch4_28", num_classes=0)
    with pytest.raises(ValueError, match="keep_indices|drop tokens"):
        create_method("msn", mixer, mean=MEAN, std=STD)
    with pytest.raises(ValueError, match="MlpMixer has none"):  # no [CLS] to take the representation from
        create_method("msn", mixer, mean=MEAN, std=STD, mask_ratio=0.0)


# ------------------------------------------------------------------------------------ through the loop
TINY = [
    "--model.name=vit_micro_patch2_8",
    "--model.overrides.depth=1",
    "--model.overrides.embed_dim=32",
    "--model.overrides.num_heads=2",
    "--model.overrides.dynamic_img_size=true",
    "--sched.epochs=1",
    "--sched.warmup_epochs=0",
    "--run.batch_size=32",
    "--data.train_fraction=0.06",
    "--run.progress=false",
    "--run.threads=1",
    "--data.num_workers=0",
]
OPTIONS = {
    "dino": '--method.options={"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "num_local": 2}',
    "msn": '--method.options={"num_prototypes": 16, "hidden_dim": 32, "out_dim": 8, "num_focal": 2}',
}
# one process group for both runs (the loop leaves a group it did not create alone)
ENTRY = """import sys
import torch
import torch.distributed as dist
from vitkit.train.pretrain import pretrain, pretrain_config
dist.init_process_group("gloo")
for method, options in (("dino", sys.argv[2]), ("msn", sys.argv[3])):
    pretrain(pretrain_config(method, None, [f"--run.out={sys.argv[1]}/{method}", options, *sys.argv[4:]]))
from vitkit.methods.dino import DINOLoss
loss_fn = DINOLoss(4, center_momentum=0.5)
loss_fn.update_center(torch.full((3, 4), float(dist.get_rank() + 1)))  # rank 0 sends 1s, rank 1 sends 2s
torch.save(loss_fn.center, f"{sys.argv[1]}/center{dist.get_rank()}.pt")
dist.barrier()
dist.destroy_process_group()
"""


def _check_run(run_dir: Path, processes: int) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["processes"] == processes and math.isfinite(metrics["final_loss"])
    row = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert all(math.isfinite(v) for v in row.values()) and row["feature_std"] > 0
    backbone = vitkit.from_pretrained(run_dir / "backbone")
    assert torch.isfinite(backbone.forward_features(torch.randn(2, 1, 8, 8))).all()


@pytest.mark.parametrize("method", ["dino", "msn"])
def test_pretrain_loop_single_process(tmp_path, method):
    pytest.importorskip("sklearn")
    from vitkit.train.pretrain import pretrain, pretrain_config

    pretrain(pretrain_config(method, None, [f"--run.out={tmp_path / 'run'}", *TINY, OPTIONS[method]]))
    _check_run(tmp_path / "run", 1)


def test_pretrain_loop_two_processes_under_torchrun(tmp_path):
    """DINO then MSN in the same 2 gloo processes (one torchrun start-up for both), then DINO's centre."""
    pytest.importorskip("sklearn")
    (tmp_path / "entry.py").write_text(ENTRY)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "entry.py",
        str(tmp_path),
        OPTIONS["dino"],
        OPTIONS["msn"],
        *TINY,
    ]
    res = subprocess.run(cmd, check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    for method in ("dino", "msn"):
        _check_run(tmp_path / method, 2)
    for rank in range(2):  # DINO's centre is all-reduced: 0.5 * 0 + 0.5 * mean(1, 2) on both processes
        torch.testing.assert_close(torch.load(tmp_path / f"center{rank}.pt"), torch.full((1, 4), 0.75))

"""FSDP2 (vitkit/train/fsdp.py) against DDP in 2 gloo processes under torchrun, and the channels-last helpers.

The torchrun test launches this file itself: `worker()` below runs in each process. From one init and the
same data, a few AdamW steps (clipping, gradient accumulation with no_sync) of a tiny vitkit ViT sharded by
`shard` give the same weights as DDP within fp32 tolerance; the full state dict and optimizer state saved
from the sharded model load back into a fresh sharded model (and into a plain one) and the runs go on
identically.
"""

from __future__ import annotations

import copy
import io
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit import create_model
from vitkit.train.config import OptimConfig
from vitkit.train.fsdp import (
    full_state_dict,
    grad_norm,
    has_spatial_convs,
    is_sharded,
    load_full_state_dict,
    load_optimizer_state_dict,
    no_sync,
    optimizer_state_dict,
    shard,
    shard_units,
    to_channels_last,
    use_channels_last,
)
from vitkit.train.optim import build_optimizer, optimizer_step

TINY = {"depth": 2, "embed_dim": 16, "num_heads": 2}
OPTIM = OptimConfig(lr=3e-3, weight_decay=0.05, clip_grad=0.05)  # a clip this low binds at every step


def _tiny_vit() -> nn.Module:
    torch.manual_seed(0)
    return create_model("vit_micro_patch2_8", **TINY)


def _batch(step: int, micro: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's share of the global batch of (step, micro-batch): the same global data for every setup."""
    g = torch.Generator().manual_seed(1000 * step + micro)
    x, y = torch.randn(8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)
    per = 8 // world
    return x[rank * per : (rank + 1) * per], y[rank * per : (rank + 1) * per]


def _train_steps(model, optimizer, steps, first, rank, world, accum=2) -> list[float]:
    norms = []
    for step in range(first, first + steps):
        for micro in range(accum):
            x, y = _batch(step, micro, rank, world)
            with no_sync(model, micro < accum - 1):
                loss = F.cross_entropy(model(x), y) / accum
                loss.backward()
        norm = optimizer_step(optimizer, OPTIM.lr, model.parameters(), OPTIM.clip_grad)
        norms.append(grad_norm(norm))
    return norms


def _assert_state_close(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-5, rtol=1e-5, msg=lambda m, k=key: f"{k}: {m}")


def worker() -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)

    ddp = nn.parallel.DistributedDataParallel(_tiny_vit())
    ddp_opt = build_optimizer(ddp.module, OPTIM)
    fsdp = shard(_tiny_vit())
    assert is_sharded(fsdp) and len(shard_units(_tiny_vit())) == TINY["depth"]
    fsdp_opt = build_optimizer(fsdp, OPTIM)

    ddp_norms = _train_steps(ddp, ddp_opt, 3, 0, rank, world)
    fsdp_norms = _train_steps(fsdp, fsdp_opt, 3, 0, rank, world)
    assert all(n > OPTIM.clip_grad for n in ddp_norms)  # clipping acted
    torch.testing.assert_close(torch.tensor(fsdp_norms), torch.tensor(ddp_norms), atol=1e-6, rtol=1e-5)
    sd = full_state_dict(fsdp)
    if rank == 0:
        _assert_state_close(sd, {k: v.detach() for k, v in ddp.module.state_dict().items()})
    else:
        assert sd == {}  # the full dict lives on rank 0 only

    # Save and resume: a fresh sharded model (another init) and optimizer loaded from rank 0's dicts only,
    # through a file as a checkpoint goes (torch.load with weights_only: plain tensors and Python values).
    osd = optimizer_state_dict(fsdp, fsdp_opt)
    if rank == 0:
        buffer = io.BytesIO()
        torch.save({"model": sd, "optimizer": osd}, buffer)
        buffer.seek(0)
        saved = torch.load(buffer, weights_only=True)
        sd, osd = saved["model"], saved["optimizer"]
    torch.manual_seed(123)
    restored = shard(create_model("vit_micro_patch2_8", **TINY))
    restored_opt = build_optimizer(restored, OPTIM)
    load_full_state_dict(restored, sd if rank == 0 else {})
    load_optimizer_state_dict(restored, restored_opt, osd if rank == 0 else {})
    _train_steps(fsdp, fsdp_opt, 2, 3, rank, world)
    _train_steps(restored, restored_opt, 2, 3, rank, world)
    _train_steps(ddp, ddp_opt, 2, 3, rank, world)
    a, b = full_state_dict(fsdp), full_state_dict(restored)
    if rank == 0:
        for key in a:
            assert torch.equal(a[key], b[key]), key  # the same shards, the same state: bit for bit
        _assert_state_close(a, {k: v.detach() for k, v in ddp.module.state_dict().items()})

    # bf16 compute (MixedPrecisionPolicy from a dtype): the forward runs in bf16 on the same weights, the
    # sharded parameters and the optimizer step stay fp32.
    low = shard(_tiny_vit(), mixed_precision=torch.bfloat16)
    x, y = _batch(0, 0, rank, world)
    out = low(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), _tiny_vit()(x), atol=0.05, rtol=0.05)
    low_opt = build_optimizer(low, OPTIM)
    _train_steps(low, low_opt, 1, 0, rank, world)
    assert all(p.dtype == torch.float32 for p in low.parameters())
    # SGD: build_optimizer takes torch's foreach kernel for sharded parameters (the fused one has no DTensor rule)
    sgd = build_optimizer(low, OptimConfig(name="sgd", lr=0.01))
    _train_steps(low, sgd, 1, 1, rank, world)

    # no_sync really keeps the reduction back: DDP's gradients stay this process's own (they differ between the
    # processes, whose data differ), FSDP2 keeps the unsharded gradients instead of reduce-scattering them.
    for model in (ddp, restored):
        model.zero_grad(set_to_none=True)
        x, y = _batch(9, 0, rank, world)
        with no_sync(model, True):
            F.cross_entropy(model(x), y).backward()
        if model is ddp:
            grad = ddp.module.head.weight.grad
            grads = [torch.empty_like(grad) for _ in range(world)]
            dist.all_gather(grads, grad)
            assert not torch.equal(grads[0], grads[1])
        else:
            assert all(p.grad is None for p in model.parameters())
        F.cross_entropy(model(x), y).backward()  # the step's last micro-batch: reduced
        if model is ddp:
            dist.all_gather(grads, ddp.module.head.weight.grad)
            assert torch.equal(grads[0], grads[1])
        else:
            assert all(p.grad is not None for p in model.parameters())
        model.zero_grad(set_to_none=True)

    # The sharded run's checkpoint also resumes without FSDP (and its optimizer state has each parameter's).
    if rank == 0:
        plain = _tiny_vit()
        plain_opt = build_optimizer(plain, OPTIM)
        load_full_state_dict(plain, sd)
        load_optimizer_state_dict(plain, plain_opt, osd)
        assert len(plain_opt.state) == sum(1 for _ in plain.parameters())
        step = next(iter(plain_opt.state.values()))["step"]
        assert float(step) == 3.0
    dist.destroy_process_group()


def test_fsdp_matches_ddp_and_resumes_under_torchrun(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", __file__]
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    errors = [line for line in res.stderr.splitlines() if line.startswith("[rank")]  # the workers' tracebacks
    assert res.returncode == 0, "\n".join(errors[-40:]) or res.stderr[-4000:]


def test_shard_units_and_clear_errors():
    vit = _tiny_vit()
    assert shard_units(vit) == list(vit.blocks)
    swin = create_model("swin_micro_patch2_window7_28")
    assert shard_units(swin) == [block for layer in swin.layers for block in layer.blocks]
    with pytest.raises(TypeError, match="MixedPrecisionPolicy"):
        shard(vit, mixed_precision="bf16")
    with pytest.raises(RuntimeError, match="launch with torchrun"):
        shard(vit)


def test_no_sync_is_a_no_op_for_a_plain_model():
    model = _tiny_vit()
    with no_sync(model, True):
        model(torch.randn(2, 1, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())


# ------------------------------------------------------------------------------------ channels-last
def test_channels_last_auto_follows_the_device_and_the_convolutions():
    vit, cvt = _tiny_vit(), create_model("cvt_micro_28")
    assert not has_spatial_convs(vit)  # a patchify stem only (kernel = stride)
    assert has_spatial_convs(cvt)
    assert use_channels_last("auto", cvt, "cuda") and use_channels_last("auto", cvt, torch.device("cuda", 0))
    assert not use_channels_last("auto", cvt, "cpu")
    assert not use_channels_last("auto", vit, "cuda")
    assert use_channels_last(True, vit, "cpu") and not use_channels_last("false", cvt, "cuda")
    with pytest.raises(ValueError, match="--run.channels_last must be auto, true or false"):
        use_channels_last("nhwc", vit, "cpu")


@pytest.mark.parametrize(
    "name, overrides, size",
    [
        ("cvt_micro_28", {}, (1, 28, 28)),
        ("vit_base_r50_s16_224", {"img_size": 64, "embed_dim": 32, "depth": 1, "num_heads": 2}, (3, 64, 64)),
    ],
)
def test_channels_last_model_gives_the_same_outputs_and_gradients(name, overrides, size):
    torch.manual_seed(0)
    model = create_model(name, **overrides).eval()
    assert has_spatial_convs(model)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(2, *size)
    assert to_channels_last(x).is_contiguous(memory_format=torch.channels_last)
    out, out_cl = model(x), nhwc(to_channels_last(x))
    torch.testing.assert_close(out_cl, out, atol=1e-5, rtol=1e-4)
    out.square().sum().backward()
    out_cl.square().sum().backward()
    for (key, p), q in zip(model.named_parameters(), nhwc.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-5, rtol=1e-4, msg=lambda m, k=key: f"{k}: {m}")


def test_to_channels_last_of_clips_and_tokens():
    assert to_channels_last(torch.randn(1, 3, 2, 4, 4)).is_contiguous(memory_format=torch.channels_last_3d)
    tokens = torch.randn(2, 5, 8)
    assert to_channels_last(tokens) is tokens


if __name__ == "__main__":
    worker()

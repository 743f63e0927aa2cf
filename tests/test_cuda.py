"""What a GPU user relies on, on a CUDA device: bf16 and fp16 training steps, the flash and memory-efficient
SDPA kernels against eager attention, a torch.compile training step, a run killed and resumed on the GPU,
NCCL (DDP and FSDP2) in one process, and channels-last. Marked `cuda` and skipped without a GPU;
benchmarks/gpu_check.sh runs them (`pytest -m cuda`)."""

from __future__ import annotations

import copy
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitkit import create_model
from vitkit.layers.attention import attention_policy
from vitkit.train.config import OptimConfig
from vitkit.train.optim import build_optimizer, optimizer_step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh)"),
]
DEVICE = "cuda"
TINY = {"depth": 2, "embed_dim": 64, "num_heads": 2}  # heads of 32: every SDPA kernel takes them
RUN = [
    "--model.overrides.depth=1",
    "--model.overrides.embed_dim=32",
    "--model.overrides.num_heads=2",
    "--run.progress=false",
    "--data.num_workers=0",
    f"--run.device={DEVICE}",
]


def _vit(**overrides) -> nn.Module:
    torch.manual_seed(0)
    model = create_model("vit_micro_patch2_8", **{**TINY, **overrides})
    nn.init.trunc_normal_(model.head.weight, std=0.02)  # the head starts at zero: the first backward would stop there
    return model.to(DEVICE)


def _batch(n: int = 32, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g).to(DEVICE), torch.randint(0, 10, (n,), generator=g).to(DEVICE)


def _grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: p.grad.detach().float().clone() for k, p in model.named_parameters() if p.grad is not None}


# ------------------------------------------------------------------------------------ precision
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_training_steps(dtype):
    """Autocast steps (fp16 with a GradScaler) follow the fp32 steps within the dtype's rounding. SGD keeps
    the comparison linear in the gradients (Adam's first steps divide by ~|g|, which amplifies rounding on
    near-zero gradients); the scaler starts at 2**8 so that no step is skipped for an overflow (the default
    2**16 skips the first ones while it finds its scale, and the runs would then differ by whole steps)."""
    x, y = _batch()
    cfg = OptimConfig(name="sgd", lr=0.05, clip_grad=1.0)
    runs = {}
    for name, autocast_dtype in (("fp32", None), ("low", dtype)):
        model = _vit()
        optimizer = build_optimizer(model, cfg)
        scaler = torch.amp.GradScaler(DEVICE, init_scale=2.0**8) if autocast_dtype == torch.float16 else None
        losses = []
        for _ in range(5):
            with torch.autocast(DEVICE, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                loss = F.cross_entropy(model(x), y)
            (scaler.scale(loss) if scaler else loss).backward()
            optimizer_step(optimizer, cfg.lr, model.parameters(), cfg.clip_grad, scaler=scaler)
            losses.append(loss.item())
        runs[name] = (losses, model)
        if scaler is not None:
            assert scaler.get_scale() == 2.0**8  # no step skipped
    (ref, ref_model), (low, low_model) = runs["fp32"], runs["low"]
    assert all(torch.isfinite(torch.tensor(low)))
    assert low[-1] < low[0]  # it learns the batch
    torch.testing.assert_close(torch.tensor(low), torch.tensor(ref), atol=0.05, rtol=0.05)
    for (key, p), q in zip(ref_model.named_parameters(), low_model.parameters()):
        assert q.dtype == torch.float32, key  # autocast keeps fp32 master weights
        torch.testing.assert_close(q, p, atol=2e-3, rtol=0.05, msg=lambda m, k=key: f"{k}: {m}")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_runner_trains_in_low_precision_on_cuda(tmp_path, precision):
    pytest.importorskip("sklearn")  # the digits
    from vitkit.train import TrainConfig, apply_overrides, train

    metrics = train(
        apply_overrides(
            TrainConfig(),
            [
                f"--run.out={tmp_path}",
                *RUN,
                f"--run.precision={precision}",
                "--sched.epochs=3",
                "--sched.warmup_epochs=0",
            ],
        )
    )
    assert metrics["precision"] == precision
    assert metrics["test_acc"] > 0.3  # digits: chance is 0.1


# ------------------------------------------------------------------------------------ attention kernels
def _attention_run(model: nn.Module, x: torch.Tensor, dtype, backend=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Output and all gradients (one flat vector) under autocast `dtype`: eager attention (`backend` None),
    or SDPA restricted to `backend` (sdpa_kernel with one backend raises if that kernel cannot take the
    inputs, so a pass means the kernel ran)."""
    import contextlib

    from torch.nn.attention import sdpa_kernel

    model.zero_grad(set_to_none=True)
    kernel = sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext()
    with attention_policy("eager" if backend is None else "fused"), kernel, torch.autocast(DEVICE, dtype=dtype):
        out = model(x)
    out.float().square().mean().backward()
    return out.float(), torch.cat([g.flatten() for g in _grads(model).values()])


def _assert_kernel_matches_eager(model: nn.Module, x: torch.Tensor, dtype, backend) -> None:
    """The kernel against eager attention in the same precision: equal up to that precision's rounding. (The
    gradients of a low-precision run differ from fp32's far more than that on small parameters, e.g. the
    first LayerNorms: that is the dtype, not the kernel.) A wrong kernel is off by order 1."""
    ref, ref_grad = _attention_run(model, x, dtype)
    out, grad = _attention_run(model, x, dtype, backend)
    tol = 1e-2 if dtype == torch.float16 else 5e-2
    torch.testing.assert_close(out, ref, atol=tol, rtol=tol)
    error = float((grad - ref_grad).norm() / ref_grad.norm())
    assert error < 2 * tol, f"gradients off by {error:.3g} (relative norm)"


@pytest.mark.parametrize("backend_name", ["FLASH_ATTENTION", "EFFICIENT_ATTENTION"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sdpa_kernels_match_eager_attention(backend_name, dtype):
    from torch.nn.attention import SDPBackend

    x, _ = _batch(16)
    _assert_kernel_matches_eager(_vit(), x, dtype, getattr(SDPBackend, backend_name))


def test_efficient_kernel_with_swin_relative_position_bias():
    """Swin's attention adds a bias (relative positions, shifted-window mask): the memory-efficient kernel
    takes an additive mask (and its gradient), flash does not."""
    from torch.nn.attention import SDPBackend

    torch.manual_seed(0)
    model = create_model("swin_micro_patch2_window7_28").to(DEVICE)
    x = torch.randn(8, 1, 28, 28, device=DEVICE)
    _assert_kernel_matches_eager(model, x, torch.float16, SDPBackend.EFFICIENT_ATTENTION)


# ------------------------------------------------------------------------------------ torch.compile
def test_compiled_training_step_matches_eager():
    x, y = _batch()
    eager, compiled = _vit(), torch.compile(_vit())
    for model in (eager, compiled):
        F.cross_entropy(model(x), y).backward()
    loss_e, loss_c = F.cross_entropy(eager(x), y), F.cross_entropy(compiled(x), y)
    torch.testing.assert_close(loss_c, loss_e, atol=1e-4, rtol=1e-4)
    ge, gc = _grads(eager), {k.removeprefix("_orig_mod."): v for k, v in _grads(compiled).items()}
    assert ge.keys() == gc.keys()
    for key in ge:
        torch.testing.assert_close(gc[key], ge[key], atol=1e-4, rtol=1e-3, msg=lambda m, k=key: f"{k}: {m}")


# ------------------------------------------------------------------------------------ checkpoint / resume
class _Crash(RuntimeError):
    pass


class _CrashingSplit:
    """The training split, failing at its `after`-th batch as a killed process would stop there."""

    def __init__(self, split, after: int) -> None:
        self.split, self.left = split, after

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i):
        return self.split[i]

    def __getattr__(self, name):
        if name == "split":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.split, name)

    def batch(self, idx):
        self.left -= 1
        if self.left < 0:
            raise _Crash("stopped in the middle of the run")
        return self.split.batch(idx)


def test_killed_run_resumes_on_cuda_to_the_same_weights(tmp_path):
    """bf16 on the GPU, stopped in epoch 2 (after the epoch-1 checkpoint), resumed: the weights match an
    uninterrupted run within 1e-4 (GPU kernels may sum in another order from run to run, e.g. the attention
    backward's atomic adds; SGD keeps such differences as small as they start, where Adam's division by ~|g|
    would amplify them on near-zero gradients)."""
    pytest.importorskip("sklearn")
    from safetensors.torch import load_file

    from vitkit.data import load_dataset
    from vitkit.train import TrainConfig, apply_overrides, train

    def cfg(out, *extra):
        args = [f"--run.out={out}", *RUN, "--run.precision=bf16", "--sched.epochs=3", "--run.batch_size=64"]
        args += ["--optim.name=sgd", "--optim.lr=0.1"]
        return apply_overrides(TrainConfig(), [*args, *extra])

    splits = load_dataset("digits")
    train(cfg(tmp_path / "straight"), data=splits)
    steps = len(splits.train) // 64
    crashing = copy.copy(splits)
    crashing.train = _CrashingSplit(splits.train, steps + steps // 2)
    with pytest.raises(_Crash):
        train(cfg(tmp_path / "killed"), data=crashing)
    assert not (tmp_path / "killed" / "metrics.json").exists()
    train(cfg(tmp_path / "killed", "--run.resume=true"), data=splits)
    a = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "straight" / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=1e-4, rtol=1e-3, msg=lambda m, k=key: f"{k}: {m}")


# ------------------------------------------------------------------------------------ NCCL
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nccl_group(tmp_path: Path):
    import torch.distributed as dist

    if not dist.is_nccl_available():
        pytest.skip("this torch has no NCCL")
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        yield dist
    finally:
        dist.destroy_process_group()


def test_nccl_one_process_ddp_and_fsdp_match_a_plain_step(nccl_group):
    from vitkit.train.fsdp import full_state_dict, grad_norm, load_full_state_dict, shard

    dist = nccl_group
    t = torch.arange(4.0, device=DEVICE)
    dist.all_reduce(t)
    assert t.tolist() == [0.0, 1.0, 2.0, 3.0]  # one process: the sum is itself

    x, y = _batch()
    cfg = OptimConfig(name="sgd", lr=0.05, clip_grad=0.5)  # SGD: linear in the gradients (Adam amplifies rounding)
    plain = _vit()
    ddp = nn.parallel.DistributedDataParallel(_vit(), device_ids=[torch.cuda.current_device()])
    fsdp = shard(_vit())
    norms = {}
    for name, model in (("plain", plain), ("ddp", ddp), ("fsdp", fsdp)):
        optimizer = build_optimizer(getattr(model, "module", model), cfg)  # DDP: the model's own param groups
        for _ in range(3):
            F.cross_entropy(model(x), y).backward()
            norms[name] = grad_norm(optimizer_step(optimizer, cfg.lr, model.parameters(), cfg.clip_grad))
    assert norms["ddp"] == pytest.approx(norms["plain"], rel=1e-4)
    assert norms["fsdp"] == pytest.approx(norms["plain"], rel=1e-4)
    ref = plain.state_dict()
    for other in (ddp.module.state_dict(), full_state_dict(fsdp)):
        for key in ref:
            torch.testing.assert_close(other[key].to(DEVICE), ref[key], atol=1e-5, rtol=1e-4)
    restored = shard(_vit())
    load_full_state_dict(restored, full_state_dict(fsdp))
    with torch.no_grad():
        torch.testing.assert_close(restored(x), plain(x), atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------ channels-last
@pytest.fixture
def no_tf32():
    """cuDNN convolutions in full fp32 (PyTorch lets them use TF32 by default), so layouts compare closely."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def test_channels_last_on_cuda_gives_the_same_outputs(no_tf32):
    from vitkit.train.fsdp import to_channels_last, use_channels_last

    torch.manual_seed(0)
    model = create_model("cvt_micro_28").to(DEVICE)
    assert use_channels_last("auto", model, DEVICE)
    nhwc = copy.deepcopy(model).to(memory_format=torch.channels_last)
    x = torch.randn(8, 1, 28, 28, device=DEVICE)
    out, out_cl = model(x), nhwc(to_channels_last(x))
    torch.testing.assert_close(out_cl, out, atol=1e-4, rtol=1e-4)  # cuDNN's NHWC algorithms sum in another order

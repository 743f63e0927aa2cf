"""The CPU GEMM path: `Linear` layers whose CPU matmuls may run on oneDNN's packed-weight kernels.

On some CPUs torch's default BLAS (MKL) runs the Linear-layer GEMMs of a ViT well below what the
hardware does; oneDNN's inner product on a weight reordered ("packed") once into its blocked layout
(`torch.ops.mkldnn._reorder_linear_weight` + `torch.ops.mkldnn._linear_pointwise`) runs them faster
there. Elsewhere (e.g. where MKL already runs near peak) it gives nothing, so it is never assumed:

- "auto" (the default) measures both kernels once per process for each shape class -- (GEMM role,
  dtype, in features, out features, rows rounded up to a power of two) -- on the shape of the class's first
  call (rows cut only above `PROBE_FLOPS`: a probe on fewer rows measures another GEMM, most of all for the
  weight gradient, whose reduction runs over the rows), and takes oneDNN only where it wins every paired round
  clearly (`PROBE_MARGIN`, `PROBE_ROUNDS`); otherwise the plain path stays. The probe costs a few calls of
  each GEMM once per process. GEMMs under `AUTO_MIN_MACS` multiply-adds stay plain unprobed.
- "onednn" always takes oneDNN (for CPU tensors of fp32/bf16); "off" never does.

The mode comes from `cpu_gemm(mode)` (a context manager, thread/task local), else the environment
variable `VITKIT_CPU_GEMM` (read at each call), else "auto". CUDA tensors, other dtypes, empty inputs and
tracing / compiling contexts (torch.jit, torch.export, torch.compile) take `F.linear`, so exports hold
`nn.Linear`'s graph; a torch.fx graph holds one call of `linear`, which chooses at run time as eager does.

Training: a custom autograd function runs three GEMMs, each by its own probe's choice: the forward GEMM,
the input-gradient GEMM (grad_out @ W, on W's transpose packed the same way) and the weight-gradient GEMM
(grad_out^T @ x, role "wgrad"). Both operands of the weight gradient change every step, so nothing is packed
for it: its oneDNN kernel is the inner product with x^T as an unpacked weight (`_linear_pointwise` on the
transposed views, which oneDNN reorders per call); the plain path is `grad_out^T.mm(x)`, as autograd computes
it for `F.linear`. In fp32 "auto" also times oneDNN's own backward-weights primitive
(`aten.mkldnn_linear_backward_weights`, both operands copied into oneDNN's tensor layout first) and takes the
faster of the two oneDNN kernels as the candidate (which one is faster depends on the CPU and its default
BLAS; `benchmarks/cpu_gemm.py` times both). The bias gradient is `grad_out.sum(0)`, as for `F.linear`.
Packed weights live in a process-wide cache keyed by the weight tensor and stamped with what changes when its
values do: its `_version` counter, which in-place updates through autograd's dispatch (`load_state_dict`,
`torch.no_grad()` edits, the for-loop and foreach optimizers) bump; its data pointer, which a `.data =` swap
or `module.to()` changes (the cache holds the packed weight's storage, so a new storage never takes its
address); and a count of optimizer steps (a global `torch.optim` step hook), because the fused optimizer kernels
(`AdamW(fused=True)`, what vitkit's training uses) update parameters in place without bumping `_version`.
A changed weight is repacked lazily at its next use. Writes that bypass all three, such as in-place edits
through `.data` (`w.data.mul_(2)`), need `clear_probe_decisions()` (or mode "off") before the next call.
Nothing is stored on the module: state dicts, checkpoints, `deepcopy` and pickling see a plain `nn.Linear`.
Under CPU autocast (bf16) the layer computes in the autocast dtype, as `F.linear` does there, and returns
fp32 gradients for fp32 parameters. `tests/layers/test_cpu_gemm.py` checks outputs
and gradients against `F.linear`.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
import time
import weakref
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

MODES = ("off", "auto", "onednn")
ENV_VAR = "VITKIT_CPU_GEMM"
# "auto" takes oneDNN for a shape class only when it takes less than PROBE_MARGIN of the plain path's time in
# every one of PROBE_ROUNDS paired rounds: the probe is short and the machine may be busy, so a tie, or a win
# that noise alone could give, keeps the default BLAS.
PROBE_MARGIN = 0.9
PROBE_ROUNDS = 5
# The probe runs the call's own rows up to this many FLOPs per call (ViT-S's GEMMs at batch 32 fit; larger
# ones are cut to fit, never below PROBE_MIN_ROWS): at most ~80 ms per call at 100 GFLOP/s, 2 to 12 calls
# per GEMM, once per process.
PROBE_FLOPS = 8e9
PROBE_MIN_ROWS = 32
# "auto" leaves GEMMs of fewer multiply-adds than this to F.linear without a probe: there the kernels' run
# times are a few microseconds, of the order of the choice's own cost (the layers of micro ViTs, heads).
AUTO_MIN_MACS = 1 << 20
_DTYPES = (torch.float32, torch.bfloat16)

_MODE = contextvars.ContextVar("vitkit_cpu_gemm", default=None)
_lock = threading.RLock()  # re-entrant: a weakref callback (`_forget`) may run while it is held
# (role, dtype, in_features, out_features, rows bucket) -> True when oneDNN wins; role "fwd" is x @ W^T,
# "dgrad" is grad_out @ W, "wgrad" is grad_out^T @ x.
ROLES = ("fwd", "dgrad", "wgrad")
_DECISIONS: dict[tuple, bool] = {}
# the same keys, role "wgrad" only -> the oneDNN kernel "auto" chose for it (WGRAD_KERNELS)
_WGRAD_CHOICE: dict[tuple, str] = {}
# id(weight) -> (weakref to weight, {(dtype, transposed, rows bucket): (stamp, packed, weight's storage)}),
# stamp = (version, data_ptr, optimizer steps)
_PACKED: dict[int, tuple[weakref.ref, dict]] = {}
_OPTIMIZER_STEPS = [0]  # optimizer steps taken in this process (any torch.optim optimizer, fused ones included)
_STEP_HOOK: list = []


def _count_optimizer_step(_optimizer, _args, _kwargs) -> None:
    _OPTIMIZER_STEPS[0] += 1


def _watch_optimizer_steps() -> None:
    """Count optimizer steps from the first packing on: fused optimizer kernels leave `_version` alone."""
    if not _STEP_HOOK:
        with _lock:
            if not _STEP_HOOK:
                _STEP_HOOK.append(register_optimizer_step_post_hook(_count_optimizer_step))


def _check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(
            f"unknown CPU GEMM mode {mode!r}; choose one of {', '.join(map(repr, MODES))} "
            f"(in cpu_gemm() or the {ENV_VAR} environment variable)"
        )
    return mode


_ENV_SEEN: list = [None, "auto"]  # the last value of $VITKIT_CPU_GEMM read, and its mode


def cpu_gemm_mode() -> str:
    """The active mode: the innermost `cpu_gemm(...)` block's, else `$VITKIT_CPU_GEMM`, else "auto"."""
    mode = _MODE.get()
    if mode is not None:
        return mode
    raw = os.environ.get(ENV_VAR)
    if raw != _ENV_SEEN[0]:
        mode = _check_mode((raw or "auto").strip().lower() or "auto")
        _ENV_SEEN[:] = [raw, mode]
    return _ENV_SEEN[1]


@contextlib.contextmanager
def cpu_gemm(mode: str) -> Iterator[None]:
    """Inside this block vitkit's Linear layers run their CPU GEMMs by `mode` (thread/task local):
    "off" = `F.linear` (torch's default BLAS), "onednn" = oneDNN's packed-weight kernels, "auto" = whichever
    a short measurement finds faster for each shape class. Overrides `$VITKIT_CPU_GEMM`."""
    token = _MODE.set(_check_mode(mode))
    try:
        yield
    finally:
        _MODE.reset(token)


def _available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


_AVAILABLE = _available()
# oneDNN's bf16 inner product needs avx_ne_convert or AVX-512 (BW, VL, DQ); elsewhere bf16 takes F.linear
_BF16 = _AVAILABLE and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def _bucket(rows: int) -> int:
    return 1 << max(0, rows - 1).bit_length()


def _pack(weight: torch.Tensor, rows: int) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight, rows)


def _onednn_linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _onednn_wgrad(grad_out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """grad_out^T @ x for grad_out (rows, out), x (rows, in): oneDNN's inner product of grad_out^T with x^T
    as its (unpacked) weight, the transposes passed as views."""
    return torch.ops.mkldnn._linear_pointwise(grad_out.t(), x.contiguous().t(), None, "none", [], "")


def _onednn_wgrad_primitive(grad_out: torch.Tensor, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """grad_out^T @ x by oneDNN's backward-weights primitive (fp32; `weight` gives the result's shape and
    dtype), both operands copied into oneDNN's tensor layout first."""
    return torch.ops.aten.mkldnn_linear_backward_weights(
        grad_out.contiguous().to_mkldnn(), x.contiguous().to_mkldnn(), weight, False
    )[0]


# The oneDNN kernels for the weight gradient, (grad_out, x, weight) -> grad_out^T @ x. "auto" times both and
# takes the faster against the plain path: which one wins depends on the CPU and the default BLAS
# (docs/performance.md#cpu-gemm-path). "onednn" mode takes the inner product.
WGRAD_KERNELS = {
    "inner_product": lambda g, x, w: _onednn_wgrad(g, x),
    "backward_weights": _onednn_wgrad_primitive,
}


def _forget(key: int) -> None:
    with _lock:
        _PACKED.pop(key, None)


def packed_weight(weight: torch.Tensor, dtype: torch.dtype, transposed: bool, rows: int) -> torch.Tensor:
    """`weight` (out, in) -- or its transpose (in, out) when `transposed` -- cast to `dtype` and packed by
    oneDNN for about `rows` input rows; cached until the weight changes (its `_version`, its storage, an
    optimizer step) or is freed."""
    _watch_optimizer_steps()
    key = id(weight)
    sub = (dtype, transposed, rows)
    stamp = (weight._version, weight.data_ptr(), _OPTIMIZER_STEPS[0])
    with _lock:
        entry = _PACKED.get(key)
        if entry is not None and entry[0]() is not weight:
            entry = None  # a freed tensor's id reused
        if entry is not None:
            hit = entry[1].get(sub)
            if hit is not None and hit[0] == stamp:
                return hit[1]
    with torch.no_grad():
        w = weight.detach().to(dtype)
        packed = _pack(w.t().contiguous() if transposed else w.contiguous(), rows)
    with _lock:
        entry = _PACKED.get(key)
        if entry is None or entry[0]() is not weight:
            entry = (weakref.ref(weight, lambda _r, k=key: _forget(k)), {})
            _PACKED[key] = entry
        # a stale packing of another shape class is dropped with the change of stamp
        for k in [k for k, v in entry[1].items() if v[0] != stamp]:
            del entry[1][k]
        # the storage is held so that its address, part of the stamp, is not reused while the packing lives
        entry[1][sub] = (stamp, packed, weight.untyped_storage())
    return packed


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _probe(role: str, dtype: torch.dtype, rows: int, in_features: int, out_features: int) -> str | None:
    """The oneDNN kernel that beats the plain path for one GEMM of `role` in `dtype`, or None -- "fwd":
    `F.linear((rows, in), W)`; "dgrad": `(rows, out) @ W` as autograd computes it; "wgrad":
    `(rows, out)^T @ (rows, in)` as autograd computes it -- with W (out, in):
    one warm-up call of each, then `PROBE_ROUNDS` paired rounds in alternating order on random data, oneDNN
    taken only if it wins every round by `PROBE_MARGIN` (the probe stops at the first round it does not). For
    "wgrad" in fp32 the faster of WGRAD_KERNELS (the best of 3 calls each) is the candidate."""
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(out_features, in_features, generator=gen).to(dtype)
    with torch.no_grad():
        if role == "fwd":
            x = torch.randn(rows, in_features, generator=gen).to(dtype)
            packed = _pack(w, rows)
            plain = lambda: F.linear(x, w)  # noqa: E731
            onednn = lambda: _onednn_linear(x, packed, None)  # noqa: E731
        elif role == "dgrad":
            x = torch.randn(rows, out_features, generator=gen).to(dtype)
            packed = _pack(w.t().contiguous(), rows)
            plain = lambda: x.matmul(w)  # noqa: E731
            onednn = lambda: _onednn_linear(x, packed, None)  # noqa: E731
        else:
            x = torch.randn(rows, in_features, generator=gen).to(dtype)
            g = torch.randn(rows, out_features, generator=gen).to(dtype)
            plain = lambda: g.t().mm(x)  # noqa: E731
            names = list(WGRAD_KERNELS) if dtype == torch.float32 else ["inner_product"]  # the primitive: fp32
            kernels = {n: (lambda f=WGRAD_KERNELS[n]: f(g, x, w)) for n in names}
            for f in kernels.values():
                f()  # warm-up
            name = min(names, key=lambda n: min(_timed(kernels[n]) for _ in range(3)))
            onednn = kernels[name]
        kernel = name if role == "wgrad" else "onednn"
        plain(), onednn()
        for i in range(PROBE_ROUNDS):
            if i % 2 == 0:
                t_plain, t_onednn = _timed(plain), _timed(onednn)
            else:
                t_onednn, t_plain = _timed(onednn), _timed(plain)
            if t_onednn >= PROBE_MARGIN * t_plain:
                return None  # one round without a clear win keeps the default BLAS
    return kernel


def use_onednn(
    role: str, dtype: torch.dtype, rows: int, in_features: int, out_features: int, mode: str | None = None
) -> bool:
    """The choice for one GEMM of `role` ("fwd": (rows, in) @ W^T with W (out, in); "dgrad": (rows, out) @ W;
    "wgrad": (rows, out)^T @ (rows, in)) under `mode` (default: the active one); "auto" probes each shape class
    once per process."""
    if role not in ROLES:
        raise ValueError(f"unknown GEMM role {role!r}; choose one of {', '.join(map(repr, ROLES))}")
    mode = cpu_gemm_mode() if mode is None else mode
    if mode == "off":
        return False
    if mode == "onednn":
        return True
    bucket = _bucket(rows)
    key = (role, dtype, in_features, out_features, bucket)
    choice = _DECISIONS.get(key)
    if choice is None:
        probe_rows = max(rows, 1)
        while probe_rows > PROBE_MIN_ROWS and 2.0 * probe_rows * in_features * out_features > PROBE_FLOPS:
            probe_rows //= 2
        kernel = _probe(role, dtype, probe_rows, in_features, out_features)
        if role == "wgrad" and kernel is not None:
            _WGRAD_CHOICE[key] = kernel
        choice = _DECISIONS[key] = kernel is not None
    return choice


def wgrad_kernel(dtype: torch.dtype, rows: int, in_features: int, out_features: int, mode: str | None = None) -> str:
    """The name (in WGRAD_KERNELS) of the oneDNN weight-gradient kernel for a shape class that takes oneDNN:
    under "auto" the probe's choice, else the inner product."""
    mode = cpu_gemm_mode() if mode is None else mode
    key = ("wgrad", dtype, in_features, out_features, _bucket(rows))
    return _WGRAD_CHOICE.get(key, "inner_product") if mode == "auto" else "inner_product"


def probe_decisions() -> dict[tuple, bool]:
    """A copy of the "auto" choices made so far in this process: (role, dtype, in, out, rows bucket) -> oneDNN?
    (`wgrad_kernel` names the weight-gradient kernel of those that take oneDNN)."""
    return dict(_DECISIONS)


def clear_probe_decisions() -> None:
    """Forget the "auto" choices and the packed weights (the next calls measure again)."""
    with _lock:
        _DECISIONS.clear()
        _WGRAD_CHOICE.clear()
        _PACKED.clear()


class _PackedLinear(torch.autograd.Function):
    """y = x @ W^T + b in `dtype`, forward, input gradient and weight gradient by the kernels chosen for them."""

    @staticmethod
    def forward(ctx, x, weight, bias, dtype, fwd_packed, dgrad_packed, wgrad):
        xc = x.to(dtype)
        bc = None if bias is None else bias.to(dtype)
        if fwd_packed is not None:
            y = _onednn_linear(xc, fwd_packed, bc)
        else:
            y = F.linear(xc, weight.to(dtype), bc)
        # the views autograd saves for F.linear (addmm / mm): x as (rows, in), W as W^T -- the same storages
        ctx.save_for_backward(xc.reshape(-1, xc.shape[-1]) if weight.requires_grad else None, weight.t())
        ctx.dtype, ctx.x_dtype, ctx.has_bias = dtype, x.dtype, bias is not None
        ctx.dgrad_packed = dgrad_packed  # W^T packed (cached by `packed_weight`), or None: plain matmul
        ctx.wgrad = wgrad  # a WGRAD_KERNELS entry, or None: plain mm
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        x2, weight_t = ctx.saved_tensors
        weight = weight_t.t()
        grad_out = grad_out.to(ctx.dtype)
        g2 = grad_out.reshape(-1, grad_out.shape[-1])
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            if ctx.dgrad_packed is not None:
                grad_x = _onednn_linear(grad_out, ctx.dgrad_packed, None)
            else:
                grad_x = grad_out.matmul(weight.to(ctx.dtype))
            grad_x = grad_x.to(ctx.x_dtype)
        if ctx.needs_input_grad[1]:
            grad_w = (ctx.wgrad(g2, x2, weight) if ctx.wgrad is not None else g2.t().mm(x2)).to(weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0).to(ctx.bias_dtype)
        return grad_x, grad_w, grad_b, None, None, None, None


@torch.fx.wrap  # one call in a torch.fx graph, which then chooses at run time as eager mode does
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`, with its CPU GEMMs on oneDNN's packed kernels where the active
    `cpu_gemm` mode chooses them (see this module's docstring); otherwise exactly `F.linear`."""
    mode = cpu_gemm_mode()
    # plain tensors only: torch.fx proxies, the fake tensors of torch.export, subclasses take F.linear, as do
    # torch.jit tracing and torch.compile (whose graphs then hold aten.linear), and any active dispatch mode
    # (FlopCounterMode, profilers, debug modes), which then sees the aten.linear a user expects to count
    if (
        mode == "off"
        or not _AVAILABLE
        or type(x) is not torch.Tensor
        or not x.is_cpu
        or not weight.is_cpu
        or x.dim() < 2
        or x.numel() == 0
        or torch.jit.is_tracing()
        or torch.compiler.is_compiling()
        or torch._C._len_torch_dispatch_stack() > 0
        or weight.is_inference()
    ):  # an inference tensor has no version counter to key its packing on
        return F.linear(x, weight, bias)
    if mode == "auto" and x.numel() * weight.shape[0] < AUTO_MIN_MACS:
        return F.linear(x, weight, bias)
    autocast = torch.is_autocast_enabled("cpu")
    dtype = torch.get_autocast_dtype("cpu") if autocast else x.dtype
    if dtype not in _DTYPES or weight.dtype not in _DTYPES or x.dtype not in _DTYPES:
        return F.linear(x, weight, bias)
    if dtype == torch.bfloat16 and not _BF16:  # no oneDNN bf16 kernel on this CPU (AVX2 only, say)
        return F.linear(x, weight, bias)
    if not autocast and (weight.dtype != dtype or (bias is not None and bias.dtype != dtype)):
        return F.linear(x, weight, bias)  # mixed dtypes: let F.linear raise its own error
    out_features, in_features = weight.shape
    rows = x.numel() // in_features if in_features else 0
    bucket = _bucket(rows)
    fwd = use_onednn("fwd", dtype, rows, in_features, out_features, mode)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    )
    if not needs_grad:
        if not fwd:
            return F.linear(x, weight, bias)
        bc = None if bias is None else bias.to(dtype)
        return _onednn_linear(x.to(dtype), packed_weight(weight, dtype, False, bucket), bc)
    dgrad = x.requires_grad and use_onednn("dgrad", dtype, rows, in_features, out_features, mode)
    wgrad = weight.requires_grad and use_onednn("wgrad", dtype, rows, in_features, out_features, mode)
    if not fwd and not dgrad and not wgrad:
        return F.linear(x, weight, bias)
    fwd_packed = packed_weight(weight, dtype, False, bucket) if fwd else None
    dgrad_packed = packed_weight(weight, dtype, True, bucket) if dgrad else None
    wgrad_fn = WGRAD_KERNELS[wgrad_kernel(dtype, rows, in_features, out_features, mode)] if wgrad else None
    return _PackedLinear.apply(x, weight, bias, dtype, fwd_packed, dgrad_packed, wgrad_fn)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, state-dict keys and initialisation) whose CPU GEMMs follow the active
    `cpu_gemm` mode: oneDNN's packed kernels where they are measured faster, `F.linear` otherwise."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


__all__ = [
    "ENV_VAR",
    "Linear",
    "MODES",
    "ROLES",
    "clear_probe_decisions",
    "cpu_gemm",
    "cpu_gemm_mode",
    "linear",
    "packed_weight",
    "probe_decisions",
    "use_onednn",
]

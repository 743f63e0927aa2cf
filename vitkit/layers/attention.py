"""Multi-head self-attention with a fused (SDPA) path and an eager path that can return weights.

The fused path calls `F.scaled_dot_product_attention`, which dispatches to a fused kernel on CPU
and GPU. The eager path computes softmax(q k^T / sqrt(d)) v explicitly (eq. 5-7 of the ViT paper,
appendix A) and is the only one that can hand back the attention weights, so inspection tools
use it. Which path runs is chosen per call (`return_attention=True` forces eager) or for a block
of code with the `eager_attention()` context manager -- never by an environment variable read at
import time. `tests/layers/test_attention.py` checks that both paths agree.

Where both paths may run, the default policy ("auto", `use_fused_attention`) picks the faster one
by measurement, keyed on (device, dtype, training or inference, sequence length): `SDPA_MIN_SEQ_LEN`
below (on CPUs with AMX tiles fp32 always takes SDPA; elsewhere short fp32 sequences run eager, which
is faster there); `attention_policy("fused" | "eager" | "auto")` overrides the choice for a block.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .linear import Linear

_FUSED = contextvars.ContextVar("vitkit_fused_attention", default=True)


@contextlib.contextmanager
def eager_attention(enabled: bool = True) -> Iterator[None]:
    """Run attention through the explicit softmax path inside this block (thread/task local)."""
    token = _FUSED.set(not enabled)
    try:
        yield
    finally:
        _FUSED.reset(token)


def fused_attention_enabled() -> bool:
    return _FUSED.get()


# The "auto" attention path: (device type, dtype of q, "train" | "infer"[, head_dim]) -> shortest sequence length
# N from which the fused SDPA kernel runs; shorter sequences run the eager softmax path, which is faster there.
# "train" is a call whose q needs a gradient (its backward pass counts too). An entry keyed by head width,
# (device, dtype, mode, head_dim), takes precedence; keys not in the table always use SDPA (CUDA, and fp32 on
# CPUs with AMX tiles). `benchmarks/attention_paths.py --threads 2 [--train]` times both paths over a grid of N
# and prints the entries for the machine it runs on. The measurements behind each entry, and whole training
# steps timed both ways, are in docs/benchmarks.md#attention-paths; the policy is described in
# docs/performance.md#attention-path-sdpa-or-eager-chosen-by-measurement. Per kind of CPU:
# - AMX tiles: fp32 runs SDPA at every N (the attention call alone is faster eager in training at N = 17 and 50,
#   whole training steps are not). bf16: torch's CPU SDPA backward is far slower at short sequences (eager 11x
#   faster at N = 17), so training runs eager below N = 513 and inference below N = 145.
# - AVX-512 without AMX (e.g. Zen 4, which has AVX512-BF16): fp32 eager below N = 65 in inference and below
#   N = 145 in training (197 with heads of 64). bf16 training eager below N = 785; bf16 inference depends on
#   the head width: heads of 16 and 32 run SDPA from N = 145, heads of 64 (ViT-S/B/L) run eager at N = 393
#   and SDPA at 785 (577 lies between the two measured points).
# - AVX2 only (no AVX-512): fp32 eager below N = 65 in inference and 145 in training. bf16 is emulated there
#   (vitkit/precision.py) and not worth timing: 393 lies between the lengths where bf16 SDPA is slower (197)
#   and faster (785) on an AVX-512 CPU.
# Both paths compute the same function, within bf16 rounding (tests/layers/test_attention_policy.py).
def _cpu_has_amx() -> bool:
    try:
        return bool(torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # older torch: no query, assume no AMX
        return False


def _cpu_has_avx512() -> bool:
    try:
        return torch.backends.cpu.get_cpu_capability().startswith("AVX512")
    except (AttributeError, RuntimeError):
        return True  # unknown (older torch): assume AVX-512


def cpu_attention_table(amx: bool, avx512: bool) -> dict[tuple, int]:
    """The measured `SDPA_MIN_SEQ_LEN` entries for a CPU with/without AMX tiles and AVX-512."""
    if amx:
        return {
            ("cpu", torch.bfloat16, "infer"): 145,
            ("cpu", torch.bfloat16, "train"): 513,
        }
    fp32 = {("cpu", torch.float32, "infer"): 65, ("cpu", torch.float32, "train"): 145}
    if avx512:  # no AMX, e.g. Zen 4
        return fp32 | {
            ("cpu", torch.float32, "train", 64): 197,
            ("cpu", torch.bfloat16, "infer"): 145,
            ("cpu", torch.bfloat16, "infer", 64): 577,
            ("cpu", torch.bfloat16, "train"): 785,
        }
    return fp32 | {("cpu", torch.bfloat16, mode): 393 for mode in ("infer", "train")}


# (device type, dtype, mode) or (device type, dtype, mode, head_dim) -> shortest sequence that runs SDPA
SDPA_MIN_SEQ_LEN: dict[tuple, int] = cpu_attention_table(_cpu_has_amx(), _cpu_has_avx512())
_AUTO = contextvars.ContextVar("vitkit_attention_auto", default=True)


@contextlib.contextmanager
def attention_policy(policy: str) -> Iterator[None]:
    """Inside this block: "fused" always runs SDPA, "eager" always the explicit softmax path, "auto"
    (the default) chooses by `SDPA_MIN_SEQ_LEN` (thread/task local; `return_attention` still forces eager)."""
    if policy not in ("auto", "fused", "eager"):
        raise ValueError(f"unknown attention policy {policy!r}; choose 'auto', 'fused' or 'eager'")
    fused_token, auto_token = _FUSED.set(policy != "eager"), _AUTO.set(policy == "auto")
    try:
        yield
    finally:
        _FUSED.reset(fused_token)
        _AUTO.reset(auto_token)


def use_fused_attention(q: torch.Tensor) -> bool:
    """Whether attention on queries `q` (..., N, head_dim) should run SDPA under the active policy."""
    if not _FUSED.get():
        return False
    if not _AUTO.get():
        return True
    key = (q.device.type, q.dtype, "train" if q.requires_grad and torch.is_grad_enabled() else "infer")
    return q.shape[-2] >= SDPA_MIN_SEQ_LEN.get((*key, q.shape[-1]), SDPA_MIN_SEQ_LEN.get(key, 0))


# A callback(module, weights) that eager attention paths report their softmax weights to, set by
# `attention_recorder()` (vitkit.inspect.capture_attention builds on it); None = nobody listens.
_RECORDER = contextvars.ContextVar("vitkit_attention_recorder", default=None)


@contextlib.contextmanager
def attention_recorder(callback: Callable[[nn.Module, torch.Tensor], None]) -> Iterator[None]:
    """Inside this block attention runs eager and every module that opts in (see `record_attention`)
    calls `callback(module, weights)` with its softmax weights (B, heads, N_q, N_k) (thread/task local)."""
    token = _RECORDER.set(callback)
    try:
        with eager_attention():
            yield
    finally:
        _RECORDER.reset(token)


def record_attention(module: nn.Module, weights: torch.Tensor) -> None:
    """The opt-in point for attention capture: an attention module calls this on its eager path with
    the softmax weights; a no-op unless an `attention_recorder` block is active."""
    callback = _RECORDER.get()
    if callback is not None:
        callback(module, weights)


def attention_recording() -> bool:
    """Whether an `attention_recorder` block is active (attention modules then take their eager path)."""
    return _RECORDER.get() is not None


@torch.fx.wrap  # one opaque call in a torch.fx graph: the choice below needs the real shapes
def scaled_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    attn_bias: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    scale: float | None = None,
) -> torch.Tensor:
    """softmax(q k^T * scale + attn_bias) v over (B, H, N, hd) inputs, by SDPA or the explicit softmax
    path as the active `attention_policy` chooses for these shapes (`use_fused_attention`).
    `scale` None is 1 / sqrt(hd); `dropout_p` > 0 drops attention weights (pass 0 in eval mode)."""
    if use_fused_attention(q):
        kw = {} if scale is None else {"scale": scale}
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_bias, dropout_p=dropout_p, **kw)
    attn = (q * (q.shape[-1] ** -0.5 if scale is None else scale)) @ k.transpose(-2, -1)
    if attn_bias is not None:
        attn = attn + attn_bias
    weights = attn.softmax(dim=-1)
    if dropout_p > 0:
        weights = F.dropout(weights, dropout_p)
    return weights @ v


def split_heads(qkv: torch.Tensor, num_heads: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(B, N, 3 * D) output of a fused qkv projection -> q, k, v, each a (B, H, N, D / H) view.

    This is timm's split (reshape, permute, unbind), so a training step saves exactly timm's tensors and
    peaks at timm's memory (docs/benchmarks.md#training-memory). Unbinding the (B, N, 3, H, hd) view on dim 2
    before transposing gives the same views and one copy fewer in the backward pass, but raises the peak
    memory of a ViT-S training step above timm's."""
    B, N, three_d = qkv.shape
    q, k, v = qkv.reshape(B, N, 3, num_heads, three_d // (3 * num_heads)).permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


class Attention(nn.Module):
    """Multi-head self-attention; state-dict keys follow timm (`qkv`, `proj`)."""

    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"embed dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.qkv = Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(
        self,
        x: torch.Tensor,
        attn_bias: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """x: (B, N, D). `attn_bias` is added to the logits (broadcast to (B, H, N, N)).

        Returns (B, N, D), or ((B, N, D), (B, H, N, N) weights) when `return_attention`.
        """
        B, N, D = x.shape
        q, k, v = split_heads(self.qkv(x), self.num_heads)
        weights = None
        if not (return_attention or attention_recording()):
            x = scaled_attention(q, k, v, attn_bias, self.attn_drop.p if self.training else 0.0)
        else:
            attn = (q * self.scale) @ k.transpose(-2, -1)  # (B, H, N, N)
            if attn_bias is not None:
                attn = attn + attn_bias
            weights = attn.softmax(dim=-1)
            record_attention(self, weights)
            x = self.attn_drop(weights) @ v
        x = x.transpose(1, 2).reshape(B, N, D)
        x = self.proj_drop(self.proj(x))
        return (x, weights) if return_attention else x

"""Multi-head self-attention with a fused (SDPA) path and an eager path that can return weights.

The fused path calls `F.scaled_dot_product_attention`, which dispatches to a fused kernel on CPU
and GPU. The eager path computes softmax(q k^T / sqrt(d)) v explicitly (eq. 5-7 of the ViT paper,
appendix A) and is the only one that can hand back the attention weights, so inspection tools
use it. Which path runs is chosen per call (`return_attention=True` forces eager) or for a block
of code with the `eager_attention()` context manager -- never by an environment variable read at
import time. `tests/layers/test_attention.py` checks that both paths agree.

Where both paths may run, the default policy ("auto", `use_fused_attention`) picks the faster one
by measurement, keyed on (device, dtype, training or inference, sequence length): `SDPA_MIN_SEQ_LEN`
below (on CPUs with AVX-512, fp32 always takes SDPA; on AVX2-only CPUs short fp32 sequences run
eager, which is faster there); `attention_policy("fused" | "eager" | "auto")` overrides the choice for a block.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

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


# The "auto" attention path: (device type, dtype of q, "train" | "infer"[, head_dim]) -> shortest sequence for which
# the fused SDPA kernel is used; shorter sequences run the eager softmax path, which is faster there.
# "train" is a call whose q needs a gradient (the backward pass is timed too). Keys not in the table
# always use SDPA. Measured points (docs/benchmarks.md, "SDPA vs eager attention"):
# - The design notes' 2-core Zen 4 (avx512-bf16, torch 2.13): bf16 SDPA slower than eager attention at
#   N = 197 (ViT-S/16 at 224) and faster at N = 785 (ViT-S/8). Session 9 measured such a machine in full
#   (below); the AVX2-only entry keeps the notes' 393 for bf16, where bf16 is emulated and not measured.
# - CPUs with AMX tiles (the 2-core Xeon of sessions 1-3 and 5, torch 2.13, `benchmarks/attention_paths.py
#   --threads 2 [--train]`). Inference: bf16 SDPA as fast as or faster than eager from N = 145 on (1.14x-2.4x
#   at N = 197), even at N = 17-50, eager 14% ahead at N = 65; fp32 SDPA never slower. Training (forward +
#   backward, session 5, batch 256, 4 heads of 32): bf16 SDPA is far slower at short sequences (eager 11x
#   faster at N = 17, 2.9x at 145, 1.7x at 197, even at 393 and 513, SDPA 1.2x ahead at 785; the MNIST
#   recipe's whole training step ran 3.4x faster eager, 1,122 -> 3,768 img/s). In fp32 the attention call
#   alone is 1.2-1.4x faster eager up to N = 65, but whole training steps are not (MNIST recipe 2,421 fused
#   vs 2,383 eager img/s; `make train`'s digits model 3,860 vs 3,610), so fp32 keeps SDPA. (Sessions 3-4
#   measured inference only and dropped the bf16 entries, which slowed bf16 training of short sequences 3x.)
# - CPUs with AVX-512 but no AMX, measured on the 2-core AMD EPYC Zen 4 of session 9 (which also has
#   AVX512-BF16; torch 2.13, `attention_paths.py --threads 2 [--train]` at 4 heads of 32 (batch 256), 6 heads
#   of 64 (batch 32), and in inference 4 heads of 16 (batch 128); docs/benchmarks.md, "Session 9"). fp32:
#   eager faster below N = 65 in inference (2.6x at N = 17) and below N = 145 in training (2.9x at 17,
#   1.35x at 65; heads of 64: eager 1.2x at 145, SDPA from 197); whole steps agree
#   (`step_profile.py --attention-paths`, fp32: MNIST recipe, 17 tokens, eager 1.01-1.17x training, 1.16-1.21x
#   inference; Fashion-MNIST recipe, 50 tokens, 1.08-1.13x / 1.03x). bf16 training: eager faster up to
#   N = 393 at both head widths measured (32, 64), SDPA from 785 (even at 785 with heads of 64). bf16
#   inference depends on the head width: heads of 16 and 32 run SDPA faster from N = 145-197 (1.3-2x),
#   heads of 64 (ViT-S/B/L) run eager 2x faster at N = 197, even at 393, SDPA 1.3x at 785 (577 lies
#   between the two measured points). An entry keyed by head width, (device, dtype, mode, head_dim),
#   takes precedence.
# - AVX2-only CPUs (no AVX-512; the session-4 2-core AMD EPYC, torch 2.13, `attention_paths.py
#   --threads 2 --dtypes fp32 [--train]`): fp32 eager was faster at short sequences, inference at
#   N = 17 and 50 (SDPA 1.36-1.43x slower), training (forward + backward) up to N = 65 (SDPA 1.33-1.54x
#   slower; 1.9x at N = 17 with the MNIST recipe's 4 heads of 32 at batch 256); SDPA wins from
#   N = 65 (inference) and N = 145 (training) on. bf16 is emulated there (vitkit/precision.py).
# fp32 and bf16 on CUDA: SDPA everywhere. `benchmarks/attention_paths.py` times both paths over a
# grid of sequence lengths and prints the entry for the machine it runs on (docs/performance.md,
# "Attention path"); the outputs of the two paths agree within bf16 rounding
# (tests/layers/test_attention_policy.py).
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
    if avx512:  # measured on the Zen 4 of session 9
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
def scaled_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_bias: torch.Tensor | None = None,
                     dropout_p: float = 0.0, scale: float | None = None) -> torch.Tensor:
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

    Session 11 tried unbinding the (B, N, 3, H, hd) view on dim 2 before transposing (the same views): the
    backward then stacks SDPA's q/k/v gradients straight into qkv's layout, one copy instead of a stack and a
    clone (about 3 ms per ViT-S block at batch 32, 0.7% of a step), but the peak RSS of a ViT-S training step at
    batch 64 rose by about 190 MiB with freed memory reused (4,922 vs 4,736 MiB, median of 3-5 fresh processes,
    `benchmarks/memory.py`), past timm's: so the permuted split stays (docs/benchmarks.md, "Session 11")."""
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
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
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

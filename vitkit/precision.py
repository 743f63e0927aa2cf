"""When bf16 autocast pays: native bf16 arithmetic on the device, or not.

bf16 autocast is fast only where the hardware computes in bf16. On a CPU that means AMX tiles or
AVX512-BF16; without them oneDNN emulates bf16 and the matmuls get *slower*, not faster: a training
step of the 540k-parameter MNIST ViT (`recipes/mnist_vit_fast.yaml`) runs 1.7x faster in bf16 than in
fp32 on a CPU with AMX, and about 9.5x slower on one with AVX2 only
(docs/performance.md#bf16-autocast-cpu-and-cuda).

So `--run.precision=auto` (what the recipes use) turns bf16 autocast on only where it is native and
trains in fp32 elsewhere, and an explicit `--run.precision=bf16` where bf16 is emulated runs as asked but
logs a warning that names the cost. `--run.precision=fp16` is float16 autocast with a gradient scaler
(`torch.amp.GradScaler`, vitkit/train/runner.py), on CUDA and on CPU. `vitkit eval` and `vitkit predict`
take their own `--bf16` flag (`resolve_bf16`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch

logger = logging.getLogger(__name__)

BF16_CHOICES = ("auto", "true", "false")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")  # --run.precision


@functools.cache
def cpu_has_native_bf16() -> bool:
    """True when this CPU has AMX tiles or AVX512-BF16 (torch's own queries; False where torch lacks them)."""
    for query in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        try:
            if bool(getattr(torch.cpu, query)()):
                return True
        except (AttributeError, RuntimeError):
            continue
    return False


def bf16_is_native(device: str) -> bool:
    """Whether `device` ('cpu', 'cuda', 'cuda:1', ...) computes bf16 natively."""
    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return cpu_has_native_bf16()


def parse_bf16(value: Any) -> bool | str:
    """A `bf16` setting as given (true/false/'auto', YAML or command line) -> True, False or 'auto'."""
    if isinstance(value, bool):
        return value
    mode = str(value).strip().lower()
    if mode not in BF16_CHOICES:
        raise ValueError(f"bf16 must be auto, true or false, got {value!r}")
    return "auto" if mode == "auto" else mode == "true"


def resolve_bf16(value: Any, device: str, warn: bool = True) -> bool:
    """Whether to run under bf16 autocast: 'auto' -> only where bf16 is native; True is honoured, with a
    warning where it is emulated (much slower than fp32); False -> never."""
    mode = parse_bf16(value)
    native = bf16_is_native(device)
    if mode == "auto":
        return native
    if mode and warn and not native:
        logger.warning(
            "bf16 autocast on this %s is emulated (no AMX or AVX512-BF16 instructions): it computes in bf16 but "
            "runs several times slower than fp32 (about 10x for a small ViT on an AVX2 CPU). Use auto "
            "(--run.precision=auto, --bf16=auto: bf16 only where it is native) or fp32.",
            "GPU" if device.startswith("cuda") else "CPU",
        )
    return bool(mode)


def resolve_precision(value: str, device: str, warn: bool = True) -> str:
    """`--run.precision` -> 'bf16', 'fp16' or 'fp32': 'auto' is bf16 where bf16 is native on `device`, else fp32
    (as `resolve_bf16('auto')`); bf16 where it is emulated is honoured, with `resolve_bf16`'s warning."""
    mode = str(value).strip().lower()
    if mode not in PRECISIONS:
        raise ValueError(f"--run.precision must be one of {', '.join(PRECISIONS)}, got {value!r}")
    if mode == "auto":
        return "bf16" if bf16_is_native(device) else "fp32"
    if mode == "bf16":
        resolve_bf16(True, device, warn=warn)
    return mode

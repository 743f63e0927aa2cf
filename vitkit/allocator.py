"""Keep freed CPU memory for reuse, so that a training step does not fault its activations in anew.

PyTorch's CPU tensors come from the C library's `malloc`. glibc serves a block above its *mmap
threshold* with a fresh `mmap` and hands it back to the kernel on `free`; it also returns the top
of its heap to the kernel once more than the *trim threshold* is free there. A training step frees
and re-allocates the same activations every step, so each step pays the kernel to map and zero the
same pages again: a minor page fault per 4 KiB page. The threshold starts at 128 KiB and rises
with the blocks freed, but never above 32 MiB, and ViT-S's MLP activations at batch 32 are 39 MiB.

Keeping freed blocks makes training steps with fused AdamW faster (`benchmarks/allocator.py`, 2 threads,
fresh processes): ViT-S/16 at batch 32 1.21x (286k page faults per step -> 0), Swin-T 1.71x, the MNIST
ViT at batch 256 1.20x; docs/benchmarks.md#the-allocator has the table, its commands and machine.

The cost: memory that a step freed stays in the process (its resident set stays at the peak
instead of falling between steps), which is what a training process wants anyway.
`vitkit train` and `vitkit pretrain` apply it on CPU (`--run.reuse_cpu_memory=false` to leave
glibc's defaults), and so do `vitkit eval` and `vitkit predict` (`--no-reuse-cpu-memory`): inference
frees and re-allocates its activations too (ViT-S at batch 32: 15.9 -> 18.4 img/s, 260k page faults
per batch -> 0; one image at a time: 15.3 -> 16.3, 3,151 -> 0; `benchmarks/allocator.py --infer`).
It changes a setting of the whole process, so importing vitkit never does it.
On a C library other than glibc (musl, macOS, Windows) it does nothing and says so.

A heap that keeps freed memory can still grow past what the tensors need, when small long-lived
blocks split the holes of big freed ones. The gradients are such blocks, allocated anew in every
backward pass among the activations being freed: `KeptGradients` allocates them once and zeroes
them in place, and the training loops use it wherever they reuse freed memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform
from collections.abc import Iterable

import torch

logger = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
GLIBC_DYNAMIC_MAX = 32 << 20  # the most glibc's own sliding threshold reaches (64-bit), and a safe fallback
DEFAULT_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap and are reused


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def reuse_freed_memory(threshold: int = DEFAULT_THRESHOLD) -> int | None:
    """Make glibc keep freed blocks up to `threshold` bytes for reuse instead of returning them to the kernel.

    Sets `M_MMAP_THRESHOLD` (blocks at most this big come from the heap) and `M_TRIM_THRESHOLD` (the
    heap keeps this much free memory at its top) of the whole process. Returns the threshold that was
    applied: `threshold`, or glibc's 32 MiB maximum where this glibc refuses more; None where the C
    library is not glibc (nothing changed).
    """
    if not 0 < threshold < 2**31:
        raise ValueError(f"threshold must be between 1 byte and 2 GiB - 1 (mallopt takes an int), got {threshold}")
    libc = _glibc()
    if libc is None:
        logger.info("not glibc (%s): the CPU allocator keeps its own settings", platform.platform())
        return None
    for value in dict.fromkeys((threshold, min(threshold, GLIBC_DYNAMIC_MAX))):
        if libc.mallopt(M_MMAP_THRESHOLD, value) == 1:
            libc.mallopt(M_TRIM_THRESHOLD, max(value, 2 * GLIBC_DYNAMIC_MAX))
            logger.debug("glibc malloc keeps freed blocks up to %d MiB for reuse", value >> 20)
            return value
    logger.warning("glibc refused M_MMAP_THRESHOLD=%d: the CPU allocator keeps its defaults", threshold)
    return None


class KeptGradients:
    """Allocate the gradients of `params` once and keep them from step to step, zeroed in place.

    With `optimizer.zero_grad(set_to_none=True)` every backward pass allocates the gradients anew,
    one small block per parameter, while the activations of the pass are being freed around them.
    With freed memory kept in the heap (`reuse_freed_memory`), those small long-lived blocks land in
    the holes that the big activation blocks left and split them, so the next big block no longer
    fits and the heap grows: with gradient checkpointing, whose backward pass recomputes and frees
    each block's activations in turn, a ViT-S training step at batch 64 with AdamW peaks at about
    3 GiB of RSS for 885 MiB of live tensors (`benchmarks/memory.py --grads fresh`). Allocated once,
    before the first step, the gradients stay where they are and the heap stays near the live size:
    about 1.5 GiB for 967 MiB of live tensors (one more set of gradients is alive during the forward
    pass). Without checkpointing the peak is the same either way, inside the process-to-process
    spread (docs/benchmarks.md#training-memory has the table).

    The optimizer sees what it saw with `set_to_none=True`: call `before_step()` between the last
    backward pass and `optimizer.step()`, and every parameter that got no gradient since the last
    `zero_grad()` (unused in the forward pass) has its gradient set to None, so the optimizer skips
    it (no weight decay, no momentum step); 0 + g equals g (up to the sign of a zero), so the used
    ones are unchanged too. `close()` at the end takes the hooks off and leaves the gradients None,
    as `set_to_none` would.

        kept = KeptGradients(model.parameters())
        for x, y in batches:
            loss_fn(model(x), y).backward()
            kept.before_step()
            optimizer.step()
            kept.zero_grad()            # instead of optimizer.zero_grad()
        kept.close()
    """

    def __init__(self, params: Iterable[torch.nn.Parameter]) -> None:
        self.params = [p for p in params if p.requires_grad]
        self._fed: set[int] = set()
        fed = self._fed  # the hooks hold the set only: a hook holding `self` would keep the parameters alive forever

        def mark(p: torch.Tensor) -> None:
            fed.add(id(p))

        self._hooks = [p.register_post_accumulate_grad_hook(mark) for p in self.params]
        self.zero_grad()

    def before_step(self) -> None:
        """Set to None the gradient of every parameter that got none since the last `zero_grad()`."""
        for p in self.params:
            if id(p) not in self._fed:
                p.grad = None

    def zero_grad(self) -> None:
        """Zero the kept gradients in place (allocating any that are missing)."""
        grads = []
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            else:
                grads.append(p.grad)
        if grads:
            torch._foreach_zero_(grads)
        self._fed.clear()

    def close(self) -> None:
        """Take the hooks off the parameters and set their gradients to None (the end of training)."""
        for h in self._hooks:
            h.remove()
        self._hooks = []
        for p in self.params:
            p.grad = None

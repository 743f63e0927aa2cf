"""Helpers shared by the benchmark scripts: machine facts, synchronised interleaved timing, peak memory.

Timing: every library/variant runs back to back within a round and the order alternates between
rounds, so slow drift on a shared machine hits all of them alike; the median over rounds is kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count


# --------------------------------------------------------------------------- machine facts
def cpu_model() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def machine_line(device: str) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = f"CPU: {cpu_model()} ({cores} usable cores)"
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        line += f"; GPU: {p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    return line


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """torch's count for `convolution_backward`, with groups: each gradient (input, weight) costs what the
    forward convolution costs. torch 2.13's own formula ignores groups for the weight gradient and counts a
    depth-wise convolution's as `channels` times too many FLOPs (CvT-13: 37 instead of 27 GFLOP per
    image forward + backward, which put its training step above 100% of the matmul peak)."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


def flop_counter() -> FlopCounterMode:
    """torch's FlopCounterMode (matmuls, convolutions, attention) with the grouped-convolution backward fixed."""
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})


def matmul_sampler(device: str, seconds: float = 0.5) -> tuple[Callable[[], object], float]:
    """(fn, FLOPs per call): fn runs back-to-back fp32 2048^2 matmuls (8192^2 on CUDA, TF32 off) for about
    `seconds`. Timed among the steps of `interleaved`, it gives the matmul rate under the same conditions
    as the steps it sits between: a like-for-like denominator for "% of peak" on a shared machine."""
    n = 8192 if device == "cuda" else 2048
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)

    def mm() -> None:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            for _ in range(reps):
                torch.mm(a, b)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev

    reps = 1
    mm()
    reps = max(1, round(seconds / max(timed(mm, 1, device), 1e-6)))
    return mm, 2.0 * n**3 * reps


def matmul_peak_gflops(device: str, repeats: int) -> float:
    """Best-of-`repeats` fp32 matmul throughput (one matmul per sample, after `matmul_sampler`'s two warm-up calls)."""
    mm, flop = matmul_sampler(device, seconds=0.0)
    return flop / min(timed(mm, 1, device) for _ in range(repeats)) / 1e9


# --------------------------------------------------------------------------- memory
def add_allocator_argument(p) -> None:
    p.add_argument("--allocator", default="reuse", choices=["reuse", "glibc"],
                   help="CPU memory allocator setting of the process, the same for everything timed: reuse = "
                        "vitkit.allocator.reuse_freed_memory(), as `vitkit train` runs (default); glibc = the C "
                        "library's defaults, which fault big activations in anew every step")


def apply_allocator(args) -> str:
    """Apply --allocator (CPU only); returns a phrase for the report."""
    if getattr(args, "device", "cpu") != "cpu":
        return "CUDA caching allocator"
    if args.allocator == "glibc":
        return "CPU allocator: glibc defaults"
    from vitkit.allocator import reuse_freed_memory

    kept = reuse_freed_memory()
    return f"CPU allocator: freed blocks up to {kept >> 20} MiB reused (vitkit.allocator)" if kept else \
        "CPU allocator: not glibc, its defaults"


_LIBC = None


def _libc():
    # No mallopt here: fixing M_MMAP_THRESHOLD (e.g. at 64 KiB, for exact RSS peaks) would make every timing
    # after the first memory measurement pay a page fault per 4 KiB of activations (vitkit/allocator.py).
    # malloc_trim(0) at the start of a measurement is enough for the peak above it.
    global _LIBC
    if _LIBC is None:
        with contextlib.suppress(OSError):
            _LIBC = ctypes.CDLL("libc.so.6")
    return _LIBC


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
    """Peak memory above the level at entry: RSS sampled by a thread (CPU) or the CUDA allocator's peak."""

    def __init__(self, device: str) -> None:
        self.device, self.peak = device, 0

    def __enter__(self) -> PeakMemory:  # noqa: PYI034
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
            return self
        libc = _libc()
        if libc is not None:
            libc.malloc_trim(0)
        self.base = self.high = rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.high = max(self.high, rss_bytes())
            time.sleep(0.0005)

    def __exit__(self, *exc) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self._thread.join()
            self.peak = max(self.high, rss_bytes()) - self.base


class LiveTensorPeak:
    """Peak bytes of live CPU tensors allocated inside the block, whatever the C allocator does with freed memory.

    RSS counts what the process holds: with freed blocks kept for reuse (`vitkit.allocator`), a peak of RSS is
    the heap's high-water mark, which depends on where each freed block happened to land (timm's checkpointed
    ViT-S step spread over 2,025-3,244 MiB in three processes). This counts what the tensors need: torch's CPU
    allocator reports every allocation and free to the profiler with its running total of live bytes
    (`ProfiledCPUMemoryReporter`), and the peak is the largest total seen, less the total at entry. It
    covers every tensor made through torch's CPU allocator (weights, gradients, optimizer state, activations,
    temporaries), not the scratch space that oneDNN or OpenMP allocate for themselves.

    The running total is process-wide and only follows blocks allocated while a profiler records memory: use
    it once per process, around everything the measurement should own (build the model inside the block).
    """

    def __enter__(self) -> LiveTensorPeak:  # noqa: PYI034
        gc.collect()
        self._prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
        self._prof.__enter__()
        self._marker = torch.empty(1024, dtype=torch.uint8)  # its event gives the running total at entry
        self._marker_ptr = self._marker.data_ptr()
        return self

    def __exit__(self, *exc) -> None:
        del self._marker
        self._prof.__exit__(*exc)
        if exc[0] is not None:
            return
        from torch._C._profiler import _EventType

        allocs, stack = [], list(self._prof.profiler.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.typed[0] == _EventType.Allocation and node.typed[1].device.type == "cpu":
                allocs.append(node.typed[1])
        if not allocs:
            raise RuntimeError("the profiler recorded no CPU allocation; LiveTensorPeak needs torch's CPU allocator")
        ptr = self._marker_ptr
        marker = [a for a in allocs if a.ptr == ptr and a.alloc_size == 1024]
        if not marker:
            raise RuntimeError("LiveTensorPeak: the profiler did not record the entry marker's allocation")
        self.base = min(marker, key=lambda a: a.total_allocated).total_allocated  # the marker itself not counted
        self.peak = max(a.total_allocated for a in allocs) - self.base
        self.allocations = sum(a.alloc_size > 0 for a in allocs)


# --------------------------------------------------------------------------- timing
def timed(fn: Callable[[], object], iters: int, device: str) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / iters


def interleaved(fns: dict[str, Callable[[], object]], args, warmup: int, rounds: int) -> dict[str, float]:
    """Median seconds per call of each fn; one sample per round, the order alternating."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    once = max(timed(fn, 1, args.device) for fn in fns.values())
    iters = max(1, math.ceil(args.min_time / max(once, 1e-6)))
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            samples[n].append(timed(fns[n], iters, args.device))
    return {n: statistics.median(s) for n, s in samples.items()}


def markdown_report(script: str, lines: list[str], cols: list[str], rows: list[list[str]], left: int = 2) -> str:
    """`<!-- benchmarks/SCRIPT -->`, the run's facts as bullets, then a table of `rows` (cells already formatted;
    the first `left` columns left-aligned, the rest right-aligned)."""
    out = [f"<!-- benchmarks/{script} -->", ""] + [f"- {ln}" for ln in lines] + [""]
    out += ["| " + " | ".join(cols) + " |", "|" + "|".join(["---"] * left + ["---:"] * (len(cols) - left)) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out) + "\n"


def child_json(args: list[str], what: str) -> dict:
    """Run this Python on `args` in a fresh process (offline for the Hugging Face hub) and return the JSON object
    on its last line of output; a failure stops the benchmark with `what` and the end of the child's stderr."""
    proc = subprocess.run([sys.executable, *args], capture_output=True, text=True, check=False,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def publish(text: str, path: str | None) -> None:
    """Print a report and, with --markdown PATH, write it there atomically."""
    print("\n" + text)
    if path:
        write_atomic(Path(path), text)


def write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.replace(tmp, path)

"""Helpers shared by the benchmark scripts: machine facts, the hardware's GEMM rate, synchronised interleaved timing, peak memory.

Timing: every library/variant runs back to back within a round and the order alternates between
rounds, so slow drift on a shared machine hits all of them alike; the median over rounds is kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util
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
from dataclasses import dataclass, field
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


# Environment variables that change which GEMM kernels run; a table records those that are set.
# MKL_ENABLE_INSTRUCTIONS=AVX2 caps MKL at its AVX2 code path while oneDNN keeps AVX-512: on an AVX-512 Intel
# CPU this gives a default BLAS below the hardware's rate, as MKL runs on some AMD CPUs
# (docs/performance.md#a-default-blas-below-the-hardwares-rate).
KERNEL_ENV = ("MKL_ENABLE_INSTRUCTIONS", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "VITKIT_CPU_GEMM")


def machine_line(device: str) -> str:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    line = f"CPU: {cpu_model()} ({cores} usable cores)"
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        line += f"; GPU: {p.name} ({p.total_memory / 2**30:.0f} GiB), CUDA {torch.version.cuda}"
    kernels = [f"{k}={os.environ[k]}" for k in KERNEL_ENV if k in os.environ]
    return line + (f"; {', '.join(kernels)}" if kernels else "")


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


# --------------------------------------------------------------------------- the hardware's GEMM rate
MKL = "torch.matmul (MKL)"
TORCH_MATMUL = "torch.matmul"
ONEDNN = "oneDNN packed"
MLAS = "onnxruntime MatMul (MLAS)"


def gemm_size(device: str) -> int:
    """The square GEMM the rates are measured on: 2048 on a CPU, 8192 on CUDA."""
    return 8192 if device == "cuda" else 2048


def torch_matmul_name(device: str, dtype: torch.dtype) -> str:
    """torch.matmul's kernel as reported: fp32 on an x86 CPU runs MKL (torch's default BLAS there)."""
    if device == "cpu" and dtype == torch.float32 and torch.backends.mkl.is_available():
        return MKL
    return TORCH_MATMUL


def onnxruntime_matmul(n: int, a=None, b=None) -> Callable[[], object] | str:
    """onnxruntime's MatMul (MLAS) on two fp32 n x n inputs (NumPy arrays `a` and `b`, random when not given),
    at torch's intra-op thread count; or, when onnxruntime or onnx is missing, a note saying so. The function
    returns [a @ b]."""
    missing = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        return f"{MLAS} skipped: {' and '.join(missing)} not installed (pip install onnx onnxruntime)"
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])],
        "mm",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = torch.get_num_threads()
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {k: rng.standard_normal((n, n), dtype=np.float32) if v is None else v for k, v in (("a", a), ("b", b))}
    return lambda: sess.run(None, feeds)


def gemm_kernels(
    device: str, dtype: torch.dtype = torch.float32, size: int | None = None
) -> tuple[dict[str, Callable[[], object]], list[str]]:
    """({kernel name: one size x size GEMM}, notes on kernels left out), `size` by default `gemm_size(device)`;
    every kernel multiplies the same two matrices and returns the product (onnxruntime: a list holding it).

    CPU: torch.matmul (MKL for fp32 on x86), oneDNN's inner product on a weight packed once into its blocked
    layout (the kernel of vitkit's CPU GEMM path, `vitkit.layers.linear` forced to "onednn") and, for fp32,
    onnxruntime's MatMul (MLAS). CUDA: torch.matmul, TF32 off."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise ValueError(f"the GEMM rate is measured for torch.float32 or torch.bfloat16, not {dtype}")
    n = size or gemm_size(device)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    notes: list[str] = []

    def mm() -> torch.Tensor:
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            return torch.matmul(a, b)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev

    kernels: dict[str, Callable[[], object]] = {torch_matmul_name(device, dtype): mm}
    if device != "cpu":
        return kernels, notes
    from vitkit.layers import cpu_gemm
    from vitkit.layers.linear import linear

    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        notes.append(f"{ONEDNN} skipped: oneDNN has no bf16 inner product on this CPU")
    elif torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        weight = b.t().contiguous()  # (out, in): linear(a, weight) = a @ b

        def onednn() -> torch.Tensor:
            with torch.no_grad(), cpu_gemm("onednn"):
                return linear(a, weight)

        kernels[ONEDNN] = onednn
    else:
        notes.append(f"{ONEDNN} skipped: this torch has no oneDNN linear kernel")
    if dtype == torch.float32:
        ort = onnxruntime_matmul(n, a.numpy(), b.numpy())
        if isinstance(ort, str):
            notes.append(ort)
        else:
            kernels[MLAS] = ort
    return kernels, notes


def _repeat(fn: Callable[[], object], reps: int) -> Callable[[], None]:
    def run() -> None:
        for _ in range(reps):
            fn()

    return run


def gemm_sampler(
    device: str, kernel: str, dtype: torch.dtype = torch.float32, seconds: float = 0.5, size: int | None = None
) -> tuple[Callable[[], object], float]:
    """(fn, FLOPs per call): fn runs back-to-back size x size GEMMs (`gemm_size(device)` by default) of
    `kernel` (a name from `gemm_kernels`, e.g. `GemmRate.kernel`) for about `seconds`. Timed among the steps of `interleaved`, it
    gives that kernel's rate under the same conditions as the steps it sits between: a like-for-like
    denominator for "% of the GEMM rate" on a shared machine."""
    kernels, _ = gemm_kernels(device, dtype, size)
    if kernel not in kernels:
        raise ValueError(f"no GEMM kernel {kernel!r} here; available: {', '.join(kernels)}")
    fn = kernels[kernel]
    fn()
    reps = max(1, round(seconds / max(timed(fn, 1, device), 1e-6)))
    return _repeat(fn, reps), 2.0 * (size or gemm_size(device)) ** 3 * reps


@dataclass
class GemmRate:
    """The hardware's GEMM rate as measured: the best kernel's GFLOP/s, its name, every kernel's rate, and
    notes on kernels that were left out."""

    gflops: float
    kernel: str
    dtype: str
    rates: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    size: int = 0

    @property
    def torch_matmul(self) -> tuple[str, float]:
        """(name, GFLOP/s) of torch.matmul: MKL's rate for fp32 on an x86 CPU."""
        name = next(k for k in self.rates if k in (MKL, TORCH_MATMUL))
        return name, self.rates[name]

    def describe(self) -> str:
        """One line for a report: the rate, the kernel that set it, torch.matmul's rate beside it, the notes."""
        size = f" ({self.size}x{self.size})" if self.size else ""
        mm_name, mm_rate = self.torch_matmul
        text = f"the hardware's {self.dtype} GEMM rate{size}: {self.gflops:.0f} GFLOP/s, set by {self.kernel}"
        if self.kernel != mm_name:
            text += f" ({mm_name}: {mm_rate:.0f} GFLOP/s, {100 * mm_rate / self.gflops:.0f}% of it)"
        others = [f"{k} {v:.0f}" for k, v in self.rates.items() if k not in (self.kernel, mm_name)]
        if others:
            text += f"; also timed: {', '.join(others)} GFLOP/s"
        return text + "".join(f"; {note}" for note in self.notes)


def hardware_gemm_rate(
    device: str, repeats: int, dtype: torch.dtype = torch.float32, size: int | None = None
) -> GemmRate:
    """The hardware's `dtype` GEMM rate on `device`: the best of `gemm_kernels` (torch.matmul, oneDNN's packed
    inner product, onnxruntime's MLAS for fp32 on a CPU; torch.matmul on CUDA), each kernel's rate the best of
    `repeats` rounds in which every kernel runs one GEMM, the order alternating, after two warm-up calls. The
    GEMM is square, `gemm_size(device)` by default (smaller sizes run below the hardware's rate).

    torch's default BLAS is not always the hardware's rate: on a Zen 4 EPYC MKL runs fp32 GEMMs at about half
    of MLAS's rate, so a share of MKL's rate is not a share of what the CPU can do."""
    kernels, notes = gemm_kernels(device, dtype, size)
    for fn in kernels.values():
        for _ in range(2):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in kernels}
    names = list(kernels)
    for r in range(max(1, repeats)):
        for k in names if r % 2 == 0 else names[::-1]:
            samples[k].append(timed(kernels[k], 1, device))
    n = size or gemm_size(device)
    flop = 2.0 * n**3
    rates = {k: flop / min(s) / 1e9 for k, s in samples.items()}
    best = max(rates, key=rates.__getitem__)
    dname = {torch.float32: "fp32", torch.bfloat16: "bf16"}[dtype]
    return GemmRate(rates[best], best, dname, rates, notes, size=n)


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

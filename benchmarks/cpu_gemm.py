"""The CPU GEMM path (vitkit.layers.cpu_gemm): what it gives over torch's default BLAS, paired in one process.

Four parts, each timed interleaved round by round (every variant once per round, the order alternating), with
the median of the per-round ratios reported, so drift on a shared machine hits all variants alike:
1. The hardware's rate: fp32 and bf16 GEMM at 2048x2048 by torch.mm (torch's default BLAS: MKL on x86),
   oneDNN's packed inner product, and onnxruntime's MatMul (MLAS; fp32 only) when onnxruntime and onnx are
   installed. The best of them is the denominator for "% of the hardware's rate".
2. The Linear-layer GEMMs of ViT-S at batch 32 (6304 rows): `F.linear` against vitkit's oneDNN path, forward
   (x @ W^T), input gradient (grad_out @ W) and weight gradient (grad_out^T @ x), fp32 and bf16, in GFLOP/s;
   and what "auto" chooses for each. For the weight gradient also oneDNN's backward-weights primitive
   (`aten.mkldnn_linear_backward_weights`, its operands copied into oneDNN's layout as it requires): in fp32
   "auto" takes the faster of it and the inner product as its oneDNN candidate.
3. ViT-S inference at batch 32: vitkit with the path ("auto", the default), vitkit without it ("off") and timm,
   the same weights, in img/s.
4. A ViT-S training step (forward + backward + AdamW), the same three.

Usage
    OMP_NUM_THREADS=2 python benchmarks/cpu_gemm.py --threads 2 --markdown /tmp/cpu_gemm.md   # several minutes
    python benchmarks/cpu_gemm.py --smoke        # tiny shapes, one round: seconds (run by the tests)
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from _common import (
    add_allocator_argument,
    apply_allocator,
    gemm_kernels,
    machine_line,
    markdown_report,
    publish,
    torch_matmul_name,
)

import vitkit
from vitkit.compat import make_torchvision_importable
from vitkit.layers import cpu_gemm
from vitkit.layers import linear as vlinear

make_torchvision_importable()  # must precede `import timm` on a CPU-only torch
import timm  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
# ViT-S (embed 384, MLP 1536) Linear layers: (name, in, out)
VIT_S_LINEARS = [("qkv", 384, 1152), ("proj", 384, 384), ("fc1", 384, 1536), ("fc2", 1536, 384)]
_VIT_SMOKE = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}


def paired(fns: dict[str, Callable[[], object]], rounds: int, min_time: float, warmup: int) -> dict[str, list[float]]:
    """Seconds per call of each fn, one sample per round, the order alternating between rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    once = []
    for fn in fns.values():
        t0 = time.perf_counter()
        fn()
        once.append(time.perf_counter() - t0)
    iters = max(1, round(min_time / max(max(once), 1e-6)))
    names = list(fns)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t0 = time.perf_counter()
            for _ in range(iters):
                fns[n]()
            samples[n].append((time.perf_counter() - t0) / iters)
    return samples


def ratio(samples: dict[str, list[float]], num: str, den: str) -> float:
    """Median over rounds of time[den] / time[num]: > 1 means `num` is faster."""
    return statistics.median(d / n for n, d in zip(samples[num], samples[den]))


def med(samples: list[float]) -> float:
    return statistics.median(samples)


# --------------------------------------------------------------------------- 1. the hardware's rate
def hardware_rate(args) -> list[dict]:
    """Every kernel of `gemm_kernels` (_common: torch.matmul, oneDNN packed, MLAS for fp32) on one square GEMM,
    timed paired; GFLOP/s from the median of the rounds."""
    n = args.square
    rows = []
    for dname in args.dtypes:
        kernels, notes = gemm_kernels("cpu", DTYPES[dname], n)
        for note in notes:
            print(note)
        default = torch_matmul_name("cpu", DTYPES[dname])  # reported as what it is here: torch's default BLAS
        fns = {("torch.mm (default BLAS)" if k == default else k): fn for k, fn in kernels.items()}
        samples = paired(fns, args.rounds, args.min_time, args.warmup)
        flop = 2.0 * n**3
        for name, s in samples.items():
            rows.append({"dtype": dname, "kernel": name, "GFLOP/s": flop / med(s) / 1e9})
    return rows


# --------------------------------------------------------------------------- 2. ViT-S GEMMs
def gemm_rows(args) -> list[dict]:
    rows_n = args.rows
    out = []
    for dname in args.dtypes:
        dtype = DTYPES[dname]
        for lname, fin, fout in args.linears:
            g = torch.Generator().manual_seed(fin * fout)
            x = torch.randn(rows_n, fin, generator=g).to(dtype)
            w = torch.randn(fout, fin, generator=g).to(dtype)
            go = torch.randn(rows_n, fout, generator=g).to(dtype)
            flop = 2.0 * rows_n * fin * fout
            bucket = vlinear._bucket(rows_n)
            pw = vlinear.packed_weight(w, dtype, False, bucket)
            pwt = vlinear.packed_weight(w, dtype, True, bucket)
            w32 = w.float()  # the primitive's weight argument: fp32, for the output's dtype only
            for role, plain, fast in (
                ("fwd", lambda x=x, w=w: F.linear(x, w), lambda x=x, p=pw: vlinear._onednn_linear(x, p, None)),
                ("dgrad", lambda go=go, w=w: torch.mm(go, w), lambda go=go, p=pwt: vlinear._onednn_linear(go, p, None)),
                ("wgrad", lambda go=go, x=x: go.t().mm(x), lambda go=go, x=x: vlinear._onednn_wgrad(go, x)),
            ):
                fns = {"plain": plain, "onednn": fast}
                if role == "wgrad":
                    primitive = vlinear.WGRAD_KERNELS["backward_weights"]
                    fns["primitive"] = lambda go=go, x=x, w=w32, f=primitive: f(go, x, w)
                s = paired(fns, args.rounds, args.min_time, args.warmup)
                with cpu_gemm("auto"):
                    auto = vlinear.use_onednn(role, dtype, rows_n, fin, fout)
                    if auto and role == "wgrad":
                        auto = vlinear.wgrad_kernel(dtype, rows_n, fin, fout)
                out.append(
                    {
                        "dtype": dname,
                        "layer": f"{lname} {fin}->{fout}",
                        "GEMM": role,
                        "F.linear GFLOP/s": flop / med(s["plain"]) / 1e9,
                        "oneDNN GFLOP/s": flop / med(s["onednn"]) / 1e9,
                        "oneDNN/F.linear": ratio(s, "onednn", "plain"),
                        "bwd-weights primitive/F.linear": ratio(s, "primitive", "plain") if "primitive" in s else "",
                        "auto takes": {True: "oneDNN", False: "plain"}.get(auto, f"oneDNN ({auto})"),
                    }
                )
    return out


# --------------------------------------------------------------------------- 3, 4. ViT-S models
def build_models(args) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    kw = _VIT_SMOKE if args.smoke else {}
    name = "vit_tiny_patch16_224" if args.smoke else "vit_small_patch16_224"
    tm = timm.create_model(name, pretrained=False, drop_path_rate=0.0, **kw)
    vm = vitkit.create_model(name, pretrained="", **kw)
    torch.nn.init.trunc_normal_(tm.head.weight, std=0.02)  # a nonzero head: the equality check below bites
    vm.load_state_dict(tm.state_dict(), strict=True)
    return tm, vm


def model_rows(args) -> list[dict]:
    tm, vm = build_models(args)
    size = tm.patch_embed.img_size
    x = torch.randn(args.batch, 3, *size, generator=torch.Generator().manual_seed(1))
    rows = []
    tm.eval(), vm.eval()
    with torch.inference_mode():
        ref = tm(x)
        diffs = {}
        for mode in ("auto", "off", "onednn"):
            with cpu_gemm(mode):
                diffs[mode] = (vm(x) - ref).abs().max().item()

    def infer(model, mode=None):
        def run():
            with torch.inference_mode(), cpu_gemm(mode or "off"):
                model(x)

        return run

    s = paired(
        {"vitkit auto": infer(vm, "auto"), "vitkit off": infer(vm, "off"), "timm": infer(tm)},
        args.rounds,
        args.min_time,
        args.warmup,
    )
    rows.append(_model_row("inference", args.batch, s, diffs))

    y = torch.randint(0, tm.num_classes, (args.batch,), generator=torch.Generator().manual_seed(2))
    tm.train(), vm.train()
    opts = {id(m): torch.optim.AdamW(m.parameters(), lr=1e-4) for m in (tm, vm)}

    def step(model, mode=None):
        opt = opts[id(model)]

        def run():
            with cpu_gemm(mode or "off"):
                F.cross_entropy(model(x), y).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        return run

    s = paired(
        {"vitkit auto": step(vm, "auto"), "vitkit off": step(vm, "off"), "timm": step(tm)},
        max(1, args.train_rounds),
        0.0,
        1,
    )
    rows.append(_model_row("training step", args.batch, s, None))
    return rows


def _model_row(what: str, batch: int, s: dict[str, list[float]], diffs: dict | None) -> dict:
    row = {"what": what, "batch": batch}
    for name in s:
        row[f"{name} img/s"] = batch / med(s[name])
    row["auto/off"] = ratio(s, "vitkit auto", "vitkit off")
    row["auto/timm"] = ratio(s, "vitkit auto", "timm")
    row["off/timm"] = ratio(s, "vitkit off", "timm")
    row["max abs diff vs timm"] = "" if diffs is None else " ".join(f"{k} {v:.1e}" for k, v in diffs.items())
    return row


# --------------------------------------------------------------------------- report
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--batch", type=int, default=None, help="images per batch (default 32)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds for GEMMs and inference (default 7)")
    p.add_argument("--train-rounds", type=int, default=None, help="interleaved training-step rounds (default 4)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample (default 0.3)")
    p.add_argument("--rows", type=int, default=None, help="rows of the ViT-S GEMMs (default 6304: batch 32)")
    p.add_argument("--skip", nargs="*", default=[], choices=["hardware", "gemm", "models"])
    add_allocator_argument(p)
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one round (numbers meaningless)")
    p.add_argument("--markdown", metavar="PATH")
    args = p.parse_args(argv)
    args.batch = args.batch or (2 if args.smoke else 32)
    args.rounds = args.rounds or (1 if args.smoke else 7)
    args.train_rounds = args.train_rounds or (1 if args.smoke else 4)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.smoke else 0.3)
    args.warmup = 1 if args.smoke else 2
    args.square = 64 if args.smoke else 2048
    args.rows = args.rows or (2 * 17 if args.smoke else 32 * 197)
    args.linears = [("fc1", 32, 128), ("fc2", 128, 32)] if args.smoke else VIT_S_LINEARS
    return args


def fmt(v) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def main(argv=None) -> dict[str, list[dict]]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = apply_allocator(args)
    if "bf16" in args.dtypes and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        args.dtypes = [d for d in args.dtypes if d != "bf16"]
        print("bf16 skipped: oneDNN has no bf16 inner product on this CPU (vitkit's Linear takes F.linear there)")
    started = f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    result = {"hardware": [], "gemm": [], "models": []}
    if "hardware" not in args.skip:
        result["hardware"] = hardware_rate(args)
    if "gemm" not in args.skip:
        result["gemm"] = gemm_rows(args)
    if "models" not in args.skip:
        result["models"] = model_rows(args)
    lines = [
        f"date: {started}" + ("; SMOKE RUN: numbers meaningless" if args.smoke else ""),
        machine_line("cpu") + f"; {torch.get_num_threads()} threads; torch {torch.__version__}; {allocator}; "
        f"load average at start {load:.2f}",
        f"{args.rounds} interleaved rounds (training: {args.train_rounds}); ratios are medians of per-round ratios",
        "command: " + " ".join([os.path.basename(sys.executable), *sys.argv]),
    ]
    parts = []
    if result["hardware"]:
        best = {d: max(r["GFLOP/s"] for r in result["hardware"] if r["dtype"] == d) for d in args.dtypes}
        for r in result["hardware"]:
            r["% of best"] = 100.0 * r["GFLOP/s"] / best[r["dtype"]]
        cols = ["dtype", "kernel", "GFLOP/s", "% of best"]
        parts.append(
            f"### The hardware's rate: GEMM {args.square}x{args.square}\n\n"
            + markdown_report("cpu_gemm.py", lines, cols, [[fmt(r[c]) for c in cols] for r in result["hardware"]])
        )
    if result["gemm"]:
        cols = [
            "dtype",
            "layer",
            "GEMM",
            "F.linear GFLOP/s",
            "oneDNN GFLOP/s",
            "oneDNN/F.linear",
            "bwd-weights primitive/F.linear",
            "auto takes",
        ]
        parts.append(
            f"### ViT-S Linear GEMMs, {args.rows} rows\n\n"
            + "\n".join(
                markdown_report(
                    "cpu_gemm.py", lines, cols, [[fmt(r[c]) for c in cols] for r in result["gemm"]], left=3
                ).split("\n")[len(lines) + 2 :]
            )
        )
    if result["models"]:
        cols = list(result["models"][0])
        parts.append(
            f"### {'Tiny ViT' if args.smoke else 'ViT-S'}: vitkit with (auto) and without (off) the path, "
            "and timm, the same weights\n\n"
            + "\n".join(
                markdown_report(
                    "cpu_gemm.py", lines, cols, [[fmt(r[c]) for c in cols] for r in result["models"]], left=1
                ).split("\n")[len(lines) + 2 :]
            )
        )
    publish("\n".join(parts), args.markdown)
    return result


if __name__ == "__main__":
    main()

"""Fused SDPA vs eager softmax attention, per dtype and sequence length: the data behind
`SDPA_MIN_SEQ_LEN` in vitkit/layers/attention.py (the "auto" attention policy).

For each (dtype, N) the script times, interleaved round by round, the two computations
`vitkit.layers.Attention` can run (inference, no mask):
    sdpa    F.scaled_dot_product_attention(q, k, v)
    eager   softmax((q * d^-0.5) k^T) v            (ViT paper eq. 5-7, appendix A)
on q, k, v of shape (batch, heads, N, head_dim) -- by default ViT-S's 6 heads of 64 and batch 8,
under bf16 autocast semantics (inputs already bf16) or fp32. It checks that both paths agree, then
prints the table and, per dtype, the shortest N from which SDPA is faster at every longer measured
N: the `SDPA_MIN_SEQ_LEN` entry for this machine, in Python syntax, to paste into attention.py.
The default lengths are the token counts of ViT at common sizes: 50 (B/32 at 224), 65 (S/16 at 128),
145 (B/16 at 192), 197 (S/16 at 224), 257 (S/14 at 224), 401 (S/16 at 320), 577 (S/16 at 384),
785 (S/8 at 224), 1025 (S/8 at 256).

Usage
    OMP_NUM_THREADS=2 python benchmarks/attention_paths.py --threads 2     # ~3 min
    OMP_NUM_THREADS=2 python benchmarks/attention_paths.py --threads 2 --train   # forward + backward
    python benchmarks/attention_paths.py --device cuda
    python benchmarks/attention_paths.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys

import torch
import torch.nn.functional as F
from _common import add_allocator_argument, apply_allocator, interleaved, machine_line, markdown_report, publish

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
DEFAULT_LENGTHS = [50, 65, 145, 197, 257, 401, 577, 785, 1025]


def eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The eager path of vitkit.layers.Attention (same ops, same order)."""
    attn = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    return attn.softmax(dim=-1) @ v


def measure(dtype_name: str, n: int, args) -> dict:
    dtype = DTYPES[dtype_name]
    g = torch.Generator().manual_seed(n)
    q, k, v = (torch.randn(args.batch, args.heads, n, args.head_dim, generator=g).to(args.device, dtype)
               for _ in range(3))
    # as inside a model under bf16 autocast: autocast decides which ops run in bf16 and which in fp32
    def amp():
        return torch.autocast(args.device, dtype=torch.bfloat16, enabled=dtype is torch.bfloat16)

    with torch.inference_mode(), amp():
        diff = (F.scaled_dot_product_attention(q, k, v).float() - eager(q, k, v).float()).abs().max().item()

    if args.train:  # forward + backward, as in a training step
        q, k, v = (t.detach().requires_grad_(True) for t in (q, k, v))
        grad = torch.randn(q.shape, generator=g).to(args.device, dtype)

        def timed(fn):
            def run():
                with amp():
                    out = fn(q, k, v)
                torch.autograd.backward(out, grad.to(out.dtype))
                q.grad = k.grad = v.grad = None
            return run
    else:
        def timed(fn):
            def run():
                with torch.inference_mode(), amp():
                    fn(q, k, v)
            return run
    run_sdpa, run_eager = timed(F.scaled_dot_product_attention), timed(eager)

    secs = interleaved({"sdpa": run_sdpa, "eager": run_eager}, args, args.warmup, args.rounds)
    return {"dtype": dtype_name, "N": n, "sdpa ms": 1e3 * secs["sdpa"], "eager ms": 1e3 * secs["eager"],
            "eager/sdpa time": secs["eager"] / secs["sdpa"], "max abs diff": diff}


def threshold(rows: list[dict], dtype_name: str) -> int | None:
    """Shortest measured N from which SDPA wins at every longer measured N (None: eager never loses)."""
    mine = sorted((r for r in rows if r["dtype"] == dtype_name), key=lambda r: r["N"])
    best = None
    for r in reversed(mine):
        if r["eager ms"] < r["sdpa ms"]:
            break
        best = r["N"]
    return best


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=None, help="sequence lengths N")
    p.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 10)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample (default 0.3)")
    p.add_argument("--train", action="store_true", help="time forward + backward (a training step) instead of inference")
    add_allocator_argument(p)
    p.add_argument("--smoke", action="store_true", help="two short lengths, one round (numbers meaningless)")
    p.add_argument("--markdown", metavar="PATH")
    args = p.parse_args(argv)
    if args.lengths is None:
        args.lengths = [16, 40] if args.smoke else DEFAULT_LENGTHS
    if args.smoke:
        args.batch, args.heads, args.head_dim = 2, 2, 16
    args.rounds = args.rounds or (1 if args.smoke else 10)
    args.min_time = args.min_time if args.min_time is not None else (0.0 if args.smoke else 0.3)
    args.warmup = 1 if args.smoke else 3
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = apply_allocator(args)
    rows = []
    for dtype_name in args.dtypes:
        for n in args.lengths:
            rows.append(measure(dtype_name, n, args))
            r = rows[-1]
            print(f"{dtype_name} N={n}: sdpa {r['sdpa ms']:.3f} ms, eager {r['eager ms']:.3f} ms "
                  f"(eager/sdpa {r['eager/sdpa time']:.2f}), max |diff| {r['max abs diff']:.2e}", flush=True)
            tol = 1e-4 if dtype_name == "fp32" else 5e-2
            if r["max abs diff"] > tol:
                raise SystemExit(f"{dtype_name} N={n}: SDPA and eager attention differ by {r['max abs diff']:.3g}")
    lines = [f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
             + ("; SMOKE RUN: numbers meaningless" if args.smoke else ""),
             machine_line(args.device) + f"; {torch.get_num_threads()} threads; torch {torch.__version__}; {allocator}",
             f"q, k, v: batch {args.batch}, {args.heads} heads of {args.head_dim}; "
             + ("training (forward + backward)" if args.train else "inference"),
             "command: " + " ".join([os.path.basename(sys.executable), *sys.argv])]
    cols = ["dtype", "N", "sdpa ms", "eager ms", "eager/sdpa time", "max abs diff"]
    cells = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in cols] for r in rows]
    out = markdown_report("attention_paths.py", lines, cols, cells, left=1).rstrip("\n").split("\n")
    table, mode = {}, "train" if args.train else "infer"
    for dtype_name in args.dtypes:
        t = threshold(rows, dtype_name)
        if t is None:
            table[dtype_name] = f"eager was faster at the longest N measured ({max(args.lengths)}): measure longer"
        elif t > min(args.lengths):
            table[dtype_name] = (f'("{args.device}", torch.{DTYPES[dtype_name]}, "{mode}"): {t},'
                                 .replace("torch.torch.", "torch."))
        else:
            table[dtype_name] = "SDPA at every measured N: no entry needed"
    out += ["", f"Suggested `SDPA_MIN_SEQ_LEN` entries (vitkit/layers/attention.py) for heads of {args.head_dim}",
            f"(the crossing moves with the head width; an entry for one width is keyed (..., \"{mode}\", "
            f"{args.head_dim})):", ""]
    out += [f"- {d}: `{v}`" for d, v in table.items()]
    publish("\n".join(out) + "\n", args.markdown)
    return rows


if __name__ == "__main__":
    main()

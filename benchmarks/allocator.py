"""Training-step (or inference) speed under the CPU allocator settings: glibc's defaults vs vitkit.allocator.

A malloc setting belongs to the whole process and cannot be undone, so every (setting, repeat)
runs in a fresh child process; the settings alternate in order from one repeat to the next. Each
child builds the model (random weights, the same seed), runs `--warmup` fused-AdamW training steps
on a random batch (with `--infer`: eval-mode forward passes under `torch.inference_mode`, what
`vitkit eval` and `vitkit predict` run), then times `--steps` more and counts the minor page faults
they take (`getrusage`: the kernel mapping and zeroing a 4 KiB page for the process). Settings:

    glibc   the C library's defaults (what timm or transformers get in a plain script)
    reuse   vitkit.allocator.reuse_freed_memory(): freed blocks up to 1 GiB stay for reuse
            (what `vitkit train`, `pretrain`, `eval` and `predict` apply on CPU)
    kept    reuse, and the gradients allocated once and zeroed in place (vitkit.allocator.KeptGradients),
            as `vitkit train` and `vitkit pretrain` run on CPU (not in the default settings)
    64k     M_MMAP_THRESHOLD fixed at 64 KiB: every block above it is its own mapping, handed back
            on free (each big block its own mapping: the worst case)

The ratios are against glibc's defaults, the reference a user of the other libraries runs with.

Usage
    OMP_NUM_THREADS=2 python benchmarks/allocator.py --threads 2                      # ViT-S b32, ~5 min
    OMP_NUM_THREADS=2 python benchmarks/allocator.py --threads 2 --model swin_tiny_patch4_window7_224
    OMP_NUM_THREADS=2 python benchmarks/allocator.py --threads 2 --infer --steps 10   # inference, batch 32
    python benchmarks/allocator.py --smoke
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import os
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from _common import child_json, machine_line, markdown_report, publish

SETTINGS = ["glibc", "reuse", "kept", "64k"]
DEFAULT_SETTINGS = ["glibc", "reuse", "64k"]


def child(args) -> None:
    from vitkit.allocator import M_MMAP_THRESHOLD, KeptGradients, reuse_freed_memory

    if args.setting in ("reuse", "kept"):
        reuse_freed_memory()
    elif args.setting == "64k":
        ctypes.CDLL("libc.so.6").mallopt(M_MMAP_THRESHOLD, 64 << 10)  # the mmap threshold alone, fixed
    import vitkit

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    overrides = {"img_size": 32, "depth": 2} if args.smoke else {}
    model = vitkit.create_model(args.model, **overrides).train(not args.infer)
    size = vitkit.layers.to_2tuple(model.config.img_size)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    x = torch.randn(args.batch, model.config.in_chans, *size)
    y = torch.randint(0, model.num_classes, (args.batch,))
    kept = KeptGradients(model.parameters()) if args.setting == "kept" and not args.infer else None

    def step():
        if args.infer:
            with torch.inference_mode():
                model(x)
            return
        if kept is None:
            opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        if kept is not None:
            kept.before_step()
        opt.step()
        if kept is not None:
            kept.zero_grad()

    for _ in range(args.warmup):
        step()
    times, faults = [], []
    for _ in range(args.steps):
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    print(json.dumps({"img_s": args.batch / statistics.median(times), "faults": statistics.median(faults)}))


def run_child(setting: str, args) -> dict:
    cmd = [__file__, "--child", "--setting", setting, "--model", args.model, "--batch", str(args.batch),
           "--threads", str(args.threads), "--steps", str(args.steps), "--warmup", str(args.warmup)]
    return child_json(cmd + (["--smoke"] if args.smoke else []) + (["--infer"] if args.infer else []), setting)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--model", default="vit_small_patch16_224", help="a registered vitkit name")
    p.add_argument("--batch", type=int, default=None, help="batch (default 32)")
    p.add_argument("--infer", action="store_true", help="time inference (eval, inference_mode) instead of training")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=None, help="timed steps per process (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2)")
    p.add_argument("--repeats", type=int, default=None, help="processes per setting (default 2)")
    p.add_argument("--settings", nargs="+", default=DEFAULT_SETTINGS, choices=SETTINGS)
    p.add_argument("--smoke", action="store_true",
                   help="a 2-block model at 32x32, batch 2: seconds, numbers meaningless")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--setting", default="glibc", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for key, full, smoke in (("batch", 32, 2), ("steps", 5, 1), ("warmup", 2, 1), ("repeats", 2, 1)):
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return []
    samples: dict[str, list[dict]] = {s: [] for s in args.settings}
    for rep in range(args.repeats):
        for setting in (args.settings if rep % 2 == 0 else args.settings[::-1]):
            r = run_child(setting, args)
            samples[setting].append(r)
            print(f"{setting} (process {rep + 1}/{args.repeats}): {r['img_s']:.2f} img/s, "
                  f"{r['faults']:,.0f} page faults per step", flush=True)
    ref = statistics.median(r["img_s"] for r in samples["glibc"]) if "glibc" in samples else None
    rows = []
    for setting, rs in samples.items():
        ips = statistics.median(r["img_s"] for r in rs)
        rows.append({"setting": setting, "img/s": ips, "per process": ", ".join(f"{r['img_s']:.2f}" for r in rs),
                     "page faults per step": statistics.median(r["faults"] for r in rs),
                     "vs glibc": ips / ref if ref else None})
    lines = [f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
             + ("; SMOKE RUN: numbers meaningless" if args.smoke else ""),
             machine_line("cpu") + f"; {args.threads} threads; torch {torch.__version__}",
             f"{args.model}, " + ("inference (eval, inference_mode)" if args.infer else
                                  "training step (forward, cross-entropy, backward, fused AdamW)")
             + f" at batch {args.batch}; {args.warmup} + {args.steps} steps per process, "
             f"{args.repeats} process(es) per setting",
             "command: " + " ".join([os.path.basename(sys.executable), *sys.argv])]
    cols = ["setting", "img/s (median)", "per process", "page faults per step", "vs glibc"]
    cells = [[r["setting"], f"{r['img/s']:.2f}", r["per process"], f"{r['page faults per step']:,.0f}",
              f"{r['vs glibc']:.2f}" if r["vs glibc"] else "-"] for r in rows]
    publish(markdown_report("allocator.py", lines, cols, cells, left=1), args.markdown)
    return rows


if __name__ == "__main__":
    main()

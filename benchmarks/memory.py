"""Peak memory of a training step, with and without gradient checkpointing, vitkit vs timm.

Each (library, checkpointing) case runs in a fresh Python process, so one case's freed memory
cannot hide another's: the child imports torch, vitkit and timm, notes its resident set (RSS),
builds the model (random weights), and runs two AdamW steps on a random batch (the first
allocates the optimizer's moments). The gradients are handled as `vitkit train` handles them:
on CPU with freed memory reused, allocated once and zeroed in place (`vitkit.allocator.
KeptGradients`), otherwise set to None after each step (`--grads kept|fresh` to choose); both
libraries alike. Reported: the process's peak RSS above the
post-import level (`ru_maxrss`: weights + gradients + AdamW moments + the activations kept for
the backward pass, at their peak, plus what the C allocator holds of freed memory), or on CUDA
`torch.cuda.max_memory_allocated`. On CPU one more process per case counts the peak bytes of
live tensors (`_common.LiveTensorPeak`, from before the model is built): RSS moves from process
to process with where freed blocks land; the tensor count does not. Gradient checkpointing
(`model.set_grad_checkpointing()`, the same call in vitkit and timm) keeps only each block's
input and recomputes the block in the backward pass (Chen et al. 2016, "Training deep nets with
sublinear memory cost"), trading about one extra forward pass for activation memory.

Usage
    python benchmarks/memory.py --threads 2                          # ViT-S, batch 64, 3 repeats: ~8 min
    python benchmarks/memory.py --models vit_small_patch16_224 swin_tiny_patch4_window7_224 cvt_13 mixer_b16_224
    python benchmarks/memory.py --allocator glibc                   # glibc defaults, gradients set to None
    python benchmarks/memory.py --device cuda
    python benchmarks/memory.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import statistics
import sys

import torch
from _common import (
    LiveTensorPeak,
    add_allocator_argument,
    apply_allocator,
    child_json,
    machine_line,
    markdown_report,
    publish,
    rss_bytes,
)

MiB = 2**20


def child(args) -> None:
    """One case, in this process: print a JSON line with the memory numbers."""
    import torch.nn.functional as F

    import vitkit
    from vitkit.allocator import KeptGradients
    from vitkit.compat import make_torchvision_importable

    if args.threads:
        torch.set_num_threads(args.threads)
    make_torchvision_importable()
    apply_allocator(args)
    import timm  # in every case, so that both libraries start from the same imported code

    def build_and_train() -> torch.nn.Module:
        torch.manual_seed(0)
        if args.lib == "timm":
            model = timm.create_model(args.model, pretrained=False, drop_path_rate=0.0)
        else:
            model = vitkit.create_model(args.model)
        model.set_grad_checkpointing(args.ckpt)
        model.to(args.device).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        kept = KeptGradients(model.parameters()) if args.grads == "kept" else None
        c = model.pretrained_cfg if args.lib == "timm" else None
        size = c["input_size"] if c else (model.config.in_chans, *vitkit.layers.to_2tuple(model.config.img_size))
        x = torch.randn(args.batch, *size, device=args.device)
        y = torch.randint(0, model.num_classes, (args.batch,), device=args.device)
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            result["base_cuda"] = torch.cuda.memory_allocated()
        for _ in range(2):
            out = model(x)
            out = out if isinstance(out, tuple) else (out,)
            sum(F.cross_entropy(o, y) for o in out).backward()
            if kept is not None:
                kept.before_step()
            opt.step()
            if kept is not None:
                kept.zero_grad()
            else:
                opt.zero_grad(set_to_none=True)
        return model

    result: dict = {}
    if args.live:  # live tensor bytes, counted by torch's allocator; the profiler's bookkeeping would blur the RSS
        with LiveTensorPeak() as live:
            model = build_and_train()
        result["live_mib"] = live.peak / MiB
    else:
        base = rss_bytes()
        model = build_and_train()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
        result["rss_mib"] = (peak - base) / MiB
    result["params"] = sum(p.numel() for p in model.parameters())
    if args.device == "cuda":
        torch.cuda.synchronize()
        result["cuda_mib"] = (torch.cuda.max_memory_allocated() - result.pop("base_cuda")) / MiB
    print(json.dumps(result))


def run_case(model: str, lib: str, ckpt: bool, args, live: bool = False) -> dict:
    cmd = [__file__, "--child", "--lib", lib, "--model", model, "--batch", str(args.batch), "--device", args.device,
           "--allocator", args.allocator, "--grads", args.grads] + (["--ckpt"] if ckpt else []) + (["--live"] if live else []) \
        + (["--threads", str(args.threads)] if args.threads else [])
    return child_json(cmd, f"{lib} {model} (checkpointing {ckpt}{', live tensors' if live else ''})")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None, help="registered names (default vit_small_patch16_224)")
    p.add_argument("--libs", nargs="+", default=["vitkit", "timm"], choices=["vitkit", "timm"])
    p.add_argument("--batch", type=int, default=None, help="training batch (default 64)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=3,
                   help="fresh processes per case; the median is reported (peak RSS moves by tens of MiB "
                        "from process to process with the allocator's state; default 3)")
    add_allocator_argument(p)
    p.add_argument("--grads", default=None, choices=["kept", "fresh"],
                   help="kept = the gradients allocated once and zeroed in place (vitkit.allocator.KeptGradients); "
                        "fresh = zero_grad(set_to_none=True), allocated anew in every backward pass. The same for "
                        "both libraries. Default: as `vitkit train` runs, kept on CPU with --allocator reuse, "
                        "fresh otherwise")
    p.add_argument("--smoke", action="store_true", help="ViT-Ti at batch 2 (numbers meaningless)")
    p.add_argument("--markdown", metavar="PATH")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--lib", default="vitkit", help=argparse.SUPPRESS)
    p.add_argument("--model", default=None, help=argparse.SUPPRESS)
    p.add_argument("--ckpt", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--live", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-live", dest="measure_live", action="store_false",
                   help="skip the live-tensor peak (CPU; one more process per case)")
    args = p.parse_args(argv)
    if args.grads is None:
        args.grads = "kept" if args.device == "cpu" and args.allocator == "reuse" else "fresh"
    if args.batch is None:
        args.batch = 2 if args.smoke else 64
    if args.smoke:
        args.repeats = 1
    if args.models is None:
        args.models = ["vit_tiny_patch16_224"] if args.smoke else ["vit_small_patch16_224"]
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.child:
        child(args)
        return []
    key = "cuda_mib" if args.device == "cuda" else "rss_mib"
    live_too = args.device == "cpu" and args.measure_live  # on CUDA the max allocated already counts tensors
    rows = []
    for model in args.models:
        samples: dict[tuple[str, bool], list[float]] = {}
        libs = list(args.libs)
        for rep in range(args.repeats):
            for lib in (libs if rep % 2 == 0 else libs[::-1]):  # alternate which library goes first
                for ckpt in (False, True):
                    try:
                        value = run_case(model, lib, ckpt, args)[key]
                    except SystemExit as e:
                        if lib == "timm" and "Unknown model" in str(e):  # e.g. CvT: timm has none
                            libs.remove(lib)
                            break
                        raise
                    samples.setdefault((lib, ckpt), []).append(value)
                    print(f"{model} {lib} checkpointing={ckpt} (repeat {rep + 1}/{args.repeats}): {value:.0f} MiB",
                          flush=True)
        live: dict[tuple[str, bool], float] = {}
        if live_too:  # counted, not sampled: the same in every process, so one each
            for lib in libs:
                for ckpt in (False, True):
                    live[lib, ckpt] = run_case(model, lib, ckpt, args, live=True)["live_mib"]
                    print(f"{model} {lib} checkpointing={ckpt}: {live[lib, ckpt]:.0f} MiB of live tensors", flush=True)
        res = {k: statistics.median(v) for k, v in samples.items()}
        for ckpt in (False, True):
            v, t = res.get(("vitkit", ckpt)), res.get(("timm", ckpt))
            lv, lt = live.get(("vitkit", ckpt)), live.get(("timm", ckpt))
            spread = {lib: samples[lib, ckpt] for lib in ("vitkit", "timm") if (lib, ckpt) in samples}
            rows.append({"model": model, "checkpointing": "yes" if ckpt else "no", "vitkit MiB": v, "timm MiB": t,
                         "vitkit/timm": v / t if v and t else None,
                         "vitkit vs no checkpointing": v / res["vitkit", False] if v and ckpt else None,
                         "range MiB": "; ".join(f"{lib} {min(x):.0f}-{max(x):.0f}" for lib, x in spread.items()),
                         "vitkit live MiB": lv, "timm live MiB": lt, "live vitkit/timm": lv / lt if lv and lt else None,
                         "live vs no checkpointing": lv / live["vitkit", False] if lv and ckpt else None})
    what = "CUDA max allocated" if args.device == "cuda" else "peak RSS above the post-import level"
    lines = [f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
             + ("; SMOKE RUN: numbers meaningless" if args.smoke else ""),
             machine_line(args.device) + f"; torch {torch.__version__}; {apply_allocator(args)} (in each child)",
             f"one process per case; training step (AdamW) at batch {args.batch}, gradients {args.grads}"
             + (" (allocated once, zeroed in place)" if args.grads == "kept" else " (set to None after each step)")
             + f"; {what}"
             + (f"; median of {args.repeats} processes per case, libraries alternating" if args.repeats > 1 else ""),
             "command: " + " ".join([os.path.basename(sys.executable), *sys.argv])]
    if live_too:
        lines.append("live = the peak of the bytes of live tensors, counted by torch's CPU allocator from before the "
                     "model is built (one process per case; the same in every process), whatever the C allocator "
                     "keeps")
    cols = ["model", "checkpointing", "vitkit MiB", "timm MiB", "vitkit/timm", "vitkit vs no checkpointing"]
    if args.repeats > 1:
        cols.append("range MiB")
    if live_too:
        cols += ["vitkit live MiB", "timm live MiB", "live vitkit/timm", "live vs no checkpointing"]

    def cell(v):
        return "-" if v is None else (v if isinstance(v, str) else f"{v:.2f}" if v < 10 else f"{v:.0f}")

    publish(markdown_report("memory.py", lines, cols, [[cell(r[c]) for c in cols] for r in rows]), args.markdown)
    return rows


if __name__ == "__main__":
    main()

"""The GPU check's timing: vitkit against timm and Hugging Face transformers on CUDA, ViT-B/16 and Swin-T.

Per model, one set of random weights is given to every library (suite.py's `build`: a transformers model that
vitkit loads through its converter, and timm gets vitkit's state dict) and their fp32 logits must agree (max
|diff| <= 1e-4, else the check stops) before anything is timed. Then, interleaved round by round with the
order alternating (suite.py's method; the median over rounds is reported):

    infer   eval(), torch.inference_mode(), autocast, images/s at --infer-batch
    train   forward + cross-entropy + backward + fused AdamW step (as `vitkit train` runs it), autocast,
            images/s at --train-batch, and the peak memory of one step (torch.cuda.max_memory_allocated)

in bf16 autocast by default (--precision fp32 for full precision, TF32 left at PyTorch's defaults). The table
gives each library's images/s and the ratios vitkit/timm and vitkit/transformers (> 1: vitkit is faster);
--json writes everything, with the machine, the versions and the logit differences.

    python benchmarks/gpu_check.py --json $OUT/gpu_check.json --markdown $OUT/gpu_check.md   # ~2 min on an H100
    python benchmarks/gpu_check.py --smoke --device cpu --json /tmp/g.json                   # seconds, numbers meaningless

benchmarks/gpu_check.sh runs it after the CUDA tests (docs/performance.md#gpu).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from _common import PeakMemory, interleaved, machine_line, write_atomic  # noqa: E402
from suite import (  # noqa: E402
    AUTOCAST_DTYPES,
    SWIN_SMOKE,
    SWIN_T,
    VIT_SMOKE,
    Family,
    autocast,
    bench_infer,
    build,
    check_same,
    train_outputs,
)

import vitkit  # noqa: E402

VIT_B = {
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "image_size": 224,
    "patch_size": 16,
    "layer_norm_eps": 1e-6,
    "num_labels": 1000,
}
MODELS = {
    "vit_b16": Family(
        "vit",
        "vit_base_patch16_224",
        "vit_base_patch16_224",
        ("ViTForImageClassification", "ViTConfig", VIT_B),
        smoke_hf=VIT_SMOKE,
    ),
    "swin_t": Family(
        "swin",
        "swin_tiny_patch4_window7_224",
        "swin_tiny_patch4_window7_224",
        ("SwinForImageClassification", "SwinConfig", SWIN_T),
        smoke_hf=SWIN_SMOKE,
    ),
}
LIBS = ("vitkit", "timm", "transformers")


@contextlib.contextmanager
def full_fp32():
    """Convolutions without TF32 (cuDNN may use it by default): the libraries' patch embeddings (a convolution
    here, a matmul there) then agree to fp32 rounding in the logit check."""
    before = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = before


def bench_train(models, img: int, batch: int, args) -> tuple[dict[str, float], dict[str, float]]:
    """(images/s, peak MiB of one step above what was in use before it) per library."""
    x = torch.randn(batch, 3, img, img, device=args.device)
    y = torch.randint(0, models["vitkit"].num_classes, (batch,), device=args.device)
    fns, peaks = {}, {}
    for lib, model in models.items():
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)

        def step(lib=lib, model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            with autocast(args):
                outs = train_outputs(lib, model, x)
            sum(F.cross_entropy(o.float(), y) for o in outs).backward()
            opt.step()

        step()  # the optimizer state exists before memory is measured
        fns[lib] = step
    for lib, fn in fns.items():
        with PeakMemory(args.device) as mem:
            fn()
        peaks[lib] = mem.peak / 2**20
    secs = interleaved(fns, args, args.warmup, args.rounds)
    for model in models.values():
        model.eval()
        model.zero_grad(set_to_none=True)
    return {lib: batch / s for lib, s in secs.items()}, peaks


def ratios(values: dict[str, float]) -> dict[str, float | None]:
    return {f"vitkit/{o}": (values["vitkit"] / values[o] if values.get(o) else None) for o in LIBS[1:]}


def table(results: list[dict]) -> tuple[list[str], list[list[str]]]:
    cols = ["model", "metric", *LIBS, "vitkit/timm", "vitkit/transformers"]
    rows = []
    for r in results:
        v = r["values"]
        cells = [f"{v[lib]:.0f}" if lib in v else "-" for lib in LIBS]
        rows.append([r["model"], r["metric"], *cells, *(f"{x:.3f}" if x else "-" for x in r["ratios"].values())])
    return cols, rows


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: only with --smoke")
    p.add_argument("--precision", default="bf16", choices=list(AUTOCAST_DTYPES), help="autocast dtype (fp32: none)")
    p.add_argument("--infer-batch", type=int, default=None, help="inference batch (default 256)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 128)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per setting (default 5)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample (default 0.5)")
    p.add_argument("--smoke", action="store_true", help="tiny models, one round: seconds, numbers meaningless")
    p.add_argument("--json", metavar="PATH", help="write the results as JSON to PATH")
    p.add_argument("--markdown", metavar="PATH", help="write the table (with the machine facts) to PATH")
    args = p.parse_args(argv)
    defaults = {"infer_batch": (2, 256), "train_batch": (2, 128), "rounds": (1, 5), "min_time": (0.0, 0.5)}
    for key, (smoke, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    args.warmup = 1 if args.smoke else 3
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(
            "no CUDA device: torch.cuda.is_available() is False (this check is for GPU machines; "
            "--smoke --device cpu exercises the script)"
        )
    if args.device == "cpu" and not args.smoke:
        p.error("--device cpu is for --smoke only: the CPU comparison is benchmarks/suite.py")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import timm
    import transformers

    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t0 = time.perf_counter()
    results, diffs = [], {}
    for key in args.models:
        fam = MODELS[key]
        img = fam.smoke_img if args.smoke else fam.img
        models = build(fam, args.smoke, args.device)
        with full_fp32():
            diffs[fam.vitkit] = check_same(fam, models, img, args.device)
        print(
            f"{fam.vitkit}{' (smoke size)' if args.smoke else ''}: {', '.join(models)}, "
            f"max |logit diff| {diffs[fam.vitkit]:.1e} (fp32)",
            flush=True,
        )
        ips = bench_infer(models, img, args.infer_batch, args)
        results.append({"model": fam.vitkit, "metric": f"infer b{args.infer_batch} img/s", "values": ips})
        print(
            f"  infer b{args.infer_batch}: " + ", ".join(f"{k} {v:.0f}" for k, v in ips.items()) + " img/s", flush=True
        )
        ips, peaks = bench_train(models, img, args.train_batch, args)
        results.append({"model": fam.vitkit, "metric": f"train b{args.train_batch} img/s", "values": ips})
        results.append({"model": fam.vitkit, "metric": "train peak MiB", "values": peaks})
        print(
            f"  train b{args.train_batch}: "
            + ", ".join(f"{k} {v:.0f} img/s ({peaks[k]:.0f} MiB)" for k, v in ips.items()),
            flush=True,
        )
        del models
        gc.collect()
        if args.device == "cuda":
            torch.cuda.empty_cache()
    for r in results:
        r["ratios"] = ratios(r["values"])
    versions = {
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "timm": timm.__version__,
        "transformers": transformers.__version__,
        "vitkit": vitkit.__version__,
        "python": platform.python_version(),
    }
    report = {
        "date": started,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "smoke": args.smoke,
        "machine": machine_line(args.device),
        "device": torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu",
        "precision": args.precision,
        "versions": versions,
        "max_logit_diff_fp32": diffs,
        "results": results,
        "command": " ".join([os.path.basename(sys.executable), *(argv if argv is not None else sys.argv)]),
    }
    cols, rows = table(results)
    lines = [
        f"date: {started}; wall time {report['wall_seconds']:.0f} s"
        + ("; SMOKE RUN: tiny models, numbers meaningless" if args.smoke else ""),
        report["machine"],
        f"{args.precision} autocast, inference batch {args.infer_batch}, training batch {args.train_batch}, "
        f"median of {args.rounds} interleaved rounds; " + ", ".join(f"{k} {v}" for k, v in versions.items()),
        "command: " + report["command"],
    ]
    widths = [max(len(r[i]) for r in [cols, *rows]) for i in range(len(cols))]
    print("\n" + "\n".join(lines) + "\n")
    for i, r in enumerate([cols, *rows]):
        print("  ".join(c.ljust(w) if j < 2 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    if args.json:
        write_atomic(Path(args.json), json.dumps(report, indent=2) + "\n")
        print(f"\nJSON written to {args.json}")
    if args.markdown:
        from _common import markdown_report

        write_atomic(Path(args.markdown), markdown_report("gpu_check.py", lines, cols, rows))
        print(f"Markdown written to {args.markdown}")
    return report


if __name__ == "__main__":
    main()

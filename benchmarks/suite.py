"""vitkit vs timm vs Hugging Face transformers (vs onnxruntime): one run, same configs, same weights.

For each family the script builds one set of random weights and gives it to every library:
ViT, DeiT (distilled), Swin and CvT start from a randomly initialised `transformers` model that
vitkit loads with `vitkit.from_pretrained` (its tested converters) and timm receives vitkit's
state dict (timm's key names); Mixer starts from vitkit and goes to timm; CvT has no timm model and
Mixer no transformers model. Before anything is timed, every library must give the same logits as
vitkit on the same input (max |diff| <= 1e-4), so the numbers compare the same function.

Measured per family and library, interleaved round by round (alternating the order) so that drift on a
shared machine hits every library alike; the median over rounds is reported:
    infer b1, infer b32   eval(), inference_mode, images/s
    train b32             forward + cross-entropy (both heads for distilled DeiT) + backward + AdamW (fused,
                          as `vitkit train` runs it), images/s
    peak MiB              memory of one training step above what was in use just before it:
                          CPU: the resident set (RSS, sampled every 0.5 ms by a thread, after malloc_trim
                          has handed the free memory back, so that earlier libraries do not hide later ones),
                          CUDA: torch.cuda.max_memory_allocated
    CPU allocator         --allocator reuse (default): glibc keeps freed blocks for reuse
                          (vitkit.allocator, what `vitkit train` does) for every library alike; without it
                          each step faults its big activations in anew (ViT-S training ~0.8x)
    % of the GEMM rate    achieved FLOP/s of the training step as a share of the hardware's fp32 GEMM rate
                          (bf16 with --bf16): the best of torch.matmul (MKL for fp32 on x86), oneDNN's packed
                          inner product and onnxruntime's MatMul (MLAS, fp32), 2048^2, timed in the same
                          rounds at the start (CUDA: torch.matmul, 8192^2, TF32 off). torch's default BLAS is
                          not always that rate: on a Zen 4 EPYC MKL runs fp32 GEMMs at about half MLAS's rate.
                          Two ways: "% of the hardware's ... GEMM rate" divides by GEMMs of the kernel that won
                          at the start, timed as one more entry of the interleaved training rounds (the
                          median, as for the steps: both under the same conditions; torch.matmul's rate in
                          the same rounds is in the note), "% of the hardware's best ... GEMM rate" by the best
                          of 10 rounds at the start (a lucky quiet moment on a shared machine can put it 5-10%
                          above the typical rate, so it understates the share).
                          FLOPs per image: torch.utils.flop_counter on vitkit's eager-attention path,
                          forward + backward (the same count serves every library: same architecture)
    onnxruntime           (CPU, --onnx) vitkit's ONNX export run by onnxruntime with the same threads

Ratios are vitkit / other: > 1 means vitkit is faster (for memory, < 1 means vitkit uses less).

Usage
    OMP_NUM_THREADS=2 python benchmarks/suite.py --threads 2 --markdown docs/suite-cpu.md   # ~25 min
    python benchmarks/suite.py --device cuda --markdown docs/suite-cuda.md                  # ~5 min
    python benchmarks/suite.py --smoke                                                      # seconds, CI
    OMP_NUM_THREADS=2 python benchmarks/suite.py --threads 2 --families vit --no-onnx --profile  # where a step goes
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch
import torch.nn.functional as F
from _common import (
    PeakMemory,
    add_allocator_argument,
    apply_allocator,
    flop_counter,
    interleaved,
    machine_line,
    GemmRate,
    gemm_sampler,
    hardware_gemm_rate,
    write_atomic,
)
from torch import nn

import vitkit
from vitkit.compat import make_torchvision_importable
from vitkit.export import randomise_heads
from vitkit.layers import eager_attention

make_torchvision_importable()  # before timm / transformers on a CPU-only torch
import timm  # noqa: E402
import transformers  # noqa: E402

TOLERANCE = 1e-4
GEMM = "GEMM: "  # prefix of the GEMM samples timed among the training rounds


# --------------------------------------------------------------------------- the families
@dataclass
class Family:
    """One row group: the vitkit name, timm's (None: timm lacks it) and a transformers class + config."""

    name: str
    vitkit: str
    timm: str | None
    hf: tuple[str, str, dict] | None  # (model class, config class, config kwargs)
    img: int = 224
    # --smoke: a tiny configuration of the same architecture (vitkit overrides / HF config kwargs)
    smoke_vitkit: dict = field(default_factory=dict)
    smoke_hf: dict = field(default_factory=dict)
    smoke_img: int = 32


VIT_S = {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6, "intermediate_size": 1536,
         "image_size": 224, "patch_size": 16, "layer_norm_eps": 1e-6, "num_labels": 1000}
VIT_SMOKE = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
             "image_size": 32, "patch_size": 8, "layer_norm_eps": 1e-6, "num_labels": 10}
SWIN_T = {"image_size": 224, "patch_size": 4, "embed_dim": 96, "depths": [2, 2, 6, 2], "num_heads": [3, 6, 12, 24],
          "window_size": 7, "drop_path_rate": 0.0, "num_labels": 1000}
SWIN_SMOKE = {"image_size": 32, "patch_size": 2, "embed_dim": 16, "depths": [2, 2], "num_heads": [2, 4],
              "window_size": 4, "drop_path_rate": 0.0, "num_labels": 10}
# CvtConfig's defaults are CvT-13; HF indexes per-stage drop-path lists by stage, so stage i needs >= i + 1 blocks
CVT_13 = {"drop_path_rate": [0.0, 0.0, 0.0], "num_labels": 1000}
CVT_SMOKE = {"embed_dim": [16, 32, 48], "depth": [1, 2, 3], "num_heads": [1, 2, 3], "num_labels": 10,
             "drop_path_rate": [0.0, 0.0, 0.0]}
FAMILIES = {
    "vit": Family("vit", "vit_small_patch16_224", "vit_small_patch16_224",
                  ("ViTForImageClassification", "ViTConfig", VIT_S), smoke_hf=VIT_SMOKE),
    "deit": Family("deit", "deit_small_distilled_patch16_224", "deit_small_distilled_patch16_224",
                   ("DeiTForImageClassificationWithTeacher", "DeiTConfig", VIT_S), smoke_hf=VIT_SMOKE),
    "swin": Family("swin", "swin_tiny_patch4_window7_224", "swin_tiny_patch4_window7_224",
                   ("SwinForImageClassification", "SwinConfig", SWIN_T), smoke_hf=SWIN_SMOKE),
    "cvt": Family("cvt", "cvt_13", None, ("CvtForImageClassification", "CvtConfig", CVT_13), smoke_hf=CVT_SMOKE),
    "mixer": Family("mixer", "mixer_b16_224", "mixer_b16_224", None,
                    smoke_vitkit={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_classes": 10}),
}


def timm_kwargs(family: str, c) -> dict:
    """timm constructor arguments that reproduce vitkit config `c` (same names, bar Mixer's depth)."""
    common = {"img_size": c.img_size, "patch_size": c.patch_size, "embed_dim": c.embed_dim,
              "mlp_ratio": c.mlp_ratio, "num_classes": c.num_classes}
    if family in ("vit", "deit"):
        return {**common, "depth": c.depth, "num_heads": c.num_heads}
    if family == "swin":
        return {**common, "depths": c.depths, "num_heads": c.num_heads, "window_size": c.window_size}
    if family == "mixer":
        return {**common, "num_blocks": c.depth}
    raise ValueError(family)


# --------------------------------------------------------------------------- models
def build(fam: Family, smoke: bool, device: str) -> dict[str, nn.Module]:
    """{library: model} with identical weights, in eval mode, on `device`."""
    models: dict[str, nn.Module] = {}
    torch.manual_seed(0)
    if fam.hf is not None:
        cls_name, cfg_name, kwargs = fam.hf
        hf = getattr(transformers, cls_name)(getattr(transformers, cfg_name)(**(fam.smoke_hf if smoke else kwargs)))
        with tempfile.TemporaryDirectory() as tmp:
            hf.save_pretrained(tmp)
            overrides = {"img_size": fam.smoke_img} if smoke and fam.name == "cvt" else {}
            models["vitkit"] = vitkit.from_pretrained(tmp, **overrides)
        models["transformers"] = hf
    else:
        models["vitkit"] = vitkit.create_model(fam.vitkit, **(fam.smoke_vitkit if smoke else {}))
        randomise_heads(models["vitkit"])  # vitkit's head starts at zero: compare real logits
    vk = models["vitkit"]
    if fam.timm is not None:
        kwargs = dict(drop_path_rate=0.0, **timm_kwargs(fam.name, vk.config))
        # timm's mixer_* functions fix the size arguments themselves: build the class with all of them
        tm = timm.models.MlpMixer(**kwargs) if fam.name == "mixer" else timm.create_model(fam.timm, **kwargs)
        missing, unexpected = tm.load_state_dict(vk.state_dict(), strict=False)
        # timm keeps its derived index/mask buffers out of the state dict; nothing else may differ
        bad = [k for k in missing + unexpected if not k.endswith(("relative_position_index", "attn_mask"))]
        if bad:
            raise SystemExit(f"{fam.name}: vitkit's state dict does not fit timm's {fam.timm}: {bad[:8]}")
        models["timm"] = tm
    order = ["vitkit", "timm", "transformers"]
    return {k: models[k].to(device).eval() for k in order if k in models}


def infer_fn(lib: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    if lib == "transformers":
        return lambda x: model(pixel_values=x).logits
    return model


def train_outputs(lib: str, model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Training-mode logits; distilled DeiT gives (class, distillation) in every library."""
    if lib == "transformers":
        out = model(pixel_values=x)
        if hasattr(out, "distillation_logits"):
            return out.cls_logits, out.distillation_logits
        return (out.logits,)
    out = model(x)
    return out if isinstance(out, tuple) else (out,)


def check_same(fam: Family, models: dict[str, nn.Module], img: int, device: str) -> float:
    torch.manual_seed(1)
    x = torch.randn(2, 3, img, img, device=device)
    with torch.inference_mode():
        ref = models["vitkit"](x)
        if ref.abs().max() == 0:
            raise SystemExit(f"{fam.name}: all-zero logits, the comparison would be vacuous")
        worst = 0.0
        for lib, model in models.items():
            worst = max(worst, (infer_fn(lib, model)(x) - ref).abs().max().item())
    if worst > TOLERANCE:
        raise SystemExit(f"{fam.name}: the libraries' logits differ by {worst:.3g} > {TOLERANCE} with the same weights")
    return worst


def flops_per_image(model: nn.Module, img: int, device: str, train: bool) -> float:
    x = torch.randn(2, 3, img, img, device=device)
    model.train(train)
    with eager_attention(), flop_counter() as fc:
        if train:
            sum(o.float().sum() for o in train_outputs("vitkit", model, x)).backward()
        else:
            with torch.inference_mode():
                model(x)
    model.zero_grad(set_to_none=True)
    model.eval()
    return fc.get_total_flops() / 2


AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}


def autocast(args):
    """The autocast of `args.precision` (bf16 | fp16 | fp32, gpu_check.py), else bf16 when `args.bf16`."""
    precision = getattr(args, "precision", None) or ("bf16" if args.bf16 else "fp32")
    dtype = AUTOCAST_DTYPES[precision]
    return torch.autocast(args.device, dtype=dtype or torch.float32, enabled=dtype is not None)


def bench_infer(models, img, batch, args, ort_session=None) -> dict[str, float]:
    x = torch.randn(batch, 3, img, img, device=args.device)
    fns = {}
    for lib, model in models.items():
        f = infer_fn(lib, model)

        def run(f=f):
            with torch.inference_mode(), autocast(args):
                f(x)

        fns[lib] = run
    if ort_session is not None:
        feed = {ort_session.get_inputs()[0].name: x.cpu().numpy()}
        fns["onnxruntime"] = lambda: ort_session.run(None, feed)
    secs = interleaved(fns, args, args.warmup, args.rounds)
    return {lib: batch / s for lib, s in secs.items()}


def bench_train(
    models, img, batch, args, gemm: GemmRate
) -> tuple[dict[str, float], dict[str, float], dict[str, dict[str, float]], dict[str, float]]:
    """(images/s, peak MiB of one step, and with --profile ms per step by op group) per library, and the GEMM
    rates in GFLOP/s of `gemm.kernel` and torch.matmul, sampled among the training rounds (median, as for the
    steps)."""
    x = torch.randn(batch, 3, img, img, device=args.device)
    n_classes = models["vitkit"].num_classes
    y = torch.randint(0, n_classes, (batch,), device=args.device)
    fns, peaks = {}, {}
    for lib, model in models.items():
        model.train()
        if lib == "timm" and getattr(model, "dist_token", None) is not None:
            model.set_distilled_training(True)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)  # as vitkit train

        def step(lib=lib, model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            with autocast(args):
                outs = train_outputs(lib, model, x)
            sum(F.cross_entropy(o.float(), y) for o in outs).backward()
            opt.step()

        step()  # optimizer state exists before memory is measured
        fns[lib] = step
    for lib, fn in fns.items():
        fn()
        with PeakMemory(args.device) as mem:
            fn()
        peaks[lib] = mem.peak / 2**20
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    kernels = dict.fromkeys([gemm.kernel, gemm.torch_matmul[0]])  # the best kernel and torch.matmul, once each
    samplers = {k: gemm_sampler(args.device, k, dtype, args.min_time, args.gemm_size) for k in kernels}
    secs = interleaved({**fns, **{GEMM + k: fn for k, (fn, _) in samplers.items()}}, args, args.train_warmup,
                       args.train_rounds)
    gemm_gflops = {k: flop / secs.pop(GEMM + k) / 1e9 for k, (_, flop) in samplers.items()}
    profiles = {}
    if args.profile:  # after the timing, so that the profiler's overhead does not touch it
        from step_profile import profile_groups

        profiles = {lib: profile_groups(fn, 1 if args.smoke else 2) for lib, fn in fns.items()}
    for model in models.values():
        model.eval()
        model.zero_grad(set_to_none=True)
    return {lib: batch / s for lib, s in secs.items()}, peaks, profiles, gemm_gflops


# --------------------------------------------------------------------------- output
LIBS = ["vitkit", "timm", "transformers", "onnxruntime"]


@dataclass
class Row:
    family: str
    metric: str
    values: dict[str, float]
    note: str = ""


def fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if v < 1000 else f"{v:.0f}"


def table(rows: list[Row]) -> list[list[str]]:
    head = ["family", "metric", *LIBS, "vitkit/timm", "vitkit/transformers", "vitkit/onnxruntime", "note"]
    out = [head]
    for r in rows:
        v = r.values
        ratios = [f"{v['vitkit'] / v[o]:.3f}" if v.get(o) else "-" for o in LIBS[1:]]
        out.append([r.family, r.metric, *(fmt(v.get(lib)) for lib in LIBS), *ratios, r.note])
    return out


def markdown(rows: list[Row], lines: list[str]) -> str:
    t = table(rows)
    out = ["<!-- benchmarks/suite.py -->", ""] + [f"- {ln}" for ln in lines] + [""]
    out.append("| " + " | ".join(t[0]) + " |")
    out.append("|" + "|".join(["---"] * 2 + ["---:"] * (len(t[0]) - 3) + ["---"]) + "|")
    out += ["| " + " | ".join(r) + " |" for r in t[1:]]
    return "\n".join(out) + "\n"


def print_table(rows: list[Row], lines: list[str]) -> None:
    t = table(rows)
    widths = [max(len(r[i]) for r in t) for i in range(len(t[0]))]
    print("\n" + "\n".join(lines) + "\n")
    for i, r in enumerate(t):
        print("  ".join(c.ljust(w) if j < 2 or j == len(r) - 1 else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch (and onnxruntime) intra-op threads")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None, help="inference batches (default 1 32)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 32)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds per inference setting (default 10)")
    p.add_argument("--train-rounds", type=int, default=None, help="interleaved rounds for training (default 5)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample (default 0.5)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for every PyTorch library")
    p.add_argument("--compile", action="store_true", help="torch.compile every PyTorch model")
    add_allocator_argument(p)
    p.add_argument("--no-onnx", action="store_true", help="skip onnxruntime (CPU only anyway)")
    p.add_argument("--profile", action="store_true",
                   help="also profile each library's training step (CPU): ms per step by op group (matmul, "
                        "attention, copies, LayerNorm, GELU, ...) as extra rows")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models, one round, onnxruntime for the first family only: seconds, numbers meaningless")
    p.add_argument("--markdown", metavar="PATH", help="write the table (with machine facts) to PATH")
    args = p.parse_args(argv)
    defaults = {"batch_sizes": ([1, 2], [1, 32]), "train_batch": (2, 32), "rounds": (1, 10),
                "train_rounds": (1, 5), "min_time": (0.0, 0.5)}  # (smoke, full)
    for key, (smoke, full) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    args.warmup, args.train_warmup = (1, 1) if args.smoke else (3, 2)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False")
    if args.profile and args.device != "cpu":
        p.error("--profile groups the profiler's CPU time, which is not the GPU's: use it with --device cpu")
    return args


def onnx_session_for(model: nn.Module, threads: int):
    """vitkit's ONNX export of `model` in an onnxruntime session (None if onnx is not installed)."""
    try:
        from vitkit.export import export_onnx, onnx_session
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.onnx"
            export_onnx(model, path, check=True)
            return onnx_session(path, threads)
    except ImportError as e:
        print(f"  onnxruntime skipped: {e}", file=sys.stderr)
        return None


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    allocator = apply_allocator(args)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t_start = time.perf_counter()
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    args.gemm_size = 256 if args.smoke else None  # smoke: the code path only
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    gemm = hardware_gemm_rate(args.device, 3 if args.smoke else 10, dtype, args.gemm_size)
    peak, dt = gemm.gflops, gemm.dtype
    print(f"{gemm.describe()} on {args.device}, {threads} threads", flush=True)
    rows: list[Row] = []
    for i, key in enumerate(args.families):
        fam = FAMILIES[key]
        img = fam.smoke_img if args.smoke else fam.img
        models = build(fam, args.smoke, args.device)
        diff = check_same(fam, models, img, args.device)
        gflop = flops_per_image(models["vitkit"], img, args.device, train=True) / 1e9
        name = models["vitkit"].model_name or fam.vitkit
        print(f"{fam.name} ({name}{', smoke size' if args.smoke else ''}): libraries {', '.join(models)}, "
              f"max |logit diff| {diff:.1e}; {gflop:.3g} GFLOP/image forward+backward", flush=True)
        ort = None
        if args.device == "cpu" and not args.no_onnx and (not args.smoke or i == 0):
            ort = onnx_session_for(models["vitkit"], threads)
        if args.compile:
            models = {lib: torch.compile(m) for lib, m in models.items()}
        for b in args.batch_sizes:
            ips = bench_infer(models, img, b, args, ort)
            rows.append(Row(fam.name, f"infer b{b} img/s", ips))
            print(f"  infer b{b}: " + ", ".join(f"{k} {v:.1f}" for k, v in ips.items()) + " img/s", flush=True)
        ips, mem, profiles, rates = bench_train(models, img, args.train_batch, args, gemm)
        in_rounds, (mm_name, mm_start) = rates[gemm.kernel], gemm.torch_matmul
        mm_note = "" if mm_name == gemm.kernel else \
            f"; {mm_name} {rates[mm_name]:.0f} GFLOP/s there ({100 * rates[mm_name] / in_rounds:.0f}% of it)"
        mm_best = "" if mm_name == gemm.kernel else f"; {mm_name} {mm_start:.0f} GFLOP/s"
        rows += [Row(fam.name, f"train b{args.train_batch} img/s", ips),
                 Row(fam.name, "train peak MiB", mem, "RSS" if args.device == "cpu" else "max allocated"),
                 Row(fam.name, f"train % of the hardware's {dt} GEMM rate",
                     {lib: 100 * gflop * v / in_rounds for lib, v in ips.items()},
                     f"of {in_rounds:.0f} GFLOP/s, {gemm.kernel} GEMMs between the training rounds{mm_note}"),
                 Row(fam.name, f"train % of the hardware's best {dt} GEMM rate",
                     {lib: 100 * gflop * v / peak for lib, v in ips.items()},
                     f"of {peak:.0f} GFLOP/s, {gemm.kernel}, best of the rounds at the start{mm_best}")]
        print(f"  train b{args.train_batch}: " + ", ".join(f"{k} {v:.1f} img/s ({mem[k]:.0f} MiB)"
                                                          for k, v in ips.items()), flush=True)
        if profiles:  # ms per training step by op group (torch.profiler self CPU time), per library
            groups = next(iter(profiles.values()))
            rows += [Row(fam.name, f"train ms/step: {g}", {lib: ms[g] for lib, ms in profiles.items()}, "profiler")
                     for g in groups]
        del models, ort
        gc.collect()
    versions = (f"torch {torch.__version__}, timm {timm.__version__}, transformers {transformers.__version__}, "
                f"vitkit {vitkit.__version__}, python {platform.python_version()}")
    with contextlib.suppress(ImportError):
        import onnxruntime
        versions += f", onnxruntime {onnxruntime.__version__}"
    lines = [f"date: {started}; wall time {time.perf_counter() - t_start:.0f} s"
             + ("; SMOKE RUN: tiny models, numbers meaningless" if args.smoke else ""),
             machine_line(args.device) + f"; load average at start {load}",
             (f"device {args.device}, {threads} threads (OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}), "
              f"{'bf16 autocast' if args.bf16 else 'fp32'}{', torch.compile' if args.compile else ''}"
              + f"; {allocator}"),
             f"{gemm.describe()}: the best of {3 if args.smoke else 10} rounds at the start; the \"% of the "
             f"hardware's {dt} GEMM rate\" rows divide by {gemm.kernel} GEMMs timed among the training rounds, "
             "rate in the note",
             versions,
             "command: " + " ".join([os.path.basename(sys.executable), *sys.argv])]
    print_table(rows, lines)
    if args.markdown:
        write_atomic(Path(args.markdown), markdown(rows, lines))
        print(f"\nMarkdown written to {args.markdown}")
    return rows


if __name__ == "__main__":
    main()

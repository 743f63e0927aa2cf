"""vitkit vs timm throughput on CPU: same architecture, same weights, same inputs, same process.

For each model the script builds timm's model and vitkit's, copies timm's weights into vitkit's
(the state-dict keys are identical, so strict loading must succeed), checks that both give the
same outputs, and then times them *interleaved*: every round runs timm and vitkit back to back,
alternating which goes first, so slow drift on a shared or throttling machine hits both equally.
Reported per (model, mode, batch): the median over rounds of images/s for each library, their
ratio vitkit/timm, and the median and range of the per-round (paired) ratios, which is the
number to read when the machine is noisy.

Modes
    infer  eval(), torch.inference_mode(), one forward pass per image batch.
    train  train(), forward + cross-entropy + backward + fused AdamW step (zero_grad included). For
           distilled DeiT both libraries return (class logits, distillation logits) --
           timm via `set_distilled_training(True)` -- and the loss is CE(a, y) + CE(b, y).

GFLOP/s is FLOPs per image (counted once per model with torch.utils.flop_counter on vitkit's
eager-attention path: the counter does not see the fused CPU attention kernel; both libraries
run the same architecture, so the count holds for both) times images/s. "% of GEMM rate" is its share of
the hardware's fp32 GEMM rate, measured at the same thread count in the same run: the best of torch.matmul
(MKL), oneDNN's packed inner product and onnxruntime's MatMul (MLAS) on 2048x2048, timed in the same rounds.
torch's default BLAS is not always that rate (on a Zen 4 EPYC MKL runs at about half MLAS's rate), so the
report names the kernel that set it and gives torch.matmul's rate beside it.

Usage
    OMP_NUM_THREADS=2 python benchmarks/bench_vs_timm.py --threads 2 --markdown /tmp/bench.md
    python benchmarks/bench_vs_timm.py --quick          # full-size models, few rounds, well under a minute
    python benchmarks/bench_vs_timm.py --smoke          # tiny models, one round: seconds (run by the tests)
    python benchmarks/bench_vs_timm.py --control        # timm vs timm: how far apart noise alone puts them
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from _common import add_allocator_argument, apply_allocator, flop_counter, hardware_gemm_rate

import vitkit
from vitkit.compat import make_torchvision_importable
from vitkit.layers.attention import eager_attention

make_torchvision_importable()  # must precede `import timm` on a CPU-only torch
import timm  # noqa: E402

DEFAULT_MODELS = ["vit_tiny_patch16_224", "vit_small_patch16_224", "deit_tiny_distilled_patch16_224"]
TOLERANCE = 1e-4

# --smoke: a tiny configuration of each architecture, the same for both libraries: (timm kwargs, vitkit kwargs).
_VIT_SMOKE = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, "num_classes": 10}
SMOKE = {
    "vit_tiny_patch16_224": (_VIT_SMOKE, _VIT_SMOKE),
    "deit_tiny_distilled_patch16_224": (_VIT_SMOKE, _VIT_SMOKE),
    "swin_tiny_patch4_window7_224": ({"img_size": 32, "patch_size": 2, "embed_dim": 16, "depths": (2, 2),
                                      "num_heads": (2, 4), "window_size": 4, "num_classes": 10},) * 2,
    "mixer_b16_224": ({"img_size": 32, "patch_size": 8, "embed_dim": 32, "num_blocks": 2, "num_classes": 10},
                      {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2, "num_classes": 10}),
}


# --------------------------------------------------------------------------- machine facts
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def load_average() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------- timing helpers
def timed(fn: Callable[[], object], iters: int) -> float:
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    return time.perf_counter() - t0


def calibrate(fn: Callable[[], object], warmup: int, min_time: float) -> int:
    """Run `warmup` calls, then return how many calls make one timed sample last >= min_time."""
    for _ in range(max(warmup - 1, 0)):
        fn()
    once = timed(fn, 1)
    return max(1, math.ceil(min_time / max(once, 1e-6)))


# --------------------------------------------------------------------------- per-model work
@dataclass
class Row:
    model: str
    mode: str
    batch: int
    timm_ips: float
    vitkit_ips: float
    paired: list[float] = field(default_factory=list)  # per-round vitkit/timm
    gflop_per_img: float = 0.0

    @property
    def ratio(self) -> float:
        return self.vitkit_ips / self.timm_ips


def create_timm(name: str, smoke: bool = False) -> torch.nn.Module:
    # drop_path_rate=0: timm defaults to 0.1 for Swin (vitkit: 0), which makes train-mode outputs random
    if not smoke:
        return timm.create_model(name, pretrained=False, drop_path_rate=0.0)
    kwargs = dict(SMOKE[name][0], drop_path_rate=0.0)
    # timm's mixer_* functions fix the size arguments themselves: build the class with all of them
    return timm.models.MlpMixer(**kwargs) if name.startswith("mixer") else timm.create_model(name, **kwargs)


def build_pair(name: str, smoke: bool = False) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    tm = create_timm(name, smoke)
    vm = vitkit.create_model(name, **(SMOKE[name][1] if smoke else {}))
    nonzero_heads(tm)
    try:
        vm.load_state_dict(tm.state_dict(), strict=True)
    except RuntimeError as e:
        raise SystemExit(f"{name}: timm's state dict does not load strictly into vitkit's model:\n{e}") from e
    if getattr(vm, "dist_token", None) is not None:
        tm.set_distilled_training(True)  # both return (cls, dist) logits in train mode
        vm.set_distilled_training(True)
    return tm, vm


def img_size(model: torch.nn.Module) -> tuple[int, int]:
    """The input size of a vitkit or timm model (timm's Mixer calls its patch embedding `stem`)."""
    embed = model.patch_embed if hasattr(model, "patch_embed") else model.stem
    return tuple(embed.img_size)


def check_same_outputs(name: str, tm: torch.nn.Module, vm: torch.nn.Module) -> float:
    """Max |timm - vitkit| over eval outputs (and train outputs, which are deterministic here)."""
    torch.manual_seed(1)
    x = torch.randn(2, 3, *img_size(vm))
    worst = 0.0
    with torch.inference_mode():
        for mode in ("eval", "train"):
            tm.train(mode == "train")
            vm.train(mode == "train")
            a, b = tm(x), vm(x)
            a = a if isinstance(a, tuple) else (a,)
            b = b if isinstance(b, tuple) else (b,)
            if len(a) != len(b):
                raise SystemExit(f"{name} ({mode}): timm returns {len(a)} outputs, vitkit {len(b)}")
            for ta, tb in zip(a, b):
                if ta.abs().max() == 0:
                    raise SystemExit(f"{name} ({mode}): outputs are all zero, the equality check would be vacuous")
                worst = max(worst, (ta - tb).abs().max().item())
    tm.eval()
    vm.eval()
    if worst > TOLERANCE:
        raise SystemExit(f"{name}: timm and vitkit outputs differ by {worst:.3g} > {TOLERANCE} with the same weights")
    return worst


def nonzero_heads(model: torch.nn.Module) -> None:
    """Random (nonzero) classifier heads, so the output-equality check cannot pass vacuously."""
    for head in (getattr(model, "head", None), getattr(model, "head_dist", None)):
        if isinstance(head, torch.nn.Linear):
            torch.nn.init.trunc_normal_(head.weight, std=0.02)


def count_flops(vm: torch.nn.Module, size: tuple[int, int], train: bool) -> float:
    """FLOPs per image of `size` (H, W): forward (eval) or forward + backward (train), eager attention so
    it is seen."""
    batch = 2
    x = torch.randn(batch, 3, *size)
    was_training = vm.training
    vm.train(train)
    with eager_attention(), flop_counter() as fc:
        if train:
            out = vm(x)
            out = out if isinstance(out, tuple) else (out,)
            sum(o.sum() for o in out).backward()
        else:
            with torch.inference_mode():
                vm(x)
    vm.zero_grad(set_to_none=True)
    vm.train(was_training)
    return fc.get_total_flops() / batch


def interleaved(fns: dict[str, Callable[[], object]], iters: dict[str, int], rounds: int) -> dict[str, list[float]]:
    """Seconds per call for each fn, one sample per round, alternating which fn goes first."""
    names = list(fns)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            out[n].append(timed(fns[n], iters[n]) / iters[n])
    return out


def bench_inference(name, tm, vm, batch, args) -> Row:
    x = torch.randn(batch, 3, *img_size(vm))
    tm.eval()
    vm.eval()
    with torch.inference_mode():
        fns = {"timm": lambda: tm(x), "vitkit": lambda: vm(x)}
        iters = {k: calibrate(f, args.warmup, args.min_time) for k, f in fns.items()}
        it = max(iters.values())  # same iteration count for both: identical work per sample
        secs = interleaved(fns, {"timm": it, "vitkit": it}, args.repeats)
    return make_row(name, "infer", batch, secs)


def bench_train(name, tm, vm, batch, args) -> Row:
    x = torch.randn(batch, 3, *img_size(vm))
    y = torch.randint(0, vm.num_classes, (batch,))
    fns = {}
    for key, model in (("timm", tm), ("vitkit", vm)):
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05, fused=True)  # as vitkit train

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            out = model(x)
            out = out if isinstance(out, tuple) else (out,)
            loss = sum(F.cross_entropy(o, y) for o in out)
            loss.backward()
            opt.step()

        fns[key] = step
    iters = {k: calibrate(f, args.train_warmup, args.min_time) for k, f in fns.items()}
    it = max(iters.values())
    secs = interleaved(fns, {"timm": it, "vitkit": it}, args.train_repeats)
    tm.eval()
    vm.eval()
    return make_row(name, "train", batch, secs)


def make_row(name: str, mode: str, batch: int, secs: dict[str, list[float]]) -> Row:
    t_ips = [batch / s for s in secs["timm"]]
    v_ips = [batch / s for s in secs["vitkit"]]
    paired = [v / t for v, t in zip(v_ips, t_ips)]
    return Row(name, mode, batch, statistics.median(t_ips), statistics.median(v_ips), paired)


# --------------------------------------------------------------------------- output
HEADERS = ["model", "mode", "batch", "timm img/s", "vitkit img/s", "ratio", "paired ratio [min-max]",
           "vitkit GFLOP/s", "% of GEMM rate", "threads"]


def cells(row: Row, threads: int, gemm_rate: float) -> list[str]:
    gflops = row.gflop_per_img * row.vitkit_ips
    return [
        row.model, row.mode, str(row.batch), f"{row.timm_ips:.1f}", f"{row.vitkit_ips:.1f}", f"{row.ratio:.3f}",
        f"{statistics.median(row.paired):.3f} [{min(row.paired):.3f}-{max(row.paired):.3f}]",
        f"{gflops:.0f}" if row.gflop_per_img else "-",
        f"{100 * gflops / gemm_rate:.0f}%" if row.gflop_per_img and gemm_rate else "-",
        str(threads),
    ]


def header_lines(args, gemm, started: str, load_start: str) -> list[str]:
    return [
        f"date: {started}",
        f"CPU: {cpu_model()} ({cpu_count()} usable cores); load average (1/5/15 min) at start {load_start}, "
        f"at end {load_average()}",
        f"torch {torch.__version__}, timm {timm.__version__}, vitkit {vitkit.__version__}, "
        f"python {platform.python_version()}; threads {torch.get_num_threads()} "
        f"(OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})",
        f"{gemm.describe()}, at {args.threads} threads (best of {args.gemm_rounds} rounds at the start; "
        f"\"% of GEMM rate\" divides by it); {args.allocator_line}",
        f"rounds: inference {args.repeats}, train {args.train_repeats}; >= {args.min_time}s per sample"
        + (" (--quick)" if args.quick else "")
        + (" -- SMOKE RUN: tiny models, numbers meaningless" if args.smoke else "")
        + (" -- CONTROL RUN: the 'vitkit' column is a second timm model" if args.control else ""),
        "command: " + " ".join([os.path.basename(sys.executable)] + sys.argv),
    ]


def print_table(rows: list[Row], threads: int, gemm_rate: float, lines: list[str]) -> None:
    table = [HEADERS] + [cells(r, threads, gemm_rate) for r in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEADERS))]
    print()
    for line in lines:
        print(line)
    print()
    for i, r in enumerate(table):
        print("  ".join(c.rjust(w) if j >= 2 else c.ljust(w) for j, (c, w) in enumerate(zip(r, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def write_markdown(path: str, rows: list[Row], threads: int, gemm_rate: float, lines: list[str]) -> None:
    out = ["", "<!-- bench_vs_timm.py -->", ""]
    out += [f"- {line}" for line in lines]
    out += ["", "| " + " | ".join(HEADERS) + " |", "|" + "|".join(["---"] * 2 + ["---:"] * (len(HEADERS) - 2)) + "|"]
    out += ["| " + " | ".join(cells(r, threads, gemm_rate)) + " |" for r in rows]
    with open(path, "a") as f:  # append: several runs can share one file
        f.write("\n".join(out) + "\n")


# --------------------------------------------------------------------------- main
def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=None,
                   help=f"timm/vitkit model names (default {' '.join(DEFAULT_MODELS)}; with --smoke {' '.join(SMOKE)})")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (also set OMP_NUM_THREADS)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=None,
                   help="inference batch sizes (default 1 32; with --smoke 1 2)")
    p.add_argument("--train-batch", type=int, default=None, help="training-step batch (default 32; with --smoke 2)")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds per inference setting (default 20)")
    p.add_argument("--train-repeats", type=int, default=None, help="interleaved rounds per train setting (default 8)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up calls per model and inference setting (default 3)")
    p.add_argument("--train-warmup", type=int, default=None, help="warm-up steps per model for training (default 2)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample (default 0.5)")
    p.add_argument("--quick", action="store_true", help="tiny counts for a quick run (numbers are not meaningful)")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models (32x32, 2 blocks) of each --models architecture, --quick counts with 1 round, "
                        "batches 1 and 2: seconds, numbers meaningless (the test suite runs this)")
    p.add_argument("--markdown", metavar="PATH", help="append the results as a Markdown table to PATH")
    p.add_argument("--no-train", action="store_true", help="skip the training-step benchmark")
    add_allocator_argument(p)
    p.add_argument("--control", action="store_true",
                   help="A/A run: the 'vitkit' column times a second timm model instead (the noise floor)")
    args = p.parse_args(argv)
    if args.models is None:
        args.models = list(SMOKE) if args.smoke else DEFAULT_MODELS
    if args.smoke:
        unknown = [m for m in args.models if m not in SMOKE]
        if unknown:
            p.error(f"--smoke has no tiny configuration for {unknown}; choose from {list(SMOKE)}")
        args.quick = True
        if args.repeats is None:
            args.repeats = 1
    if args.batch_sizes is None:
        args.batch_sizes = [1, 2] if args.smoke else [1, 32]
    if args.train_batch is None:
        args.train_batch = 2 if args.smoke else 32
    quick = args.quick
    for key, full, small in (("repeats", 20, 2), ("train_repeats", 8, 1), ("warmup", 3, 1),
                             ("train_warmup", 2, 1), ("min_time", 0.5, 0.0)):
        if getattr(args, key) is None:
            setattr(args, key, small if quick else full)
    if quick and args.train_batch == 32:
        args.train_batch = 4
    return args


def main(argv=None) -> list[Row]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.allocator_line = apply_allocator(args)
    if os.environ.get("OMP_NUM_THREADS") not in (None, str(args.threads)):
        print(f"warning: OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} but --threads {args.threads}", file=sys.stderr)
    started = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    t_start = time.perf_counter()
    load_start = load_average()
    if os.getloadavg()[0] > 0.5:
        print(f"warning: load average {load_start} -- other processes are running; numbers will be noisy",
              file=sys.stderr)
    args.gemm_rounds = 1 if args.smoke else 3 if args.quick else 10
    gemm = hardware_gemm_rate("cpu", args.gemm_rounds, torch.float32)
    gemm_rate = gemm.gflops
    print(f"{gemm.describe()}, at {args.threads} threads; timm fused attention: {timm.layers.use_fused_attn()}",
          flush=True)

    rows: list[Row] = []
    for name in args.models:
        tm, vm = build_pair(name, args.smoke)
        diff = check_same_outputs(name, tm, vm)
        img = img_size(vm)
        fwd = count_flops(vm, img, train=False) / 1e9
        fwd_bwd = None if args.no_train else count_flops(vm, img, train=True) / 1e9
        print(f"{name}: weights copied timm -> vitkit (strict), max |diff| eval+train {diff:.2e}; "
              f"{fwd:.2f} GFLOP/image forward", flush=True)
        if args.control:  # A/A: time timm against a second timm with the same weights
            vm = create_timm(name, args.smoke)
            vm.load_state_dict(tm.state_dict())
            if hasattr(vm, "set_distilled_training") and getattr(vm, "dist_token", None) is not None:
                vm.set_distilled_training(True)
            check_same_outputs(name, tm, vm)
        for b in args.batch_sizes:
            row = bench_inference(name, tm, vm, b, args)
            row.gflop_per_img = fwd
            rows.append(row)
            print(f"  infer b{b}: timm {row.timm_ips:.1f} img/s, vitkit {row.vitkit_ips:.1f} img/s, "
                  f"ratio {row.ratio:.3f}", flush=True)
        if not args.no_train:
            row = bench_train(name, tm, vm, args.train_batch, args)
            row.gflop_per_img = fwd_bwd
            rows.append(row)
            print(f"  train b{args.train_batch}: timm {row.timm_ips:.1f} img/s, vitkit {row.vitkit_ips:.1f} img/s, "
                  f"ratio {row.ratio:.3f}", flush=True)
        del tm, vm

    lines = header_lines(args, gemm, started, load_start)
    lines.append(f"wall time: {time.perf_counter() - t_start:.0f}s")
    print_table(rows, args.threads, gemm_rate, lines)
    if args.markdown:
        write_markdown(args.markdown, rows, args.threads, gemm_rate, lines)
        print(f"\nMarkdown appended to {args.markdown}")
    return rows


if __name__ == "__main__":
    main()

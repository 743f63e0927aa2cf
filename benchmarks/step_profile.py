"""Where the time of a recipe's training step goes, and whether `torch.compile` shortens it.

The step is the one `time_to_accuracy.py` plans its budget with (`training_step`): the recipe's model, batch,
augmentation, precision and optimizer on a fixed random batch. The profile groups torch.profiler's self CPU time
per step into matmuls, copies/casts, softmax, SDPA, LayerNorm, GELU and the rest; `--compile` then times the eager and
the compiled step in interleaved rounds (median images/s of each), and `--attention-paths` the whole step and
inference with every attention call on SDPA against the explicit softmax path.

    OMP_NUM_THREADS=2 python benchmarks/step_profile.py --recipe recipes/fmnist_vit_fast.yaml --threads 2 --compile \\
        --model.overrides.patch_drop_rate=0        # the step with every patch (docs/performance.md, PatchDropout)
    OMP_NUM_THREADS=2 python benchmarks/step_profile.py --recipe recipes/mnist_vit_fast.yaml --threads 2 \\
        --attention-paths --rounds 5 --steps 8 --run.precision=fp32   # SDPA vs eager on whole steps
    python benchmarks/step_profile.py --smoke      # a tiny model, seconds (tests/test_benchmarks_smoke.py)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import add_allocator_argument, apply_allocator  # noqa: E402
from time_to_accuracy import SHAPES, training_step, vitkit_model  # noqa: E402

# self-CPU-time groups of aten ops (each op's own time, so nothing is counted twice)
GROUPS = {
    "matmul": ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm"),
    "copy / cast": ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"),
    "softmax": ("aten::_softmax", "aten::_softmax_backward_data"),
    "attention (SDPA)": ("aten::_scaled_dot_product_flash_attention_for_cpu",
                         "aten::_scaled_dot_product_flash_attention_for_cpu_backward"),
    "layer norm": ("aten::native_layer_norm", "aten::native_layer_norm_backward"),
    "gelu": ("aten::gelu", "aten::gelu_backward"),
}


def profile_groups(step, steps: int) -> dict[str, float]:
    """Milliseconds per step of each group (and 'other', and 'total') over `steps` profiled steps."""
    from torch.profiler import profile

    with profile() as prof:
        for _ in range(steps):
            step()
    ms = {group: 0.0 for group in [*GROUPS, "other"]}
    for event in prof.key_averages():
        group = next((g for g, ops in GROUPS.items() if event.key in ops), "other")
        ms[group] += event.self_cpu_time_total / 1e3 / steps
    ms["total"] = sum(ms.values())
    return ms


def images_per_second(step, batch: int, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    from vitkit.train import apply_overrides, load_recipe

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--recipe", default="recipes/fmnist_vit_fast.yaml")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10, help="steps per profile and per timed round")
    p.add_argument("--rounds", type=int, default=3, help="interleaved eager/compiled rounds (with --compile)")
    p.add_argument("--compile", action="store_true", help="also time the torch.compile'd step against the eager one")
    p.add_argument("--attention-paths", action="store_true",
                   help="also time the whole step (and eval-mode inference on the same batch) with every attention "
                        "call on SDPA (policy 'fused') against the explicit softmax path ('eager'), interleaved")
    add_allocator_argument(p)
    p.add_argument("--smoke", action="store_true", help="a 1-block model, batch 16, 2 steps: seconds, numbers meaningless")
    args, overrides = p.parse_known_args(argv)
    cfg = load_recipe(args.recipe)
    if args.smoke:
        overrides = ["--model.overrides.depth=1", "--run.batch_size=16", *overrides]
        args.steps, args.rounds = 2, 1
    apply_overrides(cfg, overrides)
    torch.set_num_threads(args.threads)
    allocator = apply_allocator(args)
    classes, chans, size = SHAPES[cfg.data.name]
    torch.manual_seed(0)
    model = vitkit_model(cfg, classes, chans, size)
    step = training_step(model, cfg, chans, size, classes)
    for _ in range(3):  # warm-up: allocator, kernels
        step()
    ms = profile_groups(step, args.steps)
    batch = cfg.run.batch_size
    print(f"{cfg.model.name} ({args.recipe}{' ' + ' '.join(overrides) if overrides else ''}), batch {batch}, "
          f"{args.threads} thread(s), torch {torch.__version__}; {allocator}" + (" -- SMOKE RUN" if args.smoke else ""))
    print("\n| ops | ms per step | share |\n|---|---:|---:|")
    for group, value in ms.items():
        print(f"| {group} | {value:.1f} | {100 * value / ms['total']:.0f}% |")
    result = {"ms_per_step": ms}
    if args.compile:
        compiled = training_step(torch.compile(model), cfg, chans, size, classes)
        t0 = time.perf_counter()
        for _ in range(3):
            compiled()
        print(f"\ncompiled in {time.perf_counter() - t0:.0f} s (3 warm-up steps)")
        rates = {"eager": [], "compiled": []}
        for _ in range(args.rounds):
            for name, fn in (("eager", step), ("compiled", compiled)):
                rates[name].append(images_per_second(fn, batch, args.steps))
        for name, values in rates.items():
            print(f"{name}: median {statistics.median(values):,.0f} img/s (rounds: "
                  f"{', '.join(f'{v:,.0f}' for v in values)})")
        result["img_per_s"] = rates
    if args.attention_paths:
        result["attention_paths"] = time_attention_paths(model, step, cfg, chans, size, args)
    return result


def time_attention_paths(model, step, cfg, chans: int, size: int, args) -> dict[str, list[float]]:
    """Images/s of the training step and of inference under attention_policy('fused') and ('eager'),
    in interleaved rounds (the check behind the CPU rows of SDPA_MIN_SEQ_LEN, on whole steps)."""
    from vitkit.layers.attention import attention_policy
    from vitkit.precision import resolve_precision

    batch = cfg.run.batch_size
    x = torch.rand(batch, chans, size, size)
    bf16 = resolve_precision(cfg.run.precision, "cpu", warn=False) == "bf16"

    def infer() -> None:
        model.eval()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            model(x)
        model.train()

    rates = {f"{mode} {policy}": [] for mode in ("train", "infer") for policy in ("fused", "eager")}
    for _ in range(args.rounds):
        for policy in ("fused", "eager"):
            with attention_policy(policy):
                step()  # one warm-up step per switch
                rates[f"train {policy}"].append(images_per_second(step, batch, args.steps))
                infer()
                rates[f"infer {policy}"].append(images_per_second(infer, batch, args.steps))
    print(f"\nattention paths ({'bf16' if bf16 else 'fp32'}, {args.rounds} interleaved rounds of {args.steps} steps):")
    for mode in ("train", "infer"):
        fused, eager = (statistics.median(rates[f"{mode} {p}"]) for p in ("fused", "eager"))
        print(f"{mode}: fused {fused:,.0f} img/s, eager {eager:,.0f} img/s, eager/fused {eager / fused:.2f}")
    return rates


if __name__ == "__main__":
    main()

"""Cost vs input resolution: ViT-S/16 (global attention, quadratic in tokens) vs Swin-T (window
attention, linear in tokens) -- the scaling claim of the Swin paper (sec. 3.2), measured on CPU.

For each resolution it times one image (batch 1, eval, torch.inference_mode(), fp32) through
vitkit's `vit_small_patch16_224` (dynamic_img_size=True: position embeddings resampled per call)
and `swin_tiny_patch4_window7_224` (strict_img_size=False: padded to the window grid), reporting
the median over --repeats timed calls (the two models alternate each round), and counts GMACs with
`vitkit.profile.gmacs` at the same input size. Random weights: speed does not depend on them.

Usage
    OMP_NUM_THREADS=2 python benchmarks/scaling.py --threads 2 --plot docs/img/scaling.png
    python benchmarks/scaling.py --smoke     # tiny models, 1 round: seconds (tests/test_benchmarks_smoke.py)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vitkit
from vitkit.profile import gmacs

MODELS = {
    "vit_small_patch16_224": dict(dynamic_img_size=True),
    "swin_tiny_patch4_window7_224": dict(strict_img_size=False),
}
# --smoke: the same two architectures and input handling, tiny widths and depths (patch sizes kept)
SMOKE_OVERRIDES = {
    "vit_small_patch16_224": dict(embed_dim=32, depth=2, num_heads=2, num_classes=10),
    "swin_tiny_patch4_window7_224": dict(embed_dim=16, depths=(2, 2), num_heads=(1, 2), num_classes=10),
}
SMOKE_RESOLUTIONS = [64, 96, 128]


def main(argv=None) -> list[tuple]:
    """Returns the rows (model, resolution, tokens, GMACs, median ms, min ms) also printed as a table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resolutions", type=int, nargs="+", default=None,
                   help="square input sizes (default 224 320 448 640; with --smoke 64 96 128)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=None,
                   help="timed calls per model and resolution (median; default 5, with --smoke 1)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--plot", metavar="PNG", help="write ms/image and GMACs vs resolution to this file")
    p.add_argument("--smoke", action="store_true",
                   help="tiny models (2 blocks, widths 16-32; same patch sizes and input handling), small "
                        "resolutions, 1 repeat: seconds, numbers meaningless (the test suite runs this)")
    args = p.parse_args(argv)
    if args.resolutions is None:
        args.resolutions = SMOKE_RESOLUTIONS if args.smoke else [224, 320, 448, 640]
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 5
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {name: vitkit.create_model(name, **kw, **(SMOKE_OVERRIDES[name] if args.smoke else {})).eval()
              for name, kw in MODELS.items()}
    if args.smoke:
        print("SMOKE RUN: tiny models, numbers meaningless")

    rows = []  # (model, res, tokens at the first stage, GMACs, median ms, min ms)
    for res in args.resolutions:
        x = torch.randn(1, 3, res, res)
        times: dict[str, list[float]] = {name: [] for name in models}
        with torch.inference_mode():
            for m in models.values():
                for _ in range(args.warmup):
                    m(x)
            for r in range(args.repeats):
                order = list(models) if r % 2 == 0 else list(reversed(models))
                for name in order:
                    t0 = time.perf_counter()
                    models[name](x)
                    times[name].append((time.perf_counter() - t0) * 1e3)
        for name, m in models.items():
            patch = 16 if name.startswith("vit") else 4
            tokens = (res // patch) ** 2
            rows.append((name, res, tokens, gmacs(m, (3, res, res)), statistics.median(times[name]), min(times[name])))
            print(f"{name:30s} {res:4d}px tokens {tokens:6d}  {rows[-1][3]:7.2f} GMACs  "
                  f"{rows[-1][4]:8.1f} ms (min {rows[-1][5]:.1f})", flush=True)

    r0 = args.resolutions[0]
    print(f"\n| model | resolution | tokens (first stage) | GMACs | ms/image (median) | ms/image (min) "
          f"| ms / ms at {r0} | GMACs / GMACs at {r0} |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {r[0]: r for r in rows if r[1] == r0}
    for name in models:
        for r in (r for r in rows if r[0] == name):
            b = base[name]
            print(f"| {name} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.1f} | {r[4] / b[4]:.2f} | {r[3] / b[3]:.2f} |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for name in models:
            rr = [r for r in rows if r[0] == name]
            a1.plot([r[1] for r in rr], [r[4] for r in rr], "o-", label=name)
            a2.plot([r[1] for r in rr], [r[3] for r in rr], "o-", label=name)
        a1.set(xlabel="input resolution (px, square)", ylabel="ms / image (batch 1, median)",
               title=f"CPU latency, fp32, {args.threads} threads")
        a2.set(xlabel="input resolution (px, square)", ylabel="GMACs / image", title="compute (vitkit.profile.gmacs)")
        for a in (a1, a2):
            a.grid(alpha=0.3)
            a.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return rows


if __name__ == "__main__":
    main()

"""Wall clock of batched early-exit DVT inference against the single 14x14 ViT, on trained models.

Loads the models `benchmarks/dvt_curve.py --save-models DIR` saved and the thresholds it calibrated on
held-out data for 60% of the 14x14 ViT's GMACs (`results_<dataset>.json`, "at_budget"), then times, in
interleaved rounds (DVT, ViT, DVT, ViT, ...), one pass of each over the first N test images in batches,
and reports the median seconds per pass, the ratio and the exits taken. The first round warms up and is
not counted. Every model runs in `torch.inference_mode()`, on `--threads` threads.

Usage
    python benchmarks/dvt_timing.py --models runs/dvt_models --results docs/img/dvt --dataset fashion_mnist [--bf16]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from vitkit.data import load_dataset
from vitkit.hub import from_pretrained
from vitkit.train.engine import Normalise


def one_pass(fn, x: torch.Tensor, batch: int) -> float:
    t0 = time.perf_counter()
    for i in range(0, len(x), batch):
        fn(x[i:i + batch])
    return time.perf_counter() - t0


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="runs/dvt_models")
    p.add_argument("--results", default="docs/img/dvt")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--rounds", type=int, default=7, help="timed rounds (plus one warm-up round)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--target", type=float, default=None,
                   help="time the curve point calibrated for the target GMACs nearest this one (default: the 60%% budget)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for both models (where bf16 is native)")
    p.add_argument("--out", default=None, help="write the numbers here (default: <results>/timing_<dataset>.json)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    result = json.loads((Path(args.results) / f"results_{args.dataset}.json").read_text())
    at = result["cascades"]["DVT"]["at_budget"]
    if args.target is not None:  # thresholds calibrated on held-out data for another budget of the sweep
        at = min(result["cascades"]["DVT"]["curve"], key=lambda p: abs(p["target_gmacs"] - args.target))
    thresholds = at["thresholds"]
    dvt = from_pretrained(Path(args.models) / args.dataset / "dvt").eval()
    vit = from_pretrained(Path(args.models) / args.dataset / "vit_14x14_patch_2").eval()
    splits = load_dataset(args.dataset, val_fraction=0.1, seed=0)
    n = min(args.images, len(splits.test))
    x = Normalise(splits.mean, splits.std)(splits.test.batch(torch.arange(n))[0])

    with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=args.bf16):
        _, exits = dvt.forward_dynamic(x, thresholds)
        fractions = (torch.bincount(exits, minlength=dvt.num_exits) / n).tolist()
        runs = {"dvt": lambda b: dvt.forward_dynamic(b, thresholds), "vit_14x14": vit}
        times: dict[str, list[float]] = {k: [] for k in runs}
        for r in range(args.rounds + 1):
            for name, fn in runs.items():
                s = one_pass(fn, x, args.batch)
                if r:  # round 0 warms up
                    times[name].append(s)
            print(f"round {r}: " + ", ".join(f"{k} {v[-1] if v else float('nan'):.3f} s" for k, v in times.items()),
                  flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "dataset": args.dataset, "images": n, "batch": args.batch, "threads": torch.get_num_threads(),
        "bf16": args.bf16, "rounds": args.rounds, "target_gmacs": at["target_gmacs"], "thresholds": thresholds,
        "exit_fractions": fractions,
        "counted_gmacs": {"dvt": at["test_gmacs"], "vit_14x14": result["singles"]["ViT 14x14 (patch 2)"]["gmacs"]},
        "seconds_per_pass": times, "median_ms_per_image": {k: 1e3 * v / n for k, v in med.items()},
        "wall_clock_ratio": med["dvt"] / med["vit_14x14"],
    }
    out["counted_ratio"] = out["counted_gmacs"]["dvt"] / out["counted_gmacs"]["vit_14x14"]
    path = Path(args.out) if args.out else Path(args.results) / f"timing_{args.dataset}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("exit_fractions", "median_ms_per_image", "wall_clock_ratio",
                                          "counted_ratio")}, indent=1))
    return out


if __name__ == "__main__":
    main()

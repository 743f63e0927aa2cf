"""Training-step time of dvt_micro_28 (and its ablations) against the single ViTs of its backbone, fp32 and
bf16 autocast: forward, the summed exit losses, backward and an AdamW step on random 28x28 images, on one
thread. Prints the median of the last three of four steps (the first warms up) and all four.

Usage
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/dvt_step_time.py 128 vit7,vit4,vit2,dvt,dvt_nofeat,dvt_norel fp32,bf16

vitN: vit_micro at patch N (7: 4x4 tokens, 4: 7x7, 2: 14x14); dvt_nofeat / dvt_norel / dvt_none: the
cascade without feature reuse / relationship reuse / either.
"""

from __future__ import annotations

import sys
import time

import torch
import torch.nn.functional as F

import vitkit

CASCADES = {"dvt": {}, "dvt_nofeat": dict(feature_reuse=False), "dvt_norel": dict(relation_reuse=False),
            "dvt_none": dict(feature_reuse=False, relation_reuse=False)}


def make(name: str) -> torch.nn.Module:
    if name.startswith("vit"):
        return vitkit.create_model("vit_micro_patch4_28", patch_size=int(name[3:]))
    return vitkit.create_model("dvt_micro_28", **CASCADES[name])


def main() -> None:
    torch.set_num_threads(1)
    batch = int(sys.argv[1]) if len(sys.argv) > 1 else 128
    names = sys.argv[2].split(",") if len(sys.argv) > 2 else ["vit7", "vit4", "vit2", "dvt", "dvt_nofeat", "dvt_norel"]
    modes = sys.argv[3].split(",") if len(sys.argv) > 3 else ["fp32", "bf16"]
    x, y = torch.randn(batch, 1, 28, 28), torch.randint(0, 10, (batch,))
    for name in names:
        model = make(name).train()
        opt = torch.optim.AdamW(model.parameters(), 1e-3)
        for mode in modes:
            times = []
            for _ in range(4):
                t0 = time.perf_counter()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=(mode == "bf16")):
                    out = model(x)
                    outs = out if isinstance(out, list) else [out]
                    loss = sum(F.cross_entropy(o.float(), y) for o in outs)
                opt.zero_grad()
                loss.backward()
                opt.step()
                times.append(time.perf_counter() - t0)
            print(f"{name:12s} {mode} B={batch} step {sorted(times[1:])[1] * 1e3:.0f} ms "
                  f"({[round(t * 1e3) for t in times]})", flush=True)


if __name__ == "__main__":
    main()

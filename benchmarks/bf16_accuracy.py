"""What bf16 autocast costs in accuracy and gains in speed, against fp32, model by model.

bf16 keeps fp32's exponent range with an 8-bit mantissa (relative rounding 2^-8 = 0.4%), so
autocast runs the matmuls and convolutions in bf16 while softmax, LayerNorm and the loss stay in
fp32 (torch.autocast's op lists). fp16 is never used on the CPU: this CPU has no fast fp16 path.

Two kinds of input:
    --models NAME...  registered models with random weights (random, non-zero heads) on random
                      images: the max |logit difference| (absolute and relative to the largest
                      fp32 logit) and the top-1 agreement with fp32. Random networks have nearly
                      tied logits, so their agreement is a pessimistic bound.
    --run DIR         a trained model (a `vitkit train` run or model directory) on the test split of
                      its dataset: fp32 and bf16 accuracy, top-1 agreement, max |logit difference|.
Speed (skip with --no-speed): images/s of fp32 and bf16 inference at --batch, interleaved rounds.

Usage
    OMP_NUM_THREADS=2 python benchmarks/bf16_accuracy.py --threads 2 --markdown /tmp/bf16.md   # ~4 min
    python benchmarks/bf16_accuracy.py --run runs/mine --no-speed                              # accuracy only
    python benchmarks/bf16_accuracy.py --device cuda
    python benchmarks/bf16_accuracy.py --smoke
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import torch
from _common import add_allocator_argument, apply_allocator, interleaved, machine_line, markdown_report, publish

import vitkit
from vitkit.export import randomise_heads
from vitkit.layers import to_2tuple

DEFAULT_MODELS = ["vit_small_patch16_224", "deit_small_patch16_224", "swin_tiny_patch4_window7_224", "cvt_13",
                  "mixer_b16_224"]
SMOKE_MODELS = ["vit_micro_patch4_32", "swin_micro_patch2_window4_32", "cvt_micro_32", "mixer_micro_patch4_32"]


def logits_of(model, x: torch.Tensor, bf16: bool, device: str, batch: int) -> torch.Tensor:
    out = []
    with torch.inference_mode():
        for i in range(0, len(x), batch):
            with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                out.append(model(x[i:i + batch].to(device)).float().cpu())
    return torch.cat(out)


def compare(fp32: torch.Tensor, bf16: torch.Tensor) -> dict[str, float]:
    diff = (bf16 - fp32).abs().max().item()
    return {"max abs diff": diff, "relative": diff / fp32.abs().max().item(),
            "top-1 agreement %": 100.0 * (bf16.argmax(-1) == fp32.argmax(-1)).float().mean().item()}


def speed(model, shape, args) -> dict[str, float]:
    x = torch.randn(args.batch, *shape, device=args.device)

    def run(bf16: bool):
        def f():
            with torch.inference_mode(), torch.autocast(args.device, dtype=torch.bfloat16, enabled=bf16):
                model(x)
        return f

    secs = interleaved({"fp32": run(False), "bf16": run(True)}, args, args.warmup, args.rounds)
    return {"fp32 img/s": args.batch / secs["fp32"], "bf16 img/s": args.batch / secs["bf16"],
            "speed-up": secs["fp32"] / secs["bf16"]}


def random_model_row(name: str, args) -> dict:
    torch.manual_seed(0)
    model = vitkit.create_model(name).eval().to(args.device)
    randomise_heads(model)
    c = model.config
    shape = (c.in_chans, *to_2tuple(c.img_size))
    x = torch.randn(args.images, *shape, generator=torch.Generator().manual_seed(1))
    row = {"model": name, "data": f"{args.images} random images"}
    row.update(compare(logits_of(model, x, False, args.device, args.batch),
                       logits_of(model, x, True, args.device, args.batch)))
    if not args.no_speed:
        row.update(speed(model, shape, args))
    return row


def trained_row(run: str, args) -> dict:
    from vitkit.data import load_dataset
    from vitkit.train.engine import Normalise, evaluate

    path = Path(run)
    model_dir = path / "model" if (path / "model" / "config.json").is_file() else path
    model = vitkit.from_pretrained(model_dir).to(args.device)
    cfg = model.pretrained_cfg
    if not cfg.get("dataset"):
        raise SystemExit(f"{model_dir} does not say which dataset it was trained on (pretrained_cfg['dataset'])")
    splits = load_dataset(cfg["dataset"])
    norm = Normalise(cfg.get("mean", splits.mean), cfg.get("std", splits.std)).to(args.device)
    res = {bf16: evaluate(model, splits.test, norm, args.device, bf16=bf16, return_logits=True) for bf16 in (False, True)}
    row = {"model": f"{model.model_name} ({model_dir})", "data": f"{cfg['dataset']} test, {len(splits.test)} images",
           "fp32 acc %": res[False]["acc"], "bf16 acc %": res[True]["acc"]}
    row.update(compare(res[False]["logits"], res[True]["logits"]))
    if not args.no_speed:
        c = model.config
        row.update(speed(torch.nn.Sequential(norm, model).eval(), (c.in_chans, *to_2tuple(c.img_size)), args))
    return row


def render(rows: list[dict], lines: list[str]) -> str:
    cols = ["model", "data", "fp32 acc %", "bf16 acc %", "max abs diff", "relative", "top-1 agreement %",
            "fp32 img/s", "bf16 img/s", "speed-up"]
    cols = [c for c in cols if any(c in r for r in rows)]

    def cell(v):
        return v if isinstance(v, str) else (f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}")

    return markdown_report("bf16_accuracy.py", lines, cols, [[cell(r.get(c, "-")) for c in cols] for r in rows])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="*", default=None, help=f"registered names (default {' '.join(DEFAULT_MODELS)})")
    p.add_argument("--run", nargs="*", default=[], help="trained run or model directories (their test split)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--images", type=int, default=None, help="random images per model (default 256)")
    p.add_argument("--batch", type=int, default=None, help="batch for evaluation and speed (default 32)")
    p.add_argument("--rounds", type=int, default=None, help="interleaved speed rounds (default 10)")
    p.add_argument("--min-time", type=float, default=None, help="seconds per timed sample (default 0.5)")
    p.add_argument("--no-speed", action="store_true", help="accuracy only")
    add_allocator_argument(p)
    p.add_argument("--smoke", action="store_true", help="tiny models, few images, one round (numbers meaningless)")
    p.add_argument("--markdown", metavar="PATH")
    args = p.parse_args(argv)
    for key, smoke, full in (("images", 8, 256), ("batch", 4, 32), ("rounds", 1, 10), ("min_time", 0.0, 0.5)):
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    if args.models is None:
        args.models = SMOKE_MODELS if args.smoke else DEFAULT_MODELS
    args.warmup = 1 if args.smoke else 3
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda, but torch.cuda.is_available() is False")
    return args


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    allocator = apply_allocator(args)  # the same for fp32 and bf16, as `vitkit eval` and `predict` run
    rows = []
    for name in args.models:
        rows.append(random_model_row(name, args))
        print(rows[-1], flush=True)
    for run in args.run:
        rows.append(trained_row(run, args))
        print(rows[-1], flush=True)
    lines = [f"date: {datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}"
             + ("; SMOKE RUN: numbers meaningless" if args.smoke else ""),
             machine_line(args.device) + f"; {torch.get_num_threads()} threads; torch {torch.__version__}; {allocator}",
             "command: " + " ".join([os.path.basename(sys.executable), *sys.argv])]
    publish(render(rows, lines), args.markdown)
    return rows


if __name__ == "__main__":
    main()

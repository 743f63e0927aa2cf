"""Image-folder loading: vitkit's training pipeline against timm's loader on a generated ImageNet-like folder.

The folder: JPEGs (Pillow, quality 90) of random sizes around 500x375 with random smooth content (low-resolution
noise upsampled, so the files are as large as photos of that size, not near-empty), in `--classes` class folders.
Generated once under `--root` and reused when present.

Both pipelines read the same files with the same `--workers` and batch size and the same training augmentation:
a random resized crop to 224 (scale 0.08-1, ratio 3/4-4/3, bicubic) cut from the decoded original image in the
DataLoader workers, a horizontal flip with probability 0.5, and normalisation with a mean and std.
- vitkit: what `vitkit train` does for a folder: `load_dataset('folder', ...)` (files listed, not decoded; the
  mean/std from a seeded sample of up to 512 decoded images; train/val/test split), `training_data_config`,
  `worker_pipeline` (the crop, flip and normalisation in the workers: `AugmentFiles`), `vitkit.train.engine.Batches`
  (the DataLoader). A third pipeline, "vitkit, flip + normalise on the batch", leaves the flip (`BatchAugment`) and
  the normalisation (`Normalise`) to the training process, on each batch, for comparison.
- timm: `create_dataset('', root=...)` (timm's ImageDataset) + `create_loader(..., is_training=True)` without the
  prefetcher (a CPU run), colour jitter off, bicubic, ImageNet mean/std: the crop, flip and normalisation all in
  the workers.

Measured, for each, in rounds with the order alternating between rounds (the median kept):
- steady throughput: images per second over `--batches` batches after `--warmup` batches of the same epoch;
- CPU time per image: the per-image work (decode, crop, flip, normalise, collate) of each pipeline's dataset in
  this process, in CPU milliseconds (`time.process_time`), which other jobs on a shared machine barely move;
- time to the first batch, from nothing: listing the folder, (vitkit) the statistics sample, the split, the
  loader's workers starting and the first batch arriving; on the same folder, and on a folder of
  `--first-batch-files` files. That large folder is made cheaply: the generated JPEGs are copied under many
  names (copies, not hard links: vitkit lists a file reached through two links once). The files are in the
  page cache (they were just written or read): the times are those of a warm cache.

Usage
    python benchmarks/data_throughput.py --images 10000 --first-batch-files 100000 --workers 2 \\
        --markdown /tmp/data_throughput.md                     # minutes; the folders stay under --root
    python benchmarks/data_throughput.py --smoke              # 64 images, 2 batches: seconds (run by the tests)
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import machine_line, markdown_report, publish

from vitkit.compat import make_torchvision_importable
from vitkit.data import load_dataset
from vitkit.data.augment import AugmentConfig, BatchAugment
from vitkit.data.transforms import (
    RandomCropFiles,
    RandomResizedCrop,
    apply_data_config,
    training_data_config,
    worker_pipeline,
)
from vitkit.train.engine import Batches, Dist, Normalise

make_torchvision_importable()  # must precede `import timm` on a CPU-only torch
import timm  # noqa: E402
from timm.data import create_dataset, create_loader  # noqa: E402

SCALE, RATIO, HFLIP, SIZE, INTERPOLATION = (0.08, 1.0), (3 / 4, 4 / 3), 0.5, 224, "bicubic"


# --------------------------------------------------------------------------- the folders
def _image(rng: np.random.Generator):
    from PIL import Image

    w = int(np.clip(rng.normal(500, 60), 300, 700))
    h = int(np.clip(rng.normal(375, 45), 225, 525))
    cells = rng.integers(4, 24)
    low = rng.integers(0, 256, (max(2, h // cells), max(2, w // cells), 3), dtype=np.uint8)
    im = Image.fromarray(low).resize((w, h), Image.Resampling.BICUBIC)
    # fine grain on top of the smooth field, as sensor noise in a photo
    a = np.asarray(im, dtype=np.int16) + rng.integers(-8, 9, (h, w, 3), dtype=np.int16)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def make_folder(root: Path, images: int, classes: int, seed: int = 0) -> tuple[Path, bool]:
    """root/images-N/cXXX/NNNNNNN.jpg (N JPEGs over `classes` classes); (path, made now)."""
    folder = root / f"images-{images}-c{classes}"
    if (folder / ".complete").is_file():
        return folder, False
    shutil.rmtree(folder, ignore_errors=True)
    rng = np.random.default_rng(seed)
    for c in range(classes):
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        _image(rng).save(folder / f"c{i % classes:03d}" / f"{i:07d}.jpg", quality=90)
    (folder / ".complete").write_text("")
    return folder, True


def make_copies(root: Path, source: Path, files: int, classes: int) -> tuple[Path, bool]:
    """root/copies-M-of-<source>/cXXX/NNNNNNN.jpg: M files, copies of the JPEGs of `source` in turn."""
    folder = root / f"copies-{files}-of-{source.name}"
    if (folder / ".complete").is_file():
        return folder, False
    shutil.rmtree(folder, ignore_errors=True)
    blobs = [p.read_bytes() for p in sorted(source.glob("*/*.jpg"))]
    for c in range(classes):
        (folder / f"c{c:03d}").mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (folder / f"c{i % classes:03d}" / f"{i:07d}.jpg").write_bytes(blobs[i % len(blobs)])
    (folder / ".complete").write_text("")
    return folder, True


def folder_facts(folder: Path) -> tuple[int, float]:
    sizes = [p.stat().st_size for p in folder.glob("*/*.jpg")]
    return len(sizes), statistics.mean(sizes) / 1024


# --------------------------------------------------------------------------- the two pipelines
def vitkit_train_data(folder: Path, in_workers: bool = True):
    """(training dataset, augmentation left for the batch, normalised, classes, data config), as `vitkit train`
    builds them for a folder: the crop, flip and normalisation in the workers (`worker_pipeline`); with
    in_workers=False only the crop is there, and the flip and normalisation are left to each batch."""
    splits = load_dataset("folder", folder, val_fraction=0.1, seed=0, img_size=SIZE)
    config = training_data_config(splits, None, None, {"interpolation": INTERPOLATION})
    apply_data_config(splits, config)
    aug = AugmentConfig(random_resized_crop=True, scale=SCALE, ratio=RATIO, hflip=HFLIP)
    if in_workers:
        train, left, normalised = worker_pipeline(splits.train, aug, config, seed=0)
    else:
        crop = RandomResizedCrop(config["input_size"][1:], SCALE, RATIO, config["interpolation"])
        train, left, normalised = RandomCropFiles(splits.train, crop, seed=0), AugmentConfig(hflip=HFLIP), False
    return train, left, normalised, splits.classes, config


def vitkit_batches(folder: Path, args, in_workers: bool = True):
    """An iterator of normalised (x, y) batches, as `vitkit train` builds them for a folder (see
    `vitkit_train_data`); the augmentation left for the batch and the normalisation, if any, in this process."""
    train, left, normalised, classes, config = vitkit_train_data(folder, in_workers)
    batches = Batches(train, args.batch_size, Dist(), seed=0, num_workers=args.workers)
    augment = BatchAugment(left, len(classes), normalised=normalised)
    norm = Normalise(config["mean"], config["std"])
    with torch.no_grad():
        for x, y in batches.epoch(0):
            if augment.active:
                x, y = augment(x, y)
            if not normalised:
                x = norm(x)
            yield x, y


def timm_loader(folder: Path, args):
    """timm's ImageDataset and create_loader (which sets the dataset's training transform)."""
    dataset = create_dataset("", root=str(folder), split="train", is_training=True)
    return create_loader(
        dataset,
        input_size=(3, SIZE, SIZE),
        batch_size=args.batch_size,
        is_training=True,
        scale=SCALE,
        ratio=RATIO,
        hflip=HFLIP,
        color_jitter=None,
        interpolation=INTERPOLATION,
        num_workers=args.workers,
        use_prefetcher=False,
        device=torch.device("cpu"),
        persistent_workers=False,
    )


def timm_batches(folder: Path, args):
    """An iterator of normalised (x, y) batches from timm's ImageDataset and create_loader."""
    yield from timm_loader(folder, args)


def cpu_per_image(folder: Path, args) -> dict[str, float]:
    """CPU milliseconds per image of each pipeline's per-image work in this process (decode, crop, flip,
    normalise, and the collate of a batch): `time.process_time` over batches of `--batch-size` images, the
    pipelines alternating, the median kept. CPU time, unlike images/s, barely moves with other jobs' load."""
    vitkit_data = vitkit_train_data(folder)[0]
    timm_data = timm_loader(folder, args).dataset
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    out: dict[str, list[float]] = {"vitkit": [], "timm": []}
    n = args.batch_size
    try:
        for r in range(2 * args.rounds):
            pairs = [("vitkit", vitkit_data), ("timm", timm_data)]
            for name, data in pairs if r % 2 == 0 else pairs[::-1]:
                lo = (r * n) % max(1, min(len(vitkit_data), len(timm_data)) - n)
                t = time.process_time()
                torch.utils.data.default_collate([data[i] for i in range(lo, lo + n)])
                out[name].append((time.process_time() - t) / n * 1000)
    finally:
        torch.set_num_threads(threads)
    return {name: statistics.median(v) for name, v in out.items()}


PIPELINES = {
    "vitkit": vitkit_batches,
    "timm": timm_batches,
    "vitkit, flip + normalise on the batch": lambda folder, args: vitkit_batches(folder, args, in_workers=False),
}


def run_once(name: str, folder: Path, args, steady: bool) -> dict:
    """Seconds to the first batch from nothing, and (steady) images/s over args.batches after args.warmup."""
    t0 = time.perf_counter()
    it = PIPELINES[name](folder, args)
    x, _ = next(it)
    first = time.perf_counter() - t0
    out = {"first": first, "shape": tuple(x.shape), "dtype": str(x.dtype).replace("torch.", ""), "min": float(x.min())}
    if steady:
        for _ in range(args.warmup):
            next(it)
        t1, n = time.perf_counter(), 0
        for _ in range(args.batches):
            x, _ = next(it)
            n += x.shape[0]
        out["img_s"] = n / (time.perf_counter() - t1)
    it.close()
    return out


def measure(folder: Path, args, steady: bool) -> dict[str, dict]:
    """{pipeline: {first (median s), img_s (median), samples...}}, rounds alternating the order; the steady
    part also times vitkit with the flip and normalisation on the batch instead of in the workers."""
    names = list(PIPELINES) if steady else ["vitkit", "timm"]
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            runs[n].append(run_once(n, folder, args, steady))
            print(
                f"  round {r + 1} {n}: first batch {runs[n][-1]['first']:.2f} s"
                + (f", {runs[n][-1]['img_s']:.1f} img/s" if steady else ""),
                flush=True,
            )
    out = {}
    for n, rs in runs.items():
        out[n] = {
            "first": statistics.median(r["first"] for r in rs),
            "shape": rs[0]["shape"],
            "dtype": rs[0]["dtype"],
            "min": min(r["min"] for r in rs),
            "first_runs": [r["first"] for r in rs],
        }
        if steady:
            out[n]["img_s"] = statistics.median(r["img_s"] for r in rs)
            out[n]["img_s_runs"] = [r["img_s"] for r in rs]
    return out


# --------------------------------------------------------------------------- main
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--root",
        default=None,
        help="where the generated folders live (reused when present); default: <temp dir>/vitkit-data-throughput",
    )
    p.add_argument("--images", type=int, default=10_000, help="real JPEGs generated (the throughput folder)")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument(
        "--first-batch-files",
        type=int,
        default=100_000,
        help="files of the time-to-first-batch folder (copies of the generated JPEGs); 0: skip it",
    )
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers of both pipelines")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--warmup", type=int, default=3, help="batches read before the steady timing starts")
    p.add_argument("--batches", type=int, default=20, help="batches timed for the steady throughput")
    p.add_argument("--rounds", type=int, default=3, help="rounds (each pipeline once per round, order alternating)")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the main process")
    p.add_argument("--smoke", action="store_true", help="64 images in 4 classes, 2 batches, 1 round: seconds")
    p.add_argument("--markdown", default=None, help="also write the report here (markdown)")
    args = p.parse_args(argv)
    if args.smoke:
        args.images, args.classes, args.first_batch_files = 64, 4, 256
        args.batch_size, args.warmup, args.batches, args.rounds = 8, 0, 2, 1
        args.workers = min(args.workers, 1)
    for name in ("images", "classes", "batch_size", "batches", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.workers < 0 or args.warmup < 0 or args.first_batch_files < 0:
        p.error("--workers, --warmup and --first-batch-files must be >= 0")
    # vitkit trains on the train split (70% of a folder without val/ and test/ folders): it needs enough images
    need = (args.warmup + args.batches + 1) * args.batch_size
    if int(args.images * 0.7) < need:
        p.error(
            f"--images {args.images} gives about {int(args.images * 0.7)} training images, fewer than the "
            f"{need} that --warmup + --batches + 1 batches of {args.batch_size} read: raise --images"
        )
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    logging.getLogger("vitkit").setLevel(logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    root = Path(args.root) if args.root else Path(tempfile.gettempdir()) / "vitkit-data-throughput"
    root.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    folder, made = make_folder(root, args.images, args.classes)
    n_files, kib = folder_facts(folder)
    print(
        f"{folder}: {n_files} JPEGs, mean {kib:.0f} KiB ({'generated in %.0f s' % (time.perf_counter() - t0) if made else 'reused'})",
        flush=True,
    )
    print("steady throughput and time to the first batch on the generated folder:", flush=True)
    steady = measure(folder, args, steady=True)
    cpu = cpu_per_image(folder, args)
    print(f"CPU ms per image in one process: vitkit {cpu['vitkit']:.2f}, timm {cpu['timm']:.2f}", flush=True)

    large = None
    if args.first_batch_files:
        t0 = time.perf_counter()
        big, made = make_copies(root, folder, args.first_batch_files, args.classes)
        print(
            f"{big}: {args.first_batch_files} files ({'copied in %.0f s' % (time.perf_counter() - t0) if made else 'reused'})",
            flush=True,
        )
        print("time to the first batch on the large folder:", flush=True)
        large = measure(big, args, steady=False)

    v, t, lo = steady["vitkit"], steady["timm"], steady["vitkit, flip + normalise on the batch"]
    rows = [
        ["images/s (steady)", f"{n_files}", f"{v['img_s']:.1f}", f"{t['img_s']:.1f}", f"{v['img_s'] / t['img_s']:.2f}"],
        [
            "images/s (steady), vitkit with the flip + normalise on the batch in the training process",
            f"{n_files}",
            f"{lo['img_s']:.1f}",
            f"{t['img_s']:.1f}",
            f"{lo['img_s'] / t['img_s']:.2f}",
        ],
        [
            "CPU ms per image, one process (decode, crop, flip, normalise, collate)",
            f"{n_files}",
            f"{cpu['vitkit']:.2f}",
            f"{cpu['timm']:.2f}",
            f"{cpu['vitkit'] / cpu['timm']:.2f}",
        ],
        [
            "time to first batch (s)",
            f"{n_files}",
            f"{v['first']:.2f}",
            f"{t['first']:.2f}",
            f"{v['first'] / t['first']:.2f}",
        ],
    ]
    if large:
        lv, lt = large["vitkit"], large["timm"]
        rows.append(
            [
                "time to first batch (s)",
                f"{args.first_batch_files} (copies)",
                f"{lv['first']:.2f}",
                f"{lt['first']:.2f}",
                f"{lv['first'] / lt['first']:.2f}",
            ]
        )
    cmd = "python benchmarks/data_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = (
        [f"SMOKE RUN (64 images, {args.batches} batches): structure only, no meaningful numbers"] if args.smoke else []
    ) + [
        f"command: `{cmd.strip()}`",
        f"date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; {machine_line('cpu')}; "
        f"torch {torch.__version__}, timm {timm.__version__}, torch threads {torch.get_num_threads()}",
        f"folder: {n_files} generated JPEGs (quality 90, mean {kib:.0f} KiB, sizes around 500x375) in "
        f"{args.classes} classes"
        + (
            f"; the large folder: {args.first_batch_files} files, copies of those JPEGs under other names"
            if large
            else ""
        ),
        f"{args.workers} DataLoader workers, batch {args.batch_size}; random resized crop {SIZE} (scale {SCALE}, "
        f"ratio 3/4-4/3, {INTERPOLATION}) + flip {HFLIP} + normalise; {args.warmup} warm-up batches, {args.batches} "
        f"timed; median of {args.rounds} rounds (order alternating); files in the page cache",
        "time to the first batch: from nothing (listing; vitkit: its statistics from a seeded sample of up to 512 "
        "decoded images and the train/val/test split; the workers starting) to the first batch in hand",
        "vitkit and timm crop, flip and normalise in their workers; the second row flips and normalises each "
        "batch in the training process instead (the crop stays in the workers)",
        f"batches: vitkit {v['shape']} {v['dtype']}, timm {t['shape']} {t['dtype']}",
    ]
    publish(
        markdown_report(
            "data_throughput.py", lines, ["measure", "files", "vitkit", "timm", "vitkit/timm"], rows, left=2
        ),
        args.markdown,
    )
    return {"steady": steady, "cpu": cpu, "large": large, "folder": str(folder), "files": n_files, "rows": rows}


if __name__ == "__main__":
    main()

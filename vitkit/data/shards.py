"""WebDataset tar shards: reading (sharded per rank and per worker), splits, and writing.

The format is WebDataset's (https://github.com/webdataset/webdataset): a shard is a plain POSIX tar
whose members are grouped into samples by their key, the member name up to the first dot of its
base name: `000123.png` + `000123.cls` is one sample. An image comes from the first member with an
image extension, the label from `.cls` (an integer as text) or `.json` ({"label": int}). Shards
written here are read by `webdataset.WebDataset` and shards written by `webdataset.ShardWriter`
are read here (tests/data/test_shards.py checks both directions when `webdataset` is installed).

Why a stdlib `tarfile` reader rather than the `webdataset` package: training needs what the package
leaves to the user, namely a known number of steps per epoch (the cosine schedule is a per-step
table), the same batches after `--run.resume` (the data order is a function of (seed, epoch)),
and rank slices that are disjoint by construction. Local shards need no dependency. Shards named by
URL (`http(s)://`, `pipe:CMD`, `gs://`, `ais://`, ... anything webdataset's `gopen` opens) are read as a
stream through `webdataset` (`pip install vitkit[shards]`), with the same checks; their
`dataset.json` is fetched from next to them, and its shard lists name the val/test shards.

Untrusted shards: a member larger than `MAX_MEMBER_BYTES` (labels: `MAX_LABEL_BYTES`), or one that
runs past the end of a local file, is refused before it is read; a shard that ends without tar's
end-of-archive block (cut between members or inside a header) is an error naming it; a key that
appears twice with different labels is an error naming both shards; without `dataset.json` a
label of `MAX_INFERRED_CLASSES` or more is refused (the classes would be 0..label); a brace
pattern may expand to at most `MAX_SHARDS` paths.

    vitkit train --data.name=shards --data.data_dir='data/mnist/train-{000000..000009}.tar'
    vitkit train --data.name=shards --data.data_dir='https://host/mnist/train-{000000..000009}.tar'
    vitkit make-shards mnist data/mnist --maxcount 6000        # write shards from any dataset

Splits: `train-*` shards are the training set. When `val-*` / `test-*` shards sit next to them
(the pattern with "train" replaced), they are the validation / test splits; otherwise those are
carved from the training keys by a seeded hash (`split_of`): deterministic for (key, seed),
independent of the shard layout, about `test_fraction` / `val_fraction` of the samples (not
stratified: a stream has no random access).

Sharding: an epoch's shard order is a permutation drawn from (seed, epoch), the same on every rank;
rank r takes `order[r::world_size]` and DataLoader worker w of that rank takes `[w::num_workers]` of
those, so every shard is read by exactly one worker of one process. Within a worker, samples pass
through a seeded shuffle buffer. Steps per epoch = (train samples) // (global batch); a rank whose
shards run out first continues with its next pass (as webdataset's `.repeat().with_epoch(n)`), so
every rank takes the same number of steps.

Normalisation statistics: mean/std per channel over the first `STATS_SAMPLES` training samples of
the stream (write shards shuffled, as `write_shards` does by default, so these are a fair sample).
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import random
import re
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info
from tqdm.auto import tqdm

from .folder import _pil, channels_for
from .splits import channel_stats

logger = logging.getLogger("vitkit")

__all__ = [
    "ShardBatches",
    "ShardFormatError",
    "TarShardDataset",
    "expand_shards",
    "is_url",
    "iter_tar_samples",
    "load_shard_splits",
    "split_of",
    "write_shards",
]

_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "bmp", "ppm", "pgm", "tif", "tiff")
META_FILE = "dataset.json"  # classes / in_chans / img_size, written next to the shards by write_shards
STATS_SAMPLES = 512
SHUFFLE_BUFFER = 1000
MAX_SHARDS = 1_000_000  # paths a brace pattern may expand to (LAION-5B's largest part has ~230k shards)
MAX_MEMBER_BYTES = 256 << 20  # a tar member larger than this is refused before it is read
MAX_LABEL_BYTES = 1 << 20  # a .cls / .json label member
MAX_INFERRED_CLASSES = 100_000  # classes 0..max label without dataset.json (ImageNet-21k has 21,841)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # http://, https://, pipe:, gs://, ais://, hf://, ...


class ShardFormatError(ValueError):
    """A shard (or its pattern, labels, or dataset.json) is damaged, hostile or inconsistent."""


def is_url(shard: str) -> bool:
    """True for what webdataset opens (http(s)://, pipe:, gs://, ais://, ...), False for a local path."""
    return bool(_URL.match(shard)) and not re.match(r"^[A-Za-z]:[\\/]", shard)  # not a Windows drive


# ------------------------------------------------------------------------------------ shard lists
def _brace_count(spec: str) -> int:
    """How many paths `_brace(spec)` gives, computed without expanding."""
    n = 1
    for body in re.findall(r"\{([^{}]*)\}", spec):
        rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
        n *= max(0, int(rng.group(2)) - int(rng.group(1)) + 1) if rng else len(body.split(","))
    return n


def _brace(spec: str) -> list[str]:
    """Bash-style brace expansion as webdataset uses it: `{000..009}` (zero-padded ranges) and `{a,b}`."""
    count = _brace_count(spec)
    if count > MAX_SHARDS:
        raise ShardFormatError(
            f"shard pattern {spec!r} expands to {count:,} paths, more than {MAX_SHARDS:,}: "
            "check the range (write it low..high with the numbers of the shards that exist)"
        )
    m = re.search(r"\{([^{}]*)\}", spec)
    if m is None:
        return [spec]
    head, body, tail = spec[: m.start()], m.group(1), spec[m.end() :]
    rng = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if rng:
        lo, hi = rng.groups()
        width = len(lo) if lo.startswith("0") or len(lo) == len(hi) else 0
        items = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
        if not items:
            raise ValueError(f"shard pattern {spec!r}: the range {{{body}}} is empty (write it low..high)")
    else:
        items = body.split(",")
    return [out for item in items for out in _brace(head + item + tail)]


def expand_shards(spec: str | Path | Sequence[str | Path]) -> list[str]:
    """Shard paths from a brace pattern (`train-{000000..000009}.tar`), a glob, a directory (its
    `train-*.tar`, else all `*.tar`), or a list of those; every file must exist."""
    if isinstance(spec, (list, tuple)):
        return [p for s in spec for p in expand_shards(s)]
    if is_url(str(spec)):  # read through webdataset (http(s)://, pipe:, gs://, ...): checked on open
        return _brace(str(spec))
    spec = str(Path(spec).expanduser())
    if Path(spec).is_dir():
        found = sorted(glob.glob(str(Path(spec) / "train-*.tar"))) or sorted(glob.glob(str(Path(spec) / "*.tar")))
        if not found:
            raise FileNotFoundError(f"shards: {spec} holds no .tar shards; write some with `vitkit make-shards`")
        return found
    paths = []
    for p in _brace(spec):
        paths += sorted(glob.glob(p)) if any(c in p for c in "*?[") else [p]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing or not paths:
        raise FileNotFoundError(
            f"shards: {len(missing)} of {len(paths)} shard file(s) of {spec!r} do not exist "
            f"(first: {missing[0] if missing else spec}); pass --data.data_dir='DIR/train-{{000000..000009}}.tar' "
            "with the range of the shards on disk, a glob, or the directory"
        )
    return paths


def _sibling_split(train: list[str], split: str, meta: dict | None = None) -> list[str] | None:
    """The `split` shards next to the train shards (same names with "train" replaced), if all exist; for
    URLs, which cannot be listed, the `split` shards that dataset.json names (`write_shards` lists them)."""
    if any(is_url(p) for p in train):
        names = (meta or {}).get("shards", {}).get(split) if isinstance((meta or {}).get("shards"), dict) else None
        if not names or train[0].startswith("pipe:") or not all(isinstance(n, str) and "/" not in n for n in names):
            return None
        return [train[0].rsplit("/", 1)[0] + "/" + n for n in names]
    if not all("train" in Path(p).name for p in train):
        return None
    for variant in (split,) if split == "test" else ("val", "valid", "validation"):
        pattern = str(Path(train[0]).parent / re.sub(r"train-?\d*", f"{variant}-*", Path(train[0]).name, count=1))
        found = sorted(glob.glob(pattern))
        if found:
            return found
    return None


# ------------------------------------------------------------------------------------ reading
def _key_ext(name: str) -> tuple[str, str] | None:
    base = name.rsplit("/", 1)[-1]
    if "." not in base or base.startswith("."):
        return None
    key, ext = base.split(".", 1)
    return name[: len(name) - len(base)] + key, ext.lower()


class _TarInfo(tarfile.TarInfo):
    """Records why the member list ended: an end-of-archive block, or a truncated / damaged header."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.vitkit_end = e
            raise


def _open_shard(shard: str):
    """A file object of a shard: local files directly, URLs through webdataset's `gopen`."""
    if not is_url(shard):
        return open(shard, "rb")
    try:
        from webdataset import gopen
    except ImportError:
        raise ImportError(
            f"shard {shard}: URLs are read through webdataset: pip install 'vitkit[shards]' (or webdataset)"
        ) from None
    try:
        return gopen(shard, "rb")
    except Exception as e:  # noqa: BLE001 - gopen raises what its scheme's opener raises
        raise ShardFormatError(f"shard {shard}: cannot open ({type(e).__name__}: {e})") from None


def _members(shard: str, want: Callable[[str], bool]) -> Iterator[tuple[str, str, bytes | None]]:
    """(key, extension, bytes or None) of every file member of a shard, in tar order; the bytes of those
    members whose extension `want`s them. Sizes are checked before anything is read: a member larger
    than `MAX_MEMBER_BYTES` (label members: `MAX_LABEL_BYTES`), or one that runs past the end of a local
    file, is a `ShardFormatError` naming it, and so is a shard that ends without tar's end-of-archive
    block (truncated between members)."""
    shard = str(shard)
    last = None
    raw = _open_shard(shard)
    done = False
    try:
        local = not is_url(shard)
        head = raw.read(2) if local else b""
        size = raw.seek(0, 2) if local else None
        if local:
            raw.seek(0)
        plain = local and head != b"\x1f\x8b" and not shard.endswith((".gz", ".tgz", ".bz2", ".xz"))
        try:
            tar = tarfile.open(fileobj=raw, mode="r:*" if local else "r|*", tarinfo=_TarInfo)  # noqa: SIM115
            with tar:
                for member in tar:
                    ke = _key_ext(member.name) if member.isfile() else None
                    if ke is None:
                        continue
                    key, ext = ke
                    limit, name = (
                        (MAX_LABEL_BYTES, "MAX_LABEL_BYTES")
                        if ext in ("cls", "json")
                        else (MAX_MEMBER_BYTES, "MAX_MEMBER_BYTES")
                    )
                    if plain and member.offset_data + member.size > size:
                        raise ShardFormatError(
                            f"shard {shard} is truncated: member {member.name} declares {member.size:,} bytes from "
                            f"offset {member.offset_data:,}, the file ends at {size:,}; write or download it again"
                        )
                    if member.size > limit:
                        raise ShardFormatError(
                            f"shard {shard}: member {member.name} declares {member.size:,} bytes, more than "
                            f"{limit:,} (vitkit.data.shards.{name}); "
                            "the shard is damaged, or raise the limit if the member is genuine"
                        )
                    data = tar.extractfile(member).read() if want(ext) else None
                    last = member.name
                    yield key, ext, data
                end = getattr(tar, "vitkit_end", None)
            done = True
        except tarfile.TarError as e:
            if is_url(shard) and last is None:  # nothing came back: say why the reader stopped (curl's exit, ...)
                cause: Exception = e
                try:
                    raw.close()
                except OSError as why:
                    cause = why
                raise ShardFormatError(f"shard {shard}: cannot read it ({type(cause).__name__}: {cause})") from None
            where = f" after member {last}" if last else ""
            raise ShardFormatError(f"shard {shard}: not a readable tar file{where} ({e}); write it again") from None
        except (EOFError, OSError, zlib.error) as e:
            if is_url(shard) and last is None:
                raise ShardFormatError(f"shard {shard}: cannot read it ({type(e).__name__}: {e})") from None
            where = f" after member {last}" if last else ""
            raise ShardFormatError(
                f"shard {shard}: truncated or corrupt{where} ({type(e).__name__}: {e}); write or download it again"
            ) from None
    finally:
        try:
            raw.close()  # a URL's close reports how its reader exited (curl's status, ...)
        except OSError as e:
            if done:  # otherwise an error is on its way already, or the reader stopped early
                raise ShardFormatError(f"shard {shard}: cannot read it ({type(e).__name__}: {e})") from None
    if not isinstance(end, tarfile.EOFHeaderError):
        why = (
            "it ends inside a header"
            if isinstance(end, tarfile.TruncatedHeaderError)
            else "it ends without tar's end-of-archive block"
            if isinstance(end, tarfile.EmptyHeaderError)
            else f"a damaged header follows ({end})"
        )
        where = f" after member {last}" if last else ""
        raise ShardFormatError(f"shard {shard} is truncated or corrupt{where}: {why}; write or download it again")


def iter_tar_samples(path: str | Path) -> Iterator[dict[str, bytes]]:
    """{'__key__': key, ext: bytes, ...} per sample, in tar order (members of a key are adjacent)."""
    current: dict | None = None
    for key, ext, data in _members(str(path), lambda ext: True):
        if current is not None and current["__key__"] != key:
            yield current
            current = None
        if current is None:
            current = {"__key__": key}
        current[ext] = data
    if current is not None:
        yield current


def split_of(key: str, seed: int, val_fraction: float, test_fraction: float | None) -> str:
    """'train', 'val' or 'test' for a sample key: a seeded CRC-32 hash, so the same key always lands
    in the same split whatever shard holds it. `test_fraction=None`: the test split is given."""
    u = zlib.crc32(f"{seed}:{key}".encode()) / 2**32
    if test_fraction is not None:
        if u < test_fraction:
            return "test"
        u = (u - test_fraction) / (1 - test_fraction)
    return "val" if u < val_fraction else "train"


class SplitFilter:
    """`keep(key)` of one split: picklable (DataLoader workers started with spawn) and stateless."""

    def __init__(self, split: str, seed: int, val_fraction: float, test_fraction: float | None) -> None:
        self.split, self.seed, self.val_fraction, self.test_fraction = split, seed, val_fraction, test_fraction

    def __call__(self, key: str) -> bool:
        return split_of(key, self.seed, self.val_fraction, self.test_fraction) == self.split


def _label(sample: dict[str, bytes]) -> int:
    if "cls" in sample:
        return int(sample["cls"].decode().strip())
    if "json" in sample:
        return int(json.loads(sample["json"])["label"])
    raise ValueError("no label member (.cls or .json with 'label')")


def index_shards(shards: Sequence[str], progress: bool = True) -> list[tuple[str, int | None]]:
    """(key, label) of every sample, reading tar headers and the small label members only (a URL is
    read as a stream). A key that appears twice with different labels (in one shard or two) is a
    `ShardFormatError` naming both places; a repeated key with the same label is logged."""
    out: dict[str, int | None] = {}
    where: dict[str, str] = {}
    repeated = 0
    for shard in tqdm(
        shards, desc="indexing shards", unit="shard", disable=not progress or len(shards) < 8, leave=False
    ):
        previous = None
        for key, ext, data in _members(shard, lambda ext: ext in ("cls", "json")):
            if key != previous and key in where:  # not the next member of the same sample: a repeated key
                repeated += 1
                if repeated == 1:
                    logger.warning(
                        "shard %s: key %r already appears in %s; such samples are read as often as they appear",
                        shard,
                        key,
                        where[key],
                    )
            previous = key
            where.setdefault(key, shard)
            out.setdefault(key, None)
            if data is None:
                continue
            try:
                label = _label({ext: data})
            except (ValueError, KeyError, TypeError):
                continue  # reported when the sample is decoded
            if out[key] is not None and out[key] != label:
                raise ShardFormatError(
                    f"shard {shard}: sample {key!r} has label {label}, but the same key has label {out[key]} in "
                    f"{where[key]}; keys must be unique across the shards (write them again, e.g. with "
                    "`vitkit make-shards`)"
                )
            out[key] = label
    if repeated > 1:
        logger.warning("%d repeated sample keys across %d shard(s)", repeated, len(shards))
    return list(out.items())


class TarShardDataset(IterableDataset):
    """Decoded samples (float32 (C, H, W) in [0, 1], label) of tar shards; see the module docstring.

    `keep(key)` selects a split's samples; `repeat=True` cycles through further passes (each with
    its own shard order) for training; `num_samples` (the split's size) is what `len()` returns.
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        in_chans: int = 3,
        img_size: int | tuple[int, int] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        shuffle_shards: bool = False,
        seed: int = 0,
        strict: bool = False,
        keep: Callable[[str], bool] | None = None,
        repeat: bool = False,
        shuffle_buffer: int = 0,
        num_samples: int | None = None,
    ):
        if not shards:
            raise ValueError("TarShardDataset needs at least one shard path")
        self.shards = [str(s) for s in shards]
        self.in_chans = in_chans
        self.img_size = (img_size, img_size) if isinstance(img_size, int) else img_size
        from .folder import folder_transform

        # resize + crop after vitkit's one decoder, as image folders (vitkit train / eval set it from the data config)
        self.preprocess = folder_transform(self.img_size)
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank, world_size = (dist.get_rank(), dist.get_world_size()) if ready else (0, 1)
        if len(self.shards) < world_size:
            raise ValueError(
                f"{len(self.shards)} shard(s) for {world_size} processes: every process needs at least "
                "one shard; write more, smaller shards (vitkit make-shards --maxcount)"
            )
        self.rank, self.world_size = rank, world_size
        self.shuffle_shards, self.seed, self.strict, self.epoch = shuffle_shards, seed, strict, 0
        self.keep, self.repeat, self.shuffle_buffer, self.num_samples = keep, repeat, shuffle_buffer, num_samples

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("this TarShardDataset was built without num_samples")
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def my_shards(self, worker: int = 0, num_workers: int = 1, epoch_pass: int = 0) -> list[str]:
        shards = list(self.shards)
        if self.shuffle_shards:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 1_009 + epoch_pass)
            shards = [shards[i] for i in torch.randperm(len(shards), generator=g).tolist()]
        return shards[self.rank :: self.world_size][worker::num_workers]

    def _decode(self, sample: dict[str, bytes]) -> tuple[torch.Tensor, int] | None:
        Image, ImageOps = _pil()
        key = sample["__key__"]
        ext = next((e for e in _IMAGE_EXTS if e in sample), None)
        try:
            if ext is None:
                raise ValueError(f"no image member (one of {', '.join(_IMAGE_EXTS)})")
            label = _label(sample)
            from .transforms import load_image

            im = load_image(sample[ext], self.in_chans)
            a = (
                np.asarray(im, dtype=np.uint8)
                if self.preprocess is None
                else self.preprocess.to_uint8(im).permute(1, 2, 0).numpy()
            )
        except Exception as e:
            if self.strict:
                raise ValueError(f"sample {key!r}: {type(e).__name__}: {e}") from e
            logger.warning("skipping sample %r: %s: %s", key, type(e).__name__, e)
            return None
        a = a[:, :, None] if a.ndim == 2 else a
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0), label

    def _samples(self, worker: int, num_workers: int) -> Iterator[dict[str, bytes]]:
        for epoch_pass in itertools.count() if self.repeat else (0,):
            shards = self.my_shards(worker, num_workers, epoch_pass)
            found = False
            for shard in shards:
                for sample in iter_tar_samples(shard):
                    if self.keep is None or self.keep(sample["__key__"]):
                        found = True
                        yield sample
            if not found:  # no shard, or none of this split's samples: do not cycle forever
                return

    def __iter__(self) -> Iterator[tuple[torch.Tensor, int]]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        samples = self._samples(worker, num_workers)
        if self.shuffle_buffer > 1:
            samples = _shuffled(
                samples, self.shuffle_buffer, random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{worker}")
            )
        for sample in samples:
            out = self._decode(sample)
            if out is not None:
                yield out


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer (as webdataset's `.shuffle(size)`): fill, then emit a random slot per input."""
    buf: list = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        j = rng.randrange(size)
        yield buf[j]
        buf[j] = item
    rng.shuffle(buf)
    yield from buf


class ShardBatches:
    """The engine's per-epoch batches for a stream (the same interface as `train.engine.Batches`)."""

    def __init__(
        self,
        data: TarShardDataset,
        batch_size: int,
        rank: int,
        world: int,
        seed: int,
        num_workers: int = 0,
        shuffle_buffer: int = SHUFFLE_BUFFER,
    ) -> None:
        if batch_size % world:
            raise ValueError(f"--run.batch_size={batch_size} must be divisible by the number of processes ({world})")
        if len(data) < batch_size:
            raise ValueError(
                f"the training shards hold {len(data)} samples, fewer than one batch ({batch_size}): "
                "lower --run.batch_size"
            )
        self.num_workers = min(num_workers, len(data.shards[rank::world]))
        # a buffer larger than one worker's share would mix the next pass into this one
        buffer = min(shuffle_buffer, len(data) // world // max(1, self.num_workers))
        self.data = TarShardDataset(
            data.shards,
            data.in_chans,
            data.img_size,
            rank,
            world,
            shuffle_shards=True,
            seed=seed,
            strict=data.strict,
            keep=data.keep,
            repeat=True,
            shuffle_buffer=buffer,
            num_samples=len(data),
        )
        self.per_rank = batch_size // world
        self.steps = len(data) // batch_size

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int):
        self.data.set_epoch(epoch)
        loader = torch.utils.data.DataLoader(self.data, batch_size=self.per_rank, num_workers=self.num_workers)
        yield from itertools.islice(loader, self.steps)


# ------------------------------------------------------------------------------------ splits
def _read_meta(shards: list[str]) -> dict:
    if is_url(shards[0]):  # dataset.json next to the shards, read through webdataset as they are
        if shards[0].startswith("pipe:"):
            return {}
        url = shards[0].rsplit("/", 1)[0] + "/" + META_FILE
        try:
            with _open_shard(url) as f:
                text = f.read(MAX_LABEL_BYTES + 1)
        except Exception:  # noqa: BLE001 - no dataset.json: classes from the labels
            return {}
        if not text or len(text) > MAX_LABEL_BYTES:
            return {}
        try:
            meta = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError):
            return {}
        return meta if isinstance(meta, dict) else {}
    path = Path(shards[0]).parent / META_FILE
    if not path.is_file():
        return {}
    if path.stat().st_size > MAX_LABEL_BYTES:
        raise ShardFormatError(
            f"shards: {path} is larger than {MAX_LABEL_BYTES:,} bytes; it is not vitkit's {META_FILE}"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"shards: {path} is not valid JSON ({e}); delete it or write the shards again") from None
    return meta if isinstance(meta, dict) else {}


def load_shard_splits(data_dir, val_fraction: float, seed: int, strict: bool, img_size, test_fraction: float):
    """`load_dataset('shards', pattern)`: train/val/test `TarShardDataset`s, classes and statistics."""
    from .datasets import DatasetSplits

    if data_dir is None:
        raise ValueError(
            "shards: pass --data.data_dir='DIR/train-{000000..000009}.tar' (a brace pattern, a glob "
            "or the shard directory); write shards with `vitkit make-shards DATASET DIR`"
        )
    train_shards = expand_shards(data_dir)
    meta = _read_meta(train_shards)
    given = {s: _sibling_split(train_shards, s, meta) for s in ("val", "test")}
    carve_test = None if given["test"] else test_fraction
    carve_val = 0.0 if given["val"] else val_fraction
    index = index_shards(train_shards)
    assigned = [split_of(k, seed, carve_val, carve_test) for k, _ in index]
    counts = {s: assigned.count(s) for s in ("train", "val", "test")}
    labels = [y for _, y in index if y is not None]
    if "classes" in meta:
        classes = [str(c) for c in meta["classes"]]
    elif labels:
        top = max(labels)
        if top >= MAX_INFERRED_CLASSES:
            key = next(k for k, y in index if y == top)
            raise ShardFormatError(
                f"shards: sample {key!r} has label {top:,}; without {META_FILE} the classes are 0..the largest "
                f"label, and more than {MAX_INFERRED_CLASSES:,} classes is not a label set. Fix the label, or "
                f'write {META_FILE} next to the shards with the class names ({{"classes": [...]}})'
            )
        classes = [str(i) for i in range(top + 1)]
    else:
        raise ValueError(f"shards: no sample in {train_shards[0]}... has a .cls or .json label")

    def check_labels(index, shards):
        found = [(k, y) for k, y in index if y is not None and not 0 <= y < len(classes)]
        if found:
            k, y = found[0]
            src = f"{META_FILE} lists" if "classes" in meta else "the train shards have"
            raise ShardFormatError(
                f"shards: sample {k!r} of {shards[0]}... has label {y}, but {src} {len(classes)} "
                f"classes (0..{len(classes) - 1}); {len(found)} sample(s) are out of range"
            )

    check_labels(index, train_shards)
    if counts["train"] == 0:
        raise ValueError(f"shards: {data_dir} holds no training samples")

    def in_split(split: str) -> SplitFilter:
        return SplitFilter(split, seed, carve_val, carve_test)

    # statistics, channels and size from the first training samples of the stream
    Image, _ = _pil()
    probe = TarShardDataset(train_shards, 3, None, 0, 1, keep=in_split("train"))
    raw, modes, first_size = [], set(), None
    for sample in itertools.islice(probe._samples(0, 1), STATS_SAMPLES):
        ext = next((e for e in _IMAGE_EXTS if e in sample), None)
        try:
            with Image.open(io.BytesIO(sample[ext])) as im:
                modes.add(im.mode)
                first_size = first_size or (im.size[1], im.size[0])
        except Exception as e:  # noqa: BLE001 - reported by name (or fatal with strict) when decoded for training
            logger.debug("statistics: skipping sample %r (%s)", sample["__key__"], e)
            continue
        raw.append(sample)
    in_chans = int(meta.get("in_chans") or channels_for(modes))
    size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size or meta.get("img_size") or first_size)
    decoder = TarShardDataset(train_shards, in_chans, size, 0, 1, strict=strict)
    stats = [x for x in (decoder._decode(s) for s in raw) if x is not None]
    if not stats:
        raise ValueError(f"shards: none of the first training samples of {train_shards[0]} decodes as an image")
    mean, std = channel_stats(torch.stack([x for x, _ in stats]))

    def dataset(shards, split, n):
        return TarShardDataset(
            shards, in_chans, size, 0, 1, strict=strict, keep=in_split(split) if split else None, num_samples=n
        )

    def given_split(split):
        shards = given[split]
        split_index = index_shards(shards)
        check_labels(split_index, shards)
        return dataset(shards, None, len(split_index))

    train = dataset(train_shards, "train", counts["train"])
    test = given_split("test") if given["test"] else dataset(train_shards, "test", counts["test"])
    if given["val"]:
        val = given_split("val")
    else:
        val = dataset(train_shards, "val", counts["val"]) if val_fraction > 0 and counts["val"] else None
    logger.info(
        "shards: %d train shard(s), %d/%s/%d train/val/test samples",
        len(train_shards),
        len(train),
        len(val) if val is not None else 0,
        len(test),
    )
    return DatasetSplits("shards", train, val, test, classes, mean, std, in_chans, size)


# ------------------------------------------------------------------------------------ writing
def write_shards(
    splits, out_dir: str | Path, maxcount: int = 10_000, shuffle: bool = True, seed: int = 0, progress: bool = True
) -> dict[str, list[Path]]:
    """Write a `DatasetSplits` (any `load_dataset` result) as `{split}-{i:06d}.tar` shards of at most
    `maxcount` PNG + .cls samples each, plus `dataset.json` (classes, in_chans, img_size, counts, and
    the shard file names of every split, which is how a reader of URLs finds the val/test shards).

    Samples are shuffled (seeded) before writing, as WebDataset recommends: a stream can only
    shuffle within a buffer. Every shard is written atomically (temporary file, then rename).
    """
    from ..hub import atomic_write

    Image, _ = _pil()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if maxcount < 1:
        raise ValueError(f"maxcount must be at least 1, got {maxcount}")
    written: dict[str, list[Path]] = {}
    counts = {}
    for split in ("train", "val", "test"):
        data = getattr(splits, split)
        if data is None:
            continue
        n = len(data)
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist() if shuffle else range(n)
        order = list(order)
        paths = []
        bar = tqdm(total=n, desc=f"writing {split} shards", unit="img", disable=not progress, leave=False)
        for s, start in enumerate(range(0, n, maxcount)):
            path = out / f"{split}-{s:06d}.tar"

            def write(tmp, chunk=order[start : start + maxcount], data=data, bar=bar):
                with tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
                    for i in chunk:
                        img, label = _uint8_item(data, i)
                        buf = io.BytesIO()
                        Image.fromarray(img).save(buf, "PNG")
                        for ext, payload in (("png", buf.getvalue()), ("cls", str(label).encode())):
                            info = tarfile.TarInfo(f"{i:08d}.{ext}")
                            info.size, info.mode = len(payload), 0o644
                            tar.addfile(info, io.BytesIO(payload))
                        bar.update(1)

            atomic_write(path, write)
            paths.append(path)
        bar.close()
        written[split], counts[split] = paths, n
    meta = {
        "classes": list(splits.classes),
        "in_chans": splits.in_chans,
        "img_size": list(splits.img_size),
        "source": splits.name,
        "counts": counts,
        "shards": {split: [p.name for p in paths] for split, paths in written.items()},
    }  # for URL readers
    atomic_write(out / META_FILE, lambda tmp: Path(tmp).write_text(json.dumps(meta, indent=2) + "\n"))
    return written


def _uint8_item(data, i: int) -> tuple[np.ndarray, int]:
    """(H, W) or (H, W, 3) uint8 image and label of item i of a Split or an image-folder dataset."""
    if hasattr(data, "load_uint8"):
        x, y = data.load_uint8(i), int(data.samples[i][1])
    else:
        x, y = data.images[i], int(data.labels[i])
        if x.dtype != torch.uint8:
            x = (x.float() * 255).round().clamp(0, 255).to(torch.uint8)
    a = x.permute(1, 2, 0).numpy()
    return (a[:, :, 0] if a.shape[2] == 1 else a), y

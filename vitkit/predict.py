"""Classify image files (video files, for video models) with a saved model (a vitkit or Hugging Face directory).

Preprocessing is the model's data config (`vitkit.data.resolve_data_config(model=model)`: input
size, interpolation, crop_pct, crop_mode, mean, std, from its `pretrained_cfg`) through timm's
evaluation transform (`vitkit.data.create_transform`), after vitkit's one image decoder
(`vitkit.data.load_image`, which the training loaders use too): the same file gives the same
tensor here, in `vitkit eval` and in training's evaluation.

Two engines run the model: `torch` (the PyTorch module) and `onnxruntime`, the graph `vitkit export`
writes run by onnxruntime's CPU provider (`OnnxRuntimeModel`). The ONNX file is exported once and
kept next to the weights (`MODEL_DIR/model.onnx`; a temporary file where that directory is not
writable or holds another export), and reused while its metadata's weights fingerprint matches the
model's. Its preprocessing is the data config stored in the file, which is the model's. On the
first batch the onnxruntime outputs are compared with the PyTorch model's, and a difference above
the tolerance is an error.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from .hub import from_pretrained
from .layers import to_2tuple

logger = logging.getLogger("vitkit")

ENGINES = ("torch", "onnxruntime")
CHECK_ATOL = 1e-4  # onnxruntime vs PyTorch on the first batch: max |diff| <= CHECK_ATOL * max(1, max |logit|)


def model_directory(source: str | Path) -> str | Path:
    """A run directory's `model/` folder; anything else as given (a model directory or a Hub repo id)."""
    path = Path(source)
    return path / "model" if (path / "model" / "config.json").is_file() else source


class OnnxRuntimeModel(nn.Module):
    """An exported ONNX graph run by onnxruntime on the CPU, called as the PyTorch model is: normalised
    images (B, C, H, W) -> logits (B, classes), fp32.

    `data_config`: the preprocessing stored in the file (`vitkit.data_config`); `pretrained_cfg`: that
    and the class names and dataset stored with it. `reference`: the PyTorch model the file was exported
    from; the first call then also runs it and raises if the outputs differ by more than `CHECK_ATOL`
    relative to max(1, the largest |logit|), and logs the difference (`checked` holds it)."""

    def __init__(self, session, path: str | Path, reference: nn.Module | None = None, label: str | None = None) -> None:
        from .export import DATA_CONFIG_KEY, MODEL_INFO_KEY

        super().__init__()
        self.session, self.path, self.label = session, Path(path), label or str(path)
        meta = session.get_modelmeta().custom_metadata_map
        if DATA_CONFIG_KEY not in meta:
            raise ValueError(
                f"{path} holds no preprocessing ({DATA_CONFIG_KEY!r} metadata): it was not written by "
                f"`vitkit export`; export the model with vitkit export, or give its model directory"
            )
        self.data_config = {
            k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta[DATA_CONFIG_KEY]).items()
        }
        self.info = json.loads(meta.get(MODEL_INFO_KEY, "{}"))
        self.pretrained_cfg = {
            **self.data_config,
            **{k: self.info[k] for k in ("label_names", "dataset") if self.info.get(k) is not None},
        }
        self.model_name = self.info.get("model_name")
        self._reference = [reference] if reference is not None else []  # not a submodule: no parameters here
        self.checked: float | None = None

    @property
    def reference(self) -> nn.Module | None:
        return self._reference[0] if self._reference else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from .export import INPUT_NAME, OUTPUT_NAME

        x = x.detach().float().cpu().contiguous()
        out = torch.from_numpy(self.session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
        if self.reference is not None and self.checked is None:
            self.check(x, out)
        return out

    @torch.no_grad()
    def check(self, x: torch.Tensor, out: torch.Tensor) -> float:
        """Compare onnxruntime's `out` on `x` with the PyTorch model's; raise above the tolerance."""
        model = self.reference
        was_training = model.training
        ref = model.eval()(x).float()
        model.train(was_training)
        if out.shape != ref.shape:
            raise RuntimeError(
                f"{self.label}: onnxruntime returned shape {tuple(out.shape)}, PyTorch "
                f"{tuple(ref.shape)}: the ONNX file is not this model's export; delete {self.path}"
            )
        diff = (out - ref).abs().max().item()
        scale = max(1.0, ref.abs().max().item())
        if not diff <= CHECK_ATOL * scale:
            raise RuntimeError(
                f"{self.label}: onnxruntime and PyTorch differ by up to {diff:.3g} on the first batch "
                f"(tolerance {CHECK_ATOL * scale:.3g}); the export is not faithful: use --engine torch "
                f"and please report it with the model name"
            )
        self.checked = diff
        logger.info(
            "onnxruntime check on the first batch (%d image(s)): max |onnxruntime - PyTorch| = %.2e "
            "(tolerance %.2g): OK",
            len(x),
            diff,
            CHECK_ATOL * scale,
        )
        return diff


def check_onnxruntime_model(model: nn.Module, source: str | Path) -> None:
    """Refuse the models whose ONNX graph would not compute what the PyTorch model does."""
    name = getattr(model, "model_name", None) or str(source)
    if getattr(getattr(model, "config", None), "num_frames", None):
        raise ValueError(
            f"--engine onnxruntime runs image classifiers; {name} is a video model, which `vitkit "
            f"export` does not export: use --engine torch"
        )
    if hasattr(model, "forward_dynamic"):
        raise ValueError(
            f"--engine onnxruntime cannot run {name}: an early-exit model (DVT) chooses its exit per "
            f"image from its confidence, which an exported graph does not: use --engine torch"
        )


def _session_if_current(path: Path, fingerprint: str, threads: int | None):
    """An onnxruntime session of `path` if it is the export of the weights with `fingerprint`, else None."""
    from .export import MODEL_INFO_KEY, onnx_session

    if not path.is_file():
        return None
    try:
        session = onnx_session(path, threads)
    except ImportError:
        raise
    except Exception as e:  # noqa: BLE001 -- a damaged or foreign file: export again (elsewhere)
        logger.warning("%s is not a readable ONNX file (%s)", path, " ".join(str(e).split())[:200])
        return None
    info = session.get_modelmeta().custom_metadata_map.get(MODEL_INFO_KEY)
    try:
        same = info is not None and json.loads(info).get("fingerprint") == fingerprint
    except ValueError:
        same = False
    return session if same else None


def load_onnxruntime_model(source: str | Path, threads: int | None = None, check: bool = True) -> OnnxRuntimeModel:
    """`source` (a run or model directory, a Hub repo id, or an `.onnx` file written by `vitkit export`) as an
    `OnnxRuntimeModel` with `threads` intra-op threads (default: torch's). A directory's export is
    `MODEL_DIR/model.onnx`, written on first use and reused while it matches the weights; `check` compares the
    first batch with PyTorch (for an `.onnx` file: when its directory holds the model it was exported from)."""
    from .export import export_onnx, onnx_session, weights_fingerprint

    path = Path(source)
    if path.suffix.lower() == ".onnx":
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        ort_model = OnnxRuntimeModel(onnx_session(path, threads), path)
        if check and (path.parent / "config.json").is_file():  # the model directory it was exported from?
            model = from_pretrained(path.parent).eval()
            check_onnxruntime_model(model, path.parent)
            if ort_model.info.get("fingerprint") == weights_fingerprint(model):
                ort_model._reference.append(model)
            else:
                logger.warning(
                    "%s is not the export of the weights in %s: onnxruntime's outputs are not checked against PyTorch",
                    path,
                    path.parent,
                )
        elif check:
            logger.info("%s: no PyTorch model beside it (config.json) to check onnxruntime's outputs against", path)
        return ort_model
    model_dir = model_directory(source)
    model = from_pretrained(model_dir).eval()
    check_onnxruntime_model(model, source)
    fingerprint = weights_fingerprint(model)
    reference = model if check else None
    cached = Path(model_dir) / "model.onnx" if Path(model_dir).is_dir() else None  # not for a Hub repo id
    session = _session_if_current(cached, fingerprint, threads) if cached is not None else None
    if session is not None:
        logger.info("onnxruntime: %s (the export of these weights)", cached)
        return OnnxRuntimeModel(session, cached, reference, label=str(source))
    if cached is not None and not cached.exists():
        try:
            export_onnx(model, cached, check=False)
        except OSError as e:  # a read-only model directory: export to a temporary file instead
            logger.info("could not write %s (%s): exporting to a temporary file", cached, e.strerror or e)
        else:
            logger.info("onnxruntime: exported %s to %s", source, cached)
            return OnnxRuntimeModel(onnx_session(cached, threads), cached, reference, label=str(source))
    elif cached is not None:
        logger.warning(
            "%s is not the export of the weights in %s (other weights, or not written by vitkit): "
            "exporting to a temporary file; delete it to keep the new export there",
            cached,
            model_dir,
        )
    tmp = Path(tempfile.mkdtemp(prefix="vitkit-onnx-"))
    try:
        export_onnx(model, tmp / "model.onnx", check=False)
        session = onnx_session(tmp / "model.onnx", threads)  # the session holds the graph: the file can go
        return OnnxRuntimeModel(session, tmp / "model.onnx", reference, label=str(source))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_model(source: str | Path, engine: str = "torch", threads: int | None = None, check: bool = True):
    """The model `vitkit predict` / `vitkit eval` run: the PyTorch module (`engine='torch'`) or an
    `OnnxRuntimeModel` (`engine='onnxruntime'`, see `load_onnxruntime_model`). `threads`: intra-op threads."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be at least 1, got {threads}")
    if engine == "onnxruntime":
        from .export import _require

        _require("onnxruntime", "--engine onnxruntime")
        return load_onnxruntime_model(source, threads, check)
    if threads:
        torch.set_num_threads(threads)
    if Path(source).suffix.lower() == ".onnx":
        raise ValueError(f"{source} is an ONNX file: run it with --engine onnxruntime")
    return from_pretrained(model_directory(source)).eval()


def load_video(path: str | Path, model) -> torch.Tensor:
    """One video file -> a normalised (C, T, H, W) clip for a video `model`: `num_frames` frames
    sampled uniformly over the video (the middle of T equal segments), shorter side resized to
    img_size / crop_pct (bilinear), centre crop (vitkit/data/video.py)."""
    from .data.video import load_clip

    cfg, c = model.pretrained_cfg, model.config
    clip = load_clip(
        path,
        c.num_frames,
        to_2tuple(c.img_size),
        stride=cfg.get("frame_stride"),
        crop_pct=cfg.get("crop_pct", 1.0),
        in_chans=c.in_chans,
    )
    mean = torch.tensor(cfg.get("mean", (0.5,) * c.in_chans)).view(-1, 1, 1, 1)
    std = torch.tensor(cfg.get("std", (0.5,) * c.in_chans)).view(-1, 1, 1, 1)
    return (clip - mean) / std


def image_transform(model):
    """The evaluation transform of `model`'s data config (a callable PIL image -> normalised (C, H, W))."""
    from .data.transforms import create_transform, model_data_config

    return create_transform(**model_data_config(model))


def load_image(path: str | Path, model, transform=None) -> torch.Tensor:
    """One image file -> a normalised (C, H, W) tensor for `model` (a video model: `load_video`).
    `transform`: `image_transform(model)`, built once by callers that read many files."""
    if getattr(model.config, "num_frames", None):  # video models (ViViT, TimeSformer, MViT) read videos
        return load_video(path, model)
    from .data.transforms import load_image as decode

    transform = transform if transform is not None else image_transform(model)
    return transform(decode(path, model.config.in_chans))


@torch.no_grad()
def predict_files(
    model_dir: str | Path,
    images: Sequence[str | Path],
    top_k: int = 3,
    bf16: bool = False,
    details: bool = False,
    engine: str = "torch",
    threads: int | None = None,
    check: bool = True,
):
    """Yield (path, [(label, probability), ...]) for each image, best first.

    `bf16` runs the model under bf16 autocast on the CPU (matmuls in bf16, softmax in fp32).
    `details` adds a third item, a dict: for early-exit models (DVT) the exit the image took and its
    GMACs ({"exit": k, "gmacs": g}), empty for other models.
    `engine`: 'torch' or 'onnxruntime' (`model_dir` may then be an `.onnx` file written by `vitkit export`;
    `check`: compare onnxruntime with PyTorch on the first image); `threads`: intra-op threads."""
    from .precision import resolve_bf16

    if engine == "onnxruntime" and bf16:
        raise ValueError("--bf16 applies to --engine torch; onnxruntime runs the exported graph in fp32")
    bf16 = resolve_bf16(bf16, "cpu")  # True is honoured; warns where bf16 is emulated (slower than fp32)
    model = load_model(model_dir, engine, threads, check)
    names = model.pretrained_cfg.get("label_names")
    if isinstance(model, OnnxRuntimeModel):
        from .data.transforms import create_transform
        from .data.transforms import load_image as decode

        transform = create_transform(**model.data_config)
        in_chans = model.data_config["input_size"][0]
        for path in images:
            probs = model(transform(decode(path, in_chans)).unsqueeze(0)).softmax(-1)[0]
            top = _top(probs, top_k, names)
            yield (str(path), top, {}) if details else (str(path), top)
        return
    dynamic = hasattr(model, "forward_dynamic")  # early exit: which exit, at what cost
    costs = (model.config.exit_gmacs or model.measure_exit_gmacs()) if dynamic and details else None
    transform = None if getattr(model.config, "num_frames", None) else image_transform(model)
    for path in images:
        info = {}
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            if dynamic:
                logits, exits = model.forward_dynamic(load_image(path, model, transform).unsqueeze(0))
                info = {"exit": int(exits[0]), "gmacs": costs[int(exits[0])]} if details else {}
            else:
                logits = model(load_image(path, model, transform).unsqueeze(0))
        top = _top(logits.float().softmax(-1)[0], top_k, names)
        yield (str(path), top, info) if details else (str(path), top)


def _top(probs: torch.Tensor, top_k: int, names) -> list[tuple[str, float]]:
    values, indices = probs.topk(min(top_k, probs.numel()))
    return [(names[i] if names else str(i), v.item()) for v, i in zip(values, indices.tolist())]

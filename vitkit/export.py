"""Export a model to ONNX with a dynamic batch axis, checked against onnxruntime.

    vitkit export runs/mine --format onnx                   # -> runs/mine/model/model.onnx
    vitkit export vit_small_patch16_224 --out vit_s.onnx     # a registered name: random weights

The graph comes from PyTorch's `torch.export`-based ONNX exporter (`torch.onnx.export(...,
dynamo=True)`, which needs the `onnxscript` package) with the batch dimension declared dynamic
(`torch.export.Dim`), so one file serves any batch size. Attention is traced on vitkit's eager
path (softmax(q k^T / sqrt(d)) v, ViT paper eq. 5-7): ONNX opset 18 has no fused attention
operator, the fused SDPA call decomposes to the same matmuls anyway, and the eager path is the one
every family exports cleanly (Swin's fused path trips the exporter's decomposition).

The written file is then run by onnxruntime on random inputs at two batch sizes -- the export
batch and a different one, which proves the batch axis is really dynamic -- and compared with the
PyTorch model in eval mode; a max |difference| above `atol` (default 1e-4) is an error. The file
is written through a temporary file and renamed, so a failed export never leaves a half file.

The graph takes normalised images; the preprocessing they need travels in the file's metadata
(`metadata_props`): `vitkit.data_config` holds the model's data config as JSON -- `input_size`,
`interpolation`, `crop_pct`, `crop_mode`, `mean`, `std`, as `vitkit.data.resolve_data_config(model=model)`
gives them and `vitkit predict` uses them -- so `create_transform(**json.loads(...))` prepares
an image for the ONNX model exactly as for the PyTorch one. `vitkit.model` holds the model's name,
class names and dataset, and a fingerprint of its weights (`weights_fingerprint`), by which
`vitkit predict --engine onnxruntime` knows an existing file is the export of the model it was given.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .layers import eager_attention, to_2tuple

logger = logging.getLogger("vitkit")

FORMATS = ("onnx",)
DATA_CONFIG_KEY = "vitkit.data_config"  # ONNX metadata: the preprocessing the graph's input expects (JSON)
MODEL_INFO_KEY = "vitkit.model"  # ONNX metadata: model name, class names, dataset, weights fingerprint (JSON)
DEFAULT_OPSET = 18
NATIVE_OPSET = 18  # torch's exporter builds opset-18 graphs; other opsets by conversion, which may fail
INPUT_NAME = "pixel_values"
OUTPUT_NAME = "logits"
_PROTOBUF_LIMIT = 2**31  # one ONNX protobuf file holds at most 2 GB


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how well onnxruntime reproduced PyTorch."""

    path: Path
    opset: int
    input_shape: tuple[int, ...]  # (batch, C, H, W) with the batch axis dynamic
    max_abs_diff: float | None  # worst |onnxruntime - PyTorch| over the checked batches; None if not checked
    checked_batches: tuple[int, ...]
    seconds: float
    atol: float = 1e-4

    def summary(self) -> str:
        shape = "x".join(["N", *map(str, self.input_shape[1:])])
        line = f"wrote {self.path} (ONNX opset {self.opset}, input {INPUT_NAME} {shape}, dynamic batch N)"
        if self.max_abs_diff is not None:
            batches = " and ".join(map(str, self.checked_batches))
            line += (
                f"\nonnxruntime check: max |onnxruntime - PyTorch| = {self.max_abs_diff:.2e} at batch "
                f"{batches} (tolerance {self.atol:g}): OK"
            )
        return line


def max_opset() -> int:
    """The newest ONNX opset the installed onnx package defines (the exporter writes up to it)."""
    return int(_require("onnx", "ONNX export").defs.onnx_opset_version())


def _require(module: str, purpose: str):
    try:
        return __import__(module)
    except ImportError:
        raise ImportError(
            f"{purpose} needs the {module!r} package: pip install 'vitkit[onnx]' "
            f"(or pip install onnx onnxruntime onnxscript)"
        ) from None


def load_for_export(source: str | Path) -> nn.Module:
    """A run directory, a vitkit / Hugging Face model directory, or a registered model name."""
    from .hub import from_pretrained
    from .registry import create_model, list_models

    path = Path(source)
    if path.exists():
        model_dir = path / "model" if (path / "model" / "config.json").is_file() else path
        return from_pretrained(model_dir)
    if str(source) in list_models():
        logger.warning(
            "%s is a registered model name, not a checkpoint: exporting random weights (the head "
            "too, so that the onnxruntime check compares non-zero logits)",
            source,
        )
        model = create_model(str(source))
        randomise_heads(model)
        return model
    raise FileNotFoundError(
        f"{source} is neither a checkpoint directory (a run directory, a vitkit or Hugging Face "
        f"model directory) nor a registered model name (`vitkit models` lists them)"
    )


def randomise_heads(model: nn.Module) -> None:
    """Random classifier heads instead of vitkit's zero init, so an output comparison cannot pass on zeros."""
    for name, module in model.named_modules():
        if name.startswith("head") and isinstance(module, nn.Linear):  # head, head_dist, head.fc (Swin)
            nn.init.trunc_normal_(module.weight, std=0.02)


def default_output(source: str | Path, fmt: str = "onnx") -> Path:
    """Next to the weights for a directory (`DIR/model.onnx`, `RUN/model/model.onnx`), else `NAME.onnx`."""
    path = Path(source)
    if path.is_dir():
        model_dir = path / "model" if (path / "model" / "config.json").is_file() else path
        return model_dir / f"model.{fmt}"
    return Path(f"{path.name}.{fmt}")


def example_input(model: nn.Module, batch: int) -> torch.Tensor:
    c = model.config
    return torch.randn(batch, c.in_chans, *to_2tuple(c.img_size))


def preprocessing_metadata(model: nn.Module) -> str:
    """The model's data config (what `vitkit predict` feeds it) as JSON, for the ONNX file's metadata."""
    import json

    from .data.transforms import model_data_config

    if not hasattr(model, "config"):  # a plain nn.Module: no pretrained cfg to describe it
        return json.dumps({})
    return json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in model_data_config(model).items()})


def weights_fingerprint(model: nn.Module) -> str:
    """sha256 of a model's architecture (its config), preprocessing and fp32 weights: an ONNX file whose
    metadata holds the same fingerprint was exported from these very weights (`vitkit predict --engine
    onnxruntime` reuses such a file instead of exporting again)."""
    import dataclasses
    import hashlib
    import json

    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if dataclasses.is_dataclass(config):
        h.update(json.dumps(dataclasses.asdict(config), sort_keys=True, default=str).encode())
    h.update(preprocessing_metadata(model).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu()
        t = t.float() if t.is_floating_point() else t
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def model_metadata(model: nn.Module) -> str:
    """What a program running the ONNX file needs besides the graph (JSON, under MODEL_INFO_KEY): the model's
    name, its class names and training dataset (where its pretrained cfg has them) and `weights_fingerprint`."""
    import json

    cfg = getattr(model, "pretrained_cfg", None) or {}
    return json.dumps(
        {
            "model_name": getattr(model, "model_name", None),
            "label_names": cfg.get("label_names"),
            "dataset": cfg.get("dataset"),
            "fingerprint": weights_fingerprint(model),
        }
    )


def onnx_session(path: str | Path, threads: int | None = None):
    """An onnxruntime CPU session for `path` (intra-op threads = `threads`, default torch's)."""
    ort = _require("onnxruntime", "running an ONNX model")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def check_onnx(
    path: str | Path, model: nn.Module, batches: tuple[int, ...] = (2, 3), atol: float = 1e-4, seed: int = 0
) -> float:
    """Max |onnxruntime - PyTorch| on random inputs at each batch size; raises if above `atol`."""
    session = onnx_session(path)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    worst = 0.0
    try:
        for b in batches:
            x = example_input(model, b)
            with torch.inference_mode():
                ref = model(x)
            got = torch.from_numpy(session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0])
            if got.shape != ref.shape:
                raise RuntimeError(
                    f"{path}: onnxruntime returned shape {tuple(got.shape)} at batch {b}, PyTorch {tuple(ref.shape)}"
                )
            worst = max(worst, (got - ref).abs().max().item())
    finally:
        torch.random.set_rng_state(generator_state)
    if worst > atol:
        raise RuntimeError(
            f"{path}: onnxruntime and PyTorch differ by up to {worst:.3g} (> {atol}); the export is "
            f"not faithful, please report it with the model name and opset"
        )
    return worst


@contextlib.contextmanager
def _quiet_exporter(converting: bool = False) -> Iterator[None]:
    """The exporter prints its progress and its optimiser logs every pass at INFO: keep the output to
    the summary (warnings and errors still come through; with `converting`, to an opset below the exporter's
    own, only errors: its warnings about the conversion are replaced by export_onnx's check of the result)."""
    loggers = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL if converting else logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)  # torch.export internals
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(
    model: nn.Module,
    out: str | Path,
    opset: int = DEFAULT_OPSET,
    batch: int = 2,
    check: bool = True,
    atol: float = 1e-4,
) -> ExportResult:
    """Write `model` as ONNX to `out` with a dynamic batch axis (the model is moved to the CPU in fp32).

    The export traces at `batch` (>= 2: torch.export specialises a size-1 dimension); with `check`,
    onnxruntime must reproduce PyTorch within `atol` at `batch` and at `batch + 1`.
    """
    _require("onnx", "ONNX export")
    _require("onnxscript", "ONNX export (torch's exporter)")
    if check:
        _require("onnxruntime", "checking an ONNX export (--no-check skips it)")
    if batch < 2:
        raise ValueError(f"export batch must be >= 2 (torch.export specialises a batch of 1), got {batch}")
    newest = max_opset()
    if isinstance(opset, bool) or not isinstance(opset, int) or not 1 <= opset <= newest:
        raise ValueError(
            f"ONNX opset {opset!r} does not exist for the installed onnx package (opsets 1 to "
            f"{newest}); choose another --opset ({DEFAULT_OPSET}, the default, is the exporter's own)"
        )
    out = Path(out)
    if not out.parent.is_dir():
        raise FileNotFoundError(f"the output directory {out.parent} does not exist")
    n_bytes = sum(p.numel() * 4 for p in model.parameters()) + sum(b.numel() * 4 for b in model.buffers())
    if n_bytes >= _PROTOBUF_LIMIT:
        raise ValueError(
            f"the weights take {n_bytes / 2**30:.1f} GiB in fp32, over ONNX's 2 GiB single-file "
            f"limit; export a smaller model"
        )
    was_training = model.training
    model = model.float().cpu().eval()
    x = example_input(model, batch)
    t0 = time.perf_counter()
    dims = ({0: torch.export.Dim("batch", min=1, max=4096)},)  # per positional input: the images' batch axis
    from .hub import atomic_path

    with atomic_path(out) as tmp:  # first: an unwritable --out fails before the export
        with eager_attention(), _quiet_exporter(converting=opset != NATIVE_OPSET), torch.no_grad():
            program = torch.onnx.export(
                model,
                (x,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=dims,
                opset_version=opset,
                verbose=False,
            )
        _check_opset(program, opset)
        program.model.metadata_props[DATA_CONFIG_KEY] = preprocessing_metadata(model)
        program.model.metadata_props[MODEL_INFO_KEY] = model_metadata(model)
        with _quiet_exporter():
            program.save(tmp, external_data=False)
            diff = check_onnx(tmp, model, (batch, batch + 1), atol) if check else None
    model.train(was_training)
    return ExportResult(
        out, opset, tuple(x.shape), diff, (batch, batch + 1) if check else (), time.perf_counter() - t0, atol
    )


def _check_opset(program, opset: int) -> None:
    """The exporter converts its graph to the requested opset and keeps its own where that fails: refuse then."""
    written = program.model.opset_imports.get("", program.model.opset_imports.get("ai.onnx"))
    if written != opset:
        why = (
            "an operator of the graph has no version that old; LayerNormalization, for one, starts at opset 17"
            if written is not None and opset < written
            else "the ONNX version converter does not reach it"
        )
        raise ValueError(
            f"torch's ONNX exporter cannot write this model in opset {opset}: it builds an opset "
            f"{written} graph and converting it to {opset} failed ({why}), so nothing was written. "
            f"Choose another --opset; {DEFAULT_OPSET}, the default, is the exporter's own"
        )


def export(
    source: str | Path | nn.Module,
    fmt: str = "onnx",
    out: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    check: bool = True,
    atol: float = 1e-4,
) -> ExportResult:
    """`vitkit export`: load a checkpoint (or take a model) and export it in format `fmt`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; supported: {', '.join(FORMATS)}")
    if isinstance(source, nn.Module):
        if out is None:
            raise ValueError("exporting a model object needs an output path (out=...)")
        model = source
    else:
        model = load_for_export(source)
        out = out if out is not None else default_output(source, fmt)
    return export_onnx(model, out, opset=opset, check=check, atol=atol)

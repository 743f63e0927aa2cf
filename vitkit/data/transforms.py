"""One preprocessing contract from an image file to the model's input tensor, in timm's names.

    from vitkit.data import create_transform, load_image, resolve_data_config

    config = resolve_data_config(model=model)   # input_size, interpolation, crop_pct, crop_mode, mean, std
    transform = create_transform(**config)      # PIL image -> normalised float (C, H, W)
    x = transform(load_image("cat.png", in_chans=config["input_size"][0]))

`resolve_data_config` is timm's `timm.data.resolve_data_config`: the same arguments, the same
precedence (explicit `args` over the pretrained cfg over timm's defaults: 224x224, bicubic,
crop_pct 0.875, crop mode 'center', ImageNet mean/std) and the same six fields.

`create_transform(input_size, is_training=False, ...)` builds timm's evaluation transform
(`transforms_imagenet_eval`) with Pillow and torch alone, and gives the same tensors as timm's on
the same PIL image, bit for bit: resize (the shorter side to size / crop_pct for crop mode
'center', both sides for 'squash', the longer side for 'border'), centre crop (or pad, for
'border', with the mean colour), scale to [0, 1], normalise. It does not import torchvision, whose
PyPI wheel fails to import next to a CPU-only torch (vitkit/compat.py). `normalize=False` stops
before the scaling and returns uint8 (C, H, W), as timm's does; vitkit's evaluation takes those
and normalises inside the graph (vitkit.train.engine.Normalise), with the same float ops.
Training augmentation is not built here: `worker_pipeline` (below) and `BatchAugment`
(vitkit/data/augment.py) apply it, so `is_training=True` gives timm's no-augmentation training
transform and asks for `no_aug=True` to say so.

`load_image(path, in_chans)` is the one decoder of vitkit: the training loaders of image folders
and `vitkit predict` / `vitkit inspect` read files through it, so a file becomes the same pixels
everywhere: the EXIF orientation is applied; 16-bit greyscale (PNG, TIFF) is scaled from 0..65535
and float images (TIFF mode 'F') from 0..1 (or 0..max where the maximum is above 1) to 8 bits
instead of being clipped; transparency (RGBA, LA, palettes with a transparent colour) is
composited over white; CMYK, palettes and 1-bit images are converted; the result is 'L' for
1-channel models and 'RGB' for 3-channel ones.

For training on files, `worker_pipeline` puts the per-image augmentation in the DataLoader workers, as
timm does: `RandomResizedCrop` is timm's `RandomResizedCropAndInterpolation` (the same crop for the same
seed), and `AugmentFiles` cuts it from the original image of each item, flips, and normalises (unless
RandAugment, which works on [0, 1] images, follows on the batch), from a generator seeded per
(seed, epoch, item).
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

logger = logging.getLogger("vitkit")

__all__ = [
    "DEFAULT_CROP_MODE",
    "DEFAULT_CROP_PCT",
    "AugmentFiles",
    "ImageTransform",
    "RandomCropFiles",
    "RandomResizedCrop",
    "create_transform",
    "load_image",
    "resolve_data_config",
    "resolve_model_data_config",
    "worker_pipeline",
]

# timm.data.constants
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)
DEFAULT_CROP_PCT = 0.875
DEFAULT_CROP_MODE = "center"
CROP_MODES = ("center", "squash", "border")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic", "box", "hamming", "lanczos")  # timm's names (PIL filters)
DATA_CONFIG_KEYS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")


def _pil():
    try:
        from PIL import Image, ImageOps
    except ImportError:
        raise ImportError("reading image files needs Pillow: pip install 'vitkit[data]' (or pillow)") from None
    return Image, ImageOps


# ------------------------------------------------------------------------------------ data config
def resolve_data_config(
    args: Mapping[str, Any] | Any | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    model: Any = None,
    use_test_size: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """timm's `resolve_data_config`: {input_size, interpolation, mean, std, crop_pct, crop_mode}.

    `args` (a dict, or an object whose attributes are read such as an argparse Namespace) wins over
    `pretrained_cfg`, which defaults to `model.pretrained_cfg`; what neither gives is timm's default.
    `args` may set `input_size` (C, H, W), `img_size` (int), `in_chans` / `chans`, `interpolation`,
    `mean`, `std` (one value is repeated over the channels), `crop_pct` and `crop_mode`.
    `use_test_size` takes the cfg's `test_input_size` / `test_crop_pct` where it has them."""
    if not (model is not None or args or pretrained_cfg):
        raise ValueError("resolve_data_config needs at least one of model, args or pretrained_cfg")
    if args is not None and not isinstance(args, Mapping):
        args = vars(args)
    args = dict(args or {})
    pretrained_cfg = dict(pretrained_cfg or {})
    if not pretrained_cfg and model is not None and hasattr(model, "pretrained_cfg"):
        pretrained_cfg = dict(model.pretrained_cfg or {})
    config: dict[str, Any] = {}

    in_chans = 3
    if args.get("in_chans") is not None:
        in_chans = args["in_chans"]
    elif args.get("chans") is not None:
        in_chans = args["chans"]
    input_size = (in_chans, 224, 224)
    if args.get("input_size") is not None:
        if not isinstance(args["input_size"], (tuple, list)) or len(args["input_size"]) != 3:
            raise ValueError(f"input_size={args['input_size']!r} must be (channels, height, width)")
        input_size = tuple(args["input_size"])
        in_chans = input_size[0]
    elif args.get("img_size") is not None:
        if isinstance(args["img_size"], bool) or not isinstance(args["img_size"], int):
            raise ValueError(f"img_size={args['img_size']!r} must be an int (use input_size for (C, H, W))")
        input_size = (in_chans, args["img_size"], args["img_size"])
    elif use_test_size and pretrained_cfg.get("test_input_size") is not None:
        input_size = pretrained_cfg["test_input_size"]
    elif pretrained_cfg.get("input_size") is not None:
        input_size = pretrained_cfg["input_size"]
    config["input_size"] = input_size

    config["interpolation"] = "bicubic"
    if args.get("interpolation"):
        config["interpolation"] = args["interpolation"]
    elif pretrained_cfg.get("interpolation"):
        config["interpolation"] = pretrained_cfg["interpolation"]

    for key, default in (("mean", IMAGENET_DEFAULT_MEAN), ("std", IMAGENET_DEFAULT_STD)):
        config[key] = default
        if args.get(key) is not None:
            value = tuple(args[key])
            if len(value) == 1:
                value = value * in_chans
            elif len(value) != in_chans:
                raise ValueError(
                    f"{key}={args[key]!r} has {len(value)} values for {in_chans} channels: give one "
                    f"per channel, or one for all"
                )
            config[key] = value
        elif pretrained_cfg.get(key):
            config[key] = pretrained_cfg[key]

    crop_pct = DEFAULT_CROP_PCT
    if args.get("crop_pct"):
        crop_pct = args["crop_pct"]
    elif use_test_size and pretrained_cfg.get("test_crop_pct"):
        crop_pct = pretrained_cfg["test_crop_pct"]
    elif pretrained_cfg.get("crop_pct"):
        crop_pct = pretrained_cfg["crop_pct"]
    config["crop_pct"] = crop_pct

    config["crop_mode"] = DEFAULT_CROP_MODE
    if args.get("crop_mode"):
        config["crop_mode"] = args["crop_mode"]
    elif pretrained_cfg.get("crop_mode"):
        config["crop_mode"] = pretrained_cfg["crop_mode"]

    if verbose:
        logger.info("Data processing configuration for current model + dataset:")
        for k, v in config.items():
            logger.info("\t%s: %s", k, v)
    return config


def resolve_model_data_config(
    model: Any,
    args: Mapping[str, Any] | None = None,
    pretrained_cfg: Mapping[str, Any] | None = None,
    use_test_size: bool = False,
    verbose: bool = False,
) -> dict[str, Any]:
    """timm's `resolve_model_data_config`: `resolve_data_config` with the model first."""
    return resolve_data_config(
        args=args, pretrained_cfg=pretrained_cfg, model=model, use_test_size=use_test_size, verbose=verbose
    )


# ------------------------------------------------------------------------------------ decoding
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def _to_8bit_grey(im):
    """A 16/32-bit integer or float greyscale image as 8-bit 'L' (see the module docstring)."""
    Image, _ = _pil()
    a = np.asarray(im, dtype=np.float64)
    if im.mode == "F":
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        top = max(float(a.max(initial=0.0)), 1.0)
    elif im.mode in _SIXTEEN_BIT:
        top = 65535.0
    else:  # 'I': 32-bit integers; Pillow reads 16-bit files this way too
        top = max(float(a.max(initial=0.0)), 65535.0)
    return Image.fromarray(np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")


def convert_image(im, in_chans: int = 3):
    """A decoded PIL image as the 'L' (in_chans=1) or 'RGB' (in_chans=3) image vitkit feeds models."""
    Image, ImageOps = _pil()
    if in_chans not in (1, 3):
        raise ValueError(f"images are read with 1 (greyscale) or 3 (RGB) channels, not in_chans={in_chans}")
    im = ImageOps.exif_transpose(im)  # a photo taken sideways is shown, and learnt, upright
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "La", "RGBa", "PA"):
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im.convert("RGBA"))
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit_grey(im)
    want = "L" if in_chans == 1 else "RGB"
    return im if im.mode == want else im.convert(want)


def load_image(source: str | Path | bytes | BinaryIO, in_chans: int = 3):
    """Decode an image file (a path, bytes, or a binary file object) into the PIL image vitkit feeds
    models: 'L' for `in_chans=1`, 'RGB' for 3 (see the module docstring). Raises FileNotFoundError
    for a missing file and ValueError naming the file for one that is not a readable image."""
    Image, _ = _pil()
    name = source if isinstance(source, (str, Path)) else "the image data"
    if isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as im:
            im.load()
            return convert_image(im, in_chans)
    except FileNotFoundError:
        raise FileNotFoundError(f"image {name} does not exist") from None
    except Image.DecompressionBombError as e:  # the header's size alone, before any pixel is decoded
        raise ValueError(
            f"{name} is refused: {e} (Pillow's guard against decompression bombs). If the image is "
            f"genuine, downscale it first"
        ) from None
    except IsADirectoryError:
        raise ValueError(f"{name} is a directory, not an image file") from None
    except (Image.UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{name} is not a readable image ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------ transform
def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    size = tuple(int(s) for s in size)
    if len(size) == 1:
        return (size[0], size[0])
    if len(size) != 2:
        raise ValueError(f"image size {size} must be one number or (height, width)")
    return size


class ImageTransform:
    """timm's evaluation transform on a PIL image (see the module docstring); picklable."""

    def __init__(
        self,
        img_size: int | Sequence[int] = 224,
        interpolation: str = "bilinear",
        crop_pct: float | None = None,
        crop_mode: str | None = None,
        mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
        std: Sequence[float] = IMAGENET_DEFAULT_STD,
        normalize: bool = True,
    ) -> None:
        Image, _ = _pil()
        self.img_size = _size2(img_size)
        if min(self.img_size) < 1:
            raise ValueError(f"image size {self.img_size} must be at least 1x1")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        crop_mode = crop_mode or DEFAULT_CROP_MODE
        if crop_mode not in CROP_MODES:
            raise ValueError(f"crop_mode={crop_mode!r} is not one of {', '.join(CROP_MODES)}")
        crop_pct = crop_pct or DEFAULT_CROP_PCT
        if not (isinstance(crop_pct, (int, float)) and math.isfinite(crop_pct) and crop_pct > 0):
            raise ValueError(f"crop_pct={crop_pct!r} must be a number > 0 (the crop's share of the resized image)")
        self.interpolation, self.crop_pct, self.crop_mode = interpolation, float(crop_pct), crop_mode
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != len(self.std):
            raise ValueError(f"mean {self.mean} and std {self.std} differ in length")
        if any(s == 0 for s in self.std):
            raise ValueError(f"std {self.std} has a zero: normalising would divide by it")
        self.normalize = normalize
        self.scale_size = tuple(math.floor(s / self.crop_pct) for s in self.img_size)
        self._filter = getattr(Image.Resampling, interpolation.upper())

    def __repr__(self) -> str:
        return (
            f"ImageTransform(img_size={self.img_size}, interpolation={self.interpolation!r}, "
            f"crop_pct={self.crop_pct}, crop_mode={self.crop_mode!r}, mean={self.mean}, std={self.std}, "
            f"normalize={self.normalize})"
        )

    # -- geometry, as torchvision / timm compute it
    def _resize(self, im, height: int, width: int):
        if (im.height, im.width) == (height, width):
            return im
        return im.resize((width, height), self._filter)

    def _resize_keep_ratio(self, im, longest: float):
        """timm's ResizeKeepRatio: scale both sides by one ratio, of the shorter (0) or longer (1) side."""
        ratio_h, ratio_w = im.height / self.scale_size[0], im.width / self.scale_size[1]
        ratio = max(ratio_h, ratio_w) * longest + min(ratio_h, ratio_w) * (1.0 - longest)
        return self._resize(im, round(im.height / ratio), round(im.width / ratio))

    def _center_crop(self, im, fill):
        """torchvision's center_crop (fill 0) / timm's center_crop_or_pad (fill: the mean colour)."""
        _, ImageOps = _pil()
        ch, cw = self.img_size
        if cw > im.width or ch > im.height:
            border = (
                (cw - im.width) // 2 if cw > im.width else 0,
                (ch - im.height) // 2 if ch > im.height else 0,
                (cw - im.width + 1) // 2 if cw > im.width else 0,
                (ch - im.height + 1) // 2 if ch > im.height else 0,
            )
            im = ImageOps.expand(im, border=border, fill=fill)
            if (im.width, im.height) == (cw, ch):
                return im
        top, left = int(round((im.height - ch) / 2.0)), int(round((im.width - cw) / 2.0))
        return im.crop((left, top, left + cw, top + ch))

    def geometry(self, im):
        """Resize and crop a PIL image to `img_size` as the crop mode says (a PIL image of the same mode)."""
        bands = len(im.getbands())
        if self.crop_mode == "squash":
            im = self._resize(im, *self.scale_size)
            fill = (0,) * bands if bands > 1 else 0
        elif self.crop_mode == "border":
            im = self._resize_keep_ratio(im, longest=1.0)
            fill = [round(255 * v) for v in self.mean]
            fill = tuple(fill * bands if len(fill) == 1 else fill) if bands > 1 else fill[0]
        else:
            if self.scale_size[0] == self.scale_size[1]:  # torchvision's Resize(int): the shorter side
                short, long = min(im.size), max(im.size)
                new_short, new_long = self.scale_size[0], int(self.scale_size[0] * long / short)
                w, h = (new_short, new_long) if im.width <= im.height else (new_long, new_short)
                im = self._resize(im, h, w)
            else:
                im = self._resize_keep_ratio(im, longest=0.0)
            fill = (0,) * bands if bands > 1 else 0
        return self._center_crop(im, fill)

    def to_uint8(self, im) -> torch.Tensor:
        """Resized and cropped, as uint8 (C, H, W) (timm's output with normalize=False)."""
        a = np.asarray(self.geometry(im))
        if a.ndim == 2:
            a = a[:, :, None]
        return torch.from_numpy(a.copy()).permute(2, 0, 1).contiguous()

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 (C, H, W) -> float, scaled to [0, 1] then (x - mean) / std (torchvision's ToTensor + Normalize)."""
        if x.shape[0] != len(self.mean):
            raise ValueError(f"the image has {x.shape[0]} channel(s) but mean/std have {len(self.mean)} values")
        x = x.to(torch.get_default_dtype()).div(255)
        mean = torch.as_tensor(self.mean, dtype=x.dtype).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=x.dtype).view(-1, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, im) -> torch.Tensor:
        x = self.to_uint8(im)
        return self.normalise(x) if self.normalize else x


def create_transform(
    input_size: int | Sequence[int] = 224,
    is_training: bool = False,
    no_aug: bool = False,
    interpolation: str = "bilinear",
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float | None = None,
    crop_mode: str | None = None,
    normalize: bool = True,
    **kwargs: Any,
) -> ImageTransform:
    """timm's `create_transform` for evaluation and inference (see the module docstring).

    `input_size`: an int, (H, W) or (C, H, W); the other arguments are timm's (`create_transform(
    **resolve_data_config(model=model))` works as in timm). `is_training=True` needs `no_aug=True`
    and gives timm's `transforms_noaug_train` (resize to the size -- an int: the shorter side -- and
    centre crop)."""
    img_size = input_size[-2:] if isinstance(input_size, (tuple, list)) else input_size
    if kwargs:
        raise TypeError(
            f"create_transform got unexpected keyword argument(s) {sorted(kwargs)}: vitkit builds the "
            f"evaluation transform (training augmentation: worker_pipeline and vitkit.data.augment.BatchAugment)"
        )
    if is_training:
        if not no_aug:
            raise ValueError(
                "create_transform(is_training=True) builds no random augmentation: vitkit's training "
                "augmentation is vitkit.data.transforms.worker_pipeline (per image, in the DataLoader "
                "workers) and vitkit.data.augment.BatchAugment (per batch); pass no_aug=True for timm's "
                "no-augmentation training transform, or is_training=False"
            )
        interpolation = "bilinear" if interpolation == "random" else interpolation
        # torchvision's Resize: an int sizes the shorter side, (H, W) both sides
        mode = "squash" if isinstance(img_size, (tuple, list)) else "center"
        return ImageTransform(
            img_size, interpolation, crop_pct=1.0, crop_mode=mode, mean=mean, std=std, normalize=normalize
        )
    return ImageTransform(
        img_size, interpolation, crop_pct=crop_pct, crop_mode=crop_mode, mean=mean, std=std, normalize=normalize
    )


# ------------------------------------------------------------------------------------ datasets
def dataset_transform(config: Mapping[str, Any]) -> ImageTransform:
    """The resize and crop of a data config for datasets read from files (uint8 out: vitkit's training
    loop scales and normalises inside the graph, with the config's mean/std)."""
    return ImageTransform(
        tuple(config["input_size"][-2:]),
        config["interpolation"],
        crop_pct=config["crop_pct"],
        crop_mode=config["crop_mode"],
        mean=config["mean"],
        std=config["std"],
        normalize=False,
    )


def apply_data_config(splits: Any, config: Mapping[str, Any]) -> None:
    """Make the splits that decode files (image folders: `preprocess`) resize and crop as `config` says.
    In-memory datasets (digits, MNIST, CIFAR) hold pixels already at the image size and are left as they are."""
    transform = dataset_transform(config)
    for split in (splits.train, splits.val, splits.test):
        if split is not None and hasattr(split, "preprocess"):
            split.preprocess = transform


def model_data_config(model: Any, args: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`resolve_data_config(args, model=model)` at the size the model runs at (its config's in_chans and
    img_size, which `input_size` in an older pretrained cfg may not follow)."""
    config = resolve_data_config(args, model=model)
    model_config = getattr(model, "config", None)
    size = getattr(model_config, "img_size", None)
    if size is not None and not (args or {}).get("input_size") and not (args or {}).get("img_size"):
        h, w = _size2(size)
        config["input_size"] = (int(getattr(model_config, "in_chans", None) or config["input_size"][0]), h, w)
    return config


def load_dataset_for_model(model: Any, name: str, data_dir: str | Path | None = None, **kwargs: Any):
    """`load_dataset(name, data_dir, ...)` preprocessed for `model` as its training evaluated it: at the
    model's image size, image folders resized and cropped by its data config (`vitkit eval`, `inspect`)."""
    from .datasets import load_dataset

    config = model_data_config(model)
    splits = load_dataset(name, data_dir, img_size=tuple(config["input_size"][1:]), **kwargs)
    apply_data_config(splits, config)
    return splits


def checkpoint_data_config(pretrained: bool | str | Path, model: Any) -> dict[str, Any]:
    """The preprocessing the weights `pretrained` were trained with: a model directory's own pretrained cfg
    (vitkit, timm or Hugging Face config), else (a state-dict file, or True: the Hub weights of the model's
    name, tag or hf-hub repo) the model's, i.e. its named weights' or its registered architecture's."""
    cfg = dict(getattr(model, "pretrained_cfg", None) or {})
    if pretrained is True:  # create_model(..., pretrained=True) set the weights' cfg: mean, std, crop
        return cfg
    path = Path(pretrained).expanduser()
    if path.is_dir():
        from ..hub import describe_directory

        directory = path / "model" if (path / "model" / "config.json").is_file() else path  # a run directory
        try:
            saved = describe_directory(directory, weights=False)[-1]
        except (OSError, ValueError) as e:
            logger.warning(
                "%s: could not read its preprocessing (%s); using %s's registered one",
                directory,
                e,
                getattr(model, "model_name", "the model"),
            )
        else:
            cfg.update({k: v for k, v in saved.items() if k in DATA_CONFIG_KEYS and v is not None})
    return cfg


def training_data_config(
    splits: Any, model: Any, pretrained: bool | str | Path | None = None, args: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The data config of a training run on `splits` with `model`: what its loaders and its normalisation
    use, and what it saves in the model's `pretrained_cfg`.

    - mean/std: fine-tuning (`pretrained`: the checkpoint given to `--model.pretrained`, or True for the Hub
      weights of the model's name.tag or hf-hub repo) keeps the statistics the checkpoint was trained with;
      training from scratch takes the dataset's.
    - interpolation, crop_pct, crop_mode: datasets decoded from files (image folders) resize and crop by
      the checkpoint's when fine-tuning, else by the folder's own (bicubic, crop_pct 1.0, 'center': the
      whole image). In-memory datasets are held at the image size already (bilinear resampling where the
      size differs, no crop), and the config says so.
    - `args` (`--data.interpolation`, `crop_pct`, `crop_mode`, `mean`, `std`; None: not given) win over both.
    """
    args = {k: v for k, v in (args or {}).items() if v is not None}
    splits_list = [s for s in (splits.train, splits.val, splits.test) if s is not None]
    files = next((s for s in splits_list if hasattr(s, "preprocess")), None)
    if files is None:
        fixed = [k for k in ("interpolation", "crop_pct", "crop_mode") if k in args]
        if fixed:
            raise ValueError(
                f"--data.{fixed[0]} applies to datasets decoded from image files (folder); "
                f"{splits.name} is held in memory at its image size: leave it out"
            )
    model_config = getattr(model, "config", None)
    h, w = _size2(getattr(model_config, "img_size", None) or splits.img_size)
    in_chans = int(getattr(model_config, "in_chans", None) or splits.in_chans)
    cfg: dict[str, Any] = {"input_size": (in_chans, h, w), "mean": tuple(splits.mean), "std": tuple(splits.std)}
    if files is not None and files.preprocess is not None:
        p = files.preprocess
        cfg.update(interpolation=p.interpolation, crop_pct=p.crop_pct, crop_mode=p.crop_mode)
    else:
        cfg.update(interpolation="bilinear", crop_pct=1.0, crop_mode="center")
    if pretrained:
        saved = checkpoint_data_config(pretrained, model)
        if files is not None:
            cfg.update({k: saved[k] for k in ("interpolation", "crop_pct", "crop_mode") if saved.get(k)})
        mean, std = saved.get("mean"), saved.get("std")
        if mean and std and len(mean) == in_chans and len(std) == in_chans:
            cfg.update(mean=tuple(mean), std=tuple(std))
        elif mean or std:
            logger.warning(
                "the checkpoint's mean/std (%s, %s) are for another number of channels than the "
                "data's %d: normalising with the dataset's statistics instead",
                mean,
                std,
                in_chans,
            )
    config = resolve_data_config(args={**args, "in_chans": in_chans}, pretrained_cfg=cfg)
    config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
    dataset_transform(config)  # checks the values (interpolation, crop mode, std without zeros)
    return config


def data_args(data: Any) -> dict[str, Any]:
    """The preprocessing a training config's data section sets (`--data.interpolation`, `crop_pct`,
    `crop_mode`, `mean`, `std`; the ones left at None are not set)."""
    return {
        k: getattr(data, k, None)
        for k in ("interpolation", "crop_pct", "crop_mode", "mean", "std")
        if getattr(data, k, None) is not None
    }


# ------------------------------------------------------------------------------------ training crop
class RandomResizedCrop:
    """timm's `RandomResizedCropAndInterpolation` on a PIL image, drawing from `rng` (a `random.Random`):
    a crop of `scale` x the image's area and aspect ratio in `ratio` (log-uniform), 10 tries, else a
    centre crop clamped to the ratio range; resized to `size` with `interpolation`. With the same
    seed in `rng` as in Python's `random`, it gives timm's crop exactly."""

    def __init__(
        self,
        size: int | Sequence[int],
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        interpolation: str = "bilinear",
    ) -> None:
        Image, _ = _pil()
        self.size = _size2(size)
        self.scale, self.ratio = tuple(float(s) for s in scale), tuple(float(r) for r in ratio)
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1]:
            raise ValueError(f"scale={scale} must be (min, max) with 0 < min <= max")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"ratio={ratio} must be (min, max) with 0 < min <= max")
        if interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation={interpolation!r} is not one of {', '.join(INTERPOLATIONS)}")
        self.interpolation = interpolation
        self._filter = getattr(Image.Resampling, interpolation.upper())

    def __repr__(self) -> str:
        return (
            f"RandomResizedCrop(size={self.size}, scale={self.scale}, ratio={self.ratio}, "
            f"interpolation={self.interpolation!r})"
        )

    def get_params(self, width: int, height: int, rng) -> tuple[int, int, int, int]:
        """(top, left, crop height, crop width), drawn as timm draws them."""
        area = width * height
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = rng.uniform(*self.scale) * area
            aspect = math.exp(rng.uniform(*log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if w <= width and h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            w, h = int(round(height * max(self.ratio))), height
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, im, rng=None):
        import random

        top, left, h, w = self.get_params(im.width, im.height, rng if rng is not None else random)
        im = im.crop((left, top, left + w, top + h))
        if (h, w) != self.size:
            im = im.resize((self.size[1], self.size[0]), self._filter)
        return im


class _ItemPreprocess:
    """One item's geometry in the shape of a `preprocess`: the random resized crop (or the dataset's own resize
    and crop), then the horizontal flip, drawing from the item's random stream `rng`."""

    def __init__(self, crop: RandomResizedCrop | None, base: Any, hflip: float, rng) -> None:
        self.crop, self.base, self.hflip, self.rng = crop, base, hflip, rng

    def to_uint8(self, im) -> torch.Tensor:
        if self.crop is None and self.base is not None:
            x = self.base.to_uint8(im)
            return x.flip(-1) if self.hflip > 0 and self.rng.random() < self.hflip else x
        if self.crop is not None:
            im = self.crop(im, self.rng)
        a = np.asarray(im)
        if a.ndim == 2:
            a = a[:, :, None]
        if self.hflip > 0 and self.rng.random() < self.hflip:
            a = a[:, ::-1]
        return torch.from_numpy(a.copy()).permute(2, 0, 1)


class AugmentFiles(torch.utils.data.Dataset):
    """A dataset that decodes files (an image folder, an `hf` dataset) with the per-image training augmentation
    done in the DataLoader workers, where timm does it: a random resized crop of the original image (`crop`, a
    `RandomResizedCrop`; None keeps the dataset's own resize and crop), a horizontal flip with probability
    `hflip`, and normalisation by `mean` / `std` (None: the images stay in [0, 1]).

    Item i of epoch e draws from its own `random.Random` seeded by (seed, e, i): first the crop (timm's draws),
    then `random() < hflip` for the flip. So the images do not depend on the number of workers or processes,
    and a run resumed inside an epoch sees the images the uninterrupted run saw. The normalisation is the
    training step's float arithmetic, `(x / 255 - mean) / std` in float32: the same tensors. `set_epoch(e)`
    before each epoch (vitkit's training loop calls it). Everything else is the wrapped dataset's."""

    def __init__(
        self,
        data: Any,
        crop: RandomResizedCrop | None = None,
        hflip: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seed: int = 0,
    ) -> None:
        if not hasattr(data, "preprocess"):
            raise TypeError(f"{type(data).__name__} does not decode files (no `preprocess`): nothing to augment")
        if not 0.0 <= float(hflip) <= 1.0:
            raise ValueError(f"hflip={hflip} must be a probability in [0, 1]")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std to normalise, or neither")
        if std is not None and any(float(v) == 0 for v in std):
            raise ValueError(f"std {tuple(std)} has a zero: normalising would divide by it")
        self.data, self.crop, self.hflip, self.seed, self.epoch = data, crop, float(hflip), int(seed), 0
        self.mean = None if mean is None else tuple(float(v) for v in mean)
        self.std = None if std is None else tuple(float(v) for v in std)

    @property
    def normalised(self) -> bool:
        return self.mean is not None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.data)

    def __getattr__(self, name: str) -> Any:  # labels, classes, samples, subset, ... of the wrapped dataset
        if name in ("data", "crop", "hflip", "mean", "std", "seed", "epoch") or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.data, name)

    def __getitem__(self, i: int):
        import random

        rng = random.Random(f"{self.seed}:{self.epoch}:{int(i)}")  # str seeds hash with sha512: stable
        saved = self.data.preprocess
        self.data.preprocess = _ItemPreprocess(self.crop, saved, self.hflip, rng)
        try:
            if self.mean is None or not hasattr(self.data, "load_readable"):
                x, label = self.data[i]
            else:  # the same float ops as the dataset's item, into one contiguous (C, H, W) float tensor
                pixels, label = self.data.load_readable(i)
                x = torch.empty(pixels.shape, dtype=torch.get_default_dtype()).copy_(pixels).div_(255.0)
                if getattr(self.data, "transform", None) is not None:
                    x = self.data.transform(x)
        finally:
            self.data.preprocess = saved
        if self.mean is not None:
            if x.shape[0] != len(self.mean):
                raise ValueError(f"image {i} has {x.shape[0]} channel(s) but mean/std have {len(self.mean)} values")
            x = x.sub_(torch.tensor(self.mean).view(-1, 1, 1)).div_(torch.tensor(self.std).view(-1, 1, 1))
        return x, label

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.data!r}, crop={self.crop!r}, hflip={self.hflip}, mean={self.mean}, "
            f"std={self.std}, seed={self.seed})"
        )


class RandomCropFiles(AugmentFiles):
    """`AugmentFiles` with the random resized crop alone: images in [0, 1], no flip."""

    def __init__(self, data: Any, crop: RandomResizedCrop, seed: int = 0) -> None:
        super().__init__(data, crop, seed=seed)

    def __repr__(self) -> str:
        return f"RandomCropFiles({self.data!r}, {self.crop!r}, seed={self.seed})"


def worker_pipeline(
    dataset: Any, aug_cfg: Any, data_config: Mapping[str, Any], seed: int = 0, normalise: bool = True
) -> tuple[Any, Any, bool]:
    """Move the per-image training augmentation of `dataset` into the DataLoader workers, where timm does it.

    Returns `(dataset, aug_cfg_left, normalised)`: the training dataset to load batches from, the augmentation
    config (`vitkit.data.augment.AugmentConfig`) left for `BatchAugment` on the batch, and whether the images
    come out normalised by `data_config`'s mean/std (else in [0, 1]: the training step normalises).

    Datasets that decode files with random access (a `preprocess`: image folders, `hf` datasets) are wrapped
    in `AugmentFiles`: the random resized crop (`aug_cfg.random_resized_crop`, cut from the original image as
    timm's `RandomResizedCropAndInterpolation`, with `data_config`'s interpolation) and the horizontal flip
    (`aug_cfg.hflip`) run in the workers, drawn per (seed, epoch, item). The workers also normalise when
    nothing left for the batch needs [0, 1] images: RandAugment does (its ops are defined on pixel values);
    random erasing and mixup/cutmix do not (timm applies them after normalisation; `BatchAugment(...,
    normalised=True)` erases with timm's per-pixel normal noise). `normalise=False` keeps [0, 1] images for a
    training step that needs them (a distillation teacher that normalises its own way).

    In-memory datasets and tar shards are returned as they are, with `aug_cfg` unchanged and normalised False.
    """
    import dataclasses

    if isinstance(dataset, AugmentFiles):
        raise TypeError(f"{dataset!r} already augments in the workers: pass the dataset it wraps (`.data`)")
    if not hasattr(dataset, "preprocess") or isinstance(dataset, torch.utils.data.IterableDataset):
        return dataset, aug_cfg, False
    crop = None
    if aug_cfg.random_resized_crop:
        crop = RandomResizedCrop(
            data_config["input_size"][1:], aug_cfg.scale, aug_cfg.ratio, data_config["interpolation"]
        )
    in_workers = normalise and aug_cfg.randaugment is None
    if crop is None and not aug_cfg.hflip and not in_workers:
        return dataset, aug_cfg, False
    wrapped = AugmentFiles(
        dataset,
        crop,
        hflip=aug_cfg.hflip,
        mean=data_config["mean"] if in_workers else None,
        std=data_config["std"] if in_workers else None,
        seed=seed,
    )
    return wrapped, dataclasses.replace(aug_cfg, random_resized_crop=False, hflip=0.0), in_workers

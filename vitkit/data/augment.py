"""Training augmentation on whole batches: random resized crop, flip, RandAugment, random erasing, mixup/cutmix.

    aug = BatchAugment(AugmentConfig(random_resized_crop=True, randaugment="rand-m9-n2", mixup=0.8, cutmix=1.0),
                       num_classes=10, label_smoothing=0.1)
    x, y = aug(x, y)   # x: float (B, C, H, W) in [0, 1]; y: int64 (B,) -> soft targets (B, K) when mixing

    BatchAugment(AugmentConfig(random_erasing=0.25, mixup=0.8), 10, normalised=True)  # x normalised

Order, as in timm's training pipeline: random resized crop -> horizontal flip -> RandAugment -> random
erasing -> mixup/cutmix. Every op works on the batch at once (per-sample parameters, one `grid_sample`
for the geometric ops), on CPU or CUDA, for any number of channels. The images are in [0, 1], or
normalised ((x - mean) / std) with `normalised=True`: then random erasing fills with standard normal
noise, as timm's RandomErasing (mode 'pixel') does after normalisation, and RandAugment, whose ops are
defined on pixel values in [0, 1], is refused. Images in [0, 1] that the model normalises later pass that
normalisation's `mean`/`std`, so erasing draws the noise that is standard normal once normalised.

Where the training images are decoded from files (image folders, `hf` datasets), the random resized
crop, the flip and, when RandAugment is off, the normalisation run in the DataLoader workers instead,
as in timm (`vitkit.data.transforms.worker_pipeline` / `AugmentFiles`), and this class applies the rest.

Horizontal flip is off by default and must be asked for per dataset: it suits natural images (CIFAR,
ImageNet) but not digits or letters (a mirrored 2 is not a 2).

Randomness: every random number is drawn from `generator` (a CPU `torch.Generator`), or from torch's
global CPU RNG when it is None. Parameters are sampled on the CPU and moved to the images' device; the
per-pixel noise of random erasing on a GPU comes from a CUDA generator seeded from the same source, and
the Beta draw of mixup from a NumPy generator seeded from it. So restoring the CPU RNG state (as the
training checkpoint does) or re-seeding the generator reproduces the same augmentations exactly.

Why hand-written: kornia (0.9, installs next to the pinned CPU torch) was evaluated and rejected: its
samplers take no generator (only the global RNG), its RandAugment applies the same ops to the whole
batch rather than per image, and it fails on 1-channel images. timm's `Mixup` needs `import timm`, which
imports torchvision (broken on this CPU torch). The ops are short; the conventions follow timm:
`rand-m9-n2-mstd0.5` strings, its op list and magnitude mappings, its Mixup/CutMix targets.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["AugmentConfig", "BatchAugment", "RandAugmentSpec", "parse_randaugment"]

_LEVEL_DENOM = 10.0  # timm: magnitude 10 is the top of each op's range
_FILL = 128 / 255  # timm fills the corners uncovered by rotate/shear/translate with grey (128)
_GREY = (0.299, 0.587, 0.114)  # PIL's RGB -> L weights

# timm's _RAND_TRANSFORMS and _RAND_INCREASING_TRANSFORMS
RAND_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
_GEOMETRIC = {"Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel"}


@dataclass
class AugmentConfig:
    """What to apply; everything off by default (then `BatchAugment.active` is False)."""

    random_resized_crop: bool = False
    scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h (sampled log-uniformly)
    hflip: float = 0.0  # probability; leave 0 for digits and text
    randaugment: str | None = None  # timm notation, e.g. "rand-m9-n2" or "rand-m9-n2-mstd0.5-inc1"
    mixup: float = 0.0  # Beta(alpha, alpha) for mixup; 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha) for cutmix; 0 = off
    mix_prob: float = 1.0  # probability of mixing a batch at all
    switch_prob: float = 0.5  # with both on: probability of cutmix instead of mixup
    random_erasing: float = 0.0  # probability per image


@dataclass(frozen=True)
class RandAugmentSpec:
    magnitude: float = 10.0
    num_ops: int = 2
    magnitude_std: float = 0.0  # inf: uniform in [0, magnitude]
    magnitude_max: float = _LEVEL_DENOM
    prob: float = 0.5  # each chosen op is applied with this probability (timm's default)
    increasing: bool = False


def parse_randaugment(spec: str) -> RandAugmentSpec:
    """Parse timm's RandAugment notation: `rand-m9-n2[-mstd0.5][-mmax10][-inc1][-p0.5]`."""
    usage = (
        "expected timm's RandAugment notation 'rand-m<magnitude>-n<ops>' with optional '-mstd<std>', "
        "'-mmax<max>', '-inc<0|1>', '-p<prob>', e.g. 'rand-m9-n2' or 'rand-m9-n2-mstd0.5'"
    )
    if not isinstance(spec, str):
        raise ValueError(f"randaugment={spec!r}: {usage}")
    parts = spec.strip().split("-")
    if parts[0] != "rand":
        raise ValueError(f"randaugment={spec!r} does not start with 'rand': {usage}")
    kw: dict = {}
    for part in parts[1:]:
        m = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?)", part)
        if not m:
            raise ValueError(f"randaugment={spec!r}: cannot read section {part!r}; {usage}")
        key, val = m.group(1), float(m.group(2))
        if key == "m":
            kw["magnitude"] = val
        elif key == "n":
            if val != int(val) or val < 1:
                raise ValueError(f"randaugment={spec!r}: the number of ops must be a whole number >= 1")
            kw["num_ops"] = int(val)
        elif key == "mstd":
            kw["magnitude_std"] = float("inf") if val > 100 else val
        elif key == "mmax":
            kw["magnitude_max"] = val
        elif key == "inc":
            kw["increasing"] = bool(int(val))
        elif key == "p":
            if not 0.0 <= val <= 1.0:
                raise ValueError(f"randaugment={spec!r}: p must be in [0, 1]")
            kw["prob"] = val
    return RandAugmentSpec(**kw)


def _check_prob(name: str, p: float) -> None:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"augment.{name}={p} must be a probability in [0, 1]")


# ------------------------------------------------------------------------------------ helpers
def _grey(x: torch.Tensor) -> torch.Tensor:
    """(n, C, H, W) -> (n, 1, H, W) luminance (the image itself when C != 3)."""
    if x.shape[1] != 3:
        return x.mean(1, keepdim=True)
    w = torch.tensor(_GREY, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(degenerate: torch.Tensor, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's Image.blend(degenerate, x, factor), clipped; factor (n,)."""
    return (degenerate + factor.view(-1, 1, 1, 1) * (x - degenerate)).clamp_(0.0, 1.0)


def _to8(x: torch.Tensor) -> torch.Tensor:
    return (x * 255).round_().clamp_(0, 255).to(torch.int64)


def _affine(
    x: torch.Tensor, mat: torch.Tensor, shift: torch.Tensor, fill: float | None, padding_mode: str = "zeros"
) -> torch.Tensor:
    """Resample x (n, C, H, W): input point = mat @ output point + shift, in pixel units about the centre.

    `mat` (n, 2, 2) and `shift` (n, 2) act on (x, y) with y pointing down. Bilinear; outside the image
    `fill` (a value in [0, 1]) or, with fill=None, `padding_mode` of grid_sample.
    """
    n, _, h, w = x.shape
    theta = torch.empty(n, 2, 3, dtype=torch.float32)
    theta[:, 0, 0] = mat[:, 0, 0]
    theta[:, 0, 1] = mat[:, 0, 1] * h / w
    theta[:, 1, 0] = mat[:, 1, 0] * w / h
    theta[:, 1, 1] = mat[:, 1, 1]
    theta[:, 0, 2] = shift[:, 0] * 2 / w
    theta[:, 1, 2] = shift[:, 1] * 2 / h
    theta = theta.to(device=x.device, dtype=x.dtype)
    grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
    if fill is None:
        return F.grid_sample(x, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False)
    ones = torch.ones(n, 1, h, w, dtype=x.dtype, device=x.device)
    out = F.grid_sample(torch.cat([x, ones], 1), grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    inside = out[:, -1:]
    return (out[:, :-1] + (1 - inside) * fill).clamp_(0.0, 1.0)


# ------------------------------------------------------------------------------------ pixel ops
def auto_contrast(x: torch.Tensor) -> torch.Tensor:
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histogram equalisation on 256 levels (PIL / torchvision algorithm)."""
    n, c, h, w = x.shape
    x8 = _to8(x).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, dtype=torch.int64, device=x.device)
    hist.scatter_add_(1, x8, torch.ones_like(x8))
    last = hist.gather(1, x8.amax(1, keepdim=True))  # count of the highest level present
    step = (h * w - last) // 255  # (n*c, 1)
    lut = (hist.cumsum(1) + step // 2) // step.clamp_min(1)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp_(0, 255)
    out = lut.gather(1, x8).to(x.dtype) / 255
    return torch.where(step > 0, out, x.reshape(n * c, h * w)).view(n, c, h, w)


def posterize(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Keep the `bits` (n,) most significant bits of each 8-bit value (bits >= 8: unchanged)."""
    bits = bits.to(x.device).clamp(0, 8).view(-1, 1, 1, 1)
    mask = (255 - ((1 << (8 - bits)) - 1)).to(torch.int64)
    out = (_to8(x) & mask).to(x.dtype) / 255
    return torch.where(bits >= 8, x, out)


def solarize(x: torch.Tensor, thresh: torch.Tensor) -> torch.Tensor:
    """Invert the 8-bit values >= thresh (n,), thresh in [0, 256]."""
    t = thresh.to(device=x.device, dtype=torch.int64).view(-1, 1, 1, 1)
    return torch.where(_to8(x) >= t, 1 - x, x)


def solarize_add(x: torch.Tensor, add: torch.Tensor) -> torch.Tensor:
    """Add `add` (n,, 8-bit units) to the values below 128."""
    a = add.to(device=x.device, dtype=x.dtype).view(-1, 1, 1, 1) / 255
    return torch.where(_to8(x) < 128, (x + a).clamp_(max=1.0), x)


def color(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(_grey(x).expand_as(x), x, factor.to(device=x.device, dtype=x.dtype))


def contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    mean = (_to8(_grey(x)).to(x.dtype).mean((1, 2, 3), keepdim=True)).round() / 255
    return _blend(mean.expand_as(x), x, factor.to(device=x.device, dtype=x.dtype))


def brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return _blend(torch.zeros_like(x), x, factor.to(device=x.device, dtype=x.dtype))


def sharpness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance.Sharpness: blend with the SMOOTH-filtered image (borders unfiltered)."""
    c = x.shape[1]
    k = torch.tensor([[1.0, 1.0, 1.0], [1.0, 5.0, 1.0], [1.0, 1.0, 1.0]], dtype=x.dtype, device=x.device) / 13
    smooth = F.conv2d(x, k.expand(c, 1, 3, 3), groups=c)
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return _blend(degenerate, x, factor.to(device=x.device, dtype=x.dtype))


# ------------------------------------------------------------------------------------ the augmenter
class BatchAugment:
    """Apply an `AugmentConfig` to a batch: `x, y = aug(x, y)` (see the module docstring).

    `y` comes back as int64 (B,) when neither mixup nor cutmix is on, otherwise as float soft targets
    (B, num_classes) with `label_smoothing` folded in (rows sum to 1): train on them with
    `F.cross_entropy(logits, y_soft)` and no further label smoothing.
    """

    def __init__(
        self,
        cfg: AugmentConfig,
        num_classes: int,
        label_smoothing: float = 0.0,
        generator: torch.Generator | None = None,
        normalised: bool = False,
        mean: tuple[float, ...] | None = None,
        std: tuple[float, ...] | None = None,
    ) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing={label_smoothing} must be in [0, 1)")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("BatchAugment samples on the CPU: pass a CPU torch.Generator")
        scale, ratio = tuple(float(s) for s in cfg.scale), tuple(float(r) for r in cfg.ratio)
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"augment.scale={cfg.scale} must be (min, max) with 0 < min <= max <= 1")
        if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1]:
            raise ValueError(f"augment.ratio={cfg.ratio} must be (min, max) with 0 < min <= max")
        for name in ("hflip", "mix_prob", "switch_prob", "random_erasing"):
            _check_prob(name, getattr(cfg, name))
        for name in ("mixup", "cutmix"):
            if getattr(cfg, name) < 0:
                raise ValueError(f"augment.{name}={getattr(cfg, name)} must be >= 0 (the Beta alpha; 0 = off)")
        self.cfg = cfg
        self.scale, self.ratio = scale, ratio
        self.num_classes = num_classes
        self.label_smoothing = float(label_smoothing)
        self.generator = generator
        self.rand_spec = parse_randaugment(cfg.randaugment) if cfg.randaugment is not None else None
        if normalised and self.rand_spec is not None:
            raise ValueError(
                "RandAugment works on images in [0, 1], not on normalised ones: keep the images in [0, 1] "
                "(vitkit.data.transforms.worker_pipeline does when RandAugment is on) and normalise after it"
            )
        self.normalised = bool(normalised)
        if (mean is None) != (std is None):
            raise ValueError("BatchAugment takes the normalisation's mean and std together (or neither)")
        if mean is not None and normalised:
            raise ValueError("mean/std describe a normalisation still to come: with normalised=True leave them out")
        if std is not None and any(float(v) <= 0 for v in std):
            raise ValueError(f"std={tuple(std)} must be positive")
        # [0, 1] images normalised later with (mean, std): erasing draws mean + std * N(0, 1), which is N(0, 1)
        # once normalised, as timm's RandomErasing(mode='pixel') draws after its Normalize
        self.mean = torch.tensor(mean, dtype=torch.float32) if mean is not None else None
        self.std = torch.tensor(std, dtype=torch.float32) if std is not None else None

    # ---- state
    @property
    def mixing(self) -> bool:
        """True when targets come back soft (mixup or cutmix on)."""
        return (self.cfg.mixup > 0 or self.cfg.cutmix > 0) and self.cfg.mix_prob > 0

    @property
    def active(self) -> bool:
        c = self.cfg
        return bool(
            c.random_resized_crop or c.hflip > 0 or self.rand_spec is not None or c.random_erasing > 0 or self.mixing
        )

    def __repr__(self) -> str:
        return (
            f"BatchAugment({self.cfg}, num_classes={self.num_classes}, label_smoothing={self.label_smoothing}, "
            f"normalised={self.normalised})"
        )

    # ---- random numbers (CPU, from the generator)
    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    def _randint(self, high: torch.Tensor | int, *shape: int) -> torch.Tensor:
        """Uniform integers in [0, high) (high may be a tensor of shape `shape`)."""
        u = torch.rand(shape, generator=self.generator, dtype=torch.float64)
        return (u * torch.as_tensor(high, dtype=torch.float64)).floor().to(torch.int64)

    def _seed(self) -> int:
        return int(torch.randint(0, 2**62, (1,), generator=self.generator).item())

    # ---- call
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected float images (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
        if y.shape != (x.shape[0],):
            raise ValueError(f"expected labels of shape ({x.shape[0]},), got {tuple(y.shape)}")
        if not self.active:
            return x, y
        dtype = x.dtype
        x = x.float()
        with torch.no_grad():
            if self.cfg.random_resized_crop:
                x = self.random_resized_crop(x)
            if self.cfg.hflip > 0:
                x = self.hflip(x)
            if self.rand_spec is not None:
                x = self.randaugment(x)
            if self.cfg.random_erasing > 0:
                x = self.random_erasing(x)
            if self.mixing:
                x, y = self.mix(x, y)
        return x.to(dtype), y

    # ---- ops
    def hflip(self, x: torch.Tensor) -> torch.Tensor:
        flip = (self._rand(x.shape[0]) < self.cfg.hflip).to(x.device).view(-1, 1, 1, 1)
        return torch.where(flip, x.flip(-1), x)

    def random_resized_crop(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's RandomResizedCrop parameters (10 tries, then a centre crop), resized back to (H, W)."""
        b, _, h, w = x.shape
        area = h * w
        tries = 10
        target = area * (self.scale[0] + (self.scale[1] - self.scale[0]) * self._rand(b, tries).double())
        lo, hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        aspect = torch.exp(lo + (hi - lo) * self._rand(b, tries).double())
        cw = torch.sqrt(target * aspect).round().long()
        ch = torch.sqrt(target / aspect).round().long()
        ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
        first = ok.long().argmax(1)  # first successful try
        found = ok.any(1)
        cw = cw.gather(1, first[:, None]).squeeze(1)
        ch = ch.gather(1, first[:, None]).squeeze(1)
        # fallback: the whole image, or a centre crop clamped to the ratio range
        in_ratio = w / h
        if in_ratio < self.ratio[0]:
            fw, fh = w, int(round(w / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            fw, fh = int(round(h * self.ratio[1])), h
        else:
            fw, fh = w, h
        cw = torch.where(found, cw, torch.full_like(cw, fw))
        ch = torch.where(found, ch, torch.full_like(ch, fh))
        top = self._randint(h - ch + 1, b)
        left = self._randint(w - cw + 1, b)
        top = torch.where(found, top, (h - ch) // 2)
        left = torch.where(found, left, (w - cw) // 2)
        # output pixel centre u in [-w/2, w/2] maps to left + (u + w/2) * cw / w (input, from the corner)
        sx, sy = cw.double() / w, ch.double() / h
        mat = torch.zeros(b, 2, 2, dtype=torch.float64)
        mat[:, 0, 0], mat[:, 1, 1] = sx, sy
        shift = torch.stack([left + cw / 2 - w / 2, top + ch / 2 - h / 2], 1).double()
        return _affine(x, mat.float(), shift.float(), fill=None, padding_mode="border")

    def random_erasing(self, x: torch.Tensor) -> torch.Tensor:
        """timm's RandomErasing (area 2%-33%, aspect 0.3-3.3, one box) with per-pixel noise: standard normal on
        normalised images (`normalised=True`: timm's mode 'pixel', which runs after normalisation); on images in
        [0, 1] to be normalised with the given `mean`/`std`, `mean + std * N(0, 1)`, the same noise once
        normalised; without them, uniform in [0, 1)."""
        b, c, h, w = x.shape
        tries = 10
        apply = self._rand(b) < self.cfg.random_erasing
        target = h * w * (0.02 + (1 / 3 - 0.02) * self._rand(b, tries).double())
        lo, hi = math.log(0.3), math.log(1 / 0.3)
        aspect = torch.exp(lo + (hi - lo) * self._rand(b, tries).double())
        eh = torch.sqrt(target * aspect).round().long()
        ew = torch.sqrt(target / aspect).round().long()
        ok = (ew < w) & (eh < h) & (ew > 0) & (eh > 0)
        first = ok.long().argmax(1)
        apply &= ok.any(1)
        eh = eh.gather(1, first[:, None]).squeeze(1)
        ew = ew.gather(1, first[:, None]).squeeze(1)
        top = self._randint(h - eh + 1, b)
        left = self._randint(w - ew + 1, b)
        idx = apply.nonzero().squeeze(1)
        if idx.numel() == 0:
            return x
        rows = torch.arange(h)[None, :]
        cols = torch.arange(w)[None, :]
        t, l_, eh, ew = top[idx, None], left[idx, None], eh[idx, None], ew[idx, None]
        mask = ((rows >= t) & (rows < t + eh))[:, :, None] & ((cols >= l_) & (cols < l_ + ew))[:, None, :]
        mask = mask[:, None].to(x.device)  # (n, 1, H, W)
        noise = self._noise((idx.numel(), c, h, w), x.device, x.dtype)
        idx = idx.to(x.device)
        x = x.clone()
        x[idx] = torch.where(mask, noise, x[idx])
        return x

    def _noise(self, shape, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        draw = torch.randn if (self.normalised or self.mean is not None) else torch.rand
        if device.type == "cpu":
            noise = draw(shape, generator=self.generator, dtype=dtype)
        else:
            g = torch.Generator(device=device).manual_seed(self._seed())
            noise = draw(shape, generator=g, device=device, dtype=dtype)
        if self.mean is not None:
            if len(self.mean) not in (1, shape[1]):
                raise ValueError(f"mean/std have {len(self.mean)} channels but the images have {shape[1]}")
            view = (1, -1) + (1,) * (len(shape) - 2)
            mean, std = (t.to(device=device, dtype=dtype).view(view) for t in (self.mean, self.std))
            noise = noise * std + mean
        return noise

    def randaugment(self, x: torch.Tensor) -> torch.Tensor:
        """timm's RandAugment, per image: `num_ops` ops drawn with replacement, each applied with prob `prob`."""
        spec = self.rand_spec
        b = x.shape[0]
        x = x.clone()
        for _ in range(spec.num_ops):
            op = self._randint(len(RAND_OPS), b)
            apply = self._rand(b) < spec.prob
            if spec.magnitude_std == float("inf"):
                mag = self._rand(b).double() * spec.magnitude
            elif spec.magnitude_std > 0:
                mag = spec.magnitude + spec.magnitude_std * torch.randn(b, generator=self.generator).double()
            else:
                mag = torch.full((b,), float(spec.magnitude), dtype=torch.float64)
            mag = mag.clamp(0.0, spec.magnitude_max) / _LEVEL_DENOM  # level in [0, 1] at magnitude 10
            sign = torch.where(self._rand(b) < 0.5, -1.0, 1.0).double()
            geo = torch.zeros(b, dtype=torch.bool)
            mat = torch.eye(2, dtype=torch.float64).repeat(b, 1, 1)
            shift = torch.zeros(b, 2, dtype=torch.float64)
            _, _, h, w = x.shape
            for k, name in enumerate(RAND_OPS):
                sel = (op == k) & apply
                if not sel.any():
                    continue
                if name in _GEOMETRIC:
                    geo |= sel
                    m, s = mag[sel], sign[sel]
                    if name == "Rotate":
                        a = torch.deg2rad(m * 30.0 * s)
                        mat[sel] = torch.stack(
                            [torch.stack([a.cos(), -a.sin()], -1), torch.stack([a.sin(), a.cos()], -1)], -2
                        )
                    elif name == "ShearX":  # PIL shears about the top-left corner
                        f = m * 0.3 * s
                        mat[sel, 0, 1] = f
                        shift[sel, 0] = f * h / 2
                    elif name == "ShearY":
                        f = m * 0.3 * s
                        mat[sel, 1, 0] = f
                        shift[sel, 1] = f * w / 2
                    elif name == "TranslateXRel":
                        shift[sel, 0] = m * 0.45 * s * w
                    else:  # TranslateYRel
                        shift[sel, 1] = m * 0.45 * s * h
                    continue
                idx = sel.nonzero().squeeze(1)
                args = self._op_args(name, mag[idx], sign[idx])
                dev_idx = idx.to(x.device)
                x[dev_idx] = _PIXEL_OPS[name](x[dev_idx], *args)
            if geo.any():
                idx = geo.nonzero().squeeze(1)
                dev_idx = idx.to(x.device)
                x[dev_idx] = _affine(x[dev_idx], mat[idx].float(), shift[idx].float(), fill=_FILL)
        return x

    def _op_args(self, name: str, level: torch.Tensor, sign: torch.Tensor) -> tuple:
        """timm's magnitude -> argument mappings; level = magnitude / 10."""
        inc = self.rand_spec.increasing
        if name in ("AutoContrast", "Equalize", "Invert"):
            return ()
        if name == "Posterize":
            bits = (level * 4).floor().long()
            return ((4 - bits) if inc else bits,)
        if name == "Solarize":
            t = (level * 256).floor().clamp(max=256).long()
            return ((256 - t) if inc else t,)
        if name == "SolarizeAdd":
            return ((level * 110).floor().clamp(max=128),)
        # Color, Contrast, Brightness, Sharpness
        if inc:
            return ((1.0 + sign * level * 0.9).clamp(min=0.1).float(),)
        return ((level * 1.8 + 0.1).float(),)

    def mix(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timm's Mixup in 'batch' mode: image i is mixed with image B-1-i; soft targets with smoothing."""
        c = self.cfg
        lam, use_cutmix = 1.0, False
        # draw a fixed number of random numbers whatever the outcome, so the stream does not depend on it
        u_mix, u_switch = self._rand(2).tolist()
        rng = np.random.default_rng(self._seed())
        if u_mix < c.mix_prob:
            if c.mixup > 0 and c.cutmix > 0:
                use_cutmix = u_switch < c.switch_prob
            else:
                use_cutmix = c.cutmix > 0
            alpha = c.cutmix if use_cutmix else c.mixup
            lam = float(rng.beta(alpha, alpha))
        b, _, h, w = x.shape
        if lam < 1.0:
            if use_cutmix:
                cut = math.sqrt(1.0 - lam)
                cut_h, cut_w = int(h * cut), int(w * cut)
                cy, cx = int(rng.integers(0, h)), int(rng.integers(0, w))
                yl, yh = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, h)
                xl, xh = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, w)
                lam = 1.0 - (yh - yl) * (xh - xl) / (h * w)  # the area actually pasted
                x = x.clone()
                x[:, :, yl:yh, xl:xh] = x.flip(0)[:, :, yl:yh, xl:xh]
            else:
                x = x * lam + x.flip(0) * (1.0 - lam)
        return x, self.soft_targets(y, lam)

    def soft_targets(self, y: torch.Tensor, lam: float) -> torch.Tensor:
        """lam * onehot(y) + (1 - lam) * onehot(y.flip(0)), each smoothed: off = s/K, on = 1 - s + s/K."""
        k, s = self.num_classes, self.label_smoothing
        off = s / k
        on = 1.0 - s + off
        y1 = torch.full((len(y), k), off, device=y.device).scatter_(1, y[:, None].long(), on)
        y2 = torch.full((len(y), k), off, device=y.device).scatter_(1, y.flip(0)[:, None].long(), on)
        return y1 * lam + y2 * (1.0 - lam)


_PIXEL_OPS = {
    "AutoContrast": auto_contrast,
    "Equalize": equalize,
    "Invert": lambda x: 1 - x,
    "Posterize": posterize,
    "Solarize": solarize,
    "SolarizeAdd": solarize_add,
    "Color": color,
    "Contrast": contrast,
    "Brightness": brightness,
    "Sharpness": sharpness,
}

"""Multi-crop views built on the batch tensor: random resized crops at two resolutions, flip, colour
jitter, greyscale, Gaussian blur and solarisation, each with per-image parameters.

    views = MultiCrop(dino_view_specs(img_size=28, num_local=6, patch_size=4), mean, std)(x)
    # x: normalised (B, C, H, W) -> [global_1, global_2, local_1, ..., local_6], each normalised

Paper
    Caron et al., "Emerging Properties in Self-Supervised Vision Transformers" (DINO), ICCV 2021,
    section 3.1 and appendix: 2 global views (scale (0.4, 1), 224 px) + several local views
    (scale (0.05, 0.4), 96 px); the BYOL augmentations: flip, colour jitter (0.4, 0.4, 0.2, 0.1)
    with p = 0.8, greyscale p = 0.2, Gaussian blur (p = 1.0 / 0.1 / 0.5 for global 1 / global 2 /
    local), solarisation p = 0.2 on global 2 only. Assran et al., "Masked Siamese Networks" (MSN),
    ECCV 2022: a target and an anchor view (scale (0.3, 1)) + 10 focal views (scale (0.05, 0.3), 96 px),
    colour jitter of strength 0.5 (0.4, 0.4, 0.4, 0.1), blur p = 0.5 (no solarisation).
Reference code
    facebookresearch/dino `main_dino.py` (`DataAugmentationDINO`), facebookresearch/msn
    `src/data_manager.py` (`make_transforms`).
Deviations (all documented in docs/self_supervised.md)
    - The views are made from the already decoded, already resized batch (the loop hands the method a
      batch), not from the original JPEG: a "crop of scale s" is a fraction s of the stored image.
    - Small images: the view sizes keep the papers' ratio 96 / 224 and are rounded to a multiple of the
      patch size (28 px, patch 4: globals 28, locals 12); the blur sigma range (0.1, 2.0) px at 224 px
      is scaled by size / 224, so the blur is as strong relative to the view as in the paper.
    - The four colour-jitter ops run in a fixed order (brightness, contrast, saturation, hue) instead
      of torchvision's random order per image (a per-image order cannot be batched cheaply).
    - Images with a channel count other than 3 (MNIST, Fashion-MNIST) get brightness, contrast, blur
      and solarisation; saturation, hue and greyscale have no meaning there and are skipped.
    - Bilinear resampling without antialias (torchvision's tensor path with antialias=False).
Randomness
    Every random number is drawn on the CPU from `generator` (or torch's global RNG when None, which the
    training checkpoint saves), so a seeded generator gives the same views on CPU and GPU.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..data.augment import brightness, color, contrast, solarize

__all__ = ["MultiCrop", "ViewSpec", "crop_boxes", "dino_view_specs", "msn_view_specs", "view_size"]

_PAPER_GLOBAL, _PAPER_LOCAL = 224, 96  # the papers' view sizes in pixels
_PAPER_SIGMA = (0.1, 2.0)  # DINO / BYOL Gaussian-blur sigma range at 224 px


@dataclass(frozen=True)
class ViewSpec:
    """One kind of view: its output size, crop scale and the probability of each photometric op."""

    size: int  # output side in pixels (square)
    scale: tuple[float, float]  # crop area as a fraction of the image
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w / h, sampled log-uniformly
    hflip: float = 0.5
    jitter: float = 0.8  # probability of colour jitter
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    greyscale: float = 0.2
    blur: float = 0.5  # probability of Gaussian blur
    solarize: float = 0.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"view size must be >= 1 pixel, got {self.size}")
        if len(self.scale) != 2 or not 0 < self.scale[0] <= self.scale[1] <= 1:
            raise ValueError(f"view scale {self.scale} must be (min, max) with 0 < min <= max <= 1")
        if len(self.ratio) != 2 or not 0 < self.ratio[0] <= self.ratio[1]:
            raise ValueError(f"view ratio {self.ratio} must be (min, max) with 0 < min <= max")
        for name in ("hflip", "jitter", "greyscale", "blur", "solarize"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"view {name}={p} must be a probability in [0, 1]")
        if not 0.0 <= self.hue <= 0.5:
            raise ValueError(f"view hue={self.hue} must be in [0, 0.5]")


def view_size(img_size: int, paper_size: int, patch_size: int | None = None) -> int:
    """`img_size * paper_size / 224` rounded to a multiple of `patch_size` (at least one patch)."""
    size = img_size * paper_size / _PAPER_GLOBAL
    if not patch_size:
        return max(1, round(size))
    return max(patch_size, round(size / patch_size) * patch_size)


def dino_view_specs(
    img_size: int,
    num_local: int = 8,
    patch_size: int | None = None,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    local_size: int | None = None,
    hflip: float = 0.5,
) -> list[ViewSpec]:
    """DINO's views: global 1 (blur 1.0), global 2 (blur 0.1, solarise 0.2), `num_local` locals (blur 0.5).

    Globals are `img_size` (rounded to the patch size); locals `local_size`, default 96/224 of it."""
    g = view_size(img_size, _PAPER_GLOBAL, patch_size)
    loc = local_size or view_size(img_size, _PAPER_LOCAL, patch_size)
    return [
        ViewSpec(g, global_scale, blur=1.0, hflip=hflip),
        ViewSpec(g, global_scale, blur=0.1, solarize=0.2, hflip=hflip),
    ] + [ViewSpec(loc, local_scale, blur=0.5, hflip=hflip) for _ in range(num_local)]


def msn_view_specs(
    img_size: int,
    num_focal: int = 10,
    patch_size: int | None = None,
    rand_scale: tuple[float, float] = (0.3, 1.0),
    focal_scale: tuple[float, float] = (0.05, 0.3),
    focal_size: int | None = None,
    hflip: float = 0.5,
    jitter_strength: float = 0.5,
) -> list[ViewSpec]:
    """MSN's views: the target view, one random anchor view and `num_focal` focal views (all blur 0.5)."""
    g = view_size(img_size, _PAPER_GLOBAL, patch_size)
    loc = focal_size or view_size(img_size, _PAPER_LOCAL, patch_size)
    s = jitter_strength  # MSN's get_color_distortion(s): ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)
    common = {
        "hflip": hflip,
        "brightness": 0.8 * s,
        "contrast": 0.8 * s,
        "saturation": 0.8 * s,
        "hue": min(0.2 * s, 0.5),
        "blur": 0.5,
    }
    return [ViewSpec(g, rand_scale, **common), ViewSpec(g, rand_scale, **common)] + [
        ViewSpec(loc, focal_scale, **common) for _ in range(num_focal)
    ]


def crop_boxes(
    b: int, h: int, w: int, scale: Sequence[float], ratio: Sequence[float], generator: torch.Generator | None = None
) -> torch.Tensor:
    """torchvision's RandomResizedCrop parameters for b images: (b, 4) float64 (top, left, height, width).

    Up to 10 tries of (area fraction ~ U(scale), log aspect ~ U(log ratio)); an image with no valid try
    gets torchvision's fallback, the central crop clamped to the ratio range."""
    tries = 10
    area = h * w * (scale[0] + (scale[1] - scale[0]) * torch.rand(b, tries, generator=generator, dtype=torch.float64))
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(lo + (hi - lo) * torch.rand(b, tries, generator=generator, dtype=torch.float64))
    cw = torch.sqrt(area * aspect).round()
    ch = torch.sqrt(area / aspect).round()
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = ok.long().argmax(1, keepdim=True)
    found = ok.any(1)
    cw, ch = cw.gather(1, first).squeeze(1), ch.gather(1, first).squeeze(1)
    if w / h < ratio[0]:
        fw, fh = w, round(w / ratio[0])
    elif w / h > ratio[1]:
        fw, fh = round(h * ratio[1]), h
    else:
        fw, fh = w, h
    cw = torch.where(found, cw, torch.full_like(cw, fw))
    ch = torch.where(found, ch, torch.full_like(ch, fh))
    u = torch.rand(b, 2, generator=generator, dtype=torch.float64)
    top = torch.where(found, (u[:, 0] * (h - ch + 1)).floor(), (h - ch) // 2)
    left = torch.where(found, (u[:, 1] * (w - cw + 1)).floor(), (w - cw) // 2)
    return torch.stack([top, left, ch, cw], 1)


def resized_crop(x: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop boxes (n, 4) = (top, left, height, width) in pixels out of x (n, C, H, W), each resized
    bilinearly to (size, size), in one `grid_sample`."""
    n, _, h, w = x.shape
    top, left, ch, cw = boxes.double().unbind(1)
    # output pixel centre j maps to input pixel left + (j + 0.5) * cw / size - 0.5; grid_sample's
    # normalised coordinate with align_corners=False is (2 * (pixel + 0.5) / w - 1)
    theta = torch.zeros(n, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = cw / w
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 1] = ch / h
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    grid = F.affine_grid(theta.to(device=x.device, dtype=x.dtype), [n, 1, size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    mx, _ = x.max(1)
    mn, _ = x.min(1)
    delta = mx - mn
    s = torch.where(mx > 0, delta / mx.clamp_min(1e-12), torch.zeros_like(mx))
    d = delta.clamp_min(1e-12)
    h = torch.where(mx == r, ((g - b) / d) % 6, torch.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    h = torch.where(delta > 0, h / 6, torch.zeros_like(h))
    return torch.stack([h, s, mx], 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + h * 6) % 6, (3 + h * 6) % 6, (1 + h * 6) % 6], 1)  # (n, 3, H, W)
    f = (torch.minimum(k, 4 - k)).clamp(0, 1)
    return v[:, None] - v[:, None] * s[:, None] * f


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images x (n, 3, H, W) by `shift` (n,) turns (torchvision's adjust_hue)."""
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.to(x).view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-image sigma (n,) in pixels; reflect padding; radius 3 sigma."""
    n, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    radius = min(radius, h - 1, w - 1) if min(h, w) > 1 else 0
    if radius == 0:
        return x
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t[None] / sigma.to(x).view(-1, 1)) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, 2r+1)
    y = F.pad(x.reshape(1, n * c, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, k.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(y, k.view(n * c, 1, -1, 1), groups=n * c)
    return y.view(n, c, h, w)


class MultiCrop:
    """Make the views of `specs` from a normalised batch (see the module docstring).

    `mean` / `std` are the normalisation of the batch (the photometric ops work in [0, 1]); the views come
    back normalised the same way. Call it as `views = multicrop(x)` -> list of (B, C, size, size)."""

    def __init__(
        self,
        specs: Sequence[ViewSpec],
        mean: Sequence[float],
        std: Sequence[float],
        generator: torch.Generator | None = None,
    ) -> None:
        if not specs:
            raise ValueError("MultiCrop needs at least one ViewSpec")
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ValueError(f"mean {tuple(mean)} and std {tuple(std)} must have one positive std per channel")
        if generator is not None and generator.device.type != "cpu":
            raise ValueError("MultiCrop samples on the CPU: pass a CPU torch.Generator")
        self.specs = list(specs)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
        self.generator = generator

    def __repr__(self) -> str:
        sizes = ", ".join(f"{s.size}px {s.scale}" for s in self.specs)
        return f"MultiCrop({len(self.specs)} views: {sizes})"

    def _rand(self, *shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.ndim != 4 or not x.is_floating_point():
            raise ValueError(f"expected a float batch (B, C, H, W), got {tuple(x.shape)} {x.dtype}")
        if x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"the batch has {x.shape[1]} channels but mean/std have {self.mean.shape[1]}")
        dtype = x.dtype
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        raw = (x.float() * std + mean).clamp_(0.0, 1.0)
        return [((self.view(raw, spec) - mean) / std).to(dtype) for spec in self.specs]

    def view(self, x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
        """One view of every image of x (B, C, H, W) in [0, 1]; stays in [0, 1]."""
        b, c, h, w = x.shape
        x = resized_crop(x, crop_boxes(b, h, w, spec.scale, spec.ratio, self.generator), spec.size)
        x = x.clamp_(0.0, 1.0)
        dev = x.device
        flip = (self._rand(b) < spec.hflip).to(dev).view(-1, 1, 1, 1)
        x = torch.where(flip, x.flip(-1), x)
        rgb = c == 3
        jit = self._rand(b) < spec.jitter
        u = self._rand(b, 4) * 2 - 1  # factors in [1 - a, 1 + a]; hue shift in [-hue, hue]
        one = torch.ones(b)
        factors = [
            torch.where(jit, 1 + spec.brightness * u[:, 0], one),
            torch.where(jit, 1 + spec.contrast * u[:, 1], one),
        ]
        x = brightness(x, factors[0].clamp_min(0).to(dev))
        x = contrast(x, factors[1].clamp_min(0).to(dev))
        if rgb:  # saturation, hue and greyscale only mean something for RGB images
            x = color(x, torch.where(jit, 1 + spec.saturation * u[:, 2], one).clamp_min(0).to(dev))
            shift = torch.where(jit, spec.hue * u[:, 3], torch.zeros(b))
            if bool((shift != 0).any()):
                x = adjust_hue(x, shift.to(dev))
            grey = (self._rand(b) < spec.greyscale).to(dev).view(-1, 1, 1, 1)
            lum = (x * torch.tensor((0.299, 0.587, 0.114), device=dev).view(1, 3, 1, 1)).sum(1, keepdim=True)
            x = torch.where(grey, lum.expand_as(x), x)
        blur = self._rand(b) < spec.blur
        lo, hi = (s * spec.size / _PAPER_GLOBAL for s in _PAPER_SIGMA)
        sigma = lo + (hi - lo) * self._rand(b)
        if bool(blur.any()):
            blurred = gaussian_blur(x, sigma)
            x = torch.where(blur.to(dev).view(-1, 1, 1, 1), blurred, x)
        sol = (self._rand(b) < spec.solarize).to(dev).view(-1, 1, 1, 1)
        if spec.solarize > 0:
            x = torch.where(sol, solarize(x, torch.full((b,), 128)), x)  # PIL: invert values >= 128
        return x.clamp_(0.0, 1.0)

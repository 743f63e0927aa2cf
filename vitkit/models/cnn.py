"""Small convolutional networks: a ResNet and a RegNetY, as baselines and as DeiT teachers.

Papers
    ResNet:  He et al., "Deep Residual Learning for Image Recognition", CVPR 2016 (arXiv:1512.03385):
             the basic block (two 3x3 convolutions, eq. 1 with a projection shortcut, eq. 2, where the
             shape changes) and the small-image layout of section 4.2 (a 3x3 stem, no max pool).
    RegNet:  Radosavovic et al., "Designing Network Design Spaces", CVPR 2020 (arXiv:2003.13678):
             the X block (1x1 -> 3x3 group conv of group width g -> 1x1, bottleneck ratio b) and the
             Y block, which adds squeeze-and-excitation (Hu et al., CVPR 2018) after the 3x3 conv
             with its reduction computed from the block's *input* width (se_ratio 0.25).
    DeiT:    Touvron et al., ICML 2021 (arXiv:2012.12877), section 5.2: a convnet teacher (RegNetY)
             gives a better transformer student than a transformer teacher.
Reference code
    timm `resnet.py` (`BasicBlock`, `zero_init_last`) and `regnet.py` (`Bottleneck` with `se_ratio`
    relative to the input width).
Deviations
    - Sized for 28x28 / 32x32 images on a CPU: a stride-1 3x3 stem and three stages at strides
      (2, 2, 2) (28 -> 14 -> 7 -> 4; configurable) instead of the ImageNet stem (7x7/2 + max pool)
      and four stages.
    - One family, two block types (`block='basic'` | `'regnet'`), with vitkit's key names
      (`stem`, `stages.i.blocks.j`, `head`) rather than timm's, so the heads load and re-initialise
      the same way as every other vitkit family. No parity with timm is claimed for that reason.
    - The classifier head is zero-initialised (as the ViT family); the last BatchNorm of every
      residual branch starts at gamma = 0 (timm's `zero_init_last`, Goyal et al. 2017), so each
      block starts as the identity.

Shapes: images (B, C, H, W) -> feature map (B, F, H/s, W/s) (`forward_features`) -> pooled (B, F)
-> logits (B, K) (`forward_head`). Any input size runs; `img_size` records the size the model
is meant for (a distillation teacher is checked against the student's data with it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..layers import DropPath, Linear, drop_path_rates, is_fx_tracing
from ..registry import CIFAR10_MEAN, CIFAR10_STD, MNIST_MEAN, MNIST_STD, register_model
from ._base import Backbone, register_family


@dataclass
class CNNConfig:
    block: str = "basic"  # 'basic' (ResNet basic block) | 'regnet' (RegNetX/Y bottleneck)
    img_size: int | tuple[int, int] = 28  # the input size the model is meant for (any size runs)
    in_chans: int = 1
    num_classes: int = 10
    stem_width: int = 32
    widths: tuple[int, ...] = (32, 64, 128)  # output channels of each stage
    depths: tuple[int, ...] = (1, 1, 1)  # blocks per stage
    strides: tuple[int, ...] = (2, 2, 2)  # stride of the first block of each stage
    group_width: int = 16  # regnet: channels per group of the 3x3 convolution
    bottleneck_ratio: float = 1.0  # regnet: inner width = out width * ratio (RegNet's b)
    se_ratio: float = 0.25  # regnet: squeeze-excitation width / block input width; 0 = RegNetX
    global_pool: str = "avg"  # 'avg' | '' (forward_head returns the feature map)
    drop_rate: float = 0.0  # dropout before the head
    drop_path_rate: float = 0.0  # stochastic depth over the residual branches, linearly increasing
    bn_eps: float = 1e-5

    def __post_init__(self) -> None:
        for name in ("img_size", "widths", "depths", "strides"):
            if isinstance(getattr(self, name), list):
                setattr(self, name, tuple(getattr(self, name)))
        if self.block not in ("basic", "regnet"):
            raise ValueError(f"block must be 'basic' (ResNet) or 'regnet' (RegNetX/Y), got {self.block!r}")
        if not len(self.widths) == len(self.depths) == len(self.strides) or not self.widths:
            raise ValueError(
                f"widths {self.widths}, depths {self.depths} and strides {self.strides} must have "
                f"one entry per stage (the same, non-zero length)"
            )
        if self.global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {self.global_pool!r}")
        if self.block == "regnet":
            for w in self.widths:
                inner = round(w * self.bottleneck_ratio)
                if inner % self.group_width:
                    raise ValueError(
                        f"regnet: the inner width {inner} (width {w} x bottleneck_ratio "
                        f"{self.bottleneck_ratio}) is not a multiple of group_width {self.group_width}"
                    )


def conv_bn(
    c_in: int, c_out: int, k: int, stride: int = 1, groups: int = 1, act: bool = True, eps: float = 1e-5
) -> nn.Sequential:
    """Conv (no bias) -> BatchNorm [-> ReLU], 'same'-style padding k // 2."""
    layers = [nn.Conv2d(c_in, c_out, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(c_out, eps=eps)]
    if act:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class Shortcut(nn.Module):
    """Identity, or the projection shortcut (ResNet eq. 2): 1x1 strided conv + BN."""

    def __init__(self, c_in: int, c_out: int, stride: int, eps: float) -> None:
        super().__init__()
        self.proj = conv_bn(c_in, c_out, 1, stride, act=False, eps=eps) if (stride != 1 or c_in != c_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.proj is None else self.proj(x)


class BasicBlock(nn.Module):
    """ResNet basic block: ReLU(x' + BN(conv3x3(ReLU(BN(conv3x3(x)))))), x' the shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop_path: float, cfg: CNNConfig) -> None:
        super().__init__()
        self.conv1 = conv_bn(c_in, c_out, 3, stride, eps=cfg.bn_eps)
        self.conv2 = conv_bn(c_out, c_out, 3, act=False, eps=cfg.bn_eps)
        self.shortcut = Shortcut(c_in, c_out, stride, cfg.bn_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv2[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.drop_path(self.conv2(self.conv1(x))))


class SqueezeExcite(nn.Module):
    """x * sigmoid(W2 ReLU(W1 mean_hw(x))) (Hu et al. 2018), as 1x1 convs with bias."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(s)


class RegNetBlock(nn.Module):
    """RegNet X/Y block: 1x1 -> 3x3 group conv (stride) [-> SE] -> 1x1 (no ReLU), + shortcut, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, drop_path: float, cfg: CNNConfig) -> None:
        super().__init__()
        inner = round(c_out * cfg.bottleneck_ratio)
        self.conv1 = conv_bn(c_in, inner, 1, eps=cfg.bn_eps)
        self.conv2 = conv_bn(inner, inner, 3, stride, groups=inner // cfg.group_width, eps=cfg.bn_eps)
        se = round(c_in * cfg.se_ratio)  # RegNetY: relative to the block's input width
        self.se = SqueezeExcite(inner, se) if se > 0 else nn.Identity()
        self.conv3 = conv_bn(inner, c_out, 1, act=False, eps=cfg.bn_eps)
        self.shortcut = Shortcut(c_in, c_out, stride, cfg.bn_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shortcut(x) + self.drop_path(self.conv3(self.se(self.conv2(self.conv1(x))))))


class Stage(nn.Module):
    def __init__(self, blocks: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


@register_family
class ConvNet(Backbone):
    """A ResNet (`block='basic'`) or RegNetY/X (`block='regnet'`) for small images."""

    family = "cnn"
    config_class = CNNConfig
    hierarchical_features = True  # features_only takes every stage by default
    # no_weight_decay: none; BN and bias parameters are 1-D, which the optimiser already exempts
    # layer-decay groups in timm's format: the stem, then one group per stage
    group_stem = r"^stem"
    group_blocks = [(r"^stages\.(\d+)", None)]
    group_blocks_coarse = r"^stages\.(\d+)"
    # forward_intermediates: the feature maps (B, C_i, H_i, W_i) of selected stages; `norm` is accepted
    # for timm's interface and changes nothing (a ResNet has no final norm)
    intermediate_fmts = ("NCHW",)
    feature_level_unit = "stages"
    norm_intermediates = "none"

    def __init__(self, config: CNNConfig) -> None:
        super().__init__(config)
        c = config
        self.num_classes = c.num_classes
        self.global_pool = c.global_pool
        self.num_prefix_tokens = 0  # a feature map: no prefix tokens
        block_cls = BasicBlock if c.block == "basic" else RegNetBlock
        self.stem = conv_bn(c.in_chans, c.stem_width, 3, 1, eps=c.bn_eps)
        dpr = drop_path_rates(c.drop_path_rate, sum(c.depths))
        stages, c_in, k = [], c.stem_width, 0
        for width, depth, stride in zip(c.widths, c.depths, c.strides):
            blocks = []
            for j in range(depth):
                blocks.append(block_cls(c_in, width, stride if j == 0 else 1, dpr[k], c))
                c_in, k = width, k + 1
            stages.append(Stage(blocks))
        self.stages = nn.Sequential(*stages)
        self.reduction, self.feature_info = 1, []
        for i, (s, width) in enumerate(zip(c.strides, c.widths)):
            self.reduction *= s
            self.feature_info.append(dict(num_chs=width, reduction=self.reduction, module=f"stages.{i}"))
        self.num_features = c_in
        self.head_drop = nn.Dropout(c.drop_rate)
        self.head = Linear(self.num_features, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    # ----------------------------------------------------------------- initialisation
    def init_weights(self) -> None:
        """He (fan-out) normal convolutions, BN gamma 1 / beta 0 except the last BN of each
        residual branch (gamma 0: blocks start as the identity), zero classifier head."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for stage in self.stages:
            for block in stage.blocks:
                nn.init.zeros_(block.last_bn().weight)
        self.init_classifier(self.head)

    # ----------------------------------------------------------------- backbone interface
    def _keep_levels(self, n: int) -> None:  # prune_intermediate_layers (Backbone)
        self.stages = self.stages[:n]

    def adapt_checkpoint(self, state: dict[str, torch.Tensor], source: str = "checkpoint") -> dict[str, torch.Tensor]:
        """Identity map except the head: another number of classes keeps the model's fresh head (with a warning)."""
        from ..convert.timm import fit_heads

        state = dict(state)
        fit_heads(self, state, self.state_dict(), source)
        return state

    # ----------------------------------------------------------------- forward
    def _check_input(self, x: torch.Tensor) -> None:
        if is_fx_tracing():  # symbolic shapes: nothing to check (see vitkit/layers/tracing.py)
            return
        if x.ndim != 4 or x.shape[1] != self.config.in_chans:
            raise ValueError(
                f"the model expects images of shape (B, {self.config.in_chans}, H, W), got {tuple(x.shape)}: "
                f"create the model with in_chans={x.shape[1] if x.ndim == 4 else '?'} or convert the images"
            )

    def _run_stage(self, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self._checkpointed(stage, x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> feature map (B, F, H / reduction, W / reduction)."""
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages:
            x = self._run_stage(stage, x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (B, K), or pooled features (B, F) when `pre_logits`."""
        if self.global_pool == "avg":
            x = x.mean((2, 3))
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    # forward_intermediates (Backbone): no prefix tokens (an empty (B, 0, C_i) with return_prefix_tokens)
    def _num_feature_levels(self) -> int:
        return len(self.stages)

    def _run_levels(self, x: torch.Tensor, last: int):
        self._check_input(x)
        x = self.stem(x)
        for stage in self.stages[: last + 1]:
            x = self._run_stage(stage, x)
            yield x, None

    def _format_intermediate(self, y: torch.Tensor, ctx: Any, output_fmt: str):
        return y, y.new_zeros(y.shape[0], 0, y.shape[1])

    def _final_features(self, x: torch.Tensor, ctx: Any, complete: bool) -> torch.Tensor:
        return x


# --------------------------------------------------------------------------------------------
# Named configurations: CPU-trainable teachers for 28x28 greyscale (MNIST, Fashion-MNIST) and
# 32x32 RGB (CIFAR) images.
CNN_SIZES: dict[str, dict[str, Any]] = {
    # ResNet-8-like: stem + 3 basic blocks, 32-64-128 channels
    "resnet_micro": {"block": "basic", "stem_width": 32, "widths": (32, 64, 128), "depths": (1, 1, 1)},
    # RegNetY-like: group width 16, bottleneck ratio 1, SE 0.25, depths 1-2-2
    "regnety_micro": {
        "block": "regnet",
        "stem_width": 32,
        "widths": (32, 64, 128),
        "depths": (1, 2, 2),
        "group_width": 16,
        "se_ratio": 0.25,
    },
}


def _register_all() -> None:
    mnist = {"mean": MNIST_MEAN, "std": MNIST_STD, "crop_pct": 1.0, "interpolation": "bilinear"}
    cifar = {
        "mean": CIFAR10_MEAN,
        "std": CIFAR10_STD,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    for name, cfg in CNN_SIZES.items():
        register_model(f"{name}_28", "cnn", dict(cfg, img_size=28, in_chans=1, num_classes=10), **mnist)
        register_model(f"{name}_32", "cnn", dict(cfg, img_size=32, in_chans=3, num_classes=10), **cifar)


_register_all()
__all__ = ["CNNConfig", "ConvNet"]

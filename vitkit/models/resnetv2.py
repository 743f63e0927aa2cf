"""ResNetV2 backbone for the R50+ViT hybrid models.

Papers:
    * Kolesnikov et al., "Big Transfer (BiT): General Visual Representation Learning", ECCV 2020,
      https://arxiv.org/abs/1912.11370 -- ResNet with GroupNorm + Weight Standardization.
    * Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at Scale",
      ICLR 2021, https://arxiv.org/abs/2010.11929 -- Sec. 3.1 "Hybrid Architecture": the ViT input
      sequence is the feature map of a ResNet. For R50+ViT-B/16 the ResNet-50 is cut after stage 3
      (layers (3, 4, 9): the 6 blocks of stage 4 are moved into stage 3), giving stride 16 and 1024 channels.
    * Qiao et al., "Micro-Batch Training with Batch-Channel Normalization and Weight Standardization",
      https://arxiv.org/abs/1903.10520 -- Weight Standardization.

Reference implementation:
    timm 1.0.x ``timm/models/resnetv2.py`` (``ResNetV2(preact=False)``, ``Bottleneck``, ``DownsampleConv``,
    ``create_resnetv2_stem``), ``timm/models/vision_transformer_hybrid.py`` (``_resnetv2``),
    ``timm/layers/std_conv.py`` (``StdConv2d``, ``StdConv2dSame``) and ``timm/layers/padding.py`` /
    ``pool2d_same.py`` (TF "SAME" padding, ``MaxPool2dSame``), which port the JAX code of
    https://github.com/google-research/vision_transformer.

What this file implements (and only that):
    * Weight-standardised convolutions. The weight of every output channel is normalised to zero mean and
      unit (biased) variance, ``w_hat = (w - mean) / sqrt(var + eps)``, with ``eps = 1e-8`` -- the value
      timm's ``_resnetv2`` passes for the hybrid models (timm's own ``StdConv2d`` default is 1e-6).
    * GroupNorm with 32 groups (eps 1e-5) followed by ReLU.
    * Non-pre-activation ("v1.5") bottleneck blocks: 1x1 -> 3x3 (carries the stride) -> 1x1, GroupNorm after
      every conv, ReLU after the residual add. The first block of every stage has a projection shortcut
      (1x1 strided StdConv + GroupNorm without activation).
    * Stem: 7x7/2 StdConv -> GroupNorm+ReLU -> 3x3/2 max pool. With ``stem_type='same'`` (the hybrid
      default) every conv and the pool use TensorFlow "SAME" padding (asymmetric, input-size dependent);
      with ``stem_type=''`` they use the usual symmetric PyTorch padding.
    * Stage strides (1, 2, 2, 2, ...): total stride is 4 * 2 ** (num_stages - 1), 16 for layers=(3, 4, 9).

State-dict keys are identical to timm's hybrid backbone (``vit_base_r50_s16_224.patch_embed.backbone``),
e.g. ``stem.conv.weight``, ``stem.norm.weight``, ``stages.0.blocks.0.downsample.conv.weight``,
``stages.2.blocks.8.norm3.bias``.

Deviations from timm:
    * No classifier head, no final norm, no global pool. With ``preact=False``, ``num_classes=0`` and
      ``global_pool=''`` (as built by timm's ``_resnetv2``) timm's ``norm`` and ``head`` are parameter-free
      identities, so outputs and state dicts are unchanged.
    * Only the pieces the hybrid uses: no pre-activation blocks, no deep/tiered stems, no dilation
      (``output_stride``), no stochastic depth, no avg-pool downsampling.
    * Gradient checkpointing wraps whole stages (timm checkpoints per block inside a stage); the numerics
      are identical.
    * ReLUs are not in-place.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ResNetV2", "StdConv2d", "StdConv2dSame", "GroupNormAct", "Bottleneck", "pad_same"]

_Pair = tuple[int, int]


def _pair(v: int | Sequence[int]) -> _Pair:
    if isinstance(v, int):
        return (v, v)
    a, b = v
    return (int(a), int(b))


def _same_pad_amount(size: int, kernel: int, stride: int, dilation: int) -> int:
    """Total padding TF "SAME" adds along one spatial dim so that out = ceil(size / stride)."""
    return max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)


@torch.fx.wrap  # one call in a torch.fx graph: the padding is computed from the real input size
def pad_same(
    x: torch.Tensor,
    kernel_size: _Pair,
    stride: _Pair,
    dilation: _Pair = (1, 1),
    value: float = 0.0,
) -> torch.Tensor:
    """Pad ``x`` (N, C, H, W) the way TensorFlow's ``padding='SAME'`` does.

    The padding depends on the input size; when it is odd the extra pixel goes at the bottom / right.
    """
    ih, iw = x.shape[-2:]
    pad_h = _same_pad_amount(ih, kernel_size[0], stride[0], dilation[0])
    pad_w = _same_pad_amount(iw, kernel_size[1], stride[1], dilation[1])
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=value)


def _is_static_same(kernel_size: _Pair, stride: _Pair, dilation: _Pair) -> bool:
    """True when "SAME" padding does not depend on the input size (stride 1, odd effective kernel)."""
    return all(s == 1 and (d * (k - 1)) % 2 == 0 for k, s, d in zip(kernel_size, stride, dilation))


def _symmetric_padding(kernel_size: _Pair, stride: _Pair, dilation: _Pair) -> _Pair:
    """PyTorch-style symmetric padding (timm ``get_padding``)."""
    ph, pw = (((s - 1) + d * (k - 1)) // 2 for k, s, d in zip(kernel_size, stride, dilation))
    return (ph, pw)


def standardize_weight(weight: torch.Tensor, eps: float) -> torch.Tensor:
    """Weight Standardization: zero mean, unit biased variance per output channel.

    Computed as timm computes it (a training-mode batch norm over each output channel's weights), so
    that imported weights give timm's numbers to the last bit rather than within rounding."""
    out_channels = weight.shape[0]
    return F.batch_norm(
        weight.reshape(1, out_channels, -1), None, None, training=True, momentum=0.0, eps=eps
    ).reshape_as(weight)


class StdConv2d(nn.Conv2d):
    """Conv2d with Weight Standardization and symmetric PyTorch padding (no bias by default)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        dilation: int = 1,
        groups: int = 1,
        bias: bool = False,
        eps: float = 1e-8,
    ) -> None:
        k, s, d = _pair(kernel_size), _pair(stride), _pair(dilation)
        super().__init__(
            in_channels,
            out_channels,
            k,
            stride=s,
            padding=_symmetric_padding(k, s, d),
            dilation=d,
            groups=groups,
            bias=bias,
        )
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = standardize_weight(self.weight, self.eps)
        return F.conv2d(x, weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, eps={self.eps}"


class StdConv2dSame(StdConv2d):
    """Conv2d with Weight Standardization and TensorFlow "SAME" padding (as used by the ViT hybrid).

    When the padding is input-size independent (stride 1, odd kernel) it is applied statically by the
    convolution itself; otherwise the input is padded dynamically before a padding-free convolution.
    """

    def __init__(self, *args, **kwargs) -> None:  # the arguments of StdConv2d
        super().__init__(*args, **kwargs)
        self.dynamic_pad = not _is_static_same(self.kernel_size, self.stride, self.dilation)
        if self.dynamic_pad:
            self.padding = (0, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_pad:
            x = pad_same(x, self.kernel_size, self.stride, self.dilation)
        return super().forward(x)


class GroupNormAct(nn.GroupNorm):
    """GroupNorm (default 32 groups) optionally followed by ReLU. Parameters: ``weight``, ``bias``."""

    def __init__(self, num_channels: int, num_groups: int = 32, eps: float = 1e-5, apply_act: bool = True) -> None:
        super().__init__(num_groups, num_channels, eps=eps, affine=True)
        self.apply_act = apply_act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)
        return F.relu(x) if self.apply_act else x

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, apply_act={self.apply_act}"


def _make_divisible(v: float, divisor: int = 8) -> int:
    """Round a channel count to the nearest multiple of ``divisor`` (timm ``make_divisible``)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


class Downsample(nn.Module):
    """Projection shortcut: strided 1x1 StdConv followed by GroupNorm (no activation)."""

    def __init__(self, in_chs: int, out_chs: int, stride: int, conv_layer: type[StdConv2d], eps: float) -> None:
        super().__init__()
        self.conv = conv_layer(in_chs, out_chs, 1, stride=stride, eps=eps)
        self.norm = GroupNormAct(out_chs, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Non-pre-activation bottleneck: conv1x1-GN-ReLU, conv3x3(stride)-GN-ReLU, conv1x1-GN, add, ReLU."""

    def __init__(
        self,
        in_chs: int,
        out_chs: int,
        stride: int,
        conv_layer: type[StdConv2d],
        eps: float,
        bottle_ratio: float = 0.25,
        project: bool = False,
    ) -> None:
        super().__init__()
        mid_chs = _make_divisible(out_chs * bottle_ratio)
        self.downsample = Downsample(in_chs, out_chs, stride, conv_layer, eps) if project else None
        self.conv1 = conv_layer(in_chs, mid_chs, 1, eps=eps)
        self.norm1 = GroupNormAct(mid_chs)
        self.conv2 = conv_layer(mid_chs, mid_chs, 3, stride=stride, eps=eps)
        self.norm2 = GroupNormAct(mid_chs)
        self.conv3 = conv_layer(mid_chs, out_chs, 1, eps=eps)
        self.norm3 = GroupNormAct(out_chs, apply_act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = self.norm1(self.conv1(x))
        x = self.norm2(self.conv2(x))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class ResNetStage(nn.Module):
    """``depth`` bottleneck blocks; the first one carries the stride and the projection shortcut."""

    def __init__(
        self, in_chs: int, out_chs: int, stride: int, depth: int, conv_layer: type[StdConv2d], eps: float
    ) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *[
                Bottleneck(
                    in_chs if i == 0 else out_chs,
                    out_chs,
                    stride=stride if i == 0 else 1,
                    conv_layer=conv_layer,
                    eps=eps,
                    project=i == 0,
                )
                for i in range(depth)
            ]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class Stem(nn.Module):
    """7x7/2 StdConv -> GroupNorm + ReLU -> 3x3/2 max pool (total stride 4)."""

    def __init__(
        self, in_chans: int, out_chs: int, same_padding: bool, conv_layer: type[StdConv2d], eps: float
    ) -> None:
        super().__init__()
        self.same_padding = same_padding
        self.conv = conv_layer(in_chans, out_chs, 7, stride=2, eps=eps)
        self.norm = GroupNormAct(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        if self.same_padding:
            # TF "SAME" max pool: pad with -inf so padded pixels never win the max.
            x = pad_same(x, (3, 3), (2, 2), value=float("-inf"))
            return F.max_pool2d(x, kernel_size=3, stride=2)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class ResNetV2(nn.Module):
    """Headless ResNetV2 (GroupNorm + Weight Standardization, non-pre-activation bottlenecks).

    ``forward(x)`` returns the last stage's feature map of shape
    ``(B, num_features, ceil(H / reduction), ceil(W / reduction))`` (both padding modes);
    for layers=(3, 4, 9) that is ``(B, 1024, H/16, W/16)`` when H and W are multiples of 16.

    Args:
        layers: number of bottleneck blocks per stage; (3, 4, 9) is the R50 backbone of ViT-B/16 hybrids.
        in_chans: input image channels.
        width_factor: channel multiplier (BiT "x1", "x3", ...).
        stem_type: ``'same'`` for TF "SAME" padding everywhere (the hybrid models), ``''`` for symmetric
            PyTorch padding.
        channels: output channels of each stage before ``width_factor`` (only the first ``len(layers)``
            entries are used).
        stem_chs: stem channels before ``width_factor``.
        eps: Weight Standardization epsilon (1e-8 for the hybrid models).
    """

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 9),
        in_chans: int = 3,
        width_factor: int = 1,
        stem_type: str = "same",
        channels: Sequence[int] = (256, 512, 1024, 2048),
        stem_chs: int = 64,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if stem_type not in ("same", ""):
            raise ValueError(f"stem_type must be 'same' or '', got {stem_type!r}")
        if not 1 <= len(layers) <= len(channels):
            raise ValueError(f"need 1..{len(channels)} stages, got layers={tuple(layers)}")
        same = stem_type == "same"
        conv_layer = StdConv2dSame if same else StdConv2d
        self.in_chans = in_chans
        self.grad_checkpointing = False

        stem_chs = _make_divisible(stem_chs * width_factor)
        self.stem = Stem(in_chans, stem_chs, same, conv_layer, eps)
        self.feature_info: list[dict[str, int | str]] = [dict(num_chs=stem_chs, reduction=2, module="stem.norm")]

        prev_chs, curr_stride = stem_chs, 4
        stages = []
        for i, (depth, chs) in enumerate(zip(layers, channels)):
            out_chs = _make_divisible(chs * width_factor)
            stride = 1 if i == 0 else 2
            stages.append(ResNetStage(prev_chs, out_chs, stride, depth, conv_layer, eps))
            prev_chs, curr_stride = out_chs, curr_stride * stride
            self.feature_info.append(dict(num_chs=out_chs, reduction=curr_stride, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)

        self.num_features: int = prev_chs
        self.reduction: int = curr_stride
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """timm's init: Kaiming-normal (fan_out, ReLU) convs; GroupNorm weight 1, bias 0."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each stage's activations in the backward pass instead of storing them."""
        self.grad_checkpointing = enable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for stage in self.stages:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(stage, x, use_reentrant=False)
            else:
                x = stage(x)
        return x

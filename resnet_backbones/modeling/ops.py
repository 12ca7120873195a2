"""Layers that several networks use and none owns: channel rounding, squeeze-and-excitation,
shortcuts, deformable convolution and Res2Net's split 3x3 conv.

Every class takes typed arguments only; nothing reads a config or a network's spec.
"""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import Conv2d, get_norm
from torch import nn
from torchvision.ops import deform_conv2d

__all__ = [
    "AvgDownConv2d",
    "DeformConv2d",
    "Res2NetConv",
    "SqueezeExcite",
    "ZeroPadShortcut",
    "make_divisible",
    "make_shortcut",
    "zero_pad_channels",
]


def make_divisible(value: float, divisor: int = 8, *, round_limit: float = 0.9) -> int:
    """``value`` rounded to the nearest multiple of ``divisor``, at least ``divisor``; one more
    ``divisor`` where that rounds below ``round_limit * value``.

    timm's ``make_divisible``, whose rounding the pretrained widths depend on: timm's SE (and our
    ResNets' SE) uses ``round_limit=0`` (plain nearest multiple), ReXNet 0.9 (never more than 10%
    below ``value``).
    """
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < round_limit * value else rounded


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): global average pool, 1x1 conv, [norm], ReLU, 1x1
    conv, sigmoid; scales the input's channels.

    Parameters: ``fc1.weight``, ``fc1.bias``, ``fc1.norm.*`` (with a norm), ``fc2.weight``,
    ``fc2.bias``. The ResNets' SE has no norm; ReXNet's has one.
    """

    def __init__(self, channels: int, reduced_channels: int, *, norm: str = ""):
        """
        Args:
            channels: input (and output) channels.
            reduced_channels: width of the bottleneck between the two 1x1 convs.
            norm: norm after the first 1x1 conv, a ``detectron2.layers.get_norm`` name; "" none.
        """
        super().__init__()
        self.fc1 = Conv2d(
            channels,
            reduced_channels,
            kernel_size=1,
            bias=True,
            norm=get_norm(norm, reduced_channels),
            # A module, not F.relu: torch.jit.script cannot call a function held as an
            # attribute (the same numbers, no parameters).
            activation=nn.ReLU(),
        )
        self.fc2 = Conv2d(reduced_channels, channels, kernel_size=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(self.fc1(x.mean((2, 3), keepdim=True)))
        return x * scale.sigmoid()


# --------------------------------------------------------------------------------------------
# Shortcuts
# --------------------------------------------------------------------------------------------
def zero_pad_channels(x: torch.Tensor, extra_channels: int) -> torch.Tensor:
    """``x`` with ``extra_channels`` zero channels appended (the ResNet paper's option A).

    The count is the caller's (a Python int, from the widths it was built with): computed from
    ``x.shape`` it would be an op of its own in a traced graph.
    """
    return F.pad(x, (0, 0, 0, 0, 0, extra_channels)) if extra_channels else x


class ZeroPadShortcut(nn.Module):
    """Option A (ResNet paper, Sec. 3.3): identity, strided, with zero-padded extra channels.

    It has no parameters. Subsampling takes every ``stride``-th pixel, which matches the output
    size of a strided 3x3 conv with padding 1 and of a strided 1x1 conv.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        if out_channels < in_channels:
            raise ValueError(
                f"shortcut option A pads channels with zeros, so it cannot go from "
                f"{in_channels} to {out_channels} channels"
            )
        self.extra_channels = out_channels - in_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return zero_pad_channels(x, self.extra_channels)

    def extra_repr(self) -> str:
        return f"extra_channels={self.extra_channels}, stride={self.stride}"


class AvgDownConv2d(Conv2d):
    """Projection of ResNet-D (Bag of Tricks, Sec. 4.1): ``stride`` x ``stride`` average pool,
    then a stride-1 1x1 conv and norm. Parameter names stay those of a plain projection."""

    def __init__(self, in_channels: int, out_channels: int, *, stride: int, norm: str):
        super().__init__(
            in_channels, out_channels, kernel_size=1, bias=False, norm=get_norm(norm, out_channels)
        )
        self.pool_stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ceil_mode and count_include_pad=False, as timm's ResNet-D, so odd sizes match the
        # strided branch.
        x = F.avg_pool2d(
            x, self.pool_stride, self.pool_stride, ceil_mode=True, count_include_pad=False
        )
        if torch.jit.is_scripting():
            # TorchScript has no super(): detectron2's Conv2d.forward, which here has no bias and
            # no activation.
            x = F.conv2d(
                x, self.weight, None, self.stride, self.padding, self.dilation, self.groups
            )
            return x if self.norm is None else self.norm(x)
        return super().forward(x)


def make_shortcut(
    in_channels: int, out_channels: int, stride: int, *, kind: str, norm: str, avg_down: bool
) -> nn.Module | None:
    """The shortcut of one residual block; None means plain identity.

    Args:
        in_channels: the block's input channels.
        out_channels: the block's output channels.
        stride: the block's stride.
        kind: the ResNet paper's option (Sec. 3.3): "A" identity with zero-padded extra channels,
            "B" projection only where the shape changes, "C" projection everywhere.
        norm: norm after a projection conv ("" none).
        avg_down: a strided projection average-pools, then convolves at stride 1 (ResNet-D).
    """
    same_shape = in_channels == out_channels and stride == 1
    if kind == "A":
        return None if same_shape else ZeroPadShortcut(in_channels, out_channels, stride)
    if kind == "B" and same_shape:
        return None
    if avg_down and stride > 1:
        conv = AvgDownConv2d(in_channels, out_channels, stride=stride, norm=norm)
    else:
        conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            stride=stride,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
    weight_init.c2_msra_fill(conv)
    return conv


# --------------------------------------------------------------------------------------------
# Replacements of a 3x3 conv
# --------------------------------------------------------------------------------------------
class DeformConv2d(nn.Module):
    """Deformable conv (DCN v1; modulated DCN v2 when given a mask), then an optional norm.

    It runs ``torchvision.ops.deform_conv2d``, which has forward and backward passes on the CPU
    and the GPU (detectron2's own DeformConv needs its compiled ops). The offsets (and mask) are
    computed by the caller; parameter names equal detectron2's ``DeformConv`` (``weight``,
    ``norm.*``), so detectron2 DCN checkpoints load.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        *,
        stride: int = 1,
        padding: int = 1,
        dilation: int = 1,
        groups: int = 1,
        norm: nn.Module | None = None,
    ):
        super().__init__()
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.weight = nn.Parameter(
            torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size)
        )
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.norm = norm

    def forward(
        self, x: torch.Tensor, offset: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = deform_conv2d(
            x,
            offset,
            self.weight,
            # Pairs: torch.jit.script checks the types of torchvision's signature.
            stride=(self.stride, self.stride),
            padding=(self.padding, self.padding),
            dilation=(self.dilation, self.dilation),
            mask=mask,
        )
        return x if self.norm is None else self.norm(x)

    def extra_repr(self) -> str:
        out, per_group, k, _ = self.weight.shape
        return f"out_channels={out}, kernel_size={k}, stride={self.stride}, padding={self.padding}"


class Res2NetConv(nn.Module):
    """Res2Net's hierarchical 3x3 (Gao et al., 2019): split the input into ``scale`` groups;
    group i > 0 adds the previous group's output, then 3x3 conv, norm, ReLU; the last group
    passes unchanged, or average-pooled in a stage's first block; concatenate.

    In a stage's first block every 3x3 conv reads its own split (no hierarchy) and the last
    split is average-pooled with the block's stride, as in the reference implementation.
    """

    def __init__(
        self,
        channels: int,
        *,
        scale: int,
        stride: int,
        dilation: int,
        groups: int,
        norm: str,
        first_in_stage: bool,
    ):
        super().__init__()
        if channels % scale:
            raise ValueError(f"Res2Net: {channels} channels do not split into {scale} groups")
        self.width = channels // scale
        self.first_in_stage = first_in_stage
        self.convs = nn.ModuleList(
            Conv2d(
                self.width,
                self.width,
                kernel_size=3,
                stride=stride,
                padding=dilation,
                dilation=dilation,
                groups=groups,
                bias=False,
                norm=get_norm(norm, self.width),
            )
            for _ in range(scale - 1)
        )
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)
        # count_include_pad=True (the default), as the reference, so its weights fit.
        self.pool = nn.AvgPool2d(3, stride=stride, padding=1) if first_in_stage else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        splits = torch.split(x, self.width, dim=1)
        outputs = []
        y = splits[0]
        for i, conv in enumerate(self.convs):
            y = splits[i] if i == 0 or self.first_in_stage else y + splits[i]
            y = F.relu_(conv(y))
            outputs.append(y)
        outputs.append(splits[-1] if self.pool is None else self.pool(splits[-1]))
        return torch.cat(outputs, dim=1)

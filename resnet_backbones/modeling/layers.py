"""Stems, shortcuts and residual blocks of the ResNet family.

Every class here is a detectron2 ``CNNBlockBase`` (it knows its in/out channels and stride and
can ``freeze()`` itself) and takes typed arguments only; nothing reads a config. Parameter names
equal detectron2's (``conv1.weight``, ``conv1.norm.*``, ``shortcut.*``), so detectron2 and MSRA
checkpoints load unchanged into the default network.
"""

from __future__ import annotations

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from torch import nn

from .spec import BlockOptions, StageSpec

__all__ = [
    "BLOCK_CLASSES",
    "STEM_CLASSES",
    "AvgDownConv2d",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "DeepStem",
    "ZeroPadShortcut",
    "make_shortcut",
    "make_stage",
]


# --------------------------------------------------------------------------------------------
# Stems
# --------------------------------------------------------------------------------------------
class BasicStem(CNNBlockBase):
    """ResNet stem: 7x7/2 conv, norm, ReLU, 3x3/2 max-pool (detectron2's ``BasicStem``)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, *, norm: str = "BN"):
        super().__init__(in_channels, out_channels, 4)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=get_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class DeepStem(CNNBlockBase):
    """Deep stem of ResNet-C (Bag of Tricks, Sec. 4.1): three 3x3 convs (the first /2), each
    with norm and ReLU, then a 3x3/2 max-pool. Widths: out/2, out/2, out (timm's ``deep``)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 64, *, norm: str = "BN"):
        super().__init__(in_channels, out_channels, 4)
        mid_channels = out_channels // 2
        widths = [(in_channels, mid_channels, 2), (mid_channels, mid_channels, 1)]
        widths.append((mid_channels, out_channels, 1))
        for i, (c_in, c_out, stride) in enumerate(widths, start=1):
            conv = Conv2d(
                c_in,
                c_out,
                kernel_size=3,
                stride=stride,
                padding=1,
                bias=False,
                norm=get_norm(norm, c_out),
            )
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        x = F.relu_(self.conv3(x))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


STEM_CLASSES: dict[str, type[CNNBlockBase]] = {"basic": BasicStem, "deep": DeepStem}


# --------------------------------------------------------------------------------------------
# Shortcuts
# --------------------------------------------------------------------------------------------
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
        if self.extra_channels:
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra_channels))
        return x

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
        return super().forward(x)


def make_shortcut(
    in_channels: int, out_channels: int, stride: int, options: BlockOptions
) -> nn.Module | None:
    """The shortcut of one block under ``options.shortcut``; None means plain identity."""
    same_shape = in_channels == out_channels and stride == 1
    if options.shortcut == "A":
        return None if same_shape else ZeroPadShortcut(in_channels, out_channels, stride)
    if options.shortcut == "B" and same_shape:
        return None
    if options.avg_down and stride > 1:
        conv = AvgDownConv2d(in_channels, out_channels, stride=stride, norm=options.norm)
    else:
        conv = Conv2d(
            in_channels,
            out_channels,
            kernel_size=1,
            stride=stride,
            bias=False,
            norm=get_norm(options.norm, out_channels),
        )
    weight_init.c2_msra_fill(conv)
    return conv


def _zero_init_last_norm(conv: Conv2d) -> None:
    norm = getattr(conv, "norm", None)
    if norm is not None and getattr(norm, "weight", None) is not None:
        with torch.no_grad():
            norm.weight.zero_()


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class BasicBlock(CNNBlockBase):
    """Basic residual block (ResNet-18/34): 3x3, norm, ReLU, 3x3, norm; add; ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        dilation: int = 1,
        options: BlockOptions = BlockOptions(),
    ):
        del bottleneck_channels  # a basic block has no bottleneck
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = make_shortcut(in_channels, out_channels, stride, options)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            stride=stride,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=get_norm(options.norm, out_channels),
        )
        self.conv2 = Conv2d(
            out_channels,
            out_channels,
            kernel_size=3,
            padding=dilation,
            dilation=dilation,
            bias=False,
            norm=get_norm(options.norm, out_channels),
        )
        for conv in (self.conv1, self.conv2):
            weight_init.c2_msra_fill(conv)
        if options.zero_init_residual:
            _zero_init_last_norm(self.conv2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = self.conv2(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


class BottleneckBlock(CNNBlockBase):
    """Bottleneck residual block (ResNet-50+, ResNeXt, WRN): 1x1, norm, ReLU, 3x3 (grouped,
    dilated), norm, ReLU, 1x1, norm; add; ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        dilation: int = 1,
        options: BlockOptions = BlockOptions(),
    ):
        super().__init__(in_channels, out_channels, stride)
        self.shortcut = make_shortcut(in_channels, out_channels, stride, options)
        # The original MSRA ResNets have the stride in the first 1x1 conv; fb.torch, Caffe2's
        # ResNeXt and torchvision have it in the 3x3 conv (detectron2's comment, resnet.py).
        stride_1x1, stride_3x3 = (stride, 1) if options.stride_in_1x1 else (1, stride)
        self.conv1 = Conv2d(
            in_channels,
            bottleneck_channels,
            kernel_size=1,
            stride=stride_1x1,
            bias=False,
            norm=get_norm(options.norm, bottleneck_channels),
        )
        self.conv2 = Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=dilation,
            dilation=dilation,
            groups=options.num_groups,
            bias=False,
            norm=get_norm(options.norm, bottleneck_channels),
        )
        self.conv3 = Conv2d(
            bottleneck_channels,
            out_channels,
            kernel_size=1,
            bias=False,
            norm=get_norm(options.norm, out_channels),
        )
        for conv in (self.conv1, self.conv2, self.conv3):
            weight_init.c2_msra_fill(conv)
        if options.zero_init_residual:
            _zero_init_last_norm(self.conv3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu_(self.conv1(x))
        out = F.relu_(self.conv2(out))
        out = self.conv3(out)
        out += x if self.shortcut is None else self.shortcut(x)
        return F.relu_(out)


BLOCK_CLASSES: dict[str, type[CNNBlockBase]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
}


def make_stage(block: str, stage: StageSpec, options: BlockOptions) -> nn.Sequential:
    """The one stage builder: ``stage.num_blocks`` blocks of type ``block``."""
    block_class = BLOCK_CLASSES[block]
    blocks = []
    in_channels = stage.in_channels
    for stride in stage.strides:
        blocks.append(
            block_class(
                in_channels,
                stage.out_channels,
                bottleneck_channels=stage.bottleneck_channels,
                stride=stride,
                dilation=stage.dilation,
                options=options,
            )
        )
        in_channels = stage.out_channels
    return nn.Sequential(*blocks)

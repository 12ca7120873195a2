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
from torchvision.ops import deform_conv2d

from .spec import BlockOptions, StageSpec

__all__ = [
    "BLOCK_CLASSES",
    "STEM_CLASSES",
    "AvgDownConv2d",
    "BasicBlock",
    "BasicStem",
    "BottleneckBlock",
    "CifarStem",
    "DeepStem",
    "DeformConv2d",
    "Res2NetConv",
    "SqueezeExcite",
    "ZeroPadShortcut",
    "make_shortcut",
    "make_stage",
]


# --------------------------------------------------------------------------------------------
# Stems
# --------------------------------------------------------------------------------------------
class _Stem(CNNBlockBase):
    """Shared tail of the stems. A v1 stem ends with norm and ReLU after its last conv (then
    max-pools); a pre-activation stem's last conv has no norm, and the stem ends with norm and
    ReLU after the pool: that is the first block's pre-activation (timm's ResNetV2), so the
    ``stem`` feature is normalised and activated in both cases."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, *, norm: str, preact: bool
    ):
        super().__init__(in_channels, out_channels, stride)
        self.preact = preact
        self.norm = get_norm(norm, out_channels) if preact else None

    def _last_conv_norm(self, norm: str, channels: int) -> nn.Module | None:
        return None if self.preact else get_norm(norm, channels)

    def _tail(self, x: torch.Tensor, pool: bool) -> torch.Tensor:
        if not self.preact:
            x = F.relu_(x)
        if pool:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if self.preact:
            x = F.relu_(x if self.norm is None else self.norm(x))
        return x


class BasicStem(_Stem):
    """ResNet stem: 7x7/2 conv, norm, ReLU, 3x3/2 max-pool (detectron2's ``BasicStem``).
    Pre-activation: 7x7/2 conv, 3x3/2 max-pool, norm, ReLU."""

    def __init__(
        self, in_channels: int = 3, out_channels: int = 64, *, norm: str = "BN", preact=False
    ):
        super().__init__(in_channels, out_channels, 4, norm=norm, preact=preact)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=7,
            stride=2,
            padding=3,
            bias=False,
            norm=self._last_conv_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tail(self.conv1(x), pool=True)


class DeepStem(_Stem):
    """Deep stem of ResNet-C (Bag of Tricks, Sec. 4.1): three 3x3 convs (the first /2), each
    with norm and ReLU, then a 3x3/2 max-pool. Widths: out/2, out/2, out (timm's ``deep``).
    Pre-activation: the third conv has no norm; max-pool, norm, ReLU follow."""

    def __init__(
        self, in_channels: int = 3, out_channels: int = 64, *, norm: str = "BN", preact=False
    ):
        super().__init__(in_channels, out_channels, 4, norm=norm, preact=preact)
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
                norm=get_norm(norm, c_out) if i < 3 else self._last_conv_norm(norm, c_out),
            )
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i}", conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu_(self.conv1(x))
        x = F.relu_(self.conv2(x))
        return self._tail(self.conv3(x), pool=True)


class CifarStem(_Stem):
    """CIFAR stem (ResNet paper, Sec. 4.2): 3x3 stride-1 conv, norm, ReLU; no max-pool."""

    def __init__(
        self, in_channels: int = 3, out_channels: int = 16, *, norm: str = "BN", preact=False
    ):
        super().__init__(in_channels, out_channels, 1, norm=norm, preact=preact)
        self.conv1 = Conv2d(
            in_channels,
            out_channels,
            kernel_size=3,
            padding=1,
            bias=False,
            norm=self._last_conv_norm(norm, out_channels),
        )
        weight_init.c2_msra_fill(self.conv1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._tail(self.conv1(x), pool=False)


STEM_CLASSES: dict[str, type[_Stem]] = {"basic": BasicStem, "deep": DeepStem, "cifar": CifarStem}


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
    # A pre-activation block's projection reads the pre-activated input and adds a bare conv
    # (no norm): the identity-mapping paper's code and timm's ResNetV2.
    norm = "" if options.preact else options.norm
    if options.avg_down and stride > 1:
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


def _make_divisible(value: float, divisor: int = 8) -> int:
    # Rounds to the nearest multiple of ``divisor``, at least ``divisor`` (timm's make_divisible
    # with round_limit 0, which its SE module uses).
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al., 2018): global average pool, 1x1 conv, ReLU, 1x1 conv,
    sigmoid; scales the input's channels. Reduced width: channels / ratio, rounded to 8."""

    def __init__(self, channels: int, ratio: int):
        super().__init__()
        reduced = _make_divisible(channels / ratio)
        self.fc1 = nn.Conv2d(channels, reduced, kernel_size=1)
        self.fc2 = nn.Conv2d(reduced, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.fc2(F.relu_(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * scale.sigmoid()


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
            stride=self.stride,
            padding=self.padding,
            dilation=self.dilation,
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


# --------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------
class _ResidualBlock(CNNBlockBase):
    """What every residual block shares: its residual branch (convs ``conv1``..``convK``), an
    optional SE on the branch, the shortcut, and where norms, ReLUs and the addition go
    (``options.order``, the identity-mapping paper's Fig. 4):

    * "post" (a): conv, norm, ReLU, ..., conv, norm; add; ReLU (v1).
    * "bn_after_add" (b): conv, norm, ReLU, ..., conv; add; norm, ReLU.
    * "relu_before_add" (c): conv, norm, ReLU, ..., conv, norm, ReLU; add.
    * "relu_preact" (d): ReLU, conv, norm, ..., ReLU, conv, norm; add.
    * "preact" (e): norm, ReLU, conv, ..., norm, ReLU, conv; add (v2). A stage's first block
      has no first norm: its input is already pre-activated by the stem or by the previous
      stage's closing norm and ReLU (see :func:`make_stage`), and feeds both of its paths.

    Identity shortcuts carry the block's input; projections (and option A) read the activated
    input in orders (d) and (e), as timm's and the paper's pre-activation blocks do.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        stride: int,
        options: BlockOptions,
        *,
        first_in_stage: bool,
    ):
        super().__init__(in_channels, out_channels, stride)
        self.order = options.order
        self.has_shortcut = options.shortcut != "none"
        self.shortcut = (
            make_shortcut(in_channels, out_channels, stride, options) if self.has_shortcut else None
        )
        self.dropout = options.dropout
        # Pre-activation blocks normalise and activate their input, except a stage's first.
        self.preactivates_input = options.preact and not first_in_stage
        self.norm1 = get_norm(options.norm, in_channels) if self.preactivates_input else None
        self.num_convs = 0
        # Set by a block whose conv2 ends with its own ReLU (Res2Net).
        self.conv2_activates = False

    def _add_conv(self, conv_class, in_channels: int, out_channels: int, options, **kwargs):
        """Adds the next conv of the branch with the norm its position and the order call for."""
        self.num_convs += 1
        i = self.num_convs
        last = i == self.last_conv
        if options.preact:
            if i > 1:
                self.add_module(f"norm{i}", get_norm(options.norm, in_channels))
            norm = None
        elif options.order == "bn_after_add" and last:
            norm = None
        else:
            norm = get_norm(options.norm, out_channels)
        conv = conv_class(in_channels, out_channels, norm=norm, **kwargs)
        self.add_module(f"conv{i}", conv)
        if isinstance(conv, Conv2d):
            weight_init.c2_msra_fill(conv)
        return conv

    def _finish(self, out_channels: int, options: BlockOptions) -> None:
        self.se = SqueezeExcite(out_channels, options.se_ratio) if options.se_ratio else None
        self.add_norm = (
            get_norm(options.norm, out_channels) if options.order == "bn_after_add" else None
        )
        if options.zero_init_residual:
            last = getattr(self, f"conv{self.last_conv}")
            norm = getattr(last, "norm", None)
            target = norm if getattr(norm, "weight", None) is not None else last
            with torch.no_grad():
                target.weight.zero_()

    def _conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, f"conv{i}")(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "relu_preact" or self.preactivates_input:
            x_act = F.relu(x if self.norm1 is None else self.norm1(x))
        else:
            x_act = x
        out = x_act
        for i in range(1, self.num_convs + 1):
            if i > 1:
                pre_norm = getattr(self, f"norm{i}", None)
                if pre_norm is not None:
                    out = pre_norm(out)
                if not (i == 3 and self.conv2_activates):
                    out = F.relu_(out)
                if self.dropout:
                    out = F.dropout(out, self.dropout, self.training)
            out = self._conv(i, out)
        if self.order == "relu_before_add":
            out = F.relu_(out)
        if self.se is not None:
            out = self.se(out)
        if self.has_shortcut:
            if self.shortcut is None:
                out += x
            else:
                preactivated = self.order in ("relu_preact", "preact")
                out += self.shortcut(x_act if preactivated else x)
        if self.order == "post":
            out = F.relu_(out)
        elif self.order == "bn_after_add":
            out = F.relu_(out if self.add_norm is None else self.add_norm(out))
        return out


class BasicBlock(_ResidualBlock):
    """Basic residual block (ResNet-18/34, CIFAR ResNets, WRN): two 3x3 convs, arranged by
    ``options.order`` (v1: 3x3, norm, ReLU, 3x3, norm; add; ReLU)."""

    last_conv = 2

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        dilation: int = 1,
        deform: bool = False,
        first_in_stage: bool = False,
        options: BlockOptions = BlockOptions(),
    ):
        del bottleneck_channels, deform  # a basic block has no bottleneck (spec.py checks)
        super().__init__(in_channels, out_channels, stride, options, first_in_stage=first_in_stage)
        for c_in, s in [(in_channels, stride), (out_channels, 1)]:
            self._add_conv(
                Conv2d,
                c_in,
                out_channels,
                options,
                kernel_size=3,
                stride=s,
                padding=dilation,
                dilation=dilation,
                bias=False,
            )
        self._finish(out_channels, options)


class BottleneckBlock(_ResidualBlock):
    """Bottleneck residual block (ResNet-50+, ResNeXt, WRN, Res2Net, DCN): 1x1, 3x3 (grouped,
    dilated, deformable or Res2Net-split), 1x1, arranged by ``options.order`` (v1: 1x1, norm,
    ReLU, 3x3, norm, ReLU, 1x1, norm; add; ReLU)."""

    last_conv = 3

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        dilation: int = 1,
        deform: bool = False,
        first_in_stage: bool = False,
        options: BlockOptions = BlockOptions(),
    ):
        super().__init__(in_channels, out_channels, stride, options, first_in_stage=first_in_stage)
        # The original MSRA ResNets have the stride in the first 1x1 conv; fb.torch, Caffe2's
        # ResNeXt and torchvision have it in the 3x3 conv (detectron2's comment, resnet.py).
        stride_1x1, stride_3x3 = (stride, 1) if options.stride_in_1x1 else (1, stride)
        self._add_conv(
            Conv2d, in_channels, bottleneck_channels, options, kernel_size=1, stride=stride_1x1,
            bias=False,
        )  # fmt: skip
        conv3x3 = dict(stride=stride_3x3, padding=dilation, dilation=dilation)
        if options.res2net_scale > 1:
            self.num_convs += 1
            self.conv2 = Res2NetConv(
                bottleneck_channels,
                scale=options.res2net_scale,
                stride=stride_3x3,
                dilation=dilation,
                groups=options.num_groups,
                norm=options.norm,
                first_in_stage=first_in_stage,
            )
            self.conv2_activates = True
        elif deform:
            self._add_conv(
                DeformConv2d,
                bottleneck_channels,
                bottleneck_channels,
                options,
                groups=options.num_groups,
                **conv3x3,
            )
            # detectron2's DeformBottleneckBlock: offsets (x, y per tap; plus a mask for v2)
            # from a 3x3 conv on the same input, zero-initialised so training starts at a
            # regular conv.
            per_group = 27 if options.deform_modulated else 18
            self.conv2_offset = Conv2d(
                bottleneck_channels, per_group * options.deform_num_groups, kernel_size=3,
                **conv3x3,
            )  # fmt: skip
            nn.init.constant_(self.conv2_offset.weight, 0)
            nn.init.constant_(self.conv2_offset.bias, 0)
        else:
            self._add_conv(
                Conv2d,
                bottleneck_channels,
                bottleneck_channels,
                options,
                kernel_size=3,
                groups=options.num_groups,
                bias=False,
                **conv3x3,
            )
        self.deform_modulated = options.deform_modulated
        self._add_conv(
            Conv2d, bottleneck_channels, out_channels, options, kernel_size=1, bias=False
        )
        self._finish(out_channels, options)

    def _conv(self, i: int, x: torch.Tensor) -> torch.Tensor:
        if i != 2 or not hasattr(self, "conv2_offset"):
            return super()._conv(i, x)
        offset = self.conv2_offset(x)
        mask = None
        if self.deform_modulated:
            offset_x, offset_y, mask = torch.chunk(offset, 3, dim=1)
            offset = torch.cat((offset_x, offset_y), dim=1)
            mask = mask.sigmoid()
        return self.conv2(x, offset, mask)


BLOCK_CLASSES: dict[str, type[_ResidualBlock]] = {
    "basic": BasicBlock,
    "bottleneck": BottleneckBlock,
}


def make_stage(block: str, stage: StageSpec, options: BlockOptions) -> nn.Sequential:
    """The one stage builder: ``stage.num_blocks`` blocks of type ``block``.

    In a pre-activation network ("preact") the stage ends with norm and ReLU (``norm``,
    ``relu``): after res5 that is the paper's final BN+ReLU; after res2..res4 it is the next
    stage's first pre-activation, moved here so that every ``res*`` feature a detector reads is
    normalised and activated. The computation equals timm's ResNetV2, whose next block applies
    the same norm to the same tensor.
    """
    block_class = BLOCK_CLASSES[block]
    blocks = []
    in_channels = stage.in_channels
    for i, stride in enumerate(stage.strides):
        blocks.append(
            block_class(
                in_channels,
                stage.out_channels,
                bottleneck_channels=stage.bottleneck_channels,
                stride=stride,
                dilation=stage.dilation,
                deform=stage.deform,
                first_in_stage=i == 0,
                options=options,
            )
        )
        in_channels = stage.out_channels
    layers = nn.Sequential(*blocks)
    if options.preact:
        norm = get_norm(options.norm, stage.out_channels)
        if norm is not None:
            layers.add_module("norm", norm)
        layers.add_module("relu", nn.ReLU(inplace=True))
    return layers

"""ReXNet (Han et al., 2021, "Rethinking Channel Dimensions for Efficient Model Design") as a
detectron2 backbone, numerically equal to timm's ``rexnet_*`` models.

ReXNet is a chain of MobileNetV2-style linear bottlenecks whose output width grows linearly with
the block index, with SiLU after the expansion convs, ReLU6 after the depthwise convs and
squeeze-and-excitation (with a norm) from the third group of blocks on. Its features are named
by stride as in our ResNets: "stem" (2), "res2" (4), "res3" (8), "res4" (16), "res5" (32).

Registered in detectron2's ``BACKBONE_REGISTRY``:

* ``build_rexnet_backbone``: the features of ``MODEL.REXNET.OUT_FEATURES``;
* ``build_rexnet_fpn_backbone``: FPN P2..P6, as detectron2's ``build_resnet_fpn_backbone``.

The builders read nothing themselves: :mod:`resnet_backbones.config` turns ``cfg`` into the
typed arguments of :class:`ReXNet`. Its layers (:class:`ConvNormSiLU`, :class:`LinearBottleneck`)
live here, beside the only network that uses them and the widths their weights depend on; what
it shares with the ResNets (SE, rounding, zero-padding, the staged backbone) comes from
:mod:`.ops` and :mod:`.base`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from torch import nn

# The module, not its names: resnet_backbones.config imports this package (see resnet.py).
from .. import config
from ..utils import (
    PYTHON_NAMES,
    ArgumentNames,
    check_choice,
    check_positive_int,
    check_positive_number,
)
from .base import FEATURE_NAMES, StagedBackbone, fpn
from .ops import SqueezeExcite, make_divisible, zero_pad_channels

__all__ = [
    "REXNET_GROUPS",
    "REXNET_NORMS",
    "BlockGroup",
    "ConvNormSiLU",
    "LinearBottleneck",
    "ReXNet",
    "ReXNetBlockSpec",
    "build_rexnet_backbone",
    "build_rexnet_fpn_backbone",
    "rexnet_blocks",
    "rexnet_last_channels",
    "rexnet_stem_channels",
]


# detectron2.layers.get_norm names that work here. "GN" is left out: its 32 groups do not divide
# ReXNet's widths (16, 27, 38 ...); "" (no norm) would leave the bias-free convs without a bias.
REXNET_NORMS: tuple[str, ...] = ("FrozenBN", "BN", "SyncBN", "nnSyncBN", "naiveSyncBN")

# Widths of ReXNet-1.0x (the paper's Sec. 4.1; timm's RexNet defaults), scaled by width_mult.
STEM_CHANNELS = 32  # the 3x3/2 stem conv
FIRST_CHANNELS = 16  # output of the first block; the following ones grow linearly ...
CHANNEL_GROWTH = 180  # ... by this much over all blocks: 16 -> 16 + 180 * (n - 1) / n
LAST_CHANNELS = 1280  # the final 1x1 conv
SE_RATIO = 1 / 12  # SE reduced width = depthwise width * SE_RATIO
# Every width is rounded by make_divisible with timm's default round_limit, 0.9 (never more than
# 10% below the exact width); the widths of the pretrained weights depend on it.


@dataclass(frozen=True)
class BlockGroup:
    """A group of linear bottlenecks: ``num_blocks`` blocks (scaled by depth_mult), the first of
    stride ``stride``, each expanding its input ``expansion`` times; ``se`` turns SE on."""

    feature: str
    num_blocks: int
    stride: int
    expansion: int
    se: bool


# The six groups of ReXNet (timm's ``_block_cfg``) and the feature each one ends up in. The first
# group runs at stride 2, after the stem conv, so it belongs to "stem" (timm's stride-2 feature is
# its output); groups four and five both run at stride 16 and form "res4".
REXNET_GROUPS: tuple[BlockGroup, ...] = (
    BlockGroup("stem", 1, stride=1, expansion=1, se=False),
    BlockGroup("res2", 2, stride=2, expansion=6, se=False),
    BlockGroup("res3", 2, stride=2, expansion=6, se=True),
    BlockGroup("res4", 3, stride=2, expansion=6, se=True),
    BlockGroup("res4", 3, stride=1, expansion=6, se=True),
    BlockGroup("res5", 5, stride=2, expansion=6, se=True),
)


@dataclass(frozen=True)
class ReXNetBlockSpec:
    """One linear bottleneck: widths, stride and the feature (stage) it belongs to.

    ``hidden_channels`` is the width of the depthwise conv (equal to ``in_channels`` when the
    block has no expansion conv); ``se_channels`` is the SE's reduced width, 0 without SE.
    """

    feature: str
    in_channels: int
    out_channels: int
    hidden_channels: int
    se_channels: int
    stride: int


def rexnet_stem_channels(width_mult: float = 1.0, channel_divisor: int = 1) -> int:
    """Width of the 3x3/2 stem conv; 32 for every width_mult <= 1, as in timm."""
    base = STEM_CHANNELS / width_mult if width_mult < 1.0 else STEM_CHANNELS
    return make_divisible(round(base * width_mult), channel_divisor)


def rexnet_last_channels(width_mult: float = 1.0, channel_divisor: int = 1) -> int:
    """Width of the final 1x1 conv: 1280 * width_mult."""
    return make_divisible(LAST_CHANNELS * width_mult, channel_divisor)


def rexnet_blocks(
    width_mult: float = 1.0, depth_mult: float = 1.0, channel_divisor: int = 1
) -> tuple[ReXNetBlockSpec, ...]:
    """The linear bottlenecks of ReXNet, in order.

    Args:
        width_mult: channel multiplier (1.0: rexnet_100, 1.5: rexnet_150 ...).
        depth_mult: block-count multiplier; every group gets ceil(num_blocks * depth_mult).
        channel_divisor: widths are rounded to multiples of it (8: timm's rexnetr_*).
    """
    num_blocks = [math.ceil(group.num_blocks * depth_mult) for group in REXNET_GROUPS]
    total = sum(num_blocks)
    # The paper's linear channel schedule, with timm's float arithmetic and rounding (the widths
    # of the pretrained weights depend on them): below 1x the first width stays 16.
    base = FIRST_CHANNELS / width_mult if width_mult < 1.0 else FIRST_CHANNELS
    in_channels = rexnet_stem_channels(width_mult, channel_divisor)
    blocks = []
    for group, count in zip(REXNET_GROUPS, num_blocks):
        for index in range(count):
            out_channels = make_divisible(round(base * width_mult), channel_divisor)
            base += CHANNEL_GROWTH / total
            hidden_channels = in_channels
            if group.expansion != 1:
                hidden_channels = make_divisible(
                    round(in_channels * group.expansion), channel_divisor
                )
            se_channels = 0
            if group.se:
                se_channels = make_divisible(int(hidden_channels * SE_RATIO), channel_divisor)
            blocks.append(
                ReXNetBlockSpec(
                    feature=group.feature,
                    in_channels=in_channels,
                    out_channels=out_channels,
                    hidden_channels=hidden_channels,
                    se_channels=se_channels,
                    stride=group.stride if index == 0 else 1,
                )
            )
            in_channels = out_channels
    return tuple(blocks)


# --------------------------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------------------------
def _init_conv(conv: nn.Conv2d) -> None:
    # EfficientNet / MnasNet init, as timm's efficientnet_init_weights: normal with std
    # sqrt(2 / fan_out), fan_out counted per group (so a depthwise 3x3 conv has fan_out 9).
    fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels // conv.groups
    nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(2.0 / fan_out))
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


def _conv_norm(
    in_channels: int,
    out_channels: int,
    *,
    kernel_size: int,
    norm: str,
    stride: int = 1,
    groups: int = 1,
    activation: nn.Module | None = None,
) -> Conv2d:
    """A bias-free conv with "same" padding, then norm (and ``activation``, a module:
    torch.jit.script cannot call a function held as an attribute)."""
    return Conv2d(
        in_channels,
        out_channels,
        kernel_size=kernel_size,
        stride=stride,
        padding=kernel_size // 2,
        groups=groups,
        bias=False,
        norm=get_norm(norm, out_channels),
        activation=activation,
    )


class ConvNormSiLU(CNNBlockBase):
    """Conv, norm, SiLU: ReXNet's 3x3/2 stem conv and its final 1x1 conv."""

    def __init__(
        self, in_channels: int, out_channels: int, *, kernel_size: int, stride: int, norm: str
    ):
        super().__init__(in_channels, out_channels, stride)
        self.conv = _conv_norm(
            in_channels,
            out_channels,
            kernel_size=kernel_size,
            stride=stride,
            norm=norm,
            activation=nn.SiLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class LinearBottleneck(CNNBlockBase):
    """ReXNet's block: [1x1 expand, norm, SiLU], 3x3 depthwise (strided), norm, [SE], ReLU6, 1x1
    project, norm (linear); at stride 1, add the input to its first in_channels channels."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        hidden_channels: int,
        se_channels: int = 0,
        stride: int = 1,
        norm: str = "BN",
    ):
        """
        Args:
            in_channels: input width.
            out_channels: output width.
            hidden_channels: width of the depthwise conv; an expansion conv is built only when it
                differs from in_channels.
            se_channels: reduced width of the SE; 0 means no SE.
            stride: stride of the depthwise conv.
            norm: a name understood by ``detectron2.layers.get_norm``.
        """
        super().__init__(in_channels, out_channels, stride)
        self.conv_expand = None
        if hidden_channels != in_channels:
            self.conv_expand = _conv_norm(
                in_channels, hidden_channels, kernel_size=1, norm=norm, activation=nn.SiLU()
            )
        self.conv_dw = _conv_norm(
            hidden_channels,
            hidden_channels,
            kernel_size=3,
            stride=stride,
            groups=hidden_channels,
            norm=norm,
        )
        self.se = SqueezeExcite(hidden_channels, se_channels, norm=norm) if se_channels else None
        self.conv_project = _conv_norm(hidden_channels, out_channels, kernel_size=1, norm=norm)
        # The widths only grow, so the shortcut is the input zero-padded to out_channels (the
        # ResNet paper's option A); where the stride is 2 there is none.
        self.has_shortcut = stride == 1 and in_channels <= out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x if self.conv_expand is None else self.conv_expand(x)
        out = self.conv_dw(out)
        if self.se is not None:
            out = self.se(out)
        out = self.conv_project(F.relu6(out))
        if self.has_shortcut:
            out = out + zero_pad_channels(x, self.out_channels - self.in_channels)
        return out


# --------------------------------------------------------------------------------------------
# Backbone
# --------------------------------------------------------------------------------------------
class ReXNet(StagedBackbone):
    """ReXNet with features "stem" and "res2".."res5" (strides 2 to 32).

    Every feature is a stage, an ``nn.Sequential`` of blocks: "stem" is the 3x3/2 conv and the
    first linear bottleneck (timm's stride-2 feature), "res5" ends with the final 1x1 conv to
    1280 * width_mult channels (timm's ``forward_features``). Only the stages up to the deepest
    of ``out_features`` are built.
    """

    def __init__(
        self,
        *,
        width_mult: float = 1.0,
        depth_mult: float = 1.0,
        channel_divisor: int = 1,
        out_features: Sequence[str] = ("res2", "res3", "res4", "res5"),
        freeze_at: int = 0,
        activation_checkpointing: Sequence[str] = (),
        channels_last: bool = False,
        norm: str = "BN",
        in_channels: int = 3,
        names: ArgumentNames = PYTHON_NAMES,
    ):
        """
        Args:
            width_mult: channel multiplier (1.0: timm's rexnet_100, 1.3, 1.5, 2.0, 3.0: rexnet_130
                ... rexnet_300).
            depth_mult: block-count multiplier (1.0 in every timm variant).
            channel_divisor: widths are rounded to multiples of it (1: rexnet_*, 8: rexnetr_*).
            out_features: names among "stem", "res2".."res5" to return from ``forward``.
            freeze_at: 0 trains everything; k >= 1 freezes the stem and the first k-1 stages
                (their parameters stop requiring grad and their BNs become FrozenBN).
            activation_checkpointing: stages whose blocks are recomputed in the backward pass
                instead of keeping their activations (see :class:`StagedBackbone`).
            channels_last: weights and input in channels_last memory format (see
                :class:`StagedBackbone`).
            norm: norm after every conv and inside the SE, one of :data:`REXNET_NORMS`.
            in_channels: channels of the input image.
            names: how errors name the arguments (their config keys when built from a config).

        Raises:
            ValueError: naming the argument, the bad value and the valid values.
        """
        check_positive_number(names["width_mult"], width_mult)
        check_positive_number(names["depth_mult"], depth_mult)
        check_positive_int(names["channel_divisor"], channel_divisor)
        check_choice(names["norm"], norm, REXNET_NORMS)
        super().__init__(
            FEATURE_NAMES,
            out_features=out_features,
            freeze_at=freeze_at,
            activation_checkpointing=activation_checkpointing,
            channels_last=channels_last,
            names=names,
        )

        blocks = rexnet_blocks(width_mult, depth_mult, channel_divisor)
        stem_channels = rexnet_stem_channels(width_mult, channel_divisor)
        for name in self.stages_to_build:
            layers: list[CNNBlockBase] = []
            if name == "stem":
                layers.append(
                    ConvNormSiLU(in_channels, stem_channels, kernel_size=3, stride=2, norm=norm)
                )
            for spec in blocks:
                if spec.feature == name:
                    layers.append(
                        LinearBottleneck(
                            spec.in_channels,
                            spec.out_channels,
                            hidden_channels=spec.hidden_channels,
                            se_channels=spec.se_channels,
                            stride=spec.stride,
                            norm=norm,
                        )
                    )
            if name == FEATURE_NAMES[-1]:
                last_channels = rexnet_last_channels(width_mult, channel_divisor)
                layers.append(
                    ConvNormSiLU(
                        layers[-1].out_channels, last_channels, kernel_size=1, stride=1, norm=norm
                    )
                )
            self.add_stage(
                name,
                nn.Sequential(*layers),
                channels=layers[-1].out_channels,
                stride=math.prod(layer.stride for layer in layers),
            )

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                _init_conv(module)
        self.freeze(freeze_at)


@BACKBONE_REGISTRY.register()
def build_rexnet_backbone(cfg, input_shape: ShapeSpec) -> ReXNet:
    """ReXNet from ``cfg.MODEL.REXNET`` (WIDTH_MULT, OUT_FEATURES, NORM) and
    ``cfg.MODEL.BACKBONE.FREEZE_AT``."""
    return ReXNet(**config.rexnet_arguments(cfg), in_channels=input_shape.channels)


@BACKBONE_REGISTRY.register()
def build_rexnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN P2..P6 on ReXNet (P6 by max-pooling P5), as detectron2's
    ``build_resnet_fpn_backbone``; reads ``cfg.MODEL.FPN``."""
    return fpn(cfg, build_rexnet_backbone(cfg, input_shape))

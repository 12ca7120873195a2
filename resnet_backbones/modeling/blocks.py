"""The residual blocks of the ResNet family and the one stage builder.

Every block is a detectron2 ``CNNBlockBase`` (it knows its in/out channels and stride and can
``freeze()`` itself) and takes typed arguments only; nothing reads a config. Parameter names equal
detectron2's (``conv1.weight``, ``conv1.norm.*``, ``shortcut.*``), so detectron2 and MSRA
checkpoints load unchanged into the default network.
"""

from __future__ import annotations

from typing import Optional

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm
from torch import nn

from .ops import DeformConv2d, Res2NetConv, SqueezeExcite, make_divisible, make_shortcut
from .spec import BlockOptions, StageSpec

__all__ = ["BLOCK_CLASSES", "BasicBlock", "BottleneckBlock", "make_stage"]


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

    Every block type takes the same arguments (those :func:`make_stage` passes); a subclass
    says only what its branch is (:meth:`_add_branch`).
    """

    # Index of the branch's last conv (its norm starts at zero with zero_init_residual).
    last_conv: int

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
        """
        Args:
            in_channels: input channels.
            out_channels: output channels.
            bottleneck_channels: width of a bottleneck's 3x3 conv (unused by basic blocks).
            stride: the block's stride (on its first conv, or per ``options.stride_in_1x1``).
            dilation: dilation of its 3x3 convs (res5 of a DC5 network: 2).
            deform: a bottleneck's 3x3 conv is deformable.
            first_in_stage: the block opens its stage (see the "preact" order and Res2Net).
            options: the options of the whole network.
        """
        super().__init__(in_channels, out_channels, stride)
        self.order = options.order
        self.has_shortcut = options.shortcut != "none"
        self.shortcut = None
        if self.has_shortcut:
            # A pre-activation block's projection reads the pre-activated input and adds a bare
            # conv (no norm): the identity-mapping paper's code and timm's ResNetV2.
            self.shortcut = make_shortcut(
                in_channels,
                out_channels,
                stride,
                kind=options.shortcut,
                norm="" if options.preact else options.norm,
                avg_down=options.avg_down,
            )
        self.dropout = options.dropout
        # Pre-activation blocks normalise and activate their input, except a stage's first.
        self.preactivates_input = options.preact and not first_in_stage
        self.norm1 = get_norm(options.norm, in_channels) if self.preactivates_input else None
        self.num_convs = 0
        # Set by a block whose conv2 ends with its own ReLU (Res2Net).
        self.conv2_activates = False
        self._add_branch(bottleneck_channels, dilation, deform, first_in_stage, options)
        self._finish(out_channels, options)

    def _add_branch(
        self, bottleneck_channels: int, dilation: int, deform: bool, first_in_stage: bool, options
    ) -> None:
        """Adds the convs of the residual branch, in order (:meth:`_add_conv`)."""
        raise NotImplementedError

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
        self.se = None
        if options.se_ratio:
            # Reduced width: out_channels / ratio, to the nearest multiple of 8 (timm's SE).
            reduced = make_divisible(out_channels / options.se_ratio, 8, round_limit=0.0)
            self.se = SqueezeExcite(out_channels, reduced)
        self.add_norm = (
            get_norm(options.norm, out_channels) if options.order == "bn_after_add" else None
        )
        if options.zero_init_residual:
            last = getattr(self, f"conv{self.last_conv}")
            norm = getattr(last, "norm", None)
            target = norm if getattr(norm, "weight", None) is not None else last
            with torch.no_grad():
                target.weight.zero_()
        # The branch, built once: per conv, its name, the name of the norm before it (a
        # pre-activation block's norm2, norm3 ...; None where there is none) and whether a ReLU
        # precedes it. forward reads the modules from _modules by these names: no f-string, no
        # nn.Module.__getattr__ and no AttributeError caught per call, and a norm folded away
        # (resnet_backbones.inference sets it to None) is skipped. Parameter names are unchanged.
        self._branch: tuple[tuple[str, str | None, bool], ...] = tuple(
            (
                f"conv{i}",
                f"norm{i}" if f"norm{i}" in self._modules and i > 1 else None,
                i > 1 and not (i == 3 and self.conv2_activates),
            )
            for i in range(1, self.num_convs + 1)
        )

    def _conv(self, i: int, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Runs ``conv``, the branch's conv number ``i``, on ``x``."""
        return conv(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.order == "relu_preact" or self.preactivates_input:
            x_act = F.relu(x if self.norm1 is None else self.norm1(x))
        else:
            x_act = x
        if torch.jit.is_scripting():
            out = self._branch_scripted(x_act)
        else:
            out = x_act
            modules = self._modules
            for i, (conv_name, norm_name, relu) in enumerate(self._branch, start=1):
                if i > 1:
                    if norm_name is not None:
                        pre_norm = modules[norm_name]
                        if pre_norm is not None:
                            out = pre_norm(out)
                    if relu:
                        out = F.relu_(out)
                    if self.dropout:
                        out = F.dropout(out, self.dropout, self.training)
                out = self._conv(i, modules[conv_name], out)
        if self.order == "relu_before_add":
            out = F.relu_(out)
        if self.se is not None:
            out = self.se(out)
        if self.has_shortcut:
            if self.shortcut is None:
                shortcut = x
            else:
                preactivated = self.order in ("relu_preact", "preact")
                shortcut = self.shortcut(x_act if preactivated else x)
            if self.order == "relu_before_add" and self.se is None:
                # out is the output of a ReLU, whose backward reads it: add out of place.
                out = out + shortcut
            else:
                out += shortcut
        if self.order == "post":
            out = F.relu_(out)
        elif self.order == "bn_after_add":
            out = F.relu_(out if self.add_norm is None else self.add_norm(out))
        return out

    def _branch_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """The residual branch of :meth:`forward` for ``torch.jit.script``, which cannot look
        modules up by name (``_branch``): its two or three convs written out. ``hasattr`` and
        ``is None`` on a submodule are decided while scripting, so each block compiles only its
        own path (a pre-activation norm, folded or not; a deformable conv2; a conv3)."""
        out = self.conv1(x)
        if hasattr(self, "norm2"):
            if self.norm2 is not None:
                out = self.norm2(out)
        out = F.relu_(out)
        if self.dropout > 0:
            out = F.dropout(out, self.dropout, self.training)
        if hasattr(self, "conv2_offset"):
            offset, mask = self._deform_offsets(out)
            out = self.conv2(out, offset, mask)
        else:
            out = self.conv2(out)
        if hasattr(self, "conv3"):
            if hasattr(self, "norm3"):
                if self.norm3 is not None:
                    out = self.norm3(out)
            if not self.conv2_activates:
                out = F.relu_(out)
            if self.dropout > 0:
                out = F.dropout(out, self.dropout, self.training)
            out = self.conv3(out)
        return out


class BasicBlock(_ResidualBlock):
    """Basic residual block (ResNet-18/34, CIFAR ResNets, WRN): two 3x3 convs, arranged by
    ``options.order`` (v1: 3x3, norm, ReLU, 3x3, norm; add; ReLU)."""

    last_conv = 2

    def _add_branch(self, bottleneck_channels, dilation, deform, first_in_stage, options):
        del bottleneck_channels, deform  # a basic block has no bottleneck (spec.py checks)
        for c_in, s in [(self.in_channels, self.stride), (self.out_channels, 1)]:
            self._add_conv(
                Conv2d,
                c_in,
                self.out_channels,
                options,
                kernel_size=3,
                stride=s,
                padding=dilation,
                dilation=dilation,
                bias=False,
            )


class BottleneckBlock(_ResidualBlock):
    """Bottleneck residual block (ResNet-50+, ResNeXt, WRN, Res2Net, DCN): 1x1, 3x3 (grouped,
    dilated, deformable or Res2Net-split), 1x1, arranged by ``options.order`` (v1: 1x1, norm,
    ReLU, 3x3, norm, ReLU, 1x1, norm; add; ReLU)."""

    last_conv = 3

    def _add_branch(self, bottleneck_channels, dilation, deform, first_in_stage, options):
        # The original MSRA ResNets have the stride in the first 1x1 conv; fb.torch, Caffe2's
        # ResNeXt and torchvision have it in the 3x3 conv (detectron2's comment, resnet.py).
        stride = self.stride
        stride_1x1, stride_3x3 = (stride, 1) if options.stride_in_1x1 else (1, stride)
        self._add_conv(
            Conv2d, self.in_channels, bottleneck_channels, options, kernel_size=1,
            stride=stride_1x1, bias=False,
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
        # conv2 is deformable (and reads offsets from conv2_offset); Res2Net's split wins.
        self.deformable = "conv2_offset" in self._modules
        self._add_conv(
            Conv2d, bottleneck_channels, self.out_channels, options, kernel_size=1, bias=False
        )

    def _conv(self, i: int, conv: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if i != 2 or not self.deformable:
            return conv(x)
        offset, mask = self._deform_offsets(x)
        return conv(x, offset, mask)

    def _deform_offsets(self, x: torch.Tensor) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The offsets (and, for DCN v2, the mask) of the deformable conv2 on its input ``x``."""
        offset = self.conv2_offset(x)
        mask: Optional[torch.Tensor] = None
        if self.deform_modulated:
            offset_x, offset_y, mask_logits = torch.chunk(offset, 3, dim=1)
            offset = torch.cat((offset_x, offset_y), dim=1)
            mask = mask_logits.sigmoid()
        return offset, mask


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

"""The stems of the ResNet family: ImageNet's 7x7 conv, ResNet-C's three 3x3 convs, CIFAR's one.

Every stem is a detectron2 ``CNNBlockBase`` (in/out channels, stride, ``freeze()``). Parameter
names equal detectron2's ``BasicStem`` (``conv1.weight``, ``conv1.norm.*``).
"""

from __future__ import annotations

import math

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, get_norm

__all__ = ["STEM_CLASSES", "BasicStem", "CifarStem", "DeepStem"]


class _Stem(CNNBlockBase):
    """A stem is data: its convs (``convs``: kernel size, stride, and the divisor of
    ``out_channels`` that gives the conv's width) and whether a 3x3/2 max-pool follows them.

    Every conv but the last is followed by norm and ReLU. A v1 stem ends with norm and ReLU after
    its last conv (then max-pools); a pre-activation stem's last conv has no norm, and the stem
    ends with norm and ReLU after the pool: that is the first block's pre-activation (timm's
    ResNetV2), so the ``stem`` feature is normalised and activated in both cases.
    """

    # (kernel size, stride, out_channels // divisor) of conv1, conv2, ...
    convs: tuple[tuple[int, int, int], ...]
    pool: bool
    default_out_channels: int = 64
    # TorchScript reads class attributes only when they are constants.
    __constants__ = ["pool"]

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        *,
        norm: str = "BN",
        preact: bool = False,
    ):
        """
        Args:
            in_channels: channels of the input image.
            out_channels: channels of the stem's output (default: 64; the CIFAR stem's 16).
            norm: a name understood by ``detectron2.layers.get_norm``.
            preact: the stem of a pre-activation network (see above).
        """
        if out_channels is None:
            out_channels = self.default_out_channels
        stride = math.prod(s for _, s, _ in self.convs) * (2 if self.pool else 1)
        super().__init__(in_channels, out_channels, stride)
        self.preact = preact
        self.norm = get_norm(norm, out_channels) if preact else None
        c_in = in_channels
        for i, (kernel_size, conv_stride, divisor) in enumerate(self.convs, start=1):
            c_out = out_channels // divisor
            last = i == len(self.convs)
            conv = Conv2d(
                c_in,
                c_out,
                kernel_size=kernel_size,
                stride=conv_stride,
                padding=kernel_size // 2,
                bias=False,
                norm=None if last and preact else get_norm(norm, c_out),
            )
            weight_init.c2_msra_fill(conv)
            self.add_module(f"conv{i}", conv)
            c_in = c_out
        # Built once, read by forward from _modules: no f-string and no nn.Module.__getattr__
        # per call (the parameter names stay conv1.*, conv2.* ...).
        self._conv_names: tuple[str, ...] = tuple(f"conv{i}" for i in range(1, len(self.convs) + 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.jit.is_scripting():
            x = self._convs_scripted(x)
        else:
            modules = self._modules
            for name in self._conv_names[:-1]:
                x = F.relu_(modules[name](x))
            x = modules[self._conv_names[-1]](x)
        if not self.preact:
            x = F.relu_(x)
        if self.pool:
            x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
        if self.preact:
            x = F.relu_(x if self.norm is None else self.norm(x))
        return x

    def _convs_scripted(self, x: torch.Tensor) -> torch.Tensor:
        """The convs of :meth:`forward` (a ReLU between two), for ``torch.jit.script``, which
        cannot look modules up by name: it unrolls this loop over the children (the norm of a
        pre-activation stem is one, and is skipped here)."""
        first = True
        for name, module in self.named_children():
            if name.startswith("conv"):
                if not first:
                    x = F.relu_(x)
                x = module(x)
                first = False
        return x


class BasicStem(_Stem):
    """ResNet stem: 7x7/2 conv, norm, ReLU, 3x3/2 max-pool (detectron2's ``BasicStem``).
    Pre-activation: 7x7/2 conv, 3x3/2 max-pool, norm, ReLU."""

    convs = ((7, 2, 1),)
    pool = True


class DeepStem(_Stem):
    """Deep stem of ResNet-C (Bag of Tricks, Sec. 4.1): three 3x3 convs (the first /2), each
    with norm and ReLU, then a 3x3/2 max-pool. Widths: out/2, out/2, out (timm's ``deep``).
    Pre-activation: the third conv has no norm; max-pool, norm, ReLU follow."""

    convs = ((3, 2, 2), (3, 1, 2), (3, 1, 1))
    pool = True


class CifarStem(_Stem):
    """CIFAR stem (ResNet paper, Sec. 4.2): 3x3 stride-1 conv, norm, ReLU; no max-pool."""

    convs = ((3, 1, 1),)
    pool = False
    default_out_channels = 16


STEM_CLASSES: dict[str, type[_Stem]] = {"basic": BasicStem, "deep": DeepStem, "cifar": CifarStem}

"""``Res5FamilyROIHeads``: the C4 head whose res5 is the backbone's own kind of stage."""

from __future__ import annotations

from detectron2.modeling import ROI_HEADS_REGISTRY
from detectron2.modeling.roi_heads import Res5ROIHeads
from torch import nn

from .. import config  # the module: it imports this package (see resnet.py)
from .resnet import build_res5_head

__all__ = ["Res5FamilyROIHeads"]


@ROI_HEADS_REGISTRY.register()
class Res5FamilyROIHeads(Res5ROIHeads):
    """detectron2's ``Res5ROIHeads`` with res5 built from ``MODEL.RESNETS`` by the family builder.

    detectron2's own head always builds three plain bottlenecks; this one builds res5 with the
    backbone's block type, depth, shortcut and options (basic blocks for R18/34, option-A
    shortcuts, ResNet-D projections ...). With default keys its parameters equal detectron2's
    (``roi_heads.res5.0.conv1.weight`` ...), so C4 checkpoints load unchanged.
    """

    @classmethod
    def _build_res5_block(cls, cfg) -> tuple[nn.Sequential, int]:
        return build_res5_head(config.resnet_spec_from_config(cfg))

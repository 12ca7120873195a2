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
    def from_config(cls, cfg, input_shape):
        # Refused at build time: a res5 that does not take the backbone's feature would fail in
        # the first forward with a bare conv shape error (ReXNet's 128-channel res4 into a
        # ResNet res5 that expects 1024).
        spec = config.resnet_spec_from_config(cfg)
        (feature,) = cfg.MODEL.ROI_HEADS.IN_FEATURES
        if "res5" in spec.feature_names and feature in input_shape:
            expected, given = spec.stage("res5").in_channels, input_shape[feature].channels
            if expected != given:
                raise ValueError(
                    f"Res5FamilyROIHeads builds res5 from MODEL.RESNETS, which takes "
                    f"{expected} channels, but the backbone ({cfg.MODEL.BACKBONE.NAME}) gives "
                    f"{given} at {feature}: the C4 head needs a ResNet-family backbone described "
                    "by MODEL.RESNETS; use an FPN config for other backbones (ReXNet)"
                )
        return super().from_config(cfg, input_shape)

    @classmethod
    def _build_res5_block(cls, cfg) -> tuple[nn.Sequential, int]:
        return build_res5_head(config.resnet_spec_from_config(cfg))

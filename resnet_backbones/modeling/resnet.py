"""The ResNet-family backbone, its C4 head stage and its registered builders.

Registered in detectron2's ``BACKBONE_REGISTRY``:

* ``build_resnet_family_backbone``: res2..res5 (``MODEL.RESNETS.OUT_FEATURES``);
* ``build_resnet_family_fpn_backbone``: FPN P2..P6, as detectron2's ``build_resnet_fpn_backbone``;
* ``build_resnet_family_retinanet_fpn_backbone``: FPN P3..P7, as
  detectron2's ``build_retinanet_resnet_fpn_backbone``.

The builders read nothing themselves: :mod:`resnet_backbones.config` turns ``cfg`` into the
typed arguments of :class:`ResNetFamily`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN
from torch import nn

# The module, not its names: resnet_backbones.config imports this package (a cycle that
# resolves because the builders use it only when called).
from .. import config
from ..utils import PYTHON_NAMES, ArgumentNames
from .base import StagedBackbone, fpn, retinanet_fpn
from .blocks import make_stage
from .spec import ResNetSpec
from .stems import STEM_CLASSES

__all__ = [
    "ResNetFamily",
    "build_res5_head",
    "build_resnet_family_backbone",
    "build_resnet_family_fpn_backbone",
    "build_resnet_family_retinanet_fpn_backbone",
]


class ResNetFamily(StagedBackbone):
    """A stem and up to four stages res2..res5, built from a :class:`ResNetSpec`.

    Only the stages up to the deepest of ``out_features`` are built (a C4 backbone has no
    res5; the C4 head owns it), as in detectron2's ``ResNet``.
    """

    def __init__(
        self,
        spec: ResNetSpec,
        *,
        out_features: Sequence[str] | None = None,
        freeze_at: int = 0,
        activation_checkpointing: Sequence[str] = (),
        channels_last: bool = False,
        in_channels: int = 3,
        names: ArgumentNames = PYTHON_NAMES,
    ):
        """
        Args:
            spec: the network.
            out_features: names among "stem", "res2".."res5" to return from ``forward``
                (default: the last stage, res5; res4 for CIFAR networks).
            freeze_at: 0 trains everything; k >= 1 freezes the stem and the first k-1 stages
                (their parameters stop requiring grad and their BNs become FrozenBN).
            activation_checkpointing: stages whose blocks are recomputed in the backward pass
                instead of keeping their activations (see :class:`StagedBackbone`).
            channels_last: weights and input in channels_last memory format (see
                :class:`StagedBackbone`).
            in_channels: channels of the input image.
            names: how errors name ``out_features``, ``freeze_at`` and
                ``activation_checkpointing`` (their config keys when built from a config).
        """
        if out_features is None:
            out_features = spec.feature_names[-1:]
        super().__init__(
            spec.feature_names,
            out_features=out_features,
            freeze_at=freeze_at,
            activation_checkpointing=activation_checkpointing,
            channels_last=channels_last,
            names=names,
        )
        self.spec = spec
        stem = STEM_CLASSES[spec.stem](
            in_channels, spec.stem_out_channels, norm=spec.options.norm, preact=spec.options.preact
        )
        self.add_stage("stem", stem, channels=spec.stem_out_channels, stride=stem.stride)
        for stage in spec.stages:
            if stage.name not in self.stages_to_build:
                break
            blocks = make_stage(spec.block, stage, spec.options)
            self.add_stage(stage.name, blocks, channels=stage.out_channels, stride=stage.stride)
        self.freeze(freeze_at)


def build_res5_head(spec: ResNetSpec) -> tuple[nn.Sequential, int]:
    """The res5 stage of the C4 head, from the backbone's own block type and options.

    As in detectron2's ``Res5ROIHeads``, it runs on pooled RoI features at stride 1 and its
    first block always has stride 2 and no dilation. A pre-activation head ends with the
    network's final norm and ReLU.
    """
    if "res5" not in spec.feature_names:
        raise ValueError(
            "a C4 head needs a res5 stage, but this network (a CIFAR depth) ends at "
            f"{spec.feature_names[-1]}"
        )
    res5 = dataclasses.replace(spec.stage("res5"), stride=2, dilation=1)
    return make_stage(spec.block, res5, spec.options), res5.out_channels


@BACKBONE_REGISTRY.register()
def build_resnet_family_backbone(cfg, input_shape: ShapeSpec) -> ResNetFamily:
    """res2..res5 of the network described by ``cfg.MODEL.RESNETS``."""
    return ResNetFamily(**config.resnet_family_arguments(cfg), in_channels=input_shape.channels)


@BACKBONE_REGISTRY.register()
def build_resnet_family_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN P2..P6 on the ResNet-family backbone (P6 by max-pooling P5)."""
    return fpn(cfg, build_resnet_family_backbone(cfg, input_shape))


@BACKBONE_REGISTRY.register()
def build_resnet_family_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN P3..P7 on the ResNet-family backbone (P6, P7 by strided convs on res5)."""
    return retinanet_fpn(cfg, build_resnet_family_backbone(cfg, input_shape))

"""The ResNet-family backbone and its registered builders.

Registered in detectron2's ``BACKBONE_REGISTRY``:

* ``build_resnet_family_backbone``: res2..res5 (``MODEL.RESNETS.OUT_FEATURES``);
* ``build_resnet_family_fpn_backbone``: FPN P2..P6, as detectron2's ``build_resnet_fpn_backbone``;
* ``build_resnet_family_retinanet_fpn_backbone``: FPN P3..P7, as
  detectron2's ``build_retinanet_resnet_fpn_backbone``.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Sequence

import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.utils import comm
from torch import nn

from ..utils import check_choice
from .blocks import make_stage
from .spec import ResNetSpec, feature_names_up_to, spec_from_config
from .stems import STEM_CLASSES

__all__ = [
    "ResNetFamily",
    "build_res5_head",
    "build_resnet_family_backbone",
    "build_resnet_family_fpn_backbone",
    "build_resnet_family_retinanet_fpn_backbone",
    "resolve_norm",
]

logger = logging.getLogger(__name__)

FREEZE_AT_VALUES = tuple(range(6))


class ResNetFamily(Backbone):
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
        in_channels: int = 3,
    ):
        """
        Args:
            spec: the network.
            out_features: names among "stem", "res2".."res5" to return from ``forward``
                (default: the last stage, res5; res4 for CIFAR networks).
            freeze_at: 0 trains everything; k >= 1 freezes the stem and the first k-1 stages
                (their parameters stop requiring grad and their BNs become FrozenBN).
            in_channels: channels of the input image.
        """
        super().__init__()
        check_choice("MODEL.BACKBONE.FREEZE_AT", freeze_at, FREEZE_AT_VALUES)
        if out_features is None:
            out_features = spec.feature_names[-1:]
        stage_names = feature_names_up_to(out_features, spec.feature_names)
        self.spec = spec
        self.stem = STEM_CLASSES[spec.stem](
            in_channels, spec.stem_out_channels, norm=spec.options.norm, preact=spec.options.preact
        )

        stride = self.stem.stride
        self._out_feature_strides = {"stem": stride}
        self._out_feature_channels = {"stem": spec.stem_out_channels}
        self.stage_names: list[str] = []
        self.stages: list[nn.Sequential] = []
        for stage in spec.stages:
            if stage.name not in stage_names:
                break
            blocks = make_stage(spec.block, stage, spec.options)
            self.add_module(stage.name, blocks)
            self.stage_names.append(stage.name)
            self.stages.append(blocks)
            stride *= stage.stride
            self._out_feature_strides[stage.name] = stride
            self._out_feature_channels[stage.name] = stage.out_channels
        self._out_features = list(out_features)
        self.freeze(freeze_at)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.dim() != 4:
            raise ValueError(f"ResNetFamily takes (N, C, H, W) inputs; got shape {tuple(x.shape)}")
        outputs = {}
        x = self.stem(x)
        if "stem" in self._out_features:
            outputs["stem"] = x
        for name, stage in zip(self.stage_names, self.stages):
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> ResNetFamily:
        """Freezes the stem (freeze_at >= 1) and stage res{k} for every k < freeze_at + 1.

        Frozen modules stop requiring grad and their BatchNorms become FrozenBatchNorm2d, as in
        detectron2's ``ResNet.freeze``.
        """
        if freeze_at >= 1:
            self.stem.freeze()
        for index, stage in enumerate(self.stages, start=2):
            if freeze_at >= index:
                # The whole stage, blocks and (pre-activation networks) its closing norm.
                for p in stage.parameters():
                    p.requires_grad = False
                FrozenBatchNorm2d.convert_frozen_batchnorm(stage)
        return self


def resolve_norm(norm: str, key: str = "MODEL.RESNETS.NORM") -> str:
    """SyncBN needs a distributed run; in a single process it falls back to BN, with a warning
    naming the config ``key``."""
    if norm == "SyncBN" and comm.get_world_size() == 1:
        logger.warning(
            "%s = 'SyncBN' needs a distributed run, but this one has a single "
            "process; using 'BN' (per-process batch statistics) instead.",
            key,
        )
        return "BN"
    return norm


def spec_for_build(cfg) -> ResNetSpec:
    """The spec of ``cfg``, with the norm resolved for this run."""
    spec = spec_from_config(cfg)
    norm = resolve_norm(spec.options.norm)
    if norm != spec.options.norm:
        spec = dataclasses.replace(spec, options=dataclasses.replace(spec.options, norm=norm))
    return spec


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
    return ResNetFamily(
        spec_for_build(cfg),
        out_features=cfg.MODEL.RESNETS.OUT_FEATURES,
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT,
        in_channels=input_shape.channels,
    )


def _fpn(cfg, bottom_up: Backbone, top_block: nn.Module) -> FPN:
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_resnet_family_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN P2..P6 on the ResNet-family backbone (P6 by max-pooling P5)."""
    return _fpn(cfg, build_resnet_family_backbone(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_resnet_family_retinanet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """FPN P3..P7 on the ResNet-family backbone (P6, P7 by strided convs on res5)."""
    bottom_up = build_resnet_family_backbone(cfg, input_shape)
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    return _fpn(cfg, bottom_up, LastLevelP6P7(in_channels_p6p7, cfg.MODEL.FPN.OUT_CHANNELS))

"""Models of resnet_backbones; importing this registers the backbones and heads in detectron2."""

from .base import FEATURE_NAMES, StagedBackbone, fpn, retinanet_fpn
from .blocks import BLOCK_CLASSES, make_stage
from .classifier import ImageClassifier, ResNetClassifier, build_classifier
from .resnet import (
    ResNetFamily,
    build_res5_head,
    build_resnet_family_backbone,
    build_resnet_family_fpn_backbone,
    build_resnet_family_retinanet_fpn_backbone,
)
from .rexnet import ReXNet, build_rexnet_backbone, build_rexnet_fpn_backbone
from .roi_heads import Res5FamilyROIHeads
from .spec import DEPTHS, BlockOptions, ResNetSpec, StageSpec, resnet_spec, spec_from_config
from .stems import STEM_CLASSES

__all__ = [
    "BLOCK_CLASSES",
    "DEPTHS",
    "FEATURE_NAMES",
    "STEM_CLASSES",
    "BlockOptions",
    "ImageClassifier",
    "ReXNet",
    "Res5FamilyROIHeads",
    "ResNetClassifier",
    "ResNetFamily",
    "ResNetSpec",
    "StageSpec",
    "StagedBackbone",
    "build_classifier",
    "build_res5_head",
    "build_rexnet_backbone",
    "build_rexnet_fpn_backbone",
    "build_resnet_family_backbone",
    "build_resnet_family_fpn_backbone",
    "build_resnet_family_retinanet_fpn_backbone",
    "fpn",
    "make_stage",
    "resnet_spec",
    "retinanet_fpn",
    "spec_from_config",
]

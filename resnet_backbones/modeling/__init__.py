"""Models of resnet_backbones; importing this registers the backbones and heads in detectron2.

* :mod:`.base`: :class:`StagedBackbone` (stages by name, ``out_features``, freezing, shapes)
  and the FPNs on top of it;
* :mod:`.ops`: layers no network owns (SE, channel rounding, shortcuts, DCN, Res2Net's split);
* :mod:`.stems`, :mod:`.blocks`: the ResNet family's stems, residual blocks and stage builder;
* :mod:`.spec`: the typed ResNet-family spec, :func:`resnet_spec`;
* :mod:`.resnet`: :class:`ResNetFamily` and its builders; :mod:`.rexnet`: :class:`ReXNet` and
  its builders; :mod:`.roi_heads`: the C4 head; :mod:`.classifier`: pooled linear classifiers;
* :mod:`.roi_align`: RoIAlign with a fast CPU backward, :func:`use_fast_cpu_roi_align`;
* :mod:`.lesion`: the papers' analyses: block and layer deletion (:func:`delete_blocks`) and
  the responses of the 3x3 layers (:func:`layer_responses`).

Nothing here reads ``MODEL.RESNETS`` or ``MODEL.REXNET``: :mod:`resnet_backbones.config` turns a
config into the typed arguments the registered builders pass on.
"""

from .base import FEATURE_NAMES, StagedBackbone, fpn, retinanet_fpn
from .blocks import BLOCK_CLASSES, BasicBlock, BottleneckBlock, make_stage
from .classifier import ImageClassifier, ResNetClassifier, build_classifier
from .lesion import (
    LayerResponses,
    delete_blocks,
    layer_responses,
    plain_layers,
    random_deletions,
    residual_blocks,
    response_layers,
    shortcut_path,
)
from .ops import (
    AvgDownConv2d,
    DeformConv2d,
    Res2NetConv,
    SqueezeExcite,
    ZeroPadShortcut,
    make_divisible,
    make_shortcut,
)
from .resnet import (
    ResNetFamily,
    build_res5_head,
    build_resnet_family_backbone,
    build_resnet_family_fpn_backbone,
    build_resnet_family_retinanet_fpn_backbone,
)
from .rexnet import ReXNet, build_rexnet_backbone, build_rexnet_fpn_backbone, rexnet_blocks
from .roi_align import FastCPUROIAlign, use_fast_cpu_roi_align
from .roi_heads import Res5FamilyROIHeads
from .spec import BLOCK_ORDERS, DEPTHS, BlockOptions, ResNetSpec, StageSpec, resnet_spec
from .stems import STEM_CLASSES

__all__ = [
    "BLOCK_CLASSES",
    "BLOCK_ORDERS",
    "DEPTHS",
    "FEATURE_NAMES",
    "STEM_CLASSES",
    "AvgDownConv2d",
    "BasicBlock",
    "BlockOptions",
    "BottleneckBlock",
    "DeformConv2d",
    "FastCPUROIAlign",
    "LayerResponses",
    "ImageClassifier",
    "ReXNet",
    "Res2NetConv",
    "Res5FamilyROIHeads",
    "ResNetClassifier",
    "ResNetFamily",
    "ResNetSpec",
    "SqueezeExcite",
    "StageSpec",
    "StagedBackbone",
    "ZeroPadShortcut",
    "build_classifier",
    "build_res5_head",
    "build_rexnet_backbone",
    "build_rexnet_fpn_backbone",
    "build_resnet_family_backbone",
    "build_resnet_family_fpn_backbone",
    "build_resnet_family_retinanet_fpn_backbone",
    "delete_blocks",
    "fpn",
    "layer_responses",
    "make_divisible",
    "make_shortcut",
    "make_stage",
    "plain_layers",
    "random_deletions",
    "residual_blocks",
    "resnet_spec",
    "response_layers",
    "retinanet_fpn",
    "rexnet_blocks",
    "shortcut_path",
    "use_fast_cpu_roi_align",
]

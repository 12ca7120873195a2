"""Image classifiers on our backbones: global average pooling and a linear head.

The CIFAR networks (ResNet paper, Sec. 4.2) are classifiers first, and ImageNet numbers (top-1,
parameters, multiply-accumulates at 224x224) are those of the classifier; detectors use the
backbone alone.
"""

from __future__ import annotations

import torch
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from torch import nn

from .resnet import ResNetFamily
from .spec import ResNetSpec, spec_from_config

__all__ = ["ImageClassifier", "ResNetClassifier", "build_classifier"]


class ImageClassifier(nn.Module):
    """Backbone, global average pool of its one output feature, fully connected layer."""

    def __init__(self, backbone: Backbone, *, num_classes: int = 1000):
        """
        Args:
            backbone: a detectron2 backbone with exactly one output feature (its last stage).
            num_classes: outputs of the final linear layer (1000 for ImageNet, 10 for CIFAR-10).
        """
        super().__init__()
        if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
            raise ValueError(f"num_classes = {num_classes!r} is not valid; it must be >= 1")
        shapes = backbone.output_shape()
        if len(shapes) != 1:
            raise ValueError(
                f"a classifier pools one feature, but the backbone returns {sorted(shapes)}"
            )
        self.backbone = backbone
        (last,) = shapes.values()
        self.fc = nn.Linear(last.channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (features,) = self.backbone(x).values()
        return self.fc(features.mean(dim=(2, 3)))


class ResNetClassifier(ImageClassifier):
    """A ResNet-family network as a classifier: its last stage, pooled, then a linear layer."""

    def __init__(self, spec: ResNetSpec, *, num_classes: int = 1000, in_channels: int = 3):
        """
        Args:
            spec: the network.
            num_classes: outputs of the final linear layer.
            in_channels: channels of the input image.
        """
        super().__init__(ResNetFamily(spec, in_channels=in_channels), num_classes=num_classes)


def build_classifier(cfg, *, num_classes: int = 1000) -> ImageClassifier:
    """The classifier of the (non-FPN) backbone ``cfg.MODEL.BACKBONE.NAME`` builds, on its last
    feature: ``ResNetFamily`` for ``build_resnet_family_backbone``, ``ReXNet`` for
    ``build_rexnet_backbone``. Nothing is frozen."""
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_rexnet_backbone":
        cfg.MODEL.REXNET.OUT_FEATURES = ["res5"]
    elif name == "build_resnet_family_backbone":
        cfg.MODEL.RESNETS.OUT_FEATURES = [spec_from_config(cfg).feature_names[-1]]
    else:
        raise ValueError(
            f"MODEL.BACKBONE.NAME = {name!r} is not valid for a classifier; valid values: "
            "'build_resnet_family_backbone', 'build_rexnet_backbone'"
        )
    backbone = BACKBONE_REGISTRY.get(name)(cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN)))
    return ImageClassifier(backbone, num_classes=num_classes)

"""Image classifiers on our backbones: global average pooling and a linear head.

The CIFAR networks (ResNet paper, Sec. 4.2) are classifiers first, and ImageNet numbers (top-1,
parameters, multiply-accumulates at 224x224) are those of the classifier; detectors use the
backbone alone.
"""

from __future__ import annotations

import torch
from detectron2.modeling import Backbone
from torch import nn

from .. import config  # the module: it imports this package (see resnet.py)
from .resnet import ResNetFamily
from .spec import ResNetSpec

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
    """The classifier of the network ``cfg`` builds, on its last feature: its clean backbone
    (:func:`resnet_backbones.config.build_clean_backbone`: the plain builder of an FPN builder,
    nothing frozen), pooled, then a linear layer.

    Raises:
        ValueError: ``MODEL.BACKBONE.NAME`` is not one of the package's builders.
    """
    backbone = config.build_clean_backbone(cfg, features="last")
    return ImageClassifier(backbone, num_classes=num_classes)

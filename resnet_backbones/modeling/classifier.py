"""Image classifiers on our backbones: global average pooling and a linear head.

The CIFAR networks (ResNet paper, Sec. 4.2) are classifiers first, and ImageNet numbers (top-1,
parameters, multiply-accumulates at 224x224) are those of the classifier; detectors use the
backbone alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from detectron2.modeling import Backbone
from torch import nn

from .. import config  # the module: it imports this package (see resnet.py)
from .resnet import ResNetFamily
from .spec import ResNetSpec

__all__ = [
    "ClassificationModel",
    "ImageClassifier",
    "ResNetClassifier",
    "build_classification_model",
    "build_classifier",
]


def _pooled_channels(backbone: Backbone, num_classes: int) -> int:
    """The channels of ``backbone``'s one output feature, which a classifier pools; checks
    that there is one, and ``num_classes``."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes = {num_classes!r} is not valid; it must be >= 1")
    shapes = backbone.output_shape()
    if len(shapes) != 1:
        raise ValueError(
            f"a classifier pools one feature, but the backbone returns {sorted(shapes)}"
        )
    (last,) = shapes.values()
    return last.channels


class ImageClassifier(nn.Module):
    """Backbone, global average pool of its one output feature, fully connected layer."""

    def __init__(self, backbone: Backbone, *, num_classes: int = 1000):
        """
        Args:
            backbone: a detectron2 backbone with exactly one output feature (its last stage).
            num_classes: outputs of the final linear layer (1000 for ImageNet, 10 for CIFAR-10).
        """
        super().__init__()
        channels = _pooled_channels(backbone, num_classes)
        self.backbone = backbone
        self.fc = nn.Linear(channels, num_classes)

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


class ClassificationModel(nn.Module):
    """A classifier as detectron2's trainers train a model, whose weights a detector loads as
    they are.

    ``model(batched_inputs)``, a list of ``{"image": (3, H, W) float tensor, the network's input
    already (see resnet_backbones.data.cls_transforms), "label": int}``, returns
    ``{"loss_cls": cross-entropy}`` in training and the logits ``(N, num_classes)`` in eval.

    Its state dict is named as the backbone's own (``stem.*``, ``res2.*`` ...) plus ``fc.*``:
    the names of resnet_backbones weights files, which the weights loader places into any
    detector of the same network (C4, DC5 or FPN), ``fc`` left unused. An
    :class:`ImageClassifier`'s names (``backbone.stem.*``) fit a DC5 detector only.
    """

    def __init__(self, backbone: Backbone, *, num_classes: int, label_smoothing: float = 0.0):
        """
        Args:
            backbone: a backbone with one output feature and no tensors of its own outside its
                child modules (those of this package).
            num_classes: outputs of the final linear layer.
            label_smoothing: of the training loss.
        """
        super().__init__()
        channels = _pooled_channels(backbone, num_classes)
        own = [n for n, _ in backbone.named_parameters(recurse=False)]
        own += [n for n, _ in backbone.named_buffers(recurse=False)]
        if own:
            raise ValueError(
                f"{type(backbone).__name__} holds tensors outside its child modules ({own}); "
                "their names would not be the backbone's"
            )
        # The backbone's stages become this module's children, under their own names; the
        # backbone object is kept (unregistered) for its forward, over these same modules.
        for name, child in backbone.named_children():
            self.add_module(name, child)
        object.__setattr__(self, "_backbone", backbone)
        self.fc = nn.Linear(channels, num_classes)
        self.label_smoothing = label_smoothing

    def train(self, mode: bool = True) -> ClassificationModel:
        super().train(mode)
        self._backbone.training = mode
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of network inputs ``(N, 3, H, W)``."""
        (features,) = self._backbone(images).values()
        return self.fc(features.mean(dim=(2, 3)))

    def forward(self, batched_inputs: list[dict]):
        device = self.fc.weight.device
        images = torch.stack([x["image"] for x in batched_inputs]).to(device)
        logits = self.logits(images)
        if not self.training:
            return logits
        labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=device)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        return {"loss_cls": loss}


def build_classification_model(cfg, *, num_classes: int) -> ClassificationModel:
    """The :class:`ClassificationModel` of the network ``cfg`` builds: its clean backbone (as
    :func:`build_classifier`), a linear layer of ``num_classes``, and ``CLS.LABEL_SMOOTHING``
    where the config has it."""
    backbone = config.build_clean_backbone(cfg, features="last")
    smoothing = cfg.CLS.LABEL_SMOOTHING if "CLS" in cfg else 0.0
    return ClassificationModel(backbone, num_classes=num_classes, label_smoothing=smoothing)

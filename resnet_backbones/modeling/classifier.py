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
    ``{"loss_cls": cross-entropy}`` in training (and puts the top-1 error of the batch of all
    processes, in percent, into detectron2's event storage as ``train_error``: the thin curves of
    the ResNet paper's Fig. 4) and the logits ``(N, num_classes)`` in eval. In eval, inputs with ``"views"`` (the
    groups of a test protocol, :class:`~resnet_backbones.data.cls_transforms.TestViews`)
    instead of ``"image"`` give the softmax scores averaged over their views
    (:func:`~resnet_backbones.data.cls_transforms.average_scores`).

    Its state dict is named as the backbone's own (``stem.*``, ``res2.*`` ...) plus ``fc.*``:
    the names of resnet_backbones weights files, which the weights loader places into any
    detector of the same network (C4, DC5 or FPN), ``fc`` left unused. An
    :class:`ImageClassifier`'s names (``backbone.stem.*``) fit a DC5 detector only.
    """

    def __init__(
        self,
        backbone: Backbone,
        *,
        num_classes: int,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
    ):
        """
        Args:
            backbone: a backbone with one output feature and no tensors of its own outside its
                child modules (those of this package).
            num_classes: outputs of the final linear layer.
            label_smoothing: of the training loss.
            channels_last: feed the network channels_last images (convert the model with
                ``model.to(memory_format=torch.channels_last)`` too).
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
        self.channels_last = channels_last

    def train(self, mode: bool = True) -> ClassificationModel:
        super().train(mode)
        self._backbone.training = mode
        return self

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The logits of a batch of network inputs ``(N, 3, H, W)``."""
        images = images.to(self.fc.weight.device)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        (features,) = self._backbone(images).values()
        return self.fc(features.mean(dim=(2, 3)))

    def scores(self, batched_inputs: list[dict]) -> torch.Tensor:
        """``(N, num_classes)`` softmax scores of inputs with ``"views"``, each averaged over
        its views; inputs whose groups have the same shapes run as one batch per group."""
        from ..data.cls_transforms import average_scores  # data imports modeling

        groups = [x["views"] for x in batched_inputs]
        shapes = [[tuple(g.shape) for g in views] for views in groups]
        if all(s == shapes[0] for s in shapes):
            stacked = [torch.stack(group) for group in zip(*groups)]  # (B, V, 3, H, W) each
            return average_scores(self.logits, stacked)
        return torch.stack([average_scores(self.logits, views) for views in groups])

    def forward(self, batched_inputs: list[dict]):
        if not self.training and "views" in batched_inputs[0]:
            return self.scores(batched_inputs)
        device = self.fc.weight.device
        logits = self.logits(torch.stack([x["image"] for x in batched_inputs]))
        if not self.training:
            return logits
        labels = torch.as_tensor([int(x["label"]) for x in batched_inputs], device=device)
        loss = F.cross_entropy(logits, labels, label_smoothing=self.label_smoothing)
        storage = _current_storage()
        if storage is not None:
            storage.put_scalar("train_error", _batch_error(logits.detach(), labels))
        return {"loss_cls": loss}


def _batch_error(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The top-1 error (percent) of the batch of every process (summed over them where there
    are several)."""
    from detectron2.utils import comm

    counts = torch.stack([(logits.argmax(dim=1) != labels).sum(), torch.tensor(labels.numel())]).to(
        logits.device, torch.float64
    )
    if comm.get_world_size() > 1:
        torch.distributed.all_reduce(counts)
    return 100.0 * float(counts[0] / counts[1])


def _current_storage():
    """detectron2's current EventStorage, or None outside a training loop."""
    from detectron2.utils.events import _CURRENT_STORAGE_STACK

    return _CURRENT_STORAGE_STACK[-1] if _CURRENT_STORAGE_STACK else None


def build_classification_model(cfg, *, num_classes: int) -> ClassificationModel:
    """The :class:`ClassificationModel` of the network ``cfg`` builds: its clean backbone (as
    :func:`build_classifier`, with BN for FrozenBN), a linear layer of ``num_classes``, and ``CLS.LABEL_SMOOTHING``
    and ``CLS.CHANNELS_LAST`` where the config has them."""
    # Trainable BN where the config has FrozenBN (a detection config's): a classifier that
    # is trained learns its norms' statistics.
    backbone = config.build_clean_backbone(cfg, features="last", trainable_norms=True)
    has_cls = "CLS" in cfg
    model = ClassificationModel(
        backbone,
        num_classes=num_classes,
        label_smoothing=cfg.CLS.LABEL_SMOOTHING if has_cls else 0.0,
        channels_last=bool(has_cls and cfg.CLS.CHANNELS_LAST),
    )
    if model.channels_last:
        model.to(memory_format=torch.channels_last)
    return model

"""Parameters and multiply-accumulates (MACs) of the presets, counted by fvcore.

The convention is the ResNet paper's and torchvision's: the multiply-accumulates of the
convolutions and fully connected layers ("FLOPs" in the ResNet paper, "GFLOPS" in torchvision's
weight tables). Norms, activations, pooling and additions are not counted. A deformable conv
counts as the regular conv it replaces (its offset conv is counted as a conv); the bilinear
sampling is not counted. Parameters include the norms' affine weights, as in a network being
trained (detectron2's FrozenBN keeps them as buffers: the counts use "BN" in its place).

:func:`preset_complexity` gives, per preset, the classifier at its classification resolution
(224x224 with 1000 classes for ImageNet networks; 32x32 with 10 for the CIFAR networks) and the
detection backbone (res2..res5, no classifier) at 800x1333. ``tools/model_complexity.py``
writes them to ``docs/model_complexity.json``; a test recomputes them and compares.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from fvcore.nn import FlopCountAnalysis
from fvcore.nn.jit_handles import get_shape
from torch import nn

from .config import build_clean_backbone, clean_backbone_config
from .modeling.classifier import build_classifier
from .presets import PRESETS, arch_config, preset_config
from .utils import config_set

__all__ = [
    "CLASSIFICATION_SIZE",
    "DETECTION_SIZE",
    "count_macs",
    "count_parameters",
    "arch_complexity",
    "preset_complexity",
    "published_comparison",
    "torchvision_published",
]

# (height, width) of the counts: ImageNet classification, CIFAR classification, COCO detection.
CLASSIFICATION_SIZE = {"detection": (224, 224), "classification": (32, 32)}
DETECTION_SIZE = (800, 1333)

# Ops fvcore counts by default that the convention leaves out.
_NOT_COUNTED = (
    "aten::batch_norm",
    "aten::group_norm",
    "aten::layer_norm",
    "aten::instance_norm",
    "aten::upsample_nearest2d",
    "aten::upsample_bilinear2d",
    "aten::adaptive_avg_pool2d",
    "aten::grid_sampler",
)
# Ops that cost no multiply-accumulates under the convention (silences fvcore's warnings).
_FREE = (
    "aten::add",
    "aten::add_",
    "aten::mul",
    "aten::mul_",
    "aten::max_pool2d",
    "aten::avg_pool2d",
    "aten::mean",
    "aten::sigmoid",
    "aten::silu",
    "aten::silu_",
    "aten::relu6",
    "aten::hardtanh",
    "aten::pad",
    "aten::dropout",
    "aten::feature_dropout",
)


def _zero(inputs: list[Any], outputs: list[Any]) -> int:
    return 0


def _deform_conv_macs(inputs: list[Any], outputs: list[Any]) -> int:
    # torchvision::deform_conv2d(input, weight, offset, mask, bias, ...): as a conv, one
    # multiply-accumulate per output element per (input channel per group x kernel tap).
    weight = get_shape(inputs[1])
    out = get_shape(outputs[0])
    per_output = weight[1] * weight[2] * weight[3]
    return int(out[0] * out[1] * out[2] * out[3] * per_output)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (buffers such as BN statistics are not parameters)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_size: Sequence[int], in_channels: int = 3) -> int:
    """Multiply-accumulates of ``model`` on one ``in_channels`` x ``input_size`` image.

    Raises:
        RuntimeError: the model runs an op that fvcore cannot count and that is not known to be
            free under the convention (it would be left out silently otherwise).
    """
    was_training = model.training
    model.eval()
    x = torch.zeros(1, in_channels, *input_size)
    analysis = FlopCountAnalysis(model, x)
    # A handle of None does not replace one of fvcore's defaults (fvcore 0.1.5), so the
    # defaults the convention leaves out count zero instead.
    analysis.set_op_handle(**{op: _zero for op in _NOT_COUNTED}, **{op: None for op in _FREE})
    analysis.set_op_handle("torchvision::deform_conv2d", _deform_conv_macs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    with torch.no_grad():
        total = analysis.total()
    model.train(was_training)
    unsupported = analysis.unsupported_ops()
    if unsupported:
        raise RuntimeError(
            f"fvcore cannot count these ops of {type(model).__name__}: {dict(unsupported)}; "
            "add a handle for them in resnet_backbones.complexity"
        )
    return int(total)


def _counted_config(cfg):
    # The network of cfg as the counts see it: a plain backbone, nothing frozen, and BN for
    # FrozenBN (which holds as buffers the affine weights BN has as parameters).
    return clean_backbone_config(cfg, trainable_norms=True)


def _classifier_counts(cfg, size: tuple[int, int], num_classes: int) -> dict[str, Any]:
    """Parameters and MACs of the classifier of ``cfg``'s backbone on a ``size`` image."""
    model = build_classifier(cfg, num_classes=num_classes)
    return {
        "input": list(size),
        "num_classes": num_classes,
        "params": count_parameters(model),
        "macs": count_macs(model, size),
    }


def arch_complexity(name: str) -> dict[str, Any]:
    """Parameters and MACs of the ImageNet classifier (224x224, 1000 classes) of architecture
    ``name`` of :data:`resnet_backbones.presets.ARCHS`: the network its weights fill.

    Returns:
        ``{"input": [224, 224], "num_classes": 1000, "params": p, "macs": m}``.
    """
    cfg = _counted_config(arch_config(name))
    return _classifier_counts(cfg, CLASSIFICATION_SIZE["detection"], 1000)


def preset_complexity(name: str, *, detection: bool = True) -> dict[str, Any]:
    """Parameters and MACs of preset ``name`` (its detection backbone's only if ``detection``).

    Returns:
        ``{"classifier": {"input": [h, w], "num_classes": n, "params": p, "macs": m}}`` and, for
        a detection preset, ``"detection_backbone": {"input": [800, 1333], "params": ...,
        "macs": ...}`` (res2..res5, as FPN reads them).
    """
    preset = PRESETS[name]
    cfg = _counted_config(preset_config(name))
    size = CLASSIFICATION_SIZE[preset.task]
    out: dict[str, Any] = {"classifier": _classifier_counts(cfg, size, preset.num_classes)}
    if detection and preset.task == "detection":
        backbone = build_clean_backbone(cfg, features="all")
        out["detection_backbone"] = {
            "input": list(DETECTION_SIZE),
            "params": count_parameters(backbone),
            "macs": count_macs(backbone, DETECTION_SIZE),
        }
    return out


# Published ImageNet complexity of the plain ResNets, and which stride placement each counts:
# the ResNet paper (Table 1, "FLOPs" = multiply-adds) puts a bottleneck's stride in its first
# 1x1 conv, as MSRA's models; torchvision (its Weights' meta["_ops"], read from torchvision
# itself) puts it in the 3x3 conv, which costs more at res3..res5.
PAPER_GMACS: dict[str, float] = {"R-50": 3.8, "R-101": 7.6, "R-152": 11.3}
COMPARED_PRESETS: tuple[str, ...] = (
    "R-18", "R-34", "R-50", "R-101", "R-152", "X-101-32x8d", "WRN-50-2"
)  # fmt: skip


def torchvision_published(name: str) -> dict[str, Any]:
    """torchvision's published parameters and GMACs ("GFLOPS") of the network of preset ``name``
    (its first ImageNet weights in the catalog)."""
    import torchvision.models as tvm

    from .weights.catalog import CATALOG

    weights = next(
        (
            e.torchvision_weights
            for e in CATALOG.values()
            if e.preset == name and (e.torchvision_weights or "").endswith("IMAGENET1K_V1")
        ),
        None,
    )
    if weights is None:
        raise ValueError(f"preset {name!r} has no torchvision IMAGENET1K_V1 weights in the catalog")
    enum, member = weights.split(".")
    meta = getattr(getattr(tvm, enum), member).meta
    return {"params": meta["num_params"], "gmacs": meta["_ops"]}


def published_comparison() -> list[dict[str, Any]]:
    """Our counts (classifier, 224x224, 1000 classes) beside the published ones, for each stride
    placement the publications use."""
    rows = []
    for name in COMPARED_PRESETS:
        placements = [("3x3", "torchvision", torchvision_published(name))]
        if name in PAPER_GMACS:
            paper = {"params": None, "gmacs": PAPER_GMACS[name]}
            placements.insert(0, ("1x1", "ResNet paper, Table 1", paper))
        for stride_in, source, published in placements:
            cfg = _counted_config(preset_config(name))
            config_set(cfg, "MODEL.RESNETS.STRIDE_IN_1X1", stride_in == "1x1")
            counts = _classifier_counts(cfg, CLASSIFICATION_SIZE["detection"], 1000)
            rows.append(
                {
                    "preset": name,
                    "stride_in": stride_in,
                    "params": counts["params"],
                    "macs": counts["macs"],
                    "published_params": published["params"],
                    "published_gmacs": published["gmacs"],
                    "source": source,
                }
            )
    return rows

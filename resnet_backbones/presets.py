"""The named members of the family: one row each, data only.

A preset is the ``MODEL.RESNETS`` keys (or ``MODEL.REXNET`` keys) that make a variant from the
literature out of the one design, plus the detection configs under ``configs/`` that use it.
Nothing here builds a network by hand: :func:`preset_config` makes a detectron2 config, and the
registered builders (or :class:`~resnet_backbones.modeling.ResNetClassifier`) build it. A test
checks that every listed config builds exactly its preset's network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from detectron2.config import CfgNode, get_cfg

from .config import FPN_BACKBONES, add_resnet_backbones_config
from .utils import check_choice, config_set

__all__ = ["DETECTOR_FORMS", "FPN_BACKBONES", "PRESETS", "Preset", "apply_preset", "preset_config"]

# detectron2's three Faster R-CNN forms (configs/Base-RCNN-{C4,DilatedC5,FPN}.yaml).
DETECTOR_FORMS: tuple[str, ...] = ("C4", "DC5", "FPN")


@dataclass(frozen=True)
class Preset:
    """One named network.

    Attributes:
        name: the name from the literature, e.g. "Res2Net-101-26w-4s".
        task: "detection" (an ImageNet-style backbone for detectors) or "classification"
            (a CIFAR network, built with :class:`ResNetClassifier`).
        keys: config keys that differ from detectron2's defaults, e.g.
            ``{"MODEL.RESNETS.DEPTH": 101}``.
        configs: detection configs under ``configs/`` built on this preset.
        paper: where the network is defined.
        num_classes: classes of the classification head (CIFAR-10: 10).
        forms: the Faster R-CNN forms (:data:`DETECTOR_FORMS`) the network works in; a test
            trains every preset a step in each. Classification presets have none.
    """

    name: str
    task: str
    keys: Mapping[str, Any]
    configs: tuple[str, ...] = ()
    paper: str = ""
    num_classes: int = 1000
    forms: tuple[str, ...] = DETECTOR_FORMS

    def __post_init__(self) -> None:
        check_choice(f"Preset {self.name!r}: task", self.task, ("detection", "classification"))
        for form in self.forms:
            check_choice(f"Preset {self.name!r}: form", form, DETECTOR_FORMS)
        if self.task == "classification" and self.forms:
            raise ValueError(f"Preset {self.name!r}: a classification network has no forms")


def _r(**keys: Any) -> dict[str, Any]:
    """Our ResNet-family backbone with these ``MODEL.RESNETS`` keys."""
    resnets = {f"MODEL.RESNETS.{k}": v for k, v in keys.items()}
    return {"MODEL.BACKBONE.NAME": "build_resnet_family_backbone", **resnets}


def _coco(*names: str) -> tuple[str, ...]:
    return tuple(f"configs/COCO-Detection/faster_rcnn_{n}_3x.yaml" for n in names)


# Torchvision/timm layout: stride in the 3x3 conv. MSRA/Caffe2 (detectron2's R-50/R-101
# ImageNet files): stride in the 1x1 conv, detectron2's default.
_TV = dict(STRIDE_IN_1X1=False)
_RES2NET = dict(RES2NET_SCALE=4, RES2NET_WIDTH=26, **_TV)
_CIFAR = dict(STEM="cifar", STEM_OUT_CHANNELS=16, NORM="BN", SHORTCUT="A")

_ROWS = [
    # ResNet v1 (He et al., 2016a).
    Preset("R-18", "detection", _r(DEPTH=18, RES2_OUT_CHANNELS=64, **_TV), paper="ResNet"),
    Preset("R-34", "detection", _r(DEPTH=34, RES2_OUT_CHANNELS=64, **_TV), paper="ResNet"),
    Preset("R-50", "detection", _r(DEPTH=50), _coco("R_50_C4", "R_50_DC5", "R_50_FPN"), "ResNet"),
    Preset(
        "R-101",
        "detection",
        _r(DEPTH=101),
        _coco("R_101_C4", "R_101_DC5", "R_101_FPN")
        + ("configs/faster_rcnn_R101.yaml", "configs/COCO-Detection/faster_rcnn_R_101_C4_resnet_paper.yaml"),
        "ResNet",
    ),
    Preset(
        "R-152", "detection", _r(DEPTH=152, **_TV), _coco("R_152_C4", "R_152_DC5", "R_152_FPN"),
        "ResNet",
    ),
    # ResNet v2, full pre-activation (He et al., 2016b).
    Preset(
        "R-101-v2",
        "detection",
        _r(DEPTH=101, BLOCK_ORDER="preact", **_TV),
        _coco("R_101_v2_C4", "R_101_v2_DC5", "R_101_v2_FPN"),
        "Identity Mappings",
    ),
    # ResNeXt (Xie et al., 2017), Wide ResNet (Zagoruyko & Komodakis, 2016).
    Preset(
        "X-101-32x8d",
        "detection",
        _r(DEPTH=101, NUM_GROUPS=32, WIDTH_PER_GROUP=8, **_TV),
        _coco("X_101_32x8d_FPN"),
        "ResNeXt",
    ),
    Preset(
        "WRN-50-2", "detection", _r(DEPTH=50, WIDTH_PER_GROUP=128, **_TV), _coco("WRN_50_2_FPN"),
        "Wide ResNet",
    ),
    # Res2Net (Gao et al., 2019).
    Preset("Res2Net-50-26w-4s", "detection", _r(DEPTH=50, **_RES2NET), _coco("Res2Net_50_FPN"),
           "Res2Net"),
    Preset(
        "Res2Net-101-26w-4s",
        "detection",
        _r(DEPTH=101, **_RES2NET),
        _coco("Res2Net_101_C4", "Res2Net_101_DC5", "Res2Net_101_FPN"),
        "Res2Net",
    ),
    # Squeeze-and-excitation (Hu et al., 2018).
    Preset("SE-R-50", "detection", _r(DEPTH=50, SE_RATIO=16, **_TV), _coco("SE_R_50_FPN"), "SENet"),
    Preset("SE-R-101", "detection", _r(DEPTH=101, SE_RATIO=16, **_TV), _coco("SE_R_101_FPN"),
           "SENet"),
    Preset(
        "SE-X-101-32x4d",
        "detection",
        _r(DEPTH=101, SE_RATIO=16, NUM_GROUPS=32, WIDTH_PER_GROUP=4, **_TV),
        _coco("SE_X_101_32x4d_FPN"),
        "SENet",
    ),
    # ResNet-D: deep stem (ResNet-C) and average-pool projections (He et al., 2019).
    Preset("R-50-D", "detection", _r(DEPTH=50, STEM="deep", AVG_DOWN=True, **_TV),
           _coco("R_50_D_FPN"), "Bag of Tricks"),
    Preset("R-101-D", "detection", _r(DEPTH=101, STEM="deep", AVG_DOWN=True, **_TV),
           _coco("R_101_D_FPN"), "Bag of Tricks"),
    # Deformable convolution in res3-res5 (Dai et al., 2017), on MSRA's R-101.
    Preset(
        "R-101-DCN-c3-c5",
        "detection",
        _r(DEPTH=101, DEFORM_ON_PER_STAGE=[False, True, True, True]),
        _coco("R_101_DCN_c3-c5_FPN"),
        "Deformable ConvNets",
    ),
    # ReXNet (Han et al., 2021).
    Preset(
        "ReXNet-100",
        "detection",
        {"MODEL.BACKBONE.NAME": "build_rexnet_backbone", "MODEL.REXNET.WIDTH_MULT": 1.0},
        _coco("ReXNet_100_FPN"),
        "ReXNet",
        # ReXNet has no res5 dilation (DC5) and the C4 head builds ResNet blocks.
        forms=("FPN",),
    ),
    # CIFAR-10 networks (ResNet paper, Sec. 4.2): option-A shortcuts; plain nets without any.
    *[
        Preset(f"CIFAR-ResNet-{d}", "classification", _r(DEPTH=d, **_CIFAR), paper="ResNet",
               num_classes=10, forms=())
        for d in (20, 32, 44, 56, 110, 1202)
    ],
    *[
        Preset(f"CIFAR-Plain-{d}", "classification", _r(DEPTH=d, **{**_CIFAR, "SHORTCUT": "none"}),
               paper="ResNet", num_classes=10, forms=())
        for d in (20, 56, 110)
    ],
    # WRN-28-10 (Wide ResNet paper): pre-activation basic blocks, projections where the width
    # changes, dropout 0.3 between the convs.
    Preset(
        "WRN-28-10",
        "classification",
        _r(DEPTH=28, WIDEN_FACTOR=10, BLOCK_ORDER="preact", DROPOUT=0.3,
           **{**_CIFAR, "SHORTCUT": "B"}),
        paper="Wide ResNet",
        num_classes=10,
        forms=(),
    ),
]  # fmt: skip

PRESETS: dict[str, Preset] = {p.name: p for p in _ROWS}


def apply_preset(cfg: CfgNode, name: str) -> CfgNode:
    """Sets the keys of preset ``name`` on ``cfg`` (in place) and returns it.

    ``cfg`` is typically a base config of one detector form, merged already (e.g.
    configs/Base-RCNN-FPN.yaml). A preset that names a plain backbone builder gets its FPN
    builder (:data:`FPN_BACKBONES`) where ``cfg`` builds an FPN.

    Raises:
        ValueError: an unknown preset (listing the valid names), or a key ``cfg`` lacks (call
            ``add_resnet_backbones_config`` first).
    """
    check_choice("preset", name, PRESETS)
    fpn = cfg.MODEL.BACKBONE.NAME in FPN_BACKBONES.values()
    for key, value in PRESETS[name].keys.items():
        if key == "MODEL.BACKBONE.NAME" and fpn:
            value = FPN_BACKBONES[value]
        config_set(cfg, key, value)
    return cfg


def preset_config(name: str) -> CfgNode:
    """detectron2's default config, with our keys, set to the preset ``name``."""
    return apply_preset(add_resnet_backbones_config(get_cfg()), name)

"""The named networks of the family, one row each, and other libraries' names for them.

A preset is the ``MODEL.RESNETS`` keys (or ``MODEL.REXNET`` keys) that make a variant from the
literature out of the one design, plus the detection configs under ``configs/`` that use it.
Nothing here builds a network by hand: :func:`preset_config` makes a detectron2 config, and the
registered builders (or :class:`~resnet_backbones.modeling.ResNetClassifier`) build it. A test
checks that every listed config builds exactly its preset's network.

A preset also lists the names other libraries give its network (:class:`Arch`: ``resnet50``
for torchvision, ``seresnet50`` for timm, ``R-50`` for MSRA's Caffe2 files), each with the
layout of its published weights: which mapping family reads their names and where their
bottlenecks have the stride. :data:`ARCHS` indexes them by name; a weights file of another
library is read as one of these, and the model-zoo catalog's entries name one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Optional

from detectron2.config import CfgNode, get_cfg

from .config import BASE_CONFIGS, FPN_BACKBONES, add_resnet_backbones_config, detector_form
from .utils import check_choice, config_set

__all__ = [
    "ARCHS",
    "DETECTOR_FORMS",
    "FPN_BACKBONES",
    "PRESETS",
    "Arch",
    "Preset",
    "apply_preset",
    "arch_config",
    "detector_form",
    "from_scratch",
    "get_arch",
    "preset_config",
]

# detectron2's three Faster R-CNN forms (configs/Base-RCNN-{C4,DilatedC5,FPN}.yaml).
DETECTOR_FORMS: tuple[str, ...] = tuple(BASE_CONFIGS)


@dataclass(frozen=True)
class Arch:
    """Another library's name for a preset's network, and the layout of its published weights.

    Attributes:
        name: the library's own name (``resnet50``, ``seresnet50``, ``R-50``).
        source: the format of its weights, "torchvision", "timm" or "msra" (Caffe2 names).
        family: for torchvision and timm, the mapping family
            (:data:`~resnet_backbones.weights.mappings.FAMILIES`) that reads its names; None for
            "msra" (renamed by detectron2's own Caffe2 code).
        stride_in_1x1: its bottlenecks have their stride in the first 1x1 conv (MSRA's Caffe2
            ResNets) rather than the 3x3 conv (torchvision, timm, FAIR's ResNeXt).
        preset: the name of its preset (set by :data:`ARCHS`).
        publisher: who trained and published its weights, where that is not the library of its
            format: "MSRA" or "FAIR" for the Caffe2 files (see :attr:`published_by`).
    """

    name: str
    source: str
    family: Optional[str]
    stride_in_1x1: bool = False
    preset: str = ""
    publisher: Optional[str] = None

    def __post_init__(self) -> None:
        from .weights.mappings import FAMILIES

        check_choice(f"Arch {self.name!r}: source", self.source, ("torchvision", "timm", "msra"))
        if (self.family is None) != (self.source == "msra"):
            raise ValueError(
                f"Arch {self.name!r}: family = {self.family!r} with source = {self.source!r}; "
                "torchvision and timm archs name a mapping family, msra archs none"
            )
        if self.family is not None:
            check_choice(f"Arch {self.name!r}: family", self.family, FAMILIES)
        if (self.publisher is None) != (self.source != "msra"):
            raise ValueError(
                f"Arch {self.name!r}: publisher = {self.publisher!r} with source = "
                f"{self.source!r}; msra (Caffe2) archs name their publisher (MSRA, FAIR), "
                "torchvision and timm archs none (the library is the publisher)"
            )

    @property
    def published_by(self) -> str:
        """Who published its weights: the publisher, else the library of its format."""
        return self.publisher or self.source

    @property
    def config(self) -> dict[str, Any]:
        """Config keys that build the backbone these weights fit, for fine-tuning (frozen BN),
        onto one of our base configs. Those name our ResNet-family builder in each form; a
        network of another builder names it (its FPN builder when FPN is its only form)."""
        preset = PRESETS[self.preset]
        keys = dict(preset.keys)
        builder = keys.pop("MODEL.BACKBONE.NAME")
        if builder == "build_resnet_family_backbone":
            keys["MODEL.RESNETS.STRIDE_IN_1X1"] = self.stride_in_1x1
            keys["MODEL.RESNETS.NORM"] = "FrozenBN"
        else:
            keys["MODEL.BACKBONE.NAME"] = (
                FPN_BACKBONES[builder] if preset.forms == ("FPN",) else builder
            )
            keys["MODEL.REXNET.NORM"] = "FrozenBN"
        return keys


def _tv(name: str) -> Arch:
    """A torchvision ResNet (stride in the 3x3 conv)."""
    return Arch(name, "torchvision", "resnet")


def _timm(name: str, family: str) -> Arch:
    """A timm network (stride in the 3x3 conv)."""
    return Arch(name, "timm", family)


def _msra(name: str, stride_in_1x1: bool, publisher: str = "MSRA") -> Arch:
    """A Caffe2 file of MSRA or FAIR (detectron2's ImageNet files)."""
    return Arch(name, "msra", None, stride_in_1x1, publisher=publisher)


@dataclass(frozen=True)
class Preset:
    """One named network.

    Attributes:
        name: the name from the literature, e.g. "Res2Net-101-26w-4s".
        task: "detection" (an ImageNet-style backbone for detectors) or "classification"
            (a CIFAR network, built with :class:`ResNetClassifier`).
        keys: config keys that differ from detectron2's defaults, e.g.
            ``{"MODEL.RESNETS.DEPTH": 101}``.
        configs: detection configs built on this preset, by their names relative to
            ``configs/`` (:func:`resnet_backbones.model_zoo.get_config_file` gives the file).
        paper: where the network is defined.
        num_classes: classes of the classification head (CIFAR-10: 10).
        forms: the Faster R-CNN forms (:data:`DETECTOR_FORMS`) the network works in; a test
            trains every preset a step in each. Classification presets have none.
        archs: other libraries' names for this network, with their weights' layout.
    """

    name: str
    task: str
    keys: Mapping[str, Any]
    configs: tuple[str, ...] = ()
    paper: str = ""
    num_classes: int = 1000
    forms: tuple[str, ...] = DETECTOR_FORMS
    archs: tuple[Arch, ...] = ()

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
    return tuple(f"COCO-Detection/faster_rcnn_{n}_3x.yaml" for n in names)


# Torchvision/timm layout: stride in the 3x3 conv. MSRA/Caffe2 (detectron2's R-50/R-101
# ImageNet files): stride in the 1x1 conv, detectron2's default.
_TV = dict(STRIDE_IN_1X1=False)
_RES2NET = dict(RES2NET_SCALE=4, RES2NET_WIDTH=26, **_TV)
_CIFAR = dict(STEM="cifar", STEM_OUT_CHANNELS=16, NORM="BN", SHORTCUT="A")

_ROWS = [
    # ResNet v1 (He et al., 2016a).
    Preset("R-18", "detection", _r(DEPTH=18, RES2_OUT_CHANNELS=64, **_TV), paper="ResNet",
           archs=(_tv("resnet18"),)),
    Preset("R-34", "detection", _r(DEPTH=34, RES2_OUT_CHANNELS=64, **_TV), paper="ResNet",
           archs=(_tv("resnet34"),)),
    Preset("R-50", "detection", _r(DEPTH=50), _coco("R_50_C4", "R_50_DC5", "R_50_FPN"), "ResNet",
           archs=(_tv("resnet50"), _msra("R-50", stride_in_1x1=True))),
    Preset(
        "R-101",
        "detection",
        _r(DEPTH=101),
        _coco("R_101_C4", "R_101_DC5", "R_101_FPN")
        + ("faster_rcnn_R101.yaml", "COCO-Detection/faster_rcnn_R_101_C4_resnet_paper.yaml")
        + (
            "PascalVOC-Detection/faster_rcnn_R_101_C4_resnet_paper.yaml",
            "PascalVOC-Detection/faster_rcnn_R_101_FPN.yaml",
        ),
        "ResNet",
        archs=(_tv("resnet101"), _msra("R-101", stride_in_1x1=True)),
    ),
    Preset(
        "R-152", "detection", _r(DEPTH=152, **_TV), _coco("R_152_C4", "R_152_DC5", "R_152_FPN"),
        "ResNet", archs=(_tv("resnet152"),),
    ),
    # ResNet v2, full pre-activation (He et al., 2016b).
    Preset("R-50-v2", "detection", _r(DEPTH=50, BLOCK_ORDER="preact", **_TV),
           paper="Identity Mappings", archs=(_timm("resnetv2_50", "resnetv2"),)),
    Preset(
        "R-101-v2",
        "detection",
        _r(DEPTH=101, BLOCK_ORDER="preact", **_TV),
        _coco("R_101_v2_C4", "R_101_v2_DC5", "R_101_v2_FPN"),
        "Identity Mappings",
        archs=(_timm("resnetv2_101", "resnetv2"),),
    ),
    # ResNeXt (Xie et al., 2017), Wide ResNet (Zagoruyko & Komodakis, 2016).
    Preset("X-50-32x4d", "detection", _r(DEPTH=50, NUM_GROUPS=32, WIDTH_PER_GROUP=4, **_TV),
           paper="ResNeXt", archs=(_tv("resnext50_32x4d"),)),
    Preset(
        "X-101-32x8d",
        "detection",
        _r(DEPTH=101, NUM_GROUPS=32, WIDTH_PER_GROUP=8, **_TV),
        _coco("X_101_32x8d_FPN"),
        "ResNeXt",
        archs=(_tv("resnext101_32x8d"), _msra("X-101-32x8d", stride_in_1x1=False, publisher="FAIR")),
    ),
    Preset("X-101-64x4d", "detection", _r(DEPTH=101, NUM_GROUPS=64, WIDTH_PER_GROUP=4, **_TV),
           paper="ResNeXt", archs=(_tv("resnext101_64x4d"),)),
    Preset(
        "WRN-50-2", "detection", _r(DEPTH=50, WIDTH_PER_GROUP=128, **_TV), _coco("WRN_50_2_FPN"),
        "Wide ResNet", archs=(_tv("wide_resnet50_2"),),
    ),
    Preset("WRN-101-2", "detection", _r(DEPTH=101, WIDTH_PER_GROUP=128, **_TV),
           paper="Wide ResNet", archs=(_tv("wide_resnet101_2"),)),
    # Res2Net (Gao et al., 2019).
    Preset("Res2Net-50-26w-4s", "detection", _r(DEPTH=50, **_RES2NET), _coco("Res2Net_50_FPN"),
           "Res2Net", archs=(_timm("res2net50_26w_4s", "res2net"),)),
    Preset(
        "Res2Net-101-26w-4s",
        "detection",
        _r(DEPTH=101, **_RES2NET),
        _coco("Res2Net_101_C4", "Res2Net_101_DC5", "Res2Net_101_FPN"),
        "Res2Net",
        archs=(_timm("res2net101_26w_4s", "res2net"),),
    ),
    # Squeeze-and-excitation (Hu et al., 2018).
    Preset("SE-R-50", "detection", _r(DEPTH=50, SE_RATIO=16, **_TV), _coco("SE_R_50_FPN"), "SENet",
           archs=(_timm("seresnet50", "seresnet"),)),
    Preset("SE-R-101", "detection", _r(DEPTH=101, SE_RATIO=16, **_TV), _coco("SE_R_101_FPN"),
           "SENet"),
    Preset("SE-X-50-32x4d", "detection",
           _r(DEPTH=50, SE_RATIO=16, NUM_GROUPS=32, WIDTH_PER_GROUP=4, **_TV), paper="SENet",
           archs=(_timm("seresnext50_32x4d", "seresnet"),)),
    Preset(
        "SE-X-101-32x4d",
        "detection",
        _r(DEPTH=101, SE_RATIO=16, NUM_GROUPS=32, WIDTH_PER_GROUP=4, **_TV),
        _coco("SE_X_101_32x4d_FPN"),
        "SENet",
        archs=(_timm("seresnext101_32x4d", "seresnet"),),
    ),
    # ResNet-D: deep stem (ResNet-C) and average-pool projections (He et al., 2019).
    Preset("R-50-D", "detection", _r(DEPTH=50, STEM="deep", AVG_DOWN=True, **_TV),
           _coco("R_50_D_FPN"), "Bag of Tricks", archs=(_timm("resnet50d", "resnet_d"),)),
    Preset("R-101-D", "detection", _r(DEPTH=101, STEM="deep", AVG_DOWN=True, **_TV),
           _coco("R_101_D_FPN"), "Bag of Tricks", archs=(_timm("resnet101d", "resnet_d"),)),
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
        archs=(_timm("rexnet_100", "rexnet"),),
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

# Another library's name -> its row, linked to its preset. A new network of another library is
# one more Arch in its preset's row.
ARCHS: dict[str, Arch] = {
    arch.name: dataclasses.replace(arch, preset=preset.name)
    for preset in _ROWS
    for arch in preset.archs
}
if len(ARCHS) != sum(len(p.archs) for p in _ROWS):
    raise RuntimeError("two presets list the same arch name")


def get_arch(name: str) -> Arch:
    """The row of another library's network ``name``; a ValueError lists the valid names."""
    check_choice("arch", name, ARCHS, quote=False)
    return ARCHS[name]


def apply_preset(cfg: CfgNode, name: str) -> CfgNode:
    """Sets the keys of preset ``name`` on ``cfg`` (in place) and returns it: the network only,
    not its weights or input (:func:`preset_config` gives those too).

    ``cfg`` is typically a base config of one detector form, merged already, e.g.::

        cfg = add_resnet_backbones_config(get_cfg())
        cfg.merge_from_file("configs/Base-RCNN-C4.yaml")
        apply_preset(cfg, "Res2Net-50-26w-4s")

    A preset that names a plain backbone builder gets its FPN builder (:data:`FPN_BACKBONES`)
    where ``cfg`` builds an FPN, and detectron2's C4 head ``Res5ROIHeads`` (three plain
    bottlenecks, whatever the backbone) becomes ``Res5FamilyROIHeads`` (res5 of the preset's own
    blocks; the same parameters for a plain ResNet).

    Raises:
        ValueError: an unknown preset (listing the valid names); a detection preset in a form it
            does not work in (listing its forms); a key ``cfg`` lacks (call
            ``add_resnet_backbones_config`` first).
    """
    check_choice("preset", name, PRESETS)
    preset = PRESETS[name]
    form = detector_form(cfg)
    if preset.task == "detection" and form is not None and form not in preset.forms:
        raise ValueError(
            f"preset {name!r} does not work in the {form} form of this config; its forms: "
            f"{', '.join(preset.forms)}. Merge configs/{BASE_CONFIGS[preset.forms[0]]} instead, "
            f"or use preset_config({name!r}, form={preset.forms[0]!r})"
        )
    return _set_keys(cfg, preset, fpn=form == "FPN")


def _set_keys(cfg: CfgNode, preset: Preset, *, fpn: bool) -> CfgNode:
    """The preset's keys on ``cfg``, its FPN builder where ``fpn``; our C4 head for
    detectron2's."""
    for key, value in preset.keys.items():
        if key == "MODEL.BACKBONE.NAME" and fpn:
            value = FPN_BACKBONES[value]
        config_set(cfg, key, value)
    # detectron2's C4 head builds three plain bottlenecks whatever the backbone; ours builds res5
    # of the backbone's own kind (equal to detectron2's for a plain ResNet).
    if cfg.MODEL.ROI_HEADS.NAME == "Res5ROIHeads":
        cfg.MODEL.ROI_HEADS.NAME = "Res5FamilyROIHeads"
    return cfg


def _network_config(name: str) -> CfgNode:
    """detectron2's default config with our keys and preset ``name``'s network (its plain
    backbone builder): the config of a classifier or a conversion, not of a detector."""
    return _set_keys(add_resnet_backbones_config(get_cfg()), PRESETS[name], fpn=False)


def from_scratch(cfg: CfgNode) -> CfgNode:
    """Makes ``cfg`` (in place) train its backbone from random initialisation: no
    ``MODEL.WEIGHTS``, BN (FrozenBN of random weights would normalise nothing) and no frozen
    stage. Returns ``cfg``."""
    from .config import backbone_section

    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    config_set(cfg, f"{backbone_section(cfg)}.NORM", "BN")
    return cfg


def preset_config(name: str, form: Optional[str] = None) -> CfgNode:
    """The detectron2 config of preset ``name``.

    For a detection preset: a complete Faster R-CNN in ``form`` ("C4", "DC5" or "FPN"; default
    "FPN", the one form every detection preset works in), merged on configs/Base-RCNN-*.yaml,
    with the C4 head of the preset's own blocks and, where the preset has default weights
    (:func:`~resnet_backbones.weights.catalog.default_weights`), ``MODEL.WEIGHTS`` naming them
    in the zoo and the input format, pixel statistics and stride placement they were trained
    with (so they load without contradiction). Without default weights (SE-R-101) the network
    trains from scratch: ``MODEL.WEIGHTS`` empty, BN and no frozen stage.

    For a classification preset (the CIFAR networks), ``form`` must be None: detectron2's
    default config with the preset's ``MODEL.RESNETS`` keys, for
    :class:`~resnet_backbones.modeling.ResNetClassifier`.

    Raises:
        ValueError: an unknown preset (listing the valid ones), a form the preset does not work
            in (listing its forms), or a form for a classification preset.
    """
    check_choice("preset", name, PRESETS)
    preset = PRESETS[name]
    if preset.task == "classification":
        if form is not None:
            detection = [n for n, p in PRESETS.items() if p.task == "detection"]
            raise ValueError(
                f"form = {form!r}: preset {name!r} is a classification network (CIFAR), which has "
                f"no res5 for a detector; call preset_config({name!r}) for its classifier config, "
                f"or use a detection preset: {', '.join(detection)}"
            )
        return _network_config(name)
    form = "FPN" if form is None else form
    check_choice(f"preset {name!r}: form", form, preset.forms)
    cfg = add_resnet_backbones_config(get_cfg())
    from .model_zoo import base_config_file

    cfg.merge_from_file(base_config_file(form))
    apply_preset(cfg, name)
    from .weights.catalog import default_weights
    from .weights.resolve import ZOO_PREFIX

    entry = default_weights(name)
    if entry is None:
        return from_scratch(cfg)
    cfg.MODEL.WEIGHTS = ZOO_PREFIX + entry.name
    for key, value in entry.input.config.items():
        config_set(cfg, key, value)
    # The weights' layout (stride placement) and FrozenBN, as for fine-tuning them.
    layout = ("MODEL.RESNETS.STRIDE_IN_1X1", "MODEL.RESNETS.NORM", "MODEL.REXNET.NORM")
    for key, value in ARCHS[entry.arch].config.items():
        if key in layout:
            config_set(cfg, key, value)
    return cfg


def arch_config(name: str) -> CfgNode:
    """The config of arch ``name``'s preset (its plain backbone builder), in the arch's layout."""
    arch = get_arch(name)
    cfg = _network_config(arch.preset)
    for key, value in arch.config.items():
        if key != "MODEL.BACKBONE.NAME":
            config_set(cfg, key, value)
    return cfg

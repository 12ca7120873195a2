"""The one-line Python API: backbones and detectors by preset name, without writing a config.

    import resnet_backbones as rb

    backbone = rb.create_backbone("R-101", weights=True)  # a detectron2 Backbone, zoo weights
    features = backbone(images)                             # {"res2": ..., "res5": ...}
    model, cfg = rb.create_detector("R-50", form="FPN", num_classes=3)
    rb.list_presets(), rb.list_weights(preset="R-50")

Everything here is a thin layer over the config path that the tools use:
:func:`~resnet_backbones.presets.preset_config` makes the config, detectron2's registries build
it, and :class:`~resnet_backbones.weights.checkpoint.FamilyCheckpointer` loads the weights
(read safely, renamed, checked strictly against the network and the config). The config stays
reachable: ``backbone.cfg`` and the second value of :func:`create_detector`; it says how to feed
the network (``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN``, ``MODEL.PIXEL_STD``).
"""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from detectron2.config import CfgNode
from torch import nn

from .utils import check_choice, config_get, config_set

__all__ = [
    "create_backbone",
    "create_detector",
    "list_presets",
    "list_weights",
    "preset_default_weights",
    "weights_config",
]

Weights = Union[None, bool, str]


def list_presets(task: Optional[str] = None) -> list[str]:
    """The names of the presets (the named networks), in the order of the table, optionally
    only those of ``task`` ("detection" or "classification")."""
    from .presets import PRESETS

    if task is not None:
        check_choice("task", task, ("detection", "classification"))
    return [name for name, preset in PRESETS.items() if task in (None, preset.task)]


def list_weights(preset: Optional[str] = None) -> list[str]:
    """The names of the model-zoo weights (``resnet_backbones://NAME``), optionally only those
    that fit the network of ``preset``."""
    from .presets import ARCHS, PRESETS
    from .weights.catalog import CATALOG

    if preset is not None:
        check_choice("preset", preset, PRESETS)
    return [
        name
        for name, entry in CATALOG.items()
        if preset is None or ARCHS[entry.arch].preset == preset
    ]


def preset_default_weights(preset: str):
    """The model-zoo entry a preset uses by default (``weights=True``), or None: a preset with
    no published weights, or a classification network."""
    from .presets import PRESETS
    from .weights.catalog import default_weights

    check_choice("preset", preset, PRESETS)
    return default_weights(preset) if PRESETS[preset].task == "detection" else None


def _zoo_path(preset: str, weights: Weights) -> Optional[str]:
    """``weights`` as a ``MODEL.WEIGHTS`` path: None for none, the preset's default zoo weights
    for True, ``resnet_backbones://NAME`` for a catalog name, any other string as it is."""
    from .weights.catalog import CATALOG
    from .weights.resolve import ZOO_PREFIX

    if weights is None or weights is False:
        return None
    if weights is True:
        entry = preset_default_weights(preset)
        if entry is None:
            raise ValueError(
                f"weights=True: preset {preset!r} has no default weights in the model zoo; "
                "pass a weights file or URL, or use a preset that has some (`resnet-backbones "
                "weights` lists them)"
            )
        return ZOO_PREFIX + entry.name
    if not isinstance(weights, str) or not weights:
        raise TypeError(
            f"weights = {weights!r} is not valid; give True (the preset's default zoo weights), "
            "a zoo name, a local path, a URL, or None"
        )
    return ZOO_PREFIX + weights if weights in CATALOG else weights


def weights_config(cfg: CfgNode, preset: str, weights: Weights) -> CfgNode:
    """Sets ``MODEL.WEIGHTS`` of ``cfg`` (in place) to ``weights`` (see :func:`create_backbone`;
    None: random initialisation, with BN and nothing frozen,
    :func:`~resnet_backbones.presets.from_scratch`)
    and, for model-zoo weights, the keys that feed the network as they were trained (input
    format, pixel statistics, stride placement, FrozenBN). Zoo weights of another network are
    refused here, before anything is downloaded."""
    from .presets import ARCHS, from_scratch
    from .weights.catalog import fitting_config
    from .weights.resolve import catalog_entry_for

    path = _zoo_path(preset, weights)
    if path is None:  # preset_config names the preset's default weights and freezes for them
        return from_scratch(cfg)
    entry = catalog_entry_for(path)
    if entry is not None:
        fits = ARCHS[entry.arch].preset
        if fits != preset:
            raise ValueError(
                f"weights = {weights!r} are {entry.arch} weights, for preset {fits!r}, not for "
                f"{preset!r}; weights of {preset!r}: "
                + (", ".join(list_weights(preset)) or "none in the zoo")
            )
        for key, value in fitting_config(entry.arch).items():
            if key != "MODEL.BACKBONE.NAME":
                config_set(cfg, key, value)
    cfg.MODEL.WEIGHTS = path
    return cfg


def _load(model: nn.Module, cfg: CfgNode) -> None:
    from .weights.checkpoint import FamilyCheckpointer

    if cfg.MODEL.WEIGHTS:
        FamilyCheckpointer(model, cfg=cfg).load(cfg.MODEL.WEIGHTS)


class _Holder(nn.Module):
    """A backbone under the name a detector gives it, so that the weights pipeline places the
    weights exactly as it does for a detector (``backbone.*``, ``backbone.bottom_up.*``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone


def create_backbone(
    name: str,
    *,
    weights: Weights = None,
    out_features: Optional[Sequence[str]] = None,
    fpn: bool = False,
    freeze_at: int = 0,
    norm: Optional[str] = None,
):
    """The backbone of preset ``name``, as a detectron2 ``Backbone`` (an ``nn.Module`` whose
    forward maps an ``(N, 3, H, W)`` tensor to a dict of feature maps).

    Args:
        name: a preset (:func:`list_presets`): "R-101", "X-101-32x8d", "ReXNet-100" ...
        weights: None: random initialisation (BN, nothing frozen). True: the preset's default
            model-zoo weights.
            A zoo name (:func:`list_weights`), a local file, an https:// URL, or any other
            ``MODEL.WEIGHTS`` path. Zoo weights also set the input format, pixel statistics
            and stride placement they were trained with (see ``backbone.cfg``).
        out_features: the stages to return (default: all of them, ``res2``..``res5``; for a
            CIFAR network ``res2``..``res4``). With ``fpn=True``: the stages the FPN reads.
        fpn: an FPN on top (outputs ``p2``..``p6``, 256 channels), as in Faster R-CNN FPN.
        freeze_at: stages frozen for fine-tuning, as ``MODEL.BACKBONE.FREEZE_AT`` (0: none,
            1: the stem, 2: the stem and res2 ...).
        norm: the normalisation layers, as ``MODEL.RESNETS.NORM`` ("BN", "FrozenBN", "GN",
            "SyncBN" ...); default: BN without weights, FrozenBN (for fine-tuning) with them.

    Returns:
        the backbone in training mode, with ``backbone.cfg``: the (frozen) config it was built
        from, which says how to feed it (``INPUT.FORMAT``, ``MODEL.PIXEL_MEAN/STD``).

    Raises:
        ValueError: an unknown preset, form, stage or norm (naming the valid ones), zoo weights
            of another network, or weights that do not fit (see the weights errors).
    """
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    from .config import backbone_section, clean_backbone_config
    from .presets import PRESETS, preset_config

    check_choice("preset", name, PRESETS)
    preset = PRESETS[name]
    if fpn and "FPN" not in preset.forms:
        raise ValueError(
            f"fpn=True: preset {name!r} has no FPN form ({preset.task} network); presets with "
            f"one: {', '.join(list_presets('detection'))}"
        )
    cfg = preset_config(name, form="FPN") if fpn else preset_config(name)
    weights_config(cfg, name, weights)
    section = backbone_section(cfg)  # MODEL.RESNETS or MODEL.REXNET
    if norm is not None:
        config_set(cfg, f"{section}.NORM", norm)
    plain = clean_backbone_config(cfg)  # every stage, the plain builder
    stages = list(config_get(plain, f"{section}.OUT_FEATURES"))
    if out_features is not None:
        for stage in out_features:
            check_choice("out_features", stage, stages)
        stages = list(out_features)
    if fpn:  # preset_config's FPN form: the FPN builder reads these stages
        cfg.MODEL.FPN.IN_FEATURES = stages
    else:
        cfg = plain
    config_set(cfg, f"{section}.OUT_FEATURES", stages)
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    cfg.freeze()
    backbone = BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(
        cfg, ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    )
    _load(_Holder(backbone), cfg)
    backbone.cfg = cfg
    return backbone


def create_detector(
    name: str,
    *,
    form: str = "FPN",
    num_classes: int = 80,
    weights: Weights = None,
    device: Optional[str] = None,
) -> tuple[nn.Module, CfgNode]:
    """A Faster R-CNN with the backbone of preset ``name``, and its config.

    Args:
        name: a detection preset (:func:`list_presets` with ``"detection"``).
        form: "FPN", "C4" or "DC5" (detectron2's three Faster R-CNN forms).
        num_classes: object classes of the box head (``MODEL.ROI_HEADS.NUM_CLASSES``).
        weights: as in :func:`create_backbone`; ImageNet weights fill the backbone (and a C4
            model's res5 head), a detectron2 checkpoint the whole model.
        device: "cpu", "cuda" ...; default: CUDA where available, else the CPU.

    Returns:
        ``(model, cfg)``: the model in training mode, on ``device``, and the frozen config it
        was built from (train it with :class:`resnet_backbones.engine.Trainer`, or save it with
        ``cfg.dump()`` for ``resnet-backbones-train --config``).
    """
    from detectron2.modeling import build_model

    from .presets import preset_config
    from .utils import check_positive_int

    check_positive_int("num_classes", num_classes)
    cfg = preset_config(name, form=form)
    weights_config(cfg, name, weights)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.DEVICE = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg.freeze()
    model = build_model(cfg)
    _load(model, cfg)
    return model, cfg

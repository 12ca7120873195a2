"""Architectures whose published weights we convert: mapping table and config, one row each.

A row says how to read an architecture's weights (the format and, for torchvision and timm,
the family of :data:`~resnet_backbones.weights.formats.SOURCE_TABLES`) and the config that
builds the matching backbone and feeds it as it was trained: depth and widths, stride
placement, input format and pixel statistics. tools/convert_weights.py writes that config as
a YAML fragment beside the converted file; the model-zoo catalog reuses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Optional

import yaml
from torch import nn

from .formats import SOURCE_TABLES

__all__ = ["ARCHS", "Arch", "arch_config", "build_backbone", "config_yaml", "get_arch"]

# torchvision and timm: RGB in 0..255, normalised by the ImageNet mean and std (x 255).
IMAGENET_RGB: Mapping[str, Any] = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [123.675, 116.28, 103.53],
    "MODEL.PIXEL_STD": [58.395, 57.12, 57.375],
}
# MSRA's Caffe2 ResNets (R-50.pkl, R-101.pkl): BGR, mean subtracted, no scaling; detectron2's
# defaults.
MSRA_BGR: Mapping[str, Any] = {
    "INPUT.FORMAT": "BGR",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [1.0, 1.0, 1.0],
}
# timm's ResNet v2 weights (resnetv2_50.a1h_in1k ...): RGB scaled to [-1, 1].
HALF_RGB: Mapping[str, Any] = {
    "INPUT.FORMAT": "RGB",
    "MODEL.PIXEL_MEAN": [127.5, 127.5, 127.5],
    "MODEL.PIXEL_STD": [127.5, 127.5, 127.5],
}
# FAIR's ResNeXt (X-101-32x8d.pkl): BGR, normalised by the ImageNet mean and std (x 255).
FAIR_BGR: Mapping[str, Any] = {
    "INPUT.FORMAT": "BGR",
    "MODEL.PIXEL_MEAN": [103.530, 116.280, 123.675],
    "MODEL.PIXEL_STD": [57.375, 57.120, 58.395],
}


@dataclass(frozen=True)
class Arch:
    """One architecture of another library and the config of its equivalent backbone.

    Attributes:
        name: the source library's name (``resnet50``, ``R-50``).
        source: the format of its published weights ("torchvision", "timm" or "msra").
        family: for torchvision and timm, the key of ``SOURCE_TABLES`` that reads its names;
            None for "msra" (Caffe2 names, renamed by detectron2's own code).
        config: config key -> value (``"MODEL.RESNETS.DEPTH": 50``).
        backbone: the registered builder of its plain (non-FPN) backbone; ``config`` may name
            the FPN builder, for a network that only works under an FPN (ReXNet).
    """

    name: str
    source: str
    family: Optional[str]
    config: Mapping[str, Any]
    backbone: str = "build_resnet_family_backbone"

    def __post_init__(self) -> None:
        if (self.family is None) != (self.source == "msra"):
            raise ValueError(
                f"Arch {self.name!r}: family = {self.family!r} with source = {self.source!r}; "
                "torchvision and timm rows name a family of SOURCE_TABLES, msra rows none"
            )
        if self.family is not None and self.family not in SOURCE_TABLES:
            raise ValueError(
                f"Arch {self.name!r}: family = {self.family!r} is not valid; valid values: "
                f"{', '.join(SOURCE_TABLES)}"
            )


def _row(name: str, source: str, family: Optional[str], base: Mapping[str, Any], **resnets) -> Arch:
    config = {**base, **{f"MODEL.RESNETS.{k.upper()}": v for k, v in resnets.items()}}
    return Arch(name, source, family, config)


def _torchvision(name: str, depth: int, **resnets) -> Arch:
    """A torchvision ResNet: stride in the 3x3 conv, frozen BN for fine-tuning."""
    if depth < 50:
        resnets.setdefault("res2_out_channels", 64)
    return _row(
        name, "torchvision", "resnet", IMAGENET_RGB,
        depth=depth, stride_in_1x1=False, norm="FrozenBN", **resnets,
    )  # fmt: skip


def _timm_resnet_d(name: str, depth: int) -> Arch:
    """timm's ResNet-D: deep stem, average-pooled shortcuts, stride in the 3x3 conv."""
    return _row(
        name, "timm", "resnet_d", IMAGENET_RGB,
        depth=depth, stem="deep", avg_down=True, stride_in_1x1=False, norm="FrozenBN",
    )  # fmt: skip


def _timm(name: str, family: str, depth: int, pixels=IMAGENET_RGB, **resnets) -> Arch:
    """A timm ResNet variant: stride in the 3x3 conv, frozen BN for fine-tuning. ``pixels``: the
    statistics of timm's default pretrained weights for it."""
    return _row(
        name, "timm", family, pixels, depth=depth, stride_in_1x1=False, norm="FrozenBN", **resnets
    )


_ROWS = (
    _torchvision("resnet18", 18),
    _torchvision("resnet34", 34),
    _torchvision("resnet50", 50),
    _torchvision("resnet101", 101),
    _torchvision("resnet152", 152),
    _torchvision("resnext50_32x4d", 50, num_groups=32, width_per_group=4),
    _torchvision("resnext101_32x8d", 101, num_groups=32, width_per_group=8),
    _torchvision("resnext101_64x4d", 101, num_groups=64, width_per_group=4),
    _torchvision("wide_resnet50_2", 50, width_per_group=128),
    _torchvision("wide_resnet101_2", 101, width_per_group=128),
    _timm_resnet_d("resnet50d", 50),
    _timm_resnet_d("resnet101d", 101),
    _timm("seresnet50", "seresnet", 50, se_ratio=16),
    _timm("seresnext50_32x4d", "seresnet", 50, se_ratio=16, num_groups=32, width_per_group=4),
    _timm("seresnext101_32x4d", "seresnet", 101, se_ratio=16, num_groups=32, width_per_group=4),
    _timm("res2net50_26w_4s", "res2net", 50, res2net_scale=4, res2net_width=26),
    _timm("res2net101_26w_4s", "res2net", 101, res2net_scale=4, res2net_width=26),
    _timm("resnetv2_50", "resnetv2", 50, HALF_RGB, block_order="preact"),
    _timm("resnetv2_101", "resnetv2", 101, HALF_RGB, block_order="preact"),
    # ReXNet-1.0x: only under an FPN (its fragment names the FPN builder).
    Arch(
        "rexnet_100",
        "timm",
        "rexnet",
        {
            **IMAGENET_RGB,
            "MODEL.BACKBONE.NAME": "build_rexnet_fpn_backbone",
            "MODEL.REXNET.WIDTH_MULT": 1.0,
            "MODEL.REXNET.NORM": "FrozenBN",
        },
        backbone="build_rexnet_backbone",
    ),
    # MSRA's original Caffe2 ResNets: stride in the 1x1 conv.
    _row("R-50", "msra", None, MSRA_BGR, depth=50, stride_in_1x1=True, norm="FrozenBN"),
    _row("R-101", "msra", None, MSRA_BGR, depth=101, stride_in_1x1=True, norm="FrozenBN"),
    # FAIR's ResNeXt, trained with fb.torch's recipe (stride in the 3x3 conv), Caffe2 names.
    _row(
        "X-101-32x8d",
        "msra",
        None,
        FAIR_BGR,
        depth=101,
        stride_in_1x1=False,
        num_groups=32,
        width_per_group=8,
        norm="FrozenBN",
    ),  # fmt: skip
)

# Architecture name -> its row; a new architecture is one more row.
ARCHS: dict[str, Arch] = {arch.name: arch for arch in _ROWS}


def get_arch(name: str) -> Arch:
    """The row of ``name``; a ValueError lists the valid names."""
    if name not in ARCHS:
        raise ValueError(f"arch = {name!r} is not valid; valid values: {', '.join(ARCHS)}")
    return ARCHS[name]


def config_yaml(config: Mapping[str, Any]) -> str:
    """``{"MODEL.RESNETS.DEPTH": 50}`` as the YAML a detectron2 config merges."""
    nested: dict[str, Any] = {}
    for key, value in config.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(nested, sort_keys=False, default_flow_style=None)


def build_backbone(arch: Arch) -> nn.Module:
    """The backbone ``arch.config`` builds (res2..res5, nothing frozen), with fresh weights."""
    from ..config import build_clean_backbone

    return build_clean_backbone(arch_config(arch))


def arch_config(arch: Arch):
    """detectron2's default config, with our keys, merged with ``arch.config``; res2..res5 out,
    nothing frozen, on the CPU."""
    from detectron2.config import get_cfg

    from ..config import add_resnet_backbones_config, clean_backbone_config

    cfg = add_resnet_backbones_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_other_cfg(cfg.load_cfg(config_yaml(arch.config)))
    cfg.MODEL.BACKBONE.NAME = arch.backbone
    return clean_backbone_config(cfg)

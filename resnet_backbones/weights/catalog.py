"""The model zoo: ``MODEL.WEIGHTS: resnet_backbones://<name>`` loads one of these weights.

Every entry is a published ImageNet-1k checkpoint with what is needed to use it (URL, format,
architecture, the config that fits it) and to cite it (parameters, top-1 as published with its
source and test protocol, licence). Nothing here was measured by us: the figures are the
publishers', and tests check the parameter counts against the models our configs build (and,
for torchvision and timm, against those libraries' own metadata and models).

Set ``RESNET_BACKBONES_ZOO_BASE_URL`` to fetch every file from a mirror instead (the file name
of each URL, under that base).

timm's pretrained configs (timm 1.0.31; a test checks them) give a Hugging Face Hub repository
for the torchvision and timm entries, ``timm/<catalog name>`` (``hf_hub_id``);
``MODEL.WEIGHTS hf-hub:timm/<name>`` fetches it from there, with the entry's input and layout
checks. No Hub revision is pinned (``hf_hub_revision`` is None): timm's configs pin none, and no
offline source we have gives the commits, so the repository's default branch is fetched. The
Hub's files are other files than the URLs' here, so the SHA-256 prefixes do not apply to them.
"""

from __future__ import annotations

from typing import Optional

from .download import hash_prefix_from_url
from .entry import PixelInput, WeightsEntry

__all__ = [
    "CATALOG",
    "FAIR_BGR",
    "HALF_RGB",
    "IMAGENET_RGB",
    "MSRA_BGR",
    "DEFAULT_WEIGHTS",
    "arch_input",
    "default_weights",
    "fitting_config",
]

# How the publishers fed their networks: channel order, then mean and std in 0..255 units.
# torchvision and most of timm: RGB normalised by the ImageNet mean and std (x 255).
IMAGENET_RGB = PixelInput("RGB", (123.675, 116.28, 103.53), (58.395, 57.12, 57.375))
# MSRA's Caffe2 ResNets (R-50.pkl, R-101.pkl): BGR, mean subtracted, no scaling; detectron2's
# defaults.
MSRA_BGR = PixelInput("BGR", (103.530, 116.280, 123.675), (1.0, 1.0, 1.0))
# timm's ResNet v2 weights (resnetv2_50.a1h_in1k ...): RGB scaled to [-1, 1].
HALF_RGB = PixelInput("RGB", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5))
# FAIR's ResNeXt (X-101-32x8d.pkl): BGR, normalised by the ImageNet mean and std (x 255).
FAIR_BGR = PixelInput("BGR", (103.530, 116.280, 123.675), (57.375, 57.120, 58.395))

# ----------------------------------------------------------------------------------------------
# torchvision (torchvision/models/resnet.py, ``*_Weights`` enums): file names carry the first 8
# hex digits of the SHA-256; ``num_params`` and ``acc@1`` are the enums' ``meta``.
# ----------------------------------------------------------------------------------------------
_TV_LICENSE = "BSD-3-Clause (torchvision's)"
_TV_LICENSE_SOURCE = (
    "torchvision is BSD-3-Clause; its README ('Pre-trained Model License') adds that pre-trained "
    "weights may carry terms derived from their training data (ImageNet)"
)
_TV_PROTOCOL = {
    256: "ImageNet-1k val, single crop: resize 256, center crop 224, bilinear",
    232: "ImageNet-1k val, single crop: resize 232, center crop 224, bilinear",
}


def _tv(arch: str, enum: str, version: int, url: str, num_params: int, top1: float, resize: int):
    tag = "tv_in1k" if version == 1 else "tv2_in1k"
    return WeightsEntry(
        name=f"{arch}.{tag}",
        url=url,
        arch=arch,
        input=IMAGENET_RGB,
        sha256_prefix=hash_prefix_from_url(url),
        num_params=num_params,
        num_params_source="torchvision",
        top1=top1,
        top1_source=f"torchvision {enum}.IMAGENET1K_V{version} meta['_metrics']",
        test_protocol=_TV_PROTOCOL[resize],
        license=_TV_LICENSE,
        license_source=_TV_LICENSE_SOURCE,
        non_commercial=False,
        torchvision_weights=f"{enum}.IMAGENET1K_V{version}",
        hf_hub_id=f"timm/{arch}.{tag}",
    )


_TV_URL = "https://download.pytorch.org/models/"
_TORCHVISION = (
    _tv("resnet18", "ResNet18_Weights", 1, _TV_URL + "resnet18-f37072fd.pth", 11689512, 69.758, 256),
    _tv("resnet34", "ResNet34_Weights", 1, _TV_URL + "resnet34-b627a593.pth", 21797672, 73.314, 256),
    _tv("resnet50", "ResNet50_Weights", 1, _TV_URL + "resnet50-0676ba61.pth", 25557032, 76.130, 256),
    _tv("resnet50", "ResNet50_Weights", 2, _TV_URL + "resnet50-11ad3fa6.pth", 25557032, 80.858, 232),
    _tv("resnet101", "ResNet101_Weights", 1, _TV_URL + "resnet101-63fe2227.pth", 44549160, 77.374, 256),
    _tv("resnet101", "ResNet101_Weights", 2, _TV_URL + "resnet101-cd907fc2.pth", 44549160, 81.886, 232),
    _tv("resnet152", "ResNet152_Weights", 1, _TV_URL + "resnet152-394f9c45.pth", 60192808, 78.312, 256),
    _tv("resnet152", "ResNet152_Weights", 2, _TV_URL + "resnet152-f82ba261.pth", 60192808, 82.284, 232),
    _tv("resnext50_32x4d", "ResNeXt50_32X4D_Weights", 1, _TV_URL + "resnext50_32x4d-7cdf4587.pth", 25028904, 77.618, 256),
    _tv("resnext50_32x4d", "ResNeXt50_32X4D_Weights", 2, _TV_URL + "resnext50_32x4d-1a0047aa.pth", 25028904, 81.198, 232),
    _tv("resnext101_32x8d", "ResNeXt101_32X8D_Weights", 1, _TV_URL + "resnext101_32x8d-8ba56ff5.pth", 88791336, 79.312, 256),
    _tv("resnext101_32x8d", "ResNeXt101_32X8D_Weights", 2, _TV_URL + "resnext101_32x8d-110c445d.pth", 88791336, 82.834, 232),
    _tv("resnext101_64x4d", "ResNeXt101_64X4D_Weights", 1, _TV_URL + "resnext101_64x4d-173b62eb.pth", 83455272, 83.246, 232),
    _tv("wide_resnet50_2", "Wide_ResNet50_2_Weights", 1, _TV_URL + "wide_resnet50_2-95faca4d.pth", 68883240, 78.468, 256),
    _tv("wide_resnet50_2", "Wide_ResNet50_2_Weights", 2, _TV_URL + "wide_resnet50_2-9ba9bcbe.pth", 68883240, 81.602, 232),
    _tv("wide_resnet101_2", "Wide_ResNet101_2_Weights", 1, _TV_URL + "wide_resnet101_2-32ee1156.pth", 126886696, 78.848, 256),
    _tv("wide_resnet101_2", "Wide_ResNet101_2_Weights", 2, _TV_URL + "wide_resnet101_2-d733dc28.pth", 126886696, 82.510, 232),
)  # fmt: skip

# ----------------------------------------------------------------------------------------------
# detectron2's ImageNet backbones (its MODEL_ZOO.md, "ImageNet Pretrained Models"): Caffe2
# names; no hash is published for them. Licence: detectron2's MODEL_ZOO.md, "License".
# ----------------------------------------------------------------------------------------------
_D2_URL = "https://dl.fbaipublicfiles.com/detectron2/ImageNetPretrained/"
_D2_LICENSE = "CC BY-SA 3.0"
_D2_LICENSE_SOURCE = (
    "detectron2 MODEL_ZOO.md, 'License': all models available for download through it"
)
_MSRA_TOP1 = (
    "MSRA's original Caffe model, of which the file is a conversion (KaimingHe/"
    "deep-residual-networks README, 1-crop top-1 error {error}%)"
)
_MSRA_PROTOCOL = "ImageNet-1k val, single crop: resize 256, center crop 224 (Caffe model)"


def _d2(name: str, arch: str, path: str, pixels: PixelInput, num_params: int, top1, top1_source: str, protocol: str):  # fmt: skip
    return WeightsEntry(
        name=name,
        url=_D2_URL + path,
        arch=arch,
        input=pixels,
        num_params=num_params,
        num_params_source="architecture (torchvision's count of the same network)",
        top1=top1,
        top1_source=top1_source,
        test_protocol=protocol,
        license=_D2_LICENSE,
        license_source=_D2_LICENSE_SOURCE,
        non_commercial=False,
    )


_DETECTRON2 = (
    _d2("R-50.msra_in1k", "R-50", "MSRA/R-50.pkl", MSRA_BGR, 25557032, 75.3,
        _MSRA_TOP1.format(error=24.7), _MSRA_PROTOCOL),
    _d2("R-101.msra_in1k", "R-101", "MSRA/R-101.pkl", MSRA_BGR, 44549160, 76.4,
        _MSRA_TOP1.format(error=23.6), _MSRA_PROTOCOL),
    _d2("X-101-32x8d.fair_in1k", "X-101-32x8d", "FAIR/X-101-32x8d.pkl", FAIR_BGR, 88791336, None,
        "not published (detectron2: 'ResNeXt-101-32x8d model trained with Caffe2 at FB')",
        "none published"),
)  # fmt: skip

# ----------------------------------------------------------------------------------------------
# timm: its GitHub release files, whose names carry the first 8 hex digits of the SHA-256 (timm
# 1.0 serves the same weights from the Hugging Face hub as <name>.<tag>). Top-1 and parameter
# counts: timm's results/results-imagenet.csv (huggingface/pytorch-image-models, commit
# 0173a139), evaluated at the listed size and crop. num_params is the exact count of timm's
# model, which the CSV prints in millions.
# ----------------------------------------------------------------------------------------------
_TIMM_URL = "https://github.com/rwightman/pytorch-image-models/releases/download/"
_TIMM_TOP1 = "timm results/results-imagenet.csv (commit 0173a139), {model}"
_TIMM_LICENSE = "Apache-2.0"
_TIMM_LICENSE_SOURCE = (
    "timm's pretrained config; timm's README ('Licenses'): assume that ImageNet's terms apply to "
    "weights trained on it"
)


def _timm(name: str, url: str, num_params: int, top1: float, protocol: str, license: str = _TIMM_LICENSE, license_source: str = _TIMM_LICENSE_SOURCE, pixels: PixelInput = IMAGENET_RGB):  # fmt: skip
    return WeightsEntry(
        name=name,
        url=url,
        arch=name.split(".")[0],
        input=pixels,
        sha256_prefix=hash_prefix_from_url(url),
        num_params=num_params,
        num_params_source="timm",
        top1=top1,
        top1_source=_TIMM_TOP1.format(model=name),
        test_protocol=f"ImageNet-1k val, single crop: {protocol}",
        license=license,
        license_source=license_source,
        non_commercial="-NC" in license,  # CC BY-NC*
        hf_hub_id=f"timm/{name}",
    )


_RES2NET_LICENSE = "CC BY-NC-SA 4.0"
_RES2NET_LICENSE_SOURCE = (
    "Res2Net/Res2Net-PretrainedModels README, 'License': 'released under the Creative Commons "
    "Attribution-NonCommercial-ShareAlike 4.0 International Public License for Noncommercial use "
    "only. Any commercial use should get formal permission first.' (timm: 'unknown')"
)
_TIMM = (
    _timm("res2net50_26w_4s.in1k", _TIMM_URL + "v0.1-res2net/res2net50_26w_4s-06e79181.pth",
          25699120, 77.950, "224, crop 0.875, bilinear", _RES2NET_LICENSE, _RES2NET_LICENSE_SOURCE),
    _timm("res2net101_26w_4s.in1k", _TIMM_URL + "v0.1-res2net/res2net101_26w_4s-02a759a1.pth",
          45206688, 79.202, "224, crop 0.875, bilinear", _RES2NET_LICENSE, _RES2NET_LICENSE_SOURCE),
    _timm("resnetv2_50.a1h_in1k", _TIMM_URL + "v0.1-rsb-weights/resnetv2_50_a1h-000cdf49.pth",
          25549352, 81.398, "288, crop 1.0, bicubic", pixels=HALF_RGB),
    _timm("resnetv2_101.a1h_in1k", _TIMM_URL + "v0.1-rsb-weights/resnetv2_101_a1h-5d01f016.pth",
          44541480, 83.002, "288, crop 1.0, bicubic", pixels=HALF_RGB),
    _timm("seresnet50.ra2_in1k", _TIMM_URL + "v0.1-weights/seresnet50_ra_224-8efdb4bb.pth",
          28088024, 81.284, "288, crop 0.95, bicubic"),
    _timm("seresnext50_32x4d.racm_in1k",
          _TIMM_URL + "v0.1-weights/seresnext50_32x4d_racm-a304a460.pth",
          27559896, 82.196, "288, crop 0.95, bicubic"),
    _timm("seresnext101_32x4d.gluon_in1k",
          "https://github.com/rwightman/pytorch-pretrained-gluonresnet/releases/download/v0.1/"
          "gluon_seresnext101_32x4d-cf52900d.pth",
          48955416, 80.892, "224, crop 0.875, bicubic"),
    _timm("resnet50d.ra2_in1k", _TIMM_URL + "v0.1-weights/resnet50d_ra2-464e36ba.pth",
          25576264, 81.356, "288, crop 0.95, bicubic"),
    _timm("resnet101d.ra2_in1k", _TIMM_URL + "v0.1-weights/resnet101d_ra2-2803ffab.pth",
          44568392, 83.016, "320, crop 1.0, bicubic"),
    _timm("rexnet_100.nav_in1k", _TIMM_URL + "v0.1-rexnet/rexnetv1_100-1b4dddf4.pth",
          4796873, 77.862, "224, crop 0.875, bicubic",
          "MIT", "clovaai/rexnet LICENSE (NAVER Corp.); timm's pretrained config"),
)  # fmt: skip

_ENTRIES = _TORCHVISION + _DETECTRON2 + _TIMM

# Catalog name -> entry.
CATALOG: dict[str, WeightsEntry] = {entry.name: entry for entry in _ENTRIES}
if len(CATALOG) != len(_ENTRIES):
    raise RuntimeError("two catalog entries have the same name")


# Detection preset -> the catalog entry its detectors start from (preset_config's MODEL.WEIGHTS),
# None where no ImageNet weights are published. As detectron2: MSRA's and FAIR's
# X-101-32x8d Caffe2 files (R-101-DCN-c3-c5 too, its offsets starting at zero); otherwise
# torchvision's first weights (IMAGENET1K_V1) or the one timm file. Each COCO config of a preset
# uses the same file (tested).
DEFAULT_WEIGHTS: dict[str, Optional[str]] = {
    "R-18": "resnet18.tv_in1k",
    "R-34": "resnet34.tv_in1k",
    "R-50": "R-50.msra_in1k",
    "R-101": "R-101.msra_in1k",
    "R-152": "resnet152.tv_in1k",
    "R-50-v2": "resnetv2_50.a1h_in1k",
    "R-101-v2": "resnetv2_101.a1h_in1k",
    "X-50-32x4d": "resnext50_32x4d.tv_in1k",
    "X-101-32x8d": "X-101-32x8d.fair_in1k",
    "X-101-64x4d": "resnext101_64x4d.tv_in1k",
    "WRN-50-2": "wide_resnet50_2.tv_in1k",
    "WRN-101-2": "wide_resnet101_2.tv_in1k",
    "Res2Net-50-26w-4s": "res2net50_26w_4s.in1k",
    "Res2Net-101-26w-4s": "res2net101_26w_4s.in1k",
    "SE-R-50": "seresnet50.ra2_in1k",
    "SE-R-101": None,
    "SE-X-50-32x4d": "seresnext50_32x4d.racm_in1k",
    "SE-X-101-32x4d": "seresnext101_32x4d.gluon_in1k",
    "R-50-D": "resnet50d.ra2_in1k",
    "R-101-D": "resnet101d.ra2_in1k",
    "R-101-DCN-c3-c5": "R-101.msra_in1k",
    "ReXNet-100": "rexnet_100.nav_in1k",
}


def default_weights(preset: str) -> Optional[WeightsEntry]:
    """The catalog entry detectors of detection preset ``preset`` start from
    (:data:`DEFAULT_WEIGHTS`), or None where it has no published ImageNet weights.

    Raises:
        ValueError: ``preset`` is not a detection preset (listing those).
    """
    from ..utils import check_choice

    check_choice("detection preset", preset, DEFAULT_WEIGHTS)
    name = DEFAULT_WEIGHTS[preset]
    return CATALOG[name] if name is not None else None


def arch_input(arch: str) -> PixelInput:
    """How the published weights of ``arch`` (a key of :data:`~resnet_backbones.presets.ARCHS`)
    were fed: the input of its catalog entries.

    Raises:
        ValueError: no catalog entry has weights of ``arch``, or its entries disagree.
    """
    inputs = {e.input for e in CATALOG.values() if e.arch == arch}
    if len(inputs) != 1:
        found = "no catalog entry" if not inputs else f"{len(inputs)} different inputs"
        raise ValueError(
            f"arch = {arch!r}: its published weights give {found} (input format and pixel "
            "statistics); exactly one is needed to write its config"
        )
    return inputs.pop()


def fitting_config(arch: str) -> dict:
    """Config keys that build the network of ``arch`` and feed it as its published weights were
    trained: its input (:func:`arch_input`), then its network and layout."""
    from ..presets import get_arch

    return {**arch_input(arch).config, **get_arch(arch).config}

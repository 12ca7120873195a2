"""One published set of weights, with everything needed to use it and to cite it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

from .metadata import metadata_from_config

__all__ = ["PixelInput", "WeightsEntry"]


@dataclass(frozen=True)
class PixelInput:
    """How the images that trained a set of weights were fed: channel order and per-channel
    normalisation, in 0..255 pixel units and in the order of ``format`` (what torchvision's
    Weights carry as their transforms)."""

    format: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def config(self) -> dict[str, Any]:
        """As detectron2 config keys."""
        return {
            "INPUT.FORMAT": self.format,
            "MODEL.PIXEL_MEAN": list(self.mean),
            "MODEL.PIXEL_STD": list(self.std),
        }


@dataclass(frozen=True)
class WeightsEntry:
    """A catalog entry: ``resnet_backbones://<name>`` loads these weights.

    Attributes:
        name: the catalog name (``resnet50.tv_in1k``).
        url: where the file is published (https).
        arch: the network, by its publisher's name: a key of
            :data:`resnet_backbones.presets.ARCHS`, which names its preset and the layout of
            the file (format, mapping family, stride placement).
        input: how the weights were fed during training.
        num_params: parameters of the ImageNet classifier these weights fill (backbone and
            1000-way fully connected layer, norms' affine weights included); a test checks it
            against the model the config builds.
        num_params_source: who publishes ``num_params`` (or "architecture" where the weights'
            publisher gives none and the count is that of the same architecture).
        top1: ImageNet-1k top-1 accuracy in percent, as published, or None if unpublished.
        top1_source: where ``top1`` comes from (document, table, URL).
        test_protocol: how ``top1`` was measured (resize, crop, resolution).
        license: the license of the weights, short ("Apache-2.0", "CC BY-NC-SA 4.0" ...).
        license_source: where the license is stated, and any caveat its publisher adds.
        non_commercial: the license forbids commercial use (Res2Net's CC BY-NC-SA 4.0).
        sha256: the file's full SHA-256, if known.
        sha256_prefix: the first hex digits of its SHA-256 (torchvision and timm file names
            carry 8), if the full hash is not known.
        torchvision_weights: for torchvision's files, the Weights enum member that publishes
            them (``ResNet50_Weights.IMAGENET1K_V1``).
        hf_hub_id: the Hugging Face Hub repository that serves the same weights (timm's
            ``timm/<name>``), loadable as ``hf-hub:<hf_hub_id>``; None if none does.
        hf_hub_revision: the commit of that repository to fetch (40 hex digits), or None for
            its default branch (where no commit has been pinned from a trustworthy source).
    """

    name: str
    url: str
    arch: str
    input: PixelInput
    num_params: int
    num_params_source: str
    top1: Optional[float]
    top1_source: str
    test_protocol: str
    license: str
    license_source: str
    non_commercial: bool
    sha256: Optional[str] = None
    sha256_prefix: Optional[str] = None
    torchvision_weights: Optional[str] = None
    hf_hub_id: Optional[str] = None
    hf_hub_revision: Optional[str] = None

    def __post_init__(self) -> None:
        from ..presets import get_arch

        try:
            get_arch(self.arch)
        except ValueError as e:
            raise ValueError(f"WeightsEntry {self.name!r}: {e}") from None
        if not self.url.startswith("https://"):
            raise ValueError(f"WeightsEntry {self.name!r}: url = {self.url!r} must be https://")
        if self.hf_hub_id is not None and not re.fullmatch(r"[\w.-]+/[\w.-]+", self.hf_hub_id):
            raise ValueError(
                f"WeightsEntry {self.name!r}: hf_hub_id = {self.hf_hub_id!r} must be ORG/NAME"
            )
        for key, value, lengths in (
            ("sha256", self.sha256, (64, 64)),
            ("sha256_prefix", self.sha256_prefix, (8, 64)),
            ("hf_hub_revision", self.hf_hub_revision, (40, 40)),
        ):
            if value is not None and not re.fullmatch(
                rf"[0-9a-f]{{{lengths[0]},{lengths[1]}}}", value
            ):
                raise ValueError(
                    f"WeightsEntry {self.name!r}: {key} = {value!r} must be "
                    f"{lengths[0]}{'' if lengths[0] == lengths[1] else f' to {lengths[1]}'} "
                    "lower-case hex digits"
                )

    @property
    def source(self) -> str:
        """The file's format: its arch's ("torchvision", "timm" or "msra")."""
        from ..presets import ARCHS

        return ARCHS[self.arch].source

    @property
    def published_by(self) -> str:
        """Who published the file: its arch's publisher ("MSRA", "FAIR"), else the library of
        its format ("torchvision", "timm")."""
        from ..presets import ARCHS

        return ARCHS[self.arch].published_by

    @property
    def preset(self) -> str:
        """The preset whose network these weights fill."""
        from ..presets import ARCHS

        return ARCHS[self.arch].preset

    @property
    def config(self) -> dict[str, Any]:
        """Config keys that build the network these weights fit and feed it as they were
        trained (``{"MODEL.RESNETS.DEPTH": 50, "INPUT.FORMAT": "RGB", ...}``)."""
        from ..presets import ARCHS

        return {**self.input.config, **ARCHS[self.arch].config}

    @property
    def metadata(self) -> dict[str, Any]:
        """What :attr:`config` says about stride placement, input format and pixel statistics,
        checked against the config of a model that loads this entry."""
        return metadata_from_config(self.config)

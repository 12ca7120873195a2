"""Write another library's weights as a file of ours, with the config that fits it.

The file holds our backbone's names and the weights' metadata; the YAML fragment beside it holds
the config keys that build the matching backbone and feed it as the weights were trained. Both
are checked before anything is written: the weights must load strictly into that backbone.
"""

from __future__ import annotations

import logging
import os

import torch

from ..config import build_clean_backbone
from ..presets import ARCHS, arch_config, get_arch
from ..utils import atomic_write, check_choice, config_yaml
from .catalog import fitting_config
from .detect import read_weights
from .download import sha256_of_file
from .errors import BackboneMismatchError, WeightsFormatError
from .mappings import to_backbone
from .metadata import metadata_from_config

__all__ = ["EXPORT_SOURCES", "export_weights", "fragment_path"]

logger = logging.getLogger(__name__)

EXPORT_SOURCES: tuple[str, ...] = ("torchvision", "timm", "msra", "detectron2")
# Formats a file may have for each source (timm's plain ResNets are named as torchvision's).
_READABLE = {
    "torchvision": ("torchvision", "timm"),
    "timm": ("torchvision", "timm"),
    "msra": ("msra",),
    "detectron2": ("detectron2", "resnet_backbones"),
}


def fragment_path(dst: str) -> str:
    """The YAML fragment written beside ``dst``: same path, extension ``.yaml``."""
    return os.path.splitext(dst)[0] + ".yaml"


def export_weights(src: str, dst: str, *, source: str, arch: str) -> tuple[str, str]:
    """Renames ``src`` to our backbone's names, checks it, and writes it with its config.

    ``dst`` holds ``{"model": our names (stem.*, res2.* ...), "metadata": {...}}`` plus
    ``"matching_heuristics": True``, so that detectron2's own DetectionCheckpointer loads it too
    (by name suffix). Beside it, ``<dst without extension>.yaml`` holds the config keys that,
    merged onto a base config (configs/Base-RCNN-FPN.yaml ...), build the matching backbone
    and feed it as it was trained.

    Args:
        src: the weights file (read safely: no code in it runs).
        dst: the output file (``.pth``).
        source: the library that wrote ``src``, one of :data:`EXPORT_SOURCES`.
        arch: the architecture, a key of :data:`~resnet_backbones.presets.ARCHS`.

    Returns:
        ``(dst, path of the YAML fragment)``.

    Raises:
        ValueError: an unknown source or arch, or a file of another format than ``source``.
        WeightsFormatError: names that the arch's mapping table does not know (listing them).
        BackboneMismatchError: weights that do not load strictly into ``arch``.
    """
    check_choice("source", source, EXPORT_SOURCES, quote=False)
    row = get_arch(arch)
    if source == "msra" and row.source != "msra":
        raise ValueError(
            f"arch = {arch!r} is a {row.source} architecture, not an msra one; msra archs: "
            + ", ".join(name for name, a in ARCHS.items() if a.source == "msra")
        )
    if source in ("torchvision", "timm") and row.family is None:
        raise ValueError(
            f"arch = {arch!r} has Caffe2 names (an msra architecture); {source} archs: "
            + ", ".join(name for name, a in ARCHS.items() if a.family is not None)
        )
    weights = read_weights(src)
    if weights.format not in _READABLE[source]:
        raise WeightsFormatError(
            f"{src} is a {weights.format} file, not a {source} one (a {source} source reads "
            f"{' or '.join(_READABLE[source])} files)"
        )
    family = row.family if weights.format in ("torchvision", "timm") else None
    state = {
        name: tensor.detach().clone().contiguous()
        for name, tensor in to_backbone(
            weights.format, weights.state_dict, family=family, path=src
        ).items()
        # BN's counter of batches: no numerical meaning, and FrozenBN has no such buffer.
        if not name.endswith("num_batches_tracked")
    }
    config = fitting_config(arch)
    try:
        build_clean_backbone(arch_config(arch)).load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise BackboneMismatchError(
            f"{src} does not load strictly into arch {arch!r} (config {config}): {e}"
        ) from e

    metadata = {
        "source": source,
        "format": weights.format,
        "arch": arch,
        # A detectron2 checkpoint records none of these: they are the --arch row's (the caller's
        # statement of the layout), as for every other source.
        **metadata_from_config(config),
        "converted_from": os.path.basename(src),
        "converted_from_sha256": sha256_of_file(src),
    }
    checkpoint = {
        "model": state,
        "metadata": metadata,
        "__author__": "resnet_backbones",
        "matching_heuristics": True,
    }
    config_path = fragment_path(dst)
    header = (
        f"# Config of the backbone in {os.path.basename(dst)} (tools/convert_weights.py, "
        f"{source} {arch}).\n# Merge it onto a base config (configs/Base-RCNN-FPN.yaml ...) and "
        "set MODEL.WEIGHTS to that file.\n"
    )
    with atomic_write(dst) as f:
        torch.save(checkpoint, f)
    with atomic_write(config_path, "w", encoding="utf-8") as f:
        f.write(header + config_yaml(config))
    logger.info("Wrote %s (%d tensors) and %s", dst, len(state), config_path)
    return dst, config_path

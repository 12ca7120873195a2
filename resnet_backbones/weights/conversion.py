"""Convert another library's weights file into ours, with the config that fits it."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Any

import torch

from .archs import ARCHS, build_backbone, config_yaml, get_arch
from .download import sha256_of_file
from .errors import IncompatibleWeightsError
from .formats import backbone_state_dict, read_weights
from .metadata import metadata_from_config

__all__ = ["CONVERT_SOURCES", "convert_file", "config_path_for"]

logger = logging.getLogger(__name__)

CONVERT_SOURCES: tuple[str, ...] = ("torchvision", "timm", "msra", "detectron2")
# Formats a file may have for each --source (timm's plain ResNets are named as torchvision's).
_READABLE = {
    "torchvision": ("torchvision", "timm"),
    "timm": ("torchvision", "timm"),
    "msra": ("msra",),
    "detectron2": ("detectron2", "resnet_backbones"),
}


def config_path_for(dst: str) -> str:
    """The YAML fragment written beside ``dst``: same path, extension ``.yaml``."""
    return os.path.splitext(dst)[0] + ".yaml"


def _save_atomically(obj: Any, dst: str) -> None:
    folder = os.path.dirname(os.path.abspath(dst))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(dst) + ".", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(obj, str):
                f.write(obj.encode("utf-8"))
            else:
                torch.save(obj, f)
        os.chmod(tmp, 0o644)  # as open() would create it, not mkstemp's 0600
        os.replace(tmp, dst)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def convert_file(src: str, dst: str, *, source: str, arch: str) -> tuple[str, str]:
    """Converts ``src`` to our backbone's names, checks it, and writes it with its config.

    ``dst`` holds ``{"model": our names (stem.*, res2.* ...), "metadata": {...}}`` plus
    ``"matching_heuristics": True``, so that detectron2's own DetectionCheckpointer loads it too
    (by name suffix). Beside it, ``<dst without extension>.yaml`` holds the config keys that,
    merged onto a base config (configs/Base-RCNN-FPN.yaml ...), build the matching backbone
    and feed it as it was trained.

    Args:
        src: the weights file (read safely: no code in it runs).
        dst: the output file (``.pth``).
        source: the library that wrote ``src``, one of :data:`CONVERT_SOURCES`.
        arch: the architecture, a key of :data:`~resnet_backbones.weights.archs.ARCHS`.

    Returns:
        ``(dst, path of the YAML fragment)``.

    Raises:
        ValueError: an unknown source or arch, a file of another format than ``source``, or
            (IncompatibleWeightsError) weights that do not load strictly into ``arch``.
        KeyError: names that the arch's mapping table does not know (listing them).
    """
    if source not in CONVERT_SOURCES:
        raise ValueError(
            f"source = {source!r} is not valid; valid values: {', '.join(CONVERT_SOURCES)}"
        )
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
        raise ValueError(
            f"{src} is a {weights.format} file, not a {source} one (a {source} source reads "
            f"{' or '.join(_READABLE[source])} files)"
        )
    family = row.family if weights.format in ("torchvision", "timm") else None
    state = {
        name: tensor.detach().clone().contiguous()
        for name, tensor in backbone_state_dict(weights, family).items()
        # BN's counter of batches: no numerical meaning, and FrozenBN has no such buffer.
        if not name.endswith("num_batches_tracked")
    }
    backbone = build_backbone(row)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise IncompatibleWeightsError(
            f"{src} does not load strictly into arch {arch!r} (config {dict(row.config)}): {e}"
        ) from e

    metadata = {
        "source": source,
        "format": weights.format,
        "arch": arch,
        # A detectron2 checkpoint records none of these: they are the --arch row's (the caller's
        # statement of the layout), as for every other source.
        **metadata_from_config(row.config),
        "converted_from": os.path.basename(src),
        "converted_from_sha256": sha256_of_file(src),
    }
    checkpoint = {
        "model": state,
        "metadata": metadata,
        "__author__": "resnet_backbones",
        "matching_heuristics": True,
    }
    config_path = config_path_for(dst)
    header = (
        f"# Config of the backbone in {os.path.basename(dst)} (tools/convert_weights.py, "
        f"{source} {arch}).\n# Merge it onto a base config (configs/Base-RCNN-FPN.yaml ...) and "
        "set MODEL.WEIGHTS to that file.\n"
    )
    _save_atomically(checkpoint, dst)
    _save_atomically(header + config_yaml(row.config), config_path)
    logger.info("Wrote %s (%d tensors) and %s", dst, len(state), config_path)
    return dst, config_path

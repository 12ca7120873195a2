"""Tell which library wrote a weights file, from its layout and names (never its file name).

========================  ==================================================================
``"resnet_backbones"``    ours (tools/convert_weights.py): ``{"model": our names, "metadata"}``
``"detectron2"``          ``{"model": ...}`` of a detectron2 model (``backbone.bottom_up.*``,
                          ``roi_heads.*``; numpy or torch), or a bare state dict in its names
``"msra"``                Caffe2 names (``conv1_w``, ``res2_0_branch2a_w`` ...): the MSRA and
                          FAIR ImageNet ``.pkl`` files, Detectron1 ``{"blobs": ...}``
``"torchvision"``         names that a torchvision family of :data:`.mappings.FAMILIES` reads
``"timm"``                names that a timm family of :data:`.mappings.FAMILIES` reads
``"pycls"``               ``{"model_state": ...}`` (detectron2 reads these by name matching)
========================  ==================================================================

torchvision and timm files are recognised by asking each family's rule table which names it
does not match (:func:`.mappings.families_reading`); a file is of the first family that matches
them all.

The network a file holds is named by the shapes of its backbone in our names: the arch
(:data:`~resnet_backbones.presets.ARCHS`) of its library whose network has exactly those
(:func:`identify_arch`), and the preset of a model's backbone likewise (:func:`identify_preset`).
The arch names what the weights imply about their input (:mod:`.metadata`); both name the
networks in the errors of a file that does not fit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch

from ..utils import first_n
from .errors import WeightsFormatError
from .mappings import BACKBONE_NAME, FAMILIES, families_reading
from .read import read_file

__all__ = [
    "FORMATS",
    "WeightsFile",
    "arch_shapes",
    "describe_arch",
    "detect",
    "identify_arch",
    "identify_preset",
    "read_weights",
]

FORMATS: tuple[str, ...] = (
    "resnet_backbones",
    "detectron2",
    "msra",
    "torchvision",
    "timm",
    "pycls",
)
_CAFFE2_NAME = re.compile(r"conv1_w|res_conv1_bn_s|res\d+_\d+_branch\w+")
_DETECTRON2_MODULES = ("backbone.", "proposal_generator.", "roi_heads.")


@dataclass
class WeightsFile:
    """A weights file, read and recognised.

    Attributes:
        path: where it was read from.
        format: one of :data:`FORMATS`.
        state_dict: its tensors (torch or numpy) under the names of the file, unwrapped from
            ``"model"``, ``"blobs"``, ``"state_dict"`` or ``"model_state"``.
        families: for "torchvision" and "timm", the keys of :data:`.mappings.FAMILIES` whose
            rules read every name, in that table's order (the model chooses among them).
        metadata: what the file records about its training: our own files' metadata; a
            detectron2 model's ``pixel_mean`` and ``pixel_std`` buffers, where it saved them.
        extra: everything else in the file (``__author__``, ``matching_heuristics``, the
            optimizer and iteration of a training checkpoint ...).
        wrapper: the key ``state_dict`` was found under, or None for a flat file.
    """

    path: str
    format: str
    state_dict: dict[str, Any]
    families: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    wrapper: Optional[str] = None


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _by_a_family(
    path: str, state: dict[str, Any], extra: dict[str, Any], wrapper: Optional[str]
) -> Optional[WeightsFile]:
    """A torchvision or timm file, if a family of :data:`.mappings.FAMILIES` reads every name."""
    families = families_reading(list(state))
    if not families:
        return None
    source = FAMILIES[families[0]].source
    return WeightsFile(path, source, state, families, extra=extra, wrapper=wrapper)


# A detectron2 model's input normalisation, a buffer of GeneralizedRCNN ((C, 1, 1), in the order
# of INPUT.FORMAT) that its checkpoints held before detectron2 made it non-persistent.
_PIXEL_BUFFERS = ("pixel_mean", "pixel_std")


def _detectron2(
    path: str, state: dict[str, Any], extra: dict[str, Any], wrapper: Optional[str]
) -> WeightsFile:
    """A detectron2 checkpoint, with the pixel statistics it holds as its metadata."""
    metadata = {
        name: [float(v) for v in np.asarray(state[name]).reshape(-1)]
        for name in _PIXEL_BUFFERS
        if name in state and _is_array(state[name])
    }
    return WeightsFile(path, "detectron2", state, metadata=metadata, extra=extra, wrapper=wrapper)


def _unknown(path: str, names: Sequence[str], why: str) -> WeightsFormatError:
    return WeightsFormatError(
        f"{path}: unknown weights format ({why}); its first names: "
        + first_n([repr(n) for n in names], 8, total=True)
        + f". Known formats: {', '.join(FORMATS)}; torchvision and timm files are recognised by "
        f"the mapping tables of the families {', '.join(FAMILIES)}"
    )


def detect(checkpoint: Any, *, path: str = "<in memory>") -> WeightsFile:
    """Tells the format of a loaded checkpoint from its layout and names.

    Args:
        checkpoint: what :func:`.read.read_file` returned.
        path: its origin, for messages.

    Raises:
        WeightsFormatError: not a dict of named tensors, or of no known format; the message
            lists a few of its names and the known formats.
    """
    if not isinstance(checkpoint, Mapping):
        raise WeightsFormatError(
            f"{path}: holds a {type(checkpoint).__name__}, not a dict of named weights"
        )
    if not checkpoint:
        raise WeightsFormatError(f"{path}: holds an empty dict, no weights")

    def rest(*keys: str) -> dict[str, Any]:
        return {k: v for k, v in checkpoint.items() if k not in keys}

    model, metadata = checkpoint.get("model"), checkpoint.get("metadata")
    if isinstance(model, Mapping) and isinstance(metadata, Mapping):
        extra = rest("model", "metadata")
        return WeightsFile(
            path, "resnet_backbones", dict(model), (), dict(metadata), extra, "model"
        )
    if isinstance(checkpoint.get("blobs"), Mapping):  # Detectron1 detection models
        blobs = {k: v for k, v in checkpoint["blobs"].items() if not k.endswith("_momentum")}
        return WeightsFile(path, "msra", blobs, extra=rest("blobs"), wrapper="blobs")
    if isinstance(model, Mapping):
        # A torchvision or timm state dict saved as {"model": ...} (DeiT-style training scripts)
        # is read by a mapping table; anything else under "model" is a detectron2 model.
        if all(_is_array(v) for v in model.values()):
            read = _by_a_family(path, dict(model), rest("model"), "model")
            if read is not None:
                return read
        return _detectron2(path, dict(model), rest("model"), "model")
    if isinstance(checkpoint.get("model_state"), Mapping):
        state = dict(checkpoint["model_state"])
        return WeightsFile(path, "pycls", state, extra=rest("model_state"), wrapper="model_state")

    extra: dict[str, Any] = {}
    wrapper = None
    if isinstance(checkpoint.get("state_dict"), Mapping):  # timm / Lightning training files
        extra, checkpoint, wrapper = rest("state_dict"), checkpoint["state_dict"], "state_dict"
    names = list(checkpoint)
    if not all(_is_array(v) for v in checkpoint.values()):
        odd = next(k for k, v in checkpoint.items() if not _is_array(v))
        raise _unknown(path, names, f"{odd!r} is a {type(checkpoint[odd]).__name__}, not a tensor")
    state = dict(checkpoint)
    if all("." not in n for n in names) and any(_CAFFE2_NAME.fullmatch(n) for n in names):
        state = {k: v for k, v in state.items() if not k.endswith("_momentum")}
        return WeightsFile(path, "msra", state, extra=extra, wrapper=wrapper)
    read = _by_a_family(path, state, extra, wrapper)
    if read is not None:
        return read
    if any(n.startswith(_DETECTRON2_MODULES) for n in names) or all(
        BACKBONE_NAME.fullmatch(n) for n in names
    ):
        return _detectron2(path, state, extra, wrapper)
    raise _unknown(path, names, "no mapping table reads all its names")


def read_weights(path: str) -> WeightsFile:
    """:func:`.read.read_file` then :func:`detect`."""
    return detect(read_file(path), path=path)


# ------------------------------------------------------------------------------------------
# Which network: the shapes of a backbone in our names
# ------------------------------------------------------------------------------------------
# Neither stored by every file (MSRA's have no BN statistics) nor part of the architecture
# (deformable convs' offsets start at zero; ImageNet files have none).
_NOT_ARCHITECTURE = re.compile(
    r".*(running_mean|running_var|num_batches_tracked)$|.*conv2_offset\..*"
)

Shapes = dict[str, tuple[int, ...]]


def _architecture(shapes: Mapping[str, Sequence[int]]) -> Shapes:
    return {n: tuple(s) for n, s in shapes.items() if not _NOT_ARCHITECTURE.fullmatch(n)}


@cache
def _config_shapes(kind: str, name: str) -> tuple[tuple[str, tuple[int, ...]], ...]:
    from ..config import build_clean_backbone
    from ..presets import _network_config, arch_config

    cfg = arch_config(name) if kind == "arch" else _network_config(name)
    with torch.device("meta"):  # names and shapes only: no memory, no initialisation cost
        state = build_clean_backbone(cfg).state_dict()
    return tuple(_architecture({n: t.shape for n, t in state.items()}).items())


def arch_shapes(arch: str) -> Shapes:
    """Name -> shape of the backbone of ``arch`` (a key of ARCHS) in our names, without norm
    statistics (built once, on the meta device)."""
    return dict(_config_shapes("arch", arch))


def identify_arch(backbone: Mapping[str, Sequence[int]], source: str) -> Optional[str]:
    """The arch of library ``source`` ("torchvision", "timm", "msra") whose backbone has exactly
    these names and shapes (ours), or None."""
    from ..presets import ARCHS

    shapes = _architecture(backbone)
    return next(
        (a.name for a in ARCHS.values() if a.source == source and arch_shapes(a.name) == shapes),
        None,
    )


def identify_preset(backbone: Mapping[str, Sequence[int]]) -> Optional[str]:
    """The first detection preset whose network has exactly these backbone names and shapes
    (ours; a C4 model's ``roi_heads.res5`` as res5), or None."""
    from ..presets import PRESETS

    shapes = _architecture(backbone)
    return next(
        (
            name
            for name, preset in PRESETS.items()
            if preset.task == "detection" and dict(_config_shapes("preset", name)) == shapes
        ),
        None,
    )


def describe_arch(arch: str) -> str:
    """``R-50 (torchvision's resnet50)``: an arch by its preset and its library's name."""
    from ..presets import ARCHS

    row = ARCHS[arch]
    library = "MSRA/FAIR Caffe2" if row.source == "msra" else row.source
    return f"{row.preset} ({library}'s {arch})"

"""Read a weights file safely, tell which library wrote it, and rename it to our backbone.

Reading never runs code from the file: ``.pkl`` files go through
:func:`~resnet_backbones.weights.safe_pickle.load_pickle`, torch.save archives through
``torch.load(weights_only=True)``. The format is then told from the content, not the name:

========================  ==================================================================
``"resnet_backbones"``    ours (tools/convert_weights.py): ``{"model": our names, "metadata"}``
``"detectron2"``          ``{"model": ...}`` of a detectron2 model (``backbone.bottom_up.*``,
                          ``roi_heads.*``; numpy or torch), or a bare state dict in its names
``"msra"``                Caffe2 names (``conv1_w``, ``res2_0_branch2a_w`` ...): the MSRA and
                          FAIR ImageNet ``.pkl`` files, Detectron1 ``{"blobs": ...}``
``"torchvision"``         names a torchvision table of :data:`SOURCE_TABLES` reads entirely
``"timm"``                names a timm table of :data:`SOURCE_TABLES` reads entirely
``"pycls"``               ``{"model_state": ...}`` (detectron2 reads these by name matching)
========================  ==================================================================
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

import numpy as np
import torch
from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names

from ..convert import (
    TIMM_RES2NET,
    TIMM_RESNET_D,
    TIMM_RESNETV2,
    TIMM_REXNET,
    TIMM_SE_RESNET,
    TORCHVISION_RESNET,
    convert_state_dict,
)
from .errors import UnsafeWeightsError, WeightsFormatError
from .safe_pickle import load_pickle

__all__ = [
    "FORMATS",
    "SOURCE_TABLES",
    "SourceTable",
    "WeightsFile",
    "backbone_state_dict",
    "classify",
    "read_file",
    "read_weights",
]

logger = logging.getLogger(__name__)

Rule = tuple[str, Optional[str]]  # a rule of resnet_backbones.convert's tables

FORMATS: tuple[str, ...] = (
    "resnet_backbones",
    "detectron2",
    "msra",
    "torchvision",
    "timm",
    "pycls",
)
_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of torch.save's older format

# Our backbone's names: what every table produces and every checkpoint is placed from.
BACKBONE_NAME = re.compile(r"(stem|res[2-5])\..+")
_CAFFE2_NAME = re.compile(r"conv1_w|res_conv1_bn_s|res\d+_\d+_branch\w+")
_DETECTRON2_MODULES = ("backbone.", "proposal_generator.", "roi_heads.")
# Where a detectron2 model keeps its ResNet, outermost first (FPN; C4 and DC5; bare FPN; bare).
_BACKBONE_PREFIXES = ("backbone.bottom_up.", "backbone.", "bottom_up.", "")


@dataclass(frozen=True)
class SourceTable:
    """How to read the parameter names of one architecture family of another library.

    Attributes:
        source: the format of files with these names, "torchvision" or "timm".
        rules: the explicit mapping table to our names (see :mod:`resnet_backbones.convert`).
        metadata: what every file with these names implies (keys of
            :data:`~resnet_backbones.weights.metadata.METADATA_CONFIG_KEYS`), checked against the
            config as a file's own metadata would be.
    """

    source: str
    rules: Sequence[Rule]
    metadata: Mapping[str, Any] = field(default_factory=dict)


# Architecture family -> its table. A file is of a family when the family's rules read every one
# of its names; families are tried in this order, and the first that reads a file gives its
# format. A new family is one row here plus its rows in resnet_backbones.weights.archs.ARCHS.
# timm's plain ResNets (resnet50 ...) are named exactly as torchvision's: they read as
# "torchvision", which is the same mapping. The SE and Res2Net tables extend torchvision's, so
# they read a torchvision file too; the checkpointer then takes the family whose names the model
# has, and a missing SE or Res2Net parameter is an error.
# Every torchvision and timm ImageNet model takes RGB inputs; their bottlenecks have the stride
# in the 3x3 conv. Pixel statistics vary between weights of one family (timm's ResNetV2), so the
# tables do not imply them; the catalog entries and our converted files do.
_RGB = {"input_format": "RGB"}
_RGB_STRIDE_IN_3X3 = {**_RGB, "stride_in_1x1": False}
SOURCE_TABLES: dict[str, SourceTable] = {
    "resnet": SourceTable("torchvision", TORCHVISION_RESNET, _RGB_STRIDE_IN_3X3),
    "resnet_d": SourceTable("timm", TIMM_RESNET_D, _RGB_STRIDE_IN_3X3),
    "seresnet": SourceTable("timm", TIMM_SE_RESNET, _RGB_STRIDE_IN_3X3),
    "res2net": SourceTable("timm", TIMM_RES2NET, _RGB_STRIDE_IN_3X3),
    "resnetv2": SourceTable("timm", TIMM_RESNETV2, _RGB_STRIDE_IN_3X3),
    # ReXNet has no bottleneck stride placement to check.
    "rexnet": SourceTable("timm", TIMM_REXNET, _RGB),
}


@dataclass
class WeightsFile:
    """A weights file, read and classified.

    Attributes:
        path: where it was read from.
        format: one of :data:`FORMATS`.
        state_dict: its tensors (torch or numpy) under the names of the file, unwrapped from
            ``"model"``, ``"blobs"``, ``"state_dict"`` or ``"model_state"``.
        families: for "torchvision" and "timm", the keys of :data:`SOURCE_TABLES` whose rules
            read every name, in the table's order.
        metadata: what the file records about its training (our own files only).
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

    @property
    def implied_metadata(self) -> dict[str, Any]:
        """The file's metadata over what its family's table implies."""
        implied = dict(SOURCE_TABLES[self.families[0]].metadata) if self.families else {}
        return {**implied, **self.metadata}


def _torch_load(path: str) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        refused = re.search(r"GLOBAL (\S+)", str(e))
        if not refused:  # garbage: torch reports an unknown opcode, a bad magic number ...
            raise WeightsFormatError(f"{path}: not a readable torch.save file ({e})") from e
        raise UnsafeWeightsError(
            f"{path}: refused to load {refused[1]}: torch.load(weights_only=True) reads "
            "tensors, numbers, strings and plain containers only. If this file comes from a "
            "source you trust, convert it with a script you control."
        ) from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise WeightsFormatError(f"{path}: not a readable torch.save file ({e})") from e


def read_file(path: str) -> Any:
    """Reads a weights file without running code from it, telling its kind by its content.

    torch.save archives (zip) and torch.save's legacy format are read by
    ``torch.load(weights_only=True, map_location="cpu")``; any other pickle (Caffe2 and detectron2
    ``.pkl`` files) by :func:`~resnet_backbones.weights.safe_pickle.load_pickle`. The file's name
    does not matter.

    Raises:
        FileNotFoundError: no such file.
        UnsafeWeightsError: the file names a global that weights never need.
        WeightsFormatError: an empty, truncated or garbage file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"weights file not found: {path!r}")
    if os.path.getsize(path) == 0:
        raise WeightsFormatError(f"{path}: the weights file is empty")
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    if head == _ZIP_MAGIC:
        return _torch_load(path)
    try:
        # Reads the first pickled object only: torch.save's legacy format starts with a magic
        # number, and everything after it is torch.load's to read.
        obj = load_pickle(path)
    except UnsafeWeightsError:
        raise
    except Exception as e:  # a garbage stream raises anything from EOFError to KeyError
        raise WeightsFormatError(
            f"{path}: neither a torch.save archive nor a readable pickle ({type(e).__name__}: {e})"
        ) from e
    if isinstance(obj, int) and not isinstance(obj, bool) and obj == _LEGACY_TORCH_MAGIC:
        return _torch_load(path)
    return obj


def _is_array(value: Any) -> bool:
    return isinstance(value, (torch.Tensor, np.ndarray))


def _reads_all(rules: Sequence[Rule], names: Sequence[str]) -> bool:
    try:
        convert_state_dict(dict.fromkeys(names), rules)
    except KeyError:
        return False
    return True


def _families(names: Sequence[str]) -> tuple[str, ...]:
    """The families of :data:`SOURCE_TABLES` whose rules read every name, in table order."""
    return tuple(f for f, table in SOURCE_TABLES.items() if _reads_all(table.rules, names))


def _read_by_a_table(
    path: str, state: dict[str, Any], extra: dict[str, Any], wrapper: Optional[str]
) -> Optional[WeightsFile]:
    """A torchvision or timm file, if a table of :data:`SOURCE_TABLES` reads every name."""
    families = _families(list(state))
    if not families:
        return None
    source = SOURCE_TABLES[families[0]].source
    return WeightsFile(path, source, state, families, extra=extra, wrapper=wrapper)


def _unknown(path: str, names: Sequence[str], why: str) -> WeightsFormatError:
    shown = ", ".join(repr(n) for n in list(names)[:8])
    return WeightsFormatError(
        f"{path}: unknown weights format ({why}); its first names: {shown}"
        + (f" ... ({len(names)} in all)" if len(names) > 8 else "")
        + f". Known formats: {', '.join(FORMATS)}; torchvision and timm files are recognised by "
        f"the mapping tables of the families {', '.join(SOURCE_TABLES)}"
    )


def classify(checkpoint: Any, *, path: str = "<in memory>") -> WeightsFile:
    """Tells the format of a loaded checkpoint from its layout and names.

    Args:
        checkpoint: what :func:`read_file` returned.
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
            read = _read_by_a_table(path, dict(model), rest("model"), "model")
            if read is not None:
                return read
        return WeightsFile(path, "detectron2", dict(model), extra=rest("model"), wrapper="model")
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
    read = _read_by_a_table(path, state, extra, wrapper)
    if read is not None:
        return read
    if any(n.startswith(_DETECTRON2_MODULES) for n in names) or all(
        BACKBONE_NAME.fullmatch(n) for n in names
    ):
        return WeightsFile(path, "detectron2", state, extra=extra, wrapper=wrapper)
    raise _unknown(path, names, "no mapping table reads all its names")


def read_weights(path: str) -> WeightsFile:
    """:func:`read_file` then :func:`classify`."""
    return classify(read_file(path), path=path)


def _tensor(value: Any) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def _from_caffe2(state: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Our names for the backbone tensors of a Caffe2 state, by detectron2's own renaming."""
    names = list(state)
    renamed = dict(zip(convert_basic_c2_names(names), names))
    out = {ours: state[c2] for ours, c2 in renamed.items() if BACKBONE_NAME.fullmatch(ours)}
    dropped = sorted(c2 for ours, c2 in renamed.items() if not BACKBONE_NAME.fullmatch(ours))
    if dropped:
        logger.info(
            "%s: %d tensors are not part of the backbone and are left out: %s",
            path,
            len(dropped),
            ", ".join(dropped[:10]) + (" ..." if len(dropped) > 10 else ""),
        )
    # MSRA files hold a frozen BN as its affine scale and bias (y = s * x + b). Zero mean and
    # variance 1 - eps make detectron2's FrozenBN and torch's BatchNorm (both eps = 1e-5)
    # compute exactly that, and let the state load strictly into either.
    for c2, ours in zip(names, convert_basic_c2_names(names)):
        if c2.endswith("_bn_s") and ours in out:
            norm = ours[: -len("weight")]
            scale = _tensor(out[ours])
            out.setdefault(norm + "running_mean", torch.zeros_like(scale))
            out.setdefault(norm + "running_var", torch.full_like(scale, 1 - 1e-5))
    return out


def _backbone_of_detectron2(state: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Our backbone names for the backbone of a detectron2 state (FPN, C4, or bare)."""
    prefix = next(
        (p for p in _BACKBONE_PREFIXES if any(n.startswith(p + "stem.") for n in state)), None
    )
    if prefix is None:
        raise WeightsFormatError(
            f"{path}: no backbone in this detectron2 checkpoint (no name ends in 'stem.*' under "
            f"any of {', '.join(repr(p) for p in _BACKBONE_PREFIXES)})"
        )
    out = {
        name[len(prefix) :]: value
        for name, value in state.items()
        if name.startswith(prefix) and BACKBONE_NAME.fullmatch(name[len(prefix) :])
    }
    # C4: res5 is the RoI head's.
    out.update(
        {
            name[len("roi_heads.") :]: v
            for name, v in state.items()
            if name.startswith("roi_heads.res5.")
        }
    )
    return out


def backbone_state_dict(
    weights: WeightsFile, family: Optional[str] = None
) -> dict[str, torch.Tensor]:
    """The backbone tensors of ``weights`` under our names (``stem.*``, ``res2.*`` ...).

    Args:
        weights: a classified file.
        family: for torchvision and timm files, the key of :data:`SOURCE_TABLES` to read them
            with (default: the first that reads every name).

    Raises:
        KeyError: ``family``'s rules do not read every name (listing them).
        WeightsFormatError: a format without a backbone in our names (pycls), or a detectron2
            checkpoint without a ResNet-family backbone.
    """
    if weights.format in ("torchvision", "timm"):
        family = family or weights.families[0]
        if family not in SOURCE_TABLES:
            raise ValueError(
                f"family = {family!r} is not valid; valid values: {', '.join(SOURCE_TABLES)}"
            )
        state = convert_state_dict(weights.state_dict, SOURCE_TABLES[family].rules)
    elif weights.format == "msra":
        state = _from_caffe2(weights.state_dict, weights.path)
    elif weights.format == "resnet_backbones":
        state = dict(weights.state_dict)
    elif weights.format == "detectron2":
        state = _backbone_of_detectron2(weights.state_dict, weights.path)
    else:
        raise WeightsFormatError(
            f"{weights.path}: {weights.format} files cannot be renamed to our backbone; "
            "convertible formats: resnet_backbones, detectron2, msra, torchvision, timm"
        )
    return {name: _tensor(value) for name, value in state.items()}

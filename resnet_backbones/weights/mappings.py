"""Every name mapping of the package: other libraries' parameter names -> our backbone's.

Our backbone's names are ``stem.*`` and ``res2.*`` .. ``res5.*`` (:data:`BACKBONE_NAME`). Three
kinds of files are renamed to them here, and nowhere else:

* **torchvision and timm** state dicts, by the explicit rule tables of :data:`FAMILIES`. A rule is
  ``(pattern, replacement)``; a pattern matches a *whole* source name, every name must match
  exactly one rule, and a rule whose replacement is None drops the tensor (a classifier). Nothing
  is renamed by substring: a name no rule knows is an error that lists it.
* **Caffe2** files (MSRA's and FAIR's ImageNet ``.pkl``), by detectron2's own
  ``convert_basic_c2_names``, with MSRA's affine frozen norms completed into BN statistics.
* **detectron2** checkpoints, by unwrapping the backbone from under its prefix
  (``backbone.bottom_up.`` with FPN, ``backbone.`` plus ``roi_heads.res5.`` with C4).

A family also states what every file with its names implies about the network and its input
(:attr:`Family.metadata`), which the metadata step checks against the config.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

import numpy as np
import torch

from ..utils import check_choice, first_n
from .errors import WeightsFormatError

__all__ = [
    "BACKBONE_FORMATS",
    "BACKBONE_NAME",
    "C4_HEAD",
    "FAMILIES",
    "Family",
    "Rule",
    "as_tensor",
    "backbone_name",
    "backbone_prefix",
    "caffe2_to_backbone",
    "choose_family",
    "detectron2_to_backbone",
    "detectron2_to_model",
    "families_reading",
    "rename_names",
    "to_backbone",
    "unmatched_names",
]

logger = logging.getLogger(__name__)

Rule = tuple[str, Optional[str]]

# Our backbone's names: what every mapping produces and every checkpoint is placed from.
BACKBONE_NAME = re.compile(r"(stem|res[2-5])\..+")
# In a C4 detector, res5 is the RoI head's: "roi_heads.res5.*".
C4_HEAD = "roi_heads."
_STEM_NAME = re.compile(r"(|.*?\.)stem\..+")

_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

# ------------------------------------------------------------------------------------------
# torchvision and timm: rule tables
# ------------------------------------------------------------------------------------------
_BLOCKS: Sequence[Rule] = (
    (r"layer([1-4])\.(\d+)\.conv([1-3])\.weight", r"res{\1+1}.\2.conv\3.weight"),
    (rf"layer([1-4])\.(\d+)\.bn([1-3])\.{_NORM}", r"res{\1+1}.\2.conv\3.norm.\4"),
    (r"fc\.(weight|bias)", None),  # the ImageNet classifier
)
# Projection shortcut = Sequential(conv, bn).
_PROJECTION: Sequence[Rule] = (
    (r"layer([1-4])\.(\d+)\.downsample\.0\.weight", r"res{\1+1}.\2.shortcut.weight"),
    (rf"layer([1-4])\.(\d+)\.downsample\.1\.{_NORM}", r"res{\1+1}.\2.shortcut.norm.\3"),
)

# torchvision.models.ResNet (resnet18..152, resnext*, wide_resnet*): stride in the 3x3 conv.
TORCHVISION_RESNET: Sequence[Rule] = (
    (r"conv1\.weight", r"stem.conv1.weight"),
    (rf"bn1\.{_NORM}", r"stem.conv1.norm.\1"),
    *_BLOCKS,
    *_PROJECTION,
)

# timm's ResNet-D (resnet50d, resnet101d ...): deep stem Sequential(conv, bn, act, conv, bn, act,
# conv) + bn1, and shortcuts Sequential(pool or identity, conv, bn).
TIMM_RESNET_D: Sequence[Rule] = (
    (r"conv1\.0\.weight", r"stem.conv1.weight"),
    (rf"conv1\.1\.{_NORM}", r"stem.conv1.norm.\1"),
    (r"conv1\.3\.weight", r"stem.conv2.weight"),
    (rf"conv1\.4\.{_NORM}", r"stem.conv2.norm.\1"),
    (r"conv1\.6\.weight", r"stem.conv3.weight"),
    (rf"bn1\.{_NORM}", r"stem.conv3.norm.\1"),
    *_BLOCKS,
    (r"layer([1-4])\.(\d+)\.downsample\.1\.weight", r"res{\1+1}.\2.shortcut.weight"),
    (rf"layer([1-4])\.(\d+)\.downsample\.2\.{_NORM}", r"res{\1+1}.\2.shortcut.norm.\3"),
)

# timm's SE-ResNet / SE-ResNeXt (seresnet50, seresnext50_32x4d): torchvision's names plus an SE
# module per block (fc1, fc2 with biases).
TIMM_SE_RESNET: Sequence[Rule] = (
    *TORCHVISION_RESNET,
    (r"layer([1-4])\.(\d+)\.se\.fc([12])\.(weight|bias)", r"res{\1+1}.\2.se.fc\3.\4"),
)

# timm's Res2Net (res2net50_26w_4s, res2net101_26w_4s): the 3x3 conv is split into
# ``convs.k`` / ``bns.k``; ours are ``conv2.convs.k`` with their norms.
TIMM_RES2NET: Sequence[Rule] = (
    *TORCHVISION_RESNET,
    (r"layer([1-4])\.(\d+)\.convs\.(\d+)\.weight", r"res{\1+1}.\2.conv2.convs.\3.weight"),
    (rf"layer([1-4])\.(\d+)\.bns\.(\d+)\.{_NORM}", r"res{\1+1}.\2.conv2.convs.\3.norm.\4"),
)

# timm's ResNetV2 (resnetv2_50, resnetv2_101): full pre-activation. timm's ``stages.i`` is our
# ``res{i+2}``. A stage's first pre-activation (``stages.i.blocks.0.norm1``) is, in ours, the
# closing norm of the stem (i = 0) or of the previous stage (``res{i+1}.norm``), and timm's final
# ``norm`` closes res5 (see make_stage).
TIMM_RESNETV2: Sequence[Rule] = (
    (r"stem\.conv\.weight", r"stem.conv1.weight"),
    (rf"stages\.0\.blocks\.0\.norm1\.{_NORM}", r"stem.norm.\1"),
    (rf"stages\.([1-3])\.blocks\.0\.norm1\.{_NORM}", r"res{\1+1}.norm.\2"),
    (rf"norm\.{_NORM}", r"res5.norm.\1"),
    (rf"stages\.([0-3])\.blocks\.([1-9]\d*)\.norm1\.{_NORM}", r"res{\1+2}.\2.norm1.\3"),
    (rf"stages\.([0-3])\.blocks\.(\d+)\.norm([23])\.{_NORM}", r"res{\1+2}.\2.norm\3.\4"),
    (r"stages\.([0-3])\.blocks\.(\d+)\.conv([1-3])\.weight", r"res{\1+2}.\2.conv\3.weight"),
    (r"stages\.([0-3])\.blocks\.(\d+)\.downsample\.conv\.weight", r"res{\1+2}.\2.shortcut.weight"),
    (r"head\.fc\.(weight|bias)", None),  # the ImageNet classifier
)

# timm's ReXNet (rexnet_100 .. rexnet_300, rexnetr_*; every variant with depth_mult 1) into
# resnet_backbones.modeling.ReXNet. timm's ``features.{i}`` are 16 linear bottlenecks and the final
# 1x1 conv; ours are grouped by stride: stem = [3x3/2 conv, block 0], res2 = blocks 1-2, res3 =
# blocks 3-4, res4 = blocks 5-10, res5 = blocks 11-15 + the final conv.
_REXNET_BLOCK_LAYERS: Sequence[Rule] = (
    (r"conv_exp\.conv\.weight", r"conv_expand.weight"),
    (rf"conv_exp\.bn\.{_NORM}", r"conv_expand.norm.\1"),
    (r"conv_dw\.conv\.weight", r"conv_dw.weight"),
    (rf"conv_dw\.bn\.{_NORM}", r"conv_dw.norm.\1"),
    (r"se\.fc1\.(weight|bias)", r"se.fc1.\1"),
    (rf"se\.bn\.{_NORM}", r"se.fc1.norm.\1"),
    (r"se\.fc2\.(weight|bias)", r"se.fc2.\1"),
    (r"conv_pwl\.conv\.weight", r"conv_project.weight"),
    (rf"conv_pwl\.bn\.{_NORM}", r"conv_project.norm.\1"),
)
# Where timm's blocks features.0 .. features.15 go: (our stage, its number of them, our index of
# the first; the stem's block comes after its conv).
_REXNET_STAGES = (("stem", 1, 1), ("res2", 2, 0), ("res3", 2, 0), ("res4", 6, 0), ("res5", 5, 0))
_REXNET_BLOCKS = tuple(
    enumerate(
        f"{stage}.{first + i}" for stage, count, first in _REXNET_STAGES for i in range(count)
    )
)
TIMM_REXNET: Sequence[Rule] = (
    (r"stem\.conv\.weight", r"stem.0.conv.weight"),
    (rf"stem\.bn\.{_NORM}", r"stem.0.conv.norm.\1"),
    *(
        (rf"features\.{index}\.{pattern}", f"{target}.{replacement}")
        for index, target in _REXNET_BLOCKS
        for pattern, replacement in _REXNET_BLOCK_LAYERS
    ),
    (r"features\.16\.conv\.weight", r"res5.5.conv.weight"),
    (rf"features\.16\.bn\.{_NORM}", r"res5.5.conv.norm.\1"),
    (r"head\.fc\.(weight|bias)", None),  # the ImageNet classifier
)


@dataclass(frozen=True)
class Family:
    """The parameter names of one architecture family of another library.

    Attributes:
        source: the format of files with these names, "torchvision" or "timm".
        rules: the explicit mapping table to our names.
        metadata: what every file with these names implies (keys of
            :data:`~resnet_backbones.weights.metadata.METADATA_CONFIG_KEYS`), checked against the
            config as a file's own metadata would be.
    """

    source: str
    rules: Sequence[Rule]
    metadata: Mapping[str, Any] = field(default_factory=dict)


# Every torchvision and timm ImageNet model takes RGB inputs; their bottlenecks have the stride
# in the 3x3 conv. Pixel statistics vary between weights of one family (timm's ResNetV2), so the
# families do not imply them; the catalog entries and our exported files do.
_RGB = {"input_format": "RGB"}
_RGB_STRIDE_IN_3X3 = {**_RGB, "stride_in_1x1": False}

# Family -> its names. A file is of a family when the family's rules read every one of its names;
# families are tried in this order, and the first that reads a file gives its format. timm's
# plain ResNets (resnet50 ...) are named exactly as torchvision's: they read as "torchvision",
# which is the same mapping. The SE and Res2Net tables extend torchvision's, so they read a
# torchvision file too, with the same result; the model then decides (choose_family).
FAMILIES: dict[str, Family] = {
    "resnet": Family("torchvision", TORCHVISION_RESNET, _RGB_STRIDE_IN_3X3),
    "resnet_d": Family("timm", TIMM_RESNET_D, _RGB_STRIDE_IN_3X3),
    "seresnet": Family("timm", TIMM_SE_RESNET, _RGB_STRIDE_IN_3X3),
    "res2net": Family("timm", TIMM_RES2NET, _RGB_STRIDE_IN_3X3),
    "resnetv2": Family("timm", TIMM_RESNETV2, _RGB_STRIDE_IN_3X3),
    # ReXNet has no bottleneck stride placement to check.
    "rexnet": Family("timm", TIMM_REXNET, _RGB),
}


def _targets(name: str, rules: Sequence[Rule]) -> list[Optional[str]]:
    """The replacement of every rule whose pattern matches all of ``name``."""
    out = []
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, name)
        if match is None:
            continue
        if replacement is None:
            out.append(None)
            continue
        # "{k+1}" shifts a stage index (torchvision's layer1 is our res2).
        target = match.expand(replacement)
        out.append(re.sub(r"\{(\d+)\+(\d+)\}", lambda m: str(int(m[1]) + int(m[2])), target))
    return out


def unmatched_names(names: Iterable[str], rules: Sequence[Rule]) -> list[str]:
    """The names that no rule, or more than one rule, of ``rules`` matches (in order)."""
    return [name for name in names if len(_targets(name, rules)) != 1]


def families_reading(names: Sequence[str]) -> tuple[str, ...]:
    """The families of :data:`FAMILIES` whose rules read every one of ``names``, in order."""
    return tuple(f for f, family in FAMILIES.items() if not unmatched_names(names, family.rules))


def rename_names(names: Iterable[str], rules: Sequence[Rule]) -> dict[str, Optional[str]]:
    """Source name -> our name (None: dropped) for every one of ``names``.

    Raises:
        WeightsFormatError: listing every name that no rule (or more than one rule) matches.
    """
    renamed, unknown = {}, []
    for name in names:
        targets = _targets(name, rules)
        if len(targets) == 1:
            renamed[name] = targets[0]
        else:
            unknown.append(name)
    if unknown:
        raise WeightsFormatError(
            f"{len(unknown)} parameter(s) match no rule of the mapping table: "
            + first_n(unknown, 20)
        )
    return renamed


# ------------------------------------------------------------------------------------------
# Caffe2 (MSRA, FAIR) and detectron2
# ------------------------------------------------------------------------------------------
def as_tensor(value: Any) -> Any:
    """A numpy array as a torch tensor (sharing its memory where it can); anything else as it is."""
    return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value


def caffe2_to_backbone(state: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Our names for the backbone tensors of a Caffe2 state, by detectron2's own renaming."""
    from detectron2.checkpoint.c2_model_loading import convert_basic_c2_names

    names = list(state)
    ours_of = dict(zip(names, convert_basic_c2_names(names)))
    out = {ours: state[c2] for c2, ours in ours_of.items() if BACKBONE_NAME.fullmatch(ours)}
    dropped = sorted(c2 for c2, ours in ours_of.items() if not BACKBONE_NAME.fullmatch(ours))
    if dropped:
        logger.info(
            "%s: %d tensors are not part of the backbone and are left out: %s",
            path,
            len(dropped),
            first_n(dropped, 10),
        )
    # MSRA files hold a frozen BN as its affine scale and bias (y = s * x + b). Zero mean and
    # variance 1 - eps make detectron2's FrozenBN and torch's BatchNorm (both eps = 1e-5)
    # compute exactly that, and let the state load strictly into either.
    for c2, ours in ours_of.items():
        if c2.endswith("_bn_s") and ours in out:
            norm = ours[: -len("weight")]
            scale = as_tensor(out[ours])
            out.setdefault(norm + "running_mean", torch.zeros_like(scale))
            out.setdefault(norm + "running_var", torch.full_like(scale, 1 - 1e-5))
    return out


def backbone_prefix(names: Iterable[str]) -> Optional[str]:
    """Where a model or checkpoint keeps its ResNet-family backbone: the shortest prefix of its
    ``stem.`` tensors (``"backbone.bottom_up."`` with FPN, ``"backbone."`` with C4, ``""`` for a
    bare backbone; the first in order on a tie); None if no name has a ``stem.`` module."""
    prefixes = {m[1] for name in names if (m := _STEM_NAME.fullmatch(name))}
    return min(prefixes, key=lambda p: (len(p), p)) if prefixes else None


def backbone_name(name: str, prefix: str) -> Optional[str]:
    """Our name for a tensor of a model or checkpoint whose backbone is under ``prefix``: the rest
    of ``prefix + ours``, or a C4 head's ``roi_heads.res5.*`` (res5 is the head's there); None for
    a tensor of anything else."""
    if name.startswith(C4_HEAD + "res5."):
        return name[len(C4_HEAD) :]
    ours = name[len(prefix) :] if name.startswith(prefix) else None
    return ours if ours is not None and BACKBONE_NAME.fullmatch(ours) else None


def detectron2_to_backbone(state: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Our backbone names for the backbone of a detectron2 state (FPN, C4, or bare).

    Raises:
        WeightsFormatError: the state has no ``stem.`` module, so no ResNet-family backbone.
    """
    prefix = backbone_prefix(state)
    if prefix is None:
        raise WeightsFormatError(
            f"{path}: no backbone in this detectron2 checkpoint (no name has a 'stem.' module)"
        )
    return {ours: v for name, v in state.items() if (ours := backbone_name(name, prefix))}


def detectron2_to_model(
    fmt: str, state: Mapping[str, Any], extra: Mapping[str, Any], model_state: Mapping[str, Any]
) -> tuple[dict[str, Any], bool]:
    """A detectron2, pycls or Detectron1 state renamed by detectron2's own rules: the ``module.``
    prefix of a DDP model stripped, then, where the file asks for them (pycls and Detectron1
    files always do), detectron2's name-matching heuristics against the model's names, with its
    Caffe2 renaming for Caffe2 files.

    Returns:
        ``(state as torch tensors, whether the heuristics named it)``.
    """
    if fmt == "pycls":
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state = {name: as_tensor(value) for name, value in state.items()}
    torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, "module.")
    if not (fmt in ("pycls", "msra") or extra.get("matching_heuristics")):
        return state, False
    from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts

    caffe2 = fmt == "msra" or extra.get("__author__") == "Caffe2"
    return align_and_update_state_dicts(model_state, state, c2_conversion=caffe2), True


# ------------------------------------------------------------------------------------------
# The rename step
# ------------------------------------------------------------------------------------------
# Formats whose files hold a backbone that is renamed to our names here (ImageNet backbones and
# our exports); the others hold whole detectron2 models and keep their names.
BACKBONE_FORMATS: tuple[str, ...] = ("resnet_backbones", "torchvision", "timm", "msra")


def choose_family(
    names: Sequence[str], candidates: Sequence[str], wanted: Iterable[str]
) -> Optional[str]:
    """Of the ``candidates`` (families that read every one of ``names``), the one whose renamed
    names cover most of ``wanted`` (the backbone names a model has); the first on a tie. None
    when there is no candidate. Only names are renamed here, never tensors.
    """
    if len(candidates) < 2:
        return candidates[0] if candidates else None
    wanted = set(wanted)
    return max(
        candidates,
        key=lambda f: len(set(rename_names(names, FAMILIES[f].rules).values()) & wanted),
    )


def to_backbone(
    fmt: str, state: Mapping[str, Any], *, family: Optional[str] = None, path: str = "<in memory>"
) -> dict[str, torch.Tensor]:
    """The backbone tensors of a file of format ``fmt`` under our names (``stem.*``, ``res2.*``
    ...), as torch tensors.

    Args:
        fmt: the file's format (see :mod:`.detect`).
        state: its tensors under its own names.
        family: for "torchvision" and "timm", the key of :data:`FAMILIES` to read them with.
        path: the file, for messages.

    Raises:
        WeightsFormatError: names that ``family``'s rules do not read (listing them), a format
            without a backbone in our names (pycls), or a detectron2 checkpoint without a
            ResNet-family backbone.
        ValueError: ``family`` is not a key of :data:`FAMILIES`.
    """
    if fmt in ("torchvision", "timm"):
        check_choice("family", family, FAMILIES, quote=False)
        renamed = rename_names(state, FAMILIES[family].rules)
        out = {target: state[name] for name, target in renamed.items() if target is not None}
    elif fmt == "msra":
        out = caffe2_to_backbone(state, path)
    elif fmt == "resnet_backbones":
        out = dict(state)
    elif fmt == "detectron2":
        out = detectron2_to_backbone(state, path)
    else:
        raise WeightsFormatError(
            f"{path}: {fmt} files cannot be renamed to our backbone; convertible formats: "
            "resnet_backbones, detectron2, msra, torchvision, timm"
        )
    return {name: as_tensor(value) for name, value in out.items()}

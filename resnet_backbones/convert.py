"""Explicit mapping tables from other libraries' parameter names to ours.

Each table is a list of rules ``(pattern, replacement)``; a pattern must match a *whole* source
name, every source name must match exactly one rule, and a rule whose replacement is None drops
the tensor (a classification head, say). Nothing is renamed by substring, so a name that no rule
knows is an error that lists it, never a silently skipped tensor.
"""

from __future__ import annotations

import re
from typing import Mapping, Optional, Sequence

import torch

__all__ = [
    "TIMM_RES2NET",
    "TIMM_RESNETV2",
    "TIMM_RESNET_D",
    "TIMM_REXNET",
    "TIMM_SE_RESNET",
    "TORCHVISION_RESNET",
    "convert_state_dict",
]

Rule = tuple[str, Optional[str]]

_NORM = r"(weight|bias|running_mean|running_var|num_batches_tracked)"

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

# torchvision.models.ResNet (resnet18..152, resnext*, wide_resnet*): stride in the 3x3 conv,
# so the target network needs STRIDE_IN_1X1 False; inputs RGB, normalised by ImageNet mean/std.
TORCHVISION_RESNET: Sequence[Rule] = (
    (r"conv1\.weight", r"stem.conv1.weight"),
    (rf"bn1\.{_NORM}", r"stem.conv1.norm.\1"),
    *_BLOCKS,
    *_PROJECTION,
)

# timm's ResNet-D (resnet50d, resnet101d ...): deep stem Sequential(conv, bn, act, conv, bn, act,
# conv) + bn1, and shortcuts Sequential(pool or identity, conv, bn). Targets STEM "deep",
# AVG_DOWN True, STRIDE_IN_1X1 False.
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
# module per block (fc1, fc2 with biases). Targets SE_RATIO 16, STRIDE_IN_1X1 False.
TIMM_SE_RESNET: Sequence[Rule] = (
    *TORCHVISION_RESNET,
    (r"layer([1-4])\.(\d+)\.se\.fc([12])\.(weight|bias)", r"res{\1+1}.\2.se.fc\3.\4"),
)

# timm's Res2Net (res2net50_26w_4s, res2net101_26w_4s): the 3x3 conv is split into
# ``convs.k`` / ``bns.k``; ours are ``conv2.convs.k`` with their norms. Targets RES2NET_SCALE 4,
# RES2NET_WIDTH 26, STRIDE_IN_1X1 False.
TIMM_RES2NET: Sequence[Rule] = (
    *TORCHVISION_RESNET,
    (r"layer([1-4])\.(\d+)\.convs\.(\d+)\.weight", r"res{\1+1}.\2.conv2.convs.\3.weight"),
    (rf"layer([1-4])\.(\d+)\.bns\.(\d+)\.{_NORM}", r"res{\1+1}.\2.conv2.convs.\3.norm.\4"),
)

# timm's ResNetV2 (resnetv2_50, resnetv2_101): full pre-activation. timm's ``stages.i`` is our
# ``res{i+2}``. A stage's first pre-activation (``stages.i.blocks.0.norm1``) is, in ours, the
# closing norm of the stem (i = 0) or of the previous stage (``res{i+1}.norm``), and timm's final
# ``norm`` closes res5 (see make_stage). Targets BLOCK_ORDER "preact", STRIDE_IN_1X1 False.
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


def _rename(name: str, rules: Sequence[Rule]) -> tuple[bool, Optional[str]]:
    matches = [(m, r) for m, r in ((re.fullmatch(p, name), r) for p, r in rules) if m]
    if len(matches) != 1:
        return False, None
    match, replacement = matches[0]
    if replacement is None:
        return True, None
    out = match.expand(replacement)
    # "{k+1}" shifts a stage index (torchvision's layer1 is our res2).
    return True, re.sub(r"\{(\d+)\+(\d+)\}", lambda m: str(int(m[1]) + int(m[2])), out)


def convert_state_dict(
    state_dict: Mapping[str, torch.Tensor], rules: Sequence[Rule]
) -> dict[str, torch.Tensor]:
    """Renames ``state_dict`` by ``rules``.

    Raises:
        KeyError: listing every source name that no rule (or more than one rule) matches.
    """
    converted, unknown = {}, []
    for name, tensor in state_dict.items():
        known, target = _rename(name, rules)
        if not known:
            unknown.append(name)
        elif target is not None:
            converted[target] = tensor
    if unknown:
        raise KeyError(
            f"{len(unknown)} parameter(s) match no rule of the mapping table: {', '.join(unknown[:20])}"
            + (" ..." if len(unknown) > 20 else "")
        )
    return converted


# timm's ReXNet (rexnet_100 .. rexnet_300, rexnetr_*; every variant with depth_mult 1) into
# resnet_backbones.modeling.ReXNet. timm's ``features.{i}`` are 16 linear bottlenecks and the final
# 1x1 conv; ours are grouped by stride: stem = [3x3/2 conv, block 0], res2 = blocks 1-2, res3 =
# blocks 3-4, res4 = blocks 5-10, res5 = blocks 11-15 + the final conv. Inputs RGB, normalised by
# the ImageNet mean/std.
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

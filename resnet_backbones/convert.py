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

__all__ = ["TIMM_RESNET_D", "TORCHVISION_RESNET", "convert_state_dict"]

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

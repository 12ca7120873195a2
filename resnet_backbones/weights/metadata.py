"""What weights record about the input and network they were trained with, and the check of a
config against it.

A ResNet loads the weights of the wrong stride placement or colour order without a single
error, and then detects poorly; the mismatch only shows in the final AP. So weights carry
these facts as metadata (our own files), or imply them (a mapping table, a catalog entry), and
the checkpointer refuses a config that contradicts them.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

from ..utils import config_get
from .errors import MetadataMismatchError
from .mappings import FAMILIES

if TYPE_CHECKING:
    from .detect import WeightsFile
    from .entry import WeightsEntry

__all__ = [
    "METADATA_CONFIG_KEYS",
    "arch_metadata",
    "check_metadata",
    "expected_metadata",
    "has_bottlenecks",
    "metadata_from_config",
]

# Metadata key -> the config key it constrains.
METADATA_CONFIG_KEYS: dict[str, str] = {
    # The stride of a bottleneck is in its 1x1 conv (MSRA/Caffe2) or its 3x3 conv (torchvision,
    # timm, fb.torch, FAIR's ResNeXt); the weights load either way, the features differ.
    "stride_in_1x1": "MODEL.RESNETS.STRIDE_IN_1X1",
    # Channel order the network was trained on: "RGB" or "BGR".
    "input_format": "INPUT.FORMAT",
    # Per-channel normalisation in 0..255 pixel units, in the order of input_format.
    "pixel_mean": "MODEL.PIXEL_MEAN",
    "pixel_std": "MODEL.PIXEL_STD",
}

_BOTTLENECK_NAME = re.compile(r"(^|\.)res[2-5]\.\d+\.conv3\.")


def metadata_from_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata implied by a config fragment (config key -> value)."""
    return {meta: config[key] for meta, key in METADATA_CONFIG_KEYS.items() if key in config}


def has_bottlenecks(names: Iterable[str]) -> bool:
    """Whether a state dict in our names has bottleneck blocks (a third conv per block); only
    there does the stride placement matter."""
    return any(_BOTTLENECK_NAME.search(name) for name in names)


def _same(expected: Any, actual: Any) -> bool:
    """Equal, with lists compared item by item and numbers to 1e-3 (YAML rounds floats)."""
    if isinstance(expected, (list, tuple)) or isinstance(actual, (list, tuple)):
        return (
            isinstance(expected, (list, tuple))
            and isinstance(actual, (list, tuple))
            and len(expected) == len(actual)
            and all(map(_same, expected, actual))
        )
    if isinstance(expected, (bool, str)) or isinstance(actual, (bool, str)):
        return type(expected) is type(actual) and expected == actual
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(expected, actual, rel_tol=1e-6, abs_tol=1e-3)
    return expected == actual


def check_metadata(
    metadata: Mapping[str, Any], cfg: Any, *, source: str, bottleneck: bool = True
) -> None:
    """Raises MetadataMismatchError if ``cfg`` contradicts ``metadata``.

    Args:
        metadata: keys of :data:`METADATA_CONFIG_KEYS` (others are ignored) and their values.
        cfg: the config the model was built from.
        source: the weights' path or name, for the message.
        bottleneck: whether the network has bottleneck blocks; without them the stride
            placement is moot and ``stride_in_1x1`` is not checked.
    """
    mismatches = []
    for meta_key, cfg_key in METADATA_CONFIG_KEYS.items():
        if meta_key not in metadata or (meta_key == "stride_in_1x1" and not bottleneck):
            continue
        expected, actual = metadata[meta_key], config_get(cfg, cfg_key)
        if not _same(expected, actual):
            mismatches.append(
                f"{cfg_key} is {actual!r} in the config but {expected!r} in the weights"
            )
    if mismatches:
        raise MetadataMismatchError(
            f"{source}: the config contradicts what the weights were trained with: "
            + "; ".join(mismatches)
            + ". Set these keys to the weights' values (tools/convert_weights.py writes them "
            "into a YAML fragment beside the converted file)."
        )


def arch_metadata(arch: str) -> dict[str, Any]:
    """What every file of ``arch`` (a key of ARCHS) implies: the input its published weights
    were trained with (all its catalog entries agree) and its stride placement."""
    from .catalog import fitting_config

    return metadata_from_config(fitting_config(arch))


def expected_metadata(
    weights: WeightsFile,
    family: Optional[str],
    entry: Optional[WeightsEntry] = None,
    arch: Optional[str] = None,
) -> dict[str, Any]:
    """What a config must agree with to load ``weights``: what the catalog ``entry`` they were
    named by says, overridden by what the network ``arch`` the file holds implies
    (:func:`arch_metadata`: a raw torchvision, timm or MSRA file's pixel statistics), by what
    their mapping ``family`` implies, and by what the file itself records."""
    implied = dict(FAMILIES[family].metadata) if family else {}
    expected = {**(arch_metadata(arch) if arch else {}), **implied, **weights.metadata}
    return {**entry.metadata, **expected} if entry is not None else expected

"""Read a weights file without running code from it.

torch.save archives (zip) and torch.save's legacy format are read by
``torch.load(weights_only=True, map_location="cpu")``; safetensors files by the safetensors
package (a JSON header and raw tensor bytes: nothing in them can run); any other pickle (Caffe2
and detectron2 ``.pkl`` files) by the restricted unpickler of :mod:`.safe_pickle`. The kind of
file is told from its first bytes, never from its name.

A safetensors file's ``__metadata__`` (a str -> str map) carries our metadata in files that
tools/convert_weights.py writes (:func:`safetensors_metadata`): the ``"metadata"`` of a torch
file of ours, as one JSON object under the key ``"resnet_backbones"`` (so that none of its keys
can clash with the Hugging Face convention ``"format": "pt"``).
"""

from __future__ import annotations

import json
import os
import pickle
import re
import struct
from typing import Any, Mapping, Optional

import torch

from .errors import (
    UnsafeWeightsError,
    WeightsFormatError,
    WeightsNotFoundError,
    missing_dependency,
)
from .safe_pickle import load_pickle

__all__ = [
    "SAFETENSORS_METADATA_KEY",
    "read_file",
    "safetensors_header_size",
    "safetensors_metadata",
]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of torch.save's older format
# A safetensors file starts with the size of its JSON header (8 bytes, little-endian), then the
# header itself, whose first byte is "{". The safetensors library refuses headers above 100 MB.
_SAFETENSORS_MAX_HEADER = 100_000_000
# The key of our metadata (a JSON object) in the __metadata__ of the safetensors files we write.
SAFETENSORS_METADATA_KEY = "resnet_backbones"


def safetensors_header_size(head: bytes) -> Optional[int]:
    """The JSON header's size if ``head`` (a file's first 9 bytes or more) starts a
    safetensors file, else None."""
    if len(head) < 9:
        return None
    (size,) = struct.unpack("<Q", head[:8])
    return size if 2 <= size <= _SAFETENSORS_MAX_HEADER and head[8:9] == b"{" else None


def safetensors_metadata(metadata: Mapping[str, Any]) -> dict[str, str]:
    """Our metadata as a safetensors ``__metadata__`` (str -> str): one JSON object under
    :data:`SAFETENSORS_METADATA_KEY`, which marks the file as ours, and ``"format": "pt"``."""
    return {"format": "pt", SAFETENSORS_METADATA_KEY: json.dumps(dict(metadata))}


def _decode_metadata(path: str, value: str) -> dict[str, Any]:
    try:
        decoded = json.loads(value)
    except json.JSONDecodeError as e:
        decoded = e
    if not isinstance(decoded, dict):
        raise WeightsFormatError(
            f"{path}: {SAFETENSORS_METADATA_KEY!r} in the safetensors header is not a JSON "
            f"object ({value[:80]!r}); convert the source again with tools/convert_weights.py"
        )
    return decoded


def _safetensors_load(path: str, header_size: int) -> dict[str, Any]:
    """The tensors of a safetensors file: ``{"model": ..., "metadata": ...}`` for a file of
    ours (its ``__metadata__`` decoded), else the flat state dict."""
    try:
        import safetensors.torch
    except ImportError:
        raise missing_dependency("safetensors", f"{path} (a safetensors file)") from None

    def corrupt(why: str) -> WeightsFormatError:
        return WeightsFormatError(
            f"{path}: a corrupt safetensors file ({why}); download or convert it again"
        )

    size = os.path.getsize(path)
    if size < 8 + header_size:
        raise corrupt(f"its header announces {header_size} bytes, the file has {size} in all")
    with open(path, "rb") as f:
        f.seek(8)
        raw = f.read(header_size)
    try:
        header = json.loads(raw)
        state = safetensors.torch.load_file(path, device="cpu")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise corrupt(f"its header is not JSON: {e}") from e
    except Exception as e:  # safetensors raises SafetensorError, or an OSError from mmap
        raise corrupt(f"{type(e).__name__}: {e}") from e
    ours = (header.get("__metadata__") or {}).get(SAFETENSORS_METADATA_KEY)
    if ours is None:
        return state
    return {
        "model": state,
        "metadata": _decode_metadata(path, ours),
        "__author__": "resnet_backbones",
    }


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
    """The object a weights file holds, read without running code from it.

    Raises:
        WeightsNotFoundError: no such file (a FileNotFoundError).
        UnsafeWeightsError: the file names a global that weights never need.
        WeightsFormatError: an empty, truncated or garbage file.
        MissingDependencyError: a safetensors file without the safetensors package.
    """
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights file not found: {path!r}")
    if os.path.getsize(path) == 0:
        raise WeightsFormatError(f"{path}: the weights file is empty")
    with open(path, "rb") as f:
        head = f.read(9)
    if head.startswith(_ZIP_MAGIC):
        return _torch_load(path)
    header_size = safetensors_header_size(head)
    if header_size is not None:
        return _safetensors_load(path, header_size)
    try:
        # Reads the first pickled object only: torch.save's legacy format starts with a magic
        # number, and everything after it is torch.load's to read.
        obj = load_pickle(path)
    except UnsafeWeightsError:
        raise
    except Exception as e:  # a garbage stream raises anything from EOFError to KeyError
        raise WeightsFormatError(
            f"{path}: neither a torch.save archive, a safetensors file nor a readable pickle "
            f"({type(e).__name__}: {e})"
        ) from e
    if isinstance(obj, int) and not isinstance(obj, bool) and obj == _LEGACY_TORCH_MAGIC:
        return _torch_load(path)
    return obj

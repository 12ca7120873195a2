"""Read a weights file without running code from it.

torch.save archives (zip) and torch.save's legacy format are read by
``torch.load(weights_only=True, map_location="cpu")``; any other pickle (Caffe2 and detectron2
``.pkl`` files) by the restricted unpickler of :mod:`.safe_pickle`. The kind of file is told from
its first bytes, never from its name.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Any

import torch

from .errors import UnsafeWeightsError, WeightsFormatError, WeightsNotFoundError
from .safe_pickle import load_pickle

__all__ = ["read_file"]

_ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since PyTorch 1.6
_LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C  # the first object of torch.save's older format


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
    """
    if not os.path.isfile(path):
        raise WeightsNotFoundError(f"weights file not found: {path!r}")
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

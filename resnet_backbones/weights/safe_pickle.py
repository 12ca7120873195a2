"""A pickle reader that builds numpy arrays and plain containers, and nothing else.

A pickle is a program: unpickling may import and call any function (``os.system``, ``open``
...), which is how a tampered ``.pkl`` "weights" file runs code on the machine that loads it.
detectron2 reads ``.pkl`` weights (MSRA/Caffe2 ImageNet models, its own model zoo) with plain
``pickle.load``. :func:`load_pickle` reads the same files, but every global the stream names
must be one of :data:`ALLOWED_GLOBALS`, the few that numpy arrays and plain containers need;
anything else is refused before it is imported, let alone called.
"""

from __future__ import annotations

import os
import pickle
from typing import IO, Any, Union

from .errors import UnsafeWeightsError

__all__ = ["ALLOWED_GLOBALS", "load_pickle"]

_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")  # numpy 1.x, 2.x
_CONTAINERS = ("set", "frozenset", "complex", "bytearray")

# (module, name) pairs a weights pickle may name. Python 2 pickles (Caffe2/Detectron1 files)
# spell the builtins module "__builtin__"; protocol-2 pickles of Python 3 bytes call
# _codecs.encode(text, "latin1"), which only converts a string.
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(m, n) for m in _NUMPY_MULTIARRAY for n in ("_reconstruct", "scalar")]
    # Protocol 5 arrays: frombuffer(bytes, dtype).reshape(shape, order).
    + [(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("collections", "OrderedDict")]
    + [(m, n) for m in ("builtins", "__builtin__") for n in _CONTAINERS]
    + [("_codecs", "encode")]
)


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: IO[bytes], *, source: str, encoding: str):
        super().__init__(file, encoding=encoding)
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafeWeightsError(
                f"{self._source}: refused to load {module}.{name}: a pickle (weights, CIFAR batches) may only "
                "hold numpy arrays, numbers, strings and plain containers (allowed globals: "
                f"{', '.join(sorted(f'{m}.{n}' for m, n in ALLOWED_GLOBALS))}). If this file "
                "comes from a source you trust, convert it with a script you control."
            )
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafeWeightsError(
            f"{self._source}: refused a persistent id ({pid!r}); a torch.save file is read with "
            "torch.load(weights_only=True), never as a plain pickle"
        )


def load_pickle(
    path_or_fileobj: Union[str, os.PathLike, IO[bytes]], *, encoding: str = "latin1"
) -> Any:
    """Reads a pickle that may hold only numpy arrays, numbers, strings and plain containers.

    Args:
        path_or_fileobj: a file path, or a binary file object opened for reading.
        encoding: how Python 2 ``str`` objects are decoded. "latin1" (detectron2's choice for
            Caffe2 pickles) keeps their bytes, which numpy needs to rebuild Python 2 arrays.

    Returns:
        The unpickled object.

    Raises:
        UnsafeWeightsError: naming the refused ``module.name`` and the file.
        pickle.UnpicklingError, EOFError: a stream that is not a valid pickle.
    """
    if isinstance(path_or_fileobj, (str, os.PathLike)):
        source = os.fspath(path_or_fileobj)
        with open(source, "rb") as f:
            return _RestrictedUnpickler(f, source=source, encoding=encoding).load()
    source = str(getattr(path_or_fileobj, "name", "<file object>"))
    return _RestrictedUnpickler(path_or_fileobj, source=source, encoding=encoding).load()

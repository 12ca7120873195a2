"""Small helpers that several parts of the package share, each written once.

* validators whose errors name the key, the bad value and the valid ones, and
  :class:`ArgumentNames`, which says how a typed API's errors name its arguments (the Python
  name, or the config key it was read from);
* :func:`first_n`, the "first N names ..." of long lists in messages;
* dotted config keys (``"MODEL.RESNETS.DEPTH"``): read, write, and turn into YAML;
* :func:`atomic_write`: a file appears whole under its name, or not at all;
* :func:`cache_root`: where generated datasets and downloaded weights are kept.

Nothing here imports torch or detectron2.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from types import MappingProxyType
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "CACHE_ROOT_ENV",
    "PYTHON_NAMES",
    "ArgumentNames",
    "atomic_write",
    "cache_root",
    "check_choice",
    "check_positive_int",
    "check_positive_number",
    "config_get",
    "config_set",
    "config_yaml",
    "first_n",
]

# The folder of everything resnet_backbones generates or downloads (read at each use).
CACHE_ROOT_ENV = "RESNET_BACKBONES_CACHE"


# ------------------------------------------------------------------------------------------
# Validators
# ------------------------------------------------------------------------------------------
def check_choice(key: str, value: Any, valid: Iterable[Any], *, quote: bool = True) -> None:
    """Raises ValueError naming ``key``, the bad ``value`` and the valid ones (each in its repr,
    or as plain text with ``quote=False``: names such as ``resnet18``)."""
    valid = tuple(valid)
    if value not in valid:
        shown = ", ".join(repr(v) if quote else str(v) for v in valid)
        raise ValueError(f"{key} = {value!r} is not valid; valid values: {shown}")


def check_positive_int(key: str, value: Any, minimum: int = 1) -> None:
    """Raises ValueError unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise ValueError(f"{key} = {value!r} is not valid; it must be {kind}")


def check_positive_number(key: str, value: Any) -> None:
    """Raises ValueError unless ``value`` is an int or float (not a bool) above zero."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{key} = {value!r} is not valid; it must be a positive number")


class ArgumentNames:
    """How error messages name a typed API's arguments: by their Python names (the default), or
    by the config keys they were read from.

    ``names["depth"]`` is the full name ("depth", or "MODEL.RESNETS.DEPTH");
    ``names.short("depth")`` is how a message refers to it again after a full name ("depth", or
    "DEPTH"). An argument without a key keeps its Python name. The typed API formats every
    message through the names it is given, so one check serves both the Python caller and the
    config user.
    """

    def __init__(self, keys: Mapping[str, str] | None = None):
        """
        Args:
            keys: argument name -> the name messages should use for it (a config key).
        """
        self.keys: Mapping[str, str] = MappingProxyType(dict(keys or {}))

    def __getitem__(self, argument: str) -> str:
        return self.keys.get(argument, argument)

    def short(self, argument: str) -> str:
        """The last part of the name (``"DEPTH"`` for ``"MODEL.RESNETS.DEPTH"``)."""
        return self[argument].rsplit(".", 1)[-1]

    def __repr__(self) -> str:
        return f"ArgumentNames({dict(self.keys)!r})"


# Errors of the typed API name its Python arguments unless given other names.
PYTHON_NAMES = ArgumentNames()


def first_n(items: Sequence[Any], n: int, separator: str = ", ", *, total: bool = False) -> str:
    """The first ``n`` of ``items`` joined by ``separator``, then " ..." if there are more
    (" ... (K in all)" with ``total``)."""
    items = [str(item) for item in items]
    text = separator.join(items[:n])
    if len(items) > n:
        text += f" ... ({len(items)} in all)" if total else " ..."
    return text


# ------------------------------------------------------------------------------------------
# Dotted config keys
# ------------------------------------------------------------------------------------------
def config_get(cfg: Any, key: str) -> Any:
    """``cfg.A.B.C`` for ``key`` "A.B.C"."""
    node = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def config_set(cfg: Any, key: str, value: Any) -> None:
    """Sets ``cfg.A.B.C = value`` for ``key`` "A.B.C", refusing a key ``cfg`` does not have.

    Raises:
        ValueError: naming the missing part of ``key`` and the keys its parent has.
    """
    node = cfg
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    check_choice("config key", leaf, node.keys())
    node[leaf] = value


def config_yaml(config: Mapping[str, Any]) -> str:
    """``{"MODEL.RESNETS.DEPTH": 50}`` as the YAML a detectron2 config merges."""
    import yaml

    nested: dict[str, Any] = {}
    for key, value in config.items():
        node = nested
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = list(value) if isinstance(value, tuple) else value
    return yaml.safe_dump(nested, sort_keys=False, default_flow_style=None)


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Opens a temporary file beside ``path`` for writing; renames it to ``path`` only when the
    ``with`` block ends without an exception. A reader never sees a partial file, and a failed
    or interrupted write leaves no file behind (the temporary one is removed).

    The file gets mode 0644, as ``open`` would create it (not mkstemp's 0600).
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".part"
    )
    try:
        with os.fdopen(fd, mode, encoding=encoding) as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def cache_root() -> str:
    """``$RESNET_BACKBONES_CACHE``, else ``~/.cache/resnet_backbones``; read at each call."""
    return os.environ.get(CACHE_ROOT_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "resnet_backbones"
    )

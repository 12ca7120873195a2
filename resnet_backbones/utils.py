"""Small helpers that several parts of the package share, each written once.

* validators whose errors name the key, the bad value and the valid ones, and
  :class:`ArgumentNames`, which says how a typed API's errors name its arguments (the Python
  name, or the config key it was read from);
* :func:`first_n`, the "first N names ..." of long lists in messages;
* dotted config keys (``"MODEL.RESNETS.DEPTH"``): read, write, and turn into YAML;
* :func:`atomic_write`: a file appears whole under its name, or not at all, and survives a
  power cut once written; a full disk is a :class:`DiskFullError` that says so;
  :func:`remove_stale_temporaries` cleans up after writers that were killed;
* :func:`cache_root`: where generated datasets and downloaded weights are kept.

Nothing here imports torch or detectron2.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from types import MappingProxyType
from typing import IO, Any, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "CACHE_ROOT_ENV",
    "PYTHON_NAMES",
    "ArgumentNames",
    "DiskFullError",
    "atomic_write",
    "cache_root",
    "check_choice",
    "check_positive_int",
    "check_positive_number",
    "config_get",
    "config_set",
    "config_yaml",
    "first_n",
    "remove_stale_temporaries",
    "temporary_target",
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
# What a disk-full write raises, by errno: no space left, the per-process file size limit
# (RLIMIT_FSIZE, ``ulimit -f``; the write fails with EFBIG once SIGXFSZ is ignored), a quota.
_DISK_FULL = {
    errno.ENOSPC: "no space left on device",
    errno.EFBIG: "file size limit reached (RLIMIT_FSIZE, see ulimit -f)",
    errno.EDQUOT: "disk quota exceeded",
}
# ".model_0000009.pth.tmp-4242-k3j5x_9a": the temporary file of model_0000009.pth, written by
# process 4242. The leading dot and the suffix keep it from looking like a checkpoint (.pth) or
# any other file a reader looks for.
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.tmp-(?P<pid>\d+)-[a-z0-9_]+")
# The temporaries this process is writing now (a pid can be reused: see remove_stale_temporaries).
_OPEN_TEMPORARIES: set[str] = set()


class DiskFullError(OSError):
    """A file could not be written for lack of room: the disk (or the quota, or the process's
    file size limit) is full. The message names the file, the reason and the free space.

    ``DiskFullError(errno, message, path)``: ``errno``, ``strerror`` and ``filename`` as any
    OSError's; it prints as the message alone (the path is in it).
    """

    def __str__(self) -> str:
        return str(self.strerror)


def _disk_full_cause(error: BaseException) -> OSError | None:
    """The disk-full OSError behind ``error``, if any. torch.save reports a failed write as
    ``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos``, with the
    OSError only in its context."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno in _DISK_FULL:
            return error
        error = error.__cause__ or error.__context__
    return None


def _free_space(folder: str) -> str:
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return "unknown free space"
    return f"{free / 2**20:.1f} MiB free"


def _fsync_folder(folder: str) -> None:
    """Makes a rename in ``folder`` durable (the new name survives a power cut)."""
    if os.name == "nt":  # Windows cannot open a folder as a file; its renames are journaled
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some network filesystems cannot fsync a folder
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str, mode: str = "wb", *, encoding: str | None = None) -> Iterator[IO]:
    """Opens a temporary file beside ``path`` for writing; when the ``with`` block ends without
    an exception, flushes it, fsyncs it, renames it to ``path`` and fsyncs the folder. A reader
    never sees a partial file under ``path``; a failed write removes the temporary file, and
    one left by a killed process is named ``.NAME.tmp-PID-XXXX``, which no reader takes for
    ``NAME`` (:func:`remove_stale_temporaries` deletes them).

    The file gets mode 0644, as ``open`` would create it (not mkstemp's 0600).

    Raises:
        DiskFullError: the disk, the quota or the file size limit is full; the message names
            ``path``, the reason and the free space. A file already at ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.tmp-{os.getpid()}-")
    _OPEN_TEMPORARIES.add(tmp)
    try:
        try:
            with os.fdopen(fd, mode, encoding=encoding) as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            _fsync_folder(folder)
        except Exception as e:
            full = _disk_full_cause(e)
            if full is None:
                raise
            raise DiskFullError(
                full.errno,
                f"{_DISK_FULL[full.errno]} while writing {path} ({_free_space(folder)} on the "
                f"disk of {folder}); nothing was written under that name and the files already "
                "there are untouched. Free some space (or raise the limit), or write to another "
                "disk",
                path,
            ) from e
    finally:
        _OPEN_TEMPORARIES.discard(tmp)
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def temporary_target(name: str) -> str | None:
    """The file name an :func:`atomic_write` temporary named ``name`` is written for
    (``.model_0000009.pth.tmp-PID-XXXX`` -> ``model_0000009.pth``); None for any other name."""
    match = _TEMPORARY.fullmatch(name)
    return match["target"] if match else None


def remove_stale_temporaries(folder: str) -> list[str]:
    """Deletes the temporary files that :func:`atomic_write` left in ``folder`` when its process
    was killed mid-write; returns their paths.

    A temporary is stale when the process named in it is gone, or is this process but not
    writing it (a restarted container often gets the same pid). Call it where the caller is the
    folder's only writer on this machine (a training run's start, for its OUTPUT_DIR).
    """
    removed = []
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        match = _TEMPORARY.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(folder, name)
        pid = int(match["pid"])
        alive = path in _OPEN_TEMPORARIES if pid == os.getpid() else _process_exists(pid)
        if not alive:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            removed.append(path)
    return removed


def cache_root() -> str:
    """``$RESNET_BACKBONES_CACHE``, else ``~/.cache/resnet_backbones``; read at each call."""
    return os.environ.get(CACHE_ROOT_ENV) or os.path.join(
        os.path.expanduser("~"), ".cache", "resnet_backbones"
    )

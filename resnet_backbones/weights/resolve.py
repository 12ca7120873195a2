"""Resolve a weights path to a local file: zoo names, https and detectron2 URLs, local paths.

* ``resnet_backbones://NAME``: the catalog entry NAME (:mod:`.catalog`), fetched from its URL
  or from the same file name under ``$RESNET_BACKBONES_ZOO_BASE_URL`` (a mirror), verified
  against its SHA-256;
* ``https://...`` (plain ``http://`` only from a loopback host) and ``detectron2://PATH``
  (detectron2's file server): fetched by :func:`.download.download`, atomic and cached, checked
  against the catalog's hash for a catalog file, else the torch.hub-style hash in the file name;
* anything else: a local path.

The handlers live in an iopath ``PathManager`` of our own (:func:`weights_path_manager`);
detectron2's global one also learns ``resnet_backbones://`` (:func:`register_zoo_scheme`).
"""

from __future__ import annotations

import os
import urllib.parse
from functools import cache
from typing import Any, Optional

from iopath.common.file_io import PathHandler, PathManager

from .download import download, hash_prefix_from_url
from .entry import WeightsEntry
from .errors import ChecksumError, DownloadError, UnknownWeightsError, WeightsNotFoundError

__all__ = [
    "DETECTRON2_BASE_URL",
    "ZOO_BASE_URL_ENV",
    "ZOO_PREFIX",
    "catalog_entry",
    "catalog_entry_for",
    "register_zoo_scheme",
    "resolve",
    "weights_path_manager",
    "zoo_url",
]

ZOO_PREFIX = "resnet_backbones://"
# A mirror of the zoo: files are fetched from "$RESNET_BACKBONES_ZOO_BASE_URL/<file name>".
ZOO_BASE_URL_ENV = "RESNET_BACKBONES_ZOO_BASE_URL"
DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_BASE_URL = "https://dl.fbaipublicfiles.com/detectron2/"


def catalog_entry(name: str) -> WeightsEntry:
    """The catalog entry called ``name``.

    Raises:
        UnknownWeightsError: listing the valid names.
    """
    from .catalog import CATALOG  # on first use: the entries name networks of the presets

    if name not in CATALOG:
        raise UnknownWeightsError(
            f"{ZOO_PREFIX}{name}: no such weights in the catalog; valid names: "
            f"{', '.join(sorted(CATALOG))}"
        )
    return CATALOG[name]


def _https_url(url: str) -> str:
    """``detectron2://PATH`` as the https URL of detectron2's file server; others unchanged."""
    if url.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_BASE_URL + url[len(DETECTRON2_PREFIX) :]
    return url


def catalog_entry_for(path: str) -> Optional[WeightsEntry]:
    """The catalog entry a weights path names: a ``resnet_backbones://`` name, or the URL a
    catalog file is published at (``detectron2://`` expanded); None for any other path.

    Raises:
        UnknownWeightsError: a ``resnet_backbones://`` name the catalog does not have.
    """
    if path.startswith(ZOO_PREFIX):
        return catalog_entry(path[len(ZOO_PREFIX) :])
    from .catalog import CATALOG

    url = _https_url(path)
    return next((e for e in CATALOG.values() if e.url == url), None)


def zoo_url(entry: WeightsEntry) -> str:
    """Where ``entry`` is fetched from: its URL, or the same file name under
    ``$RESNET_BACKBONES_ZOO_BASE_URL``."""
    base = os.environ.get(ZOO_BASE_URL_ENV)
    if not base:
        return entry.url
    return base.rstrip("/") + "/" + os.path.basename(urllib.parse.urlparse(entry.url).path)


class _DownloadingHandler(PathHandler):
    """A handler whose paths become local files by :func:`download`; opening reads those."""

    def _open(self, path: str, mode: str = "r", **kwargs: Any):
        return open(self._get_local_path(path), mode)


class _ZooHandler(_DownloadingHandler):
    """``resnet_backbones://NAME`` -> the downloaded, verified file of catalog entry NAME."""

    def _get_supported_prefixes(self) -> list[str]:
        return [ZOO_PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        entry = catalog_entry(path[len(ZOO_PREFIX) :])
        url = zoo_url(entry)
        try:
            return download(url, sha256=entry.sha256, sha256_prefix=entry.sha256_prefix)
        except DownloadError as e:
            if isinstance(e, ChecksumError):
                raise
            name = os.path.basename(urllib.parse.urlparse(entry.url).path)
            mirror = os.environ.get(ZOO_BASE_URL_ENV)
            raise type(e)(
                f"{path}: {e}. Two ways out: download {entry.url} yourself and set MODEL.WEIGHTS "
                f"to the local file, or set {ZOO_BASE_URL_ENV} to a mirror that serves {name} "
                + (f"(now {mirror!r})" if mirror else "(now unset)")
            ) from e


class _DownloadHandler(_DownloadingHandler):
    """``http(s)://`` (and ``detectron2://``, detectron2's file server) through
    :func:`download`: https only, written atomically, cached."""

    def _get_supported_prefixes(self) -> list[str]:
        return ["http://", "https://", DETECTRON2_PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        # The catalog's hash for a catalog file, else the torch.hub-style prefix in the name.
        entry = catalog_entry_for(path)
        url = _https_url(path)
        if entry is not None and (entry.sha256 or entry.sha256_prefix):
            return download(url, sha256=entry.sha256, sha256_prefix=entry.sha256_prefix)
        return download(url, sha256_prefix=hash_prefix_from_url(url))


@cache
def weights_path_manager() -> PathManager:
    """The iopath PathManager of the weights loader: zoo names, safe downloads and local paths
    (detectron2's global one fetches http:// too, and without checksums)."""
    manager = PathManager()
    manager.register_handler(_ZooHandler())
    manager.register_handler(_DownloadHandler())
    return manager


def register_zoo_scheme() -> None:
    """Teaches detectron2's own PathManager ``resnet_backbones://NAME`` (DefaultPredictor, demo
    scripts), once."""
    from detectron2.utils.file_io import PathManager as DETECTRON2_PATH_MANAGER

    if ZOO_PREFIX not in DETECTRON2_PATH_MANAGER._path_handlers:
        DETECTRON2_PATH_MANAGER.register_handler(_ZooHandler())


def resolve(path: str, key: str = "MODEL.WEIGHTS") -> str:
    """The local file of a weights path (downloaded, verified and cached for a URL or zoo name).

    Args:
        path: a local path, an https:// or detectron2:// URL, or ``resnet_backbones://NAME``.
        key: what ``path`` was given as, for the message of a missing local file.

    Raises:
        WeightsNotFoundError: a local path with no file.
        UnknownWeightsError: a zoo name the catalog does not have.
        UnsafeURLError, DownloadError, ChecksumError: see :func:`.download.download`.
    """
    if "://" not in path:
        if not os.path.isfile(path):
            raise WeightsNotFoundError(
                f"{key} = {path!r}: no such file. Give a local file, an https:// or "
                f"detectron2:// URL, or a model-zoo name {ZOO_PREFIX}NAME (see MODEL_ZOO.md)"
            )
        return path
    return weights_path_manager().get_local_path(path)

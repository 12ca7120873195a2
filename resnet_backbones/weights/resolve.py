"""Resolve a weights path to a local file: zoo names, https and detectron2 URLs, local paths.

* ``resnet_backbones://NAME``: the catalog entry NAME (:mod:`.catalog`), fetched from its URL
  or from the same file name under ``$RESNET_BACKBONES_ZOO_BASE_URL`` (a mirror), verified
  against its SHA-256;
* ``https://...`` (plain ``http://`` only from a loopback host) and ``detectron2://PATH``
  (detectron2's file server): fetched by :func:`.download.download`, atomic and cached, checked
  against the catalog's hash for a catalog file, else the torch.hub-style hash in the file name;
* ``hf-hub:ORG/NAME[@REVISION]`` (timm's spelling): a Hugging Face Hub repository's
  ``model.safetensors``, else its ``pytorch_model.bin``, fetched by ``huggingface_hub`` (an
  optional dependency) into ``<weights cache>/huggingface``; ``$HF_ENDPOINT`` names another
  server and ``$HF_HUB_OFFLINE=1`` reads the cache only, both read at each use;
* anything else: a local path.

The handlers live in an iopath ``PathManager`` of our own (:func:`weights_path_manager`);
detectron2's global one also learns ``resnet_backbones://`` (:func:`register_zoo_scheme`).
"""

from __future__ import annotations

import os
import re
import urllib.parse
from functools import cache
from typing import Any, Optional

from iopath.common.file_io import PathHandler, PathManager

from .download import default_cache_dir, download, hash_prefix_from_url
from .entry import WeightsEntry
from .errors import (
    ChecksumError,
    DownloadError,
    UnknownWeightsError,
    WeightsNotFoundError,
    missing_dependency,
)

__all__ = [
    "DETECTRON2_BASE_URL",
    "HF_HUB_FILES",
    "HF_HUB_PREFIX",
    "ZOO_BASE_URL_ENV",
    "ZOO_PREFIX",
    "catalog_entry",
    "catalog_entry_for",
    "fetch_url",
    "hf_hub_download_weights",
    "parse_hf_hub",
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
HF_HUB_PREFIX = "hf-hub:"
# The files of a Hub repository that hold its weights, in order of preference (timm's).
HF_HUB_FILES: tuple[str, ...] = ("model.safetensors", "pytorch_model.bin")
# The Hub's repository ids: ORG/NAME, letters, digits, "-", "_", "." (huggingface_hub's rule).
_HF_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


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
    """The catalog entry a weights path names: a ``resnet_backbones://`` name, the URL a
    catalog file is published at (``detectron2://`` expanded), or its Hub repository
    (``hf-hub:ORG/NAME``, any revision); None for any other path.

    Raises:
        UnknownWeightsError: a ``resnet_backbones://`` name the catalog does not have.
    """
    if path.startswith(ZOO_PREFIX):
        return catalog_entry(path[len(ZOO_PREFIX) :])
    from .catalog import CATALOG

    if path.startswith(HF_HUB_PREFIX):
        repo_id, _ = parse_hf_hub(path)
        return next((e for e in CATALOG.values() if e.hf_hub_id == repo_id), None)
    url = _https_url(path)
    return next((e for e in CATALOG.values() if e.url == url), None)


def zoo_url(entry: WeightsEntry) -> str:
    """Where ``entry`` is fetched from: its URL, or the same file name under
    ``$RESNET_BACKBONES_ZOO_BASE_URL``."""
    base = os.environ.get(ZOO_BASE_URL_ENV)
    if not base:
        return entry.url
    return base.rstrip("/") + "/" + os.path.basename(urllib.parse.urlparse(entry.url).path)


def fetch_url(path: str) -> Optional[str]:
    """The URL a weights path is fetched from: a ``resnet_backbones://`` name's
    (:func:`zoo_url`), detectron2's file server for ``detectron2://``, an http(s) URL itself;
    None for a local path.

    Raises:
        UnknownWeightsError: a ``resnet_backbones://`` name the catalog does not have.
    """
    if path.startswith(ZOO_PREFIX):
        return zoo_url(catalog_entry(path[len(ZOO_PREFIX) :]))
    if path.startswith((DETECTRON2_PREFIX, "https://", "http://")):
        return _https_url(path)
    return None


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


def parse_hf_hub(path: str) -> tuple[str, Optional[str]]:
    """``hf-hub:ORG/NAME[@REVISION]`` -> ``("ORG/NAME", REVISION or None)``.

    Raises:
        UnknownWeightsError: a path that does not have this form.
    """
    repo_id, at, revision = path[len(HF_HUB_PREFIX) :].partition("@")
    if (
        not path.startswith(HF_HUB_PREFIX)
        or not _HF_REPO_ID.fullmatch(repo_id)
        or (at and not re.fullmatch(r"[\w./-]+", revision))
    ):
        raise UnknownWeightsError(
            f"{path!r} is not a Hugging Face Hub path; write {HF_HUB_PREFIX}ORG/NAME or "
            f"{HF_HUB_PREFIX}ORG/NAME@REVISION (a branch, tag or commit), e.g. "
            f"{HF_HUB_PREFIX}timm/resnet50.tv_in1k"
        )
    return repo_id, revision or None


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def hf_hub_download_weights(path: str) -> str:
    """The local file of ``hf-hub:ORG/NAME[@REVISION]``: the repository's first file of
    :data:`HF_HUB_FILES`, downloaded once into ``<weights cache>/huggingface`` (or found there).

    The revision is the path's, else the catalog entry's pinned one, else the default branch.
    ``$HF_ENDPOINT`` (another server) and ``$HF_HUB_OFFLINE`` (the cache only, no request) are
    read at each call.

    Raises:
        UnknownWeightsError: a malformed path.
        MissingDependencyError: huggingface_hub is not installed.
        DownloadError: no such repository or revision, none of the files in it, or (offline or
            unreachable) none of them in the cache.
    """
    repo_id, revision = parse_hf_hub(path)
    entry = catalog_entry_for(path)
    if revision is None and entry is not None:
        revision = entry.hf_hub_revision
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise missing_dependency("huggingface_hub", f"{path} (a Hugging Face Hub path)") from None

    # huggingface_hub reads HF_HUB_OFFLINE once, when imported; we read it at each call.
    offline = constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").upper() in (
        "1",
        "ON",
        "YES",
        "TRUE",
    )
    where = f"{path} ({os.environ.get('HF_ENDPOINT') or 'https://huggingface.co'})"
    absent = []
    for filename in HF_HUB_FILES:
        try:
            return huggingface_hub.hf_hub_download(
                repo_id,
                filename,
                revision=revision,
                cache_dir=os.path.join(default_cache_dir(), "huggingface"),
                endpoint=os.environ.get("HF_ENDPOINT") or None,
                local_files_only=offline,
            )
        except errors.LocalEntryNotFoundError:  # offline or unreachable, and not cached
            absent.append(f"{filename} is not in the cache")
        except errors.RemoteEntryNotFoundError:
            absent.append(f"the repository has no {filename}")
        except errors.RevisionNotFoundError as e:
            raise DownloadError(
                f"{where}: the repository has no revision {revision!r} ({_first_line(e)})"
            ) from e
        except errors.RepositoryNotFoundError as e:
            raise DownloadError(
                f"{where}: no such repository, or a private or gated one (log in with "
                f"`hf auth login`) ({_first_line(e)})"
            ) from e
        except (errors.HfHubHTTPError, OSError) as e:
            raise DownloadError(f"{where}: {_first_line(e)}") from e
    hint = (
        "HF_HUB_OFFLINE is set: download it once online"
        if offline
        else "check the repository name and your connection"
    )
    raise DownloadError(f"{where}: no weights file: {'; '.join(absent)}; {hint}")


class _HubHandler(_DownloadingHandler):
    """``hf-hub:ORG/NAME[@REVISION]`` -> :func:`hf_hub_download_weights`."""

    def _get_supported_prefixes(self) -> list[str]:
        return [HF_HUB_PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        return hf_hub_download_weights(path)


@cache
def weights_path_manager() -> PathManager:
    """The iopath PathManager of the weights loader: zoo names, safe downloads, Hub paths and
    local paths (detectron2's global one fetches http:// too, and without checksums)."""
    manager = PathManager()
    manager.register_handler(_ZooHandler())
    manager.register_handler(_DownloadHandler())
    manager.register_handler(_HubHandler())
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
        path: a local path, an https:// or detectron2:// URL, ``resnet_backbones://NAME`` or
            ``hf-hub:ORG/NAME[@REVISION]``.
        key: what ``path`` was given as, for the message of a missing local file.

    Raises:
        WeightsNotFoundError: a local path with no file.
        UnknownWeightsError: a zoo name the catalog does not have, a malformed Hub path.
        UnsafeURLError, DownloadError, ChecksumError: see :func:`.download.download` and
            :func:`hf_hub_download_weights`.
        MissingDependencyError: a Hub path without huggingface_hub.
    """
    if "://" not in path and not path.startswith(HF_HUB_PREFIX):
        if not os.path.isfile(path):
            raise WeightsNotFoundError(
                f"{key} = {path!r}: no such file. Give a local file, an https:// or "
                f"detectron2:// URL, a model-zoo name {ZOO_PREFIX}NAME (see MODEL_ZOO.md) or "
                f"a Hugging Face Hub repository {HF_HUB_PREFIX}ORG/NAME"
            )
        return path
    return weights_path_manager().get_local_path(path)

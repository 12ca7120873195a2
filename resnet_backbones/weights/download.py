"""Fetch a weights file once, verify it, and keep it in a local cache.

:func:`download` writes into a temporary file beside its cache entry and renames it into place
only once every byte has arrived and the SHA-256 (when known) matches, so an interrupted or
tampered download never leaves a file that a later run would trust. Only https is fetched,
except plain http from the loopback interface (tests serve files from 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import IO, Optional

from ..utils import atomic_write, cache_root
from .errors import ChecksumError, DownloadError, UnsafeURLError

__all__ = [
    "CACHE_ENV",
    "LOOPBACK_HOSTS",
    "cache_path",
    "check_url",
    "default_cache_dir",
    "download",
    "hash_prefix_from_url",
    "sha256_of_file",
]

logger = logging.getLogger(__name__)

# Where downloaded weights are kept; otherwise $RESNET_BACKBONES_CACHE/weights (the folder of
# the generated datasets) or ~/.cache/resnet_backbones/weights.
CACHE_ENV = "RESNET_BACKBONES_WEIGHTS_CACHE"
LOOPBACK_HOSTS: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")

_CHUNK = 1 << 20
_PROGRESS_EVERY_S = 10.0
_HEX = re.compile(r"[0-9a-f]+")
# torch.hub's convention: "<name>-<first hex digits of the SHA-256>.<ext>" (resnet50-0676ba61.pth).
_HUB_NAME = re.compile(r"[^/]*-([0-9a-f]{8,64})\.[A-Za-z0-9]+")


def default_cache_dir() -> str:
    """``$RESNET_BACKBONES_WEIGHTS_CACHE``, else ``$RESNET_BACKBONES_CACHE/weights``, else
    ``~/.cache/resnet_backbones/weights``."""
    return os.environ.get(CACHE_ENV) or os.path.join(cache_root(), "weights")


def check_url(url: str) -> None:
    """Raises UnsafeURLError unless ``url`` is https, or http to a loopback host."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "https" and parsed.hostname:
        return
    if parsed.scheme == "http" and parsed.hostname in LOOPBACK_HOSTS:
        return
    raise UnsafeURLError(
        f"refused to fetch weights from {url!r}: only https:// URLs are allowed, and http:// "
        f"only from a loopback host ({', '.join(LOOPBACK_HOSTS)}); weights fetched over plain "
        "http could be swapped in transit"
    )


def hash_prefix_from_url(url: str) -> Optional[str]:
    """The SHA-256 prefix in a torch.hub-style file name (``resnet50-0676ba61.pth`` ->
    ``"0676ba61"``), or None."""
    match = _HUB_NAME.fullmatch(os.path.basename(urllib.parse.urlparse(url).path))
    return match[1] if match else None


def cache_path(url: str, cache_dir: Optional[str] = None) -> str:
    """Where ``url`` is cached: ``<cache_dir>/<16 hex digits of the URL's hash>/<file name>``.

    The URL's hash keeps apart files of the same name from different places (every detectron2
    model is a ``model_final_*.pkl``); the file name is kept for people reading the cache.
    """
    name = os.path.basename(urllib.parse.urlparse(url).path)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "download"
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(cache_dir or default_cache_dir(), key, name)


def sha256_of_file(path: str) -> str:
    """The hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_hex(name: str, value: Optional[str], lengths: range) -> Optional[str]:
    if value is None:
        return None
    value = value.lower()
    if not _HEX.fullmatch(value) or len(value) not in lengths:
        raise ValueError(
            f"{name} = {value!r} is not valid; it must be {lengths.start}"
            + (f" to {lengths.stop - 1}" if len(lengths) > 1 else "")
            + " hexadecimal digits"
        )
    return value


def _hash_problem(digest: str, sha256: Optional[str], sha256_prefix: Optional[str]) -> str:
    if sha256 is not None and digest != sha256:
        return f"expected SHA-256 {sha256}, got {digest}"
    if sha256_prefix is not None and not digest.startswith(sha256_prefix):
        return f"expected a SHA-256 starting with {sha256_prefix}, got {digest}"
    return ""


class _CheckedRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows a redirect only to a URL that :func:`check_url` accepts (https cannot be
    downgraded to http by the server)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.1f} MiB"


def _fetch(url: str, out: IO[bytes], timeout: float) -> str:
    """Streams ``url`` into ``out`` and returns the SHA-256 of what arrived."""
    handlers: list[urllib.request.BaseHandler] = [_CheckedRedirectHandler()]
    if urllib.parse.urlparse(url).hostname in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))  # never send loopback through a proxy
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "resnet_backbones"})
    try:
        response = opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"cannot reach {url}: {e.reason}") from e
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f"download of {url} failed: {e}") from e

    digest, received = hashlib.sha256(), 0
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        logger.info(
            "Downloading %s (%s)", url, _size(expected) if expected is not None else "size unknown"
        )
        start = last_report = time.monotonic()
        try:
            while chunk := response.read(_CHUNK):
                out.write(chunk)
                digest.update(chunk)
                received += len(chunk)
                now = time.monotonic()
                if now - last_report >= _PROGRESS_EVERY_S:
                    last_report = now
                    logger.info(
                        "... %s%s at %s/s",
                        _size(received),
                        f" of {_size(expected)}" if expected is not None else "",
                        _size(received / (now - start)),
                    )
        except (OSError, http.client.HTTPException) as e:
            raise DownloadError(f"download of {url} interrupted after {received} bytes: {e}") from e
    if expected is not None and received != expected:
        raise DownloadError(
            f"download of {url} interrupted: the server announced {expected} bytes "
            f"(Content-Length) but the connection closed after {received}"
        )
    elapsed = max(time.monotonic() - start, 1e-6)
    logger.info(
        "Downloaded %s in %.1f s (%s/s)", _size(received), elapsed, _size(received / elapsed)
    )
    return digest.hexdigest()


def download(
    url: str,
    *,
    sha256: Optional[str] = None,
    sha256_prefix: Optional[str] = None,
    cache_dir: Optional[str] = None,
    timeout: float = 60.0,
) -> str:
    """Returns a local copy of ``url``, downloading it on first use.

    Args:
        url: https URL (or http on a loopback host) of the file.
        sha256: the file's full hex SHA-256, checked when given.
        sha256_prefix: the first hex digits of its SHA-256 (torchvision and timm put 8 of them
            in their file names, ``resnet101-cd907fc2.pth``), checked when given.
        cache_dir: folder of the cache (default: :func:`default_cache_dir`).
        timeout: seconds to wait for the server, per connection attempt and per read.

    Returns:
        The path of the cached file. A cached file is reused without any network access
        (re-hashed first when a hash is given; a corrupted one is fetched again).

    Raises:
        UnsafeURLError: ``url``, or a redirect, is neither https nor loopback http.
        DownloadError: an HTTP error (naming the URL and status), an unreachable host, or a
            connection closed before the announced Content-Length.
        ChecksumError: the file's SHA-256 differs from ``sha256`` / ``sha256_prefix``; nothing
            is cached.
    """
    check_url(url)
    sha256 = _check_hex("sha256", sha256, range(64, 65))
    sha256_prefix = _check_hex("sha256_prefix", sha256_prefix, range(8, 65))
    path = cache_path(url, cache_dir)
    if os.path.isfile(path):
        if sha256 is None and sha256_prefix is None:
            return path
        problem = _hash_problem(sha256_of_file(path), sha256, sha256_prefix)
        if not problem:
            return path
        logger.warning("Cached %s is corrupted (%s); downloading it again", path, problem)
        os.remove(path)

    try:
        with atomic_write(path) as out:
            digest = _fetch(url, out, timeout)
            problem = _hash_problem(digest, sha256, sha256_prefix)
            if problem:
                raise ChecksumError(f"{url}: {problem}; the file was not kept")
        if sha256 is None and sha256_prefix is None:
            logger.warning("No SHA-256 known for %s; caching it unverified (%s)", url, digest)
    finally:
        if not os.path.isfile(path):
            with contextlib.suppress(OSError):  # the URL's folder, if nothing else is in it
                os.rmdir(os.path.dirname(path))
    logger.info("Cached %s as %s", url, path)
    return path

"""Fetch a weights file once, verify it, and keep it in a local cache.

:func:`download` writes into a temporary file beside its cache entry and renames it into place
only once every byte has arrived and the SHA-256 (when known) matches, so an interrupted or
tampered download never leaves a file that a later run would trust. Only https is fetched,
except plain http from the loopback interface (tests serve files from 127.0.0.1).

A download cannot hang: it fails, naming the URL, the bytes received, the rate and the limit,
when no byte arrives for ``timeout`` seconds, when fewer than ``min_rate`` bytes per second
arrive over ``rate_window`` seconds, or (if set) after ``max_time`` seconds in all. Each limit is
also read from the environment (:data:`TIMEOUT_ENV`, :data:`MIN_RATE_ENV`,
:data:`RATE_WINDOW_ENV`, :data:`MAX_TIME_ENV`). Progress is logged every ``progress_every``
seconds, also while no byte arrives. The temporary file (``.NAME.tmp-PID-XXXX``) is removed on any error and
on Ctrl-C; one left by a killed process is removed by the next download of the same file.
"""

from __future__ import annotations

import collections
import contextlib
import glob
import hashlib
import http.client
import logging
import math
import os
import re
import socket
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, Optional

try:
    import fcntl
except ImportError:  # Windows: no flock, so no way to tell a live temporary file from a stale one
    fcntl = None  # type: ignore[assignment]

from ..utils import atomic_write, cache_root
from .errors import ChecksumError, DownloadError, UnsafeURLError

__all__ = [
    "CACHE_ENV",
    "LOOPBACK_HOSTS",
    "MAX_TIME_ENV",
    "MIN_RATE_ENV",
    "RATE_WINDOW_ENV",
    "TIMEOUT_ENV",
    "DownloadLimits",
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

# The limits of a download (see DownloadLimits); an argument of download() wins over these.
TIMEOUT_ENV = "RESNET_BACKBONES_DOWNLOAD_TIMEOUT"
MIN_RATE_ENV = "RESNET_BACKBONES_DOWNLOAD_MIN_RATE"
RATE_WINDOW_ENV = "RESNET_BACKBONES_DOWNLOAD_RATE_WINDOW"
MAX_TIME_ENV = "RESNET_BACKBONES_DOWNLOAD_MAX_TIME"

_CHUNK = 1 << 20
# A temporary file nobody holds a lock on is a dead process's only once it is this old: a live
# download creates its file a moment before it locks it.
_STALE_PART_AGE_S = 10.0
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
    """``37 bytes``, ``12.5 KiB``, ``3.4 MiB``: exact while small, as a trickle is."""
    if num_bytes < 1024:
        return f"{num_bytes:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        num_bytes /= 1024
        if num_bytes < 1024 or unit == "GiB":
            break
    return f"{num_bytes:.1f} {unit}"


def _limit(name: str, env: str, value: Optional[float], default: float) -> float:
    """``value``, else the number in ``$env``, else ``default``; a negative or non-numeric one
    is refused, naming the argument or the variable it came from."""
    if value is None:
        text = os.environ.get(env, "").strip()
        if not text:
            return default
        try:
            number = float(text)
        except ValueError:
            number = math.nan
        if not 0 <= number < math.inf:
            raise ValueError(f"${env} = {text!r} is not valid; it must be a number >= 0")
        return number
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ValueError(f"{name} = {value!r} is not valid; it must be a number >= 0")
    return float(value)


def _received(received: int, expected: Optional[int]) -> str:
    """``1.2 MiB of 3.4 MiB``, or ``1.2 MiB`` where the server announced no size."""
    return _size(received) + (f" of {_size(expected)}" if expected is not None else "")


@dataclass(frozen=True)
class DownloadLimits:
    """When a download gives up. 0 turns a limit off.

    Attributes:
        timeout: seconds to wait for the server to answer, and then for each next byte
            (``$RESNET_BACKBONES_DOWNLOAD_TIMEOUT``, default 60).
        min_rate: bytes per second, averaged over ``rate_window``, below which the download
            fails (``$RESNET_BACKBONES_DOWNLOAD_MIN_RATE``, default 10240: a server trickling
            one byte every few seconds never trips ``timeout``).
        rate_window: seconds over which ``min_rate`` is measured
            (``$RESNET_BACKBONES_DOWNLOAD_RATE_WINDOW``, default 60).
        max_time: seconds for the whole body (``$RESNET_BACKBONES_DOWNLOAD_MAX_TIME``, default
            0: none, because ``min_rate`` already bounds a stall and a total limit would fail an
            honest slow link on a large file).
        progress_every: seconds between progress lines in the log (default 10).
    """

    timeout: float = 60.0
    min_rate: float = 10240.0
    rate_window: float = 60.0
    max_time: float = 0.0
    progress_every: float = 10.0

    @classmethod
    def resolve(
        cls,
        timeout: Optional[float] = None,
        min_rate: Optional[float] = None,
        rate_window: Optional[float] = None,
        max_time: Optional[float] = None,
        progress_every: Optional[float] = None,
    ) -> DownloadLimits:
        """The limits of one download: each argument given, else its environment variable,
        else the default."""
        d = cls()
        limits = cls(
            timeout=_limit("timeout", TIMEOUT_ENV, timeout, d.timeout),
            min_rate=_limit("min_rate", MIN_RATE_ENV, min_rate, d.min_rate),
            rate_window=_limit("rate_window", RATE_WINDOW_ENV, rate_window, d.rate_window),
            max_time=_limit("max_time", MAX_TIME_ENV, max_time, d.max_time),
            progress_every=d.progress_every if progress_every is None else progress_every,
        )
        if limits.progress_every <= 0:
            raise ValueError(f"progress_every = {progress_every!r} is not valid; it must be > 0")
        return limits

    def describe(self) -> str:
        """The limits in force, as the log and the errors state them."""
        parts = [f"timeout {self.timeout:g} s" if self.timeout else "no timeout"]
        if self.min_rate and self.rate_window:
            parts.append(f"at least {_size(self.min_rate)}/s over {self.rate_window:g} s")
        if self.max_time:
            parts.append(f"at most {self.max_time:g} s in all")
        return ", ".join(parts)


class _Watchdog:
    """Watches a download from a second thread, while the first blocks in the socket's read.

    Every ``progress_every`` seconds it logs the bytes so far, the rate and the time left (or how
    long it has waited for the next byte). When the rate over ``rate_window`` falls below
    ``min_rate``, or ``max_time`` passes, it records why in :attr:`failure` and shuts the
    connection down, so that the blocked read returns at once. Python cannot interrupt a read
    blocked in another thread; shutting the socket down is what ends it.
    """

    def __init__(self, url: str, expected: Optional[int], limits: DownloadLimits, fd: int):
        self.url, self.expected, self.limits, self._fd = url, expected, limits, fd
        self.received = 0  # written by the reading thread
        self.failure: Optional[str] = None
        self.start = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)

    def __enter__(self) -> _Watchdog:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        # Joined before the response (and its socket) is closed: the watchdog never shuts down
        # a file descriptor that has been reused.
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        limits = self.limits
        tick = min(1.0, limits.progress_every, limits.rate_window or 1.0) / 4
        samples = collections.deque([(self.start, 0)])  # (time, bytes), rate_window long
        last_log = last_change = self.start
        logged_bytes = 0
        while not self._stop.wait(tick):
            now, received = time.monotonic(), self.received
            if received != samples[-1][1]:
                last_change = now
            samples.append((now, received))
            while len(samples) > 1 and samples[1][0] <= now - limits.rate_window:
                samples.popleft()  # keeps one sample at or before the window's start
            self.failure = self._check(now, received, samples)
            if self.failure:
                with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._fd)) as s:
                    s.shutdown(socket.SHUT_RDWR)
                return
            if now - last_log >= limits.progress_every:
                rate = (received - logged_bytes) / (now - last_log)
                if now - last_change >= limits.progress_every:
                    logger.info(
                        "... %s: waited %.1f s for the next byte; %s so far (limits: %s)",
                        self.url,
                        now - last_change,
                        _received(received, self.expected),
                        limits.describe(),
                    )
                else:
                    left = ""
                    if self.expected is not None and rate > 0:
                        left = f", about {(self.expected - received) / rate:.0f} s left"
                    logger.info(
                        "... %s at %s/s%s", _received(received, self.expected), _size(rate), left
                    )
                last_log, logged_bytes = now, received

    def _check(self, now: float, received: int, samples: collections.deque) -> Optional[str]:
        """Why the download must stop now, or None."""
        limits, elapsed = self.limits, now - self.start
        if limits.max_time and elapsed >= limits.max_time:
            average = _size(received / max(elapsed, 1e-6))
            return (
                f"download of {self.url} did not finish within max_time = {limits.max_time:g} s "
                f"(${MAX_TIME_ENV}): received {_received(received, self.expected)} at "
                f"{average}/s on average. Retry, or raise ${MAX_TIME_ENV} (0: no limit)"
            )
        if not (limits.min_rate and limits.rate_window):
            return None
        since, then = samples[0]
        if now - since < limits.rate_window:
            return None  # not one whole window yet
        rate = (received - then) / (now - since)
        if rate >= limits.min_rate:
            return None
        return (
            f"download of {self.url} stalled: {_size(received - then)} in the last "
            f"{now - since:.0f} s ({_size(rate)}/s), below min_rate = {_size(limits.min_rate)}/s "
            f"over rate_window = {limits.rate_window:g} s (${MIN_RATE_ENV} bytes per second, "
            f"${RATE_WINDOW_ENV} seconds); received {_received(received, self.expected)} in "
            f"{elapsed:.0f} s. "
            f"Retry later, or lower ${MIN_RATE_ENV} (0: no minimum) for a slow server"
        )


def _fetch(url: str, out: IO[bytes], limits: DownloadLimits) -> str:
    """Streams ``url`` into ``out`` and returns the SHA-256 of what arrived."""
    handlers: list[urllib.request.BaseHandler] = [_CheckedRedirectHandler()]
    if urllib.parse.urlparse(url).hostname in LOOPBACK_HOSTS:
        handlers.append(urllib.request.ProxyHandler({}))  # never send loopback through a proxy
    opener = urllib.request.build_opener(*handlers)
    request = urllib.request.Request(url, headers={"User-Agent": "resnet_backbones"})
    no_answer = (
        f"cannot reach {url}: no answer within timeout = {limits.timeout:g} s (${TIMEOUT_ENV}). "
        f"Retry later, or raise ${TIMEOUT_ENV}"
    )
    try:
        response = opener.open(request, timeout=limits.timeout or None)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:  # connecting, or sending the request, failed
        if isinstance(e.reason, socket.timeout):
            raise DownloadError(no_answer) from e
        raise DownloadError(f"cannot reach {url}: {e.reason}") from e
    except socket.timeout as e:  # connected, but the answer's headers did not come
        raise DownloadError(no_answer) from e
    except (OSError, http.client.HTTPException) as e:
        raise DownloadError(f"download of {url} failed: {e}") from e

    digest, received = hashlib.sha256(), 0
    with response:
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        logger.info(
            "Downloading %s (%s; %s)",
            url,
            _size(expected) if expected is not None else "size unknown",
            limits.describe(),
        )
        with _Watchdog(url, expected, limits, response.fileno()) as watchdog:
            try:
                # read1: whatever has arrived, up to a chunk, so that a trickle is counted as
                # it comes (read(n) would wait for all n bytes).
                while chunk := response.read1(_CHUNK):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    watchdog.received = received
            except socket.timeout as e:
                raise DownloadError(
                    watchdog.failure
                    or f"download of {url} stalled: no byte arrived for timeout = "
                    f"{limits.timeout:g} s (${TIMEOUT_ENV}); received "
                    f"{_received(received, expected)}. "
                    f"Retry later, or raise ${TIMEOUT_ENV}"
                ) from e
            except (OSError, http.client.HTTPException) as e:
                raise DownloadError(
                    watchdog.failure or f"download of {url} interrupted after {received} bytes: {e}"
                ) from e
        if watchdog.failure:
            raise DownloadError(watchdog.failure)
    if expected is not None and received != expected:
        raise DownloadError(
            f"download of {url} interrupted: the server announced {expected} bytes "
            f"(Content-Length) but the connection closed after {received}"
        )
    elapsed = max(time.monotonic() - watchdog.start, 1e-6)
    logger.info(
        "Downloaded %s in %.1f s (%s/s)", _size(received), elapsed, _size(received / elapsed)
    )
    return digest.hexdigest()


def _remove_stale_parts(path: str) -> None:
    """Removes the temporary files (``.NAME.tmp-PID-XXXX``, from
    :func:`~resnet_backbones.utils.atomic_write`) of downloads of ``path`` whose process is gone.

    A download holds an exclusive ``flock`` on its temporary file, which the kernel releases
    when the process dies, even by SIGKILL; a file that can be locked, and is older than a few
    seconds, belongs to no live download.
    """
    if fcntl is None:
        return
    folder, name = os.path.split(path)
    for part in glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.tmp-*")):
        try:
            if time.time() - os.path.getmtime(part) < _STALE_PART_AGE_S:
                continue
            with open(part, "rb") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.remove(part)
        except OSError:  # locked by a live download, or already removed by another process
            continue
        logger.info("Removed %s, left by an interrupted download", part)


def download(
    url: str,
    *,
    sha256: Optional[str] = None,
    sha256_prefix: Optional[str] = None,
    cache_dir: Optional[str] = None,
    timeout: Optional[float] = None,
    min_rate: Optional[float] = None,
    rate_window: Optional[float] = None,
    max_time: Optional[float] = None,
    progress_every: Optional[float] = None,
) -> str:
    """Returns a local copy of ``url``, downloading it on first use.

    Args:
        url: https URL (or http on a loopback host) of the file.
        sha256: the file's full hex SHA-256, checked when given.
        sha256_prefix: the first hex digits of its SHA-256 (torchvision and timm put 8 of them
            in their file names, ``resnet101-cd907fc2.pth``), checked when given.
        cache_dir: folder of the cache (default: :func:`default_cache_dir`).
        timeout, min_rate, rate_window, max_time, progress_every: the limits of
            :class:`DownloadLimits`; each one not given is read from its environment variable
            (``RESNET_BACKBONES_DOWNLOAD_TIMEOUT`` ...), else its default. 0 turns one off.

    Returns:
        The path of the cached file. A cached file is reused without any network access
        (re-hashed first when a hash is given; a corrupted one is fetched again).

    Raises:
        UnsafeURLError: ``url``, or a redirect, is neither https nor loopback http.
        DownloadError: an HTTP error (naming the URL and status), an unreachable host, a
            connection closed before the announced Content-Length, or a download that stalled
            or ran out of time (naming the bytes received, the rate, the limit and its variable).
        ChecksumError: the file's SHA-256 differs from ``sha256`` / ``sha256_prefix``; nothing
            is cached.
        ValueError: a limit, or its environment variable, that is not a number >= 0.
    """
    check_url(url)
    sha256 = _check_hex("sha256", sha256, range(64, 65))
    sha256_prefix = _check_hex("sha256_prefix", sha256_prefix, range(8, 65))
    limits = DownloadLimits.resolve(timeout, min_rate, rate_window, max_time, progress_every)
    path = cache_path(url, cache_dir)
    if os.path.isfile(path):
        if sha256 is None and sha256_prefix is None:
            return path
        problem = _hash_problem(sha256_of_file(path), sha256, sha256_prefix)
        if not problem:
            return path
        logger.warning("Cached %s is corrupted (%s); downloading it again", path, problem)
        os.remove(path)

    _remove_stale_parts(path)
    try:
        # atomic_write removes its temporary file on any exception, KeyboardInterrupt included.
        with atomic_write(path) as out:
            if fcntl is not None:  # marks the temporary file as a live download's
                fcntl.flock(out.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            digest = _fetch(url, out, limits)
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

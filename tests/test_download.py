"""download(): https or loopback only, atomic, verified, cached; served from 127.0.0.1."""

import fcntl
import hashlib
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from resnet_backbones.weights.download import (
    CACHE_ENV,
    MAX_TIME_ENV,
    MIN_RATE_ENV,
    TIMEOUT_ENV,
    cache_path,
    download,
    hash_prefix_from_url,
)
from resnet_backbones.weights.errors import ChecksumError, DownloadError, UnsafeURLError

from .helpers import WeightsServer

PAYLOAD = os.urandom(300_000)
SHA256 = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture
def server():
    with WeightsServer() as s:
        s.files["/models/r18.pth"] = PAYLOAD
        yield s


def _files(folder) -> list[str]:
    return [os.path.join(root, f) for root, _, files in os.walk(folder) for f in files]


@pytest.mark.parametrize("check", [{"sha256": SHA256}, {"sha256_prefix": SHA256[:8]}, {}])
def test_downloads_once_then_reuses_the_cache(server, tmp_path, check):
    url = server.url("/models/r18.pth")
    path = download(url, cache_dir=str(tmp_path), **check)
    assert open(path, "rb").read() == PAYLOAD
    assert path == cache_path(url, str(tmp_path)) and path.endswith("r18.pth")
    assert download(url, cache_dir=str(tmp_path), **check) == path
    assert server.requests["/models/r18.pth"] == 1  # the second call never touched the network
    assert _files(tmp_path) == [path]  # no temporary file left beside it


@pytest.mark.parametrize(
    "check, message",
    [
        ({"sha256": "0" * 64}, "expected SHA-256 0000"),
        ({"sha256_prefix": "deadbeef"}, "expected a SHA-256 starting with deadbeef"),
    ],
)
def test_a_hash_mismatch_is_refused_and_not_cached(server, tmp_path, check, message):
    url = server.url("/models/r18.pth")
    with pytest.raises(ChecksumError, match=message) as info:
        download(url, cache_dir=str(tmp_path), **check)
    assert url in str(info.value) and SHA256 in str(info.value)
    assert _files(tmp_path) == []
    # Nothing was cached: the right hash downloads again.
    download(url, cache_dir=str(tmp_path), sha256=SHA256)
    assert server.requests["/models/r18.pth"] == 2


def test_a_corrupted_cache_entry_is_fetched_again(server, tmp_path):
    url = server.url("/models/r18.pth")
    path = download(url, cache_dir=str(tmp_path), sha256=SHA256)
    with open(path, "r+b") as f:
        f.write(b"\0\0\0\0")
    assert open(download(url, cache_dir=str(tmp_path), sha256=SHA256), "rb").read() == PAYLOAD
    assert server.requests["/models/r18.pth"] == 2


def test_an_interrupted_download_leaves_no_file(server, tmp_path):
    server.files["/models/cut.pth"] = PAYLOAD
    server.truncated.add("/models/cut.pth")
    url = server.url("/models/cut.pth")
    with pytest.raises(DownloadError, match=r"interrupted.*300000 bytes.*after 150000") as info:
        download(url, cache_dir=str(tmp_path))
    assert url in str(info.value)
    assert _files(tmp_path) == []


def test_http_errors_name_the_url_and_status(server, tmp_path):
    url = server.url("/models/missing.pth")
    with pytest.raises(DownloadError, match=r"HTTP 404") as info:
        download(url, cache_dir=str(tmp_path))
    assert url in str(info.value)
    assert _files(tmp_path) == []


@pytest.mark.parametrize(
    "url",
    [
        "http://download.pytorch.org/models/resnet50-0676ba61.pth",
        "http://10.0.0.1/r50.pth",
        "ftp://example.com/r50.pth",
        "file:///etc/passwd",
    ],
)
def test_only_https_or_loopback_http(tmp_path, url):
    with pytest.raises(UnsafeURLError, match="only https://") as info:
        download(url, cache_dir=str(tmp_path))
    assert repr(url) in str(info.value)


def test_a_redirect_to_plain_http_elsewhere_is_refused(server, tmp_path):
    server.redirects["/models/moved.pth"] = "http://example.com/r18.pth"
    with pytest.raises(UnsafeURLError, match="example.com"):
        download(server.url("/models/moved.pth"), cache_dir=str(tmp_path))
    server.redirects["/models/here.pth"] = server.url("/models/r18.pth")
    path = download(server.url("/models/here.pth"), cache_dir=str(tmp_path), sha256=SHA256)
    assert open(path, "rb").read() == PAYLOAD


def test_cache_folder_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "weights"))
    path = download(server.url("/models/r18.pth"))
    assert path.startswith(str(tmp_path / "weights") + os.sep)


def test_hash_prefix_in_torch_hub_file_names():
    assert hash_prefix_from_url("https://x/models/resnet101-cd907fc2.pth") == "cd907fc2"
    assert hash_prefix_from_url("https://x/resnet50d_ra2-464e36ba.pth") == "464e36ba"
    assert hash_prefix_from_url("https://x/ImageNetPretrained/MSRA/R-50.pkl") is None


# ------------------------------------------------------------------------------------------
# Downloads that cannot hang: limits scaled down so that each test takes about a second.
# ------------------------------------------------------------------------------------------
TRICKLE = bytes(range(256)) * 4  # 1024 bytes, one every 20 ms: 50 bytes/s


@pytest.fixture
def trickle(server):
    server.files["/models/slow.pth"] = TRICKLE
    server.trickled["/models/slow.pth"] = 0.02
    return server.url("/models/slow.pth")


def _progress(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("... ")]


def test_a_trickle_below_the_minimum_rate_fails_and_logs_its_progress(trickle, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="resnet_backbones.weights.download")
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download(trickle, cache_dir=str(tmp_path), min_rate=200, rate_window=1, progress_every=0.3)
    elapsed = time.monotonic() - start
    message = str(info.value)
    assert message.startswith(f"download of {trickle} stalled: ")
    # ~50 bytes arrive in the 1 s window: the rate, the limit, where to change it, the total.
    assert (
        "bytes in the last 1 s (" in message and "bytes/s), below min_rate = 200 bytes/s" in message
    )
    assert f"${MIN_RATE_ENV}" in message and "of 1.0 KiB in 1 s" in message
    assert 1.0 <= elapsed < 4.0  # the window, not the 20 s the whole body would take
    lines = _progress(caplog)
    assert len(lines) >= 2, caplog.text
    # "... 15 bytes of 1.0 KiB at 50 bytes/s, about 20 s left" (or, on a loaded machine where
    # the server paused, "waited ..."): the count, the size, the rate and the time left.
    assert all("bytes of 1.0 KiB" in line for line in lines), lines
    assert any(re.fullmatch(r"\.\.\. \d+ bytes of 1\.0 KiB at \d+ bytes/s, about \d+ s left", line)
               for line in lines), lines  # fmt: skip
    assert _files(tmp_path) == []


def test_a_total_time_limit_names_itself_and_its_variable(trickle, tmp_path):
    with pytest.raises(DownloadError, match=r"did not finish within max_time = 0\.5 s") as info:
        download(trickle, cache_dir=str(tmp_path), min_rate=0, max_time=0.5)
    assert trickle in str(info.value) and f"${MAX_TIME_ENV}" in str(info.value)
    assert _files(tmp_path) == []


def test_limits_come_from_the_environment(trickle, tmp_path, monkeypatch):
    monkeypatch.setenv(MIN_RATE_ENV, "0")
    monkeypatch.setenv(MAX_TIME_ENV, "0.5")
    with pytest.raises(DownloadError, match="max_time = 0.5 s"):
        download(trickle, cache_dir=str(tmp_path))
    monkeypatch.setenv(TIMEOUT_ENV, "soon")
    with pytest.raises(ValueError, match=rf"\${TIMEOUT_ENV} = 'soon' is not valid"):
        download(trickle, cache_dir=str(tmp_path))
    monkeypatch.delenv(TIMEOUT_ENV)
    with pytest.raises(ValueError, match=r"min_rate = -1 is not valid; it must be a number >= 0"):
        download(trickle, cache_dir=str(tmp_path), min_rate=-1)


def test_a_server_that_stops_sending_times_out_and_says_it_waited(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="resnet_backbones.weights.download")
    server.files["/models/stuck.pth"] = PAYLOAD
    server.stalled.add("/models/stuck.pth")
    url = server.url("/models/stuck.pth")
    with pytest.raises(DownloadError) as info:
        download(url, cache_dir=str(tmp_path), timeout=1, min_rate=0, progress_every=0.3)
    assert str(info.value) == (
        f"download of {url} stalled: no byte arrived for timeout = 1 s (${TIMEOUT_ENV}); "
        f"received 146.5 KiB of 293.0 KiB. Retry later, or raise ${TIMEOUT_ENV}"
    )
    waited = [line for line in _progress(caplog) if "waited" in line]
    assert waited, caplog.text
    assert re.fullmatch(
        rf"\.\.\. {re.escape(url)}: waited \d\.\d s for the next byte; 146\.5 KiB of 293\.0 KiB "
        r"so far \(limits: timeout 1 s\)",
        waited[-1],
    )
    assert _files(tmp_path) == []


def test_a_server_that_never_answers_times_out(tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # connects, and says nothing
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/r18.pth"
        with pytest.raises(DownloadError) as info:
            download(url, cache_dir=str(tmp_path), timeout=0.5)
    assert str(info.value) == (
        f"cannot reach {url}: no answer within timeout = 0.5 s (${TIMEOUT_ENV}). Retry later, or "
        f"raise ${TIMEOUT_ENV}"
    )
    assert _files(tmp_path) == []


def test_ctrl_c_during_a_download_leaves_no_temporary_file(trickle, tmp_path, monkeypatch):
    # Ctrl-C is SIGINT to the main thread, where the download reads; it must be the main thread.
    assert threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    ctrl_c = threading.Timer(
        0.3, signal.pthread_kill, (threading.main_thread().ident, signal.SIGINT)
    )
    try:
        ctrl_c.start()
        with pytest.raises(KeyboardInterrupt):
            download(trickle, cache_dir=str(tmp_path), min_rate=0)
    finally:
        ctrl_c.cancel()
        signal.signal(signal.SIGINT, previous)
    assert _files(tmp_path) == []


def test_temporaries_of_killed_downloads_are_removed_on_the_next_start(server, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="resnet_backbones.weights.download")
    url = server.url("/models/r18.pth")
    folder, name = os.path.split(cache_path(url, str(tmp_path)))
    os.makedirs(folder)
    killed, live, fresh = (os.path.join(folder, f".{name}.tmp-{k}") for k in ("1-k", "2-l", "3-f"))
    for part in (killed, live, fresh):
        with open(part, "wb") as f:
            f.write(b"partial")
    # A download killed by SIGKILL: its process held the lock, which the kernel released.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, sys, time; f = open(sys.argv[1], 'rb'); "
         "fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)", killed],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout.readline() == "locked\n"
    holder.kill()
    holder.wait()
    # A download still running in another process holds its lock.
    with open(live, "rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        old = time.time() - 60
        for part in (killed, live):
            os.utime(part, (old, old))
        path = download(url, cache_dir=str(tmp_path), sha256=SHA256)
    assert not os.path.exists(killed)
    assert os.path.exists(live)  # locked: a live download's
    assert os.path.exists(fresh)  # unlocked but seconds old: a download about to lock it
    assert f"Removed {killed}, left by an interrupted download" in caplog.text
    assert sorted(_files(tmp_path)) == sorted([path, live, fresh])

"""download(): https or loopback only, atomic, verified, cached; served from 127.0.0.1."""

import hashlib
import os

import pytest

from resnet_backbones.weights.download import (
    CACHE_ENV,
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

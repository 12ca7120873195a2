"""The model-zoo command line (resnet_backbones.cli): list, inspect, download (from a loopback
server standing in for the publishers), verify and convert."""

import dataclasses
import hashlib
import json
import os
import subprocess
import sys

import pytest
import torch

from resnet_backbones.api import list_presets, list_weights
from resnet_backbones.cli import main
from resnet_backbones.presets import PRESETS
from resnet_backbones.weights import catalog
from resnet_backbones.weights.download import CACHE_ENV
from resnet_backbones.weights.resolve import ZOO_BASE_URL_ENV

from .helpers import REPO, WeightsServer, torchvision_reference


def run(capsys, *argv):
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


def test_presets_and_weights_are_listed(capsys):
    status, out, _ = run(capsys, "presets")
    assert status == 0
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [r.split("|")[1].strip() for r in rows] == list(PRESETS)
    status, out, _ = run(capsys, "presets", "--task", "classification")
    assert "CIFAR-ResNet-20" in out and "| R-50 " not in out

    status, out, _ = run(capsys, "weights", "--preset", "R-50")
    assert status == 0
    names = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ")]
    assert (
        names[1:]
        == list_weights("R-50")
        == [
            "resnet50.tv_in1k",
            "resnet50.tv2_in1k",
            "R-50.msra_in1k",
        ]
    )
    status, out, err = run(capsys, "weights", "--preset", "R-51")
    assert status == 2 and out == ""
    assert "preset = 'R-51' is not valid; valid values: 'R-18'" in err
    assert list_presets("detection")[:2] == ["R-18", "R-34"]


def test_info_gives_counts_accuracy_licence_url_and_hash(capsys):
    pinned = json.load(open(os.path.join(REPO, "docs", "model_complexity.json")))
    status, out, _ = run(capsys, "info", "resnet18.tv_in1k")
    assert status == 0
    entry = catalog.CATALOG["resnet18.tv_in1k"]
    counted = pinned["archs"]["resnet18"]
    assert f"{counted['params'] / 1e6:.2f}M counted" in out
    assert f"{counted['macs'] / 1e9:.2f} at 224x224" in out
    assert f"{entry.top1:.3f} %" in out and entry.license in out
    assert entry.url in out and entry.sha256_prefix in out

    status, out, _ = run(capsys, "info", "CIFAR-ResNet-20")
    assert status == 0
    counted = pinned["presets"]["CIFAR-ResNet-20"]["classifier"]
    assert f"{counted['params'] / 1e6:.2f}M (10-way classifier" in out
    assert f"{counted['macs'] / 1e9:.2f} at 32x32" in out

    status, out, err = run(capsys, "info", "resnet-18")
    assert status == 2 and "'resnet-18' is neither a preset nor zoo weights" in err
    assert "resnet18.tv_in1k" in err


@pytest.fixture
def served_resnet18(tmp_path, monkeypatch):
    """resnet18.tv_in1k as a generated file on a loopback mirror, the catalog's hash swapped
    for the file's; the weights cache in tmp_path."""
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision_reference("resnet18").state_dict(), path)
    payload = path.read_bytes()
    entry = catalog.CATALOG["resnet18.tv_in1k"]
    monkeypatch.setitem(
        catalog.CATALOG,
        entry.name,
        dataclasses.replace(entry, sha256=hashlib.sha256(payload).hexdigest(), sha256_prefix=None),
    )
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))
    with WeightsServer() as server:
        server.files["/mirror/" + os.path.basename(entry.url)] = payload
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/mirror/"))
        yield server


def test_download_then_verify_the_cache(capsys, tmp_path, served_resnet18):
    server, cache = served_resnet18, tmp_path / "for-compute-nodes"
    status, out, _ = run(capsys, "download", "R-18", "--cache", str(cache))  # a preset's default
    assert status == 0, out
    files = list(cache.rglob("*.pth"))
    assert len(files) == 1 and str(files[0]) in out
    assert f"1 file(s) in {cache}, 1 verified against their published SHA-256." in out
    assert sum(server.requests.values()) == 1
    status, out, _ = run(capsys, "download", "resnet18.tv_in1k", "--cache", str(cache))
    assert status == 0 and sum(server.requests.values()) == 1  # cached, verified, not fetched

    status, out, _ = run(capsys, "verify", "--cache", str(cache))
    assert status == 0 and "| resnet18.tv_in1k | ok" in out and "0 corrupt" in out
    with open(files[0], "r+b") as f:  # one flipped byte
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    status, out, _ = run(capsys, "verify", "--cache", str(cache))
    assert status == 1 and "CORRUPT" in out and "1 corrupt" in out and files[0].exists()
    status, out, _ = run(capsys, "verify", "--cache", str(cache), "--remove-corrupt")
    assert status == 0 and not files[0].exists()

    # Every name is checked before anything is fetched.
    status, _, err = run(capsys, "download", "resnet18.tv_in1k", "resnet-18", "--cache", str(cache))
    assert status == 2 and "'resnet-18' is neither zoo weights nor a preset" in err
    assert sum(server.requests.values()) == 1 and not list(cache.rglob("*.pth"))
    status, _, err = run(capsys, "download", "SE-R-101", "--cache", str(cache))
    assert status == 2 and "preset 'SE-R-101' has no default weights" in err


def test_convert_writes_weights_and_config(capsys, tmp_path):
    src, out = tmp_path / "resnet18-random.pth", tmp_path / "R-18-tv.pth"
    torch.save(torchvision_reference("resnet18").state_dict(), src)
    status, stdout, _ = run(
        capsys, "convert", "--source", "torchvision", "--arch", "resnet18", str(src), str(out)
    )
    assert status == 0 and f"Wrote {out}" in stdout and out.is_file()
    status, stdout, err = run(
        capsys, "convert", "--source", "torchvision", "--arch", "resnet50", str(src), str(out)
    )
    assert status == 2 and len(err.strip().splitlines()) == 1


def test_python_dash_m_runs_the_command_line():
    done = subprocess.run(
        [sys.executable, "-m", "resnet_backbones", "weights", "--preset", "R-18"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "resnet18.tv_in1k" in done.stdout

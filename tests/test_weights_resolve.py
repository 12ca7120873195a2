"""Step 1 of the weights pipeline: zoo names, https and detectron2 URLs, local paths.

Files are served from 127.0.0.1 (the hubs cannot be reached here); download() itself is tested
in test_download.py."""

import hashlib
import io
import sys

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from resnet_backbones.utils import config_yaml
from resnet_backbones.weights import catalog
from resnet_backbones.weights.download import CACHE_ENV
from resnet_backbones.weights.entry import WeightsEntry
from resnet_backbones.weights.errors import (
    BackboneMismatchError,
    ChecksumError,
    DownloadError,
    MetadataMismatchError,
    MissingDependencyError,
    UnknownWeightsError,
    WeightsNotFoundError,
)
from resnet_backbones.weights.export import export_weights
from resnet_backbones.weights.resolve import (
    DETECTRON2_BASE_URL,
    ZOO_BASE_URL_ENV,
    catalog_entry_for,
    resolve,
)

from .helpers import (
    TORCHVISION_INPUT,
    WeightsServer,
    assert_stages_close,
    default_cfg,
    load_weights,
    r18_opts,
    safetensors_bytes,
    serve_hub_file,
    torchvision_reference,
    torchvision_stages,
)


def _resnet18_entry(name, sha256_prefix):
    """A catalog entry for a torchvision resnet18 file named with ``sha256_prefix``."""
    return WeightsEntry(
        name=name,
        url=f"https://download.example.invalid/models/resnet18-{sha256_prefix}.pth",
        arch="resnet18",
        input=catalog.IMAGENET_RGB,
        sha256_prefix=sha256_prefix,
        num_params=11689512,
        num_params_source="torchvision",
        top1=None,
        top1_source="random weights",
        test_protocol="none",
        license="Apache-2.0",
        license_source="test",
        non_commercial=False,
    )


def _payload_of(state):
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _payload():
    reference = torchvision_reference("resnet18")
    return reference, _payload_of(reference.state_dict())


def test_a_local_path_is_itself_and_a_missing_one_an_error_naming_the_key(tmp_path):
    path = tmp_path / "w.pth"
    path.write_bytes(b"x")
    assert resolve(str(path)) == str(path)
    with pytest.raises(
        WeightsNotFoundError, match=r"MODEL.WEIGHTS = .*nothere.pth.*: no such file"
    ):
        resolve(str(tmp_path / "nothere.pth"))
    cfg = default_cfg(
        "Base-RCNN-FPN.yaml", r18_opts() + ["MODEL.WEIGHTS", str(tmp_path / "no.pth")]
    )
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS = .*no.pth.*: no such file"):
        load_weights(cfg)


def test_catalog_entries_are_found_by_zoo_name_and_by_url():
    entry = catalog.CATALOG["R-50.msra_in1k"]
    assert catalog_entry_for("resnet_backbones://R-50.msra_in1k") is entry
    assert catalog_entry_for(entry.url) is entry
    assert entry.url.startswith(DETECTRON2_BASE_URL)
    assert catalog_entry_for("detectron2://ImageNetPretrained/MSRA/R-50.pkl") is entry
    assert catalog_entry_for("/data/R-50.pkl") is None
    with pytest.raises(UnknownWeightsError, match=r"no such weights.*valid names: .*R-50"):
        catalog_entry_for("resnet_backbones://no-such-weights")


def test_zoo_names_resolve_download_once_and_check_the_config(tmp_path, monkeypatch):
    reference, payload = _payload()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    filename = f"resnet18-{prefix}.pth"
    entry = _resnet18_entry("test-resnet18", prefix)
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with WeightsServer() as server:
        server.files[f"/mirror/{filename}"] = payload
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/mirror/"))
        cfg = default_cfg("Base-RCNN-FPN.yaml")
        cfg.merge_from_other_cfg(cfg.load_cfg(config_yaml(entry.config)))
        cfg.MODEL.WEIGHTS = "resnet_backbones://test-resnet18"
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            expected = torchvision_stages(reference, x)
        assert_stages_close(load_weights(cfg), expected, x)
        load_weights(cfg)
        assert server.requests[f"/mirror/{filename}"] == 1
        # detectron2's own checkpointer resolves the name too (from the cache; no conversion).
        DetectionCheckpointer(build_model(cfg)).load("resnet_backbones://test-resnet18")
        assert server.requests[f"/mirror/{filename}"] == 1

        cfg.INPUT.FORMAT = "BGR"  # the entry says RGB
        with pytest.raises(
            MetadataMismatchError,
            match=r"resnet_backbones://test-resnet18.*INPUT\.FORMAT is 'BGR'",
        ):
            load_weights(cfg)
        with pytest.raises(ValueError, match=r"no such weights.*valid names: .*test-resnet18"):
            load_weights(cfg, "resnet_backbones://no-such-weights")


def test_urls_in_model_weights_are_checked_against_their_hash(tmp_path, monkeypatch):
    """An http(s) MODEL.WEIGHTS whose file name carries a SHA-256 prefix (torch.hub's
    convention), and a zoo entry with a hash, are verified; a mismatch is refused and not cached."""
    reference, payload = _payload()
    good = hashlib.sha256(payload).hexdigest()[:8]
    bad = "0" * 8 if good != "0" * 8 else "1" * 8
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts() + TORCHVISION_INPUT)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torchvision_stages(reference, x)
    with WeightsServer() as server:
        for prefix in (good, bad):
            server.files[f"/models/resnet18-{prefix}.pth"] = payload
        with pytest.raises(ChecksumError, match=f"expected a SHA-256 starting with {bad}"):
            load_weights(cfg, server.url(f"/models/resnet18-{bad}.pth"))
        assert not list(cache.rglob("*.pth"))
        assert_stages_close(
            load_weights(cfg, server.url(f"/models/resnet18-{good}.pth")), expected, x
        )

        entry = _resnet18_entry("tampered-resnet18", bad)
        monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/models/"))
        with pytest.raises(ChecksumError, match=f"resnet18-{bad}.pth: expected a SHA-256"):
            load_weights(cfg, "resnet_backbones://tampered-resnet18")
        assert [p.name for p in cache.rglob("*.pth")] == [f"resnet18-{good}.pth"]


def test_hf_hub_paths_resolve_through_huggingface_hub(tmp_path, monkeypatch):
    """hf-hub:ORG/NAME from a loopback server standing in for the Hub (HF_ENDPOINT):
    model.safetensors preferred to pytorch_model.bin, cached under our weights cache, read from
    the cache alone with HF_HUB_OFFLINE, and checked against the catalog entry of its repo."""
    pytest.importorskip("huggingface_hub")
    reference = torchvision_reference("resnet18")
    state = reference.state_dict()
    other = torchvision.models.resnet18(weights=None).state_dict()  # different random weights
    repo = catalog.CATALOG["resnet18.tv_in1k"].hf_hub_id  # timm/resnet18.tv_in1k
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts("FrozenBN") + TORCHVISION_INPUT)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = torchvision_stages(reference, x)
    with WeightsServer() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.base_url)
        safetensors_path = serve_hub_file(
            server, repo, "model.safetensors", safetensors_bytes(state)
        )
        bin_path = serve_hub_file(server, repo, "pytorch_model.bin", _payload_of(other))
        serve_hub_file(server, "someone/r18-bin-only", "pytorch_model.bin", _payload_of(state))

        local = resolve(f"hf-hub:{repo}")
        assert local.startswith(str(cache)) and local.endswith("model.safetensors")
        assert_stages_close(load_weights(cfg, f"hf-hub:{repo}"), expected, x)
        assert (server.requests[safetensors_path], server.requests[bin_path]) == (1, 0)
        # A repository without model.safetensors: its pytorch_model.bin.
        only_bin = resolve("hf-hub:someone/r18-bin-only@main")
        assert only_bin.endswith("pytorch_model.bin")
        assert_stages_close(load_weights(cfg, "hf-hub:someone/r18-bin-only"), expected, x)
        # The converter takes Hub paths too, and records them as the origin.
        out, _ = export_weights(
            f"hf-hub:{repo}", str(tmp_path / "r18.pth"), source="torchvision", arch="resnet18"
        )
        assert torch.load(out, weights_only=True)["metadata"]["converted_from"] == f"hf-hub:{repo}"

        cfg.INPUT.FORMAT = "BGR"  # the catalog entry of timm/resnet18.tv_in1k says RGB
        with pytest.raises(
            MetadataMismatchError, match=rf"hf-hub:{repo}: .*INPUT\.FORMAT is 'BGR'"
        ):
            load_weights(cfg, f"hf-hub:{repo}")
        cfg.INPUT.FORMAT = "RGB"

        server.not_found_headers["X-Error-Code"] = "RepoNotFound"
        with pytest.raises(
            DownloadError, match=r"hf-hub:nobody/nothing .*no such repository"
        ) as info:
            resolve("hf-hub:nobody/nothing")
        assert "\n" not in str(info.value)
        requests = sum(server.requests.values())

    # Offline: the cache alone, without a request (the server is gone).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve(f"hf-hub:{repo}") == local
    assert_stages_close(load_weights(cfg, "hf-hub:someone/r18-bin-only"), expected, x)
    assert sum(server.requests.values()) == requests
    with pytest.raises(
        DownloadError, match=r"model.safetensors is not in the cache.*HF_HUB_OFFLINE"
    ):
        resolve("hf-hub:timm/resnet34.tv_in1k")
    with pytest.raises(UnknownWeightsError, match=r"'hf-hub:resnet18' is not a Hugging Face Hub"):
        resolve("hf-hub:resnet18")


def test_hf_hub_paths_without_huggingface_hub_name_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # import fails
    with pytest.raises(
        MissingDependencyError, match=r"pip install 'resnet_backbones\[hub\]'"
    ) as info:
        resolve("hf-hub:timm/resnet18.tv_in1k")
    assert isinstance(info.value, ImportError)


def test_a_zoo_name_is_checked_against_the_config_before_any_download(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with WeightsServer() as server:
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/mirror/"))
        cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts() + TORCHVISION_INPUT)
        cfg.MODEL.RESNETS.DEPTH = 34
        with pytest.raises(BackboneMismatchError) as info:
            load_weights(cfg, "resnet_backbones://resnet18.tv_in1k")
        assert str(info.value).startswith(
            "resnet_backbones://resnet18.tv_in1k holds R-18 (torchvision's resnet18), but the "
            "config builds R-34; nothing was downloaded. Choose weights of the config's network "
            "(MODEL_ZOO.md lists them by network), or build the weights' network: "
            "preset_config('R-18')"
        )
        cfg.MODEL.RESNETS.DEPTH = 18
        cfg.INPUT.FORMAT = "BGR"
        with pytest.raises(MetadataMismatchError, match=r"INPUT\.FORMAT is 'BGR' in the config"):
            load_weights(cfg, "resnet_backbones://resnet18.tv_in1k")
        assert not server.requests


def test_a_failed_zoo_download_names_the_two_ways_out(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts() + TORCHVISION_INPUT)
    with WeightsServer() as server:  # a mirror without the file: HTTP 404
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/mirror/"))
        with pytest.raises(DownloadError) as info:
            load_weights(cfg, "resnet_backbones://resnet18.tv_in1k")
    assert server.requests["/mirror/resnet18-f37072fd.pth"] == 1
    message = str(info.value)
    assert message.startswith(
        f"resnet_backbones://resnet18.tv_in1k: download of {server.url('/mirror/')}"
        "resnet18-f37072fd.pth failed: HTTP 404"
    )
    assert message.endswith(
        ". Two ways out: download https://download.pytorch.org/models/resnet18-f37072fd.pth "
        "yourself and set MODEL.WEIGHTS to the local file, or set RESNET_BACKBONES_ZOO_BASE_URL "
        f"to a mirror that serves resnet18-f37072fd.pth (now '{server.url('/mirror/')}')"
    )

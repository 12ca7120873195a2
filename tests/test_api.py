"""The Python API without YAML (resnet_backbones.api), and the README's examples of it, run as
they are with the model zoo served from a loopback server."""

import contextlib
import dataclasses
import hashlib
import io
import os
import re

import pytest
import torch

import resnet_backbones as rb
from resnet_backbones.presets import ARCHS
from resnet_backbones.weights import catalog
from resnet_backbones.weights.catalog import default_weights
from resnet_backbones.weights.download import CACHE_ENV
from resnet_backbones.weights.resolve import ZOO_BASE_URL_ENV

from .helpers import (
    REPO,
    STAGES,
    WeightsServer,
    reference_state,
    save_in_its_format,
    torchvision_reference,
    torchvision_stages,
)


def readme_examples(section: str) -> list[str]:
    """The ```python blocks of one ``## `` section of the README."""
    text = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, re.S)


@contextlib.contextmanager
def served_zoo(tmp_path, monkeypatch, names):
    """The catalog entries ``names`` as generated files (random weights in each publisher's own
    format) on a loopback mirror, each entry's hash swapped for its file's."""
    with WeightsServer() as server:
        for name in names:
            entry = catalog.CATALOG[name]
            folder = tmp_path / name
            folder.mkdir()
            arch = ARCHS[entry.arch]
            payload = save_in_its_format(reference_state(arch), arch, folder).read_bytes()
            server.files["/mirror/" + os.path.basename(entry.url)] = payload
            digest = hashlib.sha256(payload).hexdigest()
            monkeypatch.setitem(
                catalog.CATALOG, name, dataclasses.replace(entry, sha256=digest, sha256_prefix=None)
            )
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/mirror/"))
        monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
        yield server


def run_example(code: str) -> None:
    """Runs ``code`` and checks each ``print`` against the ``# `` line right after it, where
    there is one (the README's expected output)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    printed = out.getvalue().splitlines()
    lines = code.splitlines()
    calls = [i for i, line in enumerate(lines) if line.startswith("print(")]
    assert len(printed) == len(calls)
    for got, i in zip(printed, calls):
        following = lines[i + 1] if i + 1 < len(lines) else ""
        if following.startswith("# "):
            assert got == following[2:], f"README line {lines[i]!r}"


def test_readme_examples_run(tmp_path, monkeypatch):
    examples = readme_examples("Python API, without YAML")
    assert len(examples) == 2
    with served_zoo(tmp_path, monkeypatch, [default_weights("R-101").name]) as server:
        run_example(examples[0])
        assert sum(server.requests.values()) == 1
    run_example(examples[1])


def test_create_backbone_computes_what_the_reference_computes(tmp_path):
    """Weights of a local torchvision file: the backbone's stages equal torchvision's."""
    reference = torchvision_reference("resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    backbone = rb.create_backbone("R-18", weights=str(path)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, got = torchvision_stages(reference, x), backbone(x)
    assert list(got) == STAGES
    for name, value in zip(STAGES, expected):
        torch.testing.assert_close(got[name], value, rtol=1e-4, atol=1e-4)


def test_create_backbone_options():
    backbone = rb.create_backbone("R-18", fpn=True, out_features=["res3", "res4", "res5"])
    features = backbone(torch.randn(2, 3, 64, 64))
    assert list(features) == ["p3", "p4", "p5", "p6"]
    assert {f.shape[1] for f in features.values()} == {256}

    backbone = rb.create_backbone("R-18", freeze_at=2, norm="GN")
    frozen = {n.split(".")[0] for n, p in backbone.named_parameters() if not p.requires_grad}
    assert frozen == {"stem", "res2"}
    assert backbone.cfg.MODEL.RESNETS.NORM == "GN" and backbone.cfg.is_frozen()

    cifar = rb.create_backbone("CIFAR-ResNet-20")
    assert list(cifar(torch.randn(2, 3, 32, 32))) == ["res2", "res3", "res4"]


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(name="R-19"), r"preset = 'R-19' is not valid; valid values: 'R-18'"),
        (dict(name="R-18", out_features=["p3"]), r"out_features = 'p3' is not valid.*'res2'"),
        (
            dict(name="R-18", weights="resnet50.tv_in1k"),
            r"resnet50 weights, for preset 'R-50', not for 'R-18'; weights of 'R-18': "
            r"resnet18.tv_in1k",
        ),
        (dict(name="CIFAR-ResNet-20", fpn=True), r"preset 'CIFAR-ResNet-20' has no FPN form"),
        (dict(name="SE-R-101", weights=True), r"preset 'SE-R-101' has no default weights"),
        (dict(name="R-18", weights=3), r"weights = 3 is not valid"),
    ],
)
def test_create_backbone_errors(call, message, monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # nothing may be downloaded
    with pytest.raises((ValueError, TypeError), match=message):
        rb.create_backbone(**call)
    assert not list(tmp_path.rglob("*"))


def test_random_initialisation_trains_everything_with_bn():
    """weights=None (the default) does not keep the fine-tuning settings of the preset's default
    weights: random FrozenBN would normalise nothing, and frozen stages would stay random."""
    model, cfg = rb.create_detector("R-50", num_classes=3, device="cpu")
    assert (cfg.MODEL.WEIGHTS, cfg.MODEL.RESNETS.NORM, cfg.MODEL.BACKBONE.FREEZE_AT) == (
        "",
        "BN",
        0,
    )
    assert all(p.requires_grad for p in model.backbone.parameters())
    backbone = rb.create_backbone("ReXNet-100")
    assert backbone.cfg.MODEL.REXNET.NORM == "BN"
    kinds = {type(m).__name__ for m in [*backbone.modules(), *model.backbone.modules()]}
    assert "BatchNorm2d" in kinds and "FrozenBatchNorm2d" not in kinds


def test_create_detector_runs_in_each_form():
    for form in ("C4", "FPN"):
        model, cfg = rb.create_detector("R-18", form=form, num_classes=2, device="cpu")
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 2
        model.eval()
        with torch.no_grad():
            (out,) = model([{"image": torch.zeros(3, 64, 64)}])
        assert out["instances"].image_size == (64, 64)
    with pytest.raises(ValueError, match=r"num_classes = 0 is not valid"):
        rb.create_detector("R-18", num_classes=0)

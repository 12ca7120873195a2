"""The model-zoo catalog and the network table it points into: every entry names an arch of a
preset, carries its input, cites its numbers, and fits the network our configs build."""

import json
from pathlib import Path

import pytest
import torchvision

from resnet_backbones.config import build_clean_backbone
from resnet_backbones.presets import ARCHS, PRESETS, arch_config
from resnet_backbones.weights import catalog
from resnet_backbones.weights.catalog import arch_input
from resnet_backbones.weights.detect import FORMATS, detect
from resnet_backbones.weights.mappings import to_backbone
from resnet_backbones.weights.resolve import catalog_entry_for

from .helpers import REPO, reference_state


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_catalog_entries_are_consistent(name):
    entry = catalog.CATALOG[name]
    assert entry.name == name and entry.url.startswith("https://")
    arch = ARCHS[entry.arch]
    assert entry.source == arch.source and entry.source in FORMATS
    assert entry.preset == arch.preset
    assert any(a.name == arch.name for a in PRESETS[entry.preset].archs)
    # The entry says what the checkpointer checks a config against.
    assert set(entry.metadata) >= {"input_format", "pixel_mean", "pixel_std"}
    resnet = PRESETS[entry.preset].keys["MODEL.BACKBONE.NAME"] == "build_resnet_family_backbone"
    assert ("stride_in_1x1" in entry.metadata) == resnet
    assert entry.top1 is None or 60 < entry.top1 < 90
    assert entry.top1_source and entry.test_protocol and entry.license and entry.license_source
    if entry.source in ("torchvision", "timm"):  # both publish a hash prefix in the file name
        assert entry.sha256_prefix and f"-{entry.sha256_prefix}." in entry.url
    assert (entry.torchvision_weights is not None) == (entry.source == "torchvision")
    assert entry.non_commercial == ("-NC" in entry.license)
    assert entry.non_commercial == entry.name.startswith("res2net")  # CC BY-NC-SA 4.0


def test_every_arch_has_published_weights_with_one_input():
    for name in ARCHS:
        entries = [e for e in catalog.CATALOG.values() if e.arch == name]
        assert entries, name
        assert {e.input for e in entries} == {arch_input(name)}


def test_arch_rows_are_linked_to_their_presets():
    assert ARCHS["seresnet50"].preset == "SE-R-50"
    assert ARCHS["resnet50"].preset == ARCHS["R-50"].preset == "R-50"
    # The layout: MSRA's stride in the 1x1 conv, torchvision's in the 3x3.
    assert ARCHS["R-50"].config["MODEL.RESNETS.STRIDE_IN_1X1"] is True
    assert ARCHS["resnet50"].config["MODEL.RESNETS.STRIDE_IN_1X1"] is False
    # Our base configs name our ResNet-family builder; ReXNet (FPN only) names its FPN builder.
    assert "MODEL.BACKBONE.NAME" not in ARCHS["resnet50"].config
    assert ARCHS["rexnet_100"].config["MODEL.BACKBONE.NAME"] == "build_rexnet_fpn_backbone"
    for name in ARCHS:
        assert sum(a.name == name for p in PRESETS.values() for a in p.archs) == 1


PINNED = json.loads((Path(REPO) / "docs" / "model_complexity.json").read_text())


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_catalog_parameter_counts_equal_the_built_model(name):
    """Through the pinned counts: test_complexity.py rebuilds every arch's ImageNet classifier
    (norms' affine weights included) and compares it with docs/model_complexity.json."""
    entry = catalog.CATALOG[name]
    assert PINNED["archs"][entry.arch]["params"] == entry.num_params


@pytest.mark.parametrize(
    "name", [n for n, e in catalog.CATALOG.items() if e.source in ("torchvision", "timm")]
)
def test_catalog_agrees_with_the_libraries_own_metadata(name):
    entry = catalog.CATALOG[name]
    if entry.source == "torchvision":
        weights_enum, member = entry.torchvision_weights.split(".")
        meta_entry = getattr(getattr(torchvision.models, weights_enum), member)
        assert entry.url == meta_entry.url
        assert entry.num_params == meta_entry.meta["num_params"]
        assert entry.top1 == meta_entry.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert entry.torchvision_weights in entry.top1_source
        resize = meta_entry.transforms().resize_size[0]
        assert f"resize {resize}, center crop 224" in entry.test_protocol
    else:
        timm = pytest.importorskip("timm")
        model = timm.create_model(entry.arch, pretrained=False)
        assert entry.num_params == sum(p.numel() for p in model.parameters())
        pretrained = timm.models.get_pretrained_cfg(entry.name)
        assert pretrained is not None, entry.name  # timm knows this name.tag
        mean = [round(255 * m, 3) for m in pretrained.mean]
        std = [round(255 * s, 3) for s in pretrained.std]
        assert entry.config["MODEL.PIXEL_MEAN"] == mean
        assert entry.config["MODEL.PIXEL_STD"] == std


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_arch_row_builds_a_backbone_its_weights_load_into(name):
    arch = ARCHS[name]
    weights = detect(reference_state(arch))
    assert weights.format == arch.source
    assert arch.family is None or arch.family in weights.families
    state = to_backbone(weights.format, weights.state_dict, family=arch.family)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    build_clean_backbone(arch_config(name)).load_state_dict(state, strict=True)


def test_hub_repositories_are_timms_own():
    """Every torchvision and timm entry names the Hub repository that timm's pretrained config
    gives for the same name.tag; no revision is pinned without a source for it."""
    timm = pytest.importorskip("timm")
    for name, entry in catalog.CATALOG.items():
        pretrained = timm.models.get_pretrained_cfg(name)
        assert entry.hf_hub_id == (pretrained.hf_hub_id if pretrained else None), name
        assert entry.hf_hub_revision is None, name
    assert catalog_entry_for("hf-hub:timm/resnetv2_50.a1h_in1k@main").input == catalog.HALF_RGB


def test_each_file_is_credited_to_its_publisher_not_its_format():
    """detectron2's Caffe2 files share a format (msra) but not a publisher: FAIR trained the
    ResNeXt, MSRA the ResNets; MODEL_ZOO.md's "published by" column is generated from this."""
    by = {name: e.published_by for name, e in catalog.CATALOG.items()}
    assert by["X-101-32x8d.fair_in1k"] == "FAIR"
    assert by["R-50.msra_in1k"] == by["R-101.msra_in1k"] == "MSRA"
    for name, entry in catalog.CATALOG.items():
        if entry.source != "msra":
            assert by[name] == entry.source, name
    text = (Path(REPO) / "MODEL_ZOO.md").read_text(encoding="utf-8")
    assert "| `resnet_backbones://X-101-32x8d.fair_in1k` | - | FAIR (msra) |" in text

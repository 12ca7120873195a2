"""Step 4 of the weights pipeline: the config against what the weights record or imply."""

import pytest
import torch
import torchvision
from detectron2.modeling import build_model

from resnet_backbones.presets import ARCHS, preset_config
from resnet_backbones.utils import config_get, config_set
from resnet_backbones.weights.checkpoint import prepare_checkpoint
from resnet_backbones.weights.detect import WeightsFile
from resnet_backbones.weights.errors import MetadataMismatchError
from resnet_backbones.weights.export import export_weights
from resnet_backbones.weights.metadata import check_metadata, expected_metadata

from .helpers import (
    TORCHVISION_INPUT,
    default_cfg,
    load_weights,
    r18_opts,
    reference_state,
    save_in_its_format,
    torchvision_reference,
)

RGB = {"input_format": "RGB", "pixel_mean": [123.675, 116.28, 103.53]}


def test_a_contradicting_config_names_every_key_and_both_values():
    cfg = default_cfg()  # detectron2's defaults: BGR, MSRA's mean, stride in the 1x1 conv
    with pytest.raises(MetadataMismatchError) as info:
        check_metadata({**RGB, "stride_in_1x1": False}, cfg, source="w.pth")
    message = str(info.value)
    assert message.startswith("w.pth: the config contradicts what the weights were trained with: ")
    assert "MODEL.RESNETS.STRIDE_IN_1X1 is True in the config but False in the weights" in message
    assert "INPUT.FORMAT is 'BGR' in the config but 'RGB' in the weights" in message
    assert "MODEL.PIXEL_MEAN is [103.53, 116.28, 123.675] in the config" in message
    assert isinstance(info.value, ValueError)
    # Without bottlenecks the stride placement is moot; YAML-rounded floats still agree.
    cfg.INPUT.FORMAT = "RGB"
    cfg.MODEL.PIXEL_MEAN = [123.6750001, 116.28, 103.53]
    check_metadata({**RGB, "stride_in_1x1": False}, cfg, source="w.pth", bottleneck=False)


def test_what_is_expected_the_file_over_its_family_over_its_catalog_entry():
    from resnet_backbones.weights.catalog import CATALOG

    entry = CATALOG["resnet50.tv_in1k"]
    weights = WeightsFile("w.pth", "torchvision", {}, ("resnet",))
    assert expected_metadata(weights, "resnet", entry) == entry.metadata
    assert expected_metadata(weights, "rexnet") == {"input_format": "RGB"}
    ours = WeightsFile("w.pth", "resnet_backbones", {}, metadata={"input_format": "BGR"})
    assert expected_metadata(ours, None, entry)["input_format"] == "BGR"
    assert expected_metadata(ours, None) == {"input_format": "BGR"}


def test_the_config_must_agree_with_the_weights_metadata(tmp_path):
    src = tmp_path / "resnet18-tv.pth"
    torch.save(torchvision_reference("resnet18").state_dict(), src)
    out, _ = export_weights(
        str(src), str(tmp_path / "resnet18-ours.pth"), source="torchvision", arch="resnet18"
    )
    cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts())  # detectron2's BGR and MSRA statistics
    with pytest.raises(MetadataMismatchError) as info:
        load_weights(cfg, out)
    message = str(info.value)
    assert "INPUT.FORMAT is 'BGR' in the config but 'RGB' in the weights" in message
    assert "MODEL.PIXEL_STD is [1.0, 1.0, 1.0] in the config but [58.395, 57.12, 57.375]" in message
    load_weights(default_cfg("Base-RCNN-FPN.yaml", r18_opts() + TORCHVISION_INPUT), out)  # loads


def test_torchvision_weights_need_rgb_and_the_stride_in_the_3x3_conv(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(MetadataMismatchError) as info:
        load_weights(default_cfg("Base-RCNN-FPN.yaml", ["MODEL.RESNETS.DEPTH", "50"]), str(path))
    assert "STRIDE_IN_1X1 is True in the config but False" in str(info.value)
    assert "INPUT.FORMAT is 'BGR' in the config but 'RGB'" in str(info.value)
    # Basic blocks have no 1x1 conv: detectron2's default STRIDE_IN_1X1 True is moot there.
    path18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path18)
    opts = r18_opts() + TORCHVISION_INPUT + ["MODEL.RESNETS.STRIDE_IN_1X1", "True"]
    load_weights(default_cfg("Base-RCNN-FPN.yaml", opts), str(path18))


def test_a_raw_torchvision_file_implies_its_pixel_statistics(tmp_path):
    """RGB, but MSRA's mean and a std of 1: the statistics of no torchvision weights."""
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    opts = r18_opts() + ["INPUT.FORMAT", "RGB", "MODEL.PIXEL_STD", "[1.0, 1.0, 1.0]"]
    with pytest.raises(MetadataMismatchError) as info:
        load_weights(default_cfg("Base-RCNN-FPN.yaml", opts), str(path))
    message = str(info.value)
    assert "MODEL.PIXEL_MEAN is [103.53, 116.28, 123.675] in the config but " in message
    assert "MODEL.PIXEL_STD is [1.0, 1.0, 1.0] in the config but [58.395, 57.12, 57.375]" in message
    assert "INPUT.FORMAT" not in message


# --------------------------------------------------------------------------------------------
# Every source against every key it records or implies
# --------------------------------------------------------------------------------------------
def _detectron2_file(folder):
    """A detectron2 model's checkpoint that holds its pixel_mean and pixel_std buffers (as
    detectron2 saved them before making them non-persistent)."""
    cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts() + TORCHVISION_INPUT)
    state = build_model(cfg).state_dict()
    state["pixel_mean"] = torch.tensor(cfg.MODEL.PIXEL_MEAN).view(-1, 1, 1)
    state["pixel_std"] = torch.tensor(cfg.MODEL.PIXEL_STD).view(-1, 1, 1)
    path = folder / "model_final.pth"
    torch.save({"model": state, "iteration": 9}, path)
    return path


def _ours_file(folder):
    src = folder / "resnet18-tv.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    out, _ = export_weights(
        str(src), str(folder / "ours.pth"), source="torchvision", arch="resnet18"
    )
    return out


def _published(arch, folder):
    row = ARCHS[arch]
    return save_in_its_format(reference_state(row), row, folder)


# Source -> (the file, the preset whose network it holds, the keys it records or implies). A
# detectron2 checkpoint records no input format (README, "Weights").
SOURCES = {
    "torchvision": (lambda f: _published("resnet18", f), "R-18", ("FORMAT", "MEAN", "STD")),
    "timm": (lambda f: _published("rexnet_100", f), "ReXNet-100", ("FORMAT", "MEAN", "STD")),
    "msra": (lambda f: _published("R-50", f), "R-50", ("FORMAT", "MEAN", "STD")),
    "detectron2": (_detectron2_file, "R-18", ("MEAN", "STD")),
    "resnet_backbones": (_ours_file, "R-18", ("FORMAT", "MEAN", "STD")),
}
KEYS = {"FORMAT": "INPUT.FORMAT", "MEAN": "MODEL.PIXEL_MEAN", "STD": "MODEL.PIXEL_STD"}


@pytest.fixture(scope="module")
def source_files(tmp_path_factory):
    """Source -> (its file, a model of its network, the config that fits it), made once."""
    made = {}

    def get(source):
        if source not in made:
            make, preset, _ = SOURCES[source]
            cfg = preset_config(preset)  # the input of the preset's default (published) weights
            cfg.MODEL.DEVICE = "cpu"
            made[source] = (make(tmp_path_factory.mktemp(source)), build_model(cfg), cfg)
        return made[source]

    return get


def _contradicting(key, value):
    if key == "FORMAT":
        return "BGR" if value == "RGB" else "RGB"
    return [v + 10.0 for v in value]


@pytest.mark.parametrize(
    "source, key", [(s, k) for s, (_, _, keys) in SOURCES.items() for k in keys]
)
def test_every_source_refuses_a_config_that_contradicts_what_it_records_or_implies(
    source, key, source_files
):
    path, model, cfg = source_files(source)
    if key == "FORMAT":  # once per source: the fitting config loads
        assert prepare_checkpoint(str(path), model, cfg).report.fits
    bad = cfg.clone()
    config_set(bad, KEYS[key], _contradicting(key, config_get(cfg, KEYS[key])))
    with pytest.raises(MetadataMismatchError) as info:
        prepare_checkpoint(str(path), model, bad)
    (mismatch,) = str(info.value).split(": ", 2)[2].split(". Set these keys")[0].split("; ")
    assert mismatch.startswith(f"{KEYS[key]} is {config_get(bad, KEYS[key])!r} in the config but ")

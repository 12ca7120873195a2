"""Step 4 of the weights pipeline: the config against what the weights record or imply."""

import pytest
import torch
import torchvision

from resnet_backbones.weights.detect import WeightsFile
from resnet_backbones.weights.errors import MetadataMismatchError
from resnet_backbones.weights.export import export_weights
from resnet_backbones.weights.metadata import check_metadata, expected_metadata

from .helpers import TORCHVISION_INPUT, default_cfg, load_weights, r18_opts, torchvision_reference

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

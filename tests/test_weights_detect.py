"""Step 3 of the weights pipeline: which library wrote a file, from its layout and names.

No detectron2 model is built here: detection needs names only."""

import pickle

import numpy as np
import pytest
import torch
import torchvision

from resnet_backbones.weights.detect import FORMATS, detect, read_weights
from resnet_backbones.weights.errors import WeightsFormatError
from resnet_backbones.weights.mappings import FAMILIES, to_backbone

# The SE and Res2Net tables extend torchvision's: they read its files too.
TV_FAMILIES = ("resnet", "seresnet", "res2net")


def _detection_cases():
    tv = torchvision.models.resnet18(weights=None).state_dict()
    ours = to_backbone("torchvision", tv, family="resnet")
    c2 = {"conv1_w": np.zeros(1), "res_conv1_bn_s": np.zeros(1), "res2_0_branch2a_w": np.zeros(1)}
    return {
        "torchvision": (tv, "torchvision", TV_FAMILIES, None),
        "timm training file": ({"state_dict": tv, "epoch": 3}, "torchvision", TV_FAMILIES, "state_dict"),
        "msra ImageNet": ({**c2, "fc1000_w": np.zeros(1)}, "msra", (), None),
        "Detectron1": ({"blobs": c2, "cfg": "..."}, "msra", (), "blobs"),
        "detectron2 zoo": (
            {"model": {"backbone.bottom_up." + k: v for k, v in ours.items()}, "__author__": "x"},
            "detectron2", (), "model",
        ),
        "detectron2 bare": (ours, "detectron2", (), None),
        "ours": ({"model": ours, "metadata": {"arch": "resnet18"}}, "resnet_backbones", (), "model"),
        "pycls": ({"model_state": {"stem.conv.weight": torch.zeros(1)}}, "pycls", (), "model_state"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_detection_cases()))
def test_the_format_is_detected_from_the_content(case):
    checkpoint, fmt, families, wrapper = _detection_cases()[case]
    weights = detect(checkpoint)
    assert (weights.format, weights.families, weights.wrapper) == (fmt, families, wrapper)


def test_timm_resnet_d_is_detected_by_its_deep_stem():
    timm = pytest.importorskip("timm")
    weights = detect(timm.create_model("resnet50d", pretrained=False).state_dict())
    assert (weights.format, weights.families) == ("timm", ("resnet_d",))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("list.pkl", pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
        ("empty-dict.pkl", pickle.dumps({}), "holds an empty dict, no weights"),
        (
            "odd.pkl",
            pickle.dumps({"foo.bar": np.zeros(2), "baz": np.zeros(1)}),
            "unknown weights format",
        ),
        (
            "strings.pkl",
            pickle.dumps({"conv1.weight": np.zeros(1), "note": "hello"}),
            "'note' is a str, not a tensor",
        ),
    ],
)
def test_unknown_files_are_errors_naming_the_path(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(WeightsFormatError, match=message) as info:
        read_weights(str(path))
    assert str(path) in str(info.value)
    if name == "odd.pkl":
        assert "'foo.bar'" in str(info.value) and all(f in str(info.value) for f in FORMATS)
        assert all(family in str(info.value) for family in FAMILIES)


def test_an_unknown_files_names_are_listed_first_eight_with_a_count():
    state = {f"block{i}.weight": np.zeros(1) for i in range(11)}
    with pytest.raises(WeightsFormatError) as info:
        detect(state, path="many.pkl")
    message = str(info.value)
    assert "'block7.weight' ... (11 in all)" in message and "'block8.weight'" not in message

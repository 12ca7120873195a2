"""Step 5 of the weights pipeline: every name mapping, tested on names and small tensors alone.

No detectron2 model is built here; the reference networks of torchvision and timm provide
their real parameter names."""

import re

import numpy as np
import pytest
import torch
import torchvision

from resnet_backbones.weights import mappings
from resnet_backbones.weights.detect import detect
from resnet_backbones.weights.errors import WeightsFormatError
from resnet_backbones.weights.mappings import (
    BACKBONE_NAME,
    FAMILIES,
    Family,
    backbone_prefix,
    caffe2_to_backbone,
    choose_family,
    detectron2_to_backbone,
    families_reading,
    rename_names,
    to_backbone,
    unmatched_names,
)

from .helpers import to_caffe2_names

# One reference network per family, in its library's own names.
FAMILY_REFERENCES = {
    "resnet": ("torchvision", "resnet50"),
    "resnet_d": ("timm", "resnet50d"),
    "seresnet": ("timm", "seresnet50"),
    "res2net": ("timm", "res2net50_26w_4s"),
    "resnetv2": ("timm", "resnetv2_50"),
    "rexnet": ("timm", "rexnet_100"),
}


def _reference_names(family):
    library, name = FAMILY_REFERENCES[family]
    if library == "torchvision":
        return list(getattr(torchvision.models, name)(weights=None).state_dict())
    timm = pytest.importorskip("timm")
    return list(timm.create_model(name, pretrained=False).state_dict())


def test_every_family_has_a_reference():
    assert set(FAMILY_REFERENCES) == set(FAMILIES)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_family_reads_every_name_of_its_reference_into_backbone_names(family):
    names = _reference_names(family)
    assert unmatched_names(names, FAMILIES[family].rules) == []
    renamed = rename_names(names, FAMILIES[family].rules)
    targets = [t for t in renamed.values() if t is not None]
    assert all(BACKBONE_NAME.fullmatch(t) for t in targets)
    assert len(set(targets)) == len(targets)  # no two tensors land on one name
    dropped = sorted(n for n, t in renamed.items() if t is None)
    assert dropped in (["fc.bias", "fc.weight"], ["head.fc.bias", "head.fc.weight"])
    assert family in families_reading(names)


def test_torchvision_names_map_to_detectron2s():
    renamed = rename_names(
        ["conv1.weight", "bn1.running_var", "layer1.0.bn2.bias", "layer4.2.conv3.weight",
         "layer2.0.downsample.0.weight", "layer2.0.downsample.1.weight", "fc.weight"],
        FAMILIES["resnet"].rules,
    )  # fmt: skip
    assert renamed == {
        "conv1.weight": "stem.conv1.weight",
        "bn1.running_var": "stem.conv1.norm.running_var",
        "layer1.0.bn2.bias": "res2.0.conv2.norm.bias",
        "layer4.2.conv3.weight": "res5.2.conv3.weight",
        "layer2.0.downsample.0.weight": "res3.0.shortcut.weight",
        "layer2.0.downsample.1.weight": "res3.0.shortcut.norm.weight",
        "fc.weight": None,
    }


def test_unmatched_names_are_those_of_no_rule_or_of_several():
    rules = [(r"a\.(\d)", r"x.\1"), (r"a\.1", "y"), (r"b", None)]
    assert unmatched_names(["a.0", "a.1", "b", "c"], rules) == ["a.1", "c"]
    with pytest.raises(WeightsFormatError, match=r"^2 parameter\(s\) match no rule.*: a\.1, c$"):
        rename_names(["a.0", "a.1", "b", "c"], rules)


def test_an_unknown_name_is_an_error_listing_it():
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.se.fc.weight"] = torch.zeros(1)
    with pytest.raises(
        WeightsFormatError, match=r"1 parameter\(s\) match no rule.*layer1\.0\.se\.fc\.weight"
    ):
        to_backbone("torchvision", state, family="resnet")


def test_unknown_names_are_an_error_listing_them_and_no_exception_is_control_flow(monkeypatch):
    names = _reference_names("seresnet")
    # A plain torchvision table does not know timm's SE layers.
    unknown = unmatched_names(names, FAMILIES["resnet"].rules)
    assert unknown and all(".se." in n for n in unknown)
    with pytest.raises(WeightsFormatError, match=r"parameter\(s\) match no rule.*\.se\.fc1"):
        rename_names(names, FAMILIES["resnet"].rules)
    # Detection asks the tables which names they do not match; it never renames (or catches).
    monkeypatch.setattr(mappings, "rename_names", None)
    assert families_reading(names) == ("seresnet",)
    assert detect(dict.fromkeys(names, torch.zeros(1))).families == ("seresnet",)


def test_nested_families_rename_a_file_they_all_read_identically():
    """The SE and Res2Net tables extend torchvision's: on a torchvision file all three give the
    same names, so which of them the model chooses changes nothing but the metadata they share."""
    names = _reference_names("resnet")
    readers = families_reading(names)
    assert readers == ("resnet", "seresnet", "res2net")
    results = [rename_names(names, FAMILIES[f].rules) for f in readers]
    assert all(r == results[0] for r in results)
    assert len({tuple(sorted(FAMILIES[f].metadata.items())) for f in readers}) == 1


def test_the_model_chooses_among_the_families_that_read_a_file(monkeypatch):
    monkeypatch.setitem(FAMILIES, "_a", Family("timm", [(r"w(\d)", r"stem.conv\1.weight")]))
    monkeypatch.setitem(FAMILIES, "_b", Family("timm", [(r"w(\d)", r"res2.0.conv\1.weight")]))
    names = ["w1", "w2"]
    wanted = {"res2.0.conv1.weight", "res2.0.conv2.weight"}
    assert choose_family(names, ("_a", "_b"), wanted) == "_b"
    assert choose_family(names, ("_a", "_b"), set()) == "_a"  # a tie: the first
    assert choose_family(names, ("_b",), set()) == "_b"
    assert choose_family(names, (), wanted) is None


def test_caffe2_names_become_ours_with_msras_affine_norms_completed():
    state = {
        "stem.conv1.weight": torch.randn(64, 3, 7, 7),
        "stem.conv1.norm.weight": torch.rand(64),
        "stem.conv1.norm.bias": torch.rand(64),
        "res2.0.conv1.weight": torch.randn(64, 64, 1, 1),
        "res2.0.conv1.norm.weight": torch.rand(64),
        "res2.0.conv1.norm.bias": torch.rand(64),
    }
    blobs = {**to_caffe2_names(state), "fc1000_w": np.zeros((1000, 2048), np.float32)}
    ours = caffe2_to_backbone(blobs, "R-50.pkl")
    for name, tensor in state.items():
        assert torch.equal(torch.as_tensor(ours[name]), tensor), name
    assert torch.equal(ours["res2.0.conv1.norm.running_mean"], torch.zeros(64))
    assert torch.equal(ours["res2.0.conv1.norm.running_var"], torch.full((64,), 1 - 1e-5))
    assert not any("fc1000" in n for n in ours)  # the classifier is not part of the backbone


@pytest.mark.parametrize(
    "prefix, head",
    [("backbone.bottom_up.", False), ("backbone.", True), ("", False)],
    ids=["FPN", "C4", "bare"],
)
def test_detectron2_checkpoints_give_their_backbone(prefix, head):
    backbone = {"stem.conv1.weight": torch.zeros(1), "res4.0.conv1.weight": torch.ones(1)}
    state = {prefix + k: v for k, v in backbone.items()}
    state["proposal_generator.rpn_head.conv.weight"] = torch.zeros(2)
    if head:
        state["roi_heads.res5.0.conv1.weight"] = torch.full((1,), 5.0)
        backbone["res5.0.conv1.weight"] = state["roi_heads.res5.0.conv1.weight"]
    assert backbone_prefix(state) == prefix
    assert detectron2_to_backbone(state, "model_final.pth") == backbone


def test_a_detectron2_checkpoint_without_a_resnet_is_an_error():
    with pytest.raises(WeightsFormatError, match=re.escape("no name has a 'stem.' module")):
        detectron2_to_backbone({"backbone.bottom_up.layer1.weight": torch.zeros(1)}, "x.pth")


def test_to_backbone_renames_every_format_to_torch_tensors_under_our_names():
    tv = torchvision.models.resnet18(weights=None).state_dict()
    ours = to_backbone("torchvision", tv, family="resnet")
    assert torch.equal(ours["res5.1.conv2.weight"], tv["layer4.1.conv2.weight"])
    assert to_backbone("resnet_backbones", ours).keys() == ours.keys()
    numpy_state = {k: v.numpy() for k, v in ours.items()}
    assert all(isinstance(v, torch.Tensor) for v in to_backbone("detectron2", numpy_state).values())
    with pytest.raises(WeightsFormatError, match="pycls files cannot be renamed"):
        to_backbone("pycls", {"stem.conv.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="family = 'nope' is not valid; valid values: resnet, "):
        to_backbone("timm", tv, family="nope")

"""Step 6 of the weights pipeline: our names under the model's, and the strict backbone check.

The first tests are pure (names and shapes, no model); the last ones run the same check through
MODEL.WEIGHTS, where nothing may be loaded when it fails."""

import pytest
import torch
import torchvision
from detectron2.modeling import build_model

from resnet_backbones.weights.checkpoint import FamilyCheckpointer
from resnet_backbones.weights.errors import BackboneMismatchError, IncompatibleWeightsError
from resnet_backbones.weights.place import (
    backbone_names,
    backbone_of_model,
    check_backbone,
    place,
)

from .helpers import TORCHVISION_INPUT, default_cfg, r18_opts

# A tiny "model" in detectron2's names: an FPN backbone, or a C4 backbone whose res5 is the head's.
FPN_MODEL = {
    "backbone.bottom_up.stem.conv1.weight": (8, 3, 7, 7),
    "backbone.bottom_up.stem.conv1.norm.weight": (8,),
    "backbone.bottom_up.stem.conv1.norm.running_mean": (8,),
    "backbone.bottom_up.res2.0.conv1.weight": (8, 8, 3, 3),
    "backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked": (),
    "backbone.bottom_up.res3.0.conv2_offset.weight": (18, 8, 3, 3),
    "backbone.fpn_lateral2.weight": (4, 8, 1, 1),
    "roi_heads.box_predictor.cls_score.weight": (3, 4),
}
C4_MODEL = {
    "backbone.stem.conv1.weight": (8, 3, 7, 7),
    "backbone.res4.0.conv1.weight": (8, 8, 1, 1),
    "roi_heads.res5.0.conv1.weight": (16, 8, 1, 1),
    "roi_heads.box_predictor.cls_score.weight": (3, 16),
}
FPN_MODULES = {
    "", "backbone", "backbone.bottom_up", "backbone.bottom_up.stem", "backbone.bottom_up.stem.conv1",
    "backbone.bottom_up.stem.conv1.norm", "backbone.bottom_up.res2", "backbone.bottom_up.res2.0",
    "backbone.bottom_up.res2.0.conv1", "backbone.bottom_up.res2.0.conv1.norm",
    "backbone.bottom_up.res3", "backbone.bottom_up.res3.0", "backbone.bottom_up.res3.0.conv2_offset",
}  # fmt: skip


def test_place_puts_our_names_under_the_models_backbone():
    ours = {"stem.conv1.weight": 1, "res2.0.conv1.norm.num_batches_tracked": 2}
    assert place(ours, FPN_MODEL) == {
        "backbone.bottom_up.stem.conv1.weight": 1,
        "backbone.bottom_up.res2.0.conv1.norm.num_batches_tracked": 2,
    }
    c4 = {"stem.conv1.weight": 1, "res4.0.conv1.weight": 2, "res5.0.conv1.weight": 3,
          "res5.0.conv1.norm.num_batches_tracked": 4}  # fmt: skip
    # res5 goes into the C4 head; a batch counter the model lacks (FrozenBN) is left out.
    assert place(c4, C4_MODEL) == {
        "backbone.stem.conv1.weight": 1,
        "backbone.res4.0.conv1.weight": 2,
        "roi_heads.res5.0.conv1.weight": 3,
    }
    assert backbone_of_model(C4_MODEL) == {
        "stem.conv1.weight", "res4.0.conv1.weight", "res5.0.conv1.weight"
    }  # fmt: skip
    with pytest.raises(BackboneMismatchError, match=r"no ResNet-family backbone"):
        place(ours, {"backbone.layer1.weight": (1,)})


def test_the_backbone_a_file_must_provide():
    names = backbone_names(FPN_MODEL, optional={"backbone.bottom_up.stem.conv1.norm.running_mean"})
    # Not: optional FrozenBN statistics, batch counters, deformable offsets, the FPN, the heads.
    assert sorted(names) == [
        "backbone.bottom_up.res2.0.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.weight",
        "backbone.bottom_up.stem.conv1.weight",
    ]
    assert backbone_names({"backbone.layer1.weight": (1,)}) == []  # not our backbone


def test_a_file_that_fits_passes_and_one_that_does_not_lists_every_problem():
    fits = {n: s for n, s in FPN_MODEL.items() if "bottom_up" in n}
    report = check_backbone(fits, FPN_MODEL, modules=FPN_MODULES)
    assert report.fits and not report.extra
    report.raise_if_it_does_not_fit("ok.pth", "torchvision")  # nothing raised

    bad = {
        "backbone.bottom_up.stem.conv1.weight": (8, 3, 3, 3),  # misshapen
        # res2.0.conv1.weight missing; the stem conv's bias: a parameter its module lacks.
        "backbone.bottom_up.stem.conv1.bias": (8,),
        **{f"backbone.bottom_up.res2.{b}.conv1.weight": (8, 8, 3, 3) for b in (1, 2, 10)},
        "backbone.bottom_up.res2.0.se.fc1.weight": (2, 8, 1, 1),  # another network's SE
    }
    report = check_backbone(bad, FPN_MODEL, modules=FPN_MODULES)
    assert not report.fits
    assert report.missing == [
        "backbone.bottom_up.res2.0.conv1.weight",
        "backbone.bottom_up.stem.conv1.norm.running_mean",
        "backbone.bottom_up.stem.conv1.norm.weight",
    ]
    assert report.misshapen == [
        "backbone.bottom_up.stem.conv1.weight (8, 3, 3, 3) in the file, (8, 3, 7, 7) in the model"
    ]
    assert report.extra == ["backbone.bottom_up.stem.conv1.bias"]
    assert report.foreign == [  # in natural order: res2.2 before res2.10
        "backbone.bottom_up.res2.0.se.fc1.weight",
        "backbone.bottom_up.res2.1.conv1.weight",
        "backbone.bottom_up.res2.2.conv1.weight",
        "backbone.bottom_up.res2.10.conv1.weight",
    ]
    with pytest.raises(BackboneMismatchError) as info:
        report.raise_if_it_does_not_fit("bad.pth", "torchvision")
    message = str(info.value)
    assert message.startswith(
        "bad.pth (torchvision format) does not fit the model's backbone; nothing was loaded. "
        "Backbone parameters: 3 missing: backbone.bottom_up.res2.0.conv1.weight, "
    )
    assert "; 1 of the wrong shape: backbone.bottom_up.stem.conv1.weight (8, 3, 3, 3)" in message
    # Foreign tensors are grouped by the outermost module the model lacks.
    assert (
        "4 in the file belong to modules the model does not have (a deeper or different "
        "network): backbone.bottom_up.res2.0.se.* (1), backbone.bottom_up.res2.1.* (1), "
        "backbone.bottom_up.res2.2.* (1), backbone.bottom_up.res2.10.* (1)."
    ) in message
    assert isinstance(info.value, IncompatibleWeightsError) and isinstance(info.value, ValueError)


def test_long_lists_show_the_first_twenty():
    model = {f"backbone.stem.conv{i}.weight": (1,) for i in range(25)}
    report = check_backbone({}, model, modules={"", "backbone", "backbone.stem"})
    assert len(report.missing) == 25
    (problem,) = report.problems()
    assert problem.startswith("25 missing: ") and problem.endswith(" ...")
    assert problem.count("backbone.stem.conv") == 20


# --------------------------------------------------------------------------------------------
# Through MODEL.WEIGHTS: nothing is loaded when the check fails
# --------------------------------------------------------------------------------------------
def test_missing_or_misshapen_backbone_parameters_are_an_error_and_load_nothing(tmp_path):
    torch.manual_seed(0)
    state = torchvision.models.resnet18(weights=None).state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model(default_cfg("Base-RCNN-FPN.yaml", r18_opts())).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(BackboneMismatchError) as info:
        FamilyCheckpointer(model).load(str(path))
    message = str(info.value)
    assert str(path) in message and "nothing was loaded" in message
    assert "backbone.bottom_up.res5.0.conv1.weight" in message and "missing" in message
    assert (
        "backbone.bottom_up.res2.0.conv1.weight (64, 64, 1, 1) in the file, (64, 64, 3, 3)"
        in message
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    "source, opts, networks",
    [
        # A deeper network: res4.6 .. res4.22.
        ("resnet101", ["MODEL.RESNETS.DEPTH", "50"],
         "the file holds R-101 (torchvision's resnet101), the config builds R-50"),
        # SE layers the plain model lacks: another family.
        ("seresnet50", ["MODEL.RESNETS.DEPTH", "50"],
         "the file holds SE-R-50 (timm's seresnet50), the config builds R-50"),
    ],
)  # fmt: skip
def test_weights_of_a_bigger_network_are_an_error_not_silently_dropped(
    tmp_path, source, opts, networks
):
    if source.startswith("se"):
        timm = pytest.importorskip("timm")
        state = timm.create_model(source, pretrained=False).state_dict()
    else:
        state = torchvision.models.resnet101(weights=None).state_dict()
    path = tmp_path / f"{source}.pth"
    torch.save(state, path)
    cfg = default_cfg(
        "Base-RCNN-FPN.yaml", opts + TORCHVISION_INPUT + ["MODEL.RESNETS.STRIDE_IN_1X1", "False"]
    )
    model = build_model(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError, match="modules the model does not have") as info:
        FamilyCheckpointer(model, cfg=cfg).load(str(path))
    # Grouped by the module the model lacks: a block of the deeper network, the SE layers.
    expected = "res4.6.* (15)" if source == "resnet101" else "backbone.bottom_up.res2.0.se.* (4)"
    assert expected in str(info.value) and "nothing was loaded" in str(info.value)
    # The message says what the file is and what the config builds.
    assert f"does not fit the model's backbone: {networks}; nothing was loaded" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_shallower_file_says_which_network_it_is(tmp_path):
    """torchvision's ResNet-18 into an R-34 config: not a list of missing names alone."""
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    cfg = default_cfg(
        "Base-RCNN-FPN.yaml", r18_opts() + TORCHVISION_INPUT + ["MODEL.RESNETS.DEPTH", "34"]
    )
    with pytest.raises(BackboneMismatchError) as info:
        FamilyCheckpointer(build_model(cfg), cfg=cfg).load(str(path))
    message = str(info.value)
    assert message.startswith(
        f"{path} (torchvision format) does not fit the model's backbone: the file holds R-18 "
        "(torchvision's resnet18), the config builds R-34; nothing was loaded. Backbone "
        "parameters: "
    )
    assert " missing: backbone.bottom_up.res2.2." in message  # R-34 has a third res2 block

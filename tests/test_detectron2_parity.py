"""With default keys, our backbone and C4 head are detectron2's: same parameter names and shapes,
the same features and the same detections once the weights are copied across."""

import pickle

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import ResNet, build_model

from resnet_backbones import ResNetFamily, add_resnet_backbones_config

from .helpers import detection_image, randomize_norm_statistics, to_caffe2_names

# Our registered names -> detectron2's built-in ones, per detector form.
BUILTIN = {
    "C4": {"MODEL.BACKBONE.NAME": "build_resnet_backbone", "MODEL.ROI_HEADS.NAME": "Res5ROIHeads"},
    "DilatedC5": {"MODEL.BACKBONE.NAME": "build_resnet_backbone"},
    "FPN": {"MODEL.BACKBONE.NAME": "build_resnet_fpn_backbone"},
}


def _config(cfg, form, depth):
    cfg.merge_from_file(f"configs/Base-RCNN-{form}.yaml")
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.INPUT.MIN_SIZE_TEST = 224
    cfg.INPUT.MAX_SIZE_TEST = 320
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 200
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # random weights: keep every detection
    return cfg


def _fresh_cfg():
    c = get_cfg()
    add_resnet_backbones_config(c)
    c.MODEL.DEVICE = "cpu"
    return c


@pytest.mark.parametrize("depth", [50, 101])
@pytest.mark.parametrize("form", ["C4", "DilatedC5", "FPN"])
def test_same_parameters_features_and_detections_as_detectron2(cfg, form, depth):
    ours_cfg = _config(cfg, form, depth)
    builtin_cfg = ours_cfg.clone()
    builtin_cfg.merge_from_list([x for kv in BUILTIN[form].items() for x in kv])

    reference = build_model(builtin_cfg).eval()
    randomize_norm_statistics(reference)
    ours = build_model(ours_cfg).eval()
    assert isinstance(getattr(ours.backbone, "bottom_up", ours.backbone), ResNetFamily)
    assert isinstance(getattr(reference.backbone, "bottom_up", reference.backbone), ResNet)
    if form == "C4":
        assert type(ours.roi_heads).__name__ == "Res5FamilyROIHeads"

    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert {k: v.shape for k, v in our_state.items()} == {k: v.shape for k, v in ref_state.items()}
    ours.load_state_dict(ref_state, strict=True)

    inputs = [detection_image()]
    with torch.no_grad():
        images = reference.preprocess_image(inputs)
        ref_features = reference.backbone(images.tensor)
        our_features = ours.backbone(images.tensor)
        ref_out = reference(inputs)[0]["instances"]
        our_out = ours(inputs)[0]["instances"]

    assert list(our_features) == list(ref_features)
    for name in ref_features:
        assert torch.isfinite(ref_features[name]).all()
        assert torch.equal(our_features[name], ref_features[name]), name
    assert len(ref_out) > 0
    assert torch.equal(our_out.pred_boxes.tensor, ref_out.pred_boxes.tensor)
    assert torch.equal(our_out.scores, ref_out.scores)
    assert torch.equal(our_out.pred_classes, ref_out.pred_classes)


def test_msra_pkl_and_detectron2_pkl_load_unchanged(cfg, tmp_path):
    """An MSRA ImageNet .pkl (Caffe2 names) and a detectron2 model_final .pkl (numpy arrays under
    "model") load through detectron2's own checkpointer into our default R-50 models."""
    _config(cfg, "FPN", 50)
    ours = build_model(cfg).eval()
    source = build_model(cfg).eval()
    randomize_norm_statistics(source)
    bottom_up = source.backbone.bottom_up.state_dict()

    msra = tmp_path / "R-50.pkl"
    with open(msra, "wb") as f:
        pickle.dump(to_caffe2_names(bottom_up), f)
    DetectionCheckpointer(ours).load(str(msra))
    loaded = ours.backbone.bottom_up.state_dict()
    for name, tensor in bottom_up.items():
        if not name.endswith(("running_mean", "running_var")):
            assert torch.equal(loaded[name], tensor), name

    c4 = _config(_fresh_cfg(), "C4", 50)
    for form_cfg in (cfg, c4):
        source = build_model(form_cfg).eval()
        randomize_norm_statistics(source)
        final = tmp_path / "model_final_test.pkl"
        with open(final, "wb") as f:
            state = {k: v.numpy() for k, v in source.state_dict().items()}
            pickle.dump({"model": state, "__author__": "test"}, f)
        target = build_model(form_cfg).eval()
        DetectionCheckpointer(target).load(str(final))
        for name, tensor in source.state_dict().items():
            assert torch.equal(target.state_dict()[name], tensor), name
        if form_cfg is c4:
            assert any(k.startswith("roi_heads.res5.0.conv1") for k in state)


@pytest.mark.parametrize(
    "ours, builtin, levels",
    [
        (
            "build_resnet_family_fpn_backbone",
            "build_resnet_fpn_backbone",
            ["p2", "p3", "p4", "p5", "p6"],
        ),
        (
            "build_resnet_family_retinanet_fpn_backbone",
            "build_retinanet_resnet_fpn_backbone",
            ["p3", "p4", "p5", "p6", "p7"],
        ),
    ],
)
def test_fpn_backbones_equal_detectron2(cfg, ours, builtin, levels):
    from detectron2.layers import ShapeSpec
    from detectron2.modeling import BACKBONE_REGISTRY

    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    if "retinanet" in ours:
        cfg.MODEL.RESNETS.OUT_FEATURES = ["res3", "res4", "res5"]
        cfg.MODEL.FPN.IN_FEATURES = ["res3", "res4", "res5"]
    else:
        cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    reference = BACKBONE_REGISTRY.get(builtin)(cfg, ShapeSpec(channels=3)).eval()
    randomize_norm_statistics(reference)
    model = BACKBONE_REGISTRY.get(ours)(cfg, ShapeSpec(channels=3)).eval()
    model.load_state_dict(reference.state_dict(), strict=True)
    assert model.output_shape() == reference.output_shape()
    assert list(model.output_shape()) == levels
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        expected, actual = reference(x), model(x)
    for name in levels:
        assert torch.equal(actual[name], expected[name]), name

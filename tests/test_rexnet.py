"""ReXNet: numerical parity with timm's rexnet_*, shapes, freezing, config errors and builders."""

import logging

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone
from torch import nn

from resnet_backbones.modeling import ReXNet
from resnet_backbones.modeling.rexnet import rexnet_blocks
from resnet_backbones.weights.mappings import to_backbone

from .helpers import randomize_norm_statistics

timm = pytest.importorskip("timm")

FEATURES = ["stem", "res2", "res3", "res4", "res5"]

# timm variant -> our arguments.
TIMM_VARIANTS = {
    "rexnet_100": dict(),
    "rexnet_150": dict(width_mult=1.5),
    "rexnetr_100": dict(channel_divisor=8),
}


def _relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual - expected).abs().max() / expected.abs().max()).item()


def _timm_and_ours(name):
    reference = timm.create_model(name, pretrained=False).eval()
    randomize_norm_statistics(reference)
    ours = ReXNet(out_features=FEATURES, **TIMM_VARIANTS[name]).eval()
    ours.load_state_dict(to_backbone("timm", reference.state_dict(), family="rexnet"), strict=True)
    return reference, ours


@pytest.mark.parametrize("name", sorted(TIMM_VARIANTS))
def test_equal_to_timm(name):
    reference, ours = _timm_and_ours(name)
    x = torch.randn(2, 3, 97, 110)  # odd sizes: strided convs must round as timm's do
    with torch.no_grad():
        # timm's feature_info: the outputs of features.0 (stride 2), .2, .4, .10 and .15; its
        # final output is after the last 1x1 conv (features.16), which is our res5.
        last, intermediates = reference.forward_intermediates(x, indices=[0, 1, 2, 3])
        actual = ours(x)
    for feature, expected in zip(FEATURES, [*intermediates, last]):
        got = actual[feature]
        assert got.shape == expected.shape, feature
        rel = _relative_error(got, expected)
        assert rel <= 1e-5, f"{feature}: relative error {rel:.2e}"


def test_timm_feature_info_matches_our_shapes():
    reference = timm.create_model("rexnet_100", pretrained=False)
    ours = ReXNet(out_features=FEATURES).output_shape()
    info = reference.feature_info
    assert [i["reduction"] for i in info] == [ours[f].stride for f in FEATURES]
    assert [i["num_chs"] for i in info[:4]] == [ours[f].channels for f in FEATURES[:4]]
    assert ours["res5"].channels == reference.num_features == 1280  # after the final 1x1 conv


def test_frozen_bn_gives_the_same_outputs():
    reference, ours = _timm_and_ours("rexnet_100")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = ours(x)
        ours.freeze(5)
        after = ours(x)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in ours.modules())
    for feature in ours.output_shape():
        assert torch.allclose(before[feature], after[feature], rtol=1e-5, atol=1e-6), feature


@pytest.mark.parametrize("depth_mult", [0.5, 1.0, 1.5])
@pytest.mark.parametrize("width_mult", [0.75, 1.0, 2.0])
def test_block_widths_equal_timm(width_mult, depth_mult):
    """The channel schedule and its rounding, also where no mapping table exists (depth_mult)."""
    reference = timm.models.rexnet.RexNet(width_mult=width_mult, depth_mult=depth_mult)
    expected = [
        (b.in_channels, b.out_channels, b.conv_dw.out_channels, b.conv_dw.conv.stride[0])
        + (b.se.fc1.out_channels if b.se is not None else 0,)
        for b in reference.features[:-1]
    ]
    blocks = rexnet_blocks(width_mult, depth_mult)
    actual = [
        (b.in_channels, b.out_channels, b.hidden_channels, b.stride, b.se_channels) for b in blocks
    ]
    assert actual == expected
    ours = ReXNet(width_mult=width_mult, depth_mult=depth_mult, out_features=FEATURES)
    backbone_params = [p for n, p in reference.named_parameters() if not n.startswith("head")]
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in backbone_params)


def test_parameter_count_is_pinned():
    # rexnet_100 without its classifier (timm: 4,796,873 with the 1280x1000 head.fc).
    assert sum(p.numel() for p in ReXNet(out_features=FEATURES).parameters()) == 3_515_873


@pytest.mark.parametrize("out_features", [FEATURES, ["res3"], ["stem", "res4"]])
def test_output_shape_equals_the_outputs(out_features):
    backbone = ReXNet(out_features=out_features).eval()
    x = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        outputs = backbone(x)
    shapes = backbone.output_shape()
    assert list(outputs) == list(shapes) == out_features
    for name, out in outputs.items():
        assert out.shape[1] == shapes[name].channels, name
        stride = shapes[name].stride
        assert x.shape[2] // out.shape[2] == x.shape[3] // out.shape[3] == stride, name


def test_only_the_needed_stages_are_built():
    backbone = ReXNet(out_features=["res3"])
    # As detectron2's ResNet: stage_names are the stages after the stem.
    assert backbone.stage_names == ["res2", "res3"]
    assert [name for name, _ in backbone.named_children()] == ["stem", "res2", "res3"]
    assert not hasattr(backbone, "res4")


@pytest.mark.parametrize("freeze_at", [0, 1, 3, 5])
def test_freeze_at(freeze_at):
    """Stem is frozen from 1, res{k} from k; frozen = no grad, and BN becomes FrozenBN."""
    backbone = ReXNet(out_features=FEATURES, freeze_at=freeze_at, norm="BN")
    parts = [("stem", backbone.stem), *zip(backbone.stage_names, backbone.stages)]
    for index, (name, stage) in enumerate(parts, start=1):
        frozen = freeze_at >= index
        assert all(p.requires_grad != frozen for p in stage.parameters()), name
        norms = [m for m in stage.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms and all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms), name
    # The SE's norm is frozen with its block.
    if freeze_at >= 3:
        assert isinstance(backbone.res3[0].se.fc1.norm, FrozenBatchNorm2d)


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "WIDTH_MULT",
            0.0,
            "MODEL.REXNET.WIDTH_MULT = 0.0 is not valid; it must be a positive number",
        ),
        (
            "OUT_FEATURES",
            ["res2", "res6"],
            "MODEL.REXNET.OUT_FEATURES entry = 'res6' is not valid; valid values: 'stem', 'res2'",
        ),
        ("OUT_FEATURES", [], "MODEL.REXNET.OUT_FEATURES is empty; valid entries: 'stem'"),
        ("NORM", "GN", "MODEL.REXNET.NORM = 'GN' is not valid; valid values: 'FrozenBN', 'BN'"),
    ],
)
def test_invalid_values_are_a_clear_error(cfg, key, value, message):
    cfg.MODEL.BACKBONE.NAME = "build_rexnet_backbone"
    setattr(cfg.MODEL.REXNET, key, value)
    with pytest.raises(ValueError) as e:
        build_backbone(cfg)
    assert message in str(e.value)


def test_invalid_freeze_at_is_a_clear_error(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_rexnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 6
    with pytest.raises(ValueError, match="MODEL.BACKBONE.FREEZE_AT = 6 is not valid"):
        build_backbone(cfg)


def test_registered_backbone_builds_from_config(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_rexnet_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.REXNET.WIDTH_MULT = 1.5
    cfg.MODEL.REXNET.OUT_FEATURES = ["res4", "res5"]
    cfg.MODEL.REXNET.NORM = "FrozenBN"
    backbone = build_backbone(cfg)
    assert isinstance(backbone, ReXNet)
    assert backbone.output_shape() == {
        "res4": ShapeSpec(channels=193, stride=16),
        "res5": ShapeSpec(channels=1920, stride=32),
    }
    assert not any(p.requires_grad for p in backbone.res2.parameters())
    assert all(p.requires_grad for p in backbone.res3.parameters())


def test_registered_fpn_backbone_gives_p2_to_p6(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_rexnet_fpn_backbone"
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    fpn = build_backbone(cfg).eval()
    x = torch.randn(1, 3, 128, 192)  # divisible by P6's stride, 64
    with torch.no_grad():
        outputs = fpn(x)
    assert list(outputs) == ["p2", "p3", "p4", "p5", "p6"]
    for name, shape in fpn.output_shape().items():
        assert outputs[name].shape[1] == shape.channels == 256, name
        assert x.shape[2] // outputs[name].shape[2] == shape.stride, name
        assert x.shape[3] // outputs[name].shape[3] == shape.stride, name


def test_syncbn_falls_back_to_bn_with_a_warning(cfg, caplog):
    cfg.MODEL.BACKBONE.NAME = "build_rexnet_backbone"
    cfg.MODEL.REXNET.NORM = "SyncBN"
    with caplog.at_level(logging.WARNING):
        backbone = build_backbone(cfg)
    assert "MODEL.REXNET.NORM = 'SyncBN'" in caplog.text and "single process" in caplog.text
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in backbone.modules())


def test_mapping_table_renames_explicitly():
    state = {
        "stem.bn.running_var": torch.ones(1),
        "features.0.conv_dw.conv.weight": torch.ones(1),
        "features.10.se.bn.bias": torch.ones(1),
        "features.11.conv_exp.conv.weight": torch.ones(1),
        "features.16.bn.weight": torch.ones(1),
        "head.fc.weight": torch.ones(1),
    }
    assert set(to_backbone("timm", state, family="rexnet")) == {
        "stem.0.conv.norm.running_var",
        "stem.1.conv_dw.weight",
        "res4.5.se.fc1.norm.bias",
        "res5.0.conv_expand.weight",
        "res5.5.conv.norm.weight",
    }

"""The generic ResNet-family backbone: shapes, strides, options, freezing, norms and errors."""

import logging
import math

import pytest
import torch
import torchvision
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import build_backbone, build_model
from torch import nn

from resnet_backbones.modeling import DEPTHS, ResNetFamily, resnet_spec
from resnet_backbones.modeling.blocks import BasicBlock
from resnet_backbones.modeling.ops import AvgDownConv2d, ZeroPadShortcut

ALL_FEATURES = ["stem", "res2", "res3", "res4", "res5"]


def _backbone(cfg, **resnets):
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    cfg.MODEL.RESNETS.OUT_FEATURES = ALL_FEATURES
    if DEPTHS[resnets.get("DEPTH", 50)].block == "basic":
        cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    for key, value in resnets.items():
        setattr(cfg.MODEL.RESNETS, key, value)
    return build_backbone(cfg)


def _check_shapes(backbone, size=(70, 97)):
    """Every output has the channels of output_shape() and the size its stride implies."""
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outputs = backbone(x)
    shapes = backbone.output_shape()
    assert list(outputs) == list(shapes)
    for name, out in outputs.items():
        spec = shapes[name]
        expected = tuple(math.ceil(s / spec.stride) for s in size)
        assert out.shape == (2, spec.channels, *expected), name
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("depth", sorted(DEPTHS))
@pytest.mark.parametrize("shortcut", ["A", "B", "C"])
def test_shapes_for_every_depth_and_shortcut(cfg, depth, shortcut):
    backbone = _backbone(cfg, DEPTH=depth, SHORTCUT=shortcut)
    basic = DEPTHS[depth].block == "basic"
    widths = [64, 128, 256, 512] if basic else [256, 512, 1024, 2048]
    assert backbone.output_shape() == {
        "stem": ShapeSpec(channels=64, stride=4),
        "res2": ShapeSpec(channels=widths[0], stride=4),
        "res3": ShapeSpec(channels=widths[1], stride=8),
        "res4": ShapeSpec(channels=widths[2], stride=16),
        "res5": ShapeSpec(channels=widths[3], stride=32),
    }
    assert [len(s) for s in backbone.stages] == list(DEPTHS[depth].blocks_per_stage)
    if depth <= 50:  # the deeper ones differ only in block counts
        _check_shapes(backbone)


@pytest.mark.parametrize("depth", [18, 50])
@pytest.mark.parametrize("stem", ["basic", "deep"])
@pytest.mark.parametrize("avg_down", [False, True])
@pytest.mark.parametrize("dilation", [1, 2])
def test_shapes_for_stem_avg_down_and_dilation(cfg, depth, stem, avg_down, dilation):
    backbone = _backbone(cfg, DEPTH=depth, STEM=stem, AVG_DOWN=avg_down, RES5_DILATION=dilation)
    assert backbone.output_shape()["res5"].stride == 32 // dilation
    _check_shapes(backbone)


def test_shortcut_options_have_the_papers_structure(cfg):
    """A: no projection at all; B: projection only where the shape changes; C: on every block."""
    counts = {}
    for option in "ABC":
        backbone = _backbone(cfg.clone(), DEPTH=34, SHORTCUT=option)
        blocks = [b for s in backbone.stages for b in s]
        projections = [b for b in blocks if isinstance(b.shortcut, nn.Conv2d)]
        zero_pads = [b for b in blocks if isinstance(b.shortcut, ZeroPadShortcut)]
        counts[option] = (len(projections), len(zero_pads))
    total = sum(DEPTHS[34].blocks_per_stage)
    assert counts == {"A": (0, 3), "B": (3, 0), "C": (total, 0)}


def test_option_a_pads_zeros_and_subsamples():
    shortcut = ZeroPadShortcut(2, 5, stride=2)
    x = torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(1, 2, 5, 5)
    y = shortcut(x)
    assert y.shape == (1, 5, 3, 3)
    assert torch.equal(y[:, :2], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 2:]) == 0


def test_avg_down_projection_pools_then_projects(cfg):
    backbone = _backbone(cfg, DEPTH=50, AVG_DOWN=True, STEM="deep")
    shortcut = backbone.res3[0].shortcut
    assert isinstance(shortcut, AvgDownConv2d) and shortcut.stride == (1, 1)
    x = torch.randn(1, 256, 9, 9)
    expected = shortcut.norm(
        nn.functional.conv2d(
            nn.functional.avg_pool2d(x, 2, 2, ceil_mode=True, count_include_pad=False),
            shortcut.weight,
        )
    )
    assert torch.allclose(shortcut(x), expected)
    # res2 does not change resolution: a plain 1x1 projection.
    assert type(backbone.res2[0].shortcut).__name__ == "Conv2d"
    assert [n for n, _ in backbone.stem.named_children()] == ["conv1", "conv2", "conv3"]
    assert backbone.stem.conv1.weight.shape == (32, 3, 3, 3)


def test_stride_in_1x1_moves_the_stride(cfg):
    for in_1x1, expected in [(True, ((2, 2), (1, 1))), (False, ((1, 1), (2, 2)))]:
        backbone = _backbone(cfg.clone(), DEPTH=50, STRIDE_IN_1X1=in_1x1)
        block = backbone.res3[0]
        assert (block.conv1.stride, block.conv2.stride) == expected


def test_groups_and_width(cfg):
    backbone = _backbone(cfg, DEPTH=101, NUM_GROUPS=32, WIDTH_PER_GROUP=8)
    conv2 = backbone.res2[0].conv2
    assert conv2.groups == 32 and conv2.weight.shape == (256, 8, 3, 3)
    assert backbone.res5[0].conv2.weight.shape == (2048, 64, 3, 3)


def test_zero_init_residual(cfg):
    backbone = _backbone(cfg, DEPTH=50, ZERO_INIT_RESIDUAL=True, NORM="BN")
    for stage in backbone.stages:
        for block in stage:
            assert torch.count_nonzero(block.conv3.norm.weight) == 0
            assert torch.count_nonzero(block.conv1.norm.weight) > 0


@pytest.mark.parametrize("freeze_at", range(6))
@pytest.mark.parametrize("norm", ["BN", "GN"])
def test_freeze_at(cfg, freeze_at, norm):
    """Stem is frozen from 1, res{k} from k; frozen = no grad, and BN becomes FrozenBN."""
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    backbone = _backbone(cfg, DEPTH=18, NORM=norm)
    parts = {"stem": backbone.stem, **dict(zip(backbone.stage_names, backbone.stages))}
    for index, (name, module) in enumerate(parts.items(), start=1):
        frozen = freeze_at >= index
        assert all(p.requires_grad != frozen for p in module.parameters()), name
        norms = [
            m
            for m in module.modules()
            if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d, nn.GroupNorm))
        ]
        assert norms
        for m in norms:
            if norm == "BN":
                assert isinstance(m, FrozenBatchNorm2d) == frozen, name
            else:
                assert isinstance(m, nn.GroupNorm), name


def test_syncbn_falls_back_to_bn_with_a_warning(cfg, caplog):
    with caplog.at_level(logging.WARNING):
        backbone = _backbone(cfg, DEPTH=18, NORM="SyncBN")
    assert "SyncBN" in caplog.text and "single process" in caplog.text
    norms = [m for m in backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and not any(isinstance(m, nn.SyncBatchNorm) for m in norms)


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("resnet18", dict(DEPTH=18)),
        ("resnet34", dict(DEPTH=34)),
        ("resnet50", dict(DEPTH=50)),
        ("resnet101", dict(DEPTH=101)),
        ("resnet152", dict(DEPTH=152)),
        ("resnext101_32x8d", dict(DEPTH=101, NUM_GROUPS=32, WIDTH_PER_GROUP=8)),
        ("wide_resnet50_2", dict(DEPTH=50, WIDTH_PER_GROUP=128)),
    ],
)
def test_parameter_count_equals_torchvision(cfg, name, kwargs):
    reference = getattr(torchvision.models, name)(weights=None)
    expected = sum(p.numel() for n, p in reference.named_parameters() if not n.startswith("fc."))
    cfg.MODEL.BACKBONE.FREEZE_AT = 0  # frozen BNs hold buffers, not parameters
    ours = _backbone(cfg, NORM="BN", STRIDE_IN_1X1=False, **kwargs)
    assert sum(p.numel() for p in ours.parameters()) == expected


def test_res5_head_uses_the_backbones_block_type(cfg):
    cfg.merge_from_file("configs/Base-RCNN-C4.yaml")
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.SHORTCUT = "A"
    model = build_model(cfg)
    res5 = model.roi_heads.res5
    assert len(res5) == 2 and all(isinstance(b, BasicBlock) for b in res5)
    assert isinstance(res5[0].shortcut, ZeroPadShortcut) and res5[0].stride == 2
    assert model.roi_heads.box_predictor.cls_score.in_features == 512


def test_config_keys_are_added_once(cfg):
    cfg.MODEL.RESNETS.SHORTCUT = "A"
    from resnet_backbones import add_resnet_backbones_config

    add_resnet_backbones_config(cfg)
    assert cfg.MODEL.RESNETS.SHORTCUT == "A"
    assert (cfg.MODEL.RESNETS.STEM, cfg.MODEL.RESNETS.AVG_DOWN) == ("basic", False)


@pytest.mark.parametrize(
    "key, value, message",
    [
        (
            "MODEL.RESNETS.DEPTH",
            77,
            "MODEL.RESNETS.DEPTH = 77 is not valid; valid values: 18, 34, 50, 101, 152, 200",
        ),
        (
            "MODEL.RESNETS.SHORTCUT",
            "X",
            "MODEL.RESNETS.SHORTCUT = 'X' is not valid; valid values: 'A', 'B', 'C'",
        ),
        (
            "MODEL.BACKBONE.FREEZE_AT",
            9,
            "MODEL.BACKBONE.FREEZE_AT = 9 is not valid; valid values: 0, 1, 2, 3, 4, 5",
        ),
        (
            "MODEL.RESNETS.STEM",
            "tiny",
            "MODEL.RESNETS.STEM = 'tiny' is not valid; valid values: 'basic', 'deep'",
        ),
        (
            "MODEL.RESNETS.NORM",
            "LN",
            "MODEL.RESNETS.NORM = 'LN' is not valid; valid values: 'FrozenBN', 'BN'",
        ),
        (
            "MODEL.RESNETS.RES5_DILATION",
            4,
            "MODEL.RESNETS.RES5_DILATION = 4 is not valid; valid values: 1, 2",
        ),
        (
            "MODEL.RESNETS.OUT_FEATURES",
            ["res6"],
            "'res6' is not valid; valid values: 'stem', 'res2'",
        ),
        ("MODEL.RESNETS.NUM_GROUPS", 0, "MODEL.RESNETS.NUM_GROUPS = 0 is not valid"),
    ],
)
@pytest.mark.parametrize("form", ["Base-RCNN-FPN", "Base-RCNN-C4"])
def test_invalid_values_fail_at_build_naming_the_valid_ones(cfg, key, value, message, form):
    cfg.merge_from_file(f"configs/{form}.yaml")
    cfg.merge_from_list([key, value])
    with pytest.raises(ValueError) as e:
        build_model(cfg)
    assert message in str(e.value)


def test_basic_blocks_need_64_res2_channels(cfg):
    cfg.MODEL.RESNETS.DEPTH = 18  # RES2_OUT_CHANNELS stays detectron2's default, 256
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    with pytest.raises(
        ValueError, match="RES2_OUT_CHANNELS = 256 is not valid for DEPTH 18.*set it to 64"
    ):
        build_backbone(cfg)


def test_spec_without_config():
    spec = resnet_spec(50, shortcut="C", norm="BN")
    backbone = ResNetFamily(spec, out_features=["res4"])
    assert backbone.stage_names == ["res2", "res3", "res4"]  # res5 is not built
    assert backbone.output_shape() == {"res4": ShapeSpec(channels=1024, stride=16)}

"""What ResNetFamily and ReXNet share: the staged backbone (freezing, shapes, building only what is
needed, the input check) and the shared ops (make_divisible, squeeze-and-excitation, zero-padding).
"""

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d, ShapeSpec
from torch import nn

from resnet_backbones.modeling import ResNetFamily, ReXNet, resnet_spec
from resnet_backbones.modeling.base import FEATURE_NAMES, FREEZE_AT_VALUES, StagedBackbone
from resnet_backbones.modeling.ops import (
    SqueezeExcite,
    ZeroPadShortcut,
    make_divisible,
    zero_pad_channels,
)

from .helpers import randomize_norm_statistics


def _resnet18(**kwargs):
    spec = resnet_spec(18, res2_out_channels=64, norm="BN")
    return ResNetFamily(spec, **kwargs)


def _rexnet(**kwargs):
    return ReXNet(norm="BN", **kwargs)


BACKBONES = {"ResNetFamily": _resnet18, "ReXNet": _rexnet}
# (channels, stride) of every feature: ResNet-18 and ReXNet-1.0x (timm's feature_info).
SHAPES = {
    "ResNetFamily": [(64, 4), (64, 4), (128, 8), (256, 16), (512, 32)],
    "ReXNet": [(16, 2), (38, 4), (61, 8), (128, 16), (1280, 32)],
}


def _chain(backbone):
    """(name, module) of every stage, the stem first."""
    return [("stem", backbone.stem), *zip(backbone.stage_names, backbone.stages)]


@pytest.mark.parametrize("freeze_at", FREEZE_AT_VALUES)
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_freeze_at_means_the_same_for_both_backbones(name, freeze_at):
    """Stage i (stem 1, res2 2, ...) is frozen when freeze_at >= i: its parameters stop
    requiring grad and its BNs become FrozenBN; the other stages are untouched."""
    backbone = BACKBONES[name](out_features=FEATURE_NAMES, freeze_at=freeze_at)
    chain = _chain(backbone)
    assert [n for n, _ in chain] == list(FEATURE_NAMES)
    for index, (stage_name, stage) in enumerate(chain, start=1):
        frozen = freeze_at >= index
        params = list(stage.parameters())
        assert params and all(p.requires_grad != frozen for p in params), stage_name
        norms = [m for m in stage.modules() if isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d))]
        assert norms, stage_name
        assert all(isinstance(m, FrozenBatchNorm2d) == frozen for m in norms), stage_name


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_freeze_later_equals_freeze_at_construction(name):
    built = BACKBONES[name](out_features=FEATURE_NAMES, freeze_at=3)
    later = BACKBONES[name](out_features=FEATURE_NAMES).freeze(3)

    def state(model):
        return [(n, p.requires_grad) for n, p in model.named_parameters()], [
            (n, type(m).__name__) for n, m in model.named_modules()
        ]

    assert state(built) == state(later)


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_frozen_bn_computes_what_bn_computes_in_eval(name):
    backbone = BACKBONES[name](out_features=FEATURE_NAMES).eval()
    randomize_norm_statistics(backbone)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = backbone(x)
        backbone.freeze(len(FEATURE_NAMES))
        actual = backbone(x)
    for feature in FEATURE_NAMES:
        assert torch.allclose(actual[feature], expected[feature], rtol=1e-4, atol=1e-5), feature


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_output_shape_describes_the_outputs(name):
    backbone = BACKBONES[name](out_features=FEATURE_NAMES).eval()
    expected = {
        f: ShapeSpec(channels=c, stride=s) for f, (c, s) in zip(FEATURE_NAMES, SHAPES[name])
    }
    assert backbone.output_shape() == expected
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        outputs = backbone(x)
    assert list(outputs) == list(FEATURE_NAMES)
    for feature, out in outputs.items():
        channels, stride = SHAPES[name][FEATURE_NAMES.index(feature)]
        assert tuple(out.shape) == (1, channels, 64 // stride, 96 // stride), feature


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_only_the_stages_up_to_the_deepest_feature_are_built(name):
    backbone = BACKBONES[name](out_features=["res3", "stem"])
    assert [n for n, _ in backbone.named_children()] == ["stem", "res2", "res3"]
    assert backbone.stage_names == ["res2", "res3"]
    assert list(backbone.output_shape()) == ["res3", "stem"]
    assert not any(n.startswith(("res4", "res5")) for n in backbone.state_dict())


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_inputs_must_be_nchw(name):
    backbone = BACKBONES[name]()
    with pytest.raises(ValueError) as e:
        backbone(torch.zeros(3, 32, 32))
    assert str(e.value) == f"{name} takes (N, C, H, W) inputs; got shape (3, 32, 32)"


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_python_errors_name_the_arguments(name):
    with pytest.raises(ValueError) as e:
        BACKBONES[name](freeze_at=9)
    assert str(e.value) == "freeze_at = 9 is not valid; valid values: 0, 1, 2, 3, 4, 5"
    with pytest.raises(ValueError) as e:
        BACKBONES[name](out_features=[])
    assert str(e.value) == (
        "out_features is empty; valid entries: 'stem', 'res2', 'res3', 'res4', 'res5'"
    )
    with pytest.raises(ValueError) as e:
        BACKBONES[name](out_features=["res2", "p6"])
    assert str(e.value) == (
        "out_features entry = 'p6' is not valid; valid values: 'stem', 'res2', 'res3', 'res4', "
        "'res5'"
    )


def test_rexnet_python_errors_name_its_arguments():
    with pytest.raises(ValueError) as e:
        ReXNet(width_mult=0.0)
    assert str(e.value) == "width_mult = 0.0 is not valid; it must be a positive number"
    with pytest.raises(ValueError) as e:
        ReXNet(norm="GN")
    assert str(e.value) == (
        "norm = 'GN' is not valid; valid values: 'FrozenBN', 'BN', 'SyncBN', 'nnSyncBN', "
        "'naiveSyncBN'"
    )
    with pytest.raises(ValueError) as e:
        ReXNet(channel_divisor=2.0)
    assert str(e.value) == "channel_divisor = 2.0 is not valid; it must be a positive integer"


def test_stages_are_added_in_order():
    backbone = StagedBackbone(FEATURE_NAMES, out_features=["res2"], freeze_at=0)
    assert backbone.stages_to_build == ("stem", "res2")
    with pytest.raises(ValueError, match="^stage 'res2' added where 'stem' comes next$"):
        backbone.add_stage("res2", nn.Identity(), channels=8, stride=1)
    backbone.add_stage("stem", nn.Conv2d(3, 8, 3, stride=2, padding=1), channels=8, stride=2)
    backbone.add_stage("res2", nn.Conv2d(8, 16, 3, stride=2, padding=1), channels=16, stride=2)
    assert backbone.output_shape() == {"res2": ShapeSpec(channels=16, stride=4)}
    assert tuple(backbone(torch.zeros(1, 3, 16, 16))["res2"].shape) == (1, 16, 4, 4)


# --------------------------------------------------------------------------------------------
# Shared ops
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("round_limit", [0.0, 0.9])
@pytest.mark.parametrize("divisor", [1, 8])
def test_make_divisible_equals_timms(divisor, round_limit):
    timm_layers = pytest.importorskip("timm.layers")
    values = [
        0.4,
        1,
        3.9,
        4,
        4.5,
        7.9,
        11,
        12,
        16 / 12,
        26.6,
        61.3,
        100,
        128,
        129.9,
        1664,
        2048 / 16,
    ]
    for value in values:
        expected = timm_layers.make_divisible(value, divisor, round_limit=round_limit)
        assert make_divisible(value, divisor, round_limit=round_limit) == expected, value


def test_the_two_roundings():
    # The ResNets' SE: the nearest multiple of 8, at least 8 (2048 / 16 = 128; 11 -> 8).
    assert [make_divisible(v, 8, round_limit=0.0) for v in (11, 128, 3, 13)] == [8, 128, 8, 16]
    # ReXNet: never more than 10% below the value (11 -> 8 is 27% below: 16).
    assert [make_divisible(v, 8, round_limit=0.9) for v in (11, 128, 3, 13)] == [16, 128, 8, 16]
    assert make_divisible(26.6, 1) == 27  # channel_divisor 1: rounding to the nearest integer


def test_se_parameter_names_in_both_networks():
    resnet = ResNetFamily(resnet_spec(50, se_ratio=16, norm="BN"), out_features=["res2"])
    assert [k for k in resnet.state_dict() if k.startswith("res2.0.se.")] == [
        "res2.0.se.fc1.weight",
        "res2.0.se.fc1.bias",
        "res2.0.se.fc2.weight",
        "res2.0.se.fc2.bias",
    ]
    assert resnet.res2[0].se.fc1.weight.shape == (16, 256, 1, 1)  # 256 / 16
    rexnet = ReXNet(out_features=["res3"], norm="BN")
    assert [k for k in rexnet.state_dict() if k.startswith("res3.0.se.")] == [
        "res3.0.se.fc1.weight",
        "res3.0.se.fc1.bias",
        "res3.0.se.fc1.norm.weight",
        "res3.0.se.fc1.norm.bias",
        "res3.0.se.fc1.norm.running_mean",
        "res3.0.se.fc1.norm.running_var",
        "res3.0.se.fc1.norm.num_batches_tracked",
        "res3.0.se.fc2.weight",
        "res3.0.se.fc2.bias",
    ]


@pytest.mark.parametrize("norm", ["", "BN"])
def test_squeeze_excite_is_its_formula(norm):
    se = SqueezeExcite(12, 4, norm=norm).eval()
    randomize_norm_statistics(se)
    assert [n for n, _ in se.named_parameters()] == ["fc1.weight", "fc1.bias"] + (
        ["fc1.norm.weight", "fc1.norm.bias"] if norm else []
    ) + ["fc2.weight", "fc2.bias"]
    x = torch.randn(2, 12, 5, 7)
    with torch.no_grad():
        hidden = F.conv2d(x.mean((2, 3), keepdim=True), se.fc1.weight, se.fc1.bias)
        if norm:
            hidden = se.fc1.norm(hidden)
        scale = torch.sigmoid(F.conv2d(F.relu(hidden), se.fc2.weight, se.fc2.bias))
        assert torch.allclose(se(x), x * scale, atol=1e-6)


def test_zero_padding_of_channels_is_shared_by_option_a_and_rexnet():
    x = torch.randn(2, 3, 4, 4)
    padded = zero_pad_channels(x, 2)
    assert padded.shape == (2, 5, 4, 4)
    assert torch.equal(padded[:, :3], x) and torch.count_nonzero(padded[:, 3:]) == 0
    assert zero_pad_channels(x, 0) is x
    assert torch.equal(ZeroPadShortcut(3, 5, stride=1)(x), padded)
    # ReXNet's stride-1 blocks add their input zero-padded to their width.
    block = ReXNet(out_features=["res2"], norm="BN").eval().res2[1]
    assert block.has_shortcut and block.out_channels > block.in_channels
    y = torch.randn(1, block.in_channels, 8, 8)
    with torch.no_grad():
        branch = block.conv_project(F.relu6(block.conv_dw(block.conv_expand(y))))
        expected = branch + zero_pad_channels(y, block.out_channels - block.in_channels)
        assert torch.allclose(block(y), expected, atol=1e-6)

"""The family's block types, stems and presets: wiring against hand-written formulas, the CIFAR
parameter counts of the ResNet paper, deformable convolution on the CPU, freezing for every block
type, and the errors for combinations that define no network."""

import dataclasses
import math
import os

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone, build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import deform_conv2d

from resnet_backbones.config import FPN_BACKBONES, resnet_spec_from_config
from resnet_backbones.engine import load_config
from resnet_backbones.model_zoo import config_names, get_config_file
from resnet_backbones.modeling import ResNetClassifier, ResNetFamily, resnet_spec
from resnet_backbones.modeling.blocks import BasicBlock, BottleneckBlock
from resnet_backbones.modeling.ops import DeformConv2d
from resnet_backbones.modeling.resnet import build_res5_head
from resnet_backbones.modeling.spec import BLOCK_ORDERS, BlockOptions
from resnet_backbones.presets import ARCHS, PRESETS, apply_preset, detector_form, preset_config
from resnet_backbones.utils import config_get
from resnet_backbones.weights.catalog import default_weights
from resnet_backbones.weights.checkpoint import prepare_checkpoint
from resnet_backbones.weights.download import CACHE_ENV, cache_path
from resnet_backbones.weights.metadata import check_metadata, metadata_from_config
from resnet_backbones.weights.resolve import ZOO_BASE_URL_ENV, catalog_entry_for, zoo_url

from .helpers import (
    REPO,
    preset_forms,
    randomize_norm_statistics,
    reference_state,
    save_in_its_format,
)


def _count(model):
    return sum(p.numel() for p in model.parameters())


# ResNet paper, Table 6 (CIFAR-10); Wide ResNet paper, Table 1 (WRN-28-10: 36.5M). Each count
# equals the paper's to the digits the paper prints.
PAPER_PARAMS = {
    "CIFAR-ResNet-20": 0.27,
    "CIFAR-ResNet-32": 0.46,
    "CIFAR-ResNet-44": 0.66,
    "CIFAR-ResNet-56": 0.85,
    "CIFAR-ResNet-110": 1.7,
    "CIFAR-ResNet-1202": 19.4,
    "WRN-28-10": 36.5,
}


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_cifar_parameter_counts_equal_the_papers(name):
    preset = PRESETS[name]
    model = ResNetClassifier(
        resnet_spec_from_config(preset_config(name)), num_classes=preset.num_classes
    )
    published = PAPER_PARAMS[name]
    decimals = len(str(published).split(".")[1])
    assert round(_count(model) / 1e6, decimals) == published


def test_plain_networks_have_the_resnets_parameters_but_no_shortcuts():
    resnet = ResNetClassifier(
        resnet_spec_from_config(preset_config("CIFAR-ResNet-56")), num_classes=10
    )
    plain = ResNetClassifier(
        resnet_spec_from_config(preset_config("CIFAR-Plain-56")), num_classes=10
    )
    assert _count(resnet) == _count(plain)  # option A has no parameters
    blocks = [m for m in plain.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 27 and not any(b.has_shortcut for b in blocks)


@pytest.mark.parametrize("name", [n for n, p in PRESETS.items() if p.task == "classification"])
def test_cifar_presets_classify_and_take_a_finite_step(name):
    model = ResNetClassifier(resnet_spec_from_config(preset_config(name)), num_classes=10).train()
    logits = model(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10)
    loss = F.cross_entropy(logits, torch.tensor([1, 7]))
    loss.backward()
    assert math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.parameters())


def test_cifar_stages_are_16_32_64_times_the_widen_factor():
    spec = resnet_spec(28, stem="cifar", stem_out_channels=16, widen_factor=10, norm="BN")
    model = ResNetFamily(spec, out_features=["stem", "res2", "res3", "res4"])
    shapes = {k: (v.channels, v.stride) for k, v in model.output_shape().items()}
    assert shapes == {"stem": (16, 1), "res2": (160, 1), "res3": (320, 2), "res4": (640, 4)}
    out = model(torch.randn(1, 3, 32, 32))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        "stem": (16, 32, 32),
        "res2": (160, 32, 32),
        "res3": (320, 16, 16),
        "res4": (640, 8, 8),
    }


# --------------------------------------------------------------------------------------------
# Block orders: each block equals the identity-mapping paper's formula, written out by hand.
# --------------------------------------------------------------------------------------------
def _basic(order, *, first_in_stage=False, shortcut="B", zero_init=False):
    options = BlockOptions(norm="BN", order=order, shortcut=shortcut, zero_init_residual=zero_init)
    block = BasicBlock(
        8, 8, bottleneck_channels=8, first_in_stage=first_in_stage, options=options
    ).eval()
    if not zero_init:
        randomize_norm_statistics(block)
    return block


def _formula(order, b, x):
    relu = F.relu
    if order == "post":  # (a)
        return relu(b.conv2(relu(b.conv1(x))) + x)
    if order == "bn_after_add":  # (b): the last conv has no norm; norm after the addition
        return relu(b.add_norm(b.conv2(relu(b.conv1(x))) + x))
    if order == "relu_before_add":  # (c)
        return relu(b.conv2(relu(b.conv1(x)))) + x
    if order == "relu_preact":  # (d)
        return b.conv2(relu(b.conv1(relu(x)))) + x
    # (e): norms before the convs, no norm after them
    return b.conv2(relu(b.norm2(b.conv1(relu(b.norm1(x)))))) + x


@pytest.mark.parametrize("order", BLOCK_ORDERS)
def test_each_block_order_is_the_papers_formula(order):
    block = _basic(order)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        assert torch.allclose(block(x), _formula(order, block, x), atol=1e-6)


@pytest.mark.parametrize("order", BLOCK_ORDERS)
def test_each_block_order_has_the_formulas_gradients(order):
    # The in-place ReLU and addition of a block must leave autograd what it reads: (c)'s
    # addition once modified its ReLU's output, so that the first backward step failed.
    block = _basic(order)
    x = torch.randn(2, 8, 9, 11, requires_grad=True)
    (grad,) = torch.autograd.grad(block(x).square().sum(), x)
    (expected,) = torch.autograd.grad(_formula(order, block, x).square().sum(), x)
    assert torch.allclose(grad, expected, atol=1e-5)


@pytest.mark.parametrize("order", BLOCK_ORDERS)
def test_norm_placement_of_each_order(order):
    block = _basic(order)
    conv_norms = [getattr(block, f"conv{i}").norm for i in (1, 2)]
    has = [n is not None for n in conv_norms]
    expected = {
        "post": [True, True],
        "bn_after_add": [True, False],
        "relu_before_add": [True, True],
        "relu_preact": [True, True],
        "preact": [False, False],
    }[order]
    assert has == expected
    assert (block.add_norm is not None) == (order == "bn_after_add")
    assert (block.norm1 is not None) == (order == "preact")


@pytest.mark.parametrize("order", ["relu_before_add", "relu_preact", "preact"])
def test_zero_init_residual_makes_clean_identity_blocks_exact_identities(order):
    # In (c), (d) and (e) nothing follows the addition, so a zero residual branch passes the
    # input through unchanged: the point of the identity-mapping paper.
    block = _basic(order, zero_init=True)
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        assert torch.equal(block(x), x)


def test_a_preact_stages_first_block_reads_its_input_already_activated():
    block = _basic("preact", first_in_stage=True)
    assert block.norm1 is None
    x = torch.randn(2, 8, 9, 11).relu()
    with torch.no_grad():
        assert torch.allclose(block(x), block.conv2(F.relu(block.norm2(block.conv1(x)))) + x)


def test_shortcut_none_drops_the_addition():
    plain = _basic("post", shortcut="none")
    x = torch.randn(2, 8, 9, 11)
    with torch.no_grad():
        assert torch.allclose(plain(x), F.relu(plain.conv2(F.relu(plain.conv1(x)))))


@pytest.mark.parametrize("order", BLOCK_ORDERS)
def test_every_order_builds_a_network_with_the_documented_outputs(order):
    shortcut = "B"
    spec = resnet_spec(50, norm="BN", block_order=order, shortcut=shortcut, se_ratio=8)
    model = ResNetFamily(spec, out_features=["stem", "res2", "res3", "res4", "res5"]).eval()
    out = model(torch.randn(1, 3, 64, 64))
    for name, shape in model.output_shape().items():
        assert out[name].shape[1] == shape.channels
        assert out[name].shape[-1] == 64 // shape.stride
    if order == "preact":
        # v2: every feature is normalised and activated; res5 ends with the final norm + ReLU.
        assert all((v >= 0).all() for v in out.values())
        assert isinstance(model.res5.norm, torch.nn.BatchNorm2d)


def test_preact_c4_head_ends_with_the_final_norm():
    spec = resnet_spec(50, norm="BN", block_order="preact", stride_in_1x1=False)
    head, channels = build_res5_head(spec)
    assert channels == 2048
    assert list(dict(head.named_children()))[-2:] == ["norm", "relu"]


# --------------------------------------------------------------------------------------------
# Res2Net, SE, dropout
# --------------------------------------------------------------------------------------------
def test_res2net_first_block_pools_its_last_split_and_others_do_not():
    spec = resnet_spec(50, norm="BN", res2net_scale=4, res2net_width=26, stride_in_1x1=False)
    model = ResNetFamily(spec, out_features=["res5"])
    for stage in (model.res2, model.res3):
        assert stage[0].conv2.pool is not None and stage[0].conv2.pool.stride == stage[0].stride
        assert all(block.conv2.pool is None for block in list(stage)[1:])
    assert model.res2[0].conv2.width == 26 and model.res5[0].conv2.width == 208


def test_se_reduces_channels_by_the_ratio_rounded_to_eight():
    spec = resnet_spec(50, norm="BN", se_ratio=16)
    model = ResNetFamily(spec, out_features=["res5"])
    assert model.res2[0].se.fc1.out_channels == 16  # 256 / 16
    assert model.res5[0].se.fc1.out_channels == 128  # 2048 / 16


def test_dropout_acts_in_training_only():
    spec = resnet_spec(20, stem="cifar", stem_out_channels=16, norm="BN", dropout=0.5)
    model = ResNetFamily(spec, out_features=["res4"])
    x = torch.randn(2, 3, 16, 16)
    model.train()
    assert not torch.equal(model(x)["res4"], model(x)["res4"])
    model.eval()
    assert torch.equal(model(x)["res4"], model(x)["res4"])


# --------------------------------------------------------------------------------------------
# Deformable convolution (torchvision.ops): CPU forward and backward, v1 and modulated v2
# --------------------------------------------------------------------------------------------
def test_deform_conv_with_zero_offsets_is_a_regular_conv():
    conv = DeformConv2d(6, 4, stride=2, padding=2, dilation=2)
    x = torch.randn(2, 6, 11, 13)
    offset = torch.zeros(2, 18, 6, 7)
    expected = F.conv2d(x, conv.weight, stride=2, padding=2, dilation=2)
    assert torch.allclose(conv(x, offset), expected, atol=1e-5)
    assert torch.allclose(conv(x, offset, torch.full((2, 9, 6, 7), 0.5)), 0.5 * expected, atol=1e-5)


@pytest.mark.parametrize("modulated", [False, True])
def test_deform_gradients_are_correct_on_the_cpu(modulated):
    torch.manual_seed(0)
    x = torch.randn(1, 2, 5, 5, dtype=torch.double, requires_grad=True)
    weight = torch.randn(3, 2, 3, 3, dtype=torch.double, requires_grad=True)
    offset = (torch.rand(1, 18, 5, 5, dtype=torch.double) * 2 - 1).requires_grad_()
    mask = torch.rand(1, 9, 5, 5, dtype=torch.double, requires_grad=True) if modulated else None
    inputs = (x, offset, weight) + ((mask,) if modulated else ())

    def fn(x, offset, weight, mask=None):
        return deform_conv2d(x, offset, weight, padding=1, mask=mask)

    assert torch.autograd.gradcheck(fn, inputs, atol=1e-5)


@pytest.mark.parametrize("modulated", [False, True])
def test_a_dcn_block_starts_as_its_regular_block_and_trains(modulated):
    options = BlockOptions(norm="BN", deform_modulated=modulated, stride_in_1x1=False)
    kwargs = dict(bottleneck_channels=8, stride=2, first_in_stage=True)
    dcn = BottleneckBlock(16, 32, deform=True, options=options, **kwargs).eval()
    regular = BottleneckBlock(16, 32, deform=False, options=options, **kwargs).eval()
    randomize_norm_statistics(dcn)
    state = {k: v for k, v in dcn.state_dict().items() if not k.startswith("conv2_offset")}
    regular.load_state_dict(state, strict=True)
    x = torch.randn(2, 16, 15, 17)
    with torch.no_grad():
        if modulated:  # the zero-initialised mask is sigmoid(0) = 0.5 everywhere
            regular.conv2.weight.mul_(0.5)
        assert torch.allclose(dcn(x), regular(x), atol=1e-5)

    dcn.train()
    with torch.no_grad():  # move the offsets off zero, so their gradient is not degenerate
        dcn.conv2_offset.weight.normal_(0, 0.1)
    dcn(x).square().mean().backward()
    assert dcn.conv2_offset.weight.grad.abs().sum() > 0
    assert dcn.conv2.weight.grad.abs().sum() > 0


def test_dcn_is_built_where_the_config_asks_and_nowhere_else():
    cfg = load_config(
        os.path.join(REPO, "configs/COCO-Detection/faster_rcnn_R_101_DCN_c3-c5_FPN_3x.yaml")
    )
    model = ResNetFamily(resnet_spec_from_config(cfg), out_features=["res5"])
    assert not any(hasattr(b, "conv2_offset") for b in model.res2)
    for stage in (model.res3, model.res4, model.res5):
        assert all(isinstance(b.conv2, DeformConv2d) for b in stage)


# --------------------------------------------------------------------------------------------
# Freezing and norms, the same for every block type
# --------------------------------------------------------------------------------------------
VARIANTS = {
    "v1": {},
    "bn_after_add": dict(block_order="bn_after_add"),
    "v2": dict(block_order="preact", stride_in_1x1=False),
    "res2net": dict(res2net_scale=4, res2net_width=26, stride_in_1x1=False),
    "se": dict(se_ratio=16),
    "dcn-v2": dict(deform_on_per_stage=[False, True, True, True], deform_modulated=True),
    "resnet-d": dict(stem="deep", avg_down=True),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("freeze_at", [0, 2, 5])
def test_freezing_is_the_same_for_every_block_type(variant, freeze_at):
    spec = resnet_spec(50, norm="BN", **VARIANTS[variant])
    model = ResNetFamily(spec, out_features=["res5"], freeze_at=freeze_at)
    parts = [("stem", model.stem)] + [(n, getattr(model, n)) for n in model.stage_names]
    for index, (name, module) in enumerate(parts, start=1):
        frozen = freeze_at >= index
        assert all(p.requires_grad != frozen for p in module.parameters()), name
        norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        frozen_norms = [m for m in module.modules() if isinstance(m, FrozenBatchNorm2d)]
        assert (not norms and frozen_norms) if frozen else (norms and not frozen_norms), name


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_frozen_bn_computes_what_bn_computes_in_eval(variant):
    spec = resnet_spec(50, norm="BN", **VARIANTS[variant])
    model = ResNetFamily(spec, out_features=["res5"]).eval()
    randomize_norm_statistics(model)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)["res5"]
        model.freeze(5)
        assert torch.allclose(model(x)["res5"], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["FrozenBN", "GN", ""])
def test_v2_and_res2net_build_with_other_norms(norm):
    for variant in ("v2", "se") if norm == "GN" else ("v2", "res2net", "se"):
        spec = resnet_spec(50, norm=norm, **VARIANTS[variant])
        out = ResNetFamily(spec, out_features=["res5"])(torch.randn(1, 3, 64, 64))
        assert torch.isfinite(out["res5"]).all(), (variant, norm)


# --------------------------------------------------------------------------------------------
# Combinations that define no network
# --------------------------------------------------------------------------------------------
# Each row: resnet_spec's arguments, the error the Python API gives (naming the arguments), and
# the error the same values give from a config (naming the keys, as detectron2 users read them).
BAD_COMBINATIONS = [
    (
        dict(depth=18, res2_out_channels=64, res2net_scale=4),
        r"^res2net_scale = 4 is not valid for depth 18: .*basic blocks; use depth 50 or deeper, "
        r"or res2net_scale 1$",
        r"^MODEL\.RESNETS\.RES2NET_SCALE = 4 is not valid for DEPTH 18: .*basic blocks; use DEPTH "
        r"50 or deeper, or RES2NET_SCALE 1$",
    ),
    (
        # DEPTH 50 over an R-18 config (RES2_OUT_CHANNELS 64): no ResNet-50, refused.
        dict(depth=50, res2_out_channels=64),
        r"^res2_out_channels = 64 is not valid for depth 50, which uses bottleneck blocks: every "
        r"named bottleneck network has 256 .*; set it to 256, or depth 18 or 34 for 64$",
        r"^MODEL\.RESNETS\.RES2_OUT_CHANNELS = 64 is not valid for DEPTH 50, which uses bottleneck "
        r"blocks: every named bottleneck network has 256 .*; set it to 256, or DEPTH 18 or 34 for "
        r"64$",
    ),
    (
        dict(depth=50, block_order="preact", shortcut="A"),
        r"^shortcut = 'A' is not defined with block_order 'preact': .*; use shortcut 'B' or 'C'$",
        r"^MODEL\.RESNETS\.SHORTCUT = 'A' is not defined with BLOCK_ORDER 'preact': .*; use "
        r"SHORTCUT 'B' or 'C'$",
    ),
    (
        dict(depth=50, res2net_scale=4, block_order="preact"),
        r"^block_order = 'preact' is not valid with res2net_scale 4: .*'post' only$",
        r"^MODEL\.RESNETS\.BLOCK_ORDER = 'preact' is not valid with RES2NET_SCALE 4: "
        r".*'post' only$",
    ),
    (
        dict(depth=50, res2net_scale=4, width_per_group=4),
        r"^width_per_group = 4 does not apply to Res2Net \(res2net_scale 4\), whose 3x3 width is "
        r"res2net_width per split; keep width_per_group 64$",
        r"^MODEL\.RESNETS\.WIDTH_PER_GROUP = 4 does not apply to Res2Net \(RES2NET_SCALE 4\), "
        r"whose 3x3 width is RES2NET_WIDTH per split; keep WIDTH_PER_GROUP 64$",
    ),
    (
        dict(depth=50, widen_factor=2),
        r"^widen_factor = 2 only applies to CIFAR depths \(6n\+2, 6n\+4\), not depth 50; widen an "
        r"ImageNet ResNet with width_per_group \(wide_resnet50_2: 128\)$",
        r"^MODEL\.RESNETS\.WIDEN_FACTOR = 2 only applies to CIFAR depths \(6n\+2, 6n\+4\), not "
        r"DEPTH 50; widen an ImageNet ResNet with WIDTH_PER_GROUP \(wide_resnet50_2: 128\)$",
    ),
    (
        dict(depth=20),
        r"^depth = 20 is a CIFAR depth \(6n\+2 or 6n\+4\), which needs stem 'cifar', not "
        r"'basic'; ImageNet depths are \[18, 34, 50, 101, 152, 200\]$",
        r"^MODEL\.RESNETS\.DEPTH = 20 is a CIFAR depth \(6n\+2 or 6n\+4\), which needs "
        r"MODEL\.RESNETS\.STEM 'cifar', not 'basic'; ImageNet depths are "
        r"\[18, 34, 50, 101, 152, 200\]$",
    ),
    (
        dict(depth=21, stem="cifar"),
        r"^depth = 21 is not valid; valid values: 18, 34, 50, 101, 152, 200, "
        r"'6n\+2 or 6n\+4 \(CIFAR\)'$",
        r"^MODEL\.RESNETS\.DEPTH = 21 is not valid; valid values: 18, 34, 50, 101, 152, 200, "
        r"'6n\+2 or 6n\+4 \(CIFAR\)'$",
    ),
    (
        dict(depth=34, res2_out_channels=64, deform_on_per_stage=[False, True, True, True]),
        r"^deform_on_per_stage = \[False, True, True, True\] is not valid for depth 34: .*basic "
        r"blocks$",
        r"^MODEL\.RESNETS\.DEFORM_ON_PER_STAGE = \[False, True, True, True\] is not valid for "
        r"DEPTH 34: .*basic blocks$",
    ),
    (
        dict(depth=50, res2net_scale=4, deform_on_per_stage=[False, False, False, True]),
        r"^deform_on_per_stage = \[False, False, False, True\] is not valid with res2net_scale 4: "
        r"a Res2Net block has no single 3x3 conv to make deformable$",
        r"^MODEL\.RESNETS\.DEFORM_ON_PER_STAGE = \[False, False, False, True\] is not valid with "
        r"RES2NET_SCALE 4: a Res2Net block has no single 3x3 conv to make deformable$",
    ),
    (
        dict(depth=50, deform_on_per_stage=[True]),
        r"^deform_on_per_stage = \[True\] is not valid; it needs one flag per stage res2\.\.res5$",
        r"^MODEL\.RESNETS\.DEFORM_ON_PER_STAGE = \[True\] is not valid; it needs one flag per "
        r"stage res2\.\.res5$",
    ),
    (
        dict(depth=50, dropout=1.0),
        r"^dropout = 1.0 is not valid; it must be in \[0, 1\)$",
        r"^MODEL\.RESNETS\.DROPOUT = 1.0 is not valid; it must be in \[0, 1\)$",
    ),
    (
        dict(depth=50, se_ratio=-1),
        r"^se_ratio = -1 is not valid; it must be an integer >= 0$",
        r"^MODEL\.RESNETS\.SE_RATIO = -1 is not valid; it must be an integer >= 0$",
    ),
    (
        dict(depth=50, block_order="pre"),
        r"^block_order = 'pre' is not valid; valid values: 'post', 'bn_after_add', "
        r"'relu_before_add', 'relu_preact', 'preact'$",
        r"^MODEL\.RESNETS\.BLOCK_ORDER = 'pre' is not valid; valid values: 'post', 'bn_after_add', "
        r"'relu_before_add', 'relu_preact', 'preact'$",
    ),
    (
        dict(depth=50, shortcut="D"),
        r"^shortcut = 'D' is not valid; valid values: 'A', 'B', 'C', 'none'$",
        r"^MODEL\.RESNETS\.SHORTCUT = 'D' is not valid; valid values: 'A', 'B', 'C', 'none'$",
    ),
    (
        dict(depth=20, stem="cifar", res5_dilation=2),
        r"^res5_dilation = 2 is not valid for the CIFAR depth 20: CIFAR networks have no res5; "
        r"keep it 1$",
        r"^MODEL\.RESNETS\.RES5_DILATION = 2 is not valid for the CIFAR depth 20: CIFAR networks "
        r"have no res5; keep it 1$",
    ),
    (
        dict(depth=50, shortcut="A", avg_down=True),
        r"^avg_down = True does nothing with shortcut 'A': .*; use shortcut 'B' or 'C', or "
        r"avg_down False$",
        r"^MODEL\.RESNETS\.AVG_DOWN = True does nothing with SHORTCUT 'A': .*; use SHORTCUT 'B' "
        r"or 'C', or AVG_DOWN False$",
    ),
    (
        dict(depth=50, shortcut="none", zero_init_residual=True),
        r"^zero_init_residual = True is not valid with shortcut 'none': .*every block would output "
        r"zeros.*; use zero_init_residual False$",
        r"^MODEL\.RESNETS\.ZERO_INIT_RESIDUAL = True is not valid with SHORTCUT 'none': .*every "
        r"block would output zeros.*; use ZERO_INIT_RESIDUAL False$",
    ),
    (
        dict(depth=50, norm="GN", res2net_scale=4, res2net_width=26),
        r"^norm = 'GN' is not valid for this network: .* do not divide its \[26, 52, 104, 208\] "
        r"channel widths; use 'BN', 'SyncBN' or 'FrozenBN'$",
        r"^MODEL\.RESNETS\.NORM = 'GN' is not valid for this network: .* do not divide its "
        r"\[26, 52, 104, 208\] channel widths; use 'BN', 'SyncBN' or 'FrozenBN'$",
    ),
]


@pytest.mark.parametrize("kwargs, python_message, config_message", BAD_COMBINATIONS)
def test_bad_combinations_say_why_in_python_names(kwargs, python_message, config_message):
    with pytest.raises(ValueError, match=python_message):
        resnet_spec(**kwargs)


@pytest.mark.parametrize("kwargs, python_message, config_message", BAD_COMBINATIONS)
def test_bad_combinations_say_why_in_config_keys(cfg, kwargs, python_message, config_message):
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    for argument, value in kwargs.items():
        setattr(cfg.MODEL.RESNETS, argument.upper(), value)
    with pytest.raises(ValueError, match=config_message):
        build_backbone(cfg)


def test_a_c4_head_needs_a_res5():
    spec = resnet_spec(20, stem="cifar", stem_out_channels=16, norm="BN")
    with pytest.raises(ValueError, match="C4 head needs a res5"):
        build_res5_head(spec)


def test_cifar_out_features_stop_at_res4():
    spec = resnet_spec(20, stem="cifar", stem_out_channels=16, norm="BN")
    with pytest.raises(ValueError, match=r"'res5' is not valid; valid values: 'stem', 'res2'"):
        ResNetFamily(spec, out_features=["res5"])


# --------------------------------------------------------------------------------------------
# Presets and their configs
# --------------------------------------------------------------------------------------------
def test_every_preset_config_builds_exactly_its_preset():
    """Each config under configs/ is preset_config(preset, its form), up to the recipe: the same
    network (a config may choose the norm), head, weights, input and stride placement."""
    listed = []
    for name, preset in PRESETS.items():
        for config in preset.configs:
            listed.append(config)
            cfg = load_config(get_config_file(config))
            expected_cfg = preset_config(name, detector_form(cfg))
            for key in ("MODEL.BACKBONE.NAME", "MODEL.ROI_HEADS.NAME"):
                assert config_get(cfg, key) == config_get(expected_cfg, key), (config, key)
            entry = default_weights(name)
            assert catalog_entry_for(cfg.MODEL.WEIGHTS) is entry, config
            if entry is not None:
                keys = ["INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"]
                metadata = {k: config_get(expected_cfg, k) for k in keys}
                check_metadata(metadata_from_config(metadata), cfg, source=config)
            if preset.keys.get("MODEL.BACKBONE.NAME", "").startswith("build_rexnet"):
                assert cfg.MODEL.REXNET.WIDTH_MULT == expected_cfg.MODEL.REXNET.WIDTH_MULT
                continue
            got, want = resnet_spec_from_config(cfg), resnet_spec_from_config(expected_cfg)
            # A config may choose the norm; DC5's dilation is checked by the step test.
            got = dataclasses.replace(
                got,
                options=dataclasses.replace(got.options, norm=want.options.norm),
                stages=tuple(dataclasses.replace(s, dilation=w.dilation, stride=w.stride)
                             for s, w in zip(got.stages, want.stages)),
            )  # fmt: skip
            assert got == want, config
    assert len(listed) == len(set(listed))
    on_disk = {name for name in config_names() if name.startswith("COCO-Detection/")}
    assert on_disk <= set(listed), f"configs without a preset: {sorted(on_disk - set(listed))}"


# --------------------------------------------------------------------------------------------
# Every detection preset trains a step in every detector form it claims
# --------------------------------------------------------------------------------------------
def _form_of(cfg):
    if cfg.MODEL.BACKBONE.NAME in FPN_BACKBONES.values():
        return "FPN"
    return "DC5" if cfg.MODEL.RESNETS.RES5_DILATION == 2 else "C4"


def _covered_by_configs():
    """(preset, form) pairs that test_configs.py already steps through a full config."""
    covered = set()
    for name, preset in PRESETS.items():
        for config in preset.configs:
            covered.add((name, _form_of(load_config(get_config_file(config)))))
    return covered


COVERED = _covered_by_configs()


def test_a_preset_in_a_form_it_lacks_is_a_clear_error_not_a_crash_in_the_forward():
    with pytest.raises(ValueError, match=r"^preset 'ReXNet-100': form = 'C4' is not valid; valid "
                       r"values: 'FPN'$"):  # fmt: skip
        preset_config("ReXNet-100", "C4")
    with pytest.raises(ValueError, match=r"^form = 'FPN': preset 'CIFAR-ResNet-20' is a "
                       r"classification network .*; call preset_config\('CIFAR-ResNet-20'\) for "
                       r"its classifier config, or use a detection preset: R-18, R-34, "):  # fmt: skip
        preset_config("CIFAR-ResNet-20", "FPN")
    c4 = load_config(os.path.join(REPO, "configs", "Base-RCNN-C4.yaml"))
    with pytest.raises(ValueError, match=r"^preset 'ReXNet-100' does not work in the C4 form of "
                       r"this config; its forms: FPN\. Merge configs/Base-RCNN-FPN\.yaml instead, "
                       r"or use preset_config\('ReXNet-100', form='FPN'\)$"):  # fmt: skip
        apply_preset(c4, "ReXNet-100")
    # A detector built from a classification config, or from a hand-made ReXNet C4 config:
    # refused at build time, not with a conv shape error in the first forward.
    cifar = preset_config("CIFAR-ResNet-20")
    cifar.MODEL.DEVICE = "cpu"
    with pytest.raises(ValueError, match=r"a C4 head needs a res5 stage, but this network"):
        build_model(cifar)
    c4.MODEL.DEVICE = "cpu"
    c4.MODEL.BACKBONE.NAME = "build_rexnet_backbone"
    c4.MODEL.REXNET.OUT_FEATURES = ["res4"]
    with pytest.raises(ValueError, match=r"^Res5FamilyROIHeads builds res5 from MODEL\.RESNETS, "
                       r"which takes 1024 channels, but the backbone \(build_rexnet_backbone\) "
                       r"gives 128 at res4"):  # fmt: skip
        build_model(c4)


def test_apply_preset_gives_detectron2_c4_configs_the_presets_own_head():
    cfg = preset_config("R-50", "C4")
    cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"  # detectron2's, as in its own C4 configs
    apply_preset(cfg, "R-18")
    assert cfg.MODEL.ROI_HEADS.NAME == "Res5FamilyROIHeads"


def test_preset_configs_are_in_the_forms_they_claim():
    assert all(form in PRESETS[name].forms for name, form in COVERED)
    assert {f for n, f in preset_forms() if n == "ReXNet-100"} == {"FPN"}
    assert len(preset_forms()) == 21 * 3 + 1


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """The model zoo, offline: ``serve(entry)`` puts random weights in the entry's own names and
    format (made once) in the download cache, where ``resnet_backbones://NAME`` finds them. The
    catalog's hashes are those of the published files, so the entries are used without one; the
    mirror is a closed loopback port, so a file not in the cache fails instead of being fetched."""
    from resnet_backbones.weights import catalog

    with pytest.MonkeyPatch.context() as mp:
        for name, entry in catalog.CATALOG.items():
            mp.setitem(catalog.CATALOG, name, dataclasses.replace(entry, sha256_prefix=None))
        mp.setenv(ZOO_BASE_URL_ENV, "http://127.0.0.1:9/zoo")
        mp.setenv(CACHE_ENV, str(tmp_path_factory.mktemp("zoo_cache")))

        def serve(entry):
            cached = cache_path(zoo_url(entry))
            if not os.path.isfile(cached):
                arch = ARCHS[entry.arch]
                made = save_in_its_format(
                    reference_state(arch), arch, tmp_path_factory.mktemp(entry.name)
                )
                os.makedirs(os.path.dirname(cached), exist_ok=True)
                os.replace(made, cached)

        yield serve


def _images(sizes):
    batch = []
    for h, w in sizes:
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 14.0, 60.0, 60.0]]))
        instances.gt_classes = torch.tensor([0, 5])
        batch.append({"image": torch.rand(3, h, w) * 255, "instances": instances})
    return batch


@pytest.mark.parametrize("name, form", [c for c in preset_forms() if c not in COVERED])
def test_every_preset_works_in_every_form_it_claims(name, form, zoo):
    """preset_config(name, form) builds a Faster R-CNN that takes a training step, loads the
    preset's default weights (random, in the publisher's names and format, through the zoo name
    its MODEL.WEIGHTS gives, from the download cache) without contradiction, and detects in eval. The (preset, form)
    pairs of the configs under configs/ are stepped and loaded by test_configs.py, and equal
    preset_config's (test_every_preset_config_builds_exactly_its_preset)."""
    cfg = preset_config(name, form)
    # Small RoI budgets and images: one step on the CPU, not a recipe.
    cfg.merge_from_list(
        ["MODEL.DEVICE", "cpu", "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 256,
         "MODEL.RPN.POST_NMS_TOPK_TRAIN", 64, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 32,
         "MODEL.RPN.PRE_NMS_TOPK_TEST", 128, "MODEL.RPN.POST_NMS_TOPK_TEST", 32]
    )  # fmt: skip
    assert detector_form(cfg) == form == _form_of(cfg)
    model = build_model(cfg).train()
    if cfg.MODEL.BACKBONE.NAME.startswith("build_resnet_family"):
        # The form's base config changes only res5's dilation (DC5); the network is the preset's.
        got, want = resnet_spec_from_config(cfg), resnet_spec_from_config(preset_config(name))
        if form == "DC5":
            assert got.stage("res5").dilation == 2 and got.stage("res5").stride == 1
            got = dataclasses.replace(got, stages=want.stages)
        assert got == dataclasses.replace(want, options=got.options)
        assert got.options == dataclasses.replace(want.options, norm=got.options.norm)
        if form == "C4":  # res5 of the preset's own blocks, in the head
            assert cfg.MODEL.ROI_HEADS.NAME == "Res5FamilyROIHeads"
            head_block = type(model.roi_heads.res5[0])
            assert head_block is type(model.backbone.res4[0])
    else:
        assert cfg.MODEL.BACKBONE.NAME == "build_rexnet_fpn_backbone"
    with EventStorage(0):
        losses = model(_images([(64, 96), (96, 64)]))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    total = sum(losses.values())
    assert math.isfinite(total.item()), losses
    total.backward()
    grads = [p.grad for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)

    entry = default_weights(name)
    if entry is None:  # SE-R-101: no published weights; trains from scratch
        assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    else:
        assert cfg.MODEL.WEIGHTS == f"resnet_backbones://{entry.name}"
        zoo(entry)
        prepared = prepare_checkpoint(cfg.MODEL.WEIGHTS, model, cfg)  # metadata checked too
        assert prepared.report.fits
        model.load_state_dict(prepared.checkpoint["model"], strict=False)
    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": torch.rand(3, 64, 64) * 255}])
    assert out["instances"].image_size == (64, 64)

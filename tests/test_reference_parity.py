"""Numerical parity with torchvision's ResNets: convert the reference's state_dict through the
explicit mapping table, load it strictly into ours, and compare every stage output."""

import pytest
import torch
import torchvision

from resnet_backbones.convert import (
    TIMM_RES2NET,
    TIMM_RESNET_D,
    TIMM_RESNETV2,
    TIMM_SE_RESNET,
    TORCHVISION_RESNET,
    convert_state_dict,
)
from resnet_backbones.modeling import ResNetFamily, resnet_spec

from .conftest import randomize_norm_statistics

STAGES = ["res2", "res3", "res4", "res5"]

# torchvision name -> our spec arguments (torchvision: stride in the 3x3 conv, BN).
TORCHVISION = {
    "resnet18": dict(depth=18, res2_out_channels=64),
    "resnet34": dict(depth=34, res2_out_channels=64),
    "resnet50": dict(depth=50),
    "resnet101": dict(depth=101),
    "resnet152": dict(depth=152),
    "resnext50_32x4d": dict(depth=50, num_groups=32, width_per_group=4),
    "resnext101_32x8d": dict(depth=101, num_groups=32, width_per_group=8),
    "wide_resnet50_2": dict(depth=50, width_per_group=128),
}


def _torchvision_stages(model, x):
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_equal_to_torchvision(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomize_norm_statistics(reference)
    spec = resnet_spec(norm="BN", stride_in_1x1=False, **TORCHVISION[name])
    ours = ResNetFamily(spec, out_features=STAGES).eval()
    ours.load_state_dict(
        convert_state_dict(reference.state_dict(), TORCHVISION_RESNET), strict=True
    )

    x = torch.randn(2, 3, 97, 110)
    with torch.no_grad():
        expected = _torchvision_stages(reference, x)
        actual = ours(x)
    for stage, exp in zip(STAGES, expected):
        got = actual[stage]
        assert got.shape == exp.shape, stage
        rel = (got - exp).abs().max() / exp.abs().max()
        assert rel <= 1e-5, f"{stage}: relative error {rel:.2e}"


@pytest.mark.parametrize("name, depth", [("resnet50d", 50), ("resnet101d", 101)])
def test_equal_to_timm_resnet_d(name, depth):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    randomize_norm_statistics(reference)
    spec = resnet_spec(depth, stem="deep", avg_down=True, norm="BN", stride_in_1x1=False)
    ours = ResNetFamily(spec, out_features=STAGES).eval()
    ours.load_state_dict(convert_state_dict(reference.state_dict(), TIMM_RESNET_D), strict=True)

    x = torch.randn(2, 3, 97, 110)  # odd sizes: pooling must round as timm does
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        actual = ours(x)
    for stage, exp in zip(STAGES, expected):
        rel = (actual[stage] - exp).abs().max() / exp.abs().max()
        assert actual[stage].shape == exp.shape and rel <= 1e-5, (
            f"{stage}: relative error {rel:.2e}"
        )


# timm name -> (mapping table, our spec arguments). All have the stride in the 3x3 conv.
TIMM = {
    "res2net50_26w_4s": (TIMM_RES2NET, dict(depth=50, res2net_scale=4, res2net_width=26)),
    "res2net101_26w_4s": (TIMM_RES2NET, dict(depth=101, res2net_scale=4, res2net_width=26)),
    "seresnet50": (TIMM_SE_RESNET, dict(depth=50, se_ratio=16)),
    "seresnext50_32x4d": (
        TIMM_SE_RESNET,
        dict(depth=50, se_ratio=16, num_groups=32, width_per_group=4),
    ),
    "resnetv2_50": (TIMM_RESNETV2, dict(depth=50, block_order="preact")),
    "resnetv2_101": (TIMM_RESNETV2, dict(depth=101, block_order="preact")),
}


def _timm_stages(name, reference, x):
    raw = reference.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    if not name.startswith("resnetv2"):
        return raw
    # A v2 network's res* features are normalised and activated (make_stage): res2..res4 are
    # the next stage's first pre-activation of timm's raw sums, res5 its final norm.
    stages = reference.stages
    return [stages[i + 1].blocks[0].norm1(raw[i]) for i in range(3)] + [reference.norm(raw[3])]


@pytest.mark.parametrize("name", sorted(TIMM))
def test_equal_to_timm(name):
    timm = pytest.importorskip("timm")
    table, spec_args = TIMM[name]
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    randomize_norm_statistics(reference)
    spec = resnet_spec(norm="BN", stride_in_1x1=False, **spec_args)
    ours = ResNetFamily(spec, out_features=STAGES).eval()
    ours.load_state_dict(convert_state_dict(reference.state_dict(), table), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for n, p in reference.named_parameters() if not n.startswith(("fc.", "head."))
    )

    x = torch.randn(2, 3, 97, 110)
    with torch.no_grad():
        expected = _timm_stages(name, reference, x)
        actual = ours(x)
    for stage, exp in zip(STAGES, expected):
        rel = (actual[stage] - exp).abs().max() / exp.abs().max()
        assert actual[stage].shape == exp.shape and rel <= 1e-5, (
            f"{stage}: relative error {rel:.2e}"
        )


def test_unknown_names_are_an_error_listing_them():
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.se.fc.weight"] = torch.zeros(1)
    with pytest.raises(
        KeyError, match=r"1 parameter\(s\) match no rule.*layer1\.0\.se\.fc\.weight"
    ):
        convert_state_dict(state, TORCHVISION_RESNET)


def test_the_table_renames_explicitly():
    state = {
        "layer3.5.bn2.running_var": torch.ones(1),
        "layer1.0.downsample.0.weight": torch.ones(1),
    }
    assert set(convert_state_dict(state, TORCHVISION_RESNET)) == {
        "res4.5.conv2.norm.running_var",
        "res2.0.shortcut.weight",
    }

"""Numerical parity with torchvision's ResNets: convert the reference's state_dict through the
explicit mapping table, load it strictly into ours, and compare every stage output."""

import pytest
import torch
import torchvision

from resnet_backbones.modeling import ResNetFamily, resnet_spec
from resnet_backbones.weights.mappings import FAMILIES, to_backbone

from .helpers import randomize_norm_statistics, timm_stages, torchvision_stages

STAGES = ["res2", "res3", "res4", "res5"]


def _ours(state, family):
    """A reference's state dict in our names, through the family's mapping table."""
    return to_backbone(FAMILIES[family].source, state, family=family)


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


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_equal_to_torchvision(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomize_norm_statistics(reference)
    spec = resnet_spec(norm="BN", stride_in_1x1=False, **TORCHVISION[name])
    ours = ResNetFamily(spec, out_features=STAGES).eval()
    ours.load_state_dict(_ours(reference.state_dict(), "resnet"), strict=True)

    x = torch.randn(2, 3, 97, 110)
    with torch.no_grad():
        expected = torchvision_stages(reference, x)
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
    ours.load_state_dict(_ours(reference.state_dict(), "resnet_d"), strict=True)

    x = torch.randn(2, 3, 97, 110)  # odd sizes: pooling must round as timm does
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
        actual = ours(x)
    for stage, exp in zip(STAGES, expected):
        rel = (actual[stage] - exp).abs().max() / exp.abs().max()
        assert actual[stage].shape == exp.shape and rel <= 1e-5, (
            f"{stage}: relative error {rel:.2e}"
        )


# timm name -> (mapping family, our spec arguments). All have the stride in the 3x3 conv.
TIMM = {
    "res2net50_26w_4s": ("res2net", dict(depth=50, res2net_scale=4, res2net_width=26)),
    "res2net101_26w_4s": ("res2net", dict(depth=101, res2net_scale=4, res2net_width=26)),
    "seresnet50": ("seresnet", dict(depth=50, se_ratio=16)),
    "seresnext50_32x4d": (
        "seresnet",
        dict(depth=50, se_ratio=16, num_groups=32, width_per_group=4),
    ),
    "resnetv2_50": ("resnetv2", dict(depth=50, block_order="preact")),
    "resnetv2_101": ("resnetv2", dict(depth=101, block_order="preact")),
}


@pytest.mark.parametrize("name", sorted(TIMM))
def test_equal_to_timm(name):
    timm = pytest.importorskip("timm")
    family, spec_args = TIMM[name]
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    randomize_norm_statistics(reference)
    spec = resnet_spec(norm="BN", stride_in_1x1=False, **spec_args)
    ours = ResNetFamily(spec, out_features=STAGES).eval()
    ours.load_state_dict(_ours(reference.state_dict(), family), strict=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for n, p in reference.named_parameters() if not n.startswith(("fc.", "head."))
    )

    x = torch.randn(2, 3, 97, 110)
    with torch.no_grad():
        expected = timm_stages(name, reference, x)
        actual = ours(x)
    for stage, exp in zip(STAGES, expected):
        rel = (actual[stage] - exp).abs().max() / exp.abs().max()
        assert actual[stage].shape == exp.shape and rel <= 1e-5, (
            f"{stage}: relative error {rel:.2e}"
        )

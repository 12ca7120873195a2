"""Parameters and multiply-accumulates of every preset, pinned in docs/model_complexity.json
(tools/model_complexity.py) so that a refactor cannot change a model silently, and checked
against the published counts of the ResNet paper and torchvision."""

import json
import os
import subprocess
import sys

import pytest
import torch
import torchvision
from torch import nn

from resnet_backbones.complexity import (
    PAPER_GMACS,
    arch_complexity,
    count_macs,
    count_parameters,
    preset_complexity,
    published_comparison,
)
from resnet_backbones.modeling.ops import DeformConv2d
from resnet_backbones.presets import ARCHS, PRESETS

from .helpers import REPO

with open(os.path.join(REPO, "docs", "model_complexity.json"), encoding="utf-8") as _f:
    PINNED = json.load(_f)


def test_every_preset_and_arch_is_pinned():
    assert list(PINNED["presets"]) == list(PRESETS)
    assert list(PINNED["archs"]) == list(ARCHS)


@pytest.mark.parametrize("name", list(ARCHS))
def test_arch_complexity_is_pinned(name):
    assert arch_complexity(name) == PINNED["archs"][name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_complexity_is_pinned(name):
    assert preset_complexity(name) == PINNED["presets"][name]


def test_published_comparison_is_pinned_and_agrees_with_the_publications():
    rows = published_comparison()
    assert rows == PINNED["published"]
    for row in rows:
        gmacs = row["macs"] / 1e9
        if row["source"] == "torchvision":
            # torchvision prints three decimals; the architectures are the same.
            assert row["params"] == row["published_params"], row
            assert round(gmacs, 3) == row["published_gmacs"], row
        else:
            # The paper prints one decimal, with the stride in the 1x1 conv: 3.86, 7.57, 11.28.
            assert row["stride_in"] == "1x1"
            assert abs(gmacs - PAPER_GMACS[row["preset"]]) < 0.1, row


def test_counting_does_not_seed_the_global_generator():
    draws = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        preset_complexity("CIFAR-ResNet-20")
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1])


def test_the_counter_equals_a_hand_count():
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)  # 16 x 5x5 outputs, 8x3x3 each
    model = nn.Sequential(conv, nn.BatchNorm2d(16), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
    assert count_macs(model, (9, 9), in_channels=8) == 16 * 5 * 5 * 8 * 9
    assert count_parameters(model) == 16 * 8 * 9 + 2 * 16
    tv = torchvision.models.resnet50()
    assert count_macs(tv, (224, 224)) == 4_089_184_256  # torchvision's 4.089


def test_a_deformable_conv_counts_as_its_conv():
    class Deform(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = DeformConv2d(4, 6, stride=2, groups=2)

        def forward(self, x):
            offset = torch.zeros(x.shape[0], 18, 4, 5)
            return self.conv(x, offset)

    assert count_macs(Deform(), (7, 9), in_channels=4) == 6 * 4 * 5 * 2 * 9


def test_an_op_the_counter_does_not_know_is_an_error():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)

    with pytest.raises(RuntimeError, match="cannot count these ops .*aten::cumsum"):
        count_macs(Odd(), (4, 4))


def test_model_zoo_md_is_generated_from_the_pinned_counts():
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "generate_model_zoo.py"), "--check"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr[-2000:]

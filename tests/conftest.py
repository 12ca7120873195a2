"""Shared fixtures. Generated data goes to a fresh cache folder, never the user's."""

import os
import tempfile

# Must be set before resnet_backbones is imported (the shapes datasets read it at import).
os.environ.setdefault("RESNET_BACKBONES_CACHE", tempfile.mkdtemp(prefix="resnet_backbones_test_"))

import pytest  # noqa: E402
import torch  # noqa: E402

import resnet_backbones  # noqa: E402, F401  (before detectron2: installs the _C stand-in)

# isort: split
from detectron2.config import get_cfg  # noqa: E402

from resnet_backbones import add_resnet_backbones_config  # noqa: E402


def randomize_norm_statistics(model: torch.nn.Module, seed: int = 1) -> None:
    """Gives every BatchNorm / FrozenBatchNorm random affine parameters and statistics.

    Both start as the identity (FrozenBN) or near it, which would let a wrong mapping of norm
    parameters pass a parity test unnoticed.
    """
    from detectron2.layers import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
            c = m.weight.numel()
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def cfg():
    """detectron2's default config with our keys, on the CPU."""
    c = get_cfg()
    add_resnet_backbones_config(c)
    c.MODEL.DEVICE = "cpu"
    return c


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

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

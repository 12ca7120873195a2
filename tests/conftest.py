"""Shared fixtures. Generated data goes to a fresh cache folder, never the user's; helpers
shared by the test modules are in helpers.py."""

import os
import tempfile

# Before anything reads it: the generated datasets and downloads of the tests go here.
os.environ.setdefault("RESNET_BACKBONES_CACHE", tempfile.mkdtemp(prefix="resnet_backbones_test_"))

import pytest  # noqa: E402
import torch  # noqa: E402

import resnet_backbones  # noqa: E402, F401  (before detectron2: installs the _C stand-in)

from .helpers import default_cfg  # noqa: E402


@pytest.fixture
def cfg():
    """detectron2's default config with our keys, on the CPU."""
    return default_cfg()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Shared fixtures. Generated data goes to a fresh cache folder, never the user's; helpers
shared by the test modules are in helpers.py."""

import os
import tempfile

# Before anything reads it: the generated datasets and downloads of the tests go here (one folder
# for every pytest-xdist worker: the controller sets it before the workers start).
os.environ.setdefault("RESNET_BACKBONES_CACHE", tempfile.mkdtemp(prefix="resnet_backbones_test_"))
# A pytest-xdist worker (make test runs one per core) computes on one thread, as do the tools it
# starts; several threads per worker would only contend for the same cores.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import resnet_backbones  # noqa: E402, F401  (before detectron2: installs the _C stand-in)

from .helpers import default_cfg  # noqa: E402

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)


@pytest.fixture
def cfg():
    """detectron2's default config with our keys, on the CPU."""
    return default_cfg()


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

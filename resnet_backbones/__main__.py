"""``python -m resnet_backbones``: the model-zoo command line (see :mod:`resnet_backbones.cli`)."""

import sys

from .cli import main

sys.exit(main())

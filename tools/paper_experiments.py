#!/usr/bin/env python
"""The papers' experiments, one command each; the code is :mod:`resnet_backbones.paper_experiments`.

python tools/paper_experiments.py degradation --dataset digits --output DIR --quick
python tools/paper_experiments.py responses --dataset cifar10 --output DIR
python tools/paper_experiments.py lesion --dataset digits --output DIR --quick SEED 1
python tools/paper_experiments.py block_orders --dataset digits --output DIR --quick
python tools/paper_experiments.py shortcuts --dataset shapes_cls --output DIR --quick
python tools/paper_experiments.py all --dataset digits --output DIR --quick
python tools/paper_experiments.py page --output docs/experiments --page docs/EXPERIMENTS.md
"""

import sys

from resnet_backbones.paper_experiments import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Pretrain R-18 on shapes_cls, then train the quickstart detector from that checkpoint and from
scratch over several seeds, and compare their box AP at half and all of the iterations: the
command behind MODEL_ZOO.md's "Pretraining helps detection (shapes)" and `make
pretrain-quickstart`; its code is :mod:`resnet_backbones.pretrain_then_detect`.

    python tools/pretrain_then_detect.py [--seeds 0 1 2] [--workdir /tmp/pretrain_then_detect]
"""

import sys

from resnet_backbones.pretrain_then_detect import main

if __name__ == "__main__":
    sys.exit(main())

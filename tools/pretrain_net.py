#!/usr/bin/env python
"""Pretrain or evaluate the classifier of a ResNet-family preset: the command
``resnet-backbones-pretrain``, whose code is :mod:`resnet_backbones.pretrain_net`.

    python tools/pretrain_net.py --config configs/CIFAR/resnet_20.yaml
    python tools/pretrain_net.py --config CONFIG --resume       # continue after an interruption
    python tools/pretrain_net.py --config CONFIG --eval-only MODEL.WEIGHTS model_final.pth
"""

import sys

from resnet_backbones.pretrain_net import main

if __name__ == "__main__":
    sys.exit(main())

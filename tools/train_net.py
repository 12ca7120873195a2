#!/usr/bin/env python
"""Train or evaluate a detectron2 model with resnet_backbones' backbones: the command
``resnet-backbones-train``, whose code is :mod:`resnet_backbones.train_net`.

    python tools/train_net.py --config configs/faster_rcnn_R101.yaml
    python tools/train_net.py --config CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config CONFIG --resume          # continue after an interruption
    python tools/train_net.py --config CONFIG --dataset my_train train.json images/ \\
        DATASETS.TRAIN "('my_train',)"                           # your own COCO-format data
"""

import sys

from resnet_backbones.train_net import main

if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Convert a torchvision, timm, MSRA or detectron2 weights file for resnet_backbones.

    python tools/convert_weights.py --source torchvision --arch resnet50 resnet50-0676ba61.pth R-50-tv.pth
    python tools/convert_weights.py --source msra --arch R-50 --form C4 R-50.pkl R-50-msra.safetensors

writes OUT (our backbone names, plus metadata: source, arch, input format, pixel mean/std,
stride placement; a safetensors file, the metadata in its header, if OUT ends in
``.safetensors``) and, beside it, OUT's name with ``.yaml``: a complete config (the base config
of ``--form``, the keys that build the matching backbone, MODEL.WEIGHTS OUT). Train with it:

    python tools/train_net.py --config R-50-tv.yaml

The input is read safely (no code in a tampered pickle runs), and the result must load
strictly into the backbone the config builds, or nothing is written. IN may be a local path,
an https:// URL, resnet_backbones://NAME or hf-hub:ORG/NAME[@REVISION].

This script is ``resnet-backbones convert`` (:mod:`resnet_backbones.cli`), kept under the name
the docs use.
"""

import sys

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from resnet_backbones.cli import main

if __name__ == "__main__":
    sys.exit(main(["convert", *sys.argv[1:]]))

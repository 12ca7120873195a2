#!/usr/bin/env python
"""Export a backbone or a whole detector to TorchScript or ONNX, with its parity checked.

    python tools/export_model.py --config configs/quickstart/faster_rcnn_R18_FPN_shapes.yaml \\
        --format torchscript --output r18_fpn.ts
    python tools/export_model.py --config COCO-Detection/faster_rcnn_R_101_C4_3x.yaml \\
        --format onnx --what detector --size 512 512 --output r101_c4.onnx MODEL.WEIGHTS model.pth

writes F, loads it back (``torch.jit.load``; onnxruntime for ONNX, the ``export`` extra), runs it
and eager PyTorch on a sample of ``--size`` and prints their largest absolute and relative
differences. A backbone (``--what backbone``, the default: what ``MODEL.BACKBONE.NAME`` builds) is
scripted (TorchScript) or exported with dynamic sizes (ONNX); a detector is traced through
detectron2's TracingAdapter at ``--size``. MODEL.WEIGHTS loads as for training. See
:mod:`resnet_backbones.export`.

This script is ``resnet-backbones export`` (:mod:`resnet_backbones.cli`).
"""

import sys

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from resnet_backbones.cli import main

if __name__ == "__main__":
    sys.exit(main(["export", *sys.argv[1:]]))

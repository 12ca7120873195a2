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
"""

from __future__ import annotations

import argparse
import logging
import sys

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from resnet_backbones.presets import ARCHS, DETECTOR_FORMS
from resnet_backbones.weights.export import EXPORT_SOURCES, export_weights


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--source", required=True, choices=EXPORT_SOURCES, help="the library that wrote IN"
    )
    parser.add_argument("--arch", required=True, metavar="NAME", help=f"one of: {', '.join(ARCHS)}")
    parser.add_argument(
        "--form",
        default="FPN",
        choices=DETECTOR_FORMS,
        help="the Faster R-CNN form of the config written beside OUT (default: FPN)",
    )
    parser.add_argument(
        "input",
        metavar="IN",
        help="weights file, https:// URL, resnet_backbones://NAME or hf-hub:ORG/NAME[@REVISION]",
    )
    parser.add_argument(
        "output",
        metavar="OUT",
        help="converted file (.pth, or .safetensors); OUT.yaml is written beside it",
    )
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        out, config = export_weights(
            args.input, args.output, source=args.source, arch=args.arch, form=args.form
        )
    except (ValueError, OSError, ImportError) as e:  # WeightsError and the checks' ValueErrors
        print(f"convert_weights.py: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    print(f"Wrote {out}\nWrote {config}\nTrain with: python tools/train_net.py --config {config}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The calibration every absolute time in MODEL_ZOO.md stands beside: detectron2's own default
R-101 backbone forward (FrozenBN, stride in the 1x1 conv) on one 800x1216 image, fp32.

These machines differ up to 3x in speed and are shared: a time means something only next to
this one, measured in the same command (``make benchmark`` times the same network against ours).
"""

from __future__ import annotations

import statistics
import time
from typing import Sequence

import torch

__all__ = ["detectron2_r101", "forward_seconds", "r101_forward_seconds"]

CALIBRATION_SIZE = (800, 1216)


def detectron2_r101() -> torch.nn.Module:
    """detectron2's default R-101 backbone (res2..res5), random weights, eval mode."""
    from detectron2.config import get_cfg
    from detectron2.layers import ShapeSpec
    from detectron2.modeling.backbone.resnet import build_resnet_backbone

    cfg = get_cfg()  # detectron2's own config and builder: none of our keys is read here
    cfg.merge_from_list(
        ["MODEL.RESNETS.DEPTH", 101, "MODEL.RESNETS.OUT_FEATURES", ["res2", "res3", "res4", "res5"]]
    )
    return build_resnet_backbone(cfg, ShapeSpec(channels=3)).eval()


def forward_seconds(
    model: torch.nn.Module, repeats: int = 3, size: Sequence[int] = CALIBRATION_SIZE
) -> float:
    """Median seconds of ``model``'s forward on one ``size`` image (fp32), after a warm-up."""
    x = torch.randn(1, 3, *size)
    times = []
    with torch.no_grad():
        model(x)
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def r101_forward_seconds(repeats: int = 3, size: Sequence[int] = CALIBRATION_SIZE) -> float:
    """The calibration: median seconds of :func:`detectron2_r101`'s forward."""
    return forward_seconds(detectron2_r101(), repeats, size)

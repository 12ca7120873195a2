"""The calibration every absolute time in MODEL_ZOO.md stands beside: detectron2's own default
R-101 backbone forward (FrozenBN, stride in the 1x1 conv) on one 800x1216 image, fp32.

These machines differ up to 3x in speed and are shared: a time means something only next to
this one, measured in the same command (``make benchmark`` times the same network against ours).

The benchmark scripts also report through here: :func:`benchmark_row` is one row of ``make
benchmark``'s table (``tools/benchmark.py``), :func:`write_result` writes a script's JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from typing import Optional, Sequence

import torch

__all__ = [
    "benchmark_row",
    "detectron2_r101",
    "forward_seconds",
    "r101_forward_seconds",
    "write_result",
]

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


def benchmark_row(
    measure: str,
    baseline: str,
    baseline_value: float,
    ours_value: float,
    unit: str,
    target: Optional[float] = None,
    **extra,
) -> dict:
    """One row of ``make benchmark``'s table: ours against its baseline, measured in one process.
    ``ratio`` is baseline / ours (above 1: ours is faster or smaller), compared with ``target``
    where there is one; ``extra`` keys follow."""
    return {
        "measure": measure,
        "baseline": baseline,
        "baseline_value": baseline_value,
        "ours_value": ours_value,
        "unit": unit,
        "ratio": baseline_value / ours_value,
        "target": target,
        **extra,
    }


def write_result(path: str, result: dict) -> None:
    """Writes a benchmark's result as JSON to ``path`` (its folder made if missing)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)

#!/usr/bin/env python
"""Times a detection config's CPU training step with the fast RoIAlign backward
(``MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN`` True, resnet_backbones/modeling/roi_align.py) against
torchvision's op (False), in one process, and the RoIAlign backward alone at the config's sizes.

    python tools/benchmark_train_step.py --config configs/quickstart/faster_rcnn_R18_FPN_shapes.yaml \\
        [--iters 20] [--profile 3] [--out result.json]

Both models are built by the Trainer (the same weights) with the config's optimizer; a step is a
forward pass, a backward pass and an optimizer step on one fixed batch of SOLVER.IMS_PER_BATCH
random square images of the config's training size (INPUT.MAX_SIZE_TRAIN: the shapes images
are square) with a few random boxes each, the random generator reset to the same seed before
each model's step (the same RoI sampling). The steps alternate between the two models after a
warm-up, so that the load of a shared machine affects both alike; the medians and their ratio
are printed and, with --out, written as JSON (rows of ``make benchmark``'s table) beside the
calibration, detectron2's R-101 forward (resnet_backbones.calibration), measured in the same
command. --profile N prints torch.profiler's top ops of N steps of each model.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import torch

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

from resnet_backbones import solver
from resnet_backbones.calibration import (
    CALIBRATION_SIZE,
    benchmark_row,
    r101_forward_seconds,
    write_result,
)
from resnet_backbones.engine import Trainer, load_config
from resnet_backbones.modeling.roi_align import roi_align_backward

KEY = "MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN"


def synthetic_batch(num_images: int, size: int, num_classes: int, seed: int = 0) -> list[dict]:
    """``num_images`` random ``size`` x ``size`` images with 4 random boxes each."""
    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        xy = torch.rand(4, 2, generator=g) * size * 0.6
        wh = size * 0.08 + torch.rand(4, 2, generator=g) * size * 0.3
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (4,), generator=g)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def step(model, optimizer, batch, seed: int) -> float:
    torch.manual_seed(seed)
    start = time.perf_counter()
    with EventStorage(0):
        losses = model(batch)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    seconds = time.perf_counter() - start
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss: { {k: v.item() for k, v in losses.items()} }")
    return seconds


def roi_align_backward_times(cfg, num_images: int, size: int, repeats: int) -> dict[str, float]:
    """Median seconds of torchvision's RoIAlign backward and ours on the config's finest FPN
    level (stride 4): SOLVER.IMS_PER_BATCH images, ROI_HEADS.BATCH_SIZE_PER_IMAGE RoIs each of
    random boxes, FPN.OUT_CHANNELS channels, the box pooler's settings."""
    g = torch.Generator().manual_seed(0)
    scale, pooled = 0.25, cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION
    sampling_ratio = cfg.MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO
    aligned = cfg.MODEL.ROI_BOX_HEAD.POOLER_TYPE == "ROIAlignV2"
    channels, side = cfg.MODEL.FPN.OUT_CHANNELS, size // 4
    n = num_images * cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE
    xy = torch.rand(n, 2, generator=g) * size * 0.8
    wh = 4 + torch.rand(n, 2, generator=g) * size * 0.3
    index = torch.randint(0, num_images, (n, 1), generator=g).float()
    rois = torch.cat([index, xy, xy + wh], dim=1)
    grad = torch.randn(n, channels, pooled, pooled, generator=g)
    shape = (num_images, channels, side, side)

    def torchvision_op():
        torch.ops.torchvision._roi_align_backward(
            grad, rois, scale, pooled, pooled, *shape, sampling_ratio, aligned
        )

    def ours():
        roi_align_backward(grad, rois, shape, scale, sampling_ratio, aligned)

    roi_align(torch.zeros(shape), rois, pooled, scale, sampling_ratio, aligned)  # loads the op
    times: dict[str, list[float]] = {"torchvision": [], "ours": []}
    for i in range(repeats + 1):
        for key, f in (("torchvision", torchvision_op), ("ours", ours)):
            start = time.perf_counter()
            f()
            if i:  # the first is a warm-up
                times[key].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def print_profile(models, batch, steps: int) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name, (model, optimizer) in models.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for i in range(steps):
                step(model, optimizer, batch, i)
        print(f"\n== {name}: top ops by self CPU time over {steps} steps ==")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--iters", type=int, default=20, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--size", type=int, default=None, help="default: INPUT.MAX_SIZE_TRAIN")
    parser.add_argument("--batch", type=int, default=None, help="default: SOLVER.IMS_PER_BATCH")
    parser.add_argument("--calibration-repeats", type=int, default=3)
    parser.add_argument(
        "--calibration-size", type=int, nargs=2, default=list(CALIBRATION_SIZE), metavar=("H", "W")
    )
    parser.add_argument("--profile", type=int, default=0, help="profile this many steps after")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 1 image of 64 px, 1 step, no warm-up, the calibration once at 64x64",
    )
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.batch, args.iters, args.warmup = 64, 1, 1, 0
        args.calibration_repeats, args.calibration_size = 1, [64, 64]

    cfg_file = args.config
    cfgs = {
        name: load_config(
            cfg_file, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", KEY, value, *args.opts]
        )
        for name, value in (("torchvision", "False"), ("ours", "True"))
    }
    cfg = cfgs["ours"]
    size = args.size or cfg.INPUT.MAX_SIZE_TRAIN
    num_images = args.batch or cfg.SOLVER.IMS_PER_BATCH
    h, w = args.calibration_size
    print(
        f"calibration: detectron2's R-101 forward at {h}x{w}, median of {args.calibration_repeats}"
    )
    calibration_s = r101_forward_seconds(args.calibration_repeats, (h, w))

    models = {}
    for name, c in cfgs.items():
        torch.manual_seed(0)
        model = Trainer.build_model(c).train()
        if models:
            model.load_state_dict(next(iter(models.values()))[0].state_dict())
        models[name] = (model, solver.build_optimizer(c, model))
    batch = synthetic_batch(num_images, size, cfg.MODEL.ROI_HEADS.NUM_CLASSES)

    for i in range(args.warmup):
        for model, optimizer in models.values():
            step(model, optimizer, batch, i)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.iters):
        for key, (model, optimizer) in models.items():
            times[key].append(step(model, optimizer, batch, args.warmup + i))
    medians = {k: statistics.median(v) for k, v in times.items()}
    op = roi_align_backward_times(cfg, num_images, size, max(1, args.iters))

    rows = [
        benchmark_row(
            f"CPU training step, {os.path.basename(cfg_file)} ({num_images} images of {size} px)",
            f"the same model with torchvision's RoIAlign ({KEY} False)",
            medians["torchvision"],
            medians["ours"],
            "s/iter",
            1.5,
        ),
        benchmark_row(
            "RoIAlign backward, the box pooler's finest level at the step's sizes",
            "torchvision's CPU kernel",
            op["torchvision"],
            op["ours"],
            "s",
        ),
    ]
    result = {
        "rows": rows,
        "calibration_s": calibration_s,
        "calibration_size": [h, w],
        "machine": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads), "
        f"load average {os.getloadavg()[0]:.1f}",
        "config": cfg_file,
        "iters": args.iters,
        "s_per_iter": times,
    }
    print(f"\ncalibration {calibration_s:.2f} s; {result['machine']}")
    print(f"{'measure':<75} {'baseline':>10} {'ours':>10} {'ratio':>7}")
    for row in rows:
        print(
            f"{row['measure']:<75} {row['baseline_value']:>10.4f} {row['ours_value']:>10.4f} "
            f"{row['ratio']:>7.2f}"
        )
    if args.out:
        write_result(args.out, result)
    if args.profile:
        print_profile(models, batch, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python
"""Times Faster R-CNN training iterations of a config on synthetic COCO-sized images, ours against
detectron2's own backbone in the same process.

    python tools/benchmark_train.py --config configs/faster_rcnn_R101.yaml [--iters 20] [--batch 2]

Both models are built from the config; the reference swaps in detectron2's built-in builder
(``build_resnet_fpn_backbone`` / ``build_resnet_backbone`` and ``Res5ROIHeads``), which only
applies to networks detectron2 itself has (default keys), and gets our model's weights. Each
iteration is a forward pass, a backward pass and an SGD step on one fixed batch of random images
of COCO's size after detectron2's resizing (800x1216 and 800x1088 here, short side 800) with a few
random boxes. Iterations alternate between the two models after a warm-up, so that the load of a
shared machine affects both alike; the medians, their ratio and the peak GPU memory are printed
and, with --out, written as JSON. The default batch is 2 images, one GPU's share of detectron2's
16-image batch on 8 GPUs.

    python tools/benchmark_train.py --config ... --variants fp32 amp channels_last amp+channels_last

times our model alone in each training variant instead, alternating in the same way, against the
first ("fp32", the default): "amp" is ``SOLVER.AMP.ENABLED``'s step (bf16 autocast on the CPU;
fp16 autocast with a grad scaler on CUDA, as detectron2's AMPTrainer), "channels_last" is
``MODEL.CHANNELS_LAST``. Every variant starts from the same weights. The JSON then holds the rows of
``make benchmark``'s table (ratio = fp32 s/iter / variant s/iter, > 1 is faster) and the
calibration (detectron2's R-101 forward, measured in the same process).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from resnet_backbones.calibration import benchmark_row, r101_forward_seconds, write_result
from resnet_backbones.engine import load_config

BUILTIN = {
    "build_resnet_family_fpn_backbone": "build_resnet_fpn_backbone",
    "build_resnet_family_backbone": "build_resnet_backbone",
}
SIZES = [(800, 1216), (800, 1088), (800, 1344), (800, 1072)]
# --variants: name -> (autocast, channels_last).
VARIANTS = {
    "fp32": (False, False),
    "amp": (True, False),
    "channels_last": (False, True),
    "amp+channels_last": (True, True),
}


def synthetic_batch(
    batch: int, num_classes: int, seed: int = 0, size: tuple[int, int] | None = None
) -> list[dict]:
    """``batch`` random images with 8 random boxes each, of :data:`SIZES` in turn (or all of
    ``size``), as a detectron2 model takes them in training."""
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(batch):
        h, w = size or SIZES[i % len(SIZES)]
        n = 8
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w * 0.7, h * 0.7])
        wh = 32 + torch.rand(n, 2, generator=g) * torch.tensor([w * 0.3, h * 0.3])
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + wh], dim=1))
        instances.gt_classes = torch.randint(0, num_classes, (n,), generator=g)
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        inputs.append({"image": image, "instances": instances, "height": h, "width": w})
    return inputs


def make(cfg):
    model = build_model(cfg).train()
    params = [p for p in model.parameters() if p.requires_grad]
    # LR 0: the step does all its arithmetic, but random weights (no ImageNet init) cannot
    # diverge over the timed iterations.
    optimizer = torch.optim.SGD(params, lr=0.0, momentum=0.9, weight_decay=1e-4)
    return model, optimizer


def step(model, optimizer, batch, device: torch.device, amp: bool = False, scaler=None) -> float:
    """Seconds of one training iteration; ``amp``: the forward under autocast (bf16 on the CPU,
    fp16 with ``scaler`` on CUDA), as the trainers' AMP steps."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    with EventStorage(0), torch.autocast(device.type, dtype=dtype, enabled=amp):
        losses = model(batch)
        loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"non-finite loss: { {k: v.item() for k, v in losses.items()} }")
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--iters", type=int, default=20, help="timed iterations per model")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2, help="images per iteration")
    parser.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    parser.add_argument(
        "--size", type=int, nargs=2, default=None, metavar=("H", "W"),
        help="every image of this size (default: COCO's sizes after resizing, 800 x 1072..1344)",
    )  # fmt: skip
    parser.add_argument(
        "--variants", nargs="+", choices=sorted(VARIANTS), default=None,
        help="time our model in these training variants against the first (see above)",
    )  # fmt: skip
    parser.add_argument("--calibration-repeats", type=int, default=3)
    parser.add_argument(
        "--calibration-size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"),
        help="the calibration's input (the default is MODEL_ZOO.md's; smaller for a smoke run)",
    )  # fmt: skip
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.variants:
        return compare_variants(args)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device] + args.opts)
    torch.manual_seed(0)
    ours, ours_opt = make(cfg)
    models = {"resnet_backbones": (ours, ours_opt)}
    dev = torch.device(device)
    batch = synthetic_batch(args.batch, cfg.MODEL.ROI_HEADS.NUM_CLASSES, size=args.size)
    name = cfg.MODEL.BACKBONE.NAME
    if name in BUILTIN:
        ref_cfg = cfg.clone()
        ref_cfg.defrost()
        ref_cfg.MODEL.BACKBONE.NAME = BUILTIN[name]
        if ref_cfg.MODEL.ROI_HEADS.NAME == "Res5FamilyROIHeads":
            ref_cfg.MODEL.ROI_HEADS.NAME = "Res5ROIHeads"
        try:
            reference, ref_opt = make(ref_cfg)
            reference.load_state_dict(ours.state_dict(), strict=True)
        except (AssertionError, RuntimeError, KeyError, ValueError) as e:
            # detectron2's ResNet ignores our keys (v2, Res2Net, SE ...): another network.
            print(
                f"detectron2's own builder makes a different network ({type(e).__name__}); "
                "timing ours alone"
            )
            reference = None
        if reference is not None:
            try:
                step(reference, ref_opt, batch, dev)
                models = {"detectron2": (reference, ref_opt), **models}
            except RuntimeError as e:  # its DCN needs detectron2's compiled ops
                print(f"detectron2's own model does not run here ({e}); timing ours alone")

    for _ in range(args.warmup):
        for model, opt in models.values():
            step(model, opt, batch, dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    times: dict[str, list[float]] = {k: [] for k in models}
    start = time.monotonic()
    for i in range(args.iters):
        for key, (model, opt) in models.items():
            times[key].append(step(model, opt, batch, dev))
        if (i + 1) % 5 == 0 or i + 1 == args.iters:
            elapsed = time.monotonic() - start
            eta = elapsed / (i + 1) * (args.iters - i - 1)
            print(f"iteration {i + 1}/{args.iters} ({elapsed:.0f} s, ETA {eta:.0f} s)", flush=True)

    result = {
        "config": args.config,
        "device": (
            torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
        ),
        "torch": torch.__version__,
        "batch": args.batch,
        "image_sizes": [list(SIZES[i % len(SIZES)]) for i in range(args.batch)],
        "iters": args.iters,
        "median_s_per_iter": {k: statistics.median(v) for k, v in times.items()},
        "peak_memory_gib": (
            torch.cuda.max_memory_allocated(dev) / 2**30 if dev.type == "cuda" else None
        ),
    }
    if "detectron2" in times:
        result["ratio_ours_over_detectron2"] = (
            result["median_s_per_iter"]["resnet_backbones"]
            / result["median_s_per_iter"]["detectron2"]
        )
    print(json.dumps(result, indent=1))
    if args.out:
        write_result(args.out, result)
    return 0


def compare_variants(args) -> int:
    """``--variants``: our model in each training variant, iterations alternating, against the
    first variant."""
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    base = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device] + args.opts
    models = {}
    state = None
    for name in args.variants:
        amp, channels_last = VARIANTS[name]
        cfg = load_config(args.config, base + ["MODEL.CHANNELS_LAST", str(channels_last)])
        torch.manual_seed(0)
        model, optimizer = make(cfg)
        if state is None:
            state = model.state_dict()
        model.load_state_dict(state)
        scaler = torch.amp.GradScaler("cuda") if amp and dev.type == "cuda" else None
        models[name] = (model, optimizer, amp, scaler)
    batch = synthetic_batch(args.batch, cfg.MODEL.ROI_HEADS.NUM_CLASSES, size=args.size)
    for _ in range(args.warmup):
        for model, optimizer, amp, scaler in models.values():
            step(model, optimizer, batch, dev, amp, scaler)
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(args.iters):
        for key, (model, optimizer, amp, scaler) in models.items():
            times[key].append(step(model, optimizer, batch, dev, amp, scaler))
        print(f"iteration {i + 1}/{args.iters}", flush=True)
    medians = {k: statistics.median(v) for k, v in times.items()}
    baseline = args.variants[0]
    sizes = [list(args.size or SIZES[i % len(SIZES)]) for i in range(args.batch)]
    config_name = os.path.splitext(os.path.basename(args.config))[0]
    rows = [
        benchmark_row(
            f"{config_name} training iteration, {variant} (batch {args.batch}, "
            f"{'x'.join(map(str, sizes[0]))}, {device})",
            f"the same iteration in {baseline}",
            medians[baseline],
            medians[variant],
            "s/iter",
        )
        for variant in args.variants[1:]
    ]
    calibration = r101_forward_seconds(args.calibration_repeats, args.calibration_size)
    result = {
        "rows": rows,
        "calibration_s": calibration,
        "calibration_size": list(args.calibration_size),
        "machine": (
            torch.cuda.get_device_name(dev)
            if dev.type == "cuda"
            else f"CPU ({platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads)"
        ),
        "torch": torch.__version__,
        "config": args.config,
        "opts": args.opts,
        "batch": args.batch,
        "image_sizes": sizes,
        "iters": args.iters,
        "s_per_iter": times,
        "median_s_per_iter": medians,
    }
    print(f"{'variant':<20} {'median s/iter':>14} {'ratio ' + baseline + '/variant':>22}")
    for variant in args.variants:
        ratio = medians[baseline] / medians[variant]
        print(f"{variant:<20} {medians[variant]:>14.3f} {ratio:>22.3f}")
    size = "x".join(map(str, args.calibration_size))
    print(f"calibration (detectron2 R-101 forward, {size}): {calibration:.3f} s")
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

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

from resnet_backbones.engine import load_config

BUILTIN = {
    "build_resnet_family_fpn_backbone": "build_resnet_fpn_backbone",
    "build_resnet_family_backbone": "build_resnet_backbone",
}
SIZES = [(800, 1216), (800, 1088), (800, 1344), (800, 1072)]


def synthetic_batch(batch: int, num_classes: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    inputs = []
    for i in range(batch):
        h, w = SIZES[i % len(SIZES)]
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


def step(model, optimizer, batch, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with EventStorage(0):
        losses = model(batch)
    loss = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
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
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = load_config(args.config, ["MODEL.WEIGHTS", "", "MODEL.DEVICE", device] + args.opts)
    torch.manual_seed(0)
    ours, ours_opt = make(cfg)
    models = {"resnet_backbones": (ours, ours_opt)}
    dev = torch.device(device)
    batch = synthetic_batch(args.batch, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
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
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())

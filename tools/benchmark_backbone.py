#!/usr/bin/env python
"""Times our default R-101 backbone against detectron2's own, in one process.

    python tools/benchmark_backbone.py [--depth 101] [--size 800 1216] [--repeats 7]

Both backbones are built from the same default config (FrozenBN, stride in the 1x1 conv, no
new keys changed), ours gets detectron2's weights, and the outputs are checked equal. Forward
passes alternate between the two (d2, ours, d2, ours ...) so that load on a shared machine
affects both alike; it reports the median of each and the ratio ours / detectron2.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

# Before anything from detectron2: registers our models and, where detectron2 was built
# without its compiled ops, the stand-in for detectron2._C that its layers import.
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone.resnet import build_resnet_backbone

from resnet_backbones import add_resnet_backbones_config, build_resnet_family_backbone


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--json", help="also write the numbers to this file")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    cfg = get_cfg()
    add_resnet_backbones_config(cfg)
    cfg.MODEL.RESNETS.DEPTH = args.depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    shape = ShapeSpec(channels=3)
    reference = build_resnet_backbone(cfg, shape).eval()
    ours = build_resnet_family_backbone(cfg, shape).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)

    x = torch.randn(args.batch, 3, *args.size)
    times = {"detectron2": [], "resnet_backbones": []}
    models = {"detectron2": reference, "resnet_backbones": ours}
    with torch.no_grad():
        out_ref, out_ours = reference(x), ours(x)  # warm-up, and the equality check
        equal = all(torch.equal(out_ref[k], out_ours[k]) for k in out_ref)
        for _ in range(args.repeats):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                times[name].append(time.perf_counter() - start)

    med = {name: statistics.median(t) for name, t in times.items()}
    ratio = med["resnet_backbones"] / med["detectron2"]
    print(
        f"R-{args.depth} backbone forward, input {args.batch}x3x{args.size[0]}x{args.size[1]}, "
        f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats"
    )
    print(f"{'backbone':<18} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, t in times.items():
        print(f"{name:<18} {med[name]:>9.3f} {min(t):>7.3f} {max(t):>7.3f}")
    print(f"ratio resnet_backbones / detectron2 (median): {ratio:.3f}; outputs equal: {equal}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"args": vars(args), "times": times, "median": med, "ratio": ratio, "equal": equal},
                f,
                indent=2,
            )
    return 0 if equal else 1


if __name__ == "__main__":
    raise SystemExit(main())

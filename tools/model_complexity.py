#!/usr/bin/env python
"""Counts the parameters and multiply-accumulates of every preset, with fvcore.

    python tools/model_complexity.py            # writes docs/model_complexity.json
    python tools/model_complexity.py --check    # exits 1 if the file differs from the models

For each preset: the classifier (224x224, 1000 classes; CIFAR networks 32x32, 10 classes) and
the detection backbone res2..res5 at 800x1333; for each architecture whose published weights we
load (ARCHS, resnet_backbones/presets.py), its ImageNet classifier; plus our counts beside the
published ones of the ResNet paper and torchvision. tools/generate_model_zoo.py turns the file into MODEL_ZOO.md's
tables. The convention is in resnet_backbones/complexity.py. About 2 minutes on 2 CPU cores
(131 s on 2026-11-30, on a machine whose detectron2 R-101 forward at 800x1216 takes 2.28 s).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from resnet_backbones.complexity import arch_complexity, preset_complexity, published_comparison
from resnet_backbones.presets import ARCHS, PRESETS
from resnet_backbones.utils import atomic_write

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO, "docs", "model_complexity.json")
CONVENTION = (
    "multiply-accumulates of convolutions (deformable ones as regular convs) and fully "
    "connected layers; norms, activations, pooling and additions are not counted"
)


def measure(log=print) -> dict:
    jobs = [("presets", n, preset_complexity) for n in PRESETS]
    jobs += [("archs", n, arch_complexity) for n in ARCHS]
    data: dict = {"convention": CONVENTION, "presets": {}, "archs": {}}
    start = time.monotonic()
    for i, (group, name, count) in enumerate(jobs, start=1):
        data[group][name] = count(name)
        elapsed = time.monotonic() - start
        eta = elapsed / i * (len(jobs) - i)
        log(f"[{i}/{len(jobs)}] {name}: {data[group][name]} ({elapsed:.0f} s, ETA {eta:.0f} s)")
    data["published"] = published_comparison()
    return data


def dumps(data: dict) -> str:
    return json.dumps(data, indent=1, sort_keys=False) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", default=DEFAULT_OUT, help="the JSON file (default: %(default)s)")
    parser.add_argument(
        "--check", action="store_true", help="compare with --out instead of writing it"
    )
    args = parser.parse_args(argv)

    data = measure(log=lambda m: print(m, file=sys.stderr, flush=True))
    text = dumps(data)
    if args.check:
        try:
            with open(args.out, encoding="utf-8") as f:
                pinned = f.read()
        except FileNotFoundError:
            print(f"{args.out} does not exist; run tools/model_complexity.py", file=sys.stderr)
            return 1
        if pinned != text:
            old = json.loads(pinned)
            changed = [
                n
                for group in ("presets", "archs")
                for n in set(old.get(group, {})) | set(data[group])
                if old.get(group, {}).get(n) != data[group].get(n)
            ]
            print(
                f"{args.out} is stale: the models of {sorted(changed) or 'the comparison'} "
                "changed; run tools/model_complexity.py (and tools/generate_model_zoo.py)",
                file=sys.stderr,
            )
            return 1
        print(f"{args.out} matches the models")
        return 0
    with atomic_write(args.out, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

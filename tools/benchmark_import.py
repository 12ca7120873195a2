#!/usr/bin/env python
"""Times ``import resnet_backbones`` (``python -X importtime``), in fresh processes.

    python tools/benchmark_import.py                      # this checkout
    python tools/benchmark_import.py . /tmp/old-checkout  # two checkouts, alternating runs

Each run is a new interpreter importing ``resnet_backbones`` from the given source tree
(``PYTHONPATH``), so nothing is cached in memory between runs; runs of several trees alternate
so that the load of a shared machine affects them alike. Prints the median, min and max of
``-X importtime``'s cumulative time for ``resnet_backbones``, and which heavy modules the import
pulled in.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

HEAVY = ("detectron2.modeling", "detectron2.data", "matplotlib")


def import_once(tree: str) -> tuple[float, list[str]]:
    """Seconds that ``import resnet_backbones`` took from ``tree``, and the heavy modules it
    imported."""
    code = (
        "import json, sys, resnet_backbones; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": os.path.abspath(tree)}
    proc = subprocess.run(
        [sys.executable, "-W", "ignore", "-X", "importtime", "-c", code],
        capture_output=True, text=True, env=env, cwd="/", check=True,
    )  # fmt: skip
    for line in proc.stderr.splitlines():
        fields = [f.strip() for f in line.split("|")]
        if len(fields) == 3 and fields[2] == "resnet_backbones":
            return int(fields[1]) / 1e6, json.loads(proc.stdout)
    raise RuntimeError(
        f"no importtime line for resnet_backbones from {tree}: {proc.stderr[-2000:]}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("trees", nargs="*", default=["."], help="source trees (default: .)")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {tree: [] for tree in args.trees}
    heavy: dict[str, list[str]] = {}
    for _ in range(args.repeats):
        for tree in args.trees:
            seconds, heavy[tree] = import_once(tree)
            times[tree].append(seconds)
    print(
        f"import resnet_backbones, {args.repeats} fresh interpreters per tree (python -X importtime)"
    )
    for tree, t in times.items():
        print(
            f"{tree}: median {statistics.median(t):.2f} s (min {min(t):.2f}, max {max(t):.2f}); "
            f"imported {', '.join(heavy[tree]) or 'none'} of {', '.join(HEAVY)}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

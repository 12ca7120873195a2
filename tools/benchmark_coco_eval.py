#!/usr/bin/env python
"""Times COCO box evaluation on faster-coco-eval against pycocotools, in one process, and
checks that both give the same numbers.

    python tools/benchmark_coco_eval.py [--images 5000] [--repeats 3] [--seed 0]
        [--out results.json] [--quick]

The set is :func:`resnet_backbones.data.synthetic_coco.generate_coco_eval_set`, COCO val's size
by default: 5000 images, about 36.8k ground-truth boxes in 80 categories, 100 detections per
image (500k). One timed run is what :class:`resnet_backbones.coco_eval.COCOEvaluator` does per
evaluation after its ground truth is loaded: ``loadRes`` of the results, then COCOeval's
``evaluate``, ``accumulate`` and ``summarize`` (:func:`resnet_backbones.coco_eval.
evaluate_predictions_on_coco`): pycocotools' ``COCOeval`` (the baseline) and faster-coco-eval's
``COCOeval_faster`` (ours). The runs alternate, the order flipped every round (pycocotools,
faster, faster, pycocotools, ...), so that the load of a shared machine affects both alike; it
reports the median seconds of each and their ratio (pycocotools / faster-coco-eval, above 1:
faster-coco-eval is faster), in wall-clock time and, in a second row, in the CPU time of the
process (both implementations compute boxes on one thread; on a machine shared with other work,
CPU time varies less). Every run's 12 summary numbers, precision and recall arrays must
equal the first pycocotools run's to 1e-4, or the benchmark fails.

A calibration, detectron2's R-101 backbone forward at 800x1216 (as MODEL_ZOO.md quotes it), is
measured before and after, so that absolute seconds can be compared across machines.
``--quick`` is a smoke run of a few seconds (50 images, one round, a 64x96 calibration).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from typing import Any, Optional, Sequence

import numpy as np
import torch

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
import faster_coco_eval
from pycocotools.coco import COCO

from resnet_backbones.calibration import (
    benchmark_row,
    detectron2_r101,
    forward_seconds,
    write_result,
)
from resnet_backbones.coco_eval import COCOEvalSummary, evaluate_predictions_on_coco
from resnet_backbones.data.synthetic_coco import generate_coco_eval_set

TOLERANCE = 1e-4
IMPLS = ("pycocotools", "faster_coco_eval")


def ground_truth(dataset: dict, impl: str) -> Any:
    """The COCO of ``dataset`` for ``impl``, built as from a file (its own copy of the dicts)."""
    dataset = copy.deepcopy(dataset)
    if impl == "faster_coco_eval":
        return faster_coco_eval.COCO(dataset)
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints "creating index..."
        coco = COCO()
        coco.dataset = dataset
        coco.createIndex()
    return coco


def timed_evaluation(
    coco_gt: Any, results: list[dict], impl: str
) -> tuple[float, float, COCOEvalSummary]:
    """Wall-clock and CPU seconds of loadRes + evaluate + accumulate + summarize on a copy of ``results`` (the copy
    is not timed: ``loadRes`` writes into the dicts), and the numbers (not the COCOeval: with
    pycocotools, its matches take gigabytes)."""
    results = copy.deepcopy(results)
    with contextlib.redirect_stdout(io.StringIO()):  # both print the 12-line summary
        start, start_cpu = time.perf_counter(), time.process_time()
        coco_eval = evaluate_predictions_on_coco(coco_gt, results, "bbox", impl=impl)
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    return seconds, cpu_seconds, COCOEvalSummary.of(coco_eval)


def differences(reference: COCOEvalSummary, other: COCOEvalSummary) -> dict[str, float]:
    """Largest absolute differences of the summary, precision and recall (-1: not defined)."""
    return {
        name: float(np.max(np.abs(getattr(reference, name) - getattr(other, name))))
        for name in ("stats", "precision", "recall")
    }


def run(
    *,
    images: int = 5000,
    repeats: int = 3,
    seed: int = 0,
    calibration_repeats: int = 3,
    calibration_size: Sequence[int] = (800, 1216),
) -> dict:
    """The benchmark; returns its result (see :func:`main` for the JSON it writes)."""
    calibration_model = detectron2_r101()  # built once: building R-101 takes seconds
    calibration_before = forward_seconds(calibration_model, calibration_repeats, calibration_size)
    dataset, results = generate_coco_eval_set(images, seed=seed)
    gts = {impl: ground_truth(dataset, impl) for impl in IMPLS}
    times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    cpu_times: dict[str, list[float]] = {impl: [] for impl in IMPLS}
    reference, worst = None, {"stats": 0.0, "precision": 0.0, "recall": 0.0}
    for round_index in range(repeats):
        order = IMPLS if round_index % 2 == 0 else IMPLS[::-1]
        for impl in order:
            seconds, cpu_seconds, coco_eval = timed_evaluation(gts[impl], results, impl)
            times[impl].append(seconds)
            cpu_times[impl].append(cpu_seconds)
            print(
                f"round {round_index + 1}/{repeats}: {impl} {seconds:.2f} s "
                f"({cpu_seconds:.2f} s CPU)",
                flush=True,
            )
            if reference is None and impl == "pycocotools":
                reference = coco_eval  # round 0 runs pycocotools first: the rest compare to it
            else:
                diff = differences(reference, coco_eval)
                worst = {k: max(worst[k], v) for k, v in diff.items()}
    calibration_after = forward_seconds(calibration_model, calibration_repeats, calibration_size)
    if max(worst.values()) > TOLERANCE:
        raise AssertionError(
            f"faster-coco-eval and pycocotools disagree beyond {TOLERANCE}: largest differences {worst}"
        )
    median = {impl: statistics.median(t) for impl, t in times.items()}
    median_cpu = {impl: statistics.median(t) for impl, t in cpu_times.items()}
    stats = [round(float(v), 6) for v in reference.stats]
    measure = (
        f"COCO box evaluation, {images} images, {len(dataset['annotations'])} boxes, "
        f"{len(results)} detections (loadRes+evaluate+accumulate+summarize)"
    )
    baseline = f"pycocotools {metadata.version('pycocotools')} COCOeval"
    row = benchmark_row(measure, baseline, median["pycocotools"], median["faster_coco_eval"], "s")
    cpu_row = benchmark_row(
        measure + ", CPU time of the process",
        baseline,
        median_cpu["pycocotools"],
        median_cpu["faster_coco_eval"],
        "CPU s",
    )
    return {
        "rows": [row, cpu_row],
        "calibration_s": calibration_before,
        "calibration": {
            "what": (
                f"detectron2's R-101 backbone forward, 1x3x{calibration_size[0]}x"
                f"{calibration_size[1]}, fp32, median of {calibration_repeats}"
            ),
            "before_s": calibration_before,
            "after_s": calibration_after,
        },
        "machine": f"CPU ({platform.machine()}, {os.cpu_count()} cores), Python {sys.version.split()[0]}",
        "ours": f"faster-coco-eval {faster_coco_eval.__version__} COCOeval_faster",
        "times_s": times,
        "cpu_times_s": cpu_times,
        "largest_differences": worst,
        "tolerance": TOLERANCE,
        "stats": stats,
        "set": {
            "images": images,
            "boxes": len(dataset["annotations"]),
            "crowd_boxes": sum(a["iscrowd"] for a in dataset["annotations"]),
            "categories": len(dataset["categories"]),
            "detections": len(results),
            "seed": seed,
        },
        "load_average": os.getloadavg()[0],
        "torch_threads": torch.get_num_threads(),
    }


def print_table(result: dict) -> None:
    row, cpu_row = result["rows"]
    print(row["measure"])
    print(f"{'':40s} {'median s':>10s} {'CPU s':>10s}  runs (s)")
    for impl, label in (("pycocotools", row["baseline"]), ("faster_coco_eval", result["ours"])):
        runs = ", ".join(f"{t:.2f}" for t in result["times_s"][impl])
        wall = statistics.median(result["times_s"][impl])
        cpu = statistics.median(result["cpu_times_s"][impl])
        print(f"{label:40s} {wall:10.2f} {cpu:10.2f}  {runs}")
    print(
        f"ratio pycocotools / faster-coco-eval: {row['ratio']:.2f}x "
        f"(CPU time: {cpu_row['ratio']:.2f}x)"
    )
    print(f"equal to {result['tolerance']}: largest differences {result['largest_differences']}")
    print(f"AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl: {result['stats']}")
    c = result["calibration"]
    print(f"calibration ({c['what']}): {c['before_s']:.2f} s before, {c['after_s']:.2f} s after")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of one run of each")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--calibration-repeats", type=int, default=3)
    parser.add_argument(
        "--calibration-size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W")
    )
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--out", help="also write the result to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 50, 1
        args.calibration_repeats, args.calibration_size = 1, (64, 96)
    result = run(
        images=args.images,
        repeats=args.repeats,
        seed=args.seed,
        calibration_repeats=args.calibration_repeats,
        calibration_size=args.calibration_size,
    )
    print_table(result)
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

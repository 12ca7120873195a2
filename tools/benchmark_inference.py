#!/usr/bin/env python
"""Times the inference fast path (``resnet_backbones.optimize_for_inference``) against
detectron2's default models with the same weights, in one process.

    python tools/benchmark_inference.py [--size 800 1216] [--repeats 5] [--out FILE.json]

Rows (fp32, batch 1, one ``--size`` image):

* ``backbone``: detectron2's default R-101 (FrozenBN, stride in the 1x1 conv; the calibration
  network of :mod:`resnet_backbones.calibration`) against ours with its weights, optimised;
* ``faster_rcnn_fpn``: ``GeneralizedRCNN.inference`` of Faster R-CNN R-101-FPN built by
  detectron2's own builders against ours with the same weights, optimised; the FPN features
  (all the optimisation changes) are checked equal to 1e-4 relative, and the detections of a
  call that keeps every one (random weights score none above the default threshold of the
  timed calls) are counted equal (same class, boxes to 1e-2 px, scores to 1e-4): with random
  weights many scores nearly tie, so rounding can swap a few of them;
* with ``--compile``, ``backbone_compiled`` and ``faster_rcnn_fpn_compiled``: the same with
  ``optimize_for_inference(compile=True)`` (its compile time is reported, not timed);
* ``train_forward``: the backbone's forward in training mode, unoptimised, ours against
  detectron2's (the Python overhead the generic blocks add, if any).

Calls alternate between the two models of a row after a warm-up call each (which also checks the
outputs), so that the load of a shared machine affects both alike; each row gives the medians and
the speed-up baseline / ours. ``calibration_s`` is the median of detectron2's R-101 (the first
row's baseline). ``--profile`` prints torch.profiler's top operators of both detectors.
``--quick`` runs tiny sizes once (a smoke test of the output, not a measurement).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model

from resnet_backbones import add_resnet_backbones_config, build_resnet_family_backbone
from resnet_backbones.calibration import benchmark_row, detectron2_r101, write_result
from resnet_backbones.inference import optimize_for_inference

CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
TARGETS = {
    "backbone": 1.4,
    "faster_rcnn_fpn": 1.3,
    "train_forward": 1.0,
    "backbone_compiled": 1.4,
    "faster_rcnn_fpn_compiled": 1.3,
}
ROWS = ("backbone", "faster_rcnn_fpn", "train_forward")
FEATURE_RTOL, BOX_ATOL, SCORE_ATOL = 1e-4, 1e-2, 1e-4


def _config(depth: int):
    cfg = get_cfg()
    add_resnet_backbones_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return cfg


def alternate(calls: dict, repeats: int) -> dict:
    """Seconds of each zero-argument call (a list per name), called in turn ``repeats`` times."""
    times = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


def _features_close(expected: dict, actual: dict) -> bool:
    return list(expected) == list(actual) and all(
        (actual[k] - v).abs().max() <= FEATURE_RTOL * v.abs().max() for k, v in expected.items()
    )


def _matched_detections(expected, actual) -> int:
    """How many of ``expected``'s detections ``actual`` has too: the same class, a box within
    BOX_ATOL px and a score within SCORE_ATOL."""
    if len(actual) == 0:
        return 0
    same_class = expected.pred_classes[:, None] == actual.pred_classes[None, :]
    box_close = (expected.pred_boxes.tensor[:, None] - actual.pred_boxes.tensor[None]).abs().amax(
        -1
    ) <= BOX_ATOL
    score_close = (expected.scores[:, None] - actual.scores[None]).abs() <= SCORE_ATOL
    return int((same_class & box_close & score_close).any(1).sum())


def _row(measure: str, baseline: str, times: dict, checked: bool, **extra) -> dict:
    return benchmark_row(
        measure,
        baseline,
        statistics.median(times["baseline"]),
        statistics.median(times["ours"]),
        "s",
        TARGETS[measure],
        outputs_checked=checked,
        baseline_times=times["baseline"],
        ours_times=times["ours"],
        **extra,
    )


def bench_backbone(args, x, compile: bool = False) -> dict:
    reference = detectron2_r101()
    ours = build_resnet_family_backbone(_config(101), ShapeSpec(channels=3)).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    optimize_for_inference(ours, compile=compile)
    with torch.no_grad():
        start = time.perf_counter()
        checked = _features_close(reference(x), ours(x))  # the first call compiles
        first_call = time.perf_counter() - start
        times = alternate({"baseline": lambda: reference(x), "ours": lambda: ours(x)}, args.repeats)
    return _row(
        "backbone_compiled" if compile else "backbone",
        "detectron2 R-101 backbone (default, FrozenBN)", times, checked,
        shape=list(x.shape), first_call_s=first_call,
    )  # fmt: skip


def _detectors(args):
    cfg = _config(args.depth)
    cfg.merge_from_file(os.path.join(CONFIGS, "Base-RCNN-FPN.yaml"))
    cfg.MODEL.RESNETS.DEPTH = args.depth
    reference_cfg = cfg.clone()
    reference_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    reference = build_model(reference_cfg).eval()
    ours = build_model(cfg).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours


def bench_detector(args, image, compile: bool = False) -> dict:
    reference, ours = _detectors(args)
    optimize_for_inference(ours, compile=compile)
    h, w = image.shape[1:]
    inputs = [{"image": image, "height": h, "width": w}]
    with torch.no_grad():
        start = time.perf_counter()
        batched = reference.preprocess_image(inputs).tensor
        features_checked = _features_close(reference.backbone(batched), ours.backbone(batched))
        first_call = time.perf_counter() - start  # the first call of ours compiles
        # Checked with every detection kept: random weights score no box above the default
        # 0.05 threshold, which the timed calls keep (detectron2's default work).
        predictors = (reference.roi_heads.box_predictor, ours.roi_heads.box_predictor)
        threshold = predictors[0].test_score_thresh
        for predictor in predictors:
            predictor.test_score_thresh = 0.0
        expected = reference.inference(inputs)[0]["instances"]
        actual = ours.inference(inputs)[0]["instances"]
        matched = _matched_detections(expected, actual)
        for predictor in predictors:
            predictor.test_score_thresh = threshold
        times = alternate(
            {
                "baseline": lambda: reference.inference(inputs),
                "ours": lambda: ours.inference(inputs),
            },
            args.repeats,
        )
        if args.profile:
            _profile({"detectron2": reference, "ours (optimised)": ours}, inputs)
    return _row(
        "faster_rcnn_fpn_compiled" if compile else "faster_rcnn_fpn",
        f"detectron2 Faster R-CNN R-{args.depth}-FPN inference (default builders)",
        times,
        features_checked,
        detections=len(expected),
        detections_matched=matched,
        first_call_s=first_call,
    )


def _profile(models: dict, inputs) -> None:
    from torch.profiler import ProfilerActivity, profile

    for name, model in models.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model.inference(inputs)
        print(f"--- torch.profiler, {name}: top operators by self CPU time")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


def bench_train_forward(args, x) -> dict:
    reference = detectron2_r101().train()
    ours = build_resnet_family_backbone(_config(101), ShapeSpec(channels=3)).train()
    ours.load_state_dict(reference.state_dict(), strict=True)
    checked = _features_close(reference(x), ours(x))
    times = alternate({"baseline": lambda: reference(x), "ours": lambda: ours(x)}, args.repeats)
    return _row(
        "train_forward",
        "detectron2 R-101 backbone, training-mode forward (both unoptimised)",
        times,
        checked,
        shape=list(x.shape),
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=101, help="of the detector row's ResNet")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument(
        "--only", nargs="+", choices=ROWS, default=list(ROWS), help="rows to measure"
    )
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also the backbone and detector rows with optimize_for_inference(compile=True)",
    )
    parser.add_argument("--profile", action="store_true", help="profile both detectors once")
    parser.add_argument("--quick", action="store_true", help="64x96 images, one repeat (smoke)")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats = (64, 96), 1
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, *args.size)
    image = torch.randint(0, 256, (3, *args.size), dtype=torch.uint8).float()

    rows = []
    if "backbone" in args.only:
        rows.append(bench_backbone(args, x))
        if args.compile:
            rows.append(bench_backbone(args, x, compile=True))
    if "faster_rcnn_fpn" in args.only:
        rows.append(bench_detector(args, image))
        if args.compile:
            rows.append(bench_detector(args, image, compile=True))
    if "train_forward" in args.only:
        rows.append(bench_train_forward(args, x))
    calibration = rows[0]["baseline_value"] if "backbone" in args.only else None
    result = {
        "rows": rows,
        "calibration_s": calibration,
        "calibration_size": list(args.size),
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "args": vars(args),
    }
    print(
        f"fp32, batch 1, {args.size[0]}x{args.size[1]}, {torch.get_num_threads()} threads, "
        f"{args.repeats} alternating repeats, medians; calibration (detectron2 R-101): "
        + (f"{calibration:.3f} s" if calibration is not None else "not measured")
    )
    print(f"{'measure':<26} {'baseline s':>10} {'ours s':>8} {'speed-up':>8} {'target':>6} checked")
    for r in rows:
        matched = (
            f", detections matched {r['detections_matched']}/{r['detections']}"
            if "detections" in r
            else ""
        )
        first = f", first call {r['first_call_s']:.1f} s" if "first_call_s" in r else ""
        print(
            f"{r['measure']:<26} {r['baseline_value']:>10.3f} {r['ours_value']:>8.3f} "
            f"{r['ratio']:>8.3f} {r['target']:>6} {r['outputs_checked']}{matched}{first}"
        )
    if args.out:
        write_result(args.out, result)
    return 0 if all(r["outputs_checked"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())

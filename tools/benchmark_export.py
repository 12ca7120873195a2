#!/usr/bin/env python
"""Times the exported forms of the R-101 backbone against eager PyTorch, on the CPU, in one
process.

    python tools/benchmark_export.py [--size 800 1216] [--repeats 5] [--out FILE.json]

Our default R-101 (detectron2's: FrozenBN, stride in the 1x1 conv), random weights, fp32, batch 1,
one ``--size`` image, in four forms:

* eager: the module as built, in eval mode (the baseline of every row);
* eager + ``optimize_for_inference`` (resnet_backbones.inference: norms folded, channels_last);
* TorchScript: the file of ``resnet_backbones.export`` (``torch.jit.script``), ``torch.jit.load``-ed;
* ONNX Runtime: the ONNX file of ``resnet_backbones.export``, run by onnxruntime's CPU provider
  with as many threads as torch.

Each form's first call is a warm-up that also checks its features against eager to 1e-4
relative, then ``--warmup`` more (TorchScript's profiling executor optimises its graph during its
first calls); then the calls alternate between the forms and detectron2's own R-101 (the
calibration of :mod:`resnet_backbones.calibration`), so that the load of a shared machine affects
all alike. Each row gives the medians and the speed-up eager / form. ``--quick`` runs tiny sizes
once (a smoke test of the output, not a measurement).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import tempfile
import time

import torch

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.config import get_cfg

from resnet_backbones import add_resnet_backbones_config, build_resnet_family_backbone
from resnet_backbones.calibration import benchmark_row, detectron2_r101, write_result
from resnet_backbones.export import FEATURE_RTOL, export_backbone, load_onnx
from resnet_backbones.inference import optimize_for_inference

BASELINE = "eager"
# measure -> the form it times.
ROWS = {
    "backbone_optimize_for_inference": "eager + optimize_for_inference",
    "backbone_torchscript": "TorchScript (scripted, torch.jit.load)",
    "backbone_onnxruntime": "ONNX Runtime (CPU)",
}


def _backbone(depth: int) -> torch.nn.Module:
    from detectron2.layers import ShapeSpec

    cfg = add_resnet_backbones_config(get_cfg())
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    return build_resnet_family_backbone(cfg, ShapeSpec(channels=3)).eval()


def _forms(backbone: torch.nn.Module, x: torch.Tensor, folder: str) -> dict:
    """name -> a zero-argument call returning the features as {name: tensor}."""
    optimized = optimize_for_inference(copy.deepcopy(backbone))
    ts_path = export_backbone(backbone, os.path.join(folder, "r101.ts"), "torchscript", x)
    onnx_path = export_backbone(backbone, os.path.join(folder, "r101.onnx"), "onnx", x)
    scripted = torch.jit.load(ts_path)
    session = load_onnx(onnx_path)
    names = [o.name for o in session.get_outputs()]
    feed = {"image": x.numpy()}

    def onnx_call() -> dict:
        return {n: torch.from_numpy(o) for n, o in zip(names, session.run(None, feed))}

    return {
        BASELINE: lambda: backbone(x),
        ROWS["backbone_optimize_for_inference"]: lambda: optimized(x),
        ROWS["backbone_torchscript"]: lambda: scripted(x),
        ROWS["backbone_onnxruntime"]: onnx_call,
    }


def _close(expected: dict, actual: dict) -> bool:
    return all(
        (actual[n].float() - e).abs().max() <= FEATURE_RTOL * e.abs().max()
        for n, e in expected.items()
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls after the check")
    parser.add_argument("--depth", type=int, default=101)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--quick", action="store_true", help="64x96 images, one repeat (smoke)")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.repeats, args.warmup = (64, 96), 1, 0
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(1, 3, *args.size)
    backbone = _backbone(args.depth)
    calibration_net = detectron2_r101()
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        start = time.perf_counter()
        forms = _forms(backbone, x, folder)
        export_s = time.perf_counter() - start
        expected = forms[BASELINE]()
        checked = {name: _close(expected, call()) for name, call in forms.items()}
        for _ in range(args.warmup):
            for call in forms.values():
                call()
        calibration_net(x)
        calls = {**forms, "calibration": lambda: calibration_net(x)}
        times = {name: [] for name in calls}
        for _ in range(args.repeats):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) for name, t in times.items()}
    rows = [
        benchmark_row(
            measure,
            f"eager R-{args.depth} backbone (ours, as built)",
            medians[BASELINE],
            medians[form],
            "s",
            None,
            form=form,
            outputs_checked=checked[form],
        )
        for measure, form in ROWS.items()
    ]
    result = {
        "rows": rows,
        "calibration_s": medians["calibration"],
        "calibration_size": list(args.size),
        "export_s": export_s,
        "machine": f"{platform.machine()}, {platform.processor() or platform.system()}, "
        f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
        "args": vars(args),
    }
    print(
        f"R-{args.depth} backbone, fp32, batch 1, {args.size[0]}x{args.size[1]}, "
        f"{torch.get_num_threads()} threads, {args.repeats} alternating repeats, medians; "
        f"calibration (detectron2 R-101): {medians['calibration']:.3f} s; both exports took "
        f"{export_s:.1f} s"
    )
    print(f"{'form':<42} {'s':>8} {'speed-up':>8} checked")
    print(f"{BASELINE:<42} {medians[BASELINE]:>8.3f} {1.0:>8.3f} {checked[BASELINE]}")
    for r in rows:
        print(f"{r['form']:<42} {r['ours_value']:>8.3f} {r['ratio']:>8.3f} {r['outputs_checked']}")
    if args.out:
        write_result(args.out, result)
    return 0 if all(checked.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

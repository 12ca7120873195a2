#!/usr/bin/env python
"""Peak activation memory of a training step with and without activation checkpointing.

    python tools/benchmark_memory.py [--config configs/faster_rcnn_R101.yaml] [--batch 2]
        [--size 800 1216] [--stages res2 res3 res4 res5] [--out FILE.json] [--quick]

Each variant runs in a fresh process (this script again, ``--child``), so that no allocation of
another variant is counted: it builds the model and the input, records its resident memory, runs
one forward and backward pass in training mode, and reports the peak resident memory
(``getrusage``'s ``ru_maxrss``) minus the memory before the step; on CUDA, the peak allocated
memory (``torch.cuda.max_memory_allocated``) minus the allocated memory before the step. That
difference is the step's activations, its gradients and the allocator's slack, the same in both
variants but for the activations.

Two models, each without and with ``MODEL.RESNETS.ACTIVATION_CHECKPOINTING`` (default: every
stage res2..res5; the frozen ones, ``FREEZE_AT`` 2 by default, keep no activations anyway):

* "backbone": the config's backbone (ResNet-family + FPN), the loss the sum of its outputs;
* "detector": the whole Faster R-CNN on synthetic images with boxes (tools/benchmark_train.py's
  batch), the loss the sum of its losses (skipped with ``--backbone-only``).

On the CPU each comparison runs under two allocator settings (``--allocators``), because glibc's
malloc keeps freed blocks of up to 32 MiB in its heap (its mmap threshold grows with the blocks
freed), so the peak RSS also counts memory it holds but the step no longer uses, and the more so
the more tensors the step frees and allocates again (a recomputation does):

* "glibc default": the RSS a user sees with no setting;
* "blocks returned": ``MALLOC_MMAP_THRESHOLD_=131072`` in the child's environment, so that every
  block over 128 KiB is returned when freed and the RSS follows the tensors alive.

The JSON (``--out``) has the rows of ``make benchmark``'s table (unit MiB, ratio = without /
with, > 1 is less memory) and the calibration (detectron2's R-101 forward, measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys

import torch

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.events import EventStorage

from resnet_backbones.calibration import benchmark_row, r101_forward_seconds, write_result
from resnet_backbones.engine import load_config

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CONFIG = os.path.join(os.path.dirname(HERE), "configs", "faster_rcnn_R101.yaml")
MODELS = ("backbone", "detector")
# 40% less memory is a ratio without / with of 1 / 0.6 (issue 12).
TARGET_RATIO = 1 / 0.6
# The child's malloc settings on the CPU (see the module's docstring); CUDA has its own allocator.
ALLOCATORS = {
    "glibc default": {},
    "blocks returned": {"MALLOC_MMAP_THRESHOLD_": "131072"},
}


def _rss_mib() -> float:
    """This process's resident memory now."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> dict:
    """Builds one variant, runs one training step and returns its memory (in this process)."""
    opts = ["MODEL.WEIGHTS", "", "MODEL.DEVICE", args.device, *args.opts]
    opts += ["MODEL.RESNETS.ACTIVATION_CHECKPOINTING", str(list(args.stages))]
    cfg = load_config(args.config, opts)
    device = torch.device(args.device)
    torch.manual_seed(0)
    if args.model == "backbone":
        model = build_backbone(cfg).to(device).train()
        batch = torch.randn(args.batch, 3, *args.size, device=device)
    else:
        sys.path.insert(0, HERE)
        from benchmark_train import synthetic_batch

        model = build_model(cfg).train()
        batch = synthetic_batch(args.batch, cfg.MODEL.ROI_HEADS.NUM_CLASSES, size=args.size)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2**20
    else:
        before = _rss_mib()
    with EventStorage(0):
        out = model(batch)
    loss = sum(out.values()) if args.model == "detector" else sum(o.sum() for o in out.values())
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        peak = _peak_rss_mib()
    return {"before_mib": before, "peak_mib": peak, "step_mib": peak - before}


def run_variant(args, model: str, stages: list[str], allocator: str = "glibc default") -> dict:
    """:func:`child` in a fresh process, with the malloc settings of ``ALLOCATORS[allocator]``."""
    command = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--model",
        model,
        "--config",
        args.config,
        "--batch",
        str(args.batch),
        "--size",
        *map(str, args.size),
        "--device",
        args.device,
        "--stages",
        *stages,
        "--",
        *args.opts,
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(ALLOCATORS[allocator])
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=DEFAULT_CONFIG)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W"))
    parser.add_argument(
        "--stages",
        nargs="*",
        default=["res2", "res3", "res4", "res5"],
        help="the checkpointed stages (MODEL.RESNETS.ACTIVATION_CHECKPOINTING)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (peak RSS) or cuda (max allocated)")
    parser.add_argument("--backbone-only", action="store_true", help="skip the whole detector")
    parser.add_argument(
        "--allocators",
        nargs="+",
        choices=list(ALLOCATORS),
        default=list(ALLOCATORS),
        help="the CPU malloc settings to measure under (CUDA: one run, its own allocator)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: R-18 at 64x96, calibration at that size",
    )
    parser.add_argument("--calibration-repeats", type=int, default=3)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model", choices=MODELS, default="backbone", help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    if args.opts[:1] == ["--"]:
        args.opts = args.opts[1:]
    if args.child:
        print(json.dumps(child(args)))
        return 0
    calibration_size = (800, 1216)
    if args.quick:
        args.size, calibration_size = (64, 96), (64, 96)
        args.opts = [
            *args.opts,
            "MODEL.RESNETS.DEPTH",
            "18",
            "MODEL.RESNETS.RES2_OUT_CHANNELS",
            "64",
        ]
        args.calibration_repeats = 1

    where = "GPU max allocated" if args.device.startswith("cuda") else "CPU peak RSS"
    shape = f"batch {args.batch} at {args.size[0]}x{args.size[1]}"
    name = os.path.splitext(os.path.basename(args.config))[0]
    rows, variants = [], {}
    allocators = ["cuda"] if args.device.startswith("cuda") else args.allocators
    for model in MODELS[:1] if args.backbone_only else MODELS:
        for allocator in allocators:
            setting = "glibc default" if allocator == "cuda" else allocator
            plain = run_variant(args, model, [], setting)
            checkpointed = run_variant(args, model, list(args.stages), setting)
            variants[f"{model}, {allocator}"] = {"without": plain, "with": checkpointed}
            rows.append(
                benchmark_row(
                    f"{name} {model} training step memory, {shape} ({where}"
                    + ("" if allocator == "cuda" else f", malloc {allocator}")
                    + f"), activation checkpointing of {' '.join(args.stages)}",
                    "the same step without activation checkpointing",
                    plain["step_mib"],
                    checkpointed["step_mib"],
                    "MiB",
                    TARGET_RATIO if model == "backbone" else None,
                )
            )
    calibration = r101_forward_seconds(args.calibration_repeats, calibration_size)
    result = {
        "rows": rows,
        "variants": variants,
        "calibration_s": calibration,
        "calibration_size": list(calibration_size),
        "machine": (
            torch.cuda.get_device_name(args.device)
            if args.device.startswith("cuda")
            else f"CPU ({platform.machine()}, {os.cpu_count()} cores, "
            f"{torch.get_num_threads()} threads)"
        ),
        "torch": torch.__version__,
        "config": args.config,
        "opts": args.opts,
    }
    print(f"{'measure':<70} {'without MiB':>12} {'with MiB':>9} {'ratio':>6} {'less':>5}")
    for row in rows:
        less = 1 - row["ours_value"] / row["baseline_value"]
        print(
            f"{row['measure'][:70]:<70} {row['baseline_value']:>12.0f} {row['ours_value']:>9.0f} "
            f"{row['ratio']:>6.2f} {less:>5.0%}"
        )
    print(f"calibration (detectron2 R-101 forward at {calibration_size}): {calibration:.3f} s")
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

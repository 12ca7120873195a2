#!/usr/bin/env python
"""Every speed and memory ratio of the library in one table (``make benchmark``).

    python tools/benchmark.py [--only NAME ...] [--quick] [--out output/benchmark.json]

Each benchmark is its own script, run here as a subprocess (one process per benchmark: a fresh
allocator for the memory figures, and no state carried from one measurement to the next). Each
times ours against its baseline *in that process*, alternating the two and taking medians, and
writes its rows as JSON (``--out``): ``{"rows": [{"measure", "baseline", "baseline_value",
"ours_value", "unit", "ratio", "target"}], "calibration_s": ...}``, where ``ratio`` is
baseline / ours (above 1: ours is faster or smaller) and ``calibration_s`` is detectron2's
R-101 forward at 800x1216 (:mod:`resnet_backbones.calibration`) measured in the same process,
beside which every absolute time stands. This script prints the rows of all of them as one
markdown table and writes them, with each script's command, to ``--out``.

A benchmark that fails is reported in the table (its command and exit status) and the others
still run; the exit status is then 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

import torch

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclass(frozen=True)
class Benchmark:
    name: str
    script: str  # under tools/
    args: tuple[str, ...] = ()
    quick_args: tuple[str, ...] = ()  # replaces ``args`` with --quick: a smoke run in seconds


QUICKSTART = "configs/quickstart/faster_rcnn_R18_FPN_shapes.yaml"
# Every benchmark of issue 12, in the order of its sections.
BENCHMARKS: tuple[Benchmark, ...] = (
    # optimize_for_inference, eager and compiled: the R-101 backbone and Faster R-CNN R-101-FPN
    # at 800x1216 against detectron2's default model with the same weights; our training-mode
    # forward against its.
    Benchmark("inference", "benchmark_inference.py", ("--repeats", "5", "--compile"), ("--quick",)),
    # bf16 autocast and channels_last training against fp32, on the quickstart's step.
    Benchmark(
        "train_variants",
        "benchmark_train.py",
        # fmt: off
        (
            "--config",
            QUICKSTART,
            "--variants",
            "fp32",
            "amp",
            "channels_last",
            "amp+channels_last",
            "--size",
            "192",
            "192",
            "--batch",
            "6",
            "--iters",
            "10",
            "--warmup",
            "2",
        ),
        (
            "--config",
            QUICKSTART,
            "--variants",
            "fp32",
            "amp",
            "--size",
            "64",
            "64",
            "--batch",
            "1",
            "--iters",
            "1",
            "--warmup",
            "0",
            "--calibration-repeats",
            "1",
            "--calibration-size",
            "64",
            "64",
        ),
        # fmt: on
    ),
    # Activation checkpointing: peak memory of a training step, R-101-FPN, batch 2 at 800x1216.
    Benchmark("memory", "benchmark_memory.py", (), ("--quick", "--backbone-only")),
    # The quickstart's training step with the fast CPU RoIAlign backward against torchvision's.
    Benchmark(
        "train_step",
        "benchmark_train_step.py",
        ("--config", QUICKSTART, "--iters", "10"),
        ("--config", QUICKSTART, "--quick"),
    ),
    # faster-coco-eval against pycocotools on a generated COCO-sized result set.
    Benchmark("coco_eval", "benchmark_coco_eval.py", (), ("--quick",)),
    # Issue 14: the exported R-101 backbone at 800x1216 (TorchScript, ONNX Runtime) and eager with
    # optimize_for_inference, against eager.
    Benchmark("export", "benchmark_export.py", ("--repeats", "5"), ("--quick",)),
)


def run_one(bench: Benchmark, quick: bool, workdir: str) -> dict:
    """Runs one benchmark script; returns its JSON, with its command, exit status and wall time."""
    out = os.path.join(workdir, f"{bench.name}.json")
    command = [
        sys.executable,
        os.path.join(HERE, bench.script),
        *(bench.quick_args if quick else bench.args),
        "--out",
        out,
    ]
    printable = " ".join(["python", f"tools/{bench.script}", *command[2:-2]])
    print(f"\n=== {bench.name}: {printable}", flush=True)
    start = time.perf_counter()
    status = subprocess.call(command)
    result = {"rows": []}
    if status == 0:
        try:
            with open(out) as f:
                result = json.load(f)
        except (OSError, ValueError) as e:
            status = f"no readable result ({e})"
    result.update(
        name=bench.name, command=printable, status=status, wall_s=time.perf_counter() - start
    )
    return result


def _number(value: float | None, unit: str = "") -> str:
    if value is None:
        return ""
    text = f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return f"{text} {unit}".strip()


def markdown_table(results: list[dict]) -> str:
    """The rows of every result as one markdown table; a failed benchmark is one row saying so."""
    lines = [
        "| benchmark | measure | baseline | baseline | ours | ratio | target | calibration |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for result in results:
        calibration = _number(result.get("calibration_s"), "s")
        if result["status"] != 0:
            lines.append(
                f"| {result['name']} | FAILED (exit status {result['status']}): "
                f"`{result['command']}` | | | | | | |"
            )
            continue
        for row in result["rows"]:
            target = row.get("target")
            if target is None:
                target_text = ""
            else:
                target_text = f"{target:g}x " + ("met" if row["ratio"] >= target else "NOT met")
            lines.append(
                f"| {result['name']} | {row['measure']} | {row['baseline']} | "
                f"{_number(row['baseline_value'], row['unit'])} | "
                f"{_number(row['ours_value'], row['unit'])} | {row['ratio']:.2f}x | "
                f"{target_text} | {calibration} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    names = [b.name for b in BENCHMARKS]
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"of {names}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks the scripts run")
    parser.add_argument("--out", help="write every result (rows, commands, times) as JSON here")
    args = parser.parse_args(argv)

    chosen = [b for b in BENCHMARKS if not args.only or b.name in args.only]
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="resnet_backbones_benchmark_") as workdir:
        results = [run_one(bench, args.quick, workdir) for bench in chosen]
    table = markdown_table(results)
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"\n{table}\n\nMachine: {machine}; {time.perf_counter() - start:.0f} s in all.")
    print(
        "ratio = baseline / ours (above 1: ours is faster or smaller); calibration: detectron2's "
        "R-101 forward at 800x1216 in the same process."
    )
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"machine": machine, "results": results, "table": table}, f, indent=2)
    return 0 if all(r["status"] == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())

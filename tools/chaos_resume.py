#!/usr/bin/env python
"""Kill a training run with SIGKILL at K random moments, resume it each time, and check that it
ends exactly where an uninterrupted run ends.

    python tools/chaos_resume.py --config CONFIG --kills 10 [--dataset NAME JSON ROOT] [KEY VALUE ...]
    python tools/chaos_resume.py --tool pretrain --config CONFIG [--image-folder NAME ROOT] ...

1. Trains the config straight through into ``WORKDIR/straight``.
2. Trains it again into ``WORKDIR/chaos``, with ``--resume`` every time, killing the process
   (SIGKILL: no cleanup, no handler) K times. Each kill is at a random moment of one of two
   kinds, alternating: between writes (a random delay of up to 1.5 s after the run has made
   progress), or during a checkpoint write (as soon as a temporary checkpoint file appears;
   where the temporary is still there after the kill, the write was torn).
3. Lets the last ``--resume`` run to the end, and compares the two ``model_final.pth``: every
   model tensor, every optimizer-state tensor and (pretraining with ``CLS.EMA_DECAY``) every
   tensor of the EMA must be bitwise equal.

``--tool train`` runs ``tools/train_net.py`` (detection), ``--tool pretrain``
``tools/pretrain_net.py`` (classification).

Prints one line per kill (its kind, the checkpoint it left behind) and a JSON summary (kills,
kills during writes, writes torn, temporaries left at the end, tensors compared, bitwise
equality); exits 1 where the weights differ, a run failed or a temporary file is left. Use a config whose checkpoint period is short
(``SOLVER.CHECKPOINT_PERIOD 1``) so that every kill finds something to resume from;
``tests/test_resume.py`` runs it with a small K on a tiny config.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from typing import Any, Optional, Sequence

import torch

from resnet_backbones.utils import temporary_target

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {
    "train": [sys.executable, os.path.join(REPO, "tools", "train_net.py")],
    "pretrain": [sys.executable, os.path.join(REPO, "tools", "pretrain_net.py")],
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _command(
    config: Sequence[str],
    output_dir: str,
    opts: Sequence[str],
    datasets: Sequence[Sequence[str]],
    tool: str = "train",
) -> list[str]:
    args = list(TOOLS[tool])
    for c in config:
        args += ["--config", c]
    for dataset in datasets:
        args += ["--dataset", *dataset]
    return args + ["--resume", "OUTPUT_DIR", output_dir, *opts]


def _temporaries(output_dir: str, prefix: str = "") -> list[str]:
    """The temporary files of atomic writes in ``output_dir`` whose target's name starts with
    ``prefix``."""
    try:
        names = os.listdir(output_dir)
    except FileNotFoundError:
        return []
    targets = ((n, temporary_target(n)) for n in names)
    return [n for n, target in targets if target is not None and target.startswith(prefix)]


def _last_checkpoint(output_dir: str) -> Optional[str]:
    try:
        with open(os.path.join(output_dir, "last_checkpoint")) as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def _progress(output_dir: str) -> tuple[Optional[str], int]:
    """The last checkpoint's name and the size of metrics.json: both change as the run goes."""
    try:
        size = os.path.getsize(os.path.join(output_dir, "metrics.json"))
    except FileNotFoundError:
        size = 0
    return _last_checkpoint(output_dir), size


def run_and_kill(
    command: list[str], output_dir: str, kind: str, rng: random.Random, log, timeout: float
) -> dict[str, Any]:
    """Starts ``command``, kills it at a moment of ``kind`` ("write" or "step"), returns what
    happened (``killed`` False where the run ended first)."""
    before = _progress(output_dir)
    # Left by the previous kill (the new process deletes them as it starts): not a write of this one.
    stale = set(_temporaries(output_dir))
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env())
    start = time.monotonic()
    moment = None
    delay = rng.uniform(0.0, 1.5)
    while process.poll() is None and time.monotonic() - start < timeout:
        if kind == "write" and set(_temporaries(output_dir, "model_")) - stale:
            moment = "during a checkpoint write"
            break
        if kind == "step" and _progress(output_dir) != before:
            time.sleep(delay)
            moment = f"{delay:.2f} s after progress"
            break
        time.sleep(0.002)
    if process.poll() is not None:
        return {"kind": kind, "killed": False, "returncode": process.returncode}
    if moment is None:
        process.kill()
        process.wait()
        raise RuntimeError(f"the run made no progress in {timeout:.0f} s (see {log})")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return {
        "kind": kind,
        "killed": True,
        "moment": moment,
        # A temporary left behind: the kill tore a write (which nothing reads).
        "torn_temporaries": sorted(set(_temporaries(output_dir)) - stale),
        "last_checkpoint_after": _last_checkpoint(output_dir),
    }


def _tensors(path: str) -> dict[str, torch.Tensor]:
    """The model tensors, the optimizer-state tensors and the EMA's tensors (where the checkpoint
    has one) of a checkpoint, by name."""
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    out = {f"model.{k}": v for k, v in checkpoint["model"].items()}
    out.update({f"ema.{k}": v for k, v in checkpoint.get("ema", {}).items()})
    optimizer = checkpoint.get("trainer", {}).get("_trainer", {}).get("optimizer", {})
    for pid, state in optimizer.get("state", {}).items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                out[f"optimizer.{pid}.{k}"] = v
    return out


def compare(straight: str, resumed: str) -> dict[str, Any]:
    """Bitwise comparison of two checkpoints' model and optimizer tensors."""
    a, b = _tensors(straight), _tensors(resumed)
    different = sorted(
        k for k in a.keys() & b.keys() if a[k].shape != b[k].shape or not torch.equal(a[k], b[k])
    )
    max_diff = max(
        (
            (a[k].double() - b[k].double()).abs().max().item()
            for k in different
            if a[k].shape == b[k].shape
        ),
        default=0.0,
    )
    return {
        "tensors": len(a),
        "optimizer_tensors": sum(k.startswith("optimizer.") for k in a),
        "ema_tensors": sum(k.startswith("ema.") for k in a),
        "missing": sorted(a.keys() ^ b.keys()),
        "different": different,
        "max_abs_difference": max_diff,
        "bitwise_equal": not different and a.keys() == b.keys(),
    }


def chaos_resume(
    config: Sequence[str],
    opts: Sequence[str],
    kills: int,
    workdir: str,
    seed: int = 0,
    timeout: float = 600.0,
    datasets: Sequence[Sequence[str]] = (),
    echo=print,
    tool: str = "train",
) -> dict[str, Any]:
    """The whole experiment (see the module docstring); returns its summary."""
    rng = random.Random(seed)
    straight, chaos = os.path.join(workdir, "straight"), os.path.join(workdir, "chaos")
    for folder in (straight, chaos):
        shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, "chaos.log")
    started = time.monotonic()
    subprocess.run(
        _command(config, straight, opts, datasets, tool),
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
        timeout=timeout,
    )
    straight_s = time.monotonic() - started
    echo(f"uninterrupted run: {straight_s:.1f} s")
    events = []
    for k in range(kills):
        kind = ("step", "write")[k % 2]
        event = run_and_kill(
            _command(config, chaos, opts, datasets, tool), chaos, kind, rng, log, timeout
        )
        events.append(event)
        echo(f"kill {k + 1}/{kills}: {json.dumps(event)}")
        if not event["killed"]:
            break  # the run finished before this kill
    final = subprocess.run(
        _command(config, chaos, opts, datasets, tool),
        stdout=open(log, "ab"),
        stderr=subprocess.STDOUT,
        env=_env(),
        timeout=timeout,
    )
    summary = {
        "kills": sum(e["killed"] for e in events),
        "kills_during_writes": sum(e["killed"] and e["kind"] == "write" for e in events),
        "writes_torn": sum(bool(e.get("torn_temporaries")) for e in events),
        "final_returncode": final.returncode,
        "leftover_temporaries": _temporaries(chaos),
        "events": events,
        "seconds": round(time.monotonic() - started, 1),
    }
    if final.returncode == 0:
        summary.update(
            compare(
                os.path.join(straight, "model_final.pth"), os.path.join(chaos, "model_final.pth")
            )
        )
    else:
        summary["bitwise_equal"] = False
    return summary


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", action="append", required=True, metavar="FILE")
    parser.add_argument("--kills", type=int, default=10, help="SIGKILLs to send (default 10)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", default="output/chaos_resume")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per run")
    parser.add_argument(
        "--tool",
        choices=sorted(TOOLS),
        default="train",
        help="train: tools/train_net.py (detection, the default); pretrain: tools/pretrain_net.py",
    )
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help="passed on to the train tool: COCO-format data registered as NAME",
    )
    parser.add_argument(
        "--image-folder",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "ROOT"),
        help="passed on to the pretrain tool as --dataset NAME ROOT: an ImageFolder folder",
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    args = parser.parse_args(argv)
    wrong = {"train": args.image_folder, "pretrain": args.dataset}[args.tool]
    if wrong:
        option = "--image-folder" if args.tool == "train" else "--dataset"
        parser.error(f"{option} is not an option of --tool {args.tool}")
    summary = chaos_resume(
        args.config,
        args.opts,
        args.kills,
        args.workdir,
        seed=args.seed,
        timeout=args.timeout,
        datasets=args.dataset + args.image_folder,
        tool=args.tool,
    )
    print(json.dumps({k: v for k, v in summary.items() if k != "events"}, indent=1))
    return 0 if summary["bitwise_equal"] and not summary["leftover_temporaries"] else 1


if __name__ == "__main__":
    sys.exit(main())

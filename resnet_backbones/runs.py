"""Experiments made of several training runs, each a subprocess of ``tools/pretrain_net.py`` or
``tools/train_net.py`` with its own OUTPUT_DIR: the one home of what
:mod:`resnet_backbones.pretrain_then_detect` and :mod:`resnet_backbones.paper_experiments`
share.

* :func:`run_logged` runs one command, its output appended to a log, and records its wall time
  in the run's folder (``wall_time.json``, one entry per invocation that trained it);
* :func:`run_parallel` runs several at once (``jobs`` at a time, each with its share of the
  CPU threads), prints progress with an ETA, and stops the others when one fails;
* :func:`calibrate` times the calibration every absolute time stands beside
  (:mod:`resnet_backbones.calibration`).

A run is resumable (its command has ``--resume``), so an interrupted experiment goes on where it
stopped; a child process is sent SIGTERM when the experiment's process dies (Linux), so that no
orphan keeps training and holding its OUTPUT_DIR.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from .utils import atomic_write

__all__ = [
    "REPO",
    "Run",
    "RunError",
    "calibrate",
    "format_calibration",
    "format_seconds",
    "read_json",
    "run_logged",
    "run_parallel",
    "wall_times",
    "write_text",
]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WALL_FILE = "wall_time.json"


class RunError(RuntimeError):
    """A run's command exited with an error (its log names the cause)."""


def read_json(path: str) -> Optional[Any]:
    """The JSON object in ``path``, or None where there is no such file."""
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def write_text(path: str, text: str) -> None:
    """Writes ``text`` to ``path`` atomically (its folder created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path, "w", encoding="utf-8") as f:
        f.write(text)


def format_seconds(seconds: Optional[float]) -> str:
    """``"not measured"``, ``"42 s"`` or ``"3 min 05 s"``."""
    if seconds is None:
        return "not measured"
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def format_calibration(seconds: Optional[float]) -> str:
    """A calibration time: ``"not measured"`` or ``"2.21 s"``."""
    return "not measured" if seconds is None else f"{seconds:.2f} s"


def calibrate(repeats: int) -> Optional[float]:
    """detectron2's R-101 forward at 800x1216, median of ``repeats`` (None for 0), printed."""
    if repeats <= 0:
        return None
    from .calibration import r101_forward_seconds

    print("Calibration: detectron2's R-101 forward at 800x1216 ...", flush=True)
    seconds = r101_forward_seconds(repeats)
    print(f"  {seconds:.2f} s", flush=True)
    return seconds


def wall_times(out_dir: str) -> list[float]:
    """The wall times (s) of the invocations that trained the run in ``out_dir``."""
    return list((read_json(os.path.join(out_dir, WALL_FILE)) or {}).get("wall_s", []))


def _record_wall_time(out_dir: str, seconds: float) -> None:
    write_text(
        os.path.join(out_dir, WALL_FILE), json.dumps({"wall_s": [*wall_times(out_dir), seconds]})
    )


def _die_with_parent() -> None:  # pragma: no cover - runs in the child, before exec
    """SIGTERM to this process when its parent dies (Linux's PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _start(command: Sequence[str], log: str, env: Optional[dict] = None) -> subprocess.Popen:
    os.makedirs(os.path.dirname(os.path.abspath(log)), exist_ok=True)
    with open(log, "a") as f:
        return subprocess.Popen(
            list(command),
            stdout=f,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )


def run_logged(command: Sequence[str], out_dir: str, log: str) -> float:
    """Runs ``command`` (its output appended to ``log``); records and returns its wall time.

    Raises:
        RunError: it exited with an error, naming the log.
    """
    os.makedirs(out_dir, exist_ok=True)
    print(f"$ {' '.join(command)}   (log: {log})", flush=True)
    start = time.time()
    status = _start(command, log).wait()
    wall = time.time() - start
    if status:
        raise RunError(f"{command[1]} exited with status {status}; see {log}")
    _record_wall_time(out_dir, wall)
    return wall


@dataclass
class Run:
    """One training run of an experiment: its name, command, OUTPUT_DIR, log and a cost (any
    unit proportional to its compute, e.g. layers x iterations x batch: the ETA's weights)."""

    name: str
    command: list[str]
    out_dir: str
    log: str
    cost: float = 1.0
    wall_s: Optional[float] = field(default=None, init=False)


def _threads_per_job(jobs: int) -> int:
    return max(1, (os.cpu_count() or 1) // max(1, jobs))


def run_parallel(runs: Sequence[Run], jobs: int) -> None:
    """Runs ``runs``, ``jobs`` at a time, each with ``OMP_NUM_THREADS`` = CPUs / jobs (unless
    set already): on a small CPU machine, one thread per process beats threads that wait for
    each other. Prints each start and end with the progress and an ETA (from the cost done per
    second so far). Sets each run's ``wall_s``.

    Raises:
        RunError: a run failed (the first failure named). No run starts after it, and the ones
            running then are left to finish, so that no work is lost; they are stopped (SIGTERM)
            only when this process is interrupted, and ``--resume`` goes on from their last
            checkpoint.
    """
    pending = list(runs)
    total = sum(r.cost for r in runs) or 1.0
    done_cost = 0.0
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(_threads_per_job(jobs)))
    running: dict[str, tuple[Run, subprocess.Popen, float]] = {}
    failures: list[str] = []
    start = time.time()
    try:
        while (pending and not failures) or running:
            while pending and not failures and len(running) < max(1, jobs):
                run = pending.pop(0)
                os.makedirs(run.out_dir, exist_ok=True)
                print(f"[start] {run.name}   (log: {run.log})", flush=True)
                running[run.name] = (run, _start(run.command, run.log, env), time.time())
            time.sleep(0.5)
            for name, (run, process, started) in list(running.items()):
                status = process.poll()
                if status is None:
                    continue
                del running[name]
                if status:
                    failures.append(
                        f"run {name!r} exited with status {status}; see {run.log} "
                        f"(command: {' '.join(run.command)})"
                    )
                    if running:
                        print(f"[failed] {name}; letting {', '.join(running)} finish", flush=True)
                    continue
                run.wall_s = time.time() - started
                _record_wall_time(run.out_dir, run.wall_s)
                done_cost += run.cost
                elapsed = time.time() - start
                eta = elapsed * (total - done_cost) / done_cost if done_cost else None
                print(
                    f"[done {len(runs) - len(pending) - len(running)}/{len(runs)}] {name} in "
                    f"{format_seconds(run.wall_s)}; elapsed {format_seconds(elapsed)}, "
                    f"ETA {format_seconds(eta) if pending or running else '0 s'}",
                    flush=True,
                )
        if failures:
            raise RunError("; ".join(failures))
    finally:
        for _, process, _ in running.values():
            process.send_signal(signal.SIGTERM)
        for _, process, _ in running.values():
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()

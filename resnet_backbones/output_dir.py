"""One run per ``OUTPUT_DIR``: a new run does not overwrite a previous one by accident, and two
runs never write into one folder at once.

A training run holds an exclusive lock (``fcntl.flock``) on ``OUTPUT_DIR/.run.lock`` while it
lives; the kernel drops it when the process dies, kill -9 included, so a stale lock never blocks
``--resume``. Starting:

* while another process holds the lock: refused (:class:`OutputDirInUseError`), naming it;
* without ``--resume`` where the folder holds a previous run (checkpoints, ``last_checkpoint``
  or ``metrics.json``): refused (:class:`PreviousRunError`): continue it with ``--resume``, or
  choose another ``OUTPUT_DIR``, or pass ``--overwrite`` to delete its checkpoints and metrics
  on purpose (logs, TensorBoard files and other files are kept).
"""

from __future__ import annotations

import errno
import fcntl
import glob
import logging
import os
import socket
import time
from typing import IO, Optional

__all__ = [
    "OutputDirInUseError",
    "PreviousRunError",
    "claim_output_dir",
    "claim_output_dir_everywhere",
    "previous_run_files",
    "release",
]

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"
# The locks this process holds, by real path: claiming a folder twice returns the same lock.
_HELD: dict[str, IO[str]] = {}
# A previous run's state: what --resume reads, and the metrics a new run would mix into (the
# trainer creates an empty metrics.json, and its TensorBoard file, before it is told whether it
# resumes: those do not count).
_RUN_FILES = ("last_checkpoint", "model_*.pth", "metrics.json")


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): closes its copies of the lock files. flock
    belongs to the open file, which a fork shares: a worker that outlives its killed parent by
    the seconds it takes to notice would otherwise hold OUTPUT_DIR, and refuse the --resume
    that follows. Closing (not unlocking) a copy leaves the parent's lock as it is."""
    for handle in _HELD.values():
        try:
            handle.close()
        except OSError:
            pass
    _HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class OutputDirInUseError(RuntimeError):
    """Another process is training into this OUTPUT_DIR."""


class PreviousRunError(FileExistsError):
    """OUTPUT_DIR holds a previous run and neither --resume nor --overwrite was given."""


def previous_run_files(output_dir: str) -> list[str]:
    """The files of a previous run in ``output_dir``: checkpoints, ``last_checkpoint``, and
    ``metrics.json`` where it is not empty."""
    found = []
    for pattern in _RUN_FILES:
        found.extend(sorted(glob.glob(os.path.join(glob.escape(output_dir), pattern))))
    return [p for p in found if not (p.endswith("metrics.json") and os.path.getsize(p) == 0)]


def _lock(output_dir: str) -> IO[str]:
    path = os.path.join(output_dir, LOCK_NAME)
    handle = open(path, "a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            handle.close()
            raise
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise OutputDirInUseError(
            f"OUTPUT_DIR {os.path.abspath(output_dir)!r} is in use by a running training "
            f"({holder}); wait for it to end or stop it, or choose another OUTPUT_DIR"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(
        f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
    )
    handle.flush()
    return handle


def claim_output_dir(output_dir: str, *, resume: bool, overwrite: bool = False) -> IO[str]:
    """Locks ``output_dir`` for this training run (created if missing) and checks that starting
    here loses nothing; returns the lock, held until it is closed or the process ends.

    Args:
        resume: the run continues the one in ``output_dir`` (``--resume``).
        overwrite: a new run replaces the previous one: its checkpoints and ``last_checkpoint``
            are deleted, ``metrics.json`` emptied (``--overwrite``).

    A folder this process holds already is not checked again: its lock is returned.

    Raises:
        OutputDirInUseError: another process holds the lock.
        PreviousRunError: a previous run is there and neither ``resume`` nor ``overwrite``.
    """
    key = os.path.realpath(output_dir)
    held = _HELD.get(key)
    if held is not None and not held.closed:
        return held
    os.makedirs(output_dir, exist_ok=True)
    lock = _lock(output_dir)
    _HELD[key] = lock
    if resume:
        return lock
    previous = previous_run_files(output_dir)
    if previous and not overwrite:
        release(lock)
        names = ", ".join(os.path.basename(p) for p in previous[:5])
        more = f" and {len(previous) - 5} more" if len(previous) > 5 else ""
        raise PreviousRunError(
            f"OUTPUT_DIR {os.path.abspath(output_dir)!r} holds a previous run ({names}{more}); "
            "a new run would overwrite it. Pass --resume to continue it, choose another "
            "OUTPUT_DIR, or pass --overwrite to delete its checkpoints and metrics"
        )
    for path in previous:
        if path.endswith("metrics.json"):
            os.truncate(path, 0)  # this run's writer may have it open already
        else:
            os.remove(path)
    if previous:
        logger.warning(
            "--overwrite: deleted %d files of the previous run in %s", len(previous), output_dir
        )
    return lock


def release(lock: Optional[IO[str]]) -> None:
    """Releases a :func:`claim_output_dir` lock (closing the file drops it)."""
    if lock is None:
        return
    for key in [k for k, held in _HELD.items() if held is lock]:
        del _HELD[key]
    if not lock.closed:
        lock.close()


def claim_output_dir_everywhere(
    output_dir: str, *, resume: bool, overwrite: bool = False
) -> Optional[IO[str]]:
    """:func:`claim_output_dir` in the main process (the one that writes checkpoints), its
    refusal raised in every process: the others would otherwise wait for the main one in their
    next collective, on other machines until its timeout. Returns the lock in the main process,
    None in the others. Every process must call it."""
    from detectron2.utils import comm

    lock, refusal = None, None
    if comm.is_main_process():
        try:
            lock = claim_output_dir(output_dir, resume=resume, overwrite=overwrite)
        except (OutputDirInUseError, PreviousRunError) as e:
            refusal = e
    if comm.get_world_size() > 1:
        refusal = next((e for e in comm.all_gather(refusal) if e is not None), None)
    if refusal is not None:
        raise refusal
    return lock

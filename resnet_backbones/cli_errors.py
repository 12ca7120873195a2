"""How the command-line tools report their user's errors: the message alone, in one line on
stderr, and a non-zero exit status. A bad config, dataset, weights file or URL is not a bug of
the tool, and a Python traceback would bury its one useful line.

For debugging, ``--traceback`` (an option of every tool) or ``RESNET_BACKBONES_TRACEBACK=1``
brings the traceback back: the error then propagates as Python's own (exit status 1, and
``python -m pdb`` stops at it). The tools: ``resnet-backbones-train``
(:mod:`resnet_backbones.train_net`, also ``tools/train_net.py``), ``resnet-backbones``
(:mod:`resnet_backbones.cli`, also ``python -m resnet_backbones``) and
``tools/convert_weights.py``.
"""

from __future__ import annotations

import argparse
import os
import sys

__all__ = ["TRACEBACK_ENV", "add_traceback_argument", "report_user_error", "traceback_wanted"]

# Any value but "", "0", "false", "no" or "off" shows tracebacks.
TRACEBACK_ENV = "RESNET_BACKBONES_TRACEBACK"


def add_traceback_argument(parser: argparse.ArgumentParser) -> None:
    """Adds ``--traceback`` to ``parser``."""
    parser.add_argument(
        "--traceback",
        action="store_true",
        help="on an error in the input, show Python's traceback instead of the one-line "
        f"message (also: {TRACEBACK_ENV}=1)",
    )


def traceback_wanted(flag: bool = False) -> bool:
    """Whether tracebacks are asked for: ``flag`` (``--traceback``), or
    ``$RESNET_BACKBONES_TRACEBACK`` set to anything but "", "0", "false", "no" or "off"."""
    value = os.environ.get(TRACEBACK_ENV, "").strip().lower()
    return flag or value not in ("", "0", "false", "no", "off")


def report_user_error(error: BaseException, line: str, status: int, *, traceback: bool) -> int:
    """Prints ``line`` (the message of ``error``, which the caller is handling) on stderr and
    returns ``status``, the tool's exit status; where :func:`traceback_wanted`, raises ``error``
    again instead, traceback and all.

    Call it in the ``except`` block that caught ``error``:
    ``return report_user_error(e, f"error: {e}", 1, traceback=args.traceback)``.
    """
    if traceback_wanted(traceback):
        raise error
    print(line, file=sys.stderr)
    return status

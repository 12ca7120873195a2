"""The metrics file of a training run, written so that a kill or a full disk cannot tear it and a
resumed run does not repeat its lines.

detectron2's ``JSONWriter`` appends to ``metrics.json``: a kill mid-line leaves a torn last
line, and a run resumed from iteration K appends again the lines the killed run wrote after K
(the learning curve then goes back in time). :class:`AtomicJSONWriter` keeps the lines in
memory and rewrites the whole file with :func:`~resnet_backbones.utils.atomic_write` at each
write; :meth:`AtomicJSONWriter.drop_after` removes what a resumed run will write again.
"""

from __future__ import annotations

import json
import logging
import os
from collections import defaultdict
from typing import Any

from detectron2.utils.events import EventWriter, get_event_storage

from .utils import atomic_write

__all__ = ["AtomicJSONWriter"]

logger = logging.getLogger(__name__)


class AtomicJSONWriter(EventWriter):
    """detectron2's ``JSONWriter`` (one JSON object of scalars per line, the latest of each
    scalar not written yet, smoothed where its hint says so), whose file is replaced whole at
    each write instead of appended to.

    The lines of an existing file are kept; a line that is not a JSON object (torn by a kill of
    an older writer) is dropped with a warning.
    """

    def __init__(self, json_file: str, window_size: int = 20):
        """
        Args:
            json_file: the metrics file (``OUTPUT_DIR/metrics.json``).
            window_size: the window of the median smoothing of the scalars whose
                ``smoothing_hint`` is True.
        """
        self.json_file = json_file
        self._window_size = window_size
        # The last iteration written of each scalar: a scalar put at an iteration already written
        # (an evaluation's, after the write at a checkpoint) joins that iteration's line.
        self._written: dict[str, int] = {}
        # (iteration, line): each line serialised once; a write joins them.
        self._lines: list[tuple[int, str]] = self._read(json_file)

    @staticmethod
    def _read(json_file: str) -> list[tuple[int, str]]:
        if not os.path.isfile(json_file):
            return []
        records = []
        with open(json_file, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    record, problem = None, str(e)
                else:
                    problem = "not a JSON object with an integer 'iteration'"
                if not isinstance(record, dict) or not isinstance(record.get("iteration"), int):
                    logger.warning("%s, line %d: dropped (%s)", json_file, number, problem)
                    continue
                records.append((record["iteration"], line.rstrip("\n") + "\n"))
        return records

    def drop_after(self, iteration: int) -> None:
        """Removes the lines of iterations after ``iteration`` and rewrites the file: call it
        when resuming from the checkpoint of ``iteration``, whose later iterations the resumed
        run will write again."""
        kept = [(i, line) for i, line in self._lines if i <= iteration]
        if len(kept) != len(self._lines):
            logger.info(
                "%s: removed %d lines after iteration %d, which this run writes again",
                self.json_file,
                len(self._lines) - len(kept),
                iteration,
            )
            self._lines = kept
            self._save()
        self._written = {k: min(v, iteration) for k, v in self._written.items()}

    def write(self) -> None:
        storage = get_event_storage()
        to_save: dict[int, dict[str, Any]] = defaultdict(dict)
        for name, (value, iteration) in storage.latest_with_smoothing_hint(
            self._window_size
        ).items():
            if iteration > self._written.get(name, -1):  # not written yet
                to_save[iteration][name] = value
                self._written[name] = iteration
        if not to_save:
            return
        for iteration in sorted(to_save):
            at = next(
                (k for k in range(len(self._lines) - 1, -1, -1) if self._lines[k][0] == iteration),
                None,
            )
            if at is None:
                record = {**to_save[iteration], "iteration": iteration}
                self._lines.append((iteration, json.dumps(record, sort_keys=True) + "\n"))
            else:
                record = {**json.loads(self._lines[at][1]), **to_save[iteration]}
                self._lines[at] = (iteration, json.dumps(record, sort_keys=True) + "\n")
        self._save()

    def _save(self) -> None:
        with atomic_write(self.json_file, "w", encoding="utf-8") as f:
            f.write("".join(line for _, line in self._lines))

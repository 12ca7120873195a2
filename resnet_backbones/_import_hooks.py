"""Run a function right after a module is first imported (or now, if it already is).

``import resnet_backbones`` must fill detectron2's model registries without importing
``detectron2.modeling`` itself: that package imports ``detectron2.data`` (its meta-architectures
use ``detectron2.data.detection_utils``), which is half of the import time and not needed by
someone who only loads weights or reads a config. So the registration runs when
``detectron2.modeling`` is imported, which every user of the registries does first. This is the
post-import hook of PEP 369 (withdrawn), as ``wrapt.when_imported`` implements it.
"""

from __future__ import annotations

import importlib.abc
import sys
import threading
from typing import Callable, Optional, Sequence

__all__ = ["when_imported"]

_lock = threading.Lock()


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``name`` with the other finders, and wraps its loader to call ``callbacks`` after
    the module has run. Removes itself once it has done so."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.callbacks: list[Callable[[], None]] = []

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target=None):
        if fullname != self.name:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                break
        else:
            return None
        loader = spec.loader
        if loader is None or not hasattr(loader, "exec_module"):
            return spec
        run_module = loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            with _lock:
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
            for callback in self.callbacks:
                callback()

        loader.exec_module = exec_module
        return spec


def when_imported(name: str, callback: Callable[[], None]) -> None:
    """Calls ``callback()`` once module ``name`` has been imported: now if it already is, else
    right after its first import completes."""
    with _lock:
        if name not in sys.modules:
            finder = next(
                (f for f in sys.meta_path if isinstance(f, _PostImportFinder) and f.name == name),
                None,
            )
            if finder is None:
                finder = _PostImportFinder(name)
                sys.meta_path.insert(0, finder)
            finder.callbacks.append(callback)
            return
    callback()

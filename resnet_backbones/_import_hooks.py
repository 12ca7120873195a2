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
import importlib.machinery
import sys
import threading
from typing import Any, Callable, Optional, Sequence

__all__ = ["when_imported"]

_lock = threading.Lock()


class _ThenLoader(importlib.abc.Loader):
    """Loads a module with its own loader, then calls the hooks. A new object for each module,
    so a loader shared by many modules (a zip importer) is never changed."""

    def __init__(self, loader: importlib.abc.Loader, then: Callable[[], None]) -> None:
        self._loader = loader
        self._then = then

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        self._then()

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, get_data, is_package ...
        return getattr(self._loader, name)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds ``name`` with the other finders and hands its spec a loader that calls
    ``callbacks`` once the module has run; then removes itself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.callbacks: list[Callable[[], None]] = []

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]], target=None
    ) -> Optional[importlib.machinery.ModuleSpec]:
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
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _ThenLoader(spec.loader, self._run)
        return spec

    def _run(self) -> None:
        with _lock:
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            callbacks, self.callbacks = self.callbacks, []
        for callback in callbacks:
            callback()


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

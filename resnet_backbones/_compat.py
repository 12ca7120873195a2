"""A stand-in for ``detectron2._C`` where detectron2 was built without its compiled ops.

detectron2 imports ``detectron2._C`` at module level in four places (deformable conv, rotated
RoIAlign, rotated boxes and the fast COCO evaluator), so without the extension nothing under
``detectron2.layers`` imports at all, although Faster R-CNN itself needs none of those ops:
its RoIAlign and NMS come from torchvision. Registering this module as ``detectron2._C`` *before*
detectron2's layers are imported makes detectron2 importable; any op that really needs the
compiled code raises :class:`CompiledOpUnavailable`, naming the op and what to use instead.

Where the real extension imports, it is left alone and this module is never registered.

Registering it needs ``import resnet_backbones`` before ``import detectron2.modeling``. So that
detectron2 imports in any order, :func:`install_c_shim` (run by ``tools/install_env.sh``) puts a
tiny ``detectron2/_C.py`` (``_detectron2_c_shim.py``) into a detectron2 without compiled ops,
which delegates to the stand-in; :func:`install_c_stand_in` then replaces it.
"""

from __future__ import annotations

import filecmp
import glob
import importlib
import logging
import os
import shutil
import sys
import threading
import types
from contextlib import contextmanager
from functools import cache
from typing import Iterator, Optional

__all__ = [
    "CompiledOpUnavailable",
    "c_stand_in",
    "install_c_shim",
    "install_c_stand_in",
    "install_pillow_aliases",
    "numpy_aliases",
    "uses_c_stand_in",
]

logger = logging.getLogger(__name__)

STAND_IN_NAME = "resnet_backbones stand-in for detectron2._C"
# The attribute that tells our shim (_detectron2_c_shim.py as detectron2/_C.py) from the real _C.
SHIM_MARKER = "RESNET_BACKBONES_C_SHIM"
_SHIM_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_detectron2_c_shim.py")

# Op-name prefix -> what to use instead. Op names are those that detectron2 v0.6 calls on ``_C``.
_ALTERNATIVES: dict[str, str] = {
    "deform_conv": "use torchvision.ops.deform_conv2d, which runs on CPU and GPU",
    "modulated_deform_conv": "use torchvision.ops.deform_conv2d with a mask, which runs on CPU and GPU",
    "roi_align_rotated": "rotated boxes need detectron2 built from source with its compiled ops",
    "nms_rotated": "rotated boxes need detectron2 built from source with its compiled ops",
    "box_iou_rotated": "rotated boxes need detectron2 built from source with its compiled ops",
    "COCOeval": "construct COCOEvaluator(..., use_fast_impl=False), which runs plain pycocotools",
    "InstanceAnnotation": "construct COCOEvaluator(..., use_fast_impl=False), which runs plain pycocotools",
    "ImageEvaluation": "construct COCOEvaluator(..., use_fast_impl=False), which runs plain pycocotools",
}


class CompiledOpUnavailable(RuntimeError):
    """Raised when code calls an op of ``detectron2._C`` that the stand-in cannot provide."""


def _alternative(op: str) -> str:
    for prefix, advice in _ALTERNATIVES.items():
        if op.startswith(prefix):
            return advice
    return "install detectron2 from source with its compiled ops (see detectron2's INSTALL.md)"


class _StandInModule(types.ModuleType):
    """Module whose every unknown attribute is an op that raises a clear error when called."""

    def __getattr__(self, op: str):
        if op.startswith("__"):  # keep Python's protocol lookups (e.g. __path__) honest
            raise AttributeError(op)

        def unavailable(*args, **kwargs):
            raise CompiledOpUnavailable(
                f"detectron2 op '{op}' needs detectron2's compiled extension (detectron2._C), "
                f"which is not installed here; {_alternative(op)}."
            )

        unavailable.__name__ = op
        return unavailable

    # detectron2.utils.collect_env reports these; they must not raise.
    @staticmethod
    def get_compiler_version() -> str:
        return f"none ({STAND_IN_NAME})"

    @staticmethod
    def get_cuda_version() -> str:
        return f"none ({STAND_IN_NAME})"

    @staticmethod
    def has_cuda() -> bool:
        return False


def uses_c_stand_in() -> bool:
    """Whether ``detectron2._C`` is this module's stand-in rather than the compiled extension."""
    return isinstance(sys.modules.get("detectron2._C"), _StandInModule)


@cache
def c_stand_in() -> types.ModuleType:
    """The one stand-in module (registered as ``detectron2._C`` by :func:`install_c_stand_in`)."""
    return _StandInModule("detectron2._C", doc=STAND_IN_NAME)


def install_c_stand_in() -> bool:
    """Registers the stand-in as ``detectron2._C`` unless the compiled extension imports (our
    shim, :func:`install_c_shim`, is not the extension: it is replaced).

    Returns:
        True if the stand-in is (now) in use, False if the real extension is.
    """
    if uses_c_stand_in():
        return True
    try:
        module = importlib.import_module("detectron2._C")
    except ImportError as e:
        logger.debug("detectron2._C unavailable (%s); using %s", e, STAND_IN_NAME)
    else:
        if not getattr(module, SHIM_MARKER, False):
            return False
    import detectron2

    sys.modules["detectron2._C"] = c_stand_in()
    detectron2._C = c_stand_in()
    return True


def install_c_shim(detectron2_dir: Optional[str] = None) -> Optional[str]:
    """Puts our shim into a detectron2 built without its compiled ops, as ``detectron2/_C.py``,
    so that detectron2 imports before ``import resnet_backbones`` too. Idempotent.

    Args:
        detectron2_dir: the ``detectron2`` package folder (default: the installed one's).

    Returns:
        the path written, or None where nothing was written: the shim is there already, or
        detectron2 has its compiled ``_C`` or a ``_C.py`` of its own (both left alone).
    """
    if detectron2_dir is None:
        import detectron2

        detectron2_dir = os.path.dirname(os.path.abspath(detectron2.__file__))
    target = os.path.join(detectron2_dir, "_C.py")
    compiled = glob.glob(os.path.join(detectron2_dir, "_C.*.so")) + glob.glob(
        os.path.join(detectron2_dir, "_C*.pyd")
    )
    if compiled:
        logger.info("detectron2 has its compiled ops (%s); no shim installed", compiled[0])
        return None
    if os.path.exists(target):
        if filecmp.cmp(target, _SHIM_SOURCE, shallow=False):
            return None
        with open(target, encoding="utf-8", errors="replace") as f:
            if SHIM_MARKER not in f.read():
                logger.warning("%s is not resnet_backbones' shim; left alone", target)
                return None
    shutil.copyfile(_SHIM_SOURCE, target)
    return target


def install_pillow_aliases(image_module=None) -> None:
    """Gives Pillow >= 10 back ``Image.LINEAR``, which detectron2 v0.6 uses as a default argument
    (``detectron2/data/transforms/transform.py``), so that its data module imports at all.

    Pillow 10 removed the alias; it always meant ``Image.BILINEAR``. Older Pillows (this
    project pins 9.5) have it and are left alone.

    Args:
        image_module: ``PIL.Image`` (the default), or a stand-in for it in tests.
    """
    if image_module is None:
        from PIL import Image as image_module

    if not hasattr(image_module, "LINEAR"):
        image_module.LINEAR = image_module.BILINEAR


# The aliases of Python types that numpy 1.20 deprecated and 1.24 removed, which detectron2
# v0.6's Pascal VOC evaluator (``np.bool`` in ``voc_eval``) uses.
_NUMPY_ALIASES = {"bool": bool, "str": str}
_numpy_alias_lock = threading.Lock()
_numpy_alias_users = 0
_numpy_aliases_added: set[tuple[int, str]] = set()  # (id of the module, name) set by us


@contextmanager
def numpy_aliases(numpy_module=None) -> Iterator[None]:
    """Within it, ``np.bool`` and ``np.str`` are ``bool`` and ``str`` again, as before numpy
    1.24, for detectron2 v0.6 code that uses them; afterwards numpy is as it was.

    Scoped rather than installed at import: the aliases would otherwise hide the same mistake in
    the user's own code. A numpy that has the name (numpy 2 has ``np.bool``, its own type) keeps
    it. Nesting and threads are counted: the aliases go when the last user leaves.

    Args:
        numpy_module: ``numpy`` (the default), or a stand-in for it in tests.
    """
    global _numpy_alias_users
    if numpy_module is None:
        import numpy as numpy_module

    with _numpy_alias_lock:
        _numpy_alias_users += 1
        # vars(), not hasattr: numpy 1.2x's module __getattr__ warns about the removed names.
        for name, alias in _NUMPY_ALIASES.items():
            if name not in vars(numpy_module):
                setattr(numpy_module, name, alias)
                _numpy_aliases_added.add((id(numpy_module), name))
    try:
        yield
    finally:
        with _numpy_alias_lock:
            _numpy_alias_users -= 1
            if _numpy_alias_users == 0:
                for name in _NUMPY_ALIASES:
                    if (id(numpy_module), name) in _numpy_aliases_added:
                        delattr(numpy_module, name)
                        _numpy_aliases_added.discard((id(numpy_module), name))

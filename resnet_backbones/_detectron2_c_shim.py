"""``detectron2._C`` for a detectron2 built without its compiled ops, installed by resnet_backbones
(``tools/install_env.sh`` copies this file to ``detectron2/_C.py``; see
``resnet_backbones/_compat.py``). Delete that file to undo it.

detectron2 imports ``_C`` at module level in four places, so without it nothing under
``detectron2.layers`` imports unless ``import resnet_backbones`` came first and registered its
stand-in. With this file, detectron2 imports in any order: ``import resnet_backbones`` then
replaces it with the stand-in, and every op looked up here is the stand-in's, which raises
``CompiledOpUnavailable`` naming the op and what to use instead.
"""

# How resnet_backbones tells this file from a compiled extension.
RESNET_BACKBONES_C_SHIM = True


def __getattr__(name: str):
    if name.startswith("__"):  # keep Python's protocol lookups honest
        raise AttributeError(name)
    try:
        from resnet_backbones._compat import c_stand_in
    except ImportError as e:
        raise ImportError(
            f"detectron2 here was built without its compiled ops, and its _C module ({__file__}) "
            f"is resnet_backbones' shim, which needs resnet_backbones ({e}). Install "
            "resnet_backbones, or detectron2 from source with its compiled ops."
        ) from e
    return getattr(c_stand_in(), name)

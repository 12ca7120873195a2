"""ResNet-family backbones for detectron2.

``import resnet_backbones`` registers, in detectron2's registries:

* backbones ``build_resnet_family_backbone``, ``build_resnet_family_fpn_backbone`` and
  ``build_resnet_family_retinanet_fpn_backbone``;
* ReXNet backbones ``build_rexnet_backbone`` and ``build_rexnet_fpn_backbone``;
* the C4 head ``Res5FamilyROIHeads``;
* the built-in datasets ``shapes_train`` and ``shapes_val``;
* the model-zoo scheme ``resnet_backbones://NAME`` in detectron2's PathManager.

Call :func:`add_resnet_backbones_config` on a config before merging one of our YAML files.
"""

from ._compat import install_c_stand_in, install_pillow_aliases, uses_c_stand_in

try:
    import detectron2  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError(
        "resnet_backbones needs detectron2 (v0.6 or later), which is not installed in this "
        f"environment ({e}). Install it from source (see detectron2's INSTALL.md), or run "
        "`make quickstart` in a checkout of resnet_backbones to get a pinned .venv."
    ) from e

# Must run before anything imports detectron2.layers and detectron2.data (see _compat.py).
install_c_stand_in()
install_pillow_aliases()

from . import data  # noqa: E402  (registers the built-in datasets)
from .config import add_resnet_backbones_config  # noqa: E402
from .modeling import (  # noqa: E402
    Res5FamilyROIHeads,
    ResNetFamily,
    build_resnet_family_backbone,
    build_resnet_family_fpn_backbone,
    build_resnet_family_retinanet_fpn_backbone,
)
from .weights.checkpoint import FamilyCheckpointer  # noqa: E402
from .weights.resolve import register_zoo_scheme  # noqa: E402

register_zoo_scheme()  # detectron2's own PathManager learns resnet_backbones://NAME

__version__ = "0.1.0"

__all__ = [
    "FamilyCheckpointer",
    "Res5FamilyROIHeads",
    "ResNetFamily",
    "add_resnet_backbones_config",
    "build_resnet_family_backbone",
    "build_resnet_family_fpn_backbone",
    "build_resnet_family_retinanet_fpn_backbone",
    "data",
    "install_c_stand_in",
    "uses_c_stand_in",
]

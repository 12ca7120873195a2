"""Pretrained weights for resnet_backbones: read safely, recognised, converted, verified.

* :mod:`.safe_pickle`: ``.pkl`` files without running code from them;
* :mod:`.download`: https downloads, atomic, cached and checked against their SHA-256;
* :mod:`.formats`: which library wrote a file (torchvision, timm, MSRA, detectron2, ours) and
  its backbone in our names; :data:`.formats.SOURCE_TABLES` holds the mapping tables;
* :mod:`.archs`: per architecture, its mapping table and the config that fits it;
* :mod:`.checkpoint`: :class:`FamilyCheckpointer` for ``MODEL.WEIGHTS``, and the
  ``resnet_backbones://NAME`` scheme of the model zoo (:mod:`.catalog`).
"""

from .errors import (
    ChecksumError,
    DownloadError,
    IncompatibleWeightsError,
    UnsafeURLError,
    UnsafeWeightsError,
    WeightsFormatError,
)

__all__ = [
    "ChecksumError",
    "DownloadError",
    "IncompatibleWeightsError",
    "UnsafeURLError",
    "UnsafeWeightsError",
    "WeightsFormatError",
]

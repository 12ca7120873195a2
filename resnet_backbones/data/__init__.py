"""Built-in datasets: ``shapes_train`` and ``shapes_val`` (see :mod:`.shapes`).

They are registered in detectron2's ``DatasetCatalog`` and ``MetadataCatalog`` on import; the
files are generated into the cache folder the first time a split is loaded. The cache folder is
read once, at import (``$RESNET_BACKBONES_CACHE``).
"""

from __future__ import annotations

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from .shapes import CLASSES, SPLITS, ensure_shapes, split_dir

__all__ = ["SHAPES_DATASETS", "load_shapes", "register_shapes"]

SHAPES_DATASETS = {f"shapes_{split}": split for split in SPLITS}


def load_shapes(split: str) -> list[dict]:
    """The detectron2 dataset dicts of a shapes split, generating its files on first use."""
    root = ensure_shapes(split)
    return load_coco_json(str(root / "annotations.json"), str(root / "images"), f"shapes_{split}")


def register_shapes() -> None:
    for name, split in SHAPES_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda split=split: load_shapes(split))
        root = split_dir(split)
        MetadataCatalog.get(name).set(
            thing_classes=list(CLASSES),
            json_file=str(root / "annotations.json"),
            image_root=str(root / "images"),
            evaluator_type="coco",
            generated_on_first_use=True,
        )


register_shapes()

"""Datasets: the built-in ``shapes_train`` and ``shapes_val`` (see :mod:`.shapes`), your
own COCO-format data (see :mod:`.coco_format`), and the classification datasets for
pretraining (ImageNet, CIFAR-10, digits, shapes_cls and your own ImageFolder folders, see
:mod:`.classification`).

:func:`register_datasets` registers the built-in ones in detectron2's ``DatasetCatalog`` and
``MetadataCatalog``; :func:`register_config_datasets` registers them and a config's
``DATASETS.COCO_FORMAT``. ``tools/train_net.py`` and :class:`resnet_backbones.engine.Trainer`
call it, and so can your own code::

    from resnet_backbones.data import register_config_datasets
    register_config_datasets(cfg)

The files are generated into ``$RESNET_BACKBONES_CACHE/datasets/`` (read when a split is first
loaded; default ``~/.cache/resnet_backbones``) the first time a split is loaded.

Before training, :mod:`.validate` checks every dataset a run uses (the raw COCO JSON, then
every image file) and :mod:`.mapper` reads the images for the model, both through the one
decoder of :mod:`.images`; the Trainer calls ``validated_dataset_dicts`` and ``build_mapper``.
"""

from __future__ import annotations

from typing import Any

from .classification import register_classification_datasets, register_image_folder
from .coco_format import DatasetFormatError, DatasetNotFoundError, register_coco_format
from .shapes import CLASSES, SPLITS, ensure_shapes, split_dir

__all__ = [
    "SHAPES_DATASETS",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "load_shapes",
    "register_config_datasets",
    "register_classification_datasets",
    "register_datasets",
    "register_image_folder",
]

SHAPES_DATASETS = {f"shapes_{split}": split for split in SPLITS}


def load_shapes(split: str) -> list[dict]:
    """The detectron2 dataset dicts of a shapes split, generating its files on first use."""
    from detectron2.data.datasets import load_coco_json

    root = ensure_shapes(split)
    return load_coco_json(str(root / "annotations.json"), str(root / "images"), f"shapes_{split}")


def register_datasets() -> None:
    """Registers ``shapes_train``, ``shapes_val`` and the classification datasets of
    :mod:`.classification` (once; a second call changes nothing; no file is read)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    register_classification_datasets()
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


def register_config_datasets(cfg: Any) -> None:
    """Registers the built-in datasets and ``cfg.DATASETS.COCO_FORMAT`` (a config without that
    key, one not extended by ``add_resnet_backbones_config``, registers the built-in ones only).

    Raises:
        DatasetFormatError, DatasetNotFoundError: see
            :func:`~resnet_backbones.data.coco_format.register_coco_format`.
    """
    register_datasets()
    register_coco_format(cfg.DATASETS.get("COCO_FORMAT", []))

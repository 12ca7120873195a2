"""Datasets: the built-in ``shapes_train`` and ``shapes_val`` (see :mod:`.shapes`), your
own COCO-format data (see :mod:`.coco_format`), Pascal VOC and your own VOC-format folders (see
:mod:`.voc_format`), and the classification datasets for pretraining (ImageNet, CIFAR-10, digits, shapes_cls and your own ImageFolder folders, see
:mod:`.classification`).

:func:`register_datasets` registers the built-in ones in detectron2's ``DatasetCatalog`` and
``MetadataCatalog``; :func:`register_config_datasets` registers them and a config's
``DATASETS.COCO_FORMAT`` and ``DATASETS.VOC_FORMAT``. ``tools/train_net.py`` and :class:`resnet_backbones.engine.Trainer`
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
from .voc_format import register_voc_format, use_checked_voc_loaders

__all__ = [
    "SHAPES_DATASETS",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "load_shapes",
    "register_config_datasets",
    "register_classification_datasets",
    "register_datasets",
    "register_image_folder",
    "register_voc_format",
]

SHAPES_DATASETS = {f"shapes_{split}": split for split in SPLITS}


def load_shapes(split: str) -> list[dict]:
    """The detectron2 dataset dicts of a shapes split, generating its files on first use."""
    from detectron2.data.datasets import load_coco_json

    root = ensure_shapes(split)
    return load_coco_json(str(root / "annotations.json"), str(root / "images"), f"shapes_{split}")


def register_datasets() -> None:
    """Registers ``shapes_train``, ``shapes_val`` and the classification datasets of
    :mod:`.classification`, and gives detectron2's Pascal VOC datasets our checked loader
    (:func:`~.voc_format.use_checked_voc_loaders`) (once; a second call changes nothing; no
    file is read)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    register_classification_datasets()
    use_checked_voc_loaders()
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
    """Registers the built-in datasets, ``cfg.DATASETS.COCO_FORMAT`` and
    ``cfg.DATASETS.VOC_FORMAT`` (a config without those keys, one not extended by
    ``add_resnet_backbones_config``, registers the built-in ones only).

    Raises:
        DatasetFormatError, DatasetNotFoundError: see
            :func:`~resnet_backbones.data.coco_format.register_coco_format` and
            :func:`~resnet_backbones.data.voc_format.register_voc_format`.
    """
    register_datasets()
    register_coco_format(cfg.DATASETS.get("COCO_FORMAT", []))
    register_voc_format(cfg.DATASETS.get("VOC_FORMAT", []))

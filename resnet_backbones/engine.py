"""Training and evaluation: detectron2's DefaultTrainer flow, made to run where the compiled
ops or CUDA are missing, with clear errors for configs and datasets."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from . import solver
from ._compat import uses_c_stand_in
from .config import add_resnet_backbones_config
from .data import DatasetNotFoundError, register_config_datasets, register_datasets
from .data.coco_format import HOW_TO_REGISTER, config_source_dir, resolve_config_paths
from .data.mapper import build_mapper
from .data.validate import (
    ValidationReportHook,
    ValidationSettings,
    validate_dataset,
    validated_dataset_dicts,
    validation_reports,
)
from .utils import config_get, first_n
from .weights.checkpoint import FamilyCheckpointer

__all__ = [
    "DatasetNotFoundError",
    "NumClassesError",
    "Trainer",
    "check_datasets",
    "check_num_classes",
    "load_config",
    "use_cpu_if_no_cuda",
]

logger = logging.getLogger(__name__)


def load_config(config_files: str | Sequence[str], opts: Sequence[str] = ()) -> CfgNode:
    """detectron2's default config, extended with our keys, merged with one or more files in
    order (a later file wins), then with ``KEY VALUE`` overrides.

    Relative paths in ``DATASETS.COCO_FORMAT`` are made absolute as each file is merged:
    relative to the folder of the YAML file that sets the key; in ``opts``, relative to the
    working directory.

    A config file that is not on disk may be one of ours by name (the configs ship with the
    package): ``quickstart/faster_rcnn_R18_FPN_shapes.yaml`` is
    ``model_zoo.get_config_file("quickstart/faster_rcnn_R18_FPN_shapes.yaml")``.

    Raises:
        FileNotFoundError: naming a config file that is neither on disk nor one of ours.
    """
    if isinstance(config_files, (str, os.PathLike)):
        config_files = [config_files]
    if not config_files:
        raise ValueError("load_config needs at least one config file; none was given")
    from .model_zoo import resolve_config_file

    config_files = [resolve_config_file(str(f)) for f in config_files]
    cfg = get_cfg()
    add_resnet_backbones_config(cfg)
    for config_file in config_files:
        before = cfg.DATASETS.COCO_FORMAT
        cfg.merge_from_file(str(config_file))
        if cfg.DATASETS.COCO_FORMAT != before:
            cfg.DATASETS.COCO_FORMAT = resolve_config_paths(
                cfg.DATASETS.COCO_FORMAT, config_source_dir(str(config_file))
            )
    before = cfg.DATASETS.COCO_FORMAT
    cfg.merge_from_list(list(opts))
    if cfg.DATASETS.COCO_FORMAT != before:
        cfg.DATASETS.COCO_FORMAT = resolve_config_paths(cfg.DATASETS.COCO_FORMAT, os.getcwd())
    return cfg


def use_cpu_if_no_cuda(cfg: CfgNode) -> CfgNode:
    """A GPU config runs on the CPU, with one warning, where CUDA is not available."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE is %r but CUDA is not available here; running on the CPU instead. "
            "Expect it to be far slower than on a GPU (pass MODEL.DEVICE cpu to silence this).",
            cfg.MODEL.DEVICE,
        )
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        if was_frozen:
            cfg.freeze()
    return cfg


def check_datasets(names: Sequence[str]) -> None:
    """Fails early, and clearly, when a dataset is not registered or its files are missing
    (the built-in datasets are registered first).

    detectron2 registers COCO under ``$DETECTRON2_DATASETS`` (default ``./datasets``) without
    checking that anything is there; the first sign of a missing dataset would otherwise be a
    bare FileNotFoundError from deep inside the data loader.
    """
    register_datasets()
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            raise DatasetNotFoundError(
                f"dataset {name!r} is not registered; registered datasets include: "
                f"{first_n(sorted(registered), 40)}. To use your own data, "
                f"{HOW_TO_REGISTER}"
            )
        meta = MetadataCatalog.get(name)
        if getattr(meta, "generated_on_first_use", False):
            continue
        missing = [
            path
            for path in (getattr(meta, "json_file", None), getattr(meta, "image_root", None))
            if path and not os.path.exists(path)
        ]
        if missing:
            root = os.environ.get("DETECTRON2_DATASETS")
            where = (
                f"DETECTRON2_DATASETS={root!r}"
                if root
                else f"DETECTRON2_DATASETS is not set, so detectron2 looks in ./datasets under "
                f"the working directory {os.getcwd()!r}"
            )
            raise DatasetNotFoundError(
                f"dataset {name!r} is not on disk: missing {', '.join(map(repr, missing))}. "
                f"{where}. Put the dataset there (for COCO 2017: <root>/coco/annotations/"
                "instances_{train,val}2017.json and <root>/coco/{train,val}2017/), or set "
                "DETECTRON2_DATASETS to the folder that holds coco/ before starting."
            )


class NumClassesError(ValueError):
    """The model's number of classes is not the number of categories of its datasets."""


def check_num_classes(cfg: CfgNode, names: Sequence[str]) -> None:
    """Fails, naming the key to set, where the model's number of classes differs from the
    number of categories of a loaded dataset (detectron2 does not check: with fewer classes
    than categories the heads index out of range, with more they train outputs no box has).

    Datasets not loaded yet (no ``thing_classes`` in their metadata) are not checked.
    """
    key = (
        "MODEL.RETINANET.NUM_CLASSES"
        if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
        else "MODEL.ROI_HEADS.NUM_CLASSES"
    )
    num_classes = config_get(cfg, key)
    for name in names:
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise NumClassesError(
                f"{key} = {num_classes}, but dataset {name!r} has {len(classes)} categories "
                f"({first_n(classes, 10)}); set {key} {len(classes)}"
            )


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with COCO evaluation on pycocotools, loading MODEL.WEIGHTS
    with :class:`~resnet_backbones.weights.checkpoint.FamilyCheckpointer`, the built-in datasets
    and ``DATASETS.COCO_FORMAT`` registered, and the number of classes checked against the data
    (:func:`check_num_classes`).

    Without detectron2's compiled ops, COCOEvaluator's fast path is unavailable; the evaluator
    then runs plain pycocotools (``use_fast_impl=False``), with the same numbers.
    """

    def __init__(self, cfg: CfgNode):
        register_config_datasets(cfg)  # before DefaultTrainer builds the data loaders
        # Every dataset of the run checked before the first iteration: the test sets too, which
        # detectron2 would first read after training (validate.py; cached for the loaders).
        settings = ValidationSettings.from_config(cfg)
        if settings.mode != "off":
            for name in cfg.DATASETS.TRAIN:
                validate_dataset(name, settings, is_train=True)
            for name in cfg.DATASETS.TEST:
                validate_dataset(name, settings, is_train=False)
        super().__init__(cfg)

    def build_hooks(self):
        # DefaultTrainer.__init__ makes a DetectionCheckpointer (plain pickle for .pkl, no
        # backbone check) just before building the hooks: load and save with ours instead.
        old = self.checkpointer
        self.checkpointer = FamilyCheckpointer(
            old.model,
            old.save_dir,
            cfg=self.cfg,
            save_to_disk=old.save_to_disk,
            **old.checkpointables,
        )
        hooks = super().build_hooks()
        reports = validation_reports(self.cfg, self.cfg.DATASETS.TRAIN, is_train=True)
        return hooks + [ValidationReportHook(reports)]

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """detectron2's, on the checked datasets (:func:`validated_dataset_dicts`) read by
        :class:`RobustDatasetMapper`, then :func:`check_num_classes` on them."""
        loader = build_detection_train_loader(
            cfg,
            mapper=build_mapper(cfg, is_train=True),
            dataset=validated_dataset_dicts(cfg, cfg.DATASETS.TRAIN, is_train=True),
        )
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return loader

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """detectron2's, on the checked dataset read by :class:`RobustDatasetMapper`, then
        :func:`check_num_classes` on it."""
        loader = build_detection_test_loader(
            validated_dataset_dicts(cfg, [dataset_name], is_train=False),
            mapper=build_mapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """:func:`resnet_backbones.solver.build_optimizer`: detectron2's SGD, or AdamW where
        ``SOLVER.OPTIMIZER`` says so."""
        return solver.build_optimizer(cfg, model)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "coco")
        if evaluator_type != "coco":
            raise ValueError(
                f"dataset {dataset_name!r} has evaluator_type {evaluator_type!r}; this trainer "
                "evaluates box detection with COCOEvaluator only (valid: 'coco')"
            )
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            distributed=True,
            output_dir=output_folder,
            use_fast_impl=not uses_c_stand_in(),
        )

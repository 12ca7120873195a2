"""Training and evaluation: detectron2's DefaultTrainer flow, made to run where the compiled
ops or CUDA are missing, with clear errors for configs and datasets."""

from __future__ import annotations

import logging
import os
from typing import Sequence

import torch
from detectron2.config import CfgNode, get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator

from . import solver
from ._compat import uses_c_stand_in
from .config import add_resnet_backbones_config
from .data import register_datasets
from .utils import first_n
from .weights.checkpoint import FamilyCheckpointer

__all__ = ["DatasetNotFoundError", "Trainer", "check_datasets", "load_config", "use_cpu_if_no_cuda"]

logger = logging.getLogger(__name__)


class DatasetNotFoundError(FileNotFoundError):
    """A dataset named in the config is not registered or its files are not on disk."""


def load_config(config_file: str, opts: Sequence[str] = ()) -> CfgNode:
    """detectron2's default config, extended with our keys, merged with a file and overrides."""
    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file!r}")
    cfg = get_cfg()
    add_resnet_backbones_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
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
                f"{first_n(sorted(registered), 40)}"
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


class Trainer(DefaultTrainer):
    """detectron2's DefaultTrainer with COCO evaluation on pycocotools, loading MODEL.WEIGHTS
    with :class:`~resnet_backbones.weights.checkpoint.FamilyCheckpointer`, and the built-in
    datasets registered.

    Without detectron2's compiled ops, COCOEvaluator's fast path is unavailable; the evaluator
    then runs plain pycocotools (``use_fast_impl=False``), with the same numbers.
    """

    def __init__(self, cfg: CfgNode):
        register_datasets()  # before DefaultTrainer builds the data loaders
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
        return super().build_hooks()

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

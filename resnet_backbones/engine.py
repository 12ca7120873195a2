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
    DatasetMapper,
    MetadataCatalog,
    get_detection_dataset_dicts,
)
from detectron2.engine import DefaultTrainer, hooks
from detectron2.evaluation import COCOEvaluator
from detectron2.utils import comm

from . import solver
from ._compat import uses_c_stand_in
from .config import add_resnet_backbones_config
from .data import DatasetNotFoundError, register_config_datasets, register_datasets
from .data.coco_format import HOW_TO_REGISTER, config_source_dir, resolve_config_paths
from .data.loader import ResumableTrainLoader
from .output_dir import claim_output_dir, release
from .resume import (
    RNGStates,
    capture_rng_state,
    non_finite_loss_error,
    out_of_memory_error,
    restore_rng_state,
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


def _is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error)


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

    Its runs survive interruptions (see :mod:`resnet_backbones.resume`): checkpoints hold the
    optimizer, the LR scheduler, the data order and the random generators, so ``--resume``
    after a kill continues the very run that was interrupted, with bitwise-equal weights; the
    training batches come from a resumable loader
    (:class:`~resnet_backbones.data.loader.ResumableTrainLoader`); :meth:`resume_or_load`
    refuses to start a new run over a previous one (:mod:`resnet_backbones.output_dir`); a
    non-finite loss or an out-of-memory step stops the run with a message saying what to
    lower.

    Without detectron2's compiled ops, COCOEvaluator's fast path is unavailable; the evaluator
    then runs plain pycocotools (``use_fast_impl=False``), with the same numbers.
    """

    def __init__(self, cfg: CfgNode):
        register_config_datasets(cfg)  # before DefaultTrainer builds the data loaders
        self._output_lock = None
        super().__init__(cfg)

    def resume_or_load(self, resume: bool = True, overwrite: bool = False) -> None:
        """detectron2's, after claiming OUTPUT_DIR for this run (main process): it refuses to
        start a new run (``resume`` False) over a previous one unless ``overwrite``, and any run
        while another one trains there (see :func:`resnet_backbones.output_dir.claim_output_dir`).
        The training loader starts at the resumed iteration."""
        if comm.is_main_process() and self._output_lock is None:
            self._output_lock = claim_output_dir(
                self.cfg.OUTPUT_DIR, resume=resume, overwrite=overwrite
            )
        super().resume_or_load(resume=resume)
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            loader.start_iter = self.start_iter

    def train(self):
        """detectron2's; OUTPUT_DIR is released at the end (see :meth:`resume_or_load`)."""
        try:
            return super().train()
        finally:
            release(self._output_lock)
            self._output_lock = None

    def state_dict(self) -> dict:
        """detectron2's (iteration, LR scheduler), and what it leaves out: the optimizer and
        AMP scaler (``_trainer``), the data seed (``data``) and every process's random
        generators (``rng``)."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            state["data"] = loader.state_dict()
        state["rng"] = self._rng_states.current()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])
        else:
            logger.warning(
                "The checkpoint holds no optimizer state (written by detectron2's trainer or an "
                "older resnet_backbones): the optimizer restarts, so SGD's momentum and AdamW's "
                "moments start from zero"
            )
        loader = self._trainer.data_loader
        if "data" in state and isinstance(loader, ResumableTrainLoader):
            loader.load_state_dict(state["data"])
        if "rng" in state:
            RNGStates.restore(state["rng"])

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
        ret = super().build_hooks()
        # The generators are captured after the LR scheduler and PreciseBN, just before the
        # checkpointer writes them (detectron2's hooks draw no random numbers after it).
        self._rng_states = RNGStates(self.cfg.SOLVER.CHECKPOINT_PERIOD)
        at = next(
            (i for i, h in enumerate(ret) if isinstance(h, hooks.PeriodicCheckpointer)), len(ret)
        )
        ret.insert(at, self._rng_states)
        return ret

    def run_step(self) -> None:
        """detectron2's step; a non-finite loss or an out-of-memory error becomes a
        :class:`~resnet_backbones.resume.TrainingError` saying what to change and where to
        resume from."""
        try:
            super().run_step()
        except FloatingPointError as e:
            raise non_finite_loss_error(self.iter, e, self._last_checkpoint()) from e
        except RuntimeError as e:
            if not _is_out_of_memory(e):
                raise
            loader = self._trainer.data_loader
            shapes = getattr(loader, "last_batch_shapes", None)
            raise out_of_memory_error(
                self.iter, e, shapes, self.cfg, self._last_checkpoint()
            ) from e

    def _last_checkpoint(self) -> str | None:
        if self.checkpointer.has_checkpoint():
            return self.checkpointer.get_checkpoint_file()
        return None

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """A :class:`~resnet_backbones.data.loader.ResumableTrainLoader` over detectron2's
        training records and ``DatasetMapper`` (same batching and augmentations as
        detectron2's loader, in an order that resumes), then :func:`check_num_classes` on the
        training datasets. Only detectron2's default ``DATALOADER.SAMPLER_TRAIN``
        ("TrainingSampler") resumes exactly; the others fall back to detectron2's loader."""
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                "DATALOADER.SAMPLER_TRAIN = %r: using detectron2's loader, whose data order "
                "restarts at --resume (only 'TrainingSampler' resumes exactly)",
                cfg.DATALOADER.SAMPLER_TRAIN,
            )
            loader = super().build_train_loader(cfg)
            check_num_classes(cfg, cfg.DATASETS.TRAIN)
            return loader
        dataset_dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE
            if cfg.MODEL.KEYPOINT_ON
            else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return ResumableTrainLoader(
            dataset_dicts,
            DatasetMapper(cfg, True),
            cfg.SOLVER.IMS_PER_BATCH,
            seed=seed,
            aspect_ratio_grouping=cfg.DATALOADER.ASPECT_RATIO_GROUPING,
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
        )

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """detectron2's, then :func:`check_num_classes` on the dataset it loaded."""
        loader = super().build_test_loader(cfg, dataset_name)
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """:func:`resnet_backbones.solver.build_optimizer`: detectron2's SGD, or AdamW where
        ``SOLVER.OPTIMIZER`` says so."""
        return solver.build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """detectron2's, with the random generators of this process as they were before it:
        an evaluation during training (``TEST.EVAL_PERIOD``) must not shift the random stream
        of the iterations after it, which a resumed run would otherwise not reproduce (the
        test loader draws its worker seed from torch's generator)."""
        state = capture_rng_state()
        try:
            return super().test(cfg, model, evaluators)
        finally:
            restore_rng_state(state)

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

"""Pretraining: the classifier of a preset trained and tested with detectron2's engine, in the
ResNet paper's recipes (``configs/ImageNet``, ``configs/CIFAR``), by the same resumable trainer
as the detectors (:class:`~resnet_backbones.engine.ResumableTrainer`).

* :class:`ClassificationMapper` reads a record of :mod:`resnet_backbones.data.classification`
  (an image file or an array, and its label) and applies the recipe's training transform or the
  test protocol's views (:mod:`resnet_backbones.data.cls_transforms`);
* :class:`ClassificationEvaluator` counts top-1 and top-5 over every process;
* :class:`ClassificationTrainer` trains a
  :class:`~resnet_backbones.modeling.classifier.ClassificationModel`, keeps an EMA of its weights
  where ``CLS.EMA_DECAY`` asks for one (saved in every checkpoint and restored by ``--resume``),
  reports each validation error to a plateau schedule (``WarmupPlateauLR``), and writes into
  every checkpoint the metadata the weights loader checks (input format, pixel statistics,
  stride placement), so that ``model_final.pth`` loads into the detectors of its network as it
  is; at the end it adds the measured top-1/top-5 and their protocol, and writes
  ``model_final.json``: the file's SHA-256 and what a catalog entry holds.

Its results go to ``OUTPUT_DIR/eval_results.json`` (:func:`write_eval_results`).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from typing import Any, Optional, Sequence

import numpy as np
import torch
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.samplers import InferenceSampler
from detectron2.engine import hooks
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from .config import ConfigError
from .data.classification import classification_classes
from .data.cls_transforms import (
    ClsOptions,
    TopKAccuracy,
    build_cls_transforms,
    cls_options_from_config,
)
from .data.images import ImageError
from .engine import ResumableTrainer, _MetricsAtCheckpoints, check_datasets
from .modeling.classifier import ClassificationModel, build_classification_model
from .resume import RNGStates
from .solver import WarmupPlateauLR
from .utils import atomic_write, config_get
from .weights.metadata import METADATA_CONFIG_KEYS

__all__ = [
    "ClassificationEvaluator",
    "ClassificationMapper",
    "ClassificationTrainer",
    "EMAHook",
    "build_classification_test_loader",
    "pretraining_metadata",
    "test_protocol",
    "write_eval_results",
]

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def _read_image(record: dict) -> Any:
    """A record's image: a uint8 RGB ``(3, H, W)`` tensor from ``"image"`` (an HxWx3 array), or
    the file ``"file_name"`` opened as torchvision's ImageFolder opens it (PIL, RGB).

    Raises:
        ImageError: the file cannot be read as an image, naming it.
    """
    if "image" in record:
        array = np.ascontiguousarray(record["image"])
        return torch.from_numpy(array).permute(2, 0, 1)
    path = record["file_name"]
    try:
        with open(path, "rb") as f, Image.open(f) as image:
            return image.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(
            f"image {record.get('image_id', path)!r} ({path}) cannot be read as an image: {e}"
        ) from None


class ClassificationMapper:
    """Record -> model input: ``{"image": (3, H, W) tensor, "label"}`` for training (the
    recipe's augmentation), ``{"views": [groups of views], "label"}`` for testing (the
    protocol's crops or scales). A training image that cannot be read is skipped (None: the
    loader draws a replacement) where ``DATASETS.BAD_IMAGES`` is "skip", and stops the run,
    naming it, otherwise; a test image always stops it."""

    def __init__(self, cfg: CfgNode, is_train: bool):
        self.is_train = is_train
        self.transform = build_cls_transforms(cfg, is_train)
        self.skip_bad_images = is_train and cfg.DATASETS.BAD_IMAGES == "skip"

    def __call__(self, record: dict) -> Optional[dict]:
        try:
            image = _read_image(record)
        except ImageError as e:
            if not self.skip_bad_images:
                raise
            logger.warning("Skipped: %s", e)
            return None
        out = {"label": int(record["label"]), "image_id": record.get("image_id")}
        if self.is_train:
            out["image"] = self.transform(image)
        else:
            out["views"] = self.transform(image)
        return out


class _MappedList(torch.utils.data.Dataset):
    def __init__(self, records: Sequence[dict], mapper: ClassificationMapper):
        self.records, self.mapper = records, mapper

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        return self.mapper(self.records[index])


def _as_list(batch: list) -> list:
    return batch


def build_classification_test_loader(cfg: CfgNode, dataset_name: str):
    """This process's share of ``dataset_name`` (detectron2's ``InferenceSampler``), mapped to
    the test protocol's views, in batches of ``CLS.TEST_BATCH_SIZE`` (1 for "multiscale",
    whose images differ in size)."""
    options = cls_options_from_config(cfg)
    records = dataset_records(dataset_name)
    batch_size = 1 if options.test == "multiscale" else options.test_batch_size
    return torch.utils.data.DataLoader(
        _MappedList(records, ClassificationMapper(cfg, is_train=False)),
        batch_size=batch_size,
        sampler=InferenceSampler(len(records)),
        num_workers=cfg.DATALOADER.NUM_WORKERS,
        collate_fn=_as_list,
    )


# Records by dataset name, listed once per process: an ImageFolder is a scan of the disk
# (1.28M files for ImageNet), which the model (its classes), the loaders and every evaluation
# (model and EMA) would otherwise repeat.
_RECORDS: dict[str, list[dict]] = {}


def dataset_records(name: str) -> list[dict]:
    """``DatasetCatalog.get(name)``, listed once per process."""
    if name not in _RECORDS:
        _RECORDS[name] = DatasetCatalog.get(name)
    return _RECORDS[name]


def _dataset_records(names: Sequence[str]) -> list[dict]:
    return list(itertools.chain.from_iterable(dataset_records(n) for n in names))


def _check_classification_datasets(names: Sequence[str]) -> None:
    for name in names:
        kind = getattr(MetadataCatalog.get(name), "evaluator_type", None)
        if kind != "classification":
            raise ConfigError(
                f"dataset {name!r} is a {kind or 'detection'} dataset, not a classification one "
                "(evaluator_type 'classification'); train detectors with tools/train_net.py, "
                "and pretrain on imagenet_*, cifar10_*, digits_*, shapes_cls_* or an ImageFolder "
                "folder of yours (--dataset NAME ROOT)"
            )


# --------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------
def test_protocol(options: ClsOptions) -> dict[str, Any]:
    """The test protocol of ``options``, as it is recorded beside its accuracy."""
    protocol: dict[str, Any] = {"name": options.test}
    if options.test in ("center", "10crop"):
        protocol.update(resize=options.test_resize, crop=options.crop)
    elif options.test == "multiscale":
        protocol.update(scales=list(options.test_scales), flip=options.test_flip)
    single = options.test in ("center", "none")
    protocol["scores"] = "softmax" if single else "softmax averaged over views"
    return protocol


class ClassificationEvaluator(DatasetEvaluator):
    """Top-1 and top-5 accuracy (percent) of a classifier's scores against the labels, over
    every process: ``{"classification": {"top1": ..., "top5": ...}}``."""

    def __init__(self, dataset_name: str, *, distributed: bool = True):
        self.dataset_name = dataset_name
        self.distributed = distributed
        self.accuracy = TopKAccuracy((1, 5))

    def reset(self) -> None:
        self.accuracy.reset()

    def process(self, inputs: list[dict], outputs: torch.Tensor) -> None:
        labels = torch.as_tensor([int(x["label"]) for x in inputs])
        self.accuracy.update(outputs.detach().float().cpu(), labels)

    def evaluate(self) -> dict[str, dict[str, float]]:
        result = self.accuracy.result(all_processes=self.distributed)
        return {"classification": result}


def _per_dataset(cfg: CfgNode, results: dict) -> dict[str, dict[str, float]]:
    """detectron2's ``test`` results (one dataset: its results; several: by name) -> by name."""
    names = list(cfg.DATASETS.TEST)
    if len(names) == 1:
        results = {names[0]: results}
    return {name: dict(results[name]["classification"]) for name in names}


def write_eval_results(
    cfg: CfgNode,
    results: dict[str, dict[str, float]],
    *,
    weights: str = "",
    ema: Optional[dict[str, dict[str, float]]] = None,
    iteration: Optional[int] = None,
) -> str:
    """Writes ``OUTPUT_DIR/eval_results.json`` (atomically): top-1 and top-5 (percent) of the
    first test dataset, its name, the protocol, the weights and the iteration; every test
    dataset's under ``"datasets"``; the EMA's under ``"ema"``. Returns its path."""
    first = next(iter(results))
    options = cls_options_from_config(cfg)
    record: dict[str, Any] = {
        **results[first],
        "dataset": first,
        "num_images": len(dataset_records(first)),
        "protocol": test_protocol(options),
    }
    if weights:
        record["weights"] = weights
    if iteration is not None:
        record["iteration"] = iteration
    record["datasets"] = results
    if ema:
        record["ema"] = ema
    path = os.path.join(cfg.OUTPUT_DIR, "eval_results.json")
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    with atomic_write(path, "w") as f:
        json.dump(record, f, indent=2)
    return path


# --------------------------------------------------------------------------------------------
# EMA
# --------------------------------------------------------------------------------------------
class EMAHook(hooks.HookBase):
    """Updates an exponential moving average of the model's weights and buffers after every
    step (``torch.optim.swa_utils.AveragedModel``, EMA form). The trainer saves it in every
    checkpoint (``"ema"``), so ``--resume`` restores it exactly."""

    def __init__(self, ema: AveragedModel, model: torch.nn.Module):
        self.ema, self.model = ema, model

    def after_step(self) -> None:
        self.ema.update_parameters(self.model)


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------
def pretraining_metadata(
    cfg: CfgNode, model: ClassificationModel, classes: Optional[Sequence[str]] = None
) -> dict[str, Any]:
    """What a checkpoint of this run records: what the weights loader checks against a
    detector's config (input format, pixel mean/std, stride placement), the network's preset
    (where it is a detection preset), the classes (names, in the order of ``fc``'s outputs), the
    training data, the iterations and the whole config."""
    from .weights.detect import identify_preset

    shapes = {
        name: tuple(t.shape) for name, t in model.state_dict().items() if not name.startswith("fc.")
    }
    # What the loader checks, from the keys it checks them against (one table of them).
    checked = {
        meta: [float(v) for v in value] if isinstance(value, (list, tuple)) else value
        for meta, value in (
            (meta, config_get(cfg, key)) for meta, key in METADATA_CONFIG_KEYS.items()
        )
    }
    metadata: dict[str, Any] = {
        "preset": identify_preset(shapes),
        **checked,
        "num_classes": int(model.fc.out_features),
        "classes": list(classes) if classes is not None else None,
        "dataset": list(cfg.DATASETS.TRAIN),
        "iterations": int(cfg.SOLVER.MAX_ITER),
        "train_aug": cfg.CLS.TRAIN_AUG,
        "config": cfg.dump(),
        "producer": "resnet_backbones.pretrain_net",
    }
    return metadata


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _FinalRecord(hooks.HookBase):
    """At the end of a finished run, after the final evaluation: adds the measured top-1/top-5
    and their protocol to the metadata of the ``model_final.pth`` that detectron2's checkpointer
    wrote (the file is rewritten atomically, nothing else in it changes), then writes
    ``model_final.json``: its SHA-256 and metadata, as a catalog entry holds them."""

    def __init__(self, trainer: ClassificationTrainer):
        self._trainer = trainer

    def after_train(self) -> None:
        trainer = self._trainer
        # detectron2's loop leaves iter at max_iter (or beyond, resumed after the end) only
        # where it finished; after_train also runs after an exception.
        if trainer.iter < trainer.max_iter or not comm.is_main_process():
            return
        from .weights.read import read_file

        path = os.path.join(trainer.cfg.OUTPUT_DIR, "model_final.pth")
        checkpoint = read_file(path)  # our own file, read as any weights file is
        metadata = dict(checkpoint.get("metadata") or trainer.checkpointer.metadata)
        results = trainer.last_classification_results
        if results:
            first = next(iter(results))
            measured = {
                "top1": results[first]["top1"],
                "top5": results[first]["top5"],
                "test_dataset": first,
                "test_protocol": test_protocol(trainer.options),
            }
            if any(metadata.get(k) != v for k, v in measured.items()):
                checkpoint["metadata"] = {**metadata, **measured}
                with atomic_write(path) as f:
                    torch.save(checkpoint, f)
                metadata = checkpoint["metadata"]
        entry = {
            "file": "model_final.pth",
            "sha256": _sha256(path),
            **{k: v for k, v in metadata.items() if k not in ("config", "classes")},
        }
        with atomic_write(os.path.join(trainer.cfg.OUTPUT_DIR, "model_final.json"), "w") as f:
            json.dump(entry, f, indent=2)
        logger.info("Wrote %s (SHA-256 %s) and model_final.json", path, entry["sha256"])
        if entry.get("preset"):
            logger.info(
                "MODEL.WEIGHTS %s loads it as it is into the C4, DC5 and FPN detectors of %s",
                path,
                entry["preset"],
            )


# --------------------------------------------------------------------------------------------
# Trainer
# --------------------------------------------------------------------------------------------
class ClassificationTrainer(ResumableTrainer):
    """Pretraining with detectron2's engine: :class:`ResumableTrainer` (exact resume, atomic
    checkpoints, the OUTPUT_DIR lock, run-stopping errors) on a
    :class:`~resnet_backbones.modeling.classifier.ClassificationModel`, with the classification
    data, evaluation, EMA, plateau schedule and checkpoint metadata described in the module doc.
    """

    def __init__(self, cfg: CfgNode):
        self.options = cls_options_from_config(cfg)
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)
        check_datasets(names)  # registers the built-in ones; missing files named clearly
        _check_classification_datasets(names)
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPlateauLR" and not (
            cfg.DATASETS.TEST and cfg.TEST.EVAL_PERIOD > 0
        ):
            raise ConfigError(
                "SOLVER.LR_SCHEDULER_NAME 'WarmupPlateauLR' reduces the LR on the validation "
                f"error, but DATASETS.TEST = {tuple(cfg.DATASETS.TEST)} and TEST.EVAL_PERIOD = "
                f"{cfg.TEST.EVAL_PERIOD} evaluate nothing during training; set both, or use "
                "'WarmupMultiStepLR' with SOLVER.STEPS"
            )
        self.ema: Optional[AveragedModel] = None
        self.last_classification_results: dict[str, dict[str, float]] = {}
        super().__init__(cfg)  # with SOLVER.AMP.ENABLED: bf16 autocast on the CPU

    @classmethod
    def build_model(
        cls, cfg: CfgNode, datasets: Optional[Sequence[str]] = None
    ) -> ClassificationModel:
        """The classifier of ``cfg``'s network, on ``MODEL.DEVICE``, with as many classes as
        ``datasets`` (default: the training and test ones, which must share their classes; an
        evaluation passes the test ones alone).

        Raises:
            DatasetFormatError: the datasets' classes differ (their labels would not agree).
        """
        names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if datasets is None else datasets
        if not names:
            raise ConfigError("DATASETS.TRAIN and DATASETS.TEST are both empty: nothing to train")
        for name in names:
            dataset_records(name)  # an ImageFolder's classes are known once it is loaded
        classes = classification_classes(names)
        model = build_classification_model(cfg, num_classes=len(classes))
        model.to(torch.device(cfg.MODEL.DEVICE))
        logger.info("Classifier of %d classes:\n%s", len(classes), model)
        return model

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """The resumable loader (no aspect-ratio grouping: the recipes crop squares) over the
        training datasets, mapped through the recipe's augmentation."""
        records = _dataset_records(cfg.DATASETS.TRAIN)
        if not records:
            raise ConfigError(f"DATASETS.TRAIN = {tuple(cfg.DATASETS.TRAIN)} holds no image")
        mapper = ClassificationMapper(cfg, is_train=True)
        return cls.resumable_train_loader(cfg, records, mapper, aspect_ratio_grouping=False)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        return build_classification_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder=None):
        return ClassificationEvaluator(dataset_name)

    def build_hooks(self):
        """:class:`ResumableTrainer`'s hooks, with:

        * the EMA update right after the LR scheduler, and the EMA in every checkpoint;
        * the evaluation before the checkpointer (detectron2 evaluates after it), so that a
          checkpoint holds the plateau schedule as that evaluation left it; it tests the model
          (and the EMA), reports the first test set's error to ``WarmupPlateauLR`` and writes
          ``eval_results.json``;
        * the checkpoint metadata, and the final record (:class:`_FinalRecord`) at the end.
        """
        cfg = self.cfg
        model = self.model.module if isinstance(self.model, DistributedDataParallel) else self.model
        if self.options.ema_decay > 0:
            self.ema = AveragedModel(
                model, multi_avg_fn=get_ema_multi_avg_fn(self.options.ema_decay), use_buffers=True
            )
        ret = super().build_hooks()
        classes = classification_classes(list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
        self.checkpointer.metadata = pretraining_metadata(cfg, model, classes)
        if self.ema is not None:
            self.checkpointer.checkpointables["ema"] = self.ema
            at = next(i for i, h in enumerate(ret) if isinstance(h, hooks.LRScheduler)) + 1
            ret.insert(at, EMAHook(self.ema, model))
        # detectron2's EvalHook, replaced by one with this trainer's evaluation, moved before
        # the generators' capture and the checkpointer.
        ret = [h for h in ret if not isinstance(h, hooks.EvalHook)]
        if cfg.DATASETS.TEST:
            before = (RNGStates, _MetricsAtCheckpoints, hooks.PeriodicCheckpointer)
            at = next(i for i, h in enumerate(ret) if isinstance(h, before))
            ret.insert(at, hooks.EvalHook(cfg.TEST.EVAL_PERIOD, self._evaluate))
        ret.append(_FinalRecord(self))
        return ret

    def _evaluate(self) -> dict:
        results = self.test(self.cfg, self.model)
        self.last_classification_results = _per_dataset(self.cfg, results)
        ema = None
        if self.ema is not None:
            ema = _per_dataset(self.cfg, self.test(self.cfg, self.ema.module))
            # Into the metrics too ("ema/top1"), beside the model's ("classification/top1").
            results = {**results, "ema": ema[next(iter(ema))]}
            for name, values in ema.items():
                logger.info(
                    "EMA of the weights on %s: top-1 %.2f%%, top-5 %.2f%%",
                    name,
                    values["top1"],
                    values["top5"],
                )
        # Iterations done: self.iter is the last one's index during training, max_iter after.
        done = min(self.iter + 1, self.max_iter)
        first = next(iter(self.last_classification_results))
        error = 100.0 - self.last_classification_results[first]["top1"]
        if isinstance(self.scheduler, WarmupPlateauLR) and done < self.max_iter:
            self.scheduler.report(error, done)
        if comm.is_main_process():
            write_eval_results(self.cfg, self.last_classification_results, ema=ema, iteration=done)
        self._last_eval_results = results
        return results

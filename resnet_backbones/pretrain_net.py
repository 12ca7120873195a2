"""Pretrain or evaluate the classifier of a preset: the command ``resnet-backbones-pretrain``
(also ``python tools/pretrain_net.py``).

    resnet-backbones-pretrain --config configs/CIFAR/resnet_20.yaml
    resnet-backbones-pretrain --config configs/ImageNet/R_101_resnet_paper.yaml --num-gpus 8
    resnet-backbones-pretrain --config CONFIG --resume          # continue after an interruption
    resnet-backbones-pretrain --config configs/ImageNet/R_50_torchvision_v1.yaml --eval-only \\
        MODEL.WEIGHTS resnet_backbones://resnet50.tv_in1k CLS.TEST 10crop
    resnet-backbones-pretrain --config CONFIG --dataset flowers_train ~/flowers/train \\
        --dataset flowers_val ~/flowers/val DATASETS.TRAIN "('flowers_train',)" \\
        DATASETS.TEST "('flowers_val',)"                      # your own ImageFolder folders

The same habits as ``resnet-backbones-train`` (:mod:`resnet_backbones.train_net`): repeatable
``--config``, trailing ``KEY VALUE`` overrides, ``--resume``, ``--overwrite``, ``--num-gpus``
(CPU processes joined with gloo where CUDA is missing), one-line errors. The trainer is
:class:`resnet_backbones.pretrain.ClassificationTrainer`. Top-1 and top-5 go to the log and to
``OUTPUT_DIR/eval_results.json``; a training run ends with ``OUTPUT_DIR/model_final.pth``, which
``MODEL.WEIGHTS`` loads as it is into the C4, DC5 and FPN detectors of the same network, and
``OUTPUT_DIR/learning_curve.png`` (training and validation error against iterations, as the
ResNet paper's Fig. 4; redraw it with ``resnet-backbones plot OUTPUT_DIR/metrics.json``).
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

# Before anything from detectron2 (see train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.config import CfgNode
from detectron2.data import MetadataCatalog
from detectron2.utils import comm

from .data import DatasetFormatError, register_datasets
from .data.classification import register_image_folder
from .engine import ConfigError
from .output_dir import release
from .pretrain import ClassificationTrainer, _per_dataset, write_eval_results
from .train_net import (
    _expected_errors_without_traceback,
    base_parser,
    check_args,
    load_for_evaluation,
    run_command,
    setup_run,
)
from .utils import first_n
from .visualize import plot_classification_curve

__all__ = ["main", "parse_args", "register_folders", "write_learning_curve"]

logger = logging.getLogger("resnet_backbones.pretrain_net")


def setup(args: argparse.Namespace) -> CfgNode:
    """The config of this run (files, overrides), with its datasets (and ``--dataset``
    folders) registered and checked (:func:`resnet_backbones.train_net.setup_run`)."""

    def register(cfg: CfgNode) -> None:
        register_datasets()
        register_folders(args.dataset, train=cfg.DATASETS.TRAIN)

    return setup_run(args, register)


def register_folders(folders: Sequence[Sequence[str]], train: Sequence[str]) -> None:
    """Registers ``--dataset NAME ROOT`` folders: those of ``train`` first, with their own
    classes (the sorted subfolder names); the others (test sets) with the classes of the first
    training folder, so that a validation folder that lacks a class keeps the training labels.

    Raises:
        DatasetFormatError: a test folder has a class the training folder lacks.
    """
    ordered = sorted(folders, key=lambda f: f[0] not in train)
    classes: Optional[list[str]] = None
    for name, root in ordered:
        if name in train or classes is None:
            register_image_folder(name, root)
            if name in train and classes is None:
                from .pretrain import dataset_records

                dataset_records(name)  # its classes are known once it is listed
                classes = list(MetadataCatalog.get(name).classes)
            continue
        from torchvision.datasets.folder import find_classes

        try:
            own, _ = find_classes(os.path.expanduser(root))
        except (FileNotFoundError, NotADirectoryError):
            own = []  # register_image_folder names the problem
        extra = sorted(set(own) - set(classes))
        if extra:
            raise DatasetFormatError(
                f"dataset {name!r} ({root}) has classes the training folder lacks: "
                f"{first_n(extra, 10)}; its labels could not be the training labels"
            )
        register_image_folder(name, root, classes=classes)


def write_learning_curve(cfg: CfgNode, title: str = "") -> Optional[str]:
    """``OUTPUT_DIR/learning_curve.png`` from ``OUTPUT_DIR/metrics.json``, or None (logged)."""
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if not os.path.isfile(metrics):
        return None
    try:
        out = plot_classification_curve(
            metrics, os.path.join(cfg.OUTPUT_DIR, "learning_curve.png"), title=title
        )
    except ValueError as e:
        logger.warning("No learning curve: %s", e)
        return None
    logger.info("Wrote the learning curve to %s", out)
    return out


def run(args: argparse.Namespace):
    """One process of the command; OUTPUT_DIR is released at the end, also after an error."""
    try:
        return _run(args)
    finally:
        release(getattr(args, "output_lock", None))
        args.output_lock = None


def _run(args: argparse.Namespace):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.DATASETS.TEST:
            raise ConfigError("--eval-only: DATASETS.TEST is empty, so there is nothing to test")
        model = ClassificationTrainer.build_model(cfg, datasets=cfg.DATASETS.TEST)
        weights = load_for_evaluation(cfg, model, args.resume)
        results = ClassificationTrainer.test(cfg, model)
        if comm.is_main_process():
            path = write_eval_results(cfg, _per_dataset(cfg, results), weights=weights)
            logger.info("Wrote %s", path)
        return results

    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=args.resume, overwrite=args.overwrite)
    with _expected_errors_without_traceback(args.traceback):
        results = trainer.train()
    if comm.is_main_process():
        write_learning_curve(cfg, os.path.basename(args.config_files[-1]))
    return results


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """The arguments of ``resnet-backbones-train`` (:func:`resnet_backbones.train_net.base_parser`)
    and ``--dataset NAME ROOT`` for ImageFolder folders."""
    parser = base_parser()
    parser.description = "Pretrain or evaluate the classifier of a ResNet-family preset."
    parser.add_argument(
        "--dataset",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "ROOT"),
        help="register an ImageFolder-layout folder ROOT/<class>/<image> as NAME, for "
        "DATASETS.TRAIN/TEST (repeatable); classes are the sorted subfolder names",
    )
    return check_args(parser, parser.parse_args(argv))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command (see the module doc): 0, or 1 after a one-line error where the input is at
    fault (as :func:`resnet_backbones.train_net.main`)."""
    return run_command(parse_args(argv), run)

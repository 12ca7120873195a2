#!/usr/bin/env python
"""Train or evaluate a detectron2 model with resnet_backbones' backbones.

    python tools/train_net.py --config configs/faster_rcnn_R101.yaml
    python tools/train_net.py --config CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    python tools/train_net.py --config CONFIG --resume          # continue after an interruption

It follows detectron2's ``tools/train_net.py``: DefaultTrainer, periodic checkpoints,
COCOEvaluator (plain pycocotools where detectron2's compiled ops are missing). Trailing
``KEY VALUE`` pairs override the config. A GPU config runs on the CPU, with a warning, where
CUDA is missing.
"""

from __future__ import annotations

import logging
import os
import sys

import torch

# Before anything from detectron2: registers our models and, where detectron2 was built
# without its compiled ops, the stand-in for detectron2._C that its layers import.
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.engine import DefaultPredictor, default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from resnet_backbones.engine import Trainer, check_datasets, load_config, use_cpu_if_no_cuda
from resnet_backbones.visualize import draw_detections, plot_learning_curve
from resnet_backbones.weights.checkpoint import FamilyCheckpointer

logger = logging.getLogger("resnet_backbones.train_net")


def setup(args):
    cfg = load_config(args.config_file, args.opts)
    use_cpu_if_no_cuda(cfg)
    cfg.freeze()
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="resnet_backbones")
    check_datasets(list(cfg.DATASETS.TRAIN if not args.eval_only else []) + list(cfg.DATASETS.TEST))
    return cfg


def write_pictures(cfg, model, num_images: int, title: str = "") -> None:
    """Learning curve of this run, and detections on the first test images."""
    metrics = os.path.join(cfg.OUTPUT_DIR, "metrics.json")
    if os.path.isfile(metrics):
        try:
            out = plot_learning_curve(
                metrics, os.path.join(cfg.OUTPUT_DIR, "learning_curve.png"), title=title
            )
            logger.info("Wrote the learning curve to %s", out)
        except ValueError as e:
            logger.warning("No learning curve: %s", e)
    if num_images > 0 and cfg.DATASETS.TEST:
        name = cfg.DATASETS.TEST[0]
        # The model is loaded already; a DefaultPredictor would read MODEL.WEIGHTS once more,
        # with detectron2's plain pickle.
        predictor_cfg = cfg.clone()
        predictor_cfg.defrost()
        predictor_cfg.MODEL.WEIGHTS = ""
        predictor = DefaultPredictor(predictor_cfg)
        predictor.model = model.eval()
        out = draw_detections(
            predictor,
            DatasetCatalog.get(name)[:num_images],
            MetadataCatalog.get(name),
            os.path.join(cfg.OUTPUT_DIR, "detections.png"),
        )
        logger.info("Wrote detections on %d images of %s to %s", num_images, name, out)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        FamilyCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
            write_pictures(cfg, model, args.visualize, os.path.basename(args.config_file))
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if comm.is_main_process():
        write_pictures(cfg, trainer.model, args.visualize, os.path.basename(args.config_file))
    return results


def parse_args(argv=None):
    parser = default_argument_parser()
    parser.add_argument(
        "--config", dest="config_file", metavar="FILE", help="alias of --config-file"
    )
    parser.add_argument(
        "--visualize",
        type=int,
        default=0,
        metavar="N",
        help="after evaluation, draw detections on the first N test images into OUTPUT_DIR/detections.png",
    )
    args = parser.parse_args(argv)
    if not args.config_file:
        parser.error("a config is required: --config FILE (or --config-file FILE)")
    return args


if __name__ == "__main__":
    args = parse_args()
    if args.num_gpus > 1 and not torch.cuda.is_available():
        logging.getLogger(__name__).warning(
            "--num-gpus %d asked for, but CUDA is not available; running one process on the CPU.",
            args.num_gpus,
        )
        args.num_gpus = 1
    print("Command Line Args:", args, file=sys.stderr)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )

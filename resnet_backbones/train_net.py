"""Train or evaluate a detectron2 model with resnet_backbones' backbones: the command
``resnet-backbones-train`` (also ``python tools/train_net.py``).

    resnet-backbones-train --config configs/faster_rcnn_R101.yaml
    resnet-backbones-train --config CONFIG --eval-only MODEL.WEIGHTS model_final.pth
    resnet-backbones-train --config CONFIG --resume          # continue after an interruption
    resnet-backbones-train --config CONFIG --dataset my_train train.json images/ \\
        DATASETS.TRAIN "('my_train',)"                        # your own COCO-format data
    resnet-backbones-train --config CONFIG --voc-dataset my_voc data/VOC2007 trainval \\
        --voc-classes circle,triangle DATASETS.TRAIN "('my_voc',)"  # a VOC-format folder

It follows detectron2's ``tools/train_net.py``: DefaultTrainer, periodic checkpoints,
COCOEvaluator (on faster-coco-eval where it is installed, else pycocotools:
``TEST.COCO_EVAL_IMPL``, :mod:`resnet_backbones.coco_eval`), and for Pascal VOC datasets
detectron2's VOC evaluator with AP50 by both VOC metrics (:mod:`resnet_backbones.voc_eval`). ``--config`` may be given more than
once: the files are merged in order, a later one winning; trailing ``KEY VALUE`` pairs override
them all. A GPU config runs on the CPU, with a warning, where CUDA is missing.

``--num-gpus``, ``--num-machines``, ``--machine-rank`` and ``--dist-url`` are detectron2's, and
work without CUDA too: ``--num-gpus N`` then starts N CPU processes joined with gloo (see
:func:`resnet_backbones.launch.launch`). Started by ``torchrun``, each process joins torchrun's
group instead and these four options are ignored.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from typing import Any, Callable, Optional, Sequence

import torch

# Before anything from detectron2: registers our models and, where detectron2 was built
# without its compiled ops, the stand-in for detectron2._C that its layers import.
import resnet_backbones  # noqa: F401

# isort: split
from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.engine import DefaultPredictor, default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from .cli_errors import add_traceback_argument, report_user_error, traceback_wanted
from .data import DatasetFormatError, DatasetNotFoundError, register_config_datasets
from .data.coco_format import COCO_FORMAT_KEY, resolve_config_paths
from .data.voc_format import VOC_FORMAT_KEY, resolve_voc_paths
from .engine import (
    ConfigError,
    NumClassesError,
    Trainer,
    check_datasets,
    load_config,
    use_cpu_if_no_cuda,
)
from .inference import optimize_for_inference
from .launch import LaunchError, launch, starts_processes
from .model_zoo import resolve_config_file
from .output_dir import (
    OutputDirInUseError,
    PreviousRunError,
    claim_output_dir_everywhere,
    release,
)
from .resume import TrainingError
from .utils import DiskFullError
from .visualize import draw_detections, plot_learning_curve
from .weights.checkpoint import FamilyCheckpointer
from .weights.errors import WeightsError

__all__ = [
    "NothingToEvaluateError",
    "base_parser",
    "check_args",
    "load_for_evaluation",
    "main",
    "parse_args",
    "run_command",
    "setup_run",
]

logger = logging.getLogger("resnet_backbones.train_net")


class NothingToEvaluateError(FileNotFoundError):
    """``--eval-only`` without weights: MODEL.WEIGHTS is empty and OUTPUT_DIR has no checkpoint."""


# What the command reports as one line instead of a traceback: the user's input is at fault.
# ConfigError: invalid YAML, an unknown key or a value of the wrong type; FileNotFoundError: a
# config, an image or a weights file that is not there; WeightsError: weights that are unknown,
# unsafe, unreadable, non-finite or do not fit, a download that failed, and no checkpoint to
# resume from (resnet_backbones.weights.errors); DiskFullError: no room for a checkpoint or
# metrics; the OUTPUT_DIR errors (resnet_backbones.output_dir); TrainingError: a non-finite loss
# or an out-of-memory step (resnet_backbones.resume); LaunchError: --num-gpus, --num-machines,
# --machine-rank or --dist-url that make no run.
_INPUT_ERRORS = (
    ConfigError,
    DatasetFormatError,
    DiskFullError,
    DatasetNotFoundError,
    NothingToEvaluateError,
    NumClassesError,
    FileNotFoundError,
    LaunchError,
    WeightsError,
    OutputDirInUseError,
    PreviousRunError,
    TrainingError,
)

# The exit status of a process started by launch() that stopped at one of _INPUT_ERRORS, having
# printed it: the command maps it to 1 (EX_DATAERR, from BSD's sysexits.h).
_INPUT_ERROR_STATUS = 65


def setup_run(
    args: argparse.Namespace,
    register: Callable[[CfgNode], None],
    before_freeze: Optional[Callable[[CfgNode], None]] = None,
) -> CfgNode:
    """What the training and the pretraining commands do before they build anything: the
    config (files, overrides, ``before_freeze(cfg)``, the CPU where CUDA is missing), OUTPUT_DIR
    claimed for a training run, detectron2's ``default_setup``, the log, the datasets registered
    by ``register(cfg)`` and checked."""
    cfg = load_config(args.config_files, args.opts)
    # detectron2's default_setup logs the contents of args.config_file: the file, not its name.
    args.config_file = resolve_config_file(args.config_files[-1])
    if before_freeze is not None:
        before_freeze(cfg)
    use_cpu_if_no_cuda(cfg)
    cfg.freeze()
    if not args.eval_only:
        # Before default_setup writes OUTPUT_DIR/config.yaml: a refused run must not overwrite
        # the config of the run it would have overwritten (the Trainer gets the same lock).
        args.output_lock = claim_output_dir_everywhere(
            cfg.OUTPUT_DIR, resume=args.resume, overwrite=args.overwrite
        )
    default_setup(cfg, args)
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="resnet_backbones")
    register(cfg)
    check_datasets(list(cfg.DATASETS.TRAIN if not args.eval_only else []) + list(cfg.DATASETS.TEST))
    return cfg


def setup(args: argparse.Namespace) -> CfgNode:
    """The config of this run (files, overrides, ``--dataset``, ``--voc-dataset``), with its
    datasets registered and checked."""

    def add_datasets(cfg: CfgNode) -> None:
        if args.dataset:
            cfg.DATASETS.COCO_FORMAT = list(cfg.DATASETS.COCO_FORMAT) + resolve_config_paths(
                args.dataset, os.getcwd(), key="--dataset"
            )
        voc_datasets = getattr(args, "voc_dataset", [])
        if voc_datasets:
            classes = getattr(args, "voc_classes", [])
            entries = [[*triple, *classes] for triple in voc_datasets]
            cfg.DATASETS.VOC_FORMAT = list(cfg.DATASETS.VOC_FORMAT) + resolve_voc_paths(
                entries, os.getcwd(), key="--voc-dataset"
            )

    return setup_run(args, register_config_datasets, before_freeze=add_datasets)


class LoadedModelPredictor(DefaultPredictor):
    """detectron2's DefaultPredictor (one BGR image in, resized to ``INPUT.*_SIZE_TEST``) around
    a model that is loaded already: unlike DefaultPredictor, it builds and loads nothing (which
    would log "Initializing model from scratch" for an empty MODEL.WEIGHTS, and read the file
    with detectron2's plain pickle otherwise)."""

    def __init__(self, cfg: CfgNode, model: torch.nn.Module):
        self.cfg = cfg.clone()
        self.model = model.eval()
        if len(cfg.DATASETS.TEST):
            self.metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT


def write_pictures(cfg: CfgNode, model: torch.nn.Module, num_images: int, title: str = "") -> None:
    """Learning curve of this run, and ``model``'s detections on the first test images."""
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
        records = DatasetCatalog.get(name)[:num_images]
        out = draw_detections(
            LoadedModelPredictor(cfg, model),
            records,
            MetadataCatalog.get(name),
            os.path.join(cfg.OUTPUT_DIR, "detections.png"),
        )
        logger.info("Wrote detections on %d images of %s to %s", len(records), name, out)


def load_for_evaluation(cfg: CfgNode, model: torch.nn.Module, resume: bool) -> str:
    """Loads the weights ``--eval-only`` evaluates into ``model``; returns their path.

    As detectron2's ``resume_or_load``: with ``--resume``, the last checkpoint of OUTPUT_DIR if
    there is one, else MODEL.WEIGHTS. Where MODEL.WEIGHTS is empty, the last checkpoint of
    OUTPUT_DIR (the run's own model) rather than a model from scratch. A last checkpoint that is
    torn or not finite is passed over, with a warning, for the newest one that loads
    (:meth:`FamilyCheckpointer.load_last_good`).

    Raises:
        NothingToEvaluateError: MODEL.WEIGHTS is empty and OUTPUT_DIR holds no checkpoint.
        NoGoodCheckpointError: OUTPUT_DIR has checkpoints, but none loads.
    """
    checkpointer = FamilyCheckpointer(model, save_dir=cfg.OUTPUT_DIR, cfg=cfg)
    if (resume or not cfg.MODEL.WEIGHTS) and checkpointer.has_checkpoint():
        path, _ = checkpointer.load_last_good()
        reason = "--resume" if resume else "MODEL.WEIGHTS is empty"
        logger.info("Evaluating %s, the last checkpoint in OUTPUT_DIR (%s)", path, reason)
        return path
    if cfg.MODEL.WEIGHTS:
        path = cfg.MODEL.WEIGHTS
        logger.info("Evaluating MODEL.WEIGHTS = %s", path)
    else:
        raise NothingToEvaluateError(
            f"--eval-only has no weights to evaluate: MODEL.WEIGHTS is empty and OUTPUT_DIR "
            f"{os.path.abspath(cfg.OUTPUT_DIR)!r} holds no checkpoint (no 'last_checkpoint' "
            "file). Pass MODEL.WEIGHTS path/to/model_final.pth, or the OUTPUT_DIR of a training "
            "run"
        )
    checkpointer.load(path)
    return path


def run(args: argparse.Namespace):
    """One process of the command: train (or resume) and evaluate, or evaluate only; OUTPUT_DIR
    is released at the end, also after an error."""
    try:
        return _run(args)
    finally:
        release(getattr(args, "output_lock", None))
        args.output_lock = None


def _run(args: argparse.Namespace):
    cfg = setup(args)
    title = os.path.basename(args.config_files[-1])
    if args.eval_only:
        model = Trainer.build_model(cfg)
        load_for_evaluation(cfg, model, args.resume)
        if cfg.TEST.OPTIMIZE_FOR_INFERENCE:
            # Evaluated only, never trained: its norms can be folded (eval mode first).
            optimize_for_inference(model.eval())
        results = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
            write_pictures(cfg, model, args.visualize, title)
        return results

    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume, overwrite=args.overwrite)
    with _expected_errors_without_traceback(args.traceback):
        results = trainer.train()
    if comm.is_main_process():
        write_pictures(cfg, trainer.model, args.visualize, title)
    return results


class _UserErrorWithoutTraceback(logging.Filter):
    """Drops the traceback from detectron2's "Exception during training:" log record where the
    exception is one of ``_INPUT_ERRORS`` (a non-finite loss, a full disk ...): the command then
    reports it in one line, and the log says only that training stopped."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, _INPUT_ERRORS):
            record.msg, record.args = "Training stopped: %s: %s", (type(error).__name__, error)
            record.exc_info = record.exc_text = None
        return True


@contextlib.contextmanager
def _expected_errors_without_traceback(traceback: bool):
    """Within it, detectron2's training loop logs an expected error without its traceback
    (unless ``traceback``: ``--traceback`` or ``RESNET_BACKBONES_TRACEBACK=1``)."""
    if traceback_wanted(traceback):
        yield
        return
    train_loop_logger = logging.getLogger("detectron2.engine.train_loop")
    quiet = _UserErrorWithoutTraceback()
    train_loop_logger.addFilter(quiet)
    try:
        yield
    finally:
        train_loop_logger.removeFilter(quiet)


def _run_in_started_process(run_fn: Callable[[argparse.Namespace], Any], args: argparse.Namespace):
    """``run_fn`` (:func:`run`) in a process that :func:`launch` started: one of ``_INPUT_ERRORS`` is
    printed as one line here, and the process exits with ``_INPUT_ERROR_STATUS``, which
    :func:`main` turns into 1 (torch.multiprocessing would print the whole traceback). With
    ``--traceback`` the error propagates, and torch.multiprocessing shows its traceback.

    It exits at once (``os._exit``, after flushing the logs): a normal exit would first wait
    seconds for gloo to take down a process group the other processes still hold."""
    try:
        return run_fn(args)
    except _INPUT_ERRORS as e:
        report_user_error(e, f"error: {type(e).__name__}: {e}", 1, traceback=args.traceback)
        sys.stderr.flush()
        logging.shutdown()
        os._exit(_INPUT_ERROR_STATUS)


def base_parser() -> argparse.ArgumentParser:
    """detectron2's arguments (``--eval-only``, ``--resume``, ``--num-gpus`` ...) with a
    repeatable ``--config``, and ``--overwrite`` and ``--traceback``: what the training and the
    pretraining commands share. Check what it parses with :func:`check_args`."""
    parser = default_argument_parser()
    # detectron2's --config-file becomes repeatable, with --config as its alias ("resolve"
    # replaces the option of the same name).
    parser.add_argument_group("config", conflict_handler="resolve").add_argument(
        "--config",
        "--config-file",
        dest="config_files",
        action="append",
        default=[],
        metavar="FILE",
        help="a config file; repeat it to merge several in order (a later file wins)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="start a new run in an OUTPUT_DIR that holds a previous one, deleting its "
        "checkpoints and metrics (without it, such a start is refused: use --resume to continue)",
    )
    add_traceback_argument(parser)
    return parser


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Fails, through ``parser``, without a config or with options after the overrides; sets
    ``args.config_file`` to the last config (what detectron2's ``default_setup`` reads)."""
    if not args.config_files:
        parser.error("a config is required: --config FILE (or --config-file FILE)")
    # The overrides take the rest of the command line; a config key never starts with "--".
    misplaced = [opt for opt in args.opts if opt.startswith("--")]
    if misplaced:
        parser.error(
            f"{misplaced[0]} comes after the KEY VALUE overrides, which take the rest of the "
            f"command line; put options first, e.g. --config FILE {misplaced[0]} ... KEY VALUE"
        )
    args.config_file = args.config_files[-1]
    return args


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """detectron2's arguments (``--eval-only``, ``--resume``, ``--num-gpus`` ...) and ours;
    ``config_files`` lists the ``--config`` files in order (``config_file`` is the last)."""
    parser = base_parser()
    parser.add_argument(
        "--dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "JSON_FILE", "IMAGE_ROOT"),
        help=f"register COCO-format data as NAME, for DATASETS.TRAIN/TEST (repeatable; adds to "
        f"{COCO_FORMAT_KEY}); relative paths are relative to the working directory",
    )
    parser.add_argument(
        "--voc-dataset",
        nargs=3,
        action="append",
        default=[],
        metavar=("NAME", "DIR", "SPLIT"),
        help=f"register a Pascal VOC-format folder as NAME, for DATASETS.TRAIN/TEST: DIR holds "
        f"Annotations/, JPEGImages/ and ImageSets/Main/SPLIT.txt (repeatable; adds to "
        f"{VOC_FORMAT_KEY}; evaluated with the VOC metrics); relative paths are relative to the "
        "working directory",
    )
    parser.add_argument(
        "--voc-classes",
        type=_class_list,
        default=[],
        metavar="C1,C2,...",
        help="the classes of the --voc-dataset folders, comma-separated, in the order of the "
        "model's outputs (default: VOC's 20 classes)",
    )
    parser.add_argument(
        "--visualize",
        type=int,
        default=0,
        metavar="N",
        help="after evaluation, draw detections on the first N test images into OUTPUT_DIR/detections.png",
    )
    args = check_args(parser, parser.parse_args(argv))
    if args.voc_classes and not args.voc_dataset:
        parser.error("--voc-classes names the classes of --voc-dataset folders, but none is given")
    return args


def _class_list(text: str) -> list[str]:
    """``--voc-classes``: comma-separated class names, none empty."""
    classes = [c.strip() for c in text.split(",")]
    if not all(classes):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a list of class names; write them comma-separated, e.g. "
            "circle,triangle,rectangle"
        )
    return classes


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command: parses ``argv`` (default: ``sys.argv[1:]``) and runs on ``--num-gpus``
    processes. Returns 0, or 1 after a one-line error where the input is at fault: a config,
    dataset, image or weights file missing or malformed, weights that do not fit or are not
    finite (a diverged run), nothing to evaluate or resume from, a full disk, an OUTPUT_DIR in use
    or holding a previous run, a non-finite loss or an out-of-memory step, or a number of classes
    that is not the data's (raised in any of the ``--num-gpus`` processes). With ``--traceback``
    or ``RESNET_BACKBONES_TRACEBACK=1``, such an error propagates instead, with its traceback
    (see :mod:`resnet_backbones.cli_errors`)."""
    return run_command(parse_args(argv), run)


def run_command(args: argparse.Namespace, run_fn: Callable[[argparse.Namespace], Any]) -> int:
    """``run_fn(args)`` on ``--num-gpus`` processes, with the errors of :func:`main`."""
    print("Command Line Args:", args, file=sys.stderr)
    try:
        try:
            if starts_processes(args.num_gpus, args.num_machines):
                worker, worker_args = _run_in_started_process, (run_fn, args)
            else:
                worker, worker_args = run_fn, (args,)
            launch(
                worker,
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=worker_args,
            )
        except torch.multiprocessing.ProcessExitedException as e:
            if e.exit_code != _INPUT_ERROR_STATUS:
                raise
            return 1  # the process has printed the error
    except _INPUT_ERRORS as e:
        return report_user_error(e, f"error: {type(e).__name__}: {e}", 1, traceback=args.traceback)
    return 0

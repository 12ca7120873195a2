"""COCO evaluation on faster-coco-eval where it is installed, else on pycocotools.

pycocotools' ``COCOeval`` matches detections image by image and category by category in Python:
minutes on COCO val's 500k detections. faster-coco-eval (``pip install
"resnet_backbones[fast-eval]"``) is the same algorithm with the matching and accumulation in C++
and pycocotools' API (its authors report 3.9x on COCO val; ``tools/benchmark_coco_eval.py``
measures it on a generated set of that size). detectron2's own C++ evaluator
(``COCOeval_opt``, ``use_fast_impl=True``) needs its compiled ops, which our install lacks.

:class:`COCOEvaluator` is detectron2's evaluator with the implementation chosen once, at
construction (:func:`resolve_coco_eval_impl`; ``TEST.COCO_EVAL_IMPL`` in a config):

* ``"auto"``: faster-coco-eval where it imports, else detectron2's default: its C++
  ``COCOeval_opt`` where detectron2 has its compiled ops, plain pycocotools where not;
* ``"pycocotools"``: plain pycocotools, the official implementation, whatever is installed;
* ``"faster_coco_eval"``: faster-coco-eval, an error naming the pip command where it is missing.

Whatever the implementation, the log (pycocotools' 12-line summary on stdout, to which
faster-coco-eval adds AR at IoU 0.50 and 0.75; detectron2's AP table and per-category table) and
the results (``results["bbox"]``: ``AP``, ``AP50``, ..., ``AP-<category>``) are detectron2's;
``tests/test_coco_eval.py`` checks the numbers equal pycocotools' to 1e-4.
"""

from __future__ import annotations

import copy
import importlib
import itertools
import json
import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from detectron2.evaluation import COCOEvaluator as _DetectronCOCOEvaluator
from detectron2.evaluation.coco_evaluation import _evaluate_predictions_on_coco
from detectron2.utils.file_io import PathManager

from ._compat import uses_c_stand_in
from .utils import check_choice

__all__ = [
    "COCO_EVAL_IMPLS",
    "COCOEvalSummary",
    "COCOEvalUnavailable",
    "COCOEvaluator",
    "FAST_EVAL_INSTALL",
    "evaluate_predictions_on_coco",
    "faster_coco_eval_available",
    "resolve_coco_eval_impl",
]

# The values of TEST.COCO_EVAL_IMPL and of COCOEvaluator's `impl`.
COCO_EVAL_IMPLS = ("auto", "pycocotools", "faster_coco_eval")
# How to get faster-coco-eval: the extra of setup.py, or the pinned distribution itself.
FAST_EVAL_INSTALL = (
    'pip install "resnet_backbones[fast-eval]" (or pip install faster-coco-eval==1.8.0)'
)


class COCOEvalUnavailable(ImportError):
    """faster-coco-eval was asked for by name and does not import."""


def _import_faster_coco_eval() -> Any:
    return importlib.import_module("faster_coco_eval")


def faster_coco_eval_available() -> bool:
    """Whether faster-coco-eval imports (installed, and built for this numpy)."""
    try:
        _import_faster_coco_eval()
    except ImportError:
        return False
    return True


def resolve_coco_eval_impl(impl: str = "auto", *, key: str = "impl") -> str:
    """The implementation ``impl`` stands for here: "faster_coco_eval" or "pycocotools".

    Args:
        impl: one of :data:`COCO_EVAL_IMPLS`.
        key: what errors call ``impl`` ("TEST.COCO_EVAL_IMPL" for a config).

    Raises:
        ValueError: ``impl`` is not one of :data:`COCO_EVAL_IMPLS`.
        COCOEvalUnavailable: ``impl`` is "faster_coco_eval" and faster-coco-eval does not import.
    """
    check_choice(key, impl, COCO_EVAL_IMPLS)
    if impl == "pycocotools":
        return "pycocotools"
    try:
        _import_faster_coco_eval()
    except ImportError as e:
        if impl == "faster_coco_eval":
            raise COCOEvalUnavailable(
                f"{key} = 'faster_coco_eval' but faster-coco-eval does not import ({e}); "
                f"install it: {FAST_EVAL_INSTALL}; or set {key} to 'auto' or 'pycocotools'"
            ) from e
        return "pycocotools"
    return "faster_coco_eval"


def evaluate_predictions_on_coco(
    coco_gt: Any,
    coco_results: list[dict],
    iou_type: str,
    *,
    impl: str,
    kpt_oks_sigmas: Optional[Sequence[float]] = None,
    use_fast_impl: bool = False,
    img_ids: Optional[Sequence[int]] = None,
    max_dets_per_image: Optional[Sequence[int]] = None,
) -> Any:
    """detectron2's ``_evaluate_predictions_on_coco`` on the implementation ``impl``.

    Args:
        coco_gt: the ground truth, a ``COCO`` of that implementation (pycocotools' or
            faster-coco-eval's).
        coco_results: COCO result dicts; ``COCO.loadRes`` adds ``area``, ``id`` ... to them, as
            detectron2's evaluator lets it.
        iou_type: "bbox", "segm" or "keypoints".
        impl: "pycocotools" (detectron2's own function: ``COCOeval``, or ``COCOeval_opt`` with
            ``use_fast_impl``) or "faster_coco_eval" (``COCOeval_faster``).
        kpt_oks_sigmas, img_ids, max_dets_per_image: as detectron2's.

    Returns:
        The evaluated, accumulated and summarized COCOeval: ``stats`` (the 12 box numbers),
        ``eval["precision"]`` (IoU x recall x category x area x max detections).
    """
    check_choice("impl", impl, COCO_EVAL_IMPLS[1:])
    if impl == "pycocotools":
        return _evaluate_predictions_on_coco(
            coco_gt,
            coco_results,
            iou_type,
            kpt_oks_sigmas=kpt_oks_sigmas,
            use_fast_impl=use_fast_impl,
            img_ids=img_ids,
            max_dets_per_image=max_dets_per_image,
        )
    faster_coco_eval = _import_faster_coco_eval()
    assert len(coco_results) > 0
    if iou_type == "segm":
        # As detectron2: mask AP uses the mask's area for small/medium/large, not the box's.
        coco_results = copy.deepcopy(coco_results)
        for c in coco_results:
            c.pop("bbox", None)
    coco_dt = coco_gt.loadRes(coco_results)
    # print: pycocotools' summary lines go to stdout, as with detectron2's evaluator.
    coco_eval = faster_coco_eval.COCOeval_faster(coco_gt, coco_dt, iou_type, print_function=print)
    if iou_type != "keypoints":
        # COCOeval_faster reads AP at maxDets[-1] whatever it is: detectron2's COCOevalMaxDets
        # (its summary for max_dets_per_image != 100) is built in.
        coco_eval.params.maxDets = list(max_dets_per_image or [1, 10, 100])
    if img_ids is not None:
        coco_eval.params.imgIds = img_ids
    if iou_type == "keypoints":
        if kpt_oks_sigmas:
            coco_eval.params.kpt_oks_sigmas = np.array(kpt_oks_sigmas)
        num_keypoints_dt = len(coco_results[0]["keypoints"]) // 3
        num_keypoints_gt = len(next(iter(coco_gt.anns.values()))["keypoints"]) // 3
        num_keypoints_oks = len(coco_eval.params.kpt_oks_sigmas)
        if not num_keypoints_oks == num_keypoints_dt == num_keypoints_gt:
            raise ValueError(
                f"[COCOEvaluator] Prediction contain {num_keypoints_dt} keypoints. Ground truth "
                f"contains {num_keypoints_gt} keypoints. The length of cfg.TEST.KEYPOINT_OKS_SIGMAS "
                f"is {num_keypoints_oks}. They have to agree with each other."
            )
    coco_eval.evaluate()
    coco_eval.accumulate()
    coco_eval.summarize()
    return coco_eval


@dataclass(frozen=True)
class COCOEvalSummary:
    """What an evaluated COCOeval found, without the matches it holds.

    Attributes:
        evaluator: the COCOeval's class, ``module.name``.
        stats: the summary: AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl for
            boxes and masks (faster-coco-eval's ``stats`` are these too).
        precision: IoU x recall x category x area x max detections (-1: not defined).
        recall: IoU x category x area x max detections.
    """

    evaluator: str
    stats: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    @classmethod
    def of(cls, coco_eval: Any) -> COCOEvalSummary:
        """The summary of an evaluated, accumulated and summarized COCOeval."""
        kind = type(coco_eval)
        return cls(
            evaluator=f"{kind.__module__}.{kind.__name__}",
            stats=np.array(coco_eval.stats, dtype=np.float64),
            precision=np.asarray(coco_eval.eval["precision"]),
            recall=np.asarray(coco_eval.eval["recall"]),
        )


class COCOEvaluator(_DetectronCOCOEvaluator):
    """detectron2's ``COCOEvaluator`` on faster-coco-eval or pycocotools (``impl``, see the
    module docstring), which also keeps each task's numbers in :attr:`summaries`.

    Args:
        dataset_name, tasks, distributed, output_dir, max_dets_per_image, kpt_oks_sigmas: as
            detectron2's.
        impl: "auto", "pycocotools" or "faster_coco_eval" (:func:`resolve_coco_eval_impl`). It
            replaces detectron2's ``use_fast_impl``: "auto" uses detectron2's ``COCOeval_opt``
            where faster-coco-eval is missing and detectron2 has its compiled ops.

    Attributes:
        impl: the implementation resolved: "faster_coco_eval" or "pycocotools".
        summaries: after :meth:`evaluate`, the :class:`COCOEvalSummary` of each evaluated task
            ("bbox" ...): all 12 numbers, the precision and recall arrays. Not the COCOeval
            itself, which holds every match (gigabytes on COCO val with pycocotools).
    """

    def __init__(
        self,
        dataset_name: str,
        tasks: Optional[Sequence[str]] = None,
        distributed: bool = True,
        output_dir: Optional[str] = None,
        *,
        max_dets_per_image: Optional[int] = None,
        kpt_oks_sigmas: Sequence[float] = (),
        impl: str = "auto",
    ):
        self.impl = resolve_coco_eval_impl(impl)
        super().__init__(
            dataset_name,
            tasks,
            distributed,
            output_dir,
            max_dets_per_image=max_dets_per_image,
            use_fast_impl=impl == "auto" and self.impl == "pycocotools" and not uses_c_stand_in(),
            kpt_oks_sigmas=kpt_oks_sigmas,
        )
        self.summaries: dict[str, COCOEvalSummary] = {}
        self._coco_gt = self._coco_api
        if self.impl == "faster_coco_eval" and self._do_evaluation:
            # faster-coco-eval's own COCO of the same file: its COCOeval reads the index that
            # its COCO builds. detectron2's pycocotools COCO stays for the box proposals' AR.
            json_file = PathManager.get_local_path(self._metadata.json_file)
            self._coco_gt = _import_faster_coco_eval().COCO(json_file)

    def _implementation_name(self) -> str:
        if self.impl == "faster_coco_eval":
            return f"faster-coco-eval {_import_faster_coco_eval().__version__}"
        return "unofficial (detectron2's COCOeval_opt)" if self._use_fast_impl else "official"

    def _eval_predictions(
        self, predictions: list[dict], img_ids: Optional[Sequence[int]] = None
    ) -> None:
        """detectron2 v0.6's ``COCOEvaluator._eval_predictions``, line for line, but for the
        evaluation call: detectron2 picks the COCOeval class inside a module-level function
        (``_evaluate_predictions_on_coco``), which no argument or subclass can change."""
        self.summaries = {}  # this evaluation's only: no task keeps a previous one's numbers
        self._logger.info("Preparing results for COCO format ...")
        coco_results = list(itertools.chain(*[x["instances"] for x in predictions]))
        tasks = self._tasks or self._tasks_from_predictions(coco_results)

        # unmap the category ids for COCO
        if hasattr(self._metadata, "thing_dataset_id_to_contiguous_id"):
            dataset_id_to_contiguous_id = self._metadata.thing_dataset_id_to_contiguous_id
            all_contiguous_ids = list(dataset_id_to_contiguous_id.values())
            num_classes = len(all_contiguous_ids)
            assert min(all_contiguous_ids) == 0 and max(all_contiguous_ids) == num_classes - 1

            reverse_id_mapping = {v: k for k, v in dataset_id_to_contiguous_id.items()}
            for result in coco_results:
                category_id = result["category_id"]
                assert category_id < num_classes, (
                    f"A prediction has class={category_id}, "
                    f"but the dataset only has {num_classes} classes and "
                    f"predicted class id should be in [0, {num_classes - 1}]."
                )
                result["category_id"] = reverse_id_mapping[category_id]

        if self._output_dir:
            file_path = os.path.join(self._output_dir, "coco_instances_results.json")
            self._logger.info(f"Saving results to {file_path}")
            with PathManager.open(file_path, "w") as f:
                f.write(json.dumps(coco_results))
                f.flush()

        if not self._do_evaluation:
            self._logger.info("Annotations are not available for evaluation.")
            return

        self._logger.info(f"Evaluating predictions with {self._implementation_name()} COCO API...")
        for task in sorted(tasks):
            assert task in {"bbox", "segm", "keypoints"}, f"Got unknown task: {task}!"
            coco_eval = (
                evaluate_predictions_on_coco(
                    self._coco_gt,
                    coco_results,
                    task,
                    impl=self.impl,
                    kpt_oks_sigmas=self._kpt_oks_sigmas,
                    use_fast_impl=self._use_fast_impl,
                    img_ids=img_ids,
                    max_dets_per_image=self._max_dets_per_image,
                )
                if len(coco_results) > 0
                else None  # cocoapi does not handle empty results very well
            )
            if coco_eval is not None:
                self.summaries[task] = COCOEvalSummary.of(coco_eval)
            res = self._derive_coco_results(
                coco_eval, task, class_names=self._metadata.get("thing_classes")
            )
            self._results[task] = res

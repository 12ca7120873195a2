"""Pascal VOC box evaluation: detectron2's evaluator, reporting AP50 by both of VOC's metrics.

The ResNet paper's VOC numbers (76.4 mAP on VOC 2007 test with ResNet-101) are AP at IoU 0.5
by the VOC2007 devkit's 11-point interpolated precision; VOC 2010 and later, and most papers
since, use the area under the interpolated precision-recall curve instead. detectron2's
``PascalVOCDetectionEvaluator`` chooses one of the two by the dataset's ``year``. Here the
matching is detectron2's ``voc_eval`` (unchanged: a port of py-faster-rcnn's, itself the
devkit's), once per class and IoU threshold, and at IoU 0.5 its precision-recall curve goes
through detectron2's ``voc_ap`` with both metrics. ``results["bbox"]`` holds:

* ``AP``, ``AP50``, ``AP75``: detectron2's numbers, by the year's metric (AP: the mean over
  IoU 0.50:0.95 in steps of 0.05, COCO-style);
* ``AP50_voc07``: AP50 by the VOC2007 11-point metric, the paper's;
* ``AP50_area``: AP50 by the area (all-point) metric;
* ``AP50-<class>``: each class's AP50 by the year's metric.

All are percentages. A class without ground truth in the test set (difficult boxes aside) has
no AP: NaN, left out of the means, as COCO's evaluator does (detectron2's VOC evaluator
averages its NaN or 0 in). The Trainer writes them, as ``bbox/AP50_voc07`` ..., into the event
storage (``metrics.json``) and the log where it writes COCO's.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict, defaultdict

import numpy as np
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import parse_rec, voc_ap, voc_eval
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ._compat import numpy_aliases

__all__ = ["IOU_THRESHOLDS", "VOCDetectionEvaluator"]

# detectron2's: AP is the mean over these (percent), AP50 and AP75 two of them.
IOU_THRESHOLDS = tuple(range(50, 100, 5))


class VOCDetectionEvaluator(PascalVOCDetectionEvaluator):
    """detectron2's ``PascalVOCDetectionEvaluator`` (the same ``AP``, ``AP50``, ``AP75``), which
    also reports ``AP50_voc07``, ``AP50_area`` and ``AP50-<class>`` (see the module's
    docstring). Like detectron2's, it gathers the predictions of every process; the main
    process returns the results, the others None."""

    def evaluate(self):
        all_predictions = comm.gather(self._predictions, dst=0)
        if not comm.is_main_process():
            return None
        predictions = defaultdict(list)
        for predictions_per_rank in all_predictions:
            for class_id, lines in predictions_per_rank.items():
                predictions[class_id].extend(lines)
        del all_predictions
        self._logger.info(
            "Evaluating %s: AP, AP50 and AP75 by the %s metric, AP50 by both the VOC2007 11-point "
            "and the area metric (detectron2's voc_eval, not the official Matlab code)",
            self._dataset_name,
            "VOC2007 11-point" if self._is_2007 else "area",
        )

        # A class without ground truth has no AP (voc_eval divides by its zero count: NaN or
        # 0 by the metric); as COCO's evaluator does, it is left out of the means.
        counted = self._has_ground_truth()
        if not all(counted):
            self._logger.warning(
                "%s: no ground truth (difficult boxes aside) of the classes %s; their AP is "
                "NaN and left out of the means",
                self._dataset_name,
                [c for c, has in zip(self._class_names, counted) if not has],
            )

        aps = defaultdict(list)  # IoU threshold (percent) -> the AP of each class
        ap50 = {True: [], False: []}  # use_07_metric -> the AP50 of each class
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as dirname:
            results_file = os.path.join(dirname, "{}.txt")
            for class_id, class_name in enumerate(self._class_names):
                if not counted[class_id]:
                    for threshold in IOU_THRESHOLDS:
                        aps[threshold].append(float("nan"))
                    ap50[True].append(float("nan"))
                    ap50[False].append(float("nan"))
                    continue
                with open(results_file.format(class_name), "w") as f:
                    f.write("\n".join(predictions.get(class_id, [""])))
                for threshold in IOU_THRESHOLDS:
                    # voc_eval uses np.bool, which numpy 1.24 removed.
                    with numpy_aliases():
                        recall, precision, ap = voc_eval(
                            results_file,
                            self._anno_file_template,
                            self._image_set_path,
                            class_name,
                            ovthresh=threshold / 100.0,
                            use_07_metric=self._is_2007,
                        )
                    aps[threshold].append(ap * 100)
                    if threshold == 50:
                        other = voc_ap(recall, precision, use_07_metric=not self._is_2007)
                        ap50[self._is_2007].append(ap * 100)
                        ap50[not self._is_2007].append(other * 100)

        def mean(values: list) -> float:
            kept = [v for v, has in zip(values, counted) if has]
            return float(np.mean(kept)) if kept else float("nan")

        mean_ap = {threshold: mean(values) for threshold, values in aps.items()}
        bbox = {
            "AP": float(np.mean(list(mean_ap.values()))),
            "AP50": mean_ap[50],
            "AP75": mean_ap[75],
            "AP50_voc07": mean(ap50[True]),
            "AP50_area": mean(ap50[False]),
        }
        # A class without ground truth has no AP (not even NaN: metrics.json is strict JSON).
        for class_name, value, has in zip(self._class_names, aps[50], counted):
            if has:
                bbox[f"AP50-{class_name}"] = float(value)
        return OrderedDict(bbox=bbox)

    def _has_ground_truth(self) -> list[bool]:
        """For each class, whether the test set has a box of it that is not ``difficult`` (what
        voc_eval counts as its positives), read with detectron2's cached ``parse_rec``."""
        with PathManager.open(self._image_set_path) as f:
            image_ids = [line.strip() for line in f.readlines()]
        names = {
            obj["name"]
            for image_id in image_ids
            for obj in parse_rec(self._anno_file_template.format(image_id))
            if not obj["difficult"]
        }
        return [name in names for name in self._class_names]

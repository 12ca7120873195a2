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

All are percentages. The Trainer writes them, as ``bbox/AP50_voc07`` ..., into the event
storage (``metrics.json``) and the log where it writes COCO's.
"""

from __future__ import annotations

import os
import tempfile
from collections import OrderedDict, defaultdict

import numpy as np
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.evaluation.pascal_voc_evaluation import voc_ap, voc_eval
from detectron2.utils import comm

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

        aps = defaultdict(list)  # IoU threshold (percent) -> the AP of each class
        ap50 = {True: [], False: []}  # use_07_metric -> the AP50 of each class
        with tempfile.TemporaryDirectory(prefix="pascal_voc_eval_") as dirname:
            results_file = os.path.join(dirname, "{}.txt")
            for class_id, class_name in enumerate(self._class_names):
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

        mean_ap = {threshold: float(np.mean(values)) for threshold, values in aps.items()}
        bbox = {
            "AP": float(np.mean(list(mean_ap.values()))),
            "AP50": mean_ap[50],
            "AP75": mean_ap[75],
            "AP50_voc07": float(np.mean(ap50[True])),
            "AP50_area": float(np.mean(ap50[False])),
        }
        for class_name, value in zip(self._class_names, aps[50]):
            bbox[f"AP50-{class_name}"] = float(value)
        return OrderedDict(bbox=bbox)

"""COCO evaluation on faster-coco-eval (resnet_backbones.coco_eval): the same AP table as
pycocotools to 1e-4 on the quickstart's kind of data and on a generated set of COCO's shape,
the choice of implementation (TEST.COCO_EVAL_IMPL) and its errors, and the benchmark's JSON.

The generated set is 500 images here, a tenth of COCO val: pycocotools takes about 12 s on it
on 2 cores, over 2 minutes on the 5000 images, which tools/benchmark_coco_eval.py compares."""

import json
import math
import sys

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator as DetectronCOCOEvaluator
from detectron2.structures import Boxes, BoxMode, Instances

from resnet_backbones.coco_eval import (
    COCO_EVAL_IMPLS,
    COCOEvalSummary,
    COCOEvaluator,
    COCOEvalUnavailable,
    evaluate_predictions_on_coco,
    faster_coco_eval_available,
    resolve_coco_eval_impl,
)
from resnet_backbones.config import ConfigError
from resnet_backbones.data.synthetic_coco import coco_category_ids, generate_coco_eval_set
from resnet_backbones.engine import Trainer

from .helpers import load_tool, tiny_cfg, tiny_shapes

TOLERANCE = 1e-4
IMPLS = ("pycocotools", "faster_coco_eval")
SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


@pytest.fixture(scope="module")
def tiny_datasets():
    return tiny_shapes()


@pytest.fixture
def without_faster_coco_eval(monkeypatch):
    """faster-coco-eval made unimportable, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "faster_coco_eval", None)


def _evaluate(evaluator, inputs, outputs, capsys):
    """``evaluator``'s results on ``outputs`` and pycocotools' summary lines it printed."""
    evaluator.reset()
    evaluator.process(inputs, outputs)
    results = evaluator.evaluate()
    printed = capsys.readouterr().out
    return results, [line for line in printed.splitlines() if line.startswith(" Average")]


def _assert_same_table(reference, other):
    """The same keys, and every number within TOLERANCE (results are in percent)."""
    assert reference.keys() == other.keys()
    for task in reference:
        assert reference[task].keys() == other[task].keys()
        for key, value in reference[task].items():
            if math.isnan(value):
                assert math.isnan(other[task][key]), (task, key)
            else:
                assert abs(value - other[task][key]) <= 100 * TOLERANCE, (task, key)


def _assert_same_summary(pyco_lines, fast_lines):
    """pycocotools' 12 printed summary lines, then faster-coco-eval's two more: AR at IoU 0.50
    and 0.75."""
    assert len(pyco_lines) == 12 and fast_lines[:12] == pyco_lines
    assert [line.split("|")[0] for line in fast_lines[12:]] == [
        " Average Recall     (AR) @[ IoU=0.50      ",
        " Average Recall     (AR) @[ IoU=0.75      ",
    ]


def _assert_same_evaluation(reference, other):
    """All 12 summary numbers, precision and recall within TOLERANCE (COCOEvalSummary)."""
    assert reference.stats.shape == (12,)
    np.testing.assert_allclose(other.stats, reference.stats, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(other.precision, reference.precision, rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(other.recall, reference.recall, rtol=0, atol=TOLERANCE)


def _instances(boxes_xyxy, scores, classes, size):
    instances = Instances(size)
    instances.pred_boxes = Boxes(
        torch.as_tensor(np.asarray(boxes_xyxy, dtype=np.float32)).reshape(-1, 4)
    )
    instances.scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))
    instances.pred_classes = torch.as_tensor(np.asarray(classes, dtype=np.int64))
    return instances


def _shapes_detections(dataset_dicts, num_classes, seed=0):
    """A detector's kind of output on the shapes images: 1-3 jittered boxes per object (the
    right class 80% of the time) and 5 false positives per image, as model inputs/outputs."""
    rng = np.random.default_rng(seed)
    inputs, outputs = [], []
    for record in dataset_dicts:
        height, width = record["height"], record["width"]
        boxes, scores, classes = [], [], []
        for ann in record["annotations"]:
            x1, y1, x2, y2 = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
            size = np.array([x2 - x1, y2 - y1, x2 - x1, y2 - y1])
            for _ in range(rng.integers(1, 4)):
                jitter = rng.uniform(0.02, 0.4)
                box = np.array([x1, y1, x2, y2]) + rng.normal(0, jitter, 4) * size
                boxes.append([*np.minimum(box[:2], box[2:]), *np.maximum(box[:2], box[2:])])
                scores.append(np.clip(1 - jitter + rng.normal(0, 0.1), 0.05, 1))
                right = rng.random() < 0.8
                classes.append(ann["category_id"] if right else rng.integers(num_classes))
        for _ in range(5):
            x, y = rng.uniform(0, width - 8), rng.uniform(0, height - 8)
            w, h = rng.uniform(4, width / 2, 2)
            boxes.append([x, y, min(x + w, width), min(y + h, height)])
            scores.append(rng.uniform(0, 0.5))
            classes.append(rng.integers(num_classes))
        inputs.append({"image_id": record["image_id"], "height": height, "width": width})
        outputs.append({"instances": _instances(boxes, scores, classes, (height, width))})
    return inputs, outputs


def test_shapes_detections_give_pycocotools_table(tmp_path, tiny_datasets, capsys):
    """(a) The quickstart's kind of data: shapes images, detections through the evaluator."""
    pytest.importorskip("faster_coco_eval")
    name = tiny_datasets[1]
    dicts = DatasetCatalog.get(name)  # sets the metadata: classes and their COCO ids
    classes = MetadataCatalog.get(name).thing_classes
    assert len(classes) > 1  # so that detectron2 computes the per-category table too
    inputs, outputs = _shapes_detections(dicts, len(classes))

    official = DetectronCOCOEvaluator(
        name, ("bbox",), False, str(tmp_path / "d2"), use_fast_impl=False
    )
    pyco = COCOEvaluator(name, ("bbox",), False, str(tmp_path / "p"), impl="pycocotools")
    fast = COCOEvaluator(name, ("bbox",), False, str(tmp_path / "f"), impl="faster_coco_eval")
    assert (pyco.impl, fast.impl) == ("pycocotools", "faster_coco_eval")
    official_results, official_lines = _evaluate(official, inputs, outputs, capsys)
    pyco_results, pyco_lines = _evaluate(pyco, inputs, outputs, capsys)
    fast_results, fast_lines = _evaluate(fast, inputs, outputs, capsys)

    # Our pycocotools path is detectron2's evaluator, number for number.
    assert pyco_results == official_results and pyco_lines == official_lines
    assert set(pyco_results["bbox"]) == {*SUMMARY[:6], *(f"AP-{c}" for c in classes)}
    # The option takes effect: the evaluations ran on different implementations ...
    assert pyco.summaries["bbox"].evaluator == "pycocotools.cocoeval.COCOeval"
    assert (
        fast.summaries["bbox"].evaluator == "faster_coco_eval.core.faster_eval_api.COCOeval_faster"
    )
    # ... to the same numbers: the table, pycocotools' 12 printed lines, precision and recall.
    _assert_same_table(pyco_results, fast_results)
    _assert_same_summary(pyco_lines, fast_lines)
    _assert_same_evaluation(pyco.summaries["bbox"], fast.summaries["bbox"])
    assert 0 < pyco.summaries["bbox"].stats[0] < 1  # neither perfect nor empty


@pytest.fixture(scope="module")
def coco_shaped(tmp_path_factory):
    """(b) 500 images of the generated COCO-shaped set, registered as a dataset whose classes are
    COCO's 80 ids mapped to 0..79, with the results as model outputs (contiguous classes)."""
    dataset, results = generate_coco_eval_set(500, seed=1)
    json_file = tmp_path_factory.mktemp("coco_shaped") / "annotations.json"
    json_file.write_text(json.dumps(dataset))
    ids = coco_category_ids(80)
    name = "coco_shaped_500"
    if name not in MetadataCatalog.list():
        MetadataCatalog.get(name).set(
            json_file=str(json_file),
            thing_classes=[f"category_{i}" for i in ids],
            thing_dataset_id_to_contiguous_id={i: k for k, i in enumerate(ids)},
            evaluator_type="coco",
        )
    contiguous = {i: k for k, i in enumerate(ids)}
    sizes = {image["id"]: (image["height"], image["width"]) for image in dataset["images"]}
    per_image = {image_id: [] for image_id in sizes}
    for r in results:
        per_image[r["image_id"]].append(r)
    inputs, outputs = [], []
    for image_id, rs in per_image.items():
        xyxy = [[x, y, x + w, y + h] for x, y, w, h in (r["bbox"] for r in rs)]
        classes = [contiguous[r["category_id"]] for r in rs]
        inputs.append({"image_id": image_id})
        outputs.append(
            {"instances": _instances(xyxy, [r["score"] for r in rs], classes, sizes[image_id])}
        )
    return name, dataset, inputs, outputs


def test_generated_coco_shaped_set_covers_what_coco_has(coco_shaped):
    _, dataset, _, outputs = coco_shaped
    annotations = dataset["annotations"]
    assert 3000 < len(annotations) < 4400  # COCO's 7.36 boxes per image
    assert {a["iscrowd"] for a in annotations} == {0, 1}
    areas = np.array([a["area"] for a in annotations])
    assert (areas < 32**2).mean() > 0.2 and ((areas >= 32**2) & (areas < 96**2)).mean() > 0.2
    assert (areas >= 96**2).mean() > 0.1
    assert len({a["category_id"] for a in annotations}) > 40
    assert 49_000 < sum(len(o["instances"]) for o in outputs) <= 50_000  # 100 per image


def test_coco_shaped_set_gives_pycocotools_table(tmp_path, coco_shaped, capsys):
    """(b) The COCO-shaped set through the evaluator: ids with gaps mapped back, 80 categories."""
    pytest.importorskip("faster_coco_eval")
    name, _, inputs, outputs = coco_shaped
    pyco = COCOEvaluator(name, ("bbox",), False, str(tmp_path / "p"), impl="pycocotools")
    fast = COCOEvaluator(name, ("bbox",), False, str(tmp_path / "f"), impl="faster_coco_eval")
    pyco_results, pyco_lines = _evaluate(pyco, inputs, outputs, capsys)
    fast_results, fast_lines = _evaluate(fast, inputs, outputs, capsys)
    assert len(pyco_results["bbox"]) == 6 + 80
    _assert_same_table(pyco_results, fast_results)
    _assert_same_summary(pyco_lines, fast_lines)
    reference = pyco.summaries["bbox"]
    _assert_same_evaluation(reference, fast.summaries["bbox"])
    # The set exercises what a real one does: every area range, and AR@10 below AR@100 (the
    # limit of detections per image and category bites).
    stats = dict(zip(SUMMARY, reference.stats))
    assert all(0 < stats[k] < 1 for k in SUMMARY)
    assert stats["AR10"] < stats["AR100"] - 0.01


def test_custom_max_detections_match(tmp_path):
    """max_dets_per_image other than 100: detectron2's COCOevalMaxDets on pycocotools, built
    into COCOeval_faster."""
    pytest.importorskip("faster_coco_eval")
    from faster_coco_eval import COCO as FasterCOCO
    from pycocotools.coco import COCO

    dataset, results = generate_coco_eval_set(20, seed=2)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(dataset))
    evals = {}
    for impl, coco in zip(IMPLS, (COCO, FasterCOCO)):
        gt = coco(str(path))
        copies = json.loads(json.dumps(results))
        evals[impl] = evaluate_predictions_on_coco(
            gt, copies, "bbox", impl=impl, max_dets_per_image=[1, 10, 20]
        )
    _assert_same_evaluation(*(COCOEvalSummary.of(evals[i]) for i in IMPLS))
    assert evals["pycocotools"].params.maxDets == [1, 10, 20]


def test_auto_chooses_faster_coco_eval_where_installed():
    pytest.importorskip("faster_coco_eval")
    assert faster_coco_eval_available()
    assert resolve_coco_eval_impl("auto") == "faster_coco_eval"
    assert resolve_coco_eval_impl("pycocotools") == "pycocotools"
    assert resolve_coco_eval_impl("faster_coco_eval") == "faster_coco_eval"


def test_without_faster_coco_eval_auto_is_pycocotools(without_faster_coco_eval):
    assert not faster_coco_eval_available()
    assert resolve_coco_eval_impl("auto") == "pycocotools"
    with pytest.raises(COCOEvalUnavailable) as error:
        resolve_coco_eval_impl("faster_coco_eval", key="TEST.COCO_EVAL_IMPL")
    message = str(error.value)
    assert "TEST.COCO_EVAL_IMPL = 'faster_coco_eval'" in message
    assert 'pip install "resnet_backbones[fast-eval]"' in message
    assert "'auto' or 'pycocotools'" in message


def test_bad_impl_names_the_valid_ones():
    with pytest.raises(ValueError) as error:
        resolve_coco_eval_impl("faster")
    assert str(error.value) == (
        "impl = 'faster' is not valid; valid values: 'auto', 'pycocotools', 'faster_coco_eval'"
    )
    assert COCO_EVAL_IMPLS == ("auto", "pycocotools", "faster_coco_eval")


def test_trainer_evaluator_follows_the_config_key(tmp_path, tiny_datasets):
    cfg = tiny_cfg(tmp_path, *tiny_datasets)
    assert cfg.TEST.COCO_EVAL_IMPL == "auto"
    cfg.TEST.COCO_EVAL_IMPL = "pycocotools"
    evaluator = Trainer.build_evaluator(cfg, tiny_datasets[1])
    assert evaluator.impl == "pycocotools" and evaluator._use_fast_impl is False  # official
    cfg.TEST.COCO_EVAL_IMPL = "pycoco"
    with pytest.raises(
        ConfigError, match=r"TEST.COCO_EVAL_IMPL = 'pycoco' is not valid; valid values: 'auto'"
    ):
        Trainer.build_evaluator(cfg, tiny_datasets[1])
    # Refused when the Trainer is made, not at the first evaluation after training.
    with pytest.raises(ConfigError, match=r"TEST.COCO_EVAL_IMPL = 'pycoco' is not valid"):
        Trainer(cfg)
    if faster_coco_eval_available():
        cfg.TEST.COCO_EVAL_IMPL = "auto"
        assert Trainer.build_evaluator(cfg, tiny_datasets[1]).impl == "faster_coco_eval"


def test_trainer_names_the_key_where_faster_coco_eval_is_missing(
    tmp_path, tiny_datasets, without_faster_coco_eval
):
    cfg = tiny_cfg(tmp_path, *tiny_datasets)
    assert Trainer.build_evaluator(cfg, tiny_datasets[1]).impl == "pycocotools"
    cfg.TEST.COCO_EVAL_IMPL = "faster_coco_eval"
    with pytest.raises(COCOEvalUnavailable, match=r"TEST.COCO_EVAL_IMPL = 'faster_coco_eval'"):
        Trainer.build_evaluator(cfg, tiny_datasets[1])


def _tool():
    return load_tool("benchmark_coco_eval")


def test_benchmark_quick_run_writes_the_table_row(tmp_path, capsys):
    pytest.importorskip("faster_coco_eval")
    out = tmp_path / "result.json"
    assert _tool().main(["--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["unit"] for row in result["rows"]] == ["s", "CPU s"]
    for row in result["rows"]:
        assert row["target"] is None and row["baseline_value"] > 0 and row["ours_value"] > 0
        assert row["ratio"] == pytest.approx(row["baseline_value"] / row["ours_value"])
    assert result["calibration_s"] > 0 and result["machine"]
    assert max(result["largest_differences"].values()) <= TOLERANCE
    assert result["set"]["images"] == 50 and 4900 < result["set"]["detections"] <= 5000
    assert "ratio pycocotools / faster-coco-eval" in capsys.readouterr().out

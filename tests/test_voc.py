"""Pascal VOC (issue 14): VOC-format folders registered and read with errors that name the file,
the VOC evaluator's AP50 by both VOC metrics against values computed by hand, the configs of the
paper's VOC experiment, and a tiny detector trained and evaluated on a VOC-format dataset through
tools/train_net.py."""

import json
import math
import os
import types

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances
from detectron2.evaluation import PascalVOCDetectionEvaluator
from detectron2.structures import Boxes, Instances

from resnet_backbones import train_net
from resnet_backbones._compat import numpy_aliases
from resnet_backbones.config import ConfigError
from resnet_backbones.data import DatasetFormatError, DatasetNotFoundError, register_datasets
from resnet_backbones.data.voc_format import (
    check_voc_for_evaluation,
    load_voc_format,
    register_voc_format,
    voc_annotation_xml,
    write_voc_shapes,
)
from resnet_backbones.engine import Trainer, check_datasets, load_config
from resnet_backbones.voc_eval import VOCDetectionEvaluator

from .helpers import QUICKSTART, REPO

SHAPES = ("circle", "triangle", "rectangle")


@pytest.fixture(scope="module")
def shapes_voc(tmp_path_factory):
    """The shapes dataset in VOC format: 6 trainval and 4 test images of 96 px."""
    return write_voc_shapes(
        tmp_path_factory.mktemp("voc"), {"trainval": 6, "test": 4}, image_size=96
    )


def _voc_folder(folder, annotations, split="test"):
    """A VOC-format folder: ``annotations`` maps an image id to its XML text (no images: the
    evaluator and the loader read the XML only)."""
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        os.makedirs(folder / sub, exist_ok=True)
    for image_id, xml in annotations.items():
        (folder / "Annotations" / f"{image_id}.xml").write_text(xml)
    (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(annotations) + "\n")
    return folder


def _detections(boxes, scores, classes, size=(100, 100)):
    instances = Instances(size)
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.scores = torch.tensor(scores)
    instances.pred_classes = torch.tensor(classes)
    return {"instances": instances}


def _evaluate(evaluator, image_id, detections):
    evaluator.reset()
    evaluator.process([{"image_id": image_id}], [detections])
    return evaluator.evaluate()["bbox"]


# --------------------------------------------------------------------------------------------
# Reading VOC-format folders
# --------------------------------------------------------------------------------------------
def test_loader_gives_detectron2s_dicts(shapes_voc):
    for split in ("trainval", "test"):
        ours = load_voc_format("shapes_voc", str(shapes_voc), split, SHAPES)
        with numpy_aliases():  # detectron2 v0.6's loader uses np.str
            theirs = load_voc_instances(str(shapes_voc), split, SHAPES)
        assert ours == theirs
        assert ours and all(record["annotations"] for record in ours)
    assert "str" not in vars(np)  # the alias was scoped


def test_numpy_aliases_are_scoped_and_nest():
    fake = types.ModuleType("fake_numpy")
    fake.bool = "numpy's own"  # numpy 2 has np.bool: kept
    with numpy_aliases(fake):
        assert fake.str is str and fake.bool == "numpy's own"
        with numpy_aliases(fake):
            assert fake.str is str
        assert fake.str is str  # the outer user still needs it
    assert not hasattr(fake, "str") and fake.bool == "numpy's own"


def test_voc_format_entries_register_with_their_classes(shapes_voc, tmp_path):
    name = "voc_shapes_registered"
    register_voc_format([[name, str(shapes_voc), "test", *SHAPES]])
    register_voc_format([[name, str(shapes_voc), "test", *SHAPES]])  # the same: no error
    meta = MetadataCatalog.get(name)
    assert (meta.evaluator_type, meta.year, meta.split) == ("pascal_voc", 2007, "test")
    assert meta.thing_classes == list(SHAPES)
    assert len(DatasetCatalog.get(name)) == 4
    with pytest.raises(DatasetFormatError, match=f"dataset '{name}' is registered already"):
        register_voc_format([[name, str(shapes_voc), "trainval", *SHAPES]])
    with pytest.raises(DatasetFormatError, match=r"DATASETS.VOC_FORMAT\[0\] = \['x', 'y'\]"):
        register_voc_format([["x", "y"]])
    with pytest.raises(DatasetFormatError, match=r"\['circle'\] are given more than once"):
        register_voc_format([["x", str(shapes_voc), "test", "circle", "circle"]])

    # A relative folder in a YAML file is relative to the file's folder.
    (tmp_path / "data").symlink_to(shapes_voc)
    config = tmp_path / "voc.yaml"
    config.write_text(
        f"_BASE_: {QUICKSTART}\n"
        "DATASETS:\n  VOC_FORMAT: [['mine', 'data', 'test', 'circle', 'triangle', 'rectangle']]\n"
    )
    cfg = load_config(str(config))
    assert cfg.DATASETS.VOC_FORMAT == [["mine", str(tmp_path / "data"), "test", *SHAPES]]


def test_bad_folders_name_the_file(tmp_path):
    good = voc_annotation_xml("a.jpg", 100, 100, [("circle", (11, 11, 40, 40))])
    for missing in ("Annotations", "JPEGImages", "ImageSets/Main/test.txt"):
        folder = _voc_folder(tmp_path / missing.replace("/", "_"), {"a": good})
        path = folder / missing
        os.rename(path, str(path) + ".gone")
        with pytest.raises(DatasetNotFoundError, match=f"missing '{path}'"):
            register_voc_format([["voc_missing", str(folder), "test", "circle"]])

    def load(xml, classes=("circle",)):
        folder = _voc_folder(tmp_path / f"case{len(os.listdir(tmp_path))}", {"a": xml})
        return folder / "Annotations" / "a.xml", lambda: load_voc_format(
            "bad", str(folder), "test", classes
        )

    path, run = load("<annotation><size><width>100</width></size>")
    with pytest.raises(DatasetFormatError, match=f"{path} is not valid XML .*line 1"):
        run()
    path, run = load(good.replace("circle", "dog"))
    with pytest.raises(DatasetFormatError) as e:
        run()
    assert f"{path} object 0 has the class 'dog'" in str(e.value)
    assert "not one of the dataset's 1 classes ['circle']" in str(e.value)
    assert "--voc-classes" in str(e.value)
    path, run = load(good.replace("<height>100</height>", ""))
    with pytest.raises(
        DatasetFormatError, match=f"{path} the image size: <size/height> is missing"
    ):
        run()
    path, run = load(good.replace("<xmax>40</xmax>", "<xmax>forty</xmax>"))
    with pytest.raises(DatasetFormatError, match=r"<bndbox/xmax> = 'forty' is not a number"):
        run()
    folder = _voc_folder(tmp_path / "no_ids", {})
    with pytest.raises(DatasetFormatError, match="test.txt lists no image"):
        load_voc_format("bad", str(folder), "test", ("circle",))

    # What only detectron2's evaluator reads: checked for test sets, before training.
    for old, new, message in [
        ("<xmin>11</xmin>", "<xmin>11.5</xmin>", r"<bndbox/xmin> = '11.5' is not an integer"),
        ("<pose>Unspecified</pose>", "", "<pose> is missing"),
        ("<difficult>0</difficult>", "", "<difficult> is missing"),
    ]:
        folder = _voc_folder(tmp_path / f"eval{len(os.listdir(tmp_path))}", {"a": good})
        (folder / "Annotations" / "a.xml").write_text(good.replace(old, new))
        name = f"voc_eval_{folder.name}"
        register_voc_format([[name, str(folder), "test", "circle"]])
        assert len(DatasetCatalog.get(name)) == 1  # the loader takes it
        with pytest.raises(DatasetFormatError, match=f"a.xml object 0 .*{message}"):
            check_voc_for_evaluation(name)
    folder = _voc_folder(tmp_path / "blank_line", {"a": good})
    (folder / "ImageSets" / "Main" / "test.txt").write_text("a\n\n")
    register_voc_format([["voc_eval_blank_line", str(folder), "test", "circle"]])
    assert len(DatasetCatalog.get("voc_eval_blank_line")) == 1  # the loader skips it
    with pytest.raises(DatasetFormatError, match="test.txt line 2 is blank"):
        check_voc_for_evaluation("voc_eval_blank_line")
    folder = _voc_folder(tmp_path / "two_fields", {"a": good})
    (folder / "ImageSets" / "Main" / "test.txt").write_text("a  1\n")
    register_voc_format([["voc_eval_two_fields", str(folder), "test", "circle"]])
    assert len(DatasetCatalog.get("voc_eval_two_fields")) == 1  # the loader takes the id
    with pytest.raises(DatasetFormatError, match=r"test.txt line 1 \('a  1'\) has more than"):
        check_voc_for_evaluation("voc_eval_two_fields")


def test_missing_voc_gives_the_clear_message(tmp_path, monkeypatch):
    register_datasets()
    if os.path.isabs(MetadataCatalog.get("voc_2007_test").dirname):
        pytest.skip("DETECTRON2_DATASETS was set when detectron2 registered VOC")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    with pytest.raises(DatasetNotFoundError) as e:
        check_datasets(["voc_2007_test"])
    message = str(e.value)
    assert "dataset 'voc_2007_test' is not on disk: missing 'datasets/VOC2007'" in message
    assert f"looks in ./datasets under the working directory '{tmp_path}'" in message
    assert "Annotations/, JPEGImages/ and ImageSets/Main/<split>.txt" in message
    assert "set DETECTRON2_DATASETS to the folder that holds VOC2007/ and VOC2012/" in message

    # Where it is, detectron2's voc_2007_test loads with our loader, which names a class that
    # is not one of VOC's 20 (detectron2's own stops at np.str on numpy >= 1.24).
    write_voc_shapes(tmp_path / "datasets", {"test": 1}, image_size=64)
    check_datasets(["voc_2007_test"])
    with pytest.raises(DatasetFormatError, match="which is not one of the dataset's 20 classes"):
        DatasetCatalog.get("voc_2007_test")


# --------------------------------------------------------------------------------------------
# The evaluator
# --------------------------------------------------------------------------------------------
def test_ap50_by_both_metrics_against_hand_computed_values(tmp_path):
    """One image, two classes. 'circle': two ground-truth boxes; the detections are a false
    positive (score 0.9), then a box on the first ground truth (0.8): precision 0, 1/2 at
    recall 0, 1/2. The 11-point AP is 0.5 at recall 0, 0.1, ..., 0.5 and 0 at 0.6 ... 1:
    6 x 0.5 / 11 = 3/11; the area under the interpolated curve is 0.5 x 0.5 = 1/4. 'square':
    its one box found, 100 by both. Boxes are exact (IoU 1), so every IoU threshold agrees."""
    xml = voc_annotation_xml(
        "a.jpg",
        100,
        100,
        [("circle", (11, 11, 40, 40)), ("circle", (61, 61, 90, 90)), ("square", (11, 61, 40, 90))],
    )
    detections = _detections(
        # detectron2's coordinates: VOC's (xmin, ymin) less 1.
        [[0, 0, 5, 5], [10, 10, 40, 40], [10, 60, 40, 90]],
        [0.9, 0.8, 0.7],
        [0, 0, 1],
    )
    voc07 = (100 * 3 / 11 + 100) / 2
    area = (100 * 1 / 4 + 100) / 2
    for folder_name, year in (("VOC2007", 2007), ("my_data", 2012)):
        folder = _voc_folder(tmp_path / folder_name, {"a": xml})
        name = f"voc_hand_{folder_name}"
        register_voc_format([[name, str(folder), "test", "circle", "square"]])
        assert MetadataCatalog.get(name).year == year
        ours = _evaluate(VOCDetectionEvaluator(name), "a", detections)
        assert ours["AP50_voc07"] == pytest.approx(voc07, abs=1e-9)
        assert ours["AP50_area"] == pytest.approx(area, abs=1e-9)
        assert ours["AP50-circle"] == pytest.approx(300 / 11 if year == 2007 else 25, abs=1e-9)
        assert ours["AP50-square"] == pytest.approx(100, abs=1e-9)
        # AP50 by the year's metric, as detectron2's evaluator gives AP, AP50 and AP75.
        assert ours["AP50"] == pytest.approx(voc07 if year == 2007 else area, abs=1e-9)
        with numpy_aliases():  # detectron2 v0.6's voc_eval uses np.bool
            theirs = _evaluate(PascalVOCDetectionEvaluator(name), "a", detections)
        for key in ("AP", "AP50", "AP75"):
            assert ours[key] == pytest.approx(theirs[key], abs=1e-9), key
        assert ours["AP"] == pytest.approx(ours["AP50"], abs=1e-9)  # IoU 1: every threshold


def test_a_class_without_ground_truth_is_left_out_of_the_means(tmp_path):
    """The hand-computed case with a third class, 'triangle', that has no ground truth but a
    detection: it has no AP (no key) and the means are those of the other two (detectron2's evaluator
    averages its 0 in)."""
    xml = voc_annotation_xml(
        "a.jpg", 100, 100, [("circle", (11, 11, 40, 40)), ("square", (11, 61, 40, 90))]
    )
    folder = _voc_folder(tmp_path / "VOC2007", {"a": xml})
    name = "voc_hand_no_triangle"
    register_voc_format([[name, str(folder), "test", "circle", "square", "triangle"]])
    detections = _detections(
        [[10, 10, 40, 40], [10, 60, 40, 90], [60, 60, 90, 90]], [0.9, 0.8, 0.7], [0, 1, 2]
    )
    ours = _evaluate(VOCDetectionEvaluator(name), "a", detections)
    assert "AP50-triangle" not in ours and ours["AP50-circle"] == pytest.approx(100.0)
    for key in ("AP", "AP50", "AP75", "AP50_voc07", "AP50_area"):
        assert ours[key] == pytest.approx(100.0), key
    with numpy_aliases(), np.errstate(invalid="ignore"):
        theirs = _evaluate(PascalVOCDetectionEvaluator(name), "a", detections)
    assert theirs["AP50"] == pytest.approx(200 / 3)


def test_ground_truth_as_detections_scores_100(shapes_voc, tmp_path):
    name = "voc_shapes_perfect"
    register_voc_format([[name, str(shapes_voc), "test", *SHAPES]])
    records = DatasetCatalog.get(name)
    assert {a["category_id"] for r in records for a in r["annotations"]} == {0, 1, 2}
    cfg = load_config(QUICKSTART, ["OUTPUT_DIR", str(tmp_path)])
    evaluator = Trainer.build_evaluator(cfg, name)
    assert isinstance(evaluator, VOCDetectionEvaluator)
    evaluator.reset()
    for record in records:
        boxes = [a["bbox"] for a in record["annotations"]]
        classes = [a["category_id"] for a in record["annotations"]]
        evaluator.process(
            [{"image_id": record["image_id"]}],
            [_detections(boxes, [0.9] * len(boxes), classes, (96, 96))],
        )
    results = evaluator.evaluate()["bbox"]
    for key in ("AP", "AP50", "AP75", "AP50_voc07", "AP50_area"):
        assert results[key] == pytest.approx(100.0), key

    # Any evaluator type but the two is refused, naming the valid ones.
    MetadataCatalog.get("voc_shapes_semseg").set(evaluator_type="sem_seg")
    with pytest.raises(ConfigError, match="valid: 'coco', 'pascal_voc'"):
        Trainer.build_evaluator(cfg, "voc_shapes_semseg")


# --------------------------------------------------------------------------------------------
# Configs and the command
# --------------------------------------------------------------------------------------------
def test_voc_configs_are_the_papers_setup():
    paper = load_config(
        os.path.join(REPO, "configs/PascalVOC-Detection/faster_rcnn_R_101_C4_resnet_paper.yaml")
    )
    fpn = load_config(os.path.join(REPO, "configs/PascalVOC-Detection/faster_rcnn_R_101_FPN.yaml"))
    for cfg in (paper, fpn):
        assert cfg.DATASETS.TRAIN == ("voc_2007_trainval", "voc_2012_trainval")
        assert cfg.DATASETS.TEST == ("voc_2007_test",)
        assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 20 and cfg.MODEL.RESNETS.DEPTH == 101
    # Faster R-CNN's VOC schedule (one image, LR 0.001 for 60k then 0.0001 for 20k), 600 px.
    solver = paper.SOLVER
    assert (solver.IMS_PER_BATCH, solver.BASE_LR, solver.STEPS, solver.MAX_ITER) == (
        1,
        0.001,
        (60000,),
        80000,
    )
    assert paper.INPUT.MIN_SIZE_TRAIN == (600,) and paper.INPUT.MAX_SIZE_TEST == 1000
    assert paper.MODEL.BACKBONE.NAME == "build_resnet_family_backbone"
    assert fpn.MODEL.BACKBONE.NAME == "build_resnet_family_fpn_backbone"
    with pytest.raises(SystemExit):
        train_net.parse_args(["--config", "x.yaml", "--voc-classes", "a,b"])


def test_train_and_evaluate_a_voc_format_dataset_with_the_tool(shapes_voc, tmp_path):
    out = tmp_path / "run"
    common = [
        "--config", QUICKSTART,
        "--voc-dataset", "voc_tool_train", str(shapes_voc), "trainval",
        "--voc-dataset", "voc_tool_test", str(shapes_voc), "test",
        "--voc-classes", ",".join(SHAPES),
    ]  # fmt: skip
    overrides = [
        "DATASETS.TRAIN", "('voc_tool_train',)", "DATASETS.TEST", "('voc_tool_test',)",
        "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "INPUT.MIN_SIZE_TRAIN", "(96,)", "INPUT.MAX_SIZE_TRAIN", "96",
        "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    assert train_net.main(common + overrides) == 0
    with open(out / "metrics.json") as f:
        evaluated = [r for r in map(json.loads, f) if "bbox/AP" in r]
    assert evaluated, "no evaluation in metrics.json"
    for key in ("AP", "AP50", "AP75", "AP50_voc07", "AP50_area", "AP50-circle"):
        value = evaluated[-1][f"bbox/{key}"]
        assert math.isfinite(value) and 0 <= value <= 100, key
    assert (out / "learning_curve.png").is_file()  # the plot reads bbox/AP

    # --eval-only evaluates the trained weights with the same metrics.
    args = train_net.parse_args(
        [*common, "--eval-only", *overrides, "MODEL.WEIGHTS", str(out / "model_final.pth")]
    )
    results = train_net.run(args)
    assert {"AP", "AP50", "AP75", "AP50_voc07", "AP50_area"} <= set(results["bbox"])

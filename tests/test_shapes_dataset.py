"""The built-in shapes dataset: deterministic, registered, and not trivially easy."""

import filecmp
import json
import os

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from resnet_backbones.data import register_datasets
from resnet_backbones.data.shapes import (
    CLASSES,
    SPLITS,
    ShapesConfig,
    ensure_shapes,
    generate_split,
    split_dir,
)

SMALL = ShapesConfig(num_images=12, seed=5)


def test_generation_is_deterministic(tmp_path):
    a = generate_split("val", tmp_path / "a", SMALL)
    b = generate_split("val", tmp_path / "b", SMALL)
    assert filecmp.cmp(a / "annotations.json", b / "annotations.json", shallow=False)
    names = sorted(os.listdir(a / "images"))
    assert len(names) == SMALL.num_images
    match, mismatch, errors = filecmp.cmpfiles(a / "images", b / "images", names, shallow=False)
    assert (mismatch, errors) == ([], [])
    c = generate_split("val", tmp_path / "c", ShapesConfig(num_images=12, seed=6))
    assert not filecmp.cmp(a / "annotations.json", c / "annotations.json", shallow=False)


def test_cache_is_written_once_and_reused():
    first = ensure_shapes("val", SMALL)
    stamp = os.stat(first / "annotations.json").st_mtime_ns
    assert ensure_shapes("val", SMALL) == first
    assert os.stat(first / "annotations.json").st_mtime_ns == stamp
    assert not [
        p for p in os.listdir(first.parent) if p.startswith(".")
    ]  # no temporary folder left


def _iou_matrix(boxes):
    x0, y0, x1, y1 = (boxes[:, None, i] for i in range(4))
    iw = np.clip(np.minimum(x1, x1.T) - np.maximum(x0, x0.T), 0, None)
    ih = np.clip(np.minimum(y1, y1.T) - np.maximum(y0, y0.T), 0, None)
    inter = iw * ih
    area = (x1 - x0) * (y1 - y0)
    return inter / (area + area.T - inter)


def test_val_split_has_classes_sizes_overlaps_and_busy_backgrounds():
    register_datasets()
    dicts = DatasetCatalog.get("shapes_val")
    assert len(dicts) == SPLITS["val"].num_images
    assert MetadataCatalog.get("shapes_val").thing_classes == list(CLASSES) and len(CLASSES) >= 3
    anns = [a for d in dicts for a in d["annotations"]]
    classes = np.bincount([a["category_id"] for a in anns], minlength=len(CLASSES))
    assert (classes > 0.2 * len(anns)).all()
    areas = np.array([a["bbox"][2] * a["bbox"][3] for a in anns])
    small, large = (areas < 32**2).mean(), (areas > 96**2).mean()
    assert small > 0.15 and large > 0.05 and 1 - small - large > 0.15
    overlapping = 0
    for d in dicts:
        boxes = np.array([a["bbox"] for a in d["annotations"]], dtype=float)
        boxes[:, 2:] += boxes[:, :2]
        iou = _iou_matrix(boxes)
        np.fill_diagonal(iou, 0)
        overlapping += bool((iou > 0).any())
    assert overlapping > 0.3 * len(dicts)
    from PIL import Image

    image = np.asarray(Image.open(dicts[0]["file_name"]), dtype=float)
    corners = [image[:16, :16], image[:16, -16:], image[-16:, :16], image[-16:, -16:]]
    assert np.ptp([c.mean(axis=(0, 1)) for c in corners], axis=0).max() > 10  # not uniform


def test_coco_json_is_valid_for_pycocotools():
    from pycocotools.coco import COCO

    root = ensure_shapes("val", SMALL)
    coco = COCO(str(root / "annotations.json"))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == list(CLASSES)
    with open(root / "annotations.json") as f:
        data = json.load(f)
    assert len(data["images"]) == SMALL.num_images and data["annotations"]


def test_an_unknown_split_is_a_value_error_listing_the_splits(tmp_path):
    for call in (lambda: split_dir("test"), lambda: generate_split("test", tmp_path)):
        with pytest.raises(
            ValueError, match=r"shapes split = 'test' is not valid; valid values: 'train', 'val'"
        ):
            call()

"""Every dataset a run uses, checked before its first iteration, not hours in.

detectron2 reads a dataset lazily and trusts it: ``load_coco_json`` keeps one of two images with
the same id and attaches the other's boxes to it, turns a box of negative width into its mirror
image, and drops boxes and images with a log line at most; a truncated or missing image fails
when the sampler reaches it, in a message without the file's name. Here, for each dataset of
``DATASETS.TRAIN`` and ``DATASETS.TEST`` (:func:`validate_dataset`, called by the Trainer before
it builds the data loaders):

1. a dataset registered from a COCO JSON file (its metadata's ``json_file``) is checked on the
   raw JSON, before detectron2 loads it: its syntax (path, line and column), the keys every
   entry needs, duplicate image and annotation ids, duplicate file names, annotations of images
   or categories that do not exist, and boxes that are not 4 numbers, have no positive width
   and height, or lie entirely outside their image;
2. its dataset dicts (``DatasetCatalog.get``): the same box checks for datasets without a JSON
   file;
3. every image file (:func:`~resnet_backbones.data.images.inspect_image`, in threads): it
   exists, is not empty, is an image of a pixel format we convert, is not truncated (JPEG and
   PNG end markers; ``DATASETS.VALIDATE "full"`` decodes every image instead), and its size is
   the width and height of the JSON. An EXIF orientation is resolved with
   ``DATASETS.EXIF_BOXES``: where the boxes were drawn on the stored pixels, they are rotated
   with the image, so that pixels and boxes agree;
4. the verdict: problems of the dataset as a whole (duplicate ids, broken JSON ...) are one
   :class:`DatasetValidationError` listing them; problems of single images are too, unless
   ``DATASETS.BAD_IMAGES "skip"`` leaves those images out of a training set, counted and
   logged at the start and (:class:`ValidationReportHook`) at the end of training. Test sets
   are never thinned: their AP would silently be an AP of other images.

:func:`validated_dataset_dicts` then combines the datasets as detectron2's
``get_detection_dataset_dicts`` does (proposals, images without annotations filtered for
training, the class histogram), for ``build_detection_train_loader(dataset=...)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import time
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from detectron2.engine import HookBase

from .coco_format import DatasetFormatError, read_coco_json
from .images import ImageError, ImageInfo, describe_image, exif_box, inspect_image

__all__ = [
    "BAD_IMAGE_POLICIES",
    "EXIF_BOX_FRAMES",
    "VALIDATE_MODES",
    "DatasetValidationError",
    "JsonFindings",
    "check_coco_json",
    "Problem",
    "ValidationReport",
    "ValidationReportHook",
    "ValidationSettings",
    "validate_dataset",
    "validated_dataset_dicts",
    "validation_reports",
]

logger = logging.getLogger(__name__)

# DATASETS.VALIDATE: "headers" reads each image's header and last KiB; "full" decodes every
# image; "off" is detectron2's behaviour (nothing checked, nothing rotated).
VALIDATE_MODES = ("headers", "full", "off")
# DATASETS.BAD_IMAGES: "error" stops the run; "skip" leaves the image out of training.
BAD_IMAGE_POLICIES = ("error", "skip")
# DATASETS.EXIF_BOXES: on which pixels a rotated image's boxes were drawn. "auto": the JSON's
# width and height tell (the stored size or the upright one), an error where both are the same.
EXIF_BOX_FRAMES = ("auto", "stored", "displayed")
_SHOWN = 8  # problems a message lists before "... and N more"
_SKIP_HINT = (
    "or set DATASETS.BAD_IMAGES 'skip' to leave such images out of training (counted and reported)"
)
_FILTER_EMPTY_KEY = "DATALOADER.FILTER_EMPTY_ANNOTATIONS"


class DatasetValidationError(DatasetFormatError):
    """A dataset failed its checks before training. The message lists the problems (the first
    few, and how many in all); ``problems`` holds them all."""

    def __init__(self, message: str, problems: Sequence[Problem] = ()):
        super().__init__(message)
        self.problems = list(problems)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset.

    Attributes:
        text: the whole sentence: where (file, image id, annotation id), the key and the value,
            what is wrong and what to do.
        reason: a short name to count by ("box of negative size" ...).
        image_id: the image it makes unusable; None for a problem of the whole dataset, which
            no image can be skipped for.
    """

    text: str
    reason: str
    image_id: Any = None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True)
class ValidationSettings:
    """The ``DATASETS.VALIDATE``, ``BAD_IMAGES`` and ``EXIF_BOXES`` of a config, checked."""

    mode: str = "headers"
    bad_images: str = "error"
    exif_boxes: str = "auto"

    def __post_init__(self) -> None:
        from ..config import ConfigError
        from ..utils import check_choice

        try:
            check_choice("DATASETS.VALIDATE", self.mode, VALIDATE_MODES)
            check_choice("DATASETS.BAD_IMAGES", self.bad_images, BAD_IMAGE_POLICIES)
            check_choice("DATASETS.EXIF_BOXES", self.exif_boxes, EXIF_BOX_FRAMES)
        except ValueError as e:
            raise ConfigError(str(e)) from None

    @classmethod
    def from_config(cls, cfg: Any) -> ValidationSettings:
        """The keys of ``cfg`` (a config without them, not extended by
        ``add_resnet_backbones_config``, gets the defaults)."""
        datasets = cfg.DATASETS
        return cls(
            mode=datasets.get("VALIDATE", "headers"),
            bad_images=datasets.get("BAD_IMAGES", "error"),
            exif_boxes=datasets.get("EXIF_BOXES", "auto"),
        )


def _count(n: int, word: str, plural: str = "") -> str:
    return f"{n} {word if n == 1 else plural or word + 's'}"


@dataclass
class ValidationReport:
    """What the checks of one dataset found, for the log at the start and the end of a run."""

    name: str
    mode: str
    images: int = 0
    annotations: int = 0
    skipped: list[Problem] = field(default_factory=list)
    without_annotations: int = 0
    boxes_past_border: int = 0
    zero_size_boxes: int = 0
    pixel_formats: Counter = field(default_factory=Counter)
    exif_rotated_boxes: int = 0
    exif_upright_boxes: int = 0
    seconds: float = 0.0

    def skipped_text(self) -> str:
        """``3 images skipped (2 missing file, 1 box of negative size)``, or "" where none was."""
        if not self.skipped:
            return ""
        images = {p.image_id for p in self.skipped}
        reasons = Counter(p.reason for p in self.skipped)
        counts = ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        return f"{_count(len(images), 'image')} skipped by DATASETS.BAD_IMAGES 'skip' ({counts})"

    def summary(self) -> str:
        """One line: what was checked, in how long, and everything counted."""
        head = (
            f"Checked dataset {self.name!r} ({self.mode}: {self.images} images, "
            f"{self.annotations} annotations) in {self.seconds:.2f} s"
        )
        parts = [self.skipped_text() or "nothing skipped"]
        if self.without_annotations:
            parts.append(
                f"{_count(self.without_annotations, 'image')} without annotations (training drops them "
                f"where {_FILTER_EMPTY_KEY} is True, detectron2's default)"
            )
        if self.boxes_past_border:
            parts.append(
                f"{_count(self.boxes_past_border, 'box', 'boxes')} extending more than 1 px past "
                "their image (clipped to it)"
            )
        if self.zero_size_boxes:
            parts.append(
                f"{_count(self.zero_size_boxes, 'box', 'boxes')} of zero width or height (dropped "
                "by training, as detectron2 does)"
            )
        converted = {k: n for k, n in self.pixel_formats.items() if k != "RGB"}
        if converted:
            formats = ", ".join(f"{n} {kind}" for kind, n in sorted(converted.items()))
            parts.append(f"converted to 8-bit RGB: {formats}")
        if self.exif_rotated_boxes:
            parts.append(
                f"{_count(self.exif_rotated_boxes, 'image')} with an EXIF orientation, their "
                "boxes rotated with them"
            )
        if self.exif_upright_boxes:
            parts.append(
                f"{_count(self.exif_upright_boxes, 'image')} with an EXIF orientation, their "
                "boxes drawn upright already"
            )
        return f"{head}: {'; '.join(parts)}"


# --------------------------------------------------------------------------------------------
# 1. The raw COCO JSON
# --------------------------------------------------------------------------------------------
def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _box_problem(
    box: Any, xywh: bool, width: Any, height: Any, where: str, image_id: Any
) -> tuple[Optional[Problem], Optional[str]]:
    """The problem of one box (XYWH, or XYXY where ``xywh`` is False) on an image of
    ``width`` x ``height``, or None; and what is counted of it, not an error: "zero" (a box of
    zero width or height, which detectron2's mapper drops; COCO 2017's train set is reported to
    have some) or "past" (more than 1 px past the image, clipped)."""
    form = "[x, y, width, height]" if xywh else "[x0, y0, x1, y1]"
    if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(_number(v) for v in box):
        return (
            Problem(
                f"{where}: bbox = {box!r} is not 4 finite numbers {form}; correct the box",
                "malformed bbox",
                image_id,
            ),
            None,
        )
    x0, y0 = box[0], box[1]
    w, h = (box[2], box[3]) if xywh else (box[2] - box[0], box[3] - box[1])
    for side, size in (("width", w), ("height", h)):
        if size < 0:
            return (
                Problem(
                    f"{where}: bbox = {list(box)!r} has a negative {side} ({size:g}); boxes are "
                    f"{form} with a positive width and height (detectron2 would mirror this box "
                    "to the other side of its corner). Correct the box",
                    "box of negative size",
                    image_id,
                ),
                None,
            )
    if w == 0 or h == 0:
        return None, "zero"
    if not (_number(width) and _number(height)):
        return None, None  # the image's own problem, reported with it
    x1, y1 = x0 + w, y0 + h
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        return (
            Problem(
                f"{where}: bbox = {list(box)!r} lies entirely outside its image of width "
                f"{width} and height {height} (detectron2 would drop it without a word). "
                "Correct the box or delete the annotation",
                "box outside its image",
                image_id,
            ),
            None,
        )
    past = x0 < -1 or y0 < -1 or x1 > width + 1 or y1 > height + 1
    return None, "past" if past else None


@dataclass
class JsonFindings:
    """What :func:`check_coco_json` found: the problems, the number of annotations and of boxes
    extending more than 1 px past their image."""

    problems: list[Problem] = field(default_factory=list)
    annotations: int = 0
    boxes_past_border: int = 0
    zero_size_boxes: int = 0


def _duplicates(pairs: list[tuple[Any, str]]) -> dict[Any, list[str]]:
    seen: dict[Any, list[str]] = defaultdict(list)
    for key, where in pairs:
        seen[key].append(where)
    return {key: wheres for key, wheres in seen.items() if len(wheres) > 1}


def check_coco_json(content: dict, json_file: str) -> JsonFindings:
    """The problems of a COCO instances JSON (``content``, read from ``json_file``)."""
    found = JsonFindings()
    add = found.problems.append

    categories = content["categories"]
    category_ids = []
    for index, category in enumerate(categories):
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            add(
                Problem(
                    f"{json_file}: categories[{index}] = {category!r} needs an 'id' and a "
                    "'name'; add them",
                    "malformed category",
                )
            )
        else:
            category_ids.append((category["id"], f"categories[{index}]"))
    for category_id, wheres in _duplicates(category_ids).items():
        add(
            Problem(
                f"{json_file}: category id {category_id!r} is given to {len(wheres)} categories "
                f"({', '.join(wheres)}); give every category its own id",
                "duplicate category id",
            )
        )
    known_categories = {c for c, _ in category_ids}

    images: dict[Any, dict] = {}
    image_ids, file_names = [], []
    for index, image in enumerate(content["images"]):
        if not isinstance(image, dict) or "id" not in image or "file_name" not in image:
            add(
                Problem(
                    f"{json_file}: images[{index}] = {image!r:.200} needs an 'id' and a "
                    "'file_name' (and 'width', 'height'); add them",
                    "malformed image entry",
                )
            )
            if isinstance(image, dict) and "id" in image:
                images.setdefault(image["id"], dict(image, file_name="?"))
            continue
        image_id, file_name = image["id"], image["file_name"]
        image_ids.append((image_id, f"images[{index}] {file_name!r}"))
        file_names.append((file_name, f"image id {image_id!r}"))
        images.setdefault(image_id, image)
        for key in ("width", "height"):
            value = image.get(key)
            if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
                add(
                    Problem(
                        f"{json_file}: image id {image_id!r} ({file_name}): {key} = {value!r} is "
                        "not a positive integer; set it to the image's size in pixels",
                        f"bad image {key}",
                        image_id,
                    )
                )
    for image_id, wheres in _duplicates(image_ids).items():
        add(
            Problem(
                f"{json_file}: image id {image_id!r} is given to {len(wheres)} images "
                f"({', '.join(wheres)}); detectron2 would keep one of them and attach the "
                "others' annotations to it. Give every image its own id",
                "duplicate image id",
            )
        )
    for file_name, wheres in _duplicates(file_names).items():
        add(
            Problem(
                f"{json_file}: file_name {file_name!r} is used by {len(wheres)} images "
                f"({', '.join(wheres)}); the file would train as several images with part of "
                "its boxes each. Merge them into one image entry",
                "duplicate file_name",
            )
        )

    annotations = content.get("annotations") or []
    if not isinstance(annotations, list):
        add(
            Problem(
                f"{json_file}: 'annotations' = {annotations!r:.100} is not a list; it must be "
                "a list of annotation objects",
                "malformed annotations",
            )
        )
        annotations = []
    found.annotations = len(annotations)
    annotation_ids = []
    for index, ann in enumerate(annotations):
        if not isinstance(ann, dict) or "id" not in ann or "image_id" not in ann:
            add(
                Problem(
                    f"{json_file}: annotations[{index}] = {ann!r:.200} needs an 'id' and an "
                    "'image_id' (and 'category_id', 'bbox'); add them",
                    "malformed annotation",
                )
            )
            continue
        annotation_ids.append((ann["id"], f"annotations[{index}]"))
        image = images.get(ann["image_id"])
        if image is None:
            add(
                Problem(
                    f"{json_file}: annotation id {ann['id']!r}: image_id = {ann['image_id']!r} "
                    "is the id of no image in 'images' (detectron2 would drop the annotation "
                    "with a warning); correct the image_id or add the image",
                    "annotation of an unknown image",
                )
            )
            continue
        image_id = ann["image_id"]
        where = (
            f"{json_file}: annotation id {ann['id']!r} of image id {image_id!r} "
            f"({image['file_name']})"
        )
        missing = [key for key in ("category_id", "bbox") if key not in ann]
        if missing:
            add(
                Problem(
                    f"{where} has no {' and no '.join(map(repr, missing))}; an annotation needs "
                    "'id', 'image_id', 'category_id' and 'bbox'. Add it",
                    "annotation without " + " and ".join(missing),
                    image_id,
                )
            )
            continue
        if ann["category_id"] not in known_categories:
            from ..utils import first_n

            add(
                Problem(
                    f"{where}: category_id = {ann['category_id']!r} is not the id of any entry of "
                    f"'categories' (ids: {first_n(sorted(map(str, known_categories)), 20)}); "
                    "correct the id or add the category",
                    "unknown category id",
                    image_id,
                )
            )
        problem, note = _box_problem(
            ann["bbox"], True, image.get("width"), image.get("height"), where, image_id
        )
        if problem:
            add(problem)
        found.boxes_past_border += note == "past"
        found.zero_size_boxes += note == "zero"
    for annotation_id, wheres in _duplicates(annotation_ids).items():
        add(
            Problem(
                f"{json_file}: annotation id {annotation_id!r} is given to {len(wheres)} "
                f"annotations ({', '.join(wheres)}); give every annotation its own id",
                "duplicate annotation id",
            )
        )
    return found


# --------------------------------------------------------------------------------------------
# 2-3. Dataset dicts and image files
# --------------------------------------------------------------------------------------------
def _check_dict_boxes(record: dict) -> tuple[list[Problem], int, int]:
    """Box checks on a dataset dict's own annotations (datasets without a COCO JSON): the
    problems, and the boxes past the border and of zero size."""
    from detectron2.structures import BoxMode

    problems, past, zero = [], 0, 0
    image_id, file_name = record.get("image_id"), record.get("file_name", "")
    for index, ann in enumerate(record.get("annotations") or []):
        mode = ann.get("bbox_mode")
        if mode not in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS) or "bbox" not in ann:
            continue  # relative or rotated boxes: nothing of ours reads them
        where = f"{describe_image(image_id, file_name)}, annotation {index}"
        problem, note = _box_problem(
            ann["bbox"],
            mode == BoxMode.XYWH_ABS,
            record.get("width"),
            record.get("height"),
            where,
            image_id,
        )
        if problem:
            problems.append(problem)
        past += note == "past"
        zero += note == "zero"
    return problems, past, zero


def _inspect(record: dict, decode: bool) -> ImageInfo | ImageError:
    try:
        return inspect_image(record["file_name"], record.get("image_id"), decode=decode)
    except ImageError as e:
        return e


def _exif_frame(record: dict, info: ImageInfo, exif_boxes: str) -> tuple[Optional[str], bool]:
    """Whether the image's size agrees with the record's width and height, and, for an image
    with an EXIF orientation, whether its boxes must be rotated with it: (problem, rotate)."""
    expected = (record.get("width"), record.get("height"))
    image = describe_image(record.get("image_id"), record["file_name"])
    if None in expected:
        return None, False  # nothing to compare; the mapper takes the file's size
    stored, displayed = info.stored_size, info.displayed_size
    sizes = f"the dataset says width {expected[0]} and height {expected[1]}"
    if info.orientation == 1:
        if expected == stored:
            return None, False
        return (
            f"{image}: {sizes}, but the file is {stored[0]} x {stored[1]} pixels; correct the "
            "width and height in the dataset (and the boxes, if they were drawn on an image of "
            "that size), or the file"
        ), False
    exif = (
        f"the file is {stored[0]} x {stored[1]} pixels as stored and carries "
        f"{info.orientation_text()}, which viewers and the data loader apply"
    )
    if displayed != stored:
        exif += f" ({displayed[0]} x {displayed[1]} upright)"
    on_stored, on_displayed = expected == stored, expected == displayed
    if not (on_stored or on_displayed):
        return (
            f"{image}: {sizes}, but {exif}; correct the width and height in the dataset, or "
            "the file"
        ), False
    if exif_boxes == "stored" or (exif_boxes == "auto" and on_stored and not on_displayed):
        if not on_stored:
            return (
                f"{image}: {sizes}, the upright size, but DATASETS.EXIF_BOXES 'stored' says "
                f"the boxes were drawn on the stored pixels, and {exif}; set DATASETS."
                "EXIF_BOXES 'auto' or 'displayed'"
            ), False
        return None, True
    if exif_boxes == "displayed" or (exif_boxes == "auto" and on_displayed and not on_stored):
        if not on_displayed:
            return (
                f"{image}: {sizes}, the stored size, but DATASETS.EXIF_BOXES 'displayed' says "
                f"the boxes were drawn on the upright image, and {exif}; set DATASETS."
                "EXIF_BOXES 'auto' or 'stored'"
            ), False
        return None, False
    return (
        f"{image}: {exif}, and keeps its size when turned upright, so the width and height "
        "cannot tell whether its boxes were drawn on the stored pixels or on the upright image. "
        "Set DATASETS.EXIF_BOXES 'stored' (boxes drawn by a tool that ignores EXIF: they are "
        "rotated with the image) or 'displayed' (drawn on the image as viewers show it), or "
        "save the image upright without the EXIF tag"
    ), False


def _exif_in_test_set(record: dict, info: ImageInfo, json_file: Optional[str]) -> str:
    """Why the boxes of a test image cannot be rotated with it."""
    scored = f"the boxes of {json_file}" if json_file else "the dataset's boxes"
    return (
        f"{describe_image(record.get('image_id'), record['file_name'])} carries "
        f"{info.orientation_text()} and its boxes were drawn on the stored pixels. In a test "
        f"set they cannot be rotated with the image: the evaluator scores the predictions on "
        f"the upright image against {scored} as they are. Save the image upright without the "
        "EXIF tag and rotate its boxes in the dataset"
    )


def _rotate_record(record: dict, info: ImageInfo) -> Optional[str]:
    """Moves the record's boxes and polygons onto the upright image (in place, boxes as
    XYXY_ABS) and sets its size to the upright one; returns why it cannot (RLE masks and
    keypoints are not rotated), or None."""
    from detectron2.structures import BoxMode

    annotations = record.get("annotations") or []
    for ann in annotations:
        if isinstance(ann.get("segmentation"), dict) or ann.get("keypoints"):
            kind = "keypoints" if ann.get("keypoints") else "an RLE mask"
            return (
                f"{describe_image(record.get('image_id'), record['file_name'])} carries "
                f"{info.orientation_text()} and its annotations include {kind}, which are not "
                "rotated with the image; save the image upright without the EXIF tag and "
                "transform its annotations with it"
            )
    for ann in annotations:
        box = BoxMode.convert(list(ann["bbox"]), ann["bbox_mode"], BoxMode.XYXY_ABS)
        ann["bbox"] = exif_box(box, info.orientation, info.stored_size)
        ann["bbox_mode"] = BoxMode.XYXY_ABS
        if isinstance(ann.get("segmentation"), list):
            rotated = []
            for polygon in ann["segmentation"]:
                points = []
                for x, y in zip(polygon[0::2], polygon[1::2]):
                    points += exif_box([x, y, x, y], info.orientation, info.stored_size)[:2]
                rotated.append(points)
            ann["segmentation"] = rotated
    record["width"], record["height"] = info.displayed_size
    return None


def _load_coco_without(name: str, content: dict, bad: set, image_root: str) -> list[dict]:
    """detectron2's ``load_coco_json`` of ``content`` without the images ``bad`` and their
    annotations (it reads a file: a temporary one)."""
    from detectron2.data.datasets import load_coco_json

    kept = dict(
        content,
        images=[i for i in content["images"] if i["id"] not in bad],
        annotations=[a for a in content.get("annotations") or [] if a["image_id"] not in bad],
    )
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "annotations.json")
        with open(path, "w") as f:
            json.dump(kept, f)
        return load_coco_json(path, image_root, name)


def _threads() -> int:
    # Header reads wait on the disk; full decodes release the GIL inside PIL's decoders.
    return min(16, 4 * (os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# 4. The verdict, and the combined dicts of a run
# --------------------------------------------------------------------------------------------
def _raise(name: str, problems: list[Problem], skippable: bool) -> None:
    shown = " | ".join(p.text for p in problems[:_SHOWN])
    more = f" | ... and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
    hint = f" (fix them, {_SKIP_HINT})" if skippable else ""
    raise DatasetValidationError(
        f"dataset {name!r} failed its checks before training, {len(problems)} "
        f"problem{'s' if len(problems) > 1 else ''}{hint}: {shown}{more}",
        problems,
    )


def _check(name: str, settings: ValidationSettings, is_train: bool):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    report = ValidationReport(name, settings.mode)
    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None)
    records = None
    if getattr(meta, "generated_on_first_use", False):
        records = DatasetCatalog.get(name)  # writes the JSON file (the built-in shapes)
    start = time.perf_counter()  # the checks' time, not the generation's
    problems: list[Problem] = []
    if json_file:
        content = read_coco_json(name, json_file)
        found = check_coco_json(content, json_file)
        structural = [p for p in found.problems if p.image_id is None]
        if structural:
            _raise(name, structural, skippable=False)
        problems += found.problems
        report.annotations = found.annotations
        report.images = len(content["images"])
        report.boxes_past_border = found.boxes_past_border
        report.zero_size_boxes = found.zero_size_boxes
        image_root = getattr(meta, "image_root", None)
        if problems and image_root:
            # detectron2's loader fails on some of them (an unknown category, a missing key):
            # the other images are loaded without them, for their own checks.
            records = _load_coco_without(name, content, {p.image_id for p in problems}, image_root)
    if records is None:
        records = DatasetCatalog.get(name)
    if not json_file:
        for record in records:
            box_problems, past, zero = _check_dict_boxes(record)
            problems += box_problems
            report.boxes_past_border += past
            report.zero_size_boxes += zero
        report.annotations = sum(len(r.get("annotations") or []) for r in records)
        report.images = len(records)
    report.without_annotations = sum(1 for r in records if not r.get("annotations"))

    decode = settings.mode == "full"
    with ThreadPoolExecutor(_threads()) as pool:
        infos = list(pool.map(lambda r: _inspect(r, decode), records))
    to_rotate = []
    for record, info in zip(records, infos):
        image_id = record.get("image_id")
        if isinstance(info, ImageError):
            problems.append(Problem(str(info), info.reason, image_id))
            continue
        report.pixel_formats[info.kind] += 1
        problem, rotate = _exif_frame(record, info, settings.exif_boxes)
        reason = "EXIF orientation" if info.orientation != 1 else "size differs from file"
        if problem:
            problems.append(Problem(problem, reason, image_id))
        elif rotate and not is_train:
            problems.append(Problem(_exif_in_test_set(record, info, json_file), reason, image_id))
        elif rotate:
            to_rotate.append((record, info))
        elif info.orientation != 1:
            report.exif_upright_boxes += 1

    skip = settings.bad_images == "skip" and is_train
    if problems and not skip:
        _raise(name, problems, skippable=is_train)
    bad = {p.image_id for p in problems}
    for record, info in to_rotate:
        if record.get("image_id") in bad:
            continue
        why = _rotate_record(record, info)
        if why is None:
            report.exif_rotated_boxes += 1
        elif skip:
            problems.append(Problem(why, "EXIF orientation", record.get("image_id")))
            bad.add(record.get("image_id"))
        else:
            _raise(name, [Problem(why, "EXIF orientation", record.get("image_id"))], True)
    if bad:
        report.skipped = problems
        records = [r for r in records if r.get("image_id") not in bad]
        logger.warning(
            "Dataset %r: %s: %s",
            name,
            report.skipped_text(),
            " | ".join(map(str, problems[:_SHOWN])),
        )
        if not records:
            raise DatasetValidationError(
                f"dataset {name!r}: every image was skipped by DATASETS.BAD_IMAGES 'skip' "
                f"({report.skipped_text()}); nothing is left to train on. Fix the dataset"
            )
    report.seconds = time.perf_counter() - start
    logger.info(report.summary())
    return records, report


# Validated datasets of this process: checking twice (the Trainer before building its loaders,
# then the loader) costs nothing the second time. A training set's dicts leave the cache when
# its loader takes them (:func:`validated_dataset_dicts`), so that a large dataset is not held
# twice for the whole run; test sets stay, as every evaluation builds its loader again. The
# reports stay, for the end of training.
_CACHE: dict[tuple, list[dict]] = {}
_REPORTS: dict[tuple, ValidationReport] = {}


def _cache_key(name: str, settings: ValidationSettings, is_train: bool) -> tuple:
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    json_file = getattr(meta, "json_file", None)
    stamp = None  # the file as it was checked; the built-in datasets never change
    if json_file and os.path.isfile(json_file) and not getattr(meta, "generated_on_first_use", 0):
        st = os.stat(json_file)
        stamp = (json_file, st.st_mtime_ns, st.st_size)
    return (name, settings, is_train, stamp)


def validate_dataset(
    name: str, settings: ValidationSettings, is_train: bool
) -> tuple[list[dict], ValidationReport]:
    """The dataset dicts of ``name``, checked (see the module's docstring), and what was found.

    Args:
        name: a registered dataset.
        settings: :meth:`ValidationSettings.from_config`; with ``mode`` "off", the dicts as
            registered, unchecked, and an empty report.
        is_train: whether the dataset is trained on; only a training set skips bad images.

    Returns:
        the dicts (bad images left out where skipped, boxes of EXIF-rotated images drawn on
        the stored pixels moved to the upright image), and the report. Cached per process.

    Raises:
        DatasetValidationError: listing the problems, each naming the file, image and
            annotation id, the key and value, and what to do.
        DatasetFormatError: the JSON file is not valid JSON (path, line, column) or no COCO
            instances object.
    """
    if settings.mode == "off":
        from detectron2.data import DatasetCatalog

        return DatasetCatalog.get(name), ValidationReport(name, settings.mode)
    key = _cache_key(name, settings, is_train)
    if key not in _CACHE:
        _CACHE[key], _REPORTS[key] = _check(name, settings, is_train)
    return _CACHE[key], _REPORTS[key]


def validation_reports(cfg: Any, names: Sequence[str], is_train: bool) -> list[ValidationReport]:
    """The reports of the datasets ``names`` validated with ``cfg``'s settings in this process."""
    settings = ValidationSettings.from_config(cfg)
    keys = [_cache_key(name, settings, is_train) for name in names]
    return [_REPORTS[key] for key in keys if key in _REPORTS]


def validated_dataset_dicts(cfg: Any, names: Sequence[str], is_train: bool) -> list[dict]:
    """The dataset dicts of ``names``, each dataset checked by :func:`validate_dataset`, then
    combined as detectron2's ``get_detection_dataset_dicts`` does for the train loader
    (``is_train``: images without annotations filtered by ``DATALOADER.FILTER_EMPTY_ANNOTATIONS``,
    keypoint minimum, ``DATASETS.PROPOSAL_FILES_TRAIN``) or a test loader (nothing filtered,
    ``PROPOSAL_FILES_TEST``). With ``DATASETS.VALIDATE "off"``, detectron2's function itself.

    For ``build_detection_train_loader(cfg, mapper=..., dataset=...)`` and
    ``build_detection_test_loader(dataset, mapper=...)``.

    Raises:
        DatasetValidationError, DatasetFormatError: see :func:`validate_dataset`.
        ValueError: a validation key has a value that is not valid (listing the valid ones).
    """
    import itertools

    from detectron2.data import MetadataCatalog
    from detectron2.data.build import (
        filter_images_with_few_keypoints,
        filter_images_with_only_crowd_annotations,
        get_detection_dataset_dicts,
        load_proposals_into_dataset,
        print_instances_class_histogram,
    )
    from detectron2.data.detection_utils import check_metadata_consistency

    names = [names] if isinstance(names, str) else list(names)
    if not names:
        raise ValueError("validated_dataset_dicts needs at least one dataset name; none given")
    settings = ValidationSettings.from_config(cfg)
    filter_empty = is_train and cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
    keypoints = cfg.MODEL.KEYPOINT_ON and is_train
    min_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if keypoints else 0
    proposal_files = None
    if cfg.MODEL.LOAD_PROPOSALS:
        proposal_files = (
            list(cfg.DATASETS.PROPOSAL_FILES_TRAIN)
            if is_train
            else [cfg.DATASETS.PROPOSAL_FILES_TEST[list(cfg.DATASETS.TEST).index(n)] for n in names]
        )
    if settings.mode == "off":
        return get_detection_dataset_dicts(
            names,
            filter_empty=filter_empty,
            min_keypoints=min_keypoints,
            proposal_files=proposal_files,
        )
    per_dataset = [validate_dataset(name, settings, is_train)[0] for name in names]
    if is_train:
        for name in names:
            _CACHE.pop(_cache_key(name, settings, is_train), None)
    if proposal_files is not None:
        per_dataset = [
            load_proposals_into_dataset([dict(r) for r in records], proposal_file)
            for records, proposal_file in zip(per_dataset, proposal_files)
        ]
    records = list(itertools.chain.from_iterable(per_dataset))
    has_instances = bool(records) and "annotations" in records[0]
    if filter_empty and has_instances:
        records = filter_images_with_only_crowd_annotations(records)
    if min_keypoints > 0 and has_instances:
        records = filter_images_with_few_keypoints(records, min_keypoints)
    if has_instances:
        class_names = getattr(MetadataCatalog.get(names[0]), "thing_classes", None)
        if class_names is not None:
            check_metadata_consistency("thing_classes", names)
            # As get_detection_dataset_dicts: detectron2 v0.6's histogram uses np.int, gone
            # from numpy 1.24, and the AttributeError it catches is that one.
            with contextlib.suppress(AttributeError):
                print_instances_class_histogram(records, class_names)
    if not records:
        raise DatasetValidationError(
            f"datasets {names} have no image left to {'train' if is_train else 'test'} on"
            + (f" ({_FILTER_EMPTY_KEY} drops images without annotations)" if filter_empty else "")
        )
    return records


class ValidationReportHook(HookBase):
    """Logs, when training ends (also after a failure), what the checks of the training
    datasets left out, so that a skip is never only a line at the start of a long log."""

    def __init__(self, reports: Sequence[ValidationReport]):
        self.reports = list(reports)

    def after_train(self) -> None:
        for report in self.reports:
            text = report.skipped_text()
            if text:
                logger.warning("Training data %r: %s", report.name, text)
            else:
                logger.info(
                    "Training data %r: every image was used (%d images)",
                    report.name,
                    report.images,
                )

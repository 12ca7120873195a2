"""Pascal VOC-format datasets: detectron2's ``voc_*`` datasets and your own VOC-format folders,
read with errors that name the file, and the shapes dataset written in that format.

A VOC-format folder is detectron2's layout (``datasets/VOC2007``, ``datasets/VOC2012``)::

    DIR/Annotations/<id>.xml           one per image: size, objects (name, bndbox, difficult ...)
    DIR/JPEGImages/<id>.jpg
    DIR/ImageSets/Main/<SPLIT>.txt     the ids of the split, one a line

The pipeline, in order:

1. registration: detectron2 registers ``voc_2007_trainval``, ``voc_2012_trainval``,
   ``voc_2007_test`` ... under ``$DETECTRON2_DATASETS`` (default ``./datasets``); your own folders
   are ``[NAME, DIR, SPLIT, CLASS ...]`` entries of ``DATASETS.VOC_FORMAT`` or
   ``tools/train_net.py --voc-dataset NAME DIR SPLIT [--voc-classes C1,C2,...]``
   (:func:`register_voc_format`; without classes, VOC's 20). Either way the metadata is
   :func:`detectron2.data.datasets.register_pascal_voc`'s (``dirname``, ``split``, ``year``,
   ``thing_classes``) with ``evaluator_type`` "pascal_voc";
2. the folder: :func:`missing_voc_files` (``Annotations/``, ``JPEGImages/``, the split's file);
3. loading: :func:`load_voc_format`, which gives the dicts of detectron2's
   ``load_voc_instances`` (the same boxes, ids and files; ``tests/test_voc.py`` compares them).
   detectron2 v0.6's own loader cannot run on numpy >= 1.24 (``np.str``) and fails on a split of
   one image or a bad file without naming it; ours names the file, the object and the valid
   classes. :func:`use_checked_voc_loaders` puts it in place of detectron2's for the ``voc_*``
   datasets;
4. evaluation (:mod:`resnet_backbones.voc_eval`) reads the XML again with detectron2's
   ``parse_rec``, which needs more of it (integer coordinates, ``difficult``, ``truncated``,
   ``pose``): :func:`check_voc_for_evaluation` checks a test set for that before training.

:func:`write_voc_shapes` writes the shapes dataset (:mod:`.shapes`) in this layout, for the
tests and for trying the VOC path without VOC.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass, replace
from math import ceil, floor
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .coco_format import DatasetFormatError, DatasetNotFoundError

__all__ = [
    "VOC_CLASSES",
    "VOC_FORMAT_KEY",
    "VOCEntry",
    "check_voc_for_evaluation",
    "check_voc_format",
    "load_voc_format",
    "missing_voc_files",
    "read_voc_split",
    "register_voc_format",
    "resolve_voc_paths",
    "use_checked_voc_loaders",
    "voc_annotation_xml",
    "voc_year",
    "write_voc_shapes",
]

VOC_FORMAT_KEY = "DATASETS.VOC_FORMAT"
# detectron2's CLASS_NAMES (data/datasets/pascal_voc.py): VOC's 20 classes in its order.
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
    "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
    "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)  # fmt: skip
_EXAMPLE = "['my_train', 'data/VOC2007', 'trainval', 'circle', 'triangle']"
_BOX_KEYS = ("xmin", "ymin", "xmax", "ymax")  # <bndbox>'s elements, in detectron2's box order
_LAYOUT = "Annotations/<id>.xml, JPEGImages/<id>.jpg and ImageSets/Main/<split>.txt"


@dataclass(frozen=True)
class VOCEntry:
    """One VOC-format dataset: its name, folder, split and classes (in the model's order)."""

    name: str
    dirname: str
    split: str
    classes: tuple[str, ...] = VOC_CLASSES

    def as_list(self) -> list[str]:
        classes = [] if self.classes == VOC_CLASSES else list(self.classes)
        return [self.name, self.dirname, self.split, *classes]


def check_voc_format(entries: Any, key: str = VOC_FORMAT_KEY) -> list[VOCEntry]:
    """The entries of ``entries`` (a list of ``[NAME, DIR, SPLIT, CLASS ...]``; no class: VOC's
    20) as :class:`VOCEntry`.

    Raises:
        DatasetFormatError: naming ``key``, the entry at fault and the form it must have.
    """
    if not isinstance(entries, (list, tuple)):
        raise DatasetFormatError(
            f"{key} = {entries!r} is not valid; it must be a list of [NAME, DIR, SPLIT, "
            f"CLASS ...] entries, e.g. [{_EXAMPLE}]"
        )
    checked = []
    for index, entry in enumerate(entries):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) < 3
            or not all(isinstance(part, str) and part for part in entry)
        ):
            raise DatasetFormatError(
                f"{key}[{index}] = {entry!r} is not valid; each entry must be non-empty strings "
                f"[NAME, DIR, SPLIT, CLASS ...] (no CLASS: VOC's 20 classes), e.g. {_EXAMPLE}"
            )
        classes = tuple(entry[3:]) or VOC_CLASSES
        repeated = sorted({c for c in classes if classes.count(c) > 1})
        if repeated:
            raise DatasetFormatError(
                f"{key}[{index}] = {entry!r}: the classes {repeated} are given more than once; "
                "each class must be named once, in the order of the model's outputs"
            )
        checked.append(VOCEntry(entry[0], entry[1], entry[2], classes))
    return checked


def resolve_voc_paths(entries: Any, base_dir: str, key: str = VOC_FORMAT_KEY) -> list[list[str]]:
    """``entries`` (checked by :func:`check_voc_format`, whose errors name ``key``) with a
    relative DIR joined to ``base_dir`` and made absolute (``~`` expanded)."""
    return [
        replace(
            entry,
            dirname=os.path.abspath(os.path.join(base_dir, os.path.expanduser(entry.dirname))),
        ).as_list()
        for entry in check_voc_format(entries, key)
    ]


def voc_year(dirname: str) -> int:
    """The ``year`` of a VOC-format folder's metadata, which chooses the metric of detectron2's
    evaluator: 2007 (the VOC2007 11-point AP) for a folder named ``VOC2007``, as detectron2's
    ``voc_2007_*`` datasets, else 2012 (the area under the precision-recall curve, VOC's metric
    since 2010). :mod:`resnet_backbones.voc_eval` reports both anyway."""
    return 2007 if os.path.basename(os.path.normpath(dirname)) == "VOC2007" else 2012


def missing_voc_files(dirname: str, split: str) -> list[str]:
    """The paths of a VOC-format folder's layout that are not on disk: the folder itself, or
    ``Annotations/``, ``JPEGImages/`` and ``ImageSets/Main/<split>.txt``."""
    if not os.path.isdir(dirname):
        return [dirname]
    needed = [
        (os.path.join(dirname, "Annotations"), os.path.isdir),
        (os.path.join(dirname, "JPEGImages"), os.path.isdir),
        (os.path.join(dirname, "ImageSets", "Main", f"{split}.txt"), os.path.isfile),
    ]
    return [path for path, exists in needed if not exists(path)]


def _fail(name: str, where: str, problem: str) -> DatasetFormatError:
    return DatasetFormatError(f"dataset {name!r}: {where} {problem}")


def read_voc_split(name: str, dirname: str, split: str) -> list[str]:
    """The image ids of ``ImageSets/Main/<split>.txt`` (one a line; blank lines ignored).

    Raises:
        DatasetNotFoundError: the folder's layout is incomplete (naming what is missing).
        DatasetFormatError: the split's file lists no image.
    """
    missing = missing_voc_files(dirname, split)
    if missing:
        raise DatasetNotFoundError(
            f"dataset {name!r}: missing {', '.join(map(repr, missing))}; a VOC-format folder "
            f"holds {_LAYOUT}"
        )
    split_file = os.path.join(dirname, "ImageSets", "Main", f"{split}.txt")
    with open(split_file, encoding="utf-8") as f:
        # detectron2 reads the file with np.loadtxt: the first field of each line.
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise _fail(name, split_file, "lists no image; it must hold one image id a line")
    return ids


def _text(element: ET.Element, path: str) -> Optional[str]:
    found = element.find(path)
    return None if found is None or found.text is None else found.text.strip()


def _parse(name: str, xml_file: str) -> ET.Element:
    try:
        return ET.parse(xml_file).getroot()
    except FileNotFoundError:
        raise DatasetNotFoundError(
            f"dataset {name!r}: {xml_file} does not exist; every id of the split needs its "
            "Annotations/<id>.xml"
        ) from None
    except ET.ParseError as e:  # its message holds the line and column
        raise _fail(name, xml_file, f"is not valid XML ({e})") from None
    except OSError as e:
        raise _fail(name, xml_file, f"cannot be read ({e})") from None


def _number(name: str, xml_file: str, element: ET.Element, path: str, what: str) -> float:
    text = _text(element, path)
    try:
        return float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        shown = "is missing" if text is None else f"= {text!r} is not a number"
        raise _fail(name, xml_file, f"{what}: <{path}> {shown}") from None


def _record(
    name: str, dirname: str, image_id: str, class_names: Sequence[str], evaluation: bool
) -> dict:
    """The detectron2 dict of one image, from its XML (checked; see :func:`load_voc_format`);
    with ``evaluation``, the XML is also checked for what detectron2's ``parse_rec`` reads."""
    from detectron2.structures import BoxMode

    xml_file = os.path.join(dirname, "Annotations", f"{image_id}.xml")
    root = _parse(name, xml_file)
    record = {
        "file_name": os.path.join(dirname, "JPEGImages", f"{image_id}.jpg"),
        "image_id": image_id,
    }
    for key in ("height", "width"):
        value = _number(name, xml_file, root, f"size/{key}", "the image size")
        if value != int(value) or value <= 0:
            raise _fail(name, xml_file, f"the image size: <size/{key}> = {value} is not valid")
        record[key] = int(value)
    instances = []
    for index, obj in enumerate(root.findall("object")):
        cls = _text(obj, "name")
        what = f"object {index} ({cls!r})"
        if cls not in class_names:
            raise _fail(
                name,
                xml_file,
                f"object {index} has the class {cls!r}, which is not one of the dataset's "
                f"{len(class_names)} classes {list(class_names)}; register the dataset with its "
                "classes (--voc-classes C1,C2,... or [NAME, DIR, SPLIT, CLASS ...] in "
                f"{VOC_FORMAT_KEY})",
            )
        box = [_number(name, xml_file, obj, f"bndbox/{k}", what) for k in _BOX_KEYS]
        if evaluation:
            _check_for_evaluation(name, xml_file, obj, what)
        # As detectron2's load_voc_instances: VOC's boxes are 1-based pixel indices, inclusive;
        # (xmin=1, xmax=W) covers the whole image, which is (0, W) in detectron2's coordinates.
        box[0] -= 1.0
        box[1] -= 1.0
        instances.append(
            {
                "category_id": list(class_names).index(cls),
                "bbox": box,
                "bbox_mode": BoxMode.XYXY_ABS,
            }
        )
    record["annotations"] = instances
    return record


def _check_for_evaluation(name: str, xml_file: str, obj: ET.Element, what: str) -> None:
    """What detectron2's VOC evaluator (``parse_rec``) reads of an object beyond the loader:
    ``pose`` text, integer ``truncated`` and ``difficult``, integer box coordinates."""
    why = "detectron2's VOC evaluator reads it"
    if _text(obj, "pose") is None:
        raise _fail(name, xml_file, f"{what}: <pose> is missing ({why}; VOC writes Unspecified)")
    for key in ("truncated", "difficult", *(f"bndbox/{k}" for k in _BOX_KEYS)):
        text = _text(obj, key)
        try:
            int(text)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            shown = "is missing" if text is None else f"= {text!r} is not an integer"
            raise _fail(name, xml_file, f"{what}: <{key}> {shown} ({why} as an integer)") from None


def load_voc_format(
    name: str, dirname: str, split: str, class_names: Sequence[str] = VOC_CLASSES
) -> list[dict]:
    """detectron2's ``load_voc_instances(dirname, split, class_names)`` (the same dicts), with a
    one-line error naming the file where the folder is not readable VOC.

    Raises:
        DatasetNotFoundError: a part of the layout, or an image's XML file, is missing.
        DatasetFormatError: an XML file that does not parse (line and column), lacks the image
            size or a box coordinate, or names a class the dataset does not have (listing them);
            a split that lists no image.
    """
    return [
        _record(name, dirname, image_id, class_names, evaluation=False)
        for image_id in read_voc_split(name, dirname, split)
    ]


def check_voc_for_evaluation(name: str) -> None:
    """Checks that detectron2's VOC evaluator can read the annotations of the registered
    dataset ``name``: besides what :func:`load_voc_format` checks, each object's ``pose``, and
    ``truncated``, ``difficult`` and the box coordinates as integers, and no blank line in the
    split's file. Fails before training
    rather than at the evaluation after it.

    Raises:
        DatasetNotFoundError, DatasetFormatError: naming the file and the element.
    """
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    for image_id in read_voc_split(name, meta.dirname, meta.split):
        _record(name, meta.dirname, image_id, meta.thing_classes, evaluation=True)
    # The evaluator takes every line of the split's file for an image id (the loader skips
    # blank ones, as np.loadtxt does).
    split_file = os.path.join(meta.dirname, "ImageSets", "Main", f"{meta.split}.txt")
    with open(split_file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                raise _fail(
                    name,
                    split_file,
                    f"line {number} is blank; detectron2's VOC evaluator reads every line as an "
                    "image id, so remove it",
                )
            if len(line.split()) > 1:
                raise _fail(
                    name,
                    split_file,
                    f"line {number} ({line.strip()!r}) has more than an image id (a class's "
                    "split file, '<id> 1'?); detectron2's VOC evaluator reads the whole line as "
                    "the id: use a split file of ids alone (ImageSets/Main/<split>.txt)",
                )


class _VOCLoader:
    """The loader registered for a VOC-format dataset (a class, so that it can be told from
    detectron2's own)."""

    def __init__(self, entry: VOCEntry):
        self.entry = entry

    def __call__(self) -> list[dict]:
        e = self.entry
        return load_voc_format(e.name, e.dirname, e.split, e.classes)


def _register(entry: VOCEntry, year: int) -> None:
    from detectron2.data import DatasetCatalog, MetadataCatalog

    DatasetCatalog.register(entry.name, _VOCLoader(entry))
    # detectron2's register_pascal_voc metadata, and the builtin datasets' evaluator type.
    MetadataCatalog.get(entry.name).set(
        thing_classes=list(entry.classes),
        dirname=entry.dirname,
        year=year,
        split=entry.split,
        evaluator_type="pascal_voc",
    )


def register_voc_format(entries: Iterable[Sequence[str]], key: str = VOC_FORMAT_KEY) -> None:
    """Registers each ``[NAME, DIR, SPLIT, CLASS ...]`` of ``entries`` as a VOC-format dataset
    (relative DIR: to the working directory; no class: VOC's 20); a name already registered
    with the same folder, split and classes is left as it is. The ``year`` of its metadata is
    :func:`voc_year`'s.

    Raises:
        DatasetFormatError: a malformed entry, or a name registered already otherwise.
        DatasetNotFoundError: the folder lacks part of the VOC layout (naming it).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for entry in check_voc_format(entries, key):
        entry = replace(entry, dirname=os.path.abspath(entry.dirname))
        if entry.name in DatasetCatalog.list():
            meta = MetadataCatalog.get(entry.name)
            registered = (
                getattr(meta, "dirname", None),
                getattr(meta, "split", None),
                tuple(getattr(meta, "thing_classes", ())),
            )
            if registered == (entry.dirname, entry.split, entry.classes):
                continue
            raise DatasetFormatError(
                f"dataset {entry.name!r} is registered already, with dirname {registered[0]!r}, "
                f"split {registered[1]!r} and classes {list(registered[2])}; {key} (or "
                f"--voc-dataset) gives {entry.dirname!r}, {entry.split!r} and "
                f"{list(entry.classes)}. Choose another name for this dataset"
            )
        missing = missing_voc_files(entry.dirname, entry.split)
        if missing:
            raise DatasetNotFoundError(
                f"dataset {entry.name!r}: missing {', '.join(map(repr, missing))} (given by "
                f"{key} or --voc-dataset); a VOC-format folder holds {_LAYOUT}"
            )
        _register(entry, voc_year(entry.dirname))


def use_checked_voc_loaders() -> None:
    """Registers :func:`load_voc_format` in place of detectron2's ``load_voc_instances`` for
    every dataset registered by detectron2's ``register_pascal_voc`` (its builtin ``voc_*``
    datasets among them), with the same metadata. detectron2 v0.6's loader uses ``np.str``,
    which numpy 1.24 removed, so those datasets do not load at all without this."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name in DatasetCatalog.list():
        loader = DatasetCatalog[name]
        if getattr(loader, "__module__", "") != "detectron2.data.datasets.pascal_voc":
            continue
        meta = MetadataCatalog.get(name)
        entry = VOCEntry(name, meta.dirname, meta.split, tuple(meta.thing_classes))
        DatasetCatalog.remove(name)
        DatasetCatalog.register(name, _VOCLoader(entry))


# --------------------------------------------------------------------------------------------
# The shapes dataset in VOC format
# --------------------------------------------------------------------------------------------
def voc_annotation_xml(
    filename: str, width: int, height: int, objects: Iterable[tuple[str, Sequence[int]]]
) -> str:
    """The text of a VOC annotation file, with what detectron2's loader and evaluator read:
    the image's ``size``, and each object's ``name``, ``pose`` (Unspecified), ``truncated`` and
    ``difficult`` (0) and ``bndbox``.

    Args:
        filename: the image's file name (``<id>.jpg``).
        width, height: the image's size in pixels.
        objects: ``(class name, (xmin, ymin, xmax, ymax))``, the box in VOC's integer, 1-based,
            inclusive pixel indices ((1, 1, W, H) is the whole image).
    """
    root = ET.Element("annotation")
    ET.SubElement(root, "folder").text = "VOC2007"
    ET.SubElement(root, "filename").text = filename
    ET.SubElement(ET.SubElement(root, "source"), "database").text = "resnet_backbones"
    size_element = ET.SubElement(root, "size")
    for key, value in (("width", width), ("height", height), ("depth", 3)):
        ET.SubElement(size_element, key).text = str(value)
    ET.SubElement(root, "segmented").text = "0"
    for class_name, box in objects:
        element = ET.SubElement(root, "object")
        ET.SubElement(element, "name").text = class_name
        ET.SubElement(element, "pose").text = "Unspecified"
        ET.SubElement(element, "truncated").text = "0"
        ET.SubElement(element, "difficult").text = "0"
        box_element = ET.SubElement(element, "bndbox")
        for key, value in zip(_BOX_KEYS, box):
            ET.SubElement(box_element, key).text = str(int(value))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode") + "\n"


def write_voc_shapes(
    out_dir: str | os.PathLike,
    splits: Optional[dict[str, int]] = None,
    *,
    seed: int = 0,
    image_size: int = 256,
) -> Path:
    """Writes shapes images (:func:`resnet_backbones.data.shapes.generate_image`, the classes
    ``circle``, ``triangle``, ``rectangle``) as a VOC-format folder ``out_dir/VOC2007`` in
    detectron2's layout: JPEG images, one XML per image (integer 1-based boxes, ``difficult``
    0), and ``ImageSets/Main/<split>.txt`` for each split. Returns the folder.

    Register it with ``--voc-dataset NAME OUT_DIR/VOC2007 SPLIT --voc-classes
    circle,triangle,rectangle``.

    Args:
        out_dir: where ``VOC2007/`` is written (created; files of the same names replaced).
        splits: the number of images of each split (default ``{"trainval": 16, "test": 8}``);
            the splits get distinct images, numbered on from one split to the next.
        seed: the seed of the images: the same arguments write the same files.
        image_size: the side of the square images, in pixels; object sizes scale with it.
    """
    from .shapes import CLASSES, SPLITS, generate_image

    splits = {"trainval": 16, "test": 8} if splits is None else splits
    folder = Path(out_dir) / "VOC2007"
    for sub in ("Annotations", "JPEGImages", os.path.join("ImageSets", "Main")):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    scale = image_size / SPLITS["train"].image_size
    number = 0
    for split_index, (split, num_images) in enumerate(splits.items()):
        cfg = replace(
            SPLITS["train"],
            num_images=num_images,
            seed=seed,
            image_size=image_size,
            min_side=max(4.0, SPLITS["train"].min_side * scale),
            max_side=SPLITS["train"].max_side * scale,
        )
        ids = []
        for index in range(num_images):
            number += 1
            image_id = f"{number:06d}"
            image, objects = generate_image(cfg, 100 + split_index, index)
            image.save(folder / "JPEGImages" / f"{image_id}.jpg", quality=95)
            # The pixels a box touches, as 1-based inclusive indices.
            boxes = [
                (floor(x0) + 1, floor(y0) + 1, min(image_size, ceil(x1)), min(image_size, ceil(y1)))
                for x0, y0, x1, y1 in (obj["bbox"] for obj in objects)
            ]
            names = [CLASSES[obj["category"]] for obj in objects]
            xml = voc_annotation_xml(f"{image_id}.jpg", image_size, image_size, zip(names, boxes))
            (folder / "Annotations" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
            ids.append(image_id)
        (folder / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return folder

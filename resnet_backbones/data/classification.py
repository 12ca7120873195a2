"""Classification datasets for pretraining, registered by name in detectron2's catalogs.

Each dataset is a list of records ``{"file_name": path}`` or ``{"image": uint8 HxWx3 RGB
array}``, plus ``"label"`` (an int, the index into the metadata's ``classes``) and ``"image_id"``.
Its ``MetadataCatalog`` entry holds ``classes``, ``num_classes`` and
``evaluator_type="classification"``; where the classes are a constant of the dataset they are
set when it is registered, for an ImageFolder folder when it is first loaded (registering reads
no file).

* ``imagenet_train``, ``imagenet_val``: torchvision's ImageFolder layout,
  ``$DETECTRON2_DATASETS/imagenet/{train,val}/<wnid>/*.JPEG`` (default root ``./datasets``).
* ``cifar10_train``, ``cifar10_val``, ``cifar10_test``: the ResNet paper's 45k/5k split of the
  50k training images (its Sec. 4.2 does not say which 5k; here, as is usual, the last 5k of the
  training batches in file order, i.e. the second half of ``data_batch_5``, are ``val`` and the
  first 45k ``train``) and the 10k test images, from
  ``$DETECTRON2_DATASETS/cifar10/cifar-10-batches-py/`` (python pickles, read through the
  restricted unpickler of :mod:`resnet_backbones.weights.safe_pickle`) or
  ``.../cifar-10-batches-bin/`` (the binary version).
* ``digits_train``, ``digits_val``: scikit-learn's bundled handwritten digits (1797 real 8x8
  images, 10 classes) upsampled to CIFAR's 32x32, see :func:`load_digits_split`.
* ``shapes_cls_train``, ``shapes_cls_val``: object crops cut from images of the shapes
  generator (:mod:`.shapes`), written in the ImageFolder layout on first use, so that the
  ImageNet code path runs on every machine; see :func:`ensure_shapes_cls`.
* your own ImageFolder folders: :func:`register_image_folder`.

Missing files stop at once, naming the paths and the variable that points to them
(:func:`check_classification_files`, which ``engine.check_datasets`` calls).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from ..utils import cache_root, check_choice, first_n
from .coco_format import DatasetFormatError, DatasetNotFoundError
from .shapes import CLASSES as SHAPES_CLASSES
from .shapes import ShapesConfig, generate_image

__all__ = [
    "CIFAR10_CLASSES",
    "CLASSIFICATION_DATASETS",
    "DIGITS_CLASSES",
    "SHAPES_CLS_CLASSES",
    "SHAPES_CLS_SPLITS",
    "ShapesClsConfig",
    "check_classification_files",
    "classification_classes",
    "datasets_root",
    "digits_split_ids",
    "ensure_shapes_cls",
    "load_cifar10",
    "load_digits_split",
    "load_image_folder",
    "read_cifar10",
    "register_classification_datasets",
    "register_image_folder",
    "shapes_cls_dir",
]

DATASETS_ENV = "DETECTRON2_DATASETS"
# The batches' own order (batches.meta); a constant of the dataset, so no file is read to
# register it.
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR10_NUM_VAL = 5000
_CIFAR_IMAGE_BYTES = 3 * 32 * 32
_CIFAR_FILES = {
    "py": {"train": [f"data_batch_{k}" for k in range(1, 6)], "test": ["test_batch"]},
    "bin": {"train": [f"data_batch_{k}.bin" for k in range(1, 6)], "test": ["test_batch.bin"]},
}
_CIFAR_FOLDERS = {"py": "cifar-10-batches-py", "bin": "cifar-10-batches-bin"}
DIGITS_CLASSES: tuple[str, ...] = tuple(str(d) for d in range(10))
DIGITS_SIZE = 32
DIGITS_VAL_EVERY = 5
SHAPES_CLS_CLASSES: tuple[str, ...] = (*SHAPES_CLASSES, "background")
_SHAPES_CLS_VERSION = 1

# name -> (kind, split); kind picks the loader.
CLASSIFICATION_DATASETS: dict[str, tuple[str, str]] = {
    "imagenet_train": ("imagenet", "train"),
    "imagenet_val": ("imagenet", "val"),
    "cifar10_train": ("cifar10", "train"),
    "cifar10_val": ("cifar10", "val"),
    "cifar10_test": ("cifar10", "test"),
    "digits_train": ("digits", "train"),
    "digits_val": ("digits", "val"),
    "shapes_cls_train": ("shapes_cls", "train"),
    "shapes_cls_val": ("shapes_cls", "val"),
}


def datasets_root() -> str:
    """``$DETECTRON2_DATASETS``, else ``./datasets`` (detectron2's rule), read at each call so
    that the variable can be set after the datasets are registered."""
    return os.path.expanduser(os.environ.get(DATASETS_ENV, "datasets"))


def _where() -> str:
    root = os.environ.get(DATASETS_ENV)
    if root:
        return f"{DATASETS_ENV}={root!r}"
    return (
        f"{DATASETS_ENV} is not set, so the datasets are looked for in ./datasets under the "
        f"working directory {os.getcwd()!r}"
    )


# --------------------------------------------------------------------------------------------
# ImageFolder layout (ImageNet, shapes_cls, your own folders)
# --------------------------------------------------------------------------------------------
def load_image_folder(
    root: str, name: str, classes: Optional[Sequence[str]] = None
) -> tuple[list[dict], list[str]]:
    """The records of an ImageFolder-layout folder ``root/<class>/<image>``, and its classes.

    torchvision's ``find_classes`` (sorted subfolder names) gives the classes unless ``classes``
    fixes them (then a class may have no folder or no image), and its ``make_dataset`` the
    ``(path, label)`` pairs with its image extensions.

    Raises:
        DatasetNotFoundError: ``root`` is not a folder.
        DatasetFormatError: it has no class subfolder, or (classes not fixed) a class folder
            has no image.
    """
    from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

    fixed_classes = classes is not None
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"dataset {name!r}: the folder {root!r} does not exist")
    if classes is None:
        try:
            classes, class_to_idx = find_classes(root)
        except FileNotFoundError as e:
            raise DatasetFormatError(
                f"dataset {name!r}: {root!r} has no class subfolders; the ImageFolder layout is "
                f"{root}/<class>/<image> ({e})"
            ) from None
    else:
        classes = list(classes)
        class_to_idx = {c: i for i, c in enumerate(classes)}
    try:
        # A fixed class list may name classes this folder lacks (a small validation set).
        samples = make_dataset(
            root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=fixed_classes
        )
    except FileNotFoundError as e:  # a class with no image file
        raise DatasetFormatError(
            f"dataset {name!r}: {e}; every class folder of {root!r} needs at least one image"
        ) from None
    records = [
        {"file_name": path, "label": label, "image_id": os.path.relpath(path, root)}
        for path, label in samples
    ]
    return records, list(classes)


def _load_folder_dataset(name: str, root: str, classes: Optional[Sequence[str]] = None) -> list:
    from detectron2.data import MetadataCatalog

    records, found = load_image_folder(root, name, classes)
    meta = MetadataCatalog.get(name)
    if getattr(meta, "classes", None) not in (None, found):
        raise DatasetFormatError(
            f"dataset {name!r}: the classes of {root!r} changed since it was first loaded in "
            f"this process ({first_n(meta.classes, 5)} -> {first_n(found, 5)})"
        )
    meta.set(classes=found, num_classes=len(found))
    return records


def _imagenet_dir(split: str) -> str:
    return os.path.join(datasets_root(), "imagenet", split)


def register_image_folder(name: str, root: str, classes: Optional[Sequence[str]] = None) -> None:
    """Registers your own ImageFolder-layout folder ``root/<class>/<image>`` as ``name``.

    Its classes are its sorted subfolder names (torchvision's rule), set in the metadata when
    it is first loaded, unless ``classes`` fixes them (give a validation folder that lacks a
    class the training folder's list, so that labels agree). Registering the same folder twice
    changes nothing.

    Raises:
        DatasetNotFoundError: ``root`` is not a folder.
        DatasetFormatError: ``name`` is registered already with another folder.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    path = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(path):
        raise DatasetNotFoundError(
            f"dataset {name!r}: the folder {root!r} ({path}) does not exist; give a folder in "
            "the ImageFolder layout <root>/<class>/<image>"
        )
    if name in DatasetCatalog.list():
        previous = getattr(MetadataCatalog.get(name), "image_root", None)
        if previous == path:
            return
        raise DatasetFormatError(
            f"dataset {name!r} is registered already"
            + (f" with the folder {previous!r}" if previous else "")
            + f"; give the folder {path!r} another name"
        )
    fixed = list(classes) if classes is not None else None
    DatasetCatalog.register(name, lambda: _load_folder_dataset(name, path, fixed))
    meta = MetadataCatalog.get(name)
    meta.set(image_root=path, evaluator_type="classification")
    if fixed is not None:
        meta.set(classes=fixed, num_classes=len(fixed))


def classification_classes(names: Sequence[str]) -> list[str]:
    """The class list the datasets ``names`` share (load them first: an ImageFolder's classes
    are known once it is loaded).

    Raises:
        DatasetFormatError: a dataset has no class list, or two lists differ (their labels
            would mean different classes).
    """
    from detectron2.data import MetadataCatalog

    result: Optional[list[str]] = None
    for name in names:
        classes = getattr(MetadataCatalog.get(name), "classes", None)
        if classes is None:
            raise DatasetFormatError(
                f"dataset {name!r} has no classes in its metadata: it is not a classification "
                "dataset, or it has not been loaded yet (DatasetCatalog.get)"
            )
        if result is None:
            result, first = list(classes), name
        elif list(classes) != result:
            only = sorted(set(classes) ^ set(result))
            raise DatasetFormatError(
                f"datasets {first!r} and {name!r} have different classes ({len(result)} and "
                f"{len(classes)}"
                + (f"; in one only: {first_n(only, 10)}" if only else ", in another order")
                + "); register the smaller one with the other's class list "
                "(register_image_folder(..., classes=...))"
            )
    return result or []


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------
def _cifar10_candidates(root: Optional[str] = None) -> dict[str, str]:
    base = os.path.join(root if root is not None else datasets_root(), "cifar10")
    return {fmt: os.path.join(base, folder) for fmt, folder in _CIFAR_FOLDERS.items()}


def _cifar10_folder(root: Optional[str] = None) -> tuple[str, str]:
    """The CIFAR-10 folder and its format ("py" first, else "bin")."""
    candidates = _cifar10_candidates(root)
    for fmt, folder in candidates.items():
        if os.path.isdir(folder):
            return folder, fmt
    raise DatasetNotFoundError(
        "CIFAR-10 is not on disk: neither "
        + " nor ".join(repr(p) for p in candidates.values())
        + f" exists. {_where()}. Unpack cifar-10-python.tar.gz or cifar-10-binary.tar.gz "
        f"into <root>/cifar10/, or set {DATASETS_ENV} to the folder that holds cifar10/."
    )


def _read_cifar_pickle(path: str) -> tuple[np.ndarray, np.ndarray]:
    from ..weights.safe_pickle import load_pickle

    # The batches are Python 2 pickles of a dict; latin1 (torchvision's choice) keeps the
    # array bytes and gives str keys. Keys written as bytes are accepted too.
    batch = load_pickle(path, encoding="latin1")
    if isinstance(batch, dict):
        batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if not isinstance(batch, dict) or "data" not in batch or "labels" not in batch:
        raise DatasetFormatError(f"{path}: not a CIFAR-10 batch (a dict with 'data' and 'labels')")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_IMAGE_BYTES:
        raise DatasetFormatError(
            f"{path}: 'data' is {data.dtype} {data.shape}, not uint8 (N, 3072); the file is "
            "damaged, download it again"
        )
    if labels.shape != (len(data),):
        raise DatasetFormatError(f"{path}: {len(labels)} labels for {len(data)} images")
    return data, labels


def _read_cifar_bin(path: str) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8)
    record = 1 + _CIFAR_IMAGE_BYTES  # one label byte, then the image
    if raw.size == 0 or raw.size % record:
        raise DatasetFormatError(
            f"{path}: {raw.size} bytes is not a whole number of {record}-byte CIFAR-10 records; "
            "the file is truncated or damaged, download it again"
        )
    raw = raw.reshape(-1, record)
    return raw[:, 1:], raw[:, 0].astype(np.int64)


def read_cifar10(folder: str, fmt: str, part: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """All images (uint8, N x 32 x 32 x 3, RGB) and labels of the ``part`` ("train": the five
    data batches in order, or "test") of a CIFAR-10 folder of format ``fmt`` ("py" or "bin").

    Raises:
        DatasetNotFoundError: a batch file is missing.
        DatasetFormatError: a batch is damaged or has a label outside 0-9.
        UnsafeWeightsError: a pickle names a global other than numpy's array builders (a
            tampered file); nothing in it is run.
    """
    check_choice("CIFAR-10 format", fmt, _CIFAR_FILES)
    check_choice("CIFAR-10 part", part, ("train", "test"))
    read = _read_cifar_pickle if fmt == "py" else _read_cifar_bin
    images, labels = [], []
    for file in _CIFAR_FILES[fmt][part]:
        path = os.path.join(folder, file)
        if not os.path.isfile(path):
            raise DatasetNotFoundError(
                f"CIFAR-10: {path!r} is missing (a {fmt!r} folder holds "
                f"{', '.join(_CIFAR_FILES[fmt]['train'] + _CIFAR_FILES[fmt]['test'])}); "
                "unpack the archive again"
            )
        data, batch_labels = read(path)
        bad = batch_labels[(batch_labels < 0) | (batch_labels >= len(CIFAR10_CLASSES))]
        if bad.size:
            raise DatasetFormatError(f"{path}: label {int(bad[0])} is not in 0-9")
        images.append(data)
        labels.append(batch_labels)
    # Each row is the red, green then blue 32x32 plane, row-major.
    array = np.concatenate(images).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(array), np.concatenate(labels)


def load_cifar10(
    split: str, root: Optional[str] = None, *, num_val: int = CIFAR10_NUM_VAL
) -> list[dict]:
    """The records of a CIFAR-10 split: "train" (the training batches less the last
    ``num_val`` images), "val" (those last ``num_val``), or "test". ``image_id`` is the image's
    index in the training batches (train, val) or the test batch. ``root`` defaults to
    :func:`datasets_root`."""
    check_choice("CIFAR-10 split", split, ("train", "val", "test"))
    folder, fmt = _cifar10_folder(root)
    images, labels = read_cifar10(folder, fmt, "test" if split == "test" else "train")
    if split == "test":
        ids = range(len(images))
    else:
        if len(images) <= num_val:
            raise DatasetFormatError(
                f"CIFAR-10 in {folder!r}: {len(images)} training images, not more than the "
                f"{num_val} held out for val; the batches are incomplete"
            )
        cut = len(images) - num_val
        ids = range(cut) if split == "train" else range(cut, len(images))
    return [{"image": images[i], "label": int(labels[i]), "image_id": i} for i in ids]


# --------------------------------------------------------------------------------------------
# Digits
# --------------------------------------------------------------------------------------------
def digits_split_ids(labels: Sequence[int], every: int = DIGITS_VAL_EVERY) -> dict[str, list]:
    """A fixed stratified split: within each class, in data order, every ``every``-th image
    (the 5th, 10th, ...) is "val", the others "train". No random generator is involved, so the
    split is the same with any numpy; about 1/``every`` of each class is held out."""
    labels = np.asarray(labels)
    val = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        val[members[every - 1 :: every]] = True
    return {"train": np.flatnonzero(~val).tolist(), "val": np.flatnonzero(val).tolist()}


def _digit_image(pixels: np.ndarray) -> np.ndarray:
    """One 8x8 digit (values 0-16) as a 32x32 uint8 RGB image: scaled to 0-255, upsampled
    bilinearly by PIL, the gray value repeated in the three channels."""
    gray = np.rint(np.asarray(pixels, dtype=np.float64) * (255.0 / 16.0)).astype(np.uint8)
    big = Image.fromarray(gray, mode="L").resize((DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR)
    return np.repeat(np.asarray(big)[..., None], 3, axis=2)


def load_digits_split(split: str) -> list[dict]:
    """The records of scikit-learn's digits, split by :func:`digits_split_ids` (1442 train,
    355 val); ``image_id`` is the index in ``sklearn.datasets.load_digits()``.

    Raises:
        DatasetNotFoundError: scikit-learn, which bundles the data, is not installed.
    """
    check_choice("digits split", split, ("train", "val"))
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise DatasetNotFoundError(
            "the digits datasets come with scikit-learn, which is not installed: "
            "pip install scikit-learn"
        ) from None
    digits = load_digits()
    ids = digits_split_ids(digits.target)[split]
    return [
        {"image": _digit_image(digits.images[i]), "label": int(digits.target[i]), "image_id": i}
        for i in ids
    ]


# --------------------------------------------------------------------------------------------
# shapes_cls
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ShapesClsConfig:
    """Parameters of one shapes_cls split; any change gives a new cache folder.

    Every object of ``shapes`` (detection images drawn by :func:`.shapes.generate_image`) gives
    one crop labelled by its class: a square of side ``max(w, h)`` times a context factor
    (uniform in ``context``), its centre moved by up to ``jitter`` of the object's size, kept
    inside the image; each image also gives ``background_per_image`` crops that show no more
    than ``max_background_overlap`` of any object's box (clutter, plain background, or a patch
    inside a large object: what a detector must also call background). Crops are resized
    (bilinear) to ``crop_size``. With the default splits: 8202 train and 1640 val crops, about
    35 s to generate on one core, 70 MB of PNG.
    """

    shapes: ShapesConfig
    crop_size: int = 64
    context: tuple[float, float] = (1.3, 2.0)
    jitter: float = 0.15
    background_per_image: int = 1
    max_background_overlap: float = 0.2

    def digest(self) -> str:
        text = json.dumps({"version": _SHAPES_CLS_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


# Seeds other than the detection splits' (0 and 1), so that no crop comes from an image of
# shapes_val, the detector's test set.
SHAPES_CLS_SPLITS: dict[str, ShapesClsConfig] = {
    "train": ShapesClsConfig(ShapesConfig(num_images=1500, seed=100)),
    "val": ShapesClsConfig(ShapesConfig(num_images=300, seed=101)),
}
_SHAPES_CLS_SPLIT_IDS = {"train": 0, "val": 1}


def _square(cx: float, cy: float, side: float, size: int) -> tuple[float, float, float, float]:
    side = min(side, float(size))
    x0 = min(max(cx - side / 2, 0.0), size - side)
    y0 = min(max(cy - side / 2, 0.0), size - side)
    return x0, y0, x0 + side, y0 + side


def _overlap(box: Sequence[float], crop: Sequence[float]) -> float:
    """The fraction of ``box`` inside ``crop``."""
    iw = max(0.0, min(box[2], crop[2]) - max(box[0], crop[0]))
    ih = max(0.0, min(box[3], crop[3]) - max(box[1], crop[1]))
    area = (box[2] - box[0]) * (box[3] - box[1])
    return iw * ih / area if area > 0 else 0.0


def _crops(cfg: ShapesClsConfig, split_id: int, index: int) -> list[tuple[int, Image.Image]]:
    """The labelled crops of one generated detection image."""
    image, objects = generate_image(cfg.shapes, split_id, index)
    size = cfg.shapes.image_size
    # A stream of its own, so that the crops never change the detection image's draws.
    rng = np.random.default_rng([cfg.shapes.seed, split_id, index, 1])
    crops = []
    boxes = []
    for obj in objects:
        x0, y0, x1, y1 = obj["bbox"]
        boxes.append(obj["bbox"])
        extent = max(x1 - x0, y1 - y0)
        side = extent * rng.uniform(*cfg.context)
        cx = (x0 + x1) / 2 + rng.uniform(-cfg.jitter, cfg.jitter) * extent
        cy = (y0 + y1) / 2 + rng.uniform(-cfg.jitter, cfg.jitter) * extent
        crops.append((obj["category"], _square(cx, cy, side, size)))
    background = len(SHAPES_CLS_CLASSES) - 1
    for _ in range(cfg.background_per_image):
        for _attempt in range(30):
            side = math.exp(rng.uniform(math.log(cfg.shapes.min_side), math.log(size / 2)))
            cx, cy = rng.uniform(0, size, size=2)
            box = _square(float(cx), float(cy), side, size)
            if all(_overlap(b, box) <= cfg.max_background_overlap for b in boxes):
                crops.append((background, box))
                break
    out = cfg.crop_size
    return [(label, image.resize((out, out), Image.BILINEAR, box=box)) for label, box in crops]


def shapes_cls_dir(split: str, cfg: Optional[ShapesClsConfig] = None) -> Path:
    """Where ``split`` (made with ``cfg``, default: the split's own) is cached."""
    check_choice("shapes_cls split", split, SHAPES_CLS_SPLITS)
    cfg = cfg or SHAPES_CLS_SPLITS[split]
    return Path(cache_root()) / "datasets" / f"shapes_cls_{cfg.digest()}" / split


def _write_shapes_cls(split: str, out: Path, cfg: ShapesClsConfig) -> None:
    for name in SHAPES_CLS_CLASSES:
        (out / name).mkdir(parents=True, exist_ok=True)
    split_id = _SHAPES_CLS_SPLIT_IDS[split]
    for index in range(cfg.shapes.num_images):
        for k, (label, crop) in enumerate(_crops(cfg, split_id, index)):
            crop.save(out / SHAPES_CLS_CLASSES[label] / f"{index:05d}_{k}.png")
    empty = [name for name in SHAPES_CLS_CLASSES if not any((out / name).iterdir())]
    if empty:
        raise DatasetFormatError(
            f"shapes_cls {split}: {cfg.shapes.num_images} source images gave no crop of "
            f"{', '.join(empty)}; use more images"
        )


def ensure_shapes_cls(split: str, cfg: Optional[ShapesClsConfig] = None) -> Path:
    """Generates ``split`` into the cache unless it is there already; returns its folder.

    The split is written into a temporary folder and renamed into place, so a half-written one
    is never used."""
    final = shapes_cls_dir(split, cfg)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=final.parent))
    try:
        _write_shapes_cls(split, tmp, cfg or SHAPES_CLS_SPLITS[split])
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first; its copy is identical
            if not final.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


# --------------------------------------------------------------------------------------------
# Registration and checks
# --------------------------------------------------------------------------------------------
def _load(name: str) -> list[dict]:
    kind, split = CLASSIFICATION_DATASETS[name]
    if kind == "imagenet":
        check_classification_files(name)
        return _load_folder_dataset(name, _imagenet_dir(split))
    if kind == "cifar10":
        return load_cifar10(split)
    if kind == "digits":
        return load_digits_split(split)
    return _load_folder_dataset(name, str(ensure_shapes_cls(split)), SHAPES_CLS_CLASSES)


def register_classification_datasets() -> None:
    """Registers the built-in classification datasets (once; a second call changes nothing).
    No file is read: each dataset is loaded, or generated, when first asked for."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    constant_classes = {"cifar10": CIFAR10_CLASSES, "digits": DIGITS_CLASSES}
    constant_classes["shapes_cls"] = SHAPES_CLS_CLASSES
    for name, (kind, _split) in CLASSIFICATION_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        DatasetCatalog.register(name, lambda name=name: _load(name))
        meta = MetadataCatalog.get(name)
        meta.set(evaluator_type="classification")
        if kind in constant_classes:
            classes = list(constant_classes[kind])
            meta.set(classes=classes, num_classes=len(classes))
        if kind == "shapes_cls":
            meta.set(generated_on_first_use=True)


def check_classification_files(name: str) -> None:
    """Fails, naming the paths and ``$DETECTRON2_DATASETS``, where a built-in classification
    dataset that lives under it is not on disk (the generated ones always are)."""
    kind, split = CLASSIFICATION_DATASETS.get(name, ("", ""))
    if kind == "imagenet":
        folder = _imagenet_dir(split)
        if not os.path.isdir(folder):
            raise DatasetNotFoundError(
                f"dataset {name!r} is not on disk: missing {folder!r}. {_where()}. Put ImageNet "
                "there in the ImageFolder layout (<root>/imagenet/{train,val}/<wnid>/*.JPEG), or "
                f"set {DATASETS_ENV} to the folder that holds imagenet/ before starting."
            )
    elif kind == "cifar10":
        _cifar10_folder()

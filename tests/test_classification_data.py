"""The classification datasets for pretraining: CIFAR-10 in both formats, a tampered CIFAR
pickle, the digits split, missing datasets, shapes_cls and your own ImageFolder folders."""

from __future__ import annotations

import io
import pickle
import struct
import sys
import types

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from torchvision.datasets import ImageFolder

from resnet_backbones.data import register_datasets
from resnet_backbones.data.classification import (
    CIFAR10_CLASSES,
    CLASSIFICATION_DATASETS,
    SHAPES_CLS_CLASSES,
    ShapesClsConfig,
    check_classification_files,
    classification_classes,
    digits_split_ids,
    ensure_shapes_cls,
    load_cifar10,
    load_digits_split,
    read_cifar10,
    register_image_folder,
)
from resnet_backbones.data.coco_format import DatasetFormatError, DatasetNotFoundError
from resnet_backbones.data.shapes import ShapesConfig
from resnet_backbones.engine import check_datasets
from resnet_backbones.weights.errors import UnsafeWeightsError
from tests.helpers import OpenForWriting

PER_BATCH = 3  # images per CIFAR batch file the tests write


def cifar_batches(seed=0):
    """Random CIFAR-10 batches: {file stem: (data uint8 (n, 3072), labels)}."""
    rng = np.random.default_rng(seed)
    stems = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    return {
        stem: (
            rng.integers(0, 256, size=(PER_BATCH, 3072), dtype=np.uint8),
            [int(v) for v in rng.integers(0, 10, size=PER_BATCH)],
        )
        for stem in stems
    }


class Python2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as the CIFAR batches' cPickle did: their
    keys, file names and the arrays' raw data. Read with latin1 they come back as ``str``."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def cifar_pickle(batch, style):
    """``batch`` (a dict with str keys) as a pickle of ``style``: "py2" (as distributed), "py3"
    (str keys) or "bytes" (bytes keys, as ``pickle.load(encoding="bytes")`` shows them)."""
    if style == "py3":
        return pickle.dumps(batch, protocol=2)
    batch = {k.encode(): v for k, v in batch.items()}
    if style == "bytes":
        return pickle.dumps(batch, protocol=2)
    buffer = io.BytesIO()
    Python2Pickler(buffer, protocol=2).dump(batch)
    return buffer.getvalue()


def write_cifar_py(root, batches, style="py2"):
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for stem, (data, labels) in batches.items():
        batch = {"batch_label": stem.encode(), "labels": labels, "data": data}
        (folder / stem).write_bytes(cifar_pickle(batch, style))
    return folder


def write_cifar_bin(root, batches):
    folder = root / "cifar10" / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for stem, (data, labels) in batches.items():
        records = np.concatenate([np.asarray(labels, np.uint8)[:, None], data], axis=1)
        (folder / f"{stem}.bin").write_bytes(records.tobytes())
    return folder


@pytest.mark.parametrize("style", ["py2", "py3", "bytes"])
def test_cifar10_both_formats_read_the_same(tmp_path, style):
    batches = cifar_batches()
    py = write_cifar_py(tmp_path / "a", batches, style)
    binary = write_cifar_bin(tmp_path / "b", batches)
    for part, stems in (
        ("train", [f"data_batch_{k}" for k in range(1, 6)]),
        ("test", ["test_batch"]),
    ):
        images_py, labels_py = read_cifar10(str(py), "py", part)
        images_bin, labels_bin = read_cifar10(str(binary), "bin", part)
        np.testing.assert_array_equal(images_py, images_bin)
        np.testing.assert_array_equal(labels_py, labels_bin)
        assert (
            images_py.shape == (PER_BATCH * len(stems), 32, 32, 3) and images_py.dtype == np.uint8
        )
        # Pixel (y, x) of channel c is byte c*1024 + y*32 + x of the row (red, green, blue planes).
        first = batches[stems[0]][0][0]
        assert images_py[0, 5, 7].tolist() == [first[c * 1024 + 5 * 32 + 7] for c in range(3)]
        assert labels_py.tolist() == sum((batches[s][1] for s in stems), [])


def test_cifar10_splits_hold_out_the_last_training_images(tmp_path):
    batches = cifar_batches()
    write_cifar_bin(tmp_path, batches)
    all_labels = sum((batches[f"data_batch_{k}"][1] for k in range(1, 6)), [])
    train = load_cifar10("train", str(tmp_path), num_val=4)
    val = load_cifar10("val", str(tmp_path), num_val=4)
    test = load_cifar10("test", str(tmp_path), num_val=4)
    assert [r["image_id"] for r in train] == list(range(11))
    assert [r["image_id"] for r in val] == list(range(11, 15))
    assert [r["label"] for r in train + val] == all_labels
    assert [r["label"] for r in test] == batches["test_batch"][1]
    last = batches["data_batch_5"][0][-1].reshape(3, 32, 32).transpose(1, 2, 0)
    np.testing.assert_array_equal(val[-1]["image"], last)
    with pytest.raises(DatasetFormatError, match="15 training images"):
        load_cifar10("train", str(tmp_path), num_val=15)


def test_tampered_cifar_pickle_is_refused_without_running(tmp_path):
    batches = cifar_batches()
    folder = write_cifar_py(tmp_path, batches)
    marker = tmp_path / "pwned"
    evil = {"data": batches["data_batch_1"][0], "labels": OpenForWriting(str(marker))}
    (folder / "data_batch_1").write_bytes(pickle.dumps(evil, protocol=2))
    with pytest.raises(UnsafeWeightsError, match=r"data_batch_1: refused to load io\.open"):
        read_cifar10(str(folder), "py")
    assert not marker.exists()


def test_damaged_cifar_files_are_named(tmp_path):
    batches = cifar_batches()
    folder = write_cifar_bin(tmp_path, batches)
    (folder / "data_batch_3.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DatasetFormatError, match=r"data_batch_3\.bin: 100 bytes"):
        read_cifar10(str(folder), "bin")
    (folder / "data_batch_3.bin").unlink()
    with pytest.raises(DatasetNotFoundError, match=r"data_batch_3\.bin' is missing"):
        read_cifar10(str(folder), "bin")


def test_missing_imagenet_and_cifar_name_the_path_and_the_variable(tmp_path, monkeypatch):
    register_datasets()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    for name, path in (
        ("imagenet_train", tmp_path / "imagenet" / "train"),
        ("imagenet_val", tmp_path / "imagenet" / "val"),
        ("cifar10_val", tmp_path / "cifar10" / "cifar-10-batches-bin"),
    ):
        with pytest.raises(DatasetNotFoundError) as error:
            check_datasets([name])
        assert str(path) in str(error.value) and "DETECTRON2_DATASETS" in str(error.value)
        with pytest.raises(DatasetNotFoundError, match=str(path)):
            DatasetCatalog.get(name)
    monkeypatch.delenv("DETECTRON2_DATASETS")
    with pytest.raises(DatasetNotFoundError, match="DETECTRON2_DATASETS is not set.*./datasets"):
        check_classification_files("imagenet_val")


def test_imagenet_is_read_as_an_image_folder(tmp_path, monkeypatch):
    register_datasets()
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path))
    for wnid in ("n01440764", "n01443537"):
        folder = tmp_path / "imagenet" / "val" / wnid
        folder.mkdir(parents=True)
        for k in range(2):
            (folder / f"ILSVRC2012_val_{wnid}_{k}.JPEG").write_bytes(b"")
    check_datasets(["imagenet_val"])
    records = DatasetCatalog.get("imagenet_val")
    reference = ImageFolder(str(tmp_path / "imagenet" / "val"), loader=lambda path: path)
    assert [(r["file_name"], r["label"]) for r in records] == reference.samples
    assert MetadataCatalog.get("imagenet_val").classes == reference.classes
    assert MetadataCatalog.get("imagenet_val").num_classes == 2


def test_registration_reads_no_file_and_is_idempotent(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_BACKBONES_CACHE", str(tmp_path / "cache"))
    register_datasets()
    register_datasets()
    assert set(CLASSIFICATION_DATASETS) <= set(DatasetCatalog.list())
    assert not (tmp_path / "cache").exists()
    cifar = MetadataCatalog.get("cifar10_test")
    assert cifar.classes == list(CIFAR10_CLASSES) and cifar.num_classes == 10
    assert cifar.evaluator_type == "classification"


def test_digits_split_is_fixed_and_stratified():
    labels = [0, 1, 0, 0, 1, 0, 0, 1, 1, 1, 0, 0, 1, 1]
    split = digits_split_ids(labels, every=3)
    # class 0 is at 0, 2, 3, 5, 6, 10, 11 (3rd: 3, 6th: 10); class 1 at 1, 4, 7, 8, 9, 12, 13
    # (3rd: 7, 6th: 12)
    assert split["val"] == [3, 7, 10, 12]
    assert split["train"] == [0, 1, 2, 4, 5, 6, 8, 9, 11, 13]


def fake_sklearn(monkeypatch, images, target):
    """An ``sklearn.datasets`` whose load_digits returns ``images`` and ``target``."""
    datasets = types.ModuleType("sklearn.datasets")
    datasets.load_digits = lambda: types.SimpleNamespace(images=images, target=target)
    monkeypatch.setitem(sys.modules, "sklearn", types.ModuleType("sklearn"))
    monkeypatch.setitem(sys.modules, "sklearn.datasets", datasets)


def test_digits_images_are_32x32_rgb_uint8(monkeypatch):
    images = np.zeros((10, 8, 8))
    images[:, :, :4] = 16.0  # left half white
    images[:, 0, 0] = 8.0
    fake_sklearn(monkeypatch, images, np.arange(10) % 2)
    train, val = load_digits_split("train"), load_digits_split("val")
    assert [r["image_id"] for r in val] == [8, 9] and len(train) == 8
    image = train[0]["image"]
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 2]).all()
    assert image[16, 2, 0] == 255 and image[16, 29, 0] == 0  # the halves, far from the edge
    assert image[0, 0, 0] == 128  # 8/16 of full scale, at the corner bilinear keeps it


def test_digits_without_scikit_learn_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(DatasetNotFoundError, match="pip install scikit-learn"):
        load_digits_split("train")


def test_real_digits_split_counts():
    pytest.importorskip("sklearn")
    register_datasets()
    train, val = DatasetCatalog.get("digits_train"), DatasetCatalog.get("digits_val")
    assert (len(train), len(val)) == (1442, 355)
    ids = {r["image_id"] for r in train} | {r["image_id"] for r in val}
    assert ids == set(range(1797))
    per_class = np.bincount([r["label"] for r in val], minlength=10).tolist()
    assert per_class == [35, 36, 35, 36, 36, 36, 36, 35, 34, 36]


TINY_SHAPES_CLS = ShapesClsConfig(ShapesConfig(num_images=4, seed=100), crop_size=24)


def test_shapes_cls_is_an_image_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNET_BACKBONES_CACHE", str(tmp_path))
    folder = ensure_shapes_cls("val", TINY_SHAPES_CLS)
    assert folder.parent.name == f"shapes_cls_{TINY_SHAPES_CLS.digest()}"
    reference = ImageFolder(str(folder))
    assert reference.classes == sorted(SHAPES_CLS_CLASSES)
    image, _ = reference[0]
    assert image.size == (24, 24) and image.mode == "RGB"
    counts = dict(zip(reference.classes, np.bincount(reference.targets).tolist()))
    # One background crop per source image and one crop per object: pinned, so that a change
    # of the generator or of the cropping shows.
    assert counts == {"background": 4, "circle": 6, "rectangle": 4, "triangle": 8}
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
    mtime = folder.stat().st_mtime_ns
    assert ensure_shapes_cls("val", TINY_SHAPES_CLS) == folder
    assert folder.stat().st_mtime_ns == mtime  # reused, not written again


def test_own_image_folder(tmp_path):
    root = tmp_path / "own"
    for cls in ("cat", "dog"):
        (root / "train" / cls).mkdir(parents=True)
        (root / "train" / cls / "a.png").write_bytes(b"")
    (root / "val" / "dog").mkdir(parents=True)
    (root / "val" / "dog" / "b.jpg").write_bytes(b"")
    register_image_folder("own_cls_train", str(root / "train"))
    register_image_folder("own_cls_train", str(root / "train"))  # the same again: no change
    register_image_folder("own_cls_val", str(root / "val"))
    assert [r["label"] for r in DatasetCatalog.get("own_cls_train")] == [0, 1]
    assert [r["label"] for r in DatasetCatalog.get("own_cls_val")] == [0]
    with pytest.raises(DatasetFormatError, match="different classes.*in one only: cat"):
        classification_classes(["own_cls_train", "own_cls_val"])
    register_image_folder("own_cls_val_fixed", str(root / "val"), classes=["cat", "dog"])
    assert [r["label"] for r in DatasetCatalog.get("own_cls_val_fixed")] == [1]
    assert classification_classes(["own_cls_train", "own_cls_val_fixed"]) == ["cat", "dog"]
    with pytest.raises(DatasetFormatError, match="registered already with the folder"):
        register_image_folder("own_cls_train", str(root / "val"))
    with pytest.raises(DatasetNotFoundError, match="nowhere"):
        register_image_folder("own_cls_missing", str(tmp_path / "nowhere"))
    (root / "empty").mkdir()
    register_image_folder("own_cls_empty", str(root / "empty"))
    with pytest.raises(DatasetFormatError, match="no class subfolders"):
        DatasetCatalog.get("own_cls_empty")

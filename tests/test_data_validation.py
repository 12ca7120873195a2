"""Datasets checked before training (resnet_backbones.data.validate), images decoded so that
pixels and boxes agree (data.images, data.mapper): every bad input of the README's table, its
error or its counted skip."""

import json
import logging
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from resnet_backbones import train_net
from resnet_backbones.data import DatasetFormatError
from resnet_backbones.data.coco_format import register_coco_format
from resnet_backbones.data.images import EXIF_TRANSPOSE, ImageError, exif_box, read_image
from resnet_backbones.data.mapper import ImageMappingError, build_mapper
from resnet_backbones.data.validate import (
    DatasetValidationError,
    ValidationSettings,
    validate_dataset,
    validated_dataset_dicts,
)

from .helpers import QUICKSTART, TINY_OWN_DATA, default_cfg, write_coco_folder

SETTINGS = ValidationSettings()


def coco_dataset(tmp_path, edit=None, num_images=3, size=64):
    """write_coco_folder's data (image k has id k+1, file k.png, annotations 1, 2 and 3, 4),
    changed by ``edit(content, folder)``, registered under a name of its own; returns
    (name, json file, image folder)."""
    folder = write_coco_folder(tmp_path / "d", num_images=num_images, size=size)
    json_file = folder / "annotations.json"
    content = json.loads(json_file.read_text())
    if edit:
        edit(content, folder)
    json_file.write_text(json.dumps(content))
    name = "v_" + re.sub(r"\W", "_", tmp_path.name)
    register_coco_format([[name, str(json_file), str(folder / "images")]])
    return name, str(json_file), str(folder / "images")


def problems_of(name, settings=SETTINGS, is_train=True):
    with pytest.raises(DatasetValidationError) as e:
        validate_dataset(name, settings, is_train)
    return str(e.value), e.value.problems


def save_with_exif(image, path, orientation):
    exif = Image.Exif()
    exif[274] = orientation
    image.save(path, exif=exif.tobytes(), quality=95)


def mapped(cfg, record, is_train=False):
    """The mapper's output for ``record``, images neither resized nor flipped."""
    cfg = cfg.clone()
    cfg.INPUT.MIN_SIZE_TEST = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)
    cfg.INPUT.RANDOM_FLIP = "none"
    return build_mapper(cfg, is_train)(record)


def bright_box(chw):
    """The XYXY extent of the bright pixels of a CHW image tensor."""
    ys, xs = np.nonzero(chw.float().mean(0).numpy() > 128)
    return [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


# --------------------------------------------------------------------------------------------
# Annotation JSON: one problem each, with the file, ids, key, value and fix in its message
# --------------------------------------------------------------------------------------------
def _ann(content, annotation_id):
    return next(a for a in content["annotations"] if a["id"] == annotation_id)


JSON_CASES = {
    "negative_width": (
        lambda c, f: _ann(c, 2).update(bbox=[30, 5, -10, 8]),
        "{json}: annotation id 2 of image id 2 (1.png): bbox = [30, 5, -10, 8] has a negative "
        "width (-10); boxes are [x, y, width, height] with a positive width and height "
        "(detectron2 would mirror this box to the other side of its corner). Correct the box",
    ),
    "box_outside": (
        lambda c, f: _ann(c, 4).update(bbox=[70, 10, 5, 5]),
        "{json}: annotation id 4 of image id 3 (2.png): bbox = [70, 10, 5, 5] lies entirely "
        "outside its image of width 64 and height 64",
    ),
    "bbox_not_4_numbers": (
        lambda c, f: _ann(c, 1).update(bbox=[1, 2, 3]),
        "{json}: annotation id 1 of image id 1 (0.png): bbox = [1, 2, 3] is not 4 finite "
        "numbers [x, y, width, height]",
    ),
    "bbox_nan": (
        lambda c, f: _ann(c, 1).update(bbox=[1, 2, float("nan"), 3]),
        "bbox = [1, 2, nan, 3] is not 4 finite numbers",
    ),
    "unknown_category": (
        lambda c, f: _ann(c, 3).update(category_id=7),
        "{json}: annotation id 3 of image id 2 (1.png): category_id = 7 is not the id of any "
        "entry of 'categories' (ids: 1, 2); correct the id or add the category",
    ),
    "annotation_without_bbox": (
        lambda c, f: _ann(c, 3).pop("bbox"),
        "{json}: annotation id 3 of image id 2 (1.png) has no 'bbox'; an annotation needs "
        "'id', 'image_id', 'category_id' and 'bbox'. Add it",
    ),
    "annotation_without_category": (
        lambda c, f: _ann(c, 3).pop("category_id"),
        "{json}: annotation id 3 of image id 2 (1.png) has no 'category_id'",
    ),
    "image_without_width": (
        lambda c, f: c["images"][1].pop("width"),
        "{json}: image id 2 (1.png): width = None is not a positive integer; set it to the image's "
        "size in pixels",
    ),
    "size_disagrees_with_file": (
        lambda c, f: c["images"][2].update(width=80),
        "image id 3 ({images}/2.png): the dataset says width 80 and height 64, but the file is "
        "64 x 64 pixels; correct the width and height in the dataset",
    ),
}


@pytest.mark.parametrize("case", JSON_CASES)
def test_a_bad_annotation_is_an_error_naming_it_or_a_counted_skip(tmp_path, case, caplog):
    edit, expected = JSON_CASES[case]
    name, json_file, images = coco_dataset(tmp_path, edit)
    expected = expected.format(images=images, json=json_file)
    message, problems = problems_of(name)
    assert len(problems) == 1, message
    assert expected in message
    assert message.startswith(f"dataset {name!r} failed its checks before training, 1 problem")
    assert "or set DATASETS.BAD_IMAGES 'skip'" in message
    # The same problem in a test set: an error too, with no skip offered.
    assert "BAD_IMAGES" not in problems_of(name, is_train=False)[0]

    # "skip": the image is left out of training, counted at the start.
    with caplog.at_level(logging.INFO, logger="resnet_backbones.data.validate"):
        records, report = validate_dataset(name, ValidationSettings(bad_images="skip"), True)
    assert [r["image_id"] for r in records] == [i for i in (1, 2, 3) if i != problems[0].image_id]
    assert report.skipped_text() == (
        f"1 image skipped by DATASETS.BAD_IMAGES 'skip' (1 {problems[0].reason})"
    )
    assert report.skipped_text() in caplog.text and expected in caplog.text


def _duplicate_image_id(content, folder):
    content["images"][2]["id"] = 2
    _ann(content, 4)["image_id"] = 2


DATASET_CASES = {
    "duplicate_image_id": (
        _duplicate_image_id,
        "image id 2 is given to 2 images (images[1] '1.png', images[2] '2.png'); detectron2 "
        "would keep one of them and attach the others' annotations to it. Give every image its "
        "own id",
    ),
    "duplicate_annotation_id": (
        lambda c, f: _ann(c, 4).update(id=3),
        "annotation id 3 is given to 2 annotations (annotations[2], annotations[3]); give every "
        "annotation its own id",
    ),
    "duplicate_file_name": (
        lambda c, f: c["images"][2].update(file_name="1.png"),
        "file_name '1.png' is used by 2 images (image id 2, image id 3)",
    ),
    "annotation_of_unknown_image": (
        lambda c, f: _ann(c, 4).update(image_id=99),
        "annotation id 4: image_id = 99 is the id of no image in 'images'",
    ),
    "image_without_file_name": (
        lambda c, f: c["images"][0].pop("file_name"),
        "images[0] = {'id': 1, 'width': 64, 'height': 64} needs an 'id' and a 'file_name'",
    ),
    "annotation_without_id": (
        lambda c, f: _ann(c, 2).pop("id"),
        "annotations[1] = {'image_id': 2,",
    ),
    "duplicate_category_id": (
        lambda c, f: c["categories"][1].update(id=1),
        "category id 1 is given to 2 categories (categories[0], categories[1])",
    ),
}


@pytest.mark.parametrize("case", DATASET_CASES)
def test_a_broken_dataset_is_an_error_even_with_skip(tmp_path, case):
    edit, expected = DATASET_CASES[case]
    name, json_file, _ = coco_dataset(tmp_path, edit)
    message, problems = problems_of(name, ValidationSettings(bad_images="skip"))
    assert f"{json_file}: {expected}" in message
    assert "BAD_IMAGES" not in message  # no image to skip for it
    assert all(p.image_id is None for p in problems)


def test_invalid_json_names_path_line_and_column(tmp_path):
    name, json_file, _ = coco_dataset(tmp_path)
    with open(json_file, "w") as f:
        f.write('{"images": [\n  {"id": 1,}\n]}')
    with pytest.raises(DatasetFormatError) as e:
        validate_dataset(name, SETTINGS, True)
    assert str(e.value).startswith(
        f"dataset {name!r}: {json_file} is not valid JSON (Expecting property name enclosed in "
        "double quotes: line 2 column 12 (char 24))"
    )


def test_counted_not_errors_images_without_annotations_and_boxes_past_the_border(tmp_path, caplog):
    def edit(content, folder):
        content["annotations"] = [a for a in content["annotations"] if a["image_id"] != 3]
        _ann(content, 1).update(bbox=[50, 50, 20, 20])  # 6 px past the right and bottom
        # Zero height: reported in COCO 2017's train set; detectron2's mapper drops such boxes.
        _ann(content, 2).update(bbox=[3, 4, 5, 0])

    name, _, _ = coco_dataset(tmp_path, edit)
    cfg = default_cfg(opts=["DATASETS.TRAIN", f"('{name}',)"])
    with caplog.at_level(logging.INFO, logger="resnet_backbones.data.validate"):
        train = validated_dataset_dicts(cfg, [name], is_train=True)
        test = validated_dataset_dicts(cfg, [name], is_train=False)
    assert [r["image_id"] for r in train] == [1, 2]  # detectron2's filter, now announced
    assert [r["image_id"] for r in test] == [1, 2, 3]
    assert (
        f"Checked dataset {name!r} (headers: 3 images, 3 annotations) in" in caplog.text
        and "nothing skipped; 1 image without annotations (training drops them where "
        "DATALOADER.FILTER_EMPTY_ANNOTATIONS is True, detectron2's default); 1 box extending "
        "more than 1 px past their image (clipped to it); 1 box of zero width or height "
        "(dropped by training, as detectron2 does)"
        in caplog.text
    )


def test_dicts_of_a_dataset_without_json_are_checked_too(tmp_path):
    from detectron2.data import DatasetCatalog
    from detectron2.structures import BoxMode

    folder = write_coco_folder(tmp_path / "d", num_images=1)
    record = {
        "file_name": str(folder / "images/0.png"), "image_id": 5, "width": 64, "height": 64,
        "annotations": [{"bbox": [40, 10, 20, 30], "bbox_mode": BoxMode.XYXY_ABS,
                         "category_id": 0}],
    }  # fmt: skip
    DatasetCatalog.register("v_dicts_mirrored", lambda: [record])
    message, _ = problems_of("v_dicts_mirrored")
    assert (
        f"image id 5 ({folder}/images/0.png), annotation 0: bbox = [40, 10, 20, 30] has a "
        "negative width (-20); boxes are [x0, y0, x1, y1]"
    ) in message


def test_settings_are_checked_and_listed():
    from resnet_backbones.config import ConfigError

    with pytest.raises(ConfigError, match=re.escape(
        "DATASETS.VALIDATE = 'fast' is not valid; valid values: 'headers', 'full', 'off'"
    )):  # fmt: skip
        ValidationSettings.from_config(default_cfg(opts=["DATASETS.VALIDATE", "fast"]))
    with pytest.raises(ConfigError, match="DATASETS.BAD_IMAGES = 'drop' is not valid; valid"):
        ValidationSettings(bad_images="drop")
    with pytest.raises(ConfigError, match="DATASETS.EXIF_BOXES = 'x' is not valid; valid values:"):
        ValidationSettings(exif_boxes="x")


# --------------------------------------------------------------------------------------------
# Image files
# --------------------------------------------------------------------------------------------
def _truncate(path, keep=0.5):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _jpeg(path):
    Image.open(path).convert("RGB").save(path.with_suffix(".jpg"), quality=90)
    path.unlink()
    return path.with_suffix(".jpg")


def _rename(content, index, file_name):
    content["images"][index]["file_name"] = file_name


IMAGE_CASES = {
    "missing": (
        lambda c, f: (f / "images/1.png").unlink(),
        "image id 2 ({images}/1.png) does not exist; put the file there, or correct its "
        "file_name in the dataset",
        "missing file",
    ),
    "empty": (
        lambda c, f: (f / "images/1.png").write_bytes(b""),
        "image id 2 ({images}/1.png) is empty (0 bytes); replace the file, or remove the image "
        "from the dataset",
        "empty file",
    ),
    "not_an_image": (
        lambda c, f: (f / "images/1.png").write_text("<html>404 Not Found</html>"),
        "image id 2 ({images}/1.png) is not an image PIL can read (its first bytes: "
        "b'<html>404 Not Fo')",
        "not an image",
    ),
    "truncated_png": (
        lambda c, f: _truncate(f / "images/1.png"),
        "image id 2 ({images}/1.png) is truncated: this PNG file does not end with its end "
        "marker b'IEND'",
        "truncated file",
    ),
    "truncated_jpeg": (
        lambda c, f: (_truncate(_jpeg(f / "images/1.png")), _rename(c, 1, "1.jpg")),
        "image id 2 ({images}/1.jpg) is truncated: this JPEG file does not end with its end "
        "marker b'\\xff\\xd9'",
        "truncated file",
    ),
    "float_pixels": (
        lambda c, f: (
            Image.fromarray(np.zeros((64, 64), np.float32)).save(f / "images/1.tif")
            or _rename(c, 1, "1.tif")
        ),
        "image id 2 ({images}/1.tif) has pixel format 'F', which has no 8-bit RGB meaning",
        "unsupported pixel format",
    ),
}


@pytest.mark.parametrize("case", IMAGE_CASES)
def test_a_bad_image_file_is_an_error_naming_it_or_a_counted_skip(tmp_path, case):
    edit, expected, reason = IMAGE_CASES[case]
    name, _, images = coco_dataset(tmp_path, edit)
    message, problems = problems_of(name)
    assert [p.image_id for p in problems] == [2]
    assert expected.format(images=images) in message
    records, report = validate_dataset(name, ValidationSettings(bad_images="skip"), True)
    assert [r["image_id"] for r in records] == [1, 3]
    assert report.skipped_text() == f"1 image skipped by DATASETS.BAD_IMAGES 'skip' (1 {reason})"


def test_full_decode_finds_what_headers_cannot(tmp_path):
    """A PNG whose pixel data is corrupt but whose header and end are intact."""

    def corrupt(content, folder):
        path = folder / "images/1.png"
        data = bytearray(path.read_bytes())
        start = data.index(b"IDAT") + 8
        data[start : start + 200] = bytes(200)
        path.write_bytes(bytes(data))

    name, _, images = coco_dataset(tmp_path, corrupt)
    records, _ = validate_dataset(name, SETTINGS, True)
    assert len(records) == 3
    message, problems = problems_of(name, ValidationSettings(mode="full"))
    assert f"image id 2 ({images}/1.png) cannot be decoded (" in message
    # The mapper names it too, where the run did not decode every image before training.
    cfg = default_cfg()
    with pytest.raises(ImageError, match=re.escape(f"image id 2 ({images}/1.png) cannot be")):
        mapped(cfg, records[1], is_train=True)


# --------------------------------------------------------------------------------------------
# Pixels: 16-bit, CMYK, grayscale, RGBA, EXIF
# --------------------------------------------------------------------------------------------
def test_pixel_formats_convert_to_the_right_8_bit_rgb(tmp_path):
    import cv2

    ramp = np.linspace(0, 65535, 64 * 32).reshape(32, 64).astype(np.uint16)
    expected = np.rint(ramp / 257.0).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "gray16.png"), ramp)
    cv2.imwrite(str(tmp_path / "rgb16.png"), np.stack([ramp // 4, ramp // 2, ramp], -1))  # BGR
    bgr, info = read_image(str(tmp_path / "gray16.png"), "BGR")
    assert info.kind == "16-bit" and bgr.dtype == np.uint8
    assert np.array_equal(bgr[..., 0], expected) and (bgr == 255).mean() < 0.01  # not white
    rgb, _ = read_image(str(tmp_path / "rgb16.png"), "RGB")  # PIL keeps the high bytes
    assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1
    assert np.abs(rgb[..., 2].astype(int) - np.rint(ramp // 4 / 257.0)).max() <= 1

    Image.new("CMYK", (8, 8), (255, 0, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    rgb, info = read_image(str(tmp_path / "cmyk.jpg"), "RGB")
    assert info.kind == "CMYK" and np.abs(rgb[4, 4].astype(int) - [0, 255, 255]).max() <= 3

    Image.fromarray(expected).save(tmp_path / "gray.png")
    bgr, info = read_image(str(tmp_path / "gray.png"), "BGR")
    assert info.kind == "L" and bgr.shape == (32, 64, 3)
    assert all(np.array_equal(bgr[..., k], expected) for k in range(3))

    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :4, 3] = 255  # left half opaque
    rgba[:, 4:, 3] = 128  # right half half-transparent: over black
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    rgb, info = read_image(str(tmp_path / "rgba.png"), "RGB")
    assert info.kind == "RGBA"
    assert rgb[0, 0].tolist() == [200, 100, 50] and rgb[0, 7].tolist() == [100, 50, 25]


@pytest.mark.parametrize("orientation", sorted(EXIF_TRANSPOSE))
def test_exif_box_moves_with_the_pixels(orientation):
    stored = Image.new("L", (48, 32))
    ImageDraw.Draw(stored).rectangle([5, 7, 19, 12], fill=255)  # pixels 5..19 x 7..12
    upright = np.asarray(stored.transpose(EXIF_TRANSPOSE[orientation]))
    ys, xs = np.nonzero(upright)
    box = exif_box([5, 7, 20, 13], orientation, (48, 32))
    assert box == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]


def _exif_dataset(tmp_path, orientation, size, json_size, **annotation):
    """One JPEG of ``size`` (as stored) with a bright box at [4, 6, 16, 8] (XYWH, stored pixels)
    and an EXIF orientation; the JSON says ``json_size``; ``annotation``: more keys of its
    annotation."""

    def edit(content, folder):
        image = Image.new("RGB", size)
        ImageDraw.Draw(image).rectangle([4, 6, 19, 13], fill=(255, 255, 255))
        save_with_exif(image, folder / "images/e.jpg", orientation)
        content["images"] = [
            {"id": 1, "file_name": "e.jpg", "width": json_size[0], "height": json_size[1]}
        ]
        content["annotations"] = [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 6, 16, 8], "iscrowd": 0,
             **annotation}
        ]  # fmt: skip

    return coco_dataset(tmp_path, edit)


def test_exif_rotation_non_square_moves_boxes_with_the_image(tmp_path, caplog):
    """Boxes drawn on the stored pixels (the JSON says the stored size) are rotated with them;
    the mapper's image and boxes agree."""
    name, json_file, _ = _exif_dataset(tmp_path, 6, (48, 32), (48, 32))
    with caplog.at_level(logging.INFO, logger="resnet_backbones.data.validate"):
        records, report = validate_dataset(name, SETTINGS, True)
    assert "1 image with an EXIF orientation, their boxes rotated with them" in caplog.text
    assert (records[0]["width"], records[0]["height"]) == (32, 48)
    out = mapped(default_cfg(), records[0], is_train=True)
    assert tuple(out["image"].shape[1:]) == (48, 32)
    box = out["instances"].gt_boxes.tensor[0].tolist()
    assert box == pytest.approx(bright_box(out["image"]), abs=1)
    assert box == [18, 4, 26, 20]  # 32 - 14 .. 32 - 6, 4 .. 20

    # A test set cannot: the evaluator reads the JSON's boxes as they are.
    message, _ = problems_of(name, is_train=False)
    assert (
        "carries EXIF orientation 6 (rotated 90°) and its boxes were drawn on the stored "
        in message
    )
    assert f"the upright image against the boxes of {json_file} as they are." in message


def test_exif_rotation_moves_polygons_and_refuses_keypoints(tmp_path):
    polygon = [4, 6, 20, 6, 20, 14, 4, 14]
    name, _, _ = _exif_dataset(tmp_path / "p", 6, (48, 32), (48, 32), segmentation=[polygon])
    records, _ = validate_dataset(name, SETTINGS, True)
    (rotated,) = records[0]["annotations"][0]["segmentation"]
    assert rotated == [26, 4, 26, 20, 18, 20, 18, 4]  # the corners of the rotated box
    name, _, images = _exif_dataset(tmp_path / "k", 6, (48, 32), (48, 32), keypoints=[5, 7, 2])
    message, _ = problems_of(name)
    assert (
        f"image id 1 ({images}/e.jpg) carries EXIF orientation 6 (rotated 90°) and its "
        "annotations include keypoints, which are not rotated with the image"
    ) in message


def test_exif_rotation_non_square_drawn_upright_keeps_its_boxes(tmp_path):
    """The JSON says the upright size: the boxes were drawn on the image as shown."""

    def edit(content, folder):
        image = Image.new("RGB", (48, 32))
        # Stored so that, turned upright (orientation 8: 90° the other way), the box shows at
        # [4, 6, 20, 14] of the 32 x 48 image.
        upright = Image.new("RGB", (32, 48))
        ImageDraw.Draw(upright).rectangle([4, 6, 19, 13], fill=(255, 255, 255))
        image = upright.transpose(Image.Transpose.ROTATE_270)
        save_with_exif(image, folder / "images/e.jpg", 8)
        content["images"] = [{"id": 1, "file_name": "e.jpg", "width": 32, "height": 48}]
        content["annotations"] = [
            {"id": 1, "image_id": 1, "category_id": 1, "bbox": [4, 6, 16, 8], "iscrowd": 0}
        ]

    name, _, _ = coco_dataset(tmp_path, edit)
    records, report = validate_dataset(name, SETTINGS, True)
    assert report.exif_upright_boxes == 1 and report.exif_rotated_boxes == 0
    out = mapped(default_cfg(), records[0], is_train=True)
    box = out["instances"].gt_boxes.tensor[0].tolist()
    assert box == [4, 6, 20, 14] and box == pytest.approx(bright_box(out["image"]), abs=1)


def test_exif_rotation_square_is_refused_unless_the_frame_is_set(tmp_path):
    name, _, images = _exif_dataset(tmp_path, 6, (40, 40), (40, 40))
    message, _ = problems_of(name)
    assert (
        f"image id 1 ({images}/e.jpg): the file is 40 x 40 pixels as stored and carries EXIF "
        "orientation 6 (rotated 90°), which viewers and the data loader apply, and keeps its "
        "size when turned upright, so the width and height cannot tell whether its boxes were "
        "drawn on the stored pixels or on the upright image. Set DATASETS.EXIF_BOXES 'stored'"
    ) in message
    records, _ = validate_dataset(name, ValidationSettings(exif_boxes="stored"), True)
    out = mapped(default_cfg(), records[0], is_train=True)
    box = out["instances"].gt_boxes.tensor[0].tolist()
    assert box == [26, 4, 34, 20] and box == pytest.approx(bright_box(out["image"]), abs=1)
    records, _ = validate_dataset(name, ValidationSettings(exif_boxes="displayed"), True)
    assert records[0]["annotations"][0]["bbox"] == [4, 6, 16, 8]


def test_exif_size_mismatch_mentions_exif(tmp_path):
    """The JSON gives the stored size of a rotated image, but EXIF_BOXES says the boxes were
    drawn upright; and with validation off, the mapper says why the sizes differ."""
    name, _, images = _exif_dataset(tmp_path, 6, (48, 32), (48, 32))
    message, _ = problems_of(name, ValidationSettings(exif_boxes="displayed"))
    assert (
        f"image id 1 ({images}/e.jpg): the dataset says width 48 and height 32, the stored "
        "size, but DATASETS.EXIF_BOXES 'displayed' says the boxes were drawn on the upright "
        "image, and the file is 48 x 32 pixels as stored and carries EXIF orientation 6 "
        "(rotated 90°), which viewers and the data loader apply (32 x 48 upright)"
    ) in message
    cfg = default_cfg(opts=["DATASETS.VALIDATE", "off"])
    record = validated_dataset_dicts(cfg, [name], is_train=True)[0]
    with pytest.raises(ImageError, match="its EXIF orientation 6 .rotated 90°. turns the stored"):
        mapped(cfg, record, is_train=True)


# --------------------------------------------------------------------------------------------
# The data loader: boxes never mirrored, failures name the image, also in worker processes
# --------------------------------------------------------------------------------------------
def test_mapper_refuses_to_mirror_a_box_of_an_unvalidated_dataset(tmp_path):
    name, _, images = coco_dataset(tmp_path, JSON_CASES["negative_width"][0])
    cfg = default_cfg(opts=["DATASETS.VALIDATE", "off"])
    records = validated_dataset_dicts(cfg, [name], is_train=True)  # detectron2's own
    with pytest.raises(ImageError, match=re.escape(
        f"image id 2 ({images}/1.png), annotation 0: bbox = [30, 5, -10, 8] (XYWH_ABS) has a "
        "negative width or height, which would be mirrored; correct the box"
    )):  # fmt: skip
        mapped(cfg, records[1], is_train=True)
    skipping = default_cfg(opts=["DATASETS.BAD_IMAGES", "skip"])
    assert mapped(skipping, records[1], is_train=True) is None  # MapDataset takes another


def test_a_worker_crash_names_the_image(tmp_path):
    from detectron2.data import build_detection_test_loader

    name, _, images = coco_dataset(tmp_path)
    cfg = default_cfg()
    records = validated_dataset_dicts(cfg, [name], is_train=False)
    (tmp_path / "d/images/2.png").unlink()  # gone after the checks
    loader = build_detection_test_loader(records, mapper=build_mapper(cfg, False), num_workers=1)
    with pytest.raises(ImageError) as e:
        list(loader)
    assert str(e.value) == (
        f"image id 3 ({images}/2.png) does not exist; put the file there, or correct its "
        "file_name in the dataset (it is relative to the dataset's image folder) (raised "
        "ImageError in DataLoader worker process 0)"
    )
    assert "Traceback" in e.value.worker_traceback

    # Any other failure while mapping is named too.
    bad = dict(records[0], annotations=[{"bbox": "x", "bbox_mode": 1, "category_id": 0}])
    with pytest.raises(ImageMappingError, match=re.escape(
        f"image id 1 ({images}/0.png): mapping it for the model failed with"
    )):  # fmt: skip
        build_mapper(cfg, True)(bad)


# --------------------------------------------------------------------------------------------
# The Trainer and the tool
# --------------------------------------------------------------------------------------------
def test_the_tool_fails_in_one_line_before_training(tmp_path, capsys):
    name, _, images = coco_dataset(tmp_path, IMAGE_CASES["missing"][0])
    command = [
        "--config", QUICKSTART, *TINY_OWN_DATA, "OUTPUT_DIR", str(tmp_path / "o"),
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
    ]  # fmt: skip
    assert train_net.main(command) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        f"error: DatasetValidationError: dataset {name!r} failed its checks before training, "
        f"1 problem (fix them, or set DATASETS.BAD_IMAGES 'skip' to leave such images out of "
        f"training (counted and reported)): image id 2 ({images}/1.png) does not exist"
    )
    assert not (tmp_path / "o/model_final.pth").exists()


def test_trainer_skips_counts_and_reports_at_start_and_end(tmp_path, caplog):
    from resnet_backbones.engine import Trainer, load_config

    name, _, _ = coco_dataset(tmp_path, IMAGE_CASES["truncated_png"][0], num_images=4)
    cfg = load_config(QUICKSTART, [
        *TINY_OWN_DATA, "OUTPUT_DIR", str(tmp_path / "o"), "SOLVER.MAX_ITER", "1",
        "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()", "DATASETS.BAD_IMAGES", "skip",
    ])  # fmt: skip
    with caplog.at_level(logging.INFO):
        trainer = Trainer(cfg)
        trainer.train()
    skipped = "1 image skipped by DATASETS.BAD_IMAGES 'skip' (1 truncated file)"
    start, end = f"Dataset {name!r}: {skipped}", f"Training data {name!r}: {skipped}"
    assert start in caplog.text and end in caplog.text
    assert (
        caplog.text.index(start) < caplog.text.index("Starting training") < caplog.text.index(end)
    )
    assert torch.isfinite(torch.tensor(trainer.storage.latest()["total_loss"][0]))


def test_shapes_val_validates_clean_and_fast():
    import time

    from detectron2.data import DatasetCatalog

    from resnet_backbones.data import register_datasets

    register_datasets()
    DatasetCatalog.get("shapes_val")  # generated on first use
    start = time.perf_counter()
    records, report = validate_dataset("shapes_val", ValidationSettings(), True)
    seconds = time.perf_counter() - start
    assert report.skipped == [] and report.images == len(records) == 150
    assert report.pixel_formats == {"RGB": 150} and report.boxes_past_border == 0
    # A header check reads a few KiB per image: 150 images in well under a second.
    assert seconds < 5, seconds

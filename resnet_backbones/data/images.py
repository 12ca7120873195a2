"""Image files into the pixels a model trains on: one decoder for the dataset checks and the data
loader, so that what validation accepts is what training reads.

detectron2's ``read_image`` converts with ``PIL.Image.convert``, which saturates a 16-bit image
(PIL mode "I", values up to 65535) to white and drops an alpha channel whatever lies under it;
its errors (``image file is truncated (57 bytes not processed)``) do not name the file. Here:

* :func:`inspect_image` reads what the checks need without decoding: the size as stored, the
  pixel format, the EXIF orientation, and (for JPEG and PNG) whether the file ends where its
  format ends, which finds truncated files at the cost of reading their last KiB;
* :func:`read_image` decodes: 16-bit images are scaled to 8 bits (``round(v / 257)``, 65535 ->
  255), CMYK, grayscale and palette images are converted by PIL, transparent images (RGBA, LA,
  palette with transparency) are composited over black, then the EXIF orientation is applied
  (:data:`EXIF_TRANSPOSE`, the same table detectron2 uses);
* :func:`exif_box` moves a box drawn on the stored pixels to the upright image, by the same
  table, so that the validation can rotate boxes with their image;
* every failure is an :class:`ImageError` naming the image id and the file, and saying what to
  do.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .coco_format import DatasetFormatError

__all__ = [
    "EXIF_ORIENTATION_TAG",
    "EXIF_TRANSPOSE",
    "ImageError",
    "ImageInfo",
    "describe_image",
    "exif_box",
    "inspect_image",
    "read_image",
]

EXIF_ORIENTATION_TAG = 274
# EXIF orientation -> the transpose that shows the stored pixels upright (EXIF 2.3, Table 6;
# the same table as detectron2's detection_utils._apply_exif_orientation). 1 is upright.
EXIF_TRANSPOSE: dict[int, Image.Transpose] = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
# Orientations whose transpose swaps width and height.
_SWAPS_SIDES = (5, 6, 7, 8)
_ORIENTATION_NAMES = {
    2: "mirrored left-right",
    3: "rotated 180°",
    4: "mirrored top-bottom",
    5: "mirrored and rotated 90°",
    6: "rotated 90°",
    7: "mirrored and rotated 90°",
    8: "rotated 90°",
}
# PIL modes read without loss into 8-bit RGB by PIL's own conversion.
_CONVERTED_MODES = ("RGB", "L", "1", "P", "CMYK", "YCbCr", "RGBX")
# Modes with an alpha channel (and "P" with a "transparency" entry): composited over black.
_ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")
# How a file of each format ends; a file whose last KiB lacks it was cut short.
_END_MARKERS = {"JPEG": b"\xff\xd9", "MPO": b"\xff\xd9", "PNG": b"IEND"}
_TAIL_BYTES = 1024


class ImageError(DatasetFormatError):
    """An image of a dataset cannot be used: missing, empty, not an image, truncated or corrupt,
    of a pixel format that has no 8-bit RGB meaning, or one that failed while being mapped for
    the model. The message names the image id and the file, and what to do.

    Raised in a DataLoader worker process, it comes back to the main process as torch re-raises
    it: ``type(e)(text)``, the text being the worker's whole traceback. The message is then the
    original one (the traceback's last line) and says it came from a worker; the traceback is
    kept in ``worker_traceback``.
    """

    def __init__(self, message: str, reason: str = "unreadable image"):
        self.reason = reason  # what the validation report counts it as
        self.worker_traceback: Optional[str] = None
        if "Original Traceback" in message:
            self.worker_traceback = message
            cls = type(self)
            prefix = f"{cls.__module__}.{cls.__qualname__}: "
            last = message.rstrip().splitlines()[-1]
            where = message.splitlines()[0].rstrip(".").replace("Caught ", "raised ")
            original = last[len(prefix) :] if last.startswith(prefix) else last
            message = f"{original} ({where})"
        super().__init__(message)


def describe_image(image_id: Any, file_name: str) -> str:
    """How messages name an image: ``image id 7 (/data/images/7.jpg)``."""
    return f"image id {image_id} ({file_name})"


@dataclass(frozen=True)
class ImageInfo:
    """What the header of an image file says.

    Attributes:
        stored_size: (width, height) of the pixels as stored.
        orientation: the EXIF orientation, 1 (upright) where there is none.
        mode: PIL's pixel format ("RGB", "I;16", "CMYK" ...).
        bits: bits per channel that :func:`read_image` scales to 8 (16 for 16-bit images).
        format: the file format ("JPEG", "PNG" ...).
    """

    stored_size: tuple[int, int]
    orientation: int
    mode: str
    bits: int
    format: str

    @property
    def displayed_size(self) -> tuple[int, int]:
        """(width, height) once the EXIF orientation is applied, as viewers show the image."""
        w, h = self.stored_size
        return (h, w) if self.orientation in _SWAPS_SIDES else (w, h)

    @property
    def kind(self) -> str:
        """How the validation report counts the pixel format: "16-bit", "CMYK", "RGBA" ..."""
        return "16-bit" if self.bits == 16 else self.mode

    def orientation_text(self) -> str:
        """``EXIF orientation 6 (rotated 90°)``."""
        return f"EXIF orientation {self.orientation} ({_ORIENTATION_NAMES[self.orientation]})"


def _fail(image_id: Any, file_name: str, problem: str, fix: str, reason: str) -> ImageError:
    return ImageError(f"{describe_image(image_id, file_name)} {problem}; {fix}", reason)


_FIX_FILE = "replace the file, or remove the image from the dataset"


def _open(file_name: str, image_id: Any) -> Image.Image:
    """The file opened by PIL (header read, pixels not decoded)."""
    try:
        size = os.path.getsize(file_name)
    except FileNotFoundError:
        raise _fail(
            image_id,
            file_name,
            "does not exist",
            "put the file there, or correct its file_name in the dataset (it is relative to the "
            "dataset's image folder)",
            "missing file",
        ) from None
    except OSError as e:
        raise _fail(
            image_id, file_name, f"cannot be read ({e})", _FIX_FILE, "unreadable file"
        ) from None
    if size == 0:
        raise _fail(image_id, file_name, "is empty (0 bytes)", _FIX_FILE, "empty file")
    try:
        return Image.open(file_name)
    except UnidentifiedImageError:
        with open(file_name, "rb") as f:
            start = f.read(16)
        raise _fail(
            image_id,
            file_name,
            f"is not an image PIL can read (its first bytes: {start!r})",
            _FIX_FILE,
            "not an image",
        ) from None
    except (OSError, SyntaxError, ValueError) as e:  # PIL reports a corrupt header this way
        raise _fail(
            image_id, file_name, f"has a corrupt header ({e})", _FIX_FILE, "corrupt header"
        ) from None


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation from the header alone. PIL's ``getexif`` decodes a whole PNG to look
    for an eXIf chunk after the pixels (tripling the cost of a header check); the chunk belongs
    before them (PNG 1.5 extensions), where PIL has read it into ``info`` when opening."""
    try:
        if image.format == "PNG":
            exif = Image.Exif()
            if "exif" in image.info:
                exif.load(image.info["exif"])
        else:
            exif = image.getexif()
        value = exif.get(EXIF_ORIENTATION_TAG, 1)
    except Exception:  # a corrupt EXIF block: detectron2 ignores it too (its issue #1885)
        return 1
    return value if value in EXIF_TRANSPOSE else 1


def _bits(image: Image.Image) -> int:
    """16 for a 16-bit image: PIL mode "I;16*", or "I" decoded from 16-bit samples (a 16-bit
    grayscale PNG is mode "I" with the raw mode "I;16B"; it is read before the pixels are
    decoded, which clears ``tile``)."""
    if image.mode.startswith("I;16"):
        return 16
    if image.mode == "I" and any("16" in str(tile[3]) for tile in image.tile):
        return 16
    return 8


def _check_mode(image: Image.Image, bits: int, image_id: Any, file_name: str) -> None:
    mode = image.mode
    if bits == 16 or mode in _CONVERTED_MODES or mode in _ALPHA_MODES:
        return
    raise _fail(
        image_id,
        file_name,
        f"has pixel format {mode!r}, which has no 8-bit RGB meaning here (valid: 8-bit RGB, "
        "grayscale, palette, CMYK, YCbCr, with or without alpha, or 16-bit grayscale)",
        "convert it to 8-bit or 16-bit RGB or grayscale",
        "unsupported pixel format",
    )


def _header(image: Image.Image, file_name: str, image_id: Any) -> ImageInfo:
    bits = _bits(image)
    _check_mode(image, bits, image_id, file_name)
    return ImageInfo(
        stored_size=image.size,
        orientation=_orientation(image),
        mode=image.mode,
        bits=bits,
        format=image.format or "",
    )


def _check_end(image: Image.Image, file_name: str, image_id: Any) -> None:
    marker = _END_MARKERS.get(image.format or "")
    if marker is None:
        return
    with open(file_name, "rb") as f:
        f.seek(max(0, os.path.getsize(file_name) - _TAIL_BYTES))
        tail = f.read()
    if marker not in tail:
        raise _fail(
            image_id,
            file_name,
            f"is truncated: this {image.format} file does not end with its end marker "
            f"{marker!r} (an interrupted copy or download?)",
            _FIX_FILE,
            "truncated file",
        )


def _decode(image: Image.Image, file_name: str, image_id: Any) -> None:
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise _fail(
            image_id,
            file_name,
            f"cannot be decoded ({type(e).__name__}: {e})",
            _FIX_FILE,
            "corrupt pixel data",
        ) from None


def inspect_image(file_name: str, image_id: Any = None, *, decode: bool = False) -> ImageInfo:
    """The header of an image file, checked: the file exists, is not empty, is an image of a
    pixel format :func:`read_image` converts, and (JPEG, PNG) ends with its end marker; with
    ``decode``, all of its pixels are decoded too.

    Raises:
        ImageError: naming ``image_id``, the file, what is wrong and what to do.
    """
    with _open(file_name, image_id) as image:
        info = _header(image, file_name, image_id)
        _check_end(image, file_name, image_id)
        if decode:
            _decode(image, file_name, image_id)
    return info


def _to_rgb(image: Image.Image, bits: int) -> Image.Image:
    """8-bit RGB: 16-bit scaled, transparency over black, other formats by PIL."""
    if bits == 16:
        values = np.asarray(image, dtype=np.float64)
        scaled = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, mode="L").convert("RGB")
    if image.mode in _ALPHA_MODES or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return image.convert("RGB")


def read_image(file_name: str, format: str, image_id: Any = None) -> tuple[np.ndarray, ImageInfo]:
    """The image as the model reads it, upright, and its header.

    Args:
        file_name: the image file.
        format: ``cfg.INPUT.FORMAT``: "BGR", "RGB", "L" or any format of detectron2's
            ``convert_PIL_to_numpy``, which makes the array from the 8-bit RGB image.
        image_id: the image's id, for messages.

    Returns:
        an HWC uint8 array (float for "YUV-BT.601"), and :class:`ImageInfo`.

    Raises:
        ImageError: the file is missing, empty, not an image, truncated or corrupt, or of a
            pixel format without an 8-bit RGB meaning; naming the image id and the file.
    """
    from detectron2.data.detection_utils import convert_PIL_to_numpy

    with _open(file_name, image_id) as image:
        info = _header(image, file_name, image_id)
        _decode(image, file_name, image_id)
        rgb = _to_rgb(image, info.bits)
    if info.orientation != 1:
        rgb = rgb.transpose(EXIF_TRANSPOSE[info.orientation])
    return convert_PIL_to_numpy(rgb, format), info


def exif_box(box: Sequence[float], orientation: int, stored_size: tuple[int, int]) -> list[float]:
    """An XYXY box on the stored pixels of an image of ``stored_size`` (width, height), moved to
    the image shown upright by :data:`EXIF_TRANSPOSE` ``[orientation]``."""
    w, h = stored_size
    points = {
        1: lambda x, y: (x, y),
        2: lambda x, y: (w - x, y),
        3: lambda x, y: (w - x, h - y),
        4: lambda x, y: (x, h - y),
        5: lambda x, y: (y, x),
        6: lambda x, y: (h - y, x),
        7: lambda x, y: (h - y, w - x),
        8: lambda x, y: (y, w - x),
    }[orientation]
    (ax, ay), (bx, by) = points(box[0], box[1]), points(box[2], box[3])
    return [min(ax, bx), min(ay, by), max(ax, bx), max(ay, by)]

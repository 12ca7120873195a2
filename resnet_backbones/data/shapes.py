"""``shapes_train`` / ``shapes_val``: a small detection dataset generated on first use.

Each image has a non-uniform background (a two-colour gradient, low-frequency noise and
clutter lines and arcs that belong to no class) and 2 to 7 objects of three classes, circle,
triangle and rectangle, in random colours, rotated and with varied aspect ratios. Object sizes
span COCO's small (< 32^2 px), medium and large (> 96^2 px) ranges, and objects may overlap and
partly occlude each other (every object stays at least 70% visible); a box is the extent of the
whole shape.

Generation is deterministic: image ``i`` of a split is drawn from its own random stream,
seeded by (seed, split, i), so the files are the same on every machine and every run. They are
written once into ``$RESNET_BACKBONES_CACHE/datasets/<version>/<split>/`` (default
``~/.cache/resnet_backbones``), as PNG images plus a COCO-format JSON, and reused afterwards. A
half-written folder is never used: each split is written to a temporary folder and renamed.
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

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..utils import cache_root, check_choice

__all__ = [
    "CLASSES",
    "SPLITS",
    "ShapesConfig",
    "ensure_shapes",
    "generate_image",
    "generate_split",
]

CLASSES: tuple[str, ...] = ("circle", "triangle", "rectangle")


@dataclass(frozen=True)
class ShapesConfig:
    """Parameters of one split; any change gives a new cache folder."""

    num_images: int
    seed: int
    image_size: int = 256
    min_objects: int = 2
    max_objects: int = 7
    min_side: float = 12.0  # smallest object extent in pixels (COCO "small" is < 32)
    max_side: float = 170.0  # largest (COCO "large" is > 96)
    max_iou: float = 0.35  # largest IoU allowed between two objects' boxes
    min_visible: float = 0.7  # smallest visible fraction of an object once others are drawn
    clutter: int = 6  # clutter lines/arcs per image

    def digest(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]


SPLITS: dict[str, ShapesConfig] = {
    "train": ShapesConfig(num_images=1200, seed=0),
    "val": ShapesConfig(num_images=150, seed=1),
}
_SPLIT_IDS = {"train": 0, "val": 1}
_FORMAT_VERSION = 2


# --------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Two-colour linear gradient plus low-frequency colour noise, as float RGB in [0, 255]."""
    c0, c1 = rng.uniform(0, 255, size=(2, 3))
    angle = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size] / (size - 1)
    t = (np.cos(angle) * xs + np.sin(angle) * ys + 1.5) / 3.0
    image = c0 + (c1 - c0) * t[..., None]
    cells = int(rng.integers(3, 8))
    noise = rng.normal(0, 28, size=(cells, cells, 3)).astype(np.float32)
    noise_img = [
        Image.fromarray(noise[..., k], mode="F").resize((size, size), Image.BICUBIC)
        for k in range(3)
    ]
    image += np.stack([np.asarray(n) for n in noise_img], axis=-1)
    image += rng.normal(0, 6, size=image.shape)  # fine grain
    return np.clip(image, 0, 255)


def _random_colour(rng: np.random.Generator, avoid: np.ndarray) -> tuple[int, int, int]:
    """A colour at least some distance from ``avoid`` (the local background), so objects show."""
    for _ in range(20):
        colour = rng.uniform(0, 255, size=3)
        if np.linalg.norm(colour - avoid) > 90:
            break
    return tuple(int(c) for c in colour)


def _shape_polygon(
    rng: np.random.Generator, cls: str, cx: float, cy: float, side: float
) -> list[tuple[float, float]]:
    """Vertices of a shape whose larger extent is about ``side`` (circles: many vertices)."""
    angle = rng.uniform(0, 2 * math.pi)
    if cls == "circle":
        r = side / 2
        pts = [
            (r * math.cos(a), r * math.sin(a))
            for a in np.linspace(0, 2 * math.pi, 64, endpoint=False)
        ]
        angle = 0.0
    elif cls == "triangle":
        r = side / 2
        base = [math.pi / 2 + k * 2 * math.pi / 3 + rng.uniform(-0.25, 0.25) for k in range(3)]
        pts = [(r * math.cos(a), r * math.sin(a)) for a in base]
    else:  # rectangle
        aspect = math.exp(rng.uniform(math.log(0.45), math.log(1.0)))
        w, h = side / 2, side / 2 * aspect
        pts = [(-w, -h), (w, -h), (w, h), (-w, h)]
        angle = rng.uniform(-math.pi / 5, math.pi / 5)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + ca * x - sa * y, cy + sa * x + ca * y) for x, y in pts]


def _box(poly: list[tuple[float, float]], size: int) -> list[float]:
    xs = [p[0] for p in poly]
    ys = [p[1] for p in poly]
    x0, y0 = max(0.0, min(xs)), max(0.0, min(ys))
    x1, y1 = min(float(size), max(xs)), min(float(size), max(ys))
    return [x0, y0, x1, y1]


def _iou(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def generate_image(cfg: ShapesConfig, split_id: int, index: int) -> tuple[Image.Image, list[dict]]:
    """Draws image ``index`` of a split; returns it and its objects (class index, XYXY box)."""
    rng = np.random.default_rng([cfg.seed, split_id, index])
    size = cfg.image_size
    background = _background(rng, size)
    image = Image.fromarray(background.astype(np.uint8), mode="RGB")
    draw = ImageDraw.Draw(image)

    for _ in range(cfg.clutter):  # lines and arcs that are no object
        colour = tuple(int(c) for c in rng.uniform(0, 255, size=3))
        x0, y0, x1, y1 = (float(v) for v in rng.uniform(0, size, size=4))
        if rng.random() < 0.5:
            draw.line([(x0, y0), (x1, y1)], fill=colour, width=int(rng.integers(1, 4)))
        else:
            box = [min(x0, x1), min(y0, y1), max(x0, x1) + 4, max(y0, y1) + 4]
            start = float(rng.uniform(0, 360))
            draw.arc(box, start, start + float(rng.uniform(60, 200)), fill=colour, width=2)

    # Objects drawn later may hide parts of earlier ones. An instance-id map keeps track, and a
    # new object is rejected if it would leave an earlier one less than `min_visible` visible,
    # so that every annotated object can be seen.
    owner = np.zeros((size, size), dtype=np.int16)  # 0: background, k: object k-1 on top
    objects: list[dict] = []
    areas: list[int] = []
    num_objects = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    attempts = 0
    while len(objects) < num_objects and attempts < 80:
        attempts += 1
        cls = int(rng.integers(len(CLASSES)))
        side = math.exp(rng.uniform(math.log(cfg.min_side), math.log(cfg.max_side)))
        margin = side * 0.3
        cx, cy = rng.uniform(margin, size - margin, size=2)
        poly = _shape_polygon(rng, CLASSES[cls], float(cx), float(cy), side)
        box = _box(poly, size)
        if box[2] - box[0] < 4 or box[3] - box[1] < 4:
            continue
        if any(_iou(box, o["bbox"]) > cfg.max_iou for o in objects):
            continue
        mask_img = Image.new("1", (size, size), 0)
        ImageDraw.Draw(mask_img).polygon(poly, fill=1)
        mask = np.asarray(mask_img, dtype=bool)
        if not mask.any():
            continue
        covered = np.bincount(owner[mask], minlength=len(objects) + 1)[1:]
        visible = np.bincount(owner.ravel(), minlength=len(objects) + 1)[1:]
        if any((visible[k] - covered[k]) < cfg.min_visible * areas[k] for k in range(len(objects))):
            continue
        local = background[int((box[1] + box[3]) / 2), int((box[0] + box[2]) / 2)]
        colour = _random_colour(rng, local)
        outline = tuple(max(0, c - 60) for c in colour) if rng.random() < 0.5 else None
        draw.polygon(poly, fill=colour, outline=outline)
        owner[mask] = len(objects) + 1
        areas.append(int(mask.sum()))
        objects.append({"category": cls, "bbox": box})

    image = image.filter(ImageFilter.GaussianBlur(radius=0.6))
    return image, objects


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------
def _coco_json(cfg: ShapesConfig, split: str, annotations: list[list[dict]]) -> dict:
    images, anns = [], []
    for index, objects in enumerate(annotations):
        images.append(
            {
                "id": index + 1,
                "file_name": f"{index:05d}.png",
                "width": cfg.image_size,
                "height": cfg.image_size,
            }
        )
        for obj in objects:
            x0, y0, x1, y1 = obj["bbox"]
            w, h = x1 - x0, y1 - y0
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": index + 1,
                    "category_id": obj["category"] + 1,
                    "bbox": [round(x0, 2), round(y0, 2), round(w, 2), round(h, 2)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"resnet_backbones shapes {split}", "version": _FORMAT_VERSION},
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)],
    }


def generate_split(split: str, out_dir: str | os.PathLike, cfg: ShapesConfig | None = None) -> Path:
    """Writes the images and ``annotations.json`` of ``split`` into ``out_dir`` (which it creates)."""
    check_choice("shapes split", split, SPLITS)
    cfg = cfg or SPLITS[split]
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    annotations = []
    for index in range(cfg.num_images):
        image, objects = generate_image(cfg, _SPLIT_IDS[split], index)
        image.save(out / "images" / f"{index:05d}.png", optimize=False)
        annotations.append(objects)
    with open(out / "annotations.json", "w") as f:
        json.dump(_coco_json(cfg, split, annotations), f)
    return out


def split_dir(split: str, cfg: ShapesConfig | None = None) -> Path:
    """Where ``split`` (generated with ``cfg``, default: the split's own) is cached."""
    check_choice("shapes split", split, SPLITS)
    cfg = cfg or SPLITS[split]
    return Path(cache_root()) / "datasets" / f"shapes_v{_FORMAT_VERSION}_{cfg.digest()}" / split


def ensure_shapes(split: str, cfg: ShapesConfig | None = None) -> Path:
    """Generates ``split`` into the cache unless it is there already; returns its folder."""
    final = split_dir(split, cfg)
    if (final / "annotations.json").is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{split}-", dir=final.parent))
    try:
        generate_split(split, tmp, cfg)
        try:
            os.rename(tmp, final)
        except OSError:  # another process finished first; its copy is identical
            if not (final / "annotations.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final

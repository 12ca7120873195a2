"""A generated COCO-sized detection evaluation set: ground truth and a detector's results.

COCO val2017 has 5000 images, 36,781 boxes in 80 categories (ids 1..90 with gaps), about 1% of
its boxes crowd regions, and a detector reports up to 100 detections per image: 500k results.
Neither COCO nor a trained detector can be had on these machines, so the comparison of COCO
evaluators (``tests/test_coco_eval.py``, ``tools/benchmark_coco_eval.py``) runs on this seeded
stand-in of the same size and shape:

* ground truth: a negative-binomial number of boxes per image (mean 7.36, some images empty),
  sizes log-uniform from 4 to 400 pixels (small, medium and large in about COCO's proportions),
  aspect ratios 1:2 to 2:1, an ``area`` below the box's as a mask's is, 1% crowd boxes; a few
  categories per image, drawn with frequencies falling as 1/rank;
* results: near every ground-truth box, one to a few detections with a jitter of 2-30% of its
  size (duplicates and loose ones are false positives at the strict IoUs), mostly of its
  category, scored higher the tighter they are; the rest of the 100 per image are false
  positives anywhere in the image, half of them of a category in the image, scored low. Boxes and scores are float32
  values, as detectron2's ``instances_to_coco_json`` writes them.
"""

from __future__ import annotations

import numpy as np

__all__ = ["COCO_VAL_SIZE", "coco_category_ids", "generate_coco_eval_set"]

# COCO val2017: images, ground-truth boxes, categories; 100 detections per image.
COCO_VAL_SIZE = {"images": 5000, "boxes": 36781, "categories": 80, "detections_per_image": 100}
# COCO's category ids skip these (its 91-category list less the 11 without annotations, one of
# them 0): evaluators must map ids, not index by them.
_COCO_ID_GAPS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
# Image sizes (width, height) common in COCO.
_IMAGE_SIZES = ((640, 480), (480, 640), (640, 427), (427, 640), (500, 375), (640, 640))


def coco_category_ids(num_categories: int = 80) -> list[int]:
    """The first ``num_categories`` of COCO's category ids (1..90 less its gaps)."""
    ids = [i for i in range(1, 91) if i not in _COCO_ID_GAPS]
    if not 1 <= num_categories <= len(ids):
        raise ValueError(f"num_categories = {num_categories!r} is not valid; it must be 1..80")
    return ids[:num_categories]


def _xywh_in_image(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """``boxes`` (N x 4, x1 y1 x2 y2) clipped to the image, as x y w h."""
    x1 = np.clip(boxes[:, 0], 0, width)
    y1 = np.clip(boxes[:, 1], 0, height)
    x2 = np.clip(boxes[:, 2], 0, width)
    y2 = np.clip(boxes[:, 3], 0, height)
    return np.stack([x1, y1, x2 - x1, y2 - y1], axis=1)


def _random_boxes(rng: np.random.Generator, n: int, width: int, height: int) -> np.ndarray:
    """``n`` boxes (x1 y1 x2 y2) of log-uniform side 4..400 px and aspect 1:2..2:1, centred
    anywhere in the image."""
    side = np.exp(rng.uniform(np.log(4), np.log(400), n))
    aspect = np.exp(rng.uniform(np.log(0.5), np.log(2.0), n))
    w, h = side * np.sqrt(aspect), side / np.sqrt(aspect)
    cx, cy = rng.uniform(0, width, n), rng.uniform(0, height, n)
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def generate_coco_eval_set(
    num_images: int = COCO_VAL_SIZE["images"],
    *,
    boxes_per_image: float = COCO_VAL_SIZE["boxes"] / COCO_VAL_SIZE["images"],
    detections_per_image: int = COCO_VAL_SIZE["detections_per_image"],
    num_categories: int = COCO_VAL_SIZE["categories"],
    crowd_fraction: float = 0.01,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """A COCO-format ground truth and a detector's results on it (see the module docstring).

    Args:
        num_images: images of the ground truth (5000: COCO val's size).
        boxes_per_image: mean ground-truth boxes per image (COCO val: 7.36).
        detections_per_image: results per image (detectron2's default: 100).
        num_categories: categories, with COCO's ids (:func:`coco_category_ids`).
        crowd_fraction: the share of ground-truth boxes that are crowd regions.
        seed: the seed of the one random generator: the same arguments give the same set.

    Returns:
        ``(dataset, results)``: the ground truth as a COCO annotation dict (``images``,
        ``annotations``, ``categories``) and the results as a list of COCO result dicts
        (``image_id``, ``category_id``, ``bbox`` x y w h, ``score``).
    """
    rng = np.random.default_rng(seed)
    category_ids = np.array(coco_category_ids(num_categories))
    images, annotations, results = [], [], []
    # Negative binomial with n = 4: COCO's long tail of crowded images, ~1.5% of images empty.
    # Category frequencies fall as 1/rank (COCO's "person" has a quarter of the boxes).
    frequency = 1.0 / np.arange(1, num_categories + 1)
    frequency /= frequency.sum()
    counts = rng.negative_binomial(4, 4 / (4 + boxes_per_image), num_images).clip(max=60)
    for index in range(num_images):
        image_id = index + 1
        width, height = _IMAGE_SIZES[rng.integers(len(_IMAGE_SIZES))]
        images.append(
            {"id": image_id, "width": width, "height": height, "file_name": f"{image_id:012d}.jpg"}
        )

        n = int(counts[index])
        gt = _random_boxes(rng, n, width, height)
        crowd = rng.random(n) < crowd_fraction
        gt[crowd] = np.stack([gt[crowd, :2] - 40, gt[crowd, 2:] + 40], axis=1).reshape(-1, 4)
        gt_xywh = _xywh_in_image(gt, width, height)
        keep = (gt_xywh[:, 2] >= 1) & (gt_xywh[:, 3] >= 1)
        gt_xywh, crowd = gt_xywh[keep], crowd[keep]
        # An image shows few categories (COCO: 2.9 on average), the frequent ones more often.
        present = rng.choice(category_ids, 1 + rng.poisson(1.5), p=frequency)
        gt_categories = rng.choice(present, len(gt_xywh))
        # A mask covers less than its box: COCO's area ranges are read from `area`.
        areas = gt_xywh[:, 2] * gt_xywh[:, 3] * rng.uniform(0.4, 0.95, len(gt_xywh))
        for box, category, area, is_crowd in zip(gt_xywh, gt_categories, areas, crowd):
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": int(category),
                    "bbox": [round(float(v), 2) for v in box],
                    "area": round(float(area), 2),
                    "iscrowd": int(is_crowd),
                }
            )

        # Detections near each ground-truth box: 1 + Poisson(1) of them, jittered by 2-30% of
        # the box's size, of its category 90% of the time, scored by their tightness.
        per_gt = 1 + rng.poisson(1.0, len(gt_xywh))
        source = np.repeat(np.arange(len(gt_xywh)), per_gt)
        jitter = rng.uniform(0.02, 0.3, len(source))
        x, y, w, h = gt_xywh[source].T
        near = np.stack([x, y, x + w, y + h], axis=1)
        near += rng.normal(0, 1, near.shape) * jitter[:, None] * np.stack([w, h, w, h], axis=1)
        near_categories = np.where(
            rng.random(len(source)) < 0.9,
            gt_categories[source],
            rng.choice(category_ids, len(source)),
        )
        near_scores = np.clip(1.0 - 2.0 * jitter + rng.normal(0, 0.15, len(source)), 0.05, 1.0)
        # False positives fill the image's 100, scored low.
        spare = max(detections_per_image - len(source), 0)
        far = _random_boxes(rng, spare, width, height)
        # Confusions are mostly with the categories in the image.
        far_categories = np.where(
            rng.random(spare) < 0.5, rng.choice(present, spare), rng.choice(category_ids, spare)
        )
        far_scores = rng.uniform(0, 0.6, spare) ** 2
        boxes = _xywh_in_image(np.concatenate([near, far]), width, height)
        categories = np.concatenate([near_categories, far_categories]).astype(int)
        scores = np.concatenate([near_scores, far_scores])
        valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        order = np.argsort(-scores[valid], kind="stable")[:detections_per_image]
        boxes = boxes[valid][order].astype(np.float32)
        scores = scores[valid][order].astype(np.float32)
        categories = categories[valid][order]
        for box, category, score in zip(boxes.tolist(), categories.tolist(), scores.tolist()):
            results.append(
                {"image_id": image_id, "category_id": category, "bbox": box, "score": score}
            )

    categories = [{"id": int(c), "name": f"category_{c}"} for c in category_ids]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    return dataset, results

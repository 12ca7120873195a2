"""Pictures a person would rather look at than read: learning curves and detections."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np

__all__ = [
    "draw_detections",
    "evaluation_errors",
    "plot_classification_curve",
    "plot_learning_curve",
    "read_metrics",
]

LOSS_KEYS = ("total_loss", "loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc")


def read_metrics(metrics_json: str) -> list[dict]:
    """The records of detectron2's ``metrics.json`` (one JSON object per line)."""
    records = []
    with open(metrics_json) as f:
        for line in f:
            line = line.strip()
            if line:
                records.append(json.loads(line))
    return records


def plot_learning_curve(metrics_json: str, out_png: str, title: str = "") -> str:
    """Plots the training losses (and learning rate, and box AP where evaluated) per iteration."""
    records = read_metrics(metrics_json)
    train = [r for r in records if "total_loss" in r]
    evals = [r for r in records if "bbox/AP" in r]
    if not train:
        raise ValueError(f"{metrics_json} has no training records (no 'total_loss')")
    # A Figure of its own renders without pyplot, so no global backend is chosen here.
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    ax_loss, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    iters = [r["iteration"] + 1 for r in train]
    for key in LOSS_KEYS:
        if key in train[0]:
            ax_loss.plot(
                iters, [r[key] for r in train], label=key, lw=2 if key == "total_loss" else 1
            )
    ax_loss.set_ylabel("loss (median of the logging window)")
    ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    handles, labels = ax_loss.get_legend_handles_labels()
    if evals:
        ax_ap = ax_loss.twinx()
        ap_iters = [r["iteration"] + 1 for r in evals]
        ap_values = [r["bbox/AP"] for r in evals]
        (line,) = ax_ap.plot(ap_iters, ap_values, "ko-", label="box AP (val)")
        for x, y in zip(ap_iters, ap_values):
            ax_ap.annotate(f"{y:.1f}", (x, y), textcoords="offset points", xytext=(-12, 7))
        ax_ap.set_ylim(0, 100)
        ax_ap.set_ylabel("box AP@[.5:.95] on the test set")
        handles.append(line)
        labels.append(line.get_label())
    fig.legend(handles, labels, loc="upper center", fontsize=8, ncol=4, frameon=False)
    if "lr" in train[0]:
        ax_lr.plot(iters, [r["lr"] for r in train], color="tab:gray")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    if title:
        ax_loss.set_title(title)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def evaluation_errors(
    records: Sequence[dict], suffix: str = "classification/top1"
) -> tuple[list[int], list[float]]:
    """The evaluations of a pretraining run's ``metrics.json`` records: the iterations done when
    each ran and its error, 100 minus the value of the key ``suffix`` (``"classification/top1"``
    of one test set, ``"<name>/classification/top1"`` of several: the first one's; ``"ema/top1"``
    for the EMA), in iteration order; where a resumed run evaluated an iteration again, the last
    record wins. detectron2 logs an evaluation during training after step ``k`` (0-based) as
    ``"iteration": k``, and the final one, after the last step, as ``max_iter``."""
    last = max((r["iteration"] for r in records), default=0)
    last = max([last] + [r["iteration"] + 1 for r in records if "train_error" in r])
    found: dict[int, float] = {}
    for r in records:
        key = next((k for k in r if k == suffix or k.endswith("/" + suffix)), None)
        if key is not None:
            found[min(r["iteration"] + 1, last)] = 100.0 - r[key]
    done = sorted(found)
    return done, [found[i] for i in done]


def plot_classification_curve(metrics_json: str, out_png: str, title: str = "") -> str:
    """Plots a pretraining run as the ResNet paper's Fig. 4 and 6: the training error (thin: the
    top-1 error of the augmented training batches, median of the logging window) and the
    validation error (bold: 100 - top-1 of each evaluation, and of the EMA where kept) against
    iterations, in percent, with the learning rate below."""
    records = read_metrics(metrics_json)
    train = [r for r in records if "train_error" in r]
    if not train:
        raise ValueError(f"{metrics_json} has no pretraining records (no 'train_error')")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 6))
    ax, ax_lr = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    iters = [r["iteration"] + 1 for r in train]
    ax.plot(iters, [r["train_error"] for r in train], lw=1, color="tab:blue", label="train error")
    for suffix, style, label in (
        ("classification/top1", "o-", "validation error"),
        ("ema/top1", "s--", "validation error (EMA)"),
    ):
        xs, ys = evaluation_errors(records, suffix)
        if xs:
            ax.plot(xs, ys, style, lw=2.5, color="tab:red", label=label, ms=4)
            ax.annotate(
                f"{ys[-1]:.1f}%", (xs[-1], ys[-1]), textcoords="offset points", xytext=(4, 6)
            )
    ax.set_ylabel("top-1 error (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False)
    if "lr" in train[0]:
        ax_lr.plot(iters, [r["lr"] for r in train], color="tab:gray")
        ax_lr.set_yscale("log")
    ax_lr.set_ylabel("lr")
    ax_lr.set_xlabel("iteration")
    ax_lr.grid(alpha=0.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    fig.savefig(out_png, dpi=100)
    return out_png


def draw_detections(
    predictor,
    dataset_dicts: Sequence[dict],
    metadata,
    out_png: str,
    score_thresh: float = 0.5,
    columns: int = 4,
) -> str:
    """Draws ``predictor``'s detections (and the ground truth, thin) on images into a grid PNG."""
    from detectron2.data.detection_utils import read_image
    from detectron2.utils.visualizer import Visualizer

    tiles = []
    for record in dataset_dicts:
        image = read_image(record["file_name"], format="RGB")
        instances = predictor(image[:, :, ::-1])["instances"].to("cpu")
        instances = instances[instances.scores >= score_thresh]
        vis = Visualizer(image, metadata, scale=1.0)
        for ann in record.get("annotations", []):
            from detectron2.structures import BoxMode

            box = BoxMode.convert(ann["bbox"], ann["bbox_mode"], BoxMode.XYXY_ABS)
            vis.draw_box(box, edge_color="white", line_style="--", alpha=0.8)
        tiles.append(vis.draw_instance_predictions(instances).get_image())
    height = max(t.shape[0] for t in tiles)
    width = max(t.shape[1] for t in tiles)
    rows = (len(tiles) + columns - 1) // columns
    grid = np.full((rows * height, columns * width, 3), 255, dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[r * height : r * height + tile.shape[0], c * width : c * width + tile.shape[1]] = tile
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(out_png)), exist_ok=True)
    Image.fromarray(grid).save(out_png)
    return out_png

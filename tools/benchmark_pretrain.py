#!/usr/bin/env python
"""Training images/s of our pretraining against the plain PyTorch loop a user would write,
in one process, on the CPU.

    python tools/benchmark_pretrain.py [--networks R-18 R-50] [--batch 16] [--workers 2]
        [--rounds 3] [--iters 4] [--channels-last] [--bf16] [--out results.json]

**Ours** is :class:`resnet_backbones.pretrain.ClassificationTrainer` built from
``configs/ImageNet/R_{18,50}_resnet_paper.yaml`` (the ResNet paper's recipe) with the benchmark's
batch, workers and dataset, and timed by its ``run_step()``: the resumable loader (a seeded
draw per sample, worker processes), the ``resnet_imagenet`` transform (shorter side random in
[256, 480], a random 224 crop, a flip, AlexNet's PCA lighting, the mean subtracted in BGR),
the classifier, the cross-entropy and the SGD step, as ``tools/pretrain_net.py`` trains.

**The baseline** is what a user writes with PyTorch alone: torchvision's ``resnet18`` /
``resnet50`` (random weights), ``torchvision.datasets.ImageFolder`` with the same recipe in
``transforms.v2`` (``RandomResize(256, 481)``, ``RandomCrop(224)``, ``RandomHorizontalFlip``,
``ToImage``, ``ToDtype``, the same lighting written as a three-line function, ``Normalize``),
a ``DataLoader`` (shuffled, persistent workers), ``CrossEntropyLoss`` and SGD (momentum 0.9,
weight decay 1e-4). Lighting is on in both (``--lighting 0`` turns it off in both).

The networks are the same: our config is overridden with ``MODEL.RESNETS.STRIDE_IN_1X1 False``
(torchvision puts a bottleneck's stride in its 3x3 conv; the paper's config puts it in the
1x1, which costs R-50 about 6% fewer multiply-adds), and the parameter counts are checked equal.
Both train with LR 0 (``SOLVER.BASE_LR 0``): the SGD step does all its arithmetic, but random
weights cannot diverge during the benchmark.

Both use the same batch, data-loading workers, torch threads and images (a generated
ImageFolder of ImageNet-sized JPEGs, ``--image-size``). After a warm-up, blocks of ``--iters``
iterations alternate (ours, baseline, ours, ...) for ``--rounds`` rounds, so that the load of a
shared machine affects both alike; it reports the median images/s of each and their ratio
(ours / baseline, above 1: ours is faster) per network. A calibration, detectron2's R-101
backbone forward at 800x1216 (as ``tools/benchmark_backbone.py`` and MODEL_ZOO.md quote it),
is measured before and after, so that absolute numbers can be compared across machines.
``--channels-last`` (``CLS.CHANNELS_LAST`` / ``model.to(memory_format=torch.channels_last)``)
and ``--bf16`` (``SOLVER.AMP.ENABLED``, bf16 autocast on the CPU / ``torch.autocast("cpu",
torch.bfloat16)`` around the forward and the loss) apply to both.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from PIL import Image

# Before anything from detectron2 (see tools/train_net.py).
import resnet_backbones  # noqa: F401

# isort: split
import torchvision
from detectron2.engine import hooks
from detectron2.utils.events import EventStorage
from torchvision.transforms import v2

from resnet_backbones.calibration import detectron2_r101, forward_seconds, write_result
from resnet_backbones.data.classification import register_image_folder
from resnet_backbones.data.cls_transforms import IMAGENET_EIGENVALUES, IMAGENET_EIGENVECTORS
from resnet_backbones.engine import load_config
from resnet_backbones.pretrain import ClassificationTrainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Network -> (our config, torchvision's constructor).
NETWORKS = {
    "R-18": ("configs/ImageNet/R_18_resnet_paper.yaml", torchvision.models.resnet18),
    "R-34": ("configs/ImageNet/R_34_resnet_paper.yaml", torchvision.models.resnet34),
    "R-50": ("configs/ImageNet/R_50_resnet_paper.yaml", torchvision.models.resnet50),
    "R-101": ("configs/ImageNet/R_101_resnet_paper.yaml", torchvision.models.resnet101),
}
# torchvision's ImageNet statistics (RGB, 0..1) for the baseline; ours subtracts its config's
# PIXEL_MEAN (the same means, std 1): the same arithmetic per pixel.
BASELINE_MEAN = (0.485, 0.456, 0.406)
BASELINE_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------
def write_image_folder(
    root: str,
    *,
    num_images: int = 64,
    num_classes: int = 4,
    size: Sequence[int] = (500, 375),
    seed: int = 0,
) -> str:
    """Writes an ImageFolder ``root/class_<k>/<i>.JPEG`` of ``num_images`` JPEGs of ImageNet's
    typical size (``size`` = width, height; every other image portrait) and returns ``root``.
    The pixels are smooth random colour fields with fine noise, so that the files are as large
    and as slow to decode as photographs (about 60-100 kB at 500x375), not flat."""
    rng = np.random.default_rng(seed)
    width, height = size
    for i in range(num_images):
        w, h = (width, height) if i % 2 == 0 else (height, width)
        coarse = rng.uniform(0, 255, size=(max(h // 32, 2), max(w // 32, 2), 3)).astype(np.uint8)
        image = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), dtype=np.int16)
        image = np.clip(image + rng.integers(-24, 25, size=image.shape), 0, 255).astype(np.uint8)
        folder = os.path.join(root, f"class_{i % num_classes}")
        os.makedirs(folder, exist_ok=True)
        Image.fromarray(image).save(os.path.join(folder, f"{i:05d}.JPEG"), quality=90)
    return root


class AlexNetLighting:
    """The baseline's PCA lighting, as a user writes it (fb.resnet.torch, pycls): the offset
    ``eigvec @ (alpha * eigval)``, alpha ~ N(0, std), added to an RGB float image in 0..1."""

    def __init__(self, std: float):
        self.std = std
        self.eigenvalues = torch.tensor(IMAGENET_EIGENVALUES)
        self.eigenvectors = torch.tensor(IMAGENET_EIGENVECTORS)

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        if self.std == 0:
            return image
        alpha = torch.randn(3) * self.std
        return image + (self.eigenvectors @ (alpha * self.eigenvalues)).view(3, 1, 1)


def _forever(loader: torch.utils.data.DataLoader):
    while True:
        yield from loader


# --------------------------------------------------------------------------------------------
# The two training loops
# --------------------------------------------------------------------------------------------
@dataclass
class Loop:
    """A training loop under test: ``step()`` runs one iteration; ``close()`` ends its data
    loading processes and files."""

    step: Callable[[], None]
    parameters: int
    close: Callable[[], None]


def build_ours(
    network: str,
    dataset: str,
    output_dir: str,
    *,
    batch: int,
    workers: int,
    crop: int,
    scale_range: Sequence[int],
    lighting: float,
    channels_last: bool,
    bf16: bool,
) -> Loop:
    """``ClassificationTrainer`` of ``network``'s ImageNet config on the registered ImageFolder
    ``dataset``, a step being its ``run_step()``."""
    config = os.path.join(REPO, NETWORKS[network][0])
    cfg = load_config(
        config,
        [
            "MODEL.DEVICE", "cpu",
            "MODEL.WEIGHTS", "",
            "MODEL.RESNETS.STRIDE_IN_1X1", "False",
            "DATASETS.TRAIN", f"('{dataset}',)",
            "DATASETS.TEST", "()",
            # No evaluation: the paper's plateau schedule would have nothing to go on.
            "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "()",
            "DATALOADER.NUM_WORKERS", str(workers),
            "SOLVER.IMS_PER_BATCH", str(batch),
            "SOLVER.BASE_LR", "0.0",
            "SOLVER.AMP.ENABLED", str(bf16),
            "CLS.CHANNELS_LAST", str(channels_last),
            "CLS.CROP", str(crop),
            "CLS.SCALE_RANGE", f"({scale_range[0]}, {scale_range[1]})",
            "CLS.LIGHTING", str(lighting),
            "OUTPUT_DIR", output_dir,
            "SEED", "0",
        ],
    )  # fmt: skip
    cfg.freeze()
    trainer = ClassificationTrainer(cfg)
    storage = EventStorage(0)
    storage.__enter__()  # what trainer.train() opens around its steps
    trainer.storage = storage

    def step() -> None:
        trainer.iter = storage.iter  # what train() sets before each run_step()
        trainer.run_step()
        storage.step()

    def close() -> None:
        trainer._trainer._data_loader_iter.close()  # the loader's generator: its workers end
        for hook in trainer._hooks:
            if isinstance(hook, hooks.PeriodicWriter):
                for writer in hook._writers:
                    writer.close()
        storage.__exit__(None, None, None)

    return Loop(step, sum(p.numel() for p in trainer.model.parameters()), close)


def build_baseline(
    network: str,
    root: str,
    *,
    batch: int,
    workers: int,
    crop: int,
    scale_range: Sequence[int],
    lighting: float,
    channels_last: bool,
    bf16: bool,
) -> Loop:
    """The plain PyTorch loop."""
    transform = v2.Compose(
        [
            v2.RandomResize(scale_range[0], scale_range[1] + 1, antialias=True),
            v2.RandomCrop(crop),
            v2.RandomHorizontalFlip(),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            AlexNetLighting(lighting),
            v2.Normalize(BASELINE_MEAN, BASELINE_STD),
        ]
    )
    dataset = torchvision.datasets.ImageFolder(root, transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=workers > 0,
    )
    batches = _forever(loader)
    model = NETWORKS[network][1](num_classes=len(dataset.classes)).train()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    criterion = torch.nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0, momentum=0.9, weight_decay=1e-4)

    def step() -> None:
        images, labels = next(batches)
        images = images.contiguous(memory_format=memory_format)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            loss = criterion(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return Loop(step, sum(p.numel() for p in model.parameters()), batches.close)


# --------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------
def calibration_model() -> torch.nn.Module:
    """detectron2's default R-101 backbone: the network of the calibration MODEL_ZOO.md quotes
    beside every absolute time (:mod:`resnet_backbones.calibration`)."""
    return detectron2_r101()


def calibrate(model: torch.nn.Module, repeats: int, size: Sequence[int]) -> float:
    """Median seconds of ``model``'s forward on one ``size`` image (fp32), after a warm-up."""
    return forward_seconds(model, repeats, size)


def _time_block(step: Callable[[], None], iters: int) -> float:
    start = time.perf_counter()
    for _ in range(iters):
        step()
    return time.perf_counter() - start


def benchmark(
    networks: Sequence[str] = ("R-18", "R-50"),
    *,
    batch: int = 16,
    workers: int = 2,
    rounds: int = 3,
    iters: int = 4,
    warmup: int = 2,
    crop: int = 224,
    scale_range: Sequence[int] = (256, 480),
    lighting: float = 0.1,
    channels_last: bool = False,
    bf16: bool = False,
    num_images: int = 64,
    num_classes: int = 4,
    image_size: Sequence[int] = (500, 375),
    calibration_repeats: int = 3,
    calibration_size: Sequence[int] = (800, 1216),
    work_dir: Optional[str] = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Times ours against the baseline for each of ``networks`` (see the module docstring) and
    returns the results: per network the images/s of every block, their medians and the ratio
    ours / baseline, with the settings and the calibration before and after."""
    with tempfile.TemporaryDirectory(dir=work_dir) as tmp:
        root = write_image_folder(
            os.path.join(tmp, "images"),
            num_images=num_images,
            num_classes=num_classes,
            size=image_size,
        )
        dataset = f"benchmark_pretrain_{os.path.basename(tmp)}"
        register_image_folder(dataset, root)
        log(
            f"calibration: detectron2's R-101 forward at {calibration_size[0]}x{calibration_size[1]}"
        )
        reference = calibration_model()
        calibration = {
            "before_s": calibrate(reference, calibration_repeats, calibration_size),
            # Runnable processes (1-minute average): on a shared machine, how loaded it was.
            "load_average_before": os.getloadavg()[0],
        }
        results: dict[str, Any] = {}
        common = dict(
            batch=batch,
            workers=workers,
            crop=crop,
            scale_range=scale_range,
            lighting=lighting,
            channels_last=channels_last,
            bf16=bf16,
        )
        for network in networks:
            loops = {
                "ours": build_ours(network, dataset, os.path.join(tmp, f"out_{network}"), **common),
                "baseline": build_baseline(network, root, **common),
            }
            if loops["ours"].parameters != loops["baseline"].parameters:
                raise RuntimeError(
                    f"{network}: ours has {loops['ours'].parameters} parameters and "
                    f"torchvision's {loops['baseline'].parameters}; the benchmark would compare "
                    "different networks"
                )
            for loop in loops.values():
                _time_block(loop.step, warmup)
            speeds: dict[str, list[float]] = {name: [] for name in loops}
            for r in range(rounds):
                for name, loop in loops.items():
                    speeds[name].append(batch * iters / _time_block(loop.step, iters))
                log(
                    f"{network} round {r + 1}/{rounds}: "
                    + ", ".join(f"{n} {s[-1]:.2f} images/s" for n, s in speeds.items())
                )
            medians = {name: statistics.median(s) for name, s in speeds.items()}
            results[network] = {
                "parameters": loops["ours"].parameters,
                "images_per_s": speeds,
                "median_images_per_s": medians,
                "ratio_ours_over_baseline": medians["ours"] / medians["baseline"],
            }
            for loop in loops.values():
                loop.close()
            del loops
            gc.collect()
        calibration["after_s"] = calibrate(reference, calibration_repeats, calibration_size)
        calibration["load_average_after"] = os.getloadavg()[0]
    return {
        "device": f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)",
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "settings": {
            "batch": batch,
            "workers": workers,
            "rounds": rounds,
            "iters_per_block": iters,
            "warmup_iters": warmup,
            "crop": crop,
            "scale_range": list(scale_range),
            "lighting": lighting,
            "channels_last": channels_last,
            "bf16": bf16,
            "images": num_images,
            "classes": num_classes,
            "image_size": list(image_size),
        },
        "calibration": {
            "what": (
                f"detectron2's R-101 backbone forward, 1x3x{calibration_size[0]}x"
                f"{calibration_size[1]}, fp32, median of {calibration_repeats}"
            ),
            **calibration,
        },
        "networks": results,
    }


def format_table(result: dict[str, Any]) -> str:
    """The results as a text table."""
    s = result["settings"]
    lines = [
        f"Training images/s at {s['crop']}, batch {s['batch']}, {s['workers']} workers, "
        f"{result['torch_threads']} torch threads, lighting {s['lighting']}, channels_last "
        f"{s['channels_last']}, bf16 {s['bf16']}; medians of {s['rounds']} alternating blocks "
        f"of {s['iters_per_block']} iterations",
        f"{'network':<8} {'ours':>8} {'baseline':>9} {'ours/baseline':>14}",
    ]
    for network, r in result["networks"].items():
        m = r["median_images_per_s"]
        lines.append(
            f"{network:<8} {m['ours']:>8.2f} {m['baseline']:>9.2f} "
            f"{r['ratio_ours_over_baseline']:>14.3f}"
        )
    c = result["calibration"]
    lines.append(
        f"calibration ({c['what']}): {c['before_s']:.2f} s before, {c['after_s']:.2f} s after; "
        f"load average {c['load_average_before']:.1f} before, {c['load_average_after']:.1f} after"
    )
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--networks", nargs="+", default=["R-18", "R-50"], choices=NETWORKS)
    parser.add_argument("--batch", type=int, default=16, help="images per iteration")
    parser.add_argument("--workers", type=int, default=2, help="data-loading processes")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating blocks per loop")
    parser.add_argument("--iters", type=int, default=4, help="iterations per block")
    parser.add_argument("--warmup", type=int, default=2, help="iterations before timing")
    parser.add_argument("--crop", type=int, default=224)
    parser.add_argument("--scale-range", type=int, nargs=2, default=(256, 480))
    parser.add_argument("--lighting", type=float, default=0.1, help="PCA lighting std (0: off)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast on the CPU")
    parser.add_argument("--images", type=int, default=64, help="generated JPEGs")
    parser.add_argument("--image-size", type=int, nargs=2, default=(500, 375), metavar=("W", "H"))
    parser.add_argument("--calibration-repeats", type=int, default=3)
    parser.add_argument(
        "--calibration-size", type=int, nargs=2, default=(800, 1216), metavar=("H", "W")
    )
    parser.add_argument("--out", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = benchmark(
        args.networks,
        batch=args.batch,
        workers=args.workers,
        rounds=args.rounds,
        iters=args.iters,
        warmup=args.warmup,
        crop=args.crop,
        scale_range=args.scale_range,
        lighting=args.lighting,
        channels_last=args.channels_last,
        bf16=args.bf16,
        num_images=args.images,
        image_size=args.image_size,
        calibration_repeats=args.calibration_repeats,
        calibration_size=args.calibration_size,
    )
    print(format_table(result))
    if args.out:
        write_result(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())

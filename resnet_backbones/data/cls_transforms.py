"""Classification transforms and test-time protocols: the ResNet paper's ImageNet and CIFAR
recipes, torchvision's V1 recipe, and top-1/top-5 accuracy.

The pipeline, from the dataset's image to the scores an evaluator accumulates:

1. **image**: a PIL image, or an RGB ``(C, H, W)`` tensor (uint8 in 0..255 or float in 0..1);
2. **geometry** (torchvision ``transforms.v2``, on the image as given, so that a PIL image is
   resized by PIL exactly as torchvision's own presets do);
3. **pixels**: a float tensor in 0..1, AlexNet's PCA lighting noise (RGB, training only), then
   :class:`ToNetworkInput`: channels in ``INPUT.FORMAT`` order, ``(255 x - PIXEL_MEAN) /
   PIXEL_STD``. This is exactly what a detectron2 model feeds its backbone, so a backbone
   pretrained here sees the pixels the detector of the same config will feed it;
4. **test views** (:class:`TestViews`): the crops or scales of a protocol, as groups of
   same-sized views; :func:`average_scores` runs the model on every view and averages the
   softmax probabilities;
5. **accuracy**: :class:`TopKAccuracy` accumulates top-1 and top-5 (percent), across processes.

The recipes (``CLS.TRAIN_AUG``):

* ``"resnet_imagenet"``: ResNet paper, Sec. 3.4: the shorter side resized to a random integer in
  ``CLS.SCALE_RANGE`` ([256, 480]; scale augmentation as in VGG), a random ``CLS.CROP`` (224)
  crop, a horizontal flip with probability 1/2, AlexNet's PCA lighting (``CLS.LIGHTING`` = 0.1,
  the standard deviation of alpha), the mean subtracted;
* ``"torchvision_v1"``: torchvision's recipe behind its ``IMAGENET1K_V1`` weights
  (``references/classification``): ``RandomResizedCrop(224)`` (bilinear), flip, normalised;
* ``"resnet_cifar"``: ResNet paper, Sec. 4.2: the mean subtracted, ``CLS.PAD`` (4) pixels of zeros
  on each side, a random ``CLS.CROP`` (32) crop, flip;
* ``"none"``: the image as it is, normalised (images of one size: CIFAR, digits).

The test protocols (``CLS.TEST``): ``"center"`` (shorter side ``CLS.TEST_RESIZE`` = 256, centre
crop ``CLS.CROP``), ``"10crop"`` (the four corners and the centre of that image and their flips:
torchvision's ``TenCrop``), ``"multiscale"`` (the paper's fully-convolutional test: the whole
image at each shorter side of ``CLS.TEST_SCALES``, and its flip with ``CLS.TEST_FLIP``) and
``"none"`` (the whole image once: the CIFAR test, "no augmentation").

**Mean, not mean image.** The paper says "per-pixel mean subtracted"; like fb.resnet.torch,
pycls, torchvision and detectron2 we subtract a per-channel mean (``MODEL.PIXEL_MEAN``) and
divide by ``MODEL.PIXEL_STD`` (1 for a mean subtraction alone): a mean image cannot apply to the
multi-scale test's images of every size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence, Union

import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import v2

from ..config import ConfigError

__all__ = [
    "IMAGENET_EIGENVALUES",
    "IMAGENET_EIGENVECTORS",
    "TEST_PROTOCOLS",
    "TRAIN_AUGMENTATIONS",
    "ClsOptions",
    "Lighting",
    "TestViews",
    "ToNetworkInput",
    "TopKAccuracy",
    "average_scores",
    "build_cls_transforms",
    "build_test_views",
    "build_train_transform",
    "center_crop_scores",
    "cls_options_from_config",
    "multiscale_scores",
    "ten_crop_scores",
    "topk_correct",
]

TRAIN_AUGMENTATIONS = ("resnet_imagenet", "torchvision_v1", "resnet_cifar", "none")
TEST_PROTOCOLS = ("center", "10crop", "multiscale", "none")

# The principal components of ImageNet's RGB pixels in 0..1 (AlexNet, Sec. 4.1), as
# fb.resnet.torch publishes them (datasets/imagenet.lua, `pca`) and pycls copies them
# (pycls/datasets/imagenet.py, _EIG_VALS and _EIG_VECS): eigenvalues, and the eigenvectors as the
# columns of the matrix (row i is channel i: R, G, B).
IMAGENET_EIGENVALUES = (0.2175, 0.0188, 0.0045)
IMAGENET_EIGENVECTORS = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)

# A test image: PIL, or an RGB (C, H, W) tensor, uint8 in 0..255 or float in 0..1.
ImageLike = Union[Image.Image, torch.Tensor]
# A classifier: a (N, C, H, W) batch -> (N, num_classes) logits.
Model = Callable[[torch.Tensor], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Pixels
# --------------------------------------------------------------------------------------------
class Lighting(v2.Transform):
    """AlexNet's PCA colour augmentation ("lighting"): ``image + eigvec @ (alpha * eigval)``
    added to every pixel, with ``alpha ~ N(0, std)`` drawn once per image from torch's global
    generator (which the resumable loader seeds per sample).

    The input is an RGB float image in 0..1, the scale of the eigenvalues; as in
    fb.resnet.torch (datasets/transforms.lua, ``M.Lighting``) nothing is clamped.
    """

    def __init__(
        self,
        std: float = 0.1,
        eigenvalues: Sequence[float] = IMAGENET_EIGENVALUES,
        eigenvectors: Sequence[Sequence[float]] = IMAGENET_EIGENVECTORS,
    ):
        """
        Args:
            std: standard deviation of alpha (AlexNet's 0.1); 0 changes nothing.
            eigenvalues: the 3 eigenvalues of the pixels' covariance.
            eigenvectors: 3x3, the eigenvectors as columns, rows in R, G, B order.
        """
        super().__init__()
        self.std = float(std)
        self.eigenvalues = torch.tensor(eigenvalues, dtype=torch.float32)
        self.eigenvectors = torch.tensor(eigenvectors, dtype=torch.float32)

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"alpha": torch.empty(3).normal_(0.0, self.std)}

    def noise(self, alpha: torch.Tensor) -> torch.Tensor:
        """The RGB offset that ``alpha`` adds to every pixel: ``eigvec @ (alpha * eigval)``."""
        return self.eigenvectors @ (alpha * self.eigenvalues)

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if self.std == 0:
            return inpt
        if not inpt.is_floating_point():
            raise TypeError(f"Lighting needs a float image in 0..1, not one of {inpt.dtype}")
        offset = self.noise(params["alpha"]).to(inpt.dtype)
        return inpt + offset.view(3, 1, 1)


class ToNetworkInput(v2.Transform):
    """An RGB float image in 0..1 -> the network's input: channels in ``format`` order, then
    ``(255 x - mean) / std``, with mean and std in 0..255 units (detectron2's ``PIXEL_MEAN`` and
    ``PIXEL_STD``, in ``format`` order), computed as torchvision's ``Normalize(mean / 255,
    std / 255)``, so that an RGB ImageNet config gives torchvision's preset's numbers."""

    def __init__(self, format: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if format not in ("RGB", "BGR"):
            raise ValueError(f"format = {format!r} is not valid; valid values: 'RGB', 'BGR'")
        self.format = format
        self.mean = [m / 255.0 for m in mean]
        self.std = [s / 255.0 for s in std]

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if inpt.shape[-3] != 3:
            raise ValueError(
                f"a classifier reads RGB images, but this one has {inpt.shape[-3]} channels: "
                "open images with PIL's .convert('RGB'), as torchvision's ImageFolder does"
            )
        if self.format == "BGR":
            inpt = inpt.flip(-3)
        return v2.functional.normalize(inpt.as_subclass(torch.Tensor), self.mean, self.std)


# --------------------------------------------------------------------------------------------
# Options: the CLS keys, read and checked once
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ClsOptions:
    """The classification input of a config: the ``CLS`` keys, with ``INPUT.FORMAT``,
    ``MODEL.PIXEL_MEAN`` and ``MODEL.PIXEL_STD``. Build it with :func:`cls_options_from_config`
    (which checks it) or directly, with keyword arguments."""

    train_aug: str = "resnet_imagenet"
    test: str = "center"
    scale_range: tuple[int, int] = (256, 480)
    crop: int = 224
    pad: int = 4
    lighting: float = 0.1
    test_resize: int = 256
    test_scales: tuple[int, ...] = (224, 256, 384, 480, 640)
    test_flip: bool = True
    label_smoothing: float = 0.0
    ema_decay: float = 0.0
    channels_last: bool = False
    test_batch_size: int = 32
    format: str = "BGR"
    pixel_mean: tuple[float, ...] = (103.530, 116.280, 123.675)
    pixel_std: tuple[float, ...] = (1.0, 1.0, 1.0)

    def to_network_input(self) -> ToNetworkInput:
        return ToNetworkInput(self.format, self.pixel_mean, self.pixel_std)


def _int_like(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check(ok: bool, key: str, value: Any, want: str) -> None:
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not valid; {want}")


def cls_options_from_config(cfg: Any) -> ClsOptions:
    """The classification input of ``cfg`` (extended by ``add_resnet_backbones_config``),
    checked: the one place that reads the ``CLS`` keys.

    Raises:
        ConfigError: naming the key, the bad value and the valid values.
    """
    if "CLS" not in cfg:
        raise ConfigError(
            "the config has no CLS section: call resnet_backbones.add_resnet_backbones_config(cfg)"
            " on it before merging a pretraining config"
        )
    c = cfg.CLS
    for key, value, valid in (
        ("CLS.TRAIN_AUG", c.TRAIN_AUG, TRAIN_AUGMENTATIONS),
        ("CLS.TEST", c.TEST, TEST_PROTOCOLS),
        ("INPUT.FORMAT", cfg.INPUT.FORMAT, ("RGB", "BGR")),
    ):
        _check(value in valid, key, value, "valid values: " + ", ".join(map(repr, valid)))
    for key, value in (
        ("CLS.CROP", c.CROP),
        ("CLS.TEST_RESIZE", c.TEST_RESIZE),
    ):
        _check(_int_like(value) and value >= 1, key, value, "it must be a positive integer")
    _check(_int_like(c.PAD) and c.PAD >= 0, "CLS.PAD", c.PAD, "it must be an integer >= 0")
    scales = tuple(c.SCALE_RANGE)
    _check(
        len(scales) == 2 and all(_int_like(s) for s in scales) and c.CROP <= scales[0] <= scales[1],
        "CLS.SCALE_RANGE",
        scales,
        f"it must be (MIN, MAX), integers with CLS.CROP ({c.CROP}) <= MIN <= MAX",
    )
    test_scales = tuple(c.TEST_SCALES)
    _check(
        len(test_scales) >= 1 and all(_int_like(s) and s >= 1 for s in test_scales),
        "CLS.TEST_SCALES",
        test_scales,
        "it must be a non-empty list of positive integers (shorter sides)",
    )
    _check(
        c.TEST_RESIZE >= c.CROP,
        "CLS.TEST_RESIZE",
        c.TEST_RESIZE,
        f"the centre and 10 crops of CLS.CROP = {c.CROP} need a shorter side at least as long",
    )
    for key, value in (("CLS.TEST_FLIP", c.TEST_FLIP), ("CLS.CHANNELS_LAST", c.CHANNELS_LAST)):
        _check(isinstance(value, bool), key, value, "it must be true or false")
    _check(
        _int_like(c.TEST_BATCH_SIZE) and c.TEST_BATCH_SIZE >= 1,
        "CLS.TEST_BATCH_SIZE",
        c.TEST_BATCH_SIZE,
        "it must be a positive integer",
    )
    for key, value, low, high, want in (
        ("CLS.LIGHTING", c.LIGHTING, 0.0, float("inf"), "it must be a number >= 0 (0: off)"),
        ("CLS.LABEL_SMOOTHING", c.LABEL_SMOOTHING, 0.0, 1.0, "it must be a number in [0, 1)"),
        ("CLS.EMA_DECAY", c.EMA_DECAY, 0.0, 1.0, "it must be a number in [0, 1) (0: off)"),
    ):
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        _check(number and low <= value < high, key, value, want)
    for key, value in (
        ("MODEL.PIXEL_MEAN", cfg.MODEL.PIXEL_MEAN),
        ("MODEL.PIXEL_STD", cfg.MODEL.PIXEL_STD),
    ):
        _check(len(value) == 3, key, value, "a classifier reads RGB images: it needs 3 values")
    _check(
        all(s > 0 for s in cfg.MODEL.PIXEL_STD),
        "MODEL.PIXEL_STD",
        cfg.MODEL.PIXEL_STD,
        "every value must be > 0",
    )
    return ClsOptions(
        train_aug=c.TRAIN_AUG,
        test=c.TEST,
        scale_range=(scales[0], scales[1]),
        crop=c.CROP,
        pad=c.PAD,
        lighting=float(c.LIGHTING),
        test_resize=c.TEST_RESIZE,
        test_scales=test_scales,
        test_flip=c.TEST_FLIP,
        label_smoothing=float(c.LABEL_SMOOTHING),
        ema_decay=float(c.EMA_DECAY),
        channels_last=c.CHANNELS_LAST,
        test_batch_size=c.TEST_BATCH_SIZE,
        format=cfg.INPUT.FORMAT,
        pixel_mean=tuple(float(m) for m in cfg.MODEL.PIXEL_MEAN),
        pixel_std=tuple(float(s) for s in cfg.MODEL.PIXEL_STD),
    )


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------
# A float RGB tensor in 0..1 (a grey image's one channel repeated in 3).
_TO_FLOAT = (v2.ToImage(), v2.RGB(), v2.ToDtype(torch.float32, scale=True))


def build_train_transform(options: ClsOptions) -> v2.Compose:
    """The training transform of ``options.train_aug``: an image (PIL, or RGB tensor) -> the
    network's input, a float ``(3, H, W)`` tensor (``crop`` x ``crop`` but for ``"none"``).

    The geometry runs on the image as given (PIL resizes PIL images); the CIFAR padding is
    added after the mean is subtracted, so that it is zeros in the network's input, as in
    fb.resnet.torch (datasets/cifar10.lua: ``ColorNormalize``, then ``RandomCrop(32, 4)``).
    """
    normalize = options.to_network_input()
    flip = v2.RandomHorizontalFlip(0.5)
    if options.train_aug == "resnet_imagenet":
        low, high = options.scale_range
        steps = [
            # RandomResize draws the shorter side from [min_size, max_size): high + 1 includes it.
            v2.RandomResize(low, high + 1, antialias=True),
            v2.RandomCrop(options.crop),
            flip,
            *_TO_FLOAT,
            Lighting(options.lighting),
            normalize,
        ]
    elif options.train_aug == "torchvision_v1":
        steps = [v2.RandomResizedCrop(options.crop, antialias=True), flip, *_TO_FLOAT, normalize]
    elif options.train_aug == "resnet_cifar":
        steps = [*_TO_FLOAT, normalize, v2.RandomCrop(options.crop, padding=options.pad), flip]
    else:
        steps = [*_TO_FLOAT, normalize]
    return v2.Compose(steps)


# --------------------------------------------------------------------------------------------
# Testing
# --------------------------------------------------------------------------------------------
class TestViews:
    """The views of a test protocol: ``views(image)`` is a list of groups, each a float tensor
    ``(V, 3, H, W)`` of same-sized network inputs:

    * ``"center"``: one group of 1, the centre ``crop`` of the image resized to shorter side
      ``resize`` (torchvision's evaluation preset);
    * ``"10crop"``: one group of 10: torchvision's ``TenCrop(crop)`` of that image (corners
      top-left, top-right, bottom-left, bottom-right, centre, then the same five crops of the
      mirrored image: the mirror of the top-right crop first);
    * ``"multiscale"``: one group per shorter side of ``scales`` (the whole image, then its flip
      when ``flip``); the ResNet paper's test (Sec. 3.4), which follows VGG's dense evaluation,
      whose scores average over flips too;
    * ``"none"``: one group of 1, the whole image.

    The groups of ``"center"``, ``"10crop"`` and ``"none"`` (of same-sized images) stack into
    batches with torch's default collate: ``[(B, V, 3, H, W)]``; :func:`average_scores` takes
    both forms.
    """

    __test__ = False  # a protocol, not a pytest class

    def __init__(
        self,
        protocol: str,
        to_network_input: Callable[[torch.Tensor], torch.Tensor],
        *,
        resize: int = 256,
        crop: int = 224,
        scales: Sequence[int] = (224, 256, 384, 480, 640),
        flip: bool = True,
    ):
        if protocol not in TEST_PROTOCOLS:
            raise ValueError(
                f"protocol = {protocol!r} is not valid; valid values: "
                + ", ".join(map(repr, TEST_PROTOCOLS))
            )
        self.protocol = protocol
        self.resize, self.crop, self.scales, self.flip = resize, crop, tuple(scales), flip
        self._pixels = v2.Compose([*_TO_FLOAT, to_network_input])

    def _network_input(self, image: ImageLike) -> torch.Tensor:
        return self._pixels(image).as_subclass(torch.Tensor)

    def __call__(self, image: ImageLike) -> list[torch.Tensor]:
        if self.protocol == "none":
            return [self._network_input(image)[None]]
        if self.protocol == "multiscale":
            groups = []
            for scale in self.scales:
                x = self._network_input(v2.functional.resize(image, [scale], antialias=True))
                groups.append(torch.stack([x, x.flip(-1)]) if self.flip else x[None])
            return groups
        resized = v2.functional.resize(image, [self.resize], antialias=True)
        if self.protocol == "center":
            crops = [v2.functional.center_crop(resized, [self.crop])]
        else:
            crops = v2.functional.ten_crop(resized, [self.crop])
        return [torch.stack([self._network_input(c) for c in crops])]


def build_test_views(options: ClsOptions) -> TestViews:
    """The :class:`TestViews` of ``options.test``."""
    return TestViews(
        options.test,
        options.to_network_input(),
        resize=options.test_resize,
        crop=options.crop,
        scales=options.test_scales,
        flip=options.test_flip,
    )


def build_cls_transforms(cfg: Any, is_train: bool) -> Callable[[ImageLike], Any]:
    """The entry point of a pretraining tool: the transform of ``cfg``'s training recipe
    (image -> ``(3, H, W)`` tensor, :func:`build_train_transform`) or of its test protocol
    (image -> groups of views, :class:`TestViews`; score them with :func:`average_scores`).

    Raises:
        ConfigError: a ``CLS`` key, ``INPUT.FORMAT`` or the pixel mean/std is not valid.
    """
    options = cls_options_from_config(cfg)
    return build_train_transform(options) if is_train else build_test_views(options)


@torch.no_grad()
def average_scores(model: Model, views: Sequence[torch.Tensor]) -> torch.Tensor:
    """The softmax probabilities of ``model`` averaged over every view of every group.

    AlexNet averages "the predictions made by the network's softmax layer" over its ten
    patches, and the ResNet paper "the scores": probabilities, not logits (top-1 can differ).

    Args:
        model: a (N, 3, H, W) batch -> (N, K) logits; called once per group.
        views: groups of one image, each ``(V, 3, H, W)`` (what :class:`TestViews` returns), or
            of a batch of images, each ``(B, V, 3, H, W)``.

    Returns:
        (K,) for one image, (B, K) for a batch.
    """
    if not views:
        raise ValueError("average_scores needs at least one group of views")
    batched = views[0].dim() == 5
    total, count = None, 0
    for group in views:
        group = group if batched else group[None]
        b, v = group.shape[:2]
        probabilities = F.softmax(model(group.flatten(0, 1)).float(), dim=1).view(b, v, -1)
        summed = probabilities.sum(dim=1)
        total = summed if total is None else total + summed
        count += v
    scores = total / count
    return scores if batched else scores[0]


def center_crop_scores(
    model: Model, image: ImageLike, to_network_input, *, resize: int = 256, crop: int = 224
) -> torch.Tensor:
    """(K,) scores of the centre ``crop`` of ``image`` resized to shorter side ``resize``."""
    return average_scores(
        model, TestViews("center", to_network_input, resize=resize, crop=crop)(image)
    )


def ten_crop_scores(
    model: Model, image: ImageLike, to_network_input, *, resize: int = 256, crop: int = 224
) -> torch.Tensor:
    """(K,) scores averaged over torchvision's ``TenCrop(crop)`` of ``image`` resized to shorter
    side ``resize``."""
    return average_scores(
        model, TestViews("10crop", to_network_input, resize=resize, crop=crop)(image)
    )


def multiscale_scores(
    model: Model,
    image: ImageLike,
    to_network_input,
    *,
    scales: Sequence[int] = (224, 256, 384, 480, 640),
    flip: bool = True,
) -> torch.Tensor:
    """(K,) scores of the whole ``image`` at every shorter side of ``scales`` (and flipped),
    averaged: the ResNet paper's fully-convolutional test, for a ``model`` whose head pools
    globally (any input size)."""
    views = TestViews("multiscale", to_network_input, scales=scales, flip=flip)(image)
    return average_scores(model, views)


# --------------------------------------------------------------------------------------------
# Accuracy
# --------------------------------------------------------------------------------------------
def topk_correct(
    scores: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = (1, 5)
) -> dict[int, int]:
    """How many rows of ``scores`` (N, K) have their ``targets`` (N,) among their k highest,
    for each k of ``ks`` (k above K counts every row)."""
    if scores.dim() != 2 or targets.shape != scores.shape[:1]:
        raise ValueError(
            f"scores must be (N, K) and targets (N,); got {tuple(scores.shape)} and "
            f"{tuple(targets.shape)}"
        )
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices
    hits = top == targets.view(-1, 1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


class TopKAccuracy:
    """Top-1 and top-5 accuracy (percent) over batches of scores, and over processes."""

    def __init__(self, ks: Sequence[int] = (1, 5)):
        self.ks = tuple(ks)
        self.reset()

    def reset(self) -> None:
        self.correct = {k: 0 for k in self.ks}
        self.total = 0

    def update(self, scores: torch.Tensor, targets: torch.Tensor) -> None:
        """Counts a batch: ``scores`` (N, K), ``targets`` (N,) class indices."""
        for k, n in topk_correct(scores, targets, self.ks).items():
            self.correct[k] += n
        self.total += int(targets.numel())

    def result(self, *, all_processes: bool = True) -> dict[str, float]:
        """``{"top1": ..., "top5": ...}`` in percent, summed over every process of a distributed
        run (detectron2's ``comm.all_gather``) unless ``all_processes`` is False.

        Raises:
            ValueError: nothing was counted.
        """
        correct, total = dict(self.correct), self.total
        if all_processes:
            from detectron2.utils import comm

            gathered = comm.all_gather((correct, total))
            correct = {k: sum(c[k] for c, _ in gathered) for k in self.ks}
            total = sum(t for _, t in gathered)
        if total == 0:
            raise ValueError("no image was counted: the test set is empty")
        return {f"top{k}": 100.0 * correct[k] / total for k in self.ks}

"""The classification recipes' transforms and test protocols (resnet_backbones/data/
cls_transforms.py): scale augmentation, crops, AlexNet's lighting, torchvision's TenCrop, the
multi-scale test, the CIFAR padding, accuracy and the CLS keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as v1
from torchvision.transforms import v2

from resnet_backbones.config import ConfigError
from resnet_backbones.data.cls_transforms import (
    ClsOptions,
    Lighting,
    TestViews,
    ToNetworkInput,
    TopKAccuracy,
    average_scores,
    build_cls_transforms,
    build_train_transform,
    center_crop_scores,
    cls_options_from_config,
    multiscale_scores,
    ten_crop_scores,
)

from .helpers import default_cfg

# The lighting constants as fb.resnet.torch publishes them (datasets/imagenet.lua), typed here
# again so that a changed constant in the module fails.
FB_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
FB_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)
IMAGENET_RGB = ClsOptions(
    format="RGB", pixel_mean=(123.675, 116.28, 103.53), pixel_std=(58.395, 57.12, 57.375)
)


def coordinate_image(height: int, width: int) -> Image.Image:
    """An RGB image whose pixel (y, x) is (y, x, 7): a crop's values name where it came from."""
    y, x = np.mgrid[:height, :width]
    return Image.fromarray(np.stack([y, x, np.full_like(y, 7)], axis=-1).astype(np.uint8))


def random_image(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def step(pipeline: v2.Compose, kind: type):
    (found,) = [t for t in pipeline.transforms if isinstance(t, kind)]
    return found


def test_scale_augmentation_short_side_range_both_ends():
    resize = step(build_train_transform(ClsOptions()), v2.RandomResize)
    image = Image.new("RGB", (4, 3))
    torch.manual_seed(0)
    sides = [min(resize(image).size) for _ in range(3000)]
    assert min(sides) == 256 and max(sides) == 480
    assert set(sides) <= set(range(256, 481))
    # Every one of the 225 integers is drawn (3000 draws miss one with probability ~3e-4).
    assert len(set(sides)) == 225


def test_train_crops_and_flip():
    image = random_image(300, 200)
    torch.manual_seed(0)
    for aug, crop in (("resnet_imagenet", 224), ("torchvision_v1", 224), ("resnet_cifar", 32)):
        transform = build_train_transform(ClsOptions(train_aug=aug, crop=crop))
        source = random_image(32, 32) if aug == "resnet_cifar" else image
        for _ in range(5):
            out = transform(source)
            assert type(out) is torch.Tensor and out.dtype == torch.float32
            assert tuple(out.shape) == (3, crop, crop)
    none = build_train_transform(ClsOptions(train_aug="none"))(image)
    assert tuple(none.shape) == (3, 300, 200)


def test_imagenet_crop_is_a_window_of_the_resized_image():
    """With lighting off, RGB, mean 0 and std 255, the output is a 224 window of the image
    resized to a shorter side s in [256, 480] (or its mirror): the window spans 224 * 60 / s
    of the source's 60 rows and columns, between 28 and 52.5."""
    options = ClsOptions(lighting=0.0, format="RGB", pixel_mean=(0, 0, 0), pixel_std=(255,) * 3)
    transform = build_train_transform(options)
    image = coordinate_image(60, 90)
    torch.manual_seed(3)
    flipped, spans = 0, set()
    for _ in range(20):
        out = (transform(image) * 255).round()
        # Channel 2 is constant 7: no colour change without lighting.
        assert torch.all(out[2] == 7)
        rows, columns = out[0, :, 0], out[1, 0]
        assert torch.all(rows.diff() >= 0)
        flipped += bool(columns[0] > columns[-1])
        assert (
            torch.all(columns.diff() <= 0)
            if columns[0] > columns[-1]
            else torch.all(columns.diff() >= 0)
        )
        for span in (rows.max() - rows.min(), columns.max() - columns.min()):
            assert 26 <= float(span) <= 54
        spans.add(float(rows.max() - rows.min()))
    assert 0 < flipped < 20
    assert len(spans) > 5  # the scale changes from draw to draw


def test_lighting_equals_alexnet_formula_on_a_fixed_draw():
    lighting = Lighting(0.1)
    image = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(42)
    params = lighting.make_params([image])
    out = lighting.transform(image, params)
    alpha = params["alpha"].double().numpy()
    expected = image.double().numpy() + (FB_EIGVEC @ (alpha * FB_EIGVAL))[:, None, None]
    np.testing.assert_allclose(out.double().numpy(), expected, atol=1e-6)
    assert np.abs(alpha).max() > 0


def test_lighting_alpha_distribution_and_off():
    lighting = Lighting(0.1)
    torch.manual_seed(0)
    alphas = torch.stack([lighting.make_params([])["alpha"] for _ in range(4000)])
    assert abs(float(alphas.mean())) < 0.005
    assert 0.095 < float(alphas.std()) < 0.105
    image = torch.rand(3, 4, 4)
    assert torch.equal(Lighting(0.0)(image), image)


def test_lighting_runs_in_rgb_before_the_bgr_conversion():
    """The BGR network input of a lit image is the RGB lit image, channels reversed."""
    image = random_image(256, 256)
    common = dict(lighting=0.1, scale_range=(256, 256), crop=256)
    rgb = ClsOptions(**common, format="RGB", pixel_mean=(1, 2, 3), pixel_std=(4, 5, 6))
    bgr = ClsOptions(**common, format="BGR", pixel_mean=(3, 2, 1), pixel_std=(6, 5, 4))
    torch.manual_seed(5)
    a = build_train_transform(rgb)(image)
    torch.manual_seed(5)
    b = build_train_transform(bgr)(image)
    torch.testing.assert_close(b, a.flip(0))


def test_network_input_is_detectron2s_normalisation():
    image = random_image(8, 9)
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).double()
    mean, std = (103.53, 116.28, 123.675), (57.375, 57.12, 58.395)
    out = TestViews("none", ToNetworkInput("BGR", mean, std))(image)[0][0]
    expected = (pixels.flip(0) - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    torch.testing.assert_close(out.double(), expected, atol=1e-4, rtol=0)


def test_grey_images_become_rgb_and_rgba_is_refused():
    transform = build_train_transform(ClsOptions(train_aug="none", format="RGB"))
    grey = transform(Image.new("L", (5, 4), 9))
    torch.testing.assert_close(grey, transform(Image.new("RGB", (5, 4), (9, 9, 9))))
    with pytest.raises(ValueError, match="has 4 channels: open images with PIL's .convert"):
        transform(Image.new("RGBA", (5, 4)))


def test_torchvision_center_crop_protocol_equals_torchvision_preset():
    """RGB with the ImageNet mean/std: torchvision's evaluation transform, value for value."""
    image = random_image(300, 400)
    reference = v1.Compose(
        [
            v1.Resize(256),
            v1.CenterCrop(224),
            v1.ToTensor(),
            v1.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )(image)
    (group,) = TestViews("center", IMAGENET_RGB.to_network_input())(image)
    assert tuple(group.shape) == (1, 3, 224, 224)
    torch.testing.assert_close(group[0], reference, atol=1e-6, rtol=0)


def test_ten_crop_geometry_equals_torchvision_tencrop():
    image = coordinate_image(30, 40)  # resized to 30x40 (shorter side 30), crops of 20
    identity = ToNetworkInput("RGB", (0, 0, 0), (255, 255, 255))
    (group,) = TestViews("10crop", identity, resize=30, crop=20)(image)
    assert tuple(group.shape) == (10, 3, 20, 20)
    reference = [v1.functional.pil_to_tensor(c) for c in v1.TenCrop(20)(image)]
    for got, want in zip(group, reference):
        assert torch.equal((got * 255).round().to(torch.uint8), want)
    # And by hand: top-left corner (row, column) of each crop; then the five crops of the
    # mirrored image, whose top-left one is the mirror of the top-right crop, and so on.
    corners = [(0, 0), (0, 20), (10, 0), (10, 20), (5, 10)]
    for i, (y0, x0) in enumerate(corners):
        crop = (group[i] * 255).round()
        assert (int(crop[0, 0, 0]), int(crop[1, 0, 0])) == (y0, x0)
    for mirrored, original in zip(range(5, 10), (1, 0, 3, 2, 4)):
        assert torch.equal(group[mirrored], group[original].flip(-1))


def test_center_crop_of_resized_image():
    image = coordinate_image(100, 50)  # resized to 512x256, centre 224
    identity = ToNetworkInput("RGB", (0, 0, 0), (255, 255, 255))
    (group,) = TestViews("center", identity)(image)
    reference = v1.ToTensor()(v1.CenterCrop(224)(v1.Resize(256)(image)))
    torch.testing.assert_close(group[0], reference)


class TinyFullyConvolutional(torch.nn.Module):
    """conv, global average pool, linear: any input size."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=4)
        self.fc = torch.nn.Linear(4, 6)
        self.sizes = []

    def forward(self, x):
        self.sizes.append(tuple(x.shape))
        return self.fc(self.conv(x).mean(dim=(2, 3)))


def test_multiscale_scores_equal_hand_written_average():
    model = TinyFullyConvolutional()
    image = random_image(60, 80)
    normalize = v1.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    scales = (224, 256, 384, 480, 640)
    probabilities = []
    for s in scales:
        x = normalize(v1.ToTensor()(v1.functional.resize(image, s)))
        assert min(x.shape[1:]) == s
        for view in (x, x.flip(-1)):
            probabilities.append(torch.softmax(model(view[None]), dim=1)[0])
    expected = torch.stack(probabilities).mean(dim=0)
    model.sizes.clear()
    got = multiscale_scores(model, image, IMAGENET_RGB.to_network_input(), scales=scales)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # One batch of the image and its flip per scale; the whole image, not a crop.
    assert model.sizes == [(2, 3, s, s * 4 // 3) for s in scales]
    no_flip = multiscale_scores(model, image, IMAGENET_RGB.to_network_input(), flip=False)
    assert not torch.allclose(no_flip, got)


def test_ten_crop_and_center_scores():
    model = TinyFullyConvolutional()
    image = random_image(300, 260)
    to_input = IMAGENET_RGB.to_network_input()
    crops = v1.TenCrop(224)(v1.Resize(256)(image))
    normalize = v1.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    batch = torch.stack([normalize(v1.ToTensor()(c)) for c in crops])
    expected = torch.softmax(model(batch), dim=1).mean(dim=0)
    torch.testing.assert_close(ten_crop_scores(model, image, to_input), expected, atol=1e-6, rtol=0)
    center = torch.softmax(model(batch[4:5]), dim=1)[0]
    torch.testing.assert_close(
        center_crop_scores(model, image, to_input), center, atol=1e-6, rtol=0
    )


def test_average_scores_of_a_collated_batch():
    model = TinyFullyConvolutional()
    views = TestViews("10crop", IMAGENET_RGB.to_network_input(), resize=40, crop=32)
    images = [random_image(40, 50, seed) for seed in range(3)]
    batch = torch.utils.data.default_collate([views(im) for im in images])
    assert tuple(batch[0].shape) == (3, 10, 3, 32, 32)
    scores = average_scores(model, batch)
    for i, image in enumerate(images):
        torch.testing.assert_close(scores[i], average_scores(model, views(image)))


def test_cifar_pad_and_crop_geometry():
    """The crop is a 32x32 window of the image padded by 4 zeros in the network's input, or its
    mirror; every offset in 0..8 is drawn."""
    options = ClsOptions(
        train_aug="resnet_cifar", crop=32, format="RGB", pixel_mean=(0, 0, 0), pixel_std=(255,) * 3
    )
    transform = build_train_transform(options)
    base = np.zeros((32, 32, 3), dtype=np.uint8)
    base[..., 0] = np.arange(32)[:, None] + 1  # row + 1
    base[..., 1] = np.arange(32)[None, :] + 1  # column + 1
    image = Image.fromarray(base)
    padded = torch.zeros(3, 40, 40)
    padded[:, 4:36, 4:36] = torch.from_numpy(base).permute(2, 0, 1).float()
    torch.manual_seed(0)
    offsets, flips = set(), 0
    for _ in range(400):
        out = (transform(image) * 255).round()
        assert tuple(out.shape) == (3, 32, 32)
        matches = [
            (y, x, f)
            for y in range(9)
            for x in range(9)
            for f in (False, True)
            if torch.equal(
                out,
                padded[:, y : y + 32, x : x + 32].flip(-1)
                if f
                else padded[:, y : y + 32, x : x + 32],
            )
        ]
        assert len(matches) == 1
        (y, x, f) = matches[0]
        offsets.add((y, x))
        flips += f
    assert {y for y, _ in offsets} == set(range(9)) and {x for _, x in offsets} == set(range(9))
    assert 100 < flips < 300


def test_cifar_padding_is_zero_after_the_mean():
    options = ClsOptions(
        train_aug="resnet_cifar",
        crop=32,
        pad=4,
        format="RGB",
        pixel_mean=(100, 100, 100),
        pixel_std=(1, 1, 1),
    )
    transform = build_train_transform(options)
    image = Image.new("RGB", (32, 32), (200, 200, 200))
    torch.manual_seed(1)
    values = set()
    for _ in range(30):
        values |= set(transform(image).round(decimals=3).unique().tolist())
    assert values == {0.0, 100.0}


def test_topk_accuracy():
    scores = torch.tensor(
        [
            [0.9, 0.05, 0.02, 0.01, 0.01, 0.01],  # class 0 first
            [0.1, 0.2, 0.3, 0.15, 0.14, 0.11],  # class 5: 6th, outside the top 5
            [0.1, 0.2, 0.3, 0.15, 0.14, 0.11],  # class 4: 4th
            [0.0, 0.0, 0.0, 0.0, 1.0, 0.0],  # class 4 first
        ]
    )
    targets = torch.tensor([0, 0, 4, 4])
    # Sorted row 1: 2, 1, 3, 4, 5, 0 -> class 0 last.
    accuracy = TopKAccuracy()
    accuracy.update(scores[:2], targets[:2])
    accuracy.update(scores[2:], targets[2:])
    assert accuracy.result() == {"top1": 50.0, "top5": 75.0}
    three_classes = TopKAccuracy()
    three_classes.update(torch.eye(3)[[1, 2, 0]], torch.tensor([0, 1, 2]))
    assert three_classes.result() == {"top1": 0.0, "top5": 100.0}
    with pytest.raises(ValueError, match="empty"):
        TopKAccuracy().result()


def test_config_keys_and_entry_point():
    cfg = default_cfg(opts=["CLS.TRAIN_AUG", "resnet_cifar", "CLS.CROP", 32, "CLS.TEST", "none"])
    options = cls_options_from_config(cfg)
    assert (options.train_aug, options.crop, options.test, options.format) == (
        "resnet_cifar",
        32,
        "none",
        "BGR",
    )
    assert options.pixel_mean == tuple(cfg.MODEL.PIXEL_MEAN)
    out = build_cls_transforms(cfg, is_train=True)(random_image(32, 32))
    assert tuple(out.shape) == (3, 32, 32)
    views = build_cls_transforms(cfg, is_train=False)(random_image(32, 32))
    assert [tuple(v.shape) for v in views] == [(1, 3, 32, 32)]
    defaults = cls_options_from_config(default_cfg())
    assert (defaults.train_aug, defaults.test, defaults.scale_range, defaults.lighting) == (
        "resnet_imagenet",
        "center",
        (256, 480),
        0.1,
    )


@pytest.mark.parametrize(
    "opts, message",
    [
        (
            ["CLS.TRAIN_AUG", "autoaugment"],
            "CLS.TRAIN_AUG = 'autoaugment' is not valid; valid values: 'resnet_imagenet', 'torchvision_v1', 'resnet_cifar', 'none'",
        ),
        (
            ["CLS.TEST", "5crop"],
            "CLS.TEST = '5crop' is not valid; valid values: 'center', '10crop', 'multiscale', 'none'",
        ),
        (["CLS.SCALE_RANGE", (480, 256)], "CLS.SCALE_RANGE = (480, 256) is not valid"),
        (["CLS.SCALE_RANGE", (200, 480)], "CLS.CROP (224) <= MIN <= MAX"),
        (["CLS.CROP", 0], "CLS.CROP = 0 is not valid; it must be a positive integer"),
        (["CLS.TEST_RESIZE", 200], "CLS.TEST_RESIZE = 200 is not valid"),
        (["CLS.TEST_SCALES", ()], "CLS.TEST_SCALES = () is not valid"),
        (["CLS.LIGHTING", -0.1], "CLS.LIGHTING = -0.1 is not valid; it must be a number >= 0"),
        (["CLS.LABEL_SMOOTHING", 1.0], "CLS.LABEL_SMOOTHING = 1.0 is not valid"),
        (["CLS.PAD", -1], "CLS.PAD = -1 is not valid"),
        (["INPUT.FORMAT", "L"], "INPUT.FORMAT = 'L' is not valid"),
        (["MODEL.PIXEL_STD", [1.0, 0.0, 1.0]], "MODEL.PIXEL_STD = [1.0, 0.0, 1.0] is not valid"),
    ],
)
def test_config_value_errors(opts, message):
    cfg = default_cfg(opts=opts)
    with pytest.raises(ConfigError) as error:
        build_cls_transforms(cfg, is_train=True)
    assert message in str(error.value)


def test_config_without_our_keys():
    from detectron2.config import get_cfg

    with pytest.raises(ConfigError, match="add_resnet_backbones_config"):
        cls_options_from_config(get_cfg())

"""Every config under configs/ builds on the CPU, loads weights in the layout of the ones it
names, and takes one training step with finite losses."""

import glob
import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from resnet_backbones.engine import load_config
from resnet_backbones.presets import ARCHS
from resnet_backbones.weights.checkpoint import FamilyCheckpointer
from resnet_backbones.weights.metadata import check_metadata
from resnet_backbones.weights.resolve import catalog_entry_for

from .helpers import REPO, reference_state, save_in_its_format

ALL_CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


def _is_pretraining(config):
    """A config of tools/pretrain_net.py: it trains on a classification dataset."""
    from detectron2.data import MetadataCatalog

    from resnet_backbones.data import register_datasets

    register_datasets()
    train = load_config(os.path.join(REPO, config)).DATASETS.TRAIN
    return bool(train) and all(
        getattr(MetadataCatalog.get(n), "evaluator_type", None) == "classification" for n in train
    )


PRETRAINING = [c for c in ALL_CONFIGS if _is_pretraining(c)]
CONFIGS = [c for c in ALL_CONFIGS if c not in PRETRAINING]


def _batch(num_classes):
    g = torch.Generator().manual_seed(0)
    batch = []
    for h, w in [(160, 192), (176, 160)]:
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(
            torch.tensor([[10.0, 12.0, 90.0, 100.0], [60.0, 40.0, 150.0, 150.0]])
        )
        instances.gt_classes = torch.tensor([0, num_classes - 1])
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        batch.append({"image": image, "instances": instances, "height": h, "width": w})
    return batch


def test_faster_rcnn_r101_follows_detectron2_3x_recipe():
    cfg = load_config(os.path.join(REPO, "configs/faster_rcnn_R101.yaml"))
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_family_fpn_backbone"
    assert cfg.MODEL.RESNETS.DEPTH == 101
    assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (16, 0.02, 270000)
    assert cfg.SOLVER.STEPS == (210000, 250000)
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)


@pytest.mark.parametrize("config", CONFIGS)
def test_config_builds_takes_a_finite_step_and_loads_its_weights(config, tmp_path):
    """The model a config builds takes a finite step; the weights it names are in the catalog and
    agree with its input format, pixel statistics and stride placement, and random weights in
    the publisher's names and format load strictly into the model."""
    cfg = load_config(os.path.join(REPO, config), ["MODEL.DEVICE", "cpu"])
    assert cfg.MODEL.BACKBONE.NAME.startswith(("build_resnet_family", "build_rexnet"))
    model = build_model(cfg).train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=1e-3, momentum=0.9)
    before = [p.detach().clone() for p in trainable]
    with EventStorage(0):
        losses = model(_batch(cfg.MODEL.ROI_HEADS.NUM_CLASSES))
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_rpn_cls", "loss_rpn_loc"}
    for name, value in losses.items():
        assert math.isfinite(value.item()), name
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, trainable))

    # Loaded after the step: random weights under frozen norms would make it run on denormals.
    if cfg.MODEL.WEIGHTS:
        entry = catalog_entry_for(cfg.MODEL.WEIGHTS)
        assert entry is not None, f"{cfg.MODEL.WEIGHTS} is not in the catalog"
        check_metadata(entry.metadata, cfg, source=cfg.MODEL.WEIGHTS)
        arch = ARCHS[entry.arch]
        path = save_in_its_format(reference_state(arch), arch, tmp_path)
        FamilyCheckpointer(model, cfg=cfg).load(str(path))


def test_the_pretraining_configs_are_found():
    assert {"configs/CIFAR/resnet_110.yaml", "configs/ImageNet/R_101_resnet_paper.yaml"} <= set(
        PRETRAINING
    )
    assert "configs/faster_rcnn_R101.yaml" in CONFIGS


@pytest.mark.parametrize("config", PRETRAINING)
def test_pretraining_config_transforms_builds_and_takes_a_finite_step(config):
    """Each pretraining recipe's transform gives its crop, its classifier (BN, trained) takes a
    finite SGD step on it, and its LR scheduler builds."""
    from PIL import Image

    from resnet_backbones.data.cls_transforms import build_cls_transforms, cls_options_from_config
    from resnet_backbones.modeling.classifier import build_classification_model
    from resnet_backbones.solver import build_lr_scheduler

    cfg = load_config(os.path.join(REPO, config), ["MODEL.DEVICE", "cpu"])
    options = cls_options_from_config(cfg)
    side = options.scale_range[0] if options.train_aug == "resnet_imagenet" else options.crop
    g = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (side + 8, side + 24, 3), generator=g, dtype=torch.uint8)
    transform = build_cls_transforms(cfg, is_train=True)
    batch = [{"image": transform(Image.fromarray(pixels.numpy())), "label": k} for k in (0, 1)]
    assert batch[0]["image"].shape == (3, options.crop, options.crop)
    for x in batch:  # the step at 64 px at most: the classifier pools any size
        x["image"] = x["image"][:, :64, :64]
    model = build_classification_model(cfg, num_classes=10).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR, momentum=0.9)
    build_lr_scheduler(cfg, optimizer)
    before = model.fc.weight.detach().clone()
    loss = model(batch)["loss_cls"]
    assert math.isfinite(loss.item())
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.fc.weight)


def test_the_recipes_are_the_papers():
    imagenet = load_config(os.path.join(REPO, "configs/ImageNet/R_101_resnet_paper.yaml"))
    s = imagenet.SOLVER
    assert (s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.IMS_PER_BATCH) == (0.1, 0.9, 1e-4, 256)
    assert (s.LR_SCHEDULER_NAME, s.GAMMA, s.MAX_ITER, s.WARMUP_ITERS) == (
        "WarmupPlateauLR", 0.1, 600000, 0,
    )  # fmt: skip
    assert imagenet.CLS.SCALE_RANGE == (256, 480) and imagenet.CLS.CROP == 224
    assert imagenet.CLS.TRAIN_AUG == "resnet_imagenet" and imagenet.CLS.LIGHTING == 0.1
    assert imagenet.MODEL.RESNETS.DROPOUT == 0.0 and imagenet.MODEL.RESNETS.DEPTH == 101
    cifar = load_config(os.path.join(REPO, "configs/CIFAR/resnet_110.yaml"))
    s = cifar.SOLVER
    assert (s.BASE_LR, s.MOMENTUM, s.WEIGHT_DECAY, s.IMS_PER_BATCH) == (0.1, 0.9, 1e-4, 128)
    assert (s.STEPS, s.MAX_ITER) == ((32000, 48000), 64000)
    assert (s.WARMUP_METHOD, s.WARMUP_FACTOR, s.WARMUP_ITERS) == ("constant", 0.1, 400)
    assert (cifar.CLS.TRAIN_AUG, cifar.CLS.PAD, cifar.CLS.CROP) == ("resnet_cifar", 4, 32)
    plain = load_config(os.path.join(REPO, "configs/CIFAR/plain_56.yaml"))
    assert plain.MODEL.RESNETS.SHORTCUT == "none" and plain.SOLVER.WARMUP_ITERS == 0
    tv = load_config(os.path.join(REPO, "configs/ImageNet/R_50_torchvision_v1.yaml"))
    assert (tv.SOLVER.STEPS, tv.SOLVER.MAX_ITER) == ((150150, 300300), 450450)
    assert tv.CLS.TRAIN_AUG == "torchvision_v1" and tv.INPUT.FORMAT == "RGB"

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

CONFIGS = sorted(
    os.path.relpath(p, REPO)
    for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(p).startswith("Base-")
)


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

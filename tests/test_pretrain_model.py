"""The pretraining classifier (issue 11): detectron2-trainer form, and weights that a detector of
the same network loads as they are, in its C4, DC5 and FPN forms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_model

from resnet_backbones.modeling.classifier import (
    ClassificationModel,
    ImageClassifier,
    build_classification_model,
)
from resnet_backbones.presets import PRESETS, preset_config
from resnet_backbones.weights.checkpoint import FamilyCheckpointer


def _cfg(form="FPN"):
    cfg = preset_config("R-18", form)
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = "cpu"
    return cfg


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    model = build_classification_model(_cfg(), num_classes=10)
    with torch.no_grad():  # every tensor distinct from a fresh build's
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.add_(torch.rand_like(t) * 0.01)
    return model


def test_names_are_the_backbones_own_and_fc(model):
    backbone = _cfg()
    from resnet_backbones.config import build_clean_backbone

    # BN for the detector's FrozenBN: a classifier trains its norms (and counts its batches).
    trained = build_clean_backbone(backbone, features="last", trainable_norms=True)
    assert set(model.state_dict()) == set(trained.state_dict()) | {"fc.weight", "fc.bias"}
    names = set(build_clean_backbone(backbone, features="last").state_dict())
    # An ImageClassifier of the same network names them under "backbone.".
    classifier = ImageClassifier(build_clean_backbone(backbone, features="last"), num_classes=10)
    assert set(classifier.state_dict()) == {f"backbone.{n}" for n in names} | {
        "fc.weight",
        "fc.bias",
    }


def test_forward_in_training_and_in_eval(model):
    images = torch.randn(3, 3, 64, 64)
    batch = [{"image": images[i], "label": label} for i, label in enumerate([1, 7, 3])]
    model.eval()
    with torch.no_grad():
        logits = model(batch)
        features = model._backbone(images)["res5"].mean(dim=(2, 3))
    assert logits.shape == (3, 10)
    torch.testing.assert_close(logits, features @ model.fc.weight.T + model.fc.bias)
    model.train()
    assert model.res2.training and model._backbone.training
    losses = model(batch)
    assert set(losses) == {"loss_cls"}
    with torch.no_grad():  # in training mode: BN normalises by the batch's statistics
        expected = F.cross_entropy(model.logits(images), torch.tensor([1, 7, 3]))
    model.eval()
    torch.testing.assert_close(losses["loss_cls"].detach(), expected)
    with pytest.raises(ValueError, match="num_classes = 0 is not valid"):
        ClassificationModel(model._backbone, num_classes=0)


@pytest.mark.parametrize("form", ["FPN", "C4", "DC5"])
def test_its_weights_load_into_every_detector_form_as_they_are(model, form, tmp_path):
    path = tmp_path / "model_final.pth"
    torch.save({"model": model.state_dict(), "metadata": {}}, path)
    cfg = _cfg(form)
    detector = build_model(cfg)
    FamilyCheckpointer(detector, cfg=cfg).load(str(path))
    loaded = detector.state_dict()
    prefix = {"FPN": "backbone.bottom_up.", "C4": "backbone.", "DC5": "backbone."}[form]
    placed = 0
    counters = 0
    for name, tensor in model.state_dict().items():
        if name.endswith("num_batches_tracked"):
            counters += 1  # BN's, which the detector's FrozenBN does not keep
            continue
        if name.startswith("fc."):
            continue
        target = f"roi_heads.{name}" if form == "C4" and name.startswith("res5.") else prefix + name
        assert torch.equal(loaded[target], tensor), target
        placed += 1
    assert placed == len(model.state_dict()) - 2 - counters


def test_its_weights_load_back_into_the_classifier_fc_included(model, tmp_path):
    path = tmp_path / "model_0000009.pth"
    torch.save({"model": model.state_dict(), "metadata": {}}, path)
    fresh = build_classification_model(_cfg(), num_classes=10)
    FamilyCheckpointer(fresh, cfg=_cfg()).load(str(path))
    for name, tensor in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[name], tensor), name


def test_an_image_classifiers_names_do_not_fit_fpn(tmp_path):
    """Why ClassificationModel names its tensors as the backbone does: an ImageClassifier's
    checkpoint (``backbone.stem.*``) fits a DC5 detector only."""
    from resnet_backbones.config import build_clean_backbone
    from resnet_backbones.weights.errors import BackboneMismatchError

    classifier = ImageClassifier(build_clean_backbone(_cfg(), features="last"), num_classes=10)
    path = tmp_path / "classifier.pth"
    torch.save({"model": classifier.state_dict()}, path)
    cfg = _cfg("FPN")
    with pytest.raises(BackboneMismatchError, match="does not fit the model's backbone"):
        FamilyCheckpointer(build_model(cfg), cfg=cfg).load(str(path))


# One preset of each kind of stem, block and shortcut (building all 32 took minutes here; every
# preset's backbone takes a training step in tests/test_family.py and test_configs.py).
KINDS = [
    "R-18", "R-50-v2", "X-50-32x4d", "Res2Net-50-26w-4s", "SE-R-50", "R-50-D",
    "R-101-DCN-c3-c5", "ReXNet-100", "CIFAR-ResNet-20", "CIFAR-Plain-20", "WRN-28-10",
]  # fmt: skip


@pytest.mark.parametrize("name", KINDS)
def test_every_kind_of_preset_has_a_classifier_that_trains(name):
    """What tools/pretrain_net.py builds for a preset (ImageNet and CIFAR, ReXNet and DCN
    included) takes a finite SGD step, with BN trained, on two small images."""
    cfg = preset_config(name)
    cfg.MODEL.WEIGHTS, cfg.MODEL.DEVICE = "", "cpu"
    model = build_classification_model(cfg, num_classes=5).train()
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())
    side = 32 if PRESETS[name].task == "classification" else 64
    images = torch.randn(2, 3, side, side)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = model([{"image": images[i], "label": i} for i in range(2)])["loss_cls"]
    assert torch.isfinite(loss)
    loss.backward()
    before = model.fc.weight.detach().clone()
    optimizer.step()
    assert not torch.equal(before, model.fc.weight)

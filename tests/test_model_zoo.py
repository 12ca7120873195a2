"""resnet_backbones.model_zoo: our configs by name, as detectron2.model_zoo gives detectron2's.
(The same calls from an installed wheel: tests/test_wheel.py.)"""

import glob
import os

import pytest
import yaml

from resnet_backbones import model_zoo
from resnet_backbones.engine import load_config
from resnet_backbones.presets import PRESETS
from resnet_backbones.weights.catalog import CATALOG
from resnet_backbones.weights.resolve import DETECTRON2_BASE_URL, ZOO_BASE_URL_ENV, fetch_url

from .helpers import REPO


def test_every_config_is_found_by_its_name_in_the_checkout():
    on_disk = sorted(
        os.path.relpath(p, os.path.join(REPO, "configs")).replace(os.sep, "/")
        for p in glob.glob(os.path.join(REPO, "configs", "**", "*.yaml"), recursive=True)
    )
    assert model_zoo.config_names() == on_disk
    for name in on_disk:
        assert model_zoo.get_config_file(name) == os.path.join(REPO, "configs", *name.split("/"))
    # Every preset's configs are names the model zoo resolves.
    listed = [c for p in PRESETS.values() for c in p.configs]
    assert listed and set(listed) <= set(on_disk)


def test_an_unknown_name_lists_the_close_and_the_valid_names():
    with pytest.raises(FileNotFoundError) as e:
        model_zoo.get_config_file("COCO-Detection/faster_rcnn_R_101_FPN_1x.yaml")
    message = str(e.value)
    assert "'COCO-Detection/faster_rcnn_R_101_FPN_1x.yaml' is not one of" in message
    assert "did you mean 'COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml'" in message
    assert "Valid names: " in message and "quickstart/faster_rcnn_R18_FPN_shapes.yaml" in message
    # A path outside the configs is not a name, even where the file exists.
    with pytest.raises(FileNotFoundError, match="is not one of"):
        model_zoo.get_config_file(os.path.join(REPO, "configs", "Base-RCNN-FPN.yaml"))


def test_get_config_has_our_keys_and_follows_base():
    name = "COCO-Detection/faster_rcnn_R_101_D_FPN_3x.yaml"
    cfg = model_zoo.get_config(name)
    assert cfg == load_config(os.path.join(REPO, "configs", name))
    # From the file itself and from its _BASE_ (Base-RCNN-FPN.yaml).
    assert cfg.MODEL.RESNETS.STEM == "deep" and cfg.MODEL.RESNETS.AVG_DOWN
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_family_fpn_backbone"
    assert cfg.SOLVER.OPTIMIZER == "SGD"


def test_trained_weights_are_refused_honestly():
    with pytest.raises(ValueError) as e:
        model_zoo.get_config("COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml", trained=True)
    message = str(e.value)
    assert "publishes no COCO-trained detectors" in message
    assert "detectron2://ImageNetPretrained/MSRA/R-50.pkl" in message
    assert "get_checkpoint_url('COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml')" in message
    with pytest.raises(ValueError, match="train it, then load its model_final.pth"):
        model_zoo.get_config("COCO-Detection/faster_rcnn_SE_R_101_FPN_3x.yaml", trained=True)
    # Every config said to build detectron2's network is one of ours with its default keys.
    for name in model_zoo.DETECTRON2_NETWORKS:
        resnets = model_zoo.get_config(name).MODEL.RESNETS
        assert (resnets.SHORTCUT, resnets.BLOCK_ORDER, resnets.STEM) == ("B", "post", "basic")


def _weights(name):
    with open(model_zoo.get_config_file(name)) as f:
        return yaml.safe_load(f)["MODEL"]["WEIGHTS"]


def test_checkpoint_url_is_the_https_url_of_the_initial_weights(monkeypatch):
    monkeypatch.delenv(ZOO_BASE_URL_ENV, raising=False)
    zoo = "COCO-Detection/faster_rcnn_R_152_FPN_3x.yaml"
    entry = CATALOG[_weights(zoo).split("://")[1]]
    assert model_zoo.get_checkpoint_url(zoo) == entry.url and entry.url.startswith("https://")
    msra = "COCO-Detection/faster_rcnn_R_50_FPN_3x.yaml"
    assert model_zoo.get_checkpoint_url(msra) == (
        DETECTRON2_BASE_URL + _weights(msra)[len("detectron2://") :]
    )
    # Through _BASE_: faster_rcnn_R101.yaml names no weights itself.
    assert model_zoo.get_checkpoint_url("faster_rcnn_R101.yaml") == model_zoo.get_checkpoint_url(
        "COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"
    )
    monkeypatch.setenv(ZOO_BASE_URL_ENV, "https://mirror.example/zoo/")
    assert model_zoo.get_checkpoint_url(zoo) == (
        "https://mirror.example/zoo/" + entry.url.rsplit("/", 1)[1]
    )
    # fetch_url, which it uses: a local path has none.
    assert fetch_url("/data/R-50.pkl") is None and fetch_url("R-50.pkl") is None
    assert fetch_url("https://example.com/w.pth") == "https://example.com/w.pth"
    with pytest.raises(ValueError, match="trains from random initialisation"):
        model_zoo.get_checkpoint_url("COCO-Detection/faster_rcnn_SE_R_101_FPN_3x.yaml")

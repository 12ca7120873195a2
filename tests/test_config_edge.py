"""The config edge (resnet_backbones.config): one check, named by argument in Python and by key in
a config; the norm decided once; the clean backbone of a config; and no other module reading
MODEL.RESNETS or MODEL.REXNET."""

import inspect
import io
import logging
import os
import tokenize

import pytest
import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling import build_backbone
from torch import nn

from resnet_backbones import config, presets
from resnet_backbones.config import (
    PLAIN_BACKBONES,
    RESNETS_ARGUMENTS,
    RESNETS_NAMES,
    REXNET_NAMES,
    build_clean_backbone,
    clean_backbone_config,
    resnet_spec_from_config,
    rexnet_arguments,
)
from resnet_backbones.modeling import ResNetFamily, ReXNet, build_classifier, resnet_spec
from resnet_backbones.utils import ArgumentNames, config_get

from .helpers import REPO

DEPTHS_MESSAGE = "is not valid; valid values: 18, 34, 50, 101, 152, 200, '6n+2 or 6n+4 (CIFAR)'"


# --------------------------------------------------------------------------------------------
# One check, two names
# --------------------------------------------------------------------------------------------
def _config_error(cfg, **keys):
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    for key, value in keys.items():
        setattr(cfg.MODEL.RESNETS, key, value)
    with pytest.raises(ValueError) as e:
        build_backbone(cfg)
    return str(e.value)


def _python_error(function, *args, **kwargs):
    with pytest.raises(ValueError) as e:
        function(*args, **kwargs)
    return str(e.value)


def test_a_bad_depth_names_the_argument_in_python_and_the_key_in_a_config(cfg):
    assert _python_error(resnet_spec, 77) == f"depth = 77 {DEPTHS_MESSAGE}"
    assert _config_error(cfg, DEPTH=77) == f"MODEL.RESNETS.DEPTH = 77 {DEPTHS_MESSAGE}"


def test_a_message_about_several_arguments_names_each_the_same_way(cfg):
    kwargs = dict(res2_out_channels=64, num_groups=32, width_per_group=4)
    assert _python_error(resnet_spec, 18, **kwargs) == (
        "num_groups = 32 and width_per_group = 4 are not valid for depth 18: basic blocks have "
        "no grouped bottleneck; keep num_groups 1 and width_per_group 64"
    )
    keys = {k.upper(): v for k, v in kwargs.items()}
    assert _config_error(cfg, DEPTH=18, **keys) == (
        "MODEL.RESNETS.NUM_GROUPS = 32 and WIDTH_PER_GROUP = 4 are not valid for DEPTH 18: basic "
        "blocks have no grouped bottleneck; keep NUM_GROUPS 1 and WIDTH_PER_GROUP 64"
    )


def test_backbone_arguments_are_named_by_their_keys_in_a_config(cfg):
    spec = resnet_spec(50)
    assert _python_error(ResNetFamily, spec, freeze_at=6) == (
        "freeze_at = 6 is not valid; valid values: 0, 1, 2, 3, 4, 5"
    )
    cfg.MODEL.BACKBONE.FREEZE_AT = 6
    assert _config_error(cfg) == (
        "MODEL.BACKBONE.FREEZE_AT = 6 is not valid; valid values: 0, 1, 2, 3, 4, 5"
    )
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    valid = "valid values: 'stem', 'res2', 'res3', 'res4', 'res5'"
    assert _python_error(ResNetFamily, spec, out_features=["c5"]) == (
        f"out_features entry = 'c5' is not valid; {valid}"
    )
    assert _config_error(cfg, OUT_FEATURES=["c5"]) == (
        f"MODEL.RESNETS.OUT_FEATURES entry = 'c5' is not valid; {valid}"
    )


def test_rexnet_arguments_are_named_by_their_keys_in_a_config(cfg):
    assert _python_error(ReXNet, width_mult=-1) == (
        "width_mult = -1 is not valid; it must be a positive number"
    )
    cfg.MODEL.BACKBONE.NAME = "build_rexnet_backbone"
    cfg.MODEL.REXNET.WIDTH_MULT = -1
    with pytest.raises(ValueError) as e:
        build_backbone(cfg)
    assert str(e.value) == "MODEL.REXNET.WIDTH_MULT = -1 is not valid; it must be a positive number"


def test_every_argument_has_its_key():
    """The names cover exactly the typed API's arguments, and each key exists in the config."""
    from detectron2.config import get_cfg

    cfg = config.add_resnet_backbones_config(get_cfg())
    spec_arguments = set(inspect.signature(resnet_spec).parameters) - {"names"}
    assert set(RESNETS_ARGUMENTS) == spec_arguments
    for argument in spec_arguments | {"out_features", "freeze_at"}:
        key = RESNETS_NAMES[argument]
        assert key != argument, argument
        config_get(cfg, key)  # raises if the config lacks the key
    rexnet_arguments_with_keys = set(REXNET_NAMES.keys)
    assert rexnet_arguments_with_keys <= set(inspect.signature(ReXNet).parameters)
    for argument in rexnet_arguments_with_keys:
        config_get(cfg, REXNET_NAMES[argument])
    assert REXNET_NAMES["depth_mult"] == "depth_mult"  # no key: its Python name


def test_argument_names():
    names = ArgumentNames({"depth": "MODEL.RESNETS.DEPTH"})
    assert (names["depth"], names.short("depth")) == ("MODEL.RESNETS.DEPTH", "DEPTH")
    assert (names["stem"], names.short("stem")) == ("stem", "stem")
    assert (ArgumentNames()["depth"], ArgumentNames().short("depth")) == ("depth", "depth")


# --------------------------------------------------------------------------------------------
# The norm, decided once
# --------------------------------------------------------------------------------------------
def test_syncbn_is_resolved_at_the_edge_naming_the_key(cfg, caplog):
    cfg.MODEL.RESNETS.NORM = "SyncBN"
    cfg.MODEL.REXNET.NORM = "SyncBN"
    with caplog.at_level(logging.WARNING):
        spec = resnet_spec_from_config(cfg)
        arguments = rexnet_arguments(cfg)
    assert spec.options.norm == "BN"
    assert arguments["norm"] == "BN"
    assert "MODEL.RESNETS.NORM = 'SyncBN' needs a distributed run" in caplog.text
    assert "MODEL.REXNET.NORM = 'SyncBN' needs a distributed run" in caplog.text
    # The typed API takes the norm as given.
    assert resnet_spec(50, norm="SyncBN").options.norm == "SyncBN"


# --------------------------------------------------------------------------------------------
# The clean backbone of a config
# --------------------------------------------------------------------------------------------
def _keys(cfg, section):
    return (
        cfg.MODEL.BACKBONE.NAME,
        cfg.MODEL.BACKBONE.FREEZE_AT,
        list(config_get(cfg, f"{section}.OUT_FEATURES")),
        config_get(cfg, f"{section}.NORM"),
    )


@pytest.mark.parametrize(
    "name, plain",
    [
        ("build_resnet_family_backbone", "build_resnet_family_backbone"),
        ("build_resnet_family_fpn_backbone", "build_resnet_family_backbone"),
        ("build_resnet_family_retinanet_fpn_backbone", "build_resnet_family_backbone"),
    ],
)
def test_clean_config_of_a_resnet(cfg, name, plain):
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 2
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res4"]
    cfg.freeze()
    all_stages = ["res2", "res3", "res4", "res5"]
    assert _keys(clean_backbone_config(cfg), "MODEL.RESNETS") == (plain, 0, all_stages, "FrozenBN")
    last = clean_backbone_config(cfg, features="last", trainable_norms=True)
    assert _keys(last, "MODEL.RESNETS") == (plain, 0, ["res5"], "BN")
    # A copy: the given config is unchanged.
    assert _keys(cfg, "MODEL.RESNETS") == (name, 2, ["res4"], "FrozenBN")


def test_clean_config_of_a_cifar_network_stops_at_res4(cfg):
    presets.apply_preset(cfg, "CIFAR-ResNet-20")
    cfg.MODEL.RESNETS.NORM = "SyncBN"  # not FrozenBN: trainable_norms leaves it as it is
    all_stages = clean_backbone_config(cfg, trainable_norms=True)
    assert _keys(all_stages, "MODEL.RESNETS")[2:] == (["res2", "res3", "res4"], "SyncBN")
    assert clean_backbone_config(cfg, features="last").MODEL.RESNETS.OUT_FEATURES == ["res4"]


@pytest.mark.parametrize("name", ["build_rexnet_backbone", "build_rexnet_fpn_backbone"])
def test_clean_config_of_a_rexnet(cfg, name):
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 3
    cfg.MODEL.REXNET.OUT_FEATURES = ["res3"]
    cfg.MODEL.REXNET.NORM = "FrozenBN"
    clean = clean_backbone_config(cfg, trainable_norms=True)
    expected = ("build_rexnet_backbone", 0, ["res2", "res3", "res4", "res5"], "BN")
    assert _keys(clean, "MODEL.REXNET") == expected
    last = clean_backbone_config(cfg, features="last")
    assert _keys(last, "MODEL.REXNET") == ("build_rexnet_backbone", 0, ["res5"], "FrozenBN")


def test_clean_config_refuses_what_it_cannot_clean(cfg):
    # detectron2's default builder is not one of ours.
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_backbone"
    with pytest.raises(ValueError) as e:
        clean_backbone_config(cfg)
    assert str(e.value) == (
        "MODEL.BACKBONE.NAME = 'build_resnet_backbone' is not valid; valid values: "
        + ", ".join(repr(n) for n in PLAIN_BACKBONES)
    )
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_backbone"
    with pytest.raises(ValueError) as e:
        clean_backbone_config(cfg, features="first")
    assert str(e.value) == "features = 'first' is not valid; valid values: 'all', 'last'"
    cfg.MODEL.RESNETS.DEPTH = 77
    with pytest.raises(ValueError) as e:
        clean_backbone_config(cfg)
    assert str(e.value) == f"MODEL.RESNETS.DEPTH = 77 {DEPTHS_MESSAGE}"


def test_plain_backbones_cover_every_registered_builder():
    assert set(PLAIN_BACKBONES.values()) == set(config.FPN_BACKBONES)
    assert set(PLAIN_BACKBONES) == {
        "build_resnet_family_backbone",
        "build_resnet_family_fpn_backbone",
        "build_resnet_family_retinanet_fpn_backbone",
        "build_rexnet_backbone",
        "build_rexnet_fpn_backbone",
    }
    assert presets.FPN_BACKBONES is config.FPN_BACKBONES


@pytest.mark.parametrize(
    "name, backbone_class, first_conv",
    [
        ("build_resnet_family_fpn_backbone", ResNetFamily, "stem.conv1.weight"),
        ("build_rexnet_fpn_backbone", ReXNet, "stem.0.conv.weight"),
    ],
)
def test_build_clean_backbone(cfg, name, backbone_class, first_conv):
    cfg.MODEL.BACKBONE.NAME = name
    cfg.MODEL.BACKBONE.FREEZE_AT = 5
    cfg.MODEL.PIXEL_MEAN = [0.0, 0.0]  # two input channels
    cfg.MODEL.PIXEL_STD = [1.0, 1.0]
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.REXNET.NORM = "FrozenBN"
    backbone = build_clean_backbone(cfg, trainable_norms=True)
    assert type(backbone) is backbone_class
    assert list(backbone.output_shape()) == ["res2", "res3", "res4", "res5"]
    assert backbone.state_dict()[first_conv].shape[1] == 2
    assert all(p.requires_grad for p in backbone.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in backbone.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in backbone.modules())
    frozen_norms = build_clean_backbone(cfg, features="last")
    assert list(frozen_norms.output_shape()) == ["res5"]
    assert any(isinstance(m, FrozenBatchNorm2d) for m in frozen_norms.modules())


def test_a_classifier_of_an_fpn_config_pools_the_plain_backbones_last_stage(cfg):
    cfg.MODEL.BACKBONE.NAME = "build_resnet_family_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    model = build_classifier(cfg, num_classes=7)
    assert type(model.backbone) is ResNetFamily
    assert (model.fc.in_features, model.fc.out_features) == (512, 7)
    assert tuple(model(torch.zeros(1, 3, 32, 32)).shape) == (1, 7)


# --------------------------------------------------------------------------------------------
# One reader
# --------------------------------------------------------------------------------------------
def test_only_the_config_edge_reads_our_config_sections():
    """In code (not strings or comments), ``.RESNETS`` and ``.REXNET`` appear in config.py only."""
    package = os.path.join(REPO, "resnet_backbones")
    readers = set()
    for root, _, files in os.walk(package):
        for f in files:
            if not f.endswith(".py"):
                continue
            path = os.path.join(root, f)
            with open(path, encoding="utf-8") as source:
                tokens = list(tokenize.generate_tokens(io.StringIO(source.read()).readline))
            for previous, token in zip(tokens, tokens[1:]):
                if previous.string == "." and token.string in ("RESNETS", "REXNET"):
                    readers.add(os.path.relpath(path, REPO))
    assert readers == {os.path.join("resnet_backbones", "config.py")}

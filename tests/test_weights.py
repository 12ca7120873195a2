"""Pretrained weights end to end: safe reading, format detection, MODEL.WEIGHTS loading with
numerical parity per source format, strict backbone and metadata checks, the model zoo served
from 127.0.0.1, and tools/convert_weights.py."""

import hashlib
import io
import os
import pickle
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import hooks
from detectron2.modeling import build_model

from resnet_backbones import add_resnet_backbones_config
from resnet_backbones.convert import TORCHVISION_RESNET, convert_state_dict
from resnet_backbones.data.shapes import ensure_shapes
from resnet_backbones.engine import Trainer, load_config
from resnet_backbones.modeling import build_classifier
from resnet_backbones.weights import catalog
from resnet_backbones.weights.archs import ARCHS, arch_config, build_backbone, config_yaml
from resnet_backbones.weights.checkpoint import (
    ZOO_BASE_URL_ENV,
    FamilyCheckpointer,
    catalog_entry_for_url,
)
from resnet_backbones.weights.conversion import convert_file
from resnet_backbones.weights.download import CACHE_ENV
from resnet_backbones.weights.entry import WeightsEntry
from resnet_backbones.weights.errors import (
    ChecksumError,
    IncompatibleWeightsError,
    UnsafeWeightsError,
    WeightsFormatError,
)
from resnet_backbones.weights.formats import (
    FORMATS,
    backbone_state_dict,
    classify,
    read_weights,
)
from resnet_backbones.weights.metadata import check_metadata
from resnet_backbones.weights.safe_pickle import load_pickle

from .conftest import REPO, randomize_norm_statistics
from .test_detectron2_parity import _image as _detection_image
from .test_detectron2_parity import _to_caffe2_names
from .test_reference_parity import _timm_stages, _torchvision_stages
from .test_train_net import QUICKSTART, TINY, _tiny_cfg
from .weights_server import WeightsServer

STAGES = ["res2", "res3", "res4", "res5"]
TORCHVISION_INPUT = [
    "INPUT.FORMAT", "RGB",
    "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
    "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
]  # fmt: skip


def _cfg(form="FPN", opts=()):
    cfg = get_cfg()
    add_resnet_backbones_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, f"configs/Base-RCNN-{form}.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(list(opts))
    return cfg


def _r18(norm="BN"):
    return [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.NORM", norm,
    ]  # fmt: skip


def _load(cfg, path=None):
    """build_model(cfg), then MODEL.WEIGHTS through FamilyCheckpointer, as the Trainer does."""
    model = build_model(cfg).eval()
    FamilyCheckpointer(model, cfg=cfg).load(path or cfg.MODEL.WEIGHTS)
    return model


def _assert_stages_close(model, expected, x):
    with torch.no_grad():
        actual = model.backbone.bottom_up(x)
    for stage, exp in zip(STAGES, expected):
        assert actual[stage].shape == exp.shape, stage
        rel = (actual[stage] - exp).abs().max() / exp.abs().max()
        assert rel <= 1e-5, f"{stage}: relative error {rel:.2e}"


def _torchvision_reference(name):
    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomize_norm_statistics(reference)
    return reference


class _OpenForWriting:
    """Unpickling this calls open(path, "w"): it would create the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _System:
    """Unpickling this runs a shell command that would create the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _evil_pkl(tmp_path, payload=_OpenForWriting):
    marker = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": payload(marker)}
    path.write_bytes(pickle.dumps(blobs, protocol=2))
    return path, marker


# --------------------------------------------------------------------------------------------
# Safe reading
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_pickle_reads_arrays_numbers_strings_and_containers(protocol):
    data = {
        "conv1_w": np.random.randn(4, 3, 3, 3).astype(np.float32),
        "res2_0_branch2a_bn_s": np.arange(4, dtype=np.float64),
        "__author__": "MSRA",
        "counts": OrderedDict(a=np.int64(3), b=[1, 2.5, (3, "x")]),
        "tags": {"a", "b"},
        "raw": b"\x00\xff",
    }
    loaded = load_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert loaded.keys() == data.keys()
    for key in ("conv1_w", "res2_0_branch2a_bn_s"):
        assert loaded[key].dtype == data[key].dtype and np.array_equal(loaded[key], data[key])
    assert loaded["counts"] == data["counts"] and isinstance(loaded["counts"], OrderedDict)
    assert (loaded["tags"], loaded["raw"], loaded["__author__"]) == (
        {"a", "b"},
        b"\x00\xff",
        "MSRA",
    )


@pytest.mark.parametrize(
    "payload, refused",
    [(_OpenForWriting, r"(builtins|io)\.open"), (_System, r"(posix|os)\.system")],
)
def test_a_malicious_pickle_is_refused_before_it_runs(tmp_path, payload, refused):
    path, marker = _evil_pkl(tmp_path, payload)
    for read in (load_pickle, read_weights):
        with pytest.raises(UnsafeWeightsError, match=refused) as info:
            read(str(path))
        assert str(path) in str(info.value)
    assert not marker.exists()


def test_a_malicious_torch_file_is_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": _OpenForWriting(marker)}, path)
    with pytest.raises(UnsafeWeightsError, match=r"refused to load (builtins|io)\.open") as info:
        read_weights(str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()


def test_a_malicious_pickle_through_model_weights_and_the_trainer(tmp_path):
    path, marker = _evil_pkl(tmp_path)
    with pytest.raises(UnsafeWeightsError, match=r"(builtins|io)\.open"):
        _load(_cfg(opts=_r18() + ["MODEL.WEIGHTS", str(path)]))
    assert not marker.exists()

    root = ensure_shapes("val", TINY)
    if "shapes_tiny_train" not in DatasetCatalog.list():
        register_coco_instances(
            "shapes_tiny_train", {}, str(root / "annotations.json"), str(root / "images")
        )
    cfg = _tiny_cfg(tmp_path / "run", "shapes_tiny_train", "shapes_tiny_train")
    cfg.MODEL.WEIGHTS = str(path)
    trainer = Trainer(cfg)
    assert isinstance(trainer.checkpointer, FamilyCheckpointer)
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert periodic and all(h.checkpointer is trainer.checkpointer for h in periodic)
    with pytest.raises(UnsafeWeightsError, match=r"(builtins|io)\.open"):
        trainer.resume_or_load(resume=False)
    assert not marker.exists()


def test_a_malicious_pickle_through_train_net_eval_only(tmp_path):
    path, marker = _evil_pkl(tmp_path)
    cmd = [
        sys.executable, os.path.join(REPO, "tools/train_net.py"),
        "--config", QUICKSTART, "--eval-only",
        "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "UnsafeWeightsError" in proc.stderr and "io.open" in proc.stderr
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.pth", b"", "the weights file is empty"),
        ("empty.pkl", b"", "the weights file is empty"),
        ("garbage.pkl", b"\x80\x04garbage that is not a pickle", "nor a readable pickle"),
        ("garbage.pth", b"not a torch file at all", "neither a torch.save archive nor"),
        ("truncated.pth", "truncated", "not a readable torch.save file"),
        ("weights.txt", b"conv1.weight 1 2 3", "neither a torch.save archive nor"),
        ("list.pkl", pickle.dumps([1, 2, 3]), "holds a list, not a dict"),
        (
            "odd.pkl",
            pickle.dumps({"foo.bar": np.zeros(2), "baz": np.zeros(1)}),
            "unknown weights format",
        ),
    ],
)
def test_unreadable_or_unknown_files_are_errors_naming_the_path(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "truncated":
        buffer = io.BytesIO()
        torch.save({"w": torch.zeros(1000)}, buffer)
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(WeightsFormatError, match=message) as info:
        read_weights(str(path))
    assert str(path) in str(info.value)
    if name == "odd.pkl":
        assert "'foo.bar'" in str(info.value) and all(f in str(info.value) for f in FORMATS)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere.pth"):
        read_weights(str(tmp_path / "nothere.pth"))
    cfg = _cfg(opts=_r18() + ["MODEL.WEIGHTS", str(tmp_path / "nothere.pth")])
    with pytest.raises(FileNotFoundError, match=r"MODEL.WEIGHTS = .*nothere.pth.*: no such file"):
        _load(cfg)


def test_the_kind_of_file_is_read_from_its_content_not_its_name(tmp_path):
    """A Caffe2 pickle named .pth, a torch.save archive named .pkl, torch.save's legacy format,
    and a file without extension are all read by what they hold."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    caffe2 = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": np.zeros(1)}
    (tmp_path / "caffe2.pth").write_bytes(pickle.dumps(caffe2, protocol=2))
    torch.save(state, tmp_path / "archive.pkl")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint")
    assert read_weights(str(tmp_path / "caffe2.pth")).format == "msra"
    for name in ("archive.pkl", "legacy.pth"):
        weights = read_weights(str(tmp_path / name))
        assert weights.format == "torchvision"
        assert torch.equal(
            weights.state_dict["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"]
        )
    # A torchvision state dict under "model" (DeiT-style training scripts) is not a detectron2 model.
    weights = read_weights(str(tmp_path / "checkpoint"))
    assert (weights.format, weights.wrapper, weights.extra) == (
        "torchvision",
        "model",
        {"epoch": 3},
    )


# --------------------------------------------------------------------------------------------
# Format detection
# --------------------------------------------------------------------------------------------
# The SE and Res2Net tables extend torchvision's: they read its files too.
TV_FAMILIES = ("resnet", "seresnet", "res2net")


def _detection_cases():
    tv = torchvision.models.resnet18(weights=None).state_dict()
    ours = convert_state_dict(tv, TORCHVISION_RESNET)
    c2 = {"conv1_w": np.zeros(1), "res_conv1_bn_s": np.zeros(1), "res2_0_branch2a_w": np.zeros(1)}
    return {
        "torchvision": (tv, "torchvision", TV_FAMILIES, None),
        "timm training file": ({"state_dict": tv, "epoch": 3}, "torchvision", TV_FAMILIES, "state_dict"),
        "msra ImageNet": ({**c2, "fc1000_w": np.zeros(1)}, "msra", (), None),
        "Detectron1": ({"blobs": c2, "cfg": "..."}, "msra", (), "blobs"),
        "detectron2 zoo": (
            {"model": {"backbone.bottom_up." + k: v for k, v in ours.items()}, "__author__": "x"},
            "detectron2", (), "model",
        ),
        "detectron2 bare": (ours, "detectron2", (), None),
        "ours": ({"model": ours, "metadata": {"arch": "resnet18"}}, "resnet_backbones", (), "model"),
        "pycls": ({"model_state": {"stem.conv.weight": torch.zeros(1)}}, "pycls", (), "model_state"),
    }  # fmt: skip


@pytest.mark.parametrize("case", list(_detection_cases()))
def test_the_format_is_detected_from_the_content(case):
    checkpoint, fmt, families, wrapper = _detection_cases()[case]
    weights = classify(checkpoint)
    assert (weights.format, weights.families, weights.wrapper) == (fmt, families, wrapper)


def test_timm_resnet_d_is_detected_by_its_deep_stem():
    timm = pytest.importorskip("timm")
    weights = classify(timm.create_model("resnet50d", pretrained=False).state_dict())
    assert (weights.format, weights.families) == ("timm", ("resnet_d",))
    assert weights.implied_metadata == {"input_format": "RGB", "stride_in_1x1": False}


# --------------------------------------------------------------------------------------------
# MODEL.WEIGHTS: numerical parity per source format
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, opts",
    [
        ("resnet18", _r18("BN")),
        ("resnet50", ["MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.NORM", "FrozenBN"]),
    ],
)
def test_torchvision_weights_through_model_weights(tmp_path, caplog, name, opts):
    reference = _torchvision_reference(name)
    path = tmp_path / f"{name}-00000000.pth"
    torch.save(reference.state_dict(), path)
    cfg = _cfg(opts=opts + TORCHVISION_INPUT + ["MODEL.WEIGHTS", str(path)])
    with caplog.at_level("INFO", logger="resnet_backbones.weights.checkpoint"):
        model = _load(cfg)
    x = torch.randn(1, 3, 67, 80)
    with torch.no_grad():
        expected = _torchvision_stages(reference, x)
    _assert_stages_close(model, expected, x)
    summary = [
        r.getMessage() for r in caplog.records if "holds the backbone only" in r.getMessage()
    ]
    assert len(summary) == 1
    assert (
        "proposal_generator.rpn_head.* (" in summary[0] and "roi_heads.box_head.* (" in summary[0]
    )


def test_timm_resnet_d_weights_through_model_weights(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("resnet50d", pretrained=False).eval()
    randomize_norm_statistics(reference)
    path = tmp_path / "resnet50d.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 100}, path)
    opts = ["MODEL.RESNETS.STEM", "deep", "MODEL.RESNETS.AVG_DOWN", "True"] + TORCHVISION_INPUT
    opts += ["MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.WEIGHTS", str(path)]
    model = _load(_cfg(opts=opts))
    x = torch.randn(1, 3, 67, 80)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    _assert_stages_close(model, expected, x)


def _timm_expected(name, reference, x):
    """The stage outputs (res2..res5) that ours must reproduce from a timm model."""
    if name.startswith("rexnet"):
        last, intermediates = reference.forward_intermediates(x, indices=[0, 1, 2, 3])
        return [*intermediates[1:], last]
    return _timm_stages(name, reference, x)


TIMM_ARCHS = [n for n, a in ARCHS.items() if a.source == "timm"]


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_timm_weights_through_model_weights_and_the_converter(tmp_path, name):
    """Each timm family, as a file in timm's names: loaded by MODEL.WEIGHTS into the config its
    fragment builds, and converted by tools/convert_weights.py's function; both reproduce timm's
    stage outputs."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    randomize_norm_statistics(reference)
    path = tmp_path / f"{name}-0123abcd.pth"
    torch.save(reference.state_dict(), path)
    arch = ARCHS[name]
    x = torch.randn(1, 3, 67, 80)
    with torch.no_grad():
        expected = _timm_expected(name, reference, x)

    cfg = _cfg()
    cfg.merge_from_other_cfg(cfg.load_cfg(config_yaml(arch.config)))
    assert classify(reference.state_dict()).format == "timm"
    cfg.MODEL.WEIGHTS = str(path)
    _assert_stages_close(_load(cfg), expected, x)

    out, fragment = convert_file(str(path), str(tmp_path / "out.pth"), source="timm", arch=name)
    converted = _cfg()
    converted.merge_from_file(fragment)
    _assert_stages_close(_load(converted, out), expected, x)


def _msra_source(cfg):
    """An R-50 (stride in the 1x1 conv, FrozenBN) whose norms are MSRA's affine y = s * x + b."""
    source = build_model(cfg).eval()
    randomize_norm_statistics(source)
    for name, buffer in source.backbone.bottom_up.named_buffers():
        if name.endswith("running_mean"):
            buffer.zero_()
        elif name.endswith("running_var"):
            buffer.fill_(1 - 1e-5)  # FrozenBN's eps: scale = s exactly
    return source


def test_msra_pkl_through_model_weights(tmp_path, caplog):
    cfg = _cfg(opts=["MODEL.RESNETS.DEPTH", "50"])
    source = _msra_source(cfg)
    blobs = _to_caffe2_names(source.backbone.bottom_up.state_dict())
    blobs.update(fc1000_w=np.zeros((1000, 2048), np.float32), fc1000_b=np.zeros(1000, np.float32))
    # detectron2 reports a "stem.conv1.bias" in MSRA's files that its bias-free conv does not use.
    blobs["conv1_b"] = np.zeros(64, np.float32)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(blobs, protocol=2))  # as Python 2 wrote them
    cfg.MODEL.WEIGHTS = str(path)
    with caplog.at_level("WARNING", logger="resnet_backbones.weights.checkpoint"):
        model = _load(cfg)
    assert any("backbone.bottom_up.stem.conv1.bias" in r.getMessage() for r in caplog.records)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = [source.backbone.bottom_up(x)[s] for s in STAGES]
    _assert_stages_close(model, expected, x)


@pytest.mark.parametrize("layout", ["prefixed .pkl", "bare .pth", "bare .pth, heuristics"])
def test_detectron2_checkpoints_through_model_weights(tmp_path, layout):
    form = "FPN" if layout == "prefixed .pkl" else "C4"
    cfg = _cfg(form, _r18("FrozenBN"))
    source = build_model(cfg).eval()
    randomize_norm_statistics(source)
    full = source.state_dict()
    if layout == "prefixed .pkl":
        path = tmp_path / "model_final_abc.pkl"
        state = {k: v.numpy() for k, v in full.items()}
        path.write_bytes(pickle.dumps({"model": state, "__author__": "test"}, protocol=2))
        expected = full
    else:
        bare = {k[len("backbone.") :]: v for k, v in full.items() if k.startswith("backbone.")}
        bare.update({k[len("roi_heads.") :]: v for k, v in full.items() if ".res5." in k})
        checkpoint = {"model": bare}
        if layout.endswith("heuristics"):
            checkpoint.update(__author__="torchvision", matching_heuristics=True)
        path = tmp_path / "r18_backbone.pth"
        torch.save(checkpoint, path)
        expected = {k: v for k, v in full.items() if k.startswith(("backbone.", "roi_heads.res5."))}
        assert any(k.startswith("roi_heads.res5.") for k in expected)
    loaded = _load(cfg, str(path)).state_dict()
    for name, tensor in expected.items():
        assert torch.equal(loaded[name], tensor), name


def test_a_detectron2_coco_checkpoint_gives_detectron2s_own_detections(tmp_path):
    """A model_final_*.pkl as detectron2's model zoo publishes it (numpy arrays under "model")
    loads into configs/faster_rcnn_R101.yaml through MODEL.WEIGHTS, and the detector then gives
    exactly the detections of detectron2's built-in R101-FPN loading the same file with
    detectron2's own checkpointer."""
    cfg = load_config(
        os.path.join(REPO, "configs/faster_rcnn_R101.yaml"),
        ["MODEL.DEVICE", "cpu", "INPUT.MIN_SIZE_TEST", "224", "INPUT.MAX_SIZE_TEST", "320",
         "MODEL.RPN.POST_NMS_TOPK_TEST", "200", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0"],
    )  # fmt: skip
    builtin_cfg = cfg.clone()
    builtin_cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"  # detectron2's own
    source = build_model(builtin_cfg).eval()
    randomize_norm_statistics(source)
    path = tmp_path / "model_final_f6e8b1.pkl"
    state = {k: v.numpy() for k, v in source.state_dict().items()}
    path.write_bytes(pickle.dumps({"model": state, "__author__": "Detectron2 Model Zoo"}, 2))
    del source

    reference = build_model(builtin_cfg).eval()
    DetectionCheckpointer(reference).load(str(path))  # detectron2's loader (plain pickle)
    cfg.MODEL.WEIGHTS = str(path)
    ours = _load(cfg)
    assert type(ours.backbone.bottom_up).__name__ == "ResNetFamily"

    inputs = [_detection_image()]
    with torch.no_grad():
        expected = reference(inputs)[0]["instances"]
        actual = ours(inputs)[0]["instances"]
    assert len(expected) > 0
    assert torch.equal(actual.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(actual.scores, expected.scores)
    assert torch.equal(actual.pred_classes, expected.pred_classes)


# --------------------------------------------------------------------------------------------
# Strictness: backbone and metadata
# --------------------------------------------------------------------------------------------
def test_missing_or_misshapen_backbone_parameters_are_an_error_and_load_nothing(tmp_path):
    state = _torchvision_reference("resnet18").state_dict()
    state = {k: v for k, v in state.items() if not k.startswith("layer4.")}
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = build_model(_cfg(opts=_r18())).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError) as info:
        FamilyCheckpointer(model).load(str(path))
    message = str(info.value)
    assert str(path) in message and "nothing was loaded" in message
    assert "backbone.bottom_up.res5.0.conv1.weight" in message and "missing" in message
    assert (
        "backbone.bottom_up.res2.0.conv1.weight (64, 64, 1, 1) in the file, (64, 64, 3, 3)"
        in message
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _converted(tmp_path, name="resnet18"):
    src = tmp_path / f"{name}-tv.pth"
    torch.save(_torchvision_reference(name).state_dict(), src)
    return convert_file(
        str(src), str(tmp_path / f"{name}-ours.pth"), source="torchvision", arch=name
    )


def test_the_config_must_agree_with_the_weights_metadata(tmp_path):
    out, _ = _converted(tmp_path)
    cfg = _cfg(opts=_r18())  # detectron2's defaults: BGR, MSRA's pixel mean and std
    with pytest.raises(IncompatibleWeightsError) as info:
        _load(cfg, out)
    message = str(info.value)
    assert "INPUT.FORMAT is 'BGR' in the config but 'RGB' in the weights" in message
    assert "MODEL.PIXEL_STD is [1.0, 1.0, 1.0] in the config but [58.395, 57.12, 57.375]" in message
    _load(_cfg(opts=_r18() + TORCHVISION_INPUT), out)  # agreeing: loads


def test_torchvision_weights_need_rgb_and_the_stride_in_the_3x3_conv(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    with pytest.raises(IncompatibleWeightsError) as info:
        _load(_cfg(opts=["MODEL.RESNETS.DEPTH", "50"]), str(path))
    assert "STRIDE_IN_1X1 is True in the config but False" in str(info.value)
    assert "INPUT.FORMAT is 'BGR' in the config but 'RGB'" in str(info.value)
    # Basic blocks have no 1x1 conv: detectron2's default STRIDE_IN_1X1 True is moot there.
    path18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path18)
    _load(
        _cfg(opts=_r18() + TORCHVISION_INPUT + ["MODEL.RESNETS.STRIDE_IN_1X1", "True"]), str(path18)
    )


@pytest.mark.parametrize(
    "source, opts",
    [
        ("resnet101", ["MODEL.RESNETS.DEPTH", "50"]),  # a deeper network: res4.6 .. res4.22
        ("seresnet50", ["MODEL.RESNETS.DEPTH", "50"]),  # SE layers the plain model lacks
    ],
)
def test_weights_of_a_bigger_network_are_an_error_not_silently_dropped(tmp_path, source, opts):
    if source.startswith("se"):
        timm = pytest.importorskip("timm")
        state = timm.create_model(source, pretrained=False).state_dict()
    else:
        state = torchvision.models.resnet101(weights=None).state_dict()
    path = tmp_path / f"{source}.pth"
    torch.save(state, path)
    cfg = _cfg(opts=opts + TORCHVISION_INPUT + ["MODEL.RESNETS.STRIDE_IN_1X1", "False"])
    model = build_model(cfg).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError, match="modules the model does not have") as info:
        FamilyCheckpointer(model, cfg=cfg).load(str(path))
    # Grouped by the module the model lacks: a block of the deeper network, the SE layers.
    expected = "res4.6.* (15)" if source == "resnet101" else "backbone.bottom_up.res2.0.se.* (4)"
    assert expected in str(info.value) and "nothing was loaded" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_own_checkpoints_save_and_resume(tmp_path):
    cfg = _cfg(opts=_r18())
    model = build_model(cfg)
    randomize_norm_statistics(model)
    FamilyCheckpointer(model, str(tmp_path), cfg=cfg).save("model_0000009", iteration=9)
    target = build_model(cfg)
    extra = FamilyCheckpointer(target, str(tmp_path), cfg=cfg).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for name, tensor in model.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


# --------------------------------------------------------------------------------------------
# The model zoo: resnet_backbones://NAME, served from 127.0.0.1
# --------------------------------------------------------------------------------------------
def _resnet18_entry(name, sha256_prefix):
    """A catalog entry for a torchvision resnet18 file named with ``sha256_prefix``."""
    return WeightsEntry(
        name=name,
        url=f"https://download.example.invalid/models/resnet18-{sha256_prefix}.pth",
        source="torchvision",
        arch="resnet18",
        config=ARCHS["resnet18"].config,
        sha256_prefix=sha256_prefix,
        num_params=11689512,
        num_params_source="torchvision",
        top1=None,
        top1_source="random weights",
        test_protocol="none",
        license="Apache-2.0",
        license_source="test",
        non_commercial=False,
    )


def test_zoo_names_resolve_download_once_and_check_the_config(tmp_path, monkeypatch):
    reference = _torchvision_reference("resnet18")
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    payload = buffer.getvalue()
    prefix = hashlib.sha256(payload).hexdigest()[:8]
    filename = f"resnet18-{prefix}.pth"
    entry = _resnet18_entry("test-resnet18", prefix)
    monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    with WeightsServer() as server:
        server.files[f"/mirror/{filename}"] = payload
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/mirror/"))
        cfg = _cfg()
        cfg.merge_from_other_cfg(cfg.load_cfg(config_yaml(entry.config)))
        cfg.MODEL.WEIGHTS = "resnet_backbones://test-resnet18"
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            expected = _torchvision_stages(reference, x)
        _assert_stages_close(_load(cfg), expected, x)
        _load(cfg)
        assert server.requests[f"/mirror/{filename}"] == 1
        # detectron2's own checkpointer resolves the name too (from the cache; no conversion).
        DetectionCheckpointer(build_model(cfg)).load("resnet_backbones://test-resnet18")
        assert server.requests[f"/mirror/{filename}"] == 1

        cfg.INPUT.FORMAT = "BGR"  # the entry says RGB
        with pytest.raises(
            IncompatibleWeightsError,
            match=r"resnet_backbones://test-resnet18.*INPUT\.FORMAT is 'BGR'",
        ):
            _load(cfg)
        with pytest.raises(ValueError, match=r"no such weights.*valid names: .*test-resnet18"):
            _load(cfg, "resnet_backbones://no-such-weights")


def test_urls_in_model_weights_are_checked_against_their_hash(tmp_path, monkeypatch):
    """An http(s) MODEL.WEIGHTS whose file name carries a SHA-256 prefix (torch.hub's
    convention), and a zoo entry with a hash, are verified; a mismatch is refused and not cached."""
    reference = _torchvision_reference("resnet18")
    buffer = io.BytesIO()
    torch.save(reference.state_dict(), buffer)
    payload = buffer.getvalue()
    good = hashlib.sha256(payload).hexdigest()[:8]
    bad = "0" * 8 if good != "0" * 8 else "1" * 8
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    cfg = _cfg(opts=_r18() + TORCHVISION_INPUT)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _torchvision_stages(reference, x)
    with WeightsServer() as server:
        for prefix in (good, bad):
            server.files[f"/models/resnet18-{prefix}.pth"] = payload
        with pytest.raises(ChecksumError, match=f"expected a SHA-256 starting with {bad}"):
            _load(cfg, server.url(f"/models/resnet18-{bad}.pth"))
        assert not list(cache.rglob("*.pth"))
        _assert_stages_close(_load(cfg, server.url(f"/models/resnet18-{good}.pth")), expected, x)

        entry = _resnet18_entry("tampered-resnet18", bad)
        monkeypatch.setitem(catalog.CATALOG, entry.name, entry)
        monkeypatch.setenv(ZOO_BASE_URL_ENV, server.url("/models/"))
        with pytest.raises(ChecksumError, match=f"resnet18-{bad}.pth: expected a SHA-256"):
            _load(cfg, "resnet_backbones://tampered-resnet18")
        assert [p.name for p in cache.rglob("*.pth")] == [f"resnet18-{good}.pth"]


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_catalog_entries_are_consistent(name):
    entry = catalog.CATALOG[name]
    assert entry.name == name and entry.url.startswith("https://")
    arch = ARCHS[entry.arch]
    assert entry.source == arch.source and entry.source in FORMATS
    # The entry says what the checkpointer checks a config against.
    assert set(entry.metadata) >= {"input_format", "pixel_mean", "pixel_std"}
    assert ("stride_in_1x1" in entry.metadata) == (arch.backbone == "build_resnet_family_backbone")
    assert entry.top1 is None or 60 < entry.top1 < 90
    assert entry.top1_source and entry.test_protocol and entry.license and entry.license_source
    if entry.source in ("torchvision", "timm"):  # both publish a hash prefix in the file name
        assert entry.sha256_prefix and f"-{entry.sha256_prefix}." in entry.url
    assert entry.non_commercial == ("-NC" in entry.license)
    assert entry.non_commercial == entry.name.startswith("res2net")  # CC BY-NC-SA 4.0


@pytest.mark.parametrize("name", sorted(catalog.CATALOG))
def test_catalog_parameter_counts_equal_the_built_model(name):
    entry = catalog.CATALOG[name]
    cfg = arch_config(ARCHS[entry.arch])
    # The published count includes the norms' affine weights (FrozenBN keeps them as buffers).
    cfg.MODEL.RESNETS.NORM = cfg.MODEL.REXNET.NORM = "BN"
    model = build_classifier(cfg, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == entry.num_params


@pytest.mark.parametrize(
    "name", [n for n, e in catalog.CATALOG.items() if e.source in ("torchvision", "timm")]
)
def test_catalog_agrees_with_the_libraries_own_metadata(name):
    entry = catalog.CATALOG[name]
    if entry.source == "torchvision":
        enum = entry.top1_source.split()[1]  # "ResNet50_Weights.IMAGENET1K_V1"
        weights_enum, member = enum.split(".")
        meta_entry = getattr(getattr(torchvision.models, weights_enum), member)
        assert entry.url == meta_entry.url
        assert entry.num_params == meta_entry.meta["num_params"]
        assert entry.top1 == meta_entry.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        resize = meta_entry.transforms().resize_size[0]
        assert f"resize {resize}, center crop 224" in entry.test_protocol
    else:
        timm = pytest.importorskip("timm")
        model = timm.create_model(entry.arch, pretrained=False)
        assert entry.num_params == sum(p.numel() for p in model.parameters())
        pretrained = timm.models.get_pretrained_cfg(entry.name)
        assert pretrained is not None, entry.name  # timm knows this name.tag
        mean = [round(255 * m, 3) for m in pretrained.mean]
        std = [round(255 * s, 3) for s in pretrained.std]
        assert entry.config["MODEL.PIXEL_MEAN"] == mean
        assert entry.config["MODEL.PIXEL_STD"] == std


# --------------------------------------------------------------------------------------------
# ARCHS and tools/convert_weights.py
# --------------------------------------------------------------------------------------------
def _reference_state(arch):
    """Random weights of ``arch`` in the source library's own names."""
    if arch.source == "torchvision":
        return getattr(torchvision.models, arch.name)(weights=None).state_dict()
    if arch.source == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(arch.name, pretrained=False).state_dict()
    ours = build_backbone(arch).state_dict()
    return {**_to_caffe2_names(ours), "fc1000_w": np.zeros((1000, 2048), np.float32)}


@pytest.mark.parametrize("name", list(ARCHS))
def test_every_arch_row_builds_a_backbone_its_weights_load_into(name):
    arch = ARCHS[name]
    weights = classify(_reference_state(arch))
    assert weights.format == arch.source
    state = backbone_state_dict(weights, arch.family)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    build_backbone(arch).load_state_dict(state, strict=True)


def _configs_with_weights():
    configs = []
    for root, _, files in os.walk(os.path.join(REPO, "configs")):
        for f in sorted(files):
            if f.endswith(".yaml") and not f.startswith("Base-"):
                path = os.path.relpath(os.path.join(root, f), REPO)
                if load_config(os.path.join(REPO, path)).MODEL.WEIGHTS:
                    configs.append(path)
    return sorted(configs)


@pytest.mark.parametrize("config", _configs_with_weights())
def test_every_configs_weights_are_a_catalog_entry_that_fits_it(tmp_path, config):
    """The weights a config names are in the catalog, agree with its input format, pixel
    statistics and stride placement, and (as random weights in the publisher's names and format)
    load strictly into the model it builds."""
    cfg = load_config(os.path.join(REPO, config), ["MODEL.DEVICE", "cpu"])
    weights = cfg.MODEL.WEIGHTS
    if weights.startswith("resnet_backbones://"):
        entry = catalog.CATALOG[weights[len("resnet_backbones://") :]]
    else:
        entry = catalog_entry_for_url(weights)
    assert entry is not None, f"{weights} is not in the catalog"
    check_metadata(entry.metadata, cfg, source=weights)

    arch = ARCHS[entry.arch]
    state = _reference_state(arch)
    path = tmp_path / ("weights.pkl" if arch.source == "msra" else "weights.pth")
    if arch.source == "msra":
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        torch.save(state, path)
    model = build_model(cfg)
    FamilyCheckpointer(model, cfg=cfg).load(str(path))


def test_convert_weights_tool_round_trip(tmp_path):
    reference = _torchvision_reference("resnet18")
    src, out = tmp_path / "resnet18-5c106cde.pth", tmp_path / "R18-tv.pth"
    torch.save(reference.state_dict(), src)
    cmd = [
        sys.executable, os.path.join(REPO, "tools/convert_weights.py"),
        "--source", "torchvision", "--arch", "resnet18", str(src), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fragment = tmp_path / "R18-tv.yaml"
    assert out.is_file() and fragment.is_file()

    cfg = _cfg()
    cfg.merge_from_file(str(fragment))
    assert (cfg.INPUT.FORMAT, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1) == (
        "RGB",
        18,
        False,
    )
    cfg.MODEL.WEIGHTS = str(out)
    model = _load(cfg)
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        expected = _torchvision_stages(reference, x)
    _assert_stages_close(model, expected, x)

    metadata = torch.load(out, weights_only=True)["metadata"]
    assert metadata["source"] == "torchvision" and metadata["arch"] == "resnet18"
    assert metadata["converted_from"] == src.name

    # detectron2's own checkpointer loads it too (by name suffix).
    plain = build_model(cfg).eval()
    DetectionCheckpointer(plain).load(str(out))
    for name, tensor in model.backbone.bottom_up.state_dict().items():
        assert torch.equal(plain.backbone.bottom_up.state_dict()[name], tensor), name


def test_convert_weights_tool_refuses_a_malicious_pickle(tmp_path):
    path, marker = _evil_pkl(tmp_path)
    out = tmp_path / "R-50-converted.pth"
    cmd = [
        sys.executable, os.path.join(REPO, "tools/convert_weights.py"),
        "--source", "msra", "--arch", "R-50", str(path), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert "UnsafeWeightsError" in proc.stderr and "io.open" in proc.stderr
    assert str(path) in proc.stderr
    assert not marker.exists() and not out.exists()


def test_convert_other_sources_then_load_strictly(tmp_path):
    """msra, timm and detectron2 sources through the tool's function; each output loads into
    the model its YAML fragment builds, with the source's numbers."""
    timm = pytest.importorskip("timm")
    cases = []

    msra_cfg = _cfg(opts=["MODEL.RESNETS.DEPTH", "50"])
    msra_source = _msra_source(msra_cfg)
    msra = tmp_path / "R-50.pkl"
    msra.write_bytes(
        pickle.dumps(_to_caffe2_names(msra_source.backbone.bottom_up.state_dict()), protocol=2)
    )
    cases.append(("msra", "R-50", msra, msra_source.backbone.bottom_up))

    timm_model = timm.create_model("resnet50d", pretrained=False).eval()
    randomize_norm_statistics(timm_model)
    timm_file = tmp_path / "resnet50d_ra2-464e36ba.pth"
    torch.save(timm_model.state_dict(), timm_file)
    cases.append(("timm", "resnet50d", timm_file, None))

    d2_cfg = _cfg("C4", _r18("FrozenBN") + TORCHVISION_INPUT)
    d2_model = build_model(d2_cfg).eval()
    randomize_norm_statistics(d2_model)
    d2_file = tmp_path / "model_final.pth"
    torch.save({"model": d2_model.state_dict(), "iteration": 10}, d2_file)
    cases.append(("detectron2", "resnet18", d2_file, None))

    x = torch.randn(1, 3, 64, 64)
    for source, arch, src, reference in cases:
        out, fragment = convert_file(
            str(src), str(tmp_path / f"{arch}-out.pth"), source=source, arch=arch
        )
        cfg = _cfg()
        cfg.merge_from_file(fragment)
        model = _load(cfg, out)
        with torch.no_grad():
            if source == "timm":
                expected = timm_model.forward_intermediates(
                    x, indices=[1, 2, 3, 4], intermediates_only=True
                )
            elif source == "msra":
                expected = [reference(x)[s] for s in STAGES]
            else:
                expected = [d2_model.backbone.stem(x)]  # C4: the backbone returns res4 only
                for stage in [*d2_model.backbone.stages, d2_model.roi_heads.res5]:
                    expected.append(stage(expected[-1]))
                expected = expected[1:]
        _assert_stages_close(model, expected, x)


def test_convert_refuses_the_wrong_arch_or_source(tmp_path):
    src = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    with pytest.raises(
        IncompatibleWeightsError, match=r"does not load strictly into arch 'resnet34'"
    ):
        convert_file(str(src), str(tmp_path / "out.pth"), source="torchvision", arch="resnet34")
    with pytest.raises(ValueError, match=r"is a torchvision file, not a msra one"):
        convert_file(str(src), str(tmp_path / "out.pth"), source="msra", arch="R-50")
    with pytest.raises(
        ValueError, match=r"arch = 'resnet-18' is not valid; valid values: resnet18"
    ):
        convert_file(str(src), str(tmp_path / "out.pth"), source="torchvision", arch="resnet-18")
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "out.yaml").exists()

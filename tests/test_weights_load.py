"""The whole weights pipeline through MODEL.WEIGHTS: numerical parity per source format, the
state dict renamed once, safe reading through the Trainer and tools/train_net.py, and our own
checkpoints saved and resumed."""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from detectron2.modeling import build_model

from resnet_backbones.engine import Trainer, load_config
from resnet_backbones.presets import ARCHS
from resnet_backbones.utils import config_yaml
from resnet_backbones.weights import mappings
from resnet_backbones.weights.catalog import fitting_config
from resnet_backbones.weights.checkpoint import FamilyCheckpointer, prepare_checkpoint
from resnet_backbones.weights.detect import detect
from resnet_backbones.weights.errors import UnsafeWeightsError
from resnet_backbones.weights.export import export_weights

from .helpers import (
    QUICKSTART,
    REPO,
    STAGES,
    TORCHVISION_INPUT,
    assert_stages_close,
    default_cfg,
    detection_image,
    evil_pkl,
    load_weights,
    msra_source,
    r18_opts,
    randomize_norm_statistics,
    safetensors_bytes,
    timm_stages,
    tiny_cfg,
    tiny_shapes,
    to_caffe2_names,
    torchvision_reference,
    torchvision_stages,
)


@pytest.mark.parametrize(
    "name, opts",
    [
        ("resnet18", r18_opts("BN")),
        ("resnet50", ["MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.NORM", "FrozenBN"]),
    ],
)
def test_torchvision_weights_through_model_weights(tmp_path, caplog, name, opts):
    reference = torchvision_reference(name)
    path = tmp_path / f"{name}-00000000.pth"
    torch.save(reference.state_dict(), path)
    cfg = default_cfg("Base-RCNN-FPN.yaml", opts + TORCHVISION_INPUT + ["MODEL.WEIGHTS", str(path)])
    with caplog.at_level("INFO", logger="resnet_backbones.weights.checkpoint"):
        model = load_weights(cfg)
    x = torch.randn(1, 3, 67, 80)
    with torch.no_grad():
        expected = torchvision_stages(reference, x)
    assert_stages_close(model, expected, x)
    summary = [
        r.getMessage() for r in caplog.records if "holds the backbone only" in r.getMessage()
    ]
    assert len(summary) == 1
    assert (
        "proposal_generator.rpn_head.* (" in summary[0] and "roi_heads.box_head.* (" in summary[0]
    )


def test_a_load_renames_the_state_dict_once_with_the_family_the_model_chooses(
    tmp_path, monkeypatch
):
    """A torchvision file is read by three families (torchvision's, and timm's SE and Res2Net
    tables that extend it); the model chooses one, and the tensors are renamed once."""
    state = torchvision_reference("resnet18").state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    assert detect(state).families == ("resnet", "seresnet", "res2net")
    calls = []
    real = mappings.to_backbone
    monkeypatch.setattr(
        mappings, "to_backbone", lambda *a, **k: calls.append(k["family"]) or real(*a, **k)
    )
    cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts() + TORCHVISION_INPUT)
    prepared = prepare_checkpoint(str(path), build_model(cfg), cfg)
    assert calls == ["resnet"] and prepared.family == "resnet"
    FamilyCheckpointer(build_model(cfg), cfg=cfg).load(str(path))
    assert calls == ["resnet", "resnet"]


def test_timm_resnet_d_weights_through_model_weights(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model("resnet50d", pretrained=False).eval()
    randomize_norm_statistics(reference)
    path = tmp_path / "resnet50d.pth"
    torch.save({"state_dict": reference.state_dict(), "epoch": 100}, path)
    opts = ["MODEL.RESNETS.STEM", "deep", "MODEL.RESNETS.AVG_DOWN", "True"] + TORCHVISION_INPUT
    opts += ["MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.WEIGHTS", str(path)]
    model = load_weights(default_cfg("Base-RCNN-FPN.yaml", opts))
    x = torch.randn(1, 3, 67, 80)
    with torch.no_grad():
        expected = reference.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    assert_stages_close(model, expected, x)


TIMM_ARCHS = [n for n, a in ARCHS.items() if a.source == "timm"]


@pytest.mark.parametrize("name", TIMM_ARCHS)
def test_timm_weights_through_model_weights_and_the_exporter(tmp_path, name):
    """Each timm family, as the Hub serves it (model.safetensors, timm's names): loaded by
    MODEL.WEIGHTS into the config its arch row builds, and exported by tools/convert_weights.py's
    function to safetensors; both reproduce timm's stage outputs."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    reference = timm.create_model(name, pretrained=False).eval()
    randomize_norm_statistics(reference)
    path = tmp_path / "model.safetensors"
    path.write_bytes(safetensors_bytes(reference.state_dict()))
    x = torch.randn(1, 3, 67, 80)
    with torch.no_grad():
        expected = timm_stages(name, reference, x)

    cfg = default_cfg("Base-RCNN-FPN.yaml")
    cfg.merge_from_other_cfg(cfg.load_cfg(config_yaml(fitting_config(name))))
    assert detect(reference.state_dict()).format == "timm"
    cfg.MODEL.WEIGHTS = str(path)
    assert_stages_close(load_weights(cfg), expected, x)

    out, fragment = export_weights(
        str(path), str(tmp_path / "out.safetensors"), source="timm", arch=name
    )
    assert_stages_close(load_weights(load_config(fragment, ["MODEL.DEVICE", "cpu"])), expected, x)


def test_msra_pkl_through_model_weights(tmp_path, caplog):
    cfg = default_cfg("Base-RCNN-FPN.yaml", ["MODEL.RESNETS.DEPTH", "50"])
    source = msra_source(cfg)
    blobs = to_caffe2_names(source.backbone.bottom_up.state_dict())
    blobs.update(fc1000_w=np.zeros((1000, 2048), np.float32), fc1000_b=np.zeros(1000, np.float32))
    # detectron2 reports a "stem.conv1.bias" in MSRA's files that its bias-free conv does not use.
    blobs["conv1_b"] = np.zeros(64, np.float32)
    path = tmp_path / "R-50.pkl"
    path.write_bytes(pickle.dumps(blobs, protocol=2))  # as Python 2 wrote them
    cfg.MODEL.WEIGHTS = str(path)
    with caplog.at_level("WARNING", logger="resnet_backbones.weights.checkpoint"):
        model = load_weights(cfg)
    assert any("backbone.bottom_up.stem.conv1.bias" in r.getMessage() for r in caplog.records)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = [source.backbone.bottom_up(x)[s] for s in STAGES]
    assert_stages_close(model, expected, x)


def test_caffe2_names_wrapped_as_detectron2_does_load_as_detectron2_loads_them(tmp_path):
    """{"model": Caffe2 names, "__author__": "Caffe2", "matching_heuristics": True}: detectron2's
    name matching with its Caffe2 renaming, exactly as its own checkpointer does it (the oracle:
    our generated file is safe to unpickle)."""
    cfg = default_cfg("Base-RCNN-FPN.yaml", ["MODEL.RESNETS.DEPTH", "50"])
    blobs = to_caffe2_names(msra_source(cfg).backbone.bottom_up.state_dict())
    path = tmp_path / "R-50-wrapped.pkl"
    checkpoint = {"model": blobs, "__author__": "Caffe2", "matching_heuristics": True}
    path.write_bytes(pickle.dumps(checkpoint, protocol=2))
    reference = build_model(cfg).eval()
    DetectionCheckpointer(reference).load(str(path))
    ours = load_weights(cfg, str(path)).state_dict()
    for name, tensor in reference.backbone.bottom_up.state_dict().items():
        assert torch.equal(ours[f"backbone.bottom_up.{name}"], tensor), name


@pytest.mark.parametrize("layout", ["prefixed .pkl", "bare .pth", "bare .pth, heuristics"])
def test_detectron2_checkpoints_through_model_weights(tmp_path, layout):
    form = "FPN" if layout == "prefixed .pkl" else "C4"
    cfg = default_cfg(f"Base-RCNN-{form}.yaml", r18_opts("FrozenBN"))
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
    loaded = load_weights(cfg, str(path)).state_dict()
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
    ours = load_weights(cfg)
    assert type(ours.backbone.bottom_up).__name__ == "ResNetFamily"

    inputs = [detection_image()]
    with torch.no_grad():
        expected = reference(inputs)[0]["instances"]
        actual = ours(inputs)[0]["instances"]
    assert len(expected) > 0
    assert torch.equal(actual.pred_boxes.tensor, expected.pred_boxes.tensor)
    assert torch.equal(actual.scores, expected.scores)
    assert torch.equal(actual.pred_classes, expected.pred_classes)


def test_own_checkpoints_save_and_resume(tmp_path):
    cfg = default_cfg("Base-RCNN-FPN.yaml", r18_opts())
    model = build_model(cfg)
    randomize_norm_statistics(model)
    FamilyCheckpointer(model, str(tmp_path), cfg=cfg).save("model_0000009", iteration=9)
    target = build_model(cfg)
    extra = FamilyCheckpointer(target, str(tmp_path), cfg=cfg).resume_or_load("", resume=True)
    assert extra["iteration"] == 9
    for name, tensor in model.state_dict().items():
        assert torch.equal(target.state_dict()[name], tensor), name


# --------------------------------------------------------------------------------------------
# A malicious file through every entry point
# --------------------------------------------------------------------------------------------
def test_a_malicious_pickle_through_model_weights_and_the_trainer(tmp_path):
    path, marker = evil_pkl(tmp_path)
    with pytest.raises(UnsafeWeightsError, match=r"(builtins|io)\.open"):
        load_weights(default_cfg("Base-RCNN-FPN.yaml", r18_opts() + ["MODEL.WEIGHTS", str(path)]))
    assert not marker.exists()

    train, _ = tiny_shapes()
    cfg = tiny_cfg(tmp_path / "run", train, train)
    cfg.MODEL.WEIGHTS = str(path)
    trainer = Trainer(cfg)
    assert isinstance(trainer.checkpointer, FamilyCheckpointer)
    periodic = [h for h in trainer._hooks if isinstance(h, hooks.PeriodicCheckpointer)]
    assert periodic and all(h.checkpointer is trainer.checkpointer for h in periodic)
    with pytest.raises(UnsafeWeightsError, match=r"(builtins|io)\.open"):
        trainer.resume_or_load(resume=False)
    assert not marker.exists()


def test_a_malicious_pickle_through_train_net_eval_only(tmp_path):
    path, marker = evil_pkl(tmp_path)
    cmd = [
        sys.executable, os.path.join(REPO, "tools/train_net.py"),
        "--config", QUICKSTART, "--eval-only",
        "MODEL.WEIGHTS", str(path), "OUTPUT_DIR", str(tmp_path / "run"),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0
    assert "UnsafeWeightsError" in proc.stderr and "io.open" in proc.stderr
    assert not marker.exists()

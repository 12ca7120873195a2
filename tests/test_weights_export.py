"""Writing a file of ours with the config that fits it: tools/convert_weights.py and
resnet_backbones.weights.export."""

import json
import os
import pickle
import re
import subprocess
import sys

import pytest
import safetensors
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from resnet_backbones.config import build_clean_backbone
from resnet_backbones.engine import load_config
from resnet_backbones.model_zoo import base_config_file
from resnet_backbones.presets import arch_config
from resnet_backbones.weights.errors import (
    BackboneMismatchError,
    MetadataMismatchError,
    WeightsFormatError,
)
from resnet_backbones.weights.export import export_weights

from .helpers import (
    REPO,
    STAGES,
    TORCHVISION_INPUT,
    assert_stages_close,
    default_cfg,
    evil_pkl,
    load_weights,
    msra_source,
    r18_opts,
    randomize_norm_statistics,
    to_caffe2_names,
    torchvision_reference,
    torchvision_stages,
)


def test_convert_weights_tool_round_trip(tmp_path):
    """OUT and its YAML, written away from the working directory: the YAML is a complete config
    (its _BASE_ and MODEL.WEIGHTS resolve from anywhere) that builds a model OUT loads into."""
    reference = torchvision_reference("resnet18")
    src, out = tmp_path / "resnet18-5c106cde.pth", tmp_path / "elsewhere" / "R18-tv.pth"
    torch.save(reference.state_dict(), src)
    cmd = [
        sys.executable, os.path.join(REPO, "tools/convert_weights.py"),
        "--source", "torchvision", "--arch", "resnet18", str(src), str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    fragment = tmp_path / "elsewhere" / "R18-tv.yaml"
    assert out.is_file() and fragment.is_file()
    assert f"resnet-backbones-train --config {fragment}" in proc.stdout

    cfg = load_config(str(fragment), ["MODEL.DEVICE", "cpu"])  # what tools/train_net.py does
    assert (cfg.INPUT.FORMAT, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1) == (
        "RGB",
        18,
        False,
    )
    assert (cfg.MODEL.WEIGHTS, cfg.VERSION) == (str(out), 2)
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_family_fpn_backbone"  # the FPN base's
    model = load_weights(cfg)
    x = torch.randn(1, 3, 64, 72)
    with torch.no_grad():
        expected = torchvision_stages(reference, x)
    assert_stages_close(model, expected, x)

    metadata = torch.load(out, weights_only=True)["metadata"]
    assert metadata["source"] == "torchvision" and metadata["arch"] == "resnet18"
    assert metadata["converted_from"] == src.name

    # detectron2's own checkpointer loads it too (by name suffix).
    plain = build_model(cfg).eval()
    DetectionCheckpointer(plain).load(str(out))
    for name, tensor in model.backbone.bottom_up.state_dict().items():
        assert torch.equal(plain.backbone.bottom_up.state_dict()[name], tensor), name


def test_convert_weights_tool_refuses_a_malicious_pickle(tmp_path):
    path, marker = evil_pkl(tmp_path)
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


def test_export_other_sources_then_load_strictly(tmp_path):
    """msra (written as safetensors), timm and detectron2 sources through the tool's function;
    each output loads into the model its YAML builds, with the source's numbers."""
    timm = pytest.importorskip("timm")
    cases = []

    msra_cfg = default_cfg("Base-RCNN-FPN.yaml", ["MODEL.RESNETS.DEPTH", "50"])
    msra_model = msra_source(msra_cfg)
    msra = tmp_path / "R-50.pkl"
    msra.write_bytes(
        pickle.dumps(to_caffe2_names(msra_model.backbone.bottom_up.state_dict()), protocol=2)
    )
    cases.append(("msra", "R-50", msra, msra_model.backbone.bottom_up))

    timm_model = timm.create_model("resnet50d", pretrained=False).eval()
    randomize_norm_statistics(timm_model)
    timm_file = tmp_path / "resnet50d_ra2-464e36ba.pth"
    torch.save(timm_model.state_dict(), timm_file)
    cases.append(("timm", "resnet50d", timm_file, None))

    d2_cfg = default_cfg("Base-RCNN-C4.yaml", r18_opts("FrozenBN") + TORCHVISION_INPUT)
    d2_model = build_model(d2_cfg).eval()
    randomize_norm_statistics(d2_model)
    d2_file = tmp_path / "model_final.pth"
    torch.save({"model": d2_model.state_dict(), "iteration": 10}, d2_file)
    cases.append(("detectron2", "resnet18", d2_file, None))

    x = torch.randn(1, 3, 64, 64)
    for source, arch, src, reference in cases:
        out, fragment = export_weights(
            str(src), str(tmp_path / f"{arch}-out.{'safetensors' if source == 'msra' else 'pth'}"),
            source=source, arch=arch,
        )  # fmt: skip
        model = load_weights(load_config(fragment, ["MODEL.DEVICE", "cpu"]))
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
        assert_stages_close(model, expected, x)


@pytest.mark.parametrize("form", ["C4", "DC5"])
def test_export_to_safetensors_for_a_form(tmp_path, form):
    """OUT.safetensors: our names, the metadata in its header; its YAML builds the --form's
    Faster R-CNN, which loads it strictly (C4: res5 in the RoI head) and checks the metadata."""
    reference = torchvision_reference("resnet18")
    src = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), src)
    out, fragment = export_weights(
        str(src), str(tmp_path / "R18.safetensors"), source="torchvision", arch="resnet18",
        form=form,
    )  # fmt: skip
    with open(out, "rb") as f:
        assert f.read(4) != b"PK\x03\x04"  # not a torch.save archive
    with safetensors.safe_open(out, "pt") as f:
        header = f.metadata()
        res5_conv = f.get_tensor("res5.0.conv1.weight")
    assert header["format"] == "pt"  # the Hugging Face convention
    metadata = json.loads(header["resnet_backbones"])
    assert (metadata["arch"], metadata["format"], metadata["source"]) == (
        "resnet18",
        "torchvision",
        "torchvision",
    )
    assert metadata["pixel_mean"] == [123.675, 116.28, 103.53]

    cfg = load_config(fragment, ["MODEL.DEVICE", "cpu"])
    with open(fragment) as f:
        assert f"_BASE_: {base_config_file(form)}\n" in f.read()
    assert os.path.isfile(base_config_file(form))
    assert cfg.MODEL.RESNETS.RES5_DILATION == (2 if form == "DC5" else 1)
    model = load_weights(cfg)
    res5 = model.roi_heads.res5 if form == "C4" else model.backbone.res5
    assert torch.equal(res5[0].conv1.weight, res5_conv)
    assert torch.equal(res5_conv, reference.layer4[0].conv1.weight)

    cfg.INPUT.FORMAT = "BGR"  # the header says RGB
    with pytest.raises(MetadataMismatchError, match=r"INPUT\.FORMAT is 'BGR' in the config"):
        load_weights(cfg)


def _one_line(error):
    message = str(error.value)
    assert "\n" not in message and len(message) < 600, message
    return message


def test_export_errors_are_one_line_naming_the_problem_and_the_fix(tmp_path):
    """A file of another network: what differs, in brief (counts, first names), and the arch it
    is; never torch's several-kB "Error(s) in loading state_dict" or a KeyError."""
    src = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    out = str(tmp_path / "out.pth")
    with pytest.raises(BackboneMismatchError) as info:
        export_weights(str(src), out, source="torchvision", arch="resnet34")
    message = _one_line(info)
    assert f"{src} (torchvision format) does not fit arch 'resnet34'" in message
    r18, r34 = (
        set(build_clean_backbone(arch_config(a)).state_dict()) for a in ("resnet18", "resnet34")
    )
    missing = sorted(
        r34 - r18, key=list(build_clean_backbone(arch_config("resnet34")).state_dict()).index
    )
    assert (
        f"it lacks {len(missing)} of the arch's tensors ({', '.join(missing[:3])} ...)" in message
    )
    assert message.endswith("it is --arch resnet18")
    assert "Error(s) in loading" not in message

    # Names of another mapping family: a timm ResNet-D read as torchvision's names.
    with pytest.raises(BackboneMismatchError) as info:
        export_weights(str(src), out, source="timm", arch="resnet50d")
    message = _one_line(info)
    assert re.search(
        r"is not a resnet50d file: \d+ of its names are not those of 'resnet_d' networks "
        r"\(conv1\.weight, ",
        message,
    )
    assert message.endswith("it is --arch resnet18")

    # A part of a detectron2 model fits no arch.
    d2 = tmp_path / "model_part.pth"
    torch.save({"model": {"backbone.bottom_up.stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, d2)
    with pytest.raises(BackboneMismatchError) as info:
        export_weights(str(d2), out, source="detectron2", arch="R-50")
    assert "no arch fits it" in _one_line(info)

    with pytest.raises(WeightsFormatError) as info:
        export_weights(str(src), out, source="msra", arch="R-50")
    assert _one_line(info).endswith(
        "is a torchvision file, not a msra one (a msra source reads msra files); pass --source "
        "torchvision or timm"
    )
    with pytest.raises(
        ValueError, match=r"arch = 'resnet-18' is not valid; valid values: resnet18"
    ):
        export_weights(str(src), out, source="torchvision", arch="resnet-18")
    with pytest.raises(ValueError, match=r"form = 'C4' is not valid for arch 'rexnet_100'"):
        export_weights(str(src), out, source="timm", arch="rexnet_100", form="C4")
    with pytest.raises(ValueError, match=r"ends in \.yaml, the name of the config written"):
        export_weights(str(src), str(tmp_path / "out.yaml"), source="torchvision", arch="resnet18")
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "out.yaml").exists()

"""Writing a file of ours with the config that fits it: tools/convert_weights.py and
resnet_backbones.weights.export."""

import os
import pickle
import subprocess
import sys

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from resnet_backbones.weights.errors import BackboneMismatchError
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
    reference = torchvision_reference("resnet18")
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

    cfg = default_cfg("Base-RCNN-FPN.yaml")
    cfg.merge_from_file(str(fragment))
    assert (cfg.INPUT.FORMAT, cfg.MODEL.RESNETS.DEPTH, cfg.MODEL.RESNETS.STRIDE_IN_1X1) == (
        "RGB",
        18,
        False,
    )
    cfg.MODEL.WEIGHTS = str(out)
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
    """msra, timm and detectron2 sources through the tool's function; each output loads into
    the model its YAML fragment builds, with the source's numbers."""
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
            str(src), str(tmp_path / f"{arch}-out.pth"), source=source, arch=arch
        )
        cfg = default_cfg("Base-RCNN-FPN.yaml")
        cfg.merge_from_file(fragment)
        model = load_weights(cfg, out)
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


def test_export_refuses_the_wrong_arch_or_source(tmp_path):
    src = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), src)
    with pytest.raises(BackboneMismatchError, match=r"does not load strictly into arch 'resnet34'"):
        export_weights(str(src), str(tmp_path / "out.pth"), source="torchvision", arch="resnet34")
    with pytest.raises(ValueError, match=r"is a torchvision file, not a msra one"):
        export_weights(str(src), str(tmp_path / "out.pth"), source="msra", arch="R-50")
    with pytest.raises(
        ValueError, match=r"arch = 'resnet-18' is not valid; valid values: resnet18"
    ):
        export_weights(str(src), str(tmp_path / "out.pth"), source="torchvision", arch="resnet-18")
    assert not (tmp_path / "out.pth").exists() and not (tmp_path / "out.yaml").exists()

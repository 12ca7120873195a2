"""Export (resnet_backbones.export): every backbone preset to TorchScript (scripted) and ONNX with
its outputs equal to eager PyTorch's, checked through torch.jit.load and onnxruntime; the C4 and
FPN Faster R-CNN through detectron2's TracingAdapter with the same detections; the errors; the
command line."""

import pytest
import torch

from resnet_backbones.config import build_clean_backbone
from resnet_backbones.export import (
    FEATURE_RTOL,
    ExportError,
    backbone_parity,
    build_for_export,
    detector_parity,
    detector_sample,
    export_backbone,
    export_detector,
)
from resnet_backbones.presets import PRESETS, preset_config

from .helpers import QUICKSTART, REPO, r18_opts, randomize_norm_statistics


def _onnx_runtime_if(fmt):
    """onnxruntime (the ``export`` extra, installed by ``make install``) for an ONNX case."""
    if fmt == "onnx":
        pytest.importorskip("onnxruntime")


def _preset_backbone(name):
    """Preset ``name``'s backbone with every feature, seeded random weights and random norm
    statistics (BN at its initial statistics is the identity: a skipped norm would pass), in eval
    mode; and a small input (32 px for the CIFAR networks, 64 px for the others)."""
    from resnet_backbones.modeling.blocks import _ResidualBlock

    torch.manual_seed(0)
    backbone = build_clean_backbone(preset_config(name)).eval()
    randomize_norm_statistics(backbone)
    # Each residual branch's closing norm scaled by 1/sqrt(blocks), as trained deep networks keep
    # their branches small: at random scale, CIFAR-ResNet-1202's 600 additions overflow to inf,
    # and a non-finite output cannot be compared.
    # (Plain networks, without additions, are left as they are.)
    blocks = [m for m in backbone.modules() if isinstance(m, _ResidualBlock) and m.has_shortcut]
    for block in blocks:
        norm = getattr(getattr(block, f"conv{block.last_conv}"), "norm", None)
        if norm is not None:
            with torch.no_grad():
                norm.weight.mul_(len(blocks) ** -0.5)
    side = 32 if PRESETS[name].task == "classification" else 64
    return backbone, torch.randn(1, 3, side, side)


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_exports_with_parity(name, fmt, tmp_path):
    """The file, loaded back, computes every feature of eager PyTorch to 1e-4 relative."""
    _onnx_runtime_if(fmt)
    backbone, x = _preset_backbone(name)
    path = str(tmp_path / f"backbone.{fmt}")
    export_backbone(backbone, path, fmt, x, name=name)
    parity = backbone_parity(backbone, path, fmt, x)
    assert set(parity.max_rel) == set(backbone.output_shape())
    assert max(parity.max_rel.values()) <= FEATURE_RTOL


def test_scripted_and_onnx_backbones_take_other_sizes(tmp_path):
    """The TorchScript file is scripted, not traced, and the ONNX file has dynamic batch, height
    and width: both run on a batch of another size, odd sides included (ResNet-D's ceil-mode
    pooling), with eager's results."""
    ort = pytest.importorskip("onnxruntime")
    backbone, x = _preset_backbone("R-50-D")
    export_backbone(backbone, str(tmp_path / "b.ts"), "torchscript", x)
    export_backbone(backbone, str(tmp_path / "b.onnx"), "onnx", x)
    other = torch.randn(2, 3, 45, 71)
    with torch.no_grad():
        expected = backbone(other)
        scripted = torch.jit.load(str(tmp_path / "b.ts"))(other)
    session = ort.InferenceSession(str(tmp_path / "b.onnx"), providers=["CPUExecutionProvider"])
    onnx_outputs = dict(zip(expected, session.run(None, {"image": other.numpy()})))
    for name, feature in expected.items():
        scale = feature.abs().max()
        assert (scripted[name] - feature).abs().max() <= FEATURE_RTOL * scale, name
        assert (torch.from_numpy(onnx_outputs[name]) - feature).abs().max() <= FEATURE_RTOL * scale


def test_a_folded_preactivation_network_scripts(tmp_path):
    """optimize_for_inference's folding sets a pre-activation block's norm2/norm3 to None; the
    scripted branch skips them, with the folded eager network's results."""
    from resnet_backbones.inference import fold_norms

    backbone, x = _preset_backbone("R-50-v2")
    assert fold_norms(backbone) > 0
    assert backbone.res2[1].norm2 is None
    path = str(tmp_path / "folded.ts")
    export_backbone(backbone, path, "torchscript", x)
    assert max(backbone_parity(backbone, path, "torchscript", x).max_rel.values()) <= FEATURE_RTOL


def test_the_parity_check_fails_on_a_different_model(tmp_path):
    """The check compares: the file of a model whose weights then change no longer passes."""
    backbone, x = _preset_backbone("R-18")
    path = str(tmp_path / "r18.ts")
    export_backbone(backbone, path, "torchscript", x)
    with torch.no_grad():
        backbone.res4[0].conv1.weight.mul_(1.01)
    with pytest.raises(ExportError, match="feature res4 differs from eager"):
        backbone_parity(backbone, path, "torchscript", x)


def test_an_op_without_an_onnx_symbolic_is_named(tmp_path):
    """DCN exports at opset 19 (ONNX DeformConv) and not before: the error names the model, the
    format and the op (on an R-50 with DCN in res5 only, the smallest DCN network)."""
    cfg = preset_config("R-101-DCN-c3-c5")
    cfg.MODEL.RESNETS.DEPTH = 50
    cfg.MODEL.RESNETS.DEFORM_ON_PER_STAGE = [False, False, False, True]
    backbone = build_clean_backbone(cfg).eval()
    x = torch.randn(1, 3, 64, 64)
    with pytest.raises(
        ExportError,
        match=r"^R-50-DCN-c5 cannot be exported to ONNX \(opset 17\): op "
        r"torchvision::deform_conv2d is not supported",
    ):
        export_backbone(
            backbone, str(tmp_path / "dcn.onnx"), "onnx", x, name="R-50-DCN-c5", opset=17
        )


class _NotScriptable(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return {"out": self._modules["conv"](x)}


def test_a_model_that_cannot_be_scripted_says_why(tmp_path):
    with pytest.raises(ExportError, match=r"^toy cannot be exported to TorchScript: .*_modules"):
        export_backbone(_NotScriptable().eval(), str(tmp_path / "toy.ts"), "torchscript",
                        torch.randn(1, 3, 8, 8), name="toy")  # fmt: skip


class _Scaled(torch.nn.Module):
    def __init__(self, scale: float):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv(x) * self.scale}


def test_non_finite_outputs_never_pass_the_check(tmp_path):
    """NaN equals nothing: a NaN of the exported file fails the check, and a NaN of eager cannot
    be checked against (both NaN would otherwise pass a 'difference <= bound' test)."""
    x = torch.randn(1, 3, 8, 8)
    nan_file = str(tmp_path / "nan.ts")
    export_backbone(_Scaled(float("nan")).eval(), nan_file, "torchscript", x)
    with pytest.raises(ExportError, match="feature out differs from eager by inf"):
        backbone_parity(_Scaled(1.0).eval(), nan_file, "torchscript", x)
    with pytest.raises(ExportError, match="out: eager PyTorch's output is not finite"):
        backbone_parity(_Scaled(float("nan")).eval(), nan_file, "torchscript", x)


def test_export_refuses_a_model_in_training_mode(tmp_path):
    backbone, x = _preset_backbone("R-18")
    with pytest.raises(ValueError, match="R-18 is in training mode"):
        export_backbone(backbone.train(), str(tmp_path / "b.ts"), "torchscript", x, name="R-18")


# ------------------------------------------------------------------------------------------
# The whole Faster R-CNN
# ------------------------------------------------------------------------------------------
def _detector_cfg(form):
    """An R-18 Faster R-CNN of ``form`` with random weights: the quickstart's (FPN), or the C4
    base config with our C4 head, each cut to 100 proposals."""
    from resnet_backbones.engine import load_config

    small = ["MODEL.RPN.PRE_NMS_TOPK_TEST", "300", "MODEL.RPN.POST_NMS_TOPK_TEST", "100"]
    if form == "FPN":
        return load_config(QUICKSTART, ["MODEL.DEVICE", "cpu", *small])
    return load_config(
        f"{REPO}/configs/Base-RCNN-C4.yaml",
        r18_opts() + small + [
            "MODEL.ROI_HEADS.NAME", "Res5FamilyROIHeads", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
            "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.BACKBONE.FREEZE_AT", "0",
        ],
    )  # fmt: skip


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
@pytest.mark.parametrize("form", ["C4", "FPN"])
def test_faster_rcnn_exports_with_the_same_detections(form, fmt, tmp_path):
    """Both forms export to both formats (roi_align and nms have ONNX symbolics) with the same
    detections: as many, the same classes, boxes and scores within the bounds. Random weights
    with random norm statistics give detections above the 0.05 score threshold (the check would
    be empty otherwise: asserted)."""
    _onnx_runtime_if(fmt)
    torch.manual_seed(0)
    model = build_for_export(_detector_cfg(form), "detector")
    randomize_norm_statistics(model)
    inputs = detector_sample(128, 128)
    path = str(tmp_path / f"detector.{fmt}")
    export_detector(model, path, fmt, inputs, name=form)
    parity = detector_parity(model, path, fmt, inputs)
    assert parity.detections > 0
    assert parity.max_abs["classes"] == 0
    # The check compares: the box head's regression shifted after the export fails it.
    with torch.no_grad():
        model.roi_heads.box_predictor.bbox_pred.bias.add_(0.5)
    with pytest.raises(ExportError, match="boxes differ from eager"):
        detector_parity(model, path, fmt, inputs)


def test_model_weights_are_loaded_into_the_export(tmp_path):
    """export_model loads MODEL.WEIGHTS as the trainer does: the file (the quickstart's R-18 with
    its FPN) computes the features of the checkpoint's backbone, not of a fresh random one."""
    from detectron2.modeling import build_model

    from resnet_backbones.engine import load_config
    from resnet_backbones.export import export_model

    cfg = load_config(QUICKSTART, ["MODEL.DEVICE", "cpu"])
    torch.manual_seed(1)
    trained = build_model(cfg).eval()
    randomize_norm_statistics(trained)
    weights = tmp_path / "model_final.pth"
    torch.save({"model": trained.state_dict()}, weights)
    cfg.MODEL.WEIGHTS = str(weights)
    out = str(tmp_path / "fpn.ts")
    torch.manual_seed(2)  # a fresh build would draw other weights
    parity = export_model(cfg, out, "torchscript", size=(64, 64))
    assert max(parity.max_rel.values()) <= FEATURE_RTOL
    # Another batch and size: the FPN is traced around the scripted R-18, not fixed to 64x64.
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected, actual = trained.backbone(x), torch.jit.load(out)(x)
    for name, feature in expected.items():
        assert torch.allclose(actual[name], feature, rtol=0, atol=1e-5), name


# ------------------------------------------------------------------------------------------
# The command line
# ------------------------------------------------------------------------------------------
def test_export_command_writes_and_prints_the_parity(tmp_path, capsys):
    """``resnet-backbones export`` (tools/export_model.py) once end to end: the quickstart's
    backbone (R-18 with its FPN) to ONNX, with config overrides."""
    pytest.importorskip("onnxruntime")
    from resnet_backbones.cli import main

    out = tmp_path / "fpn.onnx"
    status = main(
        ["export", "--config", QUICKSTART, "--format", "onnx", "--output", str(out),
         "--size", "64", "96", "MODEL.FPN.OUT_CHANNELS", "32"]
    )  # fmt: skip
    printed = capsys.readouterr().out
    assert status == 0
    assert out.stat().st_size > 0
    assert "Parity with eager PyTorch on a 64x96 input" in printed
    for feature in ("p2", "p3", "p4", "p5", "p6"):
        assert f"{feature}: max abs diff" in printed


def test_export_command_errors_are_one_line(tmp_path, capsys):
    from resnet_backbones.cli import main

    status = main(
        ["export", "--config", QUICKSTART, "--format", "onnx", "--output", str(tmp_path / "x"),
         "MODEL.RESNETS.DEPTH", "19"]
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1
    assert "resnet-backbones export: error:" in err and "DEPTH" in err


def test_benchmark_script_writes_the_table_rows(tmp_path):
    """tools/benchmark_export.py --quick (an R-50 here, to build fast): one row per exported
    form, each checked against eager, in make benchmark's row format."""
    import json

    from .helpers import load_tool

    pytest.importorskip("onnxruntime")
    out = tmp_path / "export.json"
    assert load_tool("benchmark_export").main(["--quick", "--depth", "50", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["measure"] for r in result["rows"]] == [
        "backbone_optimize_for_inference",
        "backbone_torchscript",
        "backbone_onnxruntime",
    ]
    for row in result["rows"]:
        assert row["outputs_checked"] is True and row["unit"] == "s"
        assert row["baseline"] == "eager R-50 backbone (ours, as built)"
        assert row["ratio"] == pytest.approx(row["baseline_value"] / row["ours_value"])
    assert result["calibration_s"] > 0

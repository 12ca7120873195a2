"""optimize_for_inference: the folded, channels_last model computes what the model computed (fp32
rounding aside), its foldable norms are gone, and the options take effect."""

import copy

import pytest
import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from detectron2.modeling import build_model
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from resnet_backbones import optimize_for_inference
from resnet_backbones.inference import fold_norms
from resnet_backbones.modeling import ResNetClassifier, ResNetFamily, ReXNet, resnet_spec

from .helpers import default_cfg, detection_image, r18_opts, randomize_norm_statistics

STAGES = ("res2", "res3", "res4", "res5")
# fp32 rounding that the same computation in another order (folded weights, NHWC kernels) gives:
# features to 1e-4 of their largest value, scores to 1e-4. Box corners get 1e-2 px: with random
# weights the RPN and box deltas amplify a 1e-6 relative change of the features to about 2e-3 px
# on 256 px images (channels_last alone, which folds nothing, moved them 1.4e-3 px), while
# a wrong fold moves them by pixels.
FEATURE_RTOL = 1e-4
SCORE_ATOL = 1e-4
BOX_ATOL = 1e-2


def _norms(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, (FrozenBatchNorm2d, _BatchNorm))]


def _assert_features_close(expected: dict, actual: dict) -> None:
    assert list(actual) == list(expected)
    for name, reference in expected.items():
        scale = reference.abs().max().item()
        assert scale > 0
        error = (actual[name] - reference).abs().max().item()
        assert error <= FEATURE_RTOL * scale, (name, error, scale)


def _optimized_copy(model: nn.Module, **kwargs) -> nn.Module:
    return optimize_for_inference(copy.deepcopy(model), **kwargs)


@pytest.mark.parametrize("form", ["C4", "DilatedC5", "FPN"])
def test_detector_same_features_and_detections_without_its_norms(form):
    cfg = default_cfg(
        f"Base-RCNN-{form}.yaml",
        [
            *r18_opts("FrozenBN"),
            "INPUT.MIN_SIZE_TEST", "192", "INPUT.MAX_SIZE_TEST", "256",
            "MODEL.RPN.POST_NMS_TOPK_TEST", "64", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        ],
    )  # fmt: skip
    model = build_model(cfg).eval()
    randomize_norm_statistics(model)
    optimized = _optimized_copy(model)

    assert len(_norms(model)) >= 20
    assert _norms(optimized) == []
    # The weights changed (a fold that did nothing would leave them equal).
    first = optimized.backbone.bottom_up if form == "FPN" else optimized.backbone
    reference_first = model.backbone.bottom_up if form == "FPN" else model.backbone
    assert first.stem.conv1.bias is not None and reference_first.stem.conv1.bias is None
    assert first.stem.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert optimized.proposal_generator.rpn_head.conv.weight.is_contiguous()  # heads: NCHW

    inputs = [detection_image()]
    with torch.no_grad():
        images = model.preprocess_image(inputs).tensor
        _assert_features_close(model.backbone(images), optimized.backbone(images))
        expected = model(inputs)[0]["instances"]
        actual = optimized(inputs)[0]["instances"]
    assert len(expected) > 0 and len(actual) == len(expected)
    assert torch.equal(actual.pred_classes, expected.pred_classes)
    torch.testing.assert_close(actual.scores, expected.scores, rtol=0, atol=SCORE_ATOL)
    torch.testing.assert_close(
        actual.pred_boxes.tensor, expected.pred_boxes.tensor, rtol=0, atol=BOX_ATOL
    )
    if form == "C4":
        assert type(optimized.roi_heads).__name__ == "Res5FamilyROIHeads"
        assert optimized.roi_heads.res5[0].conv1.norm is None


# (spec arguments, the norms that must stay: they follow an addition, a max-pool or a DCN).
FAMILY = {
    "v1-BN": (dict(depth=50, norm="BN"), 0),
    "v2-preact": (dict(depth=50, norm="BN", block_order="preact", stride_in_1x1=False), None),
    "bn_after_add": (
        dict(depth=18, norm="BN", res2_out_channels=64, block_order="bn_after_add"),
        8,
    ),
    "relu_preact": (dict(depth=18, norm="BN", res2_out_channels=64, block_order="relu_preact"), 0),
    "SE": (dict(depth=50, norm="BN", se_ratio=16), 0),
    "ResNet-D": (dict(depth=50, norm="BN", stem="deep", avg_down=True), 0),
    "option-A": (dict(depth=18, norm="BN", res2_out_channels=64, shortcut="A"), 0),
    "Res2Net": (dict(depth=50, norm="BN", res2net_scale=4, res2net_width=26), 0),
    "DCN": (dict(depth=50, norm="BN", deform_on_per_stage=(False, False, False, True)), 3),
}


@pytest.mark.parametrize("name", list(FAMILY))
def test_family_backbone_same_features(name):
    kwargs, remaining = FAMILY[name]
    depth = kwargs.pop("depth")
    model = ResNetFamily(resnet_spec(depth, **kwargs), out_features=STAGES).eval()
    randomize_norm_statistics(model)
    optimized = _optimized_copy(model)
    if name == "v2-preact":
        # Left: each block's norm1 and each stage's closing norm (after an addition) and the
        # stem's (after the max-pool); folded: norm2 and norm3 of every block (into conv1, conv2).
        blocks = [b for stage in STAGES for b in getattr(optimized, stage) if hasattr(b, "norm1")]
        assert all(b.norm2 is None and b.norm3 is None for b in blocks)
        assert all(b.norm1 is not None or not b.preactivates_input for b in blocks)
        remaining = sum(b.norm1 is not None for b in blocks) + len(STAGES) + 1
        assert optimized.res2[1].conv1.bias is not None
    assert len(_norms(optimized)) == remaining < len(_norms(model))
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        _assert_features_close(model(x), optimized(x))


def test_rexnet_and_classifier_same_outputs():
    rexnet = ReXNet(width_mult=0.5, out_features=STAGES).eval()
    randomize_norm_statistics(rexnet)
    classifier = ResNetClassifier(resnet_spec(18, norm="BN", res2_out_channels=64), num_classes=7)
    classifier.eval()
    randomize_norm_statistics(classifier)
    x = torch.randn(2, 3, 64, 96)
    for model in (rexnet, classifier):
        optimized = _optimized_copy(model)
        assert _norms(optimized) == []
        with torch.no_grad():
            expected, actual = model(x), optimized(x)
        if isinstance(expected, dict):
            _assert_features_close(expected, actual)
        else:
            torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


def test_norms_in_training_mode_and_group_norms_stay():
    model = ResNetFamily(resnet_spec(18, norm="BN", res2_out_channels=64)).eval()
    model.res3.train()
    model.stem.conv1.norm = nn.GroupNorm(8, 64)
    optimized = _optimized_copy(model, channels_last=False)
    assert isinstance(optimized.stem.conv1.norm, nn.GroupNorm)
    assert all(m.training for m in _norms(optimized))  # res3's, in training mode
    assert {n for n, m in optimized.named_modules() if isinstance(m, _BatchNorm)} == {
        n for n, m in model.res3.named_modules(prefix="res3") if isinstance(m, _BatchNorm)
    }
    assert fold_norms(optimized) == 0  # nothing left to fold: a second call changes nothing


def test_channels_last_input_and_weights_and_compile_take_effect():
    model = ResNetFamily(resnet_spec(18, res2_out_channels=64), out_features=["res2"]).eval()
    seen = []
    plain = _optimized_copy(model, channels_last=False)
    plain.stem.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    fast = _optimized_copy(model, channels_last=True)
    fast.stem.register_forward_pre_hook(lambda module, args: seen.append(args[0]))
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        _, features = plain(x), fast(x)
    channels_last = [t.is_contiguous(memory_format=torch.channels_last) for t in seen]
    assert channels_last == [False, True]
    assert features["res2"].is_contiguous()  # what leaves the backbone is NCHW, as before
    assert not plain.res2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.res2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    # On the CPU the default is channels_last.
    default = _optimized_copy(model)
    assert default.res2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)

    compiled = _optimized_copy(model, compile=True)
    assert compiled._compiled_call_impl is not None  # compiles at its first call (not run here)
    assert plain._compiled_call_impl is None
    assert list(compiled.state_dict()) == list(plain.state_dict())


def test_refuses_a_model_in_training_mode_and_bad_flags():
    model = ResNetFamily(resnet_spec(18, res2_out_channels=64))
    with pytest.raises(ValueError, match=r"training mode; call model.eval\(\) first"):
        optimize_for_inference(model)
    with pytest.raises(ValueError, match=r"training mode; call model.eval\(\) first"):
        fold_norms(model)
    assert isinstance(model.stem.conv1.norm, FrozenBatchNorm2d)  # left untouched
    with pytest.raises(
        ValueError, match=r"channels_last = 'yes' is not valid; valid values: True, False, None"
    ):
        optimize_for_inference(model.eval(), channels_last="yes")
    with pytest.raises(ValueError, match=r"compile = 1 is not valid; valid values: True, False"):
        optimize_for_inference(model, compile=1)
    assert all(isinstance(m.norm, FrozenBatchNorm2d) for m in model.modules() if type(m) is Conv2d)


@pytest.mark.parametrize("optimize", [True, False])
def test_eval_only_evaluates_the_optimised_model_unless_the_key_says_no(
    tmp_path, monkeypatch, optimize
):
    from detectron2.checkpoint import DetectionCheckpointer

    from resnet_backbones import train_net
    from resnet_backbones.engine import Trainer, load_config

    from .helpers import QUICKSTART, TINY_OWN_DATA, write_coco_folder

    data = write_coco_folder(tmp_path / "d", num_images=1)
    out = tmp_path / "o"
    name = f"inference_val_{optimize}"  # one name per dataset folder
    opts = [*TINY_OWN_DATA, "OUTPUT_DIR", str(out), "DATASETS.TEST", f"('{name}',)"]
    if not optimize:
        opts += ["TEST.OPTIMIZE_FOR_INFERENCE", "False"]
    model = Trainer.build_model(load_config(QUICKSTART, opts))
    out.mkdir()
    DetectionCheckpointer(model, save_dir=str(out)).save("model_final")
    evaluated = []
    monkeypatch.setattr(
        train_net.Trainer, "test", classmethod(lambda cls, cfg, model: evaluated.append(model))
    )
    command = [
        "--config", QUICKSTART, "--eval-only",
        "--dataset", name, str(data / "annotations.json"), str(data / "images"), *opts,
    ]  # fmt: skip
    assert train_net.main(command) == 0
    (model,) = evaluated
    norms = _norms(model)
    if optimize:
        assert norms == [] and not model.training
        assert model.backbone.bottom_up.stem.conv1.bias is not None
    else:
        assert len(norms) >= 20 and model.backbone.bottom_up.stem.conv1.bias is None


def test_benchmark_script_writes_the_table_rows(tmp_path):
    import json

    from .helpers import load_tool

    tool = load_tool("benchmark_inference")
    out = tmp_path / "inference.json"
    # The detector row (R-50 here, to build fast) is the one with the most parts.
    argv = ["--quick", "--only", "faster_rcnn_fpn", "--depth", "50", "--out", str(out)]
    assert tool.main(argv) == 0
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert row["measure"] == "faster_rcnn_fpn" and "R-50-FPN" in row["baseline"]
    assert row["outputs_checked"] is True and row["unit"] == "s" and row["target"] == 1.3
    assert row["ratio"] == pytest.approx(row["baseline_value"] / row["ours_value"])
    assert result["calibration_s"] is None  # the backbone row (detectron2's R-101) is its source

"""tools/benchmark_pretrain.py: its core on a tiny setting (R-18 at 32 pixels, one timed
iteration per loop) writes the table's numbers as JSON, and the baseline's lighting is the
recipe's formula."""

import json

import torch

from resnet_backbones.data.cls_transforms import Lighting

from .helpers import load_tool


def _tool():
    return load_tool("benchmark_pretrain")


def test_tiny_run_writes_positive_numbers(tmp_path, capsys):
    out = tmp_path / "result.json"
    # fmt: off
    assert _tool().main([
        "--networks", "R-18", "--batch", "4", "--workers", "1", "--rounds", "1", "--iters", "1",
        "--warmup", "1", "--crop", "32", "--scale-range", "36", "48", "--images", "8",
        "--image-size", "64", "48", "--calibration-repeats", "1", "--calibration-size", "64", "64",
        "--channels-last", "--out", str(out),
    ]) == 0
    # fmt: on
    result = json.loads(out.read_text())
    assert result["torch_threads"] == torch.get_num_threads() > 0
    assert result["settings"]["channels_last"] is True and result["settings"]["bf16"] is False
    assert result["calibration"]["before_s"] > 0 and result["calibration"]["after_s"] > 0
    r18 = result["networks"]["R-18"]
    assert r18["parameters"] == sum(
        p.numel() for p in __import__("torchvision").models.resnet18(num_classes=4).parameters()
    )
    for loop in ("ours", "baseline"):
        assert len(r18["images_per_s"][loop]) == 1
        assert r18["median_images_per_s"][loop] > 0
    ratio = r18["median_images_per_s"]["ours"] / r18["median_images_per_s"]["baseline"]
    assert abs(r18["ratio_ours_over_baseline"] - ratio) < 1e-9
    assert "ours/baseline" in capsys.readouterr().out


def test_baseline_lighting_is_the_recipes():
    tool = _tool()
    image = torch.rand(3, 5, 7)
    torch.manual_seed(3)
    baseline = tool.AlexNetLighting(0.1)(image)
    torch.manual_seed(3)
    alpha = torch.randn(3) * 0.1
    ours = Lighting(0.1)
    assert torch.allclose(baseline, ours.transform(image, {"alpha": alpha}), atol=1e-6)
    assert not torch.equal(baseline, image)

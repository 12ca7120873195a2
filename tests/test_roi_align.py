"""The fast CPU RoIAlign backward (resnet_backbones/modeling/roi_align.py) against torchvision's
op, and its swap into the models the Trainer builds."""

import copy
import json

import pytest
import torch
from detectron2.layers import ROIAlign
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage
from torchvision.ops import roi_align

from resnet_backbones.engine import Trainer, load_config
from resnet_backbones.modeling import roi_align as roi_align_module
from resnet_backbones.modeling.roi_align import (
    FastCPUROIAlign,
    roi_align_backward,
    roi_align_fast_cpu,
    use_fast_cpu_roi_align,
)

from .helpers import QUICKSTART, load_tool

N, C, H, W = 3, 4, 11, 14


def hard_rois(dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """(batch_index, x1, y1, x2, y2) boxes in map pixels (spatial_scale 1): random ones inside,
    across and outside the map's borders, and the cases torchvision's kernel treats specially:
    boxes ending on the last pixel, on -1 and on the map's size, points exactly on a pixel,
    zero-size and reversed boxes, a box over the whole map, several boxes per image."""
    g = torch.Generator().manual_seed(seed)
    n = 60
    xy = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([W + 8.0, H + 8.0]) - 6
    wh = torch.rand(n, 2, generator=g, dtype=torch.float64) * torch.tensor([W, H]) - 1.5
    random = torch.cat([xy, xy + wh], dim=1)
    special = torch.tensor(
        [
            [0.0, 0.0, W - 1.0, H - 1.0],
            [-1.0, -1.0, W + 0.0, H + 0.0],
            [-3.0, -2.0, -1.0, -0.5],  # wholly outside, above and left
            [W + 1.0, H + 1.0, W + 4.0, H + 6.0],  # wholly outside, below and right
            [W - 2.0, H - 2.0, W + 3.0, H + 3.0],  # across the far corner
            [2.0, 3.0, 2.0, 3.0],  # a point
            [5.0, 6.0, 3.0, 2.0],  # reversed
            [0.5, 0.5, 7.5, 7.5],  # points on pixel centres with aligned=False
            [-0.5, -0.5, W - 0.5, H - 0.5],
            [1.0, 1.0, 1.2, 30.0],  # thin and long: a large adaptive grid on one axis
        ],
        dtype=torch.float64,
    )
    boxes = torch.cat([random, special])
    images = torch.randint(0, N, (boxes.shape[0], 1), generator=g).to(torch.float64)
    return torch.cat([images, boxes], dim=1).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 1, 2])
@pytest.mark.parametrize("spatial_scale", [1.0, 0.5])
def test_same_values_and_gradients_as_torchvision(dtype, aligned, sampling_ratio, spatial_scale):
    x = torch.randn(N, C, H, W, dtype=dtype, requires_grad=True)
    rois = hard_rois(dtype)
    rois[:, 1:] /= spatial_scale
    options = ((5, 4), spatial_scale, sampling_ratio, aligned)
    expected = roi_align(x, rois, *options)
    got = roi_align_fast_cpu(x, rois, *options)
    assert got.grad_fn is not None and "FastCPUROIAlign" in type(got.grad_fn).__name__
    torch.testing.assert_close(got, expected, rtol=0, atol=0)  # the forward is torchvision's
    grad = torch.randn_like(expected)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    assert expected_grad.abs().sum() > 0
    torch.testing.assert_close(got_grad, expected_grad)


@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_gradcheck(aligned, sampling_ratio):
    x = torch.randn(2, 2, 6, 7, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor(
        [[0, 0.3, 0.7, 4.1, 5.2], [1, -1.2, 2.2, 3.3, 6.9], [1, 2.6, 0.1, 8.2, 3.7]],
        dtype=torch.float64,
    )
    assert torch.autograd.gradcheck(
        lambda t: roi_align_fast_cpu(t, rois, (3, 2), 1.0, sampling_ratio, aligned), (x,)
    )


@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_rois_in_chunks(monkeypatch, sampling_ratio):
    """Many RoIs (or one large adaptive grid) are split into groups; the sum is the same."""
    from resnet_backbones.modeling import roi_align as module

    monkeypatch.setattr(module, "_CHUNK_ENTRIES", 2000)
    x = torch.randn(N, C, H, W, dtype=torch.float64, requires_grad=True)
    rois = hard_rois(torch.float64)
    grid = module._grid(rois[:, 3] - rois[:, 1], 3, sampling_ratio)
    assert len(module._chunks(grid, grid, 9)) > 5
    g = torch.randn(rois.shape[0], C, 3, 3, dtype=torch.float64)
    (expected,) = torch.autograd.grad(roi_align(x, rois, 3, 1.0, sampling_ratio, True), x, g)
    got = roi_align_backward(g, rois, x.shape, 1.0, sampling_ratio, True)
    torch.testing.assert_close(got, expected)


def test_no_rois_and_rois_of_one_image():
    x = torch.randn(N, C, H, W, requires_grad=True)
    empty = torch.zeros(0, 5)
    out = roi_align_fast_cpu(x, empty, 3, 1.0, 2, True)
    assert out.shape == (0, C, 3, 3)
    (grad,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(grad, torch.zeros_like(x))
    rois = hard_rois(torch.float32)
    rois[:, 0] = 1  # images 0 and 2 get no gradient
    g = torch.randn(rois.shape[0], C, 3, 3)
    grad = roi_align_backward(g, rois, x.shape, 1.0, 2, True)
    (expected,) = torch.autograd.grad(roi_align(x, rois, 3, 1.0, 2, True), x, g)
    torch.testing.assert_close(grad, expected)
    assert grad[0].abs().sum() == 0 and grad[1].abs().sum() > 0


def test_rois_of_the_wrong_shape_are_refused():
    with pytest.raises(ValueError, match=r"rois has shape \(3, 4\); valid: \(R, 5\)"):
        roi_align_fast_cpu(torch.randn(1, 1, 4, 4), torch.zeros(3, 4), 2)


def test_module_uses_torchvision_without_gradient():
    x = torch.randn(N, C, H, W)
    rois = hard_rois(torch.float32)
    module = FastCPUROIAlign((5, 5), 1.0, 0, True)
    reference = ROIAlign((5, 5), 1.0, 0, True)
    torch.testing.assert_close(module(x, rois), reference(x, rois), rtol=0, atol=0)
    x.requires_grad_(True)
    with torch.no_grad():
        assert module(x, rois).grad_fn is None
    out = module(x, rois.double())  # detectron2 casts the boxes to the input's dtype
    assert "FastCPUROIAlign" in type(out.grad_fn).__name__
    reference_out = reference(x, rois)
    assert "FastCPUROIAlign" not in type(reference_out.grad_fn).__name__


def test_module_under_bfloat16_autocast_follows_torchvision():
    """torchvision computes roi_align in float32 under autocast and returns the input's dtype."""
    x = torch.randn(N, C, H, W).bfloat16().requires_grad_(True)
    rois = hard_rois(torch.float32)
    outputs = []
    for module in (ROIAlign((3, 3), 1.0, 2, True), FastCPUROIAlign((3, 3), 1.0, 2, True)):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(x, rois)
        (grad,) = torch.autograd.grad(out.float().square().sum(), x)
        outputs.append((out, grad))
    (expected, expected_grad), (got, got_grad) = outputs
    assert got.dtype == expected.dtype == got_grad.dtype == torch.bfloat16
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    torch.testing.assert_close(got_grad, expected_grad)


def tiny_batch(num_images: int = 2, size: int = 64) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    batch = []
    for _ in range(num_images):
        xy = torch.rand(3, 2, generator=g) * size * 0.5
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.cat([xy, xy + 8 + torch.rand(3, 2, generator=g) * 20], 1))
        instances.gt_classes = torch.randint(0, 3, (3,), generator=g)
        image = torch.randint(0, 256, (3, size, size), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": size, "width": size})
    return batch


def test_trainer_swaps_the_poolers_and_training_is_unchanged(monkeypatch):
    cfg = load_config(QUICKSTART, ["MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN", "False"])
    torch.manual_seed(0)
    reference = Trainer.build_model(cfg)
    poolers = reference.roi_heads.box_pooler.level_poolers
    assert all(type(p) is ROIAlign for p in poolers)
    cfg = load_config(QUICKSTART)
    assert cfg.MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN is True
    torch.manual_seed(0)
    fast = Trainer.build_model(cfg)
    poolers = fast.roi_heads.box_pooler.level_poolers
    assert len(poolers) == 4 and all(type(p) is FastCPUROIAlign for p in poolers)
    fast.load_state_dict(reference.state_dict())

    # Two training iterations (AdamW, as the quickstart) of each model: the same losses and
    # gradients at every step, so the same weights after them; the fast backward really ran.
    backward_calls = []
    real_backward = roi_align_module.roi_align_backward

    def counted_backward(*args, **kwargs):
        backward_calls.append(1)
        return real_backward(*args, **kwargs)

    monkeypatch.setattr(roi_align_module, "roi_align_backward", counted_backward)
    batch = tiny_batch()
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (reference, fast)]
    for iteration in range(2):
        results = []
        for model, optimizer in zip((reference, fast), optimizers):
            torch.manual_seed(iteration)  # the same RoI sampling in both
            with EventStorage(iteration):
                losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            optimizer.step()
            results.append((losses, grads))
        (ref_losses, ref_grads), (fast_losses, fast_grads) = results
        for key in ref_losses:
            torch.testing.assert_close(fast_losses[key], ref_losses[key])
        assert ref_grads.keys() == fast_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(fast_grads[name], ref_grads[name], rtol=1e-4, atol=1e-6)
    assert len(backward_calls) >= 2  # at least one pooler's backward per iteration


def test_use_fast_cpu_roi_align_counts_and_keeps_settings():
    model = torch.nn.Module()
    model.poolers = torch.nn.ModuleList(
        [ROIAlign((7, 7), 1 / s, 2, aligned=s % 8 == 0) for s in (4, 8)]
    )
    model.other = copy.deepcopy(model.poolers[0])
    assert use_fast_cpu_roi_align(model) == 3
    assert use_fast_cpu_roi_align(model) == 0  # already swapped
    for module, scale, aligned in [
        (model.poolers[0], 1 / 4, False),
        (model.poolers[1], 1 / 8, True),
    ]:
        assert type(module) is FastCPUROIAlign
        assert (
            module.output_size,
            module.spatial_scale,
            module.sampling_ratio,
            module.aligned,
        ) == (
            (7, 7),
            scale,
            2,
            aligned,
        )


def test_benchmark_script_writes_the_table_rows(tmp_path):
    tool = load_tool("benchmark_train_step")
    out = tmp_path / "result.json"
    assert tool.main(["--config", QUICKSTART, "--quick", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["calibration_s"] > 0 and result["calibration_size"] == [64, 64]
    assert [len(v) for v in result["s_per_iter"].values()] == [1, 1]
    for row in result["rows"]:
        assert row["baseline_value"] > 0 and row["ours_value"] > 0
        assert row["ratio"] == pytest.approx(row["baseline_value"] / row["ours_value"])
        assert row["unit"] in ("s", "s/iter")

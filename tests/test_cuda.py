"""On a GPU: deformable convolution (v1 and modulated v2) forward and backward equal to the CPU,
and every detection preset training a step in every form it claims. Skipped where CUDA is not
available (the development and CI machines); run with `pytest tests/test_cuda.py` on a GPU."""

import math
import os

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from resnet_backbones.engine import load_config
from resnet_backbones.modeling.blocks import BottleneckBlock
from resnet_backbones.modeling.spec import BlockOptions
from resnet_backbones.presets import apply_preset

from .helpers import BASE_CONFIGS, REPO, preset_forms, randomize_norm_statistics

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize("modulated", [False, True])
def test_a_dcn_block_computes_the_same_on_the_gpu_as_on_the_cpu(modulated):
    torch.manual_seed(0)
    options = BlockOptions(norm="BN", deform_modulated=modulated, stride_in_1x1=False)
    block = BottleneckBlock(
        32, 64, bottleneck_channels=16, stride=2, deform=True, first_in_stage=True, options=options
    ).train()
    randomize_norm_statistics(block)
    with torch.no_grad():  # non-zero offsets (and mask), so the sampling is really deformed
        block.conv2_offset.weight.normal_(0, 0.05)
        block.conv2_offset.bias.normal_(0, 0.5)
    gpu = BottleneckBlock(
        32, 64, bottleneck_channels=16, stride=2, deform=True, first_in_stage=True, options=options
    ).train()
    gpu.load_state_dict(block.state_dict())
    gpu.cuda()

    x = torch.randn(2, 32, 23, 29, dtype=torch.double)
    block.double()
    gpu.double()
    x_gpu = x.cuda().requires_grad_()
    x = x.requires_grad_()
    out, out_gpu = block(x), gpu(x_gpu)
    weights = torch.randn_like(out)
    (out * weights).sum().backward()
    (out_gpu * weights.cuda()).sum().backward()
    torch.testing.assert_close(out_gpu.cpu(), out, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(x_gpu.grad.cpu(), x.grad, rtol=1e-9, atol=1e-9)
    for (name, p), p_gpu in zip(block.named_parameters(), gpu.parameters()):
        torch.testing.assert_close(p_gpu.grad.cpu(), p.grad, rtol=1e-9, atol=1e-9, msg=name)
    assert block.conv2_offset.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("name, form", preset_forms())
def test_every_preset_trains_a_step_on_the_gpu_in_every_form_it_claims(name, form):
    cfg = load_config(os.path.join(REPO, "configs", BASE_CONFIGS[form]))
    apply_preset(cfg, name)
    cfg.MODEL.DEVICE = "cuda"
    model = build_model(cfg).train()
    g = torch.Generator().manual_seed(0)
    batch = []
    for h, w in [(480, 640), (512, 384)]:
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 300.0, 280.0], [100, 60, 370, 450]]))
        instances.gt_classes = torch.tensor([0, 5])
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        batch.append({"image": image, "instances": instances})
    with EventStorage(0):
        losses = model(batch)
    total = sum(losses.values())
    assert math.isfinite(total.item()), losses
    total.backward()
    grads = [p.grad for n, p in model.named_parameters() if "backbone" in n and p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert all(p.is_cuda for p in model.parameters())

"""Issue 12, section 3: activation checkpointing, mixed precision and channels_last training.

Each option is checked two ways: it computes what the plain model computes (outputs, every
gradient, the BatchNorm statistics), and it takes effect (fewer saved activations, bf16 autocast
active in the model's forward, channels_last inputs reaching the convolutions).
"""

import copy

import pytest
import torch
from detectron2.modeling import build_backbone
from torch import nn

from resnet_backbones.modeling import ResNetFamily, ReXNet, resnet_spec
from resnet_backbones.presets import preset_config

from .helpers import default_cfg, r18_opts

STAGES = ["stem", "res2", "res3", "res4", "res5"]


def _fpn_cfg(opts):
    return default_cfg("Base-RCNN-FPN.yaml", ["MODEL.FPN.OUT_CHANNELS", "32", *opts])


# name -> (config, input side): BN everywhere, FrozenBN below FREEZE_AT 2, dropout, ReXNet.
BACKBONE_CONFIGS = {
    "R18-FPN-BN": lambda: (_fpn_cfg([*r18_opts("BN"), "MODEL.BACKBONE.FREEZE_AT", "0"]), 32),
    "R50-FPN-FrozenBN": lambda: (_fpn_cfg(["MODEL.RESNETS.NORM", "FrozenBN"]), 32),
    "WRN-dropout": lambda: (_wrn_cfg(), 32),
    "ReXNet-FPN-BN": lambda: (
        _fpn_cfg(
            ["MODEL.BACKBONE.NAME", "build_rexnet_fpn_backbone", "MODEL.BACKBONE.FREEZE_AT", "0"]
        ),
        32,
    ),
}


def _wrn_cfg():
    """The WRN-28-10 preset (pre-activation, dropout 0.3), at depth 10 and width 1."""
    cfg = preset_config("WRN-28-10")
    cfg.merge_from_list(["MODEL.RESNETS.DEPTH", 10, "MODEL.RESNETS.WIDEN_FACTOR", 1])
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def _section(cfg):
    rexnet = "rexnet" in cfg.MODEL.BACKBONE.NAME
    return cfg.MODEL.REXNET if rexnet else cfg.MODEL.RESNETS


def _pair(name):
    """The backbone of ``name`` without and with checkpointing of every stage, same weights."""
    cfg, side = BACKBONE_CONFIGS[name]()
    stages = [s for s in STAGES if not (s == "res5" and "cifar" in cfg.MODEL.RESNETS.STEM)]
    torch.manual_seed(0)
    plain = build_backbone(cfg).train()
    cfg.defrost()
    _section(cfg).ACTIVATION_CHECKPOINTING = stages
    checkpointed = build_backbone(cfg).train()
    checkpointed.load_state_dict(plain.state_dict())
    return plain, checkpointed, side


def _bottom_up(backbone):
    return getattr(backbone, "bottom_up", backbone)


def _step(model, x, seed=3):
    """Outputs, the gradients of every parameter and of the input, and the buffers after one
    training forward and backward of a fixed random loss."""
    torch.manual_seed(seed)  # the dropout masks
    x = x.clone().requires_grad_(True)
    outputs = model(x)
    g = torch.Generator().manual_seed(1)
    loss = sum((out * torch.randn(out.shape, generator=g)).sum() for out in outputs.values())
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    return outputs, grads, x.grad, buffers


@pytest.mark.parametrize("name", sorted(BACKBONE_CONFIGS))
def test_checkpointing_computes_what_the_plain_backbone_computes(name):
    """Outputs, every gradient and the BatchNorm running statistics (updated once per step, not
    again by the recomputation) equal the plain backbone's; dropout draws the same masks."""
    plain, checkpointed, side = _pair(name)
    x = torch.randn(2, 3, side, side)
    before = {n: b.clone() for n, b in plain.named_buffers()}
    expected = _step(plain, x)
    got = _step(checkpointed, x)
    for e, g in zip(expected[0].values(), got[0].values()):
        torch.testing.assert_close(g, e, rtol=0, atol=0)
    assert expected[1].keys() == got[1].keys()
    assert len(expected[1]) == len([p for p in plain.parameters() if p.requires_grad])
    for key in expected[1]:
        torch.testing.assert_close(got[1][key], expected[1][key], rtol=0, atol=0, msg=key)
    torch.testing.assert_close(got[2], expected[2], rtol=0, atol=0)
    for key in expected[3]:
        torch.testing.assert_close(got[3][key], expected[3][key], rtol=0, atol=0, msg=key)
    if any(isinstance(m, nn.BatchNorm2d) for m in plain.modules()):
        # The statistics moved in the step: the comparison above checked something.
        assert any(
            not torch.equal(b, before[n]) for n, b in expected[3].items() if "running_mean" in n
        )


def _saved_bytes(model, x):
    """Bytes of the tensors the autograd graph saves outside checkpoints during the forward."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x.requires_grad_(True))
    sum(o.sum() for o in out.values()).backward()
    return total


def test_checkpointing_takes_effect_in_training_only():
    """In training the checkpointed backbone saves a fraction of the plain one's activations,
    and its blocks run twice (forward and recomputation); in eval mode or without grad, once."""
    plain, checkpointed, side = _pair("R18-FPN-BN")
    x = torch.randn(2, 3, side, side)
    plain_bytes = _saved_bytes(plain, x.clone())
    assert _saved_bytes(checkpointed, x.clone()) < 0.3 * plain_bytes

    calls = []
    block = _bottom_up(checkpointed).res3[0]
    block.register_forward_pre_hook(lambda *_: calls.append(1))
    checkpointed(x.clone().requires_grad_(True))["p2"].sum().backward()
    assert len(calls) == 2
    calls.clear()
    with torch.no_grad():
        checkpointed(x)
    checkpointed.eval()
    checkpointed(x.clone().requires_grad_(True))["p2"].sum().backward()
    assert len(calls) == 2


def test_checkpointing_replays_autocast():
    """Under bf16 autocast the recomputation runs in bf16 too: the gradients equal the plain
    backbone's under autocast."""
    plain, checkpointed, side = _pair("R18-FPN-BN")
    x = torch.randn(2, 3, side, side)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected, got = _step(plain, x), _step(checkpointed, x)
    assert expected[0]["p2"].dtype == torch.bfloat16
    for key in expected[1]:
        torch.testing.assert_close(got[1][key], expected[1][key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    "value, message",
    [
        (["res6"], r"activation_checkpointing entry = 'res6' is not valid; valid values: 'stem'"),
        ("res4", r"activation_checkpointing = 'res4' is not valid; it must be a list of stage"),
    ],
)
def test_checkpointing_names_a_bad_stage(value, message):
    with pytest.raises(ValueError, match=message):
        ResNetFamily(resnet_spec(18, res2_out_channels=64), activation_checkpointing=value)
    with pytest.raises(ValueError, match=message):
        ReXNet(activation_checkpointing=value)


def test_checkpointing_key_names_itself():
    cfg = _fpn_cfg(["MODEL.RESNETS.ACTIVATION_CHECKPOINTING", "['res4', 'res9']"])
    with pytest.raises(
        ValueError, match=r"MODEL.RESNETS.ACTIVATION_CHECKPOINTING entry = 'res9' is not valid"
    ):
        build_backbone(cfg)


def test_checkpointing_deepcopy_keeps_the_choice():
    """The choice is part of the module (a deepcopy, as EMA makes, checkpoints the same)."""
    _, checkpointed, _ = _pair("R18-FPN-BN")
    assert _bottom_up(copy.deepcopy(checkpointed)).activation_checkpointing == set(STAGES)


# ------------------------------------------------------------------------------------------
# channels_last (MODEL.CHANNELS_LAST)
# ------------------------------------------------------------------------------------------
def _channels_last_pair(build):
    """``build``'s model of R18-FPN-BN in the default format and in channels_last, same
    weights."""
    cfg, _ = BACKBONE_CONFIGS["R18-FPN-BN"]()
    cfg.merge_from_list(
        ["MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32"]
    )
    torch.manual_seed(0)
    plain = build(cfg)
    cfg.MODEL.CHANNELS_LAST = True
    fast = build(cfg)
    fast.load_state_dict(plain.state_dict())
    return plain, fast


def _detection_batch():
    from detectron2.structures import Boxes, Instances

    g = torch.Generator().manual_seed(0)
    batch = []
    for h, w in ((64, 80), (72, 64)):
        instances = Instances((h, w))
        instances.gt_boxes = Boxes(torch.tensor([[4.0, 6.0, 40.0, 50.0], [20.0, 10.0, 60.0, 44.0]]))
        instances.gt_classes = torch.tensor([0, 1])
        image = torch.randint(0, 256, (3, h, w), generator=g, dtype=torch.uint8)
        batch.append({"image": image, "instances": instances, "height": h, "width": w})
    return batch


def test_channels_last_computes_what_the_default_format_computes():
    """The FPN backbone's features, every gradient and the BN statistics of a training step,
    and its features in eval mode, equal the default format's within float rounding.

    The backbone rather than the whole detector: with random weights the RPN's objectness
    scores nearly tie, and rounding alone reorders which proposals are kept."""
    plain, fast = _channels_last_pair(build_backbone)
    x = torch.randn(2, 3, 64, 64)
    expected, got = _step(plain.train(), x), _step(fast.train(), x)
    assert got[0]["p2"].is_contiguous(memory_format=torch.channels_last)
    for key in expected[0]:
        _assert_close_to_scale(got[0][key], expected[0][key], 1e-4, key)
    assert expected[1].keys() == got[1].keys() and expected[1]
    for key in expected[1]:
        _assert_close_to_scale(got[1][key], expected[1][key], 1e-3, key)
    for key in expected[3]:
        _assert_close_to_scale(got[3][key], expected[3][key], 1e-4, key)
    with torch.no_grad():
        expected, got = plain.eval()(x), fast.eval()(x)
    for key in expected:
        _assert_close_to_scale(got[key], expected[key], 1e-4, key)


def _assert_close_to_scale(got, expected, tolerance, key):
    """Every element within ``tolerance`` times the largest magnitude of ``expected``: the
    rounding of a different summation order, not a different computation."""
    scale = expected.abs().max().item()
    error = (got - expected).abs().max().item()
    assert error <= tolerance * scale, f"{key}: max error {error:.3g}, scale {scale:.3g}"


def test_channels_last_takes_effect():
    """Every convolution of the backbone and the FPN gets a channels_last input and has
    channels_last weights; without the option the first one gets neither."""
    from detectron2.modeling import build_model

    plain, fast = _channels_last_pair(build_model)
    for model, expected in ((fast, True), (plain, False)):
        formats = []

        def record(module, inputs, formats=formats):
            formats.append(
                (
                    inputs[0].is_contiguous(memory_format=torch.channels_last),
                    module.weight.is_contiguous(memory_format=torch.channels_last),
                )
            )

        convs = [m for m in model.backbone.modules() if isinstance(m, nn.Conv2d)]
        for conv in convs:
            conv.register_forward_pre_hook(record)
        with torch.no_grad():
            model.eval()(_detection_batch()[:1])
        assert len(formats) >= len(convs)
        if expected:
            assert all(f == (True, True) for f in formats)
        else:
            assert formats[0] == (False, False)

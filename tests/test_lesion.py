"""Block and layer deletion and the responses of 3x3 layers (resnet_backbones.modeling.lesion),
the model-level pieces of issue 13's ``lesion`` and ``responses`` experiments. Every network is
built through the config path (build_classification_model), tiny."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from resnet_backbones.modeling import (
    BLOCK_ORDERS,
    LayerResponses,
    delete_blocks,
    layer_responses,
    plain_layers,
    random_deletions,
    residual_blocks,
    response_layers,
)
from resnet_backbones.modeling.classifier import build_classification_model

from .helpers import default_cfg, randomize_norm_statistics

CIFAR = "CIFAR/resnet_20.yaml"
# A ResNet-50 of tiny widths (16 bottleneck blocks; 8 channels in the 3x3 convs of res2; a
# bottleneck network keeps its 256 outputs in res2).
TINY_50 = [
    "MODEL.BACKBONE.NAME", "build_resnet_family_backbone", "MODEL.RESNETS.DEPTH", "50",
    "MODEL.RESNETS.WIDTH_PER_GROUP", "4",
    "MODEL.RESNETS.STEM_OUT_CHANNELS", "8", "MODEL.RESNETS.NORM", "BN",
    "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.NUM_GROUPS", "2",
]  # fmt: skip


def _resnets(**keys) -> list[str]:
    return [x for k, v in keys.items() for x in (f"MODEL.RESNETS.{k}", str(v))]


def _cifar_shortcut(order: str) -> str:
    return "B" if order == "preact" else "A"


# Every block type, order and option the builder makes: (base config, overrides).
VARIANTS = {
    # Option A, as the paper's CIFAR networks (B for "preact", where A is not defined).
    **{
        f"basic-{o}": (CIFAR, _resnets(DEPTH=8, BLOCK_ORDER=o, SHORTCUT=_cifar_shortcut(o)))
        for o in BLOCK_ORDERS
    },
    **{f"bottleneck-{o}": ("", TINY_50 + _resnets(BLOCK_ORDER=o)) for o in BLOCK_ORDERS},
    "basic-option-C": (CIFAR, _resnets(DEPTH=8, SHORTCUT="C")),
    "basic-relu_preact-option-B": (
        CIFAR, _resnets(DEPTH=8, SHORTCUT="B", BLOCK_ORDER="relu_preact")
    ),
    "wrn-dropout": (CIFAR, _resnets(DEPTH=16, WIDEN_FACTOR=2, DROPOUT=0.3, SHORTCUT="B")),
    "se": ("", TINY_50 + _resnets(SE_RATIO=4)),
    "res2net": (
        "", TINY_50 + _resnets(RES2NET_SCALE=4, RES2NET_WIDTH=2, NUM_GROUPS=1, WIDTH_PER_GROUP=64)
    ),
    "dcn-v2": (
        "",
        TINY_50 + _resnets(DEFORM_ON_PER_STAGE="[False, True, True, True]", DEFORM_MODULATED=True),
    ),
    "resnet-d": ("", TINY_50 + _resnets(STEM="deep", AVG_DOWN=True)),
    "rexnet": ("", ["MODEL.BACKBONE.NAME", "build_rexnet_backbone", "MODEL.REXNET.WIDTH_MULT", "0.5"]),
}  # fmt: skip


def _model(base: str, opts, *, randomize: bool = True):
    model = build_classification_model(default_cfg(base, opts), num_classes=3).eval()
    if randomize:
        randomize_norm_statistics(model)
    return model


def _images(n: int = 2, side: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, side, side, generator=torch.Generator().manual_seed(5))


def _zero_branch(block):
    """A copy of ``block`` whose residual branch outputs zeros: its last conv's weight and its
    last norm's scale and shift set to zero by hand."""
    block = copy.deepcopy(block)
    last = (
        block.conv_project
        if hasattr(block, "conv_project")
        else block.get_submodule(f"conv{block.last_conv}")
    )
    with torch.no_grad():
        last.weight.zero_()
        norm = getattr(last, "norm", None)
        if norm is not None:
            norm.weight.zero_()
            norm.bias.zero_()
    return block


# --------------------------------------------------------------------------------------------
# Deleting residual blocks
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_a_deleted_block_is_its_shortcut_alone(variant):
    """An identity-shortcut block becomes an identity (output == input); a block with a
    projection or option-A shortcut becomes that shortcut, applied to what the block's own
    shortcut reads (the activated input in the pre-activation orders)."""
    model = _model(*VARIANTS[variant])
    blocks = residual_blocks(model)
    # Each block is replaced on its own, so deleting all at once tests each one (one copy).
    lesioned = delete_blocks(model, [name for name, _ in blocks])
    kinds = set()
    for name, block in blocks:
        deleted = lesioned.get_submodule(name)
        x = torch.randn(2, block.in_channels, 8, 8)
        with torch.no_grad():
            out = deleted(x)
            identity = getattr(block, "shortcut", None) is None and (
                block.in_channels == block.out_channels and block.stride == 1
            )
            if identity:
                kinds.add("identity")
                assert torch.equal(out, x), name
            elif getattr(block, "order", None) in ("post", "bn_after_add"):
                # These blocks' shortcut reads the input; their post-addition ops go with them.
                kinds.add("projection")
                assert torch.equal(out, block.shortcut(x)), name
            else:
                # The block itself with a zero branch is its shortcut path here: the addition
                # comes last (relu_before_add, the pre-activation orders, ReXNet).
                kinds.add("projection")
                assert torch.equal(out, _zero_branch(block)(x)), name
                assert not torch.allclose(out, block(x)), name
            assert out.shape == block(x).shape
    # Option C projects in every block; ReXNet's widths grow in every block (zero-padding).
    one_kind = variant in ("basic-option-C", "rexnet")
    assert kinds == ({"projection"} if one_kind else {"identity", "projection"})


@pytest.mark.parametrize("order", ["post", "relu_before_add", "relu_preact", "preact"])
def test_deleting_blocks_whose_last_norm_is_zero_changes_nothing(order):
    """ZERO_INIT_RESIDUAL zeroes each branch's last norm (the last conv in "preact", which has
    none), so the network is its shortcuts: deleting blocks, downsampling ones (option A)
    included, leaves the logits unchanged. ("bn_after_add" is left out: deletion drops its
    norm after the addition, which a zero branch keeps.)"""
    model = _model(
        CIFAR,
        _resnets(
            DEPTH=14, BLOCK_ORDER=order, ZERO_INIT_RESIDUAL=True, SHORTCUT=_cifar_shortcut(order)
        ),
        randomize=False,
    )
    names = [name for name, _ in residual_blocks(model)]
    images = _images()
    with torch.no_grad():
        expected = model.logits(images)
        for deleted in ([names[0]], [names[2]], names):
            assert torch.equal(delete_blocks(model, deleted).logits(images), expected), deleted
        # The test can fail: with a non-zero last norm the same deletion changes the logits.
        last = model.get_submodule(names[0]).get_submodule(f"conv{2}")
        target = last.norm if getattr(last, "norm", None) is not None else last
        target.weight.normal_()
        changed = model.logits(images)
        assert not torch.allclose(delete_blocks(model, [names[0]]).logits(images), changed)


def test_deleting_a_block_of_a_trained_like_residual_network_changes_its_output():
    model = _model(CIFAR, _resnets(DEPTH=8))
    images = _images()
    with torch.no_grad():
        expected = model.logits(images)
        for name, _ in residual_blocks(model):
            assert not torch.allclose(delete_blocks(model, [name]).logits(images), expected)


def test_residual_blocks_are_listed_in_forward_order_and_plain_blocks_are_not():
    assert [n for n, _ in residual_blocks(_model(CIFAR, _resnets(DEPTH=14)))] == [
        "res2.0", "res2.1", "res3.0", "res3.1", "res4.0", "res4.1",
    ]  # fmt: skip
    plain = _model(CIFAR, _resnets(DEPTH=14, SHORTCUT="none"))
    assert residual_blocks(plain) == []
    # ReXNet: its stride-1 bottlenecks that do not narrow; the strided ones have no shortcut.
    rexnet = _model(*VARIANTS["rexnet"])
    listed = {n for n, _ in residual_blocks(rexnet)}
    bottlenecks = [
        (n, m) for n, m in rexnet.named_modules() if type(m).__name__ == "LinearBottleneck"
    ]
    assert 0 < len(listed) < len(bottlenecks)
    for name, block in bottlenecks:
        assert (name in listed) == (block.stride == 1 and block.in_channels <= block.out_channels)


def test_the_original_is_unchanged_and_the_copy_keeps_parameter_names():
    model = _model(CIFAR, _resnets(DEPTH=8, SHORTCUT="B", BLOCK_ORDER="preact"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types = [type(m) for m in model.modules()]
    lesioned = delete_blocks(model, ["res2.0", "res3.0"])
    assert [type(m) for m in model.modules()] == types
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    # The deleted blocks' shortcuts (and pre-activation norms) keep their names; the branches
    # are gone.
    names = set(lesioned.state_dict())
    assert names < set(before)
    assert "res3.0.shortcut.weight" in names and "res3.0.conv1.weight" not in names
    assert not any(n.startswith("res2.0.") for n in names)
    assert lesioned.training == model.training


def test_bad_names_are_refused_with_the_valid_ones():
    model = _model(CIFAR, _resnets(DEPTH=8))
    with pytest.raises(ValueError) as error:
        delete_blocks(model, ["res2.0", "res9.0", "res2.0.conv1"])
    message = str(error.value)
    assert "['res9.0', 'res2.0.conv1']" in message
    assert "'res9.0' is not a module of the model" in message
    assert "'res2.0.conv1' is not a deletable layer" in message
    assert "Deletable in this ClassificationModel: ['res2.0', 'res3.0', 'res4.0']" in message
    plain = _model(CIFAR, _resnets(DEPTH=8, SHORTCUT="none"))
    with pytest.raises(ValueError, match=r"'res2.0' is a block without a shortcut"):
        delete_blocks(plain, ["res2.0"])
    with pytest.raises(ValueError, match=r"cannot delete \['res3.0.conv1'\]"):
        delete_blocks(plain, ["res3.0.conv1"])  # 16 -> 32 channels, stride 2


# --------------------------------------------------------------------------------------------
# Deleting layers of plain networks
# --------------------------------------------------------------------------------------------
def test_plain_layers_are_the_3x3_layers_that_keep_their_shape():
    plain = _model(CIFAR, _resnets(DEPTH=8, SHORTCUT="none"))
    assert [n for n, _ in plain_layers(plain)] == [
        "res2.0.conv1", "res2.0.conv2", "res3.0.conv2", "res4.0.conv2",
    ]  # fmt: skip
    assert plain_layers(_model(CIFAR, _resnets(DEPTH=8))) == []
    bottleneck = _model("", TINY_50 + _resnets(SHORTCUT="none", DEPTH=50))
    names = [n for n, _ in plain_layers(bottleneck)]
    # The 3x3 conv of each block but the strided first ones of res3..res5; no 1x1 conv.
    assert len(names) == 16 - 3 and all(n.endswith(".conv2") for n in names)


@pytest.mark.parametrize("order", BLOCK_ORDERS)
def test_deleting_a_layer_of_a_plain_network_changes_its_output(order):
    plain = _model(CIFAR, _resnets(DEPTH=8, SHORTCUT="none", BLOCK_ORDER=order))
    images = _images()
    with torch.no_grad():
        expected = plain.logits(images)
        for name, _ in plain_layers(plain):
            lesioned = delete_blocks(plain, [name])
            assert not torch.allclose(lesioned.logits(images), expected)
            # The layer's unit goes whole: the conv with its norm, and a norm of the unit held
            # outside the conv ("preact": the norm before it; "bn_after_add": after the addition).
            block_name, _, conv = name.rpartition(".")
            parts = [name]
            if order == "preact" and conv != "conv1":
                parts.append(f"{block_name}.norm{conv[4:]}")
            if order == "bn_after_add" and conv == "conv2":
                parts.append(f"{block_name}.add_norm")
            keys = set(plain.state_dict())
            removed = keys - set(lesioned.state_dict())
            assert removed == {k for k in keys if k.startswith(tuple(p + "." for p in parts))}


@pytest.mark.parametrize("order", ["post", "bn_after_add", "relu_before_add"])
def test_a_deleted_plain_layer_is_an_identity(order):
    """conv, norm and ReLU of the deleted layer become an identity: the block computes its
    other layer alone on its (non-negative) input."""
    plain = _model(CIFAR, _resnets(DEPTH=8, SHORTCUT="none", BLOCK_ORDER=order))
    block = plain.get_submodule("res2.0")
    x = torch.randn(2, 16, 8, 8).relu()  # a plain block's input is a ReLU's output
    after_conv2 = block.add_norm if order == "bn_after_add" else torch.nn.Identity()
    with torch.no_grad():
        without_conv1 = delete_blocks(plain, ["res2.0.conv1"]).get_submodule("res2.0")
        assert torch.equal(without_conv1(x), F.relu(after_conv2(block.conv2(x))))
        without_conv2 = delete_blocks(plain, ["res2.0.conv2"]).get_submodule("res2.0")
        assert torch.equal(without_conv2(x), F.relu(block.conv1(x)))


# --------------------------------------------------------------------------------------------
# Random deletions
# --------------------------------------------------------------------------------------------
def test_random_deletions_are_deterministic_distinct_and_in_order():
    names = [f"b{i}" for i in range(9)]
    draws = random_deletions(names, 4, 5, seed=3)
    assert draws == random_deletions(names, 4, 5, seed=3)
    assert draws != random_deletions(names, 4, 5, seed=4)
    assert len(draws) == 5 and len({tuple(d) for d in draws}) > 1
    for draw in draws:
        assert len(set(draw)) == 4 and draw == sorted(draw, key=names.index)
    assert random_deletions(names, 9, 1, seed=0) == [names]
    with pytest.raises(ValueError, match=r"k = 10 is not valid; it must be an int in \[0, 9\]"):
        random_deletions(names, 10, 1, seed=0)
    with pytest.raises(ValueError, match="draws = 0 is not valid"):
        random_deletions(names, 1, 0, seed=0)
    with pytest.raises(ValueError, match=r"repeated: \['b1'\]"):
        random_deletions(["b1", "b1"], 1, 1, seed=0)


# --------------------------------------------------------------------------------------------
# Layer responses
# --------------------------------------------------------------------------------------------
def test_response_layers_are_the_3x3_convs_read_after_their_norm():
    model = _model(CIFAR, _resnets(DEPTH=8))
    layers = response_layers(model)
    assert [n for n, _, _ in layers] == [
        "stem.conv1", "res2.0.conv1", "res2.0.conv2", "res3.0.conv1", "res3.0.conv2",
        "res4.0.conv1", "res4.0.conv2",
    ]  # fmt: skip
    assert all(measured is conv.norm for _, conv, measured in layers)
    # No norm after the conv: its output ("bn_after_add"'s last conv; "preact").
    layers = dict(
        (n, (c, m))
        for n, c, m in response_layers(_model(CIFAR, _resnets(DEPTH=8, BLOCK_ORDER="bn_after_add")))
    )
    assert layers["res2.0.conv2"][1] is layers["res2.0.conv2"][0]
    assert layers["res2.0.conv1"][1] is layers["res2.0.conv1"][0].norm
    # DCN: the deformable 3x3 convs count, their offset convs do not.
    names = [n for n, _, _ in response_layers(_model(*VARIANTS["dcn-v2"]))]
    assert "res3.0.conv2" in names and not any("offset" in n for n in names)


def test_the_response_std_equals_a_hand_computed_std():
    """Two batches streamed through the hooks give the std of the responses of both, computed
    here with torch ops on the layer outputs (conv, then eval-mode BN)."""
    model = _model(CIFAR, _resnets(DEPTH=8))
    batches = [_images(2), torch.randn(3, 3, 16, 16)]
    for statistic in ("channel", "all"):
        stds = dict(layer_responses(model, batches, statistic=statistic))
        images = torch.cat(batches)
        stem, block = model.get_submodule("stem.conv1"), model.get_submodule("res2.0")
        with torch.no_grad():
            responses = {}
            for name, conv, x in [
                ("stem.conv1", stem, images),
                ("res2.0.conv1", block.conv1, F.relu(stem(images))),
            ]:
                raw = F.conv2d(x, conv.weight, padding=1)
                norm = conv.norm
                responses[name] = F.batch_norm(
                    raw, norm.running_mean, norm.running_var, norm.weight, norm.bias,
                    eps=norm.eps,
                ).double()  # fmt: skip
        for name, response in responses.items():
            if statistic == "channel":
                expected = response.transpose(0, 1).flatten(1).std(dim=1, correction=0).mean()
            else:
                expected = response.std(correction=0)
            assert stds[name] == pytest.approx(float(expected), rel=1e-5), (name, statistic)
    assert stds["stem.conv1"] != dict(layer_responses(model, batches))["stem.conv1"]


def test_layer_responses_take_loader_batches_and_restore_the_mode():
    model = _model(CIFAR, _resnets(DEPTH=8)).train()
    images = _images(4)
    from_tensors = layer_responses(model, [images])
    assert model.training and model._backbone.training
    assert all(m.training for m in model.modules())
    inputs = [{"image": image, "label": 0} for image in images]
    from_dicts = layer_responses(model, [inputs[:2], inputs[2:]])
    assert [n for n, _ in from_dicts] == [n for n, _ in from_tensors]
    for (_, a), (_, b) in zip(from_dicts, from_tensors):
        assert a == pytest.approx(b, rel=1e-6)
    with pytest.raises(
        ValueError, match=r"statistic = 'max' is not valid; valid: \['channel', 'all'\]"
    ):
        LayerResponses(model).result("max")


def test_a_deleted_res2net_split_of_a_plain_bottleneck_is_an_identity():
    """Res2Net's split 3x3 is one layer; without it the block is 1x1, norm, ReLU, 1x1, norm,
    ReLU."""
    opts = _resnets(RES2NET_SCALE=4, RES2NET_WIDTH=2, NUM_GROUPS=1, WIDTH_PER_GROUP=64)
    plain = _model("", TINY_50 + opts + _resnets(SHORTCUT="none"))
    assert "res2.1.conv2" in dict(plain_layers(plain))
    block = plain.get_submodule("res2.1")
    x = torch.randn(2, block.in_channels, 8, 8).relu()
    with torch.no_grad():
        deleted = delete_blocks(plain, ["res2.1.conv2"]).get_submodule("res2.1")
        assert torch.equal(deleted(x), F.relu(block.conv3(F.relu(block.conv1(x)))))
        assert not torch.allclose(deleted(x), block(x))

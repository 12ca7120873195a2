"""Model transformations and statistics for the papers' analyses of residual networks.

* Lesion study (Veit et al., 2016, "Residual Networks Behave Like Ensembles of Relatively
  Shallow Networks", Sec. 4): :func:`residual_blocks` and :func:`plain_layers` list what can be
  deleted, :func:`delete_blocks` returns a copy of a model with some of them deleted, and
  :func:`random_deletions` draws the random sets of its Fig. 5.
* Layer responses (He et al., 2016, "Deep Residual Learning", Sec. 4.2 and Fig. 7):
  :class:`LayerResponses` and :func:`layer_responses`, the standard deviation of every 3x3
  layer's response, "after BN and before other nonlinearity (ReLU/addition)".

Deletion is a transformation of the model (modules swapped in a deep copy), never a change to
the training or evaluation code: the copy is a network like any other, evaluated as the
original is. Everything works on any module tree that contains our blocks (a
:class:`~resnet_backbones.modeling.classifier.ClassificationModel`, an ``ImageClassifier``, a
backbone, a detector), and names modules by their qualified names in that tree (``"res2.0"`` in
a ClassificationModel, ``"backbone.res2.0"`` in an ImageClassifier).
"""

from __future__ import annotations

import copy
import random
from collections import OrderedDict
from typing import Iterable, Sequence

import torch
from detectron2.layers import Conv2d
from torch import nn

from .blocks import _ResidualBlock
from .ops import DeformConv2d, Res2NetConv, ZeroPadShortcut
from .rexnet import LinearBottleneck

__all__ = [
    "RESPONSE_STATISTICS",
    "LayerResponses",
    "delete_blocks",
    "layer_responses",
    "plain_layers",
    "random_deletions",
    "residual_blocks",
    "response_layers",
    "shortcut_path",
]

_PREACTIVATED_ORDERS = ("relu_preact", "preact")


# --------------------------------------------------------------------------------------------
# What can be deleted
# --------------------------------------------------------------------------------------------
def residual_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The residual blocks of ``model`` in forward order, with their qualified names.

    A residual block is one of our ResNet-family blocks with a shortcut (every block type and
    order; blocks of a plain network, ``SHORTCUT "none"``, are not residual) or a ReXNet linear
    bottleneck with one (stride 1; its strided blocks have no shortcut and are left out).
    Blocks are listed in the order of ``named_modules``, which is the order they run in for our
    networks (stages and blocks are registered in forward order).
    """
    return [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, (_ResidualBlock, LinearBottleneck)) and module.has_shortcut
    ]


def plain_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The deletable layers of a plain network (``SHORTCUT "none"``), in forward order.

    Veit et al. delete the layers of a plain network one at a time. A layer is a 3x3 conv of a
    plain block (with its norm, and the ReLU that the order puts around it), named
    ``"<block>.conv<i>"``; it is deletable where it can become an identity, that is where its
    input and output have the same shape. These are left out:

    * a conv that changes the channels or the stride (the first conv of a stage that widens or
      downsamples): an identity cannot take its place;
    * 1x1 convs (a bottleneck's conv1 and conv3): not 3x3 layers, and they change the channels;
    * a deformable 3x3 conv (DCN): it reads offsets computed from its input, a part of the
      layer that has no meaning without it;
    * the stem's conv (3 image channels in) and the layers of residual blocks (see
      :func:`residual_blocks`: there the unit of deletion is the block).

    A Res2Net block's split 3x3 (:class:`~resnet_backbones.modeling.ops.Res2NetConv`) is one
    layer.
    """
    layers = []
    for block_name, block in model.named_modules():
        if not isinstance(block, _ResidualBlock) or block.has_shortcut:
            continue
        for i in range(1, block.num_convs + 1):
            conv = block._modules[f"conv{i}"]
            if _keeps_shape(conv):
                layers.append((f"{block_name}.conv{i}", conv))
    return layers


def _keeps_shape(conv: nn.Module) -> bool:
    """Whether ``conv`` is a 3x3 layer whose output has its input's shape."""
    if isinstance(conv, Res2NetConv):
        # Its last split passes unchanged (or average-pooled at the convs' stride).
        return conv.convs[0].stride == (1, 1)
    return (
        type(conv) is Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.in_channels == conv.out_channels
    )


def random_deletions(names: Sequence[str], k: int, draws: int, seed: int) -> list[list[str]]:
    """``draws`` random sets of ``k`` distinct names out of ``names`` (Veit et al., Fig. 5).

    The draws are deterministic for a given ``seed``, and each set keeps the order of ``names``
    (forward order, for :func:`residual_blocks` and :func:`plain_layers`).

    Args:
        names: the names to draw from, without repetitions.
        k: names per draw, 0 <= k <= len(names).
        draws: number of sets, >= 1.
        seed: seed of the draws.
    """
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if list(names).count(n) > 1})
        raise ValueError(f"names must be distinct; repeated: {repeated}")
    if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k <= len(names):
        raise ValueError(f"k = {k!r} is not valid; it must be an int in [0, {len(names)}]")
    if not isinstance(draws, int) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws = {draws!r} is not valid; it must be an int >= 1")
    rng = random.Random(seed)
    position = {name: i for i, name in enumerate(names)}
    return [sorted(rng.sample(list(names), k), key=position.__getitem__) for _ in range(draws)]


# --------------------------------------------------------------------------------------------
# Deletion
# --------------------------------------------------------------------------------------------
def shortcut_path(block: nn.Module) -> nn.Sequential:
    """A module computing ``block``'s shortcut path alone: the block with its branch deleted.

    It is an ``nn.Sequential`` of the block's own modules under their own names, so the
    deleted block's parameters keep their names (``res3.0.shortcut.weight``):

    * an identity shortcut: empty (the identity), so the output is the block's input;
    * a projection or option-A shortcut in orders "post", "bn_after_add", "relu_before_add":
      ``shortcut``, reading the block's input;
    * the same in the pre-activation orders, where the shortcut reads the activated input (as
      in ``_ResidualBlock.forward``): "relu_preact" ``relu, shortcut``; "preact" ``norm1, relu,
      shortcut``, or ``shortcut`` alone in a stage's first block, whose input is activated
      already;
    * a ReXNet bottleneck: its input zero-padded to its output channels (ReXNet's shortcut).

    What comes after the addition in a block ("post": ReLU; "bn_after_add": norm, ReLU) is part
    of the deleted block and goes with it. In "post" order the input of a block with an
    identity or option-A shortcut is the output of a ReLU, so that ReLU would be an identity and
    deleting the block equals zeroing its branch; with a projection (options B, C) the deleted
    block outputs the projection without the ReLU. In "bn_after_add" deletion also drops the
    norm after the addition, so the identity-shortcut block becomes an identity, as Veit et al.
    define deletion (y = x when the residual function is removed).

    Raises:
        ValueError: ``block`` has no shortcut (a plain block, a strided ReXNet block).
    """
    if isinstance(block, LinearBottleneck) and block.has_shortcut:
        if block.in_channels == block.out_channels:
            return nn.Sequential()
        pad = ZeroPadShortcut(block.in_channels, block.out_channels, stride=1)
        return nn.Sequential(OrderedDict(shortcut=pad))
    if not isinstance(block, _ResidualBlock) or not block.has_shortcut:
        raise ValueError(
            f"{type(block).__name__} has no shortcut; only residual blocks (our ResNet-family "
            "blocks with a shortcut, ReXNet's stride-1 bottlenecks) have a shortcut path"
        )
    modules: OrderedDict[str, nn.Module] = OrderedDict()
    if block.shortcut is not None:
        if block.order in _PREACTIVATED_ORDERS:
            # _ResidualBlock.forward: x_act = relu(norm1(x) or x) in "relu_preact" and in
            # "preact" blocks that pre-activate their input; the projection reads x_act.
            if block.order == "relu_preact" or block.preactivates_input:
                if block.norm1 is not None:
                    modules["norm1"] = block.norm1
                modules["relu"] = nn.ReLU()
        modules["shortcut"] = block.shortcut
    return nn.Sequential(modules)


def delete_blocks(model: nn.Module, names: Iterable[str]) -> nn.Module:
    """A deep copy of ``model`` with the named residual blocks and plain layers deleted.

    * A residual block (a name of :func:`residual_blocks`) is replaced by its shortcut path
      alone (:func:`shortcut_path`): "delete the block, keep its shortcut" (Veit et al.). With
      an identity shortcut the deleted block's output is its input.
    * A plain layer (a name of :func:`plain_layers`) is replaced by an identity: its conv
      (with the norm inside it) becomes ``nn.Identity``, and a norm of the same unit held
      outside the conv goes too (a pre-activation block's ``norm<i>``/``norm1`` before it; the
      norm after the last conv in "bn_after_add"). The ReLUs of the block stay: in the orders
      "post", "bn_after_add" and "relu_before_add" every ReLU around a deleted layer reads the
      output of an earlier ReLU, so it changes nothing and the layer's unit (conv, norm, ReLU)
      is exactly an identity. In the pre-activation orders the ReLU before the deleted conv
      still acts on its (signed) input.

    ``model`` itself is unchanged. The copy keeps ``model``'s training mode and device.

    Args:
        model: a module tree containing our blocks.
        names: qualified names of residual blocks and/or plain layers of ``model``; repeated
            names are deleted once.

    Raises:
        ValueError: naming every name that is not deletable in ``model``, and the valid ones.
    """
    names = list(names)
    blocks = dict(residual_blocks(model))
    layers = dict(plain_layers(model))
    bad = [name for name in names if name not in blocks and name not in layers]
    if bad:
        valid = list(blocks) + list(layers)
        reasons = "; ".join(_why_not_deletable(model, name) for name in bad)
        raise ValueError(
            f"cannot delete {bad}: {reasons}. Deletable in this "
            f"{type(model).__name__}: {valid if valid else 'nothing'}"
        )
    lesioned = copy.deepcopy(model)
    for name in dict.fromkeys(names):
        if name in blocks:
            parent_name, _, child = name.rpartition(".")
            parent = lesioned.get_submodule(parent_name)
            parent._modules[child] = shortcut_path(parent._modules[child])
        else:
            block_name, _, conv_name = name.rpartition(".")
            _delete_layer(lesioned.get_submodule(block_name), int(conv_name[len("conv") :]))
    return lesioned


def _delete_layer(block: _ResidualBlock, i: int) -> None:
    """Replaces conv ``i`` of the plain ``block`` (and the norm of its unit outside it) by
    identities, in place; ``forward`` skips a norm set to None."""
    block._modules[f"conv{i}"] = nn.Identity()
    if block.order == "preact" and f"norm{i}" in block._modules:
        block._modules[f"norm{i}"] = None
    elif block.order == "bn_after_add" and i == block.last_conv:
        block.add_norm = None


def _why_not_deletable(model: nn.Module, name: str) -> str:
    """Why ``name`` is neither a residual block nor a plain layer of ``model``."""
    try:
        module = model.get_submodule(name)
    except AttributeError:
        return f"{name!r} is not a module of the model"
    if isinstance(module, (_ResidualBlock, LinearBottleneck)):
        return f"{name!r} is a block without a shortcut (delete its layers instead)"
    if isinstance(module, (Conv2d, Res2NetConv, DeformConv2d)):
        return (
            f"{name!r} is not a deletable layer (a 1x1, deformable or shape-changing conv, or a "
            "conv of a residual block or the stem)"
        )
    return f"{name!r} is a {type(module).__name__}, neither a residual block nor a plain layer"


# --------------------------------------------------------------------------------------------
# Layer responses
# --------------------------------------------------------------------------------------------
RESPONSE_STATISTICS: tuple[str, ...] = ("channel", "all")


def response_layers(model: nn.Module) -> list[tuple[str, nn.Module, nn.Module]]:
    """The 3x3 conv layers of ``model`` and where their responses are read.

    Returns ``(name, conv, measured)`` triples in ``named_modules`` order: every 3x3 conv
    (detectron2 ``Conv2d``, ``nn.Conv2d``, :class:`DeformConv2d`; each 3x3 conv inside a
    Res2Net split; ReXNet's depthwise convs) except a DCN block's offset conv, which predicts
    sampling offsets rather than computing a response. ``measured`` is the conv's own norm when
    it has one (its output is the response "after BN, before the nonlinearity and the
    addition": our blocks apply ReLUs and additions outside the conv), else the conv itself:
    the conv's output, before the addition. That is the case of the last conv of a
    "bn_after_add" block (its norm comes after the addition, where it would mix in the
    shortcut) and of every conv in the pre-activation orders ("relu_preact" keeps its norms
    after the convs; "preact" puts them before the convs, so there the response is the conv's
    raw output, the residual function added to the shortcut).
    """
    offsets = {
        id(m.conv2_offset)
        for m in model.modules()
        if isinstance(m, _ResidualBlock) and "conv2_offset" in m._modules
    }
    layers = []
    for name, module in model.named_modules():
        if id(module) in offsets:
            continue
        if isinstance(module, nn.Conv2d):
            is_3x3 = module.kernel_size == (3, 3)
        elif isinstance(module, DeformConv2d):
            is_3x3 = tuple(module.weight.shape[-2:]) == (3, 3)
        else:
            continue
        if is_3x3:
            norm = getattr(module, "norm", None)
            layers.append((name, module, module if norm is None else norm))
    return layers


class LayerResponses:
    """Streams the standard deviation of every 3x3 layer's response over the inputs that a
    model sees while it is attached (the ResNet paper's Fig. 7).

    The statistic: for each layer and output channel, the standard deviation of the response
    over all images and positions (population std, float64, merged batch by batch with Chan et
    al.'s formula, so nothing but three numbers per channel is kept); then ``"channel"`` (the
    default) averages these over the channels, and ``"all"`` gives the std over every element
    (channels pooled). The paper does not say which; the per-channel std is what BN normalises
    and its scale gamma sets, so it measures the strength of a channel's response independently
    of the per-channel offsets (beta) that "all" adds in.

    Usage::

        with LayerResponses(model) as responses:
            for batch in batches:
                model(batch)
        stds = responses.result()  # [(layer name, std), ...] in forward order

    Layers are ordered by when they first respond, which is their forward order.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.layers = response_layers(model)
        if not self.layers:
            raise ValueError(f"{type(model).__name__} has no 3x3 conv layers to measure")
        # Per layer: (count per channel, mean per channel, M2 per channel), float64.
        self._stats: dict[str, tuple[int, torch.Tensor, torch.Tensor]] = {}
        self._handles: list = []

    def __enter__(self) -> LayerResponses:
        for name, _, measured in self.layers:
            self._handles.append(measured.register_forward_hook(self._hook(name)))
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def remove(self) -> None:
        """Detaches the hooks (``__exit__`` does it)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _hook(self, name: str):
        def hook(module, inputs, output):
            self.update(name, output)

        return hook

    def update(self, name: str, response: torch.Tensor) -> None:
        """Adds a batch of layer ``name``'s responses ``(N, C, H, W)`` to its statistics."""
        # One pass over a float64 copy, without a channels-first copy of it (half the time of
        # a transpose, mean and squared deviations here).
        var, mean = torch.var_mean(response.detach().to(torch.float64), dim=(0, 2, 3), correction=0)
        count = response.numel() // response.shape[1]
        m2 = var * count
        if name not in self._stats:
            self._stats[name] = (count, mean, m2)
            return
        total, old_mean, old_m2 = self._stats[name]
        delta = mean - old_mean
        new_total = total + count
        self._stats[name] = (
            new_total,
            old_mean + delta * (count / new_total),
            old_m2 + m2 + delta.square() * (total * count / new_total),
        )

    def result(self, statistic: str = "channel") -> list[tuple[str, float]]:
        """``[(layer name, std), ...]`` of the layers that responded, in forward order.

        Args:
            statistic: "channel" (per-channel std, averaged over channels) or "all" (the std
                of every element).
        """
        if statistic not in RESPONSE_STATISTICS:
            raise ValueError(
                f"statistic = {statistic!r} is not valid; valid: {list(RESPONSE_STATISTICS)}"
            )
        if not self._stats:
            raise ValueError("no responses recorded: run the model on inputs while attached")
        results = []
        for name, (count, mean, m2) in self._stats.items():
            if statistic == "channel":
                std = (m2 / count).sqrt().mean()
            else:
                overall = mean.mean()
                pooled = m2.sum() + count * (mean - overall).square().sum()
                std = (pooled / (count * mean.numel())).sqrt()
            results.append((name, float(std)))
        return results


def layer_responses(
    model: nn.Module, batches: Iterable, *, statistic: str = "channel"
) -> list[tuple[str, float]]:
    """The std of every 3x3 layer's response over ``batches`` (:class:`LayerResponses`).

    The model runs in eval mode (BN with its running statistics, as at test time; each module's
    mode is restored after) and without gradients.

    Args:
        model: a module tree containing 3x3 convs.
        batches: what the model takes: for a ``ClassificationModel``, lists of dicts from a
            classification test loader (``resnet_backbones.pretrain``'s), or ``(N, C, H, W)``
            tensors of network inputs (normalised images), which go through its ``logits``;
            for other models, their inputs (``model(batch)``).
        statistic: see :meth:`LayerResponses.result`.
    """
    from .classifier import ClassificationModel  # classifier imports config, which imports us

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        with LayerResponses(model) as responses, torch.no_grad():
            for batch in batches:
                if isinstance(batch, torch.Tensor) and isinstance(model, ClassificationModel):
                    model.logits(batch)
                else:
                    model(batch)
    finally:
        model.train(modes[model])  # a ClassificationModel passes it on to its _backbone
        for module, training in modes.items():
            module.training = training
    return responses.result(statistic)

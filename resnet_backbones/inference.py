"""The inference fast path: :func:`optimize_for_inference` makes a model in eval mode faster
without changing what it computes (beyond fp32 rounding).

It works on any detectron2 model built on our backbones (``GeneralizedRCNN`` with a C4 (and its
``Res5FamilyROIHeads``), DC5 or FPN backbone), on a bare backbone and on our classifiers, in
three steps, each of which keeps the parameter names of the modules it does not change:

1. **Fold norms into convs** (:func:`fold_norms`): a FrozenBN, or a BatchNorm in eval mode with
   running statistics, that directly follows a conv is an affine map per channel; it is folded
   into that conv's weight and bias (``torch.nn.utils.fusion.fuse_conv_bn_weights``) and removed.
   That is detectron2's ``Conv2d(..., norm=...)`` everywhere (stems, blocks, shortcuts, ResNet-D
   projections, Res2Net's split convs, SE and ReXNet layers, the FPN's convs with a norm), and
   in a pre-activation block ("preact" order) the ``norm2``, ``norm3`` that directly follow the
   previous bare conv. A norm that follows anything else stays: a pre-activation block's
   ``norm1`` and a stage's closing ``norm`` (after the addition), ``add_norm`` of the
   "bn_after_add" order, a pre-activation stem's norm (after the max-pool), norms of deformable
   convs (``torchvision.ops.deform_conv2d`` is called without a bias here). GroupNorm and a
   BatchNorm in training mode are never folded.
2. **channels_last** (NHWC) inside the backbone: its weights and its input are converted, and
   its features are returned contiguous (NCHW) as before, so the heads, torchvision's RoIAlign
   (which makes its input contiguous) and the user see the same tensors. On the 2-core CPU of
   the project's machines detectron2's R-101 ran 1.26x faster in channels_last; for Faster
   R-CNN R-101-FPN, channels_last in the backbone only (features back to NCHW) measured 1.65x
   against detectron2's default where channels_last everywhere measured 1.48x, in one run.
3. Optionally **torch.compile** of the backbone (``nn.Module.compile``, in place: the state
   dict keeps its names), with Inductor's ``freezing``: under ``torch.no_grad`` the weights
   become constants, so that Inductor prepacks them for oneDNN and fuses each conv with the
   ReLU or addition after it (on the 2-core CPU, R-101 at 800x1216: 1.32-1.47x against
   detectron2's default where eager measured 1.25-1.32x; the features within 2.5e-6 relative;
   the first call compiles for 10-15 s; see MODEL_ZOO.md). Off by default: each new
   input size compiles again (detection images vary), the first call is slow, and the weights
   are baked in (load them before optimising; a later ``load_state_dict`` is not seen).

The training forward path needs none of this: its per-call Python overhead was removed where
the modules are built (the stems, blocks and :class:`~resnet_backbones.modeling.StagedBackbone`
look their layers up once).

A model optimised for inference has lost its norms: never train it or save it as a checkpoint
to train from (load the weights into a fresh model instead).
"""

from __future__ import annotations

import logging

import torch
from detectron2.layers import Conv2d, FrozenBatchNorm2d
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.utils.fusion import fuse_conv_bn_weights

from .modeling.blocks import _ResidualBlock

__all__ = ["fold_norms", "optimize_for_inference"]

logger = logging.getLogger(__name__)

# Set on a module whose input a forward pre-hook converts to channels_last (registered once).
_CHANNELS_LAST_INPUT = "_resnet_backbones_channels_last_input"


def _is_foldable(norm: nn.Module | None) -> bool:
    """A norm that is one fixed affine map per channel: FrozenBN, or a BatchNorm (also SyncBN,
    which does not synchronise in eval mode) in eval mode with running statistics."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return (
        isinstance(norm, _BatchNorm)
        and not norm.training
        and norm.track_running_stats
        and norm.running_mean is not None
    )


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, norm: nn.Module) -> None:
    """Folds ``norm`` (applied to ``conv``'s output) into ``conv``'s weight and bias."""
    weight, bias = fuse_conv_bn_weights(
        conv.weight,
        conv.bias,
        norm.running_mean,
        norm.running_var,
        norm.eps,
        norm.weight,
        norm.bias,
    )
    conv.weight, conv.bias = weight, bias


def _is_bare_conv(module: nn.Module | None) -> bool:
    """A detectron2 ``Conv2d`` that is nothing but a conv (no norm, no activation after it)."""
    return isinstance(module, Conv2d) and module.norm is None and module.activation is None


def fold_norms(model: nn.Module) -> int:
    """Folds every norm of ``model`` that directly follows a conv into it (see the module
    docstring for which ones); returns how many were folded.

    The folded norms are removed (``conv.norm`` and a pre-activation block's ``norm{i}`` become
    None); everything else keeps its name. ``model`` is changed in place, and must be in eval
    mode: a folded conv has new parameters, which an optimizer built before would not train.

    Raises:
        ValueError: ``model`` is in training mode.
    """
    if model.training:
        raise ValueError(
            f"fold_norms changes the parameters of {type(model).__name__}, which is in training "
            "mode; call model.eval() first (and never train the folded model)"
        )
    folded = 0
    for module in list(model.modules()):
        if isinstance(module, Conv2d) and _is_foldable(module.norm):
            _fold_into(module, module.norm)
            module.norm = None
            folded += 1
        elif isinstance(module, _ResidualBlock) and module.order == "preact":
            # norm{i} of a pre-activation block is applied to conv{i-1}'s output, nothing between.
            previous = None
            for conv_name, norm_name, _ in module._branch:
                if norm_name is not None:
                    norm = module._modules[norm_name]
                    if _is_foldable(norm) and _is_bare_conv(previous):
                        _fold_into(previous, norm)
                        module._modules[norm_name] = None
                        folded += 1
                previous = module._modules[conv_name]
    return folded


def _to_channels_last(module: nn.Module, args: tuple) -> tuple:
    (x, *rest) = args
    return (x.contiguous(memory_format=torch.channels_last), *rest)


def _to_contiguous(module: nn.Module, args: tuple, output):
    if isinstance(output, dict):
        return {name: feature.contiguous() for name, feature in output.items()}
    return output.contiguous()


def _run_in_channels_last(backbone: nn.Module) -> None:
    """``backbone``'s weights, and its input at every call, in channels_last; its features
    returned contiguous (the hooks are registered once)."""
    backbone.to(memory_format=torch.channels_last)
    if not getattr(backbone, _CHANNELS_LAST_INPUT, False):
        backbone.register_forward_pre_hook(_to_channels_last)
        backbone.register_forward_hook(_to_contiguous)
        object.__setattr__(backbone, _CHANNELS_LAST_INPUT, True)


def _backbone_of(model: nn.Module) -> nn.Module:
    """The module that takes the image tensor: a detector's ``backbone``, a classifier's
    backbone, or ``model`` itself (a bare backbone)."""
    from .modeling.classifier import ClassificationModel

    if isinstance(model, ClassificationModel):
        return model._backbone  # its stages are the model's children (see ClassificationModel)
    backbone = getattr(model, "backbone", None)
    return backbone if isinstance(backbone, nn.Module) else model


def optimize_for_inference(
    model: nn.Module, *, channels_last: bool | None = None, compile: bool = False
) -> nn.Module:
    """Makes ``model``, in eval mode, faster at inference with the same outputs (fp32 rounding
    aside): folds its norms into its convs, runs it in channels_last and, with ``compile``,
    compiles its backbone. See the module docstring.

    Args:
        model: a detectron2 meta-architecture (``GeneralizedRCNN`` ...), a backbone or one of
            our classifiers, in eval mode (``model.eval()``). Changed in place.
        channels_last: run the backbone in channels_last (its weights and input; its
            features come out contiguous).
            None (the default): where the model is on the CPU (measured faster there; on a GPU
            cuDNN's choice depends on the dtype and the card, so it is left as it is).
        compile: ``nn.Module.compile`` the backbone with Inductor's freezing (it compiles at
            its first forward, and again for each new input size; the weights are baked in).

    Returns:
        ``model``.

    Raises:
        ValueError: ``model`` is in training mode (a model that will train must keep its
            norms), or ``channels_last``/``compile`` is not a bool.
    """
    if model.training:
        raise ValueError(
            f"optimize_for_inference folds the norms of {type(model).__name__}, which is in "
            "training mode; call model.eval() first (and never train the optimised model)"
        )
    if channels_last is not None and not isinstance(channels_last, bool):
        raise ValueError(
            f"channels_last = {channels_last!r} is not valid; valid values: True, False, None"
        )
    if not isinstance(compile, bool):
        raise ValueError(f"compile = {compile!r} is not valid; valid values: True, False")
    folded = fold_norms(model)
    backbone = _backbone_of(model)
    if channels_last is None:
        parameter = next(model.parameters(), None)
        channels_last = parameter is not None and parameter.device.type == "cpu"
    if channels_last:
        _run_in_channels_last(backbone)
    if compile:
        backbone.compile(options={"freezing": True})
    logger.info(
        "Optimised %s for inference: %d norms folded into convs, channels_last %s, compiled %s",
        type(model).__name__,
        folded,
        channels_last,
        compile,
    )
    return model

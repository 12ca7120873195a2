"""What every backbone of the package shares: a chain of named stages, and the FPNs on top.

A :class:`StagedBackbone` is a stem and stages res2..res5 run in order, each feature named by its
stride as in detectron2's ResNet: "stem", "res2" (4), "res3" (8), "res4" (16), "res5" (32). It
builds only the stages up to the deepest requested feature, returns the requested ones from
``forward``, describes them in ``output_shape()`` and freezes them as detectron2's
``ResNet.freeze`` does. :class:`~resnet_backbones.modeling.ResNetFamily` and
:class:`~resnet_backbones.modeling.ReXNet` only say what their stages are.
"""

from __future__ import annotations

import contextlib
import math
from typing import Sequence

import torch
import torch.utils.checkpoint
from detectron2.layers import CNNBlockBase, FrozenBatchNorm2d, ShapeSpec
from detectron2.modeling import FPN, Backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from torch import nn

from ..utils import PYTHON_NAMES, ArgumentNames, check_choice

__all__ = [
    "FEATURE_NAMES",
    "FREEZE_AT_VALUES",
    "StagedBackbone",
    "checkpoint_blocks",
    "fpn",
    "retinanet_fpn",
]

# The features a backbone can return, in order: the stem, then one stage per stride 4 ... 32.
FEATURE_NAMES: tuple[str, ...] = ("stem", "res2", "res3", "res4", "res5")
# 0 trains everything; k >= 1 freezes the first k stages (the stem is the first).
FREEZE_AT_VALUES: tuple[int, ...] = tuple(range(len(FEATURE_NAMES) + 1))


class StagedBackbone(Backbone):
    """A stem and stages run in order; a subclass adds them with :meth:`add_stage`.

    Stage i of the chain (the stem is 1, res2 is 2, ...) is frozen by ``freeze(k)`` for every
    k >= i. As in detectron2's ``ResNet``, ``stem`` is an attribute of its own and
    ``stage_names``/``stages`` are the stages after it.
    """

    # Python-only views of the chain; torch.jit.script leaves them out (see _forward_scripted).
    __jit_unused_properties__ = ["stage_names", "stages"]

    def __init__(
        self,
        available: Sequence[str],
        *,
        out_features: Sequence[str],
        freeze_at: int,
        activation_checkpointing: Sequence[str] = (),
        channels_last: bool = False,
        names: ArgumentNames = PYTHON_NAMES,
    ):
        """
        Args:
            available: the features this network has, "stem" first (CIFAR ResNets stop at res4).
            out_features: the features ``forward`` returns, among ``available``.
            freeze_at: validated here; the subclass calls ``freeze(freeze_at)`` once built.
            activation_checkpointing: the stages, among ``available``, whose blocks keep no
                activations for the backward pass in training: each block saves only its input
                and runs again during the backward (:func:`checkpoint_blocks`). Gradients,
                outputs and norm statistics are those of the plain forward.
            channels_last: run in channels_last memory format (faster convolutions on many CPUs
                and GPUs): the stages' weights are stored so, and ``forward`` converts its input;
                the features it returns, and so everything computed from them, are channels_last.
            names: how errors name ``out_features``, ``freeze_at`` and
                ``activation_checkpointing``.

        Raises:
            ValueError: naming the argument (or its config key), the bad value and the valid ones.
        """
        super().__init__()
        check_choice(names["freeze_at"], freeze_at, FREEZE_AT_VALUES)
        if not out_features:
            raise ValueError(
                f"{names['out_features']} is empty; valid entries: "
                + ", ".join(repr(n) for n in available)
            )
        for name in out_features:
            check_choice(f"{names['out_features']} entry", name, available)
        if isinstance(activation_checkpointing, str):
            raise ValueError(
                f"{names['activation_checkpointing']} = {activation_checkpointing!r} is not "
                f"valid; it must be a list of stage names, e.g. {list(available[1:])} (or [] for "
                "none)"
            )
        for name in activation_checkpointing:
            check_choice(f"{names['activation_checkpointing']} entry", name, available)
        # The stages whose blocks are checkpointed in training (see checkpoint_blocks).
        self.activation_checkpointing: frozenset[str] = frozenset(activation_checkpointing)
        self.channels_last = bool(channels_last)
        deepest = max(available.index(name) for name in out_features)
        # The stages to build: the stem up to the deepest requested feature.
        self.stages_to_build: tuple[str, ...] = tuple(available[: deepest + 1])
        self._out_features = list(out_features)
        self._out_feature_channels: dict[str, int] = {}
        self._out_feature_strides: dict[str, int] = {}
        self._chain: list[str] = []

    def add_stage(self, name: str, stage: nn.Module, *, channels: int, stride: int) -> None:
        """Appends stage ``name`` to the chain.

        Args:
            name: the next of :attr:`stages_to_build`.
            stage: the module; it becomes the attribute ``name`` (parameters ``name.*``).
            channels: its output channels.
            stride: its own stride (the output stride of the chain is the product).
        """
        expected = self.stages_to_build[len(self._chain)]
        if name != expected:
            raise ValueError(f"stage {name!r} added where {expected!r} comes next")
        previous = self._out_feature_strides[self._chain[-1]] if self._chain else 1
        if self.channels_last:
            stage.to(memory_format=torch.channels_last)  # the 4-d weights; nothing else changes
        self.add_module(name, stage)
        self._chain.append(name)
        self._out_feature_channels[name] = channels
        self._out_feature_strides[name] = previous * stride

    @property
    def stage_names(self) -> list[str]:
        """The built stages after the stem, as detectron2's ``ResNet.stage_names``."""
        return self._chain[1:]

    @property
    def stages(self) -> list[nn.Module]:
        """The modules of :attr:`stage_names`."""
        return [getattr(self, name) for name in self.stage_names]

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if torch.jit.is_scripting():
            return self._forward_scripted(x)
        if x.dim() != 4:
            raise ValueError(
                f"{type(self).__name__} takes (N, C, H, W) inputs; got shape {tuple(x.shape)}"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs = {}
        # The stages by name from _modules: a dict lookup, where getattr would go through
        # nn.Module.__getattr__ on every call (and still sees a stage replaced after build).
        stages = self._modules
        for name in self._chain:
            x = self._run_stage(name, stages[name], x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def _forward_scripted(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """:meth:`forward` for ``torch.jit.script``, which cannot look modules up by name: it
        unrolls this loop over the children, which are the stages, in order (a scripted network
        is for inference, so nothing is checkpointed)."""
        if x.dim() != 4:
            raise ValueError("the backbone takes (N, C, H, W) inputs")
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        outputs: dict[str, torch.Tensor] = {}
        for name, stage in self.named_children():
            x = stage(x)
            if name in self._out_features:
                outputs[name] = x
        return outputs

    def _run_stage(self, name: str, stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``stage(x)``, block by block under :func:`checkpoint_blocks` where ``name`` is in
        :attr:`activation_checkpointing` and a backward pass will follow (training, grad on)."""
        if name in self.activation_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint_blocks(stage, x)
        return stage(x)

    def output_shape(self) -> dict[str, ShapeSpec]:
        return {
            name: ShapeSpec(
                channels=self._out_feature_channels[name], stride=self._out_feature_strides[name]
            )
            for name in self._out_features
        }

    def freeze(self, freeze_at: int = 0) -> StagedBackbone:
        """Freezes the stem (freeze_at >= 1) and stage res{k} for every 2 <= k <= freeze_at.

        A frozen stage (all of it: blocks, and the closing norm of a pre-activation stage) stops
        requiring grad and its BatchNorms become FrozenBatchNorm2d, as in detectron2's
        ``ResNet.freeze``.
        """
        for index, name in enumerate(self._chain, start=1):
            if freeze_at >= index:
                stage = getattr(self, name)
                for p in stage.parameters():
                    p.requires_grad = False
                FrozenBatchNorm2d.convert_frozen_batchnorm(stage)
        return self


class _BuffersKept:
    """A context that restores every buffer of ``module`` on exit to its value on entry.

    The recomputation of a checkpointed block runs its BatchNorms in training mode again, which
    would update their running mean, variance and ``num_batches_tracked`` a second time for the
    same batch (torch's checkpoint has no provision for it): they are put back as the forward
    left them. The batch statistics the recomputation normalises with are the forward's. A class
    rather than a generator: a second backward through a retained graph enters it again.
    """

    def __init__(self, module: nn.Module):
        self.module = module
        self.saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> None:
        self.saved = [(b, b.clone()) for b in self.module.buffers()]

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for buffer, value in self.saved:
                buffer.copy_(value)
        self.saved = []


def _segments(stage: nn.Module) -> list[nn.Module]:
    """The pieces :func:`checkpoint_blocks` checkpoints one by one: every block
    (``CNNBlockBase``) of an ``nn.Sequential`` stage, and each run of the layers between blocks
    as one piece (a pre-activation stage's closing norm and in-place ReLU: the ReLU alone would
    overwrite the input its checkpoint keeps); a stage of another type is one piece."""
    if not isinstance(stage, nn.Sequential):
        return [stage]
    segments: list[nn.Module] = []
    run: list[nn.Module] = []
    for child in stage.children():
        if isinstance(child, CNNBlockBase):
            if run:
                segments.append(nn.Sequential(*run))
                run = []
            segments.append(child)
        else:
            run.append(child)
    if run:
        segments.append(nn.Sequential(*run))
    return segments


def checkpoint_blocks(stage: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``stage(x)`` with activation checkpointing: the blocks of ``stage`` (:func:`_segments`) run
    in about sqrt(n) consecutive groups; each group saves only its input for the backward pass and
    runs again inside it (``torch.utils.checkpoint``, non-reentrant).

    Groups of sqrt(n) blocks (Chen et al., 2016, "Training deep nets with sublinear memory cost";
    torch's ``checkpoint_sequential``) rather than the whole stage or every block: a checkpointed
    stage recomputes all its activations at once in the backward (res4 of ResNet-101 holds most of
    them), and a checkpointed bottleneck keeps its 4x-wide input, most of what it would save
    anyway; sqrt(n) inputs and one group's activations at a time are the least of the three, for
    the same single recomputation. The random generators are replayed (dropout draws the same
    masks), autocast is replayed, and the buffers are kept (:class:`_BuffersKept`).
    """
    pieces = _segments(stage)
    size = math.ceil(math.sqrt(len(pieces)))
    for start in range(0, len(pieces), size):
        group = pieces[start : start + size]
        run = group[0] if len(group) == 1 else nn.Sequential(*group)
        x = torch.utils.checkpoint.checkpoint(
            run,
            x,
            use_reentrant=False,
            context_fn=lambda run=run: (contextlib.nullcontext(), _BuffersKept(run)),
        )
    return x


def _fpn(cfg, bottom_up: Backbone, top_block: nn.Module) -> FPN:
    """The FPN of ``cfg.MODEL.FPN`` on ``bottom_up``, in its memory format (its inputs are)."""
    network = FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
    if getattr(bottom_up, "channels_last", False):
        network.to(memory_format=torch.channels_last)
    return network


def fpn(cfg, bottom_up: Backbone) -> FPN:
    """FPN P2..P6 on ``bottom_up`` (P6 by max-pooling P5) from ``cfg.MODEL.FPN``, as detectron2's
    ``build_resnet_fpn_backbone``."""
    return _fpn(cfg, bottom_up, LastLevelMaxPool())


def retinanet_fpn(cfg, bottom_up: Backbone) -> FPN:
    """FPN P3..P7 on ``bottom_up`` (P6, P7 by strided convs on res5) from ``cfg.MODEL.FPN``, as
    detectron2's ``build_retinanet_resnet_fpn_backbone``."""
    in_channels_p6p7 = bottom_up.output_shape()["res5"].channels
    return _fpn(cfg, bottom_up, LastLevelP6P7(in_channels_p6p7, cfg.MODEL.FPN.OUT_CHANNELS))

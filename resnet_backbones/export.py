"""Export to TorchScript and ONNX, with the parity of the exported file checked against eager.

The pipeline, in order (each step a function that can be tested without the steps after it):

1. **Build** (:func:`build_for_export`): the backbone as detectron2's ``build_backbone`` builds it
   from a config (any preset, plain or with its FPN), or the whole detector (``build_model``);
   ``MODEL.WEIGHTS`` loaded by :class:`~resnet_backbones.weights.checkpoint.FamilyCheckpointer`, as
   the trainer loads them; eval mode.
2. **Export** (:func:`export_backbone`, :func:`export_detector`):

   * a backbone to TorchScript by ``torch.jit.script`` (the blocks, stems and
     :class:`~resnet_backbones.modeling.StagedBackbone` have a scriptable path: TorchScript cannot
     look modules up by name, which their eager forward does for speed); detectron2's FPN cannot
     be scripted (its convs are in Python lists), so on an FPN our network is scripted and the
     FPN traced around it (:func:`_script_backbone`); to ONNX by the
     TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``), with a dynamic batch,
     height and width;
   * a detector (Faster R-CNN, C4 or FPN) through detectron2's ``TracingAdapter`` (its inputs and
     ``Instances`` outputs flattened to tensors), traced (``torch.jit.trace``) to TorchScript or
     exported to ONNX. Its tracing fixes the image size and the control flow taken by the sample
     image (the number of detections is not fixed: it is a tensor size).

   ONNX uses opset :data:`ONNX_OPSET` (19): the first with ``DeformConv``, to which
   torchvision's ``deform_conv2d`` (our DCN) is exported by :func:`_deform_conv2d_symbolic` (torchvision
   has no ONNX symbolic for it; onnxruntime runs ``DeformConv``). The TorchScript-based exporter
   rather than the dynamo one (``dynamo=True``, which needs ``onnxscript``): it takes such a
   symbolic, and it exported torchvision's ResNet-18 in 1.1 s against 2.6 s here.
3. **Check** (:func:`backbone_parity`, :func:`detector_parity`): the file is loaded back
   (``torch.jit.load``; ``onnxruntime`` for ONNX, the optional ``export`` extra) and run on the
   sample; the outputs are compared with eager PyTorch's. A backbone's features must agree to
   :data:`FEATURE_RTOL` relative (the largest difference over the largest magnitude of each
   feature); a detector's detections must be the same: the same number, the same classes, and
   boxes and scores within :data:`BOX_ATOL` pixels and :data:`SCORE_ATOL`.

:func:`export_model` runs the three steps (``tools/export_model.py`` and ``resnet-backbones
export`` call it). A model that cannot export raises :class:`ExportError`, one line naming the
model, the format and the op that stops it.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import sys
import types
import warnings
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from torch import nn

from .utils import check_choice

__all__ = [
    "BOX_ATOL",
    "EXPORT_TARGETS",
    "EXPORT_FORMATS",
    "FEATURE_RTOL",
    "ONNX_OPSET",
    "SCORE_ATOL",
    "ExportError",
    "Parity",
    "backbone_parity",
    "build_for_export",
    "detector_parity",
    "detector_sample",
    "export_backbone",
    "export_detector",
    "export_model",
    "load_onnx",
    "tracing_adapter",
]

EXPORT_FORMATS: tuple[str, ...] = ("torchscript", "onnx")
EXPORT_TARGETS: tuple[str, ...] = ("backbone", "detector")
# The first opset with DeformConv (our DCN); onnxruntime 1.32 runs it on the CPU.
ONNX_OPSET = 19
# The bound on the features: the exported file equals eager PyTorch to 1e-4 relative.
FEATURE_RTOL = 1e-4
# Detections: boxes in pixels of the input image, scores in [0, 1]. TorchScript runs the same
# kernels as eager and agrees to rounding; onnxruntime's convolutions round differently (features
# ~1e-6 relative), which moves a box regressed from them by ~1e-4 px. 1e-2 px and 1e-3 in score
# are far below anything visible, and far above that rounding.
BOX_ATOL = 1e-2
SCORE_ATOL = 1e-3


class ExportError(ValueError):
    """A model that cannot be exported to a format: the message names the model, the format and
    the op (or construct) that stops it."""


@dataclass
class Parity:
    """How an exported file's outputs compare with eager PyTorch's on the sample.

    Attributes:
        format: "torchscript" or "onnx".
        max_abs: per output (a feature, or a detection field), the largest absolute difference.
        max_rel: per output, ``max_abs`` over the largest magnitude of the eager output.
        detections: the number of detections (a detector; None for a backbone).
    """

    format: str
    max_abs: dict[str, float] = field(default_factory=dict)
    max_rel: dict[str, float] = field(default_factory=dict)
    detections: Optional[int] = None

    def summary(self) -> str:
        """One line per output: its largest absolute and relative difference."""
        lines = [
            f"{name}: max abs diff {self.max_abs[name]:.3g}, max rel diff {self.max_rel[name]:.3g}"
            for name in self.max_abs
        ]
        if self.detections is not None:
            lines.insert(0, f"{self.detections} detections, the same as eager (classes equal)")
        return "\n".join(lines)


@contextlib.contextmanager
def _quiet():
    """Silences the deprecation warnings of ``torch.jit`` and the TorchScript-based ONNX exporter
    (both still supported in torch 2.14) and of tracing: the parity check is what tells whether
    the export is right."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", UserWarning)
        yield


# --------------------------------------------------------------------------------------------
# 1. Build
# --------------------------------------------------------------------------------------------
def build_for_export(cfg, what: str = "backbone") -> nn.Module:
    """The model of ``cfg`` to export, in eval mode, with ``cfg.MODEL.WEIGHTS`` loaded.

    Args:
        cfg: a config with our keys (``resnet_backbones.engine.load_config``).
        what: "backbone": what ``cfg.MODEL.BACKBONE.NAME`` builds (a plain backbone, or its FPN);
            "detector": the whole model of ``cfg.MODEL.META_ARCHITECTURE``.

    Raises:
        ValueError: ``what`` is not valid; the weights do not fit (see FamilyCheckpointer).
    """
    from detectron2.modeling import build_backbone, build_model

    from .weights.checkpoint import FamilyCheckpointer

    check_choice("what", what, EXPORT_TARGETS)
    if what == "detector":
        model = build_model(cfg)
        if cfg.MODEL.WEIGHTS:
            FamilyCheckpointer(model, cfg=cfg).load(cfg.MODEL.WEIGHTS)
        return model.eval()
    if not cfg.MODEL.WEIGHTS:
        return build_backbone(cfg).eval()
    # Weights name the detector's modules (backbone.*), or are renamed onto them: load them as
    # the trainer does, into the whole detector, and keep its backbone.
    model = build_model(cfg)
    FamilyCheckpointer(model, cfg=cfg).load(cfg.MODEL.WEIGHTS)
    return model.backbone.eval()


def _exportable(model: nn.Module, fmt: str, name: Optional[str]) -> str:
    """How errors name ``model`` (``name``, default its class), once ``fmt`` is one of
    :data:`EXPORT_FORMATS` and the model is in eval mode.

    Raises:
        ValueError: an unknown format, or a model in training mode.
    """
    check_choice("format", fmt, EXPORT_FORMATS)
    name = name or type(model).__name__
    if model.training:
        raise ValueError(f"{name} is in training mode; export it in eval mode (model.eval())")
    return name


# --------------------------------------------------------------------------------------------
# 2. Export
# --------------------------------------------------------------------------------------------
_OP = re.compile(r"'?((?:aten|prim|torchvision|detectron2|onnx)::\w+)'?")


def _export_error(name: str, fmt: str, error: Exception) -> ExportError:
    """An :class:`ExportError` in one line: the model, the format, the op named by ``error``
    (the torch exporters name it as ``namespace::op``) and the exporter's first line."""
    text = str(error).strip()
    first = text.splitlines()[0] if text else type(error).__name__
    op = _OP.search(text)
    where = f"op {op.group(1)}" if op else "a construct"
    return ExportError(
        f"{name} cannot be exported to {fmt}: {where} is not supported ({type(error).__name__}: "
        f"{first.strip()})"
    )


def _deform_conv2d_symbolic(
    g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
    weight_groups, offset_groups, use_mask,
):  # fmt: skip
    """torchvision's ``deform_conv2d`` as ONNX ``DeformConv`` (opset 19): the same inputs
    (input, weight, offset, bias, [mask]) and the same attributes, named ONNX's way."""
    from torch.onnx import symbolic_helper

    ints = [
        symbolic_helper._get_const(v, "i", name)
        for v, name in (
            (stride_h, "stride_h"), (stride_w, "stride_w"), (pad_h, "pad_h"), (pad_w, "pad_w"),
            (dil_h, "dil_h"), (dil_w, "dil_w"), (weight_groups, "weight_groups"),
            (offset_groups, "offset_groups"),
        )
    ]  # fmt: skip
    stride_h, stride_w, pad_h, pad_w, dil_h, dil_w, weight_groups, offset_groups = ints
    inputs = [input, weight, offset, bias]
    if symbolic_helper._get_const(use_mask, "b", "use_mask"):
        inputs.append(mask)
    return g.op(
        "DeformConv",
        *inputs,
        strides_i=[stride_h, stride_w],
        pads_i=[pad_h, pad_w, pad_h, pad_w],
        dilations_i=[dil_h, dil_w],
        group_i=weight_groups,
        offset_group_i=offset_groups,
        kernel_shape_i=symbolic_helper._get_tensor_sizes(weight)[2:],
    )


_SYMBOLICS_REGISTERED = False


def _register_onnx_symbolics() -> None:
    """Registers :func:`_deform_conv2d_symbolic` with the ONNX exporter (once)."""
    global _SYMBOLICS_REGISTERED
    if not _SYMBOLICS_REGISTERED:
        torch.onnx.register_custom_op_symbolic(
            "torchvision::deform_conv2d", _deform_conv2d_symbolic, ONNX_OPSET
        )
        _SYMBOLICS_REGISTERED = True


def _onnx_export(
    module: nn.Module,
    args: tuple,
    path: str,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_axes: Optional[dict[str, dict[int, str]]],
    opset: int,
) -> None:
    _register_onnx_symbolics()
    torch.onnx.export(
        module,
        args,
        path,
        dynamo=False,
        opset_version=opset,
        input_names=list(input_names),
        output_names=list(output_names),
        dynamic_axes=dynamic_axes,
        do_constant_folding=True,
    )


def export_backbone(
    backbone: nn.Module,
    path: str,
    fmt: str,
    sample: torch.Tensor,
    *,
    name: Optional[str] = None,
    opset: int = ONNX_OPSET,
) -> str:
    """Writes ``backbone`` (in eval mode) to ``path`` in format ``fmt``; returns ``path``.

    TorchScript: ``torch.jit.script`` (any input size, any batch; an FPN's top-down part
    traced, see :func:`_script_backbone`). ONNX: exported on ``sample``
    with dynamic batch, height and width; the input is named "image", the outputs by their
    feature names ("res2" ... or "p2" ...).

    Args:
        backbone: a backbone (``forward(image) -> {name: feature}``), e.g. from
            :func:`build_for_export`.
        path: the file to write.
        fmt: one of :data:`EXPORT_FORMATS`.
        sample: an input, (N, C, H, W) (ONNX traces the network on it).
        name: how errors name the model (a preset, a config); default: its class.
        opset: the ONNX opset (DCN needs 19).

    Raises:
        ExportError: the backbone cannot be exported to ``fmt``, naming the op.
    """
    name = _exportable(backbone, fmt, name)
    with _quiet():
        if fmt == "torchscript":
            try:
                scripted = _script_backbone(backbone, sample)
            except (RuntimeError, torch.jit.frontend.FrontendError) as e:
                raise _export_error(name, "TorchScript", e) from e
            scripted.save(path)
            return path
        with torch.no_grad():
            feature_names = list(backbone(sample))
        axes = {0: "batch", 2: "height", 3: "width"}
        try:
            _onnx_export(
                backbone,
                (sample,),
                path,
                input_names=["image"],
                output_names=feature_names,
                dynamic_axes={n: dict(axes) for n in ["image", *feature_names]},
                opset=opset,
            )
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:
            raise _export_error(name, f"ONNX (opset {opset})", e) from e
    return path


@contextlib.contextmanager
def _parse_each_method_once():
    """Within it, ``torch.jit.script`` parses the source of each method once, not once per
    module: torch 2.14 re-parses a method's source (``get_jit_def``) for every instance of a
    module class, although it compiles each type once. The parsed definition depends on the
    function and the names only, so it is reused. Scripting CIFAR-ResNet-1202 (3,009 modules)
    took 15 s with it against 37 s without, here; the scripted module is the same."""
    from torch.jit import _recursive

    original = getattr(_recursive, "get_jit_def", None)
    if original is None:  # another torch: nothing to speed up
        yield
        return
    parsed: dict[tuple, Any] = {}

    def get_jit_def(fn, def_name, self_name=None, is_classmethod=False):
        key = (getattr(fn, "__func__", fn), def_name, self_name, is_classmethod)
        if key not in parsed:
            parsed[key] = original(fn, def_name, self_name=self_name, is_classmethod=is_classmethod)
        return parsed[key]

    _recursive.get_jit_def = get_jit_def
    try:
        yield
    finally:
        _recursive.get_jit_def = original


def _script_backbone(backbone: nn.Module, sample: torch.Tensor) -> torch.jit.ScriptModule:
    """``torch.jit.script(backbone)``; for detectron2's FPN, which keeps its convs in Python
    lists that TorchScript cannot type, its bottom-up network (ours) is scripted and the FPN
    traced around it on ``sample``: the FPN's own control flow is fixed by its config, and the
    scripted bottom-up stays a call to the script module in the traced graph."""
    from detectron2.modeling import FPN

    if not isinstance(backbone, FPN):
        with _parse_each_method_once():
            return torch.jit.script(backbone)
    bottom_up = backbone.bottom_up
    try:
        with _parse_each_method_once():
            backbone.bottom_up = torch.jit.script(bottom_up)
        with torch.no_grad():
            return torch.jit.trace(backbone, sample, strict=False, check_trace=False)
    finally:
        backbone.bottom_up = bottom_up


def tracing_adapter(model: nn.Module, inputs: list[dict[str, Any]]) -> nn.Module:
    """detectron2's ``TracingAdapter(model, inputs)``: a module whose inputs and outputs are
    flat tuples of tensors (a detector's images in, its ``Instances`` fields out), which
    ``torch.jit.trace`` and the ONNX exporter take; ``outputs_schema`` rebuilds the outputs.

    detectron2 v0.6's ``detectron2.export`` imports Caffe2 first, which PyTorch no longer
    ships; where that fails, its ``flatten`` module (which needs nothing of Caffe2) is loaded
    on its own.
    """
    try:
        from detectron2.export import TracingAdapter
    except ImportError as e:
        if "caffe2" not in str(e):
            raise
        TracingAdapter = _flatten_module().TracingAdapter
    # Its own training flag follows the model's: the ONNX exporter restores it afterwards, and
    # with it (as nn.Module.train does) the model's.
    return TracingAdapter(model, inputs, _detections).train(model.training)


def _detections(model: nn.Module, inputs: list[dict[str, Any]]) -> list:
    """The detections of a detectron2 meta-architecture (``GeneralizedRCNN``): its ``Instances``
    per image, in the pixels of the input tensor (``do_postprocess=False``: not rescaled to a
    "height"/"width" of the input, as detectron2's own export tool does)."""
    return model.inference(inputs, do_postprocess=False)


def _flatten_module() -> types.ModuleType:
    """``detectron2.export.flatten`` without running ``detectron2/export/__init__.py``: under
    a bare stand-in of the package, removed again once its modules are loaded."""
    full = "detectron2.export.flatten"
    if full in sys.modules:
        return sys.modules[full]
    import detectron2

    package = types.ModuleType("detectron2.export")
    package.__path__ = [os.path.join(os.path.dirname(detectron2.__file__), "export")]
    sys.modules["detectron2.export"] = package
    try:
        return importlib.import_module(full)
    finally:
        if sys.modules.get("detectron2.export") is package:
            del sys.modules["detectron2.export"]


def export_detector(
    model: nn.Module,
    path: str,
    fmt: str,
    inputs: list[dict[str, Any]],
    *,
    name: Optional[str] = None,
    opset: int = ONNX_OPSET,
) -> str:
    """Writes the detector ``model`` (eval mode) to ``path``, traced on ``inputs`` through
    ``TracingAdapter``: ``torch.jit.trace`` (TorchScript) or the ONNX exporter. The file takes
    the flattened inputs (for Faster R-CNN, one image tensor, (C, H, W), of the sample's size)
    and returns the flattened detections (boxes, classes, scores, ...). Returns ``path``.

    Raises:
        ExportError: the detector cannot be exported to ``fmt``, naming the op.
    """
    name = _exportable(model, fmt, name)
    adapter = tracing_adapter(model, inputs)
    with _quiet(), torch.no_grad():
        if fmt == "torchscript":
            try:
                traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
            except RuntimeError as e:
                raise _export_error(name, "TorchScript", e) from e
            traced.save(path)
            return path
        try:
            _onnx_export(
                adapter,
                adapter.flattened_inputs,
                path,
                input_names=[f"input{i}" for i in range(len(adapter.flattened_inputs))],
                output_names=[],
                dynamic_axes=None,
                opset=opset,
            )
        except (RuntimeError, torch.onnx.errors.OnnxExporterError) as e:
            raise _export_error(name, f"ONNX (opset {opset})", e) from e
    return path


# --------------------------------------------------------------------------------------------
# 3. Check
# --------------------------------------------------------------------------------------------
def load_onnx(path: str):
    """An onnxruntime CPU session of ``path`` (onnxruntime is the optional ``export`` extra).

    Raises:
        ImportError: onnxruntime is missing, saying how to install it.
    """
    try:
        import onnxruntime
    except ImportError as e:
        raise ImportError(
            "checking an ONNX export needs onnxruntime: pip install 'resnet_backbones[export]'"
        ) from e
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def _run_onnx(path: str, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    session = load_onnx(path)
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(o) for o in session.run(None, feed)]


def _compare(name: str, actual: torch.Tensor, expected: torch.Tensor, parity: Parity) -> None:
    """Records ``name``'s largest differences in ``parity``; a non-finite eager output cannot be
    compared (NaN equals nothing), and a non-finite exported one differs by infinity."""
    if not torch.isfinite(expected).all():
        raise ExportError(
            f"{name}: eager PyTorch's output is not finite on this sample, so the export cannot "
            "be checked against it (give the model weights, or a smaller sample)"
        )
    if not torch.isfinite(actual).all():
        actual = torch.where(torch.isfinite(actual), actual, torch.full_like(actual, float("inf")))
    if actual.shape != expected.shape:
        raise ExportError(
            f"{name}: the exported output has shape {tuple(actual.shape)}, eager "
            f"{tuple(expected.shape)}"
        )
    diff = (actual.double() - expected.double()).abs().max().item() if expected.numel() else 0.0
    scale = expected.double().abs().max().item() if expected.numel() else 0.0
    parity.max_abs[name] = diff
    parity.max_rel[name] = diff / scale if scale else diff


def backbone_parity(
    backbone: nn.Module,
    path: str,
    fmt: str,
    sample: torch.Tensor,
    *,
    rtol: float = FEATURE_RTOL,
) -> Parity:
    """Runs the exported ``path`` (``torch.jit.load``, or onnxruntime) and ``backbone`` on
    ``sample``; every feature must agree to ``rtol`` relative (its largest difference over its
    largest magnitude).

    Raises:
        ExportError: a feature differs by more, or has another shape, naming it.
    """
    check_choice("format", fmt, EXPORT_FORMATS)
    with _quiet(), torch.no_grad():
        expected = backbone(sample)
        if fmt == "torchscript":
            actual = torch.jit.load(path)(sample)
        else:
            actual = dict(zip(expected, _run_onnx(path, [sample])))
    parity = Parity(fmt)
    for name, feature in expected.items():
        _compare(name, actual[name], feature, parity)
        if not parity.max_rel[name] <= rtol:
            raise ExportError(
                f"{fmt} export of the backbone: feature {name} differs from eager by "
                f"{parity.max_rel[name]:.2e} relative (bound {rtol:g})"
            )
    return parity


def detector_sample(height: int = 256, width: int = 256) -> list[dict[str, Any]]:
    """One image of the built-in shapes dataset (val split), as a detector's input (BGR, CHW,
    uint8) resized to ``height`` x ``width``: an image with objects, so that a trained detector
    finds some."""
    import numpy as np
    from PIL import Image

    from .data.shapes import SPLITS, generate_image

    image, _ = generate_image(SPLITS["val"], 1, 3)
    if image.size != (width, height):
        image = image.resize((width, height), Image.BILINEAR)
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    return [{"image": torch.as_tensor(bgr.transpose(2, 0, 1).copy())}]


def detector_parity(
    model: nn.Module,
    path: str,
    fmt: str,
    inputs: list[dict[str, Any]],
    *,
    box_atol: float = BOX_ATOL,
    score_atol: float = SCORE_ATOL,
) -> Parity:
    """Runs the exported ``path`` and ``model`` (through the same ``TracingAdapter``) on
    ``inputs``: the detections must be the same (see the module docstring).

    Raises:
        ExportError: another number of detections, other classes, or boxes or scores further
            apart than ``box_atol`` / ``score_atol``.
    """
    check_choice("format", fmt, EXPORT_FORMATS)
    adapter = tracing_adapter(model, inputs)
    flat = adapter.flattened_inputs
    with _quiet(), torch.no_grad():
        expected = adapter(*flat)
        if fmt == "torchscript":
            actual = torch.jit.load(path)(*flat)
        else:
            actual = _run_onnx(path, flat)
    # One image: a list of one Instances.
    (expected_instances,) = adapter.outputs_schema(list(expected))
    (actual_instances,) = adapter.outputs_schema(list(actual))
    parity = Parity(fmt, detections=len(expected_instances))
    if len(actual_instances) != len(expected_instances):
        raise ExportError(
            f"{fmt} export of the detector: {len(actual_instances)} detections, eager "
            f"{len(expected_instances)}"
        )
    fields = {
        "boxes": (actual_instances.pred_boxes.tensor, expected_instances.pred_boxes.tensor),
        "scores": (actual_instances.scores, expected_instances.scores),
        "classes": (actual_instances.pred_classes, expected_instances.pred_classes),
    }
    for field_name, (a, e) in fields.items():
        _compare(field_name, a, e, parity)
    bounds = {"boxes": box_atol, "scores": score_atol, "classes": 0.0}
    for field_name, bound in bounds.items():
        if not parity.max_abs[field_name] <= bound:
            raise ExportError(
                f"{fmt} export of the detector: {field_name} differ from eager by "
                f"{parity.max_abs[field_name]:.3g} (bound {bound:g})"
            )
    return parity


# --------------------------------------------------------------------------------------------
# All three
# --------------------------------------------------------------------------------------------
def export_model(
    cfg,
    output: str,
    fmt: str,
    *,
    what: str = "backbone",
    size: tuple[int, int] = (224, 224),
    name: Optional[str] = None,
) -> Parity:
    """Builds the model of ``cfg`` (:func:`build_for_export`), writes it to ``output`` in format
    ``fmt`` and checks the file's parity with eager PyTorch; returns the parity.

    Args:
        cfg: a config with our keys.
        output: the file to write (its folder is created).
        fmt: one of :data:`EXPORT_FORMATS`.
        what: one of :data:`EXPORT_TARGETS`.
        size: (height, width) of the sample: a random image for a backbone; a shapes image of
            that size for a detector (whose traced file takes images of that size).
        name: how errors name the model (default: the config's backbone builder).

    Raises:
        ExportError: the model cannot be exported to ``fmt``, or the file's outputs differ.
        ValueError: ``fmt`` or ``what`` is not valid.
    """
    check_choice("format", fmt, EXPORT_FORMATS)
    check_choice("what", what, EXPORT_TARGETS)
    name = name or f"{what} {cfg.MODEL.BACKBONE.NAME}"
    model = build_for_export(cfg, what)
    folder = os.path.dirname(os.path.abspath(output))
    os.makedirs(folder, exist_ok=True)
    height, width = size
    if what == "backbone":
        generator = torch.Generator().manual_seed(0)
        sample = torch.randn(1, len(cfg.MODEL.PIXEL_MEAN), height, width, generator=generator)
        export_backbone(model, output, fmt, sample, name=name)
        return backbone_parity(model, output, fmt, sample)
    inputs = detector_sample(height, width)
    export_detector(model, output, fmt, inputs, name=name)
    return detector_parity(model, output, fmt, inputs)

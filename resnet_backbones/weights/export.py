"""Write another library's weights as a file of ours, with the config that fits it.

The file holds our backbone's names and the weights' metadata (a torch.save archive, or a
safetensors file whose header carries the metadata); the YAML beside it is a complete config
(``_BASE_`` a base config of the chosen detector form, ``VERSION: 2``, ``MODEL.WEIGHTS`` the
file) that builds the matching backbone and feeds it as the weights were trained. Both are
checked before anything is written: the weights must load strictly into that backbone.
"""

from __future__ import annotations

import logging
import os
from functools import cache
from types import MappingProxyType
from typing import Any, Mapping

import torch

from ..config import build_clean_backbone
from ..model_zoo import base_config_file
from ..presets import ARCHS, DETECTOR_FORMS, PRESETS, arch_config, get_arch
from ..utils import atomic_write, check_choice, config_yaml, first_n
from .catalog import fitting_config
from .detect import WeightsFile, read_weights
from .download import sha256_of_file
from .errors import BackboneMismatchError, WeightsFormatError, missing_dependency
from .mappings import FAMILIES, to_backbone, unmatched_names
from .metadata import metadata_from_config
from .read import safetensors_metadata
from .resolve import resolve

__all__ = ["EXPORT_SOURCES", "export_weights", "fragment_path"]

logger = logging.getLogger(__name__)

EXPORT_SOURCES: tuple[str, ...] = ("torchvision", "timm", "msra", "detectron2")
# Formats a file may have for each source (timm's plain ResNets are named as torchvision's).
_READABLE = {
    "torchvision": ("torchvision", "timm"),
    "timm": ("torchvision", "timm"),
    "msra": ("msra",),
    "detectron2": ("detectron2", "resnet_backbones"),
}
# How many names a one-line error shows of each list (then " ...").
_SHOWN = 3


def fragment_path(dst: str) -> str:
    """The YAML fragment written beside ``dst``: same path, extension ``.yaml``."""
    return os.path.splitext(dst)[0] + ".yaml"


@cache
def _shapes(arch: str) -> Mapping[str, tuple[int, ...]]:
    """Name -> shape of every tensor of ``arch``'s backbone (built without memory, once)."""
    with torch.device("meta"):
        backbone = build_clean_backbone(arch_config(arch))
    return MappingProxyType({name: tuple(t.shape) for name, t in backbone.state_dict().items()})


def _fit_problems(state: Mapping[str, Any], shapes: Mapping[str, tuple[int, ...]]) -> list[str]:
    """What keeps ``state`` from loading strictly into a backbone of tensors ``shapes``, one
    brief phrase per kind of problem (empty if it fits)."""
    missing = [n for n in shapes if n not in state]
    foreign = [n for n in state if n not in shapes]
    misshapen = [
        f"{n}: {tuple(state[n].shape)} vs {shapes[n]}"
        for n in state
        if n in shapes and tuple(state[n].shape) != shapes[n]
    ]
    problems = []
    if missing:
        problems.append(
            f"it lacks {len(missing)} of the arch's tensors ({first_n(missing, _SHOWN)})"
        )
    if foreign:
        problems.append(f"holds {len(foreign)} the arch lacks ({first_n(foreign, _SHOWN)})")
    if misshapen:
        problems.append(
            f"{len(misshapen)} differ in shape, file vs arch ({first_n(misshapen, _SHOWN, '; ')})"
        )
    return problems


def _backbone_state(src: str, weights: WeightsFile, family: str | None) -> dict[str, torch.Tensor]:
    """The file's backbone tensors in our names, read by mapping ``family`` (torchvision and
    timm files), without BN's counter of batches (no numerical meaning; FrozenBN lacks it)."""
    renamed = to_backbone(weights.format, weights.state_dict, family=family, path=src)
    return {n: t for n, t in renamed.items() if not n.endswith("num_batches_tracked")}


def _fitting_archs(src: str, weights: WeightsFile, exclude: str) -> list[str]:
    """The archs (but ``exclude``) whose backbone the file loads into strictly."""
    if weights.format == "msra":
        candidates = [name for name, a in ARCHS.items() if a.source == "msra"]
    elif weights.format in ("torchvision", "timm"):
        candidates = [name for name, a in ARCHS.items() if a.family in weights.families]
    else:
        candidates = list(ARCHS)  # a detectron2 file: any layout
    states: dict[str | None, dict[str, torch.Tensor]] = {}
    fitting = []
    for name in candidates:
        family = ARCHS[name].family if weights.format in ("torchvision", "timm") else None
        if family not in states:
            states[family] = _backbone_state(src, weights, family)
        if name != exclude and not _fit_problems(states[family], _shapes(name)):
            fitting.append(name)
    return fitting


def _mismatch(src: str, weights: WeightsFile, arch: str, problem: str) -> BackboneMismatchError:
    fitting = _fitting_archs(src, weights, arch)
    advice = (
        f"it is --arch {' or '.join(fitting)}"
        if fitting
        else "no arch fits it: is IN the whole file, and a network of one of the archs?"
    )
    return BackboneMismatchError(f"{src} ({weights.format} format) {problem}; {advice}")


def _renamed(src: str, weights: WeightsFile, arch: str) -> dict[str, torch.Tensor]:
    """The file's backbone tensors in our names, read as ``arch``'s weights and checked to
    load strictly into its backbone.

    Raises:
        BackboneMismatchError: in one line: a torchvision or timm file whose names the arch's
            mapping family does not read, or tensors missing, foreign or misshapen (a few
            names of each, with counts), and the archs that the file does fit.
    """
    family = ARCHS[arch].family if weights.format in ("torchvision", "timm") else None
    if family is not None and family not in weights.families:
        unknown = unmatched_names(list(weights.state_dict), FAMILIES[family].rules)
        raise _mismatch(
            src, weights, arch,
            f"is not a {arch} file: {len(unknown)} of its names are not those of {family!r} "
            f"networks ({first_n(unknown, _SHOWN)})",
        )  # fmt: skip
    state = _backbone_state(src, weights, family)
    problems = _fit_problems(state, _shapes(arch))
    if problems:
        raise _mismatch(src, weights, arch, f"does not fit arch {arch!r}: {'; '.join(problems)}")
    return {name: tensor.detach().clone().contiguous() for name, tensor in state.items()}


def _check_form(arch: str, form: str) -> None:
    check_choice("form", form, DETECTOR_FORMS, quote=False)
    forms = PRESETS[get_arch(arch).preset].forms
    if form not in forms:
        raise ValueError(
            f"form = {form!r} is not valid for arch {arch!r} (preset "
            f"{get_arch(arch).preset!r}); its forms: {', '.join(forms)}"
        )


def _write_safetensors(path: str, state: Mapping[str, torch.Tensor], metadata: dict) -> None:
    try:
        import safetensors.torch
    except ImportError:
        raise missing_dependency("safetensors", f"writing {path}") from None
    with atomic_write(path) as f:
        f.write(safetensors.torch.save(dict(state), metadata=safetensors_metadata(metadata)))


def export_weights(
    src: str, dst: str, *, source: str, arch: str, form: str = "FPN"
) -> tuple[str, str]:
    """Renames ``src`` to our backbone's names, checks it, and writes it with its config.

    A ``dst`` ending in ``.safetensors`` is a safetensors file: our names, with the metadata as
    JSON values in its ``__metadata__`` header (:func:`.read.safetensors_metadata`). Any other
    ``dst`` is a torch.save archive ``{"model": our names (stem.*, res2.* ...), "metadata":
    {...}}`` plus ``"matching_heuristics": True``, so that detectron2's own DetectionCheckpointer
    loads it too (by name suffix). Beside it, ``<dst without extension>.yaml`` is a complete
    config: ``_BASE_`` the base config of ``form`` (:func:`resnet_backbones.model_zoo.base_config_file`), ``VERSION: 2``,
    ``MODEL.WEIGHTS`` the absolute path of ``dst``, and the keys that build the matching
    backbone and feed it as it was trained (``tools/train_net.py --config`` takes it as it is).

    Args:
        src: the weights: a local file, an https:// URL, ``resnet_backbones://NAME`` or
            ``hf-hub:ORG/NAME[@REVISION]`` (:func:`.resolve.resolve`; read safely: no code in
            it runs).
        dst: the output file (``.pth``, or ``.safetensors``).
        source: the library that wrote ``src``, one of :data:`EXPORT_SOURCES`.
        arch: the architecture, a key of :data:`~resnet_backbones.presets.ARCHS`.
        form: the detector form of the config, one of
            :data:`~resnet_backbones.presets.DETECTOR_FORMS` that the arch's preset has.

    Returns:
        ``(dst, path of the YAML config)``.

    Raises:
        ValueError: an unknown source, arch or form, or a file of another format than
            ``source``.
        WeightsNotFoundError, DownloadError ...: ``src`` cannot be found or fetched.
        WeightsFormatError: a file of no known format.
        BackboneMismatchError: weights that do not load strictly into ``arch`` (what is
            missing, foreign or misshapen, briefly, and the archs they do fit).
        MissingDependencyError: a ``.safetensors`` file without the safetensors package.
    """
    check_choice("source", source, EXPORT_SOURCES, quote=False)
    if fragment_path(dst) == dst:
        raise ValueError(
            f"dst = {dst!r} ends in .yaml, the name of the config written beside it; name the "
            "weights .pth or .safetensors"
        )
    row = get_arch(arch)
    _check_form(arch, form)
    if source == "msra" and row.source != "msra":
        raise ValueError(
            f"arch = {arch!r} is a {row.source} architecture, not an msra one; msra archs: "
            + ", ".join(name for name, a in ARCHS.items() if a.source == "msra")
        )
    if source in ("torchvision", "timm") and row.family is None:
        raise ValueError(
            f"arch = {arch!r} has Caffe2 names (an msra architecture); {source} archs: "
            + ", ".join(name for name, a in ARCHS.items() if a.family is not None)
        )
    local = resolve(src, key="src")
    weights = read_weights(local)
    if weights.format not in _READABLE[source]:
        sources = [s for s, formats in _READABLE.items() if weights.format in formats]
        raise WeightsFormatError(
            f"{src} is a {weights.format} file, not a {source} one (a {source} source reads "
            f"{' or '.join(_READABLE[source])} files); "
            + (f"pass --source {' or '.join(sources)}" if sources else "it cannot be converted")
        )
    state = _renamed(src, weights, arch)
    # The proof, on real tensors, of what _renamed checked by names and shapes.
    build_clean_backbone(arch_config(arch)).load_state_dict(state, strict=True)
    base = base_config_file(form)

    config = fitting_config(arch)
    metadata = {
        "source": source,
        "format": weights.format,
        "arch": arch,
        # A detectron2 checkpoint records none of these: they are the --arch row's (the caller's
        # statement of the layout), as for every other source.
        **metadata_from_config(config),
        # The name it was given by: a URL or Hub path whole, a local file's base name.
        "converted_from": src if local != src else os.path.basename(src),
        "converted_from_sha256": sha256_of_file(local),
    }
    config_path = fragment_path(dst)
    header = (
        f"# Faster R-CNN {form} with the backbone in {os.path.basename(dst)} "
        f"(tools/convert_weights.py, {source} {arch}).\n# A complete config: "
        "tools/train_net.py --config takes it as it is; MODEL.WEIGHTS and _BASE_ are absolute "
        "paths.\n"
    )
    complete = {
        "_BASE_": base,
        **config,
        "MODEL.WEIGHTS": os.path.abspath(dst),
        "VERSION": 2,
    }
    if dst.endswith(".safetensors"):
        _write_safetensors(dst, state, metadata)
    else:
        checkpoint = {
            "model": state,
            "metadata": metadata,
            "__author__": "resnet_backbones",
            "matching_heuristics": True,
        }
        with atomic_write(dst) as f:
            torch.save(checkpoint, f)
    with atomic_write(config_path, "w", encoding="utf-8") as f:
        f.write(header + config_yaml(complete))
    logger.info("Wrote %s (%d tensors) and %s", dst, len(state), config_path)
    return dst, config_path

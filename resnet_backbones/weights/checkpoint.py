"""``MODEL.WEIGHTS`` for resnet_backbones: safe reading, any known format, strict backbone.

:class:`FamilyCheckpointer` is detectron2's ``DetectionCheckpointer`` with four changes:

* files are read by :func:`~resnet_backbones.weights.formats.read_file`, never by plain
  ``pickle`` (detectron2 unpickles ``.pkl`` files with ``pickle.load``, which runs any code a
  tampered file carries);
* torchvision, timm, MSRA and our own files are renamed on the fly, by the explicit mapping
  tables, to the model's names (``backbone.bottom_up.*`` with FPN, ``backbone.*`` and
  ``roi_heads.res5.*`` with C4);
* every backbone parameter of the model must be in the file with its shape (detectron2 only
  warns and trains from random weights); an ImageNet file's missing heads are one INFO line;
* what the weights record (or their mapping table or catalog entry implies) about stride
  placement, input format and pixel statistics must agree with the config.

Paths go through an iopath ``PathManager`` of our own: ``resnet_backbones://NAME`` resolves
through :data:`~resnet_backbones.weights.catalog.CATALOG`; ``http(s)://`` and
``detectron2://`` are fetched by :func:`~resnet_backbones.weights.download.download` (https
only, atomic, verified); anything else is a local path.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from collections import Counter
from functools import cache
from typing import Any, Iterable, Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.layers import FrozenBatchNorm2d
from detectron2.utils.file_io import PathManager as DETECTRON2_PATH_MANAGER
from iopath.common.file_io import PathHandler, PathManager
from torch import nn

from .download import download, hash_prefix_from_url
from .entry import WeightsEntry
from .errors import IncompatibleWeightsError
from .formats import BACKBONE_NAME, WeightsFile, backbone_state_dict, read_weights
from .metadata import check_metadata, has_bottlenecks

__all__ = [
    "ZOO_BASE_URL_ENV",
    "ZOO_PREFIX",
    "FamilyCheckpointer",
    "backbone_prefix",
    "catalog_entry",
    "catalog_entry_for_url",
    "weights_path_manager",
    "zoo_url",
]

logger = logging.getLogger(__name__)

ZOO_PREFIX = "resnet_backbones://"
# A mirror of the zoo: files are fetched from "$RESNET_BACKBONES_ZOO_BASE_URL/<file name>".
ZOO_BASE_URL_ENV = "RESNET_BACKBONES_ZOO_BASE_URL"
DETECTRON2_PREFIX = "detectron2://"
DETECTRON2_BASE_URL = "https://dl.fbaipublicfiles.com/detectron2/"

# Formats whose names are renamed to ours here (ImageNet backbones); the others hold whole
# detectron2 models and load by detectron2's rules.
RENAMED_FORMATS = ("resnet_backbones", "torchvision", "timm", "msra")
_STEM_PARAMETER = re.compile(r"(|.*?\.)stem\..+")
# A deformable conv's offset (and mask) conv: zero-initialised by design, so that training starts
# from the regular conv; ImageNet weights of the regular network have none (as in detectron2).
_DCN_OFFSET = re.compile(r"\.conv2_offset\.(weight|bias)$")
_FORMAT_KEY = "__resnet_backbones_format__"
_PATH_KEY = "__resnet_backbones_path__"


def catalog_entry(name: str) -> WeightsEntry:
    """The catalog entry called ``name``; a ValueError lists the valid names."""
    from .catalog import CATALOG

    if name not in CATALOG:
        raise ValueError(
            f"{ZOO_PREFIX}{name}: no such weights in the catalog; valid names: "
            f"{', '.join(sorted(CATALOG))}"
        )
    return CATALOG[name]


def _https_url(url: str) -> str:
    """``detectron2://PATH`` as the https URL of detectron2's file server; others unchanged."""
    if url.startswith(DETECTRON2_PREFIX):
        return DETECTRON2_BASE_URL + url[len(DETECTRON2_PREFIX) :]
    return url


def catalog_entry_for_url(url: str) -> Optional[WeightsEntry]:
    """The catalog entry published at ``url`` (``detectron2://`` expanded), or None."""
    from .catalog import CATALOG

    url = _https_url(url)
    return next((e for e in CATALOG.values() if e.url == url), None)


def zoo_url(entry: WeightsEntry) -> str:
    """Where ``entry`` is fetched from: its URL, or the same file name under
    ``$RESNET_BACKBONES_ZOO_BASE_URL``."""
    base = os.environ.get(ZOO_BASE_URL_ENV)
    if not base:
        return entry.url
    return base.rstrip("/") + "/" + os.path.basename(urllib.parse.urlparse(entry.url).path)


class _DownloadingHandler(PathHandler):
    """A handler whose paths become local files by :func:`download`; opening reads those."""

    def _open(self, path: str, mode: str = "r", **kwargs: Any):
        return open(self._get_local_path(path), mode)


class _ZooHandler(_DownloadingHandler):
    """``resnet_backbones://NAME`` -> the downloaded, verified file of catalog entry NAME."""

    def _get_supported_prefixes(self) -> list[str]:
        return [ZOO_PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        entry = catalog_entry(path[len(ZOO_PREFIX) :])
        return download(zoo_url(entry), sha256=entry.sha256, sha256_prefix=entry.sha256_prefix)


class _DownloadHandler(_DownloadingHandler):
    """``http(s)://`` (and ``detectron2://``, detectron2's file server) through
    :func:`download`: https only, written atomically, cached."""

    def _get_supported_prefixes(self) -> list[str]:
        return ["http://", "https://", DETECTRON2_PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        path = _https_url(path)
        # The catalog's hash for a catalog file, else the torch.hub-style prefix in the name.
        entry = catalog_entry_for_url(path)
        if entry is not None and (entry.sha256 or entry.sha256_prefix):
            return download(path, sha256=entry.sha256, sha256_prefix=entry.sha256_prefix)
        return download(path, sha256_prefix=hash_prefix_from_url(path))


@cache
def weights_path_manager() -> PathManager:
    """The iopath PathManager of :class:`FamilyCheckpointer`: zoo names, safe downloads and
    local paths (detectron2's global one fetches http:// too, and without checksums)."""
    manager = PathManager()
    manager.register_handler(_ZooHandler())
    manager.register_handler(_DownloadHandler())
    return manager


# detectron2's own PathManager learns the zoo names too (DefaultPredictor, demo scripts).
if ZOO_PREFIX not in DETECTRON2_PATH_MANAGER._path_handlers:
    DETECTRON2_PATH_MANAGER.register_handler(_ZooHandler())


def backbone_prefix(model_names: Iterable[str]) -> str:
    """Where a model keeps its ResNet-family backbone: the prefix of its ``stem.`` parameters
    (``"backbone.bottom_up."`` with FPN, ``"backbone."`` with C4, ``""`` for a bare backbone).

    Raises:
        ValueError: the model has no parameter ``*stem.*``.
    """
    prefixes = {m[1] for name in model_names if (m := _STEM_PARAMETER.fullmatch(name))}
    if not prefixes:
        raise ValueError(
            "the model has no ResNet-family backbone: none of its parameters is named '*stem.*'"
        )
    return min(prefixes, key=len)


def _first_absent_module(name: str, modules: set[str]) -> str:
    """The outermost module on ``name``'s path that the model lacks (``backbone.res4.6``)."""
    parts = name.split(".")[:-1]
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) not in modules:
            return ".".join(parts[:i])
    return ".".join(parts)


def _natural(name: str) -> list:
    """Sort key that orders res4.6 before res4.10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in name.split(".")]


def _first_20(items: list[str], separator: str) -> str:
    return separator.join(items[:20]) + (" ..." if len(items) > 20 else "")


def _group(names: Any, depth: int = 2) -> str:
    counts = Counter(".".join(n.split(".")[:depth]) for n in names)
    return ", ".join(f"{prefix}.* ({count})" for prefix, count in sorted(counts.items()))


class FamilyCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer, reading weights safely, renaming torchvision, timm,
    MSRA and our files to the model, and strict about the backbone (see the module doc)."""

    def __init__(
        self,
        model: nn.Module,
        save_dir: str = "",
        *,
        cfg: Optional[Any] = None,
        save_to_disk: Optional[bool] = None,
        **checkpointables: Any,
    ):
        """
        Args:
            model: the model to load into and save.
            save_dir: where checkpoints are saved (and found when resuming).
            cfg: the config ``model`` was built from; the weights' metadata is checked against
                it. None skips that check.
            save_to_disk: whether to save; default: in the main process only.
            checkpointables: other objects with ``state_dict()`` to save and resume (the
                optimizer, the trainer ...).
        """
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self.cfg = cfg
        self.path_manager = weights_path_manager()
        self._requested: Optional[str] = None

    def load(self, path: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        if path and "://" not in path and not os.path.isfile(path):
            raise FileNotFoundError(
                f"MODEL.WEIGHTS = {path!r}: no such file. Give a local file, an https:// or "
                f"detectron2:// URL, or a model-zoo name {ZOO_PREFIX}NAME (see MODEL_ZOO.md)"
            )
        self._requested = path
        try:
            return super().load(path, *args, **kwargs)
        finally:
            self._requested = None

    def _load_file(self, filename: str) -> dict[str, Any]:
        weights = read_weights(filename)
        model_names = set(self.model.state_dict())
        self._check_metadata(weights, model_names)
        if weights.format in RENAMED_FORMATS and weights.wrapper != "blobs":
            state = backbone_state_dict(weights, self._family(weights, model_names))
            checkpoint = {"model": self._place(state, model_names), "__author__": weights.format}
            if weights.format == "resnet_backbones":
                checkpoint["metadata"] = weights.metadata
        else:
            checkpoint = self._detectron2_checkpoint(weights, model_names)
        checkpoint[_FORMAT_KEY] = weights.format
        checkpoint[_PATH_KEY] = self._requested or filename
        return checkpoint

    def _family(self, weights: WeightsFile, model_names: set[str]) -> Optional[str]:
        """Of the tables that read the file, the one whose names the model has most of."""
        if len(weights.families) < 2:
            return None
        return max(
            weights.families,
            key=lambda f: len(
                set(self._place(backbone_state_dict(weights, f), model_names)) & model_names
            ),
        )

    def _place(
        self, backbone: Mapping[str, torch.Tensor], model_names: set[str]
    ) -> dict[str, torch.Tensor]:
        """Our backbone names -> the model's (prefixed; res5 into the C4 head, if it has it)."""
        prefix = backbone_prefix(model_names)
        placed = {}
        for name, tensor in backbone.items():
            target = prefix + name
            if target not in model_names and "roi_heads." + name in model_names:
                target = "roi_heads." + name
            if target not in model_names and name.endswith("num_batches_tracked"):
                continue  # FrozenBN has no such buffer; it counts nothing that matters
            placed[target] = tensor
        return placed

    def _detectron2_checkpoint(self, weights: WeightsFile, names: set[str]) -> dict[str, Any]:
        """A detectron2 / pycls / Detectron1 checkpoint, as detectron2 would load it."""
        checkpoint = {**weights.extra, "model": dict(weights.state_dict)}
        if weights.format == "msra":  # Detectron1 {"blobs": ...}: detectron2's C2 renaming
            return {**checkpoint, "__author__": "Caffe2", "matching_heuristics": True}
        if weights.format == "pycls":
            state = {
                k: v
                for k, v in checkpoint["model"].items()
                if not k.endswith("num_batches_tracked")
            }
            return {
                **checkpoint,
                "model": state,
                "__author__": "pycls",
                "matching_heuristics": True,
            }
        state = checkpoint["model"]
        if not checkpoint.get("matching_heuristics") and not set(state) & names:
            if all(BACKBONE_NAME.fullmatch(n) for n in state):  # a bare backbone's state
                checkpoint["model"] = self._place(state, names)
        return checkpoint

    def _check_metadata(self, weights: WeightsFile, model_names: set[str]) -> None:
        """The config against what the file, its table or its catalog entry says."""
        expected = weights.implied_metadata
        source = self._requested or weights.path
        entry = None
        if source.startswith(ZOO_PREFIX):
            entry = catalog_entry(source[len(ZOO_PREFIX) :])
        else:  # a catalog file by its URL (detectron2://ImageNetPretrained/MSRA/R-50.pkl ...)
            entry = catalog_entry_for_url(source)
        if entry is not None:
            expected = {**entry.metadata, **expected}
        if not expected:
            return
        if self.cfg is None:
            logger.info(
                "%s: no config given to the checkpointer; its metadata is not checked", source
            )
            return
        bottleneck = has_bottlenecks(model_names)
        check_metadata(expected, self.cfg, source=source, bottleneck=bottleneck)

    def _backbone_names(self, model_names: Iterable[str]) -> list[str]:
        """The model's backbone parameters and buffers that a file must provide."""
        model_names = list(model_names)
        try:
            prefix = backbone_prefix(model_names)
        except ValueError:
            return []  # not one of our backbones: detectron2's rules only
        # FrozenBN fills in missing statistics (MSRA files have none), as in detectron2.
        frozen = [n for n, m in self.model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
        optional = {f"{n}.{b}" for n in frozen for b in ("running_mean", "running_var")}
        return [
            n
            for n in model_names
            if (n.startswith(prefix) or n.startswith("roi_heads.res5."))
            and n not in optional
            and not n.endswith(".num_batches_tracked")
            and not _DCN_OFFSET.search(n)
        ]

    def _unexpected_backbone_names(
        self, state: Mapping[str, Any], model_state: Mapping[str, Any], modules: set[str]
    ) -> tuple[list[str], list[str]]:
        """Tensors of the file placed in a stage the model builds but not in the model.

        Returns:
            ``(foreign, extra)``: tensors whose module the model lacks (the blocks res4.6+ of an
            R-101 file in an R-50, the SE layers of an SE-ResNet file in a plain ResNet: another
            network, an error), and tensors of modules the model has but without that parameter
            (the stem conv's bias of MSRA's files, which detectron2 drops too: a warning).
        """
        try:
            prefix = backbone_prefix(model_state)
        except ValueError:
            return [], []

        def stage_of(name: str) -> Optional[str]:
            for p in (prefix, "roi_heads."):
                rest = name[len(p) :] if name.startswith(p) else None
                if rest is not None and BACKBONE_NAME.fullmatch(rest):
                    if p == "roi_heads." and not rest.startswith("res5."):
                        return None
                    return p + rest.split(".")[0]
            return None

        built = {stage_of(n) for n in model_state} - {None}
        foreign, extra = [], []
        for name in sorted(state, key=_natural):
            if name in model_state or name.endswith("num_batches_tracked"):
                continue
            if stage_of(name) in built:
                (extra if name.rsplit(".", 1)[0] in modules else foreign).append(name)
        return foreign, extra

    def _load_model(self, checkpoint: dict[str, Any]) -> Any:
        fmt = checkpoint.pop(_FORMAT_KEY, None)
        source = checkpoint.pop(_PATH_KEY, "<checkpoint>")
        model_state = self.model.state_dict()
        state = checkpoint["model"]
        self._convert_ndarray_to_tensor(state)
        torch.nn.modules.utils.consume_prefix_in_state_dict_if_present(state, "module.")
        if checkpoint.get("matching_heuristics", False):
            checkpoint["model"] = state = align_and_update_state_dicts(
                model_state, state, c2_conversion=checkpoint.get("__author__") == "Caffe2"
            )
            checkpoint["matching_heuristics"] = False

        backbone = self._backbone_names(model_state)
        modules = {name for name, _ in self.model.named_modules()}
        foreign, extra_params = self._unexpected_backbone_names(state, model_state, modules)
        if extra_params:
            logger.warning(
                "%s: %d tensors have no parameter in the model's (existing) modules and are not "
                "loaded: %s",
                source,
                len(extra_params),
                ", ".join(extra_params),
            )
        missing = sorted(n for n in backbone if n not in state)
        misshapen = sorted(
            f"{n} {tuple(state[n].shape)} in the file, {tuple(model_state[n].shape)} in the model"
            for n in backbone
            if n in state and tuple(state[n].shape) != tuple(model_state[n].shape)
        )
        if missing or misshapen or foreign:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing: " + _first_20(missing, ", "))
            if misshapen:
                problems.append(
                    f"{len(misshapen)} of the wrong shape: " + _first_20(misshapen, "; ")
                )
            if foreign:
                counts = Counter(_first_absent_module(n, modules) for n in foreign)
                shown = [
                    f"{m}.* ({c})" for m, c in sorted(counts.items(), key=lambda i: _natural(i[0]))
                ]
                problems.append(
                    f"{len(foreign)} in the file belong to modules the model does not have (a "
                    "deeper or different network): " + _first_20(shown, ", ")
                )
            raise IncompatibleWeightsError(
                f"{source} ({fmt} format) does not fit the model's backbone; nothing was loaded. "
                f"Backbone parameters: {'; '.join(problems)}. Check the depth, widths, stem and "
                "block options of MODEL.RESNETS against the weights' architecture."
            )

        incompatible = super()._load_model(checkpoint)
        if fmt in RENAMED_FORMATS and incompatible is not None:
            heads = [n for n in incompatible.missing_keys if n not in backbone]
            if heads:
                logger.info(
                    "%s holds the backbone only; %d parameters of the rest of the model (heads, "
                    "deformable convs' offsets) keep their initialisation: %s",
                    source,
                    len(heads),
                    _group(heads),
                )
                for name in heads:
                    incompatible.missing_keys.remove(name)
        return incompatible

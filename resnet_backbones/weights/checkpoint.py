"""``MODEL.WEIGHTS`` for resnet_backbones: the pipeline of :mod:`resnet_backbones.weights`, run
for one model, and :class:`FamilyCheckpointer`, its adapter to detectron2's checkpointer.

:func:`prepare_checkpoint` reads, top to bottom, one step per module: resolve the path, read
the file safely, detect its format, choose the mapping family against the model, check the
config against the weights' metadata, rename to the model's names, check the backbone strictly.
:class:`FamilyCheckpointer` is detectron2's ``DetectionCheckpointer`` whose ``load`` runs it and
hands the result to detectron2's own ``_load_model``:

* files are read by :func:`~resnet_backbones.weights.read.read_file`, never by plain ``pickle``
  (detectron2 unpickles ``.pkl`` files with ``pickle.load``, which runs any code a tampered file
  carries);
* torchvision, timm, MSRA and our own files are renamed on the fly, by the explicit mapping
  tables, to the model's names (``backbone.bottom_up.*`` with FPN, ``backbone.*`` and
  ``roi_heads.res5.*`` with C4);
* every backbone parameter of the model must be in the file with its shape (detectron2 only
  warns and trains from random weights); an ImageNet file's missing heads are one INFO line;
* what the weights record (or their mapping family or catalog entry implies) about stride
  placement, input format and pixel statistics must agree with the config;
* weights with NaN or Inf are neither loaded nor saved (:class:`NonFiniteWeightsError`).

Its saving and resuming are made to survive kills, full disks and divergence:

* every checkpoint, and ``last_checkpoint``, is written by
  :func:`~resnet_backbones.utils.atomic_write` (a temporary file, fsynced, renamed into place);
  ``last_checkpoint`` moves only after its checkpoint is complete; a full disk is a
  :class:`~resnet_backbones.utils.DiskFullError` naming the file and the free space;
* resuming (and ``--eval-only`` on OUTPUT_DIR) verifies the last checkpoint as it loads it: a
  torn or non-finite one, or an empty or dangling ``last_checkpoint``, is reported in a warning
  and the newest checkpoint of OUTPUT_DIR that loads is used instead (the bad file is left in
  place); none that loads is a :class:`NoGoodCheckpointError`;
* the temporary files of a writer that was killed are removed by the next training run, once it
  holds OUTPUT_DIR (:meth:`resnet_backbones.engine.Trainer.resume_or_load`).
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from ..utils import atomic_write, first_n
from . import mappings
from .detect import (
    WeightsFile,
    arch_shapes,
    describe_arch,
    identify_arch,
    identify_preset,
    read_weights,
)
from .entry import WeightsEntry
from .errors import (
    BackboneMismatchError,
    NoGoodCheckpointError,
    NonFiniteWeightsError,
    WeightsFormatError,
)
from .mappings import (
    BACKBONE_FORMATS,
    BACKBONE_NAME,
    as_tensor,
    backbone_name,
    backbone_prefix,
    choose_family,
)
from .metadata import check_metadata, expected_metadata, has_bottlenecks
from .place import BackboneReport, backbone_of_model, check_backbone, place
from .resolve import catalog_entry_for, resolve, weights_path_manager

__all__ = ["FamilyCheckpointer", "PreparedCheckpoint", "non_finite_tensors", "prepare_checkpoint"]

logger = logging.getLogger(__name__)


@dataclass
class PreparedCheckpoint:
    """A weights file made ready for one model.

    Attributes:
        checkpoint: ``{"model": state dict in the model's names, ...}`` plus everything else the
            file holds (iteration, optimizer ... of a training checkpoint), as detectron2's
            checkpointer expects it.
        weights: the file as read and detected.
        family: the mapping family chosen for a torchvision or timm file, else None.
        report: the strict check of its backbone.
    """

    checkpoint: dict[str, Any]
    weights: WeightsFile
    family: Optional[str]
    report: BackboneReport


def _frozen_norm_statistics(model: nn.Module) -> set[str]:
    """FrozenBN's statistics: MSRA's files have none, and FrozenBN fills them in."""
    frozen = [n for n, m in model.named_modules() if isinstance(m, FrozenBatchNorm2d)]
    return {f"{n}.{b}" for n in frozen for b in ("running_mean", "running_var")}


def _ours(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """The backbone of a model or detectron2 state in our names, name -> shape (C4's
    ``roi_heads.res5`` as res5); empty without a ResNet-family backbone."""
    prefix = backbone_prefix(state)
    if prefix is None:
        return {}
    shapes = {}
    for name, value in state.items():
        ours = backbone_name(name, prefix)
        if ours is not None:
            shapes[ours] = tuple(getattr(value, "shape", ()))
    return shapes


def _model_network(model_state: dict[str, Any]) -> str:
    """``R-101``: the preset a model's backbone is, in words, for messages."""
    preset = identify_preset(_ours(model_state))
    return preset if preset else "a backbone that is no preset's network (see MODEL.RESNETS)"


def _file_arch(
    weights: WeightsFile, family: Optional[str], backbone: Optional[dict[str, Any]]
) -> Optional[str]:
    """The arch (a key of ARCHS) a file holds: recorded by our files, else identified by the
    shapes of its backbone (torchvision, timm and MSRA files); None if no arch has them."""
    from ..presets import ARCHS

    recorded = weights.metadata.get("arch")
    if recorded in ARCHS:
        return recorded
    if weights.format not in ("torchvision", "timm", "msra") or backbone is None:
        return None
    shapes = {name: tuple(tensor.shape) for name, tensor in backbone.items()}
    return identify_arch(shapes, weights.format)


def _file_network(weights: WeightsFile, arch: Optional[str], backbone: dict[str, Any]) -> str:
    """What a file holds, in words, for messages."""
    if arch is not None:
        return describe_arch(arch)
    preset = identify_preset({n: tuple(getattr(t, "shape", ())) for n, t in backbone.items()})
    return preset if preset else "a network of no preset"


def _check_entry_before_download(
    path: str, entry: WeightsEntry, model: nn.Module, model_state: dict[str, Any], cfg: Any
) -> None:
    """A zoo name's network and input against the model and the config, from the catalog alone:
    a file that cannot fit is not downloaded."""
    if cfg is not None:
        check_metadata(entry.metadata, cfg, source=path, bottleneck=has_bottlenecks(model_state))
    if backbone_prefix(model_state) is None:
        return
    model_shapes = {name: tuple(tensor.shape) for name, tensor in model_state.items()}
    statistics = {n for n in model_shapes if n.endswith(("running_mean", "running_var"))}
    report = check_backbone(
        place(arch_shapes(entry.arch), model_shapes),
        model_shapes,
        modules={name for name, _ in model.named_modules()},
        optional=statistics,
    )
    if not report.fits:
        from ..presets import ARCHS

        preset = ARCHS[entry.arch].preset
        raise BackboneMismatchError(
            f"{path} holds {describe_arch(entry.arch)}, but the config builds "
            f"{_model_network(model_state)}; nothing was downloaded. Choose weights of the "
            "config's network (MODEL_ZOO.md lists them by network), or build the weights' "
            f"network: preset_config({preset!r}) (resnet_backbones.presets). Backbone "
            f"parameters: {'; '.join(report.problems())}"
        )


def prepare_checkpoint(
    path: str, model: nn.Module, cfg: Optional[Any] = None
) -> PreparedCheckpoint:
    """Runs the weights pipeline for ``model``: ``path`` -> a checkpoint in the model's names.

    A catalog name or URL is checked against the model and ``cfg`` from its catalog entry
    before anything is downloaded.

    Args:
        path: a local file, an https:// or detectron2:// URL, or ``resnet_backbones://NAME``.
        model: the model to load into (it is not changed here).
        cfg: the config ``model`` was built from, checked against the weights' metadata; None
            skips that check.

    Raises:
        WeightsNotFoundError, UnknownWeightsError, DownloadError ...: step 1;
        UnsafeWeightsError, WeightsFormatError: steps 2, 3 and 5;
        MetadataMismatchError: the config contradicts the weights (step 4, or before step 1
            for a catalog file);
        BackboneMismatchError: the weights do not fit the model's backbone (step 6, or before
            step 1 for a catalog file); the message names the network of each.
    """
    model_state = model.state_dict()
    entry = catalog_entry_for(path)
    if entry is not None:
        _check_entry_before_download(path, entry, model, model_state, cfg)
    local = resolve(path)  # 1
    weights = read_weights(local)  # 2, 3
    family = choose_family(  # 3: the family, once, against the model
        list(weights.state_dict), weights.families, backbone_of_model(model_state)
    )
    backbone = None
    if weights.format in BACKBONE_FORMATS and weights.wrapper != "blobs":
        backbone = mappings.to_backbone(  # renamed once, here; named by its shapes (3)
            weights.format, weights.state_dict, family=family, path=weights.path
        )
    arch = _file_arch(weights, family, backbone)

    expected = expected_metadata(weights, family, entry, arch)  # 4
    if expected and cfg is None:
        logger.info("%s: no config given to the checkpointer; its metadata is not checked", path)
    elif expected:
        check_metadata(expected, cfg, source=path, bottleneck=has_bottlenecks(model_state))

    if backbone is not None:  # 5
        head = _classifier_head(weights, backbone)
        backbone = {name: t for name, t in backbone.items() if name not in head}
        state = place(backbone, model_state)
        fits = all(
            name in model_state and tuple(model_state[name].shape) == tuple(t.shape)
            for name, t in head.items()
        )
        if head and fits:  # a classifier of as many classes: fc too
            state.update(head)
        elif head:
            classes = len(head.get("fc.bias", head.get("fc.weight", ())))
            why = (
                f"the model has {model_state['fc.weight'].shape[0]} classes"
                if "fc.weight" in model_state
                else "this model has none"
            )
            logger.info(
                "%s: its classifier head (%s, %d classes) is not loaded: %s",
                path,
                ", ".join(sorted(head)),
                classes,
                why,
            )
        checkpoint: dict[str, Any] = {"model": state, "__author__": weights.format}
        if weights.format == "resnet_backbones":
            # A checkpoint of ours with metadata (the pretraining tool's): the trainer's state
            # too, which --resume loads.
            checkpoint = {**weights.extra, **checkpoint}
        if weights.metadata:
            checkpoint["metadata"] = weights.metadata
    else:
        state, matched = mappings.detectron2_to_model(
            weights.format, weights.state_dict, weights.extra, model_state
        )
        if not matched and not set(state) & set(model_state):
            if all(BACKBONE_NAME.fullmatch(n) for n in state):  # a bare backbone's state
                state = place(state, model_state)
        checkpoint = {**weights.extra, "model": state, "matching_heuristics": False}

    report = check_backbone(  # 6
        {name: tuple(getattr(value, "shape", ())) for name, value in state.items()},
        {name: tuple(tensor.shape) for name, tensor in model_state.items()},
        modules={name for name, _ in model.named_modules()},
        optional=_frozen_norm_statistics(model),
    )
    if not report.fits:
        held = _file_network(weights, arch, backbone if backbone is not None else _ours(state))
        networks = f"the file holds {held}, the config builds {_model_network(model_state)}"
        report.raise_if_it_does_not_fit(path, weights.format, networks)
    if report.extra:
        logger.warning(
            "%s: %d tensors have no parameter in the model's (existing) modules and are not "
            "loaded: %s",
            path,
            len(report.extra),
            ", ".join(report.extra),
        )
    return PreparedCheckpoint(checkpoint, weights, family, report)


_HEAD_NAMES = ("fc.weight", "fc.bias")


def _classifier_head(weights: Any, backbone: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The ImageNet classifier's linear layer of a backbone file, as ``fc.weight`` and
    ``fc.bias``: ours and the pretraining tool's name it so; torchvision's and timm's ResNets
    too, though their mapping to our backbone leaves it out. Empty where there is none."""
    if weights.format in ("torchvision", "timm"):
        source = weights.state_dict
    else:
        source = backbone
    return {name: as_tensor(source[name]) for name in _HEAD_NAMES if name in source}


def non_finite_tensors(state: Mapping[str, Any]) -> list[str]:
    """The names of the floating-point tensors of ``state`` that hold a NaN or an Inf."""
    # A sum is finite only if every element is (NaN and Inf propagate), and costs a fifth of
    # isfinite(t).all() on the CPU; a non-finite sum may be an overflow of finite values, so
    # only those tensors are checked element by element.
    return [
        name
        for name, value in state.items()
        if isinstance(value, torch.Tensor)
        and value.is_floating_point()
        and not bool(torch.isfinite(value.sum()))
        and not bool(torch.isfinite(value).all())
    ]


def _non_finite_summary(names: list[str], state: Mapping[str, Any]) -> str:
    floating = sum(isinstance(v, torch.Tensor) and v.is_floating_point() for v in state.values())
    return f"{len(names)} of its {floating} floating-point tensors hold NaN or Inf ({first_n(names, 3)})"


def _group(names: Iterable[str], depth: int = 2) -> str:
    counts = Counter(".".join(n.split(".")[:depth]) for n in names)
    return ", ".join(f"{prefix}.* ({count})" for prefix, count in sorted(counts.items()))


class FamilyCheckpointer(DetectionCheckpointer):
    """detectron2's DetectionCheckpointer whose ``load`` runs :func:`prepare_checkpoint`:
    weights read safely, renamed from torchvision, timm, MSRA and our files to the model,
    strict about the backbone and the config, never loading NaN or Inf (see the module doc).

    Its ``save`` writes atomically and refuses a non-finite model; its ``resume_or_load``
    resumes from the newest checkpoint that loads (see :meth:`load_last_good`)."""

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
        # Written into every checkpoint as "metadata" (what the weights loader checks against
        # a config: see resnet_backbones.weights.metadata); empty: none.
        self.metadata: dict[str, Any] = {}

    def _load_file(self, filename: str) -> dict[str, Any]:
        # Never detectron2's: it unpickles .pkl files with plain pickle. Our load() does not
        # call this; any other caller gets the whole pipeline.
        return prepare_checkpoint(filename, self.model, self.cfg).checkpoint

    def load(self, path: str, checkpointables: Optional[list[str]] = None) -> dict[str, Any]:
        """Loads ``path`` into the model (and the ``checkpointables`` it holds, all by default),
        as detectron2's ``load``; returns what else the file holds (``iteration`` ...)."""
        if not path:
            return super().load(path, checkpointables)  # "Initializing model from scratch"
        self.logger.info("[Checkpointer] Loading from %s ...", path)
        prepared = prepare_checkpoint(path, self.model, self.cfg)
        checkpoint = prepared.checkpoint
        bad = non_finite_tensors(checkpoint["model"])
        if bad:
            raise NonFiniteWeightsError(
                f"{path}: {_non_finite_summary(bad, checkpoint['model'])}; it was not loaded. "
                "Weights from a run that diverged: use an earlier checkpoint of that run"
            )
        incompatible = self._load_model(checkpoint)
        if prepared.weights.format in BACKBONE_FORMATS and incompatible is not None:
            heads = [n for n in incompatible.missing_keys if n not in prepared.report.backbone]
            if heads:
                logger.info(
                    "%s holds the backbone only; %d parameters of the rest of the model (heads, "
                    "deformable convs' offsets) keep their initialisation: %s",
                    path,
                    len(heads),
                    _group(heads),
                )
                for name in heads:
                    incompatible.missing_keys.remove(name)
        if incompatible is not None:
            self._log_incompatible_keys(incompatible)
        for key in self.checkpointables if checkpointables is None else checkpointables:
            if key in checkpoint:
                self.logger.info("Loading %s from %s ...", key, path)
                self.checkpointables[key].load_state_dict(checkpoint.pop(key))
        return checkpoint

    # --------------------------------------------------------------------------------------
    # Saving: atomic, and never a non-finite model
    # --------------------------------------------------------------------------------------
    def save(self, name: str, **kwargs: Any) -> None:
        """Saves the model and the checkpointables (plus ``kwargs``) as ``save_dir/name.pth``,
        as fvcore's ``save`` does, but atomically (see the module doc), then points
        ``last_checkpoint`` at it.

        Raises:
            NonFiniteWeightsError: the model holds NaN or Inf; nothing is written. The message
                names the iteration and the newest checkpoint to resume from.
            DiskFullError: no room for the file; nothing is written under its name.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        data = {"model": self.model.state_dict()}
        bad = non_finite_tensors(data["model"])
        if bad:
            raise NonFiniteWeightsError(self._refusal(save_file, bad, data["model"], kwargs))
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        if self.metadata:
            data["metadata"] = dict(self.metadata)
        data.update(kwargs)
        self.logger.info("Saving checkpoint to %s", save_file)
        with atomic_write(save_file) as f:
            torch.save(data, f)
        self.tag_last_checkpoint(basename)

    def _refusal(
        self, save_file: str, bad: list[str], state: Mapping[str, Any], kwargs: Mapping[str, Any]
    ) -> str:
        iteration = kwargs.get("iteration")
        if iteration is None and "trainer" in self.checkpointables:
            iteration = getattr(self.checkpointables["trainer"], "iter", None)
        when = f" at iteration {iteration}" if iteration is not None else ""
        last = self.get_checkpoint_file() if self.has_checkpoint() else ""
        if last and os.path.isfile(last):
            resume = (
                f"The newest good checkpoint is {last}: lower SOLVER.BASE_LR (or set "
                "SOLVER.CLIP_GRADIENTS.ENABLED True) and rerun with --resume to continue from it"
            )
        else:
            resume = (
                "No checkpoint was saved before: lower SOLVER.BASE_LR (or set "
                "SOLVER.CLIP_GRADIENTS.ENABLED True) and start the run again"
            )
        return (
            f"training diverged{when}: the model's weights are not finite "
            f"({_non_finite_summary(bad, state)}), so {save_file} was not written. {resume}"
        )

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        """Points ``save_dir/last_checkpoint`` at ``last_filename_basename``, atomically: it
        names the previous checkpoint or the new one, never a partial name or nothing."""
        with atomic_write(os.path.join(self.save_dir, "last_checkpoint"), "w") as f:
            f.write(last_filename_basename)

    # --------------------------------------------------------------------------------------
    # Resuming: from the newest checkpoint that loads
    # --------------------------------------------------------------------------------------
    def resume_or_load(self, path: str, *, resume: bool = True) -> dict[str, Any]:
        """detectron2's: with ``resume`` and a ``last_checkpoint`` in ``save_dir``, loads the
        run's checkpoint with every checkpointable (:meth:`load_last_good`); else ``path``'s
        model only."""
        if resume and self.has_checkpoint():
            return self.load_last_good()[1]
        return self.load(path, checkpointables=[])

    def load_last_good(
        self, checkpointables: Optional[list[str]] = None
    ) -> tuple[str, dict[str, Any]]:
        """Loads the checkpoint that ``last_checkpoint`` names, or where that one is torn or
        holds NaN or Inf (or ``last_checkpoint`` is empty or names a missing file), the newest
        ``.pth`` file of ``save_dir`` that loads, with a warning that names the bad file and its
        problem. Bad files are left in place. Returns the path loaded and what :meth:`load`
        returns.

        Raises:
            NoGoodCheckpointError: no checkpoint of ``save_dir`` loads; each one's problem is
                named.
            Any other error of :meth:`load` (weights that do not fit the model ...): the config
                no longer fits the run; no other checkpoint is tried.
        """
        marker = os.path.join(self.save_dir, "last_checkpoint")
        last = self.get_checkpoint_file()
        problems = []
        if last == self.save_dir or os.path.basename(last) == "":
            problems.append(f"{marker} is empty (it names no checkpoint)")
            last = ""
        elif not os.path.isfile(last):
            problems.append(
                f"{marker} names {os.path.basename(last)!r}, which is not in {self.save_dir}"
            )
            last = ""
        others = [
            p
            for p in self.get_all_checkpoint_files()
            if os.path.abspath(p) != os.path.abspath(last or "")
        ]
        # The newest first: a run writes its checkpoints in the order of its iterations.
        others.sort(key=lambda p: (os.path.getmtime(p), p), reverse=True)
        for candidate in ([last] if last else []) + others:
            try:
                loaded = self.load(candidate, checkpointables)
            except (WeightsFormatError, NonFiniteWeightsError) as e:
                # Both messages start with the file's name; the problem is said once, after it.
                detail = str(e).removeprefix(f"{candidate}: ")
                if isinstance(e, WeightsFormatError):
                    problems.append(f"{candidate} is torn or unreadable ({detail})")
                else:
                    problems.append(f"{candidate} is not finite: {detail.split('; ')[0]}")
                continue
            for problem in problems:
                logger.warning(
                    "%s; loaded %s instead, the newest checkpoint of %s that loads (bad files are "
                    "left in place)",
                    problem,
                    candidate,
                    self.save_dir,
                )
            return candidate, loaded
        raise NoGoodCheckpointError(
            f"no checkpoint in {self.save_dir} can be loaded: {'; '.join(problems)}. The files "
            "are left in place. To start the run over, use a new OUTPUT_DIR (or move them "
            "away) and run without --resume; to evaluate other weights, pass MODEL.WEIGHTS"
        )

"""Put a backbone's tensors under the model's names, and check the result strictly.

Both steps are pure functions of names and shapes, testable without building a model:

* :func:`place`: our backbone names (``stem.*``, ``res2.*`` ...) -> the model's
  (``backbone.bottom_up.*`` with FPN, ``backbone.*`` plus ``roi_heads.res5.*`` with C4);
* :func:`check_backbone`: every backbone tensor of the model must be in the file with its
  shape, and the file may not hold modules of the backbone that the model lacks; the
  :class:`BackboneReport` says what is wrong and raises :class:`BackboneMismatchError`.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Collection, Mapping, Optional, Sequence, TypeVar

from ..utils import first_n
from .errors import BackboneMismatchError
from .mappings import C4_HEAD, backbone_name, backbone_prefix

__all__ = ["BackboneReport", "backbone_names", "backbone_of_model", "check_backbone", "place"]

T = TypeVar("T")

# A deformable conv's offset (and mask) conv: zero-initialised by design, so that training starts
# from the regular conv; ImageNet weights of the regular network have none (as in detectron2).
_DCN_OFFSET = re.compile(r"\.conv2_offset\.(weight|bias)$")


def _model_prefix(model_names: Collection[str]) -> str:
    prefix = backbone_prefix(model_names)
    if prefix is None:
        raise BackboneMismatchError(
            "the model has no ResNet-family backbone: none of its parameters is named '*stem.*'"
        )
    return prefix


def place(backbone: Mapping[str, T], model_names: Collection[str]) -> dict[str, T]:
    """Our backbone names -> the model's: under its backbone prefix, and res5 into the C4 head
    where the model has it there. A ``num_batches_tracked`` the model lacks (FrozenBN counts
    nothing) is left out.

    Raises:
        BackboneMismatchError: the model has no ResNet-family backbone.
    """
    prefix = _model_prefix(model_names)
    placed = {}
    for name, tensor in backbone.items():
        target = prefix + name
        if target not in model_names and C4_HEAD + name in model_names:
            target = C4_HEAD + name
        if target not in model_names and name.endswith("num_batches_tracked"):
            continue
        placed[target] = tensor
    return placed


def backbone_names(model_names: Collection[str], optional: Collection[str] = ()) -> list[str]:
    """The model's backbone tensors that a file must provide: everything under its backbone
    prefix and in the C4 head's res5, except ``optional`` ones (FrozenBN fills in missing
    statistics, as in detectron2), BN's batch counters and deformable convs' offsets. Empty for
    a model without a ResNet-family backbone (detectron2's rules only)."""
    prefix = backbone_prefix(model_names)
    if prefix is None:
        return []
    optional = set(optional)
    return [
        n
        for n in model_names
        if backbone_name(n, prefix) is not None
        and n not in optional
        and not n.endswith(".num_batches_tracked")
        and not _DCN_OFFSET.search(n)
    ]


def _natural(name: str) -> list:
    """Sort key that orders res4.6 before res4.10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in name.split(".")]


def _first_absent_module(name: str, modules: Collection[str]) -> str:
    """The outermost module on ``name``'s path that the model lacks (``backbone.res4.6``)."""
    parts = name.split(".")[:-1]
    for i in range(1, len(parts) + 1):
        if ".".join(parts[:i]) not in modules:
            return ".".join(parts[:i])
    return ".".join(parts)


@dataclass
class BackboneReport:
    """What :func:`check_backbone` found.

    Attributes:
        backbone: the model's backbone tensors a file must provide (:func:`backbone_names`).
        missing: those the file does not have.
        misshapen: ``"name (file shape) in the file, (model shape) in the model"``.
        foreign: tensors of the file in modules the model lacks (the blocks res4.6+ of an R-101
            file in an R-50, the SE layers of an SE-ResNet file in a plain ResNet): another
            network.
        extra: tensors of the file in modules the model has, but without that parameter (the
            stem conv's bias of MSRA's files, which detectron2 drops too): a warning.
        modules: the model's module names (to name the outermost absent module of a foreign
            tensor).
    """

    backbone: list[str]
    missing: list[str] = field(default_factory=list)
    misshapen: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    modules: Collection[str] = ()

    @property
    def fits(self) -> bool:
        return not (self.missing or self.misshapen or self.foreign)

    def problems(self) -> list[str]:
        """One phrase per kind of problem, for the error message."""
        problems = []
        if self.missing:
            problems.append(f"{len(self.missing)} missing: " + first_n(self.missing, 20))
        if self.misshapen:
            problems.append(
                f"{len(self.misshapen)} of the wrong shape: " + first_n(self.misshapen, 20, "; ")
            )
        if self.foreign:
            counts = Counter(_first_absent_module(n, self.modules) for n in self.foreign)
            shown = [
                f"{m}.* ({c})" for m, c in sorted(counts.items(), key=lambda i: _natural(i[0]))
            ]
            problems.append(
                f"{len(self.foreign)} in the file belong to modules the model does not have (a "
                "deeper or different network): " + first_n(shown, 20)
            )
        return problems

    def raise_if_it_does_not_fit(
        self, source: str, fmt: Optional[str], networks: Optional[str] = None
    ) -> None:
        """Raises BackboneMismatchError, naming ``source``, the ``networks`` of file and model
        (``"the file holds R-50 (torchvision's resnet50), the config builds R-101"``) where
        known, and every problem, unless it fits."""
        if self.fits:
            return
        held = f": {networks}" if networks else ""
        raise BackboneMismatchError(
            f"{source} ({fmt} format) does not fit the model's backbone{held}; nothing was "
            f"loaded. Backbone parameters: {'; '.join(self.problems())}. Check the depth, "
            "widths, stem and block options of MODEL.RESNETS against the weights' architecture."
        )


def check_backbone(
    file_shapes: Mapping[str, Sequence[int]],
    model_shapes: Mapping[str, Sequence[int]],
    *,
    modules: Collection[str],
    optional: Collection[str] = (),
) -> BackboneReport:
    """Checks the tensors of a file, under the model's names, against the model's backbone.

    Args:
        file_shapes: name -> shape of every tensor the file would load.
        model_shapes: name -> shape of every parameter and buffer of the model.
        modules: the model's module names (``named_modules``).
        optional: model tensors a file may omit (FrozenBN's statistics).

    Returns:
        The report; nothing is raised here (see :meth:`BackboneReport.raise_if_it_does_not_fit`).
    """
    backbone = backbone_names(model_shapes, optional)
    report = BackboneReport(backbone=backbone, modules=set(modules))
    report.missing = sorted(n for n in backbone if n not in file_shapes)
    report.misshapen = sorted(
        f"{n} {tuple(file_shapes[n])} in the file, {tuple(model_shapes[n])} in the model"
        for n in backbone
        if n in file_shapes and tuple(file_shapes[n]) != tuple(model_shapes[n])
    )
    prefix = backbone_prefix(model_shapes)
    if prefix is None:
        return report

    def stage_of(name: str) -> Optional[str]:
        """The model's module of ``name``'s stage (``backbone.res4``, ``roi_heads.res5``)."""
        ours = backbone_name(name, prefix)
        if ours is None:
            return None
        return (C4_HEAD if name.startswith(C4_HEAD) else prefix) + ours.split(".")[0]

    built = {stage_of(n) for n in model_shapes} - {None}
    for name in sorted(file_shapes, key=_natural):
        if name in model_shapes or name.endswith("num_batches_tracked"):
            continue
        if stage_of(name) in built:
            (report.extra if name.rsplit(".", 1)[0] in report.modules else report.foreign).append(
                name
            )
    return report


def backbone_of_model(model_names: Collection[str]) -> set[str]:
    """Our backbone names (``stem.*``, ``res2.*`` ...) of the model's backbone tensors: the
    inverse of :func:`place`. Empty for a model without a ResNet-family backbone."""
    prefix = backbone_prefix(model_names)
    if prefix is None:
        return set()
    return {ours for name in model_names if (ours := backbone_name(name, prefix))}

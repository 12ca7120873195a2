"""Typed description of a ResNet-family network, and the one place that reads ``MODEL.RESNETS``.

A network is a stem plus four stages of blocks (res2..res5). Every variant of the family is a
:class:`ResNetSpec` — data, not code: ResNet-50 and ResNeXt-101 differ only in the numbers
here, and a new block, stem or shortcut type is one more name in these tables plus a small
class in :mod:`resnet_backbones.modeling.layers`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

__all__ = [
    "BLOCK_TYPES",
    "DEPTHS",
    "FEATURE_NAMES",
    "NORMS",
    "SHORTCUTS",
    "STAGE_NAMES",
    "STEM_TYPES",
    "BlockOptions",
    "Depth",
    "ResNetSpec",
    "StageSpec",
    "check_choice",
    "resnet_spec",
    "spec_from_config",
]

STAGE_NAMES: tuple[str, ...] = ("res2", "res3", "res4", "res5")
FEATURE_NAMES: tuple[str, ...] = ("stem",) + STAGE_NAMES
BLOCK_TYPES: tuple[str, ...] = ("basic", "bottleneck")
STEM_TYPES: tuple[str, ...] = ("basic", "deep")
# The ResNet paper's shortcut options (Sec. 3.3): A = identity with zero-padded extra channels,
# B = projection only where the shape changes, C = projection on every block.
SHORTCUTS: tuple[str, ...] = ("A", "B", "C")
# detectron2.layers.get_norm's names ("" means no norm, as in detectron2).
NORMS: tuple[str, ...] = ("FrozenBN", "BN", "SyncBN", "GN", "nnSyncBN", "naiveSyncBN", "")


@dataclass(frozen=True)
class Depth:
    """Block type and number of blocks per stage (res2..res5) of one ResNet depth."""

    block: str
    blocks_per_stage: tuple[int, int, int, int]


# The one depth table of the package (ResNet paper, Table 1; 200 from the identity-mapping paper).
DEPTHS: dict[int, Depth] = {
    18: Depth("basic", (2, 2, 2, 2)),
    34: Depth("basic", (3, 4, 6, 3)),
    50: Depth("bottleneck", (3, 4, 6, 3)),
    101: Depth("bottleneck", (3, 4, 23, 3)),
    152: Depth("bottleneck", (3, 8, 36, 3)),
    200: Depth("bottleneck", (3, 24, 36, 3)),
}


def check_choice(key: str, value: Any, valid: Iterable[Any]) -> None:
    """Raises ValueError naming ``key``, the bad ``value`` and the valid ones."""
    valid = tuple(valid)
    if value not in valid:
        raise ValueError(
            f"{key} = {value!r} is not valid; valid values: {', '.join(repr(v) for v in valid)}"
        )


@dataclass(frozen=True)
class BlockOptions:
    """Options shared by every block of one network; each block class reads the ones it needs.

    Attributes:
        norm: normalisation after every conv, a name understood by ``detectron2.layers.get_norm``.
        shortcut: "A", "B" or "C" (see :data:`SHORTCUTS`).
        avg_down: projection shortcuts average-pool before a stride-1 1x1 conv (ResNet-D).
        stride_in_1x1: a bottleneck's stride is in its first 1x1 conv (MSRA/Caffe2 weights)
            instead of its 3x3 conv (torchvision, fb.torch).
        num_groups: groups of a bottleneck's 3x3 conv (ResNeXt cardinality).
        zero_init_residual: the last norm of each residual branch starts with zero scale.
    """

    norm: str = "FrozenBN"
    shortcut: str = "B"
    avg_down: bool = False
    stride_in_1x1: bool = True
    num_groups: int = 1
    zero_init_residual: bool = False


@dataclass(frozen=True)
class StageSpec:
    """One stage: ``num_blocks`` blocks; the first has ``stride`` and may change the width."""

    name: str
    num_blocks: int
    in_channels: int
    out_channels: int
    bottleneck_channels: int
    stride: int
    dilation: int

    @property
    def strides(self) -> tuple[int, ...]:
        return (self.stride,) + (1,) * (self.num_blocks - 1)


@dataclass(frozen=True)
class ResNetSpec:
    """A whole network: block type, stem and the four stages res2..res5."""

    block: str
    stem: str
    stem_out_channels: int
    stages: tuple[StageSpec, ...]
    options: BlockOptions = field(default_factory=BlockOptions)

    def stage(self, name: str) -> StageSpec:
        check_choice("stage", name, [s.name for s in self.stages])
        return next(s for s in self.stages if s.name == name)


def resnet_spec(
    depth: int,
    *,
    stem: str = "basic",
    stem_out_channels: int = 64,
    res2_out_channels: int = 256,
    num_groups: int = 1,
    width_per_group: int = 64,
    res5_dilation: int = 1,
    norm: str = "FrozenBN",
    stride_in_1x1: bool = True,
    shortcut: str = "B",
    avg_down: bool = False,
    zero_init_residual: bool = False,
) -> ResNetSpec:
    """Builds and validates the spec of a ResNet-family network.

    The arguments are those of ``MODEL.RESNETS`` with detectron2's meaning: a bottleneck's
    3x3 width in res2 is ``num_groups * width_per_group`` and every later stage doubles the
    widths; basic blocks (depth 18, 34) have one width per stage, ``res2_out_channels``.

    Raises:
        ValueError: naming the config key, the bad value and the valid values.
    """
    check_choice("MODEL.RESNETS.DEPTH", depth, sorted(DEPTHS))
    check_choice("MODEL.RESNETS.STEM", stem, STEM_TYPES)
    check_choice("MODEL.RESNETS.SHORTCUT", shortcut, SHORTCUTS)
    check_choice("MODEL.RESNETS.NORM", norm, NORMS)
    check_choice("MODEL.RESNETS.RES5_DILATION", res5_dilation, (1, 2))
    for key, value in [
        ("MODEL.RESNETS.STEM_OUT_CHANNELS", stem_out_channels),
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", res2_out_channels),
        ("MODEL.RESNETS.NUM_GROUPS", num_groups),
        ("MODEL.RESNETS.WIDTH_PER_GROUP", width_per_group),
    ]:
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} = {value!r} is not valid; it must be a positive integer")
    if stem == "deep" and stem_out_channels % 2:
        raise ValueError(
            f"MODEL.RESNETS.STEM_OUT_CHANNELS = {stem_out_channels} is not valid for the deep "
            "stem, whose first two convs have half that width; it must be even"
        )

    table = DEPTHS[depth]
    if table.block == "basic":
        if res2_out_channels != 64:
            raise ValueError(
                f"MODEL.RESNETS.RES2_OUT_CHANNELS = {res2_out_channels} is not valid for DEPTH "
                f"{depth}, which uses basic blocks: set it to 64 (as detectron2 requires)"
            )
        if num_groups != 1 or width_per_group != 64:
            raise ValueError(
                f"MODEL.RESNETS.NUM_GROUPS = {num_groups} and WIDTH_PER_GROUP = "
                f"{width_per_group} are not valid for DEPTH {depth}: basic blocks have no "
                "grouped bottleneck; keep NUM_GROUPS 1 and WIDTH_PER_GROUP 64"
            )

    stages = []
    in_channels = stem_out_channels
    out_channels = res2_out_channels
    bottleneck_channels = num_groups * width_per_group
    for i, (name, num_blocks) in enumerate(zip(STAGE_NAMES, table.blocks_per_stage)):
        dilation = res5_dilation if name == "res5" else 1
        stride = 1 if i == 0 or dilation > 1 else 2
        stages.append(
            StageSpec(
                name=name,
                num_blocks=num_blocks,
                in_channels=in_channels,
                out_channels=out_channels,
                bottleneck_channels=bottleneck_channels,
                stride=stride,
                dilation=dilation,
            )
        )
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2

    options = BlockOptions(
        norm=norm,
        shortcut=shortcut,
        avg_down=avg_down,
        stride_in_1x1=stride_in_1x1,
        num_groups=num_groups,
        zero_init_residual=zero_init_residual,
    )
    return ResNetSpec(
        block=table.block,
        stem=stem,
        stem_out_channels=stem_out_channels,
        stages=tuple(stages),
        options=options,
    )


def spec_from_config(cfg) -> ResNetSpec:
    """Reads ``cfg.MODEL.RESNETS`` (extended by ``add_resnet_backbones_config``) into a spec."""
    r = cfg.MODEL.RESNETS
    if any(r.DEFORM_ON_PER_STAGE):
        raise ValueError(
            f"MODEL.RESNETS.DEFORM_ON_PER_STAGE = {list(r.DEFORM_ON_PER_STAGE)} is not supported "
            "yet: deformable convolution is not implemented in this version of resnet_backbones; "
            "keep it [False, False, False, False]"
        )
    return resnet_spec(
        r.DEPTH,
        stem=r.STEM,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        res5_dilation=r.RES5_DILATION,
        norm=r.NORM,
        stride_in_1x1=r.STRIDE_IN_1X1,
        shortcut=r.SHORTCUT,
        avg_down=r.AVG_DOWN,
        zero_init_residual=r.ZERO_INIT_RESIDUAL,
    )


def feature_names_up_to(out_features: Sequence[str]) -> tuple[str, ...]:
    """The stage names that must be built to produce ``out_features`` (res2 up to the deepest)."""
    for name in out_features:
        check_choice("MODEL.RESNETS.OUT_FEATURES entry", name, FEATURE_NAMES)
    deepest = max(FEATURE_NAMES.index(name) for name in out_features)
    return STAGE_NAMES[:deepest]

"""Typed description of a ResNet-family network.

A network is a stem plus four stages of blocks (res2..res5). Every variant of the family is a
:class:`ResNetSpec` — data, not code: ResNet-50 and ResNeXt-101 differ only in the numbers
here, and a new block, stem or shortcut type is one more name in these tables plus a small
class in :mod:`~resnet_backbones.modeling.blocks`, :mod:`~resnet_backbones.modeling.stems` or
:mod:`~resnet_backbones.modeling.ops`.

Nothing here reads a config: :func:`resnet_backbones.config.resnet_spec_from_config` reads
``MODEL.RESNETS`` into the arguments of :func:`resnet_spec`, and passes the config keys as the
names its errors use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

from ..utils import PYTHON_NAMES, ArgumentNames, check_choice, check_positive_int
from .base import FEATURE_NAMES

__all__ = [
    "BLOCK_ORDERS",
    "CIFAR_STAGE_WIDTHS",
    "DEPTHS",
    "NORMS",
    "SHORTCUTS",
    "STAGE_NAMES",
    "STEM_TYPES",
    "BlockOptions",
    "Depth",
    "ResNetSpec",
    "StageSpec",
    "cifar_depth",
    "resnet_spec",
]

STAGE_NAMES: tuple[str, ...] = FEATURE_NAMES[1:]
# "cifar" is the ResNet paper's CIFAR-10 stem (Sec. 4.2): one 3x3 stride-1 conv, no max-pool.
STEM_TYPES: tuple[str, ...] = ("basic", "deep", "cifar")
# The ResNet paper's shortcut options (Sec. 3.3): A = identity with zero-padded extra channels,
# B = projection only where the shape changes, C = projection on every block; "none" = no
# shortcut at all (the paper's plain networks, Sec. 4.1).
SHORTCUTS: tuple[str, ...] = ("A", "B", "C", "none")
# The identity-mapping paper's block arrangements (He et al., 2016b, Fig. 4 (a)-(e)).
BLOCK_ORDERS: tuple[str, ...] = ("post", "bn_after_add", "relu_before_add", "relu_preact", "preact")
# detectron2.layers.get_norm's names ("" means no norm, as in detectron2).
NORMS: tuple[str, ...] = ("FrozenBN", "BN", "SyncBN", "GN", "nnSyncBN", "naiveSyncBN", "")


@dataclass(frozen=True)
class Depth:
    """Block type and number of blocks per stage (res2, res3, ...) of one ResNet depth."""

    block: str
    blocks_per_stage: tuple[int, ...]


# The one depth table of the package (ResNet paper, Table 1; 200 from the identity-mapping paper).
DEPTHS: dict[int, Depth] = {
    18: Depth("basic", (2, 2, 2, 2)),
    34: Depth("basic", (3, 4, 6, 3)),
    50: Depth("bottleneck", (3, 4, 6, 3)),
    101: Depth("bottleneck", (3, 4, 23, 3)),
    152: Depth("bottleneck", (3, 8, 36, 3)),
    200: Depth("bottleneck", (3, 24, 36, 3)),
}

# CIFAR networks (ResNet paper, Sec. 4.2): three stages of n basic blocks of widths 16/32/64
# (times the widen factor k of WRN-d-k). The ResNet paper counts depth 6n+2 (20, 32, 44, 56,
# 110, 1202); the Wide ResNet paper counts the three projection convs too, 6n+4 (WRN-28-10: n=4).
CIFAR_STAGE_WIDTHS: tuple[int, ...] = (16, 32, 64)


def cifar_depth(depth: int) -> Depth | None:
    """The CIFAR network of ``depth`` layers (6n+2, or 6n+4 as WRN counts), None if none."""
    if not isinstance(depth, int) or depth < 8 or depth % 6 not in (2, 4):
        return None
    n = (depth - depth % 6) // 6
    return Depth("basic", (n, n, n))


@dataclass(frozen=True)
class BlockOptions:
    """Options shared by every block of one network; each block class reads the ones it needs.

    Attributes:
        norm: normalisation of every conv, a name understood by ``detectron2.layers.get_norm``.
        shortcut: "A", "B", "C" or "none" (see :data:`SHORTCUTS`).
        order: arrangement of norm, ReLU and addition (see :data:`BLOCK_ORDERS`).
        avg_down: projection shortcuts average-pool before a stride-1 1x1 conv (ResNet-D).
        stride_in_1x1: a bottleneck's stride is in its first 1x1 conv (MSRA/Caffe2 weights)
            instead of its 3x3 conv (torchvision, fb.torch).
        num_groups: groups of a bottleneck's 3x3 conv (ResNeXt cardinality).
        res2net_scale: number of splits of a bottleneck's 3x3 conv (Res2Net); 1 means none.
        se_ratio: reduction ratio r of squeeze-and-excitation on every block; 0 means none.
        dropout: dropout probability before every conv of a block but the first (WRN).
        zero_init_residual: the last norm of each residual branch (or its last conv, where the
            branch ends with a conv) starts at zero.
        deform_modulated: deformable convs are modulated (DCN v2) rather than DCN v1.
        deform_num_groups: offset groups of a deformable conv.
    """

    norm: str = "FrozenBN"
    shortcut: str = "B"
    order: str = "post"
    avg_down: bool = False
    stride_in_1x1: bool = True
    num_groups: int = 1
    res2net_scale: int = 1
    se_ratio: int = 0
    dropout: float = 0.0
    zero_init_residual: bool = False
    deform_modulated: bool = False
    deform_num_groups: int = 1

    @property
    def preact(self) -> bool:
        return self.order == "preact"


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
    deform: bool = False

    @property
    def strides(self) -> tuple[int, ...]:
        return (self.stride,) + (1,) * (self.num_blocks - 1)


@dataclass(frozen=True)
class ResNetSpec:
    """A whole network: block type, stem and its stages (res2..res5; res2..res4 for CIFAR)."""

    block: str
    stem: str
    stem_out_channels: int
    stages: tuple[StageSpec, ...]
    options: BlockOptions = field(default_factory=BlockOptions)

    def stage(self, name: str) -> StageSpec:
        check_choice("stage", name, [s.name for s in self.stages])
        return next(s for s in self.stages if s.name == name)

    @property
    def feature_names(self) -> tuple[str, ...]:
        return ("stem",) + tuple(s.name for s in self.stages)


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
    block_order: str = "post",
    avg_down: bool = False,
    zero_init_residual: bool = False,
    res2net_scale: int = 1,
    res2net_width: int = 26,
    se_ratio: int = 0,
    dropout: float = 0.0,
    widen_factor: int = 1,
    deform_on_per_stage: Sequence[bool] = (False, False, False, False),
    deform_modulated: bool = False,
    deform_num_groups: int = 1,
    names: ArgumentNames = PYTHON_NAMES,
) -> ResNetSpec:
    """Builds and validates the spec of a ResNet-family network.

    Every argument is the ``MODEL.RESNETS`` key of its name, with detectron2's meaning: a
    bottleneck's 3x3 width in res2 is ``num_groups * width_per_group`` and every later stage
    doubles the widths; basic blocks (depth 18, 34) have one width per stage, ``res2_out_channels``.
    Res2Net's 3x3 width in res2 is ``res2net_scale * res2net_width`` (times ``num_groups``).
    CIFAR depths (6n+2, 6n+4) need ``stem="cifar"`` and have three stages res2..res4 of
    widths 16/32/64 times ``widen_factor``; ``res2_out_channels`` does not apply to them.

    ``names`` says how errors name the arguments: by their Python names (the default), or by
    the config keys (``resnet_backbones.config`` passes them), e.g. ``depth = 77 is not valid``
    and ``MODEL.RESNETS.DEPTH = 77 is not valid`` from the same check.

    Raises:
        ValueError: naming the argument, the bad value and the valid values, or the
            combination that is not defined and why.
    """
    n = names
    check_choice(n["stem"], stem, STEM_TYPES)
    # With the CIFAR stem a depth of 6n+2 or 6n+4 is a CIFAR network (ResNet-50 on CIFAR is
    # n = 8); otherwise the ImageNet table decides (R-18 with a CIFAR stem is an ImageNet R-18).
    cifar = cifar_depth(depth) if stem == "cifar" else None
    if cifar is None and depth not in DEPTHS:
        if cifar_depth(depth) is not None:
            raise ValueError(
                f"{n['depth']} = {depth} is a CIFAR depth (6n+2 or 6n+4), which needs "
                f"{n['stem']} 'cifar', not {stem!r}; ImageNet depths are {sorted(DEPTHS)}"
            )
        check_choice(n["depth"], depth, sorted(DEPTHS) + ["6n+2 or 6n+4 (CIFAR)"])
    check_choice(n["shortcut"], shortcut, SHORTCUTS)
    check_choice(n["block_order"], block_order, BLOCK_ORDERS)
    check_choice(n["norm"], norm, NORMS)
    check_choice(n["res5_dilation"], res5_dilation, (1, 2))
    for argument, value in [
        ("stem_out_channels", stem_out_channels),
        ("res2_out_channels", res2_out_channels),
        ("num_groups", num_groups),
        ("width_per_group", width_per_group),
        ("res2net_scale", res2net_scale),
        ("res2net_width", res2net_width),
        ("widen_factor", widen_factor),
        ("deform_num_groups", deform_num_groups),
    ]:
        check_positive_int(n[argument], value)
    check_positive_int(n["se_ratio"], se_ratio, minimum=0)
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ValueError(f"{n['dropout']} = {dropout!r} is not valid; it must be in [0, 1)")
    deform_on_per_stage = tuple(deform_on_per_stage)
    if len(deform_on_per_stage) != len(STAGE_NAMES):
        raise ValueError(
            f"{n['deform_on_per_stage']} = {list(deform_on_per_stage)} is not valid; "
            "it needs one flag per stage res2..res5"
        )
    if stem == "deep" and stem_out_channels % 2:
        raise ValueError(
            f"{n['stem_out_channels']} = {stem_out_channels} is not valid for the deep "
            "stem, whose first two convs have half that width; it must be even"
        )

    table = cifar if cifar is not None else DEPTHS[depth]
    _check_combinations(
        depth,
        table,
        names,
        cifar=cifar is not None,
        stem=stem,
        res2_out_channels=res2_out_channels,
        num_groups=num_groups,
        width_per_group=width_per_group,
        res5_dilation=res5_dilation,
        shortcut=shortcut,
        block_order=block_order,
        avg_down=avg_down,
        zero_init_residual=zero_init_residual,
        res2net_scale=res2net_scale,
        widen_factor=widen_factor,
        deform_on_per_stage=deform_on_per_stage,
    )

    if cifar is not None:
        out_widths = [w * widen_factor for w in CIFAR_STAGE_WIDTHS]
        bottleneck_widths = out_widths
    else:
        out_widths = [res2_out_channels * 2**i for i in range(len(STAGE_NAMES))]
        res2_bottleneck = num_groups * (
            res2net_scale * res2net_width if res2net_scale > 1 else width_per_group
        )
        bottleneck_widths = [res2_bottleneck * 2**i for i in range(len(STAGE_NAMES))]
    if norm == "GN":
        # detectron2's GN has 32 groups, which must divide every normalised width.
        widths = {stem_out_channels, *out_widths, *bottleneck_widths}
        if res2net_scale > 1:
            widths |= {w // res2net_scale for w in bottleneck_widths}
        bad = sorted(w for w in widths if w % 32)
        if bad:
            raise ValueError(
                f"{n['norm']} = 'GN' is not valid for this network: GroupNorm's 32 "
                f"groups (detectron2) do not divide its {bad} channel widths; use 'BN', "
                "'SyncBN' or 'FrozenBN'"
            )

    stages = []
    in_channels = stem_out_channels
    for i, num_blocks in enumerate(table.blocks_per_stage):
        name = STAGE_NAMES[i]
        dilation = res5_dilation if name == "res5" else 1
        stride = 1 if i == 0 or dilation > 1 else 2
        stages.append(
            StageSpec(
                name=name,
                num_blocks=num_blocks,
                in_channels=in_channels,
                out_channels=out_widths[i],
                bottleneck_channels=bottleneck_widths[i],
                stride=stride,
                dilation=dilation,
                deform=bool(deform_on_per_stage[i]),
            )
        )
        in_channels = out_widths[i]

    options = BlockOptions(
        norm=norm,
        shortcut=shortcut,
        order=block_order,
        avg_down=avg_down,
        stride_in_1x1=stride_in_1x1,
        num_groups=num_groups,
        res2net_scale=res2net_scale,
        se_ratio=se_ratio,
        dropout=float(dropout),
        zero_init_residual=zero_init_residual,
        deform_modulated=deform_modulated,
        deform_num_groups=deform_num_groups,
    )
    return ResNetSpec(
        block=table.block,
        stem=stem,
        stem_out_channels=stem_out_channels,
        stages=tuple(stages),
        options=options,
    )


def _check_combinations(
    depth: int,
    table: Depth,
    n: ArgumentNames,
    *,
    cifar: bool,
    stem: str,
    res2_out_channels: int,
    num_groups: int,
    width_per_group: int,
    res5_dilation: int,
    shortcut: str,
    block_order: str,
    avg_down: bool,
    zero_init_residual: bool,
    res2net_scale: int,
    widen_factor: int,
    deform_on_per_stage: tuple[bool, ...],
) -> None:
    """Refuses combinations of valid values that define no network, saying why.

    ``n`` names the arguments (see :func:`resnet_spec`); a message names its subject in full
    (``n[...]``) and the other arguments it mentions by their short names (``n.short(...)``).
    """
    depth_name = n.short("depth")
    if cifar and res5_dilation != 1:
        raise ValueError(
            f"{n['res5_dilation']} = {res5_dilation} is not valid for the CIFAR depth "
            f"{depth}: CIFAR networks have no res5; keep it 1"
        )
    if widen_factor != 1 and not cifar:
        raise ValueError(
            f"{n['widen_factor']} = {widen_factor} only applies to CIFAR depths (6n+2, "
            f"6n+4), not {depth_name} {depth}; widen an ImageNet ResNet with "
            f"{n.short('width_per_group')} (wide_resnet50_2: 128)"
        )
    if table.block == "basic":
        if not cifar and res2_out_channels != 64:
            raise ValueError(
                f"{n['res2_out_channels']} = {res2_out_channels} is not valid for {depth_name} "
                f"{depth}, which uses basic blocks: set it to 64 (as detectron2 requires)"
            )
        if num_groups != 1 or width_per_group != 64:
            raise ValueError(
                f"{n['num_groups']} = {num_groups} and {n.short('width_per_group')} = "
                f"{width_per_group} are not valid for {depth_name} {depth}: basic blocks have no "
                f"grouped bottleneck; keep {n.short('num_groups')} 1 and "
                f"{n.short('width_per_group')} 64"
            )
        if res2net_scale != 1:
            raise ValueError(
                f"{n['res2net_scale']} = {res2net_scale} is not valid for {depth_name} {depth}: "
                "Res2Net splits a bottleneck's 3x3 conv, and this depth uses basic blocks; use "
                f"{depth_name} 50 or deeper, or {n.short('res2net_scale')} 1"
            )
        if any(deform_on_per_stage):
            raise ValueError(
                f"{n['deform_on_per_stage']} = {list(deform_on_per_stage)} is not valid "
                f"for {depth_name} {depth}: deformable convolution replaces a bottleneck's 3x3 "
                "conv (as in detectron2), and this depth uses basic blocks"
            )
    elif not cifar and res2_out_channels != 256:
        # detectron2 builds it, but every named bottleneck network (ResNet, ResNeXt, Wide ResNet,
        # Res2Net, SE, ResNet-D, v2) has 256 res2 channels: DEPTH 50 over an R-18 config's 64
        # would silently build a 13.9M-parameter network that is no ResNet-50.
        raise ValueError(
            f"{n['res2_out_channels']} = {res2_out_channels} is not valid for {depth_name} "
            f"{depth}, which uses bottleneck blocks: every named bottleneck network has 256 "
            f"(ResNet-50's res2 is 256 channels, 4 x 64); set it to 256, or {depth_name} 18 or "
            f"34 for 64"
        )
    if avg_down and shortcut in ("A", "none"):
        raise ValueError(
            f"{n['avg_down']} = True does nothing with {n.short('shortcut')} {shortcut!r}: it "
            "changes projection shortcuts (ResNet-D), and this network has none; use "
            f"{n.short('shortcut')} 'B' or 'C', or {n.short('avg_down')} False"
        )
    if zero_init_residual and shortcut == "none":
        raise ValueError(
            f"{n['zero_init_residual']} = True is not valid with {n.short('shortcut')} 'none': "
            "in a plain network the zeroed branch is the only path, so every block would output "
            "zeros (or a constant) and nothing would train; use "
            f"{n.short('zero_init_residual')} False"
        )
    if block_order == "preact" and shortcut == "A":
        raise ValueError(
            f"{n['shortcut']} = 'A' is not defined with {n.short('block_order')} 'preact': in a "
            "pre-activation network a stage's first block feeds its shortcut the pre-activated "
            "input, and zero-padding that tensor is not a shortcut either paper defines; use "
            f"{n.short('shortcut')} 'B' or 'C'"
        )
    if res2net_scale > 1:
        if block_order != "post":
            raise ValueError(
                f"{n['block_order']} = {block_order!r} is not valid with "
                f"{n.short('res2net_scale')} {res2net_scale}: the Res2Net block is defined for "
                "'post' only"
            )
        if width_per_group != 64:
            raise ValueError(
                f"{n['width_per_group']} = {width_per_group} does not apply to Res2Net "
                f"({n.short('res2net_scale')} {res2net_scale}), whose 3x3 width is "
                f"{n.short('res2net_width')} per split; keep {n.short('width_per_group')} 64"
            )
        if any(deform_on_per_stage):
            raise ValueError(
                f"{n['deform_on_per_stage']} = {list(deform_on_per_stage)} is not valid "
                f"with {n.short('res2net_scale')} {res2net_scale}: a Res2Net block has no single "
                "3x3 conv to make deformable"
            )
    if cifar and any(deform_on_per_stage):
        raise ValueError(
            f"{n['deform_on_per_stage']} = {list(deform_on_per_stage)} is not valid for "
            f"the CIFAR depth {depth}, whose basic blocks have no bottleneck 3x3 conv"
        )

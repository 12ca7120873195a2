"""The config edge of resnet_backbones: the keys it adds to detectron2's config, and the one
place that reads ``MODEL.RESNETS`` and ``MODEL.REXNET``.

* :func:`add_resnet_backbones_config` declares our keys, one comment each;
* :func:`resnet_spec_from_config` turns ``MODEL.RESNETS`` into a validated, fully resolved
  :class:`~resnet_backbones.modeling.ResNetSpec` (the norm too: SyncBN -> BN in a single
  process); :func:`resnet_family_arguments` and :func:`rexnet_arguments` are the keyword
  arguments of ``ResNetFamily`` and ``ReXNet``, which the registered builders pass on;
* :func:`clean_backbone_config` / :func:`build_clean_backbone`: the same network as a plain
  backbone with nothing frozen (classifiers, complexity counts, weight conversion).

The typed API (``resnet_spec``, ``ResNetFamily``, ``ReXNet``) names its Python arguments in its
errors; this module hands it the config keys instead (:data:`RESNETS_NAMES`,
:data:`REXNET_NAMES`), so the same check says ``MODEL.RESNETS.DEPTH = 77 is not valid`` here and
``depth = 77 is not valid`` to a Python caller.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Optional

from detectron2.config import CfgNode
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from detectron2.utils import comm

# The edge depends on the typed API, not the other way round: the registered builders in
# resnet_backbones.modeling call this module through `from .. import config`, at build time.
from .modeling.base import FEATURE_NAMES
from .modeling.spec import ResNetSpec, resnet_spec
from .solver import OPTIMIZERS
from .utils import ArgumentNames, check_choice, config_get

__all__ = [
    "BASE_CONFIGS",
    "ConfigError",
    "FPN_BACKBONES",
    "MissingConfigKeysError",
    "OPTIMIZERS",
    "PLAIN_BACKBONES",
    "RESNETS_ARGUMENTS",
    "RESNETS_NAMES",
    "REXNET_NAMES",
    "add_resnet_backbones_config",
    "backbone_section",
    "build_clean_backbone",
    "check_config_extended",
    "clean_backbone_config",
    "detector_form",
    "resnet_family_arguments",
    "resnet_spec_from_config",
    "resolve_norm",
    "rexnet_arguments",
]

logger = logging.getLogger(__name__)

_RESNETS_KEYS = {
    # Shortcut option of the ResNet paper (Sec. 3.3): "A" identity with zero-padded extra
    # channels, "B" projection only where the shape changes, "C" projection on every block.
    "SHORTCUT": "B",
    # Stem: "basic" 7x7/2 conv + max-pool; "deep" three 3x3 convs + max-pool (ResNet-C).
    "STEM": "basic",
    # Projection shortcuts average-pool before a stride-1 1x1 conv (ResNet-D).
    "AVG_DOWN": False,
    # Start the last norm of every residual branch at zero scale (Goyal et al., 2017).
    "ZERO_INIT_RESIDUAL": False,
    # Order of norm, ReLU and addition in a block (identity-mapping paper, Fig. 4): "post" (a,
    # the original v1 block), "bn_after_add" (b), "relu_before_add" (c), "relu_preact" (d) or
    # "preact" (e, full pre-activation: ResNet v2, ending with a final BN+ReLU).
    "BLOCK_ORDER": "post",
    # Res2Net (Gao et al., 2019): RES2NET_SCALE s > 1 splits a bottleneck's 3x3 conv into s
    # groups of RES2NET_WIDTH w channels at res2 (doubling per stage); 1 means a plain bottleneck.
    "RES2NET_SCALE": 1,
    "RES2NET_WIDTH": 26,
    # Squeeze-and-excitation on every block with reduction ratio r (the SE paper's r = 16);
    # 0 means off.
    "SE_RATIO": 0,
    # Dropout probability between the convs of a block (Wide ResNet uses 0.3); 0 means off.
    "DROPOUT": 0.0,
    # Width multiplier of the CIFAR networks (STEM "cifar"): stages 16k/32k/64k (WRN-d-k).
    "WIDEN_FACTOR": 1,
}

# ReXNet (Han et al., 2021), built by build_rexnet_backbone / build_rexnet_fpn_backbone.
_REXNET_KEYS = {
    # Channel width multiplier: 1.0 is rexnet_100, 1.5 rexnet_150 ...
    "WIDTH_MULT": 1.0,
    # Which features to return: "stem" and "res2".."res5" (strides 2, 4, 8, 16, 32).
    "OUT_FEATURES": ["res2", "res3", "res4", "res5"],
    # Norm after every conv, a name understood by detectron2.layers.get_norm.
    "NORM": "BN",
}

# Classification (pretraining): the recipes' transforms and test protocols, read and checked by
# resnet_backbones.data.cls_transforms.cls_options_from_config. The network's input is what a
# detectron2 model feeds its backbone: channels in INPUT.FORMAT order, (x - MODEL.PIXEL_MEAN) /
# MODEL.PIXEL_STD, so that pretrained weights meet the same pixels in a detector.
_CLS_KEYS = {
    # Training augmentation: "resnet_imagenet" (ResNet paper, Sec. 3.4: scale augmentation,
    # random crop, flip, PCA lighting), "torchvision_v1" (RandomResizedCrop + flip),
    # "resnet_cifar" (Sec. 4.2: 4-pixel zero padding, random crop, flip) or "none".
    "TRAIN_AUG": "resnet_imagenet",
    # Test protocol: "center" (shorter side TEST_RESIZE, centre crop CROP), "10crop" (corners,
    # centre and their flips), "multiscale" (the whole image at each of TEST_SCALES, and flipped
    # with TEST_FLIP: the paper's fully-convolutional test) or "none" (the whole image: CIFAR).
    "TEST": "center",
    # "resnet_imagenet": the shorter side is resized to a random integer in [MIN, MAX].
    "SCALE_RANGE": (256, 480),
    # Side of the square training crop and of the centre / 10-crop test crops (32 for CIFAR).
    "CROP": 224,
    # "resnet_cifar": pixels of zeros added on each side before the random crop.
    "PAD": 4,
    # "resnet_imagenet": standard deviation of AlexNet's PCA lighting noise alpha (0 = off).
    "LIGHTING": 0.1,
    # "center" and "10crop": the shorter side the test image is resized to before cropping.
    "TEST_RESIZE": 256,
    # "multiscale": the shorter sides of the test image; TEST_FLIP adds each one's flip.
    "TEST_SCALES": (224, 256, 384, 480, 640),
    "TEST_FLIP": True,
    # Label smoothing of the cross-entropy loss (0 = off, as in the paper).
    "LABEL_SMOOTHING": 0.0,
    # Exponential moving average of the weights (and BN statistics) kept beside the model,
    # evaluated too and restored on --resume: its decay per iteration (0 = off, as in the paper;
    # 0.9999 is timm's usual value for long runs).
    "EMA_DECAY": 0.0,
    # Train and test in channels_last memory format (faster convolutions on many CPUs and GPUs).
    "CHANNELS_LAST": False,
    # Test images per batch and process ("multiscale" tests one image at a time).
    "TEST_BATCH_SIZE": 32,
}


def add_resnet_backbones_config(cfg: CfgNode) -> CfgNode:
    """Adds the keys of resnet_backbones to ``cfg`` in place and returns it.

    Keys already present keep their values, so calling it twice changes nothing. Every
    detectron2 ``MODEL.RESNETS`` key keeps its meaning; with the added keys at their defaults
    the network is exactly detectron2's ResNet.
    """
    for key, default in _RESNETS_KEYS.items():
        if key not in cfg.MODEL.RESNETS:
            setattr(cfg.MODEL.RESNETS, key, default)
    if "REXNET" not in cfg.MODEL:
        cfg.MODEL.REXNET = CfgNode()
    for key, default in _REXNET_KEYS.items():
        if key not in cfg.MODEL.REXNET:
            setattr(cfg.MODEL.REXNET, key, default)
    if "OPTIMIZER" not in cfg.SOLVER:
        # "SGD" (detectron2's, with SOLVER.MOMENTUM) or "AdamW" (OPTIMIZERS); read by
        # resnet_backbones.solver.build_optimizer, which detectron2's DefaultTrainer calls after
        # `import resnet_backbones`. The CPU quickstart trains from scratch, where AdamW
        # converges faster.
        cfg.SOLVER.OPTIMIZER = "SGD"
    # SOLVER.LR_SCHEDULER_NAME "WarmupPlateauLR" (resnet_backbones.solver): the LR is multiplied
    # by SOLVER.GAMMA when the validation error (every TEST.EVAL_PERIOD) has not improved by more
    # than PLATEAU_THRESHOLD points (percent) for PLATEAU_PATIENCE evaluations in a row.
    if "PLATEAU_PATIENCE" not in cfg.SOLVER:
        cfg.SOLVER.PLATEAU_PATIENCE = 2
    if "PLATEAU_THRESHOLD" not in cfg.SOLVER:
        cfg.SOLVER.PLATEAU_THRESHOLD = 0.1
    if "COCO_FORMAT" not in cfg.DATASETS:
        # Your own COCO-format datasets, [[NAME, JSON_FILE, IMAGE_ROOT], ...], registered under
        # NAME for DATASETS.TRAIN/TEST by the Trainer and tools/train_net.py; relative paths are
        # relative to the YAML file that sets the key (resnet_backbones/data/coco_format.py).
        cfg.DATASETS.COCO_FORMAT = []
    # Your own Pascal VOC-format folders (issue 14), [[NAME, DIR, SPLIT, CLASS, ...], ...]: DIR
    # holds Annotations/, JPEGImages/ and ImageSets/Main/SPLIT.txt (detectron2's VOC layout);
    # without CLASS, VOC's 20 classes. Registered under NAME, evaluated by the VOC evaluator
    # (resnet_backbones/voc_eval.py); relative paths are relative to the YAML file that sets the
    # key (resnet_backbones/data/voc_format.py). Also tools/train_net.py --voc-dataset.
    if "VOC_FORMAT" not in cfg.DATASETS:
        cfg.DATASETS.VOC_FORMAT = []
    # Checks of every dataset of a run before its first iteration (resnet_backbones/data/
    # validate.py): "headers" (image headers, sizes and ends of files, the JSON), "full" (every
    # image decoded too) or "off" (detectron2's behaviour: nothing checked).
    if "VALIDATE" not in cfg.DATASETS:
        cfg.DATASETS.VALIDATE = "headers"
    # A training image that fails its checks: "error" stops the run, naming it; "skip" leaves it
    # out, counted and logged at the start and the end. Test sets never skip.
    if "BAD_IMAGES" not in cfg.DATASETS:
        cfg.DATASETS.BAD_IMAGES = "error"
    # On which pixels the boxes of an image with an EXIF orientation were drawn: "stored" (the
    # boxes are rotated with the image), "displayed" (upright already), or "auto": the JSON's
    # width and height tell, an error where both sizes are the same (square, 180°, mirrored).
    if "EXIF_BOXES" not in cfg.DATASETS:
        cfg.DATASETS.EXIF_BOXES = "auto"
    # COCO evaluation (resnet_backbones/coco_eval.py, the Trainer's evaluator): "auto"
    # (faster-coco-eval where it is installed, else pycocotools), "pycocotools" (the official
    # implementation) or "faster_coco_eval" (an error where it is not installed). The AP table
    # is the same to 1e-4; faster-coco-eval computes it several times faster.
    if "COCO_EVAL_IMPL" not in cfg.TEST:
        cfg.TEST.COCO_EVAL_IMPL = "auto"
    # Activation checkpointing (issue 12): the stages, among "stem" and "res2".."res5", whose
    # blocks keep no activations for the backward pass in training: the blocks run in groups of
    # about sqrt(n), each group saves only its input and runs again during the backward
    # (resnet_backbones.modeling.base.checkpoint_blocks).
    # Less memory for about one more forward of those stages; gradients and BN statistics are
    # unchanged. [] is off; frozen stages (FREEZE_AT) keep no activations anyway.
    for section in (cfg.MODEL.RESNETS, cfg.MODEL.REXNET):
        if "ACTIVATION_CHECKPOINTING" not in section:
            section.ACTIVATION_CHECKPOINTING = []
    # Train and test a detector in channels_last memory format (issue 12; faster convolutions on
    # many CPUs and GPUs): the backbone's and FPN's weights are stored so and the backbone
    # converts its input images, so every feature and head after it runs channels_last too.
    # The numbers equal the default format's within float rounding. A classifier's backbone
    # follows it too; CLS.CHANNELS_LAST converts the whole classifier and its input images.
    if "CHANNELS_LAST" not in cfg.MODEL:
        cfg.MODEL.CHANNELS_LAST = False
    # --eval-only runs the model through resnet_backbones.optimize_for_inference (norms folded
    # into convs, channels_last on the CPU): the same detections, faster. False evaluates the
    # model as built. A model that trains is never optimised.
    if "OPTIMIZE_FOR_INFERENCE" not in cfg.TEST:
        cfg.TEST.OPTIMIZE_FOR_INFERENCE = True
    if "CLS" not in cfg:
        cfg.CLS = CfgNode()
    for key, default in _CLS_KEYS.items():
        if key not in cfg.CLS:
            setattr(cfg.CLS, key, default)
    # Fast CPU training step (issue 12): the Trainer swaps every RoIAlign of the model (box, mask
    # and keypoint poolers) for one whose backward on the CPU is a sparse matrix product instead
    # of torchvision's serial kernel (resnet_backbones/modeling/roi_align.py). Same values and
    # gradients; CUDA and inference keep torchvision's op. False keeps detectron2's module.
    if "FAST_CPU_ROI_ALIGN" not in cfg.MODEL.ROI_HEADS:
        cfg.MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN = True
    return cfg


class ConfigError(ValueError):
    """A config file or ``KEY VALUE`` override that detectron2's config cannot take: invalid
    YAML, a file that is not a mapping of keys, a missing or circular ``_BASE_``, an unknown key
    or a value of the wrong type (``resnet_backbones.engine.load_config``), or a value our code
    does not accept. The message is one line naming the file (or the override), the key and what
    to write instead."""


class MissingConfigKeysError(AttributeError):
    """A config that lacks our keys: :func:`add_resnet_backbones_config` was not called on it.
    An ``AttributeError``, as a missing key of a detectron2 config is."""


def check_config_extended(cfg: CfgNode) -> None:
    """Fails, naming :func:`add_resnet_backbones_config`, where ``cfg`` lacks the keys it adds
    (a plain ``get_cfg()`` would otherwise fail with a bare ``AttributeError: STEM``).

    Raises:
        MissingConfigKeysError: naming the missing keys and what to call.
    """
    missing = [f"MODEL.RESNETS.{k}" for k in _RESNETS_KEYS if k not in cfg.MODEL.RESNETS]
    rexnet = cfg.MODEL.get("REXNET", {})
    missing += [f"MODEL.REXNET.{k}" for k in _REXNET_KEYS if k not in rexnet]
    if missing:
        raise MissingConfigKeysError(
            f"the config lacks resnet_backbones' keys ({', '.join(missing)}): call "
            "resnet_backbones.add_resnet_backbones_config(cfg) on it right after get_cfg(), "
            "before merging our YAML files and building the model (or take the config from "
            "resnet_backbones.model_zoo.get_config(name))"
        )


# --------------------------------------------------------------------------------------------
# Reading the keys: config -> the typed arguments of the backbones
# --------------------------------------------------------------------------------------------
_FREEZE_AT_KEY = "MODEL.BACKBONE.FREEZE_AT"
# The arguments of resnet_spec; each is read from the MODEL.RESNETS key of its name, upper-case.
RESNETS_ARGUMENTS: tuple[str, ...] = (
    "depth",
    "stem",
    "stem_out_channels",
    "res2_out_channels",
    "num_groups",
    "width_per_group",
    "res5_dilation",
    "norm",
    "stride_in_1x1",
    "shortcut",
    "block_order",
    "avg_down",
    "zero_init_residual",
    "res2net_scale",
    "res2net_width",
    "se_ratio",
    "dropout",
    "widen_factor",
    "deform_on_per_stage",
    "deform_modulated",
    "deform_num_groups",
)
# The keys errors name for the arguments of resnet_spec and ResNetFamily.
RESNETS_NAMES = ArgumentNames(
    {
        **{
            arg: f"MODEL.RESNETS.{arg.upper()}"
            for arg in RESNETS_ARGUMENTS + ("out_features", "activation_checkpointing")
        },
        "freeze_at": _FREEZE_AT_KEY,
    }
)
# The keys errors name for the arguments of ReXNet (depth_mult and channel_divisor have none:
# configs build timm's rexnet_* networks, whose depth_mult is 1 and channel_divisor 1).
REXNET_NAMES = ArgumentNames(
    {
        **{
            arg: f"MODEL.REXNET.{arg.upper()}"
            for arg in ("width_mult", "norm", "out_features", "activation_checkpointing")
        },
        "freeze_at": _FREEZE_AT_KEY,
    }
)


def resolve_norm(norm: str, key: str) -> str:
    """The norm ``norm`` stands for in this run: SyncBN needs a distributed run, so in a single
    process it falls back to BN, with a warning naming the config ``key``."""
    if norm == "SyncBN" and comm.get_world_size() == 1:
        logger.warning(
            "%s = 'SyncBN' needs a distributed run, but this one has a single "
            "process; using 'BN' (per-process batch statistics) instead.",
            key,
        )
        return "BN"
    return norm


def _resnet_spec(cfg: CfgNode, *, resolve: bool) -> ResNetSpec:
    check_config_extended(cfg)
    arguments = {arg: config_get(cfg, RESNETS_NAMES[arg]) for arg in RESNETS_ARGUMENTS}
    if resolve:
        arguments["norm"] = resolve_norm(arguments["norm"], RESNETS_NAMES["norm"])
    return resnet_spec(**arguments, names=RESNETS_NAMES)


def resnet_spec_from_config(cfg: CfgNode) -> ResNetSpec:
    """The network of ``cfg.MODEL.RESNETS`` (extended by :func:`add_resnet_backbones_config`),
    with the norm resolved for this run (:func:`resolve_norm`).

    Raises:
        ValueError: naming the config key, the bad value and the valid values, or the
            combination that is not defined and why.
    """
    return _resnet_spec(cfg, resolve=True)


def resnet_family_arguments(cfg: CfgNode) -> dict[str, Any]:
    """The keyword arguments of ``ResNetFamily`` for ``cfg`` (all but ``in_channels``, which
    the input shape gives): the spec, ``OUT_FEATURES``, ``FREEZE_AT``,
    ``ACTIVATION_CHECKPOINTING``, ``MODEL.CHANNELS_LAST`` and the key names."""
    return {
        "spec": resnet_spec_from_config(cfg),
        "out_features": cfg.MODEL.RESNETS.OUT_FEATURES,
        "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        "activation_checkpointing": cfg.MODEL.RESNETS.ACTIVATION_CHECKPOINTING,
        "channels_last": cfg.MODEL.CHANNELS_LAST,
        "names": RESNETS_NAMES,
    }


def rexnet_arguments(cfg: CfgNode) -> dict[str, Any]:
    """The keyword arguments of ``ReXNet`` for ``cfg`` (all but ``in_channels``): ``MODEL.REXNET``
    with the norm resolved for this run, ``FREEZE_AT``, ``MODEL.CHANNELS_LAST`` and the key
    names."""
    check_config_extended(cfg)
    r = cfg.MODEL.REXNET
    return {
        "width_mult": r.WIDTH_MULT,
        "out_features": r.OUT_FEATURES,
        "freeze_at": cfg.MODEL.BACKBONE.FREEZE_AT,
        "activation_checkpointing": r.ACTIVATION_CHECKPOINTING,
        "channels_last": cfg.MODEL.CHANNELS_LAST,
        "norm": resolve_norm(r.NORM, REXNET_NAMES["norm"]),
        "names": REXNET_NAMES,
    }


# --------------------------------------------------------------------------------------------
# The builders, and a clean backbone of a config
# --------------------------------------------------------------------------------------------
# A plain backbone builder -> the builder of the same network under an FPN.
FPN_BACKBONES: dict[str, str] = {
    "build_resnet_family_backbone": "build_resnet_family_fpn_backbone",
    "build_rexnet_backbone": "build_rexnet_fpn_backbone",
}
# The RoI heads of a C4 detector: detectron2's and ours (modeling/roi_heads.py).
_C4_HEADS = ("Res5ROIHeads", "Res5FamilyROIHeads")

# The base config of each of detectron2's three Faster R-CNN forms, under configs/ (found by
# resnet_backbones.model_zoo.base_config_file).
BASE_CONFIGS: dict[str, str] = {
    "C4": "Base-RCNN-C4.yaml",
    "DC5": "Base-RCNN-DilatedC5.yaml",
    "FPN": "Base-RCNN-FPN.yaml",
}


def detector_form(cfg: CfgNode) -> Optional[str]:
    """The Faster R-CNN form ``cfg`` builds: "FPN" for an FPN backbone, "C4" for a res5 RoI head,
    "DC5" for a dilated res5 read by a box head; None for anything else (a RetinaNet ...)."""
    if cfg.MODEL.BACKBONE.NAME in FPN_BACKBONES.values():
        return "FPN"
    if cfg.MODEL.ROI_HEADS.NAME in _C4_HEADS:
        return "C4"
    if cfg.MODEL.RESNETS.RES5_DILATION == 2 and list(cfg.MODEL.ROI_HEADS.IN_FEATURES) == ["res5"]:
        return "DC5"
    return None


# Every registered backbone builder of the package -> the plain builder of its network.
PLAIN_BACKBONES: dict[str, str] = {
    **{plain: plain for plain in FPN_BACKBONES},
    **{fpn: plain for plain, fpn in FPN_BACKBONES.items()},
    "build_resnet_family_retinanet_fpn_backbone": "build_resnet_family_backbone",
}


def backbone_section(cfg: CfgNode) -> str:
    """The config section of the network ``cfg`` builds: "MODEL.REXNET" for a ReXNet (plain or
    with an FPN), "MODEL.RESNETS" otherwise (its ``NORM``, ``OUT_FEATURES`` ...)."""
    plain = PLAIN_BACKBONES.get(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.BACKBONE.NAME)
    return "MODEL.REXNET" if plain == "build_rexnet_backbone" else "MODEL.RESNETS"


def clean_backbone_config(
    cfg: CfgNode,
    *,
    features: Literal["all", "last"] = "all",
    trainable_norms: bool = False,
) -> CfgNode:
    """A copy of ``cfg`` that builds the same network as a plain backbone with nothing frozen.

    Args:
        cfg: a config whose ``MODEL.BACKBONE.NAME`` is one of :data:`PLAIN_BACKBONES`.
        features: "all": every stage after the stem (res2..res5; res2..res4 for a CIFAR
            network), as an FPN reads them; "last": the last stage only, as a classifier pools.
        trainable_norms: FrozenBN becomes BN, whose affine weights are parameters (FrozenBN
            keeps the same ones as buffers).

    Returns:
        the copy, with the plain builder of an FPN builder and ``FREEZE_AT`` 0.

    Raises:
        ValueError: ``features`` or ``MODEL.BACKBONE.NAME`` is not valid, or the network is not.
    """
    check_choice("features", features, ("all", "last"))
    check_choice("MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME, PLAIN_BACKBONES)
    check_config_extended(cfg)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.BACKBONE.NAME = PLAIN_BACKBONES[cfg.MODEL.BACKBONE.NAME]
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    if backbone_section(cfg) == "MODEL.REXNET":
        section, stages = cfg.MODEL.REXNET, FEATURE_NAMES[1:]
    else:
        section, stages = cfg.MODEL.RESNETS, _resnet_spec(cfg, resolve=False).feature_names[1:]
    section.OUT_FEATURES = list(stages) if features == "all" else [stages[-1]]
    if trainable_norms and section.NORM == "FrozenBN":
        section.NORM = "BN"
    return cfg


def build_clean_backbone(
    cfg: CfgNode,
    *,
    features: Literal["all", "last"] = "all",
    trainable_norms: bool = False,
) -> Backbone:
    """The backbone of :func:`clean_backbone_config` (same arguments), with fresh weights, built
    through detectron2's registry for images of ``len(cfg.MODEL.PIXEL_MEAN)`` channels."""
    cfg = clean_backbone_config(cfg, features=features, trainable_norms=trainable_norms)
    input_shape = ShapeSpec(channels=len(cfg.MODEL.PIXEL_MEAN))
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, input_shape)

"""Our configs by name, as ``detectron2.model_zoo`` gives detectron2's.

* :func:`get_config_file`: the path of a config, by its name relative to ``configs/``
  (``"COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"``);
* :func:`get_config`: that config merged onto detectron2's defaults with our keys;
* :func:`get_checkpoint_url`: the https URL of the weights the config starts from.

The configs are found where the package is: an installed wheel carries them as
``resnet_backbones/configs/`` (``setup.py`` copies them there when it builds the package); a
checkout, or an editable install of one, reads its top-level ``configs/``, the one source of
both. ``_BASE_`` paths in the configs are relative to the file, so they resolve from either.

Unlike detectron2's model zoo, ours publishes no COCO-trained detectors: a config's
``MODEL.WEIGHTS`` is the ImageNet initialisation of its backbone, and ``trained=True`` is
refused (see :func:`get_config`).
"""

from __future__ import annotations

import difflib
import os
from functools import cache

from detectron2.config import CfgNode, get_cfg

from .config import BASE_CONFIGS, add_resnet_backbones_config
from .weights.resolve import DETECTRON2_PREFIX, ZOO_PREFIX, fetch_url

__all__ = [
    "DETECTRON2_NETWORKS",
    "base_config_file",
    "configs_dir",
    "config_names",
    "get_checkpoint_url",
    "get_config",
    "get_config_file",
    "resolve_config_file",
]

# A config of every tree; its presence tells the configs folder from any other "configs".
_MARKER = "Base-RCNN-FPN.yaml"

# Our configs that build detectron2's own network (default keys; the parity tests build them
# with detectron2's backbone and head and compare): detectron2's COCO-trained checkpoint of the
# model-zoo config of the same name loads into them.
DETECTRON2_NETWORKS: tuple[str, ...] = tuple(
    f"COCO-Detection/faster_rcnn_R_{depth}_{form}_3x.yaml"
    for depth in (50, 101)
    for form in ("C4", "DC5", "FPN")
)


@cache
def configs_dir() -> str:
    """The folder that holds our configs: ``resnet_backbones/configs`` where the package was
    installed from a wheel, else the checkout's ``configs/`` beside the package.

    Raises:
        FileNotFoundError: naming both places, if neither holds the configs.
    """
    package = os.path.dirname(os.path.abspath(__file__))
    candidates = (
        os.path.join(package, "configs"),
        os.path.join(os.path.dirname(package), "configs"),
    )
    for folder in candidates:
        if os.path.isfile(os.path.join(folder, _MARKER)):
            return folder
    raise FileNotFoundError(
        f"resnet_backbones' configs are in neither {candidates[0]!r} (an installed package) nor "
        f"{candidates[1]!r} (a checkout); reinstall the package with `pip install .` from a "
        "checkout of resnet_backbones"
    )


def config_names() -> list[str]:
    """Every config's name, relative to the configs folder, with "/" separators."""
    root = configs_dir()
    return sorted(
        os.path.relpath(os.path.join(folder, f), root).replace(os.sep, "/")
        for folder, _, files in os.walk(root)
        for f in files
        if f.endswith(".yaml")
    )


def get_config_file(config_path: str) -> str:
    """The path of one of our configs.

    Args:
        config_path: its name relative to ``configs/``, e.g.
            ``"COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml"``.

    Raises:
        FileNotFoundError: naming ``config_path``, the closest names and every valid one.
    """
    names = config_names()
    name = config_path.replace(os.sep, "/")
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        raise FileNotFoundError(
            f"config {config_path!r} is not one of resnet_backbones' configs (in "
            f"{configs_dir()}){hint} Valid names: {', '.join(names)}"
        )
    return os.path.join(configs_dir(), *name.split("/"))


def resolve_config_file(path: str) -> str:
    """``path`` if it is a file, else the shipped config of that name (:func:`get_config_file`;
    a leading ``configs/`` ignored, so a checkout's paths work outside it too). What the train
    tool's ``--config`` takes.

    Raises:
        FileNotFoundError: naming ``path``, neither on disk nor one of our configs.
    """
    if os.path.isfile(path):
        return path
    name = path.replace(os.sep, "/")
    name = name[len("configs/") :] if name.startswith("configs/") else name
    if name in config_names():
        return get_config_file(name)
    raise FileNotFoundError(
        f"config file not found: {path!r}, neither on disk nor one of resnet_backbones' configs "
        f"by name (they are in {configs_dir()}: {', '.join(config_names())})"
    )


def base_config_file(form: str) -> str:
    """The absolute path of the base config of detector ``form`` ("C4", "DC5" or "FPN").

    Raises:
        ValueError: an unknown form, naming the valid ones.
    """
    from .utils import check_choice

    check_choice("form", form, BASE_CONFIGS, quote=False)
    return os.path.abspath(get_config_file(BASE_CONFIGS[form]))


def get_config(config_path: str, trained: bool = False) -> CfgNode:
    """detectron2's default config with our keys (:func:`add_resnet_backbones_config`), merged
    with one of our configs; its ``MODEL.WEIGHTS`` is the ImageNet initialisation of the
    backbone (:func:`get_checkpoint_url`).

    Args:
        config_path: see :func:`get_config_file`.
        trained: as in ``detectron2.model_zoo.get_config``, ask for COCO-trained weights. We
            publish none, so True is refused, naming the detectron2 checkpoint that loads into
            the config where there is one (:data:`DETECTRON2_NETWORKS`).

    Raises:
        FileNotFoundError: no such config.
        ValueError: ``trained=True``.
    """
    cfg = add_resnet_backbones_config(get_cfg())
    cfg.merge_from_file(get_config_file(config_path))
    if trained:
        name = config_path.replace(os.sep, "/")
        if name in DETECTRON2_NETWORKS:
            advice = (
                f"it builds detectron2's own network, so detectron2's checkpoint loads into it: "
                f"set MODEL.WEIGHTS to detectron2.model_zoo.get_checkpoint_url({name!r})"
            )
        else:
            advice = "train it, then load its model_final.pth"
        raise ValueError(
            f"get_config({config_path!r}, trained=True): resnet_backbones publishes no "
            f"COCO-trained detectors; with trained=False, MODEL.WEIGHTS is its backbone's "
            f"ImageNet initialisation ({cfg.MODEL.WEIGHTS or 'none: random'}). For a trained "
            f"model, {advice}."
        )
    return cfg


def get_checkpoint_url(config_path: str) -> str:
    """The https URL of the weights ``config_path`` starts from: its ``MODEL.WEIGHTS`` (through
    ``_BASE_``), with a ``resnet_backbones://NAME`` taken to the catalog entry's URL (or its
    file under ``$RESNET_BACKBONES_ZOO_BASE_URL``) and ``detectron2://PATH`` to detectron2's
    file server. These are ImageNet weights of the backbone, not a trained detector.

    Raises:
        FileNotFoundError: no such config.
        ValueError: the config trains from random initialisation (no ``MODEL.WEIGHTS``), or
            names a local file.
    """
    weights = get_config(config_path).MODEL.WEIGHTS
    if not weights:
        raise ValueError(
            f"config {config_path!r} trains from random initialisation (MODEL.WEIGHTS is empty); "
            "it starts from no checkpoint"
        )
    url = fetch_url(weights)
    if url is None:
        raise ValueError(
            f"config {config_path!r} starts from {weights!r}, a local path rather than a URL "
            f"(valid: {ZOO_PREFIX}NAME, {DETECTRON2_PREFIX}PATH, https://...)"
        )
    return url

"""Your own data: COCO-format datasets registered by name, from the command line or the config.

A dataset is a triple ``[NAME, JSON_FILE, IMAGE_ROOT]``: a COCO instances JSON (``images``,
``annotations``, ``categories``) and the folder its ``file_name`` entries are relative to. Both
ways of naming one end here:

* ``tools/train_net.py --dataset NAME JSON_FILE IMAGE_ROOT`` (repeatable) appends the triple,
  with paths relative to the working directory, to ``DATASETS.COCO_FORMAT``;
* ``DATASETS.COCO_FORMAT: [[NAME, JSON_FILE, IMAGE_ROOT], ...]`` in a YAML config, where
  :func:`resolve_config_paths` makes relative paths relative to the folder of the YAML file
  that sets the key (``load_config`` calls it for every file it merges).

:func:`register_coco_format` then registers each triple with detectron2's
``register_coco_instances`` (the Trainer and the tool call it through
:func:`resnet_backbones.data.register_config_datasets`), so that ``NAME`` can be used in
``DATASETS.TRAIN`` and ``DATASETS.TEST``. It fails at once, naming the path, where a file or
folder is missing, and where a name is registered already with other files; a JSON file that is
not valid COCO fails, in one line naming the file, when the dataset is first loaded.
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable, Sequence

__all__ = [
    "COCO_FORMAT_KEY",
    "DatasetFormatError",
    "DatasetNotFoundError",
    "check_coco_format",
    "load_coco_format",
    "read_coco_json",
    "register_coco_format",
    "resolve_config_paths",
]

COCO_FORMAT_KEY = "DATASETS.COCO_FORMAT"
# How both ways of registering a dataset are spelled in messages.
HOW_TO_REGISTER = (
    "register it in COCO format with `--dataset NAME JSON_FILE IMAGE_ROOT` "
    "(resnet-backbones-train or tools/train_net.py, repeatable) or the config key "
    "DATASETS.COCO_FORMAT: [[NAME, JSON_FILE, IMAGE_ROOT], ...]; a Pascal VOC-format folder "
    "with `--voc-dataset NAME DIR SPLIT` (and `--voc-classes C1,C2,...` where they are not "
    "VOC's 20) or DATASETS.VOC_FORMAT: [[NAME, DIR, SPLIT, CLASS, ...], ...]"
)
_EXAMPLE = "['my_train', 'annotations/train.json', 'images/']"


class DatasetNotFoundError(FileNotFoundError):
    """A dataset named in the config is not registered, or its files are not on disk."""


class DatasetFormatError(ValueError):
    """A dataset triple is malformed, its name is taken by other files, or its JSON file is not
    a readable COCO instances file."""


def check_coco_format(entries: Any, key: str = COCO_FORMAT_KEY) -> list[tuple[str, str, str]]:
    """The triples of ``entries`` (a list of ``[NAME, JSON_FILE, IMAGE_ROOT]``) as tuples.

    Raises:
        DatasetFormatError: naming ``key``, the entry at fault and the form it must have.
    """
    if not isinstance(entries, (list, tuple)):
        raise DatasetFormatError(
            f"{key} = {entries!r} is not valid; it must be a list of [NAME, JSON_FILE, "
            f"IMAGE_ROOT] triples, e.g. [{_EXAMPLE}]"
        )
    triples = []
    for index, entry in enumerate(entries):
        if (
            not isinstance(entry, (list, tuple))
            or len(entry) != 3
            or not all(isinstance(part, str) and part for part in entry)
        ):
            raise DatasetFormatError(
                f"{key}[{index}] = {entry!r} is not valid; each entry must be three non-empty "
                f"strings [NAME, JSON_FILE, IMAGE_ROOT], e.g. {_EXAMPLE}"
            )
        triples.append(tuple(entry))
    return triples


def resolve_config_paths(
    entries: Any, base_dir: str, key: str = COCO_FORMAT_KEY
) -> list[list[str]]:
    """``entries`` (checked by :func:`check_coco_format`, whose errors name ``key``) with
    relative paths joined to ``base_dir`` and made absolute (``~`` expanded)."""

    def absolute(path: str) -> str:
        return os.path.abspath(os.path.join(base_dir, os.path.expanduser(path)))

    return [
        [name, absolute(json_file), absolute(image_root)]
        for name, json_file, image_root in check_coco_format(entries, key)
    ]


def _format_error(name: str, json_file: str, problem: str) -> DatasetFormatError:
    return DatasetFormatError(
        f"dataset {name!r}: {json_file} {problem}; it must be a COCO instances JSON "
        "with 'images', 'annotations' and 'categories'"
    )


def read_coco_json(name: str, json_file: str) -> dict:
    """The content of a COCO instances JSON file: an object with the lists ``images`` and
    ``categories``.

    Raises:
        DatasetFormatError: naming the dataset and the file, and for invalid JSON the line and
            column (json's own message).
    """

    def fail(problem: str) -> DatasetFormatError:
        return _format_error(name, json_file, problem)

    try:
        with open(json_file, "rb") as f:
            content = json.load(f)
    except json.JSONDecodeError as e:
        raise fail(f"is not valid JSON ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise fail(f"cannot be read ({e})") from None
    if not isinstance(content, dict):
        raise fail(f"holds a JSON {type(content).__name__}, not an object")
    missing = [k for k in ("images", "categories") if not isinstance(content.get(k), list)]
    if missing:
        raise fail(f"has no list {' or '.join(map(repr, missing))}")
    return content


def load_coco_format(name: str, json_file: str, image_root: str) -> list[dict]:
    """detectron2's ``load_coco_json``, with a one-line error naming the file where it is not a
    readable COCO instances JSON (:func:`read_coco_json` first)."""
    from detectron2.data.datasets import load_coco_json

    read_coco_json(name, json_file)
    try:
        return load_coco_json(json_file, image_root, name)
    except (KeyError, TypeError, ValueError, AssertionError, IndexError) as e:
        # An entry without a field pycocotools or detectron2 reads ("file_name", "bbox" ...).
        raise _format_error(name, json_file, f"is malformed ({type(e).__name__}: {e})") from None


def _registered_files(name: str) -> tuple[Any, Any]:
    from detectron2.data import MetadataCatalog

    meta = MetadataCatalog.get(name)
    return getattr(meta, "json_file", None), getattr(meta, "image_root", None)


def register_coco_format(entries: Iterable[Sequence[str]], key: str = COCO_FORMAT_KEY) -> None:
    """Registers each ``[NAME, JSON_FILE, IMAGE_ROOT]`` of ``entries`` (relative paths: to the
    working directory) as a COCO instances dataset; a name already registered with the same
    files is left as it is.

    Args:
        entries: the triples, e.g. ``cfg.DATASETS.COCO_FORMAT``.
        key: how messages name where the triples come from.

    Raises:
        DatasetFormatError: a malformed triple, or a name registered already with other files.
        DatasetNotFoundError: the JSON file or the image folder does not exist.
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    for name, json_file, image_root in check_coco_format(entries, key):
        json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
        if name in DatasetCatalog.list():
            registered = _registered_files(name)
            if registered == (json_file, image_root):
                continue
            raise DatasetFormatError(
                f"dataset {name!r} is registered already, with json_file {registered[0]!r} and "
                f"image_root {registered[1]!r}; {key} (or --dataset) gives {json_file!r} and "
                f"{image_root!r}. Choose another name for this dataset"
            )
        if not os.path.isfile(json_file):
            raise DatasetNotFoundError(
                f"dataset {name!r}: the JSON file {json_file!r} does not exist (given by "
                f"{key} or --dataset)"
            )
        if not os.path.isdir(image_root):
            raise DatasetNotFoundError(
                f"dataset {name!r}: the image folder {image_root!r} does not exist (given by "
                f"{key} or --dataset)"
            )
        # detectron2's register_coco_instances, with the loader that names a bad JSON file.
        DatasetCatalog.register(
            name, lambda n=name, j=json_file, r=image_root: load_coco_format(n, j, r)
        )
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="coco"
        )

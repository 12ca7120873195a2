"""The dataset mapper of our Trainer: detectron2's ``DatasetMapper``, reading images with
:func:`~resnet_backbones.data.images.read_image` (16-bit scaled to 8 bits, CMYK, grayscale and
transparent images converted, EXIF orientation applied), refusing a box of negative size
instead of mirroring it, and naming the image of any failure.

The boxes of a validated dataset are drawn on the upright image already (the validation rotates
those drawn on the stored pixels, see :mod:`.validate`), so applying the EXIF orientation to the
pixels here keeps pixels and boxes together. With ``DATASETS.VALIDATE "off"`` nothing was
rotated; an image whose EXIF rotation makes its size differ from the dataset's then fails here,
saying so.
"""

from __future__ import annotations

import copy
import logging
from typing import Any, Optional

import numpy as np
import torch
from detectron2.config import CfgNode, configurable
from detectron2.data import DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.structures import BoxMode

from .images import ImageError, ImageInfo, describe_image, read_image

__all__ = ["ImageMappingError", "RobustDatasetMapper", "build_mapper"]

logger = logging.getLogger(__name__)


class ImageMappingError(ImageError):
    """Mapping an image for the model failed (augmentation, annotations ...); the message names
    the image and the original error."""


def _check_size(record: dict, image: np.ndarray, info: ImageInfo) -> None:
    """detectron2's ``check_image_size``, with a message that names the image id and the EXIF
    rotation where that is the difference."""
    actual = (image.shape[1], image.shape[0])
    if "width" in record and "height" in record:
        expected = (record["width"], record["height"])
        if actual != expected:
            exif = ""
            if info.orientation != 1 and expected == info.stored_size:
                exif = (
                    f": its {info.orientation_text()} turns the stored {expected[0]} x "
                    f"{expected[1]} pixels upright. Its boxes were not rotated with it because "
                    "the dataset was not validated (DATASETS.VALIDATE 'off'); validate it, or "
                    "save the image upright"
                )
            else:
                exif = "; correct the width and height in the dataset, or the file"
            raise ImageError(
                f"{describe_image(record.get('image_id'), record['file_name'])}: the dataset "
                f"says width {expected[0]} and height {expected[1]}, the image read is "
                f"{actual[0]} x {actual[1]}{exif}",
                "size differs from file",
            )
    record.setdefault("width", actual[0])
    record.setdefault("height", actual[1])


def _check_boxes(record: dict) -> None:
    """Refuses boxes of negative size, which detectron2's transforms would mirror."""
    for index, ann in enumerate(record.get("annotations") or []):
        box, mode = ann.get("bbox"), ann.get("bbox_mode")
        if box is None or mode not in (BoxMode.XYWH_ABS, BoxMode.XYXY_ABS):
            continue
        w, h = (box[2], box[3]) if mode == BoxMode.XYWH_ABS else (box[2] - box[0], box[3] - box[1])
        if w < 0 or h < 0:
            raise ImageError(
                f"{describe_image(record.get('image_id'), record['file_name'])}, annotation "
                f"{index}: bbox = {list(box)!r} ({mode.name}) has a negative width or height, "
                "which would be mirrored; correct the box",
                "box of negative size",
            )


class RobustDatasetMapper(DatasetMapper):
    """detectron2's ``DatasetMapper`` (same arguments and output), with the decoding and checks
    of this module. A bad image raises :class:`ImageError` naming it, or, for training with
    ``skip_bad_images``, is logged and the mapper returns None: the training loader then takes
    another image in its place (the resumable loader draws it from the sample's seed;
    detectron2's ``MapDataset`` draws a random one). Any other failure while mapping an image
    is an :class:`ImageMappingError` naming it, also from a DataLoader worker process."""

    @configurable
    def __init__(self, is_train: bool, *, skip_bad_images: bool = False, **kwargs: Any):
        """
        Args:
            is_train, kwargs: those of detectron2's ``DatasetMapper``.
            skip_bad_images: in training, a bad image is skipped (logged) rather than fatal.
        """
        super().__init__(is_train, **kwargs)
        self.skip_bad_images = skip_bad_images and is_train

    @classmethod
    def from_config(cls, cfg: CfgNode, is_train: bool = True) -> dict:
        arguments = super().from_config(cfg, is_train)
        arguments["skip_bad_images"] = cfg.DATASETS.get("BAD_IMAGES", "error") == "skip"
        return arguments

    def __call__(self, dataset_dict: dict) -> Optional[dict]:
        try:
            return self._map(copy.deepcopy(dataset_dict))
        except ImageError as e:
            if not self.skip_bad_images:
                raise
            logger.warning("Skipped in training (DATASETS.BAD_IMAGES 'skip'): %s", e)
            return None
        except MemoryError:
            raise
        except Exception as e:
            image = describe_image(dataset_dict.get("image_id"), dataset_dict.get("file_name"))
            raise ImageMappingError(
                f"{image}: mapping it for the model failed with {type(e).__name__}: "
                + " ".join(str(e).split())  # one line, also as a worker's traceback ends
            ) from e

    def _map(self, dataset_dict: dict) -> dict:
        """detectron2's ``DatasetMapper.__call__`` from the image read on (v0.6)."""
        image, info = read_image(
            dataset_dict["file_name"], self.image_format, dataset_dict.get("image_id")
        )
        _check_size(dataset_dict, image, info)
        _check_boxes(dataset_dict)
        if "sem_seg_file_name" in dataset_dict:
            sem_seg_gt = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        else:
            sem_seg_gt = None
        aug_input = T.AugInput(image, sem_seg=sem_seg_gt)
        transforms = self.augmentations(aug_input)
        image, sem_seg_gt = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg_gt is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg_gt.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            dataset_dict.pop("sem_seg_file_name", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict


def build_mapper(cfg: CfgNode, is_train: bool) -> RobustDatasetMapper:
    """The mapper of ``cfg``'s train (``is_train``) or test loader: ``mapper=`` of detectron2's
    ``build_detection_train_loader`` and ``build_detection_test_loader``."""
    return RobustDatasetMapper(cfg, is_train)

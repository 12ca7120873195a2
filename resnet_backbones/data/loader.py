"""A training data loader whose batches are a pure function of (seed, iteration): resuming at
iteration k gives the batches, and the augmentations, an uninterrupted run has from k on.

detectron2's ``build_detection_train_loader`` cannot resume: its ``TrainingSampler`` restarts
its random stream at every start, so a run resumed at iteration k trains again on the batches
of iterations 0, 1, ...; its mapper draws augmentations from each data-loading process's global
RNG, seeded anew at every start. Here:

* **Batches.** The dataset is shuffled epoch by epoch with a generator seeded by
  ``(seed, epoch)``; samples are grouped by aspect ratio (landscape / portrait, as detectron2's
  ``AspectRatioGroupedDataset``) into *global* batches of ``SOLVER.IMS_PER_BATCH``. Global
  batch k is the batch of iteration k; process r of N takes its r-th slice. So the batches
  do not depend on the number of processes: 2 processes of B/2 train on the 1-process batch
  of B. Resuming at k replays the index arithmetic of iterations 0..k-1 (no image is read:
  about a second per million samples) and goes on.
* **Augmentations.** Each sample is mapped with ``random``, ``numpy.random`` and ``torch``
  seeded by ``(seed, iteration, slot in the batch)``, and the caller's generators restored
  after, so its flips and crops do not depend on the loading process, on
  ``DATALOADER.NUM_WORKERS`` or on where the run was resumed; and the model's random stream (RoI
  sampling, dropout) is not touched by data loading.
* **Laziness.** The worker processes start at the first ``next()``, not when detectron2's
  trainer calls ``iter()`` on the loader before ``--resume`` has set the start iteration.

The loader's :meth:`ResumableTrainLoader.state_dict` is what the checkpoint records: the seed
and the dataset's fingerprint (its size and batch size); the iteration is the trainer's.
"""

from __future__ import annotations

import contextlib
import logging
import random
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ResumableBatchSampler", "ResumableTrainLoader", "sample_seed", "seeded"]

logger = logging.getLogger(__name__)


def _mix(*values: int) -> int:
    """A 32-bit seed from integers, well mixed (numpy's SeedSequence)."""
    return int(
        np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in values]).generate_state(1)[0]
    )


def sample_seed(seed: int, iteration: int, slot: int) -> int:
    """The seed of the augmentations of sample ``slot`` of the global batch of ``iteration``."""
    return _mix(seed, 1, iteration, slot)


@contextlib.contextmanager
def seeded(seed: int):
    """``random``, ``numpy.random`` and torch's CPU generator seeded with ``seed`` inside, and
    restored to their previous states after (the GPUs' generators, which the model's samplers
    may draw from, are not touched)."""
    from ..resume import capture_rng_state, restore_rng_state

    state = capture_rng_state(cuda=False)
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        restore_rng_state(state)


class ResumableBatchSampler(Sampler):
    """Batches of ``(sample_seed, dataset_index)`` for one process, from iteration ``start_iter``
    on, endlessly (see the module docstring).

    Args:
        num_samples: size of the dataset.
        total_batch_size: samples per iteration over all processes.
        seed: the run's data seed.
        group_ids: per sample, its aspect-ratio group (0 landscape, 1 portrait); None: no
            grouping (batches follow the shuffled order).
        rank, world_size: this process and the number of processes.
        start_iter: the first iteration to produce.
        shuffle: shuffle every epoch (else the dataset order, repeated).
    """

    def __init__(
        self,
        num_samples: int,
        total_batch_size: int,
        *,
        seed: int,
        group_ids: Optional[Sequence[int]] = None,
        rank: int = 0,
        world_size: int = 1,
        start_iter: int = 0,
        shuffle: bool = True,
    ):
        if num_samples <= 0:
            raise ValueError(f"num_samples = {num_samples}: the training dataset is empty")
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(
                f"total batch size {total_batch_size} must be a positive multiple of the number "
                f"of processes ({world_size})"
            )
        if group_ids is not None and len(group_ids) != num_samples:
            raise ValueError(f"{len(group_ids)} group ids for {num_samples} samples")
        self.num_samples = num_samples
        self.total_batch_size = total_batch_size
        self.seed = int(seed)
        self.group_ids = None if group_ids is None else np.asarray(group_ids, dtype=np.int64)
        self.rank = rank
        self.world_size = world_size
        self.start_iter = start_iter
        self.shuffle = shuffle

    def _epoch_order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.num_samples))
        generator = torch.Generator().manual_seed(_mix(self.seed, 0, epoch))
        return torch.randperm(self.num_samples, generator=generator).tolist()

    def global_batches(self) -> Iterator[list[int]]:
        """The dataset indices of the global batches of iterations 0, 1, 2, ..."""
        batch_size = self.total_batch_size
        buckets: dict[int, list[int]] = {}
        epoch = 0
        while True:
            order = self._epoch_order(epoch)
            if self.group_ids is None:
                pending = buckets.setdefault(0, [])
                pending.extend(order)
                while len(pending) >= batch_size:
                    yield pending[:batch_size]
                    del pending[:batch_size]
            else:
                groups = self.group_ids[order].tolist()
                for index, group in zip(order, groups):
                    bucket = buckets.setdefault(group, [])
                    bucket.append(index)
                    if len(bucket) == batch_size:
                        yield list(bucket)
                        bucket.clear()
            epoch += 1

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        per_process = self.total_batch_size // self.world_size
        begin = self.rank * per_process
        for iteration, batch in enumerate(self.global_batches()):
            if iteration < self.start_iter:
                continue
            yield [
                (sample_seed(self.seed, iteration, slot), batch[slot])
                for slot in range(begin, begin + per_process)
            ]


class _SeededMap(Dataset):
    """``mapper(dataset_dicts[index])`` under :func:`seeded` for a ``(seed, index)`` key."""

    def __init__(self, dataset_dicts: Sequence[dict], mapper: Callable[[dict], Any]):
        from detectron2.data.common import DatasetFromList

        # Serialised as detectron2 does, so that worker processes share one buffer.
        self.dataset = DatasetFromList(list(dataset_dicts), copy=True, serialize=True)
        self.mapper = mapper

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> Any:
        seed, index = key
        # A mapper returns None for an image it skips (RobustDatasetMapper with
        # DATASETS.BAD_IMAGES "skip", for a file that broke after the checks): another image
        # takes its place, drawn from the sample's own seed so that a resumed run draws the same.
        draw = random.Random(seed)
        for attempt in range(_REPLACEMENT_TRIES + 1):
            if attempt:
                other = draw.randrange(len(self.dataset))
                logger.warning(
                    "Image %d of the training set was skipped; image %d takes its place",
                    index,
                    other,
                )
                index = other
            with seeded(seed):
                mapped = self.mapper(self.dataset[index])
            if mapped is not None:
                return mapped
        from .coco_format import DatasetFormatError

        raise DatasetFormatError(
            f"the dataset mapper skipped {_REPLACEMENT_TRIES + 1} images in a row (the last: index "
            f"{index}, {self.dataset[index].get('file_name')!r}); too many images fail to load: "
            "check the dataset (DATASETS.VALIDATE 'full' decodes every image before training)"
        )


_REPLACEMENT_TRIES = 10


def _as_batch(batch: list) -> list:
    return batch


class ResumableTrainLoader:
    """An iterable of training batches (lists of mapped dataset dicts) for one process, that
    starts at :attr:`start_iter` (see the module docstring). detectron2's trainers take it in
    place of ``build_detection_train_loader``'s loader.

    Args:
        dataset_dicts: the training records (detectron2 dataset dicts).
        mapper: record -> model input (e.g. detectron2's ``DatasetMapper(cfg, True)``).
        total_batch_size: ``SOLVER.IMS_PER_BATCH``, over all processes.
        seed: the data seed.
        aspect_ratio_grouping: batch landscape and portrait images apart.
        num_workers: data-loading processes (0: load in this process).
        rank, world_size: this process and the number of processes.
    """

    def __init__(
        self,
        dataset_dicts: Sequence[dict],
        mapper: Callable[[dict], Any],
        total_batch_size: int,
        *,
        seed: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        group_ids = (
            [0 if d["width"] > d["height"] else 1 for d in dataset_dicts]
            if aspect_ratio_grouping
            else None
        )
        self.sampler = ResumableBatchSampler(
            len(dataset_dicts),
            total_batch_size,
            seed=seed,
            group_ids=group_ids,
            rank=rank,
            world_size=world_size,
        )
        self.dataset = _SeededMap(dataset_dicts, mapper)
        self.num_workers = num_workers
        self.last_batch_shapes: list[tuple[int, ...]] = []

    @property
    def start_iter(self) -> int:
        return self.sampler.start_iter

    @start_iter.setter
    def start_iter(self, value: int) -> None:
        self.sampler.start_iter = int(value)

    @property
    def seed(self) -> int:
        return self.sampler.seed

    def __iter__(self) -> Iterator[list]:
        # A generator: nothing below runs (no worker starts) until the first next().
        loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=self.num_workers,
            collate_fn=_as_batch,
            # The workers' base seed comes from this generator, not from the global torch RNG
            # (which would shift the model's random stream by one draw at every (re)start).
            generator=torch.Generator().manual_seed(self.seed),
        )
        for batch in loader:
            # Named in the message of an out-of-memory step (resnet_backbones.resume).
            self.last_batch_shapes = [tuple(d["image"].shape) for d in batch if "image" in d]
            yield batch

    def state_dict(self) -> dict[str, Any]:
        """What decides the batches besides the iteration: the seed, and the dataset size and
        batch size it was drawn for."""
        return {
            "seed": self.sampler.seed,
            "num_samples": self.sampler.num_samples,
            "total_batch_size": self.sampler.total_batch_size,
            "aspect_ratio_grouping": self.sampler.group_ids is not None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Takes the checkpoint's seed; warns where the dataset or batch size changed (the run
        goes on, but is not the one the checkpoint began)."""
        self.sampler.seed = int(state["seed"])
        for key, now in self.state_dict().items():
            then = state.get(key, now)
            if then != now:
                logger.warning(
                    "Resuming with %s = %r where the checkpoint's run had %r: the batches from "
                    "here on are not those the interrupted run would have trained on",
                    key,
                    now,
                    then,
                )

"""What a checkpoint must hold, beyond the model, for ``--resume`` to continue the very run it
interrupted, and the errors that stop a run before it saves something it should not.

detectron2 v0.6's ``DefaultTrainer`` saves the model, the iteration and the LR scheduler; not
the optimizer (its ``_trainer``), not the data order, not the random generators. Our
:class:`resnet_backbones.engine.Trainer` saves, under the checkpoint's ``"trainer"`` key:

* ``"_trainer"``: detectron2's ``SimpleTrainer``/``AMPTrainer`` state: the optimizer (SGD's
  momentum, AdamW's moments, each group's current LR) and the AMP grad scaler;
* ``"hooks"``: the LR scheduler (as detectron2 does);
* ``"data"``: the training loader's seed and what it was drawn for
  (:class:`resnet_backbones.data.loader.ResumableTrainLoader`; the batches are a function of
  the seed and the iteration);
* ``"rng"``: the ``random``, ``numpy`` and torch (CPU and CUDA) generator states of every
  process, captured when the checkpoint is written (:class:`RNGStates`), which the RoI
  samplers and dropout draw from.

With these, on the CPU, N iterations straight and N/2 + kill -9 + ``--resume`` end with
bitwise-equal weights (``tests/test_resume.py``; ``tools/chaos_resume.py`` kills at random
moments). On GPUs, two uninterrupted runs already differ unless deterministic algorithms are
set (not run here).
"""

from __future__ import annotations

import logging
import random
from typing import Any, Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "NonFiniteLossError",
    "RNGStates",
    "TrainingError",
    "TrainingOutOfMemoryError",
    "capture_rng_state",
    "is_checkpoint_iteration",
    "non_finite_loss_error",
    "out_of_memory_error",
    "restore_rng_state",
]

logger = logging.getLogger(__name__)


def capture_rng_state(cuda: bool = True) -> dict[str, Any]:
    """This process's generators (with ``cuda``, also the GPUs' where CUDA is initialised), in
    types ``torch.load(weights_only=True)`` reads back."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
        "torch": torch.get_rng_state(),
    }
    if cuda and torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Sets this process's generators to a :func:`capture_rng_state` result."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def is_checkpoint_iteration(iteration: int, period: int, max_iter: int) -> bool:
    """Whether detectron2's ``PeriodicCheckpointer`` saves after ``iteration``: every ``period``
    iterations, and ``model_final`` after the last one."""
    return (iteration + 1) % period == 0 or iteration >= max_iter - 1


class RNGStates(HookBase):
    """Captures the generators of every process at the iterations a checkpoint is written, for
    the trainer's ``state_dict`` (only the main process writes checkpoints, so the other
    processes' states are gathered to it first). It must run after the hooks that draw random
    numbers and before the checkpointer.

    Args:
        period: ``SOLVER.CHECKPOINT_PERIOD`` (the checkpointer also saves at the last
            iteration).
    """

    def __init__(self, period: int):
        self.period = period
        self.states: Optional[list[dict[str, Any]]] = None
        self.iteration = -1

    def after_step(self) -> None:
        if comm.get_world_size() == 1:
            return  # state_dict captures this one process's generators itself
        iteration = self.trainer.iter
        if is_checkpoint_iteration(iteration, self.period, self.trainer.max_iter):
            self.states = comm.all_gather(capture_rng_state())
            self.iteration = iteration

    def current(self) -> list[Optional[dict[str, Any]]]:
        """The generator states of all processes, one per rank, as of now."""
        if comm.get_world_size() == 1:
            return [capture_rng_state()]
        if self.states is not None and self.iteration == self.trainer.iter:
            return list(self.states)
        return [
            capture_rng_state() if r == comm.get_rank() else None
            for r in range(comm.get_world_size())
        ]

    @staticmethod
    def restore(states: list[Optional[dict[str, Any]]]) -> None:
        """Restores this process's generators from a checkpoint's list."""
        rank, world_size = comm.get_rank(), comm.get_world_size()
        if len(states) != world_size:
            why = f"the checkpoint's run had {len(states)} processes, this one has {world_size}"
        elif states[rank] is None:
            why = f"the checkpoint holds no random generators of process {rank}"
        else:
            restore_rng_state(states[rank])
            return
        logger.warning(
            "Resuming with fresh random generators (%s): the data order is unchanged, but the "
            "RoI sampling and dropout draws differ from those of the interrupted run",
            why,
        )


class TrainingError(RuntimeError):
    """Training stopped for a reason the user can act on (the message says how)."""


class NonFiniteLossError(TrainingError, FloatingPointError):
    """The loss became NaN or infinite; nothing was saved after the last finite iteration."""


class TrainingOutOfMemoryError(TrainingError):
    """A training step ran out of memory; the message names the batch and image size to lower."""


def _resume_hint(last_checkpoint: Optional[str]) -> str:
    if last_checkpoint:
        return (
            f"The newest checkpoint is {last_checkpoint}; rerun with --resume to continue from it "
            "(the changed keys apply from there)"
        )
    return "No checkpoint was written yet; rerun from the start"


def non_finite_loss_error(
    iteration: int, cause: BaseException, last_checkpoint: Optional[str]
) -> NonFiniteLossError:
    """The error for detectron2's ``FloatingPointError`` (a non-finite loss at ``iteration``)."""
    # detectron2's message: "Loss became infinite or NaN at iteration=N!\nloss_dict = {...}".
    lines = str(cause).splitlines()
    detail = lines[-1] if lines else type(cause).__name__
    return NonFiniteLossError(
        f"the loss became non-finite at iteration {iteration} ({detail}); training stopped "
        "before the optimizer applied it, and no weights were saved after it. Lower "
        "SOLVER.BASE_LR, raise SOLVER.WARMUP_ITERS, or set SOLVER.CLIP_GRADIENTS.ENABLED True. "
        + _resume_hint(last_checkpoint)
    )


def out_of_memory_error(
    iteration: int,
    cause: BaseException,
    batch_shapes: Optional[list[tuple[int, ...]]],
    cfg: Any,
    last_checkpoint: Optional[str],
) -> TrainingOutOfMemoryError:
    """The error for an out-of-memory training step: names the batch and its image sizes, and the
    keys that lower them."""
    if batch_shapes:
        sizes = sorted({f"{s[-2]}x{s[-1]}" for s in batch_shapes})
        batch = f"a batch of {len(batch_shapes)} images of {', '.join(sizes)} px (HxW)"
    else:
        batch = "its batch"
    return TrainingOutOfMemoryError(
        f"out of memory at iteration {iteration} on {cfg.MODEL.DEVICE}, with {batch} in this "
        f"process ({str(cause).splitlines()[0][:200]}). Lower SOLVER.IMS_PER_BATCH (now "
        f"{cfg.SOLVER.IMS_PER_BATCH}, over all processes) or the image size: "
        f"INPUT.MIN_SIZE_TRAIN (now {tuple(cfg.INPUT.MIN_SIZE_TRAIN)}) and INPUT.MAX_SIZE_TRAIN "
        f"(now {cfg.INPUT.MAX_SIZE_TRAIN}); on a GPU, SOLVER.AMP.ENABLED True also halves the "
        "activations. " + _resume_hint(last_checkpoint)
    )

"""Many processes and many machines, with or without CUDA, on ``torch.distributed``.

detectron2 v0.6's ``launch`` asserts CUDA and initialises NCCL, and its ``create_ddp_model``
passes ``device_ids=[local_rank]``, which DistributedDataParallel refuses for a model on the
CPU; torch's ``nn.SyncBatchNorm`` refuses CPU tensors. This module fills those three gaps and
nothing else:

* :func:`launch`: detectron2's signature. With CUDA it *is* detectron2's ``launch``. Without
  CUDA it starts the processes with ``torch.multiprocessing`` and joins them with the gloo
  backend, as detectron2's ``_distributed_worker`` does with NCCL. Started by ``torchrun``
  (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` set), it joins torchrun's group from the environment
  instead, with NCCL where CUDA is available and gloo otherwise.
* :func:`create_ddp_model`: detectron2's, with no ``device_ids`` for a model on the CPU, and
  ``nn.SyncBatchNorm`` (what detectron2's ``get_norm("SyncBN")`` builds) replaced by detectron2's
  ``NaiveSyncBatchNorm``, whose all-reduce runs on gloo. ``import resnet_backbones`` makes it
  the ``create_ddp_model`` that ``DefaultTrainer`` calls (see :func:`install`), as it does for
  ``build_optimizer`` (:mod:`.solver`). A model on a GPU goes to detectron2's unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import timedelta
from typing import Any, Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.utils import comm

__all__ = [
    "DEFAULT_TIMEOUT",
    "LaunchError",
    "TORCHRUN_VARIABLES",
    "create_ddp_model",
    "install",
    "launch",
    "naive_sync_batchnorm",
    "started_by_torchrun",
    "starts_processes",
]

logger = logging.getLogger(__name__)

# detectron2's (detectron2.engine.launch.DEFAULT_TIMEOUT): how long a collective may wait.
DEFAULT_TIMEOUT = timedelta(minutes=30)

# What torchrun (torch.distributed.run) sets in each worker's environment, and
# init_process_group("env://") reads (with MASTER_ADDR and MASTER_PORT).
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")

# detectron2's own create_ddp_model, kept by install() on detectron2.engine.defaults.
_ORIGINAL = "_detectron2_create_ddp_model"


class LaunchError(ValueError):
    """Process counts, a machine rank or a ``dist_url`` that cannot make a run."""


def started_by_torchrun() -> bool:
    """Whether this process is a worker of ``torchrun`` (or of another launcher that sets
    ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, as torchrun does)."""
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def starts_processes(num_gpus_per_machine: int, num_machines: int = 1) -> bool:
    """Whether :func:`launch` runs ``main_func`` in processes it starts (rather than in this
    one): more than one process on this machine, or CUDA with more than one in all (detectron2's
    ``launch`` then spawns even one), and not under torchrun, which started them itself."""
    if started_by_torchrun():
        return False
    if torch.cuda.is_available():
        return num_gpus_per_machine * num_machines > 1
    return num_gpus_per_machine > 1


def launch(
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence[Any] = (),
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Runs ``main_func(*args)`` in every process of a run of ``num_machines`` machines with
    ``num_gpus_per_machine`` processes each; call it on every machine. detectron2's ``launch``,
    on the CPU too.

    * Under ``torchrun`` (:func:`started_by_torchrun`): torchrun started this process; it joins
      the group from torchrun's environment and runs ``main_func`` here. The other arguments are
      ignored (torchrun's ``--nproc-per-node``, ``--nnodes`` and rendezvous decide).
    * With CUDA: detectron2's ``launch`` (one process per GPU, NCCL).
    * Without CUDA: ``num_gpus_per_machine`` processes on this machine, joined with gloo; where
      that is one, it runs in this process. Each gets ``cpu_count / num_gpus_per_machine``
      threads, unless ``OMP_NUM_THREADS`` says otherwise.

    Args:
        main_func: called as ``main_func(*args)`` in each process; with more than one process
            per machine it must be picklable (a module-level function).
        num_gpus_per_machine: processes per machine (GPUs, or CPU processes without CUDA).
        num_machines: machines in the run.
        machine_rank: this machine's rank, 0 to ``num_machines - 1``.
        dist_url: where the processes meet (``tcp://HOST:PORT``, reachable from every machine
            and the same on all of them); ``"auto"`` or None picks a free port on 127.0.0.1,
            for one machine only.
        args: the arguments of ``main_func``.
        timeout: how long a collective operation may wait for the other processes.

    Raises:
        LaunchError: a process count or machine rank out of range, or a ``dist_url`` of
            ``"auto"`` for several machines.
    """
    if started_by_torchrun():
        if (num_gpus_per_machine, num_machines, machine_rank) != (1, 1, 0):
            logger.warning(
                "Started by torchrun: --num-gpus %d, --num-machines %d and --machine-rank %d are "
                "ignored; torchrun's --nproc-per-node and --nnodes decide (WORLD_SIZE=%s here)",
                num_gpus_per_machine,
                num_machines,
                machine_rank,
                os.environ["WORLD_SIZE"],
            )
        _run_under_torchrun(main_func, args, timeout)
        return
    if num_gpus_per_machine < 1 or num_machines < 1:
        raise LaunchError(
            f"--num-gpus {num_gpus_per_machine} and --num-machines {num_machines}: both must be "
            "at least 1"
        )
    if not 0 <= machine_rank < num_machines:
        raise LaunchError(
            f"--machine-rank {machine_rank} is out of range for --num-machines {num_machines}: "
            f"give each machine a different rank from 0 to {num_machines - 1}"
        )
    world_size = num_machines * num_gpus_per_machine
    if world_size > 1:
        dist_url = _resolve_dist_url(dist_url, num_machines)
    if torch.cuda.is_available():
        from detectron2.engine.launch import launch as detectron2_launch

        detectron2_launch(
            main_func,
            num_gpus_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
            timeout=timeout,
        )
        return
    if world_size == 1:
        main_func(*args)
        return
    worker_args = (main_func, num_gpus_per_machine, machine_rank, world_size, dist_url)
    worker_args += (tuple(args), timeout)
    if num_gpus_per_machine == 1:
        # One process on this machine: this one (spawning it would only add a Python start).
        _cpu_worker(0, *worker_args)
        return
    logger.info(
        "Starting %d processes (gloo, CPU) for machine %d of %d, meeting at %s",
        num_gpus_per_machine,
        machine_rank,
        num_machines,
        dist_url,
    )
    mp.start_processes(
        _cpu_worker,
        args=worker_args,
        nprocs=num_gpus_per_machine,
        daemon=False,
        start_method="spawn",
    )


def _resolve_dist_url(dist_url: Optional[str], num_machines: int) -> str:
    """``dist_url``, with ``"auto"`` (or None) made a free port on 127.0.0.1 as detectron2
    does; several machines need a URL they all reach."""
    if dist_url in (None, "auto"):
        if num_machines > 1:
            raise LaunchError(
                f"--dist-url {dist_url or 'auto'!r} picks a port on this machine only, but "
                f"--num-machines is {num_machines}: pass the same --dist-url "
                "tcp://HOST:PORT to every machine, HOST being machine 0's address as the others "
                "reach it and PORT a free port there"
            )
        from detectron2.engine.launch import _find_free_port

        return f"tcp://127.0.0.1:{_find_free_port()}"
    if num_machines > 1 and dist_url.startswith("file://"):
        logger.warning("file:// is not a reliable init_method in multi-machine jobs. Prefer tcp://")
    return dist_url


def _cpu_worker(
    local_rank: int,
    main_func: Callable[..., Any],
    num_gpus_per_machine: int,
    machine_rank: int,
    world_size: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    """One CPU process of :func:`launch`: detectron2's ``_distributed_worker`` with gloo."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    rank = machine_rank * num_gpus_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo",
            init_method=dist_url,
            world_size=world_size,
            rank=rank,
            timeout=timeout,
        )
    except Exception:
        logger.error("Process group URL: %s", dist_url)
        raise
    _set_local_process_group(num_gpus_per_machine, machine_rank)
    main_func(*args)
    _leave_process_group()


def _run_under_torchrun(main_func: Callable[..., Any], args: Sequence[Any], timeout) -> None:
    """A torchrun worker: joins torchrun's group (``env://``), then runs ``main_func``."""
    world_size = int(os.environ["WORLD_SIZE"])
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if world_size == 1:
        main_func(*args)
        return
    if world_size % local_size:
        raise LaunchError(
            f"torchrun's WORLD_SIZE {world_size} is not a multiple of LOCAL_WORLD_SIZE "
            f"{local_size}: give every node the same --nproc-per-node"
        )
    local_rank = int(os.environ["LOCAL_RANK"])
    rank = int(os.environ["RANK"])
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, init_method="env://", timeout=timeout)
    # torchrun numbers the workers node by node: node k holds ranks k*local_size and up.
    _set_local_process_group(local_size, rank // local_size)
    main_func(*args)
    _leave_process_group()


def _leave_process_group() -> None:
    """After ``main_func`` returned. Not after it raised: the process then exits, and
    destroying the group would wait for the other processes (seconds, with gloo)."""
    comm._LOCAL_PROCESS_GROUP = None
    dist.destroy_process_group()


def _set_local_process_group(num_per_machine: int, machine_rank: int) -> None:
    """detectron2's ``comm._LOCAL_PROCESS_GROUP`` (which ``comm.get_local_rank`` and
    ``get_local_size`` read): the ranks of this machine, as ``_distributed_worker`` makes it.
    Every process creates every machine's group (``new_group`` is collective)."""
    if comm._LOCAL_PROCESS_GROUP is not None:
        raise RuntimeError(
            "detectron2's local process group is already set: launch() was called inside a "
            "process that launch() started"
        )
    num_machines = dist.get_world_size() // num_per_machine
    for i in range(num_machines):
        group = dist.new_group(list(range(i * num_per_machine, (i + 1) * num_per_machine)))
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    # As detectron2: prevents a timeout right after init_process_group (maskrcnn-benchmark#172).
    comm.synchronize()


def naive_sync_batchnorm(module: torch.nn.Module) -> torch.nn.Module:
    """``module`` with every ``nn.SyncBatchNorm`` replaced by detectron2's
    ``NaiveSyncBatchNorm`` (``stats_mode="N"``: statistics weighted by each process's batch, as
    torch's are), keeping the same parameters and buffers (an optimizer built on ``module``
    still holds them). torch's ``SyncBatchNorm`` refuses CPU tensors; the naive one all-reduces
    with ``differentiable_all_reduce``, which gloo runs.

    Differences from torch's: it takes 4-d inputs only (BatchNorm2d), its ``running_var`` is
    the biased variance (torch's, and BatchNorm's, the unbiased one), and it leaves
    ``num_batches_tracked`` as it is (read only where ``momentum`` is None).
    """
    from detectron2.layers import NaiveSyncBatchNorm

    if isinstance(module, torch.nn.SyncBatchNorm):
        naive = NaiveSyncBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
            stats_mode="N",
        )
        if module.affine:
            naive.weight = module.weight
            naive.bias = module.bias
        for name, buffer in module.named_buffers(recurse=False):
            setattr(naive, name, buffer)
        naive.train(module.training)
        return naive
    for name, child in module.named_children():
        converted = naive_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


def _on_cpu(model: torch.nn.Module) -> bool:
    return all(p.device.type == "cpu" for p in model.parameters())


def create_ddp_model(model: torch.nn.Module, *, fp16_compression: bool = False, **kwargs):
    """detectron2's ``create_ddp_model``, for a model on the CPU too.

    For a CPU model in a run of several processes: DistributedDataParallel without
    ``device_ids`` (detectron2 passes ``[local_rank]``, which it refuses for CPU modules), and
    :func:`naive_sync_batchnorm` first. Otherwise detectron2's, unchanged.
    """
    from detectron2.engine import defaults

    original = getattr(defaults, _ORIGINAL, defaults.create_ddp_model)
    if comm.get_world_size() > 1 and _on_cpu(model):
        kwargs.setdefault("device_ids", None)
        model = naive_sync_batchnorm(model)
    return original(model, fp16_compression=fp16_compression, **kwargs)


def install() -> None:
    """Makes :func:`create_ddp_model` the one that ``detectron2.engine.defaults`` (whose
    ``DefaultTrainer.__init__`` calls it) and ``detectron2.engine`` name (``import
    resnet_backbones`` calls this when ``detectron2.engine.defaults`` is imported)."""
    defaults = sys.modules.get("detectron2.engine.defaults")
    if defaults is None:
        return
    if not hasattr(defaults, _ORIGINAL):
        setattr(defaults, _ORIGINAL, defaults.create_ddp_model)
    for name in ("detectron2.engine.defaults", "detectron2.engine"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "create_ddp_model"):
            module.create_ddp_model = create_ddp_model

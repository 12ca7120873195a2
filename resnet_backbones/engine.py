"""Training and evaluation: detectron2's DefaultTrainer flow, made to run where the compiled
ops or CUDA are missing, with clear errors for configs and datasets."""

from __future__ import annotations

import difflib
import logging
import os
import re
import time
from typing import Any, Callable, Optional, Sequence

import torch
import yaml
from detectron2.config import CfgNode, get_cfg
from detectron2.data import (
    DatasetCatalog,
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import DefaultTrainer, SimpleTrainer, hooks
from detectron2.utils import comm
from detectron2.utils.events import JSONWriter

from . import solver
from .coco_eval import COCOEvaluator, resolve_coco_eval_impl
from .config import ConfigError, add_resnet_backbones_config
from .data import DatasetNotFoundError, register_config_datasets, register_datasets
from .data.classification import check_classification_files
from .data.coco_format import HOW_TO_REGISTER, resolve_config_paths
from .data.loader import ResumableTrainLoader
from .data.mapper import build_mapper
from .data.validate import (
    ValidationReportHook,
    ValidationSettings,
    validate_dataset,
    validated_dataset_dicts,
    validation_reports,
)
from .data.voc_format import (
    check_voc_for_evaluation,
    missing_voc_files,
    resolve_voc_paths,
)
from .events import AtomicJSONWriter
from .modeling.roi_align import use_fast_cpu_roi_align
from .output_dir import claim_output_dir_everywhere, release
from .resume import (
    RNGStates,
    capture_rng_state,
    is_checkpoint_iteration,
    non_finite_loss_error,
    out_of_memory_error,
    restore_rng_state,
)
from .utils import config_get, first_n, remove_stale_temporaries
from .voc_eval import VOCDetectionEvaluator
from .weights.checkpoint import FamilyCheckpointer

__all__ = [
    "CPUAutocastTrainer",
    "ConfigError",
    "DatasetNotFoundError",
    "EVALUATOR_TYPES",
    "NumClassesError",
    "ResumableTrainer",
    "Trainer",
    "check_datasets",
    "check_num_classes",
    "config_chain",
    "load_config",
    "merge_config_file",
    "merge_config_list",
    "use_cpu_if_no_cuda",
]

logger = logging.getLogger(__name__)


# yacs' messages, the only place its merge names the key at fault (yacs 0.1.8 is its last
# release): an unknown key from a file (KeyError) or from an override (AssertionError), and a
# value whose type differs from the default's (ValueError).
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")
_TYPE_MISMATCH = re.compile(r"Type mismatch \(.*\) with values \(.*\) for config key: (\S+)", re.S)
_MISSING = object()
# The datasets' evaluator_type values that the Trainer evaluates (build_evaluator).
EVALUATOR_TYPES = ("coco", "pascal_voc")
# The DATASETS keys whose relative paths are relative to the YAML file that sets them, and the
# function that makes them absolute (load_config).
_DATASET_PATH_KEYS = {"COCO_FORMAT": resolve_config_paths, "VOC_FORMAT": resolve_voc_paths}


def _yaml_error(path: str, error: yaml.MarkedYAMLError) -> ConfigError:
    mark = error.problem_mark or error.context_mark
    where = f"config file {path}" + (
        f", line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    )
    problem = error.problem or error.context or str(error)
    if error.context and error.problem:
        problem += f" ({error.context})"
    if isinstance(error, yaml.constructor.ConstructorError):
        problem += (
            "; config files are read with yaml.safe_load, which refuses tags that build Python "
            "objects (they could run code)"
        )
    return ConfigError(f"{where}: invalid YAML: {problem}")


def config_chain(config_file: str) -> list[tuple[str, dict]]:
    """The YAML mappings that detectron2's ``merge_from_file`` combines for ``config_file``,
    each with its path: its ``_BASE_`` files first (followed as detectron2 follows them:
    recursively, in order, relative to the including file), ``config_file`` last.

    Read here, before detectron2 reads them, so that an error names the file it is in:
    detectron2 fails on an empty file, a file that is not a mapping, a missing ``_BASE_`` or a
    circular one with a bare ``TypeError``, ``AttributeError``, ``FileNotFoundError`` without a
    name, or ``RecursionError``. ``_BASE_`` URLs (``https://...``) are left to detectron2.

    Raises:
        ConfigError: naming the file, and the line and column of a YAML error.
    """

    def read(path: str, including: list[str]) -> list[tuple[str, dict]]:
        where = f"config file {path}" + (f" (the _BASE_ of {including[-1]})" if including else "")
        if os.path.abspath(path) in map(os.path.abspath, including):
            cycle = " -> ".join([*including[including.index(path) :], path])
            raise ConfigError(f"{where} includes itself through _BASE_: {cycle}")
        try:
            with open(path, encoding="utf-8") as f:
                loaded = yaml.safe_load(f)
        except FileNotFoundError:
            raise ConfigError(f"{where} does not exist") from None
        except OSError as e:
            raise ConfigError(f"{where} cannot be read: {e.strerror}") from None
        except yaml.MarkedYAMLError as e:
            raise _yaml_error(path, e) from None
        if not isinstance(loaded, dict):
            kind = "empty" if loaded is None else f"a YAML {type(loaded).__name__}"
            raise ConfigError(
                f"{where} is {kind}, not a mapping of config keys (KEY: value, or sections of them)"
            )
        bases = loaded.get("_BASE_", [])
        chain: list[tuple[str, dict]] = []
        for base in bases if isinstance(bases, list) else [bases]:
            if not isinstance(base, str):
                raise ConfigError(
                    f"{where}: _BASE_ = {base!r} is not valid; it must be a path, or a list of "
                    "paths, relative to the file's folder"
                )
            if base.startswith(("http://", "https://")):
                continue
            base = os.path.expanduser(base)
            if not base.startswith("/"):
                base = os.path.join(os.path.dirname(path), base)
            chain += read(base, [*including, path])
        return [*chain, (path, loaded)]

    return read(config_file, [])


def _config_keys(node: CfgNode, prefix: str = "") -> list[str]:
    """Every dotted key of ``node``, sections included (``MODEL``, ``MODEL.RESNETS.DEPTH``)."""
    keys = []
    for name, value in node.items():
        keys.append(prefix + name)
        if isinstance(value, CfgNode):
            keys += _config_keys(value, f"{prefix}{name}.")
    return keys


def _unknown_key(cfg: CfgNode, key: str) -> str:
    """Says ``key`` is unknown, and names the closest valid keys: the keys of its section whose
    names are spelled alike (``MODEL.RESNETS.DEPTHH`` -> ``MODEL.RESNETS.DEPTH``, ``MODLE`` ->
    ``MODEL``), then the keys of the same name in another section (``MODEL.BASE_LR`` ->
    ``SOLVER.BASE_LR``); failing both, every key of its section."""
    keys = _config_keys(cfg)
    section, _, name = key.rpartition(".")
    siblings = {k.rpartition(".")[2]: k for k in keys if k.rpartition(".")[0] == section}
    close = [siblings[n] for n in difflib.get_close_matches(name, list(siblings), n=3)]
    close += [k for k in keys if k.rpartition(".")[2] == name and k not in close]
    if close:
        return f"unknown config key {key}; did you mean {' or '.join(close[:3])}?"
    return (
        f"unknown config key {key}; the keys of {section or 'the config'} are "
        f"{first_n(list(siblings), 30)}"
    )


def _kind(value: Any) -> str:
    if isinstance(value, CfgNode):
        return "a section of keys"
    if isinstance(value, (list, tuple)):
        return "a list"
    name = type(value).__name__
    return f"an {name}" if name[0] in "aeiou" else f"a {name}"


def _wrong_type(cfg: CfgNode, key: str, given: Any) -> str:
    """Says ``key`` takes another type than ``given``'s, and what to write."""
    current = config_get(cfg, key)
    text = f"{key} = {given!r} is {_kind(given)}, but {key} takes {_kind(current)}"
    if isinstance(current, CfgNode):
        return text + f" (its keys: {first_n(list(current), 10)})"
    text += f", like {current!r}"
    if isinstance(current, float) and isinstance(given, int) and not isinstance(given, bool):
        text += f"; write {float(given)!r}"  # yacs does not turn an int into a float
    elif isinstance(current, (list, tuple)) and not isinstance(given, (dict, CfgNode)):
        text += f"; write a list, e.g. [{given!r}]"
    return text


def _merge_error(
    cfg: CfgNode, error: Exception, source: Callable[[Optional[str]], tuple[str, Any]]
) -> Optional[ConfigError]:
    """``error`` of a yacs merge as a :class:`ConfigError`, or None where it is not one that
    the input causes (a bug, which keeps its traceback). ``source(key)`` is where the value of
    ``key`` comes from (a file, an override) and the value given there; ``source(None)`` is
    where the merge's input comes from."""
    message = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    match = _UNKNOWN_KEY.fullmatch(message)
    if match:
        where, _ = source(match[1])
        return ConfigError(f"{where}: {_unknown_key(cfg, match[1])}")
    match = _TYPE_MISMATCH.fullmatch(message)
    if match:
        where, given = source(match[1])
        if given is _MISSING:
            return ConfigError(f"{where}: {message}")
        return ConfigError(f"{where}: {_wrong_type(cfg, match[1], given)}")
    if isinstance(error, AssertionError):
        # detectron2, fvcore and yacs assert only on their input while merging: a config of a
        # newer version, a section where the _BASE_ has a value.
        return ConfigError(f"{source(None)[0]}: {message}")
    return None


def merge_config_file(cfg: CfgNode, config_file: str) -> list[tuple[str, dict]]:
    """``cfg.merge_from_file(config_file)``, with errors that name the file, its line and
    column (YAML), the key and what to write (see :class:`ConfigError`). YAML tags that build
    Python objects are refused: detectron2 would run them. Returns :func:`config_chain`'s
    files, as merged."""
    chain = config_chain(config_file)

    def source(key: Optional[str]) -> tuple[str, Any]:
        # The last file of the chain that sets the key is the one whose value was merged.
        for path, loaded in reversed(chain if key else []):
            value: Any = loaded
            for part in key.split("."):
                value = value.get(part, _MISSING) if isinstance(value, dict) else _MISSING
            if value is not _MISSING:
                return f"config file {path}", value
        return f"config file {config_file}", _MISSING

    try:
        cfg.merge_from_file(config_file, allow_unsafe=False)
    except (KeyError, ValueError, AssertionError) as e:
        error = _merge_error(cfg, e, source)
        if error is None:
            raise
        raise error from e
    return chain


def merge_config_list(cfg: CfgNode, opts: Sequence[str]) -> None:
    """``cfg.merge_from_list(opts)`` (``KEY VALUE`` pairs), with errors that name the override,
    the key and what to write (see :class:`ConfigError`)."""
    opts = list(opts)
    if len(opts) % 2:
        raise ConfigError(
            f"the overrides must be KEY VALUE pairs, but an odd number of items ({len(opts)}) "
            f"was given: {' '.join(opts)}"
        )
    given = dict(zip(opts[::2], opts[1::2]))

    def source(key: Optional[str]) -> tuple[str, Any]:
        if key not in given:
            return "the overrides", _MISSING
        # Decoded as yacs decodes it (a Python literal, else the string itself).
        return f"override {key} {given[key]}", CfgNode._decode_cfg_value(given[key])

    try:
        cfg.merge_from_list(opts)
    except (KeyError, ValueError, AssertionError) as e:
        error = _merge_error(cfg, e, source)
        if error is None:
            raise
        raise error from e


def load_config(config_files: str | Sequence[str], opts: Sequence[str] = ()) -> CfgNode:
    """detectron2's default config, extended with our keys, merged with one or more files in
    order (a later file wins), then with ``KEY VALUE`` overrides.

    Relative paths in ``DATASETS.COCO_FORMAT`` and ``DATASETS.VOC_FORMAT`` are made absolute as
    each file is merged:
    relative to the folder of the YAML file that sets the key; in ``opts``, relative to the
    working directory.

    A config file that is not on disk may be one of ours by name (the configs ship with the
    package): ``quickstart/faster_rcnn_R18_FPN_shapes.yaml`` is
    ``model_zoo.get_config_file("quickstart/faster_rcnn_R18_FPN_shapes.yaml")``.

    Raises:
        FileNotFoundError: naming a config file that is neither on disk nor one of ours.
        ConfigError: invalid YAML, an unknown key or a value of the wrong type, in one line
            naming the file (or the override) and the key.
    """
    if isinstance(config_files, (str, os.PathLike)):
        config_files = [config_files]
    if not config_files:
        raise ValueError("load_config needs at least one config file; none was given")
    from .model_zoo import resolve_config_file

    config_files = [resolve_config_file(str(f)) for f in config_files]
    cfg = get_cfg()
    add_resnet_backbones_config(cfg)
    for config_file in config_files:
        before = {key: cfg.DATASETS[key] for key in _DATASET_PATH_KEYS}
        chain = merge_config_file(cfg, str(config_file))
        for key, resolve in _DATASET_PATH_KEYS.items():
            if cfg.DATASETS[key] == before[key]:
                continue
            # Relative to the folder of the file that set the key: the last of the chain that
            # does (config_file itself, or one of its _BASE_ files).
            setter = next(
                (path for path, loaded in reversed(chain) if key in (loaded.get("DATASETS") or {})),
                str(config_file),
            )
            cfg.DATASETS[key] = resolve(cfg.DATASETS[key], os.path.dirname(os.path.abspath(setter)))
    before = {key: cfg.DATASETS[key] for key in _DATASET_PATH_KEYS}
    merge_config_list(cfg, opts)
    for key, resolve in _DATASET_PATH_KEYS.items():
        if cfg.DATASETS[key] != before[key]:
            cfg.DATASETS[key] = resolve(cfg.DATASETS[key], os.getcwd())
    return cfg


def use_cpu_if_no_cuda(cfg: CfgNode) -> CfgNode:
    """A GPU config runs on the CPU, with one warning, where CUDA is not available."""
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning(
            "MODEL.DEVICE is %r but CUDA is not available here; running on the CPU instead. "
            "Expect it to be far slower than on a GPU (pass MODEL.DEVICE cpu to silence this).",
            cfg.MODEL.DEVICE,
        )
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
        if was_frozen:
            cfg.freeze()
    return cfg


def check_datasets(names: Sequence[str]) -> None:
    """Fails early, and clearly, when a dataset is not registered or its files are missing
    (the built-in datasets are registered first).

    detectron2 registers COCO and Pascal VOC under ``$DETECTRON2_DATASETS`` (default
    ``./datasets``) without checking that anything is there; the first sign of a missing
    dataset would otherwise be a bare FileNotFoundError from deep inside the data loader.
    """
    register_datasets()
    registered = DatasetCatalog.list()
    for name in names:
        if name not in registered:
            raise DatasetNotFoundError(
                f"dataset {name!r} is not registered; registered datasets include: "
                f"{first_n(sorted(registered), 40)}. To use your own data, "
                f"{HOW_TO_REGISTER}"
            )
        check_classification_files(name)  # ImageNet and CIFAR-10, with their own layout
        meta = MetadataCatalog.get(name)
        if getattr(meta, "generated_on_first_use", False):
            continue
        voc = getattr(meta, "evaluator_type", None) == "pascal_voc" and hasattr(meta, "dirname")
        if voc:
            missing = missing_voc_files(meta.dirname, meta.split)
            layout = (
                "for Pascal VOC, detectron2's layout: <root>/VOC2007/ and <root>/VOC2012/, each "
                "with Annotations/, JPEGImages/ and ImageSets/Main/<split>.txt"
            )
            holds = "VOC2007/ and VOC2012/"
        else:
            missing = [
                path
                for path in (getattr(meta, "json_file", None), getattr(meta, "image_root", None))
                if path and not os.path.exists(path)
            ]
            layout = (
                "for COCO 2017: <root>/coco/annotations/instances_{train,val}2017.json and "
                "<root>/coco/{train,val}2017/"
            )
            holds = "coco/"
        if missing:
            root = os.environ.get("DETECTRON2_DATASETS")
            where = (
                f"DETECTRON2_DATASETS={root!r}"
                if root
                else f"DETECTRON2_DATASETS is not set, so detectron2 looks in ./datasets under "
                f"the working directory {os.getcwd()!r}"
            )
            raise DatasetNotFoundError(
                f"dataset {name!r} is not on disk: missing {', '.join(map(repr, missing))}. "
                f"{where}. Put the dataset there ({layout}), or set DETECTRON2_DATASETS to the "
                f"folder that holds {holds} before starting."
            )


def _is_out_of_memory(error: RuntimeError) -> bool:
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error)


class NumClassesError(ValueError):
    """The model's number of classes is not the number of categories of its datasets."""


def check_num_classes(cfg: CfgNode, names: Sequence[str]) -> None:
    """Fails, naming the key to set, where the model's number of classes differs from the
    number of categories of a loaded dataset (detectron2 does not check: with fewer classes
    than categories the heads index out of range, with more they train outputs no box has).

    Datasets not loaded yet (no ``thing_classes`` in their metadata) are not checked.
    """
    key = (
        "MODEL.RETINANET.NUM_CLASSES"
        if cfg.MODEL.META_ARCHITECTURE == "RetinaNet"
        else "MODEL.ROI_HEADS.NUM_CLASSES"
    )
    num_classes = config_get(cfg, key)
    for name in names:
        classes = getattr(MetadataCatalog.get(name), "thing_classes", None)
        if classes is not None and len(classes) != num_classes:
            raise NumClassesError(
                f"{key} = {num_classes}, but dataset {name!r} has {len(classes)} categories "
                f"({first_n(classes, 10)}); set {key} {len(classes)}"
            )


class _MetricsAtCheckpoints(hooks.HookBase):
    """Writes ``metrics.json`` just before each checkpoint (detectron2 writes it every 20
    iterations): a run killed after the checkpoint, and resumed from it, then has the metrics of
    every iteration up to it, and writes those after it again."""

    def __init__(self, writer: AtomicJSONWriter, period: int):
        self.writer, self.period = writer, period

    def after_step(self) -> None:
        if is_checkpoint_iteration(self.trainer.iter, self.period, self.trainer.max_iter):
            self.writer.write()


class CPUAutocastTrainer(SimpleTrainer):
    """detectron2's SimpleTrainer with the forward in bfloat16 autocast on the CPU: what
    ``SOLVER.AMP.ENABLED`` means without CUDA (detectron2's AMPTrainer, fp16 with a grad scaler,
    needs CUDA; :class:`ResumableTrainer` chooses between the two). bfloat16 has float32's
    exponent range, so no loss scaling is needed; the weights, gradients and optimizer stay in
    float32.

    ``run_step`` is AMPTrainer's without the scaler: detectron2 writes its AMP step the same way.
    Only the forward and the loss sum run under autocast (the backward and the optimizer step
    outside it, as torch's AMP recipe requires), which SimpleTrainer's ``run_step`` gives no
    place to put."""

    def run_step(self) -> None:
        assert self.model.training, "[CPUAutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


class ResumableTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer, made to survive interruptions (see
    :mod:`resnet_backbones.resume`): checkpoints hold the optimizer, the LR scheduler, the data
    order and the random generators, so ``--resume`` after a kill continues the very run that
    was interrupted (with bitwise-equal weights on the CPU); :meth:`resumable_train_loader`
    gives the batches (:class:`~resnet_backbones.data.loader.ResumableTrainLoader`);
    :meth:`resume_or_load` refuses to start a new run over a previous one
    (:mod:`resnet_backbones.output_dir`); checkpoints are written and read by
    :class:`~resnet_backbones.weights.checkpoint.FamilyCheckpointer` (atomically, verified), and
    ``metrics.json`` by :class:`~resnet_backbones.events.AtomicJSONWriter`; a non-finite loss
    or an out-of-memory step stops the run with a message saying what to lower. The detection
    :class:`Trainer` builds on it.
    """

    def __init__(self, cfg: CfgNode):
        self._output_lock = None
        self._metrics = None  # the metrics writer, made in the main process only
        super().__init__(cfg)
        if cfg.SOLVER.AMP.ENABLED and not cfg.MODEL.DEVICE.startswith("cuda"):
            # DefaultTrainer chose detectron2's AMPTrainer (fp16 and a grad scaler), which
            # needs CUDA: bf16 autocast on the CPU instead. Its state (the optimizer) is
            # AMPTrainer's without the scaler, which the CPU does not need.
            old = self._trainer
            self._trainer = CPUAutocastTrainer(old.model, old.data_loader, old.optimizer)

    def resume_or_load(self, resume: bool = True, overwrite: bool = False) -> None:
        """detectron2's, after claiming OUTPUT_DIR for this run (main process): it refuses to
        start a new run (``resume`` False) over a previous one unless ``overwrite``, and any run
        while another one trains there (see :func:`resnet_backbones.output_dir.claim_output_dir`).
        The training loader starts at the resumed iteration."""
        self._output_lock = claim_output_dir_everywhere(
            self.cfg.OUTPUT_DIR, resume=resume, overwrite=overwrite
        )
        if self._output_lock is not None:
            # This run holds OUTPUT_DIR: a temporary file there is a killed writer's.
            for path in remove_stale_temporaries(self.cfg.OUTPUT_DIR):
                logger.info("Removed %s, the partial file of a write that was interrupted", path)
        try:
            super().resume_or_load(resume=resume)
        except BaseException:
            release(self._output_lock)
            self._output_lock = None
            raise
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            loader.start_iter = self.start_iter
        if self._metrics is not None:
            # The lines of iterations this run trains (again): none left from a new run's
            # predecessor, none repeated after a resume.
            self._metrics.drop_after(self.start_iter - 1)

    def build_writers(self):
        """detectron2's writers, with ``metrics.json`` written by
        :class:`~resnet_backbones.events.AtomicJSONWriter` (atomically, never torn)."""
        writers = super().build_writers()
        for i, writer in enumerate(writers):
            if isinstance(writer, JSONWriter):
                writer.close()
                writers[i] = AtomicJSONWriter(os.path.join(self.cfg.OUTPUT_DIR, "metrics.json"))
        self._metrics = next((w for w in writers if isinstance(w, AtomicJSONWriter)), None)
        return writers

    def train(self):
        """detectron2's; OUTPUT_DIR is released at the end (see :meth:`resume_or_load`).

        A run resumed after its last iteration (killed while it wrote ``model_final.pth``)
        writes ``model_final.pth`` from the checkpoint of that iteration, which holds the same
        state, and then evaluates as a finished run does."""
        try:
            final = os.path.join(self.cfg.OUTPUT_DIR, "model_final.pth")
            if (
                self.start_iter >= self.max_iter > 0
                and comm.is_main_process()
                and not os.path.exists(final)
            ):
                logger.info("Writing %s, which the interrupted run had not finished", final)
                self.checkpointer.save("model_final", iteration=self.iter)
            return super().train()
        finally:
            release(self._output_lock)
            self._output_lock = None

    def state_dict(self) -> dict:
        """detectron2's (iteration, LR scheduler), and what it leaves out: the optimizer and
        AMP scaler (``_trainer``), the data seed (``data``) and every process's random
        generators (``rng``)."""
        state = super().state_dict()
        state["_trainer"] = self._trainer.state_dict()
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):
            state["data"] = loader.state_dict()
        state["rng"] = self._rng_states.current()
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if "_trainer" in state:
            self._trainer.load_state_dict(state["_trainer"])
        else:
            logger.warning(
                "The checkpoint holds no optimizer state (written by detectron2's trainer or an "
                "older resnet_backbones): the optimizer restarts, so SGD's momentum and AdamW's "
                "moments start from zero"
            )
        loader = self._trainer.data_loader
        if "data" in state and isinstance(loader, ResumableTrainLoader):
            loader.load_state_dict(state["data"])
        if "rng" in state:
            RNGStates.restore(state["rng"])

    def build_hooks(self):
        # DefaultTrainer.__init__ makes a DetectionCheckpointer (plain pickle for .pkl, no
        # backbone check) just before building the hooks: load and save with ours instead.
        old = self.checkpointer
        self.checkpointer = FamilyCheckpointer(
            old.model,
            old.save_dir,
            cfg=self.cfg,
            save_to_disk=old.save_to_disk,
            **old.checkpointables,
        )
        ret = super().build_hooks()
        # The generators are captured after the LR scheduler and PreciseBN, just before the
        # checkpointer writes them (detectron2's hooks draw no random numbers after it), at the
        # same place in every process (the other processes have no checkpointer: before the
        # evaluation, whose collectives must not interleave with the capture's all_gather).
        self._rng_states = RNGStates(self.cfg.SOLVER.CHECKPOINT_PERIOD)
        at = next(
            i
            for i, h in enumerate(ret)
            if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))
        )
        ret.insert(at, self._rng_states)
        if self._metrics is not None:
            ret.insert(at, _MetricsAtCheckpoints(self._metrics, self.cfg.SOLVER.CHECKPOINT_PERIOD))
        return ret

    def run_step(self) -> None:
        """detectron2's step; a non-finite loss or an out-of-memory error becomes a
        :class:`~resnet_backbones.resume.TrainingError` saying what to change and where to
        resume from."""
        try:
            super().run_step()
        except FloatingPointError as e:
            raise non_finite_loss_error(self.iter, e, self._last_checkpoint()) from e
        except RuntimeError as e:
            if not _is_out_of_memory(e):
                raise
            loader = self._trainer.data_loader
            shapes = getattr(loader, "last_batch_shapes", None)
            raise out_of_memory_error(
                self.iter, e, shapes, self.cfg, self._last_checkpoint()
            ) from e

    def _last_checkpoint(self) -> str | None:
        if self.checkpointer.has_checkpoint():
            return self.checkpointer.get_checkpoint_file()
        return None

    @classmethod
    def build_optimizer(cls, cfg: CfgNode, model: torch.nn.Module) -> torch.optim.Optimizer:
        """:func:`resnet_backbones.solver.build_optimizer`: detectron2's SGD, or AdamW where
        ``SOLVER.OPTIMIZER`` says so."""
        return solver.build_optimizer(cfg, model)

    @classmethod
    def test(cls, cfg: CfgNode, model: torch.nn.Module, evaluators=None):
        """detectron2's, with the random generators of this process as they were before it:
        an evaluation during training (``TEST.EVAL_PERIOD``) must not shift the random stream
        of the iterations after it, which a resumed run would otherwise not reproduce (the
        test loader draws its worker seed from torch's generator)."""
        state = capture_rng_state()
        try:
            return super().test(cfg, model, evaluators)
        finally:
            restore_rng_state(state)

    @classmethod
    def build_lr_scheduler(cls, cfg: CfgNode, optimizer: torch.optim.Optimizer):
        """:func:`resnet_backbones.solver.build_lr_scheduler`: detectron2's schedulers, and
        ``"WarmupPlateauLR"``."""
        return solver.build_lr_scheduler(cfg, optimizer)

    @classmethod
    def resumable_train_loader(
        cls,
        cfg: CfgNode,
        dataset_dicts: list,
        mapper: Callable[[dict], Any],
        *,
        aspect_ratio_grouping: Optional[bool] = None,
    ) -> ResumableTrainLoader:
        """The :class:`~resnet_backbones.data.loader.ResumableTrainLoader` of ``cfg``'s batch
        size, seed, grouping (``aspect_ratio_grouping``, else
        ``DATALOADER.ASPECT_RATIO_GROUPING``) and workers over ``dataset_dicts`` mapped by
        ``mapper``.

        Raises:
            ConfigError: ``SOLVER.IMS_PER_BATCH`` is not a multiple of the number of processes.
        """
        world_size = comm.get_world_size()
        if cfg.SOLVER.IMS_PER_BATCH % world_size:
            raise ConfigError(
                f"SOLVER.IMS_PER_BATCH = {cfg.SOLVER.IMS_PER_BATCH} is the batch of all "
                f"{world_size} processes together and must be a multiple of {world_size}"
            )
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return ResumableTrainLoader(
            dataset_dicts,
            mapper,
            cfg.SOLVER.IMS_PER_BATCH,
            seed=seed,
            aspect_ratio_grouping=(
                cfg.DATALOADER.ASPECT_RATIO_GROUPING
                if aspect_ratio_grouping is None
                else aspect_ratio_grouping
            ),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
        )


class Trainer(ResumableTrainer):
    """The detection trainer: :class:`ResumableTrainer` with COCO evaluation on faster-coco-eval
    or pycocotools (``TEST.COCO_EVAL_IMPL``, :mod:`resnet_backbones.coco_eval`) and Pascal VOC
    evaluation (:mod:`resnet_backbones.voc_eval`), the built-in datasets,
    ``DATASETS.COCO_FORMAT`` and ``DATASETS.VOC_FORMAT`` registered, every dataset checked before
    training (:mod:`resnet_backbones.data.validate`) and read by the robust mapper, and the
    number of classes checked against the data (:func:`check_num_classes`).

    Without detectron2's compiled ops, detectron2's own fast path (``COCOeval_opt``) is
    unavailable; where faster-coco-eval is missing too, the evaluator runs plain pycocotools
    (``use_fast_impl=False``), with the same numbers.
    """

    def __init__(self, cfg: CfgNode):
        if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupPlateauLR":
            raise ConfigError(
                "SOLVER.LR_SCHEDULER_NAME 'WarmupPlateauLR' is for pretraining "
                "(tools/pretrain_net.py), whose evaluations report the validation error to it; "
                "detection: 'WarmupMultiStepLR' or 'WarmupCosineLR'"
            )
        register_config_datasets(cfg)  # before DefaultTrainer builds the data loaders
        # The evaluators are built at the first evaluation: a bad key, an evaluator type we do
        # not evaluate or annotations the VOC evaluator cannot read would stop the run then.
        for name in cfg.DATASETS.TEST:
            self._check_evaluator(cfg, name)
        # Every dataset of the run checked before the first iteration: the test sets too, which
        # detectron2 would first read after training (validate.py; cached for the loaders).
        settings = ValidationSettings.from_config(cfg)
        if settings.mode != "off":
            for name in cfg.DATASETS.TRAIN:
                validate_dataset(name, settings, is_train=True)
            for name in cfg.DATASETS.TEST:
                validate_dataset(name, settings, is_train=False)
        super().__init__(cfg)

    def build_hooks(self):
        """:class:`ResumableTrainer`'s, and the hook that reports the skipped images at the end."""
        reports = validation_reports(self.cfg, self.cfg.DATASETS.TRAIN, is_train=True)
        return super().build_hooks() + [ValidationReportHook(reports)]

    @classmethod
    def build_model(cls, cfg: CfgNode) -> torch.nn.Module:
        """detectron2's model, its RoIAlign modules swapped for
        :class:`~resnet_backbones.modeling.roi_align.FastCPUROIAlign` (the same values and
        gradients, a faster backward on the CPU) unless ``MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN``
        is False."""
        model = super().build_model(cfg)
        if cfg.MODEL.ROI_HEADS.FAST_CPU_ROI_ALIGN:
            use_fast_cpu_roi_align(model)
        return model

    @classmethod
    def build_train_loader(cls, cfg: CfgNode):
        """A :class:`~resnet_backbones.data.loader.ResumableTrainLoader` over the checked
        datasets (:func:`~resnet_backbones.data.validate.validated_dataset_dicts`) read by
        :class:`~resnet_backbones.data.mapper.RobustDatasetMapper` (detectron2's batching and
        augmentations, in an order that resumes), then :func:`check_num_classes` on them. Only
        detectron2's default ``DATALOADER.SAMPLER_TRAIN`` ("TrainingSampler") resumes exactly;
        the others fall back to detectron2's loader."""
        mapper = build_mapper(cfg, is_train=True)
        dataset_dicts = validated_dataset_dicts(cfg, cfg.DATASETS.TRAIN, is_train=True)
        if cfg.DATALOADER.SAMPLER_TRAIN != "TrainingSampler":
            logger.warning(
                "DATALOADER.SAMPLER_TRAIN = %r: using detectron2's loader, whose data order "
                "restarts at --resume (only 'TrainingSampler' resumes exactly)",
                cfg.DATALOADER.SAMPLER_TRAIN,
            )
            loader = build_detection_train_loader(cfg, mapper=mapper, dataset=dataset_dicts)
            check_num_classes(cfg, cfg.DATASETS.TRAIN)
            return loader
        check_num_classes(cfg, cfg.DATASETS.TRAIN)
        return cls.resumable_train_loader(cfg, dataset_dicts, mapper)

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str):
        """detectron2's, on the checked dataset read by :class:`RobustDatasetMapper`, then
        :func:`check_num_classes` on it."""
        loader = build_detection_test_loader(
            validated_dataset_dicts(cfg, [dataset_name], is_train=False),
            mapper=build_mapper(cfg, is_train=False),
            num_workers=cfg.DATALOADER.NUM_WORKERS,
        )
        check_num_classes(cfg, [dataset_name])
        return loader

    @classmethod
    def build_evaluator(cls, cfg: CfgNode, dataset_name: str, output_folder: str | None = None):
        """The evaluator of the dataset's ``evaluator_type``: for "coco",
        :class:`resnet_backbones.coco_eval.COCOEvaluator` of the boxes, on the implementation
        ``TEST.COCO_EVAL_IMPL`` stands for; for "pascal_voc",
        :class:`resnet_backbones.voc_eval.VOCDetectionEvaluator` (detectron2's VOC evaluator,
        with AP50 by both VOC metrics: ``AP50_voc07`` and ``AP50_area``).

        Raises:
            ConfigError: another evaluator type, or ``TEST.COCO_EVAL_IMPL`` is not valid.
            COCOEvalUnavailable: ``TEST.COCO_EVAL_IMPL`` is "faster_coco_eval", not installed.
            DatasetFormatError: a VOC test set's annotations that the VOC evaluator cannot read.
        """
        evaluator_type = cls._check_evaluator(cfg, dataset_name)
        if evaluator_type == "pascal_voc":
            return VOCDetectionEvaluator(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return COCOEvaluator(
            dataset_name,
            tasks=("bbox",),
            distributed=True,
            output_dir=output_folder,
            impl=cls._coco_eval_impl(cfg),
        )

    @classmethod
    def _check_evaluator(cls, cfg: CfgNode, dataset_name: str) -> str:
        """The ``evaluator_type`` of ``dataset_name`` (default "coco"), checked: one of
        ``EVALUATOR_TYPES``, with a valid ``TEST.COCO_EVAL_IMPL`` for "coco" and annotations
        the VOC evaluator reads for "pascal_voc" (:func:`check_voc_for_evaluation`)."""
        evaluator_type = getattr(MetadataCatalog.get(dataset_name), "evaluator_type", "coco")
        if evaluator_type not in EVALUATOR_TYPES:
            raise ConfigError(
                f"dataset {dataset_name!r} (in DATASETS.TEST) has evaluator_type "
                f"{evaluator_type!r}, which this trainer does not evaluate; valid: "
                f"{', '.join(map(repr, EVALUATOR_TYPES))}"
            )
        if evaluator_type == "coco":
            cls._coco_eval_impl(cfg)
        else:
            check_voc_for_evaluation(dataset_name)
        return evaluator_type

    @staticmethod
    def _coco_eval_impl(cfg: CfgNode) -> str:
        """``TEST.COCO_EVAL_IMPL``, checked: a bad value is a ConfigError naming the key and the
        valid values; "faster_coco_eval" where it does not import, a ``COCOEvalUnavailable``
        saying how to install it."""
        requested = cfg.TEST.get("COCO_EVAL_IMPL", "auto")
        try:  # the errors name the key
            resolve_coco_eval_impl(requested, key="TEST.COCO_EVAL_IMPL")
        except ValueError as e:  # a bad value; COCOEvalUnavailable (an ImportError) passes
            raise ConfigError(str(e)) from None
        return requested

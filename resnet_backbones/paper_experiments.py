"""The papers' experiments, one command each (``tools/paper_experiments.py``):

* ``degradation``: plain and residual networks of 20, 32, 44 and 56 layers (option A
  shortcuts) trained with one recipe; training and test error against iterations (the ResNet
  paper, Fig. 6);
* ``responses``: the standard deviation of every 3x3 layer's response, after its BN and before
  the nonlinearity and the addition, on the test set, in layer order and sorted (its Fig. 7);
* ``lesion``: a trained ResNet loses one residual block at a time (its shortcut kept), then k
  random ones; a plain network loses one layer at a time (Veit et al., 2016, Fig. 3 and 5);
* ``block_orders``: one depth in the identity-mapping paper's five orders of norm, ReLU and
  addition (its Table 2 and Fig. 4);
* ``shortcuts``: options A, B and C and the plain network at one depth on an ImageNet-style
  dataset (the ResNet paper's Table 3 in miniature).

Every network is trained by ``tools/pretrain_net.py`` (a subprocess per run, from the config the
experiment writes into ``OUTPUT/configs``; several at once on a CPU machine, see
:func:`resnet_backbones.runs.run_parallel`), with ``--resume``: an interrupted experiment goes on
where it stopped, and experiments that need the same network (``degradation``'s ResNet-56 is
``lesion``'s) share its run. The analyses load the trained ``model_final.pth`` and change the
model, never the training code (:mod:`resnet_backbones.modeling.lesion`).

Each experiment writes ``OUTPUT/<experiment>-<dataset>-<schedule>.png`` (the paper's figure),
``.json`` (every number in the figure, the schedule, the command, the wall times and the
calibration) and prints a short table; ``page`` writes ``docs/EXPERIMENTS.md`` from the JSON
files of a folder (:func:`write_page`).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from .runs import (
    REPO,
    Run,
    RunError,
    calibrate,
    format_calibration,
    format_seconds,
    read_json,
    run_parallel,
    wall_times,
    write_text,
)

__all__ = [
    "DATASETS",
    "EXPERIMENTS",
    "PAPER",
    "draw",
    "main",
    "parse_args",
    "schedule",
    "verdicts",
    "write_page",
]

EXPERIMENTS = ("degradation", "responses", "lesion", "block_orders", "shortcuts")

# The papers' numbers the figures and tables stand beside (percent error).
PAPER: dict[str, Any] = {
    # The ResNet paper, Table 6 (CIFAR-10 test error, option A; ResNet-110: best of 5 runs).
    "degradation": {
        "resnet-20": 8.75,
        "resnet-32": 7.51,
        "resnet-44": 7.17,
        "resnet-56": 6.97,
        "resnet-110": 6.43,
    },  # fmt: skip
    # The identity-mapping paper, Table 2: ResNet-110 on CIFAR-10, test error.
    "block_orders": {
        "post": 6.61,
        "bn_after_add": 8.17,
        "relu_before_add": 7.84,
        "relu_preact": 6.71,
        "preact": 6.37,
    },
    # The ResNet paper, Table 3: 34 layers on ImageNet val, 10-crop, top-1 / top-5 error.
    "shortcuts": {
        "plain": (28.54, 10.02),
        "A": (25.03, 7.76),
        "B": (24.52, 7.46),
        "C": (24.19, 7.40),
    },
}

ORDER_LABELS = {
    "post": "(a) original",
    "bn_after_add": "(b) BN after addition",
    "relu_before_add": "(c) ReLU before addition",
    "relu_preact": "(d) ReLU-only pre-activation",
    "preact": "(e) full pre-activation",
}


@dataclass(frozen=True)
class Dataset:
    """A dataset the experiments run on: its training and test datasets (registered names), the
    base config of its networks, the overrides that fit the networks to it, and which
    experiments it serves ("cifar": the CIFAR networks of 6n+2 layers, "imagenet": ResNet-18/34).
    """

    name: str
    train: str
    test: str
    kind: str
    base_config: str
    overrides: tuple[Any, ...] = ()


DATASETS: dict[str, Dataset] = {
    "digits": Dataset(
        "digits",
        "digits_train",
        "digits_val",
        "cifar",
        "configs/CIFAR/Base-CIFAR-resnet-paper.yaml",
        # The digits' own mean (grey images), as configs/digits/*.yaml; in-memory arrays.
        ("MODEL.PIXEL_MEAN", [77.879, 77.879, 77.879], "DATALOADER.NUM_WORKERS", 1),
    ),
    "cifar10": Dataset(
        "cifar10",
        "cifar10_train",
        "cifar10_test",
        "cifar",
        "configs/CIFAR/Base-CIFAR-resnet-paper.yaml",
    ),
    "shapes_cls": Dataset(
        "shapes_cls",
        "shapes_cls_train",
        "shapes_cls_val",
        "imagenet",
        "configs/quickstart/pretrain_R18_shapes_cls.yaml",
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", 64),
    ),
    # Your own ImageFolder folders (--folders TRAIN_ROOT TEST_ROOT, registered in each run by
    # tools/pretrain_net.py's --dataset), with shapes_cls's recipe: 64x64 crops.
    "folders": Dataset(
        "folders",
        "folders_train",
        "folders_test",
        "imagenet",
        "configs/quickstart/pretrain_R18_shapes_cls.yaml",
        ("MODEL.RESNETS.RES2_OUT_CHANNELS", 64),
    ),
    "imagenet": Dataset(
        "imagenet",
        "imagenet_train",
        "imagenet_val",
        "imagenet",
        "configs/ImageNet/R_34_resnet_paper.yaml",
    ),
}

# Which kind of network each experiment trains.
EXPERIMENT_KIND = {
    "degradation": "cifar",
    "responses": "cifar",
    "lesion": "cifar",
    "block_orders": "cifar",
    "shortcuts": "imagenet",
}

# Depths: the paper's, and --quick's.
DEPTHS = {
    "degradation": {"paper": [20, 32, 44, 56], "quick": [20, 32, 44, 56]},
    "responses": {"paper": [20, 56, 110], "quick": [20, 56]},
    "lesion": {"paper": [110], "quick": [56]},
    "block_orders": {"paper": [110], "quick": [20]},
    "shortcuts": {"paper": [34], "quick": [18]},
}


def schedule(dataset: str, quick: bool, depth: int) -> list[Any]:
    """The solver overrides of a run (``KEY, VALUE, ...``): the paper's recipe scaled to the
    dataset, or ``--quick``'s shorter one. Every network of an experiment gets the same, except
    the paper's warm-up of ResNet-110 (and deeper) at 0.1x the LR in the full schedule.

    Raises:
        ValueError: no such schedule (ImageNet has the paper's only).
    """
    if dataset == "cifar10":
        if quick:  # 1/16 of the paper's 64k iterations
            return ["SOLVER.MAX_ITER", 4000, "SOLVER.STEPS", (2000, 3000), "TEST.EVAL_PERIOD", 200,
                    "SOLVER.WARMUP_METHOD", "linear", "SOLVER.WARMUP_FACTOR", 0.01,
                    "SOLVER.WARMUP_ITERS", 200]  # fmt: skip
        out = ["TEST.EVAL_PERIOD", 1000]  # Base-CIFAR: 64k, /10 at 32k and 48k
        if depth >= 110:
            out += ["SOLVER.WARMUP_METHOD", "constant", "SOLVER.WARMUP_FACTOR", 0.1,
                    "SOLVER.WARMUP_ITERS", 400]  # fmt: skip
        return out
    if dataset == "digits":
        if quick:
            # 240 iterations of 64 (11 epochs of 1442 images) at 0.05 (0.1 x 64 / 128), /10 at
            # half and three quarters, a 40-iteration linear warm-up: without it, a 56-layer
            # network stays near chance for the first 100 iterations at this LR.
            return ["SOLVER.IMS_PER_BATCH", 64, "SOLVER.BASE_LR", 0.05, "SOLVER.MAX_ITER", 240,
                    "SOLVER.STEPS", (120, 180), "SOLVER.WARMUP_METHOD", "linear",
                    "SOLVER.WARMUP_FACTOR", 0.01, "SOLVER.WARMUP_ITERS", 40,
                    "TEST.EVAL_PERIOD", 20]  # fmt: skip
        # configs/digits/*.yaml: 600 iterations of 128 (53 epochs), /10 at 300 and 450.
        out = ["SOLVER.MAX_ITER", 600, "SOLVER.STEPS", (300, 450), "TEST.EVAL_PERIOD", 20]
        if depth >= 110:  # the paper's 400 of 64k iterations at 0.1x, about 1 epoch: 12 here
            out += ["SOLVER.WARMUP_METHOD", "constant", "SOLVER.WARMUP_FACTOR", 0.1,
                    "SOLVER.WARMUP_ITERS", 12]  # fmt: skip
        return out
    if dataset in ("shapes_cls", "folders"):
        # configs/quickstart/pretrain_R18_shapes_cls.yaml's recipe (batch 64, LR 0.01, cosine);
        # the paper's schedule is not scalable to 2 CPU cores, so "paper" is twice as long.
        iters = 200 if quick else 600
        return ["SOLVER.MAX_ITER", iters, "TEST.EVAL_PERIOD", iters // 4]
    if dataset == "imagenet":
        if quick:
            raise ValueError("imagenet has the paper's schedule only (no --quick)")
        return []
    raise ValueError(f"no schedule for dataset {dataset!r}; valid: {sorted(DATASETS)}")


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Network:
    """One network an experiment trains: its run name and the overrides that make it."""

    name: str
    depth: int
    overrides: tuple[Any, ...]


def cifar_network(depth: int, shortcut: str = "A", order: str = "post") -> Network:
    """Plain (``shortcut="none"``) or residual CIFAR network of ``depth`` layers; the run name
    says the shortcut where it is not option A, and the order where it is not "post"."""
    name = f"plain-{depth}" if shortcut == "none" else f"resnet-{depth}"
    if shortcut not in ("A", "none"):
        name += f"-{shortcut}"
    if order != "post":
        name += f"-{order}"
    opts = ("MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.SHORTCUT", shortcut,
            "MODEL.RESNETS.BLOCK_ORDER", order)  # fmt: skip
    return Network(name, depth, opts)


def imagenet_network(depth: int, shortcut: str) -> Network:
    name = f"plain-{depth}" if shortcut == "none" else f"resnet-{depth}-{shortcut}"
    return Network(name, depth, ("MODEL.RESNETS.DEPTH", depth, "MODEL.RESNETS.SHORTCUT", shortcut))


def networks(experiment: str, depths: Sequence[int]) -> list[Network]:
    """The networks ``experiment`` trains at ``depths``."""
    if experiment == "degradation":
        return [cifar_network(d, s) for s in ("none", "A") for d in depths]
    if experiment == "responses":
        plain = [cifar_network(d, "none") for d in depths if d < 110]  # as the paper's Fig. 7
        return plain + [cifar_network(d, "A") for d in depths]
    if experiment == "lesion":
        # The plain network of Veit et al.'s comparison is at most 56 layers (degradation's).
        return [cifar_network(depths[0], "A"), cifar_network(min(depths[0], 56), "none")]
    if experiment == "block_orders":
        # Projection (B) shortcuts where dimensions grow: option A is not defined with the
        # pre-activation order (modeling/spec.py refuses it), and one shortcut serves all five.
        return [cifar_network(depths[0], "B", order) for order in ORDER_LABELS]
    if experiment == "shortcuts":
        return [imagenet_network(depths[0], s) for s in ("none", "A", "B", "C")]
    raise ValueError(f"unknown experiment {experiment!r}; valid: {', '.join(EXPERIMENTS)}")


class Experiment:
    """What every experiment shares: its dataset and schedule, the folders, the configs it
    writes, and the runs it trains (or finds trained)."""

    def __init__(self, name: str, args: argparse.Namespace):
        self.name = name
        self.args = args
        self.dataset = DATASETS[args.dataset]
        self.schedule_name = "quick" if args.quick else "paper"
        tag = f"{args.dataset}-{self.schedule_name}"
        self.output = os.path.abspath(args.output)
        self.workdir = os.path.join(os.path.abspath(args.workdir or self.output), "runs", tag)
        self.config_dir = os.path.join(self.output, "configs", tag)
        self.stem = os.path.join(self.output, f"{name}-{tag}")
        self.depths = list(args.depths or DEPTHS[name][self.schedule_name])

    def config(self, network: Network):
        """The full config of ``network``'s run (loaded and checked as the trainer loads it):
        the dataset's base config, the network, the schedule, seed 0 (every network of an
        experiment starts from the same seed), the CPU where CUDA is missing, a checkpoint every
        quarter of the run (or as often as the base config says, if that is more often); then the command line's ``KEY VALUE`` overrides."""
        import torch

        from .engine import load_config

        opts = [
            *self.dataset.overrides,
            "DATASETS.TRAIN", (self.dataset.train,),
            "DATASETS.TEST", (self.dataset.test,),
            "MODEL.DEVICE", "cuda" if torch.cuda.is_available() else "cpu",
            "SEED", 0,
            *network.overrides,
            *schedule(self.dataset.name, self.args.quick, network.depth),
            "OUTPUT_DIR", self.run_dir(network),
        ]  # fmt: skip
        opts = [v if isinstance(v, str) else repr(v) for v in opts]
        cfg = load_config(os.path.join(REPO, self.dataset.base_config), opts + self.args.opts)
        if "SOLVER.CHECKPOINT_PERIOD" not in self.args.opts[::2]:
            period = max(1, cfg.SOLVER.MAX_ITER // 4)
            cfg.SOLVER.CHECKPOINT_PERIOD = min(cfg.SOLVER.CHECKPOINT_PERIOD, period)
        return cfg

    def run_dir(self, network: Network) -> str:
        return os.path.join(self.workdir, network.name)

    def config_path(self, network: Network) -> str:
        return os.path.join(self.config_dir, f"{network.name}.yaml")

    def train(self, nets: Sequence[Network]) -> dict[str, Any]:
        """Trains the networks not trained yet (``--jobs`` at a time); returns their configs by
        name. A run that has a checkpoint (finished or not) and was trained with another config
        (its own ``OUTPUT_DIR/config.yaml``) is refused, naming the keys: its results would not
        be this experiment's. ``OUTPUT_DIR``, ``MODEL.DEVICE`` and keys only one of the two
        configs has (a newer version's) are not compared.

        Raises:
            ValueError: a run was trained with another config.
        """
        configs, todo = {}, []
        for net in nets:
            cfg = self.config(net)
            configs[net.name] = cfg
            text = cfg.dump()
            path = self.config_path(net)
            run_dir = self.run_dir(net)
            finished = os.path.isfile(os.path.join(run_dir, "model_final.json"))
            saved = os.path.join(run_dir, "config.yaml")
            started = finished or os.path.isfile(os.path.join(run_dir, "last_checkpoint"))
            if started and os.path.isfile(saved):
                with open(saved, encoding="utf-8") as f:
                    difference = _config_difference(f.read(), text)
                if difference:
                    raise ValueError(
                        f"run {net.name!r} in {run_dir} was trained with another config "
                        f"({difference}); use another --workdir, or delete that run to train it "
                        "again"
                    )
            write_text(path, text)
            if not finished:
                iters = cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH
                folders = []
                for name, root in zip(
                    (self.dataset.train, self.dataset.test), self.args.folders or ()
                ):
                    folders += ["--dataset", name, os.path.abspath(root)]
                todo.append(
                    Run(
                        net.name,
                        [sys.executable, os.path.join(REPO, "tools/pretrain_net.py"), "--config",
                         path, "--resume", *folders],
                        self.run_dir(net),
                        os.path.join(self.workdir, f"{net.name}.log"),
                        cost=net.depth * iters,
                    )
                )  # fmt: skip
        if todo:
            todo.sort(key=lambda r: -r.cost)  # the longest first: the last to finish ends sooner
            jobs = self.args.jobs or _default_jobs(len(todo), configs)
            print(f"Training {len(todo)} of {len(nets)} networks, {jobs} at a time "
                  f"({', '.join(r.name for r in todo)})", flush=True)  # fmt: skip
            run_parallel(todo, jobs)
        return configs

    def meta(self, configs: dict[str, Any], started: float, calibration: dict) -> dict[str, Any]:
        """The record every JSON carries: the dataset, schedule, command, configs, wall times."""
        first = next(iter(configs.values()))
        return {
            "experiment": self.name,
            "dataset": self.dataset.name,
            "train_dataset": self.dataset.train,
            "test_dataset": self.dataset.test,
            "schedule": self.schedule_name,
            "solver": {
                "iterations": int(first.SOLVER.MAX_ITER),
                "batch": int(first.SOLVER.IMS_PER_BATCH),
                "base_lr": float(first.SOLVER.BASE_LR),
                "lr_scheduler": first.SOLVER.LR_SCHEDULER_NAME,
                "steps": list(first.SOLVER.STEPS),
                # Per run: the paper warms up ResNet-110 (and deeper) only.
                "warmup_iters": {n: int(c.SOLVER.WARMUP_ITERS) for n, c in configs.items()},
                "eval_period": int(first.TEST.EVAL_PERIOD),
            },
            "depths": self.depths,
            "folders": [os.path.abspath(f) for f in self.args.folders or ()],
            "command": "python tools/paper_experiments.py " + " ".join(self.args.argv),
            "configs": {
                n: os.path.relpath(self.config_path(Network(n, 0, ())), self.output)
                for n in configs
            },
            "train_wall_s": {
                n: sum(wall_times(self.run_dir(Network(n, 0, ())))) or None for n in configs
            },
            "wall_s": time.time() - started,
            "calibration_s": calibration,
            "date": time.strftime("%Y-%m-%d", time.gmtime()),
            "device": first.MODEL.DEVICE,
            "cpus": os.cpu_count(),
        }


def _default_jobs(runs: int, configs: dict[str, Any]) -> int:
    if any(c.MODEL.DEVICE.startswith("cuda") for c in configs.values()):
        return 1
    return max(1, min(runs, os.cpu_count() or 1))


def _config_difference(old: str, new: str) -> str:
    """The keys whose values differ between two dumped configs (``"KEY: old -> new"``; the first
    three), or "" where none does."""
    import yaml

    def flat(tree: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(tree, dict):
            return {prefix[:-1]: tree}
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out.update(flat(v, f"{prefix}{k}."))
        return out

    a, b = flat(yaml.safe_load(old)), flat(yaml.safe_load(new))
    ignored = {"OUTPUT_DIR", "MODEL.DEVICE"}
    keys = sorted(k for k in set(a) & set(b) if k not in ignored and a[k] != b[k])
    if not keys:
        return ""
    shown = [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in keys[:3]]
    return "; ".join(shown) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


# --------------------------------------------------------------------------------------------
# Reading the runs
# --------------------------------------------------------------------------------------------
def error_curves(metrics_json: str) -> dict[str, list[float]]:
    """From a pretraining run's ``metrics.json``: the iterations done at each evaluation, the test
    error then (:func:`resnet_backbones.visualize.evaluation_errors`) and the training error
    logged with it (the top-1 error of the augmented training batches, median of the 20-iteration
    logging window: the thin curves of the ResNet paper's figures), in percent."""
    from .visualize import evaluation_errors, read_metrics

    records = read_metrics(metrics_json)
    train = {
        int(r["iteration"]) + 1: float(r["train_error"]) for r in records if "train_error" in r
    }
    iterations, test = evaluation_errors(records)
    train_at = []
    for it in iterations:
        before = [k for k in train if k <= it]
        train_at.append(train[max(before)] if before else float("nan"))
    return {"iterations": iterations, "train_error": train_at, "test_error": test}


def final_results(run_dir: str) -> dict[str, float]:
    """The final top-1/top-5 error (percent) of a finished run (its ``eval_results.json``)."""
    record = read_json(os.path.join(run_dir, "eval_results.json"))
    if not record:
        raise FileNotFoundError(f"{run_dir}/eval_results.json: the run has no evaluation")
    return {"top1_error": 100.0 - record["top1"], "top5_error": 100.0 - record["top5"]}


def load_trained(cfg, run_dir: str):
    """The classifier of ``cfg`` with the weights of the run's ``model_final.pth``, in eval mode,
    and the batches of its test set (mapped once, reused by every evaluation)."""
    import torch

    from .data import register_datasets
    from .pretrain import ClassificationTrainer, build_classification_test_loader
    from .weights.read import read_file

    register_datasets()
    model = ClassificationTrainer.build_model(cfg)
    state = read_file(os.path.join(run_dir, "model_final.pth"))["model"]
    model.load_state_dict({k: torch.as_tensor(v) for k, v in state.items()})
    model.eval()
    batches = list(build_classification_test_loader(cfg, cfg.DATASETS.TEST[0]))
    return model, batches


class EvaluationCache:
    """Results of a run's analyses, kept in ``OUTPUT_DIR/<name>.json`` beside the checkpoint
    they were computed from (its SHA-256 recorded: another checkpoint starts a new cache), so
    that an interrupted analysis goes on where it stopped. Written after every new result."""

    def __init__(self, run_dir: str, name: str):
        self.path = os.path.join(run_dir, f"{name}.json")
        final = read_json(os.path.join(run_dir, "model_final.json")) or {}
        self.sha = final.get("sha256", "")
        cached = read_json(self.path) or {}
        self.results = cached.get("results", {}) if cached.get("sha256") == self.sha else {}

    def get(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self.results:
            self.results[key] = compute()
            write_text(self.path, json.dumps({"sha256": self.sha, "results": self.results}))
        return self.results[key]


def test_error(model, batches: Sequence[list]) -> float:
    """Top-1 error (percent) of ``model`` on the mapped test batches."""
    import torch

    from .pretrain import ClassificationEvaluator

    evaluator = ClassificationEvaluator("test", distributed=False)
    evaluator.reset()
    with torch.no_grad():
        for batch in batches:
            evaluator.process(batch, model(batch))
    return 100.0 - evaluator.evaluate()["classification"]["top1"]


# --------------------------------------------------------------------------------------------
# The experiments
# --------------------------------------------------------------------------------------------
def run_degradation(exp: Experiment) -> dict[str, Any]:
    nets = networks("degradation", exp.depths)
    configs = exp.train(nets)
    runs = {n.name: error_curves(os.path.join(exp.run_dir(n), "metrics.json")) for n in nets}
    return {"runs": runs}, configs


def run_responses(exp: Experiment) -> dict[str, Any]:
    from .modeling.lesion import layer_responses

    nets = networks("responses", exp.depths)
    configs = exp.train(nets)
    runs = {}
    for n in nets:

        def responses(n=n) -> list[float]:
            model, batches = load_trained(configs[n.name], exp.run_dir(n))
            return [float(std) for _, std in layer_responses(model, batches)]

        runs[n.name] = EvaluationCache(exp.run_dir(n), "responses").get("channel", responses)
        print(f"  {n.name}: {len(runs[n.name])} layers", flush=True)
    return {"runs": runs}, configs


def run_lesion(exp: Experiment) -> dict[str, Any]:
    from .modeling.lesion import delete_blocks, plain_layers, random_deletions, residual_blocks

    nets = networks("lesion", exp.depths)
    configs = exp.train(nets)
    out: dict[str, Any] = {}
    for n in nets:
        model, batches = load_trained(configs[n.name], exp.run_dir(n))
        units = residual_blocks(model) if n.name.startswith("resnet") else plain_layers(model)
        names = [name for name, _ in units]
        if not names:
            raise ValueError(f"{n.name} has nothing to delete")
        cache = EvaluationCache(exp.run_dir(n), "lesion")

        def error(deleted: Sequence[str], model=model, batches=batches, cache=cache) -> float:
            key = " ".join(deleted) or "(none)"
            return cache.get(key, lambda: test_error(delete_blocks(model, deleted), batches))

        baseline = error([])
        print(f"  {n.name}: baseline error {baseline:.2f}%, deleting each of {len(names)} "
              f"{'blocks' if n.name.startswith('resnet') else 'layers'}", flush=True)  # fmt: skip
        single = [error([name]) for name in names]
        ks = list(range(1, max(1, len(names) // 2) + 1))
        per_k = []
        for k in ks:
            draws = random_deletions(names, k, exp.args.draws, seed=k)
            per_k.append([error(d) for d in draws])
        out[n.name] = {
            "baseline_error": baseline,
            "deleted": names,
            "single": single,
            "k": ks,
            "error_vs_k": [statistics.fmean(v) for v in per_k],
            "error_vs_k_std": [statistics.pstdev(v) for v in per_k],
            "draws": per_k,
        }
    return out, configs


def run_block_orders(exp: Experiment) -> dict[str, Any]:
    nets = networks("block_orders", exp.depths)
    configs = exp.train(nets)
    runs = {}
    for order, n in zip(ORDER_LABELS, nets):
        curves = error_curves(os.path.join(exp.run_dir(n), "metrics.json"))
        runs[order] = {
            "network": n.name,
            "test_error": curves["test_error"][-1],
            "train_error": curves["train_error"][-1],
            "paper_error": PAPER["block_orders"][order],
        }
    return {"runs": runs}, configs


def run_shortcuts(exp: Experiment) -> dict[str, Any]:
    nets = networks("shortcuts", exp.depths)
    configs = exp.train(nets)
    runs = {}
    for kind, n in zip(("plain", "A", "B", "C"), nets):
        final = final_results(exp.run_dir(n))
        runs[kind] = {
            "network": n.name,
            **final,
            "paper_top1_error": PAPER["shortcuts"][kind][0],
            "paper_top5_error": PAPER["shortcuts"][kind][1],
        }
    return {"runs": runs}, configs


RUNNERS: dict[str, Callable[[Experiment], Any]] = {
    "degradation": run_degradation,
    "responses": run_responses,
    "lesion": run_lesion,
    "block_orders": run_block_orders,
    "shortcuts": run_shortcuts,
}


# --------------------------------------------------------------------------------------------
# Figures: drawn from the JSON alone, so that the PNG shows exactly its numbers
# --------------------------------------------------------------------------------------------
def _depth_colors(names: Sequence[str]) -> dict[int, str]:
    depths = sorted({int(n.split("-")[1]) for n in names})
    palette = ["tab:orange", "tab:cyan", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    return {d: palette[i % len(palette)] for i, d in enumerate(depths)}


def _title(data: dict, what: str) -> str:
    meta = data.get("meta", {})
    return f"{what} ({meta.get('dataset', '?')}, {meta.get('schedule', '?')} schedule)"


def draw_degradation(data: dict):
    from matplotlib.figure import Figure

    runs = data["runs"]
    colors = _depth_colors(list(runs))
    fig = Figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, kind, label in ((axes[0], "plain", "plain"), (axes[1], "resnet", "ResNet")):
        for name, run in runs.items():
            if not name.startswith(kind + "-"):
                continue
            color = colors[int(name.split("-")[1])]
            ax.plot(run["iterations"], run["train_error"], "--", lw=1, color=color)
            ax.plot(run["iterations"], run["test_error"], "-", lw=2.2, color=color,
                    label=f"{label}-{name.split('-')[1]}")  # fmt: skip
        ax.set_xlabel("iter.")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, title="bold: test, dashed: train", title_fontsize=8)
    axes[0].set_ylabel("error (%)")
    fig.suptitle(_title(data, "Training on plain and residual networks"), fontsize=10)
    fig.tight_layout()
    return fig


def draw_responses(data: dict):
    from matplotlib.figure import Figure

    runs = data["runs"]
    colors = _depth_colors(list(runs))
    fig = Figure(figsize=(8, 6))
    top, bottom = fig.subplots(2, 1)
    for name, stds in runs.items():
        style = "--" if name.startswith("plain") else "-"
        color = colors[int(name.split("-")[1])]
        label = name.replace("resnet", "ResNet")
        top.plot(range(1, len(stds) + 1), stds, style, color=color, lw=1.5, label=label)
        bottom.plot(range(1, len(stds) + 1), sorted(stds, reverse=True), style, color=color,
                    lw=1.5, label=label)  # fmt: skip
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False, ncol=2)
    fig.suptitle(_title(data, "Standard deviations of the 3x3 layers' responses"), fontsize=10)
    fig.tight_layout()
    return fig


def draw_lesion(data: dict):
    from matplotlib.figure import Figure

    nets = {k: v for k, v in data.items() if k != "meta"}
    fig = Figure(figsize=(11, 4.2))
    left, right = fig.subplots(1, 2)
    for name, run in nets.items():
        color = "tab:blue" if name.startswith("resnet") else "tab:red"
        label = name.replace("resnet", "ResNet")
        xs = list(range(1, len(run["single"]) + 1))
        left.plot(xs, run["single"], "o-", ms=3, color=color, lw=1.2,
                  label=f"{label}, one {'block' if name.startswith('resnet') else 'layer'} deleted")  # fmt: skip
        left.axhline(run["baseline_error"], color=color, ls=":", lw=1)
        right.errorbar(run["k"], run["error_vs_k"], yerr=run["error_vs_k_std"], fmt="o-",
                       ms=3, color=color, capsize=2, label=label)  # fmt: skip
    left.set_xlabel("deleted block (layer for the plain net), in forward order")
    left.set_ylabel("test error (%)")
    right.set_xlabel("number of random blocks (layers) deleted, k")
    right.set_ylabel("test error (%), mean and std of the draws")
    for ax in (left, right):
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, frameon=False)
    fig.suptitle(_title(data, "Lesion study: dotted, the intact network"), fontsize=10)
    fig.tight_layout()
    return fig


def _bars(ax, labels: Sequence[str], ours: Sequence[float], paper: Sequence[float], what: str):
    import numpy as np

    x = np.arange(len(labels))
    ax.bar(x - 0.2, ours, 0.4, label=f"ours ({what})", color="tab:blue")
    ax.bar(x + 0.2, paper, 0.4, label="the paper", color="tab:gray")
    for xi, v in zip(x, ours):
        ax.annotate(f"{v:.2f}", (xi - 0.2, v), ha="center", va="bottom", fontsize=7)
    for xi, v in zip(x, paper):
        ax.annotate(f"{v:.2f}", (xi + 0.2, v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, frameon=False)


def draw_block_orders(data: dict):
    from matplotlib.figure import Figure

    runs = data["runs"]
    fig = Figure(figsize=(10, 4.2))
    ax = fig.subplots()
    labels = [ORDER_LABELS[o].replace(" ", "\n", 1) for o in runs]
    _bars(ax, labels, [r["test_error"] for r in runs.values()],
          [r["paper_error"] for r in runs.values()], data.get("meta", {}).get("dataset", ""))  # fmt: skip
    ax.set_title(_title(data, "Block orders: test error (the paper: ResNet-110, CIFAR-10)"),
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def draw_shortcuts(data: dict):
    from matplotlib.figure import Figure

    runs = data["runs"]
    fig = Figure(figsize=(7, 4.2))
    ax = fig.subplots()
    labels = ["plain" if k == "plain" else f"option {k}" for k in runs]
    _bars(ax, labels, [r["top1_error"] for r in runs.values()],
          [r["paper_top1_error"] for r in runs.values()], data.get("meta", {}).get("dataset", ""))  # fmt: skip
    ax.set_title(_title(data, "Shortcuts: top-1 val error (the paper: 34 layers, ImageNet)"),
                 fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


DRAW: dict[str, Callable[[dict], Any]] = {
    "degradation": draw_degradation,
    "responses": draw_responses,
    "lesion": draw_lesion,
    "block_orders": draw_block_orders,
    "shortcuts": draw_shortcuts,
}


def draw(experiment: str, data: dict):
    """The matplotlib Figure of ``experiment`` from its JSON ``data``, as written to its PNG."""
    return DRAW[experiment](data)


def save_png(fig, path: str) -> str:
    """Writes ``fig`` to ``path`` (atomically; metadata without the matplotlib version, so that the
    same numbers give the same file)."""
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    from .utils import atomic_write

    with atomic_write(path) as f:
        f.write(buffer.getvalue())
    return path


# --------------------------------------------------------------------------------------------
# Tables and verdicts
# --------------------------------------------------------------------------------------------
def _f(value: Optional[float], digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def table(experiment: str, data: dict) -> str:
    """The short markdown table of ``experiment``'s results (printed, and in the page)."""
    if experiment == "degradation":
        rows = ["| network | train error (%) | test error (%) | paper, CIFAR-10 test (%) |",
                "| --- | --- | --- | --- |"]  # fmt: skip
        for name, run in data["runs"].items():
            paper = PAPER["degradation"].get(name)
            rows.append(f"| {name} | {_f(run['train_error'][-1])} | "
                        f"{_f(run['test_error'][-1])} | {_f(paper)} |")  # fmt: skip
        return "\n".join(rows)
    if experiment == "responses":
        rows = ["| network | 3x3 layers | mean std | median std | max std |",
                "| --- | --- | --- | --- | --- |"]  # fmt: skip
        for name, stds in data["runs"].items():
            rows.append(f"| {name} | {len(stds)} | {_f(statistics.fmean(stds))} | "
                        f"{_f(statistics.median(stds))} | {_f(max(stds))} |")  # fmt: skip
        return "\n".join(rows)
    if experiment == "lesion":
        rows = ["| network | intact error (%) | one deleted: median / max (%) | "
                "k = 1 / half: mean (%) |", "| --- | --- | --- | --- |"]  # fmt: skip
        for name, run in data.items():
            if name == "meta":
                continue
            rows.append(f"| {name} | {_f(run['baseline_error'])} | "
                        f"{_f(statistics.median(run['single']))} / {_f(max(run['single']))} | "
                        f"{_f(run['error_vs_k'][0])} / {_f(run['error_vs_k'][-1])} |")  # fmt: skip
        return "\n".join(rows)
    if experiment == "block_orders":
        rows = ["| order | network | test error (%) | paper: ResNet-110, CIFAR-10 (%) |",
                "| --- | --- | --- | --- |"]  # fmt: skip
        for order, run in data["runs"].items():
            rows.append(f"| {ORDER_LABELS[order]} | {run['network']} | "
                        f"{_f(run['test_error'])} | {_f(run['paper_error'])} |")  # fmt: skip
        return "\n".join(rows)
    if experiment == "shortcuts":
        # Top-1 only: with 5 classes or fewer (shapes_cls has 4) top-5 error is 0 (the JSON
        # has it).
        rows = ["| shortcuts | network | top-1 val error (%) | "
                "paper: 34 layers, ImageNet, 10-crop, top-1 (%) |", "| --- | --- | --- | --- |"]  # fmt: skip
        for kind, run in data["runs"].items():
            rows.append(f"| {kind} | {run['network']} | {_f(run['top1_error'])} | "
                        f"{_f(run['paper_top1_error'])} |")  # fmt: skip
        return "\n".join(rows)
    raise ValueError(f"unknown experiment {experiment!r}")


def _agree(ok: bool) -> str:
    return "**agrees**" if ok else "**does not agree**"


def _rank_correlation(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (no ties expected: the ranks of equal values are their
    order)."""

    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for rank, i in enumerate(order):
            out[i] = float(rank)
        return out

    return statistics.correlation(ranks(xs), ranks(ys))


def _lower(ours: float, other: float, tolerance: float = 0.02) -> str:
    """The claim "ours is lower than other": agrees, does not agree, or neither where the two
    are within ``tolerance`` (relative) of each other."""
    if abs(ours - other) <= tolerance * abs(other):
        return f"**no clear difference** (within {tolerance:.0%})"
    return _agree(ours < other)


def verdicts(experiment: str, data: dict) -> list[str]:
    """Where the miniature agrees with the paper's claim and where it does not, each claim
    checked on the numbers of ``data`` (one sentence each)."""
    out = []
    if experiment == "degradation":
        runs = data["runs"]
        for kind in ("plain", "resnet"):
            names = sorted((n for n in runs if n.startswith(kind + "-")),
                           key=lambda n: int(n.split("-")[1]))  # fmt: skip
            if len(names) < 2:
                continue
            shallow, deep = names[0], names[-1]
            tr = (runs[shallow]["train_error"][-1], runs[deep]["train_error"][-1])
            te = (runs[shallow]["test_error"][-1], runs[deep]["test_error"][-1])
            if kind == "plain":
                claim = (
                    f"the deeper plain network trains worse (Fig. 6, left): {deep} ends with "
                    f"training error {_f(tr[1])}% against {shallow}'s {_f(tr[0])}% "
                    f"(test {_f(te[1])}% against {_f(te[0])}%)"
                )
                out.append(f"Degradation: {claim}: {_agree(tr[1] > tr[0])}.")
            else:
                claim = (
                    f"the deeper residual network is better (Fig. 6, right): {deep} ends with "
                    f"test error {_f(te[1])}% against {shallow}'s {_f(te[0])}% "
                    f"(training {_f(tr[1])}% against {_f(tr[0])}%)"
                )
                out.append(f"Residual learning: {claim}: {_agree(te[1] < te[0])}.")
        for d in sorted({int(n.split("-")[1]) for n in runs}):
            p, r = runs.get(f"plain-{d}"), runs.get(f"resnet-{d}")
            if p and r:
                out.append(f"At {d} layers the residual network's training error is "
                           f"{_f(r['train_error'][-1])}% against the plain one's "
                           f"{_f(p['train_error'][-1])}%: "
                           f"{_agree(r['train_error'][-1] < p['train_error'][-1])} with the paper "
                           "(residual lower).")  # fmt: skip
        return out
    if experiment == "responses":
        runs = data["runs"]
        mean = {n: statistics.fmean(v) for n, v in runs.items()}
        for d in sorted({int(n.split("-")[1]) for n in runs}):
            p, r = f"plain-{d}", f"resnet-{d}"
            if p in mean and r in mean:
                out.append(f"Residual functions respond more weakly than plain layers at {d} "
                           f"layers: mean std {_f(mean[r], 3)} against {_f(mean[p], 3)}: "
                           f"{_lower(mean[r], mean[p])}.")  # fmt: skip
        res = sorted(
            (n for n in runs if n.startswith("resnet")), key=lambda n: int(n.split("-")[1])
        )
        if len(res) >= 2:
            out.append(f"The deeper ResNet has smaller responses ({res[-1]} mean std "
                       f"{_f(mean[res[-1]], 3)}, {res[0]} {_f(mean[res[0]], 3)}): "
                       f"{_lower(mean[res[-1]], mean[res[0]])}.")  # fmt: skip
        return out
    if experiment == "lesion":
        res = next((v for k, v in data.items() if k.startswith("resnet")), None)
        plain = next((v for k, v in data.items() if k.startswith("plain")), None)
        if res:
            med = statistics.median(res["single"])
            out.append(f"Deleting one block of the ResNet costs little (Veit et al.: "
                       f"most single deletions barely move the error): median error "
                       f"{_f(med)}% against {_f(res['baseline_error'])}% intact, "
                       f"worst {_f(max(res['single']))}%: "
                       f"{_agree(med - res['baseline_error'] < 5.0)} (within 5 points).")  # fmt: skip
            errors = res["error_vs_k"]
            # "Smoothly": rising with k (rank correlation at least 0.8, draws are noisy) and
            # no step between consecutive k above 25 points (a cliff).
            jump = max((b - a for a, b in zip(errors, errors[1:])), default=0.0)
            rising = len(errors) < 3 or _rank_correlation(res["k"], errors) >= 0.8
            out.append(f"The ResNet's error grows smoothly with the number of deleted blocks "
                       f"(from {_f(errors[0])}% at k = 1 to {_f(errors[-1])}% at k = "
                       f"{res['k'][-1]}, at most {_f(jump)} points from one k to the next): "
                       f"{_agree(rising and jump <= 25.0)}.")  # fmt: skip
        if plain:
            med = statistics.median(plain["single"])
            out.append(f"Deleting one layer of the plain network is fatal: median error "
                       f"{_f(med)}% against {_f(plain['baseline_error'])}% intact: "
                       f"{_agree(med > 50.0)} (above 50%).")  # fmt: skip
        return out
    if experiment == "block_orders":
        runs = data["runs"]
        best = min(runs, key=lambda o: runs[o]["test_error"])
        worst = max(runs, key=lambda o: runs[o]["test_error"])
        out.append(f"Full pre-activation (e) is the best order (the paper: 6.37% against 6.61% "
                   f"for the original): here the best is {ORDER_LABELS[best]}: "
                   f"{_agree(best == 'preact')}.")  # fmt: skip
        out.append(f"BN after addition (b) is the worst (the paper: 8.17%): here the worst is "
                   f"{ORDER_LABELS[worst]}: {_agree(worst == 'bn_after_add')}.")  # fmt: skip
        return out
    if experiment == "shortcuts":
        runs = data["runs"]
        e = {k: runs[k]["top1_error"] for k in runs}
        out.append(f"Every residual network beats the plain one (the paper: 28.54% plain, "
                   f"24.19-25.03% with shortcuts): plain {_f(e['plain'])}%, A {_f(e['A'])}%, "
                   f"B {_f(e['B'])}%, C {_f(e['C'])}%: "
                   f"{_agree(max(e['A'], e['B'], e['C']) < e['plain'])}.")  # fmt: skip
        out.append(f"Projections help a little, C <= B <= A (the paper: 24.19 <= 24.52 <= 25.03): "
                   f"{_agree(e['C'] <= e['B'] <= e['A'])}.")  # fmt: skip
        return out
    raise ValueError(f"unknown experiment {experiment!r}")


# --------------------------------------------------------------------------------------------
# The page
# --------------------------------------------------------------------------------------------
PAGE_INTRO = """\
# The papers' experiments

Generated by `python tools/paper_experiments.py page --output {folder} --page {page}` from the
JSON files in `{folder}/` (a test fails when this page is stale). Each section says how its
numbers were obtained: the dataset, the schedule, the command, the wall time beside the
calibration (detectron2's R-101 forward at 800x1216, timed in the same command: a time means
something only next to it), and where the miniature agrees with the paper and where it does not.
The papers' numbers are CIFAR-10 and ImageNet; ours are a scaled-down schedule on another
dataset, so only the directions of the effects compare, not the values.
"""

SECTION_TITLES = {
    "degradation": "Degradation: plain against residual networks (the ResNet paper, Fig. 6)",
    "responses": "Layer responses (the ResNet paper, Fig. 7)",
    "lesion": "Lesion study (Veit et al., 2016)",
    "block_orders": "Block orders (the identity-mapping paper, Table 2 and Fig. 4)",
    "shortcuts": "Shortcut options A, B and C (the ResNet paper, Table 3, in miniature)",
}


# How to read each experiment's numbers (what is measured, and how our setup differs from the
# paper's): facts of the method, true whatever the numbers come out as.
NOTES = {
    "degradation": "The training error is that of the augmented training batches (the median of "
    "the 20-iteration logging window), as the paper's thin curves; the test error is the whole "
    "test set at each evaluation. The paper trains 64k iterations on CIFAR-10.",
    "responses": "The statistic: for each 3x3 conv (the stem's included), the standard deviation "
    "of each channel of its response after its BN, over the test images and positions, averaged "
    "over the channels (eval mode: the BN's running statistics). Such a channel's std is about "
    "|gamma| times its batch std over its running std, and gamma starts at 1: a short schedule "
    "leaves every layer near 1, and only long training (the paper's 64k iterations) lets the "
    "residual functions' responses shrink below the plain layers'.",
    "lesion": "A deleted residual block is replaced by its shortcut alone (the identity, or the "
    "projection of a block that changes shape); a deleted plain layer (a 3x3 conv with its BN) by "
    "the identity, where its input and output shapes agree (the two convs that change shape "
    "cannot be deleted). k random blocks: mean and std over the draws. The intact network's "
    "error is recomputed on the same test set.",
    "block_orders": "All five orders use projection (option B) shortcuts where dimensions grow: "
    "option A is not defined with full pre-activation. One run each; the paper's numbers are "
    "ResNet-110 on CIFAR-10, where the orders differ by 0.1 to 1.8 points.",
    "shortcuts": "One run each on shapes_cls (4 classes of 64x64 crops), tested on the centre "
    "crop; the paper's numbers are 34-layer networks on ImageNet with 10-crop testing.",
}


def _describe(meta: dict, folder: str) -> list[str]:
    s = meta["solver"]
    steps = ", ".join(str(x) for x in s["steps"]) or "none"
    schedule = s["lr_scheduler"] + ("" if "Cosine" in s["lr_scheduler"] else f", steps {steps}")
    warmups = s["warmup_iters"]
    if isinstance(warmups, int):  # one for every run (the first JSON files)
        warmups = {n: warmups for n in meta["configs"]}
    if len(set(warmups.values())) == 1:
        warmup = f"warm-up {next(iter(warmups.values()))} iterations"
    else:
        warmup = "warm-up " + ", ".join(f"{n}: {w}" for n, w in warmups.items())
    cal = meta.get("calibration_s") or {}
    train = [v for v in (meta.get("train_wall_s") or {}).values() if v]
    return [
        f"- **Data:** `{meta['train_dataset']}` for training, `{meta['test_dataset']}` as the test "
        "set.",
        f"- **Schedule ({meta['schedule']}):** {s['iterations']} iterations of batch {s['batch']}, "
        f"LR {s['base_lr']} ({schedule}, {warmup}), evaluated every {s['eval_period']}; networks of {meta['depths']} layers.",
        f"- **Command:** `{meta['command']}` ({meta['date']}, {meta['device']}, "
        f"{meta['cpus']} CPUs). Configs: `{folder}/{os.path.dirname(next(iter(meta['configs'].values())))}/`.",
        f"- **Wall time:** {format_seconds(meta['wall_s'])} for this command"
        + (
            f" (the training runs it uses took {format_seconds(sum(train))} in all, summed over "
            "the runs: some ran in parallel, some for another experiment's command)"
            if train
            else ""
        )
        + f"; calibration {format_calibration(cal.get('before'))} before, {format_calibration(cal.get('after'))} "
        "after.",
    ]


def render_page(folder: str, page: str) -> str:
    """The markdown of the experiments page from the JSON files in ``folder`` (figures linked
    relative to ``page``)."""
    found = []
    for experiment in EXPERIMENTS:
        for file in sorted(os.listdir(folder)):
            if file.startswith(experiment + "-") and file.endswith(".json"):
                found.append((experiment, file))
    if not found:
        raise FileNotFoundError(f"{folder} holds no experiment JSON (e.g. degradation-*.json)")
    rel_folder = os.path.relpath(folder, os.path.dirname(os.path.abspath(page)))
    lines = [PAGE_INTRO.format(folder=_repo_relative(folder), page=_repo_relative(page))]
    lines += ["**In short** (each check is stated in its section):", ""]
    for experiment, file in found:
        data = read_json(os.path.join(folder, file))
        checks = verdicts(experiment, data)
        agree = sum("**agrees**" in v for v in checks)
        lines.append(f"- {SECTION_TITLES[experiment]}, {data['meta']['dataset']}: {agree} of "
                     f"{len(checks)} checks agree with the paper.")  # fmt: skip
    lines.append("")
    for experiment, file in found:
        data = read_json(os.path.join(folder, file))
        meta = data["meta"]
        lines += [f"## {SECTION_TITLES[experiment]}: {meta['dataset']}, {meta['schedule']}", ""]
        lines += _describe(meta, rel_folder)
        png = file[: -len(".json")] + ".png"
        lines += [f"- **How to read it:** {NOTES[experiment]}"]
        lines += ["", f"![{experiment}]({rel_folder}/{png})", "", table(experiment, data), ""]
        lines += ["**Against the paper:**", ""]
        lines += [f"- {v}" for v in verdicts(experiment, data)]
        lines.append("")
    return "\n".join(lines)


def _repo_relative(path: str) -> str:
    path = os.path.abspath(path)
    return os.path.relpath(path, REPO) if path.startswith(REPO + os.sep) else path


def write_page(folder: str, page: str) -> str:
    """Writes :func:`render_page` to ``page``; returns its path."""
    write_text(page, render_page(folder, page))
    return page


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------
def dataset_mismatch(experiment: str, dataset: str) -> Optional[str]:
    """Why ``experiment`` cannot run on ``dataset`` (naming the datasets it runs on), or None."""
    kind = EXPERIMENT_KIND[experiment]
    if DATASETS[dataset].kind == kind:
        return None
    valid = [d for d, v in DATASETS.items() if v.kind == kind]
    return f"experiment {experiment!r} runs on {' or '.join(valid)}, not --dataset {dataset}"


def run_experiment(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """Runs one experiment end to end: trains what it needs, analyses, writes the JSON and the
    PNG, prints the table. Returns the JSON record."""
    exp = Experiment(name, args)
    error = dataset_mismatch(name, args.dataset)
    if error:
        raise ValueError(error)
    print(f"== {name} on {args.dataset} ({exp.schedule_name} schedule), depths {exp.depths}",
          flush=True)  # fmt: skip
    started = time.time()
    calibration = {"before": calibrate(args.calibration_repeats)}
    data, configs = RUNNERS[name](exp)
    calibration["after"] = calibrate(args.calibration_repeats)
    data["meta"] = exp.meta(configs, started, calibration)
    write_text(exp.stem + ".json", json.dumps(data, indent=1) + "\n")
    save_png(draw(name, data), exp.stem + ".png")
    print(table(name, data), flush=True)
    for line in verdicts(name, data):
        print(f"- {line}", flush=True)
    print(f"Wrote {exp.stem}.png and .json; configs in {exp.config_dir}/", flush=True)
    return data


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(
        prog="paper_experiments.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("experiment", choices=[*EXPERIMENTS, "all", "page"],
                        help="an experiment; 'all' runs the five in turn; 'page' writes the "
                        "experiments page from the JSON files in --output")  # fmt: skip
    parser.add_argument("--dataset", default="digits", choices=sorted(DATASETS),
                        help="for 'all': the dataset of the CIFAR-network experiments; "
                        "'shortcuts' then runs on shapes_cls (digits, cifar10) or imagenet")  # fmt: skip
    parser.add_argument("--output", default="output/paper_experiments",
                        help="where the PNG, JSON and configs go")  # fmt: skip
    parser.add_argument("--workdir", default="",
                        help="where the runs train (OUTPUT_DIR of each; default --output)")  # fmt: skip
    parser.add_argument("--quick", action="store_true",
                        help="the scaled-down schedule (about 10 minutes per experiment on 2 CPU "
                        "cores on digits); default: the paper's")  # fmt: skip
    parser.add_argument("--folders", nargs=2, metavar=("TRAIN_ROOT", "TEST_ROOT"),
                        help="with --dataset folders: your ImageFolder folders (ROOT/<class>/"
                        "<image>), for shortcuts")  # fmt: skip
    parser.add_argument("--depths", type=int, nargs="+",
                        help="the depths of the networks (default: the paper's, or --quick's)")  # fmt: skip
    parser.add_argument("--draws", type=int, default=5, help="lesion: random draws per k")
    parser.add_argument("--jobs", type=int, default=0,
                        help="runs trained at once (default: one per CPU, one on a GPU)")  # fmt: skip
    parser.add_argument("--calibration-repeats", type=int, default=3,
                        help="timed R-101 forwards before and after (0: none)")  # fmt: skip
    parser.add_argument(
        "--page", default="docs/EXPERIMENTS.md", help="for 'page': the file written"
    )
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE",
                        help="config overrides for every run (e.g. SEED 1)")  # fmt: skip
    args = parser.parse_intermixed_args(argv)
    args.argv = argv
    if len(args.opts) % 2:
        parser.error(f"KEY VALUE overrides come in pairs; got {args.opts}")
    if args.draws < 1:
        parser.error(f"--draws must be at least 1, got {args.draws}")
    if args.experiment not in ("page",):
        for name in EXPERIMENTS if args.experiment == "all" else [args.experiment]:
            if args.experiment == "all" and name == "shortcuts":
                continue
            error = dataset_mismatch(name, args.dataset)
            if error:
                parser.error(error)
        if (args.dataset == "folders") != bool(args.folders):
            parser.error("--dataset folders and --folders TRAIN_ROOT TEST_ROOT go together")
        if args.quick and args.dataset == "imagenet":
            parser.error("--dataset imagenet has the paper's schedule only (no --quick)")
        # --depths: CIFAR depths (6n+2) for the CIFAR networks, ImageNet ones for shortcuts
        # (with 'all', --depths is the CIFAR experiments' and shortcuts keeps its own).
        from .modeling.spec import DEPTHS as IMAGENET_DEPTHS

        imagenet = args.experiment == "shortcuts"
        for depth in args.depths or []:
            ok = depth in IMAGENET_DEPTHS if imagenet else depth >= 8 and depth % 6 == 2
            if not ok:
                valid = sorted(IMAGENET_DEPTHS) if imagenet else "6n+2: 8, 14, 20, 32, 44, 56, 110"
                parser.error(
                    f"--depths {depth} is not a depth of {args.experiment}; valid: {valid}"
                )
        single = args.experiment in ("lesion", "block_orders", "shortcuts")
        if single and args.depths and len(args.depths) > 1:
            parser.error(f"{args.experiment} takes one depth; got --depths {args.depths}")
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command (see the module doc): 0, or 1 after a one-line error."""
    args = parse_args(argv)
    names = list(EXPERIMENTS) if args.experiment == "all" else [args.experiment]
    try:
        if args.experiment == "page":
            print(f"Wrote {write_page(args.output, args.page)}")
            return 0
        for name in names:
            run_args = args
            if args.experiment == "all" and name == "shortcuts":
                dataset = args.dataset if args.dataset in ("imagenet", "folders") else "shapes_cls"
                run_args = argparse.Namespace(**{**vars(args), "dataset": dataset, "depths": None})
            run_experiment(name, run_args)
    except (RunError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0

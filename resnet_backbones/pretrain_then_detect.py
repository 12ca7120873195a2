"""Does pretraining help detection? The experiment of MODEL_ZOO.md ("Pretraining helps detection
(shapes)"), as one resumable command (``tools/pretrain_then_detect.py``, ``make
pretrain-quickstart``):

1. pretrain the R-18 classifier on shapes_cls (``configs/quickstart/pretrain_R18_shapes_cls.yaml``,
   ``tools/pretrain_net.py``), once;
2. for each seed, train the quickstart detector (``configs/quickstart/
   faster_rcnn_R18_FPN_shapes.yaml``, ``tools/train_net.py``) from that checkpoint
   (``MODEL.WEIGHTS <pretrain>/model_final.pth``, nothing else changed) and from random
   initialisation, each evaluated at half and at all of its iterations (``TEST.EVAL_PERIOD``
   half of ``SOLVER.MAX_ITER``);
3. read each run's box AP from its ``metrics.json``, aggregate per initialisation (mean, standard
   deviation, min-max), print a markdown table and write ``summary.json`` and ``summary.md``.

Every run is a subprocess with its own OUTPUT_DIR under ``--workdir``; a finished one is skipped
and an unfinished one continued with ``--resume``, so an interrupted experiment goes on where it
stopped. Absolute times only mean something beside the machine's speed at that moment, so the
command times detectron2's R-101 backbone forward (as ``tools/benchmark_backbone.py`` does)
before the first run and after the last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from typing import Any, Optional, Sequence

from .runs import (
    REPO,
    RunError,
    calibrate,
    format_calibration,
    read_json,
    run_logged,
    wall_times,
    write_text,
)

__all__ = [
    "DETECT_CONFIG",
    "PRETRAIN_CONFIG",
    "aggregate",
    "bbox_ap_by_iteration",
    "format_table",
    "main",
    "summarize",
]

PRETRAIN_CONFIG = os.path.join(REPO, "configs/quickstart/pretrain_R18_shapes_cls.yaml")
DETECT_CONFIG = os.path.join(REPO, "configs/quickstart/faster_rcnn_R18_FPN_shapes.yaml")
INITS = ("pretrained", "scratch")


def bbox_ap_by_iteration(metrics_path: str, max_iter: int) -> dict[int, dict[str, float]]:
    """The box AP of each evaluation in a detectron2 ``metrics.json`` (one JSON object a line),
    keyed by the number of iterations done when it ran. detectron2 records an evaluation during
    training, after step ``k`` (0-based), under ``"iteration": k`` (``k + 1`` done), and the
    final one, run by ``after_train``, under ``"iteration": max_iter`` (its ``storage.iter`` is
    then ``max_iter``; detectron2 skips the periodic evaluation at the last step).

    Values are ``{"AP": ..., "AP50": ..., ...}`` from the ``bbox/*`` keys; where a resumed run
    evaluated the same iteration twice, the last line wins. A missing file gives ``{}``.

    Raises:
        ValueError: a line that is not a JSON object, naming the file and the line.
    """
    found: dict[int, dict[str, float]] = {}
    if not os.path.isfile(metrics_path):
        return found
    with open(metrics_path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{metrics_path}, line {number}: not JSON ({e})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{metrics_path}, line {number}: not a JSON object")
            ap = {k[len("bbox/") :]: float(v) for k, v in record.items() if k.startswith("bbox/")}
            if ap and "iteration" in record:
                iteration = int(record["iteration"])
                found[iteration if iteration == max_iter else iteration + 1] = ap
    return found


def aggregate(values: Sequence[float]) -> dict[str, Any]:
    """Mean, sample standard deviation (None for fewer than 2 values), min, max and n of
    ``values``; NaN values are left out (an evaluation that gave none)."""
    kept = [float(v) for v in values if v is not None and not math.isnan(v)]
    if not kept:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None}
    return {
        "n": len(kept),
        "mean": statistics.fmean(kept),
        "std": statistics.stdev(kept) if len(kept) > 1 else None,
        "min": min(kept),
        "max": max(kept),
    }


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.1f}"


def _fmt_agg(agg: dict[str, Any]) -> str:
    if not agg["n"]:
        return "-"
    text = _fmt(agg["mean"])
    if agg["std"] is not None:
        text += f" ± {agg['std']:.1f} ({_fmt(agg['min'])}-{_fmt(agg['max'])})"
    return text


def summarize(
    runs: dict[str, dict[int, dict[int, dict[str, float]]]], checkpoints: Sequence[int]
) -> dict[str, Any]:
    """Per initialisation and checkpoint (iterations done), the box AP of every seed and its
    aggregate (:func:`aggregate`).

    Args:
        runs: ``{init: {seed: bbox_ap_by_iteration(...)}}``.
        checkpoints: the iteration counts to report (e.g. half and all of MAX_ITER).

    Returns:
        ``{init: {"per_seed": {seed: {iters: AP or None}}, "aggregate": {iters: aggregate}}}``
        (iteration counts as strings, as JSON keys are).
    """
    out: dict[str, Any] = {}
    for init, by_seed in runs.items():
        per_seed = {
            str(seed): {str(c): aps.get(c, {}).get("AP") for c in checkpoints}
            for seed, aps in sorted(by_seed.items())
        }
        agg = {
            str(c): aggregate([v[str(c)] for v in per_seed.values() if v[str(c)] is not None])
            for c in checkpoints
        }
        out[init] = {"per_seed": per_seed, "aggregate": agg}
    return out


def format_table(summary: dict[str, Any], checkpoints: Sequence[int]) -> str:
    """A markdown table: one row per initialisation and seed, then one per initialisation with
    mean ± sample std (min-max) over the seeds; one column of box AP per checkpoint."""
    head = "| init | seed | " + " | ".join(f"box AP at {c} it" for c in checkpoints) + " |"
    lines = [head, "| " + " | ".join(["---"] * (2 + len(checkpoints))) + " |"]
    for init, result in summary.items():
        for seed, by_iter in result["per_seed"].items():
            cells = [_fmt(by_iter[str(c)]) for c in checkpoints]
            lines.append(f"| {init} | {seed} | " + " | ".join(cells) + " |")
        cells = [_fmt_agg(result["aggregate"][str(c)]) for c in checkpoints]
        n = max((result["aggregate"][str(c)]["n"] for c in checkpoints), default=0)
        lines.append(f"| **{init}** | mean ± std (min-max), n={n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def verdict(summary: dict[str, Any], half: int, full: int) -> str:
    """One sentence: does the pretrained detector at ``half`` iterations reach the mean AP of
    the scratch one at ``full``?"""
    try:
        ours = summary["pretrained"]["aggregate"][str(half)]["mean"]
        ref = summary["scratch"]["aggregate"][str(full)]["mean"]
    except KeyError:
        return "Not both initialisations were run: no comparison."
    if ours is None or ref is None:
        return "Missing evaluations: no comparison yet."
    word = "reaches" if ours >= ref else "does not reach"
    return (
        f"Pretrained after {half} iterations: mean box AP {ours:.1f}; from scratch after {full}: "
        f"{ref:.1f}. The pretrained detector {word} the scratch AP in half the iterations "
        f"(difference {ours - ref:+.1f})."
    )


def _detection_done(out_dir: str, max_iter: int) -> bool:
    return os.path.isfile(os.path.join(out_dir, "model_final.pth")) and max_iter in (
        bbox_ap_by_iteration(os.path.join(out_dir, "metrics.json"), max_iter)
    )


def _saved_config(out_dir: str) -> dict:
    import yaml

    path = os.path.join(out_dir, "config.yaml")
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--workdir", default="/tmp/pretrain_then_detect", help="where every run writes its folder"
    )
    parser.add_argument(
        "--inits",
        nargs="+",
        choices=INITS,
        default=list(INITS),
        help="which detection runs: fine-tuned from the pretraining (which then runs first) and "
        "from scratch; two invocations with one each over the same --workdir can share a "
        "machine, and a third with both then only reads the finished runs",
    )
    parser.add_argument(
        "--reuse-scratch",
        metavar="DIR",
        help="a finished quickstart run from scratch (e.g. output/quickstart of `make "
        "quickstart`): used as the scratch run of its SEED instead of training one; it has the "
        "AP at the end only, unless it was run with TEST.EVAL_PERIOD",
    )
    parser.add_argument(
        "--detect-iters", type=int, default=520, help="SOLVER.MAX_ITER of the detection runs"
    )
    parser.add_argument(
        "--pretrain-opts",
        nargs=argparse.REMAINDER,
        default=[],
        help="KEY VALUE overrides of the pretraining config (last option: takes the rest)",
    )
    parser.add_argument(
        "--calibration-repeats",
        type=int,
        default=3,
        help="timed R-101 forwards before the first run and after the last (0: none)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command (see the module doc): 0, or 1 after a run failed (its log named)."""
    args = parse_args(argv)
    try:
        return _main(args)
    except RunError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    python = sys.executable
    workdir = os.path.abspath(args.workdir)
    os.makedirs(workdir, exist_ok=True)
    full, half = args.detect_iters, args.detect_iters // 2
    checkpoints = [half, full]
    record: dict[str, Any] = {
        "detect_config": os.path.relpath(DETECT_CONFIG, REPO),
        "pretrain_config": os.path.relpath(PRETRAIN_CONFIG, REPO),
        "pretrain_opts": args.pretrain_opts,
        "seeds": args.seeds,
        "inits": args.inits,
        "detect_iters": full,
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    record["r101_forward_s_before"] = calibrate(args.calibration_repeats)
    start = time.time()

    # 1. Pretraining, once.
    pre_dir = os.path.join(workdir, "pretrain")
    weights = os.path.join(pre_dir, "model_final.pth")
    if "pretrained" not in args.inits:
        print("No pretrained runs asked for (--inits): no pretraining", flush=True)
    elif not os.path.isfile(os.path.join(pre_dir, "model_final.json")):
        run_logged(
            [python, "tools/pretrain_net.py", "--config", PRETRAIN_CONFIG, "--resume",
             *args.pretrain_opts, "OUTPUT_DIR", pre_dir],
            pre_dir,
            os.path.join(workdir, "pretrain.log"),
        )  # fmt: skip
    else:
        print(f"Pretraining done already: {weights}", flush=True)
    record["pretrain"] = {
        "output_dir": pre_dir,
        "eval_results": read_json(os.path.join(pre_dir, "eval_results.json")),
        "wall_s": wall_times(pre_dir) or None,
    }

    # 2. Detection runs, seed by seed, so that an interrupted experiment has whole pairs.
    reused = _saved_config(args.reuse_scratch) if args.reuse_scratch else {}
    reused_seed = reused.get("SEED") if reused else None
    if args.reuse_scratch and reused:
        ok = reused.get("MODEL", {}).get("WEIGHTS") == "" and (
            reused.get("SOLVER", {}).get("MAX_ITER") == full
        )
        if not ok or not _detection_done(args.reuse_scratch, full):
            print(f"{args.reuse_scratch} is not a finished {full}-iteration run from scratch: "
                  "training the scratch run instead", flush=True)  # fmt: skip
            reused_seed = None
    aps: dict[str, dict[int, dict[int, dict[str, float]]]] = {i: {} for i in INITS}
    walls: dict[str, dict[int, Any]] = {i: {} for i in INITS}
    dirs: dict[str, dict[int, str]] = {i: {} for i in INITS}
    for seed in args.seeds:
        for init in INITS:
            if init not in args.inits:
                continue
            out_dir = os.path.join(workdir, f"seed{seed}", init)
            if init == "scratch" and seed == reused_seed:
                out_dir = os.path.abspath(args.reuse_scratch)
            elif not _detection_done(out_dir, full):
                opts = ["SEED", str(seed), "TEST.EVAL_PERIOD", str(half)]
                if full != 520:
                    opts += ["SOLVER.MAX_ITER", str(full)]
                if init == "pretrained":
                    opts += ["MODEL.WEIGHTS", weights]
                run_logged(
                    [python, "tools/train_net.py", "--config", DETECT_CONFIG, "--resume",
                     *opts, "OUTPUT_DIR", out_dir],
                    out_dir,
                    os.path.join(workdir, f"seed{seed}_{init}.log"),
                )  # fmt: skip
            aps[init][seed] = bbox_ap_by_iteration(os.path.join(out_dir, "metrics.json"), full)
            walls[init][seed] = wall_times(out_dir) or None
            dirs[init][seed] = out_dir
    aps = {k: v for k, v in aps.items() if v}

    # 3. Aggregate and report.
    record["experiment_wall_s"] = time.time() - start
    record["r101_forward_s_after"] = calibrate(args.calibration_repeats)
    summary = summarize(aps, checkpoints)
    record["runs"] = {
        init: {
            str(seed): {"output_dir": dirs[init][seed], "wall_s": walls[init][seed],
                        "bbox": {str(k): v for k, v in sorted(aps[init][seed].items())}}
            for seed in aps[init]
        }
        for init in aps
    }  # fmt: skip
    record["summary"] = summary
    record["verdict"] = verdict(summary, half, full)
    table = format_table(summary, checkpoints)
    top1 = (record["pretrain"]["eval_results"] or {}).get("top1")
    lines = [
        f"Pretraining (R-18 on shapes_cls): val top-1 {_fmt(top1)} %"
        + (f", {record['pretrain']['wall_s'][-1]:.0f} s" if record["pretrain"]["wall_s"] else ""),
        "",
        table,
        "",
        record["verdict"],
        f"Calibration: detectron2's R-101 forward at 800x1216 "
        f"{format_calibration(record['r101_forward_s_before'])} before, "
        f"{format_calibration(record['r101_forward_s_after'])} after; experiment wall time "
        f"{record['experiment_wall_s']:.0f} s (runs done in earlier invocations not included).",
    ]
    text = "\n".join(lines)
    print(text, flush=True)
    write_text(os.path.join(workdir, "summary.json"), json.dumps(record, indent=1))
    write_text(os.path.join(workdir, "summary.md"), text + "\n")
    print(f"Wrote {workdir}/summary.json and summary.md", flush=True)
    return 0

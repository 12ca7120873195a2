"""The pretrain -> detect experiment (tools/pretrain_then_detect.py): its reading of
detectron2's metrics.json, its aggregation and table, and that the pretraining config's
checkpoints load into the quickstart detector as they are."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from detectron2.modeling import build_model

from resnet_backbones.data.classification import SHAPES_CLS_CLASSES
from resnet_backbones.engine import load_config
from resnet_backbones.modeling.classifier import build_classification_model
from resnet_backbones.pretrain import pretraining_metadata
from resnet_backbones.pretrain_then_detect import (
    DETECT_CONFIG,
    PRETRAIN_CONFIG,
    aggregate,
    bbox_ap_by_iteration,
    format_table,
    main,
    summarize,
    verdict,
)
from resnet_backbones.weights.checkpoint import FamilyCheckpointer
from resnet_backbones.weights.errors import MetadataMismatchError


def _write_metrics(path, evaluations, resumed=()):
    """A metrics.json as detectron2 writes it (as in the quickstart's): training lines every 20
    iterations; the box AP of an evaluation during training, after k iterations, on the line of
    iteration k - 1, and that of the final one (after 520) on a line of iteration 520; ``resumed``
    appends evaluations again, as a run resumed after them does."""
    lines = [{"iteration": i, "total_loss": 1.0 / (i + 1), "lr": 0.002} for i in range(19, 520, 20)]
    for done, ap in [*evaluations.items(), *resumed]:
        line = {"iteration": done if done == 520 else done - 1, "bbox/AP": ap, "bbox/AP50": ap + 20}
        lines.append(line)
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_bbox_ap_is_keyed_by_the_iterations_done_and_the_last_evaluation_wins(tmp_path):
    path = _write_metrics(tmp_path / "metrics.json", {260: 30.5, 520: 50.25}, resumed=[(520, 51)])
    found = bbox_ap_by_iteration(str(path), 520)
    assert sorted(found) == [260, 520]
    assert found[260] == {"AP": 30.5, "AP50": 50.5}
    assert found[520]["AP"] == 51.0
    assert bbox_ap_by_iteration(str(tmp_path / "missing.json"), 520) == {}
    path.write_text(path.read_text() + "{not json\n")
    with pytest.raises(ValueError, match=r"metrics.json, line 30: not JSON"):
        bbox_ap_by_iteration(str(path), 520)


def test_aggregate_summary_table_and_verdict(tmp_path):
    aps = {
        "pretrained": {s: {260: {"AP": a}, 520: {"AP": b}} for s, a, b in [(0, 50, 60), (1, 54, 62), (2, 58, 64)]},
        "scratch": {0: {260: {"AP": 30.0}, 520: {"AP": 52.0}}, 1: {520: {"AP": 48.0}}},
    }  # fmt: skip
    summary = summarize(aps, [260, 520])
    pre = summary["pretrained"]["aggregate"]["260"]
    assert pre == {
        "n": 3,
        "mean": 54.0,
        "std": statistics.stdev([50, 54, 58]),
        "min": 50.0,
        "max": 58.0,
    }
    assert summary["scratch"]["per_seed"]["1"] == {"260": None, "520": 48.0}
    assert summary["scratch"]["aggregate"]["260"]["n"] == 1
    assert summary["scratch"]["aggregate"]["260"]["std"] is None
    table = format_table(summary, [260, 520]).splitlines()
    assert table[0] == "| init | seed | box AP at 260 it | box AP at 520 it |"
    assert "| pretrained | 1 | 54.0 | 62.0 |" in table
    assert "| scratch | 1 | - | 48.0 |" in table
    assert "| **pretrained** | mean ± std (min-max), n=3 | 54.0 ± 4.0 (50.0-58.0) | 62.0 ± 2.0 (60.0-64.0) |" in table  # fmt: skip
    assert "| **scratch** | mean ± std (min-max), n=2 | 30.0 | 50.0 ± 2.8 (48.0-52.0) |" in table
    text = verdict(summary, 260, 520)
    assert "mean box AP 54.0" in text and "50.0" in text and " reaches " in text
    aps["pretrained"][1][260]["AP"] = 40.0  # mean at 260: 49.3 < 50.0
    assert "does not reach" in verdict(summarize(aps, [260, 520]), 260, 520)
    assert aggregate([float("nan")])["n"] == 0
    assert "no comparison" in verdict(summarize({"pretrained": aps["pretrained"]}, [260]), 260, 520)


def test_the_configs_agree_and_the_pretrained_weights_load_into_the_quickstart(tmp_path):
    pre = load_config(PRETRAIN_CONFIG)
    det = load_config(DETECT_CONFIG)
    for key in ["INPUT.FORMAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD", "MODEL.BACKBONE.FREEZE_AT"]:
        node_pre, node_det = pre, det
        for part in key.split("."):
            node_pre, node_det = node_pre[part], node_det[part]
        assert node_pre == node_det, key
    # (ZERO_INIT_RESIDUAL is an initialisation: the detector loads the weights over it.)
    for key in ["DEPTH", "RES2_OUT_CHANNELS", "NORM", "STRIDE_IN_1X1"]:
        assert pre.MODEL.RESNETS[key] == det.MODEL.RESNETS[key], key
    assert (pre.CLS.CROP, pre.CLS.TEST_RESIZE, pre.DATASETS.TRAIN) == (
        64,
        64,
        ("shapes_cls_train",),
    )

    # What ClassificationTrainer saves (its metadata is checked by the loader), loaded with
    # MODEL.WEIGHTS into the quickstart detector: every backbone tensor arrives as it is.
    classifier = build_classification_model(pre, num_classes=len(SHAPES_CLS_CLASSES))
    with torch.no_grad():
        for tensor in classifier.state_dict().values():
            if tensor.is_floating_point():
                tensor.uniform_(0.5, 1.5)
    path = tmp_path / "model_final.pth"
    metadata = pretraining_metadata(pre, classifier)
    assert metadata["preset"] == "R-18"
    torch.save({"model": classifier.state_dict(), "metadata": metadata}, path)
    det.MODEL.WEIGHTS = str(path)
    detector = build_model(det)
    FamilyCheckpointer(detector, cfg=det).load(str(path))
    loaded = detector.state_dict()
    backbone = {k: v for k, v in classifier.state_dict().items() if not k.startswith("fc.")}
    for name, tensor in backbone.items():
        assert torch.equal(loaded[f"backbone.bottom_up.{name}"], tensor), name

    # The check is live: a detector that normalises otherwise refuses these weights.
    det.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    with pytest.raises(MetadataMismatchError, match="PIXEL_STD"):
        FamilyCheckpointer(build_model(det), cfg=det).load(str(path))


def _finished_detection_run(folder, evaluations, seed=0, weights=""):
    folder.mkdir(parents=True)
    _write_metrics(folder / "metrics.json", evaluations)
    (folder / "model_final.pth").write_bytes(b"")
    (folder / "config.yaml").write_text(
        f"MODEL:\n  WEIGHTS: '{weights}'\nSOLVER:\n  MAX_ITER: 520\nSEED: {seed}\n"
    )
    return folder


def test_finished_runs_are_read_not_rerun_and_a_quickstart_run_is_reused(tmp_path, capsys):
    """Every run of the experiment finished already (a rerun after an interruption): nothing is
    started (a subprocess would fail on the empty checkpoints), the quickstart run of `make
    quickstart` stands in for seed 0's scratch run, and the summary is written."""
    work = tmp_path / "work"
    (work / "pretrain").mkdir(parents=True)
    (work / "pretrain" / "model_final.json").write_text("{}")
    (work / "pretrain" / "eval_results.json").write_text(json.dumps({"top1": 97.5, "top5": 100}))
    _finished_detection_run(work / "seed0" / "pretrained", {260: 50.0, 520: 60.0}, weights="x")
    quickstart = _finished_detection_run(tmp_path / "quickstart", {520: 54.0})
    (work / "seed0" / "scratch").mkdir()  # an unfinished run there is not used
    main(["--seeds", "0", "--workdir", str(work), "--reuse-scratch", str(quickstart),
          "--calibration-repeats", "0"])  # fmt: skip
    out = capsys.readouterr().out
    assert "$ " not in out  # no command was run
    assert "val top-1 97.5 %" in out
    assert "| scratch | 0 | - | 54.0 |" in out
    assert "does not reach the scratch AP in half the iterations (difference -4.0)" in out
    summary = json.loads((work / "summary.json").read_text())
    assert summary["runs"]["scratch"]["0"]["output_dir"] == str(quickstart)
    assert summary["summary"]["pretrained"]["per_seed"]["0"] == {"260": 50.0, "520": 60.0}
    assert summary["pretrain"]["eval_results"]["top1"] == 97.5
    assert summary["r101_forward_s_before"] is None
    assert (work / "summary.md").read_text().startswith("Pretraining (R-18 on shapes_cls)")

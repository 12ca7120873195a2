"""The papers' experiments (tools/paper_experiments.py): each runs end to end in a tiny setting
(networks of 8 layers, a few iterations, trained by tools/pretrain_net.py in subprocesses), its
JSON holds every number its PNG shows, runs are shared between experiments and a changed config
is refused, and docs/EXPERIMENTS.md is what the committed JSON files give."""

from __future__ import annotations

import io
import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from resnet_backbones import paper_experiments as pe
from resnet_backbones.paper_experiments import (
    EXPERIMENTS,
    draw,
    error_curves,
    main,
    render_page,
    table,
    verdicts,
)
from resnet_backbones.runs import REPO

# One pytest-xdist worker runs them all (the Makefile's --dist loadgroup): the module's trained
# networks are shared, not trained again in each worker.
pytestmark = pytest.mark.xdist_group("paper_experiments")


# Tiny runs: 4 iterations of 16 images, evaluated after 2 and 4.
def tiny(iterations: int = 4) -> list[str]:
    # One run at a time: pytest's workers share the CPUs already.
    return ["--quick", "--jobs", "1", "--calibration-repeats", "0", "SOLVER.MAX_ITER", str(iterations),
            "TEST.EVAL_PERIOD", "2", "SOLVER.IMS_PER_BATCH", "16", "CLS.TEST_BATCH_SIZE", "128", "DATALOADER.NUM_WORKERS", "0"]  # fmt: skip


def _json(folder, experiment, dataset="digits"):
    path = os.path.join(folder, f"{experiment}-{dataset}-quick.json")
    with open(path) as f:
        return json.load(f), path[: -len(".json")] + ".png"


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def _check_png_is_drawn_from_json(experiment, data, png_path):
    """The PNG on disk equals the figure drawn again from the JSON alone, and the figure's lines
    and bars carry exactly the JSON's numbers."""
    fig = draw(experiment, data)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90, metadata={"Software": None})
    with open(png_path, "rb") as f:
        assert np.array_equal(_pixels(f.read()), _pixels(buffer.getvalue()))
    return fig


def _line_data(ax):
    return [(list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """degradation at 8 layers (plain-8 and resnet-8), whose runs the later experiments reuse."""
    out = tmp_path_factory.mktemp("paper")
    assert main(["degradation", "--output", str(out), "--depths", "8", *tiny()]) == 0
    return out


def test_error_curves_pair_each_evaluation_with_the_training_error_logged_with_it(tmp_path):
    # detectron2's records of a 40-iteration run evaluated every 20: the evaluation after 20
    # iterations on the line of iteration 19, the final one on a line of iteration 40; a resumed
    # run's repeated evaluation replaces the first.
    lines = [{"iteration": 19, "train_error": 50.0}, {"iteration": 19, "classification/top1": 40.0},
             {"iteration": 19, "classification/top1": 41.0}, {"iteration": 29, "train_error": 35.0},
             {"iteration": 39, "train_error": 30.0}, {"iteration": 40, "classification/top1": 75.5}]  # fmt: skip
    path = tmp_path / "metrics.json"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    curves = error_curves(str(path))
    assert curves == {
        "iterations": [20, 40],
        "train_error": [50.0, 30.0],
        "test_error": [59.0, 24.5],
    }


def test_degradation_end_to_end(trained):
    data, png = _json(trained, "degradation")
    assert set(data["runs"]) == {"plain-8", "resnet-8"}
    for run in data["runs"].values():
        assert run["iterations"] == [2, 4]
        assert len(run["train_error"]) == len(run["test_error"]) == 2
        assert all(0 <= e <= 100 for e in run["train_error"] + run["test_error"])
    # The test errors are the runs' own evaluations.
    final = json.loads((trained / "runs/digits-quick/resnet-8/eval_results.json").read_text())
    assert data["runs"]["resnet-8"]["test_error"][-1] == pytest.approx(100 - final["top1"])
    meta = data["meta"]
    assert meta["solver"]["iterations"] == 4 and meta["solver"]["batch"] == 16
    assert meta["command"].startswith("python tools/paper_experiments.py degradation")
    for name, config in meta["configs"].items():
        text = (trained / config).read_text()
        assert "SHORTCUT: none" in text if name.startswith("plain") else "SHORTCUT: A" in text
    fig = _check_png_is_drawn_from_json("degradation", data, png)
    plain_ax, res_ax = fig.axes[:2]
    run = data["runs"]["plain-8"]
    assert _line_data(plain_ax) == [(run["iterations"], run["train_error"]),
                                    (run["iterations"], run["test_error"])]  # fmt: skip
    run = data["runs"]["resnet-8"]
    assert _line_data(res_ax)[1] == (run["iterations"], run["test_error"])
    assert "| plain-8 |" in table("degradation", data)


def test_a_finished_run_with_another_config_is_refused(trained, capsys):
    before = (trained / "runs/digits-quick/plain-8/model_final.json").stat().st_mtime
    argv = ["degradation", "--output", str(trained), "--depths", "8", *tiny()]
    code = main([*argv[:-8], "SOLVER.MAX_ITER", "6", *argv[-6:]])
    assert code == 1
    err = capsys.readouterr().err
    assert "run 'plain-8'" in err and "SOLVER.MAX_ITER: 4 -> 6" in err
    assert (trained / "runs/digits-quick/plain-8/model_final.json").stat().st_mtime == before


def test_bad_command_lines_name_the_valid_values(capsys):
    with pytest.raises(SystemExit):
        pe.parse_args(["shortcuts", "--dataset", "digits"])
    assert (
        "runs on shapes_cls or folders or imagenet, not --dataset digits" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit):
        pe.parse_args(["shortcuts", "--dataset", "folders"])
    assert "--folders TRAIN_ROOT TEST_ROOT go together" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pe.parse_args(["degradation", "SEED"])
    assert "come in pairs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pe.parse_args(["degradations"])
    assert "invalid choice: 'degradations'" in capsys.readouterr().err


def test_the_experiments_page_is_not_stale():
    """docs/EXPERIMENTS.md is what `paper_experiments.py page` writes from docs/experiments/,
    every figure it links is there, and every experiment has its section."""
    folder = os.path.join(REPO, "docs", "experiments")
    page = os.path.join(REPO, "docs", "EXPERIMENTS.md")
    with open(page, encoding="utf-8") as f:
        text = f.read()
    assert text == render_page(folder, page), (
        "docs/EXPERIMENTS.md is stale: run `python tools/paper_experiments.py page "
        "--output docs/experiments --page docs/EXPERIMENTS.md`"
    )
    links = re.findall(r"!\[(\w+)\]\(([^)]+)\)", text)
    assert sorted({name for name, _ in links}) == sorted(EXPERIMENTS)
    assert all(os.path.isfile(os.path.join(REPO, "docs", link)) for _, link in links)


def test_verdicts_follow_the_numbers():
    def runs(plain20, plain56, res20, res56):
        def curve(e):
            return {"iterations": [10], "train_error": [e], "test_error": [e + 1]}

        return {"runs": {"plain-20": curve(plain20), "plain-56": curve(plain56),
                         "resnet-20": curve(res20), "resnet-56": curve(res56)}}  # fmt: skip

    agree = verdicts("degradation", runs(5, 10, 4, 3))
    assert all("**agrees**" in v for v in agree)
    disagree = verdicts("degradation", runs(10, 5, 4, 6))
    assert "**does not agree**" in disagree[0] and "**does not agree**" in disagree[1]


def test_responses_reuse_the_trained_networks_and_plot_their_numbers(trained, capsys):
    assert main(["responses", "--output", str(trained), "--depths", "8", *tiny()]) == 0
    assert "Training" not in capsys.readouterr().out  # degradation's runs, reused
    data, png = _json(trained, "responses")
    assert set(data["runs"]) == {"plain-8", "resnet-8"}
    # The stem's 3x3 conv and two per block: 1 + 2 x 3.
    assert all(len(stds) == 7 and min(stds) > 0 for stds in data["runs"].values())
    fig = _check_png_is_drawn_from_json("responses", data, png)
    top, bottom = fig.axes[:2]
    for (x, y), stds in zip(_line_data(top), data["runs"].values()):
        assert x == list(range(1, 8)) and y == stds
    for (_, y), stds in zip(_line_data(bottom), data["runs"].values()):
        assert y == sorted(stds, reverse=True)


def test_lesion_on_the_trained_networks(trained):
    assert main(["lesion", "--output", str(trained), "--depths", "8", "--draws", "3", *tiny()]) == 0
    data, png = _json(trained, "lesion")
    degradation, _ = _json(trained, "degradation")
    res, plain = data["resnet-8"], data["plain-8"]
    assert res["deleted"] == ["res2.0", "res3.0", "res4.0"]
    # The four 3x3 convs whose input and output shapes are equal (not res3/res4's first).
    assert plain["deleted"] == ["res2.0.conv1", "res2.0.conv2", "res3.0.conv2", "res4.0.conv2"]
    for name, run in (("resnet-8", res), ("plain-8", plain)):
        # The intact network's error is the one its training run measured on the same set.
        assert run["baseline_error"] == pytest.approx(
            degradation["runs"][name]["test_error"][-1], abs=1e-6
        )
        assert len(run["single"]) == len(run["deleted"])
        assert run["k"] == list(range(1, len(run["deleted"]) // 2 + 1))
        assert [len(d) for d in run["draws"]] == [3] * len(run["k"])
        assert run["error_vs_k"] == [pytest.approx(sum(d) / 3) for d in run["draws"]]
    fig = _check_png_is_drawn_from_json("lesion", data, png)
    left, right = fig.axes[:2]
    lines = _line_data(left)
    assert lines[0] == (list(range(1, 4)), res["single"])
    assert lines[1][1] == [res["baseline_error"]] * 2  # the dotted intact line
    assert _line_data(right)[0] == (res["k"], res["error_vs_k"])


def test_block_orders_end_to_end(trained):
    assert main(["block_orders", "--output", str(trained), "--depths", "8", *tiny()]) == 0
    data, png = _json(trained, "block_orders")
    assert list(data["runs"]) == list(pe.ORDER_LABELS)
    for order, run in data["runs"].items():
        config = (trained / data["meta"]["configs"][run["network"]]).read_text()
        assert f"BLOCK_ORDER: {order}" in config
        final = json.loads(
            (trained / f"runs/digits-quick/{run['network']}/eval_results.json").read_text()
        )
        assert run["test_error"] == pytest.approx(100 - final["top1"])
        assert run["paper_error"] == pe.PAPER["block_orders"][order]
    fig = _check_png_is_drawn_from_json("block_orders", data, png)
    heights = [p.get_height() for p in fig.axes[0].patches]
    ours = [r["test_error"] for r in data["runs"].values()]
    assert heights == ours + [r["paper_error"] for r in data["runs"].values()]


def _image_folder(root, per_class):
    """A tiny ImageFolder: 4 classes of 40x40 images, a bright square at a place of its own."""
    for label in range(4):
        (root / f"class{label}").mkdir(parents=True)
        for i in range(per_class):
            image = np.zeros((40, 40, 3), np.uint8)
            y, x = divmod(label, 2)
            image[y * 20 : y * 20 + 20, x * 20 : x * 20 + 20] = 200 + i
            Image.fromarray(image).save(root / f"class{label}" / f"{i}.png")
    return str(root)


def test_shortcuts_end_to_end_on_your_own_folders(tmp_path):
    train, test = _image_folder(tmp_path / "train", 6), _image_folder(tmp_path / "test", 3)
    argv = ["shortcuts", "--dataset", "folders", "--folders", train, test,
            "--output", str(tmp_path / "out"), *tiny(2)]  # fmt: skip
    assert main(argv) == 0
    out = tmp_path / "out"
    data, png = _json(out, "shortcuts", "folders")
    assert list(data["runs"]) == ["plain", "A", "B", "C"]
    assert data["meta"]["folders"] == [train, test]
    for kind, run in data["runs"].items():
        config = (out / data["meta"]["configs"][run["network"]]).read_text()
        assert f"SHORTCUT: {'none' if kind == 'plain' else kind}" in config
        assert "DEPTH: 18" in config
        final = json.loads(
            (out / f"runs/folders-quick/{run['network']}/eval_results.json").read_text()
        )
        assert final["num_images"] == 12
        assert run["top1_error"] == pytest.approx(100 - final["top1"])
    fig = _check_png_is_drawn_from_json("shortcuts", data, png)
    heights = [p.get_height() for p in fig.axes[0].patches]
    assert heights[:4] == [r["top1_error"] for r in data["runs"].values()]


def test_shortcuts_on_shapes_cls_and_imagenet_use_the_papers_depths(tmp_path):
    """The shortcuts configs of the built-in datasets (trained end to end above on folders)."""
    for dataset, quick, depth in (("shapes_cls", True, 18), ("shapes_cls", False, 34),
                                  ("imagenet", False, 34)):  # fmt: skip
        argv = ["shortcuts", "--dataset", dataset, "--output", str(tmp_path)]
        exp = pe.Experiment("shortcuts", pe.parse_args(argv + (["--quick"] if quick else [])))
        for net in pe.networks("shortcuts", exp.depths):
            cfg = exp.config(net)
            assert cfg.MODEL.RESNETS.DEPTH == depth
            assert cfg.DATASETS.TRAIN == (f"{dataset}_train",)
            assert cfg.DATASETS.TEST == (pe.DATASETS[dataset].test,)
            assert cfg.MODEL.RESNETS.SHORTCUT == net.overrides[-1]


def test_evaluation_cache_resumes_an_analysis_of_the_same_checkpoint_only(tmp_path):
    (tmp_path / "model_final.json").write_text(json.dumps({"sha256": "aaa"}))
    cache = pe.EvaluationCache(str(tmp_path), "lesion")
    assert cache.get("res2.0", lambda: 12.5) == 12.5

    def never():
        raise AssertionError("a cached result was computed again")

    # A new process (an interrupted analysis run again) reads it back instead of computing.
    assert pe.EvaluationCache(str(tmp_path), "lesion").get("res2.0", never) == 12.5
    # Another checkpoint in the same folder starts over.
    (tmp_path / "model_final.json").write_text(json.dumps({"sha256": "bbb"}))
    assert pe.EvaluationCache(str(tmp_path), "lesion").get("res2.0", lambda: 3.0) == 3.0

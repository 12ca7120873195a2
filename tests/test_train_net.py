"""Training and evaluation end to end: tools/train_net.py (resnet_backbones.train_net), the
Trainer, your own COCO-format data, and clear failures."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from resnet_backbones import train_net
from resnet_backbones.data import DatasetFormatError, register_datasets
from resnet_backbones.data.coco_format import register_coco_format
from resnet_backbones.engine import DatasetNotFoundError, Trainer, check_datasets, load_config

from .helpers import QUICKSTART, REPO, TINY_OWN_DATA, tiny_cfg, tiny_shapes, write_coco_folder


@pytest.fixture(scope="module")
def tiny_datasets():
    return tiny_shapes()


def test_short_train_then_pycocotools_evaluation(tmp_path, tiny_datasets):
    cfg = tiny_cfg(tmp_path, *tiny_datasets)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    # The end-of-training evaluation puts its COCO results into the event storage.
    latest = trainer.storage.latest()
    results = {k: latest[f"bbox/{k}"][0] for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")}
    assert all(math.isnan(v) or 0 <= v <= 100 for v in results.values())
    evaluator = Trainer.build_evaluator(cfg, tiny_datasets[1])
    assert evaluator._use_fast_impl is False  # plain pycocotools: no compiled ops here
    assert os.path.isfile(tmp_path / "model_final.pth")

    # An interrupted run resumes from its last checkpoint instead of starting over.
    cfg = tiny_cfg(tmp_path, *tiny_datasets, max_iter=3)
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2


def test_train_net_tool_trains_evaluates_and_draws(tmp_path):
    """The tool itself, on the built-in validation split (train and test), five iterations (the ETA needs a few)."""
    out = tmp_path / "run"
    cmd = [
        sys.executable, os.path.join(REPO, "tools/train_net.py"),
        "--config", QUICKSTART, "--visualize", "4",
        "SOLVER.MAX_ITER", "5", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0",
        "DATASETS.TRAIN", "('shapes_val',)", "OUTPUT_DIR", str(out),
        # Evaluating all 150 images at 256 px was most of this test's time.
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Evaluation results for bbox" in log
    assert re.search(r"\|\s+AP\s+\|\s+AP50\s+\|\s+AP75\s+\|", log)  # the COCO AP table
    assert "eta:" in log  # progress with an ETA
    for name in ("model_final.pth", "learning_curve.png", "detections.png", "metrics.json"):
        assert (out / name).is_file(), name
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    assert any("bbox/AP" in r for r in records)
    with open(out / "detections.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_coco_gives_a_clear_message_and_gpu_config_falls_back_to_cpu(tmp_path):
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path / "nowhere"))
    cmd = [
        sys.executable,
        os.path.join(REPO, "tools/train_net.py"),
        "--config",
        os.path.join(REPO, "configs/faster_rcnn_R101.yaml"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode != 0
    err = proc.stderr
    assert "DatasetNotFoundError" in err
    assert "dataset 'coco_2017_train' is not on disk" in err
    assert str(tmp_path / "nowhere" / "coco" / "annotations" / "instances_train2017.json") in err
    assert "set DETECTRON2_DATASETS" in err
    assert err.count("CUDA is not available here; running on the CPU instead") == 1


def test_check_datasets_names_unregistered_dataset():
    with pytest.raises(DatasetNotFoundError, match="'no_such_dataset' is not registered") as e:
        check_datasets(["no_such_dataset"])
    # ... and says how to register one, both ways.
    assert "--dataset NAME JSON_FILE IMAGE_ROOT" in str(e.value)
    assert "DATASETS.COCO_FORMAT: [[NAME, JSON_FILE, IMAGE_ROOT], ...]" in str(e.value)


def test_command_line_flags(capsys):
    args = train_net.parse_args(
        [
            "--config",
            "x.yaml",
            "--eval-only",
            "--resume",
            "--num-gpus",
            "2",
            "MODEL.WEIGHTS",
            "w.pth",
        ]
    )
    assert args.config_files == ["x.yaml"] and args.eval_only and args.resume
    assert args.config_file == "x.yaml"  # what detectron2's default_setup reads
    assert args.num_gpus == 2 and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    assert train_net.parse_args(["--config-file", "y.yaml"]).config_files == ["y.yaml"]
    args = train_net.parse_args(
        ["--config", "a.yaml", "--config-file", "b.yaml", "--config", "c.yaml",
         "--dataset", "d1", "d1.json", "img1", "--dataset", "d2", "d2.json", "img2",
         "SOLVER.MAX_ITER", "3"]
    )  # fmt: skip
    assert args.config_files == ["a.yaml", "b.yaml", "c.yaml"] and args.config_file == "c.yaml"
    assert args.dataset == [["d1", "d1.json", "img1"], ["d2", "d2.json", "img2"]]
    assert args.opts == ["SOLVER.MAX_ITER", "3"]
    with pytest.raises(SystemExit):
        train_net.parse_args(["--config", "a.yaml", "--dataset", "d1", "d1.json"])
    with pytest.raises(SystemExit):
        train_net.parse_args(["--config", "a.yaml", "OUTPUT_DIR", "out", "--resume"])
    err = capsys.readouterr().err
    assert (
        "--resume comes after the KEY VALUE overrides, which take the rest of the command line"
        in err
    )
    args = train_net.parse_args(
        [
            "--config",
            "x.yaml",
            "--num-machines",
            "2",
            "--machine-rank",
            "1",
            "--dist-url",
            "tcp://127.0.0.1:1234",
        ]
    )
    assert (args.num_machines, args.machine_rank, args.dist_url) == (2, 1, "tcp://127.0.0.1:1234")
    with pytest.raises(SystemExit):
        train_net.parse_args([])
    with pytest.raises(FileNotFoundError, match="config file not found: 'missing.yaml'"):
        load_config("missing.yaml")


def test_shipped_configs_load_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here
    by_path = load_config(QUICKSTART)
    for name in ("quickstart/faster_rcnn_R18_FPN_shapes.yaml", os.path.relpath(QUICKSTART, REPO)):
        assert load_config(name) == by_path
    with pytest.raises(FileNotFoundError, match=r"'quickstart/nope.yaml', neither on disk nor"):
        load_config("quickstart/nope.yaml")


def test_optimizer_choice():
    from torch import nn

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    cfg = load_config(QUICKSTART)
    assert cfg.SOLVER.OPTIMIZER == "AdamW"
    assert isinstance(Trainer.build_optimizer(cfg, model), torch.optim.AdamW)
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(Trainer.build_optimizer(cfg, model), torch.optim.SGD)
    cfg.SOLVER.OPTIMIZER = "Adam"
    with pytest.raises(
        ValueError, match="SOLVER.OPTIMIZER = 'Adam' is not valid; valid values: 'SGD', 'AdamW'"
    ):
        Trainer.build_optimizer(cfg, model)


# ------------------------------------------------------------------------------------------
# Your own data, from the command line
# ------------------------------------------------------------------------------------------
def test_own_coco_data_trains_resumes_evaluates_and_draws(tmp_path, monkeypatch):
    """The tool alone, on a folder of PNGs and a COCO JSON: its YAML key (paths relative to the
    YAML file) through a second --config, then --resume, then --eval-only --visualize with
    --dataset and no MODEL.WEIGHTS."""
    data = write_coco_folder(tmp_path / "mydata")
    (data / "mine.yaml").write_text(
        "DATASETS:\n"
        '  COCO_FORMAT: [["mine_train", "annotations.json", "images"]]\n'
        '  TRAIN: ("mine_train",)\n'
        '  TEST: ("mine_train",)\n'
    )
    monkeypatch.chdir(tmp_path)  # not the YAML's folder: its relative paths must not be read here
    out = tmp_path / "run"
    configs = ["--config", QUICKSTART, "--config", "mydata/mine.yaml"]
    opts = [*TINY_OWN_DATA, "OUTPUT_DIR", str(out)]

    assert train_net.main([*configs, *opts, "SOLVER.MAX_ITER", "2"]) == 0
    assert (out / "model_final.pth").is_file()
    saved = (out / "config.yaml").read_text()  # the run's config, usable from anywhere
    assert str(data / "annotations.json") in saved and str(data / "images") in saved

    assert train_net.main([*configs, "--resume", *opts, "SOLVER.MAX_ITER", "3"]) == 0
    log = (out / "log.txt").read_text()
    assert log.count("Starting training from iteration 0") == 1
    assert "Starting training from iteration 2" in log  # continued, not restarted

    evaluate = [
        "--config", QUICKSTART, "--eval-only", "--visualize", "8",
        "--dataset", "mine_val", "mydata/annotations.json", "mydata/images",
        *opts, "DATASETS.TEST", "('mine_val',)",
    ]  # fmt: skip
    assert train_net.main(evaluate) == 0
    log = (out / "log.txt").read_text()
    evaluated = log[log.rindex("Command line arguments") :]
    assert (
        f"Evaluating {out / 'model_final.pth'}, the last checkpoint in OUTPUT_DIR "
        "(MODEL.WEIGHTS is empty)" in evaluated
    )
    # Only the first run, which did start from scratch, says so.
    assert log.count("Initializing model from scratch") == 1
    assert "Evaluation results for bbox" in evaluated
    assert "Wrote detections on 4 images of mine_val" in evaluated  # all it has
    with open(out / "detections.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_eval_only_without_weights_fails_in_one_line(tmp_path, capsys):
    write_coco_folder(tmp_path / "d", num_images=1)
    command = [
        "--config", QUICKSTART, "--eval-only",
        "--dataset", "eval_only_val", str(tmp_path / "d/annotations.json"), str(tmp_path / "d/images"),
        *TINY_OWN_DATA, "OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TEST", "('eval_only_val',)",
    ]  # fmt: skip
    assert train_net.main(command) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "error: NothingToEvaluateError: --eval-only has no weights to evaluate: MODEL.WEIGHTS is "
        f"empty and OUTPUT_DIR {str(tmp_path / 'o')!r} holds no checkpoint (no 'last_checkpoint' "
        "file). Pass MODEL.WEIGHTS path/to/model_final.pth, or the OUTPUT_DIR of a training run"
    )


def test_invalid_json_fails_in_one_line_naming_the_file(tmp_path, capsys):
    data = write_coco_folder(tmp_path / "d", num_images=1)
    bad = data / "bad.json"
    bad.write_text('{"images": [}')
    command = [
        "--config", QUICKSTART, "--dataset", "bad_json", str(bad), str(data / "images"),
        *TINY_OWN_DATA, "OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TRAIN", "('bad_json',)",
    ]  # fmt: skip
    assert train_net.main(command) == 1
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(
        f"error: DatasetFormatError: dataset 'bad_json': {bad} is not valid JSON (Expecting value: "
        "line 1 column 13 (char 12)); it must be a COCO instances JSON"
    )


def test_malformed_coco_fails_in_one_line_and_config_names_work_anywhere(
    tmp_path, capsys, monkeypatch
):
    """An image entry without its file_name (detectron2 raises a KeyError) is one line naming the
    file and the entry (the checks before training); the command runs from a folder without configs/, the config given by its name; a
    missing weights file is one line too."""
    data = write_coco_folder(tmp_path / "d", num_images=1)
    content = json.loads((data / "annotations.json").read_text())
    del content["images"][0]["file_name"]
    bad = data / "no_file_name.json"
    bad.write_text(json.dumps(content))
    monkeypatch.chdir(tmp_path)
    command = [
        "--config", "quickstart/faster_rcnn_R18_FPN_shapes.yaml",
        "--dataset", "no_file_name", str(bad), str(data / "images"),
        *TINY_OWN_DATA, "OUTPUT_DIR", str(tmp_path / "o"), "DATASETS.TRAIN", "('no_file_name',)",
    ]  # fmt: skip
    assert train_net.main(command) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: DatasetValidationError: dataset 'no_file_name' failed its checks before "
        f"training, 1 problem: {bad}: images[0] = {{'id': 1, 'width': 64, 'height': 64}} needs "
        "an 'id' and a 'file_name' (and 'width', 'height'); add them"
    )
    command = [
        "--config", "quickstart/faster_rcnn_R18_FPN_shapes.yaml", "--eval-only",
        *TINY_OWN_DATA, "OUTPUT_DIR", str(tmp_path / "o"), "MODEL.WEIGHTS", "missing.pth",
    ]  # fmt: skip
    assert train_net.main(command) == 1
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .startswith("error: WeightsNotFoundError: MODEL.WEIGHTS = 'missing.pth': no such file.")
    )


def test_num_classes_must_match_the_data(tmp_path, capsys):
    data = write_coco_folder(tmp_path / "d", num_images=2)  # two categories: red, yellow
    command = [
        "--config", QUICKSTART, "--dataset", "two_classes", str(data / "annotations.json"),
        str(data / "images"), *TINY_OWN_DATA, "OUTPUT_DIR", str(tmp_path / "o"),
        "DATASETS.TRAIN", "('two_classes',)", "MODEL.ROI_HEADS.NUM_CLASSES", "3",
    ]  # fmt: skip
    assert train_net.main(command) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: NumClassesError: MODEL.ROI_HEADS.NUM_CLASSES = 3, but dataset 'two_classes' has 2 "
        "categories (red, yellow); set MODEL.ROI_HEADS.NUM_CLASSES 2"
    )


def test_coco_format_errors_name_the_path_and_the_fix(tmp_path):
    data = write_coco_folder(tmp_path / "d", num_images=1)
    json_file, images = str(data / "annotations.json"), str(data / "images")
    with pytest.raises(
        DatasetNotFoundError,
        match=f"dataset 'no_json': the JSON file '{tmp_path}/d/missing.json' does not exist",
    ):
        register_coco_format([["no_json", str(data / "missing.json"), images]])
    with pytest.raises(
        DatasetNotFoundError,
        match=f"dataset 'no_images': the image folder '{tmp_path}/d/nowhere' does not exist",
    ):
        register_coco_format([["no_images", json_file, str(data / "nowhere")]])

    # A JSON file that is no COCO instances file: one line naming the file, when first loaded.
    from detectron2.data import DatasetCatalog

    for name, content, problem in [
        ("not_json", "images: []", "is not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        ("a_list", "[]", "holds a JSON list, not an object"),
        ("no_images_key", '{"annotations": []}', "has no list 'images' or 'categories'"),
    ]:
        path = data / f"{name}.json"
        path.write_text(content)
        register_coco_format([[name, str(path), images]])
        with pytest.raises(DatasetFormatError) as e:
            DatasetCatalog.get(name)
        assert str(e.value) == (
            f"dataset {name!r}: {path} {problem}; it must be a COCO instances JSON with 'images', "
            "'annotations' and 'categories'"
        )

    # A name taken by other files; the same files again change nothing.
    register_datasets()
    with pytest.raises(
        DatasetFormatError, match="dataset 'shapes_val' is registered already, with"
    ):
        register_coco_format([["shapes_val", json_file, images]])
    register_coco_format([["mine_twice", json_file, images]])
    register_coco_format([["mine_twice", json_file, images]])
    other = data / "other.json"
    other.write_text("{}")
    with pytest.raises(
        DatasetFormatError,
        match=re.escape(
            f"dataset 'mine_twice' is registered already, with json_file {json_file!r} and "
            f"image_root {images!r}; DATASETS.COCO_FORMAT (or --dataset) gives {str(other)!r}"
        ),
    ):
        register_coco_format([["mine_twice", str(other), images]])


def test_config_files_merge_in_order_and_dataset_paths_follow_their_yaml(tmp_path):
    (tmp_path / "a.yaml").write_text("SOLVER:\n  BASE_LR: 0.5\n")
    (tmp_path / "b.yaml").write_text("SOLVER:\n  BASE_LR: 0.25\n  MAX_ITER: 7\n")
    assert load_config([tmp_path / "a.yaml", tmp_path / "b.yaml"]).SOLVER.BASE_LR == 0.25
    cfg = load_config([tmp_path / "b.yaml", tmp_path / "a.yaml"])
    assert (cfg.SOLVER.BASE_LR, cfg.SOLVER.MAX_ITER) == (0.5, 7)
    cfg = load_config([tmp_path / "b.yaml", tmp_path / "a.yaml"], ["SOLVER.BASE_LR", "0.125"])
    assert cfg.SOLVER.BASE_LR == 0.125
    with pytest.raises(FileNotFoundError, match="config file not found: 'nowhere.yaml'"):
        load_config([tmp_path / "a.yaml", "nowhere.yaml"])

    # Relative paths of DATASETS.COCO_FORMAT: to the YAML file that sets them, even through a
    # _BASE_ in another folder; on the command line, to the working directory.
    (tmp_path / "data").mkdir()
    (tmp_path / "data/base.yaml").write_text(
        'DATASETS:\n  COCO_FORMAT: [["x", "train.json", "~/images"]]\n'
    )
    (tmp_path / "child.yaml").write_text('_BASE_: "data/base.yaml"\n')
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.DATASETS.COCO_FORMAT == [
        ["x", str(tmp_path / "data/train.json"), os.path.expanduser("~/images")]
    ]
    cfg = load_config(tmp_path / "child.yaml", ["DATASETS.COCO_FORMAT", "[['y', 'j.json', 'i']]"])
    assert cfg.DATASETS.COCO_FORMAT == [["y", os.path.abspath("j.json"), os.path.abspath("i")]]

    # A malformed triple names the key, the entry and the form it must have.
    (tmp_path / "bad.yaml").write_text('DATASETS:\n  COCO_FORMAT: [["x", "train.json"]]\n')
    with pytest.raises(
        DatasetFormatError,
        match=re.escape(
            "DATASETS.COCO_FORMAT[0] = ['x', 'train.json'] is not valid; each entry must be three "
            "non-empty strings [NAME, JSON_FILE, IMAGE_ROOT], e.g. ['my_train', "
            "'annotations/train.json', 'images/']"
        ),
    ):
        load_config(tmp_path / "bad.yaml")

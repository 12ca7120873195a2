"""Training and evaluation end to end: tools/train_net.py, the Trainer, and clear failures."""

import importlib.util
import json
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from resnet_backbones.engine import DatasetNotFoundError, Trainer, check_datasets, load_config

from .helpers import QUICKSTART, REPO, tiny_cfg, tiny_shapes


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
    with pytest.raises(DatasetNotFoundError, match="'no_such_dataset' is not registered"):
        check_datasets(["no_such_dataset"])


def _train_net_module():
    spec = importlib.util.spec_from_file_location(
        "train_net", os.path.join(REPO, "tools/train_net.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_command_line_flags():
    train_net = _train_net_module()
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
    assert args.config_file == "x.yaml" and args.eval_only and args.resume
    assert args.num_gpus == 2 and args.opts == ["MODEL.WEIGHTS", "w.pth"]
    assert train_net.parse_args(["--config-file", "y.yaml"]).config_file == "y.yaml"
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

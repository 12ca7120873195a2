"""Many processes and machines on the CPU (gloo): resnet_backbones.launch and the train tool's
--num-gpus, --num-machines, --machine-rank and --dist-url.

Every run is a child process of one thread (OMP_NUM_THREADS=1): a Python start with torch and
detectron2 costs ~5 s here, so each test starts as few as it can.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from resnet_backbones import launch as launch_module
from resnet_backbones.launch import LaunchError, launch, naive_sync_batchnorm, starts_processes

from .helpers import QUICKSTART, REPO, write_coco_folder

TOOL = [sys.executable, os.path.join(REPO, "tools/train_net.py")]
ITERATIONS = 5
# 2 processes of 2 images against 1 of 4. What makes them the same computation:
# - no aspect-ratio grouping: detectron2's TrainingSampler gives rank r the indices r, r + 2, ...
#   of one shuffled stream, so the two ranks' batches are the one process's batch;
# - images of one size (no padding that differs between the batches), no random flip;
# - every anchor and proposal sampled (huge BATCH_SIZE_PER_IMAGE): the samplers draw from each
#   process's own generator, which then picks nothing;
# - every anchor a proposal (one aspect ratio: 341 anchors on 64 px; no NMS, no top-k cut): the
#   sums of SyncBN differ in their last bits between 1 and 2 processes, enough to flip a near-tie
#   of the RPN's top-k or NMS, and so the RoIs, after a few iterations;
# - 2 boxes in every image, hence 343 RoIs in every image: the RoI losses, averaged over a
#   process's RoIs, then average to the one process's;
# - SGD without warmup, so that 5 iterations move the weights.
EQUALITY_OPTS = [
    "DATASETS.TRAIN", "('own',)", "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64", "INPUT.RANDOM_FLIP", "none",
    "DATALOADER.NUM_WORKERS", "0", "DATALOADER.ASPECT_RATIO_GROUPING", "False",
    "SOLVER.IMS_PER_BATCH", "4", "SOLVER.MAX_ITER", str(ITERATIONS),
    "SOLVER.CHECKPOINT_PERIOD", "100", "SOLVER.OPTIMIZER", "SGD", "SOLVER.BASE_LR", "0.01",
    "SOLVER.WARMUP_ITERS", "0", "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR",
    "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS", "[[1.0]]", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "100000",
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", "1000", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "1000",
    "MODEL.RPN.NMS_THRESH", "1.0",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "100000", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
    "SEED", "1",
]  # fmt: skip
NORM_OPTS = {
    "FrozenBN": ["MODEL.RESNETS.NORM", "FrozenBN"],
    "SyncBN": ["MODEL.RESNETS.NORM", "SyncBN", "MODEL.FPN.NORM", "SyncBN"],
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 images of 64 px with 2 boxes each."""
    return write_coco_folder(tmp_path_factory.mktemp("data"), num_images=8, boxes_per_image=2)


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [REPO, env.get("PYTHONPATH")]))
    for name in launch_module.TORCHRUN_VARIABLES:
        env.pop(name, None)
    return env


def _tool_args(data, output_dir, opts=()):
    dataset = ["--dataset", "own", str(data / "annotations.json"), str(data / "images")]
    return ["--config", QUICKSTART, *dataset, *EQUALITY_OPTS, *opts, "OUTPUT_DIR", str(output_dir)]


def _launch(plan, cwd):
    """``launch(train_recording_losses, num_processes, args=(runs,))`` for each
    ``(num_processes, runs)`` of ``plan`` in turn, in one child process (a run of 1 process
    trains in that process itself, saving a Python start)."""
    code = (
        "import json, sys\n"
        "from resnet_backbones.launch import launch\n"
        "from tests.helpers import train_recording_losses\n"
        "for num_processes, runs in json.loads(sys.argv[1]):\n"
        "    launch(train_recording_losses, num_processes, dist_url='auto', args=(runs,))\n"
    )
    cmd = [sys.executable, "-c", code, json.dumps(plan)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=cwd, env=_env())
    assert proc.returncode == 0, proc.stderr[-5000:]


def _weights(output_dir):
    # Our own file, written by this test's run: the trainer state in it is not only tensors.
    state = torch.load(output_dir / "model_final.pth", map_location="cpu", weights_only=False)
    return state["model"]


def test_two_processes_of_half_the_batch_equal_one_process(tmp_path, data):
    runs = {
        n: [
            # The train tool's own arguments, so that its setup (seeding included) runs.
            _tool_args(data, tmp_path / f"{norm}_{n}", opts)
            for norm, opts in NORM_OPTS.items()
        ]
        for n in (1, 2)
    }
    _launch([(1, runs[1]), (2, runs[2])], tmp_path)
    for norm in NORM_OPTS:
        one = json.loads((tmp_path / f"{norm}_1" / "losses.json").read_text())
        two = json.loads((tmp_path / f"{norm}_2" / "losses.json").read_text())
        assert (one["world_size"], two["world_size"]) == (1, 2)
        assert set(one["losses"]) == set(two["losses"]) and "total_loss" in one["losses"]
        for name, losses in one["losses"].items():
            assert len(losses) == len(two["losses"][name]) == ITERATIONS, name
            np.testing.assert_allclose(two["losses"][name], losses, rtol=0, atol=1e-5, err_msg=name)
        # The run trained: the loss moved far more than the tolerance.
        total = one["losses"]["total_loss"]
        assert abs(total[-1] - total[0]) > 1e-2, total

        weights_one, weights_two = (
            _weights(tmp_path / f"{norm}_1"),
            _weights(tmp_path / f"{norm}_2"),
        )
        assert set(weights_one) == set(weights_two)
        loss_diff = max(
            float(np.max(np.abs(np.subtract(two["losses"][k], v))))
            for k, v in one["losses"].items()
        )
        weight_diff = {
            k: float((weights_one[k].float() - weights_two[k].float()).abs().max())
            for k in weights_one
        }
        # NaiveSyncBatchNorm keeps the biased variance as its running_var, and does not count
        # num_batches_tracked; BatchNorm (the single process's SyncBN) keeps the unbiased one,
        # and counts. Neither is a weight that trains, nor used by detectron2's BN.
        bookkeeping = ("running_var", "num_batches_tracked")
        compared = {k: v for k, v in weight_diff.items() if not k.endswith(bookkeeping)}
        running_var = [v for k, v in weight_diff.items() if k.endswith("running_var")]
        print(
            f"{norm}: max |loss difference| {loss_diff:.3g}, max |weight difference| "
            f"{max(compared.values()):.3g} over {len(compared)} tensors; running_var "
            f"{max(running_var, default=0):.3g}"
        )
        worst = max(compared, key=compared.get)
        assert compared[worst] <= 1e-5, (worst, compared[worst])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_of_one_process_each_over_loopback(tmp_path, data):
    url = f"tcp://127.0.0.1:{_free_port()}"
    # Then the distributed evaluation: each machine infers half the images, rank 0 scores them.
    # An evaluation and a checkpoint after iteration 0 too: the checkpoint gathers the random
    # generators of both machines, in the same order of hooks as the evaluation's collectives.
    opts = ["SOLVER.MAX_ITER", "2", "DATASETS.TEST", "('own',)"]
    opts += ["SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "1"]
    opts += ["INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64"]
    procs = [
        subprocess.Popen(
            TOOL
            + ["--num-machines", "2", "--machine-rank", str(rank), "--dist-url", url]
            + _tool_args(data, tmp_path / f"machine{rank}", opts),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            cwd=tmp_path,
            env=_env(),
        )
        for rank in (0, 1)
    ]
    outputs = [proc.communicate(timeout=600)[0] for proc in procs]
    for proc, output in zip(procs, outputs):
        assert proc.returncode == 0, output[-5000:]
    # Each "machine" has its own OUTPUT_DIR: rank 0 trains and saves, rank 1 logs to log.txt.rank1.
    assert (
        "Rank of current process: 0. World size: 2" in (tmp_path / "machine0/log.txt").read_text()
    )
    rank1 = (tmp_path / "machine1/log.txt.rank1").read_text()
    assert "Rank of current process: 1. World size: 2" in rank1
    assert (tmp_path / "machine0/model_final.pth").is_file()
    assert "Start inference on 4 batches" in outputs[0]  # 4 of the 8 images on each machine
    assert "Evaluation results for bbox" in outputs[0]
    assert not (tmp_path / "machine1/model_final.pth").exists()


def test_num_gpus_2_without_cuda_starts_two_processes_and_errors_in_one_line(tmp_path, data):
    """Both processes start (each logs the world size), and the error they stop at (a dataset
    that is not registered) comes out as its one line, without torch.multiprocessing's
    traceback."""
    out = tmp_path / "run"
    opts = ["DATASETS.TRAIN", "('not_registered',)"]
    # "auto": a free port (detectron2's default --dist-url is one fixed port per user).
    cmd = TOOL + ["--num-gpus", "2", "--dist-url", "auto"] + _tool_args(data, out, opts)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env()
    )
    assert proc.returncode == 1, proc.stderr[-5000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert errors and all(
        line.startswith("error: DatasetNotFoundError: dataset 'not_registered'") for line in errors
    ), proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()


def test_torchrun_workers_join_its_group(tmp_path, data):
    """torchrun starts the 2 processes and the tool joins its group from the environment."""
    out = tmp_path / "run"
    torchrun = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
    ]
    opts = ["SOLVER.MAX_ITER", "1", *NORM_OPTS["SyncBN"]]
    cmd = torchrun + TOOL[1:] + _tool_args(data, out, opts)
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env()
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert "Rank of current process: 0. World size: 2" in (out / "log.txt").read_text()
    assert "Rank of current process: 1. World size: 2" in (out / "log.txt.rank1").read_text()
    assert (out / "model_final.pth").is_file()


# ------------------------------------------------------------------------------------------
# Without processes
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            {"num_machines": 2, "machine_rank": 2, "dist_url": "tcp://127.0.0.1:1"},
            "--machine-rank 2",
        ),
        ({"num_machines": 2, "dist_url": "auto"}, "--dist-url 'auto'"),
        ({"num_machines": 2}, "--dist-url 'auto'"),
        ({"num_machines": 0}, "--num-machines 0"),
    ],
)
def test_launch_refuses_what_makes_no_run(monkeypatch, kwargs, message):
    for name in launch_module.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(LaunchError, match=message.replace("'", ".")):
        launch(print, 1, **kwargs)


def test_processes_are_started_only_where_needed(monkeypatch):
    for name in launch_module.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    # One process per machine runs in the tool's own process; detectron2 spawns one per GPU.
    assert (starts_processes(2), starts_processes(1, 2), starts_processes(1)) == (
        True,
        False,
        False,
    )
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert starts_processes(1, 2)
    # torchrun started them.
    for name, value in zip(launch_module.TORCHRUN_VARIABLES, ("0", "2", "0")):
        monkeypatch.setenv(name, value)
    assert not starts_processes(2, 2)


def test_naive_sync_batchnorm_keeps_the_parameters_and_buffers():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.SyncBatchNorm(4))
    model[1].running_mean += 1
    weight, mean = model[1].weight, model[1].running_mean
    converted = naive_sync_batchnorm(model)
    from detectron2.layers import NaiveSyncBatchNorm

    assert converted is model and type(model[1]) is NaiveSyncBatchNorm
    assert model[1].weight is weight and model[1].running_mean is mean
    assert model[1]._stats_mode == "N"
    # In one process it is BatchNorm: the same numbers as torch's own.
    x = torch.randn(2, 4, 5, 5)
    reference = torch.nn.BatchNorm2d(4)
    reference.load_state_dict(model[1].state_dict())
    torch.testing.assert_close(model[1](x), reference(x))


def test_under_torchrun_the_launch_flags_are_ignored(monkeypatch, caplog):
    """torchrun made the processes: launch() runs the function here (a world of one needs no
    group) and says that --num-gpus does not apply."""
    for name, value in zip(launch_module.TORCHRUN_VARIABLES, ("0", "1", "0")):
        monkeypatch.setenv(name, value)
    # detectron2's setup_logger stops "resnet_backbones" from propagating to the root logger.
    launch_module.logger.addHandler(caplog.handler)
    try:
        calls = []
        launch(calls.append, 2, args=("ran",))
    finally:
        launch_module.logger.removeHandler(caplog.handler)
    assert calls == ["ran"]
    assert "--num-gpus 2, --num-machines 1 and --machine-rank 0 are ignored" in caplog.text

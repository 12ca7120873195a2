"""Exact resume: the resumable loader, what a checkpoint holds, kill -9 + --resume giving the
weights of an uninterrupted run bitwise (SGD and AdamW, via tools/chaos_resume.py), one run per
OUTPUT_DIR, and the errors that stop a run (non-finite loss, out of memory)."""

from __future__ import annotations

import fcntl
import os

import numpy as np
import pytest
import torch

from resnet_backbones.data.loader import ResumableBatchSampler, ResumableTrainLoader
from resnet_backbones.output_dir import (
    LOCK_NAME,
    OutputDirInUseError,
    PreviousRunError,
    claim_output_dir,
    release,
)
from resnet_backbones.resume import capture_rng_state, restore_rng_state
from resnet_backbones.train_net import main

from .helpers import QUICKSTART, TINY_OWN_DATA, load_tool, write_coco_folder


def _tool():
    return load_tool("chaos_resume")


# ------------------------------------------------------------------------------------------
# The loader
# ------------------------------------------------------------------------------------------
def _take(sampler, n):
    out = []
    for batch in sampler:
        out.append(batch)
        if len(out) == n:
            return out


@pytest.mark.parametrize("grouped", [False, True])
def test_batches_do_not_depend_on_the_number_of_processes_or_the_start(grouped):
    groups = [i % 3 == 0 for i in range(10)] if grouped else None
    one = _take(ResumableBatchSampler(10, 4, seed=3, group_ids=groups), 12)
    two = [_take(ResumableBatchSampler(10, 4, seed=3, group_ids=groups, rank=r, world_size=2), 12)
           for r in range(2)]  # fmt: skip
    for k in range(12):
        assert two[0][k] + two[1][k] == one[k]
    resumed = ResumableBatchSampler(10, 4, seed=3, group_ids=groups, start_iter=7)
    assert _take(resumed, 5) == one[7:]
    indices = [[i for _, i in batch] for batch in one]
    if grouped:  # every batch is of one aspect-ratio group
        assert all(len({groups[i] for i in batch}) == 1 for batch in indices)
    else:  # every epoch of 10 samples sees each once (5 batches of 4 = 2 epochs)
        flat = sum(indices[:5], [])
        assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    seeds = [s for batch in one for s, _ in batch]
    assert len(set(seeds)) == len(seeds)  # every sample of every iteration has its own seed
    other = _take(ResumableBatchSampler(10, 4, seed=4, group_ids=groups), 12)
    assert other != one


def test_sampler_rejects_a_batch_the_processes_cannot_share():
    with pytest.raises(ValueError, match="multiple of the number of processes"):
        ResumableBatchSampler(10, 3, seed=0, world_size=2)
    with pytest.raises(ValueError, match="dataset is empty"):
        ResumableBatchSampler(0, 2, seed=0)


def _random_mapper(record):
    # Draws from all three generators, as detectron2's augmentations do.
    import random

    return {
        "id": record["id"],
        "draws": (random.random(), float(np.random.rand()), float(torch.rand(()))),
    }


def test_augmentations_are_seeded_per_sample_and_leave_the_callers_generators_alone():
    records = [{"id": i, "width": 8, "height": 6} for i in range(6)]
    torch.manual_seed(0)
    before = capture_rng_state()
    loader = ResumableTrainLoader(records, _random_mapper, 4, seed=5)
    straight = [batch for batch, _ in zip(loader, range(4))]
    after = capture_rng_state()
    assert torch.equal(before["torch"], after["torch"])  # loading drew nothing from it
    assert before["python"] == after["python"]
    loader = ResumableTrainLoader(records, _random_mapper, 4, seed=5, num_workers=1)
    loader.start_iter = 2
    resumed = [batch for batch, _ in zip(loader, range(2))]
    assert resumed == straight[2:]  # same samples, same draws, in a worker process
    draws = [d["draws"] for batch in straight for d in batch]
    assert len(set(draws)) == len(draws)


def test_a_skipped_image_is_replaced_by_one_drawn_from_the_samples_seed(caplog):
    """A mapper returns None for an image it skips (DATASETS.BAD_IMAGES "skip"): another image
    takes its place, the same one in a resumed run."""
    records = [{"id": i, "width": 8, "height": 6} for i in range(6)]

    def skip_image_2(record):
        return None if record["id"] == 2 else _random_mapper(record)

    straight = list(zip(ResumableTrainLoader(records, skip_image_2, 3, seed=5), range(6)))
    assert all(d is not None and d["id"] != 2 for batch, _ in straight for d in batch)
    assert "Image 2 of the training set was skipped; image" in caplog.text
    loader = ResumableTrainLoader(records, skip_image_2, 3, seed=5)
    loader.start_iter = 3
    assert list(zip(loader, range(3))) == [(b, i) for (b, _), i in zip(straight[3:], range(3))]


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random

    state = capture_rng_state()
    torch.save(state, tmp_path / "rng.pth")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    restore_rng_state(torch.load(tmp_path / "rng.pth", weights_only=True))
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected


# ------------------------------------------------------------------------------------------
# The train tool: checkpoints, kill -9, one run per folder
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_data(tmp_path_factory):
    return write_coco_folder(tmp_path_factory.mktemp("data"), num_images=6)


def _args(data, output_dir, *opts, max_iter=4):
    return [
        "--config", QUICKSTART,
        "--dataset", "d", str(data / "annotations.json"), str(data / "images"),
        "OUTPUT_DIR", str(output_dir), *TINY_OWN_DATA,
        "DATASETS.TRAIN", "('d',)", "DATASETS.TEST", "()",
        "SOLVER.MAX_ITER", str(max_iter), "SOLVER.WARMUP_ITERS", "2", "SEED", "1", *opts,
    ]  # fmt: skip


def test_checkpoint_holds_optimizer_data_seed_and_generators(tmp_path, own_data):
    assert main(_args(own_data, tmp_path, max_iter=2)) == 0
    checkpoint = torch.load(tmp_path / "model_final.pth", weights_only=True)
    trainer = checkpoint["trainer"]
    assert trainer["iteration"] == 1
    assert set(trainer["_trainer"]["optimizer"]) == {"state", "param_groups"}
    moments = trainer["_trainer"]["optimizer"]["state"]
    assert moments and all("exp_avg" in s for s in moments.values())  # AdamW (the quickstart's)
    assert trainer["data"] == {
        "seed": 1, "num_samples": 6, "total_batch_size": 2, "aspect_ratio_grouping": True
    }  # fmt: skip
    assert len(trainer["rng"]) == 1 and set(trainer["rng"][0]) >= {"python", "numpy", "torch"}
    assert "LRScheduler" in trainer["hooks"]


@pytest.mark.parametrize(
    "optimizer, kills, evaluate",
    [("SGD", 1, True), ("AdamW", 2, False)],
)
def test_kill_and_resume_gives_the_uninterrupted_weights_bitwise(
    tmp_path, own_data, optimizer, kills, evaluate
):
    """N iterations straight, against the same run killed with SIGKILL (after a step, then
    during a checkpoint write) and resumed: model and optimizer tensors are bitwise equal. With
    SGD, an evaluation every 2 iterations runs between checkpoints and the next step."""
    tool = _tool()
    extra = ["DATASETS.TEST", "('d',)", "TEST.EVAL_PERIOD", "2"] if evaluate else []
    args = _args(own_data, "unused", "SOLVER.OPTIMIZER", optimizer, *extra, max_iter=5)
    assert args[6] == "OUTPUT_DIR"  # the tool chooses the output folders
    summary = tool.chaos_resume(
        [args[1]],
        args[8:],
        kills,
        str(tmp_path),
        seed=2,
        timeout=300,
        datasets=[args[3:6]],
        echo=lambda *_: None,
    )
    assert summary["kills"] == kills, summary
    assert summary["final_returncode"] == 0, summary
    assert summary["optimizer_tensors"] > 0
    assert summary["bitwise_equal"], summary
    assert summary["leftover_temporaries"] == []


def test_new_run_refuses_a_folder_with_a_previous_run(tmp_path, own_data, capsys):
    assert main(_args(own_data, tmp_path, max_iter=1)) == 0
    capsys.readouterr()
    assert main(_args(own_data, tmp_path, max_iter=1)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: PreviousRunError: OUTPUT_DIR")
    assert "--resume" in err and "--overwrite" in err and "model_final.pth" in err
    before = os.path.getmtime(tmp_path / "model_final.pth")
    assert main(["--overwrite", *_args(own_data, tmp_path, max_iter=1)]) == 0
    assert os.path.getmtime(tmp_path / "model_final.pth") > before


def test_a_running_folder_is_refused_even_to_resume(tmp_path):
    with open(tmp_path / LOCK_NAME, "w") as held:
        held.write("pid 123 on elsewhere\n")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX)
        # flock locks belong to the open file: a second open in this process is refused too.
        with pytest.raises(OutputDirInUseError, match="pid 123 on elsewhere"):
            claim_output_dir(str(tmp_path), resume=True)
    lock = claim_output_dir(str(tmp_path), resume=True)  # released: it goes
    lock.close()
    (tmp_path / "last_checkpoint").write_text("model_0000001.pth")
    with pytest.raises(PreviousRunError, match="last_checkpoint"):
        claim_output_dir(str(tmp_path), resume=False)
    lock = claim_output_dir(str(tmp_path), resume=False, overwrite=True)
    assert not (tmp_path / "last_checkpoint").exists()
    lock.close()


# ------------------------------------------------------------------------------------------
# Errors that stop a run
# ------------------------------------------------------------------------------------------
def _sabotage(monkeypatch, at_call, failure):
    """The model's forward raises ``failure()`` (or returns its loss dict) from call ``at_call``."""
    from resnet_backbones.engine import Trainer

    build = Trainer.build_model.__func__

    def build_model(cls, cfg):
        model = build(cls, cfg)
        forward, calls = model.forward, [0]

        def sabotaged(batched_inputs):
            calls[0] += 1
            losses = forward(batched_inputs)
            if model.training and calls[0] >= at_call:
                return failure(losses)
            return losses

        model.forward = sabotaged
        return model

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))


def test_non_finite_loss_stops_and_names_the_checkpoint_to_resume(
    tmp_path, own_data, capsys, monkeypatch
):
    def nan_loss(losses):
        return {**losses, "loss_cls": losses["loss_cls"] * float("nan")}

    _sabotage(monkeypatch, 3, nan_loss)
    assert main(_args(own_data, tmp_path, max_iter=4)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: NonFiniteLossError: the loss became non-finite at iteration 2")
    assert "model_0000001.pth" in err and "--resume" in err and "SOLVER.BASE_LR" in err
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == [
        "model_0000000.pth",
        "model_0000001.pth",
    ]
    state = torch.load(tmp_path / "model_0000001.pth", weights_only=True)["model"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    log = (tmp_path / "log.txt").read_text()  # the log says why, without a traceback
    assert "Training stopped: NonFiniteLossError: the loss became non-finite" in log
    assert "Traceback" not in log


def test_out_of_memory_names_the_batch_and_the_keys_to_lower(
    tmp_path, own_data, capsys, monkeypatch
):
    def oom(losses):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    _sabotage(monkeypatch, 2, oom)
    assert main(_args(own_data, tmp_path, max_iter=3)) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: TrainingOutOfMemoryError: out of memory at iteration 1 on cpu")
    assert "a batch of 2 images of" in err and "64x64 px" in err
    assert "SOLVER.IMS_PER_BATCH (now 2" in err and "INPUT.MAX_SIZE_TRAIN (now 64)" in err
    assert "model_0000000.pth" in err


def test_a_kill_while_writing_model_final_is_finished_by_resume(tmp_path, own_data):
    """A run killed while it wrote model_final.pth has its last iteration's checkpoint, and
    --resume writes model_final.pth from it instead of exiting with no final model."""
    assert main(_args(own_data, tmp_path, max_iter=2)) == 0
    os.remove(tmp_path / "model_final.pth")  # as after a kill during its write
    (tmp_path / ".model_final.pth.tmp-999999-x").write_bytes(b"torn")
    lines = (tmp_path / "metrics.json").read_text().splitlines()
    assert '"total_loss"' in lines[-1] and '"iteration": 1' in lines[-1]
    assert main(["--resume", *_args(own_data, tmp_path, max_iter=2)]) == 0
    final = torch.load(tmp_path / "model_final.pth", weights_only=True)
    last = torch.load(tmp_path / "model_0000001.pth", weights_only=True)
    assert final["iteration"] == last["iteration"] == 1
    assert all(torch.equal(final["model"][k], v) for k, v in last["model"].items())
    assert not (tmp_path / ".model_final.pth.tmp-999999-x").exists()
    assert (tmp_path / "metrics.json").read_text().splitlines() == lines


def test_a_forked_child_does_not_keep_the_folder_locked(tmp_path):
    """A DataLoader worker forked while the run holds OUTPUT_DIR outlives its killed parent by
    seconds: its copy of the lock file must not hold the lock (flock belongs to the open file,
    which a fork shares), or the --resume that follows is refused."""
    import time

    lock = claim_output_dir(str(tmp_path), resume=False)
    started, ready = os.pipe()
    pid = os.fork()
    if pid == 0:  # the worker (past the fork handlers): still alive after its parent lets go
        os.write(ready, b"1")
        time.sleep(2)
        os._exit(0)
    try:
        os.read(started, 1)
        release(lock)
        again = claim_output_dir(str(tmp_path), resume=True)  # while the child lives
        release(again)
    finally:
        os.waitpid(pid, 0)
        os.close(started)
        os.close(ready)


def test_a_bf16_amp_run_on_the_cpu_trains_in_autocast_and_resumes_bitwise(
    tmp_path, own_data, monkeypatch
):
    """SOLVER.AMP.ENABLED on the CPU: the detection Trainer's forward runs under bf16 autocast
    (detectron2's AMPTrainer would need CUDA), and a run resumed from its first checkpoint ends
    with the uninterrupted run's weights, bitwise."""
    from resnet_backbones.engine import Trainer

    build = Trainer.build_model.__func__
    autocast = []

    def build_model(cls, cfg):
        model = build(cls, cfg)

        def record(module, inputs):
            if module.training:
                autocast.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))

        model.backbone.register_forward_pre_hook(record)
        return model

    monkeypatch.setattr(Trainer, "build_model", classmethod(build_model))
    amp = ("SOLVER.AMP.ENABLED", "True")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert main(_args(own_data, straight, *amp, max_iter=2)) == 0
    assert autocast == [(True, torch.bfloat16)] * 2
    resumed.mkdir()
    (resumed / "model_0000000.pth").write_bytes((straight / "model_0000000.pth").read_bytes())
    (resumed / "last_checkpoint").write_text("model_0000000.pth")
    assert main(["--resume", *_args(own_data, resumed, *amp, max_iter=2)]) == 0
    assert autocast == [(True, torch.bfloat16)] * 3  # iteration 1 again
    expected = torch.load(straight / "model_final.pth", weights_only=True)
    got = torch.load(resumed / "model_final.pth", weights_only=True)
    assert expected["model"].keys() == got["model"].keys()
    for key, value in expected["model"].items():
        assert torch.equal(got["model"][key], value), key
    moments = expected["trainer"]["_trainer"]["optimizer"]["state"]
    assert moments
    for index, state in moments.items():
        for name, value in state.items():
            assert torch.equal(got["trainer"]["_trainer"]["optimizer"]["state"][index][name], value)

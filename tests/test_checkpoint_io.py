"""Checkpoints nothing can corrupt: atomic writes, a full disk, kill -9 mid-write, torn and
non-finite checkpoints on resume, non-finite models never saved, and the metrics file."""

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from resnet_backbones.engine import Trainer, load_config
from resnet_backbones.events import AtomicJSONWriter
from resnet_backbones.utils import DiskFullError, atomic_write, remove_stale_temporaries
from resnet_backbones.weights.checkpoint import FamilyCheckpointer, non_finite_tensors
from resnet_backbones.weights.errors import NoGoodCheckpointError, NonFiniteWeightsError

from .helpers import QUICKSTART, REPO


def _temporaries(folder):
    return sorted(n for n in os.listdir(folder) if ".tmp-" in n)


def _size(path):
    """The size of a file that another process may rename away meanwhile (0 then)."""
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ------------------------------------------------------------------------------------------
# atomic_write
# ------------------------------------------------------------------------------------------
def test_atomic_write_error_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "model_final.pth"
    path.write_bytes(b"old")
    with pytest.raises(ValueError, match="in the middle"):
        with atomic_write(str(path)) as f:
            f.write(b"new, but only half")
            raise ValueError("in the middle")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model_final.pth"]


def test_atomic_write_no_space_left_is_a_disk_full_error(tmp_path):
    path = tmp_path / "metrics.json"
    with pytest.raises(DiskFullError) as caught:
        with atomic_write(str(path), "w") as f:
            f.write("{}")
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    message = str(caught.value)
    assert message.startswith(f"no space left on device while writing {path} (")
    assert f"MiB free on the disk of {tmp_path})" in message
    assert caught.value.errno == errno.ENOSPC and caught.value.filename == str(path)
    assert os.listdir(tmp_path) == []


def test_stale_temporaries_are_removed_live_ones_kept(tmp_path):
    dead = tmp_path / f".model_0000009.pth.tmp-{_dead_pid()}-k3j5x_9a"
    ours_not_open = tmp_path / f".model_0000004.pth.tmp-{os.getpid()}-abc"
    live = tmp_path / f".model_0000019.pth.tmp-{os.getppid()}-xyz"  # pytest's parent: alive
    other = tmp_path / "model_0000009.pth"
    for path in (dead, ours_not_open, live, other):
        path.write_bytes(b"x")
    removed = remove_stale_temporaries(str(tmp_path))
    assert sorted(removed) == sorted([str(dead), str(ours_not_open)])
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, other.name])


# ------------------------------------------------------------------------------------------
# Saving and resuming with FamilyCheckpointer
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quickstart():
    cfg = load_config(QUICKSTART, ["MODEL.DEVICE", "cpu"])
    return cfg, Trainer.build_model(cfg)


def _a_weight(model):
    return model.backbone.bottom_up.stem.conv1.weight


def _two_checkpoints(folder, quickstart):
    """model_0000000.pth and model_0000001.pth (the last), of different weights; returns the
    weights of the first."""
    cfg, model = quickstart
    checkpointer = FamilyCheckpointer(model, str(folder), cfg=cfg)
    with torch.no_grad():
        _a_weight(model).fill_(0.25)
    checkpointer.save("model_0000000", iteration=0)
    first = _a_weight(model).detach().clone()
    with torch.no_grad():
        _a_weight(model).fill_(0.5)
    checkpointer.save("model_0000001", iteration=1)
    os.utime(folder / "model_0000000.pth", (time.time() - 10, time.time() - 10))
    return first


def _resume(folder, quickstart):
    cfg, model = quickstart
    with torch.no_grad():
        _a_weight(model).zero_()
    return FamilyCheckpointer(model, str(folder), cfg=cfg).resume_or_load("", resume=True)


def test_save_is_complete_and_tags_last_checkpoint(tmp_path, quickstart):
    _two_checkpoints(tmp_path, quickstart)
    assert sorted(os.listdir(tmp_path)) == [
        "last_checkpoint",
        "model_0000000.pth",
        "model_0000001.pth",
    ]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert _resume(tmp_path, quickstart)["iteration"] == 1
    assert torch.all(_a_weight(quickstart[1]) == 0.5)


def test_resume_passes_over_a_torn_checkpoint(tmp_path, quickstart, caplog):
    first = _two_checkpoints(tmp_path, quickstart)
    torn = tmp_path / "model_0000001.pth"
    torn.write_bytes(torn.read_bytes()[: torn.stat().st_size // 2])  # as fvcore left it
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path, quickstart)["iteration"] == 0
    assert torch.equal(_a_weight(quickstart[1]), first)
    assert f"{torn} is torn or unreadable (not a readable torch.save file" in caplog.text
    assert f"loaded {tmp_path / 'model_0000000.pth'} instead" in caplog.text
    assert torn.exists()  # left in place


def test_resume_passes_over_a_non_finite_checkpoint(tmp_path, quickstart, caplog):
    first = _two_checkpoints(tmp_path, quickstart)
    poisoned = tmp_path / "model_0000001.pth"
    checkpoint = torch.load(poisoned, weights_only=True)
    checkpoint["model"]["backbone.bottom_up.stem.conv1.weight"][0, 0, 0, 0] = float("nan")
    torch.save(checkpoint, poisoned)
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path, quickstart)["iteration"] == 0
    assert torch.equal(_a_weight(quickstart[1]), first)
    floating = sum(v.is_floating_point() for v in quickstart[1].state_dict().values())
    assert (
        f"{poisoned} is not finite: 1 of its {floating} floating-point tensors hold NaN or Inf "
        "(backbone.bottom_up.stem.conv1.weight); loaded"
    ) in caplog.text


@pytest.mark.parametrize("content", ["", "model_0000007.pth"])
def test_empty_or_dangling_last_checkpoint(tmp_path, quickstart, caplog, content):
    marker = tmp_path / "last_checkpoint"
    marker.write_text(content)
    problem = (
        f"{marker} is empty"
        if not content
        else f"{marker} names 'model_0000007.pth', which is not in {tmp_path}"
    )
    with pytest.raises(
        NoGoodCheckpointError, match=f"no checkpoint in {tmp_path} can be loaded: {problem}"
    ):
        _resume(tmp_path, quickstart)

    first = _two_checkpoints(tmp_path, quickstart)
    (tmp_path / "model_0000001.pth").unlink()
    marker.write_text(content)
    with caplog.at_level(logging.WARNING):
        assert _resume(tmp_path, quickstart)["iteration"] == 0
    assert torch.equal(_a_weight(quickstart[1]), first)
    assert problem in caplog.text


def test_no_checkpoint_loads(tmp_path, quickstart):
    _two_checkpoints(tmp_path, quickstart)
    for name in ("model_0000000.pth", "model_0000001.pth"):
        (tmp_path / name).write_bytes(b"PK\x03\x04torn")
    with pytest.raises(NoGoodCheckpointError) as caught:
        _resume(tmp_path, quickstart)
    message = str(caught.value)
    for name in ("model_0000000.pth", "model_0000001.pth"):
        assert f"{tmp_path / name} is torn or unreadable" in message
    assert "use a new OUTPUT_DIR (or move them away) and run without --resume" in message


def test_non_finite_model_is_not_saved(tmp_path, quickstart):
    _two_checkpoints(tmp_path, quickstart)
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    cfg, model = quickstart
    with torch.no_grad():
        _a_weight(model)[0, 0, 0, 0] = float("inf")
    checkpointer = FamilyCheckpointer(model, str(tmp_path), cfg=cfg)
    with pytest.raises(NonFiniteWeightsError) as caught:
        checkpointer.save("model_0000002", iteration=2)
    message = str(caught.value)
    assert message.startswith(
        "training diverged at iteration 2: the model's weights are not finite (1 of its"
    )
    assert "backbone.bottom_up.stem.conv1.weight" in message
    assert f"The newest good checkpoint is {tmp_path / 'model_0000001.pth'}" in message
    assert "--resume" in message
    assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before


# ------------------------------------------------------------------------------------------
# A full disk and kill -9, in their own processes
# ------------------------------------------------------------------------------------------
_SAVER = textwrap.dedent(
    """
    import resource, signal, sys
    import torch
    from resnet_backbones.weights.checkpoint import FamilyCheckpointer, non_finite_tensors

    folder, mode = sys.argv[1], sys.argv[2]
    model = torch.nn.Linear(2, 2)
    checkpointer = FamilyCheckpointer(model, folder)
    checkpointer.save("model_0000000", iteration=0)  # small: fits
    model = torch.nn.Linear(2048, 2048)  # 16 MiB
    checkpointer = FamilyCheckpointer(model, folder)
    if mode == "fsize":
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write then fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (4 << 20, resource.RLIM_INFINITY))
        try:
            checkpointer.save("model_0000001", iteration=1)
        except OSError as e:
            print(f"{type(e).__name__}: {e}")
            sys.exit(1)
    else:
        for iteration in range(1, 10**6):
            with torch.no_grad():
                model.weight.fill_(iteration)
            checkpointer.save(f"model_{iteration:07d}", iteration=iteration)
            print("saved", iteration, flush=True)
    """
)


def _saver(folder, mode, **kwargs):
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, "-c", _SAVER, str(folder), mode]
    return subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, **kwargs)


def _check_complete(folder):
    """Every checkpoint loads, and last_checkpoint names one; returns its iteration."""
    for name in os.listdir(folder):
        if name.endswith(".pth"):
            torch.load(folder / name, weights_only=True)
    last = torch.load(folder / (folder / "last_checkpoint").read_text(), weights_only=True)
    return last["iteration"]


def test_file_size_limit_is_a_clear_error_and_tears_nothing(tmp_path):
    proc = _saver(tmp_path, "fsize", stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err[-2000:]
    path = tmp_path / "model_0000001.pth"
    assert out.startswith(
        f"DiskFullError: file size limit reached (RLIMIT_FSIZE, see ulimit -f) while writing "
        f"{path} ("
    ), out
    assert "nothing was written under that name" in out
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000000.pth"]
    assert _check_complete(tmp_path) == 0


def test_kill_during_a_checkpoint_write_leaves_only_complete_files(tmp_path):
    proc = _saver(tmp_path, "loop", stderr=subprocess.DEVNULL)
    try:
        assert proc.stdout.readline().startswith("saved 1")
        # Kill it while a file is half written (whatever its name).
        full = _size(tmp_path / "model_0000001.pth")
        partial, deadline = [], time.time() + 30
        while not partial and time.time() < deadline:
            partial = [n for n in os.listdir(tmp_path) if 4 << 20 < _size(tmp_path / n) < full]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert partial, "no file was seen half written"
    assert _check_complete(tmp_path) >= 1
    assert _temporaries(tmp_path), "the kill came after the rename: no partial file to test"

    # The next start (Trainer.resume_or_load, once it holds OUTPUT_DIR) removes the killed
    # writer's temporary.
    remove_stale_temporaries(str(tmp_path))
    assert _temporaries(tmp_path) == []


# ------------------------------------------------------------------------------------------
# metrics.json
# ------------------------------------------------------------------------------------------
def _write_iterations(writer, iterations):
    from detectron2.utils.events import EventStorage

    with EventStorage(iterations[0]) as storage:
        for iteration in iterations:
            storage.iter = iteration
            storage.put_scalar("loss", float(iteration), smoothing_hint=False)
            writer.write()


def test_metrics_writer_resumes_without_repeating_lines(tmp_path, caplog):
    path = tmp_path / "metrics.json"
    _write_iterations(AtomicJSONWriter(str(path)), [0, 1, 2, 3, 4])
    with open(path, "a") as f:
        f.write('{"loss": 5.0, "itera')  # torn by a kill of detectron2's JSONWriter
    with caplog.at_level(logging.WARNING):
        resumed = AtomicJSONWriter(str(path))
    assert f"{path}, line 6: dropped" in caplog.text
    resumed.drop_after(2)  # resumed from the checkpoint of iteration 2
    assert [json.loads(line)["iteration"] for line in open(path)] == [0, 1, 2]
    _write_iterations(resumed, [3, 4, 5])
    lines = [json.loads(line) for line in open(path)]
    assert [(r["iteration"], r["loss"]) for r in lines] == [(i, float(i)) for i in range(6)]
    assert _temporaries(tmp_path) == []


def test_metrics_written_at_a_checkpoint_still_get_that_iterations_evaluation(tmp_path):
    """The trainer writes metrics.json just before a checkpoint; the evaluation after it puts
    its AP at the same iteration, which joins that iteration's line."""
    from detectron2.utils.events import EventStorage

    path = tmp_path / "metrics.json"
    writer = AtomicJSONWriter(str(path))
    with EventStorage(4) as storage:
        storage.put_scalar("loss", 1.5, smoothing_hint=False)
        writer.write()  # before the checkpoint
        storage.put_scalar("bbox/AP", 42.0, smoothing_hint=False)
        writer.write()  # detectron2's PeriodicWriter, after the evaluation
        writer.write()  # nothing new: nothing changes
    assert [json.loads(line) for line in open(path)] == [
        {"bbox/AP": 42.0, "iteration": 4, "loss": 1.5}
    ]


def test_non_finite_tensors_are_found_exactly():
    state = {
        "large": torch.full((4,), 3e38),  # finite, though its sum overflows
        "nan": torch.tensor([1.0, float("nan")]),
        "infs": torch.tensor([float("inf"), -float("inf")]),
        "half": torch.tensor([60000.0, 60000.0], dtype=torch.float16),
        "ints": torch.tensor([1, 2]),
    }
    assert non_finite_tensors(state) == ["nan", "infs"]

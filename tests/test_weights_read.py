"""Step 2 of the weights pipeline: reading a file without running code from it."""

import io
import pickle
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision

from resnet_backbones.weights.detect import read_weights
from resnet_backbones.weights.errors import (
    UnsafeWeightsError,
    WeightsError,
    WeightsFormatError,
    WeightsNotFoundError,
)
from resnet_backbones.weights.read import read_file
from resnet_backbones.weights.safe_pickle import load_pickle

from .helpers import OpenForWriting, System, evil_pkl, safetensors_bytes


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_safe_pickle_reads_arrays_numbers_strings_and_containers(protocol):
    data = {
        "conv1_w": np.random.randn(4, 3, 3, 3).astype(np.float32),
        "res2_0_branch2a_bn_s": np.arange(4, dtype=np.float64),
        "__author__": "MSRA",
        "counts": OrderedDict(a=np.int64(3), b=[1, 2.5, (3, "x")]),
        "tags": {"a", "b"},
        "raw": b"\x00\xff",
    }
    loaded = load_pickle(io.BytesIO(pickle.dumps(data, protocol=protocol)))
    assert loaded.keys() == data.keys()
    for key in ("conv1_w", "res2_0_branch2a_bn_s"):
        assert loaded[key].dtype == data[key].dtype and np.array_equal(loaded[key], data[key])
    assert loaded["counts"] == data["counts"] and isinstance(loaded["counts"], OrderedDict)
    assert (loaded["tags"], loaded["raw"], loaded["__author__"]) == (
        {"a", "b"},
        b"\x00\xff",
        "MSRA",
    )


@pytest.mark.parametrize(
    "payload, refused",
    [(OpenForWriting, r"(builtins|io)\.open"), (System, r"(posix|os)\.system")],
)
def test_a_malicious_pickle_is_refused_before_it_runs(tmp_path, payload, refused):
    path, marker = evil_pkl(tmp_path, payload)
    for read in (load_pickle, read_file, read_weights):
        with pytest.raises(UnsafeWeightsError, match=refused) as info:
            read(str(path))
        assert str(path) in str(info.value)
    assert not marker.exists()


def test_a_malicious_torch_file_is_refused(tmp_path):
    marker, path = tmp_path / "pwned", tmp_path / "model_final.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "hook": OpenForWriting(marker)}, path)
    with pytest.raises(UnsafeWeightsError, match=r"refused to load (builtins|io)\.open") as info:
        read_file(str(path))
    assert str(path) in str(info.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.pth", b"", "the weights file is empty"),
        ("empty.pkl", b"", "the weights file is empty"),
        ("garbage.pkl", b"\x80\x04garbage that is not a pickle", "nor a readable pickle"),
        (
            "garbage.pth",
            b"not a torch file at all",
            "neither a torch.save archive, a safetensors file nor",
        ),
        ("truncated.pth", "truncated", "not a readable torch.save file"),
        ("weights.txt", b"conv1.weight 1 2 3", "neither a torch.save archive, a safetensors"),
        # safetensors files cut in their tensors, in their header, and with a garbled header.
        ("cut.safetensors", "safetensors 0.6", r"a corrupt safetensors file \(SafetensorError"),
        ("cut", "safetensors 20B", r"header announces \d+ bytes, the file has 20 in all"),
        (
            "garbled.bin",
            "safetensors garbled",
            "a corrupt safetensors file .its header is not JSON",
        ),
        # A file of ours whose metadata is not the JSON object we write.
        ("ours.safetensors", "safetensors ours", "'resnet_backbones' in the safetensors header"),
    ],
)
def test_unreadable_files_are_errors_naming_the_path(tmp_path, name, content, message):
    path = tmp_path / name
    if content == "truncated":
        buffer = io.BytesIO()
        torch.save({"w": torch.zeros(1000)}, buffer)
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    elif isinstance(content, str):
        whole = safetensors_bytes({"conv1.weight": torch.zeros(8, 3, 7, 7)})
        garbled = whole[:9] + b"\xff" + whole[10:]
        ours = safetensors_bytes({"w": torch.zeros(1)}, {"resnet_backbones": "not JSON"})
        content = {
            "0.6": whole[: int(len(whole) * 0.6)],
            "20B": whole[:20],
            "garbled": garbled,
            "ours": ours,
        }[content.split()[1]]
    path.write_bytes(content)
    with pytest.raises(WeightsFormatError, match=message) as info:
        read_file(str(path))
    assert str(path) in str(info.value) and "\n" not in str(info.value)
    # One taxonomy: a WeightsError, and the ValueError callers already catch.
    assert isinstance(info.value, WeightsError) and isinstance(info.value, ValueError)


def test_a_missing_file_is_a_file_not_found_error(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nothere.pth") as info:
        read_file(str(tmp_path / "nothere.pth"))
    assert isinstance(info.value, FileNotFoundError)


def test_the_kind_of_file_is_read_from_its_content_not_its_name(tmp_path):
    """A Caffe2 pickle named .pth, a torch.save archive named .pkl, torch.save's legacy format,
    and a file without extension are all read by what they hold."""
    state = torchvision.models.resnet18(weights=None).state_dict()
    caffe2 = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": np.zeros(1)}
    (tmp_path / "caffe2.pth").write_bytes(pickle.dumps(caffe2, protocol=2))
    torch.save(state, tmp_path / "archive.pkl")
    torch.save(state, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint")
    assert read_file(str(tmp_path / "caffe2.pth")).keys() == caffe2.keys()
    assert read_weights(str(tmp_path / "caffe2.pth")).format == "msra"
    for name in ("archive.pkl", "legacy.pth"):
        loaded = read_file(str(tmp_path / name))
        assert torch.equal(loaded["layer1.0.conv1.weight"], state["layer1.0.conv1.weight"])
        assert read_weights(str(tmp_path / name)).format == "torchvision"
    # safetensors files, by their header (the first 8 bytes are its size, then JSON), whatever
    # their name: before, their size's first byte made them a pickle with an "invalid load key".
    blob = safetensors_bytes(state)
    for name in ("model.safetensors", "weights.pth", "no_extension"):
        (tmp_path / name).write_bytes(blob)
        weights = read_weights(str(tmp_path / name))
        assert weights.format == "torchvision" and weights.state_dict.keys() == state.keys()
        assert all(torch.equal(weights.state_dict[k], v) for k, v in state.items())
    # A torchvision state dict under "model" (DeiT-style training scripts) is not a detectron2 model.
    weights = read_weights(str(tmp_path / "checkpoint"))
    assert (weights.format, weights.wrapper, weights.extra) == (
        "torchvision",
        "model",
        {"epoch": 3},
    )

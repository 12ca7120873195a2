"""tools/benchmark_memory.py and tools/benchmark_train.py --variants on tiny settings: they write
the rows of the benchmark table as JSON (the numbers themselves are measured by running them)."""

import importlib.util
import json
import os
import sys

from .helpers import QUICKSTART, REPO

ROW_KEYS = {"measure", "baseline", "baseline_value", "ours_value", "unit", "ratio", "target"}


def _tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_memory_benchmark_writes_rows(tmp_path, monkeypatch):
    """The variants run in this process here (the tool starts a fresh one for each)."""
    tool = _tool("benchmark_memory")
    stages = []

    def in_process(args, model, checkpointed):
        stages.append(list(checkpointed))
        child = tool.argparse.Namespace(**{**vars(args), "model": model, "stages": checkpointed})
        return tool.child(child)

    monkeypatch.setattr(tool, "run_variant", in_process)
    out = tmp_path / "memory.json"
    assert tool.main(["--quick", "--backbone-only", "--stages", "res4", "--out", str(out)]) == 0
    assert stages == [[], ["res4"]]
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert set(row) == ROW_KEYS and row["unit"] == "MiB"
    assert row["ratio"] == row["baseline_value"] / row["ours_value"]
    assert result["calibration_s"] > 0 and result["machine"]
    for variant in result["variants"]["backbone"].values():
        assert variant["peak_mib"] >= variant["before_mib"] > 0


def test_train_benchmark_variants_write_rows(tmp_path):
    out = tmp_path / "train.json"
    # fmt: off
    assert _tool("benchmark_train").main([
        "--config", QUICKSTART, "--variants", "fp32", "amp", "--size", "64", "64", "--batch", "1",
        "--iters", "1", "--warmup", "0", "--calibration-repeats", "1",
        "--calibration-size", "64", "64", "--out", str(out),
    ]) == 0
    # fmt: on
    result = json.loads(out.read_text())
    (row,) = result["rows"]
    assert set(row) == ROW_KEYS and row["unit"] == "s/iter" and "amp" in row["measure"]
    assert row["ratio"] == row["baseline_value"] / row["ours_value"]
    assert result["calibration_s"] > 0 and result["image_sizes"] == [[64, 64]]

"""tools/benchmark_memory.py and tools/benchmark_train.py --variants on tiny settings: they write
the rows of the benchmark table as JSON (the numbers themselves are measured by running them)."""

import json

from .helpers import QUICKSTART, load_tool

ROW_KEYS = {"measure", "baseline", "baseline_value", "ours_value", "unit", "ratio", "target"}


def _tool(name):
    return load_tool(name)


def test_memory_benchmark_writes_rows(tmp_path, monkeypatch):
    """The variants run in this process here (the tool starts a fresh one for each)."""
    tool = _tool("benchmark_memory")
    calls = []

    def in_process(args, model, checkpointed, allocator):
        calls.append((list(checkpointed), allocator))
        child = tool.argparse.Namespace(**{**vars(args), "model": model, "stages": checkpointed})
        return tool.child(child)

    monkeypatch.setattr(tool, "run_variant", in_process)
    out = tmp_path / "memory.json"
    assert tool.main(["--quick", "--backbone-only", "--stages", "res4", "--out", str(out)]) == 0
    # Without and with checkpointing, under each malloc setting.
    assert calls == [
        ([], "glibc default"),
        (["res4"], "glibc default"),
        ([], "blocks returned"),
        (["res4"], "blocks returned"),
    ]
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert [
        "malloc glibc default" in rows[0]["measure"],
        "malloc blocks returned" in rows[1]["measure"],
    ] == [True, True]
    for row in rows:
        assert set(row) == ROW_KEYS and row["unit"] == "MiB"
        assert row["ratio"] == row["baseline_value"] / row["ours_value"]
    assert result["calibration_s"] > 0 and result["machine"]
    for variant in result["variants"]["backbone, blocks returned"].values():
        assert variant["peak_mib"] >= variant["before_mib"] > 0


def test_memory_child_gets_the_allocator_setting(monkeypatch):
    """The "blocks returned" child runs with MALLOC_MMAP_THRESHOLD_, the default one without it
    (even where the parent has it set)."""
    tool = _tool("benchmark_memory")
    seen = []

    class Done:
        returncode = 0
        stdout = '{"step_mib": 1}'

    def fake_run(command, **kwargs):
        seen.append(kwargs["env"].get("MALLOC_MMAP_THRESHOLD_"))
        return Done()

    monkeypatch.setattr(tool.subprocess, "run", fake_run)
    monkeypatch.setenv("MALLOC_MMAP_THRESHOLD_", "999")
    args = tool.argparse.Namespace(config="x.yaml", batch=1, size=(8, 8), device="cpu", opts=[])
    tool.run_variant(args, "backbone", [], "glibc default")
    tool.run_variant(args, "backbone", [], "blocks returned")
    assert seen == [None, "131072"]


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

"""tools/benchmark.py, the one table of ``make benchmark``: it runs each benchmark script in its
own process, reads its JSON rows, and reports a failing script without losing the others."""

import json

from .helpers import load_tool


def _tool():
    return load_tool("benchmark")


_FAKE = """
import argparse, json
parser = argparse.ArgumentParser()
parser.add_argument("--value", type=float)
parser.add_argument("--out")
args = parser.parse_args()
if args.value < 0:
    raise SystemExit(3)
row = {"measure": "forward", "baseline": "detectron2", "baseline_value": 2.0,
       "ours_value": args.value, "unit": "s", "ratio": 2.0 / args.value, "target": 1.4}
json.dump({"rows": [row], "calibration_s": 2.5}, open(args.out, "w"))
"""


def test_table_of_every_script_and_failures_reported(tmp_path, monkeypatch, capsys):
    tool = _tool()
    script = tmp_path / "fake_benchmark.py"
    script.write_text(_FAKE)
    monkeypatch.setattr(
        tool,
        "BENCHMARKS",
        (
            tool.Benchmark("fast", str(script), ("--value", "1.0"), ("--value", "1.0")),
            tool.Benchmark("slow", str(script), ("--value", "4.0"), ("--value", "4.0")),
            tool.Benchmark("broken", str(script), ("--value", "-1"), ("--value", "-1")),
        ),
    )
    out = tmp_path / "all.json"
    assert tool.main(["--quick", "--out", str(out)]) == 1  # one benchmark failed
    result = json.loads(out.read_text())
    rows = {r["name"]: r for r in result["results"]}
    assert rows["fast"]["rows"][0]["ratio"] == 2.0 and rows["slow"]["rows"][0]["ratio"] == 0.5
    assert rows["broken"]["status"] == 3
    table = result["table"].splitlines()
    assert "| fast | forward | detectron2 | 2 s | 1 s | 2.00x | 1.4x met | 2.5 s |" in table
    assert "| slow | forward | detectron2 | 2 s | 4 s | 0.50x | 1.4x NOT met | 2.5 s |" in table
    assert any(line.startswith("| broken | FAILED (exit status 3)") for line in table)
    assert result["table"] in capsys.readouterr().out

    # --only runs the named benchmarks alone, and then succeeds.
    assert tool.main(["--only", "fast", "--out", str(out)]) == 0
    assert [r["name"] for r in json.loads(out.read_text())["results"]] == ["fast"]

"""The command-line tools print a user's error as its message alone and exit non-zero;
--traceback or RESNET_BACKBONES_TRACEBACK=1 lets the error propagate, traceback and all."""

import os
import runpy

import pytest

from resnet_backbones import cli, train_net
from resnet_backbones.cli_errors import TRACEBACK_ENV, traceback_wanted
from resnet_backbones.engine import ConfigError
from resnet_backbones.weights.errors import WeightsNotFoundError

from .helpers import QUICKSTART, REPO


@pytest.fixture(autouse=True)
def no_traceback_variable(monkeypatch):
    monkeypatch.delenv(TRACEBACK_ENV, raising=False)


@pytest.mark.parametrize(
    "value, wanted", [("1", True), ("yes", True), ("0", False), ("off", False), ("", False)]
)
def test_the_variable_asks_for_tracebacks(monkeypatch, value, wanted):
    monkeypatch.setenv(TRACEBACK_ENV, value)
    assert traceback_wanted() is wanted
    assert traceback_wanted(True)  # --traceback


def _bad_config(tmp_path) -> list[str]:
    path = tmp_path / "bad.yaml"
    path.write_text(f"_BASE_: {QUICKSTART}\nMODEL:\n  RESNETS:\n    DEPTHH: 50\n")
    return ["--config", str(path), "OUTPUT_DIR", str(tmp_path / "o")]


def test_train_tool_one_line_or_traceback(tmp_path, capsys, monkeypatch):
    command = _bad_config(tmp_path)
    assert train_net.main(command) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"error: ConfigError: config file {tmp_path / 'bad.yaml'}: unknown config key "
            "MODEL.RESNETS.DEPTHH; did you mean MODEL.RESNETS.DEPTH?"
        )
    )
    with pytest.raises(ConfigError, match="did you mean MODEL.RESNETS.DEPTH"):
        train_net.main(["--traceback", *command])
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(ConfigError, match="did you mean MODEL.RESNETS.DEPTH"):
        train_net.main(command)


def test_model_zoo_command_one_line_or_traceback(capsys, monkeypatch):
    assert cli.main(["info", "resnet77"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("resnet-backbones info: error: info: 'resnet77' is neither a preset nor")
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(cli.CommandError, match="'resnet77' is neither a preset"):
        cli.main(["info", "--traceback", "resnet77"])
    monkeypatch.setenv(TRACEBACK_ENV, "1")
    with pytest.raises(cli.CommandError):
        cli.main(["info", "resnet77"])


def test_convert_script_one_line_or_traceback(tmp_path, capsys, monkeypatch):
    script = os.path.join(REPO, "tools", "convert_weights.py")
    missing = str(tmp_path / "missing.pth")
    argv = [
        script,
        "--source",
        "torchvision",
        "--arch",
        "resnet18",
        missing,
        str(tmp_path / "o.pth"),
    ]
    monkeypatch.setattr("sys.argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(script, run_name="__main__")
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"resnet-backbones convert: error: WeightsNotFoundError: src = {missing!r}: no such file."
    )
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr("sys.argv", [*argv[:1], "--traceback", *argv[1:]])
    with pytest.raises(WeightsNotFoundError, match="no such file"):
        runpy.run_path(script, run_name="__main__")
    assert not os.path.exists(tmp_path / "o.pth")

"""Config errors in one line: invalid YAML (file, line, column), an unknown key (the closest
valid ones), a value of the wrong type (key, expected type, value), in a file or its _BASE_ or
an override; and the train tool printing them as one line."""

import re

import pytest

from resnet_backbones import train_net
from resnet_backbones.engine import ConfigError, config_chain, load_config

from .helpers import QUICKSTART


def _write(folder, name, text):
    path = folder / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        # A typo in a key's name, in a section's name, and a key put in the wrong section.
        ("MODEL:\n  RESNETS:\n    DEPTHH: 50\n", "unknown config key MODEL.RESNETS.DEPTHH; did you mean MODEL.RESNETS.DEPTH?"),
        ("MODLE:\n  DEVICE: cpu\n", "unknown config key MODLE; did you mean MODEL?"),
        ("MODEL:\n  BASE_LR: 0.1\n", "unknown config key MODEL.BASE_LR; did you mean SOLVER.BASE_LR?"),
        # Nothing alike: the keys of the section.
        ("SOLVER:\n  XYZZY: 1\n", "unknown config key SOLVER.XYZZY; the keys of SOLVER are LR_SCHEDULER_NAME, MAX_ITER, BASE_LR"),
        # yacs turns no int into a float, nor a string into a list: say what to write.
        ("SOLVER:\n  BASE_LR: 1\n", "SOLVER.BASE_LR = 1 is an int, but SOLVER.BASE_LR takes a float, like 0.001; write 1.0"),
        ("SOLVER:\n  BASE_LR: fast\n", "SOLVER.BASE_LR = 'fast' is a str, but SOLVER.BASE_LR takes a float, like 0.001"),
        ("DATASETS:\n  TRAIN: mine\n", "DATASETS.TRAIN = 'mine' is a str, but DATASETS.TRAIN takes a list, like (); write a list, e.g. ['mine']"),
        ("SOLVER: 5\n", "SOLVER = 5 is an int, but SOLVER takes a section of keys (its keys: LR_SCHEDULER_NAME"),
    ],
)  # fmt: skip
def test_unknown_keys_and_wrong_types_in_a_file(tmp_path, yaml_text, message):
    path = _write(tmp_path, "bad.yaml", f"_BASE_: {QUICKSTART}\n{yaml_text}")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"config file {path}: {message}")
    assert "\n" not in str(info.value)


def test_an_error_in_a_base_file_names_that_file(tmp_path):
    base = _write(tmp_path, "base.yaml", f"_BASE_: {QUICKSTART}\nSOLVER:\n  MAX_ITERS: 3\n")
    top = _write(tmp_path, "top.yaml", "_BASE_: base.yaml\nSOLVER:\n  BASE_LR: 0.1\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file {base}: unknown config key ")):
        load_config(top)
    assert [path for path, _ in config_chain(top)][-3:] == [QUICKSTART, base, top]


@pytest.mark.parametrize(
    "opts, message",
    [
        (["SOLVER.BASE_LRR", "0.1"], "override SOLVER.BASE_LRR 0.1: unknown config key SOLVER.BASE_LRR; did you mean SOLVER.BASE_LR"),
        (["MODEL.RESNET.DEPTH", "50"], "override MODEL.RESNET.DEPTH 50: unknown config key MODEL.RESNET.DEPTH; did you mean MODEL.RESNETS.DEPTH?"),
        (["SOLVER.IMS_PER_BATCH", "2.5"], "override SOLVER.IMS_PER_BATCH 2.5: SOLVER.IMS_PER_BATCH = 2.5 is a float, but SOLVER.IMS_PER_BATCH takes an int, like 6"),
        (["MODEL.RESNETS.DEPTH", "'50'"], "override MODEL.RESNETS.DEPTH '50': MODEL.RESNETS.DEPTH = '50' is a str, but MODEL.RESNETS.DEPTH takes an int, like 18"),
        (["SOLVER.BASE_LR"], "the overrides must be KEY VALUE pairs, but an odd number of items (1) was given: SOLVER.BASE_LR"),
    ],
)  # fmt: skip
def test_unknown_keys_and_wrong_types_in_overrides(opts, message):
    with pytest.raises(ConfigError) as info:
        load_config(QUICKSTART, opts)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("SOLVER:\n  BASE_LR: 0.1\n   MAX_ITER: 3\n", ", line 3, column 12: invalid YAML: mapping values are not allowed here"),
        ("SOLVER:\n\tBASE_LR: 0.1\n", ", line 2, column 1: invalid YAML: found character '\\t' that cannot start any token (while scanning for the next token)"),
        ("SOLVER: {BASE_LR: 0.1\n", ", line 2, column 1: invalid YAML: expected ',' or '}', but got '<stream end>' (while parsing a flow mapping)"),
        ("", " is empty, not a mapping of config keys"),
        ("- SOLVER\n", " is a YAML list, not a mapping of config keys"),
    ],
)  # fmt: skip
def test_yaml_errors_name_the_file_line_and_column(tmp_path, yaml_text, message):
    path = _write(tmp_path, "bad.yaml", yaml_text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"config file {path}{message}")


def test_a_yaml_tag_that_would_run_code_is_refused(tmp_path):
    created = tmp_path / "created"
    path = _write(
        tmp_path,
        "evil.yaml",
        f"SOLVER:\n  BASE_LR: !!python/object/apply:builtins.open ['{created}', 'w']\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(
        f"config file {path}, line 2, column 12: invalid YAML: could not determine a constructor "
        "for the tag 'tag:yaml.org,2002:python/object/apply:builtins.open'; config files are read "
        "with yaml.safe_load"
    )
    assert not created.exists()  # detectron2's default (allow_unsafe) would have created it


def test_missing_and_circular_base_files(tmp_path):
    path = _write(tmp_path, "a.yaml", "_BASE_: nowhere.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (
        str(info.value)
        == f"config file {tmp_path / 'nowhere.yaml'} (the _BASE_ of {path}) does not exist"
    )
    a = _write(tmp_path, "a.yaml", "_BASE_: b.yaml\n")
    b = _write(tmp_path, "b.yaml", "_BASE_: a.yaml\n")
    with pytest.raises(ConfigError) as info:
        load_config(a)
    assert str(info.value).endswith(
        f"includes itself through _BASE_: {tmp_path / 'a.yaml'} -> {b} -> {tmp_path / 'a.yaml'}"
    )


def test_the_train_tool_prints_a_config_error_in_one_line(tmp_path, capsys):
    path = _write(tmp_path, "bad.yaml", f"_BASE_: {QUICKSTART}\nSOLVER:\n  BASE_LR: 1\n")
    assert train_net.main(["--config", path, "OUTPUT_DIR", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == (
        f"error: ConfigError: config file {path}: SOLVER.BASE_LR = 1 is an int, but SOLVER.BASE_LR "
        "takes a float, like 0.001; write 1.0"
    )


def test_a_section_over_a_value_of_the_base_names_the_file(tmp_path):
    _write(tmp_path, "base.yaml", "SOLVER:\n  STEPS: 5\n")
    top = _write(tmp_path, "top.yaml", "_BASE_: base.yaml\nSOLVER:\n  STEPS:\n    A: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(top)
    assert str(info.value) == f"config file {top}: Cannot inherit key 'STEPS' from base!"


def test_dataset_paths_follow_the_file_that_sets_them_in_a_list_of_bases(tmp_path):
    """_BASE_ may be a list (fvcore merges them in order); DATASETS.COCO_FORMAT's relative paths
    are relative to the file in it that sets the key."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a/data.yaml").write_text(
        'DATASETS:\n  COCO_FORMAT: [["mine", "train.json", "images"]]\n'
    )
    top = tmp_path / "b/top.yaml"
    top.write_text(f"_BASE_: [{QUICKSTART!r}, '../a/data.yaml']\nSOLVER:\n  MAX_ITER: 7\n")
    cfg = load_config(str(top))
    assert cfg.SOLVER.MAX_ITER == 7
    assert cfg.DATASETS.COCO_FORMAT == [
        ["mine", str(tmp_path / "a/train.json"), str(tmp_path / "a/images")]
    ]

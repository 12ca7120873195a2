"""The package as a user gets it: a wheel built from this tree, installed into a fresh virtual
environment, used from another directory with the README's snippet. The environment reuses
this one's torch and detectron2 (a ``.pth`` line naming their site-packages, which does not run
that folder's own ``.pth`` files, so an editable install of the checkout stays out of it)."""

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import textwrap

import pytest

from .helpers import REPO


def _installed(name: str) -> bool:
    # Not importlib.util.find_spec: for "pip", setuptools' distutils hack takes that as pip
    # starting and turns itself off, which breaks later imports of distutils in this process.
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


_MISSING = [m for m in ("pip", "setuptools") if not _installed(m)]
pytestmark = pytest.mark.skipif(
    bool(_MISSING),
    reason=f"building and installing a wheel needs {', '.join(_MISSING)}, not installed here",
)

# What setup.py needs to build the package (copied, so that the build leaves nothing in the tree).
_SOURCES = (
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "requirements.txt",
    "resnet_backbones",
    "configs",
)


def _readme_snippet() -> str:
    """The Python snippet of the README's "Use it from an existing detectron2 project"."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    section = readme.split("## Use it from an existing detectron2 project", 1)[1]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return next(b for b in blocks if "model_zoo.get_config_file" in b)


def _run(args, **kwargs) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, **kwargs)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc.stdout


def _copy_sources(tmp_path) -> str:
    source = tmp_path / "source"
    source.mkdir()
    for name in _SOURCES:
        path = os.path.join(REPO, name)
        if os.path.isdir(path):
            shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, source / name)
    return str(source)


def _fresh_venv(path) -> tuple[str, str]:
    """A virtual environment without pip whose packages come after this one's; its python and
    its site-packages."""
    _run([sys.executable, "-m", "venv", "--without-pip", str(path)])
    python = str(path / "bin" / "python")
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).strip()
    # This environment's packages (torch, detectron2 ...) after the new one's own.
    with open(os.path.join(site, "project_env.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    return python, site


_PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
# Without PYTHONPATH (which points the tests at this checkout).
_ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def test_installed_wheel_has_the_configs_and_runs_the_readme_snippet(tmp_path):
    source = _copy_sources(tmp_path)
    _run([*_PIP, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), "."],
         cwd=source)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("resnet_backbones-*.whl")
    venv = tmp_path / "venv"
    python, site = _fresh_venv(venv)
    _run([*_PIP, "--python", python, "install", "--no-deps", "--no-index", str(wheel)])

    check = textwrap.dedent(
        f"""
        import os, importlib.metadata
        site = {site!r}
        assert resnet_backbones.__file__.startswith(site), resnet_backbones.__file__
        assert model_zoo.get_config_file("Base-RCNN-FPN.yaml").startswith(
            os.path.join(site, "resnet_backbones", "configs"))
        cfg.MODEL.DEVICE = "cpu"
        model = build_model(cfg)
        print(type(model.backbone.bottom_up).__name__, cfg.MODEL.RESNETS.DEPTH)
        # _BASE_ two levels deep, and every preset's configs, from the installed copy.
        from resnet_backbones.presets import PRESETS
        assert model_zoo.get_config("faster_rcnn_R101.yaml").MODEL.RESNETS.DEPTH == 101
        for preset in PRESETS.values():
            for name in preset.configs:
                model_zoo.get_config(name)
        scripts = importlib.metadata.entry_points(group="console_scripts")
        print(sorted(e.name for e in scripts if e.module.startswith("resnet_backbones")))
        """
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = _readme_snippet() + "from detectron2.modeling import build_model\n" + check
    out = _run([python, "-W", "ignore", "-c", code], cwd=elsewhere, env=_ENV).splitlines()
    assert out[-2:] == [
        "ResNetFamily 101",
        "['resnet-backbones', 'resnet-backbones-pretrain', 'resnet-backbones-train']",
    ]
    assert os.path.isfile(venv / "bin" / "resnet-backbones-train")


def test_editable_install_reads_the_checkouts_configs(tmp_path):
    source = _copy_sources(tmp_path)
    python, _ = _fresh_venv(tmp_path / "venv")
    _run([*_PIP, "--python", python, "install", "--no-deps", "--no-build-isolation", "-e", source])
    code = (
        "import resnet_backbones\n"
        "from resnet_backbones import model_zoo\n"
        "print(resnet_backbones.__file__)\n"
        "print(model_zoo.get_config_file('COCO-Detection/faster_rcnn_R_101_FPN_3x.yaml'))\n"
    )
    out = _run([python, "-W", "ignore", "-c", code], cwd=tmp_path, env=_ENV).splitlines()
    assert out == [
        os.path.join(source, "resnet_backbones", "__init__.py"),
        os.path.join(source, "configs", "COCO-Detection", "faster_rcnn_R_101_FPN_3x.yaml"),
    ]

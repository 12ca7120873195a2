"""resnet_backbones: ResNet-family backbones for detectron2.

Installs into an environment that already has torch and detectron2. It deliberately does not
list them in ``install_requires``: pip must never reinstall or upgrade a torch or a detectron2
built from source with its compiled ops, and here detectron2 is the distribution
``pb1-detectron2``. ``import resnet_backbones`` checks for detectron2 with a clear error instead.

The top-level ``configs/`` tree is the one source of the configs. A built package (a wheel,
``pip install .``) carries a copy as ``resnet_backbones/configs/``, made by :class:`BuildPy`
(detectron2's setup.py links ``configs/`` into ``detectron2/model_zoo/configs`` for the same
reason); a checkout and an editable install read ``configs/`` itself.
:mod:`resnet_backbones.model_zoo` finds either.
"""

import glob
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def config_files() -> list:
    """Every config under ``configs/``, as paths relative to the project root."""
    pattern = os.path.join(HERE, "configs", "**", "*.yaml")
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(pattern, recursive=True))


class BuildPy(build_py):
    """build_py that also copies ``configs/`` into the built package as
    ``resnet_backbones/configs/``; an editable install reads the checkout's own ``configs/``."""

    def _config_targets(self) -> list:
        return [(f, os.path.join(self.build_lib, "resnet_backbones", f)) for f in config_files()]

    def run(self) -> None:
        super().run()
        if getattr(self, "editable_mode", False):
            return
        for source, target in self._config_targets():
            self.mkpath(os.path.dirname(target))
            self.copy_file(os.path.join(HERE, source), target)

    def get_outputs(self, include_bytecode: bool = True) -> list:
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [target for _, target in self._config_targets()]


setup(
    name="resnet_backbones",
    version="0.1.0",
    description="ResNet-family backbones (ResNet, ResNeXt, Wide ResNet, ResNet-D ...) for detectron2",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["resnet_backbones", "resnet_backbones.*"]),
    package_data={"resnet_backbones": ["py.typed"]},
    cmdclass={"build_py": BuildPy},
    install_requires=["fvcore", "iopath", "pycocotools", "numpy", "Pillow", "matplotlib"],
    extras_require={
        "test": ["pytest", "timm"],
        # Safetensors files and the Hugging Face Hub as weights sources.
        "hub": ["huggingface_hub", "safetensors"],
        # COCO evaluation in C++ (resnet_backbones.coco_eval): the same AP table as pycocotools,
        # several times faster; its only dependency is numpy. 1.8 is the version tested.
        "fast-eval": ["faster-coco-eval>=1.8.0,<2"],
        # ONNX export (resnet_backbones.export): onnx for torch's exporter, onnxruntime for the
        # parity check. ml_dtypes < 0.6 keeps numpy 1.x (detectron2 v0.6 needs numpy < 2).
        "export": ["onnx>=1.23,<2", "onnxruntime>=1.32,<2", "ml_dtypes<0.6"],
    },
    entry_points={
        "console_scripts": [
            "resnet-backbones-train = resnet_backbones.train_net:main",
            "resnet-backbones-pretrain = resnet_backbones.pretrain_net:main",
            "resnet-backbones = resnet_backbones.cli:main",
        ]
    },
)

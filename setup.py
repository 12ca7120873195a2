"""resnet_backbones: ResNet-family backbones for detectron2.

Installs into an environment that already has torch and detectron2. It deliberately does not
list them in ``install_requires``: pip must never reinstall or upgrade a torch or a detectron2
built from source with its compiled ops, and here detectron2 is the distribution
``pb1-detectron2``. ``import resnet_backbones`` checks for detectron2 with a clear error instead.
"""

from setuptools import find_packages, setup

setup(
    name="resnet_backbones",
    version="0.1.0",
    description="ResNet-family backbones (ResNet, ResNeXt, Wide ResNet, ResNet-D ...) for detectron2",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.9",
    packages=find_packages(include=["resnet_backbones", "resnet_backbones.*"]),
    package_data={"resnet_backbones": ["py.typed"]},
    install_requires=["fvcore", "iopath", "pycocotools", "numpy", "Pillow", "matplotlib"],
    extras_require={"test": ["pytest", "timm"]},
)

"""Pretrained weights: from a ``MODEL.WEIGHTS`` path to tensors in the model, one module per step.

Read the pipeline top to bottom; :func:`.checkpoint.prepare_checkpoint` runs it for one model:

1. :mod:`.resolve` -- the path to a local file: ``resnet_backbones://NAME`` through the model-zoo
   :mod:`.catalog` (its entry checked against the model and config first, before any
   download), https and ``detectron2://`` URLs through :mod:`.download` (https only, verified by
   SHA-256, atomic, cached), ``hf-hub:ORG/NAME`` through ``huggingface_hub``, local paths as they
   are.
2. :mod:`.read` -- the file's bytes to Python objects without running code from them
   (``torch.load(weights_only=True)``, safetensors, or the restricted unpickler of
   :mod:`.safe_pickle`).
3. :mod:`.detect` -- which library wrote it (torchvision, timm, MSRA/Caffe2, detectron2, pycls,
   ours), from its layout and names; a torchvision or timm file is of the mapping families whose
   rules read all its names, and the model chooses among them once
   (:func:`.mappings.choose_family`); which network it holds, from its backbone's shapes
   (:func:`.detect.identify_arch`).
4. :mod:`.metadata` -- the config against what the weights record or imply (input format, pixel
   statistics, stride placement): from the file, its mapping family and its catalog entry.
5. :mod:`.mappings` -- every name mapping: the state dict renamed, once, to our backbone's names
   (``stem.*``, ``res2.*`` ...).
6. :mod:`.place` -- our names under the model's (``backbone.bottom_up.``; C4's res5 in the RoI
   head), then the strict check: every backbone tensor present with its shape, no module the
   model lacks (pure functions of names and shapes).
7. :mod:`.checkpoint` -- :class:`~.checkpoint.FamilyCheckpointer` hands the result to
   detectron2's ``DetectionCheckpointer`` (which loads it), refuses NaN and Inf, saves training
   checkpoints atomically and resumes from the newest one that loads.

Beside the pipeline: :mod:`.entry` and :mod:`.catalog` (the published weights, each with its
architecture, input and citation), :mod:`.export` (writes a file of ours, torch or safetensors,
plus the complete config that fits it; ``tools/convert_weights.py``) and :mod:`.errors` (one taxonomy, rooted at
:class:`~.errors.WeightsError`).
"""

from . import errors
from .errors import *  # noqa: F403  (the error taxonomy, importable from here)

__all__ = list(errors.__all__)

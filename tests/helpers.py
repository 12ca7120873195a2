"""Helpers shared by the tests; every test module imports them from here, never from another
test module."""

from __future__ import annotations

import http.server
import importlib.util
import os
import sys
import threading
from collections import Counter
from typing import Optional

import numpy as np
import torch

from resnet_backbones.config import BASE_CONFIGS  # noqa: F401  (re-exported to the tests)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUICKSTART = os.path.join(REPO, "configs/quickstart/faster_rcnn_R18_FPN_shapes.yaml")


def load_tool(name: str):
    """The script ``tools/<name>.py`` as a module (the tools are scripts, not a package). It is
    registered in ``sys.modules`` (as ``resnet_backbones_tools.<name>``), where a dataclass of
    the script looks its module up."""
    spec = importlib.util.spec_from_file_location(
        f"resnet_backbones_tools.{name}", os.path.join(REPO, "tools", f"{name}.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


STAGES = ["res2", "res3", "res4", "res5"]


def preset_forms() -> list[tuple[str, str]]:
    """(preset, form) for every detection preset and every Faster R-CNN form it claims."""
    from resnet_backbones.presets import PRESETS

    return [(n, f) for n, p in PRESETS.items() for f in p.forms]


# torchvision's and timm's input: RGB, normalised by the ImageNet mean and std (x 255).
TORCHVISION_INPUT = [
    "INPUT.FORMAT", "RGB",
    "MODEL.PIXEL_MEAN", "[123.675, 116.28, 103.53]",
    "MODEL.PIXEL_STD", "[58.395, 57.12, 57.375]",
]  # fmt: skip


def randomize_norm_statistics(model: torch.nn.Module, seed: int = 1) -> None:
    """Gives every BatchNorm / FrozenBatchNorm random affine parameters and statistics.

    Both start as the identity (FrozenBN) or near it, which would let a wrong mapping of norm
    parameters pass a parity test unnoticed.
    """
    from detectron2.layers import FrozenBatchNorm2d

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, FrozenBatchNorm2d)):
            c = m.weight.numel()
            with torch.no_grad():
                m.weight.copy_(torch.rand(c, generator=g) * 0.5 + 0.5)
                m.bias.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_mean.copy_(torch.randn(c, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(c, generator=g) * 0.5 + 0.75)


def default_cfg(base: str = "", opts=()):
    """detectron2's default config with our keys, on the CPU, merged with ``configs/<base>``
    (e.g. "Base-RCNN-FPN.yaml") and ``opts``."""
    from detectron2.config import get_cfg

    from resnet_backbones import add_resnet_backbones_config

    cfg = add_resnet_backbones_config(get_cfg())
    if base:
        cfg.merge_from_file(os.path.join(REPO, "configs", base))
    cfg.MODEL.DEVICE = "cpu"
    cfg.merge_from_list(list(opts))
    return cfg


def r18_opts(norm: str = "BN") -> list[str]:
    """Config overrides for torchvision's ResNet-18 layout."""
    return [
        "MODEL.RESNETS.DEPTH", "18", "MODEL.RESNETS.RES2_OUT_CHANNELS", "64",
        "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.RESNETS.NORM", norm,
    ]  # fmt: skip


# ------------------------------------------------------------------------------------------
# Reference networks' stage outputs (res2..res5), for parity
# ------------------------------------------------------------------------------------------
def torchvision_stages(model, x):
    """The outputs of a torchvision ResNet's layer1..layer4."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    outputs = []
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        x = layer(x)
        outputs.append(x)
    return outputs


def timm_stages(name, reference, x):
    """The stage outputs of a timm ResNet-family model, as our res2..res5."""
    if name.startswith("rexnet"):
        last, intermediates = reference.forward_intermediates(x, indices=[0, 1, 2, 3])
        return [*intermediates[1:], last]
    raw = reference.forward_intermediates(x, indices=[1, 2, 3, 4], intermediates_only=True)
    if not name.startswith("resnetv2"):
        return raw
    # A v2 network's res* features are normalised and activated (make_stage): res2..res4 are
    # the next stage's first pre-activation of timm's raw sums, res5 its final norm.
    stages = reference.stages
    return [stages[i + 1].blocks[0].norm1(raw[i]) for i in range(3)] + [reference.norm(raw[3])]


def to_caffe2_names(backbone_state):
    """Names of the MSRA/Caffe2 ImageNet .pkl files (res2_0_branch2a_w ...) for a ResNet state."""
    blobs = {}
    suffix = {"weight": "w", "norm.weight": "bn_s", "norm.bias": "bn_b"}
    layer = {"conv1": "branch2a", "conv2": "branch2b", "conv3": "branch2c", "shortcut": "branch1"}
    for name, tensor in backbone_state.items():
        parts = name.split(".")
        if parts[-1] in ("running_mean", "running_var"):
            continue  # MSRA files hold the affine scale and bias only
        if parts[0] == "stem":
            rest = ".".join(parts[2:])
            c2 = "conv1_w" if rest == "weight" else "res_conv1_" + suffix[rest]
        else:
            stage, block, conv, rest = parts[0], parts[1], parts[2], ".".join(parts[3:])
            c2 = f"{stage}_{block}_{layer[conv]}_{suffix[rest]}"
        blobs[c2] = tensor.numpy()
    return blobs


def detection_image():
    """One image of the shapes dataset, as a detectron2 model input (BGR, CHW)."""
    from resnet_backbones.data.shapes import SPLITS, generate_image

    image, _ = generate_image(SPLITS["val"], 1, 3)
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])
    return {"image": torch.as_tensor(bgr.transpose(2, 0, 1).copy()), "height": 256, "width": 256}


# ------------------------------------------------------------------------------------------
# Training on a tiny generated dataset
# ------------------------------------------------------------------------------------------
def tiny_shapes():
    """A 6-image shapes split, registered as ``shapes_tiny_train`` and ``shapes_tiny_val``."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.datasets import register_coco_instances

    from resnet_backbones.data.shapes import ShapesConfig, ensure_shapes

    root = ensure_shapes("val", ShapesConfig(num_images=6, seed=11))
    for name in ("shapes_tiny_train", "shapes_tiny_val"):
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, str(root / "annotations.json"), str(root / "images"))
    return "shapes_tiny_train", "shapes_tiny_val"


def write_coco_folder(folder, num_images=4, size=64, boxes_per_image=None):
    """A user's own COCO-format data: ``folder/images/*.png`` (``size`` px, one or two filled
    boxes each, or ``boxes_per_image``) and ``folder/annotations.json`` with two categories (a
    box's category is 1 + its index in the image, capped at 2); returns ``folder``."""
    import json
    from pathlib import Path

    from PIL import Image, ImageDraw

    folder = Path(folder)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for index in range(num_images):
        image = Image.fromarray(rng.integers(0, 80, (size, size, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for k in range(boxes_per_image or 1 + index % 2):
            w, h = (int(v) for v in rng.integers(size // 4, size // 2, 2))
            x, y = (int(v) for v in rng.integers(0, size - max(w, h), 2))
            category = min(k, 1)
            draw.rectangle([x, y, x + w - 1, y + h - 1], fill=(220, 40 + 160 * category, 40))
            annotations.append(
                {"id": len(annotations) + 1, "image_id": index + 1, "category_id": category + 1,
                 "bbox": [x, y, w, h], "area": w * h, "iscrowd": 0}
            )  # fmt: skip
        image.save(folder / "images" / f"{index}.png")
        images.append({"id": index + 1, "file_name": f"{index}.png", "width": size, "height": size})
    categories = [{"id": 1, "name": "red"}, {"id": 2, "name": "yellow"}]
    with open(folder / "annotations.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return folder


# Overrides that make a quickstart run on write_coco_folder's data cheap: 64 px, 2 images a
# batch, a checkpoint every iteration, no data-loading processes, two classes.
TINY_OWN_DATA = [
    "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "64",
    "SOLVER.IMS_PER_BATCH", "2", "SOLVER.CHECKPOINT_PERIOD", "1",
    "DATALOADER.NUM_WORKERS", "0", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
]  # fmt: skip


def tiny_cfg(output_dir, train, val, max_iter=2):
    """The quickstart config, shortened to ``max_iter`` iterations of 2 images."""
    from resnet_backbones.engine import load_config

    return load_config(
        QUICKSTART,
        [
            "DATASETS.TRAIN", f"('{train}',)",
            "DATASETS.TEST", f"('{val}',)",
            "SOLVER.IMS_PER_BATCH", "2",
            "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD", "1",
            "DATALOADER.NUM_WORKERS", "0",
            "OUTPUT_DIR", str(output_dir),
        ],
    )  # fmt: skip


def train_recording_losses(runs):
    """Each run in ``runs`` (a list of argument lists for the train tool) through the tool's
    ``setup`` and the Trainer, in this process of a launch (see resnet_backbones.launch). The
    main process writes ``OUTPUT_DIR/losses.json``: every loss of every iteration, as the event
    storage holds it (the mean over the processes), and the world size."""
    import json

    from detectron2.utils import comm

    from resnet_backbones import train_net
    from resnet_backbones.engine import Trainer

    for argv in runs:
        cfg = train_net.setup(train_net.parse_args(argv))
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        if comm.is_main_process():
            histories = trainer.storage.histories()
            losses = {
                name: [value for value, _ in history.values()]
                for name, history in histories.items()
                if "loss" in name
            }
            record = {"world_size": comm.get_world_size(), "losses": losses}
            with open(os.path.join(cfg.OUTPUT_DIR, "losses.json"), "w") as f:
                json.dump(record, f)


# ------------------------------------------------------------------------------------------
# Malicious weights files
# ------------------------------------------------------------------------------------------
class OpenForWriting:
    """Unpickling this calls open(path, "w"): it would create the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class System:
    """Unpickling this runs a shell command that would create the file."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def evil_pkl(tmp_path, payload=OpenForWriting):
    """An MSRA-looking R-50.pkl whose unpickling would create ``tmp_path / "pwned"``."""
    import pickle

    marker = tmp_path / "pwned"
    path = tmp_path / "R-50.pkl"
    blobs = {"conv1_w": np.zeros((64, 3, 7, 7), np.float32), "res2_0_branch2a_w": payload(marker)}
    path.write_bytes(pickle.dumps(blobs, protocol=2))
    return path, marker


# ------------------------------------------------------------------------------------------
# Loading weights
# ------------------------------------------------------------------------------------------
def load_weights(cfg, path=None):
    """build_model(cfg), then MODEL.WEIGHTS (or ``path``) through FamilyCheckpointer, as the
    Trainer does."""
    from detectron2.modeling import build_model

    from resnet_backbones.weights.checkpoint import FamilyCheckpointer

    model = build_model(cfg).eval()
    FamilyCheckpointer(model, cfg=cfg).load(path or cfg.MODEL.WEIGHTS)
    return model


def assert_stages_close(model, expected, x):
    """The detector's backbone reproduces ``expected`` (res2..res5) on ``x``, to 1e-5."""
    with torch.no_grad():
        actual = model.backbone.bottom_up(x)
    for stage, exp in zip(STAGES, expected):
        assert actual[stage].shape == exp.shape, stage
        rel = (actual[stage] - exp).abs().max() / exp.abs().max()
        assert rel <= 1e-5, f"{stage}: relative error {rel:.2e}"


def torchvision_reference(name):
    """torchvision's ``name`` with seeded random weights and random norm statistics."""
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None).eval()
    randomize_norm_statistics(reference)
    return reference


# ------------------------------------------------------------------------------------------
# An HTTP server on 127.0.0.1 that serves generated files to the download and zoo tests
# ------------------------------------------------------------------------------------------
class WeightsServer:
    """Serves ``files[path]`` at ``http://127.0.0.1:<port><path>`` (GET, and HEAD for its
    headers) and counts the GET requests.

    A path in ``truncated`` announces its full Content-Length but closes the connection
    after half of the bytes; a path in ``stalled`` sends half of them and then nothing, keeping
    the connection open; a path in ``trickled`` sends one byte every ``trickled[path]``
    seconds; a path in ``redirects`` answers 302 to the URL given; any other
    unknown path is a 404 with the headers ``not_found_headers``. ``headers[path]`` are sent
    with that path's answers (the Hub's X-Repo-Commit and ETag: see :func:`serve_hub_file`).
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.truncated: set[str] = set()
        self.stalled: set[str] = set()
        self.trickled: dict[str, float] = {}
        self.redirects: dict[str, str] = {}
        self.headers: dict[str, dict[str, str]] = {}
        self.not_found_headers: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        self._closing = threading.Event()  # ends the stalled and trickled answers
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _answer(self, head: bool) -> None:
                path = self.path.split("?")[0]
                if not head:
                    server.requests[path] += 1
                if path in server.redirects:
                    self.send_response(302)
                    self.send_header("Location", server.redirects[path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body: Optional[bytes] = server.files.get(path)
                if body is None:
                    self.send_response(404)
                    for key, value in server.not_found_headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                for key, value in server.headers.get(path, {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if head:
                    return
                if path in server.truncated:
                    self.wfile.write(body[: len(body) // 2])
                    self.close_connection = True
                elif path in server.stalled:
                    self.wfile.write(body[: len(body) // 2])
                    server._closing.wait()
                    self.close_connection = True
                elif path in server.trickled:
                    try:  # until the client hangs up or the server closes
                        for i in range(len(body)):
                            self.wfile.write(body[i : i + 1])
                            if server._closing.wait(server.trickled[path]):
                                break
                    except OSError:
                        pass
                    self.close_connection = True
                else:
                    self.wfile.write(body)

            def do_GET(self) -> None:
                self._answer(head=False)

            def do_HEAD(self) -> None:
                self._answer(head=True)

            def log_message(self, *args) -> None:
                pass

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        # A short poll: shutdown() waits for it, once per test (0.5 s by default).
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def __enter__(self) -> WeightsServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._closing.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def serve_hub_file(server, repo_id, filename, body, revision="main"):
    """Serves ``body`` as the Hugging Face Hub does ``{repo_id}/resolve/{revision}/{filename}``,
    with the headers huggingface_hub requires (X-Repo-Commit: a commit made up from the
    repository's name; ETag: the SHA-256, as for LFS files); returns its URL path. Missing
    files of a repository are the Hub's 404 with X-Error-Code EntryNotFound."""
    import hashlib

    path = f"/{repo_id}/resolve/{revision}/{filename}"
    server.files[path] = body
    server.headers[path] = {
        "X-Repo-Commit": hashlib.sha1(repo_id.encode()).hexdigest(),
        "ETag": f'"{hashlib.sha256(body).hexdigest()}"',
    }
    server.not_found_headers.setdefault("X-Error-Code", "EntryNotFound")
    return path


def safetensors_bytes(state, metadata=None):
    """``state`` as a safetensors file, as huggingface_hub's repositories hold them (timm's
    ``model.safetensors``: ``{"format": "pt"}`` in its header)."""
    import safetensors.torch

    state = {k: v.contiguous() for k, v in state.items()}
    return safetensors.torch.save(state, metadata=metadata or {"format": "pt"})


def msra_source(cfg):
    """An R-50 (stride in the 1x1 conv, FrozenBN) whose norms are MSRA's affine y = s * x + b."""
    from detectron2.modeling import build_model

    source = build_model(cfg).eval()
    randomize_norm_statistics(source)
    for name, buffer in source.backbone.bottom_up.named_buffers():
        if name.endswith("running_mean"):
            buffer.zero_()
        elif name.endswith("running_var"):
            buffer.fill_(1 - 1e-5)  # FrozenBN's eps: scale = s exactly
    return source


def reference_state(arch):
    """Random weights of ``arch`` (a row of ARCHS) in its publisher's own names and format."""
    import pytest
    import torchvision

    from resnet_backbones.config import build_clean_backbone
    from resnet_backbones.presets import arch_config

    if arch.source == "torchvision":
        return getattr(torchvision.models, arch.name)(weights=None).state_dict()
    if arch.source == "timm":
        timm = pytest.importorskip("timm")
        return timm.create_model(arch.name, pretrained=False).state_dict()
    ours = build_clean_backbone(arch_config(arch.name)).state_dict()
    return {**to_caffe2_names(ours), "fc1000_w": np.zeros((1000, 2048), np.float32)}


def save_in_its_format(state, arch, folder):
    """Writes ``state`` as its publisher does: a Python 2-style pickle for Caffe2 (msra) files,
    torch.save otherwise; returns the path."""
    import pickle

    if arch.source == "msra":
        path = folder / "weights.pkl"
        path.write_bytes(pickle.dumps(state, protocol=2))
    else:
        path = folder / "weights.pth"
        torch.save(state, path)
    return path

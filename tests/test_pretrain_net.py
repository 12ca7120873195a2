"""Pretraining end to end: tools/pretrain_net.py (resnet_backbones.pretrain_net), the
ClassificationTrainer, its evaluation against torchvision's model evaluated by hand, its
checkpoints in the detectors of the same network, exact resume with the EMA, and clear
failures."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.transforms import v2

from resnet_backbones import pretrain_net
from resnet_backbones.config import ConfigError
from resnet_backbones.engine import load_config
from resnet_backbones.presets import preset_config
from resnet_backbones.pretrain import ClassificationTrainer, pretraining_metadata
from resnet_backbones.solver import WarmupPlateauLR, build_lr_scheduler
from resnet_backbones.weights.checkpoint import FamilyCheckpointer
from resnet_backbones.weights.errors import MetadataMismatchError

from .helpers import REPO, TORCHVISION_INPUT, randomize_norm_statistics

R18 = os.path.join(REPO, "configs/ImageNet/R_18_resnet_paper.yaml")
DIGITS_R20 = os.path.join(REPO, "configs/digits/resnet_20.yaml")
MEAN = (123.675, 116.28, 103.53)
STD = (58.395, 57.12, 57.375)


def write_image_folder(root, classes=10, per_class=2, size=(80, 64), seed=0):
    """An ImageFolder of ``classes`` x ``per_class`` PNGs: smooth random colour fields, so that
    resizing and cropping matter."""
    rng = np.random.default_rng(seed)
    for c in range(classes):
        folder = os.path.join(root, f"class_{c:02d}")
        os.makedirs(folder, exist_ok=True)
        for i in range(per_class):
            small = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize(size, Image.BILINEAR)
            image.save(os.path.join(folder, f"{i}.png"))
    return str(root)


def small_imagenet_opts(out, *extra):
    """The R-18 paper recipe shrunk to the tiny generated images, on the CPU."""
    return [
        "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
        "CLS.SCALE_RANGE", "(64, 72)", "CLS.CROP", "56", "CLS.TEST_RESIZE", "64",
        "SOLVER.IMS_PER_BATCH", "4", "CLS.TEST_BATCH_SIZE", "8",
        # A few iterations with no evaluation in between: the paper's plateau schedule needs
        # evaluations.
        "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "()", *extra,
    ]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Evaluation against torchvision's model, by hand
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def torchvision_r18(tmp_path_factory):
    """torchvision's resnet18 of 10 classes with random weights and statistics, saved as
    torchvision saves it (a raw state dict), and an ImageFolder of 10 classes."""
    torch.manual_seed(3)
    model = torchvision.models.resnet18(num_classes=10)
    randomize_norm_statistics(model)
    with torch.no_grad():
        model.fc.bias.copy_(torch.randn(10))  # predictions that vary with the class
    folder = tmp_path_factory.mktemp("tv")
    path = str(folder / "resnet18.pth")
    torch.save(model.state_dict(), path)
    root = write_image_folder(folder / "val", classes=10, per_class=3)
    return model.eval(), path, root


def _by_hand(model, root, protocol):
    """torchvision's model on torchvision's ImageFolder and transforms: top-1 and top-5."""
    resize = v2.Compose([v2.Resize(64), *([v2.CenterCrop(56)] if protocol == "center" else [])])
    pixels = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
    normalize = v2.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD])
    dataset = torchvision.datasets.ImageFolder(root, transform=resize)
    correct1 = correct5 = 0
    with torch.no_grad():
        for image, label in dataset:
            if protocol == "center":
                views = [image]
            else:
                views = list(v2.functional.ten_crop(image, [56]))
            batch = torch.stack([normalize(pixels(v)) for v in views])
            scores = torch.softmax(model(batch), dim=1).mean(dim=0)
            top = scores.topk(5).indices.tolist()
            correct1 += top[0] == label
            correct5 += label in top
    return 100.0 * correct1 / len(dataset), 100.0 * correct5 / len(dataset)


@pytest.mark.parametrize("protocol", ["center", "10crop"])
def test_eval_only_gives_torchvisions_top1_and_top5(torchvision_r18, tmp_path, protocol):
    model, path, root = torchvision_r18
    out = tmp_path / "eval"
    argv = [
        "--config", R18, "--eval-only", "--dataset", "tv_val", root,
        *small_imagenet_opts(out), *TORCHVISION_INPUT,
        "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.WEIGHTS", path,
        "DATASETS.TRAIN", "()", "DATASETS.TEST", "('tv_val',)", "CLS.TEST", protocol,
    ]  # fmt: skip
    assert pretrain_net.main(argv) == 0
    with open(out / "eval_results.json") as f:
        results = json.load(f)
    top1, top5 = _by_hand(model, root, protocol)
    assert 0 < top5 < 100 and top1 < top5  # a test that can tell a wrong pipeline apart
    assert (results["top1"], results["top5"]) == (top1, top5)
    assert results["protocol"]["name"] == protocol
    assert results["dataset"] == "tv_val" and results["num_images"] == 30
    assert results["weights"] == path


# --------------------------------------------------------------------------------------------
# A training run: its checkpoint in every detector form, its record, its curve
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def trained_r18(tmp_path_factory):
    folder = tmp_path_factory.mktemp("r18")
    root = write_image_folder(folder / "train", classes=4, per_class=3, size=(72, 72))
    out = folder / "run"
    argv = [
        "--config", R18, "--dataset", "tiny_train", root,
        *small_imagenet_opts(out, "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0", "SEED", "0"),
        "DATASETS.TRAIN", "('tiny_train',)", "DATASETS.TEST", "('tiny_train',)",
    ]  # fmt: skip
    assert pretrain_net.main(argv) == 0
    return out


def test_a_run_records_its_weights_accuracy_and_curve(trained_r18):
    import hashlib

    final = trained_r18 / "model_final.pth"
    with open(trained_r18 / "model_final.json") as f:
        entry = json.load(f)
    with open(final, "rb") as f:
        assert entry["sha256"] == hashlib.sha256(f.read()).hexdigest()
    with open(trained_r18 / "eval_results.json") as f:
        results = json.load(f)
    checkpoint = torch.load(final, map_location="cpu", weights_only=False)
    metadata = checkpoint["metadata"]
    assert (metadata["top1"], metadata["top5"]) == (results["top1"], results["top5"])
    assert metadata["test_protocol"] == results["protocol"] == entry["test_protocol"]
    assert metadata["preset"] == entry["preset"] == "R-18"
    assert metadata["input_format"] == "BGR" and metadata["pixel_std"] == [1.0, 1.0, 1.0]
    assert metadata["dataset"] == ["tiny_train"] and metadata["iterations"] == 3
    assert load_config(R18).dump() != metadata["config"]  # the run's own config, overrides in
    assert "tiny_train" in metadata["config"]
    with open(trained_r18 / "learning_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    # Redrawn on demand from metrics.json.
    from resnet_backbones import cli

    out = trained_r18 / "again.png"
    assert cli.main(["plot", str(trained_r18), "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("form", ["C4", "DC5", "FPN"])
def test_model_final_loads_into_every_detector_form(trained_r18, form, caplog):
    from detectron2.modeling import build_model

    final = str(trained_r18 / "model_final.pth")
    classifier = torch.load(final, map_location="cpu", weights_only=False)["model"]
    cfg = preset_config("R-18", form)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = final
    # The preset's default input is torchvision's (RGB); the run's was the paper's (BGR).
    with pytest.raises(MetadataMismatchError, match="INPUT.FORMAT is 'RGB' in the config"):
        FamilyCheckpointer(build_model(cfg), cfg=cfg).load(final)
    cfg.INPUT.FORMAT = "BGR"
    cfg.MODEL.PIXEL_MEAN = [103.53, 116.28, 123.675]
    cfg.MODEL.PIXEL_STD = [1.0, 1.0, 1.0]
    detector = build_model(cfg)
    with caplog.at_level("INFO", logger="resnet_backbones.weights.checkpoint"):
        FamilyCheckpointer(detector, cfg=cfg).load(final)
    head_lines = [r.getMessage() for r in caplog.records if "classifier head" in r.getMessage()]
    assert len(head_lines) == 1 and "fc.bias, fc.weight, 4 classes" in head_lines[0]
    loaded = detector.state_dict()
    prefix = "backbone.bottom_up." if form == "FPN" else "backbone."
    for name, tensor in classifier.items():
        if name.startswith("fc.") or name.endswith("num_batches_tracked"):
            continue
        target = f"roi_heads.{name}" if form == "C4" and name.startswith("res5.") else prefix + name
        assert torch.equal(loaded[target], tensor), target


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------
def _digits_cfg(out, *opts):
    return load_config(
        DIGITS_R20,
        [
            "OUTPUT_DIR", str(out), "SOLVER.MAX_ITER", "12", "SOLVER.IMS_PER_BATCH", "16",
            "SOLVER.STEPS", "(8,)", "SOLVER.CHECKPOINT_PERIOD", "3", "TEST.EVAL_PERIOD", "2",
            "DATALOADER.NUM_WORKERS", "0", "CLS.EMA_DECAY", "0.8", "SEED", "5",
            "MODEL.RESNETS.DEPTH", "8", *opts,
        ],
    )  # fmt: skip


def _train(cfg, resume):
    import argparse

    from detectron2.engine import default_setup

    default_setup(cfg, argparse.Namespace(config_file="", eval_only=False))
    trainer = ClassificationTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


# An improvement of 100 error points never happens: every evaluation after the first reduces.
_PLATEAU = [
    "SOLVER.LR_SCHEDULER_NAME", "WarmupPlateauLR", "SOLVER.PLATEAU_PATIENCE", "1",
    "SOLVER.PLATEAU_THRESHOLD", "100.0",
]  # fmt: skip


def test_n_iterations_equal_n_over_2_then_a_restart_and_n_over_2_more(tmp_path):
    """Model, optimizer, EMA and plateau schedule bitwise equal on the CPU, evaluations (and
    their reductions of the LR, before and after the restart) included."""
    straight = _train(_digits_cfg(tmp_path / "straight", *_PLATEAU), resume=False)
    # Evaluations after iterations 2, 4, ..., 10 report (the final one does not): 4 reductions.
    assert straight.scheduler.reductions == 4
    half = tmp_path / "half"
    half.mkdir()
    shutil.copy(tmp_path / "straight" / "model_0000005.pth", half)
    (half / "last_checkpoint").write_text("model_0000005.pth")
    resumed = _train(_digits_cfg(half, *_PLATEAU), resume=True)
    assert resumed.start_iter == 6
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    a = torch.load(tmp_path / "straight" / "model_final.pth", weights_only=False)
    b = torch.load(half / "model_final.pth", weights_only=False)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), f"{key}.{name}"
    optimizer_a = a["trainer"]["_trainer"]["optimizer"]["state"]
    optimizer_b = b["trainer"]["_trainer"]["optimizer"]["state"]
    for pid, state in optimizer_a.items():
        assert torch.equal(state["momentum_buffer"], optimizer_b[pid]["momentum_buffer"])
    # The EMA is not the model (it was restored, not rebuilt from the resumed weights).
    assert not torch.equal(a["ema"]["module.fc.weight"], a["model"]["fc.weight"])
    assert int(b["ema"]["n_averaged"]) == 12


def test_chaos_resume_works_on_pretraining(tmp_path):
    cmd = [
        sys.executable, os.path.join(REPO, "tools/chaos_resume.py"), "--tool", "pretrain",
        "--config", DIGITS_R20, "--kills", "1", "--workdir", str(tmp_path),
        "SOLVER.MAX_ITER", "8", "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "4",
        "SOLVER.IMS_PER_BATCH", "16", "SOLVER.STEPS", "(5,)", "CLS.EMA_DECAY", "0.9",
        "MODEL.RESNETS.DEPTH", "8",
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    assert summary["kills"] == 1 and summary["bitwise_equal"]
    assert summary["ema_tensors"] > 0 and summary["optimizer_tensors"] > 0


# --------------------------------------------------------------------------------------------
# The command on real data
# --------------------------------------------------------------------------------------------
def test_short_run_on_digits_learns(tmp_path):
    """tools/pretrain_net.py on the real digits: 60 iterations of ResNet-8 (the recipe's
    smallest network, n = 1) reach 48% validation top-1 here (chance: 10%)."""
    out = tmp_path / "digits"
    cmd = [
        sys.executable, os.path.join(REPO, "tools/pretrain_net.py"), "--config", DIGITS_R20,
        "SOLVER.MAX_ITER", "60", "SOLVER.IMS_PER_BATCH", "32", "SOLVER.STEPS", "(45,)",
        "TEST.EVAL_PERIOD", "30", "SOLVER.CHECKPOINT_PERIOD", "30", "MODEL.RESNETS.DEPTH", "8",
        "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "eta:" in log and "copypaste: top1,top5" in log
    with open(out / "eval_results.json") as f:
        results = json.load(f)
    assert results["dataset"] == "digits_val" and results["iteration"] == 60
    assert results["top1"] > 30
    with open(out / "metrics.json") as f:
        records = [json.loads(line) for line in f]
    errors = [r["train_error"] for r in records if "train_error" in r]
    assert len(errors) >= 3 and errors[-1] < errors[0]
    assert [r["iteration"] for r in records if "classification/top1" in r] == [29, 60]
    with open(out / "learning_curve.png", "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------
def _optimizer():
    return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)


def test_plateau_schedule_divides_by_gamma_after_patience_evaluations():
    optimizer = _optimizer()
    scheduler = WarmupPlateauLR(optimizer, gamma=0.1, patience=2, threshold=0.5, max_iter=10)
    for error, reduced in [(50, False), (40, False), (39.8, False), (39.9, True), (30, False)]:
        assert scheduler.report(error) is reduced
    assert scheduler.reductions == 1 and scheduler.best == 30
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)
    fresh = WarmupPlateauLR(_optimizer(), gamma=0.1, patience=2, threshold=0.5, max_iter=10)
    fresh.load_state_dict(scheduler.state_dict())
    assert (fresh.best, fresh.reductions, fresh.get_lr()) == (30, 1, pytest.approx([0.01]))


_SETTINGS = {"gamma": 0.1, "patience": 2, "threshold": 0.1, "max_iter": 10}


def test_plateau_schedule_warms_up_as_resnet_110():
    optimizer = _optimizer()
    scheduler = WarmupPlateauLR(
        optimizer,
        **_SETTINGS,
        warmup_factor=0.1,
        warmup_iters=3,
        warmup_method="constant",
    )
    rates = []
    for _ in range(5):
        rates.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert rates == pytest.approx([0.01, 0.01, 0.01, 0.1, 0.1])
    with pytest.raises(ValueError, match="warmup_method = 'bogus' is not valid"):
        WarmupPlateauLR(optimizer, **_SETTINGS, warmup_method="bogus")
    # Its state is what a resume restores; its settings are the resumed config's.
    assert set(scheduler.state_dict()) <= set(WarmupPlateauLR._STATE)


def test_unknown_scheduler_names_the_valid_ones(cfg):
    cfg.SOLVER.LR_SCHEDULER_NAME = "Plateau"
    with pytest.raises(ConfigError, match="'WarmupMultiStepLR', 'WarmupCosineLR', 'WarmupPlateau"):
        build_lr_scheduler(cfg, _optimizer())


def test_bf16_autocast_step_on_the_cpu(tmp_path):
    cfg = _digits_cfg(
        tmp_path, "SOLVER.AMP.ENABLED", "True", "CLS.CHANNELS_LAST", "True", "TEST.EVAL_PERIOD", "0"
    )
    trainer = ClassificationTrainer(cfg)
    assert type(trainer._trainer).__name__ == "CPUAutocastTrainer"
    before = trainer.model.fc.weight.detach().clone()
    trainer.resume_or_load(resume=False)
    trainer.iter = trainer.start_iter = 0
    from detectron2.utils.events import EventStorage

    dtypes = []
    trainer.model.res2.register_forward_hook(lambda m, i, o: dtypes.append(o.dtype))
    with EventStorage(0) as storage:
        trainer.run_step()
    assert dtypes == [torch.bfloat16]
    assert trainer.model.fc.weight.dtype == torch.float32
    assert not torch.equal(before, trainer.model.fc.weight)
    assert torch.isfinite(torch.tensor(storage.history("total_loss").latest()))
    from resnet_backbones.output_dir import release

    release(trainer._output_lock)


def test_a_detection_dataset_is_refused_clearly(tmp_path, capsys):
    argv = [
        "--config",
        DIGITS_R20,
        "OUTPUT_DIR",
        str(tmp_path),
        "DATASETS.TRAIN",
        "('shapes_val',)",
    ]
    assert pretrain_net.main(argv) == 1
    err = capsys.readouterr().err
    assert "dataset 'shapes_val' is a coco dataset, not a classification one" in err


def test_missing_imagenet_is_named_with_its_variable(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    argv = ["--config", R18, "OUTPUT_DIR", str(tmp_path / "out"), "MODEL.DEVICE", "cpu"]
    assert pretrain_net.main(argv) == 1
    err = capsys.readouterr().err
    assert "imagenet/train" in err and "DETECTRON2_DATASETS" in err


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_an_unreadable_training_image(tmp_path, mode, capsys):
    root = write_image_folder(tmp_path / "train", classes=2, per_class=2)
    bad = os.path.join(root, "class_00", "broken.png")
    with open(bad, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n not an image")
    argv = [
        "--config", R18, "--dataset", f"bad_{mode}", root,
        *small_imagenet_opts(tmp_path / "out", "SOLVER.MAX_ITER", "3", "TEST.EVAL_PERIOD", "0"),
        "DATASETS.TRAIN", f"('bad_{mode}',)", "DATASETS.TEST", "()",
        "DATASETS.BAD_IMAGES", mode, "SOLVER.IMS_PER_BATCH", "5",
    ]  # fmt: skip
    status = pretrain_net.main(argv)
    err = capsys.readouterr().err
    if mode == "error":
        assert status == 1 and "broken.png" in err and "cannot be read as an image" in err
    else:
        assert status == 0 and (tmp_path / "out" / "model_final.pth").is_file()


def test_metadata_is_what_the_loader_checks(tmp_path):
    cfg = load_config(R18, ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('digits_train',)"])
    cfg.DATASETS.TEST = ("digits_val",)
    model = ClassificationTrainer.build_model(cfg)
    metadata = pretraining_metadata(cfg, model, [str(d) for d in range(10)])
    assert metadata["preset"] == "R-18" and metadata["num_classes"] == 10
    assert metadata["classes"][:2] == ["0", "1"]
    assert metadata["stride_in_1x1"] is True and metadata["input_format"] == "BGR"
    # FrozenBN in a detection config becomes BN: a trained classifier learns its statistics.
    assert isinstance(model.res2[0].conv1.norm, torch.nn.BatchNorm2d)


def test_two_processes_of_half_the_batch_equal_one_process(tmp_path):
    """``--num-gpus 2`` without CUDA: 2 gloo processes of 8 images, SyncBN, against 1 process
    of 16: the same weights, and the same top-1 from the distributed evaluation (each process
    tests its share, the counts are summed)."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    out = {}
    for n in (1, 2):
        out[n] = tmp_path / f"p{n}"
        cmd = [
            sys.executable, os.path.join(REPO, "tools/pretrain_net.py"), "--config", DIGITS_R20,
            "--num-gpus", str(n), "--dist-url", "auto",
            "MODEL.RESNETS.DEPTH", "8", "MODEL.RESNETS.NORM", "SyncBN", "CLS.TRAIN_AUG", "none",
            "SOLVER.IMS_PER_BATCH", "16", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1",
            "DATALOADER.NUM_WORKERS", "0", "SEED", "2", "OUTPUT_DIR", str(out[n]),
            # Unit-scale inputs and a small LR: NaiveSyncBatchNorm's variance, E[x^2] - E[x]^2
            # in float32, loses digits on raw pixels that LR 0.1 then amplifies.
            "MODEL.PIXEL_STD", "[82.5, 82.5, 82.5]", "SOLVER.BASE_LR", "0.01",
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
        assert proc.returncode == 0, proc.stderr[-3000:]
    results = {n: json.loads((out[n] / "eval_results.json").read_text()) for n in (1, 2)}
    assert results[1]["top1"] == results[2]["top1"] and results[1]["num_images"] == 355
    metrics = {n: (out[n] / "metrics.json").read_text().splitlines() for n in (1, 2)}
    errors = {n: [json.loads(line).get("train_error") for line in metrics[n]] for n in (1, 2)}
    assert errors[1] == errors[2]  # of the whole batch in both
    weights = {}
    for n in (1, 2):
        for name in ("model_0000000.pth", "model_final.pth"):
            weights[n, name] = torch.load(out[n] / name, weights_only=False)["model"]
    one, two, first = (
        weights[1, "model_final.pth"],
        weights[2, "model_final.pth"],
        weights[1, "model_0000000.pth"],
    )
    # NaiveSyncBatchNorm keeps the biased variance (see test_distributed.py); its batch
    # variance, E[x^2] - E[x]^2 in float32, differs from BatchNorm's in the last digits, which
    # three SGD steps carry into the weights: they agree to 1e-4, while the steps after the
    # first moved them by far more.
    compared = [n for n in one if not n.endswith(("running_var", "num_batches_tracked"))]
    difference = max(float((one[n] - two[n]).abs().max()) for n in compared)
    moved = max(float((one[n] - first[n]).abs().max()) for n in compared)
    print(f"max |1 process - 2 processes| {difference:.3g}; moved by {moved:.3g}")
    assert difference < 1e-4 and moved > 100 * difference


def test_a_validation_folder_lacking_a_class_keeps_the_training_labels(tmp_path):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    train = write_image_folder(tmp_path / "train", classes=3, per_class=1)
    val = write_image_folder(tmp_path / "val", classes=3, per_class=1)
    shutil.rmtree(os.path.join(val, "class_00"))
    pretrain_net.register_folders([["lack_val", val], ["lack_train", train]], train=("lack_train",))
    assert MetadataCatalog.get("lack_val").classes == ["class_00", "class_01", "class_02"]
    assert sorted(r["label"] for r in DatasetCatalog.get("lack_val")) == [1, 2]
    extra = write_image_folder(tmp_path / "extra", classes=4, per_class=1)
    with pytest.raises(Exception, match="has classes the training folder lacks: class_03;"):
        pretrain_net.register_folders(
            [["more_train", train], ["more_val", extra]], train=("more_train",)
        )


def test_eval_only_reads_the_test_set_alone(torchvision_r18, tmp_path, monkeypatch):
    """The training set of the config (ImageNet's, not on disk here) is not read."""
    _, path, root = torchvision_r18
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "nowhere"))
    argv = [
        "--config", R18, "--eval-only", "--dataset", "tv_val", root,
        *small_imagenet_opts(tmp_path / "eval"), *TORCHVISION_INPUT,
        "MODEL.RESNETS.STRIDE_IN_1X1", "False", "MODEL.WEIGHTS", path,
        "DATASETS.TEST", "('tv_val',)",
    ]  # fmt: skip
    assert pretrain_net.main(argv) == 0
    assert json.loads((tmp_path / "eval" / "eval_results.json").read_text())["num_images"] == 30


def test_plateau_without_evaluations_is_refused(tmp_path):
    cfg = _digits_cfg(tmp_path, *_PLATEAU, "TEST.EVAL_PERIOD", "0")
    with pytest.raises(ConfigError, match="evaluate nothing during training"):
        ClassificationTrainer(cfg)

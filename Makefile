# The commands the README tells people to run. Each installs what it needs into .venv first
# (idempotently: a second run only checks), then does its job.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
QUICKSTART_CONFIG := configs/quickstart/faster_rcnn_R18_FPN_shapes.yaml
QUICKSTART_OUT ?= output/quickstart

.PHONY: install quickstart pretrain-quickstart experiments test lint format benchmark benchmark-backbone benchmark-pretrain model-zoo clean

install: $(STAMP)

$(STAMP): requirements.txt setup.py tools/install_env.sh
	VENV=$(VENV) bash tools/install_env.sh
	touch $@

# Train Faster R-CNN R18-FPN on the built-in shapes dataset on the CPU, evaluate it with
# faster-coco-eval (pycocotools' numbers; prints the COCO AP table), and draw the learning curve
# and detections as PNGs.
# --resume: a rerun continues an interrupted run, or re-evaluates a finished one (`make clean`
# starts over).
quickstart: install
	$(PY) tools/train_net.py --config $(QUICKSTART_CONFIG) --resume --visualize 8 OUTPUT_DIR $(QUICKSTART_OUT)
	@echo "Learning curve: $(QUICKSTART_OUT)/learning_curve.png  detections: $(QUICKSTART_OUT)/detections.png"

# Pretrain R-18 on the built-in shapes_cls crops, then train the quickstart detector from that
# checkpoint (seed 0), on the CPU; prints the classification top-1 and the box AP at half and all
# of the iterations, fine-tuned and from scratch (the run of `make quickstart` where it finished,
# else one trained here). Resumable; MODEL_ZOO.md, "Pretraining helps detection", has 3 seeds.
PRETRAIN_OUT ?= output/pretrain_quickstart
pretrain-quickstart: install
	$(PY) tools/pretrain_then_detect.py --seeds 0 --workdir $(PRETRAIN_OUT) --reuse-scratch $(QUICKSTART_OUT)

# The papers' experiments (tools/paper_experiments.py) with --quick: the four CIFAR-network ones on
# digits and the shortcut options on shapes_cls, then docs/EXPERIMENTS.md from their JSON files.
# Resumable; the runs train under output/paper_runs.
experiments: install
	$(PY) tools/paper_experiments.py all --dataset digits --quick --output docs/experiments --workdir output/paper_runs
	$(PY) tools/paper_experiments.py page --output docs/experiments --page docs/EXPERIMENTS.md

# Tests run in TEST_WORKERS processes (pytest-xdist) of one thread each (tests/conftest.py): on
# 2 cores, 2 single-threaded workers finish in two thirds of the time of one 2-thread process.
TEST_WORKERS ?= 2

test: install
	$(PY) -m ruff check resnet_backbones tools tests
	$(PY) -m ruff format --check resnet_backbones tools tests
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup tests

lint: install
	$(PY) -m ruff check resnet_backbones tools tests
	$(PY) -m ruff format --check resnet_backbones tools tests

format: install
	$(PY) -m ruff format resnet_backbones tools tests
	$(PY) -m ruff check --fix resnet_backbones tools tests

# Every speed and memory ratio in one table (tools/benchmark.py; about 15 minutes on 2 idle
# cores): inference with optimize_for_inference and our training forward against detectron2's,
# bf16 and channels_last training, activation checkpointing's memory, the fast CPU RoIAlign
# step, faster-coco-eval against pycocotools. Each benchmark runs in its own process against its
# baseline, alternating, with medians, beside detectron2's R-101 forward as the calibration.
benchmark: install
	$(PY) tools/benchmark.py --out output/benchmark.json

# Our default R-101 against detectron2's own, unoptimised, timed in one process (the parity of the
# two: tools/benchmark_backbone.py).
benchmark-backbone: install
	$(PY) tools/benchmark_backbone.py

# Training images/s of pretraining (R-18 and R-50 at 224, the ResNet paper's recipe) against a
# plain PyTorch loop with torchvision's transforms, in one process (tools/benchmark_pretrain.py).
benchmark-pretrain: install
	$(PY) tools/benchmark_pretrain.py --out output/benchmark_pretrain.json

# Recount parameters and MACs of every preset (docs/model_complexity.json), then regenerate the
# tables of MODEL_ZOO.md from it and from the weights catalog.
model-zoo: install
	$(PY) tools/model_complexity.py
	$(PY) tools/generate_model_zoo.py

clean:
	rm -rf output

# detkit: everything starts from a clone of the repo.
#   make demo   - set up .venv, install detkit, run `detkit demo`
#   make test   - set up .venv if needed, lint, type-check and run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first, on its own line, so a machine with a local wheel cache or
# a CUDA index can override it: make TORCH_SPEC="torch torchvision" ...
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
DEMO_OUT ?= runs/demo
PYTEST_ARGS ?=

.PHONY: venv demo test lint typecheck pytest bench clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC) || $(BIN)/python -m pip install --quiet torch torchvision
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	$(BIN)/python -m pip install --quiet --no-deps tidecv
	touch $@

demo: venv
	$(BIN)/detkit demo --out $(DEMO_OUT)

lint: venv
	$(BIN)/ruff check .

typecheck: venv
	$(BIN)/mypy

pytest: venv
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS)

test: lint typecheck pytest

# Speed against torchvision on the same weights (figures in runs/bench/*.json; see README "Speed")
bench: venv
	mkdir -p runs/bench
	$(BIN)/detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --threads 2 --out runs/bench/faster_rcnn.json
	$(BIN)/detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --threads 2 --channels-last \
		--out runs/bench/faster_rcnn_channels_last.json
	$(BIN)/detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --threads 2 --channels-last --winograd \
		--out runs/bench/faster_rcnn_winograd.json
	$(BIN)/detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --threads 2 --train --out runs/bench/faster_rcnn_train.json
	$(BIN)/detkit benchmark fasterrcnn_resnet50_fpn --against torchvision --threads 2 --train --channels-last --winograd \
		--out runs/bench/faster_rcnn_train_winograd.json
	$(BIN)/detkit benchmark ssd300_vgg16 --against torchvision --threads 2 --out runs/bench/ssd300.json
	$(BIN)/detkit benchmark ssd300_vgg16 --against torchvision --threads 2 --channels-last --winograd \
		--out runs/bench/ssd300_winograd.json

clean:
	rm -rf $(VENV) runs build *.egg-info

# gfpipe: the two commands.
#   make test   create .venv if missing, install a CPU torch first, then gfpipe[test]; lint, then pytest
#   make demo   write a small glyph archive (a few corrupt files among it) and classify it with the
#               shipped demo model at a default budget, through the classify job on a local Ray
# Override the torch pin for another platform or CUDA build: make test TORCH='torch==2.13.0'

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.gfpipe-installed
DEMO_DIR    ?= demo-out
DEMO_BUDGET ?= 9M

.PHONY: test lint install demo bench bench-engine clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Torch goes in first and pinned: otherwise a dependency resolver picks the CUDA wheels.
$(STAMP): $(PY) pyproject.toml Makefile
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

test: lint
	$(PY) -m pytest -q $(PYTEST_ARGS)

# The archive is the demo model's geometry with a seed it was not trained on; re-running starts over.
demo: $(STAMP)
	$(PY) -m gfpipe.cli synth --out $(DEMO_DIR)/archive --split test --count 2000 --shard-size 500 --seed 1 \
		--image-size 128 --small-font 0.11,0.14 --corrupt 8 --overwrite
	$(PY) jobs/classify.py --input $(DEMO_DIR)/archive/test --output $(DEMO_DIR)/tags --budget $(DEMO_BUDGET) --overwrite

# Benchmarks write bench/results/*.json, which git ignores: BENCHMARKS.md is the record, and
# copying figures there is the deliberate step. Run them on a quiet machine.
bench: $(STAMP)
	PYTHONPATH=. $(PY) bench/costs.py

bench-engine: $(STAMP)
	PYTHONPATH=. $(PY) bench/engine.py --arch resnet50 --patch 96 --T 5 --batch 16 --images 256 --repeats 5 --name engine_resnet50_b16
	PYTHONPATH=. $(PY) bench/engine.py --arch resnet50 --patch 96 --T 5 --batch 32 --images 384 --repeats 5 --name engine_resnet50_b32
	PYTHONPATH=. $(PY) bench/engine.py --arch mobilenetv3_large_100 --patch 96 --T 3 --batch 16 --images 1024 --repeats 5 --name engine_mobilenetv3_b16

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

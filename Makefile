# gfpipe: the two commands.
#   make test   create .venv if missing, install a CPU torch first, then gfpipe[test], run pytest
#   make demo   (comes with the classify-job issue)
# Override the torch pin for another platform or CUDA build: make test TORCH='torch==2.13.0'

PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.gfpipe-installed

.PHONY: test install demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Torch goes in first and pinned: otherwise a dependency resolver picks the CUDA wheels.
$(STAMP): $(PY) pyproject.toml Makefile
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

demo: $(STAMP)
	@echo "make demo arrives with the classify-job issue (jobs/classify.py); see README.md." >&2
	@exit 2

bench: $(STAMP)
	PYTHONPATH=. $(PY) bench/costs.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info

# The two commands of the README. Python packages go into .venv only; `make test` also installs Debian's chromium
# with apt-get when it is missing and runs as root (.ci/install-browser.sh), for the browser test.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch is installed first when the venv has none: TORCH_SPEC from pip's usual sources (your pip config, e.g. a
# local wheel house; on Linux, PyPI's default torch is the CUDA build), or, when TORCH_INDEX names a package index,
# from that index only. CPU wheels: make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
DEMO_PRESET ?= workshop
DEMO_DATA   ?= data/$(DEMO_PRESET)
DEMO_ROUNDS ?= 2
DEMO_ABLATION_EPOCHS ?= 1
# the strategies notebooks 02 and 03 train and evaluate live (the benchmark's table in notebook 02 shows all five)
DEMO_STRATEGIES ?= centralized,fedavg,distill

.PHONY: demo test test-slow setup lab clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(BIN)/gliofed synth --preset $(DEMO_PRESET) --out $(DEMO_DATA)
	$(BIN)/gliofed notebooks run --out runs/demo -p preset $(DEMO_PRESET) -p data_dir $(DEMO_DATA) -p rounds $(DEMO_ROUNDS) -p ablation_epochs $(DEMO_ABLATION_EPOCHS) -p strategies "$(DEMO_STRATEGIES)"

# the notebooks in JupyterLab (http://localhost:8888; Ctrl-C stops it)
lab: setup
	$(BIN)/jupyter lab gliofed/ipynb

test: setup
	@echo "make test: installing Debian's chromium with apt-get if it is missing (browser test; needs root)"
	sh .ci/install-browser.sh
	$(BIN)/ruff check gliofed tests benchmarks
	$(BIN)/python -m pytest -q -m "not slow and not flower"

# minutes-long end-to-end checks (a fresh non-editable `pip install .` that runs every shipped notebook, and every
# notebook's exercise solutions); CI runs them
test-slow: setup
	$(BIN)/python -m pytest -q -m "slow or flower"

clean:
	rm -rf runs/demo data/tiny data/workshop .pytest_cache

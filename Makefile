# The two commands of the README. Everything happens inside .venv; nothing outside it is touched.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# CPU wheel first (it lies on disk on workshop machines); GPU users: `make TORCH_SPEC=torch` or bring your own.
TORCH_SPEC ?= torch==2.13.0
DEMO_PRESET ?= workshop
DEMO_DATA   ?= data/$(DEMO_PRESET)
DEMO_ROUNDS ?= 2
DEMO_ABLATION_EPOCHS ?= 1

.PHONY: demo test setup clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: setup
	$(BIN)/gliofed synth --preset $(DEMO_PRESET) --out $(DEMO_DATA)
	$(BIN)/gliofed notebooks run --out runs/demo -p preset $(DEMO_PRESET) -p data_dir $(DEMO_DATA) -p rounds $(DEMO_ROUNDS) -p ablation_epochs $(DEMO_ABLATION_EPOCHS)

test: setup
	$(BIN)/ruff check gliofed tests benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf runs/demo data/tiny data/workshop .pytest_cache

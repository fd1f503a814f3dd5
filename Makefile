# bigmodel-cli: `make demo` and `make test` are the only commands a fresh clone needs.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
PIP_FLAGS ?= --disable-pip-version-check

.PHONY: install demo test lint bench gpu-check clean distclean

# (re)install when .venv is missing or pyproject.toml / constraints.txt changed
$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PIP_FLAGS) -q -e ".[dev]" -c constraints.txt
	@touch $(STAMP)

install: $(STAMP)

# the digits-cnn pipeline on data that ships with scikit-learn: prepare-data, train, eval (gated), export
demo: $(STAMP)
	$(BIN)/bigmodel prepare-data -r digits-cnn
	$(BIN)/bigmodel train -r digits-cnn
	$(BIN)/bigmodel eval runs/digits-cnn --fail-under accuracy=0.95
	$(BIN)/bigmodel export runs/digits-cnn
	@echo "demo done: runs/digits-cnn/model.onnx (serve it with: $(BIN)/bigmodel serve runs/digits-cnn)"

# two workers (pytest-xdist), each test file whole on one of them so its module fixtures are built once
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=25

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	@for f in benchmarks/bench_*.py; do echo "== $$f"; $(BIN)/python $$f || exit 1; done

# on a machine with an NVIDIA GPU: mixed-precision training, GPU tests, fp16 export, benchmark on CUDA (< 5 min).
# Uses .venv when it exists (make install), else $(PYTHON) with the dependencies already installed.
GPU_CHECK_ARGS ?=
gpu-check:
	@if [ -x $(BIN)/python ]; then $(BIN)/python benchmarks/gpu_check.py $(GPU_CHECK_ARGS); \
	else $(PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS); fi

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache data runs
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)

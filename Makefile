# Two commands on a fresh machine (see README):
#   make demo   set up .venv and run the main job
#   make test   set up .venv and run the test suite
# torch is installed first, pinned, so pip takes the local CPU build instead of fetching a CUDA one.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  ?= torch==2.13.0

.PHONY: setup demo test test-fast bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

# The main job: size some zoo models; train nanoGPT's Shakespeare model on the built-in corpus and sample it;
# export it to ONNX (checked against PyTorch) and generate on onnxruntime with the KV cache.
demo: setup
	$(BIN)/specc compile specs/mixtral.spec
	$(BIN)/specc compile specs/gpt4-moe.spec --json | $(BIN)/python -c "import json,sys; p=json.load(sys.stdin)['params']; print(f\"gpt4-moe: {p['total']:,} parameters, {p['active']:,} active per token\")"
	rm -rf runs/demo
	$(BIN)/specc train specs/nanogpt-shakespeare.spec --steps 600 --eval-every 100 --out runs/demo
	$(BIN)/specc sample runs/demo --prompt "the king " --max-new-tokens 120 --temperature 0
	$(BIN)/specc export specs/nanogpt-shakespeare.spec --checkpoint runs/demo --onnx -o runs/demo/model.onnx --quantize int8
	$(BIN)/specc generate runs/demo/model.onnx --prompt "the king " --max-new-tokens 120 --temperature 0

test: setup
	$(BIN)/python -m pytest

# The edit-test loop: everything but the tests marked slow (training runs, ONNX exports, subprocesses, fuzzing).
# CI runs `make test`, the whole suite.
test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

bench: setup
	$(BIN)/python bench/compile_speed.py
	$(BIN)/python bench/train_step.py
	$(BIN)/python bench/shakespeare.py
	$(BIN)/python bench/run_cost.py
	$(BIN)/python bench/inference.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build dist *.egg-info runs

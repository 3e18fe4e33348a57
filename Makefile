# unlearn — developer entry points. `make eval` and `make test` work on a fresh machine.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
UNLEARN := $(VENV)/bin/unlearn
STAMP := $(VENV)/.installed

METHOD ?= npo
MODEL ?= tiny
SPLIT ?= forget10
SEED ?= 0
BENCHMARK ?=
OUT ?= runs
ARGS ?=

# No HF_HUB_OFFLINE here: `make eval MODEL=llama-1b` must be able to download its checkpoints. The tests and
# .ci/run set it themselves; the embedded target (MODEL=tiny) never touches the hub.
export TOKENIZERS_PARALLELISM := false

.PHONY: setup eval test test-fast test-slow quality style leaderboard bench audit clean

setup: $(STAMP)

# torch first and pinned exactly: anything else lets pip pull a multi-GB CUDA build.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# BENCHMARK only when set: otherwise the model alias's own (tofu for llama-1b/3b/8b, llama2-7b, phi-1.5).
eval: setup
	$(if $(filter tiny tiny-micro,$(MODEL)),$(UNLEARN) build tinyfacts)
	$(UNLEARN) run --method $(METHOD) --model $(MODEL) $(if $(BENCHMARK),--benchmark $(BENCHMARK)) --split $(SPLIT) \
		--seed $(SEED) --out $(OUT) --compare --reuse $(ARGS)

test: setup
	$(PY) -m pytest -q -x --timeout 1800 tests

test-fast: setup
	$(PY) -m pytest -q -x -m "not slow" tests

test-slow: setup
	$(PY) -m pytest -q -x -m slow tests

quality: setup
	$(VENV)/bin/ruff check unlearn tests benchmarks
	$(VENV)/bin/ruff format --check unlearn tests benchmarks

style: setup
	$(VENV)/bin/ruff check --fix unlearn tests benchmarks
	$(VENV)/bin/ruff format unlearn tests benchmarks

# make audit ORIGINAL=tiny CANDIDATE=path/to/model OUT=report/  (ARGS: e.g. --set relearn_steps=100)
ORIGINAL ?= tiny
audit: setup
	@test -n "$(CANDIDATE)" || (echo "make audit needs CANDIDATE=DIR (and OUT=DIR)" >&2; exit 2)
	$(UNLEARN) audit --original $(ORIGINAL) --candidate $(CANDIDATE) --out $(if $(filter runs,$(OUT)),report,$(OUT)) $(ARGS)

leaderboard: setup
	$(UNLEARN) build tinyfacts --splits forget01,forget05,forget10
	$(PY) benchmarks/leaderboard.py --out $(OUT) --results benchmarks/results

bench: setup
	$(PY) benchmarks/speed/train_speed.py

clean:
	rm -rf $(VENV) runs .pytest_cache

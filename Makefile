# Two entry points: `make demo` (the main job) and `make test`. Both set everything up first.
VENV    ?= .venv
PY      := $(VENV)/bin/python
PIP     := $(PY) -m pip
STAMP   := $(VENV)/.installed
# CPU build on disk; a looser pin would download a multi-GB CUDA build. Where no CPU
# wheel is available locally, set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
TORCH   := torch==2.13.0
TORCH_INDEX ?=
SUDO    := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup system-deps demo test lint bench fuzz clean

setup: system-deps $(STAMP)

system-deps:
	@command -v cc >/dev/null 2>&1 || { echo "installing gcc (tracefmt's statistics kernel is compiled at install)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq gcc >/dev/null; }
	@command -v dot >/dev/null 2>&1 || { echo "installing graphviz (dot)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq graphviz >/dev/null; }
	@command -v java >/dev/null 2>&1 || { echo "installing a Java runtime (Spark engine tests)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq default-jre-headless >/dev/null; }
	@command -v chromium >/dev/null 2>&1 || { echo "installing chromium (report tests)"; $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium >/dev/null || echo "chromium not installed: browser tests will be skipped"; }

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q $(TORCH) $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX))
	$(PIP) install -q -e '.[all,dev]'
	@touch $@

demo: setup
	$(VENV)/bin/tracefmt demo

test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest -q -n 2 --dist loadfile

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check . || true

bench: setup
	@for b in bench/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

# By hand: >= 100,000 mutated traces (about 35 min with 2 idle cores; FUZZ_SEED picks another plan); CI runs 2,000 in tests/test_fuzz.py.
fuzz: setup
	OMP_NUM_THREADS=1 nice $(PY) bench/fuzz.py --cases $${FUZZ_CASES:-100000} --seed $${FUZZ_SEED:-1} --time-limit 60

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache demo-output

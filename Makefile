# `make` bootstraps .venv from this project's own files; `make test` is what CI runs.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: all test test-pg lint system pythons demo wheel size bench torture fuzz-emulator emulator clean

all: $(STAMP)

# Reinstall only when the project's declared dependencies change. The dev tools are a PEP 735
# dependency group (pyproject's [dependency-groups]), not an extra: pip >= 25.1 installs it.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade 'pip>=25.1'
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --group dev -e .
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check runner zbatch tests bench
	$(BIN)/ruff check runner zbatch tests bench
	$(BIN)/mypy
	$(BIN)/lint-imports

# The whole suite, the store and engine suites' runs on PostgreSQL (marked `postgresql`)
# included, in two pytest-xdist workers (CI's machine has 2 cores). `make test-pg` runs
# only the PostgreSQL ones.
test: lint system
	$(BIN)/pytest -q -n 2

test-pg: $(STAMP) system
	$(BIN)/pytest -q -m postgresql

# The Debian packages the tests use (.ci/run installs them): said up front, not as 30 failures.
system:
	@missing=""; \
	command -v djpeg >/dev/null || missing="$$missing libjpeg-turbo-progs"; \
	command -v dwebp >/dev/null || missing="$$missing webp"; \
	ldconfig -p 2>/dev/null | grep -q "libturbojpeg.so.0 " || missing="$$missing libturbojpeg0"; \
	command -v tmux >/dev/null || missing="$$missing tmux"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null \
	  || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  echo "make test needs these Debian packages:$$missing"; \
	  echo "  apt-get install -y$$missing   (or run .ci/run, which installs them)"; exit 1; fi

# The test suite on every CPython minor version of PYTHONS this machine has: python3.X on
# PATH, pyenv's, or one `uv python find` knows (the first that really is 3.X). One venv each
# (.venv-3.X), pytest in each; not part of `make test`. A version not found is named, not
# counted as passed; any failure fails the target.
PYTHONS ?= 3.11 3.12 3.13 3.14
PYENV_ROOT ?= $(HOME)/.pyenv
pythons:
	@passed=""; missing=""; failed=""; \
	for v in $(PYTHONS); do \
	  py=""; \
	  for c in $$(command -v python$$v) $(PYENV_ROOT)/versions/$$v.*/bin/python$$v \
	           $$(command -v uv >/dev/null && uv python find --no-project $$v 2>/dev/null); do \
	    if "$$c" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$$v')" 2>/dev/null; \
	    then py=$$c; break; fi; \
	  done; \
	  if [ -z "$$py" ]; then missing="$$missing $$v"; continue; fi; \
	  echo "== Python $$v: $$py"; \
	  { test -x .venv-$$v/bin/python || "$$py" -m venv .venv-$$v; } \
	  && .venv-$$v/bin/python -m pip install -q --disable-pip-version-check --upgrade 'pip>=25.1' \
	  && .venv-$$v/bin/python -m pip install -q --disable-pip-version-check --group dev -e . \
	  && .venv-$$v/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS) \
	  && passed="$$passed $$v" || failed="$$failed $$v"; \
	done; \
	echo "pythons: passed:$${passed:- none}; failed:$${failed:- none}; not on this machine:$${missing:- none}"; \
	test -z "$$failed" && test -n "$$passed"

# The main job on the embedded emulator: no token, no network. A second run does nothing.
demo: $(STAMP)
	$(BIN)/zbatch run jobs/demo.yaml --emulator

# The sdist and the wheel, as the index would serve them, into build/dist/ (tests/test_wheel.py
# installs the wheel in a fresh venv and runs it from an empty folder; `make test` runs it).
wheel: $(STAMP)
	$(BIN)/python -m build --no-isolation --outdir build/dist .

# The installed size, measured (issue 17): the wheel installed plain and with [parquet],
# each into a fresh venv from the index; each site-packages minus a bare venv's, in MiB.
SIZE := build/size
size: wheel
	@rm -rf $(SIZE); for v in bare plain parquet; do $(BIN)/python -m venv $(SIZE)/$$v || exit 1; done; \
	whl=$$(ls build/dist/zbatch-*.whl | tail -n 1); \
	$(SIZE)/plain/bin/pip install -q --disable-pip-version-check "$$whl" || exit 1; \
	$(SIZE)/parquet/bin/pip install -q --disable-pip-version-check "$$whl[parquet]" || exit 1; \
	kib() { du -sk $(SIZE)/$$1/lib/python3*/site-packages | cut -f1; }; \
	for v in plain parquet; do \
	  echo "installed size, $$v: $$(( ($$(kib $$v) - $$(kib bare)) / 1024 )) MiB"; done; \
	rm -rf $(SIZE)

bench: $(STAMP)
	$(BIN)/python -m bench.run

# The long crash test: TORTURE_KILLS SIGKILLs (default 300) over fresh batches, seeded by
# TORTURE_SEED (default 1); prints the counts table, exits non-zero on any violation.
torture: $(STAMP)
	$(BIN)/python -m tests.crash.torture

# The emulator's OpenAPI property test, long: EMULATOR_FUZZ_EXAMPLES request sequences drawn
# from the document (default 5000, new ones each run); `make test` runs 120, derandomized.
EMULATOR_FUZZ_EXAMPLES ?= 5000
fuzz-emulator: $(STAMP)
	EMULATOR_FUZZ_EXAMPLES=$(EMULATOR_FUZZ_EXAMPLES) $(BIN)/pytest -q tests/emulator/test_openapi_property.py

emulator: $(STAMP)
	$(BIN)/zbatch emulator --host 127.0.0.1 --port 8765

clean:
	rm -rf $(VENV) .venv-3.* .mypy_cache .pytest_cache .ruff_cache build *.egg-info out/demo

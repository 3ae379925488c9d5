# sockdemo's one boring Makefile. Every target sets up what it needs on a
# fresh machine: a .venv with maturin and the test tools, then the extension
# built into it (`maturin develop`, so the checkout's python/ is what runs).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
BUILD_TOOLS := $(VENV)/.build-tools-installed
TOOLS  := $(VENV)/.tools-installed
export VIRTUAL_ENV := $(abspath $(VENV))
export PATH := $(abspath $(VENV))/bin:$(PATH)

.PHONY: all build run test test-rust test-python stress-test wheel wheels check-platforms test-matrix lint bench mutants clean

all: build

$(PY):
	$(PYTHON) -m venv $(VENV)

$(BUILD_TOOLS): pyproject.toml | $(PY)
	@echo "Installing the build tool (maturin) into $(VENV)..."
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade "pip>=25.1"
	@$(PY) -m pip install --quiet --disable-pip-version-check --group build
	@touch $@

$(TOOLS): pyproject.toml $(BUILD_TOOLS)
	@echo "Installing the test tools into $(VENV)..."
	@$(PY) -m pip install --quiet --disable-pip-version-check --group test
	@touch $@

## build: compile the Rust core (release) into .venv
## (its output goes to .venv/build.log, shown only if it fails)
build: $(BUILD_TOOLS)
	@echo "Building the Rust core (release; the first build takes a minute or two)..."
	@$(VENV)/bin/maturin develop --release --quiet > $(VENV)/build.log 2>&1 \
		|| { cat $(VENV)/build.log; exit 1; }

## run: start the v2 server on 127.0.0.1:65432 (Ctrl+C stops it)
run: build
	$(PY) python/server.v2.py $(ARGS)

## test: Rust unit and integration tests, then the pytest suite; both run
## and report even when the first fails, and the target fails if either did
test: build $(TOOLS)
	@rust=0; python=0; \
	cargo test --quiet || rust=$$?; \
	$(PY) -m pytest || python=$$?; \
	if [ $$rust -ne 0 ] || [ $$python -ne 0 ]; then \
		echo "make test: cargo test exited $$rust, pytest exited $$python"; exit 1; \
	fi

## stress-test: make test RUNS times (default 10) with two busy loops on the
## cores and SIGINT ignored, as CI and nohup start jobs; prints the tally
stress-test: build $(TOOLS)
	@bash tests/stress.sh $(or $(RUNS),10)

test-rust:
	cargo test --quiet

test-python: build $(TOOLS)
	$(PY) -m pytest

## wheel: the abi3 wheel (one for every Python 3.9+) and the sdist, in dist/
wheel: $(TOOLS)
	@rm -f dist/sockdemo-*
	@echo "Building the wheel and the sdist into dist/..."
	@$(VENV)/bin/maturin build --release --quiet --out dist > $(VENV)/wheel.log 2>&1 \
		|| { cat $(VENV)/wheel.log; exit 1; }
	@$(VENV)/bin/maturin sdist --out dist >> $(VENV)/wheel.log 2>&1 \
		|| { cat $(VENV)/wheel.log; exit 1; }
	@ls dist/

## wheels: every wheel a user would install, cross-built here: manylinux2014
## x86_64 and aarch64 (glibc 2.17+), macOS x86_64 and arm64, Windows x86_64;
## the sdist; twine check (installs mingw-w64, ziglang and rustup targets)
wheels: $(TOOLS)
	@bash .ci/platforms wheels

## check-platforms: cargo check and clippy -D warnings, with the Python module,
## for Windows x86_64 and macOS x86_64 and arm64 (tests run on Linux only)
check-platforms: $(BUILD_TOOLS)
	@bash .ci/platforms check

## test-matrix: the manylinux2014 x86_64 wheel installed and tested on every
## CPython 3.9-3.13 found (pyenv or PATH), stubs checked on the oldest and
## newest; then the sdist installed with plain pip
test-matrix: $(TOOLS)
	@rm -f dist/sockdemo-*
	@echo "Building the manylinux2014 wheel and the sdist into dist/..."
	@bash .ci/platforms manylinux > $(VENV)/wheel.log 2>&1 || { cat $(VENV)/wheel.log; exit 1; }
	$(PY) tests/matrix.py

## lint: formatting, clippy, ruff, mypy --strict, and the .pyi stub against the module
lint: build $(TOOLS)
	cargo fmt --check
	cargo clippy --all-targets -- -D warnings
	cargo clippy --all-targets --features python -- -D warnings
	$(VENV)/bin/ruff check python tests
	$(VENV)/bin/ruff format --check python tests
	$(PY) -m mypy --strict python/sockdemo
	$(PY) -m mypy.stubtest sockdemo._sockdemo

## bench: side-by-side benchmark against tokio, uvloop, asyncio, socketserver
## (ARGS="--quick" for a one-round smoke run)
bench: build $(TOOLS)
	$(PY) -m pip install --quiet uvloop matplotlib
	cargo build --release --quiet --example tokio_reference --example tokio_relay \
		--example fanout_client
	$(PY) tests/bench/compare.py $(ARGS)
	$(PY) tests/bench/fanout.py $(ARGS)

## mutants: plant bugs in the core and check the Rust tests catch each one
## (cargo-mutants; .cargo/mutants.toml lists the files and accepted survivors;
## about two and a half hours on 2 cores for the whole engine; ARGS='--re PATH'
## for one file; not part of `make test`)
mutants:
	@command -v cargo-mutants >/dev/null || cargo install --locked cargo-mutants --version "^27"
	cargo mutants --jobs 2 --timeout 60 $(ARGS)

clean:
	cargo clean
	rm -rf $(VENV) dist python/sockdemo/*.so

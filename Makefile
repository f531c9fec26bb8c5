# cnnctl — the two commands of the README are `make train` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CNNCTL := $(VENV)/bin/cnnctl
PYTEST_FLAGS ?=

.PHONY: setup data browser train test test-slow test-all lint bench bench-gpu bench-serve clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

# Real Fashion-MNIST from Debian where we can install packages; elsewhere Keras downloads it.
data:
	@if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ "$$(id -u)" = 0 ] \
	    && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)) >/dev/null; \
	fi

# Headless Chromium (the page and report tests) and hey (the serve load bench), from Debian.
browser:
	@if ! command -v chromedriver >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q chromium chromium-driver hey || (apt-get update -q && apt-get install -y -q chromium chromium-driver hey)) >/dev/null; \
	fi

# Train the seed network on Fashion-MNIST, evaluate it, and classify a few test images saved as PNG.
train: setup data
	$(CNNCTL) train configs/fashion_mnist.yaml
	$(CNNCTL) evaluate
	$(PY) tools/write_pngs.py fashion_mnist examples/fashion_mnist --count 8
	$(CNNCTL) predict examples/fashion_mnist

test: setup browser
	$(PY) -m pytest -m "not slow" $(PYTEST_FLAGS)

test-slow: setup data
	$(PY) -m pytest -m slow $(PYTEST_FLAGS)

test-all: setup data
	$(PY) -m pytest $(PYTEST_FLAGS)

# Speed against the plain Keras script; BENCH_ARGS=--quick for a smoke run.
bench: setup data
	$(PY) bench/bench.py $(BENCH_ARGS)

bench-gpu: setup
	$(PY) bench/bench_gpu.py $(BENCH_ARGS)

# cnnctl serve under load (hey, 127.0.0.1 only) against a naive FastAPI server; needs `apt-get
# install hey`. BENCH_ARGS=--quick for a smoke run (about 3 minutes; the full one about 6).
bench-serve: setup data browser
	$(PY) bench/bench_serve.py $(BENCH_ARGS)

# Style, and the wings' one-way imports (the contracts in pyproject.toml).
lint: setup
	$(PY) -m ruff check cnnctl tests tools bench
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) runs examples .pytest_cache

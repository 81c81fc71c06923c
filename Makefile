# Every target creates .venv and installs what it needs, so on a fresh machine these are all the set-up there is.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev
DEMO_PRESET ?= small
DEMO_DATA ?= demo-data/$(DEMO_PRESET)
DEMO_OUT ?= runs/demo-$(DEMO_PRESET)
FMNIST_DIR ?= /usr/share/datasets/fashion-mnist
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: venv demo test bench lint fashion-mnist clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q -U pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e '.[dev,demo]'
	touch $(STAMP)

venv: $(STAMP)

# Real Fashion-MNIST comes from Debian's dataset-fashion-mnist; install it where apt-get is usable.
fashion-mnist:
	@if [ -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ] || [ -f $(FMNIST_DIR)/train-images-idx3-ubyte ]; then \
	  echo "Fashion-MNIST found in $(FMNIST_DIR)"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	  (apt-get install -y -q dataset-fashion-mnist || (apt-get update -q && apt-get install -y -q dataset-fashion-mnist)); \
	else \
	  echo "Fashion-MNIST is missing: install Debian's package 'dataset-fashion-mnist' (sudo apt-get install dataset-fashion-mnist)"; \
	  echo "or run: make demo FMNIST_DIR=/path/to/dir-with-idx-files"; exit 1; \
	fi

demo: $(STAMP) fashion-mnist
	$(BIN)/mak-ray demo --preset $(DEMO_PRESET) --data-dir $(FMNIST_DIR) --data-out $(DEMO_DATA) --output $(DEMO_OUT)

test: $(STAMP)
	RAY_AUTH_MODE=disabled $(BIN)/python -m pytest -q -ra --durations=15 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

lint: $(STAMP)
	$(BIN)/ruff check mak_ray jobs tests bench
	$(BIN)/ruff format --check mak_ray jobs tests bench

clean:
	rm -rf $(VENV) runs demo-data bench-out .pytest_cache

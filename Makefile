# samserve: `make demo` runs the stack on a generated image, `make test` runs every test.
# Both set up what they need first (a .venv with torch, the packages, redis-server).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint protos bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml clients/python/pyproject.toml
	@command -v redis-server >/dev/null && command -v promtool >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
			apt-get install -y -qq --no-install-recommends redis-server prometheus; \
		else echo "missing: sudo apt-get install redis-server prometheus" >&2; exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU machines here carry these builds on disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e "clients/python[rle,polygon,cli]" -e ".[dev,triton]"
	touch $(STAMP)

demo: setup
	$(PY) tools/demo.py

test: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy
	$(PY) tools/gen_protos.py --check
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

protos: setup
	$(PY) tools/gen_protos.py

bench: setup
	$(PY) bench/bench_slice.py
	$(PY) bench/bench_encoder.py

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache

# samserve: `make demo` runs the stack on a generated image, `make test` runs every test.
# Both set up what they need first (a .venv with torch, the packages, redis-server).

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# onnxruntime-web's WebAssembly build for `samserve web`'s in-browser decoding: installed from
# npm at the version clients/python/webdeps pins, copied into the package data (not committed:
# 14 MB of wasm). Without npm the page still works, decoding on the server.
WEBDEPS := clients/python/webdeps
VENDOR := clients/python/src/samserve_client/web/static/vendor
ORT_FILES := ort.wasm.min.js ort-wasm-simd-threaded.mjs ort-wasm-simd-threaded.wasm

.PHONY: setup demo test lint protos bench clean

setup: $(STAMP) $(VENDOR)/.installed

# chromium: the web page's browser tests (playwright drives Debian's build).
$(STAMP): pyproject.toml clients/python/pyproject.toml
	@command -v redis-server >/dev/null && command -v promtool >/dev/null && \
		command -v chromium >/dev/null && command -v shellcheck >/dev/null && \
		command -v prometheus-redis-exporter >/dev/null || { \
		if [ "$$(id -u)" = 0 ]; then apt-get update -qq && \
			apt-get install -y -qq --no-install-recommends redis-server prometheus chromium prometheus-redis-exporter shellcheck; \
		else echo "missing: sudo apt-get install redis-server prometheus chromium prometheus-redis-exporter shellcheck" >&2; \
			exit 1; fi; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU machines here carry these builds on disk.
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	# sam2: SAM 2.1 image models; its CUDA extension is only for video, so it is not built.
	SAM2_BUILD_CUDA=0 $(PY) -m pip install -q -e "clients/python[rle,polygon,cli,onnx]" \
		-e ".[dev,triton,onnx,sam2]"
	touch $(STAMP)

$(VENDOR)/.installed: $(WEBDEPS)/package.json $(WEBDEPS)/package-lock.json
	@if command -v npm >/dev/null; then \
		npm ci --prefix $(WEBDEPS) --no-audit --no-fund --ignore-scripts --loglevel=error && \
		mkdir -p $(VENDOR) && \
		cp $(addprefix $(WEBDEPS)/node_modules/onnxruntime-web/dist/,$(ORT_FILES)) $(VENDOR)/ && \
		touch $@; \
	else echo "npm not found: samserve web will decode on the server only" >&2; fi

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
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache $(WEBDEPS)/node_modules $(VENDOR)

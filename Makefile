# Each target is one line a person can read. `make demo` and `make test` set up .venv first:
# `make demo` installs only what notebook 03 needs (requirements-demo.txt, minutes), `make setup`
# everything the tests and the other notebooks need (llama.cpp's binding built once, the Keras stack).
VENV ?= .venv
PY := $(VENV)/bin/python
NB_TIMEOUT ?= 1200
# llama-cpp-python's wheel, built once per machine; the folder names the build (env.LLAMA_CMAKE_ARGS)
WHEELS ?= $(HOME)/.cache/gemma_helpers/wheels/llama-cpp-no-amx

.PHONY: setup demo-setup demo test unit notebooks book book-check sync bench gpu-check gpu-vendor clean

setup: $(VENV)/.installed

demo-setup: $(VENV)/.demo-installed

$(VENV)/.demo-installed: requirements-demo.txt requirements-local.txt pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-demo.txt
	$(PY) -m pip install -q -e . --no-deps
	touch $@

$(VENV)/.installed: $(VENV)/.demo-installed requirements-keras.txt requirements-book.txt
	CMAKE_ARGS="$$($(PY) -c 'from gemma_helpers import env; print(env.LLAMA_CMAKE_ARGS)')" $(PY) -m pip wheel -q --no-cache-dir --no-deps --find-links $(WHEELS) -w $(WHEELS) "$$(grep ^llama-cpp-python requirements-local.txt)"
	$(PY) -m pip install -q --find-links $(WHEELS) -r requirements-local.txt
	$(PY) -m pip install -q --no-deps -r requirements-keras.txt
	$(PY) -m pip install -q -r requirements-book.txt -c requirements-local.txt
	$(PY) -m pip install -q -e . --no-deps
	$(PY) -c "from gemma_helpers.gguf_convert import converter_dir; converter_dir()"
	touch $@

# Run notebook 03 on the embedded Gemma 3 270M on CPU and print its results table.
demo: demo-setup
	$(PY) -m gemma_helpers run notebooks/03_xylandia_fact_injection.ipynb --results 03_xylandia

# Unit tests; every notebook executed headless with nbmake (executed copies kept in outputs/executed/);
# the book built from those copies and opened in headless Chromium; the GPU-profile rehearsal.
test: setup
	$(PY) -m pytest --durations=15 tests
	$(MAKE) --no-print-directory notebooks book book-check
	$(PY) -m gemma_helpers rehearse notebooks

# Copy the notebooks into outputs/executed/ stamped with this commit and time, execute them there
# (nbmake --overwrite: the executed copies keep their outputs, notebooks/ stays without any).
notebooks: setup
	$(PY) book/book.py prepare
	$(PY) -m pytest --durations=0 --nbmake --nbmake-timeout=$(NB_TIMEOUT) --overwrite outputs/executed

# The static site outputs/book/ (Sphinx + MyST-NB) from outputs/executed/; fails when a notebook is missing.
book: setup
	$(PY) book/book.py build

# The built site in headless Chromium (/usr/bin/chromium): every page, chart, verdict and internal link.
book-check: setup
	$(PY) -m pytest -p no:cacheprovider --durations=5 book/tests

unit: setup
	$(PY) -m pytest --durations=15 tests

bench: setup
	$(PY) benchmarks/train_throughput.py

# Regenerate each .ipynb (no outputs) from its py:percent pair after editing the .py.
sync: setup
	$(PY) -m gemma_helpers sync notebooks

# On a lent CUDA GPU (no internet): every notebook's gpu profile cut to a few steps, under a T4's limits, on
# random-weight checkpoints of the real sizes built there; outputs/results/gpu_check.json (gemma_helpers.gpu_check)
gpu-check:
	PYTHONPATH=$(CURDIR)/vendor/gpu:$(CURDIR) python3 -m gemma_helpers gpu-check

# What that machine lacks (trl, datasets, bitsandbytes for CUDA 13.0, the notebook kernel), unpacked into vendor/gpu/
gpu-vendor:
	python3 -m gemma_helpers gpu-vendor

clean:
	rm -rf outputs

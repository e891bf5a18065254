# Set-up is two commands: `make demo` and `make test`. Both create the virtual environment when it is missing.
VENV ?= .venv
PYTHON ?= python3
BIN := $(CURDIR)/$(VENV)/bin
export PATH := $(BIN):$(PATH)

.PHONY: demo repro test bench bench-diff validate clean-demo

# torch: on a machine without an NVIDIA GPU, install the CPU build (2.13.0 lies on this kind of machine's disk)
# before the project, whose range it satisfies; with a GPU, pip resolves the CUDA build from the range.
# The demo needs only the project; the tests add the `test` extra (the S3 server, the browser driver, the ISIC
# validator), installed by `make test` on top, so `make demo` on a fresh machine does not wait for them.
# pip byte-compiles each package's modules one file at a time, about half of a fresh set-up's time; here it installs
# without compiling and compileall then compiles the environment on every core. Compiled it must be: where
# PYTHONDONTWRITEBYTECODE is set (as on this project's machines) nothing compiles a module later, and every `dvc`
# and `ham` process would compile what it imports anew (a no-op `dvc repro` at 10k: 4.6 s against 2.7 s). The
# project's own package is compiled too (an editable install leaves it out of the environment): each stage's
# `ham` process then starts about 0.1 s sooner. After an edit, Python sees the source is newer and compiles that
# module in memory, as it did every time before; .dvcignore keeps __pycache__ out of the code dependencies.
PIP_INSTALL := $(BIN)/pip install --quiet --no-compile --disable-pip-version-check
COMPILE := $(BIN)/python -m compileall -q -j 0 $(VENV)/lib pipeline >/dev/null 2>&1 || true  # a stray py2 file is no error
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	if ! command -v nvidia-smi >/dev/null 2>&1; then $(PIP_INSTALL) "torch==2.13.0"; fi
	$(PIP_INSTALL) -e .
	$(COMPILE)
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed pyproject.toml
	$(PIP_INSTALL) -e ".[test]"
	$(COMPILE)
	touch $@

# The demo's raw sources, each tracked by its own .dvc file (committed; the sample is deterministic, so `dvc add`
# rewrites them unchanged).
SAMPLE_RAW := $(addprefix data/raw/sample/,rosendahl vidir_modern vidir_molemax vienna_dias image_types.csv)

demo: $(VENV)/.installed
	ham sample data/raw/sample
	dvc add --quiet $(SAMPLE_RAW)
	$(MAKE) --no-print-directory repro
	ham summary metrics/release.json

# Stage commands call `ham`, found through the PATH exported above; by hand, `. .venv/bin/activate` first.
repro: $(VENV)/.installed
	$(BIN)/ham repair  # what a killed dvc leaves half-written; every damaged store file, release file, cache object
	dvc repro

test: $(VENV)/.installed-test
	$(BIN)/python -m pytest

validate: $(VENV)/.installed
	ham validate params.yaml

clean-demo:
	rm -rf data/raw/sample data/interim models release

# `make bench`: every benchmarks/bench_*.py that exists (ingest, standardise, filter, ...), then the scale benchmark,
# which builds the 1k and 10k fixtures from $HAM_DATA (default ../shared/data) in a temporary folder; all merge their
# figures into bench/results.json and the last prints them as a table with the targets. `make bench QUICK=1`: the
# 1k fixture only (a few minutes on 2 cores). The standardise comparison needs ImageMagick's mogrify.
BENCH_OTHERS := $(filter-out benchmarks/bench_scale.py,$(sort $(wildcard benchmarks/bench_*.py)))
bench: $(VENV)/.installed-test  # the test extra brings dask and s3fs (bench_distributed)
ifndef QUICK
	set -e; for script in $(BENCH_OTHERS); do $(BIN)/python -m benchmarks.$$(basename $$script .py); done
endif
	$(BIN)/python -m benchmarks.bench_scale $(if $(QUICK),--quick)

bench-diff: $(VENV)/.installed
	$(BIN)/python -m benchmarks.bench_diff

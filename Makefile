# The two commands a new user needs:  make demo  (the CPU demo study)  and  make test.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
STAMP  := $(VENV)/.installed-stamp
# scaleaudit's CLI must be on PATH for the workflow's shell commands.
RUN    := PATH="$(BIN):$$PATH"
CORES  ?= all

.PHONY: help install medmnistc-env lock dist demo study test test-slurm lint bench gpu-check gpu-wheelhouse clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

LOCK   := envs/requirements.lock.txt
PIP    := $(BIN)/pip --disable-pip-version-check

# The tested set (the lock) first, then scaleaudit itself without resolving anything again; then the environment
# byte-compiled on every core (pip would do it file by file). Where PYTHONDONTWRITEBYTECODE is set, as in many CI
# containers, Python never caches what it compiles: each job would compile torch, timm and mlflow from source again
# (~15 s a process on 2 cores). A file this Python cannot compile (torch's py312-only test helpers) is skipped, as
# pip skips it; its import would fail anyway.
COMPILE = $(1)/bin/python -m compileall -q -j 0 $$($(1)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))') > /dev/null || true

$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "scaleaudit needs Python >= 3.11"'
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --no-compile -r $(LOCK)
	$(PIP) install --quiet --no-deps -e .
	$(call COMPILE,$(abspath $(VENV)))
	touch $@

install: $(STAMP)  ## create .venv with scaleaudit and the locked dependencies (envs/requirements.lock.txt)

# The corruption step's own environment (medmnistc pins medmnist, scikit-image and an older numpy, and needs
# ImageMagick's MagickWand): scaleaudit goes in without dependencies, it runs only scaleaudit.corrupt there. Its
# last check imports what that step imports, byte-compiling those modules (a quarter of the environment's) once.
MC_VENV  ?= .venv-medmnistc
MC_LOCK  := envs/medmnistc.lock.txt
MC_STAMP := $(MC_VENV)/.installed-stamp
MC_PIP   := $(abspath $(MC_VENV))/bin/pip --disable-pip-version-check
MAGICKWAND_DEB ?= libmagickwand-6.q16-6

$(MC_STAMP): $(MC_LOCK) pyproject.toml
	$(PYTHON) -m venv $(MC_VENV)
	$(MC_PIP) install --quiet --no-compile -r $(MC_LOCK)
	$(MC_PIP) install --quiet --no-deps -e .
	@$(MC_VENV)/bin/python -c 'import wand.image' 2>/dev/null || { \
	  echo "MagickWand (ImageMagick) is missing: installing $(MAGICKWAND_DEB) with apt-get"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(MAGICKWAND_DEB); } \
	  || { echo "could not install $(MAGICKWAND_DEB): install ImageMagick's MagickWand library (Debian/Ubuntu: $(MAGICKWAND_DEB), macOS: brew install imagemagick) and re-run make medmnistc-env" >&2; exit 1; }; }
	env -u PYTHONDONTWRITEBYTECODE $(MC_VENV)/bin/python -c 'import medmnistc.corruptions.registry, scaleaudit.corrupt'
	touch $@

medmnistc-env: $(MC_STAMP)  ## create .venv-medmnistc, the corruption step's environment (medmnistc, MagickWand)

lock: $(STAMP)  ## re-pin envs/requirements.lock.txt to what .venv has installed (after testing an upgrade there)
	$(PIP) install --quiet pip-tools
	$(PIP) freeze --exclude-editable | grep -v '^scaleaudit' > $(VENV)/tested.txt
	CUSTOM_COMPILE_COMMAND="make lock" $(BIN)/pip-compile --quiet --extra workflow --extra report --extra test \
	    --constraint $(VENV)/tested.txt --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	    --no-emit-trusted-host --output-file $(LOCK) pyproject.toml

dist: $(STAMP)  ## build the wheel and sdist into dist/
	$(BIN)/python -m build --no-isolation --outdir dist .

demo: $(STAMP) $(MC_STAMP)  ## run the CPU demo study (config/demo.yaml) -> reports/demo.pdf
	$(RUN) snakemake --profile workflow/profiles/local --configfile config/demo.yaml --cores $(CORES)

study: $(STAMP) $(MC_STAMP)  ## run the full study (config/config.yaml; GPU-sized) -> reports/full.pdf
	$(RUN) scaleaudit plan config/config.yaml --brief
	$(RUN) snakemake --profile workflow/profiles/local --cores $(CORES)

# One worker per core; a file's tests stay on one worker, so a module's shared fixture (a tiny study) is built once.
# Files go out in collection order, the end-to-end ones first (tests/conftest.py), not xdist's most-tests-first.
TEST_WORKERS ?= auto

test: $(STAMP) $(MC_STAMP)  ## run the test suite in parallel (unit tests and the whole workflow on a tiny config)
	$(RUN) pytest -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

test-slurm: $(STAMP)  ## the tiny study through the slurm profile on a local Slurm cluster (as root: installs Slurm)
	$(RUN) pytest -m slurm -s tests/test_slurm.py

lint: $(STAMP)  ## ruff (lint and format), snakefmt and snakemake --lint
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/snakefmt --check Snakefile workflow
	$(RUN) snakemake --lint --configfile config/demo.yaml

bench: $(STAMP)  ## time the training path against the MedMNIST v2 reference loop (prints ratios)
	$(RUN) python benchmarks/bench_train.py $(BENCH_ARGS)

# No install: the image's python3 with the checkout on PYTHONPATH (a GPU node may have no internet; README).
GPU_PYTHON ?= python3
gpu-check:  ## on a CUDA node, no install: versions, determinism, SIGTERM/resume, kNN, GPU benchmarks, one table
	PYTHONPATH=src $(GPU_PYTHON) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# What a bare CUDA image lacks for the check's energy figures: codecarbon at the lock's version and its dependencies
# (at the lock's versions), less those such an image carries (numpy, pandas and theirs), as wheels for its Python
# (WHEEL_PYTHON, manylinux x86_64). Downloaded here (needs a package index), installed there offline (README).
WHEELHOUSE   ?= wheelhouse
WHEEL_PYTHON ?= 3.12
IMAGE_HAS    := numpy pandas python_dateutil pytz tzdata six typing_extensions
gpu-wheelhouse:  ## download codecarbon and what a bare CUDA image lacks of its dependencies into wheelhouse/ (README)
	rm -rf $(WHEELHOUSE)
	$(PYTHON) -m pip --disable-pip-version-check download --quiet --only-binary=:all: --dest $(WHEELHOUSE) \
	    --python-version $(WHEEL_PYTHON) --implementation cp --abi cp$(subst .,,$(WHEEL_PYTHON)) --abi abi3 --abi none \
	    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
	    --constraint $(LOCK) "$$(grep '^codecarbon==' $(LOCK))"
	cd $(WHEELHOUSE) && rm -f $(addsuffix -*.whl,$(IMAGE_HAS))
	@ls $(WHEELHOUSE) && du -sh $(WHEELHOUSE)

clean:  ## remove results, logs and reports (keeps the venv)
	rm -rf results logs .snakemake dist report.html reports/*.pdf reports/*.md reports/demo reports/full

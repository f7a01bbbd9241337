# The two commands: `make demo` and `make test`. Both create .venv when missing (or when
# setup.cfg / pyproject.toml changed) and install the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-setup
# CPU defaults (this project's dev/CI machines have no GPU); on a GPU node run the CLI directly.
CPU_ENV := HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test test-fast test-multiprocess bench bench-quick flickr8k clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(CPU_ENV) $(VENV)/bin/clipforge demo

test: $(STAMP)
	$(CPU_ENV) $(PY) -m pytest -q tests

# Fast unit tests only / the multi-process tests alone.
test-fast: $(STAMP)
	$(CPU_ENV) $(PY) -m pytest -q tests -m "not multiprocess and not slurm and not slow"

test-multiprocess: $(STAMP)
	$(CPU_ENV) $(PY) -m pytest -q tests -m "multiprocess or slurm"

bench: $(STAMP)
	$(CPU_ENV) $(PY) -m bench.run_all

bench-quick: $(STAMP)
	$(CPU_ENV) $(PY) -m bench.run_all --quick

flickr8k: $(STAMP)
	$(CPU_ENV) $(PY) -m pip install -q -e '.[lit]'
	$(CPU_ENV) bash configs/flickr8k.sh

clean-venv:
	rm -rf $(VENV)

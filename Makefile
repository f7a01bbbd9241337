# The two commands: `make demo` and `make test`. Both create .venv when missing (or when
# setup.cfg / pyproject.toml changed) and install the pinned dependencies first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.stamp-setup
# CPU defaults (this project's dev/CI machines have no GPU); on a GPU node run the CLI directly.
CPU_ENV := HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false

.PHONY: demo test test-fast test-multiprocess bench bench-quick bench-learning flickr8k gpu-check clean-venv

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The peers, each in its own folder so their pins never touch clipforge's: CLIP_benchmark (eval
# parity test) and open_clip's trainer data code, which needs webdataset 0.2.86 (our shards train in
# it: test + loader benchmark); img2dataset for the converter benchmark.
PEERS := .venv-peers
$(PEERS)/.stamp-test: | $(STAMP)
	$(PY) -m pip install -q --no-deps --target $(PEERS)/clip_benchmark clip-benchmark==1.6.2 \
		scikit-learn==1.6.1 scipy==1.15.3 joblib==1.4.2 threadpoolctl==3.5.0
	$(PY) -m pip install -q --no-deps --target $(PEERS)/wds0286 webdataset==0.2.86 pandas==3.1.1
	touch $@
# MosaicML Streaming, the loader benchmark's second peer: --no-deps + the 6 packages its import needs (20 MB;
# its torch, numpy, PIL, tqdm come from .venv: its numpy<2.2 pin is not met, and MDS works with .venv's 2.4;
# its cloud SDKs and transformers pin are for remote stores and text datasets, which the bench does not use).
# Its own stamp, order-only below: a checkout whose .stamp-bench predates it still gets it.
$(PEERS)/streaming/.stamp: | $(STAMP)
	$(PY) -m pip install -q --no-deps --target $(PEERS)/streaming mosaicml-streaming==0.13.0 Brotli==1.2.1 \
		python-snappy==0.7.3 cramjam==2.14.0 zstd==1.5.7.2 xxhash==3.8.2 catalogue==2.0.10
	touch $@
$(PEERS)/.stamp-bench: | $(PEERS)/.stamp-test $(PEERS)/streaming/.stamp
	test -x $(PEERS)/img2dataset/bin/python || $(PYTHON) -m venv $(PEERS)/img2dataset
	$(PEERS)/img2dataset/bin/pip install -q img2dataset==1.47.0
	touch $@

demo: $(STAMP)
	$(CPU_ENV) $(VENV)/bin/clipforge demo

test: $(STAMP) $(PEERS)/.stamp-test
	$(CPU_ENV) $(PY) -m pytest -q --durations=25 tests

# Fast unit tests only / the multi-process tests alone.
test-fast: $(STAMP)
	$(CPU_ENV) $(PY) -m pytest -q tests -m "not multiprocess and not slurm and not slow"

test-multiprocess: $(STAMP)
	$(CPU_ENV) $(PY) -m pytest -q tests -m "multiprocess or slurm"

bench: $(STAMP) $(PEERS)/.stamp-bench
	$(CPU_ENV) $(PY) -m bench.run_all

bench-quick: $(STAMP) $(PEERS)/.stamp-bench
	$(CPU_ENV) $(PY) -m bench.run_all --quick

# open_clip's own trainer beside clipforge's recipes on Flickr8k (bench/learning.py, ~2 h on 2 cores;
# reuses runs/flickr8k/{scratch,lit} from `make flickr8k`). BENCH_LEARNING_ARGS=--quick: a slice, minutes.
bench-learning: $(STAMP)
	$(CPU_ENV) $(PY) -m pip install -q -e '.[lit]'
	$(CPU_ENV) $(PY) -m bench.learning $(BENCH_LEARNING_ARGS)

flickr8k: $(STAMP)
	$(CPU_ENV) $(PY) -m pip install -q -e '.[lit]'
	$(CPU_ENV) bash configs/flickr8k.sh

# The GPU kit (docs/gpu.md): on a CUDA node, pytest -m gpu then python -m bench.gpu, all under one folder,
# bounded in wall time; without CUDA one line and exit 2. No venv, no registry: the node's own python and
# torch (GPU_PYTHON=...), GPU_CHECK_ARGS="--wheels wheels/ --out DIR" for carried wheels / another folder.
GPU_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
gpu-check:
	PYTHON=$(GPU_PYTHON) bash bench/gpu_check.sh $(GPU_CHECK_ARGS)

clean-venv:
	rm -rf $(VENV)

#!/usr/bin/env bash
# The GPU kit, in one go (issue 19): `make gpu-check` or `bash bench/gpu_check.sh [options]`.
#
# On a CUDA machine, within a wall-time bound (default 480 s = 8 min, installs included):
#   1. (--wheels DIR) install clipforge's dependencies from wheels carried along, no registry;
#   2. pytest -m gpu tests/gpu        -> OUT/pytest.log, OUT/pytest.xml, OUT/tmp/ (the runs' folders),
#                                        OUT/gpu-tests/*.json (figures the tests record);
#   3. python -m bench.gpu            -> OUT/bench-gpu.log, OUT/bench-gpu.json, OUT/BENCHMARKS.md (the repo's
#                                        copy with its GPU section rewritten: copy it back by hand);
#   then OUT/summary.txt (one line per step: name, exit code, seconds) and OUT/env.txt (device, versions).
# Everything goes under OUT (--out DIR, else $GPU_CHECK_OUT, else runs/gpu-check; relative to the current
# folder: the repo under make), so a single run
# returns all of it. On a machine without CUDA: one line saying so, exit 2, nothing written.
#
# Exit codes: 0 all passed; 1 a step failed; 2 no CUDA; 64 bad arguments; 124 the time bound was hit.
#
# Python: $PYTHON, else python3, else python -- the GPU machine's own interpreter with ITS torch
# (Python 3.12, torch 2.11 + CUDA 13 when last seen). A torch wheel is too large to carry, so the kit
# never installs torch: it runs on the torch it finds.
#
# The other dependencies travel as wheels, in the working tree (64 MiB in all). Once, HERE (a machine
# with the registry), into a folder the device run carries (e.g. wheels/, listed in `carry`):
#     python3.12 -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
#         --no-deps -d wheels/ <each package the GPU machine lacks, pinned as in setup.cfg>
#     python3.12 -m pip wheel --no-deps -w wheels/ deepspeed==0.19.7      # an sdist on PyPI: build it here
#     (pip freeze on the GPU machine says what it lacks; never torch; torchvision only in the build that
#      matches ITS torch; keep the folder under 64 MiB -- pyarrow and opencv are the large ones)
#     ls wheels/*.whl | sed 's#.*/##; s#-.*##' > wheels/requirements.txt   # optional: installed first
# THERE: bash bench/gpu_check.sh --wheels wheels/ , which runs
#     pip install --no-index --find-links DIR -r DIR/requirements.txt      (when that file exists)
#     pip install --no-index --find-links DIR --no-deps -e .
# --no-deps on clipforge itself: setup.cfg pins torch==2.14.1, which the machine's torch does not satisfy
# and no carried wheel could; the dependencies come from the first command (or are already there).
set -u

usage() {
    cat <<'EOF'
usage: bench/gpu_check.sh [--out DIR] [--wheels DIR] [--time-limit SECONDS] [--skip-tests] [--skip-bench]
                         [--bench-quick] [-h|--help]

The GPU kit (issue 19): on a CUDA machine, `pytest -m gpu tests/gpu` then `python -m bench.gpu`,
everything written under one folder, bounded in wall time. Without CUDA: one line, exit 2.

  --out DIR             output folder (default: $GPU_CHECK_OUT, else runs/gpu-check)
  --wheels DIR          first install dependencies from wheels in DIR, no registry:
                        pip install --no-index --find-links DIR [-r DIR/requirements.txt] --no-deps -e .
  --time-limit SECONDS  wall-time bound for everything, installs included (default 480)
  --skip-tests          do not run pytest -m gpu
  --skip-bench          do not run python -m bench.gpu
  --bench-quick         python -m bench.gpu --quick (ViT-B/32 only, loss to B=65,536): when the full
                        bench does not fit in what the tests leave of the time bound
  -h, --help            this text

Environment: PYTHON (interpreter with the machine's torch; default python3, else python),
GPU_CHECK_OUT (default output folder). Exit: 0 ok, 1 a step failed, 2 no CUDA, 64 bad arguments,
124 time bound hit.
EOF
}

die_usage() { echo "gpu_check: $1" >&2; usage >&2; exit 64; }

OUT="${GPU_CHECK_OUT:-runs/gpu-check}"
WHEELS=""
LIMIT=480
RUN_TESTS=1
RUN_BENCH=1
BENCH_ARGS=()
while [ $# -gt 0 ]; do
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --out) [ $# -ge 2 ] || die_usage "--out needs a folder"; OUT="$2"; shift 2 ;;
        --out=*) OUT="${1#*=}"; shift ;;
        --wheels) [ $# -ge 2 ] || die_usage "--wheels needs a folder"; WHEELS="$2"; shift 2 ;;
        --wheels=*) WHEELS="${1#*=}"; shift ;;
        --time-limit) [ $# -ge 2 ] || die_usage "--time-limit needs seconds"; LIMIT="$2"; shift 2 ;;
        --time-limit=*) LIMIT="${1#*=}"; shift ;;
        --skip-tests) RUN_TESTS=0; shift ;;
        --skip-bench) RUN_BENCH=0; shift ;;
        --bench-quick) BENCH_ARGS=(--quick); shift ;;
        *) die_usage "unknown argument: $1" ;;
    esac
done
case "$LIMIT" in ''|*[!0-9]*) die_usage "--time-limit: a whole number of seconds, not '$LIMIT'" ;; esac
[ "$LIMIT" -ge 10 ] || die_usage "--time-limit: at least 10 seconds"
[ -n "$OUT" ] || die_usage "--out: empty folder name"
if [ -n "$WHEELS" ] && [ ! -d "$WHEELS" ]; then die_usage "--wheels: no folder $WHEELS"; fi

PY="${PYTHON:-}"
if [ -z "$PY" ]; then PY="$(command -v python3 || command -v python || true)"; fi
if [ -z "$PY" ]; then echo "gpu-check needs CUDA: no python found (set PYTHON); run make gpu-check on a GPU node"; exit 2; fi

case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac   # relative to where it was called from
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 1   # pytest, bench.gpu and pip -e . run in the repo

# The one-line answer on a machine without CUDA (or without a torch that sees it); nothing written.
if ! timeout 120 "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' >/dev/null 2>&1; then
    echo "gpu-check needs CUDA: torch.cuda.is_available() is false for $PY (no GPU, or no torch); run make gpu-check on a GPU node"
    exit 2
fi

START=$(date +%s)
remaining() { echo $(( LIMIT - ($(date +%s) - START) )); }
mkdir -p "$OUT/gpu-tests" || exit 1
OUT="$(cd "$OUT" && pwd)"
: > "$OUT/summary.txt"
FAILED=0
TIMED_OUT=0

# step NAME LOGFILE SECONDS CMD...: run bounded, log to OUT/LOGFILE, one summary line.
step() {
    local name="$1" log="$2" budget="$3"; shift 3
    if [ "$budget" -lt 5 ]; then
        echo "$name rc=124 seconds=0 (no time left)" >> "$OUT/summary.txt"; TIMED_OUT=1; return
    fi
    local t0 rc
    t0=$(date +%s)
    echo "== $name (<= ${budget}s): $*" | tee -a "$OUT/$log"
    timeout --kill-after=15 "$budget" "$@" >> "$OUT/$log" 2>&1
    rc=$?
    echo "$name rc=$rc seconds=$(( $(date +%s) - t0 ))" | tee -a "$OUT/summary.txt"
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then TIMED_OUT=1; elif [ "$rc" -ne 0 ]; then FAILED=1; fi
}

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DS_ACCELERATOR=cuda CUBLAS_WORKSPACE_CONFIG=:4096:8
export GPU_CHECK_OUT="$OUT" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
unset OMP_NUM_THREADS

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "commit: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo unknown)"
    echo "python: $PY"
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda); print("device", torch.cuda.get_device_name(0))' 2>&1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
} > "$OUT/env.txt"

if [ -n "$WHEELS" ]; then
    if [ -f "$WHEELS/requirements.txt" ]; then
        step install-deps install.log "$(remaining)" "$PY" -m pip install --no-index --find-links "$WHEELS" \
            -r "$WHEELS/requirements.txt"
    fi
    step install-clipforge install.log "$(remaining)" "$PY" -m pip install --no-index --find-links "$WHEELS" \
        --no-deps -e .
fi

# The tests get at most ~55% of what is left; bench.gpu the rest (it bounds its own batch search).
if [ "$RUN_TESTS" -eq 1 ]; then
    budget=$(( $(remaining) * 55 / 100 ))
    [ "$RUN_BENCH" -eq 1 ] || budget=$(remaining)
    step pytest-gpu pytest.log "$budget" "$PY" -m pytest -m gpu tests/gpu -q -rs -p no:cacheprovider \
        --basetemp="$OUT/tmp" --junitxml="$OUT/pytest.xml"
fi
if [ "$RUN_BENCH" -eq 1 ]; then
    [ -f BENCHMARKS.md ] && cp BENCHMARKS.md "$OUT/BENCHMARKS.md"
    export CLIPFORGE_BENCHMARKS="$OUT/BENCHMARKS.md"   # bench.gpu rewrites this copy, not the repo's
    step bench-gpu bench-gpu.log "$(remaining)" "$PY" -m bench.gpu ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"} --json "$OUT/bench-gpu.json"
fi

echo "gpu-check: $(tr '\n' ';' < "$OUT/summary.txt") results in $OUT"
if [ "$TIMED_OUT" -eq 1 ]; then exit 124; fi
exit "$FAILED"

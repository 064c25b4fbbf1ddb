#!/usr/bin/env bash
# SparseGPT and RIA against their authors' code: subprune and the PyTorch
# references prune the same dense model on the same windows; the masks are
# compared bit for bit (each against the float64 reference, beside the f32
# reference's own distance from it) and every pruned model's held-out
# perplexity is measured in transformers; OWL's layer sparsities are compared
# with those of its transcription (owl-u0.5). Run after run_all.sh, whose dense HF
# copy and held-out windows in $R it reuses (it makes them when missing).
# Every command, its wall time and its output go to $R/logs/ and
# $R/commands.log; a step whose output exists is skipped, so a rerun resumes.
#
#   B=$CARGO_TARGET_DIR/release M=model.gguf CALIB=calib.parquet DOCS=docs.parquet \
#   R=/tmp/ref PY=/tmp/refenv/bin/python SPARSEGPT=/tmp/sparsegpt \
#   bash experiments/reference/run_methods.sh [sparsegpt-u0.5 sparsegpt-2of4 ria-u0.5 ria-2of4 owl-u0.5 ...]
#
# F64=0 skips the float64 references; VARIANTS=1 also runs two more f32
# references (one thread, and SDPA attention) against the float64 one.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
B=${B:-/root/.cache/subprune/target/release}
M=${M:-/root/.cache/subprune/models/SmolLM2-135M-Instruct.Q4_1.gguf}
CALIB=${CALIB:?a samples artifact of calibration windows}
DOCS=${DOCS:?the documents artifact whose held-out split gives the perplexity windows}
R=${R:-/tmp/ref}
PY=${PY:-/tmp/refenv/bin/python}
SPARSEGPT=${SPARSEGPT:-/tmp/sparsegpt}
F64=${F64:-1}
VARIANTS=${VARIANTS:-0}
mkdir -p "$R/logs"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error HF_HUB_OFFLINE=1

source "$HERE/lib.sh"
cmp() { "$PY" "$HERE/compare_masks.py" "$1" "$2" --per-layer --weights "$R/dense-hf"; }

# The dense HF copy and the held-out windows, as in run_all.sh.
dense_setup

CASES=("$@")
[[ ${#CASES[@]} -eq 0 ]] && CASES=(sparsegpt-u0.5 sparsegpt-2of4 ria-u0.5 ria-2of4 owl-u0.5)
for C in "${CASES[@]}"; do
  METHOD=${C%%-*} P=${C#*-}
  case $P in
    u0.5) PAT=(--sparsity 0.5) ;;
    2of4) PAT=(--nm 2:4) ;;
    *) echo "unknown pattern in $C (u0.5 or 2of4)"; exit 2 ;;
  esac
  case $METHOD in
    sparsegpt)
      # Sequential SparseGPT: calibrate writes each layer's input Hessians; mask prunes and updates from them.
      run "calibrate-$C" "$R/hessians-$C.parquet" "$B/calibrate" --model "$M" --samples "$CALIB" --method sparsegpt "${PAT[@]}" --device cpu --quiet --out "$R/stats-$C.parquet" --hessians "$R/hessians-$C.parquet"
      run "mask-$C" "$R/mask-$C.parquet" "$B/mask" --hessians "$R/hessians-$C.parquet" --model "$M" "${PAT[@]}" --quiet --out "$R/mask-$C.parquet"
      REF=("$PY" "$HERE/sparsegpt_reference.py" --sparsegpt-repo "$SPARSEGPT")
      ;;
    ria)
      # RIA's authors choose unstructured masks over the whole matrix (per_outneuron off).
      GROUP=()
      [[ $P == u0.5 ]] && GROUP=(--group layer)
      run "calibrate-$C" "$R/stats-$C.parquet" "$B/calibrate" --model "$M" --samples "$CALIB" --method ria "${PAT[@]}" "${GROUP[@]}" --device cpu --quiet --out "$R/stats-$C.parquet"
      run "score-$C" "$R/scores-$C.parquet" "$B/score" --model "$M" --stats "$R/stats-$C.parquet" --method ria --quiet --out "$R/scores-$C.parquet"
      run "mask-$C" "$R/mask-$C.parquet" "$B/mask" --scores "$R/scores-$C.parquet" "${PAT[@]}" "${GROUP[@]}" --quiet --out "$R/mask-$C.parquet"
      REF=("$PY" "$HERE/wanda_reference.py" --method ria --reallocation)
      ;;
    owl)
      # Wanda with OWL's layer sparsities: first the sparsities alone against the
      # reference's (f32 and f64), then the masks as for the other methods.
      [[ $P == u* ]] || { echo "OWL spreads an unstructured sparsity over the layers: owl-u0.5, not $C"; exit 2; }
      run "calibrate-$C" "$R/stats-$C.parquet" "$B/calibrate" --model "$M" --samples "$CALIB" --method wanda "${PAT[@]}" --sparsity-profile owl --device cpu --quiet --out "$R/stats-$C.parquet"
      for D in f32 f64; do
        run "ratios-$C-$D" "$R/ratios-$C-$D.json" "$PY" "$HERE/wanda_reference.py" --model-dir "$R/dense-hf" --samples "$CALIB" "${PAT[@]}" --dtype "$D" --owl-ratios "$R/ratios-$C-$D.json" --out "$R/ratios-$C-$D-unused.parquet"
        run "cmp-ratios-$C-$D" "$R/logs/cmp-ratios-$C-$D.log" "$PY" "$HERE/compare_owl.py" "$R/stats-$C.parquet" "$R/ratios-$C-$D.json"
      done
      run "mask-$C" "$R/mask-$C.parquet" "$B/mask" --stats "$R/stats-$C.parquet" --model "$M" "${PAT[@]}" --sparsity-profile owl --quiet --out "$R/mask-$C.parquet"
      REF=("$PY" "$HERE/wanda_reference.py" --owl)
      ;;
    *) echo "unknown method in $C (sparsegpt, ria or owl)"; exit 2 ;;
  esac
  # The pruned models (SparseGPT's hold updated weights) and their perplexities.
  run "apply-$C" "$R/sub-$C-hf" "$B/mask" apply --model "$M" --mask "$R/mask-$C.parquet" --quiet --out "$R/sub-$C-hf"
  run "ppl-sub-$C" "$R/logs/ppl-sub-$C.log" ppl_sub "$M" --mask "$R/mask-$C.parquet"
  run "ppl-sub-hf-$C" "$R/logs/ppl-sub-hf-$C.log" ppl_hf "$R/sub-$C-hf"
  run "ref-$C" "$R/ref-$C.parquet" "${REF[@]}" --model-dir "$R/dense-hf" --samples "$CALIB" "${PAT[@]}" --out "$R/ref-$C.parquet" --save-model "$R/ref-$C-hf"
  run "ppl-ref-$C" "$R/logs/ppl-ref-$C.log" ppl_hf "$R/ref-$C-hf"
  run "cmp-$C" "$R/logs/cmp-$C.log" cmp "$R/mask-$C.parquet" "$R/ref-$C.parquet"
  if [[ $F64 == 1 ]]; then
    run "ref-$C-f64" "$R/ref-$C-f64.parquet" "${REF[@]}" --model-dir "$R/dense-hf" --samples "$CALIB" "${PAT[@]}" --dtype f64 --out "$R/ref-$C-f64.parquet" --save-model "$R/ref-$C-f64-hf"
    run "ppl-ref-$C-f64" "$R/logs/ppl-ref-$C-f64.log" ppl_hf "$R/ref-$C-f64-hf"
    run "cmp-$C-f64-sub" "$R/logs/cmp-$C-f64-sub.log" cmp "$R/mask-$C.parquet" "$R/ref-$C-f64.parquet"
    run "cmp-$C-f64-ref" "$R/logs/cmp-$C-f64-ref.log" cmp "$R/ref-$C.parquet" "$R/ref-$C-f64.parquet"
    # Other f32 runs of the reference (one thread; PyTorch's SDPA attention):
    # how far equally exact f32 arithmetic alone moves the masks from f64.
    if [[ $VARIANTS == 1 ]]; then
      for V in "t1 --threads 1" "sdpa --attn sdpa"; do
        read -r NAME FLAGS <<<"$V"
        # shellcheck disable=SC2086 # FLAGS holds two words
        run "ref-$C-$NAME" "$R/ref-$C-$NAME.parquet" "${REF[@]}" --model-dir "$R/dense-hf" --samples "$CALIB" "${PAT[@]}" $FLAGS --out "$R/ref-$C-$NAME.parquet" --save-model "$R/ref-$C-$NAME-hf"
        run "ppl-ref-$C-$NAME" "$R/logs/ppl-ref-$C-$NAME.log" ppl_hf "$R/ref-$C-$NAME-hf"
        run "cmp-$C-f64-$NAME" "$R/logs/cmp-$C-f64-$NAME.log" cmp "$R/ref-$C-$NAME.parquet" "$R/ref-$C-f64.parquet"
      done
    fi
  fi
done
echo "done; see $R/commands.log"

# Shared by run_all.sh and run_methods.sh (sourced): the step runner, the
# perplexity commands and the dense model's HF copy and held-out windows.
# Expects B, M, CALIB, DOCS, R, PY and HERE to be set.

# run NAME OUTPUT CMD...: runs CMD unless OUTPUT exists; logs output and wall time
# (and peak RSS, from /usr/bin/time when present) to $R/logs/ and $R/commands.log.
run() {
  local name=$1 out=$2; shift 2
  if [[ -e $out ]]; then echo "skip $name ($out exists)"; return; fi
  echo "== $name: $*" | tee -a "$R/commands.log"
  local t0=$(date +%s.%N) timer=()
  [[ -x /usr/bin/time && $(type -t "$1") == file ]] && timer=(/usr/bin/time -f "peak RSS %M KiB")
  "${timer[@]}" "$@" >"$R/logs/$name.log" 2>&1 || { mv "$R/logs/$name.log" "$R/logs/$name.failed"; echo "FAILED $name"; tail -20 "$R/logs/$name.failed"; exit 1; }
  local t1=$(date +%s.%N)
  awk -v n="$name" -v a="$t0" -v b="$t1" 'BEGIN { printf "   %s: %.1f s\n", n, b - a }' | tee -a "$R/commands.log"
  grep -E 'perplexity|sparsity|wall|differing|first differing|module kind|peak RSS|modules, ' "$R/logs/$name.log" | tail -6 | sed 's/^/   /' | tee -a "$R/commands.log" || true
}
ppl_sub() { "$B/evaluate" ppl --model "$1" --samples "$R/heldout.parquet" --max-windows 16 --seqlen 512 --device cpu --quiet "${@:2}"; }
ppl_hf() { "$PY" "$HERE/ppl.py" --model-dir "$1" --samples "$R/heldout.parquet" --max-windows 16 "${@:2}"; }

# The dense HF copy (a mask that prunes nothing) and the held-out windows.
dense_setup() {
  run dense-stats "$R/dense-stats.parquet" "$B/calibrate" --model "$M" --samples "$CALIB" --oneshot --device cpu --quiet --out "$R/dense-stats.parquet"
  run dense-scores "$R/dense-scores.parquet" "$B/score" --model "$M" --stats "$R/dense-stats.parquet" --method magnitude --quiet --out "$R/dense-scores.parquet"
  run dense-mask "$R/dense-mask.parquet" "$B/mask" --scores "$R/dense-scores.parquet" --sparsity 0 --quiet --out "$R/dense-mask.parquet"
  run dense-hf "$R/dense-hf" "$B/mask" apply --model "$M" --mask "$R/dense-mask.parquet" --quiet --out "$R/dense-hf"
  run heldout "$R/heldout.parquet" "$B/datasets" sample --documents "$DOCS" --model "$M" --split heldout --windows --seqlen 512 --quiet --out "$R/heldout.parquet"
}

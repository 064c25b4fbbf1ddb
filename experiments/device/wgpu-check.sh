#!/usr/bin/env bash
# The GPU checks of issues 21 and 24, for a lent GPU machine (see pack.sh, which makes the
# .devkit/ this reads): on a random-weight Llama-2-7B-shaped model of LAYERS layers (default 4),
# the streamed pipeline on wgpu and on the CPU (datasets sample, calibrate, mask, mask apply,
# evaluate ppl) with each stage's wall time and peak GPU memory, then dense against 50% sparse
# decoding: one layer's products (bench-sparse-layer) and whole-model decode tokens/s
# (evaluate speed), on wgpu and on the CPU. Perplexities of a made model mean nothing; the
# wgpu and CPU ones must agree. Everything it prints is also written to $OUT/log.
set -uo pipefail
kit=${KIT:-.devkit}
work=${WORK:-/tmp/subprune-device}
layers=${LAYERS:-4}
out=${OUT:-$work/out}
rm -rf "$work" && mkdir -p "$work/bin" "$out"
exec > >(tee "$out/log") 2>&1

for f in "$kit"/*.xz; do
    [ "$(basename "$f")" = libs.tar.xz ] && continue
    xz -dc "$f" >"$work/bin/$(basename "$f" .xz)" && chmod +x "$work/bin/$(basename "$f" .xz)"
done
tar -xJf "$kit/libs.tar.xz" -C "$work"
export LD_LIBRARY_PATH="$work/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ! ldconfig -p | grep -q 'libvulkan.so.1 '; then
    dpkg -x "$kit"/libvulkan1_*.deb "$work/vulkan"
    export LD_LIBRARY_PATH="$work/vulkan/usr/lib/x86_64-linux-gnu:$LD_LIBRARY_PATH"
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ] && ! ls /usr/share/vulkan/icd.d/nvidia* >/dev/null 2>&1; then
    export VK_DRIVER_FILES=$nvidia_icd
fi
B=$work/bin
nvidia-smi -L 2>/dev/null || echo "no nvidia-smi: GPU memory not measured"
nproc

# stage NAME COMMAND...: runs it, prints wall time, exit status, peak GPU memory (nvidia-smi
# sampled every 100 ms, minus what was in use before) and the last lines of its output.
stage() {
    local name=$1
    shift
    local mem="$work/mem" base peak sampler=
    base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n1)
    if [ -n "$base" ]; then
        nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 >"$mem" 2>/dev/null &
        sampler=$!
    fi
    local start end rc
    start=$(date +%s.%N)
    "$@" >"$work/stage.log" 2>&1
    rc=$?
    end=$(date +%s.%N)
    if [ -n "$sampler" ]; then
        kill "$sampler" 2>/dev/null
        wait "$sampler" 2>/dev/null
        peak=$(sort -n "$mem" | tail -n1)
        peak="$((peak - base)) MiB"
    else
        peak="n/a"
    fi
    printf '== %-40s exit %d, %8.2f s, GPU memory peak %s\n' "$name" "$rc" "$(awk -v a="$start" -v b="$end" 'BEGIN {print b - a}')" "$peak"
    grep -v '^\s*$' "$work/stage.log" | tail -n "${TAIL:-4}" | sed 's/^/   /'
}

m=$work/model
stage "make-model ($layers layers, bf16)" env SUBPRUNE_SMOLLM2_GGUF="$kit/smollm2-tokenizer.gguf" \
    "$B/make-model" --shape llama-2-7b --layers "$layers" --dtype bf16 --out "$m"
pylib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])' 2>/dev/null || ls -d /usr/lib/python3.* | head -n1)
stage "datasets collect ($pylib)" "$B/datasets" collect --domain python --out "$work/docs.parquet" --from "$pylib"
stage "datasets sample" "$B/datasets" sample --documents "$work/docs.parquet" --model "$m" --nsamples 4 --seqlen 128 --out "$work/calib.parquet"
stage "datasets sample (held out)" "$B/datasets" sample --documents "$work/docs.parquet" --model "$m" --split heldout --windows --seqlen 128 --out "$work/heldout.parquet"
for device in wgpu cpu; do
    stage "calibrate --device $device (50%)" "$B/calibrate" --model "$m" --samples "$work/calib.parquet" --sparsity 0.5 --device "$device" --quiet --out "$work/stats-$device.parquet"
    stage "mask (wanda 50%, $device stats)" "$B/mask" --stats "$work/stats-$device.parquet" --model "$m" --method wanda --sparsity 0.5 --quiet --out "$work/mask-$device.parquet"
done
cmp -s "$work/mask-wgpu.parquet" "$work/mask-cpu.parquet" && echo "masks from wgpu and cpu statistics: identical files" || echo "masks from wgpu and cpu statistics: files differ (see the perplexities below)"
stage "mask (dense, 0%)" "$B/mask" --stats "$work/stats-cpu.parquet" --model "$m" --method wanda --sparsity 0 --quiet --out "$work/mask-0.parquet"
stage "mask apply --format sparse f16" "$B/mask" apply --model "$m" --mask "$work/mask-cpu.parquet" --format sparse --dtype f16 --quiet --out "$work/sparse50"
stage "mask apply --format hf f16 (dense)" "$B/mask" apply --model "$m" --mask "$work/mask-0.parquet" --format hf --dtype f16 --quiet --out "$work/dense16"
for device in wgpu cpu; do
    for case in "dense:$m:" "mask:$m:$work/mask-cpu.parquet" "sparse dir:$work/sparse50:"; do
        IFS=: read -r label model mask <<<"$case"
        stage "evaluate ppl --device $device ($label)" "$B/evaluate" ppl --model "$model" ${mask:+--mask "$mask"} --samples "$work/heldout.parquet" --max-windows 4 --device "$device" --quiet
    done
done
for device in wgpu cpu; do
    TAIL=3 stage "bench-sparse-layer --device $device" "$B/bench-sparse-layer" --device "$device" --repeats 10 --model "$work/dense16" --model "$work/sparse50"
    for model in dense16 sparse50; do
        TAIL=1 stage "evaluate speed --device $device ($model)" "$B/evaluate" speed --model "$work/$model" --device "$device" --decode-tokens 64
    done
done

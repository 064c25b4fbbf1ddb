#!/usr/bin/env bash
# Packs what experiments/device/wgpu-check.sh needs on a lent GPU machine (no network, no Rust,
# at most 64 MiB carried) into .devkit/ at the repository root, which git ignores:
# - the stage binaries it runs, stripped and xz-compressed;
# - OpenBLAS, libgfortran and libquadmath, which they link (libs.tar.xz);
# - the Vulkan loader's Debian package (libvulkan1), which the machine may lack;
# - SmolLM2's tokenizer as a GGUF file without tensors (make-model reads only that).
# Usage: experiments/device/pack.sh PYTHON, PYTHON having the `gguf` package (a throwaway venv).
# Then call the device tool's run with carry [".devkit"] and the command
# `bash experiments/device/wgpu-check.sh`.
set -euo pipefail
python=${1:?usage: pack.sh PYTHON (a python with the gguf package)}
root=$(git rev-parse --show-toplevel)
cd "$root"
grep -qx '/.devkit/' .git/info/exclude 2>/dev/null || echo '/.devkit/' >>.git/info/exclude
target=${CARGO_TARGET_DIR:-$root/target}
cargo build --release -p model -p evaluate -p calibrate -p mask -p datasets --bins
smollm2=$(cargo xtask fetch-model smollm2-135m | tail -n1)
rm -rf .devkit && mkdir -p .devkit
for bin in make-model datasets calibrate mask evaluate bench-sparse-layer; do
    cp "$target/release/$bin" ".devkit/$bin"
    strip ".devkit/$bin"
    xz -9 -T0 ".devkit/$bin"
done
libs=$(mktemp -d)
mkdir "$libs/lib"
for lib in libopenblas.so.0 libgfortran.so.5 libquadmath.so.0; do
    cp "$(ldconfig -p | awk -v l="$lib" '$1 == l && /x86-64/ {print $NF; exit}' | xargs readlink -f)" "$libs/lib/$lib"
done
strip "$libs/lib/"*
tar -C "$libs" -cf - lib | xz -9 -T0 >.devkit/libs.tar.xz
rm -rf "$libs"
(cd .devkit && apt-get download libvulkan1 >/dev/null)
"$python" experiments/device/tokenizer_gguf.py "$smollm2" .devkit/smollm2-tokenizer.gguf
du -sh .devkit

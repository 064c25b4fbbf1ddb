#!/usr/bin/env python3
"""Bit distance between two mask artifacts (subprune schema): the fraction of
keep bits that differ overall, per layer and per module kind, the first layer
that differs, and each mask's sparsity.

    python compare_masks.py A.parquet B.parquet [--per-layer] [--weights DENSE_HF_DIR]

--weights also counts the differing bits whose dense weight is nonzero: bits
that differ only on weights that are already zero (ties among zeros) give the
same pruned model.
"""

import argparse
import re
from collections import defaultdict

import numpy as np

from common import read_mask


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--per-layer", action="store_true", help="print every layer's difference")
    ap.add_argument("--weights", help="dense Hugging Face dir (model.safetensors): count differences on nonzero weights")
    args = ap.parse_args()
    a, b = read_mask(args.a), read_mask(args.b)
    weights = None
    if args.weights:
        from safetensors.numpy import load_file

        weights = load_file(f"{args.weights}/model.safetensors")
    diff_nonzero = 0
    if set(a) != set(b):
        print(f"modules only in A: {sorted(set(a) - set(b))[:5]}, only in B: {sorted(set(b) - set(a))[:5]}")
    diff, total = 0, 0
    by_layer = defaultdict(lambda: [0, 0])
    by_kind = defaultdict(lambda: [0, 0])
    pruned_a = pruned_b = 0
    for name in sorted(set(a) & set(b)):
        ka, kb = a[name], b[name]
        assert ka.shape == kb.shape, f"{name}: {ka.shape} vs {kb.shape}"
        d = int(np.count_nonzero(ka != kb))
        layer = int(re.search(r"layers\.(\d+)\.", name).group(1))
        kind = name.rsplit(".", 1)[1]
        for acc in (by_layer[layer], by_kind[kind]):
            acc[0] += d
            acc[1] += ka.size
        diff += d
        if weights is not None:
            diff_nonzero += int(np.count_nonzero((ka != kb) & (weights[name + ".weight"] != 0)))
        total += ka.size
        pruned_a += int((~ka).sum())
        pruned_b += int((~kb).sum())
    print(f"sparsity A {pruned_a / total:.6f}  B {pruned_b / total:.6f}")
    print(f"differing bits: {diff} of {total} = {diff / total:.6%}")
    if weights is not None:
        print(f"differing bits on nonzero dense weights: {diff_nonzero} of {total} = {diff_nonzero / total:.6%}")
    layers = sorted(by_layer)
    first = next((l for l in layers if by_layer[l][0]), None)
    print(f"first differing layer: {first}")
    if first is not None:
        kinds = [n.rsplit(".", 1)[1] for n in sorted(a) if f"layers.{first}." in n and np.any(a[n] != b[n])]
        print(f"  modules of layer {first} that differ: {kinds}")
    for l in layers if args.per_layer else []:
        d, t = by_layer[l]
        print(f"  layer {l:2d}: {d / t:.6%}")
    print("per module kind: " + ", ".join(f"{k} {d / t:.4%}" for k, (d, t) in sorted(by_kind.items())))


if __name__ == "__main__":
    main()

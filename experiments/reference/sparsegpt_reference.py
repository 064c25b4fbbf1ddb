#!/usr/bin/env python3
"""SparseGPT's sequential pruning by the authors' own code, for comparison
with `calibrate --method sparsegpt` + `mask --hessians`.

Drives `SparseGPT` from IST-DASLab/sparsegpt (sparsegpt.py, commit 147d2159)
as its `llama.py::llama_sequential` does without --true-sequential: for each
decoder layer, the Hessians of all its linears are gathered from one pass of
every window through the still-dense layer (whose inputs are the outputs of
the already pruned layers), each linear is pruned and updated
(`fasterprune`), and the pruned layer is re-run for the next one. Calibrated
on the windows of a subprune samples artifact; writes the keep-masks in
subprune's mask schema (compare_masks.py) and, with --save-model, the pruned
model.

    git clone https://github.com/IST-DASLab/sparsegpt /tmp/sparsegpt
    python sparsegpt_reference.py --sparsegpt-repo /tmp/sparsegpt --model-dir DENSE_HF \
        --samples calib.parquet --sparsity 0.5 --out ref.parquet [--dtype f64]

The authors cast to float32 (`W.float()`, an f32 Hessian); --dtype f64 makes
every tensor float64 instead (the exact-arithmetic run a port is compared to).
"""

import argparse
import contextlib
import sys
import time
import types

import torch

from common import LINEARS, load_model, read_windows, write_mask
from wanda_reference import first_layer_inputs, layer_out


@torch.no_grad()
def prune_sparsegpt(sparsegpt, model, windows, sparsity, prune_n, prune_m, blocksize, percdamp):
    layers = model.model.layers
    inps, kwargs = first_layer_inputs(model, windows)
    outs = [None] * len(inps)
    masks = {}
    for i in range(len(layers)):
        t0 = time.time()
        layer = layers[i]
        subset = {name: layer.get_submodule(name) for name in LINEARS}
        gpts = {name: sparsegpt.SparseGPT(subset[name]) for name in subset}
        handles = [
            subset[name].register_forward_hook(lambda _m, inp, out, name=name: gpts[name].add_batch(inp[0].data, out.data))
            for name in subset
        ]
        for j in range(len(inps)):
            outs[j] = layer_out(layer, inps[j], kwargs)
        for h in handles:
            h.remove()
        for name in subset:
            with contextlib.redirect_stdout(sys.stderr):
                gpts[name].fasterprune(sparsity, prunen=prune_n, prunem=prune_m, blocksize=blocksize, percdamp=percdamp)
            gpts[name].free()
            masks[f"model.layers.{i}.{name}"] = (subset[name].weight.data != 0).numpy()
        for j in range(len(inps)):
            outs[j] = layer_out(layer, inps[j], kwargs)
        inps, outs = outs, inps
        print(f"layer {i}: {time.time() - t0:.1f} s", flush=True)
    return masks


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sparsegpt-repo", required=True, help="checkout of IST-DASLab/sparsegpt (its sparsegpt.py is imported)")
    ap.add_argument("--model-dir", required=True, help="dense Hugging Face model directory")
    ap.add_argument("--samples", required=True, help="samples artifact (tokens list<u32>) of calibration windows")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--sparsity", type=float, help="unstructured sparsity, e.g. 0.5")
    g.add_argument("--nm", help="N:M pattern, e.g. 2:4")
    ap.add_argument("--nsamples", type=int, default=None, help="use only the first K windows")
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--percdamp", type=float, default=0.01)
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    ap.add_argument("--attn", default="eager", help="transformers attn_implementation (eager, sdpa)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", required=True, help="mask artifact to write (subprune's schema)")
    ap.add_argument("--save-model", help="also save the pruned model here (save_pretrained, float32)")
    args = ap.parse_args()

    sys.modules["quant"] = types.ModuleType("quant")  # imported by sparsegpt.py, used only for quantization
    sys.path.insert(0, args.sparsegpt_repo)
    torch.cuda.synchronize = lambda *a, **k: None
    import sparsegpt

    torch.set_num_threads(args.threads)
    if args.dtype == "f64":
        torch.set_default_dtype(torch.float64)
        torch.Tensor.float = lambda self: self.double()
    dtype = torch.float64 if args.dtype == "f64" else torch.float32
    prune_n, prune_m = (0, 0) if args.nm is None else map(int, args.nm.split(":"))
    model = load_model(args.model_dir, dtype, args.attn, False)
    windows = read_windows(args.samples, args.nsamples)
    print(f"{len(windows)} windows of {len(windows[0])} tokens, {args.dtype}, {torch.get_num_threads()} threads")
    t0 = time.time()
    masks = prune_sparsegpt(sparsegpt, model, windows, args.sparsity or 0.0, prune_n, prune_m, args.blocksize, args.percdamp)
    wall = time.time() - t0
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.size for m in masks.values())
    write_mask(args.out, masks)
    if args.save_model:
        model.to(torch.float32).save_pretrained(args.save_model)
    print(f"wrote {args.out}: {len(masks)} modules, sparsity {1 - kept / total:.6f}")
    print(f"reference prune wall time: {wall:.1f} s")


if __name__ == "__main__":
    main()

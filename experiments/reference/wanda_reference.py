#!/usr/bin/env python3
"""Independent PyTorch reference of Wanda's (and RIA's) sequential pruning.

A transcription of locuslab/wanda `lib/prune.py::prune_wanda` (with
`lib/layerwrapper.py::WrappedGPT.add_batch` and `prepare_calibration_input`)
for a Llama-family Hugging Face model, calibrated on the windows of a subprune
samples artifact. Writes the keep-masks in subprune's mask schema (module,
row, in_features, keep: packed bits, LSB first, 1 = kept) so that they can be
compared bit for bit with `mask` output (compare_masks.py).

    python wanda_reference.py --model-dir DENSE_HF --samples calib.parquet \
        --sparsity 0.5 --out ref-u0.5.parquet          # unstructured, per row
    python wanda_reference.py ... --nm 2:4 --out ref-2of4.parquet
    python wanda_reference.py ... --nm 2:4 --dtype f64 --out ref-2of4-f64.parquet

With --dtype f64 the whole model, the statistics and the scores are float64
(an exact-arithmetic reference); f32 follows Wanda (model in the given dtype,
scaler_row in float32).

--method ria transcribes RIA's `prune_ria` (biomedical-cybernetics/
Relative-importance-and-activation-pruning, lib/prune.py, commit b87b897)
with its defaults: the score (|W|/sum(|W|, dim=0) + |W|/sum(|W|, dim=1)) *
sqrt(scaler_row)**0.5, unstructured masks by one threshold over the whole
matrix (per_outneuron off: prune scores <= the sorted score at
int(numel * sparsity)), N:M directly, or with --reallocation after the
heuristic channel reallocation (importance `sum`), as subprune prunes RIA N:M.

--owl-ratios FILE transcribes the first pass of OWL's `prune_wanda_outlier`
(luuyin/OWL, lib/prune_all.py): on the dense model, each layer's Wanda
scores of all its linears, `check_outlier_mean` (the share above M x their
mean, M = 5), and the scaling to a spread of 2 lambda (0.08) around 1 -
sparsity; it writes the layer sparsities (1 - ratio) as JSON and stops.
--owl goes on as `prune_wanda_outlier` does: every layer pruned (per row,
or with --method ria as RIA prunes) at its own sparsity.
"""

import argparse
import json
import time

import numpy as np
import torch
from torch import nn

from common import LINEARS, load_model, read_windows, write_mask


class Catcher(nn.Module):
    """Wanda's prepare_calibration_input: stands in for layer 0, records its
    input and keyword arguments (mask, position ids, rotary embeddings), stops."""

    def __init__(self, module, inps, cache):
        super().__init__()
        self.module = module
        self.inps = inps
        self.cache = cache

    def forward(self, hidden_states, *args, **kwargs):
        self.inps.append(hidden_states[0].detach().clone())
        self.cache["kwargs"] = kwargs
        raise ValueError


class WrappedGPT:
    """scaler_row of one linear, with WrappedGPT.add_batch's running mean."""

    def __init__(self, layer, stat_dtype):
        self.layer = layer
        self.columns = layer.weight.shape[1]
        self.scaler_row = torch.zeros(self.columns, dtype=stat_dtype)
        self.nsamples = 0
        self.stat_dtype = stat_dtype

    def add_batch(self, inp, out):
        if len(inp.shape) == 2:
            inp = inp.unsqueeze(0)
        tmp = inp.shape[0]
        if len(inp.shape) == 3:
            inp = inp.reshape((-1, inp.shape[-1]))
        inp = inp.t()
        self.scaler_row *= self.nsamples / (self.nsamples + tmp)
        self.nsamples += tmp
        inp = inp.type(self.stat_dtype)
        self.scaler_row += torch.norm(inp, p=2, dim=1) ** 2 / self.nsamples


def first_layer_inputs(model, windows):
    """Wanda's prepare_calibration_input: the inputs of layer 0 for every window, and its keyword arguments."""
    layers = model.model.layers
    inps, cache = [], {}
    layers[0] = Catcher(layers[0], inps, cache)
    for w in windows:
        try:
            model(torch.tensor([w], dtype=torch.long))
        except ValueError:
            pass
    layers[0] = layers[0].module
    return inps, cache["kwargs"]


def layer_out(layer, x, kwargs):
    out = layer(x.unsqueeze(0), **kwargs)
    return (out[0] if isinstance(out, tuple) else out)[0]


def dense_layer_statistics(layer, inps, outs, kwargs, stat_dtype):
    """Runs every input through the (still dense) layer into `outs`, gathering
    each linear's scaler_row; gives the linears and their statistics."""
    subset = {name: layer.get_submodule(name) for name in LINEARS}
    wrapped = {name: WrappedGPT(subset[name], stat_dtype) for name in subset}
    handles = [
        subset[name].register_forward_hook(lambda _m, inp, out, name=name: wrapped[name].add_batch(inp[0].data, out.data))
        for name in subset
    ]
    for j in range(len(inps)):
        outs[j] = layer_out(layer, inps[j], kwargs)
    for h in handles:
        h.remove()
    return subset, wrapped


@torch.no_grad()
def prune_wanda(model, windows, sparsity, prune_n, prune_m, stat_dtype, method="wanda", reallocation=False, exact_count=False):
    """Prunes every layer at `sparsity`, or layer i at `sparsity[i]` when it is
    a list (OWL's prune_wanda_outlier); gives the keep-masks by module name."""
    layers = model.model.layers
    layer_sparsities = sparsity if isinstance(sparsity, list) else [sparsity] * len(layers)
    inps, kwargs = first_layer_inputs(model, windows)
    outs = [None] * len(inps)
    masks = {}
    for i in range(len(layers)):
        t0 = time.time()
        layer = layers[i]
        layer_sparsity = layer_sparsities[i]
        subset, wrapped = dense_layer_statistics(layer, inps, outs, kwargs, stat_dtype)
        for name in subset:
            weight = subset[name].weight.data
            if method == "ria":
                a = 0.5
                w_metric = (torch.abs(weight) / torch.sum(torch.abs(weight), dim=0) + torch.abs(weight) / torch.sum(torch.abs(weight), dim=1).reshape(-1, 1)) * (
                    torch.sqrt(wrapped[name].scaler_row.reshape((1, -1)))
                ) ** a
            else:
                w_metric = torch.abs(weight) * torch.sqrt(wrapped[name].scaler_row.reshape((1, -1)))
            w_mask = torch.zeros_like(w_metric) == 1  # True = pruned
            if prune_n != 0 and method == "ria" and reallocation:
                # prune_ria's --reallocation (importance "sum"): channels sorted by summed
                # score dealt into M stripes, every other one flipped; N:M on the permuted
                # matrix, the mask mapped back with W_mask[:, index] = W_mask_permute.
                sorted_idx = torch.sort(torch.sum(w_metric, dim=0))[1]
                index = torch.zeros_like(sorted_idx)
                cols = w_metric.shape[1]
                for ii in range(1, prune_m + 1):
                    chunk = sorted_idx[int(cols * (ii - 1) / prune_m) : int(cols * ii / prune_m)]
                    index[ii - 1 :: prune_m] = chunk if ii % 2 == 1 else chunk.flip(0)
                resort = w_metric[:, index].clone()
                mask_permute = torch.zeros_like(w_metric) == 1
                for ii in range(cols):
                    if ii % prune_m == 0:
                        tmp = resort[:, ii : (ii + prune_m)]
                        tmp = tmp.float() if stat_dtype == torch.float32 else tmp
                        mask_permute.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
                w_mask[:, index] = mask_permute
            elif prune_n != 0:
                for ii in range(w_metric.shape[1]):
                    if ii % prune_m == 0:
                        tmp = w_metric[:, ii : (ii + prune_m)]
                        tmp = tmp.float() if stat_dtype == torch.float32 else tmp
                        w_mask.scatter_(1, ii + torch.topk(tmp, prune_n, dim=1, largest=False)[1], True)
            elif method == "ria":
                thresh = torch.sort(w_metric.flatten())[0][int(weight.shape[0] * weight.shape[1] * layer_sparsity)]
                # The authors prune every score at or below the threshold: one
                # weight more than numel * sparsity; --exact-count prunes that many.
                w_mask = w_metric < thresh if exact_count else w_metric <= thresh
            else:
                sort_res = torch.sort(w_metric, dim=-1, stable=True)
                indices = sort_res[1][:, : int(w_metric.shape[1] * layer_sparsity)]
                w_mask.scatter_(1, indices, True)
            weight[w_mask] = 0
            masks[f"model.layers.{i}.{name}"] = (~w_mask).numpy()
        for j in range(len(inps)):
            outs[j] = layer_out(layer, inps[j], kwargs)
        inps, outs = outs, inps
        print(f"layer {i}: {time.time() - t0:.1f} s", flush=True)
    return masks


def check_outlier_mean(metric, threshold):
    """OWL's check_outlier_mean: percent of values above threshold x their mean."""
    max_shred = torch.mean(metric) * threshold
    return float((metric > max_shred).sum().item()) / metric.numel() * 100


@torch.no_grad()
def owl_layer_sparsities(model, windows, sparsity, stat_dtype, hyper_m=5.0, lamda=0.08):
    """OWL's first pass (dense model) and its layer sparsities."""
    layers = model.model.layers
    inps, kwargs = first_layer_inputs(model, windows)
    outs = [None] * len(inps)
    all_layer_ratio = []
    for i in range(len(layers)):
        layer = layers[i]
        subset, wrapped = dense_layer_statistics(layer, inps, outs, kwargs, stat_dtype)
        metrics = [torch.abs(subset[name].weight.data) * torch.sqrt(wrapped[name].scaler_row.reshape((1, -1))) for name in subset]
        layer_wmetric = torch.cat([torch.flatten(x.cpu()) for x in metrics])
        all_layer_ratio.append(check_outlier_mean(layer_wmetric, hyper_m))
        inps, outs = outs, inps
    ratio = np.array(all_layer_ratio)
    ratio = (ratio - ratio.min()) * (1 / (ratio.max() - ratio.min()) * lamda * 2)
    ratio = ratio - np.mean(ratio) + (1 - sparsity)
    return [float(1 - r) if 1 - r > 0 else 0.01 for r in ratio], all_layer_ratio


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model-dir", required=True, help="dense Hugging Face model directory")
    ap.add_argument("--samples", required=True, help="samples artifact (tokens list<u32>) of calibration windows")
    g = ap.add_mutually_exclusive_group(required=True)
    g.add_argument("--sparsity", type=float, help="unstructured per-row sparsity, e.g. 0.5")
    g.add_argument("--nm", help="N:M pattern, e.g. 2:4")
    ap.add_argument("--nsamples", type=int, default=None, help="use only the first K windows")
    ap.add_argument("--method", choices=["wanda", "ria"], default="wanda")
    ap.add_argument("--reallocation", action="store_true", help="ria N:M: the authors' heuristic channel reallocation (as subprune does)")
    ap.add_argument("--exact-count", action="store_true", help="ria unstructured: prune exactly numel * sparsity weights per matrix (the scores below the threshold) where the authors' code also prunes the one at it")
    ap.add_argument("--owl-ratios", help="write OWL's layer sparsities (JSON) here and stop")
    ap.add_argument("--owl", action="store_true", help="unstructured: OWL's layer sparsities (a first pass over the dense model), then each layer pruned at its own")
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    ap.add_argument("--attn", default="eager", help="transformers attn_implementation (eager, sdpa)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rope64", action="store_true", help="rotary tables in float64 (transformers uses float32 even for f64)")
    ap.add_argument("--out", required=True, help="mask artifact to write (subprune's schema)")
    ap.add_argument("--save-model", help="also save the pruned model here (save_pretrained)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.dtype == "f64" else torch.float32
    prune_n, prune_m = (0, 0) if args.nm is None else map(int, args.nm.split(":"))
    model = load_model(args.model_dir, dtype, args.attn, args.rope64)
    windows = read_windows(args.samples, args.nsamples)
    print(f"{len(windows)} windows of {len(windows[0])} tokens, {args.dtype}, attn {args.attn}, {torch.get_num_threads()} threads")
    t0 = time.time()
    if args.owl_ratios:
        sparsities, ratios = owl_layer_sparsities(model, windows, args.sparsity, dtype)
        with open(args.owl_ratios, "w") as f:
            json.dump({"layer_sparsities": sparsities, "outlier_ratios": ratios}, f)
        print(f"wrote {args.owl_ratios}: OWL layer sparsities, wall time {time.time() - t0:.1f} s")
        return
    sparsity = args.sparsity or 0.0
    if args.owl:
        if args.sparsity is None:
            raise SystemExit("--owl spreads an unstructured --sparsity over the layers; give --sparsity")
        sparsity, _ = owl_layer_sparsities(model, windows, args.sparsity, dtype)
    masks = prune_wanda(model, windows, sparsity, prune_n, prune_m, dtype, args.method, args.reallocation, args.exact_count)
    wall = time.time() - t0
    kept = sum(int(m.sum()) for m in masks.values())
    total = sum(m.size for m in masks.values())
    write_mask(args.out, masks)
    if args.save_model:
        model.float().save_pretrained(args.save_model)
    print(f"wrote {args.out}: {len(masks)} modules, sparsity {1 - kept / total:.6f}")
    print(f"reference prune wall time: {wall:.1f} s")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Perplexity of a Hugging Face model dir in transformers, as Wanda defines it:
each window of a samples artifact predicted from its own start, exp of the
mean token NLL over all predicted tokens (seqlen - 1 per window).

    python ppl.py (--model-dir DIR | --gguf FILE) --samples heldout.parquet [--samples ...]
                  --max-windows 16 [--mask mask.parquet]

--gguf loads a GGUF file through transformers' own GGUF reader (gguf-py
dequantizes it), independent of subprune's loader. With several --samples,
each file's perplexity is printed. --mask zeroes the weights a mask artifact
prunes (subprune's or the reference's) before evaluating.
"""

import os

import argparse
import math
import time

import torch

from common import apply_mask, load_model, read_mask, read_windows


@torch.no_grad()
def perplexity(model, windows):
    nll, count = 0.0, 0
    for w in windows:
        ids = torch.tensor([w], dtype=torch.long)
        logits = model(ids).logits[0, :-1].to(torch.float64)
        nll += torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        count += len(w) - 1
    return math.exp(nll / count), count


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = ap.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir")
    source.add_argument("--gguf")
    ap.add_argument("--samples", required=True, action="append")
    ap.add_argument("--max-windows", type=int, default=16)
    ap.add_argument("--mask", help="mask artifact to apply first")
    ap.add_argument("--dtype", choices=["f32", "f64"], default="f32")
    ap.add_argument("--attn", default="eager")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rope64", action="store_true", help="rotary tables in float64 (transformers uses float32 even for f64)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float64 if args.dtype == "f64" else torch.float32
    if args.gguf:
        path = os.path.abspath(args.gguf)
        model = load_model(os.path.dirname(path), dtype, args.attn, args.rope64, gguf_file=os.path.basename(path))
    else:
        model = load_model(args.model_dir, dtype, args.attn, args.rope64)
    if args.mask:
        apply_mask(model, read_mask(args.mask))
    for samples in args.samples:
        windows = read_windows(samples, args.max_windows)
        t0 = time.time()
        ppl, count = perplexity(model, windows)
        if len(args.samples) > 1:
            print(f"{samples}:")
        print(f"{len(windows)} windows, {count} predicted tokens, {args.dtype}, {time.time() - t0:.1f} s")
        print(f"perplexity: {ppl:.6f}")


if __name__ == "__main__":
    main()

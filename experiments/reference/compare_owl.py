"""OWL's layer sparsities: subprune's (recorded in the `subprune.params` of a
statistics artifact written by `calibrate --sparsity-profile owl`) against a
reference's (`wanda_reference.py --owl-ratios FILE`). Prints the largest
absolute difference and each layer's pair.

    python compare_owl.py stats.parquet ref-owl.json
"""

import argparse
import json

import pyarrow.parquet as pq


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("stats", help="statistics artifact of calibrate --sparsity-profile owl")
    ap.add_argument("reference", help="JSON of wanda_reference.py --owl-ratios")
    args = ap.parse_args()
    metadata = pq.ParquetFile(args.stats).metadata.metadata or {}
    params = json.loads(metadata.get(b"subprune.params", b"{}"))
    ours = params.get("layer_sparsities")
    if not ours:
        raise SystemExit(f"{args.stats}: no layer_sparsities in its subprune.params (was it calibrated with --sparsity-profile owl?)")
    with open(args.reference) as f:
        theirs = json.load(f)["layer_sparsities"]
    if len(ours) != len(theirs):
        raise SystemExit(f"{len(ours)} layers in {args.stats}, {len(theirs)} in {args.reference}")
    for i, (a, b) in enumerate(zip(ours, theirs)):
        print(f"  layer {i:2d}: subprune {a:.9f}  reference {b:.9f}  difference {a - b:+.2e}")
    worst = max(abs(a - b) for a, b in zip(ours, theirs))
    print(f"largest layer sparsity difference: {worst:.3e} over {len(ours)} layers")


if __name__ == "__main__":
    main()

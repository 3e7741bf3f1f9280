#!/usr/bin/env python3
"""The README's CPU speed goals, measured on this machine, each with its verdict.

    bench/speed_goals.py --rkd target/release/rkd --threads 2 [--steps 10] [--rounds 3] [--infer-rounds 5]

Goals (README, "Training speed" and "Inference speed and memory"):
  1. rkd / torch <= 1.0 for BERT-mini's and the ViT's train step and inference
     (`bench/compare.py`: both sides alternating, medians of the rounds);
  2. NF4 BERT-mini at batch 1 no slower than dense f32 (`rkd bench infer`: each variant in its own
     process, the rounds alternating them; the median of the per-round ratios NF4 / dense);
  3. NF4 holding <= 1/6 of the dense linears' bytes.

Prints the machine (CPU, the instruction set rkd's kernels and torch took) and one row per goal;
exits 0 when every goal is met, 1 when one is not. A figure is only as good as the machine is
quiet: on a shared machine run more rounds. `--torch-json FILE` reuses a saved torch result
(`bench/torch_bench.sh --json`), `--json` prints everything as JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare  # noqa: E402  (the side-by-side run, reused)


def infer_rounds(rkd, threads, rounds):
    """`rkd bench infer --json` once per round (each one alternates the variants in fresh
    processes), so that the NF4 / dense ratio can be taken per round."""
    runs = []
    for _ in range(rounds):
        runs.append(compare.run_json([rkd, "bench", "infer", "--threads", str(threads), "--rounds", "1", "--json"]))
    return runs


def row(runs, variant):
    """The row of `variant` ("dense_f32", "nf4", ...) in each run."""
    out = []
    for r in runs:
        match = [x for x in r["rows"] if x["variant"] == variant]
        if not match:
            raise SystemExit(f"rkd bench infer printed no {variant!r} row: {[x['variant'] for x in r['rows']]}")
        out.append(match[0])
    return out


def goals(cmp, infer):
    """(goal, measured, target, met) rows."""
    rows = []
    for m, label in compare.MODELS:
        for k, name in compare.MEASURES:
            ratio = cmp["rkd"][m][k] / cmp["torch"][m][k]
            rows.append((f"{label} {name}: rkd / torch", f"{ratio:.2f}x", "<= 1.00x", ratio <= 1.0))
    dense, nf4 = row(infer, "dense_f32"), row(infer, "nf4")
    ratio = statistics.median(n["batch_1_ms"] / d["batch_1_ms"] for n, d in zip(nf4, dense))
    ms = lambda rs: statistics.median(r["batch_1_ms"] for r in rs)  # noqa: E731
    rows.append(
        (
            "NF4 batch 1: latency / dense",
            f"{ratio:.2f}x ({ms(nf4):.2f} / {ms(dense):.2f} ms)",
            "<= 1.00x",
            ratio <= 1.0,
        )
    )
    share = nf4[0]["linear_weights_bytes"] / dense[0]["linear_weights_bytes"]
    rows.append(("NF4 linears: bytes / dense", f"{share:.3f}x", "<= 0.167x", share <= 1 / 6))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rkd", default=os.path.join(HERE, "..", "target", "release", "rkd"), help="the rkd binary")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=10, help="timed steps per training measurement")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rkd / torch rounds")
    ap.add_argument("--infer-rounds", type=int, default=5, help="rounds of `rkd bench infer`")
    ap.add_argument("--torch-json", help="a saved torch_bench.py --json result instead of running torch")
    ap.add_argument("--torch", default=os.path.join(HERE, "torch_bench.sh"), help="the torch side")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args(argv)
    cmp_args = ["--rkd", args.rkd, "--threads", str(args.threads), "--steps", str(args.steps)]
    cmp_args += ["--rounds", str(args.rounds), "--torch", args.torch, "--json"]
    if args.torch_json:
        cmp_args += ["--torch-json", args.torch_json]
    cmp = compare.run_json([sys.executable, os.path.join(HERE, "compare.py")] + cmp_args)
    infer = infer_rounds(args.rkd, args.threads, max(args.infer_rounds, 1))
    rows = goals(cmp, infer)
    met = all(r[3] for r in rows)
    if args.json:
        out = {"machine": cmp["machine"], "met": met}
        out["goals"] = [{"goal": g, "measured": v, "target": t, "met": ok} for g, v, t, ok in rows]
        print(json.dumps(out))
        return 0 if met else 1
    width = max(len(r[0]) for r in rows)
    print(f"{'goal':<{width}}  {'measured':<28}  {'target':<9}  met")
    for g, v, t, ok in rows:
        print(f"{g:<{width}}  {v:<28}  {t:<9}  {'yes' if ok else 'NO'}")
    print(f"({args.threads} threads; {args.rounds} rounds of {args.steps} steps against torch, {len(infer)} of bench infer)")
    for line in cmp["machine"]:
        print(line)
    print("every goal met" if met else "NOT every goal met")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())

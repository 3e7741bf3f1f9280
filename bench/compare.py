#!/usr/bin/env python3
"""Side by side: `rkd bench train --json` against bench/torch_bench.sh, same threads and steps.

    bench/compare.py --rkd target/release/rkd --threads 2 --steps 5 [--rounds 2]

Runs the two one after the other (`--rounds` alternates them and takes each entry's median,
which evens out a shared machine's load) and prints one row per measurement with the ratio
rkd / torch (below 1.0: rkd is faster). `--torch-json FILE` reuses a saved torch result instead
of running torch; `--json` prints everything as JSON.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
MODELS = [("bert_mini", "BERT-mini"), ("vit", "ViT")]
GPU_MODELS = [("bert_base", "BERT-base"), ("vit_base", "ViT-B/16")]
MEASURES = [("train_step_s", "train step"), ("infer_s", "inference")]


def run_json(cmd):
    """Runs cmd and parses the last line of its stdout as JSON."""
    print("+ " + " ".join(cmd), file=sys.stderr)
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def machine(rkd_run, torch_run):
    """One line per side naming what it ran on: the CPU and instruction set rkd's kernels took,
    the capability torch dispatched to (and the variables capping its libraries)."""
    cpu = rkd_run.get("cpu") or {}
    ours = f"rkd: {cpu.get('name', 'unknown CPU')}, {cpu.get('isa', '?')}"
    if cpu.get("kernels") and cpu.get("kernels") != cpu.get("isa"):
        ours += f" (element-wise kernels {cpu['kernels']})"
    tcpu = (torch_run or {}).get("cpu") or {}
    theirs = f"torch {(torch_run or {}).get('torch', '?')}: CPU capability {tcpu.get('capability', '?')}"
    theirs += "".join(f", {k}={v}" for k, v in (tcpu.get("caps") or {}).items())
    return [ours, theirs]


def medians(runs, models):
    """Per model and measure, the median over runs."""
    return {m: {k: statistics.median(r[m][k] for r in runs) for k, _ in MEASURES} for m, _ in models}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rkd", default=os.path.join(HERE, "..", "target", "release", "rkd"), help="the rkd binary")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=1, help="alternate rkd and torch this many times")
    ap.add_argument("--torch-json", help="a saved torch_bench.py --json result instead of running torch")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N, for both sides")
    ap.add_argument("--torch", default=os.path.join(HERE, "torch_bench.sh"),
                    help="the torch side (a Python with torch can run torch_bench.py directly)")
    args = ap.parse_args(argv)
    common = ["--threads", str(args.threads), "--steps", str(args.steps), "--json", "--device", args.device]
    models = MODELS + (GPU_MODELS if args.device.startswith("cuda") else [])
    rkd_runs, torch_runs = [], []
    for _ in range(max(args.rounds, 1)):
        rkd_runs.append(run_json([args.rkd, "bench", "train"] + common))
        if not args.torch_json:
            torch_runs.append(run_json(args.torch.split() + common))
    if args.torch_json:
        with open(args.torch_json) as f:
            torch_runs.append(json.load(f))
    ours, theirs = medians(rkd_runs, models), medians(torch_runs, models)
    names = machine(rkd_runs[0], torch_runs[0])
    if args.json:
        print(json.dumps({"rkd": ours, "torch": theirs, "machine": names}))
        return 0
    print(f"{'model':<10}  {'measure':<10}  {'rkd s':>8}  {'torch s':>8}  {'rkd/torch':>9}")
    for m, label in models:
        for k, name in MEASURES:
            a, b = ours[m][k], theirs[m][k]
            print(f"{label:<10}  {name:<10}  {a:>8.3f}  {b:>8.3f}  {a / b:>8.2f}x")
    print(f"({args.threads} threads, median of {args.steps} steps, {len(rkd_runs)} round(s), on {args.device})")
    for line in names:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())

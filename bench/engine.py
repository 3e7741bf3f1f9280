#!/usr/bin/env python3
"""Engine benchmark: rkd against running the same commands directly, and against Snakemake.

Pipeline shape (the same for every contender): N stages = N/10 sweep points x a chain of 10.
Stage k of point p reads 64 bytes of its parent (stage 0 reads a shared 2 MB input file),
appends one line naming itself and the point's value, and writes its own output file.

Scenarios, per contender and N:
  cold     fresh workspace and store, run everything
  noop     rerun with nothing changed                       (0 stages run)
  dry      dry run / plan with nothing changed
  change   change one sweep value, rerun                    (exactly 10 stages run)
  touch    rewrite the 2 MB input with the same bytes, rerun (0 stages run)

Times are wall-clock medians of --reps runs (cold: --cold-reps). The "raw" contender runs the
N commands directly, 2 at a time (xargs -P2), which is the floor for the cold run. rkd's cold
overhead per stage is (rkd cold - raw cold) / N.

Usage:
  cargo build --release
  python3 bench/engine.py --n 1000 10000                   # rkd and raw
  python3 bench/engine.py --n 1000 --snakemake VENV        # also Snakemake from VENV/bin
  (make the venv with: python3 -m venv VENV && VENV/bin/pip install snakemake)

Only the Python standard library is used. Workspaces go to a fresh temp dir (or $BENCH_WORKDIR).
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

CHAIN = 10
HERE = os.path.dirname(os.path.abspath(__file__))
RKD = os.environ.get("RKD", os.path.join(HERE, "..", "target", "release", "rkd"))


def values(n, change=None):
    """The sweep values; `change` replaces the first one (a new value each time)."""
    vals = [round(0.001 * (i + 1), 6) for i in range(max(1, n // CHAIN))]
    if change is not None:
        vals[0] = change
    return vals


def write_input(ws):
    os.makedirs(os.path.join(ws, "data"), exist_ok=True)
    line = b"dataset v1 " + b"x" * 52 + b"\n"
    size = 2_000_000
    with open(os.path.join(ws, "data", "input.txt"), "wb") as f:
        f.write((line * (size // len(line) + 1))[:size])


def step_cmd(k, src, dst, value):
    return f"head -c 64 {src} > {dst} && echo 's{k} v={value}' >> {dst}"


# ------------------------------------------------------------------------------ rkd
def rkd_source(n, change=None):
    vals = ", ".join(repr(v) for v in values(n, change))
    lines = [f"sweep v in [{vals}] {{"]
    for k in range(CHAIN):
        src = "data/input.txt" if k == 0 else "$RKD_INPUTS/out.txt"
        cmd = step_cmd(k, src, "$RKD_OUT/out.txt", "$RKD_PARAM_V")
        extra = 'files: ["data/input.txt"]' if k == 0 else f"inputs: [s{k - 1}]"
        lines.append(f'  stage s{k} = exec(cmd: "{cmd}", {extra}, params: {{v: v}})')
    lines.append("}")
    return "\n".join(lines) + "\n"


def rkd_run(ws, *args):
    out = subprocess.run([RKD, "run", "pipeline.rkd", "--json", "-j", "2", *args], cwd=ws,
                         capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"rkd failed: {out.stderr[-2000:]}")
    res = json.loads(out.stdout)
    return len(res.get("ran", res.get("would_run", [])))


class Rkd:
    name = "rkd"

    def setup(self, ws, n):
        write_input(ws)
        with open(os.path.join(ws, "pipeline.rkd"), "w") as f:
            f.write(rkd_source(n))

    def cold(self, ws):
        shutil.rmtree(os.path.join(ws, ".rkd"), ignore_errors=True)
        return rkd_run(ws)

    def run(self, ws):
        return rkd_run(ws)

    def dry(self, ws):
        return rkd_run(ws, "--dry-run")

    def change(self, ws, n, change):
        with open(os.path.join(ws, "pipeline.rkd"), "w") as f:
            f.write(rkd_source(n, change))


# ------------------------------------------------------------------------------ raw floor
class Raw:
    name = "raw (xargs -P2)"

    def setup(self, ws, n):
        write_input(ws)
        self.n = n

    def cold(self, ws):
        shutil.rmtree(os.path.join(ws, "out"), ignore_errors=True)
        # Chains run in parallel, two at a time; each chain runs its 10 steps in order.
        chains = []
        for p, v in enumerate(values(self.n)):
            steps = [f"mkdir -p out/p{p}"]
            for k in range(CHAIN):
                src = "data/input.txt" if k == 0 else f"out/p{p}/s{k - 1}.txt"
                steps.append(step_cmd(k, src, f"out/p{p}/s{k}.txt", v))
            chains.append(" && ".join(steps))
        script = os.path.join(ws, "chains.txt")
        with open(script, "w") as f:
            f.write("\0".join(chains))
        subprocess.run(f"xargs -0 -P2 -n1 sh -c < {script}", shell=True, cwd=ws, check=True)
        return self.n


# ------------------------------------------------------------------------------ Snakemake
class Snakemake:
    name = "snakemake"

    def __init__(self, venv):
        self.bin = os.path.join(venv, "bin", "snakemake")

    def setup(self, ws, n):
        write_input(ws)
        self.n = n
        self.write_config(ws, values(n))
        rule = []
        rule.append('configfile: "config.json"')
        rule.append("POINTS = list(range(len(config['values'])))")
        rule.append(f"rule all:\n    input: expand('out/p{{p}}/s{CHAIN - 1}.txt', p=POINTS)")
        rule.append(
            "rule s0:\n    input: 'data/input.txt'\n    output: 'out/p{p}/s0.txt'\n"
            "    params: v=lambda w: config['values'][int(w.p)]\n"
            "    shell: \"head -c 64 {input} > {output} && echo 's0 v={params.v}' >> {output}\"")
        rule.append(
            "rule step:\n    input: lambda w: f'out/p{w.p}/s{int(w.k) - 1}.txt'\n    output: 'out/p{p}/s{k}.txt'\n"
            "    wildcard_constraints: k='[1-9]'\n    params: v=lambda w: config['values'][int(w.p)]\n"
            "    shell: \"head -c 64 {input} > {output} && echo 's{wildcards.k} v={params.v}' >> {output}\"")
        with open(os.path.join(ws, "Snakefile"), "w") as f:
            f.write("\n\n".join(rule) + "\n")

    def write_config(self, ws, vals):
        with open(os.path.join(ws, "config.json"), "w") as f:
            json.dump({"values": vals}, f)

    def _run(self, ws, *extra):
        out = subprocess.run([self.bin, "--cores", "2", "all", *extra], cwd=ws,
                             capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"snakemake failed: {out.stderr[-2000:]}")
        # Jobs from Snakemake's "Job stats" table ("total N", which counts the `all` target too).
        text = out.stdout + out.stderr
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "total" and parts[1].isdigit():
                return int(parts[1]) - 1
        return 0 if "Nothing to be done" in text else -1

    def cold(self, ws):
        shutil.rmtree(os.path.join(ws, "out"), ignore_errors=True)
        shutil.rmtree(os.path.join(ws, ".snakemake"), ignore_errors=True)
        return self._run(ws)

    def run(self, ws):
        return self._run(ws)

    def dry(self, ws):
        return self._run(ws, "-n")

    def change(self, ws, n, change):
        self.write_config(ws, values(n, change))


# ------------------------------------------------------------------------------ driver
def timed(fn, *args):
    t = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t, r


def median(xs):
    return statistics.median(xs) if xs else float("nan")


def bench(contender, n, reps, cold_reps, root):
    ws = os.path.join(root, f"{contender.name.split()[0]}-{n}")
    shutil.rmtree(ws, ignore_errors=True)
    os.makedirs(ws)
    contender.setup(ws, n)
    row = {"engine": contender.name, "n": n}
    colds = [timed(contender.cold, ws) for _ in range(cold_reps)]
    row["cold_s"] = median([t for t, _ in colds])
    row["cold_stages"] = colds[-1][1]
    if not hasattr(contender, "run"):
        return row
    noop = [timed(contender.run, ws) for _ in range(reps)]
    row["noop_s"], row["noop_stages"] = median([t for t, _ in noop]), noop[-1][1]
    dry = [timed(contender.dry, ws) for _ in range(reps)]
    row["dry_s"] = median([t for t, _ in dry])
    changes = []
    for i in range(reps):
        contender.change(ws, n, 100.0 + i)
        changes.append(timed(contender.run, ws))
    row["change_s"], row["change_stages"] = median([t for t, _ in changes]), changes[0][1]
    contender.change(ws, n, None)
    contender.run(ws)
    touches = []
    for _ in range(reps):
        src = os.path.join(ws, "data", "input.txt")
        data = open(src, "rb").read()
        time.sleep(0.01)
        with open(src, "wb") as f:
            f.write(data)
        touches.append(timed(contender.run, ws))
    row["touch_s"], row["touch_stages"] = median([t for t, _ in touches]), touches[-1][1]
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--cold-reps", type=int, default=1)
    ap.add_argument("--snakemake", metavar="VENV", help="also run Snakemake from VENV/bin")
    ap.add_argument("--snakemake-max-n", type=int, default=1000, help="largest N for Snakemake (it is slow)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not os.path.exists(RKD):
        sys.exit(f"{RKD} not found: run `cargo build --release` first (or set RKD)")
    root = os.environ.get("BENCH_WORKDIR") or tempfile.mkdtemp(prefix="rkd-bench-")
    rows = []
    for n in args.n:
        contenders = [Raw(), Rkd()]
        if args.snakemake and n <= args.snakemake_max_n:
            contenders.append(Snakemake(args.snakemake))
        for c in contenders:
            rows.append(bench(c, n, args.reps, args.cold_reps, root))
            print(f"done: {c.name} N={n}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
        return
    ms = lambda s: f"{s * 1000:.0f} ms" if s < 10 else f"{s:.1f} s"
    print("| N | engine | cold | no-op (stages) | dry run | change one value (stages) | touch input, same bytes (stages) |")
    print("|---:|---|---:|---:|---:|---:|---:|")
    for r in rows:
        if "noop_s" not in r:
            print(f"| {r['n']} | {r['engine']} | {ms(r['cold_s'])} | – | – | – | – |")
            continue
        print(f"| {r['n']} | {r['engine']} | {ms(r['cold_s'])} | {ms(r['noop_s'])} ({r['noop_stages']}) | {ms(r['dry_s'])} "
              f"| {ms(r['change_s'])} ({r['change_stages']}) | {ms(r['touch_s'])} ({r['touch_stages']}) |")
    raw = {r["n"]: r["cold_s"] for r in rows if r["engine"].startswith("raw")}
    for r in rows:
        if r["engine"] == "rkd" and r["n"] in raw:
            print(f"\nrkd cold-run overhead at N={r['n']}: {(r['cold_s'] - raw[r['n']]) / r['n'] * 1000:.2f} ms per stage over the raw commands")


if __name__ == "__main__":
    main()

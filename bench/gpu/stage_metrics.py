#!/usr/bin/env python3
"""Helper of bench/gpu/check.sh (standard library only).

    stage_metrics.py RKD PIPELINE STORE         each stage's metrics, device and seconds, as JSON
    stage_metrics.py --compare A.json B.json NAME
                                                the accuracies of two such files side by side;
                                                exit 1 when they differ by more than 3 points
"""
import json
import os
import subprocess
import sys

BOUND = 0.03


def stage_metrics(rkd, pipeline, store):
    plan = json.loads(subprocess.run([rkd, "plan", pipeline, "--json", "--store", store],
                                     capture_output=True, text=True, check=True).stdout)
    stages = {}
    for s in plan["stages"]:
        entry = os.path.join(store, "entries", s["key"])
        with open(os.path.join(entry, "metrics.json")) as f:
            metrics = json.load(f)
        with open(os.path.join(entry, "meta.json")) as f:
            meta = json.load(f)
        stages[s["name"]] = {"metrics": metrics, "device": meta.get("device"), "time_s": meta.get("time_s")}
    return stages


def compare(a_path, b_path, name):
    with open(a_path) as f:
        a_stages = json.load(f)
    with open(b_path) as f:
        b_stages = json.load(f)
    worst = 0.0
    print(f"{'stage':<22} {name + ' acc':>12} {'cpu acc':>9} {'diff':>7} {name + ' s':>9} {'cpu s':>7}")
    for stage in sorted(a_stages):
        a = a_stages[stage]["metrics"].get("accuracy")
        b = b_stages.get(stage, {}).get("metrics", {}).get("accuracy")
        if a is None or b is None:
            continue
        worst = max(worst, abs(a - b))
        print(f"{stage:<22} {100 * a:>11.1f}% {100 * b:>8.1f}% {100 * (a - b):>+6.1f} "
              f"{a_stages[stage]['time_s']:>9.1f} {b_stages[stage]['time_s']:>7.1f}")
    verdict = "agree" if worst <= BOUND else "DISAGREE"
    print(f"largest difference: {100 * worst:.1f} points ({verdict}; bound {100 * BOUND:.0f} points)")
    return 0 if worst <= BOUND else 1


def main(argv):
    if argv[:1] == ["--compare"]:
        return compare(*argv[1:4])
    print(json.dumps(stage_metrics(*argv[:3]), indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

#!/usr/bin/env bash
# The GPU check (issue 17): one script, under 8 minutes on one GPU, every result in one folder.
#
#   bench/gpu/check.sh RKD [OUT]        # RKD: an rkd built with `--features cuda` (stripped is fine)
#   DEVICE=cpu bench/gpu/check.sh RKD   # the same steps on the CPU: how the script is tested
#
# Needs no Rust toolchain and no network: a copy of the repository, the binary, and (for the
# PyTorch side) a Python with torch. What it writes to OUT (default: gpu-check/):
#   machine.txt          nvidia-smi, the binary's version, the device asked for
#   selftest.json        `rkd selftest --device $DEVICE --json`: the CUDA checks of the unit tests,
#                        carried in the binary (NF4 dequantization bit for bit; a BERT, ViT and
#                        QLoRA training step's loss and gradients against the CPU's, ≤ 1e-4)
#   rkd_bench.json       `rkd bench train --device $DEVICE --json` (BERT-mini, ViT; on a GPU also
#                        BERT-base and ViT-B/16), batch 32
#   torch_bench.json     bench/torch_bench.py --device $DEVICE --json, the same cases (when torch imports)
#   compare.txt          the two side by side (rkd / torch)
#   pipeline_device.json bench/gpu/pipeline.rkd (train → distill → qlora → prune → eval) run on
#   pipeline_cpu.json    $DEVICE and on the CPU: each stage's metrics, device and seconds
#   summary.txt          the accuracies of both runs side by side, and whether they agree
#   log.txt              what ran, with seconds since the start
# Exit status: 0 when everything ran, every selftest check passed and the two runs' accuracies
# are within 3 points.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
rkd="$(cd "$(dirname "${1:?usage: bench/gpu/check.sh RKD [OUT]}")" && pwd)/$(basename "$1")"
out="${2:-gpu-check}"
device="${DEVICE:-cuda}"
steps="${STEPS:-5}"
python="${PYTHON:-python3}"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
started=$SECONDS

log() { echo "[$((SECONDS - started)) s] $*" | tee -a "$out/log.txt"; }

# candle's CUDA backend loads libcublas, libcurand and libnvrtc at run time: take them from the
# Python packages beside torch (nvidia/*/lib) when LD_LIBRARY_PATH does not already hold them.
if [ "$device" != cpu ]; then
    extra="$("$python" - <<'PY' 2>/dev/null || true
import glob, os, site
dirs = set()
for sp in site.getsitepackages():
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib", "*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)"
    if [ -n "$extra" ]; then
        export LD_LIBRARY_PATH="$extra${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
fi

{
    echo "device asked for: $device"
    "$rkd" --version
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
} > "$out/machine.txt" 2>&1

log "rkd selftest --device $device"
selftest_status=0
"$rkd" selftest --device "$device" --json > "$out/selftest.json" || selftest_status=$?
cat "$out/selftest.json"

log "rkd bench train --device $device"
"$rkd" bench train --device "$device" --steps "$steps" --json > "$out/rkd_bench.json"

if "$python" -c 'import torch' 2>/dev/null; then
    log "torch_bench.py --device $device"
    "$python" "$repo/bench/torch_bench.py" --device "$device" --steps "$steps" --json > "$out/torch_bench.json"
    "$python" "$repo/bench/compare.py" --rkd "$rkd" --device "$device" --steps "$steps" \
        --torch-json "$out/torch_bench.json" > "$out/compare.txt"
else
    log "torch does not import in $python: no PyTorch side"
fi

# The same pipeline on the device and on the CPU, each in its own store.
work="$out/pipeline"
rm -rf "$work"
mkdir -p "$work"
cp "$repo/bench/gpu/pipeline.rkd" "$work/"

# run_pipeline DEVICE NAME: the pipeline on DEVICE in store-NAME; each stage's metrics to pipeline_NAME.json.
run_pipeline() {
    local dev="$1" name="$2"
    local store="$work/store-$name"
    log "pipeline on $dev"
    "$rkd" run "$work/pipeline.rkd" --device "$dev" --store "$store" --json > "$work/run-$name.json"
    "$python" "$here/stage_metrics.py" "$rkd" "$work/pipeline.rkd" "$store" > "$out/pipeline_$name.json"
}
run_pipeline "$device" device
run_pipeline cpu cpu

log "comparing"
status=0
"$python" "$here/stage_metrics.py" --compare "$out/pipeline_device.json" "$out/pipeline_cpu.json" "$device" \
    > "$out/summary.txt" || status=$?
cat "$out/summary.txt"
if [ "$selftest_status" -ne 0 ]; then
    echo "selftest FAILED (exit $selftest_status): see $out/selftest.json"
    status=1
fi
log "done in $((SECONDS - started)) s; results in $out"
exit $status

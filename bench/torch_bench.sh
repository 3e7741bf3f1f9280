#!/usr/bin/env bash
# Runs bench/torch_bench.py (PyTorch side of `rkd bench train`) in a cached virtual environment.
#
# The venv lives in $RKD_TORCH_VENV (default ~/.cache/rkd-torch-venv) and is created on first
# use: torch from the CPU wheel index when it is reachable, else from PyPI (a CUDA build, several
# GB, that runs fine on the CPU), plus transformers. Arguments are passed to torch_bench.py, e.g.
#   bench/torch_bench.sh --threads 2 --steps 5 --json
# With --setup-only the venv is created and nothing is timed.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${RKD_TORCH_VENV:-$HOME/.cache/rkd-torch-venv}"
python="${PYTHON:-python3}"

if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import torch' >/dev/null 2>&1; then
    echo "creating the PyTorch venv in $venv (one time)" >&2
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip >&2
    if ! "$venv/bin/pip" install --quiet --index-url https://download.pytorch.org/whl/cpu torch >&2 2>/dev/null; then
        echo "the CPU wheel index is not reachable; installing torch from PyPI" >&2
        "$venv/bin/pip" install --quiet torch >&2
    fi
    # transformers is optional: torch_bench.py falls back to hand-written models without it.
    "$venv/bin/pip" install --quiet transformers >&2 || echo "transformers did not install; using the hand-written models" >&2
fi

if [ "${1:-}" = "--setup-only" ]; then
    exit 0
fi
exec "$venv/bin/python" "$here/torch_bench.py" "$@"

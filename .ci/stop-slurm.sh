#!/usr/bin/env bash
# Stops the Slurm daemons that .ci/start-slurm.sh started (and only those).
set -u
started=/run/rkd-ci-slurm.started
[ -f "$started" ] || exit 0
if grep -qx slurm "$started"; then
  scontrol shutdown >/dev/null 2>&1 || true
fi
if grep -qx munged "$started" && [ -f /run/munge/munged.pid ]; then
  kill "$(cat /run/munge/munged.pid)" 2>/dev/null || true
fi
rm -f "$started"
echo "slurm stopped"

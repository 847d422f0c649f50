#!/usr/bin/env bash
# Null calibration of `retort audit radioactivity` (open / reading mode) across many keys, on control
# readers that never saw the keys (issue 14, deliverable 5; docs/audit.md "Control calibration across keys").
#
#   bench/run_audit_controls.sh [extra audit_controls flags...]
#
# Builds build/audit_controls (BUILD=dir to change; the build dir must have RETORT_BENCH=ON), runs it at
# low CPU priority and writes bench/results/audit_controls_<date>.json. Default size: the run recorded in
# docs/audit.md (about 10 minutes on 2 busy cores); pass e.g. --keys 200 --prompts-per-key 8 for a
# tighter check where time allows.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build}
cmake --build "$BUILD" -j2 --target audit_controls >/dev/null
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
time nice -n 10 "$BUILD/audit_controls" --keys 40 --prompts-per-key 4 --max-tokens 64 --min-tokens 20 "$@"

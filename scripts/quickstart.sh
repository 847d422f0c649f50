#!/usr/bin/env bash
# scripts/quickstart.sh — the main job: set up, then distill SmolLM2-135M-Instruct into a small
# student on this machine and print the table (teacher / student before / SFT-only / KD).
#   bash scripts/quickstart.sh [extra `retort distill` flags, e.g. --out DIR --steps N]
# Output: $RETORT_HOME/runs/quickstart (default ~/.cache/retort/runs/quickstart): the captured
# stores, each training run (metrics, report, final HF model), the KD student as GGUF q8_0,
# summary.json and report.html. Re-running reuses the captured data and finished runs.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
build="${RETORT_BUILD_DIR:-$here/build}"
cd "$here"
time "$build/retort" distill --config configs/quickstart.json "$@"

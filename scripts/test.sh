#!/usr/bin/env bash
# scripts/test.sh — set up (packages, default model, build) and run every test.
#   bash scripts/test.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
build="${RETORT_BUILD_DIR:-$here/build}"
cd "$build"
ctest --output-on-failure -j "${RETORT_JOBS:-$(nproc)}"

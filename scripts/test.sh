#!/usr/bin/env bash
# scripts/test.sh — set up (packages, default model, build) and run every test.
#   bash scripts/test.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
build="${RETORT_BUILD_DIR:-$here/build}"
cd "$build"
# ctest runs several tests at once, and each runs OpenMP on every core: with OpenMP's default wait policy,
# threads that finished a parallel region spin on cores the other test needs. Waiting passively, 7 model
# tests took 101-118 s at -j2 on 2 cores under extra load, against 430-521 s with the default policy.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-passive}"
ctest --output-on-failure -j "${RETORT_JOBS:-$(nproc)}"

#!/usr/bin/env bash
# Cost per token of antidistillation sampling on the default teacher (SmolLM2-135M-Instruct) with a pruned
# SmolLM2 student as the proxy.
#
#   bench/run_antidistill.sh [PROXY.gguf] [HELDOUT_STORE] [extra bench_antidistill flags...]
#
# Defaults: the quickstart run's student (~/.cache/retort/runs/quickstart/student-fkl-q8_0.gguf, 20 of the
# teacher's 30 layers) and its held-out store (data/heldout: the teacher's own samples). Prepares
# build/antidistill-bench/ with `retort antidistill prepare` when absent (32 traces), then runs
# build/bench_antidistill (which must be built: cmake --build build --target bench_antidistill retort_torch_cli)
# and writes bench/results/antidistill_<date>.json.
set -euo pipefail
cd "$(dirname "$0")/.."
RUNS=${RETORT_HOME:-$HOME/.cache/retort}/runs/quickstart
PROXY=${1:-$RUNS/student-fkl-q8_0.gguf}
STORE=${2:-$RUNS/data/heldout}
shift $(( $# > 2 ? 2 : $# ))
DIR=build/antidistill-bench
if [[ ! -f $DIR/antidistill.json ]]; then
  time build/retort-torch antidistill prepare --proxy "$PROXY" --teacher smollm2-135m-instruct --traces "$STORE" \
    --limit 32 --out "$DIR"
fi
out="bench/results/antidistill_$(date +%Y-%m-%d).json"
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
build/bench_antidistill --antidistill "$DIR" "$@" | tee "$out"
echo "wrote $out" >&2

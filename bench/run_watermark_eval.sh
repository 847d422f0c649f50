#!/usr/bin/env bash
# The watermark evaluation tables of issue 3 (docs/watermark-evaluation.md), on the default model.
#
#   bench/run_watermark_eval.sh [--quick] [extra watermark_eval flags...]
#
# Builds bench/watermark_eval in build-wm/ (BUILD=dir to change), runs it at the lowest CPU
# priority, and writes bench/results/watermark_eval_<date>.json and .md (quick mode: under
# build-wm/ only). Generations are cached in build-wm/wm_eval_cache*/, so a rerun with the same
# sizes only re-scores. Uses data/prompts/train.jsonl when it exists, else built-in prompts.
set -euo pipefail
cd "$(dirname "$0")/.."
BUILD=${BUILD:-build-wm}
nice cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DRETORT_BENCH=ON >/dev/null
nice ninja -C "$BUILD" -j1 watermark_eval >/dev/null

args=()
if [[ -f data/prompts/train.jsonl && " $* " != *" --prompts "* ]]; then args+=(--prompts data/prompts/train.jsonl); fi
if [[ " $* " == *" --quick "* ]]; then
  out="$BUILD/watermark_eval_quick"
  args+=(--cache "$BUILD/wm_eval_cache_quick")
else
  out="bench/results/watermark_eval_$(date +%Y-%m-%d)"
  args+=(--cache "$BUILD/wm_eval_cache")
fi
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)" >&2
time nice -n 19 "$BUILD/watermark_eval" "${args[@]}" --out "$out.json" --markdown "$out.md" "$@"
echo "wrote $out.json and $out.md" >&2

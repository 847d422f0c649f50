#!/usr/bin/env bash
# bench/run_train_vs_torch.sh — retort's distillation training step next to plain PyTorch, same
# student, batch, loss and thread count, each in its own process (so each peak RSS is its own).
#
#   RETORT_BUILD_DIR=build bash bench/run_train_vs_torch.sh [threads] [steps]
#
# Needs bench_train built (cmake --build <dir> --target bench_train), python3 with torch and
# transformers for the anchor, and the default model for the trainer mode (its tokenizer only).
# Prints one JSON object: {"retort_step", "retort_trainer", "pytorch", "ratio_step_tok_s",
# "ratio_step_peak_rss"} — ratios are retort / PyTorch.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
threads="${1:-$(nproc)}"
steps="${2:-3}"
build="${RETORT_BUILD_DIR:-$here/build}"
args=(--threads "$threads" --batch 8 --seq 256 --steps "$steps" --k 20 --prompt 32)
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

"$build/bench_train" --mode step "${args[@]}" > "$tmp/step.json"
"$build/bench_train" --mode trainer "${args[@]}" > "$tmp/trainer.json"
python3 "$here/bench/train_step_torch.py" "${args[@]}" > "$tmp/torch.json"
python3 - "$tmp" "$(cat /proc/loadavg)" <<'PY'
import json, sys
d = sys.argv[1]
r = {k: json.load(open(f"{d}/{f}.json")) for k, f in
     [("retort_step", "step"), ("retort_trainer", "trainer"), ("pytorch", "torch")]}
r["ratio_step_tok_s"] = r["retort_step"]["train_tok_s"] / r["pytorch"]["train_tok_s"]
r["ratio_step_peak_rss"] = r["retort_step"]["peak_rss_MiB"] / r["pytorch"]["peak_rss_MiB"]
r["loadavg_after"] = sys.argv[2]
print(json.dumps(r, indent=1))
PY

#!/usr/bin/env bash
# bench/distill_quality.sh — the README quality table: at equal token budget (same data, steps,
# batch, schedule and initial student), SFT-only (ce on the teacher's samples) vs forward KL vs
# reverse KL vs JSD(β=0.5) vs total variation, each on the teacher's stored top-20 signal.
# Reports each student's held-out NLL, perplexity, top-1 agreement and KL(teacher‖student).
#
#   bash bench/distill_quality.sh [OUT] [extra `retort distill` flags]
#
# Runs the main job's pipeline (configs/quickstart.json) with --losses ce,fkl,rkl,jsd,tvd into
# OUT (default $RETORT_HOME/runs/quality). The captured stores of the quickstart run are reused
# when present (linked), so only the training runs cost time (~2.5 min each on 2 cores).
# Writes OUT/quality.json (the summary) and OUT/quality.md (the markdown table).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${RETORT_BUILD_DIR:-$here/build}"
home="${RETORT_HOME:-$HOME/.cache/retort}"
out="${1:-$home/runs/quality}"
shift || true
mkdir -p "$out"
if [[ ! -e "$out/data" && -f "$home/runs/quickstart/data/train/manifest.json" ]]; then
  ln -s "$home/runs/quickstart/data" "$out/data"
fi
cd "$here"
start=$(date +%s)
"$build/retort" distill --config configs/quickstart.json --losses ce,fkl,rkl,jsd,tvd --out "$out" "$@"
end=$(date +%s)
cp "$out/summary.json" "$out/quality.json"
python3 - "$out/summary.json" "$out/quality.md" "$((end - start))" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
rows = ["| model | params | held-out NLL | ppl | top-1 agreement | KL(teacher‖student) |",
        "|---|---:|---:|---:|---:|---:|"]
for r in s["table"]:
    rows.append(f"| {r['model']} | {r['params']/1e6:.1f}M | {r['nll']:.3f} | {r['ppl']:.2f} | {r['top1_agree']:.3f} | {r['kl']:.3f} |")
t = s["options"]["train"]
note = (f"\nEqual budget: {t['steps']} steps x {t['batch']} sequences (max {t['max_seq']} tokens), lr {t['lr']}, "
        f"{s['data']['train']['samples']} teacher samples ({s['data']['train']['scored']} scored tokens); "
        f"held-out: {s['data']['heldout']['samples']} samples, {s['data']['heldout']['scored']} tokens. "
        f"Wall time {sys.argv[3]} s.\n")
open(sys.argv[2], "w").write("\n".join(rows) + "\n" + note)
print("\n".join(rows) + "\n" + note)
PY

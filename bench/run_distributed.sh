#!/usr/bin/env bash
# bench/run_distributed.sh — data-parallel `retort distill` (c10d Gloo over loopback): training
# throughput with 1 and 2 processes at the same global batch, and the time each step spends in
# communication (rank 0's time blocked in collectives, the "comm_s" of metrics.jsonl), with the
# gradient all-reduce overlapped with backward and without (--no-overlap: then comm_s is the whole
# bucketed all-reduce).
#
#   RETORT_BUILD_DIR=build bash bench/run_distributed.sh [steps] [STORE]
#
# Without STORE, captures a small one from the default teacher (32 prompts x 64 tokens, top-20).
# The student is a random 4-layer, hidden-256 model of the teacher's family (made once, then
# loaded by every run, so no run loads the teacher). Every configuration uses all cores: 1 process
# x $(nproc) threads, 2 processes x $(nproc)/2 threads. Prints one JSON object.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${RETORT_BUILD_DIR:-$here/build}"
steps="${1:-6}"
store="${2:-}"
cores="$(nproc)"
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
retort="$build/retort"

if [[ -z "$store" ]]; then
  store="$tmp/store"
  "$retort" capture --prompts "$here/data/prompts/train.jsonl" --limit 32 -n 64 --k 20 --out "$store" -q >/dev/null
fi
spec="layers=4,hidden=256,heads=4,kv_heads=2,ffn=768,init=random"
"$retort" distill --teacher smollm2-135m-instruct --data "$store" --student "$spec" --steps 1 --lr 1e-9 \
  --out "$tmp/init" -q >/dev/null
common=(distill --data "$store" --student "$tmp/init/final" --steps "$steps" --batch 8 --max-seq 192 -q)

"$retort" "${common[@]}" --threads "$cores" --out "$tmp/p1" > /dev/null
"$retort" "${common[@]}" --nproc 2 --out "$tmp/p2" > /dev/null
"$retort" "${common[@]}" --nproc 2 --no-overlap --out "$tmp/p2_no_overlap" > /dev/null

python3 - "$tmp" "$cores" "$steps" "$(cat /proc/loadavg)" <<'PY'
import json, sys
d, cores, steps, load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def summary(name, procs):
    rows = [json.loads(l) for l in open(f"{d}/{name}/metrics.jsonl") if '"loss"' in l]
    # Step 1 includes warm-up (first allocations, Gloo's first connections): left out.
    body = rows[1:]
    secs = body[-1]["elapsed"] - rows[0]["elapsed"]
    toks = body[-1]["tokens"] - rows[0]["tokens"]
    out = {"processes": procs, "threads_per_process": cores // procs, "steps_timed": len(body),
           "tok_s": round(toks / secs, 1), "s_per_step": round(secs / len(body), 4),
           "final_loss": round(rows[-1]["loss"], 5)}
    if "comm_s" in rows[-1]:
        c = [r["comm_s"] for r in body]
        out["comm_s_per_step"] = round(sum(c) / len(c), 4)
        out["comm_fraction"] = round(sum(c) / secs, 3)
    return out
r = {"bench": "distributed", "cores": cores, "global_batch": "8 x <=192 tokens",
     "one_process": summary("p1", 1), "two_processes": summary("p2", 2),
     "two_processes_no_overlap": summary("p2_no_overlap", 2)}
r["speedup_2_vs_1"] = round(r["two_processes"]["tok_s"] / r["one_process"]["tok_s"], 3)
r["loadavg_after"] = load
print(json.dumps(r, indent=1))
PY

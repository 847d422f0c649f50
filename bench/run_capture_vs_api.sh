#!/usr/bin/env bash
# bench/run_capture_vs_api.sh — capture throughput through an OpenAI-compatible API (`retort serve` on loopback,
# `retort capture --teacher-url`) next to the white-box capture (`retort capture --teacher`, the weights in the
# capturing process), in one run on the same prompts, seeds and thread count. Prints one JSON object.
#
#   bash bench/run_capture_vs_api.sh [prompts] [threads] [max_tokens] [limit] [reps]
#
# Defaults: data/prompts/train.jsonl, all cores, 64 tokens, the first 64 prompts, 3 repetitions; each side's
# best repetition is reported (completion tokens / capture seconds, model load and server start excluded), in
# the order local, api, api, local, ... so a drift of the machine's speed does not favour one side. Both stores
# hold the same samples (same seeds); the API side asks with top_logprobs 20 and --concurrency = the server's
# --parallel, the local side decodes --batch of the same size. The server runs with --no-keys --watermark none
# (what the local capture does); it is stopped at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prompts="${1:-$here/data/prompts/train.jsonl}"
threads="${2:-$(nproc)}"
max_tokens="${3:-64}"
limit="${4:-64}"
reps="${5:-3}"
retort="${RETORT:-$here/build/retort}"
model="${MODEL:-smollm2-135m-instruct}"
parallel=32
tmp="$(mktemp -d)"
server_pid=""
cleanup() { [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null; rm -rf "$tmp"; }
trap cleanup EXIT

home="${RETORT_HOME:-$HOME/.cache/retort}"
mkdir -p "$tmp/home"
RETORT_HOME="$tmp/home" OMP_WAIT_POLICY=passive "$retort" serve --port 0 --model "$home/models/$model.gguf" \
  --model-id "$model" --no-keys --watermark none --parallel "$parallel" --ctx-size 1024 --threads "$threads" \
  >"$tmp/serve.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 600); do
  port="$(grep -oE 'on http://127\.0\.0\.1:[0-9]+' "$tmp/serve.log" | grep -oE '[0-9]+$' || true)"
  [ -n "$port" ] && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$tmp/serve.log" >&2; exit 1; }
  sleep 0.1
done
[ -n "$port" ] || { echo "retort serve did not start" >&2; cat "$tmp/serve.log" >&2; exit 1; }

common=(--prompts "$prompts" --limit "$limit" --max-tokens "$max_tokens" --seed 1 --k 20)
: >"$tmp/runs.jsonl"
run_side() {  # $1 = local|api, $2 = repetition
  local out="$tmp/store-$1-$2" log="$tmp/$1-$2.log"
  if [ "$1" = local ]; then
    OMP_WAIT_POLICY=passive "$retort" capture --teacher "$model" --out "$out" --batch "$parallel" \
      --threads "$threads" "${common[@]}" >"$log" 2>&1 || { cat "$log" >&2; exit 1; }
  else
    "$retort" capture --teacher-url "http://127.0.0.1:$port/v1" --teacher-model "$model" \
      --teacher-tokenizer "$model" --out "$out" --concurrency "$parallel" --quiet "${common[@]}" >"$log" 2>&1 ||
      { cat "$log" >&2; exit 1; }
  fi
  python3 - "$1" "$log" "$out" >>"$tmp/runs.jsonl" <<'PY'
import json, re, sys
side, log, out = sys.argv[1:4]
text = open(log).read()
m = re.search(r"\[captured (\d+) samples .*? in ([0-9.]+) s", text)
if not m:
    sys.exit(f"{side}: no summary line in {log}:\n{text}")
# Completion tokens from the store itself (the same count on both sides: same seeds, same samples).
man = json.load(open(out + "/manifest.json"))
scored = sum(s["scored"] for s in man["shards"])
print(json.dumps({"side": side, "samples": int(m.group(1)), "seconds": float(m.group(2)), "tokens": scored,
                  "tok_s": scored / float(m.group(2))}))
PY
}
for r in $(seq 1 "$reps"); do
  if [ $((r % 2)) = 1 ]; then run_side local "$r"; run_side api "$r"; else run_side api "$r"; run_side local "$r"; fi
done

python3 - "$tmp/runs.jsonl" "$threads" "$max_tokens" "$limit" "$parallel" "$model" <<'PY'
import json, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
best = {s: max((r for r in runs if r["side"] == s), key=lambda r: r["tok_s"]) for s in ("local", "api")}
print(json.dumps({
    "bench": "capture_vs_api", "model": sys.argv[6], "threads": int(sys.argv[2]), "max_tokens": int(sys.argv[3]),
    "prompts": int(sys.argv[4]), "concurrency_and_batch": int(sys.argv[5]),
    "local_tok_s": round(best["local"]["tok_s"], 1), "api_tok_s": round(best["api"]["tok_s"], 1),
    "api_over_local": round(best["api"]["tok_s"] / best["local"]["tok_s"], 3),
    "runs": runs}, indent=2))
PY

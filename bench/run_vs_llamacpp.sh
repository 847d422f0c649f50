#!/usr/bin/env bash
# bench/run_vs_llamacpp.sh — retort's runtime next to llama.cpp on the same GGUF and thread count, in one run.
#
#   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin bash bench/run_vs_llamacpp.sh [model.gguf] [threads]
#
# llama.cpp is the anchor: build it yourself from its own sources (this repo does not ship or build it);
# LLAMA_CPP_BIN must hold llama-bench and llama-batched-bench. Optional LLAMA_CPP_F16_MODEL: an F16 GGUF of
# the same model (python3 bench/gguf_to_f16.py MODEL out.gguf: the same weights dequantized) for llama.cpp's F16 row.
# Prints one JSON object: retort's numbers, llama.cpp's, and the ratios retort/llama.cpp.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
model="${1:-${RETORT_HOME:-$HOME/.cache/retort}/models/smollm2-135m-instruct.gguf}"
threads="${2:-$(nproc)}"
bin="${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to a folder with llama-bench and llama-batched-bench}"
build="${RETORT_BUILD_DIR:-$here/build}"  # holds bench_runtime (cmake --build <dir> --target bench_runtime)
PP=128; TG=64
tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT

llama_rows() {  # $1 = gguf, $2 = label
  "$bin/llama-bench" -m "$1" -t "$threads" -p "$PP" -n "$TG" -r 3 -o json > "$tmp/lb.json" 2>/dev/null
  : > "$tmp/bb.jsonl"
  for rep in 1 2 3; do  # best of 3, as retort's bench_runtime --reps 3
    "$bin/llama-batched-bench" -m "$1" -t "$threads" -c 16384 -b 2048 -ub 512 -npp "$PP" -ntg "$TG" -npl 1,32 \
      --output-format jsonl >> "$tmp/bb.jsonl" 2>/dev/null
  done
  python3 - "$tmp/lb.json" "$tmp/bb.jsonl" "$2" <<'PY'
import json, sys
lb = json.load(open(sys.argv[1])); label = sys.argv[3]
out = {}
for r in lb:  # best of llama-bench's 3 repetitions (retort reports its best pass too)
    key = "prefill_tok_s" if r["n_prompt"] > 0 else "decode_tok_s_b1"
    out[f"{label}_{key}"] = max(r.get("samples_ts") or [r["avg_ts"]])
for line in open(sys.argv[2]):
    line = line.strip()
    if not line.startswith("{"): continue
    r = json.loads(line)
    if "speed_tg" in r:
        k = f"{label}_batched_decode_tok_s_b{r['pl']}"
        out[k] = max(out.get(k, 0), r["speed_tg"])
print(json.dumps(out))
PY
}

{
  "$build/bench_runtime" --model "$model" --threads "$threads" --dtype f32 --prompt-len $PP --gen $TG --batches 1,32 > "$tmp/r_f32.json"
  "$build/bench_runtime" --model "$model" --threads "$threads" --dtype bf16 --prompt-len $PP --gen $TG --batches 1,32 > "$tmp/r_bf16.json"
  t0=$(date +%s.%N); "$bin/llama-bench" -m "$model" -t "$threads" -p 0 -n 1 -r 1 -o json > /dev/null 2>&1; t1=$(date +%s.%N)
  echo "$t0 $t1" > "$tmp/load.txt"  # llama-bench startup + load + 1 token: an upper bound on its load time
  llama_rows "$model" "llamacpp_q4_1" > "$tmp/l_q.json"
  if [ -n "${LLAMA_CPP_F16_MODEL:-}" ]; then llama_rows "$LLAMA_CPP_F16_MODEL" "llamacpp_f16" > "$tmp/l_f.json"; else echo '{}' > "$tmp/l_f.json"; fi
  /usr/bin/time -v "$bin/llama-bench" -m "$model" -t "$threads" -p $PP -n $TG -r 1 -o json > /dev/null 2> "$tmp/time.txt" || true
}
python3 - "$tmp" "$threads" <<'PY'
import json, sys, re, os
d = sys.argv[1]
r32 = json.load(open(f"{d}/r_f32.json")); r16 = json.load(open(f"{d}/r_bf16.json"))
lq = json.load(open(f"{d}/l_q.json")); lf = json.load(open(f"{d}/l_f.json"))
out = {"threads": int(sys.argv[2]), "retort_f32": r32, "retort_bf16": r16, "llamacpp": {**lq, **lf}}
m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", open(f"{d}/time.txt").read())
if m: out["llamacpp"]["peak_rss_MiB"] = int(m.group(1)) / 1024
t0, t1 = map(float, open(f"{d}/load.txt").read().split())
out["llamacpp"]["load_plus_1_token_s"] = round(t1 - t0, 3)
out["load_avg_1min"] = float(open("/proc/loadavg").read().split()[0])  # > 0.5 means another process shared the cores
def best(prefix):
    v = [x for k, x in out["llamacpp"].items() if k.endswith(prefix)]
    return max(v) if v else None
ratios = {}
for name, key, lkey in [("prefill", "prefill_tok_s", "prefill_tok_s"),
                        ("decode_b1_vs_q4_1", "decode_model_tok_s_b1", None),
                        ("decode_b32_vs_best", "decode_model_tok_s_b32", "batched_decode_tok_s_b32")]:
    ours = max(r32.get(key, 0), r16.get(key, 0))
    if lkey is None:
        ref = lq.get("llamacpp_q4_1_decode_tok_s_b1")
    else:
        ref = best(lkey)
    if ref: ratios[name] = round(ours / ref, 3)
out["ratios_retort_over_llamacpp"] = ratios
print(json.dumps(out, indent=1))
PY

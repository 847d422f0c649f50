#!/usr/bin/env bash
# bench/run_memory_vs_llamacpp.sh — peak resident memory of a 64-token generation, retort next to llama.cpp,
# same GGUF, same prompt, in one run (issue 11's edge-memory target: retort <= 1.5x llama.cpp).
#
#   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin bash bench/run_memory_vs_llamacpp.sh [model ...]
#
# Models default to the two the setup installs (smollm2-135m-instruct, gemma3-270m). llama.cpp is the
# anchor: build it yourself from its own sources (this repo neither ships nor builds it); LLAMA_CPP_BIN
# must hold llama-simple, which sizes its context to prompt + generated tokens, as `retort generate` sizes
# its KV cache. Peak RSS is GNU time's "Maximum resident set size", the best (lowest) of 3 runs each.
# Prints one JSON object.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to a folder with llama-simple}"
build="${RETORT_BUILD_DIR:-$here/build}"
cache="${RETORT_HOME:-$HOME/.cache/retort}/models"
models=("$@")
[ ${#models[@]} -eq 0 ] && models=(smollm2-135m-instruct gemma3-270m)
prompt="The history of the printing press begins"
N=64
[ -x /usr/bin/time ] || { echo "needs GNU time (/usr/bin/time; Debian package 'time')" >&2; exit 1; }

peak_kib() {  # best of 3: prints the lowest max RSS in KiB of the command
  local best=""
  for _ in 1 2 3; do
    local kib
    kib=$( /usr/bin/time -f '%M' -o /dev/stdout "$@" 2>/dev/null | tail -n1 )
    [[ "$kib" =~ ^[0-9]+$ ]] || { echo "command failed: $*" >&2; exit 1; }
    if [ -z "$best" ] || [ "$kib" -lt "$best" ]; then best=$kib; fi
  done
  echo "$best"
}

out="{"
first=1
for m in "${models[@]}"; do
  gguf="$m"; [ -f "$gguf" ] || gguf="$cache/$m.gguf"
  [ -f "$gguf" ] || { echo "no model $m (looked for $gguf); run scripts/setup.sh" >&2; exit 1; }
  r=$(peak_kib "$build/retort" generate --model "$gguf" --prompt "$prompt" --max-tokens $N --temperature 0)
  l=$(peak_kib "$bin/llama-simple" -m "$gguf" -n $N "$prompt")
  [ $first -eq 1 ] || out+=","
  first=0
  out+=$(python3 -c "import json,sys; r,l=int(sys.argv[2]),int(sys.argv[3]); print(json.dumps({sys.argv[1]: {'file_MiB': round($(stat -c %s "$gguf")/2**20,1), 'retort_peak_rss_MiB': round(r/1024,1), 'llamacpp_peak_rss_MiB': round(l/1024,1), 'ratio_retort_over_llamacpp': round(r/l,3)}})[1:-1])" "$m" "$r" "$l")
done
out+="}"
python3 -c "import json,sys; print(json.dumps(json.loads(sys.argv[1]), indent=1))" "$out"

#!/usr/bin/env bash
# External check of `retort export --format gguf`: llama.cpp loads the exported files and its
# greedy continuation equals `retort generate --temperature 0`, token for token.
# Not run in CI (needs llama.cpp binaries); numbers go in the report.
#
#   LLAMA_CPP_BIN=/tmp/llama.cpp/build/bin tests/data/export/verify_llamacpp.sh [MODEL] [RETORT]
#
# For each type (f32, f16, q8_0; TYPES="..." to choose): export MODEL, run llama.cpp greedily and retort
# generate (temperature 0) on a few raw prompts for N tokens, and compare the generated text (llama.cpp
# prints text, so the comparison is on the decoded continuation, trailing newlines aside). llama.cpp is
# llama-simple when built, else llama-cli -no-cnv --temp 0 --ignore-eos (as retort's --ignore-eos).
# Both add BOS when the tokenizer says so (Gemma).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
BIN="${LLAMA_CPP_BIN:-/tmp/llama.cpp/build/bin}"
MODEL="${1:-smollm2-135m-instruct}"
RETORT="${2:-$ROOT/build/retort}"
TYPES="${TYPES:-f32 f16 q8_0}"
N="${N_TOKENS:-32}"
THREADS="${THREADS:-2}"
TMP="$(mktemp -d /tmp/retort_verify_gguf.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

PROMPTS=("The capital of France is" "def fibonacci(n):" "In 1969, the first humans landed on the"
         "Les enfants jouent dans le jardin pendant que")
pass=0
fail=0
run_llama() {  # MODEL PROMPT -> prompt + continuation on stdout
  if [[ -x "$BIN/llama-simple" ]]; then
    "$BIN/llama-simple" -m "$1" -n "$N" "$2" 2>/dev/null
  else
    LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN/llama-cli" -m "$1" -p "$2" -n "$N" --temp 0 \
      -no-cnv --ignore-eos --simple-io --no-warmup -t "$THREADS" 2>/dev/null </dev/null
  fi
}
for type in $TYPES; do
  out="$TMP/m.$type.gguf"
  "$RETORT" export --model "$MODEL" --out "$out" --format gguf --type "$type" -t "$THREADS" 2>&1 | tail -1
  for p in "${PROMPTS[@]}"; do
    # llama.cpp: greedy, prints prompt + continuation on stdout (logs on stderr).
    ll="$(run_llama "$out" "$p")"
    ll_cont="${ll#"$p"}"
    rt="$("$RETORT" generate --model "$out" -p "$p" -n "$N" --temperature 0 --ignore-eos --json -t "$THREADS" 2>/dev/null |
          python3 -c 'import json,sys; print(json.loads(sys.stdin.readline())["text"], end="")')"
    if [[ "$ll_cont" == "$rt" ]]; then
      pass=$((pass + 1))
      echo "[$type] same    : $(printf %q "$p") -> $(printf %q "${rt:0:60}")"
    else
      fail=$((fail + 1))
      echo "[$type] DIFFERENT: $(printf %q "$p")"
      echo "   llama.cpp: $(printf %q "$ll_cont")"
      echo "   retort   : $(printf %q "$rt")"
    fi
  done
done
echo "llama.cpp vs retort greedy ($N tokens): $pass same, $fail different"
[[ $fail -eq 0 ]]

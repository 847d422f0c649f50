#!/usr/bin/env bash
# scripts/quickstart.sh — set up and run the main job: a chat turn with the default teacher.
#   bash scripts/quickstart.sh ["your question"]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
build="${RETORT_BUILD_DIR:-$here/build}"
prompt="${1:-What is knowledge distillation, in two sentences?}"
"$build/retort" generate --chat --prompt "$prompt" --max-tokens 128 --temperature 0

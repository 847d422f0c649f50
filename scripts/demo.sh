#!/usr/bin/env bash
# scripts/demo.sh — the README's first command: set up, then `retort demo`, the whole story on loopback
# (a provider serves the default teacher with watermarks and the crawl monitor; a distiller harvests it through
# the API and is flagged; its student is distilled, audited and the case file written).
#   bash scripts/demo.sh [--fast] [--out DIR] [--fresh]
# Output: $RETORT_HOME/runs/demo (or runs/demo-fast): logs/, the harvest, the students, audit/ results,
# case/case.html + case.json and demo.json. Re-running resumes; --fresh starts over.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$here/scripts/setup.sh"
build="${RETORT_BUILD_DIR:-$here/build}"
time "$build/retort" demo "$@"

#!/usr/bin/env bash
# bench/run_monitor_overhead.sh — serving throughput with the crawl monitor on against off, one machine, one
# run: two `retort serve` processes on the same model (one --no-monitor), never loaded at the same time,
# driven in turn (off, on, off, on, ...) by bench/serve_load with the same requests (--mix mixed, 8 keyed
# accounts). Prints JSON: steady completion tokens/s of each run, the ratio of the medians and the median of
# each round's on/off ratio (rounds alternate off-on, on-off; goal: >= 0.95).
#   bash bench/run_monitor_overhead.sh [ROUNDS=3] [DURATION_S=40]
# MONITOR_CALIBRATION=FILE (from `retort monitor calibrate`, e.g. the work dir of `bench/monitor_eval.py --keep`)
# runs the monitor calibrated — every test scored, the pool kernel for the MMD — as a provider would; without
# it the monitor records features but scores nothing. Its only action is the default, flag (no throttling).
# Needs build/retort and build/serve_load (cmake --build build --target retort_cli serve_load).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${RETORT_BUILD_DIR:-$here/build}"
rounds="${1:-3}" duration="${2:-40}"
model="${RETORT_MODEL:-${RETORT_HOME:-$HOME/.cache/retort}/models/smollm2-135m-instruct.gguf}"
for t in retort serve_load; do
  [ -x "$build/$t" ] || { echo "no $build/$t: cmake --build build --target retort_cli serve_load" >&2; exit 1; }
done
[ -f "$model" ] || { echo "no model at $model (run scripts/setup.sh)" >&2; exit 1; }
tmp="$(mktemp -d)"
declare -A pid port
cleanup() { for s in "${!pid[@]}"; do kill -KILL "${pid[$s]}" 2> /dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

# One keys table for both servers (the same accounts and secrets): made once, copied.
mkdir -p "$tmp/on" "$tmp/off"
keys=""
for i in $(seq 8); do
  k=$(RETORT_HOME="$tmp/on" "$build/retort" keys create --account "load-$i" --db "$tmp/on/serve.db" 2> /dev/null)
  keys="$keys${keys:+,}$k"
done
cp "$tmp/on/serve.db" "$tmp/off/serve.db"

start() {  # NAME FLAGS...
  local name="$1"; shift
  RETORT_HOME="$tmp/$name" "$build/retort" serve -m "$model" --db "$tmp/$name/serve.db" --port 0 --parallel 8 \
    -c 1024 --watermark none "$@" 2> "$tmp/$name.log" &
  pid[$name]=$!
  for _ in $(seq 600); do
    port[$name]=$(grep -o 'on http://127.0.0.1:[0-9]*' "$tmp/$name.log" | head -n1 | sed 's/.*://') || true
    [ -n "${port[$name]}" ] && return 0
    kill -0 "${pid[$name]}" 2> /dev/null || { cat "$tmp/$name.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "retort serve ($name) did not start" >&2; exit 1
}
calibration="${MONITOR_CALIBRATION:-}"
if [ -n "$calibration" ]; then
  [ -f "$calibration" ] || { echo "no calibration file $calibration" >&2; exit 1; }
  start on --monitor-calibration "$calibration"
else
  start on
fi
start off --no-monitor

for r in $(seq "$rounds"); do
  # off-on, then on-off: a drift in the machine's speed over the run falls on both alike.
  order="off on"; [ $((r % 2)) -eq 0 ] && order="on off"
  for name in $order; do
    "$build/serve_load" --port "${port[$name]}" --keys "$keys" --clients 16 --mix mixed --seed "$r" \
      --duration "$duration" --warmup 10 --timeout 120 > "$tmp/$name-$r.json"
  done
done
events=$(curl -s "http://127.0.0.1:${port[on]}/metrics" | awk '/^retort_monitor_events_total/{print $2}')
flagged=$(curl -s "http://127.0.0.1:${port[on]}/metrics" | awk '/^retort_monitor_flagged/{s+=$2} END{print s+0}')
python3 - "$tmp" "$rounds" "$duration" "${events:-0}" "$calibration" "${flagged:-0}" <<'PY'
import json, statistics, sys
tmp, rounds, duration, events = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
calibration, flagged = sys.argv[5], float(sys.argv[6])
runs = {n: [json.load(open(f"{tmp}/{n}-{r}.json")) for r in range(1, rounds + 1)] for n in ("off", "on")}
tps = {n: [r["steady"]["completion_tok_s"] for r in rs] for n, rs in runs.items()}
print(json.dumps({"bench": "monitor_overhead", "rounds": rounds, "duration_s": duration,
                  "tokens_per_s": tps, "monitor_events": events,
                  "monitor_calibration": calibration or None, "monitor_flagged_metric": flagged,
                  "on_over_off_median": round(statistics.median(tps["on"]) / statistics.median(tps["off"]), 3),
                  # Each round's on run against its own off run (adjacent in time), then the median: what a
                  # noisy machine's slow minutes do to one round does not move the others.
                  "on_over_off_paired": [round(a / b, 3) for a, b in zip(tps["on"], tps["off"])],
                  "on_over_off_paired_median": round(statistics.median(a / b for a, b in zip(tps["on"], tps["off"])), 3),
                  "goal": ">= 0.95"}, indent=1))
PY

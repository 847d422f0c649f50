#!/usr/bin/env bash
# bench/run_serve_vs_llamacpp.sh — `retort serve` under load, and next to llama.cpp's llama-server, in one run
# (issue 12, deliverable 7). Loopback only; every load is bounded in requests and time; prints one JSON object.
#
#   LLAMA_CPP_BIN=/path/to/llama.cpp/build/bin bash bench/run_serve_vs_llamacpp.sh [model.gguf] [threads]
#
# llama.cpp is the anchor: build it yourself from its own sources (this repo neither ships nor builds it);
# LLAMA_CPP_BIN must hold llama-server. Needs build/retort and build/serve_load (cmake --build build
# --target retort_cli serve_load), sqlite3 and python3. Three servers on the same GGUF and thread count, all
# started first (an idle one uses no CPU; each phase reports the CPU split to show it) and loaded one at a time:
#
#   on     retort with every countermeasure: API keys required (4 accounts, each with rpm/tpm/day quotas
#          high enough not to refuse, logprobs capped to top 3 and rounded to 3 digits), the KGW watermark
#          (a key per account), the ledger.
#   off    retort --no-keys --watermark none. The ledger has no off switch: it writes here too.
#   llama  llama-server -np $NP with a context of $NP x $CTX ($CTX per sequence, as retort's -c).
#
# Phases (serve_load.cpp makes request i from its index, so servers given the same seed get the same
# requests; "ignore_eos" makes every server generate exactly max_tokens):
#   load    on: $CLIENTS (64) clients, $REQUESTS (10000) requests of the "mixed" mix (completions and chat,
#           short and long prompts, max_tokens 1-16, streamed and not, n = 1 or 2, some logprobs, some clients
#           hanging up mid-stream): no 5xx, exact token counts, latency, tokens/s.
#   mixed   on, off, off, on ($MIXED_REQUESTS (750) requests each, the same ones per pair): countermeasures'
#           cost on the mix; fixed work, so tokens/s compare as wall times do.
#   stream  on, off, llama, llama, off, on: $STREAM_CLIENTS (32) streaming clients for $DURATION s each,
#           max_tokens around $MAX_TOKENS; decode tokens/s and time to first token in the steady window
#           after $WARMUP s. The mirrored order cancels a slow drift of the machine's speed.
# Then SIGTERM: both retorts must exit 0, and each ledger must hold one row per request sent to it.
#
# Summary: retort on / llama-server decode tokens/s at 32 streaming clients (target >= 1.5), on / off
# (target >= 0.95), and the load's verdict. other_cores > ~0.1 in a phase means something else ran on the
# machine then: run again when it is quiet.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${RETORT_BUILD_DIR:-$here/build}"
model="${1:-${RETORT_HOME:-$HOME/.cache/retort}/models/smollm2-135m-instruct.gguf}"
threads="${2:-$(nproc)}"
bin="${LLAMA_CPP_BIN:?set LLAMA_CPP_BIN to a folder with llama-server (llama.cpp built from its own sources)}"
REQUESTS="${REQUESTS:-10000}"; CLIENTS="${CLIENTS:-64}"; MIXED_REQUESTS="${MIXED_REQUESTS:-750}"
STREAM_CLIENTS="${STREAM_CLIENTS:-32}"; NP="${NP:-32}"; CTX="${CTX:-512}"
MAX_TOKENS="${MAX_TOKENS:-128}"; WARMUP="${WARMUP:-8}"; DURATION="${DURATION:-30}"
RETORT_SERVE_FLAGS="${RETORT_SERVE_FLAGS:-}"  # more `retort serve` flags, for both retorts
[ -f "$model" ] || { echo "no model $model (run scripts/setup.sh, or pass a .gguf)" >&2; exit 1; }
[ -x "$bin/llama-server" ] || { echo "no $bin/llama-server" >&2; exit 1; }
for t in retort serve_load; do
  [ -x "$build/$t" ] || { echo "no $build/$t: cmake --build build --target retort_cli serve_load" >&2; exit 1; }
done
command -v sqlite3 > /dev/null || { echo "needs the sqlite3 command" >&2; exit 1; }

tmp="$(mktemp -d)"
declare -A pid port
cleanup() {
  for s in "${!pid[@]}"; do kill -KILL "${pid[$s]}" 2> /dev/null || true; done
  rm -rf "$tmp"
}
trap cleanup EXIT
clk_tck=$(getconf CLK_TCK)

# CPU jiffies: the machine's busy time, and one process's (user + system).
machine_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
proc_busy() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }

# run_load SERVER LABEL ARGS...: serve_load against one server; its JSON in $tmp/LABEL.json and the CPU split
# of the phase (that server, the load generator, everything else) in $tmp/LABEL.cpu.json.
run_load() {
  local server="$1" label="$2"; shift 2
  local m0 s0 t0 m1 s1 t1
  m0=$(machine_busy); s0=$(proc_busy "${pid[$server]}"); t0=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$tmp/$label.time" \
    timeout 1200 "$build/serve_load" --port "${port[$server]}" --timeout 120 "$@" > "$tmp/$label.json"
  m1=$(machine_busy); s1=$(proc_busy "${pid[$server]}"); t1=$(date +%s.%N)
  python3 - "$tmp/$label.time" "$m0" "$m1" "$s0" "$s1" "$t0" "$t1" "$clk_tck" > "$tmp/$label.cpu.json" <<'PY'
import json, sys
u, s = map(float, open(sys.argv[1]).read().split()[-2:])
m0, m1, s0, s1, t0, t1, hz = map(float, sys.argv[2:])
wall = t1 - t0
machine, server, load = (m1 - m0) / hz, (s1 - s0) / hz, u + s
print(json.dumps({"wall_s": round(wall, 1), "server_cores": round(server / wall, 2),
                  "loadgen_cores": round(load / wall, 2),
                  "other_cores": round(max(0.0, machine - server - load) / wall, 2)}))
PY
}

start_retort() {  # NAME FLAGS...: RETORT_HOME=$tmp/NAME; the port from "on http://127.0.0.1:PORT"
  local name="$1"; shift
  # shellcheck disable=SC2086
  RETORT_HOME="$tmp/$name" "$build/retort" serve -m "$model" --port 0 -t "$threads" --parallel "$NP" -c "$CTX" \
    "$@" $RETORT_SERVE_FLAGS 2> "$tmp/$name.log" &
  pid[$name]=$!
  for _ in $(seq 600); do
    port[$name]=$(grep -o 'on http://127.0.0.1:[0-9]*' "$tmp/$name.log" | head -n1 | sed 's/.*://') || true
    [ -n "${port[$name]}" ] && return 0
    kill -0 "${pid[$name]}" 2> /dev/null || { cat "$tmp/$name.log" >&2; echo "retort serve ($name) did not start" >&2; exit 1; }
    sleep 0.1
  done
  echo "retort serve ($name) did not listen within 60 s" >&2; exit 1
}

stop_server() {  # NAME: SIGTERM, then its exit status into $tmp/NAME.exit
  kill -TERM "${pid[$1]}"
  local rc=0
  wait "${pid[$1]}" || rc=$?
  echo "$rc" > "$tmp/$1.exit"
  unset "pid[$1]"
}

echo "{\"start\": $(cut -d' ' -f1 /proc/loadavg)}" > "$tmp/loadavg_start.json"

# ---- the servers ----
mkdir -p "$tmp/on" "$tmp/off"
keys=""
for a in 1 2 3 4; do
  k=$(RETORT_HOME="$tmp/on" "$build/retort" keys create --account "bench-$a" --rpm 1000000 --tpm 1000000000 \
        --tokens-per-day 100000000000 --max-top-logprobs 3 --round-logprobs 3 --json |
      python3 -c 'import json, sys; print(json.load(sys.stdin)["api_key"])')
  keys="$keys${keys:+,}$k"
done
start_retort on --watermark kgw
start_retort off --no-keys --watermark none
port[llama]=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$bin/llama-server" -m "$model" --host 127.0.0.1 --port "${port[llama]}" -t "$threads" -tb "$threads" -np "$NP" \
  -c $((NP * CTX)) > "$tmp/llama.log" 2>&1 &
pid[llama]=$!
for _ in $(seq 600); do
  curl -sf "http://127.0.0.1:${port[llama]}/health" > /dev/null 2>&1 && break
  kill -0 "${pid[llama]}" 2> /dev/null || { tail -n 20 "$tmp/llama.log" >&2; echo "llama-server did not start" >&2; exit 1; }
  sleep 0.1
done
on_keys=(--keys "$keys")

# ---- the phases ----
run_load on load "${on_keys[@]}" --clients "$CLIENTS" --requests "$REQUESTS" --mix mixed --warmup 5 --seed 1
mixed=(--clients "$CLIENTS" --requests "$MIXED_REQUESTS" --mix mixed --warmup 5)
run_load on on_mixed_1 "${on_keys[@]}" "${mixed[@]}" --seed 2
run_load off off_mixed_1 "${mixed[@]}" --seed 2
run_load off off_mixed_2 "${mixed[@]}" --seed 4
run_load on on_mixed_2 "${on_keys[@]}" "${mixed[@]}" --seed 4
stream=(--clients "$STREAM_CLIENTS" --requests 1000000 --mix stream --max-tokens "$MAX_TOKENS" --duration "$DURATION"
        --warmup "$WARMUP" --ramp-ms 50)
run_load on on_stream_1 "${on_keys[@]}" "${stream[@]}" --seed 3
run_load off off_stream_1 "${stream[@]}" --seed 3
run_load llama llama_stream_1 "${stream[@]}" --seed 3
run_load llama llama_stream_2 "${stream[@]}" --seed 5
run_load off off_stream_2 "${stream[@]}" --seed 5
run_load on on_stream_2 "${on_keys[@]}" "${stream[@]}" --seed 5
for s in on off llama; do stop_server "$s"; done
echo "{\"end\": $(cut -d' ' -f1 /proc/loadavg)}" > "$tmp/loadavg_end.json"

sqlite3 -json "$tmp/on/serve.db" "select count(*) as rows, sum(http_status >= 500) as rows_5xx,
  sum(http_status = 200) as rows_200, sum(http_status = 499) as rows_499_client_gone,
  sum(completion_tokens) as completion_tokens, sum(watermark_scheme = 'kgw') as watermarked,
  count(distinct account) as accounts, sum(logprobs_requested > 3 and logprobs_granted = 3) as logprobs_capped
  from ledger" > "$tmp/on.ledger.json"
sqlite3 -json "$tmp/off/serve.db" "select count(*) as rows, sum(http_status >= 500) as rows_5xx,
  sum(http_status = 200) as rows_200, sum(http_status = 499) as rows_499_client_gone,
  sum(completion_tokens) as completion_tokens from ledger" > "$tmp/off.ledger.json"

RETORT_SERVE_FLAGS="$RETORT_SERVE_FLAGS" \
  python3 - "$tmp" "$model" "$threads" "$NP" "$CTX" "$("$bin/llama-server" --version 2>&1 | grep -m1 version || true)" <<'PY'
import json, os, sys
d, model, threads, np_, ctx, llama_version = sys.argv[1:7]
def load(name):
    with open(os.path.join(d, name)) as f:
        return json.load(f)
def phase(label):
    j = load(label + ".json")
    keep = ["clients", "requests_sent", "responses_by_status", "responses_5xx", "transport_errors",
            "stale_connection_retries", "client_hang_ups", "wrong_token_count", "incomplete_streams", "other_errors",
            "error_samples", "streamed", "prompt_tokens", "completion_tokens", "latency_ms", "ttft_ms", "overall",
            "steady"]
    out = {k: j[k] for k in keep if k in j}
    out["cpu"] = load(label + ".cpu.json")
    return out
def exit_status(name):
    return int(open(os.path.join(d, name + ".exit")).read())
def clean(p):  # no 5xx, nothing lost or cut short, exact token counts
    return (p["responses_5xx"] == 0 and p["transport_errors"] == 0 and p["wrong_token_count"] == 0
            and p["incomplete_streams"] == 0 and p["other_errors"] == 0
            and p["responses_by_status"].get("200", 0) == p["requests_sent"] - p.get("client_hang_ups", 0))
def ratio(a, b):
    return round(a / b, 3) if b else None
def mean(xs):
    return round(sum(xs) / len(xs), 2)

phases = {l: phase(l) for l in ["load", "on_mixed_1", "off_mixed_1", "off_mixed_2", "on_mixed_2", "on_stream_1",
                                "off_stream_1", "llama_stream_1", "llama_stream_2", "off_stream_2", "on_stream_2"]}
sent = lambda prefix: sum(p["requests_sent"] for l, p in phases.items() if l.startswith(prefix))
on_ledger, off_ledger = load("on.ledger.json")[0], load("off.ledger.json")[0]
on_sent, off_sent = sent("load") + sent("on_"), sent("off_")

def stream(server):  # the two runs of a server: mean steady tokens/s, mean of each run's TTFT percentiles
    runs = [phases[f"{server}_stream_{i}"] for i in (1, 2)]
    return {"decode_tok_s": mean([r["steady"]["completion_tok_s"] for r in runs]),
            "decode_tok_s_runs": [r["steady"]["completion_tok_s"] for r in runs],
            "ttft_ms_p50": mean([r["ttft_ms"]["p50"] for r in runs]),
            "ttft_ms_p99": mean([r["ttft_ms"]["p99"] for r in runs])}
def mixed_tok_s(server):  # fixed work: all tokens / all wall time
    runs = [phases[f"{server}_mixed_{i}"] for i in (1, 2)]
    return sum(r["completion_tokens"] for r in runs) / sum(r["overall"]["wall_s"] for r in runs)

load_run = phases["load"]
s_on, s_off, s_llama = stream("on"), stream("off"), stream("llama")
summary = {
    "load": {
        "clients": load_run["clients"], "requests_sent": load_run["requests_sent"],
        "responses_by_status": load_run["responses_by_status"], "client_hang_ups": load_run["client_hang_ups"],
        "responses_5xx": load_run["responses_5xx"], "clean": clean(load_run),
        "latency_ms_p50": load_run["latency_ms"]["p50"], "latency_ms_p99": load_run["latency_ms"]["p99"],
        "ttft_ms_p50": load_run["ttft_ms"]["p50"], "ttft_ms_p99": load_run["ttft_ms"]["p99"],
        "completion_tok_s": load_run["overall"]["completion_tok_s"],
        "requests_per_s": load_run["overall"]["requests_per_s"], "wall_s": load_run["overall"]["wall_s"],
    },
    "retort_exit_status_on_sigterm": {"on": exit_status("on"), "off": exit_status("off")},
    "ledger_rows": {"on": on_ledger["rows"], "on_requests_sent": on_sent,
                    "off": off_ledger["rows"], "off_requests_sent": off_sent},
    "stream32": {
        "retort_on": s_on, "retort_off": s_off, "llamacpp": s_llama,
        "ratio_retort_on_over_llamacpp": ratio(s_on["decode_tok_s"], s_llama["decode_tok_s"]),
        "ratio_retort_off_over_llamacpp": ratio(s_off["decode_tok_s"], s_llama["decode_tok_s"]),
    },
    "countermeasures_on_over_off": {
        "stream32_tok_s": ratio(s_on["decode_tok_s"], s_off["decode_tok_s"]),
        "mixed64_tok_s": ratio(mixed_tok_s("on"), mixed_tok_s("off")),
    },
    "all_phases_clean": all(clean(p) for p in phases.values()),
    "max_other_cores": max(p["cpu"]["other_cores"] for p in phases.values()),
}
# Speeds measured while other processes took CPU say nothing (OpenMP and ggml threads that wait for a
# descheduled peer slow down many-fold): their targets are null then.
summary["machine_quiet"] = summary["max_other_cores"] <= 0.15
quiet = summary["machine_quiet"]
summary["targets"] = {
    "load_clean_ledger_exact_exit_0": summary["load"]["clean"] and on_ledger["rows"] == on_sent
                                      and off_ledger["rows"] == off_sent
                                      and set(summary["retort_exit_status_on_sigterm"].values()) == {0},
    "stream32_retort_on_ge_1.5x_llamacpp":
        (summary["stream32"]["ratio_retort_on_over_llamacpp"] or 0) >= 1.5 if quiet else None,
    "countermeasures_on_ge_0.95x_off":
        min(v or 0 for v in summary["countermeasures_on_over_off"].values()) >= 0.95 if quiet else None,
}
print(json.dumps({
    "bench": "serve_vs_llamacpp",
    "model": model, "threads": int(threads), "np": int(np_), "ctx_per_sequence": int(ctx),
    "retort_serve_flags": os.environ.get("RETORT_SERVE_FLAGS", ""),
    "llamacpp_version": llama_version.strip(),
    "load_avg_1min": {**load("loadavg_start.json"), **load("loadavg_end.json")},
    "summary": summary,
    "phases": phases,
    "ledger": {"on": on_ledger, "off": off_ledger},
    "llamacpp_exit_status_on_sigterm": exit_status("llama"),
    "notes": ["off = --no-keys --watermark none; the ledger has no off switch and writes in both",
              "llama-server closes the connection after each stream; serve_load sends the next request again "
              "on a new one (stale_connection_retries)"],
}, indent=1))
PY

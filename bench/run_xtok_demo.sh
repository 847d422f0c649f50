#!/usr/bin/env bash
# bench/run_xtok_demo.sh — black-box cross-tokenizer distillation between two real model families, both ways:
#
#   A: teacher SmolLM2-135M-Instruct behind `retort serve`  ->  student Gemma 3 270M   (init: gemma3-270m.gguf)
#   B: teacher Gemma 3 270M behind `retort serve`           ->  student SmolLM2-135M   (init: smollm2-135m-instruct.gguf)
#
# The student only sees what an OpenAI-compatible API returns: completion text plus top-20 logprobs as token
# *pieces* (no --teacher-tokenizer, so `retort capture --teacher-url` writes a text store). For each direction the
# student is trained three ways at equal tokens (same data, steps, batch, lr, schedule, seed, max-seq):
#   ce    SFT on the teacher's text only (the logprobs unused)
#   uld   ULD: sorted-probability L1 between the teacher's top-k and the student's distribution on aligned spans
#   gold  GOLD-style: JSD on tokens both vocabularies share (byte-matched), sorted ULD on the rest
# (uld and gold add CE on the teacher's text with weight --xtok-ce-weight, 1 by default: sorted ULD alone is
# permutation-invariant and cannot teach which token is which). Every student, and the untrained one as the
# baseline, is scored on a held-out text store by NLL per byte of the teacher's text on the student's own tokens
# (comparable across tokenizers), bits per byte, and top-1 agreement on spans that are one token on both sides.
#
#   bash bench/run_xtok_demo.sh [out.json]          (default bench/results/xtok_demo.json)
#
# Settings (environment): N_TRAIN (training prompts, the first N of data/prompts/train.jsonl), N_EVAL (held-out
# prompts, the first N of data/prompts/heldout.jsonl), MAX_TOKENS (per completion), STEPS, BATCH, LR, WARMUP
# (default 10% of a direction's steps), MAX_SEQ, THREADS; STEPS sets both directions, STEPS_A / STEPS_B one (a
# Gemma-student step costs ~3x a SmolLM2-student step on CPU). Defaults: 160 train / 40 held-out prompts, 64 tokens,
# batch 4, lr 1e-5, 16 steps for A and 40 for B: ~25 min on an idle 2-core machine, captures included (40 min on
# 2026-12-03 with another training job sharing the two cores). RETORT (binary; retort-torch must sit beside it, or set
# $RETORT_TORCH), RETORT_HOME (model cache: $RETORT_HOME/models/{smollm2-135m-instruct,gemma3-270m}.gguf).
#
# Each teacher runs with its own throw-away RETORT_HOME (keys/ledger db in a tmp dir, not the user's), --no-keys,
# --watermark none, and is stopped before training so the CPU belongs to the trainer. Stores, student checkpoints
# (~1 GB a run) and logs all live in a tmp dir removed at exit; nothing is written into the repository except the
# JSON. Gemma 3 270M is a base model with no chat template in its GGUF: retort's ChatTemplate gives a Gemma
# vocabulary Gemma 3's own turn template, so /v1/chat/completions works; the base model's samples at temperature 1
# are often off-topic (it tends to repeat the prompt, then drift), which is still the teacher's distribution.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_json="${1:-$here/bench/results/xtok_demo.json}"
retort="${RETORT:-$here/build/retort}"
home="${RETORT_HOME:-$HOME/.cache/retort}"
n_train="${N_TRAIN:-160}"
n_eval="${N_EVAL:-40}"
max_tokens="${MAX_TOKENS:-64}"
# Steps per direction: a Gemma-student step (262k-token vocabulary, 270M params) costs ~10 s with batch 4 on a
# 2-core machine, a SmolLM2-student step ~3 s, so B gets more steps for about the same wall time. Equal tokens holds
# *within* a direction (the three losses), which is the comparison this demo makes. STEPS sets both.
steps_a="${STEPS_A:-${STEPS:-16}}"
steps_b="${STEPS_B:-${STEPS:-40}}"
batch="${BATCH:-4}"
lr="${LR:-1e-5}"
max_seq="${MAX_SEQ:-256}"
threads="${THREADS:-0}"
k=20
parallel=4
seed_train=1
seed_eval=2
seed_distill=0
losses=(ce uld gold)

tmp="$(mktemp -d)"
server_pid=""
stop_server() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  server_pid=""
}
cleanup() { stop_server; rm -rf "$tmp"; }
trap cleanup EXIT

: >"$tmp/rows.jsonl"      # one JSON line per result row (baseline + each loss)
: >"$tmp/commands.jsonl"  # the exact commands run, in order
# Runs a command, logs it (as one shell-quoted line) to commands.jsonl, and keeps its stdout in $1's file.
run_logged() {  # $1 = stdout file, rest = command
  local log="$1"; shift
  printf '%q ' "$@" | python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' >>"$tmp/commands.jsonl"
  "$@" >"$log" 2>"$log.err" || { echo "failed: $*" >&2; tail -n 30 "$log" "$log.err" >&2; exit 1; }
}

# Starts `retort serve` for a teacher on a free loopback port (port 0) and sets $url once the log names it.
start_server() {  # $1 = model name (file stem in the cache)
  local name="$1" log="$tmp/serve-$1.log" port=""
  mkdir -p "$tmp/home-$name"
  printf '%q ' env "RETORT_HOME=$tmp/home-$name" OMP_WAIT_POLICY=passive "$retort" serve --port 0 \
    --model "$home/models/$name.gguf" --model-id "$name" --no-keys --watermark none --parallel "$parallel" \
    --ctx-size 512 --threads "$threads" |
    python3 -c 'import json,sys; print(json.dumps(sys.stdin.read().strip()))' >>"$tmp/commands.jsonl"
  RETORT_HOME="$tmp/home-$name" OMP_WAIT_POLICY=passive "$retort" serve --port 0 --model "$home/models/$name.gguf" \
    --model-id "$name" --no-keys --watermark none --parallel "$parallel" --ctx-size 512 --threads "$threads" \
    >"$log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 600); do
    port="$(grep -oE 'on http://127\.0\.0\.1:[0-9]+' "$log" | grep -oE '[0-9]+$' || true)"
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { echo "retort serve did not start" >&2; cat "$log" >&2; exit 1; }
  url="http://127.0.0.1:$port/v1"
}

# One direction: serve the teacher, capture train + held-out text stores, stop it, then baseline + 3 trainings.
direction() {  # $1 = label, $2 = teacher name, $3 = student name, $4 = steps
  local dir="$1" teacher="$2" student="$3" nsteps="$4" t0 t1 warmup
  warmup="${WARMUP:-$(( nsteps / 10 > 0 ? nsteps / 10 : 1 ))}"
  local student_path="$home/models/$student.gguf" train_store="$tmp/$dir-train" eval_store="$tmp/$dir-heldout"
  echo "[$dir] teacher $teacher (served) -> student $student" >&2

  start_server "$teacher"
  # Text stores: no --teacher-tokenizer, so the store keeps token pieces (bytes) and top-k logprobs as the API
  # returned them; the student's side aligns them to its own tokens by byte offsets at training time.
  t0=$(date +%s.%N)
  run_logged "$tmp/$dir-cap-train.log" "$retort" capture --teacher-url "$url" --teacher-model "$teacher" \
    --prompts "$here/data/prompts/train.jsonl" --limit "$n_train" --max-tokens "$max_tokens" --k "$k" \
    --seed "$seed_train" --out "$train_store" --quiet --concurrency "$parallel"
  run_logged "$tmp/$dir-cap-eval.log" "$retort" capture --teacher-url "$url" --teacher-model "$teacher" \
    --prompts "$here/data/prompts/heldout.jsonl" --limit "$n_eval" --max-tokens "$max_tokens" --k "$k" \
    --seed "$seed_eval" --out "$eval_store" --quiet --concurrency "$parallel"
  t1=$(date +%s.%N)
  stop_server  # free the CPU for training
  python3 - "$dir" "$t0" "$t1" "$train_store" "$eval_store" "$warmup" >>"$tmp/captures.jsonl" <<'PY'
import json, os, sys
d, t0, t1, tr, ev, warmup = sys.argv[1:7]
def store(p):
    m = json.load(open(os.path.join(p, "manifest.json")))
    skipped = os.path.join(p, "skipped.jsonl")
    n_skip = sum(1 for l in open(skipped) if l.strip()) if os.path.exists(skipped) else 0
    return {"samples": sum(s.get("samples", 0) for s in m.get("shards", [])), "api_skipped": n_skip,
            "format": m.get("format"), "k": m.get("k"), "generation": m.get("generation")}
print(json.dumps({"direction": d, "seconds": round(float(t1) - float(t0), 1), "train": store(tr), "heldout": store(ev),
                  "warmup": int(warmup)}))
PY

  # Baseline: the untrained student on the held-out text.
  t0=$(date +%s.%N)
  run_logged "$tmp/$dir-baseline.json" "$retort" eval --model "$student_path" --data "$eval_store" --json \
    --threads "$threads"
  t1=$(date +%s.%N)
  python3 - "$dir" "$tmp/$dir-baseline.json" "$t0" "$t1" >>"$tmp/rows.jsonl" <<'PY'
import json, sys
d, f, t0, t1 = sys.argv[1:5]
j = json.loads(open(f).read().strip().splitlines()[-1])
m = j["metrics"]
print(json.dumps({"direction": d, "loss": "baseline", "nll_per_byte": m["nll_per_byte"],
                  "bits_per_byte": m["bits_per_byte"], "top1_agree": m["top1_agree"],
                  "agree_positions": m["agree_positions"], "teacher_nll_per_byte": m["teacher_nll_per_byte"],
                  "train_tokens": 0, "seconds": round(float(t1) - float(t0), 1),
                  "heldout_skipped": j["data"].get("skipped")}))
PY

  # Three students at equal tokens: same data, order (seed), steps, batch, schedule and max-seq.
  for loss in "${losses[@]}"; do
    local run="$tmp/$dir-run-$loss"
    t0=$(date +%s.%N)
    run_logged "$tmp/$dir-$loss.log" "$retort" distill --data "$train_store" --eval-data "$eval_store" \
      --student "$student_path" --loss "$loss" --steps "$nsteps" --batch "$batch" --lr "$lr" --warmup "$warmup" \
      --max-seq "$max_seq" --seed "$seed_distill" --threads "$threads" --out "$run" --quiet
    t1=$(date +%s.%N)
    python3 - "$dir" "$loss" "$run/metrics.jsonl" "$tmp/$dir-$loss.log" "$tmp/$dir-$loss.log.err" "$t0" "$t1" \
      >>"$tmp/rows.jsonl" <<'PY'
import json, re, sys
d, loss, metrics, log, err, t0, t1 = sys.argv[1:8]
lines = [json.loads(l) for l in open(metrics) if l.strip()]
ev = [l for l in lines if "eval" in l][-1]["eval"]
text = open(log).read()
m = re.search(r"trained (\d+) steps .*?: (\d+) tokens in ([0-9.]+) s", text)
skips = re.findall(r"(data|eval data) \S+: (\d+) samples for the student's tokenizer, (\d+) skipped", open(err).read())
print(json.dumps({"direction": d, "loss": loss, "nll_per_byte": ev["nll_per_byte"],
                  "bits_per_byte": ev["bits_per_byte"], "top1_agree": ev["top1_agree"],
                  "agree_positions": ev["agree_positions"], "teacher_nll_per_byte": ev.get("teacher_nll_per_byte"),
                  "train_tokens": int(m.group(2)) if m else None, "train_seconds": float(m.group(3)) if m else None,
                  "seconds": round(float(t1) - float(t0), 1),
                  "first_loss": next((l.get("loss") for l in lines if "loss" in l), None),
                  "last_loss": [l.get("loss") for l in lines if "loss" in l][-1] if any("loss" in l for l in lines) else None,
                  "student_samples_skipped": {w: {"samples": int(n), "skipped": int(s)} for w, n, s in skips}}))
PY
    rm -rf "$run"  # ~1 GB of checkpoint per run; only the metrics are kept
  done
}

start=$(date +%s)
direction A smollm2-135m-instruct gemma3-270m "$steps_a"
direction B gemma3-270m smollm2-135m-instruct "$steps_b"
end=$(date +%s)

mkdir -p "$(dirname "$out_json")"
python3 - "$tmp/rows.jsonl" "$tmp/captures.jsonl" "$tmp/commands.jsonl" "$out_json" "$((end - start))" \
  "$n_train" "$n_eval" "$max_tokens" "$steps_a" "$steps_b" "$batch" "$lr" "${WARMUP:-10% of steps}" "$max_seq" \
  "$k" "$seed_train" "$seed_eval" "$seed_distill" "$threads" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
caps = {c["direction"]: c for c in map(json.loads, open(sys.argv[2]))}
cmds = [json.loads(l) for l in open(sys.argv[3])]
(out, wall, n_train, n_eval, max_tokens, steps_a, steps_b, batch, lr, warmup, max_seq, k, s_tr, s_ev, s_di,
 threads) = sys.argv[4:20]
names = {"A": ("smollm2-135m-instruct", "gemma3-270m"), "B": ("gemma3-270m", "smollm2-135m-instruct")}
dirs = {}
for d, (t, s) in names.items():
    rs = [r for r in rows if r["direction"] == d]
    base = next(r for r in rs if r["loss"] == "baseline")
    dirs[d] = {"teacher": t + " (retort serve, /v1/chat/completions, top_logprobs 20)", "student": s,
               "steps": int(steps_a if d == "A" else steps_b), "warmup": (caps.get(d) or {}).get("warmup"),
               "teacher_nll_per_byte": base["teacher_nll_per_byte"], "capture": caps.get(d),
               "rows": rs}
table = []
for d, v in dirs.items():
    for r in v["rows"]:
        table.append(f"{d} {v['student']:<22} {r['loss']:<8} nll/byte {r['nll_per_byte']:.4f}  bits/byte "
                     f"{r['bits_per_byte']:.4f}  top-1 {r['top1_agree']:.4f} ({r['agree_positions']} pos)")
res = {"bench": "xtok_demo", "wall_seconds": int(wall),
       "settings": {"n_train": int(n_train), "n_eval": int(n_eval), "max_tokens": int(max_tokens),
                    "batch": int(batch), "lr": float(lr), "warmup_default": warmup, "max_seq": int(max_seq), "k": int(k),
                    "capture_seeds": {"train": int(s_tr), "heldout": int(s_ev)}, "distill_seed": int(s_di),
                    "threads": int(threads), "teacher_parallel": 4, "teacher_ctx": 512,
                    "train_prompts": "data/prompts/train.jsonl", "heldout_prompts": "data/prompts/heldout.jsonl",
                    "xtok_ce_weight": 1.0, "temperature": 1.0},
       "directions": dirs, "table": table, "commands": cmds}
text = json.dumps(res, indent=2)
open(out, "w").write(text + "\n")
print(text)
PY

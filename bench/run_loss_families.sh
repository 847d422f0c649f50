#!/usr/bin/env bash
# bench/run_loss_families.sh — the loss families where the literature says they win, at equal compute.
#
# One student (the main job's: 20 of SmolLM2-135M-Instruct's 30 layers, keep=influence, full width, 99.1M
# params), one data set (the main job's stores: 408 training prompts x 128 tokens at temperature 1, top-20
# logprobs + tail mass; 60 held-out prompts), one budget (STEPS steps x BATCH sequences, max_seq MAX_SEQ, the
# same lr, schedule and seed) and three kinds of teacher signal:
#
#   sparse     the store's top-20 log-probs plus one tail bucket (what an API returns; the main job's signal)
#   dense      the in-process teacher's full 49,152-way distribution on the same stored text (--dense)
#   on-policy  GKD: a fraction LAMBDA of the batches are the student's own samples (temperature 1, up to
#              ON_POLICY_TOKENS tokens) scored densely by the teacher; the rest dense on the stored text
#
# for forward KL (fkl), reverse KL (rkl), JSD (β=0.5), skew forward KL (skl, α=0.1) and total variation (tvd;
# not on-policy, to save time). Every student is scored on the held-out store: NLL of the teacher's text,
# top-1 agreement with the teacher and KL(teacher‖student) on the stored top-20 + tail (the same yardstick
# for all, so dense-trained students are not scored on their own signal).
#
# Then, to test the suspect named in the README (the sparse tail bucket), the same held-out store is
# re-scored by the in-process teacher's full distribution for every student (`retort eval --dense-kl`): the
# excess of the dense KL over the top-20+tail KL is what the student gets wrong *inside* the tail bucket,
# which a sparse signal cannot teach; and the student's own mass outside the teacher's top 20 beside the
# teacher's. And where the literature says mode-seeking and on-policy losses win — the student's *own* text —
# every student answers the first ANSWERS held-out prompts greedily (ANSWER_TOKENS tokens at most): the
# share of repeated 4-grams in its answers and the teacher's NLL of them (`retort eval --answers`).
#
#   bash bench/run_loss_families.sh [out.json]     (default bench/results/loss_families.json)
#
# Environment: STORES (dir with train/ and heldout/ stores; default $RETORT_HOME/runs/quickstart/data, made by
# the main job), STEPS (32), BATCH (8), MAX_SEQ (160), LR (3e-4), LAMBDA (0.5), ON_POLICY_TOKENS (96),
# LOSSES ("fkl rkl jsd skl tvd"), MODES ("sparse dense onpolicy"), ANSWERS (60), ANSWER_TOKENS (128), THREADS
# (0 = all), RETORT (binary), RUNS (keep the runs there, ~400 MB each, and reuse a finished run found there
# instead of training it again; default: a tmp dir removed at exit), TRAIN (1; 0 = only reuse finished runs in
# RUNS and leave the others out of the table). Cost on an idle 2-core machine at 32
# steps: ~4.5 min per sparse run, ~6 per dense, ~7 per on-policy, ~2 per evaluation. Only the JSON (and a
# markdown table beside it) is written into the repository.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_json="${1:-$here/bench/results/loss_families.json}"
retort="${RETORT:-$here/build/retort}"
home="${RETORT_HOME:-$HOME/.cache/retort}"
stores="${STORES:-$home/runs/quickstart/data}"
steps="${STEPS:-32}"
batch="${BATCH:-8}"
max_seq="${MAX_SEQ:-160}"
lr="${LR:-3e-4}"
lambda="${LAMBDA:-0.5}"
op_tokens="${ON_POLICY_TOKENS:-96}"
answers="${ANSWERS:-60}"
train="${TRAIN:-1}"
answer_tokens="${ANSWER_TOKENS:-128}"
threads="${THREADS:-0}"
read -r -a losses <<<"${LOSSES:-fkl rkl jsd skl tvd}"
read -r -a modes <<<"${MODES:-sparse dense onpolicy}"
teacher="smollm2-135m-instruct"

for s in train heldout; do
  if [[ ! -f "$stores/$s/manifest.json" ]]; then
    echo "run_loss_families: no signal store at $stores/$s — run the main job first (bash scripts/quickstart.sh)," \
         "or set STORES to a directory holding train/ and heldout/ stores" >&2
    exit 2
  fi
done

if [[ -n "${RUNS:-}" ]]; then
  tmp="$RUNS"
  mkdir -p "$tmp"
else
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
fi
results="$tmp/results.jsonl"
: >"$results"
# A run already finished in $tmp (its final checkpoint and its closing held-out evaluation) is reused.
finished() { [[ -d "$1/final" ]] && grep -q '"eval"' "$1/metrics.jsonl" 2>/dev/null; }

common=(--teacher "$teacher" --data "$stores/train" --eval-data "$stores/heldout"
        --student "layers=20,init=prune,keep=influence" --batch "$batch" --max-seq "$max_seq"
        --min-lr-ratio 0.1 --weight-decay 0.01 --clip 1 --seed 0 --eval-every 0 --threads "$threads" --quiet)
budget=(--steps "$steps" --lr "$lr" --warmup 5)

# The untrained student, scored the same way: one step at lr 1e-12 leaves the pruned start as it was.
echo "== student before training"
finished "$tmp/before" ||
  "$retort" distill "${common[@]}" --loss fkl --steps 1 --lr 1e-12 --warmup 0 --out "$tmp/before" >"$tmp/before.log" 2>&1 \
  || { tail -20 "$tmp/before.log" >&2; exit 1; }
python3 - "$tmp/before" before none 0 "$results" <<'PY'
import json, sys
run, loss, mode, secs, out = sys.argv[1:6]
ev = [json.loads(l) for l in open(run + "/metrics.jsonl") if '"eval"' in l][-1]["eval"]
open(out, "a").write(json.dumps({"loss": loss, "mode": mode, "seconds": float(secs), "tok_s": None,
                                 "run": run, **{k: ev[k] for k in ("nll", "ppl", "top1_agree", "kl")},
                                 "teacher_nll": ev["teacher_nll"]}) + "\n")
PY

for mode in "${modes[@]}"; do
  for loss in "${losses[@]}"; do
    extra=()
    case "$mode" in
      sparse) ;;
      dense) extra=(--dense) ;;
      onpolicy)
        [[ "$loss" == tvd ]] && continue
        extra=(--dense --lambda "$lambda" --on-policy-max-tokens "$op_tokens" --on-policy-temperature 1) ;;
      *) echo "unknown mode $mode" >&2; exit 2 ;;
    esac
    run="$tmp/$mode-$loss"
    echo "== $mode $loss"
    if finished "$run"; then
      echo "   (reused: $run)"
    elif [[ "$train" == 0 ]]; then
      echo "   (not trained: TRAIN=0)"
      continue
    else
      rm -rf "$run"
      t0=$(date +%s.%N)
      if ! "$retort" distill "${common[@]}" "${budget[@]}" --loss "$loss" "${extra[@]}" --out "$run" >"$run.log" 2>&1; then
        tail -20 "$run.log" >&2
        exit 1
      fi
      t1=$(date +%s.%N)
      echo "$t1 - $t0" | bc >"$run.seconds"
    fi
    python3 - "$run" "$loss" "$mode" "$(cat "$run.seconds" 2>/dev/null || echo 0)" "$results" <<'PY'
import json, sys
run, loss, mode, secs, out = sys.argv[1:6]
rows = [json.loads(l) for l in open(run + "/metrics.jsonl")]
ev = [r for r in rows if "eval" in r][-1]["eval"]
steps = [r for r in rows if "tok_s" in r]
# seconds: the whole `retort distill` process (load, prune, train, closing evaluation); tok_s: training only.
r = {"loss": loss, "mode": mode, "seconds": float(secs), "tok_s": steps[-1]["tok_s"],
     "train_tokens": steps[-1]["tokens"], "on_policy_steps": sum(1 for s in steps if s.get("on_policy")),
     "run": run, **{k: ev[k] for k in ("nll", "ppl", "top1_agree", "kl")}, "teacher_nll": ev["teacher_nll"]}
open(out, "a").write(json.dumps(r) + "\n")
print(f"   nll {r['nll']:.3f}  agree {r['top1_agree']:.3f}  kl {r['kl']:.3f}  ({r['seconds']:.0f} s)")
PY
  done
done

# Dense held-out KL and own answers for every student (retort eval --dense-kl --answers).
python3 - "$results" >"$tmp/runs.txt" <<'PY'
import json, sys
for l in open(sys.argv[1]):
    r = json.loads(l); print(r["mode"], r["loss"], r["run"])
PY
while read -r mode loss run; do
  echo "== dense held-out KL and own answers: $mode $loss"
  [[ -s "$run.eval.json" ]] && continue
  "$retort" eval --model "$run/final" --teacher "$teacher" --data "$stores/heldout" --dense-kl --json \
    --answers "$answers" --answer-tokens "$answer_tokens" --generations 0 --speed-tokens 0 --threads "$threads" \
    >"$run.eval.json.tmp" 2>"$run.eval.log" || { tail -5 "$run.eval.log" >&2; exit 1; }
  mv "$run.eval.json.tmp" "$run.eval.json"
done <"$tmp/runs.txt"

python3 - "$results" "$out_json" "$steps" "$batch" "$max_seq" "$lr" "$lambda" "$op_tokens" <<'PY'
import json, sys, os, platform, datetime
res, out, steps, batch, max_seq, lr, lam, opt = sys.argv[1:9]
rows = []
teacher_answers = None
keys = ("repeated_4gram", "teacher_nll", "stopped", "mean_tokens")
for l in open(res):
    r = json.loads(l)
    e = json.load(open(r["run"] + ".eval.json"))
    m = e["student"]["metrics"]
    r["kl_dense"] = m["kl_dense"]
    r["student_tail"] = m["student_tail"]
    r["teacher_tail"] = m["teacher_tail"]
    r["answers"] = {k: e["answers"]["student"][k] for k in keys}
    teacher_answers = {k: e["answers"]["teacher"][k] for k in keys}
    teacher_answers["prompts"] = e["answers"]["prompts"]
    teacher_answers["max_tokens"] = e["answers"]["max_tokens"]
    r.pop("run")
    rows.append(r)
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
doc = {"bench": "loss_families", "date": datetime.date.today().isoformat(), "cpu": cpu, "threads": os.cpu_count(),
       "student": "layers=20,init=prune,keep=influence (99.1M of SmolLM2-135M-Instruct)",
       "budget": {"steps": int(steps), "batch": int(batch), "max_seq": int(max_seq), "lr": float(lr),
                  "on_policy_lambda": float(lam), "on_policy_max_tokens": int(opt)},
       "teacher_answers": teacher_answers, "rows": rows}
tmp = out + ".tmp"
json.dump(doc, open(tmp, "w"), indent=1); os.replace(tmp, out)
md = ["| signal | loss | held-out NLL | top-1 agreement | KL top-20+tail | KL dense | KL inside the tail | "
      "mass outside top-20 | own answers: repeated 4-grams | teacher NLL of own answers | train tok/s | wall s |",
      "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
t = teacher_answers
md.append(f"| teacher | | | 1.000 | 0.000 | 0.000 | 0.000 | {rows[0]['teacher_tail']:.3f} | "
          f"{t['repeated_4gram']:.3f} | {t['teacher_nll']:.3f} | | |")
for r in rows:
    tok = f"{r['tok_s']:.0f}" if r["tok_s"] else ""
    secs = f"{r['seconds']:.0f}" if r["seconds"] else ""
    a = r["answers"]
    md.append(f"| {r['mode']} | {r['loss']} | {r['nll']:.3f} | {r['top1_agree']:.3f} | {r['kl']:.3f} | "
              f"{r['kl_dense']:.3f} | {r['kl_dense'] - r['kl']:.3f} | {r['student_tail']:.3f} | "
              f"{a['repeated_4gram']:.3f} | {a['teacher_nll']:.3f} | {tok} | {secs} |")
open(out[:-5] + ".md" if out.endswith(".json") else out + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
PY

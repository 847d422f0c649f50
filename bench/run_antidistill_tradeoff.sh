#!/usr/bin/env bash
# bench/run_antidistill_tradeoff.sh — issue 16's antidistillation trade-off: at equal teacher quality, is a
# student distilled from antidistillation traces worse than one distilled from temperature-sampled traces?
# (Savani et al. 2025, "Antidistillation Sampling", Fig. 1/3: teacher accuracy against the accuracy of a
# student fine-tuned on the teacher's traces, antidistillation at several λ against temperature sampling.)
#
#   bash bench/run_antidistill_tradeoff.sh [out.json]   (default bench/results/antidistill_tradeoff.json)
#
# 1. The proxy: a student retort distilled from the default teacher, on its tokenizer (PROXY: default the
#    radioactivity bench's f000 student, SFT on the teacher's clean answers; made here the same way when
#    absent). `retort antidistill prepare` computes g on held-out teacher traces (the 60 held-out prompts,
#    seed 11, 64 tokens) and writes the proxy at θ ± εg.
# 2. For each setting — plain sampling at TEMPERATURES, antidistillation at τ = 1 and LAMBDAS (raw λ: the
#    term moves logits by about λ·delta_std nats, delta_std ≈ 12.5 here) — build/antidistill_tradeoff
#    measures the teacher under it (held-out NLL of its own answers under the plain teacher, top-1
#    agreement with the plain teacher's argmax, task accuracy with that sampling) and writes its answers to
#    TRAIN_LIMIT training prompts (a seeded subset of data/prompts/train.jsonl, N_TOKENS tokens): the traces.
# 3. Each setting's student: the traces teacher-forced into a signal store (`retort capture --mode score`;
#    only the tokens matter for SFT), then SFT (`--loss ce`, what a distiller with text does) of the same
#    student shape as the proxy (20 of the teacher's 30 layers, keep=influence) for one epoch.
# 4. Student quality: `retort eval` on a held-out store of the PLAIN teacher's samples (held-out prompts,
#    seed 5: NLL, top-1 agreement, KL) and the task set (greedy).
# The summary table pairs each antidistillation row with the temperature rows around its teacher NLL.
#
# Environment: RUNS (work dir, reused; default $RETORT_HOME/bench/antidistill_tradeoff), PROXY (a distill
# checkpoint or .gguf on the teacher's tokenizer), TEMPERATURES ("1.0 1.07 1.15 1.3"), LAMBDAS ("0.02 0.05
# 0.1"), REPLICATES (settings drawn again with another seed, SETTING@SEED: "temp_1.0@2", the run-to-run noise
# of a student — the seed changes the traces, and keep=influence may then keep other layers),
# TRAIN_LIMIT (408 = all), N_TOKENS (64), HELDOUT_SAMPLES (1), TASK_SAMPLES (1), STEPS (one epoch at BATCH),
# BATCH (8), MAX_SEQ (128), LR (3e-4), THREADS (0 = all).
# Cost on a 2-core Intel Xeon (TRAIN_LIMIT 200, N_TOKENS 48): ~6.5 min per temperature setting and ~11 min
# per antidistillation setting (the two float32 proxies run batched, ~38 tok/s against ~105 plain), student
# and its evaluation included: 61 min for the default 8 settings (docs/antidistillation.md has the table).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_json="$(realpath -m "${1:-$here/bench/results/antidistill_tradeoff.json}")"
retort="${RETORT:-$here/build/retort}"
tradeoff="$here/build/antidistill_tradeoff"
home="${RETORT_HOME:-$HOME/.cache/retort}"
runs="${RUNS:-$home/bench/antidistill_tradeoff}"
read -r -a temperatures <<<"${TEMPERATURES:-1.0 1.07 1.15 1.3}"
read -r -a lambdas <<<"${LAMBDAS:-0.02 0.05 0.1}"
read -r -a replicates <<<"${REPLICATES:-temp_1.0@2}"
train_limit="${TRAIN_LIMIT:-408}"
n_tokens="${N_TOKENS:-64}"
heldout_samples="${HELDOUT_SAMPLES:-1}"
task_samples="${TASK_SAMPLES:-1}"
batch="${BATCH:-8}"
steps="${STEPS:-$(( (train_limit + batch - 1) / batch ))}"
max_seq="${MAX_SEQ:-128}"
lr="${LR:-3e-4}"
threads="${THREADS:-0}"
teacher="smollm2-135m-instruct"
student_spec="layers=20,init=prune,keep=influence"
[[ -x "$tradeoff" ]] || { echo "build it first: cmake --build build --target antidistill_tradeoff retort_cli retort_torch_cli" >&2; exit 2; }
mkdir -p "$runs"
cd "$runs"
log() { printf '[antidistill-tradeoff %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

sft() {  # sft STORE OUT
  [[ -d "$2/final" ]] && return 0
  rm -rf "$2"
  "$retort" distill --teacher "$teacher" --data "$1" --student "$student_spec" --loss ce --steps "$steps" \
    --batch "$batch" --max-seq "$max_seq" --lr "$lr" --warmup 3 --min-lr-ratio 0.1 --weight-decay 0.01 --clip 1 \
    --seed 0 --eval-every 0 --threads "$threads" --quiet --out "$2"
}

# ---- the training prompts (a seeded subset) and the held-out store of the plain teacher ----------------
if [[ ! -s train.jsonl ]]; then
  python3 - "$here/data/prompts/train.jsonl" "$train_limit" <<'EOF'
import json, os, random, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
n = min(int(sys.argv[2]), len(lines))
keep = sorted(random.Random(16).sample(range(len(lines)), n))
with open("train.jsonl.tmp", "w") as f:
    for i in keep: f.write(lines[i] if lines[i].endswith("\n") else lines[i] + "\n")
os.replace("train.jsonl.tmp", "train.jsonl")
EOF
fi
if [[ ! -f heldout/manifest.json ]]; then
  log "held-out store: the plain teacher's samples for the held-out prompts"
  "$retort" capture --teacher "$teacher" --prompts "$here/data/prompts/heldout.jsonl" --k 20 --max-tokens 64 \
    --temperature 1 --seed 5 --out heldout --threads "$threads" --quiet
fi

# ---- 1. the proxy --------------------------------------------------------------------------------------
proxy="${PROXY:-}"
if [[ -z "$proxy" ]]; then
  if [[ ! -d proxy_run/final ]]; then
    log "proxy: SFT of the student on the teacher's plain answers"
    "$tradeoff" --temperature 1 --seed 2 --train-prompts "$here/data/prompts/train.jsonl" --traces-out proxy_traces.jsonl \
      --heldout-prompts "$here/data/prompts/heldout.jsonl" \
      --heldout-samples 1 --task-samples 0 --max-tokens 64 --threads "$threads" >/dev/null
    "$retort" capture --teacher "$teacher" --prompts proxy_traces.jsonl --mode score --k 20 --out proxy_store \
      --threads "$threads" --quiet
    steps=$(( (408 + batch - 1) / batch )) sft proxy_store proxy_run  # one epoch of all 408
  fi
  proxy="$runs/proxy_run/final"
fi
if [[ ! -f ad/antidistill.json ]]; then
  log "antidistill prepare: g of $proxy on held-out teacher traces"
  "$retort" antidistill prepare --proxy "$proxy" --teacher "$teacher" --traces "$here/data/prompts/heldout.jsonl" \
    --limit 60 --max-tokens 64 --seed 11 --out ad --threads "$threads"
fi

# ---- 2-4. every setting: the teacher, its traces, the student -------------------------------------------
settings=()
for t in "${temperatures[@]}"; do settings+=("temp_$t"); done
for l in "${lambdas[@]}"; do settings+=("ad_$l"); done
for r in "${replicates[@]}"; do settings+=("$r"); done
for s in "${settings[@]}"; do
  # A setting is temp_T or ad_L, optionally with @SEED (another draw of the same setting: the noise).
  seed=1 base="$s"
  [[ "$s" == *@* ]] && seed="${s#*@}" base="${s%@*}"
  case "$base" in
    temp_*) opts=(--temperature "${base#temp_}") ;;
    ad_*) opts=(--temperature 1 --antidistill ad --lambda "${base#ad_}") ;;
  esac
  if [[ ! -s "teacher_$s.json" ]]; then
    log "$s: the teacher under it, and its traces"
    "$tradeoff" "${opts[@]}" --seed "$seed" --train-prompts train.jsonl --traces-out "traces_$s.jsonl" \
      --heldout-prompts "$here/data/prompts/heldout.jsonl" --tasks "$here/data/tasks/tasks.jsonl" \
      --heldout-samples "$heldout_samples" --task-samples "$task_samples" --max-tokens "$n_tokens" \
      --threads "$threads" --out "teacher_$s.json" >/dev/null
  fi
  if [[ ! -f "store_$s/manifest.json" ]]; then
    log "$s: teacher-forced store of the traces"
    "$retort" capture --teacher "$teacher" --prompts "traces_$s.jsonl" --mode score --k 20 --out "store_$s" \
      --threads "$threads" --quiet
  fi
  log "$s: SFT of the student ($steps steps x $batch)"
  sft "store_$s" "run_$s"
  if [[ ! -s "student_$s.json" ]]; then
    log "$s: the student on the plain teacher's held-out text and the tasks"
    "$retort" eval --model "run_$s/final" --teacher "$teacher" --data heldout --tasks "$here/data/tasks/tasks.jsonl" \
      --generations 0 --speed-tokens 0 --json --threads "$threads" >"student_$s.json.tmp"
    mv "student_$s.json.tmp" "student_$s.json"
  fi
done

python3 "$here/bench/antidistill_tradeoff_summary.py" --runs "$runs" --out "$out_json" --settings "${settings[*]}" \
  --setting "train_limit=$train_limit n_tokens=$n_tokens heldout_samples=$heldout_samples task_samples=$task_samples steps=$steps batch=$batch max_seq=$max_seq lr=$lr proxy=$proxy"

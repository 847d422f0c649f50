#!/usr/bin/env bash
# bench/run_radioactivity_fractions.sh — issue 14's validation bench, radioactivity part: students distilled
# by retort from the watermarked default teacher with 0%, 1%, 5%, 20% and 100% of their training text
# watermarked, one whose watermarked text was paraphrased by another (unkeyed) model before distillation,
# and two control models that never saw the text — each put through the open and the closed test.
#
#   bash bench/run_radioactivity_fractions.sh [out.json]   (default bench/results/radioactivity_fractions.json)
#
# The story, as a provider would meet it:
#   1. Our API (the default teacher, KGW selfhash at the `--watermark kgw` defaults: γ 0.25, δ 2, h 4,
#      temperature 1) answers the 408 training prompts of data/prompts/train.jsonl (chat, N_TOKENS tokens):
#      wm_all.jsonl. The same teacher without a watermark answers them too (another seed): clean.jsonl — the
#      thief's other data.
#   2. For each fraction f the thief trains on round(f·408) of our watermarked answers (a fixed seeded
#      choice; the sets are nested) and clean answers to the other prompts: mix_f.jsonl, teacher-forced by
#      the clean teacher into a signal store (`retort capture --mode score`), then SFT (`--loss ce`: the
#      paper's setting, the student learns the text) of the main job's student (20 of the teacher's 30
#      layers, keep=influence) for one epoch (STEPS steps × BATCH). served_f.jsonl is what the provider
#      served that account: the watermarked answers in the mix.
#   3. Attack (Pan et al., ACL 2025, untargeted paraphrase): the thief has another model without our key
#      rewrite every watermarked answer before training on it (the teacher prompted to paraphrase, no
#      watermark, temperature 0.7): student para100.
#   4. Every student and the controls (the clean teacher; Gemma 3 270M, another family and tokenizer) face
#        open_served  the suspect reads served_f.jsonl (what this account was served) — f > 0 only
#        open_all     the suspect reads all 408 watermarked answers (the provider need not know which it used)
#        closed       the suspect answers the 60 held-out prompts (CLOSED_SAMPLES samples, temperature 1)
#        closed_seen  the same, scoring only windows seen in our served text (--seen: served_f, or all for f=0)
#      each with --accounts: ACCOUNTS unrelated account keys (derived from the master key, never used to
#      watermark anything) scored on the same observations — the null distribution across keys (KS).
#
# Environment: RUNS (work dir kept for reuse; default $RETORT_HOME/bench/radioactivity), STEPS (51 = one
# epoch of 408 at batch 8), BATCH (8), MAX_SEQ (128), LR (3e-4), N_TOKENS (64), CLOSED_SAMPLES (2),
# ACCOUNTS (100), FRACTIONS ("0 1 5 20 100", percent), PARAPHRASE (1), THREADS (0 = all), RETORT (binary).
# Everything found finished in RUNS is reused. Cost on a 2-core Intel Xeon: ~8 min of generation, ~6.5 min
# per student (2 of them the teacher-forced store), 3-7 min of tests per model: 77 min in all.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_json="${1:-$here/bench/results/radioactivity_fractions.json}"
out_json="$(realpath -m "$out_json")"  # the work happens in RUNS
retort="${RETORT:-$here/build/retort}"
home="${RETORT_HOME:-$HOME/.cache/retort}"
runs="${RUNS:-$home/bench/radioactivity}"
steps="${STEPS:-51}"
batch="${BATCH:-8}"
max_seq="${MAX_SEQ:-128}"
lr="${LR:-3e-4}"
n_tokens="${N_TOKENS:-64}"
closed_samples="${CLOSED_SAMPLES:-2}"
n_accounts="${ACCOUNTS:-100}"
threads="${THREADS:-0}"
paraphrase="${PARAPHRASE:-1}"
read -r -a fractions <<<"${FRACTIONS:-0 1 5 20 100}"
teacher="smollm2-135m-instruct"
gemma="gemma3-270m"
train_prompts="$here/data/prompts/train.jsonl"
heldout_prompts="$here/data/prompts/heldout.jsonl"
mkdir -p "$runs"
cd "$runs"
log() { printf '[radioactivity %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- 1. our key, our watermarked answers, the thief's clean answers ------------------------------------
[[ -s key ]] || "$retort" watermark keygen -o key
if [[ ! -s accounts.txt ]]; then
  for i in $(seq -w 1 "$n_accounts"); do echo "null-account-$i"; done >accounts.txt.tmp && mv accounts.txt.tmp accounts.txt
fi
# generate --json prints one line per prompt, in order; the prompt record is kept beside its answer.
answers() {  # answers PROMPTS OUT [generate options...]
  local prompts="$1" out="$2"
  shift 2
  [[ -s "$out" ]] && return 0
  "$retort" generate -m "$teacher" --prompts "$prompts" --chat --json --max-tokens "$n_tokens" --batch 34 \
    --threads "$threads" "$@" >"$out.gen"
  python3 - "$prompts" "$out.gen" "$out" <<'EOF'
import json, os, sys
prompts, gen, out = sys.argv[1:]
P = [json.loads(l) for l in open(prompts) if l.strip()]
G = [json.loads(l) for l in open(gen) if l.strip()]
assert len(P) == len(G), (prompts, len(P), len(G))
with open(out + ".tmp", "w") as f:
    for p, g in zip(P, G):
        r = {k: p[k] for k in ("prompt", "messages", "id", "category") if k in p}
        r["completion"] = g["text"]
        f.write(json.dumps(r) + "\n")
os.replace(out + ".tmp", out)
EOF
  rm -f "$out.gen"
}
log "teacher answers: watermarked (our API) and clean (the thief's other data)"
answers "$train_prompts" wm_all.jsonl --watermark kgw --watermark-key-file key --temperature 1 --seed 1
answers "$train_prompts" clean.jsonl --temperature 1 --seed 2
if [[ "$paraphrase" == 1 ]]; then
  log "attack: paraphrase every watermarked answer with an unkeyed model"
  python3 - wm_all.jsonl para_prompts.jsonl <<'EOF'
import json, sys
with open(sys.argv[2], "w") as f:
    for l in open(sys.argv[1]):
        r = json.loads(l)
        f.write(json.dumps({"prompt": "Rewrite the following text in your own words, keeping its meaning. "
                            "Reply with the rewritten text only.\n\n" + r["completion"]}) + "\n")
EOF
  answers para_prompts.jsonl para_raw.jsonl --temperature 0.7 --seed 3
fi

# ---- 2. the thief's training sets -------------------------------------------------------------------------
python3 - "${fractions[*]}" "$paraphrase" <<'EOF'
import json, os, random, sys
fractions = [int(x) for x in sys.argv[1].split()]
wm = [json.loads(l) for l in open("wm_all.jsonl")]
clean = [json.loads(l) for l in open("clean.jsonl")]
n = len(wm)
order = list(range(n))
random.Random(14).shuffle(order)           # the nested choice of watermarked prompts
def write(path, rows):
    if os.path.exists(path): return
    with open(path + ".tmp", "w") as f:
        for r in rows: f.write(json.dumps(r) + "\n")
    os.replace(path + ".tmp", path)
sets = {f"f{f:03d}": set(order[:round(f * n / 100)]) for f in fractions}
for name, chosen in sets.items():
    write(f"mix_{name}.jsonl", [wm[i] if i in chosen else clean[i] for i in range(n)])
    write(f"served_{name}.jsonl", [wm[i] for i in range(n) if i in chosen])
if sys.argv[2] == "1":
    para = [json.loads(l) for l in open("para_raw.jsonl")]
    write("mix_para100.jsonl", [dict(wm[i], completion=para[i]["completion"]) for i in range(n)])
    write("served_para100.jsonl", wm)      # the provider has only its own texts
EOF

students=()
for f in "${fractions[@]}"; do students+=("$(printf 'f%03d' "$f")"); done
[[ "$paraphrase" == 1 ]] && students+=(para100)

# ---- 3. distil every student ------------------------------------------------------------------------------
for s in "${students[@]}"; do
  if [[ ! -f "store_$s/manifest.json" ]]; then
    log "$s: teacher-forced store of the thief's text"
    "$retort" capture --teacher "$teacher" --prompts "mix_$s.jsonl" --mode score --k 20 --out "store_$s" \
      --threads "$threads" --quiet
  fi
  if [[ ! -d "run_$s/final" ]]; then
    log "$s: SFT of the student on it ($steps steps x $batch)"
    rm -rf "run_$s"
    "$retort" distill --teacher "$teacher" --data "store_$s" --student "layers=20,init=prune,keep=influence" \
      --loss ce --steps "$steps" --batch "$batch" --max-seq "$max_seq" --lr "$lr" --warmup 5 --min-lr-ratio 0.1 \
      --weight-decay 0.01 --clip 1 --seed 0 --eval-every 0 --threads "$threads" --quiet --out "run_$s"
  fi
done

# ---- 4. the tests -----------------------------------------------------------------------------------------
audit() {  # audit OUT [options...]
  local out="$1"
  shift
  [[ -s "$out" ]] && return 0
  log "test $out"
  "$retort" audit radioactivity --key-file key --accounts accounts.txt --min-tokens 100 --threads "$threads" \
    --json --out "$out" "$@" >/dev/null
}
closed_opts=(--mode closed --prompts "$heldout_prompts" --samples "$closed_samples" --max-tokens "$n_tokens"
             --temperature 1 --seed 7)
mkdir -p tests
for s in "${students[@]}" teacher gemma; do
  case "$s" in
    teacher) model="$teacher"; served=wm_all.jsonl ;;
    gemma) model="$gemma"; served=wm_all.jsonl ;;
    f000) model="run_$s/final"; served=wm_all.jsonl ;;
    *) model="run_$s/final"; served="served_$s.jsonl" ;;
  esac
  if [[ "$s" != f000 && "$s" != teacher && "$s" != gemma ]]; then
    audit "tests/${s}_open_served.json" --suspect "$model" --texts "$served"
  fi
  audit "tests/${s}_open_all.json" --suspect "$model" --texts wm_all.jsonl
  audit "tests/${s}_closed.json" --suspect "$model" "${closed_opts[@]}"
  audit "tests/${s}_closed_seen.json" --suspect "$model" "${closed_opts[@]}" --seen "$served"
done

python3 "$here/bench/radioactivity_summary.py" --runs "$runs" --out "$out_json" \
  --setting "steps=$steps batch=$batch max_seq=$max_seq lr=$lr n_tokens=$n_tokens closed_samples=$closed_samples accounts=$n_accounts"

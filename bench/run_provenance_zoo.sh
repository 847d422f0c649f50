#!/usr/bin/env bash
# bench/run_provenance_zoo.sh — issue 14's validation bench, provenance part: precision and recall of
# `retort audit provenance` over a zoo of suspects whose parent is known.
#
#   bash bench/run_provenance_zoo.sh [out.json]   (default bench/results/provenance_zoo.json)
#
# The zoo (students from bench/run_radioactivity_fractions.sh, which must have run first with the same RUNS):
#   teacher_q8      the default teacher re-quantized (retort export --type q8_0)            parent: smollm2
#   gemma_q8        Gemma 3 270M re-quantized                                               parent: gemma
#   f000, f005,     students cut out of the teacher (20 of 30 layers) and SFT'd on its      parent: smollm2
#   f100            answers (0/5/100% of them watermarked)
#   para100         the same on answers paraphrased by an unkeyed model first               parent: smollm2
#   f100_q4km       f100 exported for devices (GGUF Q4_K_M)                                 parent: smollm2
#   random_init     a randomly initialized student (8 layers × 256) SFT'd on the teacher's  parent: smollm2
#                   clean answers for the same budget: distilled, but no weights shared       (by distillation)
#
# Two real model families are in the model cache, so each suspect gets two tests, each candidate against the
# other family as its control: "derived from smollm2 (control gemma3-270m)" and "derived from gemma3-270m
# (control smollm2)". A declaration is a true positive when the candidate is the suspect's parent. Precision =
# TP / declarations, recall = TP / (suspect, parent) pairs. The budget is BUDGET prompts per test (default 200
# of data/provenance/prompts.jsonl, batches of 50, α 0.01, 32 greedy tokens, the CLI defaults otherwise).
#
# Environment: RUNS (as for run_radioactivity_fractions.sh), BUDGET (200), RANDOM_INIT (1), THREADS, RETORT.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_json="${1:-$here/bench/results/provenance_zoo.json}"
out_json="$(realpath -m "$out_json")"  # the work happens in RUNS
retort="${RETORT:-$here/build/retort}"
home="${RETORT_HOME:-$HOME/.cache/retort}"
runs="${RUNS:-$home/bench/radioactivity}"
budget="${BUDGET:-200}"
threads="${THREADS:-0}"
random_init="${RANDOM_INIT:-1}"
teacher="smollm2-135m-instruct"
gemma="gemma3-270m"
cd "$runs"
log() { printf '[provenance %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
for s in f000 f005 f100 para100; do
  [[ -d "run_$s/final" ]] || { echo "run_provenance_zoo: no $runs/run_$s/final — run bench/run_radioactivity_fractions.sh first" >&2; exit 2; }
done
mkdir -p zoo prov

[[ -s zoo/teacher_q8.gguf ]] || "$retort" export -m "$teacher" -o zoo/teacher_q8.gguf --type q8_0 --threads "$threads" >/dev/null
[[ -s zoo/gemma_q8.gguf ]] || "$retort" export -m "$gemma" -o zoo/gemma_q8.gguf --type q8_0 --threads "$threads" >/dev/null
[[ -s zoo/f100_q4km.gguf ]] || "$retort" export -m run_f100/final -o zoo/f100_q4km.gguf --type q4_k_m --threads "$threads" >/dev/null
if [[ "$random_init" == 1 && ! -d run_random_init/final ]]; then
  log "random_init: SFT of a random 8x256 student on the teacher's clean answers"
  rm -rf run_random_init
  "$retort" distill --teacher "$teacher" --data store_f000 --student "layers=8,hidden=256,heads=4,kv_heads=2,ffn=768,init=random" \
    --loss ce --steps 51 --batch 8 --max-seq 128 --lr 1e-3 --warmup 5 --min-lr-ratio 0.1 --weight-decay 0.01 --clip 1 \
    --seed 0 --eval-every 0 --threads "$threads" --quiet --out run_random_init
fi

# suspect name, its model, its parent
zoo=("teacher_q8 zoo/teacher_q8.gguf smollm2" "gemma_q8 zoo/gemma_q8.gguf gemma"
     "f000 run_f000/final smollm2" "f005 run_f005/final smollm2" "f100 run_f100/final smollm2"
     "para100 run_para100/final smollm2" "f100_q4km zoo/f100_q4km.gguf smollm2")
[[ "$random_init" == 1 ]] && zoo+=("random_init run_random_init/final smollm2")

for entry in "${zoo[@]}"; do
  read -r name model parent <<<"$entry"
  for cand in smollm2 gemma; do
    out="prov/${name}__${cand}.json"
    [[ -s "$out" ]] && continue
    if [[ "$cand" == smollm2 ]]; then c="$teacher"; k="$gemma"; else c="$gemma"; k="$teacher"; fi
    log "$name: derived from $cand? (control: the other family)"
    "$retort" audit provenance --suspect "$model" --candidate "$c" --controls "$k" --budget "$budget" \
      --threads "$threads" --json --out "$out" >/dev/null
  done
done

python3 - "$out_json" "$budget" "${zoo[@]}" <<'EOF'
import datetime, json, os, platform, sys
out, budget, entries = sys.argv[1], int(sys.argv[2]), [e.split() for e in sys.argv[3:]]
rows, tp, fp, fn, tn = [], 0, 0, 0, 0
for name, model, parent in entries:
    for cand in ("smollm2", "gemma"):
        r = json.load(open(f"prov/{name}__{cand}.json"))
        c = r["candidates"][0]
        derived = bool(c["derived"])
        truth = cand == parent
        tp += derived and truth; fp += derived and not truth; fn += truth and not derived; tn += not truth and not derived
        ctl = c["controls"][0]
        rows.append({"suspect": name, "model": model, "parent": parent, "candidate": cand, "truth": truth,
                     "derived": derived, "decision": c["decision"], "decided_at_look": c.get("decided_at_look"),
                     "p_holm": c.get("p_holm"), "log10_p_holm": c.get("log10_p_holm"),
                     "similarity_to_candidate": c.get("mean_similarity"), "similarity_to_control": ctl.get("mean_similarity"),
                     "candidate_closer": ctl.get("candidate_closer"), "control_closer": ctl.get("control_closer"),
                     "ties": ctl.get("ties"), "suspect_queries": r.get("queries", {}).get("suspect") if isinstance(r.get("queries"), dict) else r.get("queries")})
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
res = {"bench": "provenance_zoo", "date": datetime.date.today().isoformat(), "machine": f"{cpu}, {os.cpu_count()} cores", "command": "bash bench/run_provenance_zoo.sh",
       "budget": budget, "true_positives": tp, "false_positives": fp, "false_negatives": fn, "true_negatives": tn,
       "precision": tp / (tp + fp) if tp + fp else None, "recall": tp / (tp + fn) if tp + fn else None, "rows": rows}
with open(out + ".tmp", "w") as f:
    json.dump(res, f, indent=1)
os.replace(out + ".tmp", out)
lines = ["| suspect | parent | candidate (control: the other) | decision | look | Holm p | sim. to cand. / control | closer: cand. / control / ties |",
         "|---|---|---|---|---:|---:|---|---|"]
for r in rows:
    p = "—" if r["log10_p_holm"] is None else (f"1e{r['log10_p_holm']:.1f}" if r["log10_p_holm"] < -3 else f"{r['p_holm']:.3g}")
    sc, sk = r["similarity_to_candidate"], r["similarity_to_control"]
    lines.append(f"| {r['suspect']} | {r['parent']} | {r['candidate']} | {r['decision']} | {r['decided_at_look'] or '—'} | {p} | "
                 f"{sc:.3f} / {sk:.3f} | {r['candidate_closer']} / {r['control_closer']} / {r['ties']} |")
lines.append("")
lines.append(f"precision {res['precision']}, recall {res['recall']} (TP {tp}, FP {fp}, FN {fn}, TN {tn}); budget {budget} prompts per test")
md = os.path.splitext(out)[0] + ".md"
open(md, "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF

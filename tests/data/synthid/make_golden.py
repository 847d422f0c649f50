#!/usr/bin/env python3
"""Golden data for tests/test_synthid.cpp: Hugging Face transformers' SynthID-Text as the reference.

Everything here comes from transformers' own code:
  - SynthIDTextWatermarkLogitsProcessor.compute_g_values / compute_context_repetition_mask /
    compute_eos_token_mask on fixed token sequences (incl. repeated contexts, EOS, a table size
    that is not a power of two, and a context history small enough to evict);
  - the processor's __call__ (the tournament as transformers applies it) over a short run of
    steps with fixed float64 scores, recording the distribution it leaves for sampling;
  - generate() with SynthIDTextWatermarkingConfig on the default model's GGUF (SmolLM2-135M-
    Instruct, dequantized by transformers), a few batched sequences, plus the same prompts
    without a watermark.
The mean and weighted-mean scores follow google-deepmind/synthid-text's detector_mean.py
(transformers ships only the Bayesian detector): mean = sum(g * mask) / (m * n_unmasked);
weighted mean uses weights linspace(10, 1, m) normalised to sum m.

If tests/data/synthid/retort_generated.json exists (written by
RETORT_SYNTHID_DUMP=<path> ./retort_test_synthid), its token sequences -- text watermarked by
retort -- are scored here by transformers too and stored as "retort_scored_by_hf".

Run: python3 tests/data/synthid/make_golden.py [path/to/smollm2-135m-instruct.gguf]
(writes synthid_golden.json next to this script; ~30 min on 2 busy cores, mostly generate()).
     python3 tests/data/synthid/make_golden.py --retort-only
(adds/refreshes only "retort_scored_by_hf" in the existing golden from retort_generated.json.)
"""
import json
import os
import sys

import numpy as np
import torch
from transformers.generation.logits_process import SynthIDTextWatermarkLogitsProcessor

here = os.path.dirname(os.path.abspath(__file__))
home = os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort"))
gguf = sys.argv[1] if len(sys.argv) > 1 else os.path.join(home, "models", "smollm2-135m-instruct.gguf")


def processor(cfg):
    return SynthIDTextWatermarkLogitsProcessor(
        ngram_len=cfg["ngram_len"], keys=cfg["keys"], sampling_table_size=cfg["sampling_table_size"],
        sampling_table_seed=cfg["sampling_table_seed"], context_history_size=cfg["context_history_size"],
        device="cpu", skip_first_ngram_calls=cfg.get("skip_first_ngram_calls", False))


def mean_score(g, mask):
    m = g.shape[-1]
    return (g * mask[:, :, None]).sum(dim=(1, 2)) / (m * mask.sum(dim=1))


def weighted_mean_score(g, mask):
    m = g.shape[-1]
    w = torch.linspace(10, 1, m, dtype=torch.float64)
    w = w * (m / w.sum())
    return (g * w[None, None, :] * mask[:, :, None]).sum(dim=(1, 2)) / (m * mask.sum(dim=1))


def score_sequences(p, seqs, eos_id):
    """g-values, masks and scores of each sequence (scored alone, as the detector does)."""
    out = []
    n = p.ngram_len
    for s in seqs:
        ids = torch.tensor([s], dtype=torch.long)
        g = p.compute_g_values(ids).double()
        rep = p.compute_context_repetition_mask(ids).double()
        eos = p.compute_eos_token_mask(ids, eos_id)[:, n - 1:].double() if eos_id is not None else torch.ones_like(rep)
        mask = rep * eos
        rec = dict(tokens=s, g_values=g[0].long().tolist(), repetition_mask=rep[0].long().tolist(),
                   eos_mask=eos[0].long().tolist())
        if mask.sum() > 0:
            rec["mean"] = float(mean_score(g, mask)[0])
            rec["weighted_mean"] = float(weighted_mean_score(g, mask)[0])
        out.append(rec)
    return out


def score_retort_dump(p, eos_id):
    with open(os.path.join(here, "retort_generated.json")) as f:
        seqs = json.load(f)["sequences"]
    scored = score_sequences(p, seqs, eos_id)
    for r in scored:
        del r["g_values"]
    return dict(config="gen", eos_id=eos_id, sequences=scored)


if "--retort-only" in sys.argv:
    path = os.path.join(here, "synthid_golden.json")
    with open(path) as f:
        golden = json.load(f)
    eos_id = golden["hf_generated"]["eos_id"]
    golden["retort_scored_by_hf"] = score_retort_dump(processor(golden["configs"]["gen"]["config"]), eos_id)
    with open(path, "w") as f:
        json.dump(golden, f, separators=(",", ":"))
    print("updated", path)
    sys.exit(0)

rng = np.random.default_rng(20240501)
cfg_a = dict(ngram_len=5, keys=[654, 400, 836, 123, 340, 443, 597, 160, 57], sampling_table_size=65536,
             sampling_table_seed=0, context_history_size=1024)
cfg_b = dict(ngram_len=4, keys=[int(k) for k in rng.integers(-2**62, 2**62, size=30)], sampling_table_size=1000,
             sampling_table_seed=7, context_history_size=8)
cfg_gen = dict(ngram_len=5, keys=[int(k) for k in rng.integers(0, 2**31, size=30)], sampling_table_size=65536,
               sampling_table_seed=0, context_history_size=1024)

golden = dict(configs={})
for name, cfg in [("a", cfg_a), ("b", cfg_b), ("gen", cfg_gen)]:
    p = processor(cfg)
    tab = p.sampling_table.tolist()
    rec = dict(config=cfg, table_ones=int(sum(tab)), table_head=tab[:256])
    seqs = []
    for L in [5, 12, 40, 120]:
        seqs.append([int(x) for x in rng.integers(0, 49152, size=L)])
    # Repeated contexts: a short motif repeated, and a long random run with a repeated block.
    motif = [int(x) for x in rng.integers(0, 100, size=3)]
    seqs.append(motif * 12)
    blk = [int(x) for x in rng.integers(0, 49152, size=9)]
    seqs.append([int(x) for x in rng.integers(0, 49152, size=6)] + blk + [int(x) for x in rng.integers(0, 49152, size=20)] + blk + [7, 8, 9])
    # An EOS (id 2) in the middle and at the end.
    s = [int(x) for x in rng.integers(3, 49152, size=30)]
    s[17] = 2
    seqs.append(s)
    rec["sequences"] = score_sequences(p, seqs, eos_id=2)
    golden["configs"][name] = rec

# The tournament as transformers' processor applies it: V tokens, batch of 1, a run of steps.
# Scores are float64 log-probs of a truncated distribution (-inf outside top-k), so the reweighted
# distribution is exact to ~1e-15. The "generated" tokens include a repeated context so one step
# is left unwatermarked.
V = 64
tour = []
for name, cfg in [("a", cfg_a), ("b", dict(cfg_b, skip_first_ngram_calls=True))]:
    p = processor(cfg)
    prompt = [int(x) for x in rng.integers(0, V, size=6)]
    gen = [int(x) for x in rng.integers(0, V, size=8)]
    gen = gen + gen[:cfg["ngram_len"] - 1] + [int(x) for x in rng.integers(0, V, size=3)]
    steps = []
    for t in range(len(gen)):
        logits = torch.tensor(rng.standard_normal(V) * 2.0, dtype=torch.float64)
        k = int(rng.integers(5, V))
        thr = torch.topk(logits, k).values[-1]
        logits = torch.where(logits >= thr, logits, torch.tensor(-float("inf"), dtype=torch.float64))
        probs_in = torch.softmax(logits, dim=0)
        ids = torch.tensor([prompt + gen[:t]], dtype=torch.long)
        out = p(ids, logits[None, :].clone())
        probs_out = torch.softmax(out[0], dim=0)
        steps.append(dict(probs_in=probs_in.tolist(), probs_out=probs_out.tolist()))
    tour.append(dict(config=name, vocab=V, prompt=prompt, generated=gen, steps=steps))
golden["tournament"] = tour

# Generation by transformers with the watermark, and without, on the GGUF model.
if os.path.exists(gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer, SynthIDTextWatermarkingConfig
    d, fname = os.path.dirname(gguf), os.path.basename(gguf)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=fname, torch_dtype=torch.float32).eval()
    prompts = ["Write a short story about a lighthouse keeper.", "Explain how rain forms.",
               "Describe your favourite city and why you like it."]
    texts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
             for q in prompts]
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    wcfg = SynthIDTextWatermarkingConfig(**cfg_gen)
    n_new = 120
    runs = {}
    for label, extra in [("watermarked", dict(watermarking_config=wcfg)), ("plain", {})]:
        torch.manual_seed(11)
        with torch.no_grad():
            out = model.generate(**enc, do_sample=True, temperature=1.0, top_k=0, max_new_tokens=n_new,
                                 min_new_tokens=n_new, pad_token_id=tok.eos_token_id, **extra)
        runs[label] = [out[i, enc["input_ids"].shape[1]:].tolist() for i in range(len(prompts))]
    p = processor(cfg_gen)
    golden["hf_generated"] = dict(config="gen", eos_id=tok.eos_token_id,
                                  watermarked=score_sequences(p, runs["watermarked"], tok.eos_token_id),
                                  plain=score_sequences(p, runs["plain"], tok.eos_token_id))
    for r in golden["hf_generated"]["watermarked"] + golden["hf_generated"]["plain"]:
        del r["g_values"]  # the detector recomputes them; keep the file small
    dump = os.path.join(here, "retort_generated.json")
    if os.path.exists(dump):
        golden["retort_scored_by_hf"] = score_retort_dump(p, tok.eos_token_id)
else:
    print("model not found; skipping generation goldens:", gguf, file=sys.stderr)

with open(os.path.join(here, "synthid_golden.json"), "w") as f:
    json.dump(golden, f, separators=(",", ":"))
print("wrote", os.path.join(here, "synthid_golden.json"))

#!/usr/bin/env python3
"""External check of `retort export --format hf`: transformers loads the exported directory and
agrees with retort. Not run in CI (needs torch + transformers); numbers go in the report.

  python3 tests/data/export/verify_transformers.py [--retort build/retort] [--model smollm2-135m-instruct]
      (the model itself is exported: a GGUF, a short name, an HF dir such as tests/data/hf/tiny-gemma3,
      or a distill run's final/ or checkpoint)

Steps:
  1. retort export --model M --out TMP/hf --format hf (f32)
  2. AutoTokenizer.from_pretrained(TMP/hf): ids on the tokenizer test corpus vs the golden ids of the
     family's real tokenizer (tests/data/tokenizer/smollm2/golden.jsonl: HF tokenizers on SmolLM2's;
     gemma3/golden.jsonl: `sentencepiece` on Gemma 3's; skipped for other vocabularies) and vs
     `retort tokenize --json` on a sample of texts; apply_chat_template rendered for the report
  3. AutoModelForCausalLM.from_pretrained(TMP/hf, float32): greedy continuation and per-step
     log-probabilities vs `retort generate --temperature 0 --json --top-logprobs 5` on the same dir
     (prompts tokenized with the tokenizer's own special tokens: Gemma's BOS, as retort adds it).
  4. With --source-logits: transformers on the source too (an HF dir, or a GGUF through transformers' GGUF
     loader), eager attention, float32: max |logit difference| from the exported dir on random ids longer
     than any sliding window (0 when config.json and the weights say the same model).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "In 1969, the first humans landed on the",
    "Les enfants jouent dans le jardin pendant que",
]


def corpus():
    out = []
    with open(os.path.join(ROOT, "tests/data/tokenizer/corpus.jsonl")) as f:
        for i, line in enumerate(f):
            j = json.loads(line)
            if "text" in j:
                out.append((i, j["text"]))
    return out


def model_path(spec):
    if os.path.exists(spec):
        return spec
    home = os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort"))
    return os.path.join(home, "models", spec + ".gguf")


def source_logits_diff(src, hf_dir, vocab):
    """Max |logit| difference between transformers on the source and on the exported directory."""
    kw = {"dtype": torch.float32, "attn_implementation": "eager"}
    if os.path.isdir(src):
        ref = AutoModelForCausalLM.from_pretrained(src, **kw)
    else:
        ref = AutoModelForCausalLM.from_pretrained(os.path.dirname(src), gguf_file=os.path.basename(src), **kw)
    out = AutoModelForCausalLM.from_pretrained(hf_dir, **kw)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(0, vocab, (2, 40), generator=g)
    with torch.no_grad():
        return float((ref.eval()(ids).logits - out.eval()(ids).logits).abs().max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--retort", default=os.path.join(ROOT, "build/retort"))
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--tokens", type=int, default=24)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--source-logits", action="store_true", help="also compare with transformers on the source")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="retort_verify_hf.")
    hf_dir = os.path.join(tmp, "hf")
    subprocess.run([args.retort, "export", "--model", args.model, "--out", hf_dir, "--format", "hf",
                    "-t", str(args.threads)], check=True)
    report = {"model": args.model, "dir": hf_dir}

    # --- tokenizer
    tok = AutoTokenizer.from_pretrained(hf_dir)
    golden = {}
    with open(os.path.join(hf_dir, "config.json")) as f:
        model_type = json.load(f)["model_type"]
    family = {"gemma3_text": "gemma3"}.get(model_type, "smollm2")
    gpath = os.path.join(ROOT, "tests/data/tokenizer", family, "golden.jsonl")
    if tok.vocab_size < 1000:  # a tiny test checkpoint's own vocabulary: no golden
        gpath = ""
    if os.path.exists(gpath):
        with open(gpath) as f:
            for line in f:
                j = json.loads(line)
                golden[j["i"]] = j["ids"]
    n = same = 0
    for i, text in corpus():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if i in golden:
            n += 1
            same += ids == golden[i]
    report["tokenizer_vs_hf_golden"] = f"{same}/{n}"
    sample = corpus()[::7][:25]
    same_r = 0
    for _, text in sample:
        r = subprocess.run([args.retort, "tokenize", "--model", hf_dir, "--json", text], check=True,
                           capture_output=True, text=True)
        rid = json.loads(r.stdout)["ids"]
        same_r += rid == tok(text, add_special_tokens=False)["input_ids"]
    report["tokenizer_vs_retort"] = f"{same_r}/{len(sample)}"
    msgs = [{"role": "user", "content": "Hi there!"}]
    if tok.chat_template:
        report["chat_template_render"] = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    # --- logits
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    torch.set_num_threads(args.threads)
    max_lp_diff = 0.0
    agree = total = 0
    first_div = []
    for p in PROMPTS:
        r = subprocess.run([args.retort, "generate", "--model", hf_dir, "-p", p, "-n", str(args.tokens),
                            "--temperature", "0", "--json", "--top-logprobs", "5", "--ignore-eos",
                            "-t", str(args.threads)], check=True, capture_output=True, text=True)
        out = json.loads(r.stdout.strip().splitlines()[0])
        r_ids = [t["id"] for t in out["tokens"]]
        ids = tok(p, return_tensors="pt")["input_ids"]
        # Teacher-force retort's continuation through transformers: compare every step's distribution.
        full = torch.cat([ids, torch.tensor([r_ids[:-1]])], dim=1)
        with torch.no_grad():
            logits = model(full).logits[0, ids.shape[1] - 1:]
        lp = torch.log_softmax(logits.float(), -1)
        div = None
        for s, t in enumerate(out["tokens"]):
            hf_top = int(lp[s].argmax())
            total += 1
            agree += hf_top == t["id"]
            if hf_top != t["id"] and div is None:
                div = s
            for alt in t["top_logprobs"]:
                max_lp_diff = max(max_lp_diff, abs(float(lp[s, alt["id"]]) - alt["logprob"]))
        first_div.append(div)
        # Plain greedy in transformers too.
        with torch.no_grad():
            g = model.generate(ids, max_new_tokens=args.tokens, do_sample=False, min_new_tokens=args.tokens)
        report.setdefault("greedy_equal", []).append(g[0, ids.shape[1]:].tolist() == r_ids)
    report["argmax_agree"] = f"{agree}/{total}"
    report["max_abs_logprob_diff_top5"] = max_lp_diff
    report["first_argmax_divergence"] = first_div
    if args.source_logits:
        report["max_abs_logit_diff_vs_source"] = source_logits_diff(model_path(args.model), hf_dir,
                                                                    model.config.vocab_size)
    print(json.dumps(report, indent=1, ensure_ascii=False))
    shutil.rmtree(tmp, ignore_errors=True)
    ok = same == n and same_r == len(sample) and agree == total and max_lp_diff < 1e-3
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

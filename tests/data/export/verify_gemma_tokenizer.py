#!/usr/bin/env python3
"""External check of the Gemma 3 tokenizer that `retort export --format hf` writes (Hugging Face's
tokenizer.json form of the GGUF's SentencePiece BPE). Not run in CI (needs transformers, tokenizers,
gguf); numbers go in the report / commit message.

  /work/venv/bin/python tests/data/export/verify_gemma_tokenizer.py [--retort build/retort]
      [--model gemma3-270m] [--dir DIR]   (DIR: an existing export; else exported to a temp dir)

Checks, each against an independent reference:
  1. HF `tokenizers` loading the exported tokenizer.json: ids on the shared corpus and the Gemma cases
     (tests/data/tokenizer/gemma3/*.jsonl: Google's `sentencepiece` on the GGUF's vocabulary), with control
     tokens parsed (`ids`) and as text (`ids_raw`); invalid UTF-8 as the goldens do (valid runs encoded, each
     invalid byte its <0xXX>). For comparison, transformers' own GGUF conversion on the same cases.
  2. transformers' AutoTokenizer on the exported directory: the same ids, BOS added by the post-processor,
     decode, and apply_chat_template with the exported template vs the golden Gemma 3 renders
     (tests/data/tokenizer/chat/gemma_golden.jsonl).
  3. The merges in the file vs transformers' generate_merges over the GGUF's normal pieces and scores.
  4. `retort tokenize --model DIR` (retort reading the tokenizer.json back) on a sample of the corpus.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TOK = os.path.join(ROOT, "tests/data/tokenizer")
sys.path.insert(0, TOK)
from corpus_cases import CASES  # noqa: E402
from gen_golden import case_bytes, split_valid  # noqa: E402


def gguf_path(model):
    if os.path.exists(model):
        return model
    home = os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort"))
    return os.path.join(home, "models", model + ".gguf")


def cases():
    """(case, golden record) for the shared corpus and the Gemma cases."""
    out = []
    with open(os.path.join(TOK, "gemma3/golden.jsonl")) as f:
        for c, line in zip(CASES, f):
            out.append((c, json.loads(line)))
    with open(os.path.join(TOK, "gemma3/cases.jsonl")) as f:
        for line in f:
            g = json.loads(line)
            out.append((bytes.fromhex(g["hex"]) if "hex" in g else g["text"], g))
    return out


def encoder(backend):
    """ids of bytes b through an HF `tokenizers` backend, as the goldens treat invalid UTF-8."""
    vocab = backend.get_vocab()
    byte_id = {int(t[3:5], 16): i for t, i in vocab.items() if len(t) == 6 and t.startswith("<0x") and t[5] == ">"}

    def encode(b, parse_special):
        ids = []
        for ok, piece in split_valid(b):
            if not ok:
                ids += [byte_id[x] for x in piece]
                continue
            backend.encode_special_tokens = not parse_special
            ids += backend.encode(piece.decode("utf-8"), add_special_tokens=False).ids
            backend.encode_special_tokens = False
        return ids
    return encode


def score(encode, all_cases):
    n = same = 0
    diffs = []
    for c, g in all_cases:
        for key, special in (("ids", True), ("ids_raw", False)):
            n += 1
            got = encode(case_bytes(c), special)
            if got == g[key]:
                same += 1
            elif len(diffs) < 5:
                diffs.append(repr(c)[:50])
    return f"{same}/{n}", diffs


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--retort", default=os.path.join(ROOT, "build/retort"))
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--dir", default="")
    ap.add_argument("--skip-conversion", action="store_true", help="skip transformers' own GGUF conversion (80 s)")
    args = ap.parse_args()
    tmp = None
    d = args.dir
    if not d:
        tmp = tempfile.mkdtemp(prefix="retort_verify_gemma_tok.")
        d = os.path.join(tmp, "hf")
        subprocess.run([args.retort, "export", "--model", args.model, "--out", d, "--format", "hf"], check=True)
    report = {"dir": d}
    all_cases = cases()

    # 1. HF tokenizers on the exported tokenizer.json.
    from tokenizers import Tokenizer
    backend = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    report["tokenizers_vs_sentencepiece"], report["tokenizers_diffs"] = score(encoder(backend), all_cases)
    if not args.skip_conversion:
        from transformers import AutoTokenizer
        p = gguf_path(args.model)
        conv = AutoTokenizer.from_pretrained(os.path.dirname(p), gguf_file=os.path.basename(p)).backend_tokenizer
        report["transformers_gguf_conversion_vs_sentencepiece"], report["conversion_diffs"] = score(encoder(conv),
                                                                                                     all_cases)

    # 2. transformers on the directory.
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(d)
    report["auto_tokenizer_class"] = type(tok).__name__
    report["auto_tokenizer_vs_sentencepiece"], report["auto_tokenizer_diffs"] = score(
        encoder(tok.backend_tokenizer), all_cases)
    report["bos_added"] = tok("Hello")["input_ids"][:1] == [tok.bos_token_id] and tok.bos_token == "<bos>"
    n = same = 0
    for c, g in all_cases:
        if isinstance(c, str):
            n += 1
            same += tok.decode(g["ids"], skip_special_tokens=False) == g["decode"]
    report["decode_vs_golden"] = f"{same}/{n}"
    n = same = 0
    with open(os.path.join(TOK, "chat/gemma_golden.jsonl")) as f:
        for line in f:
            g = json.loads(line)
            if g["template"] != "gemma3" or "render" not in g or not tok.chat_template:
                continue
            n += 1
            r = tok.apply_chat_template(g["messages"], tokenize=False, add_generation_prompt=g["add_generation_prompt"])
            same += r == g["render"] and tok(r, add_special_tokens=False)["input_ids"] == g["ids"]
    report["chat_template_renders_and_ids"] = f"{same}/{n}"

    # 3. The merges vs transformers' generate_merges on the GGUF's normal pieces.
    import gguf
    from transformers.tokenization_utils_base import generate_merges
    fields = gguf.GGUFReader(gguf_path(args.model)).fields
    tokens = fields["tokenizer.ggml.tokens"].contents()
    types = fields["tokenizer.ggml.token_type"].contents()
    scores = fields["tokenizer.ggml.scores"].contents()
    normal = {t: i for i, (t, ty) in enumerate(zip(tokens, types)) if ty == 1}
    want = [list(m) for m in generate_merges(normal, {t: scores[i] for t, i in normal.items()})]
    with open(os.path.join(d, "tokenizer.json")) as f:
        have = json.load(f)["model"]["merges"]
    report["merges_equal_generate_merges"] = have == want
    report["n_merges"] = len(have)

    # 4. retort reading the tokenizer.json back.
    sample = [c for c, _ in all_cases if isinstance(c, str)][::9][:30]
    same = 0
    for c in sample:
        r = subprocess.run([args.retort, "tokenize", "--model", d, "--json", c], check=True, capture_output=True,
                           text=True)
        same += json.loads(r.stdout)["ids"] == tok(c, add_special_tokens=False)["input_ids"]
    report["retort_vs_auto_tokenizer_sample"] = f"{same}/{len(sample)}"

    print(json.dumps(report, indent=1, ensure_ascii=False))
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)
    ok = (report["tokenizers_vs_sentencepiece"].split("/")[0] == report["tokenizers_vs_sentencepiece"].split("/")[1]
          and report["merges_equal_generate_merges"])
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden data for tests/test_gemma3.cpp: Gemma 3 270M (base, GGUF Q4_K_M) through transformers.

Reference: Hugging Face transformers loading the same GGUF file retort loads (transformers
dequantizes every tensor with the `gguf` package and subtracts 1 from Gemma's norm weights, which
llama.cpp's converter stored as 1 + w), float32, eager attention, CPU.

Writes, next to this script:
  gemma3_golden.safetensors
    p{i}_input_ids    [T]      int64  prompt ids (transformers' tokenizer of the GGUF, with <bos>)
    p{i}_argmax       [T]      int64  reference argmax at every position
    p{i}_top2_gap     [T]      f32    logit(top1) - logit(top2) at every position
    p{i}_top_ids      [T, 20]  int64  reference top-20 ids
    p{i}_top_logprobs [T, 20]  f32    reference log-softmax at those ids
    g{i}_prompt_ids   [P]      int64  greedy-generation prompts
    g{i}_output_ids   [P + 32] int64  generate(do_sample=False, max_new_tokens=32, EOS off)

Usage: python3 make_gemma3_golden.py [path/to/gemma3-270m.gguf]
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GGUF = os.path.join(
    os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort")), "models", "gemma3-270m.gguf")
TOP_K = 20


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    d, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    turn = "<start_of_turn>user\nWhat is the capital of France? Answer in one word.<end_of_turn>\n<start_of_turn>model\n"
    prompts = [
        "The quick brown fox jumps over the lazy dog.",
        "In 1905, Albert Einstein published four papers that changed physics. The first explained",
        turn,
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        "Distillation is a process in which a smaller student model learns to imitate a larger "
        "teacher model by matching its output distribution over the vocabulary at every position.",
        "東京は日本の首都です。 Paris est la capitale de la France. 1, 2, 3, 5, 8, 13, 21,",
    ]
    out = {}
    for i, text in enumerate(prompts):
        ids = tok(text, return_tensors="pt").input_ids  # with <bos>
        assert 8 <= ids.shape[1] <= 60, (i, ids.shape)
        with torch.no_grad():
            logits = model(ids).logits[0].float()  # [T, V]
        lp = torch.log_softmax(logits.double(), dim=-1).float()
        top = torch.topk(logits, TOP_K, dim=-1)
        out[f"p{i}_input_ids"] = ids[0].to(torch.int64).contiguous()
        out[f"p{i}_argmax"] = logits.argmax(-1).to(torch.int64).contiguous()
        out[f"p{i}_top2_gap"] = (top.values[:, 0] - top.values[:, 1]).contiguous()
        out[f"p{i}_top_ids"] = top.indices.to(torch.int64).contiguous()
        out[f"p{i}_top_logprobs"] = torch.gather(lp, 1, top.indices).contiguous()
        print(f"prompt {i}: {ids.shape[1]} tokens")

    gen_prompts = [
        "Once upon a time, in a small village,",
        turn,
        "The three primary colors are",
    ]
    for i, text in enumerate(gen_prompts):
        ids = tok(text, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=32,
                               min_new_tokens=32, eos_token_id=None, pad_token_id=0)
        out[f"g{i}_prompt_ids"] = ids[0].to(torch.int64).contiguous()
        out[f"g{i}_output_ids"] = g[0].to(torch.int64).contiguous()
        print(f"gen {i}: {tok.decode(g[0, ids.shape[1]:])!r}")

    save_file(out, os.path.join(HERE, "gemma3_golden.safetensors"))


if __name__ == "__main__":
    main()

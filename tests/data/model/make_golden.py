#!/usr/bin/env python3
"""Golden data for tests/test_model.cpp.

Reference: Hugging Face transformers loading the SmolLM2-135M-Instruct GGUF
(transformers dequantizes with the `gguf` package and undoes llama.cpp's
q/k row permutation itself), eager attention, float32, CPU.

Writes, next to this script:
  smollm2_golden.safetensors
    p{i}_input_ids    [T]      int64  prompt token ids (transformers' tokenizer of the same GGUF)
    p{i}_argmax       [T]      int64  reference argmax at every position
    p{i}_top2_gap     [T]      f32    logit(top1) - logit(top2) at every position
    p{i}_top_ids      [T, 20]  int64  reference top-20 token ids at every position
    p{i}_top_logprobs [T, 20]  f32    reference log-softmax at those ids
    g{i}_prompt_ids   [P]      int64  greedy-generation prompts
    g{i}_output_ids   [P + N]  int64  transformers generate(do_sample=False, max_new_tokens=32)
  falcon_tiny.gguf       a tiny GGUF with general.architecture = "falcon" (unsupported arch)
  llama_missing_key.gguf a tiny llama GGUF without llama.attention.head_count (missing key)

Usage: python3 make_golden.py [path/to/smollm2-135m-instruct.gguf]
"""
import os
import sys

import numpy as np
import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, AutoTokenizer
import gguf

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_GGUF = os.path.join(
    os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort")),
    "models", "smollm2-135m-instruct.gguf")

TOP_K = 20


def write_tiny_ggufs():
    # Unsupported architecture: only the metadata matters, plus one small tensor.
    w = gguf.GGUFWriter(os.path.join(HERE, "falcon_tiny.gguf"), "falcon")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count(2)
    w.add_head_count_kv(1)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    # Llama GGUF that lacks llama.attention.head_count.
    w = gguf.GGUFWriter(os.path.join(HERE, "llama_missing_key.gguf"), "llama")
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_head_count_kv(1)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_tensor("token_embd.weight", np.zeros((16, 8), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_GGUF
    write_tiny_ggufs()
    d, name = os.path.split(path)
    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(
        d, gguf_file=name, dtype=torch.float32, attn_implementation="eager")
    model.eval()

    chat = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
        tokenize=False, add_generation_prompt=True)
    prompts = [
        "The quick brown fox jumps over the lazy dog.",
        "In 1905, Albert Einstein published four papers that changed physics. The first explained",
        chat,
        "def fibonacci(n):\n    if n < 2:\n        return n\n    return",
        "Distillation is a process in which a smaller student model learns to imitate a larger "
        "teacher model by matching its output distribution over the vocabulary at every position.",
        "1, 2, 3, 5, 8, 13, 21,",
    ]
    out = {}
    for i, text in enumerate(prompts):
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        assert 10 <= ids.shape[1] <= 60, (i, ids.shape)
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
        chat,
        "Once upon a time, in a small village,",
        tok.apply_chat_template(
            [{"role": "user", "content": "Write a haiku about the sea."}],
            tokenize=False, add_generation_prompt=True),
    ]
    for i, text in enumerate(gen_prompts):
        ids = tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        with torch.no_grad():
            g = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                               max_new_tokens=32)
        out[f"g{i}_prompt_ids"] = ids[0].to(torch.int64).contiguous()
        out[f"g{i}_output_ids"] = g[0].to(torch.int64).contiguous()
        print(f"gen {i}: {tok.decode(g[0, ids.shape[1]:])!r}")

    save_file(out, os.path.join(HERE, "smollm2_golden.safetensors"))


if __name__ == "__main__":
    main()

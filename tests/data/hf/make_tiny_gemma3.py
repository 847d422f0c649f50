#!/usr/bin/env python3
"""Make the tiny Gemma 3 Hugging Face checkpoint and its golden outputs in tests/data/hf/.

Needs torch, transformers (5.x), safetensors, tokenizers. CI does not run this: its output is
committed and read by tests/test_gemma3.cpp. Re-run from the repo root:

    python3 tests/data/hf/make_tiny_gemma3.py

Output (random weights, fixed seeds):

  tiny-gemma3/   Gemma3ForCausalLM (model_type gemma3_text), float32, tied embeddings.
                 vocab 256, hidden 64, intermediate 128, 4 layers, 4 heads, 2 KV heads,
                 head_dim 16, query_pre_attn_scalar 24 (so the query scale is not 1/sqrt(head_dim)),
                 sliding_window 6 with layer_types [sliding, sliding, full, sliding] (the 24-token
                 inputs below reach past the window), local RoPE theta 10000, global RoPE theta
                 1e6 with linear scaling factor 2 (transformers-5 "rope_parameters" per layer type),
                 every norm weight drawn random (Gemma initializes them to 0, which would hide
                 the 1 + w), gelu_pytorch_tanh.
                 tokenizer.json: byte-level BPE whose 256 tokens are the 256 bytes (as the other
                 tiny checkpoints), tokenizer_config.json, generation_config.json.
  golden/tiny-gemma3.safetensors
     input_ids   int64 [3, 24]        random ids in [0, 256), seed 1234
     logits      float32 [3, 24, 256] transformers forward (eager attention, float32)
     greedy_ids  int64 [3, 16]        16 new tokens of greedy generate() per row alone, EOS off
"""

import json
import os
import shutil

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Gemma3ForCausalLM, Gemma3TextConfig, GenerationConfig, PreTrainedTokenizerFast

HERE = os.path.dirname(os.path.abspath(__file__))


def byte_tokenizer():
    # The 256 byte-level strings as the vocabulary, no merges: one token per byte.
    table = pre_tokenizers.ByteLevel.alphabet()
    chars = sorted(table, key=lambda c: ord(c))
    vocab = {c: i for i, c in enumerate(chars)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def main():
    torch.manual_seed(0)
    cfg = Gemma3TextConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
        sliding_window=6,
        layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
        max_position_embeddings=512, rms_norm_eps=1e-6,
        rope_parameters={
            "full_attention": {"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
            "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
        },
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        final_logit_softcapping=None, attn_logit_softcapping=None,
    )
    model = Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(torch.randn_like(p) * 0.5)
            else:
                p.copy_(torch.randn_like(p) * 0.08)
    d = os.path.join(HERE, "tiny-gemma3")
    shutil.rmtree(d, ignore_errors=True)
    model.save_pretrained(d, safe_serialization=True)
    GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0).save_pretrained(d)
    byte_tokenizer().save_pretrained(d)

    # Reload exactly as a user would, eager attention, float32.
    ref = Gemma3ForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="eager").eval()
    g = torch.Generator().manual_seed(1234)
    ids = torch.randint(0, 256, (3, 24), generator=g, dtype=torch.int64)
    with torch.no_grad():
        logits = ref(ids).logits.float()
        greedy = []
        for r in range(3):
            out = ref.generate(ids[r:r + 1], attention_mask=torch.ones_like(ids[r:r + 1]), do_sample=False,
                               max_new_tokens=16, min_new_tokens=16, eos_token_id=None, pad_token_id=0)
            greedy.append(out[0, 24:])
    os.makedirs(os.path.join(HERE, "golden"), exist_ok=True)
    save_file({"input_ids": ids.contiguous(), "logits": logits.contiguous(),
               "greedy_ids": torch.stack(greedy).contiguous()},
              os.path.join(HERE, "golden", "tiny-gemma3.safetensors"))
    print(json.dumps(json.load(open(os.path.join(d, "config.json"))), indent=1)[:2000])


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Make the tiny Hugging Face checkpoints and golden outputs in tests/data/hf/.

Needs torch, transformers (5.x), safetensors, tokenizers, numpy. CI does not run
this: its output is committed and read by the C++ tests. Re-run from the repo root:

    python3 tests/data/hf/make_tiny_checkpoints.py

Output (all random weights, fixed seeds, so re-running reproduces the same bytes
up to library versions):

  tiny-llama/    LlamaForCausalLM, float32, one model.safetensors.
                 vocab 256, hidden 64, intermediate 160, 2 layers, 4 heads, 2 KV heads,
                 head_dim 16, rope_theta 10000, untied lm_head, llama3 rope scaling
                 (factor 8, low 1, high 4, original_max_position_embeddings 64),
                 max_position_embeddings 512.
                 config.json is rewritten in the transformers-4 layout (top-level
                 "rope_theta" + "rope_scaling"), as most hub checkpoints are.
  tiny-qwen2/    Qwen2ForCausalLM (q/k/v bias), bfloat16, tied embeddings, same sizes.
                 config.json left as transformers 5 writes it ("rope_parameters":
                 {"rope_theta": .., "rope_type": "default"}, no top-level rope_theta).
  tiny-mistral/  MistralForCausalLM, float16, same sizes, sharded into several
                 model-0000i-of-0000n.safetensors + model.safetensors.index.json.
                 config.json in the transformers-4 layout (top-level "rope_theta").
  Each model dir also has tokenizer.json (byte-level BPE whose 256 tokens are the
  256 bytes, no merges, no special tokens), tokenizer_config.json and
  generation_config.json.

  golden/<model>.safetensors   (beside the model dirs so transformers never sees it)
     input_ids   int64 [3, 24]       random ids in [0, 256), seed 1234
     logits      float32 [3, 24, 256] transformers forward of input_ids (no padding,
                                      no attention mask, positions 0..23), the model
                                      loaded from the dir above with dtype=float32
                                      (bf16/f16 weights upcast exactly) and
                                      attn_implementation="eager"
     greedy_ids  int64 [3, 16]       the 16 NEW tokens of greedy generate() for each
                                      row run alone (batch of 1, no padding), EOS
                                      disabled so every row has exactly 16 tokens
  golden/half_cases.safetensors   float32 -> fp16 / bf16 rounding oracle (torch's casts,
                 round to nearest even): f32 [N] inputs (edge cases, ties, subnormals,
                 overflow, inf/NaN, random values and random bit patterns), f16 [N] and
                 bf16 [N] the torch conversions of f32.
  manifest.json  for the safetensors/checkpoint tests: per model, the files and, per
                 tensor, dtype, shape, file, the first 8 values as float32 and the
                 float64 sum of all values (after conversion to float32).
"""

import json
import os
import shutil

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (GenerationConfig, LlamaConfig, LlamaForCausalLM, MistralConfig,
                          MistralForCausalLM, PreTrainedTokenizerFast, Qwen2Config,
                          Qwen2ForCausalLM)

HERE = os.path.dirname(os.path.abspath(__file__))

COMMON = dict(vocab_size=256, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-5,
              bos_token_id=None, eos_token_id=None, pad_token_id=None)


def init_weights(model, seed):
    # Large enough that logits differ clearly between positions and tokens.
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "embed_tokens" in name:
                std = 0.5
            elif name.endswith("norm.weight") or "layernorm" in name:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
                continue
            else:
                std = 0.2
            p.copy_(std * torch.randn(p.shape, generator=g))


def byte_tokenizer():
    # The 256 byte-level symbols in byte order: token id == byte value.
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    byte_to_char = {}
    # GPT-2's bytes_to_unicode: printable bytes map to themselves, the rest to 256+n.
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + \
        list(range(0xAE, 0xFF + 1))
    n = 0
    for b in range(256):
        if b in printable:
            byte_to_char[b] = chr(b)
        else:
            byte_to_char[b] = chr(256 + n)
            n += 1
    assert set(byte_to_char.values()) == set(alphabet)
    vocab = {byte_to_char[b]: b for b in range(256)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def to_legacy_rope(dir_):
    # transformers 4.x layout: top-level rope_theta (+ rope_scaling when not default).
    path = os.path.join(dir_, "config.json")
    with open(path) as f:
        cfg = json.load(f)
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rp
    with open(path, "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")


def make(name, cls, config, dtype, seed, legacy_rope, max_shard_size=None):
    out = os.path.join(HERE, name)
    shutil.rmtree(out, ignore_errors=True)
    torch.manual_seed(seed)
    model = cls(config).to(torch.float32)
    init_weights(model, seed)
    model = model.to(dtype)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(out, **kwargs)
    byte_tokenizer().save_pretrained(out)
    tc_path = os.path.join(out, "tokenizer_config.json")
    with open(tc_path) as f:
        tc = json.load(f)
    # Loadable by transformers 4 too, which has no "TokenizersBackend".
    tc["tokenizer_class"] = "PreTrainedTokenizerFast"
    tc["model_max_length"] = 512
    tc.pop("backend", None)
    with open(tc_path, "w") as f:
        json.dump(tc, f, indent=2, sort_keys=True)
        f.write("\n")
    if legacy_rope:
        to_legacy_rope(out)
    for junk in ("special_tokens_map.json", "chat_template.jinja"):
        if os.path.exists(os.path.join(out, junk)):
            os.remove(os.path.join(out, junk))

    # Golden from what is on disk, upcast to float32.
    ref = cls.from_pretrained(out, dtype=torch.float32, attn_implementation="eager").eval()
    assert ref.config.rope_parameters == model.config.rope_parameters, name
    g = torch.Generator().manual_seed(1234)
    input_ids = torch.randint(0, 256, (3, 24), generator=g, dtype=torch.int64)
    with torch.no_grad():
        logits = ref(input_ids=input_ids).logits.float().contiguous()
        gen_cfg = GenerationConfig(do_sample=False, max_new_tokens=16, min_new_tokens=0,
                                   eos_token_id=None, pad_token_id=0, bos_token_id=None)
        greedy = []
        for r in range(3):
            seq = ref.generate(input_ids[r:r + 1], generation_config=gen_cfg,
                               attention_mask=torch.ones(1, 24, dtype=torch.int64))
            new = seq[0, 24:]
            assert new.numel() == 16, (name, new.shape)
            greedy.append(new)
        greedy_ids = torch.stack(greedy).contiguous()
        # Sanity: the first greedy token is the argmax of the last forward position.
        assert torch.equal(greedy_ids[:, 0], logits[:, -1].argmax(-1)), name
    print(f"{name}: logits std {logits.std().item():.3f}, "
          f"max|logit| {logits.abs().max().item():.3f}, greedy row0 {greedy_ids[0].tolist()}")
    os.makedirs(os.path.join(HERE, "golden"), exist_ok=True)
    save_file({"input_ids": input_ids, "logits": logits, "greedy_ids": greedy_ids},
              os.path.join(HERE, "golden", name + ".safetensors"),
              metadata={"model": name, "producer": "make_tiny_checkpoints.py"})

    # Manifest for the C++ parser tests, read back with the safetensors package.
    files = sorted(f for f in os.listdir(out) if f.endswith(".safetensors"))
    tensors = {}
    for fname in files:
        with safe_open(os.path.join(out, fname), framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                v = t.to(torch.float32).flatten()
                tensors[key] = {
                    "file": fname,
                    "dtype": {torch.float32: "F32", torch.float16: "F16",
                              torch.bfloat16: "BF16"}[t.dtype],
                    "shape": list(t.shape),
                    "first8": [float(x) for x in v[:8].tolist()],
                    "sum": float(v.to(torch.float64).sum().item()),
                }
    return {"files": files, "sharded": len(files) > 1, "tensors": tensors}


def half_cases():
    e = [0.0, -0.0, 1.0, -1.0, 65504.0, 65505.0, 65519.99, 65520.0, -65520.0, 65536.0, 1e6,
         float("inf"), float("-inf"), float("nan"), 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -25,
         2.0 ** -26, 2.0 ** -25 + 2.0 ** -40, 2.0 ** -14, 2.0 ** -14 - 2.0 ** -25,
         2.0 ** -14 - 2.0 ** -24, 1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8,
         1 + 3 * 2.0 ** -8, 1 + 2.0 ** -8 + 2.0 ** -20, 3.4028234663852886e38, 1e-45, -1e-45,
         1.1754943508222875e-38, 0.1, -0.3, 1 / 3.0]
    g = torch.Generator().manual_seed(99)
    n_rand = 4096 - len(e)
    mags = torch.randn(n_rand // 2, generator=g, dtype=torch.float64) * \
        10.0 ** (torch.rand(n_rand // 2, generator=g, dtype=torch.float64) * 15 - 9)
    bits = torch.randint(-2 ** 31, 2 ** 31, (n_rand - n_rand // 2,), generator=g,
                         dtype=torch.int64).to(torch.int32).view(torch.float32)
    f32 = torch.cat([torch.tensor(e, dtype=torch.float32), mags.to(torch.float32), bits])
    save_file({"f32": f32, "f16": f32.to(torch.float16), "bf16": f32.to(torch.bfloat16)},
              os.path.join(HERE, "golden", "half_cases.safetensors"))


def main():
    llama = LlamaConfig(**COMMON, max_position_embeddings=512, rope_theta=10000.0,
                        rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                      "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                      "original_max_position_embeddings": 64},
                        tie_word_embeddings=False)
    qwen2 = Qwen2Config(**COMMON, max_position_embeddings=512, rope_theta=10000.0,
                        tie_word_embeddings=True)
    mistral = MistralConfig(**COMMON, max_position_embeddings=512, rope_theta=10000.0,
                            sliding_window=None, tie_word_embeddings=False)
    manifest = {
        "tiny-llama": make("tiny-llama", LlamaForCausalLM, llama, torch.float32, 1,
                           legacy_rope=True),
        "tiny-qwen2": make("tiny-qwen2", Qwen2ForCausalLM, qwen2, torch.bfloat16, 2,
                           legacy_rope=False),
        "tiny-mistral": make("tiny-mistral", MistralForCausalLM, mistral, torch.float16, 3,
                             legacy_rope=True, max_shard_size="100KB"),
    }
    assert manifest["tiny-mistral"]["sharded"]
    half_cases()
    with open(os.path.join(HERE, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()

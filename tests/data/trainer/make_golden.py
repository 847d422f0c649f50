#!/usr/bin/env python3
"""Golden data for tests/test_trainer.cpp: 10 training steps recomputed in float64 by PyTorch +
transformers, independently of retort's C++ trainer (the llm.c habit).

Needs torch, transformers (5.x), safetensors, numpy. CI does not run this: its output is
committed. Re-run from the repo root:

    python3 tests/data/trainer/make_golden.py

Writes, under tests/data/trainer/:
  student/      the initial student as a Hugging Face dir (LlamaForCausalLM, float32, tied
                embeddings; vocab 256 — the byte-level tokenizer of tests/data/hf/tiny-llama,
                hidden 32, 2 layers, 4 heads, 2 KV heads, head_dim 8, FFN 64)
  store/        a signal store in retort's format (manifest.json + shard-00000.safetensors, see
                src/retort/distill/signal_store.h), written here with the `safetensors` package:
                14 samples of random prompt/completion tokens with a random "teacher"'s top-4
                log-probs and tail mass per completion token
  golden.safetensors
     loss       F64 [10]   per-step loss (mean sparse forward KL over the step's scored rows)
     grad_norm  F64 [10]   global gradient L2 norm before clipping
     lr         F64 [10]   learning rate of each step
     w.<name>   F64 [...]  every parameter after the 10 steps

The run (must equal TrainerConfig in test_trainer.cpp): loss fkl on the sparse signal
(k + 1 outcomes: the teacher's top-k and one tail bucket, student tail = 1 - sum of its
probabilities on the top-k ids), temperature 1; 10 steps, batch 3, accum 2 (6 sequences a
step, loss = sum of row losses / the step's scored rows), max_seq 12 (longer samples cut),
lr 1e-2 with 3 warmup steps then cosine to 0.1 * lr, AdamW betas (0.9, 0.95), eps 1e-8,
weight decay 0.1 on 2-D params only, clip 1.0 (torch.nn.utils.clip_grad_norm_), seed 5.
Sample order: per epoch e a Fisher-Yates shuffle driven by splitmix64 seeded with
seed ^ (e * 0x9e3779b97f4a7c15) (retort/distill/trainer.cpp sample_at).
"""

import hashlib
import json
import math
import os
import shutil

import numpy as np
import torch
from safetensors.numpy import save_file as np_save_file
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForCausalLM

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", "..", ".."))
TOKENIZER = os.path.join(ROOT, "tests", "data", "hf", "tiny-llama", "tokenizer.json")

M64 = (1 << 64) - 1

# The run.
STEPS, BATCH, ACCUM, MAX_SEQ = 10, 3, 2, 12
LR, WARMUP, MIN_LR_RATIO = 1e-2, 3, 0.1
BETAS, EPS, WD, CLIP, SEED = (0.9, 0.95), 1e-8, 0.1, 1.0, 5
K, N_SAMPLES, V = 4, 14, 256


def splitmix64(state):
    state = (state + 0x9E3779B97F4A7C15) & M64
    z = state
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return state, z ^ (z >> 31)


def permutation(seed, n, epoch):
    perm = list(range(n))
    state = (seed ^ ((epoch * 0x9E3779B97F4A7C15) & M64)) & M64
    for i in range(n - 1, 0, -1):
        state, r = splitmix64(state)
        j = r % (i + 1)
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def sample_at(seed, n, g):
    return permutation(seed, n, g // n)[g % n]


def lr_at(step):
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    progress = min(1.0, (step - WARMUP) / max(1, STEPS - WARMUP))
    return LR * (MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress)))


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def tokenizer_hash(tok_json):
    """retort's Tokenizer::hash(): FNV-1a 64 over pre-tokenizer name, token texts, merges, added tokens."""
    h = 0xCBF29CE484222325

    def feed(b):
        nonlocal h
        for c in b:
            h ^= c
            h = (h * 0x100000001B3) & M64

    vocab = tok_json["model"]["vocab"]
    texts = [None] * len(vocab)
    for t, i in vocab.items():
        texts[i] = t
    assert not tok_json["model"].get("merges") and not tok_json["added_tokens"]
    feed(b"pre:gpt2\n")
    for t in texts:
        feed(t.encode("utf-8") + b"\0")
    feed(b"merges\n")
    return "%016x" % h


def make_student():
    cfg = LlamaConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, head_dim=8, rms_norm_eps=1e-5, rope_theta=10000.0,
                      max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
                      pad_token_id=None, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    g = torch.Generator().manual_seed(42)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    out = os.path.join(HERE, "student")
    shutil.rmtree(out, ignore_errors=True)
    model.save_pretrained(out, safe_serialization=True)
    shutil.copy(TOKENIZER, os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"model_max_length": 128, "tokenizer_class": "PreTrainedTokenizerFast"}, f, indent=2)
    return cfg, model


def make_store(tok_hash):
    rng = np.random.default_rng(9)
    tokens, offsets, prompt_lens, ids = [], [0], [], []
    tok_lp, topk_ids, topk_lp, tails = [], [], [], []
    for s in range(N_SAMPLES):
        p_len = int(rng.integers(2, 6))
        c_len = int(rng.integers(3, 11))  # p_len + c_len up to 15 > MAX_SEQ: some are cut
        seq = [int(x) for x in rng.integers(0, V, size=p_len)]
        for _ in range(c_len):
            # A peaked random teacher distribution over the 256 bytes.
            logits = rng.normal(0, 2.5, size=V)
            lp = logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max()
            order = np.argsort(-lp, kind="stable")[:K]
            tok = int(rng.choice(V, p=np.exp(lp) / np.exp(lp).sum()))
            tok_lp.append(lp[tok])
            topk_ids.append(order.astype(np.int32))
            topk_lp.append(lp[order])
            tails.append(max(0.0, 1.0 - float(np.exp(lp[order]).sum())))
            seq.append(tok)
        tokens += seq
        offsets.append(len(tokens))
        prompt_lens.append(p_len)
        ids.append(s)
    out = os.path.join(HERE, "store")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    shard = os.path.join(out, "shard-00000.safetensors")
    np_save_file({
        "tokens": np.array(tokens, dtype=np.int32),
        "sample_offsets": np.array(offsets, dtype=np.int64),
        "prompt_lengths": np.array(prompt_lens, dtype=np.int32),
        "sample_ids": np.array(ids, dtype=np.int64),
        "token_logprob": np.array(tok_lp, dtype=np.float32),
        "topk_ids": np.stack(topk_ids).astype(np.int32),
        "topk_logprobs": np.stack(topk_lp).astype(np.float32),
        "tail_mass": np.array(tails, dtype=np.float32),
    }, shard)
    data = open(shard, "rb").read()
    manifest = {
        "format": "retort-signal-store", "version": 1, "mode": "score",
        "teacher": {"spec": "random numpy teacher (make_golden.py)", "path": "", "format": "none", "sha256": "",
                    "hparams": {}},
        "tokenizer_hash": tok_hash, "n_vocab": V, "k": K,
        "generation": {"temperature": 1.0, "seed": 9}, "watermark": None,
        "prompts": {"path": "make_golden.py", "sha256": "", "count": N_SAMPLES},
        "shards": [{"file": "shard-00000.safetensors", "samples": N_SAMPLES, "tokens": len(tokens),
                    "scored": len(tails), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}],
        "complete": True,
    }
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    # Read back as the trainer sees it (float32 signal, widened to float64 for the reference).
    samples = []
    c = 0
    for s in range(N_SAMPLES):
        seq = tokens[offsets[s]:offsets[s + 1]]
        n_c = len(seq) - prompt_lens[s]
        samples.append(dict(tokens=seq, prompt_len=prompt_lens[s],
                            topk_ids=np.stack(topk_ids[c:c + n_c]).astype(np.int64),
                            topk_lp=np.array(topk_lp[c:c + n_c], dtype=np.float32).astype(np.float64),
                            tail=np.array(tails[c:c + n_c], dtype=np.float32).astype(np.float64)))
        c += n_c
    return samples


def sparse_fkl_rows(logits, topk_ids, topk_lp, tail):
    """KL(p || q) on k+1 outcomes per row; logits [N, V] float64."""
    logq_all = torch.log_softmax(logits, -1)
    logq_k = logq_all.gather(1, topk_ids)                                   # [N, k]
    q_tail = (1 - logq_k.exp().sum(-1)).clamp_min(1e-300)                    # [N]
    p_k = topk_lp.exp()
    kl = (p_k * (topk_lp - logq_k)).sum(-1)
    tail_term = torch.where(tail > 0, tail * (torch.log(tail.clamp_min(1e-300)) - torch.log(q_tail)),
                            torch.zeros_like(tail))
    return kl + tail_term


def main():
    tok_json = json.load(open(TOKENIZER))
    tok_hash = tokenizer_hash(tok_json)
    assert tok_hash == "520221f54bc31a6e", tok_hash  # `retort inspect tests/data/hf/tiny-llama`
    cfg, model32 = make_student()
    samples = make_store(tok_hash)
    model = LlamaForCausalLM(cfg).to(torch.float64)
    model.load_state_dict({k: v.to(torch.float64) for k, v in model32.state_dict().items()})
    model.train()
    params = dict(model.named_parameters())  # tied: lm_head shares embed_tokens, listed once
    decay = [p for n, p in params.items() if p.dim() >= 2]
    no_decay = [p for n, p in params.items() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=LR, betas=BETAS, eps=EPS, foreach=False)
    losses, norms, lrs = [], [], []
    per_step = BATCH * ACCUM
    for step in range(STEPS):
        lr = lr_at(step)
        for group in opt.param_groups:
            group["lr"] = lr
        micro = []
        n_rows = 0
        for a in range(ACCUM):
            seqs = [samples[sample_at(SEED, N_SAMPLES, step * per_step + a * BATCH + b)] for b in range(BATCH)]
            micro.append(seqs)
            for s in seqs:
                n_rows += min(len(s["tokens"]), MAX_SEQ) - s["prompt_len"]
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for seqs in micro:
            T = max(min(len(s["tokens"]), MAX_SEQ) - 1 for s in seqs)
            inp = torch.zeros((len(seqs), T), dtype=torch.long)
            rows, tids, tlp, tails = [], [], [], []
            for b, s in enumerate(seqs):
                seq = s["tokens"][:MAX_SEQ]
                inp[b, :len(seq) - 1] = torch.tensor(seq[:-1])
                for j in range(s["prompt_len"], len(seq)):
                    c = j - s["prompt_len"]
                    rows.append(b * T + j - 1)
                    tids.append(s["topk_ids"][c])
                    tlp.append(s["topk_lp"][c])
                    tails.append(s["tail"][c])
            logits = model(input_ids=inp).logits.reshape(-1, V)[torch.tensor(rows)]
            per_row = sparse_fkl_rows(logits, torch.tensor(np.stack(tids)), torch.tensor(np.stack(tlp)),
                                      torch.tensor(np.array(tails)))
            loss = per_row.sum() / n_rows
            loss.backward()
            total += float(per_row.detach().sum())
        norm = torch.nn.utils.clip_grad_norm_(list(params.values()), CLIP)
        opt.step()
        losses.append(total / n_rows)
        norms.append(float(norm))
        lrs.append(lr)
        print(f"step {step + 1}: loss {losses[-1]:.6f} grad_norm {norms[-1]:.4f} lr {lr:.5f} rows {n_rows}")
    out = {"loss": torch.tensor(losses, dtype=torch.float64), "grad_norm": torch.tensor(norms, dtype=torch.float64),
           "lr": torch.tensor(lrs, dtype=torch.float64)}
    for n, p in params.items():
        out["w." + n] = p.detach().clone().contiguous()
    save_file(out, os.path.join(HERE, "golden.safetensors"))


if __name__ == "__main__":
    main()

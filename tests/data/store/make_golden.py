#!/usr/bin/env python3
"""Write a small signal store with Python's `safetensors` package (an independent writer),
exactly as docs/formats.md ("Signal store") describes it, plus expected.json with the same
numbers as plain JSON. tests/test_signal_store.cpp opens golden/ with SignalStore and checks
every value against expected.json.

    python3 tests/data/store/make_golden.py      # rewrites tests/data/store/golden/ and expected.json
"""
import hashlib
import json
import os

import numpy as np
from safetensors.numpy import save_file

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "golden")
N_VOCAB = 64
K = 3


def log_softmax(x):
    m = x.max()
    return x - (m + np.log(np.exp(x - m).sum()))


def make_sample(rng, sample_id, n_prompt, n_completion):
    tokens = rng.integers(0, N_VOCAB, size=n_prompt + n_completion).astype(np.int32)
    token_lp, top_ids, top_lp, tail = [], [], [], []
    for j in range(n_completion):
        lp = log_softmax(rng.normal(size=N_VOCAB) * 2.0)
        order = sorted(range(N_VOCAB), key=lambda v: (-lp[v], v))[:K]
        top_ids.append(order)
        top_lp.append([lp[v] for v in order])
        token_lp.append(lp[tokens[n_prompt + j]])
        tail.append(max(0.0, 1.0 - sum(np.exp(lp[v]) for v in order)))
    return dict(id=sample_id, tokens=tokens, prompt_len=n_prompt,
                token_logprob=np.array(token_lp, np.float32),
                topk_ids=np.array(top_ids, np.int32).reshape(n_completion, K),
                topk_logprobs=np.array(top_lp, np.float32).reshape(n_completion, K),
                tail_mass=np.array(tail, np.float32))


def write_shard(path, samples):
    offsets = np.cumsum([0] + [len(s["tokens"]) for s in samples]).astype(np.int64)
    tensors = {
        "tokens": np.concatenate([s["tokens"] for s in samples]).astype(np.int32),
        "sample_offsets": offsets,
        "prompt_lengths": np.array([s["prompt_len"] for s in samples], np.int32),
        "sample_ids": np.array([s["id"] for s in samples], np.int64),
        "token_logprob": np.concatenate([s["token_logprob"] for s in samples]),
        "topk_ids": np.concatenate([s["topk_ids"] for s in samples]),
        "topk_logprobs": np.concatenate([s["topk_logprobs"] for s in samples]),
        "tail_mass": np.concatenate([s["tail_mass"] for s in samples]),
    }
    save_file(tensors, path, metadata={"format": "retort-signal-shard", "version": "1", "k": str(K)})
    data = open(path, "rb").read()
    return {"file": os.path.basename(path), "samples": len(samples), "tokens": int(offsets[-1]),
            "scored": int(len(tensors["tail_mass"])), "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


def main():
    rng = np.random.default_rng(20240607)
    os.makedirs(OUT, exist_ok=True)
    # Two shards; sample ids out of order and with gaps, as a resumed capture leaves them.
    # One sample has an empty completion (allowed by the format).
    shard_samples = [
        [make_sample(rng, 0, 4, 3), make_sample(rng, 3, 2, 5), make_sample(rng, 1, 5, 0)],
        [make_sample(rng, 7, 3, 2), make_sample(rng, 2, 1, 4)],
    ]
    shards = [write_shard(os.path.join(OUT, "shard-%05d.safetensors" % i), ss) for i, ss in enumerate(shard_samples)]
    manifest = {
        "format": "retort-signal-store",
        "version": 1,
        "mode": "generate",
        "teacher": {"spec": "python-golden", "path": "/nonexistent/teacher.gguf", "format": "gguf",
                    "sha256": "0" * 64, "hparams": {}},
        "tokenizer_hash": "0123456789abcdef",
        "n_vocab": N_VOCAB,
        "k": K,
        "generation": {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "min_p": 0.0, "max_tokens": 5,
                       "samples_per_prompt": 1, "seed": 0, "chat": False, "system": ""},
        "watermark": None,
        "prompts": {"path": "/nonexistent/prompts.jsonl", "sha256": "0" * 64, "count": 8},
        "shards": shards,
        "complete": False,
    }
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")
    expected = {"n_vocab": N_VOCAB, "k": K, "samples": [
        {"id": s["id"], "tokens": s["tokens"].tolist(), "prompt_len": s["prompt_len"],
         "token_logprob": s["token_logprob"].tolist(), "topk_ids": s["topk_ids"].reshape(-1).tolist(),
         "topk_logprobs": s["topk_logprobs"].reshape(-1).tolist(), "tail_mass": s["tail_mass"].tolist()}
        for ss in shard_samples for s in ss]}
    with open(os.path.join(HERE, "expected.json"), "w") as f:
        json.dump(expected, f)
        f.write("\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Golden data for tests/test_sampling.cpp: Hugging Face's logits warpers as the reference.

For a few random logit vectors and parameter sets, applies transformers'
TemperatureLogitsWarper -> TopKLogitsWarper -> TopPLogitsWarper -> MinPLogitsWarper
(the order transformers' generate() uses), then softmax, in float64, and records the
kept tokens with their renormalised probabilities.

Run: python3 tests/data/decode/make_sampling_golden.py  (writes sampling_golden.json here)
"""
import json
import os

import numpy as np
import torch
from transformers.generation.logits_process import (
    MinPLogitsWarper,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

V = 300
rng = np.random.default_rng(1234)
# float32 logits: a flat-ish one, a peaky one, one with heavy tail structure.
logit_sets = [
    (rng.standard_normal(V) * 1.0).astype(np.float32),
    (rng.standard_normal(V) * 4.0).astype(np.float32),
    (rng.gumbel(size=V) * 2.5 - 3.0).astype(np.float32),
]
param_sets = [
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=0.7, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=1.3, top_k=0, top_p=1.0, min_p=0.0),
    dict(temperature=1.0, top_k=10, top_p=1.0, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.9, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=0.37, min_p=0.0),
    dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05),
    dict(temperature=0.8, top_k=40, top_p=0.95, min_p=0.0),
    dict(temperature=1.5, top_k=50, top_p=0.8, min_p=0.02),
    dict(temperature=0.6, top_k=0, top_p=0.7, min_p=0.1),
    dict(temperature=2.0, top_k=200, top_p=0.99, min_p=0.001),
]


def warp(logits, p):
    scores = torch.tensor(logits, dtype=torch.float64)[None, :]
    ids = torch.zeros((1, 1), dtype=torch.long)
    if p["temperature"] != 1.0:
        scores = TemperatureLogitsWarper(p["temperature"])(ids, scores)
    if p["top_k"] > 0:
        scores = TopKLogitsWarper(p["top_k"])(ids, scores)
    if p["top_p"] < 1.0:
        scores = TopPLogitsWarper(p["top_p"])(ids, scores)
    if p["min_p"] > 0.0:
        scores = MinPLogitsWarper(p["min_p"])(ids, scores)
    probs = torch.softmax(scores, dim=-1)[0]
    kept = torch.nonzero(torch.isfinite(scores[0])).flatten().tolist()
    return [[int(i), float(probs[i])] for i in kept]


cases = []
for li, logits in enumerate(logit_sets):
    for p in param_sets:
        cases.append(dict(logits_index=li, params=p, kept=warp(logits, p)))

out = dict(
    generator="make_sampling_golden.py (transformers %s, torch %s)" % (__import__("transformers").__version__,
                                                                     torch.__version__),
    n_vocab=V,
    logits=[[float(x) for x in l] for l in logit_sets],
    cases=cases,
)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sampling_golden.json")
with open(path, "w") as f:
    json.dump(out, f, separators=(",", ":"))
print("wrote", path, sum(len(c["kept"]) for c in cases), "kept entries")

#!/usr/bin/env python3
"""Golden data for tests/test_generate.cpp: greedy generation by Hugging Face transformers.

Loads the default model's GGUF (SmolLM2-135M-Instruct, dequantized to float32 by transformers'
GGUF loader) and runs generate(do_sample=False) on fixed prompts. Records the prompt ids, the
generated ids, the decoded completion, and the float64 log-softmax of the raw logits at each
step (the chosen token's and the top 5).

Run: python3 tests/data/decode/make_golden.py [path/to/smollm2-135m-instruct.gguf]
(writes generate_golden.json next to this script)
"""
import json
import os
import sys

import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

home = os.environ.get("RETORT_HOME", os.path.expanduser("~/.cache/retort"))
gguf = sys.argv[1] if len(sys.argv) > 1 else os.path.join(home, "models", "smollm2-135m-instruct.gguf")
d, name = os.path.dirname(gguf), os.path.basename(gguf)
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(d, gguf_file=name)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=name, torch_dtype=torch.float32)
model.eval()

N_NEW = 24
raw_prompts = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Once upon a time, in a land far away, there lived a",
    "1, 2, 3, 4, 5,",
]
chats = [
    [{"role": "user", "content": "What is the boiling point of water in Celsius? Answer briefly."}],
    [{"role": "system", "content": "You are a terse assistant."}, {"role": "user", "content": "Name three colors."}],
]

cases = []
prompts = [("raw", p, tok(p, add_special_tokens=False)["input_ids"]) for p in raw_prompts]
for c in chats:
    text = tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
    prompts.append(("chat", text, tok(text, add_special_tokens=False)["input_ids"]))

for kind, text, ids in prompts:
    inp = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(inp, attention_mask=torch.ones_like(inp), do_sample=False, max_new_tokens=N_NEW,
                             return_dict_in_generate=True, output_logits=True, pad_token_id=tok.eos_token_id)
    gen = out.sequences[0, len(ids):].tolist()
    steps = []
    for t, logits in enumerate(out.logits):
        lp = torch.log_softmax(logits[0].double(), dim=-1)
        top = torch.topk(lp, 5)
        steps.append(dict(token=gen[t], logprob=float(lp[gen[t]]),
                          top=[[int(i), float(v)] for v, i in zip(top.values, top.indices)]))
    cases.append(dict(kind=kind, prompt_text=text, prompt_ids=ids, generated_ids=gen,
                      completion=tok.decode(gen, skip_special_tokens=False), steps=steps,
                      ended_with_eos=bool(gen and gen[-1] == tok.eos_token_id)))
    print(kind, repr(text[-40:]), "->", repr(tok.decode(gen)))

out = dict(generator="make_golden.py (transformers %s, torch %s)" % (transformers.__version__, torch.__version__),
           model=name, max_new_tokens=N_NEW, eos_token_id=tok.eos_token_id, cases=cases)
path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "generate_golden.json")
with open(path, "w") as f:
    json.dump(out, f, indent=1)
print("wrote", path)

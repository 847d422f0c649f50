# bench/train_step_torch.py — the plain-PyTorch anchor for bench_train (mode step): the same
# distillation step a user would write with transformers + torch on the CPU.
#
#   python3 bench/train_step_torch.py [--threads N] [--batch 8] [--seq 256] [--steps 3] [--k 20] [--prompt 32]
#
# Student LlamaForCausalLM of the quickstart shape (vocab 49152, hidden 256, 8 layers, 4 heads,
# 2 KV heads, FFN 768, tied), float32, random init. Loss: forward KL on the sparse teacher
# signal (top-k log-probs + tail bucket, the definition of retort's losses.h) over the
# completion positions, from full [B, T, V] logits as plain PyTorch computes them; backward,
# clip_grad_norm_(1.0), AdamW(lr=1e-3, betas=(0.9, 0.95)). One warm-up step, then `steps` timed.
# Prints one JSON object (train_tok_s counts all B×T input tokens, as bench_train does).
import argparse, json, resource, time
import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
for name, default in [("threads", 0), ("batch", 8), ("seq", 256), ("steps", 3), ("k", 20), ("prompt", 32)]:
    ap.add_argument(f"--{name}", type=int, default=default)
a = ap.parse_args()
if a.threads > 0:
    torch.set_num_threads(a.threads)
torch.manual_seed(0)
V, B, T, K, P = 49152, a.batch, a.seq, a.k, a.prompt
cfg = LlamaConfig(hidden_size=256, intermediate_size=768, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, vocab_size=V, rope_theta=100000.0, rms_norm_eps=1e-5,
                  tie_word_embeddings=True, max_position_embeddings=8192, attn_implementation="sdpa")
student = LlamaForCausalLM(cfg).float().train()
opt = torch.optim.AdamW(student.parameters(), lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)

# Fixed synthetic batch and teacher signal: k distinct ids per scored position, log-probs of a
# peaked distribution with 0.9 of its mass in the top k, tail 0.1 (as bench_train makes them).
x = torch.randint(3, V, (B, T))
C = T - P  # scored positions per row: hidden state at P-1+j predicts token P+j
ids = torch.stack([torch.randperm(V)[:K] for _ in range(B * C)]).view(B, C, K)
w = 1.0 / torch.arange(1, K + 1, dtype=torch.float64)
lp_k = torch.log(0.9 * w / w.sum()).float().expand(B, C, K)
tail = torch.full((B, C), 0.1)

def step():
    logits = student(x).logits[:, P - 1:T - 1].float()             # [B, C, V]
    logq = logits.log_softmax(-1)
    lq_k = logq.gather(-1, ids)                                     # [B, C, K]
    lq_tail = torch.log1p(-lq_k.exp().sum(-1).clamp(max=1 - 1e-7))  # log(1 − Σ_K q)
    a_ = torch.cat([lp_k, tail.clamp_min(1e-8).log().unsqueeze(-1)], -1)
    lp = a_ - a_.logsumexp(-1, keepdim=True)                        # teacher over k + 1 outcomes
    lq = torch.cat([lq_k, lq_tail.unsqueeze(-1)], -1)
    loss = (lp.exp() * (lp - lq)).sum(-1).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()

t = time.time(); step(); warm = time.time() - t
t = time.time()
for _ in range(a.steps):
    loss = step()
secs = time.time() - t
print(json.dumps({
    "runtime": "pytorch", "torch": torch.__version__, "threads": torch.get_num_threads(), "batch": B, "seq": T,
    "k": K, "loss": "fkl (sparse top-k + tail)", "dtype": "f32",
    "student_params_M": sum(p.numel() for p in student.parameters()) / 1e6,
    "warmup_step_s": warm, "steps_timed": a.steps, "step_s": secs / a.steps,
    "train_tok_s": a.steps * B * T / secs, "scored_tok_s": a.steps * B * C / secs, "last_loss": loss,
    "peak_rss_MiB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
}))

// The Llama family's cached forward pass on the CPU kernels (Llama 2/3, SmolLM2, Mistral, Qwen2), and
// the family's tensors. The libtorch modules that train it are in llama.cpp; this is what inference runs.
//
//   x = embed(tokens)
//   per layer:  q|k|v = rms_norm(x) [Wq; Wk; Wv] (+ b);  q, k = rope(q, k)
//               x += o_proj(softmax(q·kᵀ / sqrt(D)) v)                 (grouped-query attention)
//               x += down(silu(gate(h)) * up(h)),  h = rms_norm(x)
//   hidden = rms_norm(x)
#include <algorithm>
#include <vector>

#include "retort/model/cpu_model.h"

namespace retort {

namespace {

using T = LayerTensor;

void llama_rows(const ModelHParams& hp, const CpuWeights& w, CpuRopeTables& rope, const CachedRows& rows, int64_t r0,
                int64_t r1, const KvView& cache, float* out) {
  const int64_t n = r1 - r0, E = hp.n_embd, H = hp.n_head, Hkv = hp.n_head_kv, D = hp.head_dim;
  const int64_t F = hp.n_ff, nq = (H + 2 * Hkv) * D;
  // Scratch, float32: x [n, E] residual stream, hn [n, E] normed, qkv [n, nq] q | k | v, att [n, H*D],
  // gu [n, 2F] gate | up, act [n, F]; cos, sin [n, D/2] at each row's position.
  std::vector<float> x(size_t(n * E)), hn(size_t(n * E)), qkv(size_t(n * nq)), att(size_t(n * H * D));
  std::vector<float> gu(size_t(n * 2 * F)), act(size_t(n * F)), cos, sin;
  const int64_t* slot = rows.slot.data() + r0;
  const int64_t* pos = rows.pos.data() + r0;

  embed_rows(w.embedding, rows.tok.data() + r0, n, E, x.data());
  rope.global.gather(pos, n, cos, sin);
  const cpu::AttentionShape shape{H, Hkv, D, float(hp.query_scale())};

  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const CpuLayerWeights& L = w.layers[size_t(l)];
    // x += o_proj(attn(rms_norm(x)))
    cpu::rms_norm(x.data(), L.v(T::kAttnNorm), n, E, hp.rms_eps, hn.data());
    const cpu::WeightRef w_qkv[3] = {L.m(T::kQ), L.m(T::kK), L.m(T::kV)};
    cpu::matmul_wt(hn.data(), n, E, w_qkv, 3, qkv.data(), nq, /*accumulate=*/false);
    if (const float* bq = L.v(T::kQBias)) {
      const float *bk = L.v(T::kKBias), *bv = L.v(T::kVBias);
      for (int64_t i = 0; i < n; ++i) {
        float* r = qkv.data() + i * nq;
        for (int64_t c = 0; c < H * D; ++c) r[c] += bq[c];
        for (int64_t c = 0; c < Hkv * D; ++c) r[H * D + c] += bk[c], r[(H + Hkv) * D + c] += bv[c];
      }
    }
    cpu::rope_rows(qkv.data(), n, H, Hkv, D, cos.data(), sin.data());
    cpu::attention_rows(qkv.data(), n, shape, cache.k[size_t(l)], cache.v[size_t(l)], cache.bf16, cache.max_len, slot, pos,
                        att.data());
    cpu::matmul_wt(att.data(), n, H * D, &L.m(T::kO), 1, x.data(), E, /*accumulate=*/true);
    // x += down(silu(gate(h)) * up(h)), h = rms_norm(x)
    cpu::rms_norm(x.data(), L.v(T::kFfnNorm), n, E, hp.rms_eps, hn.data());
    const cpu::WeightRef w_gu[2] = {L.m(T::kGate), L.m(T::kUp)};
    cpu::matmul_wt(hn.data(), n, E, w_gu, 2, gu.data(), 2 * F, /*accumulate=*/false);
    cpu::silu_mul(gu.data(), n, F, act.data());
    cpu::matmul_wt(act.data(), n, F, &L.m(T::kDown), 1, x.data(), E, /*accumulate=*/true);
  }
  cpu::rms_norm(x.data(), w.final_norm, n, E, hp.rms_eps, out);
}

}  // namespace

const FamilyInfo& llama_family_info() {
  static const FamilyInfo info{
      "llama",
      llama_rows,
      {
          {T::kAttnNorm, "input_layernorm.weight", "attn_norm.weight"},
          {T::kQ, "self_attn.q_proj.weight", "attn_q.weight"},
          {T::kK, "self_attn.k_proj.weight", "attn_k.weight"},
          {T::kV, "self_attn.v_proj.weight", "attn_v.weight"},
          {T::kQBias, "self_attn.q_proj.bias", "attn_q.bias"},
          {T::kKBias, "self_attn.k_proj.bias", "attn_k.bias"},
          {T::kVBias, "self_attn.v_proj.bias", "attn_v.bias"},
          {T::kO, "self_attn.o_proj.weight", "attn_output.weight"},
          {T::kFfnNorm, "post_attention_layernorm.weight", "ffn_norm.weight"},
          {T::kGate, "mlp.gate_proj.weight", "ffn_gate.weight"},
          {T::kUp, "mlp.up_proj.weight", "ffn_up.weight"},
          {T::kDown, "mlp.down_proj.weight", "ffn_down.weight"},
      },
      /*norm_plus_one=*/false,
      /*gguf_permuted_archs=*/{"llama", "mistral"},  // convert_hf_to_gguf.py LlamaModel.permute; not qwen2
      /*scaled_embedding=*/false,
  };
  return info;
}

}  // namespace retort

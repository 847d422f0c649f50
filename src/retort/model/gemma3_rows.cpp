// Gemma 3's cached forward pass on the CPU kernels, and the family's tensors. The libtorch modules that
// train it are in gemma3.cpp; this is what inference runs.
//
//   x = embed(tokens) * sqrt(n_embd)
//   per layer l:
//     q|k|v = rms_norm_in(x) [Wq; Wk; Wv];  q, k = rms_norm_q(q), rms_norm_k(k) per head
//     q, k = rope(q, k)        local layers: theta_local, no scaling; global layers: theta + scaling
//     x += rms_norm_post_attn(o_proj(softmax(q·kᵀ * query_scale) v))   local: last sliding_window keys
//     x += rms_norm_post_ffn(down(gelu_tanh(gate(h)) * up(h))),  h = rms_norm_pre_ffn(x)
//   hidden = rms_norm_final(x)
// Every norm multiplies by (1 + w): CpuWeights carries 1 + w.
#include <cmath>
#include <vector>

#include "retort/model/cpu_model.h"
#include "retort/util/parallel.h"

namespace retort {

namespace {

using T = LayerTensor;

// x[i] += y[i], i < n.
void add_into(float* x, const float* y, int64_t n) {
  parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) x[i] += y[i];
  });
}

void gemma3_rows(const ModelHParams& hp, const CpuWeights& w, CpuRopeTables& rope, const CachedRows& rows, int64_t r0,
                 int64_t r1, const KvView& cache, float* out) {
  const int64_t n = r1 - r0, E = hp.n_embd, H = hp.n_head, Hkv = hp.n_head_kv, D = hp.head_dim;
  const int64_t F = hp.n_ff, nq = (H + 2 * Hkv) * D;
  const double eps = hp.rms_eps;
  // Scratch, float32: x [n, E] residual stream, hn [n, E] normed input of a block, y [n, E] a block's
  // output, qkv [n, nq] q | k | v, att [n, H*D], gu [n, 2F] gate | up, act [n, F].
  std::vector<float> x(size_t(n * E)), hn(size_t(n * E)), y(size_t(n * E)), qkv(size_t(n * nq));
  std::vector<float> att(size_t(n * H * D)), gu(size_t(n * 2 * F)), act(size_t(n * F));
  const int64_t* slot = rows.slot.data() + r0;
  const int64_t* pos = rows.pos.data() + r0;

  embed_rows(w.embedding, rows.tok.data() + r0, n, E, x.data());
  {
    // transformers multiplies in the embedding's dtype by sqrt(n_embd) cast to it: a bf16 model rounds
    // the scale and the product to bf16, a float32 one computes in float32.
    float s = float(std::sqrt(double(E)));
    if (w.bf16) s = cpu::bf16_to_f32(cpu::f32_to_bf16(s));
    for (int64_t i = 0; i < n * E; ++i) x[size_t(i)] = w.bf16 ? cpu::bf16_to_f32(cpu::f32_to_bf16(x[size_t(i)] * s))
                                                            : x[size_t(i)] * s;
  }
  std::vector<float> cos[2], sin[2];  // [0] global, [1] local
  rope.global.gather(pos, n, cos[0], sin[0]);
  rope.local.gather(pos, n, cos[1], sin[1]);

  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const CpuLayerWeights& L = w.layers[size_t(l)];
    const int kind = hp.is_local(l) ? 1 : 0;
    // x += post_attn_norm(o_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v))), q|k|v = in_norm(x) W
    cpu::rms_norm(x.data(), L.v(T::kAttnNorm), n, E, eps, hn.data());
    const cpu::WeightRef w_qkv[3] = {L.m(T::kQ), L.m(T::kK), L.m(T::kV)};
    cpu::matmul_wt(hn.data(), n, E, w_qkv, 3, qkv.data(), nq, /*accumulate=*/false);
    const float *wq = L.v(T::kQNorm), *wk = L.v(T::kKNorm);
    parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        float* r = qkv.data() + i * nq;
        cpu::rms_norm(r, wq, H, D, eps, r);
        cpu::rms_norm(r + H * D, wk, Hkv, D, eps, r + H * D);
      }
    });
    cpu::rope_rows(qkv.data(), n, H, Hkv, D, cos[kind].data(), sin[kind].data());
    const cpu::AttentionShape shape{H, Hkv, D, float(hp.query_scale()), kind == 1 ? hp.sliding_window : 0};
    cpu::attention_rows(qkv.data(), n, shape, cache.k[size_t(l)], cache.v[size_t(l)], cache.bf16, cache.max_len, slot, pos,
                        att.data());
    cpu::matmul_wt(att.data(), n, H * D, &L.m(T::kO), 1, y.data(), E, /*accumulate=*/false);
    cpu::rms_norm(y.data(), L.v(T::kPostAttnNorm), n, E, eps, y.data());
    add_into(x.data(), y.data(), n * E);
    // x += post_ffn_norm(down(gelu_tanh(gate(h)) * up(h))), h = pre_ffn_norm(x)
    cpu::rms_norm(x.data(), L.v(T::kFfnNorm), n, E, eps, hn.data());
    const cpu::WeightRef w_gu[2] = {L.m(T::kGate), L.m(T::kUp)};
    cpu::matmul_wt(hn.data(), n, E, w_gu, 2, gu.data(), 2 * F, /*accumulate=*/false);
    cpu::gelu_tanh_mul(gu.data(), n, F, act.data());
    cpu::matmul_wt(act.data(), n, F, &L.m(T::kDown), 1, y.data(), E, /*accumulate=*/false);
    cpu::rms_norm(y.data(), L.v(T::kPostFfnNorm), n, E, eps, y.data());
    add_into(x.data(), y.data(), n * E);
  }
  cpu::rms_norm(x.data(), w.final_norm, n, E, eps, out);
}

}  // namespace

const FamilyInfo& gemma3_family_info() {
  static const FamilyInfo info{
      "gemma3",
      gemma3_rows,
      {
          {T::kAttnNorm, "input_layernorm.weight", "attn_norm.weight"},
          {T::kQ, "self_attn.q_proj.weight", "attn_q.weight"},
          {T::kK, "self_attn.k_proj.weight", "attn_k.weight"},
          {T::kV, "self_attn.v_proj.weight", "attn_v.weight"},
          {T::kO, "self_attn.o_proj.weight", "attn_output.weight"},
          {T::kQNorm, "self_attn.q_norm.weight", "attn_q_norm.weight"},
          {T::kKNorm, "self_attn.k_norm.weight", "attn_k_norm.weight"},
          {T::kPostAttnNorm, "post_attention_layernorm.weight", "post_attention_norm.weight"},
          {T::kFfnNorm, "pre_feedforward_layernorm.weight", "ffn_norm.weight"},
          {T::kPostFfnNorm, "post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
          {T::kGate, "mlp.gate_proj.weight", "ffn_gate.weight"},
          {T::kUp, "mlp.up_proj.weight", "ffn_up.weight"},
          {T::kDown, "mlp.down_proj.weight", "ffn_down.weight"},
      },
      /*norm_plus_one=*/true,  // llama.cpp's converter (Gemma3Model.modify_tensors) stores 1 + w
      /*gguf_permuted_archs=*/{},
      /*scaled_embedding=*/true,
  };
  return info;
}

}  // namespace retort

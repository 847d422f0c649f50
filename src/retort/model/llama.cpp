#include "retort/model/llama.h"

#include <cmath>

#include "retort/model/cpu_kernels.h"
#include "retort/util/error.h"

namespace retort {

// ---------------------------------------------------------------------------------------------
// Building blocks

RmsNormImpl::RmsNormImpl(int64_t n, double eps_) : eps(eps_) { weight = register_parameter("weight", new_param({n})); }

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto r = torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return xf * r * weight.to(torch::kFloat32);
}

AttentionImpl::AttentionImpl(const ModelHParams& hp) {
  const int64_t q = hp.n_head * hp.head_dim, kv = hp.n_head_kv * hp.head_dim;
  q_proj = register_module("q_proj", Proj(hp.n_embd, q, hp.qkv_bias));
  k_proj = register_module("k_proj", Proj(hp.n_embd, kv, hp.qkv_bias));
  v_proj = register_module("v_proj", Proj(hp.n_embd, kv, hp.qkv_bias));
  o_proj = register_module("o_proj", Proj(q, hp.n_embd, false));
}

MlpImpl::MlpImpl(const ModelHParams& hp) {
  gate_proj = register_module("gate_proj", Proj(hp.n_embd, hp.n_ff, false));
  up_proj = register_module("up_proj", Proj(hp.n_embd, hp.n_ff, false));
  down_proj = register_module("down_proj", Proj(hp.n_ff, hp.n_embd, false));
}

torch::Tensor MlpImpl::forward(const torch::Tensor& x) { return down_proj(torch::silu(gate_proj(x)) * up_proj(x)); }

DecoderLayerImpl::DecoderLayerImpl(const ModelHParams& hp) {
  input_layernorm = register_module("input_layernorm", RmsNorm(hp.n_embd, hp.rms_eps));
  self_attn = register_module("self_attn", Attention(hp));
  post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(hp.n_embd, hp.rms_eps));
  mlp = register_module("mlp", Mlp(hp));
}

LlamaBackboneImpl::LlamaBackboneImpl(const ModelHParams& hp) {
  // A submodule "embed_tokens" with one parameter "weight", as in transformers.
  auto embed = std::make_shared<torch::nn::Module>();
  embed_tokens = embed->register_parameter("weight", new_param({hp.n_vocab, hp.n_embd}));
  register_module("embed_tokens", embed);
  auto list = torch::nn::ModuleList();
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    layers.push_back(DecoderLayer(hp));
    list->push_back(layers.back());
  }
  register_module("layers", list);
  norm = register_module("norm", RmsNorm(hp.n_embd, hp.rms_eps));
}

// ---------------------------------------------------------------------------------------------
// The model

LlamaModelImpl::LlamaModelImpl(const ModelHParams& hp)
    : CausalLMImpl(hp), rope_(rope_inv_freq(hp.rope_theta, hp.head_dim, hp.rope_scaling, hp.rope_freq_factors)) {
  TORCH_CHECK(hp.n_layer > 0 && hp.n_head > 0 && hp.n_head_kv > 0 && hp.n_head % hp.n_head_kv == 0,
              "invalid hparams");
  model = register_module("model", LlamaBackbone(hp));
  if (!hp.tie_embeddings) lm_head = register_module("lm_head", Proj(hp.n_embd, hp.n_vocab, false));
}

CausalLM make_llama_family(const ModelHParams& hp) { return CausalLM(std::make_shared<LlamaModelImpl>(hp)); }

namespace {

const char* const kRole[][2] = {
    {"input_layernorm.weight", "attn_norm.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},   {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},   {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},        {"mlp.down_proj.weight", "ffn_down.weight"},
};

}  // namespace

std::string LlamaModelImpl::gguf_name(const std::string& hf) const {
  return gguf_name_by_role(hf, kRole, sizeof(kRole) / sizeof(kRole[0]));
}

int64_t LlamaModelImpl::gguf_permuted_heads(const std::string& name) const {
  // llama.cpp permutes q/k of these architectures (convert_hf_to_gguf.py, LlamaModel.permute).
  if (hp_.arch != "llama" && hp_.arch != "mistral") return 0;
  if (name.find("self_attn.q_proj.") != std::string::npos) return hp_.n_head;
  if (name.find("self_attn.k_proj.") != std::string::npos) return hp_.n_head_kv;
  return 0;
}

torch::Tensor LlamaModelImpl::forward_hidden(const torch::Tensor& tokens) {
  check(dense(), "forward_hidden: this model was loaded for inference only (GGUF blocks, no dense weights)");
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  const auto dev = device();
  auto tok = tokens.to(dev, torch::kInt64);

  auto [cos_t, sin_t] = rope_.get(T, dev, std::min<int64_t>(hp_.max_position, 8192));
  auto cos = cos_t.narrow(0, 0, T).view({1, 1, T, D / 2});
  auto sin = sin_t.narrow(0, 0, T).view({1, 1, T, D / 2});
  auto mask = causal_mask(T, 0, dev);

  auto x = torch::embedding(model->embed_tokens, tok).to(torch::kFloat32);  // [B, T, E]
  for (auto& layer : model->layers) {
    auto& at = layer->self_attn;
    auto hn = layer->input_layernorm(x);
    auto q = apply_rope(at->q_proj(hn).view({B, T, H, D}).transpose(1, 2), cos, sin);
    auto k = apply_rope(at->k_proj(hn).view({B, T, Hkv, D}).transpose(1, 2), cos, sin);
    auto v = at->v_proj(hn).view({B, T, Hkv, D}).transpose(1, 2);
    x = x + at->o_proj(attend_torch(q, k, v, mask, hp_.query_scale()));
    x = x + layer->mlp(layer->post_attention_layernorm(x));
  }
  return model->norm(x);
}

torch::Tensor LlamaModelImpl::cached_hidden_torch(const torch::Tensor& tokens, const CachedRows& rows, KvCache& cache,
                                                  bool last_only) {
  const int64_t B = rows.B, T = rows.T, H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  const auto dev = device();
  TorchCachedBatch batch(rows, dev);
  int64_t max_pos = 0;
  for (int64_t b = 0; b < B; ++b) max_pos = std::max(max_pos, rows.old_len[size_t(b)] + T);
  auto [cos_t, sin_t] = rope_.get(max_pos, dev, std::min<int64_t>(hp_.max_position, 8192));
  auto cos = cos_t.index_select(0, batch.pos.flatten()).view({B, 1, T, D / 2});
  auto sin = sin_t.index_select(0, batch.pos.flatten()).view({B, 1, T, D / 2});
  auto mask = batch.mask(0);

  auto x = torch::embedding(model->embed_tokens, tokens).to(torch::kFloat32);  // [B, T, E]
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    auto& layer = model->layers[size_t(l)];
    auto& at = layer->self_attn;
    auto hn = layer->input_layernorm(x);
    auto q = apply_rope(at->q_proj(hn).view({B, T, H, D}).transpose(1, 2), cos, sin);
    auto k = apply_rope(at->k_proj(hn).view({B, T, Hkv, D}).transpose(1, 2), cos, sin);
    auto v = at->v_proj(hn).view({B, T, Hkv, D});
    auto [kc, vc] = batch.store(cache.k[size_t(l)], cache.v[size_t(l)], k.transpose(1, 2), v);
    x = x + at->o_proj(attend_torch(q, kc, vc, mask, hp_.query_scale()));
    x = x + layer->mlp(layer->post_attention_layernorm(x));
  }
  return model->norm(last_only ? batch.last_rows(x) : x);
}

std::vector<const torch::Tensor*> LlamaModelImpl::kernel_matrices() const {
  std::vector<const torch::Tensor*> out;
  for (const auto& layer : model->layers) {
    const auto& at = layer->self_attn;
    for (const auto* w : {&at->q_proj->weight, &at->k_proj->weight, &at->v_proj->weight, &at->o_proj->weight,
                          &layer->mlp->gate_proj->weight, &layer->mlp->up_proj->weight, &layer->mlp->down_proj->weight})
      out.push_back(w);
  }
  out.push_back(&output_weight());
  return out;
}

// Rows [r0, r1) of the batch through the CPU kernels: the same arithmetic for a prompt's tokens at
// once (prefill) and for one token per sequence (decode).
void LlamaModelImpl::cached_hidden_cpu(const CachedRows& rows, int64_t r0, int64_t r1, KvCache& cache, float* out) {
  const int64_t n = r1 - r0, E = hp_.n_embd, H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  const int64_t F = hp_.n_ff, nq = (H + 2 * Hkv) * D;
  prepare_kernel_pass(n);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  // Scratch, float32: x [n, E] residual stream, hn [n, E] normed, qkv [n, nq] q | k | v, att [n, H*D],
  // gu [n, 2F] gate | up, act [n, F]; cos, sin [n, D/2] at each row's position.
  auto x = torch::empty({n, E}, f32), hn = torch::empty({n, E}, f32), qkv = torch::empty({n, nq}, f32);
  auto att = torch::empty({n, H * D}, f32), gu = torch::empty({n, 2 * F}, f32), act = torch::empty({n, F}, f32);
  float *xp = x.data_ptr<float>(), *hp = hn.data_ptr<float>(), *qp = qkv.data_ptr<float>();
  float *ap = att.data_ptr<float>(), *gp = gu.data_ptr<float>(), *actp = act.data_ptr<float>();
  const int64_t* slot = rows.slot.data() + r0;
  const int64_t* pos = rows.pos.data() + r0;

  embed_rows_cpu(rows.tok.data() + r0, n, xp);
  int64_t max_pos = 0;
  for (int64_t i = 0; i < n; ++i) max_pos = std::max(max_pos, pos[i]);
  auto [cos_t, sin_t] = rope_.get(max_pos + 1, torch::kCPU, std::min<int64_t>(hp_.max_position, 8192));
  auto pos_t = torch::from_blob(const_cast<int64_t*>(pos), {n}, torch::kInt64);
  auto cos = cos_t.index_select(0, pos_t).contiguous(), sin = sin_t.index_select(0, pos_t).contiguous();
  const cpu::AttentionShape shape{H, Hkv, D, float(hp_.query_scale())};

  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    auto& layer = model->layers[size_t(l)];
    auto& at = layer->self_attn;
    auto& mlp = layer->mlp;
    // x += o_proj(attn(rms_norm(x)))
    cpu::rms_norm(xp, f32_vector(layer->input_layernorm->weight), n, E, hp_.rms_eps, hp);
    const cpu::WeightRef w_qkv[3] = {kernel_weight(at->q_proj->weight), kernel_weight(at->k_proj->weight),
                                     kernel_weight(at->v_proj->weight)};
    cpu::matmul_wt(hp, n, E, w_qkv, 3, qp, nq, /*accumulate=*/false);
    if (hp_.qkv_bias) {
      const float* bq = f32_vector(at->q_proj->bias);
      const float* bk = f32_vector(at->k_proj->bias);
      const float* bv = f32_vector(at->v_proj->bias);
      for (int64_t i = 0; i < n; ++i) {
        float* r = qp + i * nq;
        for (int64_t c = 0; c < H * D; ++c) r[c] += bq[c];
        for (int64_t c = 0; c < Hkv * D; ++c) r[H * D + c] += bk[c], r[(H + Hkv) * D + c] += bv[c];
      }
    }
    cpu::rope_rows(qp, n, H, Hkv, D, cos.data_ptr<float>(), sin.data_ptr<float>());
    auto& ck = cache.k[size_t(l)];
    cpu::attention_rows(qp, n, shape, ck.data_ptr(), cache.v[size_t(l)].data_ptr(), ck.scalar_type() == torch::kBFloat16,
                        cache.max_len(), slot, pos, ap);
    const cpu::WeightRef w_o = kernel_weight(at->o_proj->weight);
    cpu::matmul_wt(ap, n, H * D, &w_o, 1, xp, E, /*accumulate=*/true);
    // x += down(silu(gate(h)) * up(h)), h = rms_norm(x)
    cpu::rms_norm(xp, f32_vector(layer->post_attention_layernorm->weight), n, E, hp_.rms_eps, hp);
    const cpu::WeightRef w_gu[2] = {kernel_weight(mlp->gate_proj->weight), kernel_weight(mlp->up_proj->weight)};
    cpu::matmul_wt(hp, n, E, w_gu, 2, gp, 2 * F, /*accumulate=*/false);
    cpu::silu_mul(gp, n, F, actp);
    const cpu::WeightRef w_down = kernel_weight(mlp->down_proj->weight);
    cpu::matmul_wt(actp, n, F, &w_down, 1, xp, E, /*accumulate=*/true);
  }
  cpu::rms_norm(xp, f32_vector(model->norm->weight), n, E, hp_.rms_eps, out);
}

}  // namespace retort

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

}  // namespace retort

#include "retort/model/gemma3.h"

#include <cmath>

#include "retort/model/cpu_kernels.h"
#include "retort/util/error.h"

namespace retort {

// ---------------------------------------------------------------------------------------------
// Building blocks

Gemma3RmsNormImpl::Gemma3RmsNormImpl(int64_t n, double eps_) : eps(eps_) {
  weight = register_parameter("weight", new_param({n}));
}

torch::Tensor Gemma3RmsNormImpl::forward(const torch::Tensor& x) {
  auto xf = x.to(torch::kFloat32);
  auto normed = xf * torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return normed * (1.0 + weight.to(torch::kFloat32));
}

Gemma3AttentionImpl::Gemma3AttentionImpl(const ModelHParams& hp) {
  const int64_t q = hp.n_head * hp.head_dim, kv = hp.n_head_kv * hp.head_dim;
  q_proj = register_module("q_proj", Proj(hp.n_embd, q, false));
  k_proj = register_module("k_proj", Proj(hp.n_embd, kv, false));
  v_proj = register_module("v_proj", Proj(hp.n_embd, kv, false));
  o_proj = register_module("o_proj", Proj(q, hp.n_embd, false));
  q_norm = register_module("q_norm", Gemma3RmsNorm(hp.head_dim, hp.rms_eps));
  k_norm = register_module("k_norm", Gemma3RmsNorm(hp.head_dim, hp.rms_eps));
}

Gemma3MlpImpl::Gemma3MlpImpl(const ModelHParams& hp) {
  gate_proj = register_module("gate_proj", Proj(hp.n_embd, hp.n_ff, false));
  up_proj = register_module("up_proj", Proj(hp.n_embd, hp.n_ff, false));
  down_proj = register_module("down_proj", Proj(hp.n_ff, hp.n_embd, false));
}

torch::Tensor Gemma3MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::gelu(gate_proj(x), "tanh") * up_proj(x));
}

Gemma3LayerImpl::Gemma3LayerImpl(const ModelHParams& hp) {
  // Registration order = transformers' module order, so named_parameters() lists them alike.
  self_attn = register_module("self_attn", Gemma3Attention(hp));
  mlp = register_module("mlp", Gemma3Mlp(hp));
  input_layernorm = register_module("input_layernorm", Gemma3RmsNorm(hp.n_embd, hp.rms_eps));
  post_attention_layernorm = register_module("post_attention_layernorm", Gemma3RmsNorm(hp.n_embd, hp.rms_eps));
  pre_feedforward_layernorm = register_module("pre_feedforward_layernorm", Gemma3RmsNorm(hp.n_embd, hp.rms_eps));
  post_feedforward_layernorm = register_module("post_feedforward_layernorm", Gemma3RmsNorm(hp.n_embd, hp.rms_eps));
}

Gemma3BackboneImpl::Gemma3BackboneImpl(const ModelHParams& hp) {
  auto embed = std::make_shared<torch::nn::Module>();
  embed_tokens = embed->register_parameter("weight", new_param({hp.n_vocab, hp.n_embd}));
  register_module("embed_tokens", embed);
  auto list = torch::nn::ModuleList();
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    layers.push_back(Gemma3Layer(hp));
    list->push_back(layers.back());
  }
  register_module("layers", list);
  norm = register_module("norm", Gemma3RmsNorm(hp.n_embd, hp.rms_eps));
}

// ---------------------------------------------------------------------------------------------
// The model

Gemma3ModelImpl::Gemma3ModelImpl(const ModelHParams& hp)
    : CausalLMImpl(hp),
      rope_global_(rope_inv_freq(hp.rope_theta, hp.head_dim, hp.rope_scaling, hp.rope_freq_factors)),
      rope_local_(rope_inv_freq(hp.rope_theta_local, hp.head_dim, RopeScaling{}, {})) {
  TORCH_CHECK(hp.arch == "gemma3", "Gemma3ModelImpl: arch ", hp.arch);
  TORCH_CHECK(hp.n_layer > 0 && hp.n_head > 0 && hp.n_head_kv > 0 && hp.n_head % hp.n_head_kv == 0, "invalid hparams");
  check(!hp.qkv_bias, "gemma3: q/k/v biases are not part of Gemma 3");
  model = register_module("model", Gemma3Backbone(hp));
  if (!hp.tie_embeddings) lm_head = register_module("lm_head", Proj(hp.n_embd, hp.n_vocab, false));
}

CausalLM make_gemma3(const ModelHParams& hp) { return CausalLM(std::make_shared<Gemma3ModelImpl>(hp)); }

float Gemma3ModelImpl::embed_scale() const { return float(std::sqrt(double(hp_.n_embd))); }

torch::Tensor Gemma3ModelImpl::layer_torch(int64_t l, const torch::Tensor& x, const TorchPass& pass) {
  const int64_t B = x.size(0), T = x.size(1), H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  auto& layer = model->layers[size_t(l)];
  auto& at = layer->self_attn;
  const int kind = hp_.is_local(l) ? 1 : 0;
  auto h = layer->input_layernorm(x);
  auto q = at->q_norm(at->q_proj(h).view({B, T, H, D})).transpose(1, 2);      // [B, H, T, D]
  auto k = at->k_norm(at->k_proj(h).view({B, T, Hkv, D})).transpose(1, 2);    // [B, Hkv, T, D]
  auto v = at->v_proj(h).view({B, T, Hkv, D});
  q = apply_rope(q, pass.cos[kind], pass.sin[kind]);
  k = apply_rope(k, pass.cos[kind], pass.sin[kind]);
  auto [kk, vv] = pass.kv(l, k.transpose(1, 2), v);
  auto a = at->o_proj(attend_torch(q, kk, vv, pass.mask[kind], hp_.query_scale()));
  auto y = x + layer->post_attention_layernorm(a);
  return y + layer->post_feedforward_layernorm(layer->mlp(layer->pre_feedforward_layernorm(y)));
}

torch::Tensor Gemma3ModelImpl::forward_hidden(const torch::Tensor& tokens) {
  check(dense(), "forward_hidden: this model was loaded for inference only (GGUF blocks, no dense weights)");
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  const int64_t T = tokens.size(1), D = hp_.head_dim;
  const auto dev = device();
  auto tok = tokens.to(dev, torch::kInt64);
  TorchPass pass;
  RopeTable* tables[2] = {&rope_global_, &rope_local_};
  for (int kind = 0; kind < 2; ++kind) {
    auto [c, s] = tables[kind]->get(T, dev, std::min<int64_t>(hp_.max_position, 8192));
    pass.cos[kind] = c.narrow(0, 0, T).view({1, 1, T, D / 2});
    pass.sin[kind] = s.narrow(0, 0, T).view({1, 1, T, D / 2});
    pass.mask[kind] = causal_mask(T, kind == 1 ? hp_.sliding_window : 0, dev);
  }
  pass.kv = [](int64_t, const torch::Tensor& k, const torch::Tensor& v) {
    return std::make_pair(k.transpose(1, 2), v.transpose(1, 2));
  };
  const auto& e = model->embed_tokens;
  auto x = (torch::embedding(e, tok) * torch::tensor(embed_scale(), e.options().device(dev))).to(torch::kFloat32);
  for (int64_t l = 0; l < hp_.n_layer; ++l) x = layer_torch(l, x, pass);
  return model->norm(x);
}

torch::Tensor Gemma3ModelImpl::cached_hidden_torch(const torch::Tensor& tokens, const CachedRows& rows, KvCache& cache,
                                                   bool last_only) {
  const int64_t B = rows.B, T = rows.T, D = hp_.head_dim;
  const auto dev = device();
  TorchCachedBatch batch(rows, dev);
  int64_t max_pos = 0;
  for (int64_t b = 0; b < B; ++b) max_pos = std::max(max_pos, rows.old_len[size_t(b)] + T);
  TorchPass pass;
  RopeTable* tables[2] = {&rope_global_, &rope_local_};
  for (int kind = 0; kind < 2; ++kind) {
    auto [c, s] = tables[kind]->get(max_pos, dev, std::min<int64_t>(hp_.max_position, 8192));
    pass.cos[kind] = c.index_select(0, batch.pos.flatten()).view({B, 1, T, D / 2});
    pass.sin[kind] = s.index_select(0, batch.pos.flatten()).view({B, 1, T, D / 2});
    pass.mask[kind] = batch.mask(kind == 1 ? hp_.sliding_window : 0);
  }
  pass.kv = [&](int64_t l, const torch::Tensor& k, const torch::Tensor& v) {
    return batch.store(cache.k[size_t(l)], cache.v[size_t(l)], k, v);
  };
  const auto& e = model->embed_tokens;
  auto x = (torch::embedding(e, tokens) * torch::tensor(embed_scale(), e.options().device(dev))).to(torch::kFloat32);
  for (int64_t l = 0; l < hp_.n_layer; ++l) x = layer_torch(l, x, pass);
  return model->norm(last_only ? batch.last_rows(x) : x);
}

}  // namespace retort

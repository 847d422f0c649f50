#include "retort/model/gemma3.h"

#include <cmath>

#include <ATen/Parallel.h>

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

namespace {

const char* const kRole[][2] = {
    {"input_layernorm.weight", "attn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},
    {"self_attn.k_proj.weight", "attn_k.weight"},
    {"self_attn.v_proj.weight", "attn_v.weight"},
    {"self_attn.o_proj.weight", "attn_output.weight"},
    {"self_attn.q_norm.weight", "attn_q_norm.weight"},
    {"self_attn.k_norm.weight", "attn_k_norm.weight"},
    {"post_attention_layernorm.weight", "post_attention_norm.weight"},
    {"pre_feedforward_layernorm.weight", "ffn_norm.weight"},
    {"post_feedforward_layernorm.weight", "post_ffw_norm.weight"},
    {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},
    {"mlp.down_proj.weight", "ffn_down.weight"},
};

bool is_norm(const std::string& name) {
  const std::string suffix = "norm.weight";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

std::string Gemma3ModelImpl::gguf_name(const std::string& hf) const {
  return gguf_name_by_role(hf, kRole, sizeof(kRole) / sizeof(kRole[0]));
}

// llama.cpp's converter (Gemma3Model.modify_tensors) stores every norm weight as 1 + w.
float Gemma3ModelImpl::gguf_offset(const std::string& name) const { return is_norm(name) ? -1.0f : 0.0f; }

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

std::vector<const torch::Tensor*> Gemma3ModelImpl::kernel_matrices() const {
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

namespace {

// x[i] += y[i], i < n.
void add_into(float* x, const float* y, int64_t n) {
  at::parallel_for(0, n, 1 << 14, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) x[i] += y[i];
  });
}

}  // namespace

void Gemma3ModelImpl::cached_hidden_cpu(const CachedRows& rows, int64_t r0, int64_t r1, KvCache& cache, float* out) {
  const int64_t n = r1 - r0, E = hp_.n_embd, H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  const int64_t F = hp_.n_ff, nq = (H + 2 * Hkv) * D;
  const double eps = hp_.rms_eps;
  prepare_kernel_pass(n);
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  // Scratch, float32: x [n, E] residual stream, hn [n, E] normed input of a block, y [n, E] a block's
  // output, qkv [n, nq] q | k | v, att [n, H*D], gu [n, 2F] gate | up, act [n, F].
  auto x = torch::empty({n, E}, f32), hn = torch::empty({n, E}, f32), y = torch::empty({n, E}, f32);
  auto qkv = torch::empty({n, nq}, f32), att = torch::empty({n, H * D}, f32);
  auto gu = torch::empty({n, 2 * F}, f32), act = torch::empty({n, F}, f32);
  float *xp = x.data_ptr<float>(), *hp = hn.data_ptr<float>(), *yp = y.data_ptr<float>();
  float *qp = qkv.data_ptr<float>(), *ap = att.data_ptr<float>(), *gp = gu.data_ptr<float>();
  float* actp = act.data_ptr<float>();
  const int64_t* slot = rows.slot.data() + r0;
  const int64_t* pos = rows.pos.data() + r0;

  embed_rows_cpu(rows.tok.data() + r0, n, xp);
  {
    // transformers multiplies in the embedding's dtype by a float32 scale: bf16 weights give a bf16
    // product (rounded), float32 weights a float32 one.
    const float s = embed_scale();
    const bool bf16 = embedding_weight().scalar_type() == torch::kBFloat16;
    for (int64_t i = 0; i < n * E; ++i) xp[i] = bf16 ? cpu::bf16_to_f32(cpu::f32_to_bf16(xp[i] * s)) : xp[i] * s;
  }
  int64_t max_pos = 0;
  for (int64_t i = 0; i < n; ++i) max_pos = std::max(max_pos, pos[i]);
  auto pos_t = torch::from_blob(const_cast<int64_t*>(pos), {n}, torch::kInt64);
  torch::Tensor cos[2], sin[2];
  RopeTable* tables[2] = {&rope_global_, &rope_local_};
  for (int kind = 0; kind < 2; ++kind) {
    auto [c, s] = tables[kind]->get(max_pos + 1, torch::kCPU, std::min<int64_t>(hp_.max_position, 8192));
    cos[kind] = c.index_select(0, pos_t).contiguous();
    sin[kind] = s.index_select(0, pos_t).contiguous();
  }

  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    auto& layer = model->layers[size_t(l)];
    auto& at = layer->self_attn;
    auto& mlp = layer->mlp;
    const int kind = hp_.is_local(l) ? 1 : 0;
    // x += post_attn_norm(o_proj(attn(rope(q_norm(q)), rope(k_norm(k)), v))), q|k|v = in_norm(x) W
    cpu::rms_norm(xp, f32_vector(layer->input_layernorm->weight, 1.0f), n, E, eps, hp);
    const cpu::WeightRef w_qkv[3] = {kernel_weight(at->q_proj->weight), kernel_weight(at->k_proj->weight),
                                     kernel_weight(at->v_proj->weight)};
    cpu::matmul_wt(hp, n, E, w_qkv, 3, qp, nq, /*accumulate=*/false);
    const float* wq = f32_vector(at->q_norm->weight, 1.0f);
    const float* wk = f32_vector(at->k_norm->weight, 1.0f);
    at::parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        float* r = qp + i * nq;
        cpu::rms_norm(r, wq, H, D, eps, r);
        cpu::rms_norm(r + H * D, wk, Hkv, D, eps, r + H * D);
      }
    });
    cpu::rope_rows(qp, n, H, Hkv, D, cos[kind].data_ptr<float>(), sin[kind].data_ptr<float>());
    const cpu::AttentionShape shape{H, Hkv, D, float(hp_.query_scale()), kind == 1 ? hp_.sliding_window : 0};
    auto& ck = cache.k[size_t(l)];
    cpu::attention_rows(qp, n, shape, ck.data_ptr(), cache.v[size_t(l)].data_ptr(), ck.scalar_type() == torch::kBFloat16,
                        cache.max_len(), slot, pos, ap);
    const cpu::WeightRef w_o = kernel_weight(at->o_proj->weight);
    cpu::matmul_wt(ap, n, H * D, &w_o, 1, yp, E, /*accumulate=*/false);
    cpu::rms_norm(yp, f32_vector(layer->post_attention_layernorm->weight, 1.0f), n, E, eps, yp);
    add_into(xp, yp, n * E);
    // x += post_ffn_norm(down(gelu_tanh(gate(h)) * up(h))), h = pre_ffn_norm(x)
    cpu::rms_norm(xp, f32_vector(layer->pre_feedforward_layernorm->weight, 1.0f), n, E, eps, hp);
    const cpu::WeightRef w_gu[2] = {kernel_weight(mlp->gate_proj->weight), kernel_weight(mlp->up_proj->weight)};
    cpu::matmul_wt(hp, n, E, w_gu, 2, gp, 2 * F, /*accumulate=*/false);
    cpu::gelu_tanh_mul(gp, n, F, actp);
    const cpu::WeightRef w_down = kernel_weight(mlp->down_proj->weight);
    cpu::matmul_wt(actp, n, F, &w_down, 1, yp, E, /*accumulate=*/false);
    cpu::rms_norm(yp, f32_vector(layer->post_feedforward_layernorm->weight, 1.0f), n, E, eps, yp);
    add_into(xp, yp, n * E);
  }
  cpu::rms_norm(xp, f32_vector(model->norm->weight, 1.0f), n, E, eps, out);
}

}  // namespace retort

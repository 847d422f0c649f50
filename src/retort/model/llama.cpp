#include "retort/model/llama.h"

#include <cmath>
#include <mutex>

#include <torch/version.h>

#include "retort/model/cpu_kernels.h"
#include "retort/util/error.h"

namespace retort {

using torch::indexing::Slice;

// ---------------------------------------------------------------------------------------------
// Building blocks

ProjImpl::ProjImpl(int64_t in, int64_t out, bool has_bias) {
  weight = register_parameter("weight", torch::empty({out, in}));
  if (has_bias) bias = register_parameter("bias", torch::empty({out}));
}

torch::Tensor ProjImpl::forward(const torch::Tensor& x) {
  // Matmul in the weight dtype (bf16 on GPU), result back to the float32 stream.
  return torch::linear(x.to(weight.scalar_type()), weight, bias).to(torch::kFloat32);
}

RmsNormImpl::RmsNormImpl(int64_t n, double eps_) : eps(eps_) {
  weight = register_parameter("weight", torch::empty({n}));
}

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

torch::Tensor MlpImpl::forward(const torch::Tensor& x) {
  return down_proj(torch::silu(gate_proj(x)) * up_proj(x));
}

DecoderLayerImpl::DecoderLayerImpl(const ModelHParams& hp) {
  input_layernorm = register_module("input_layernorm", RmsNorm(hp.n_embd, hp.rms_eps));
  self_attn = register_module("self_attn", Attention(hp));
  post_attention_layernorm = register_module("post_attention_layernorm", RmsNorm(hp.n_embd, hp.rms_eps));
  mlp = register_module("mlp", Mlp(hp));
}

LlamaBackboneImpl::LlamaBackboneImpl(const ModelHParams& hp) {
  // A submodule "embed_tokens" with one parameter "weight", as in transformers.
  auto embed = std::make_shared<torch::nn::Module>();
  embed_tokens = embed->register_parameter("weight", torch::empty({hp.n_vocab, hp.n_embd}));
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
// RoPE

namespace {

// inv_freq[i] = theta^(-2i/d), float32 exactly as transformers computes it, then scaled.
torch::Tensor rope_inv_freq(const ModelHParams& hp) {
  const int64_t d = hp.head_dim;
  auto exponent = torch::arange(0, d, 2, torch::kInt64).to(torch::kFloat32) / double(d);
  auto inv = 1.0 / torch::pow(hp.rope_theta, exponent);  // [d/2] float32
  const RopeScaling& rs = hp.rope_scaling;
  if (rs.type == "linear") {
    inv = inv / rs.factor;
  } else if (rs.type == "llama3") {
    // transformers' _compute_llama3_parameters: low frequencies (long wavelengths) are divided
    // by `factor`, high frequencies kept, the band between interpolated smoothly.
    const double old_len = double(rs.original_max_position);
    const double low_wavelen = old_len / rs.low_freq_factor;
    const double high_wavelen = old_len / rs.high_freq_factor;
    auto wavelen = 2 * M_PI / inv;
    auto scaled = torch::where(wavelen > low_wavelen, inv / rs.factor, inv);
    auto smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
    auto smoothed = (1 - smooth) * scaled / rs.factor + smooth * scaled;
    auto medium = (wavelen >= high_wavelen).logical_and(wavelen <= low_wavelen);
    inv = torch::where(medium, smoothed, scaled);
  } else {
    TORCH_CHECK(rs.type == "none", "unknown rope scaling type ", rs.type);
  }
  if (!hp.rope_freq_factors.empty()) {
    auto f = torch::tensor(hp.rope_freq_factors, torch::kFloat32);
    inv = inv / f;
  }
  return inv.contiguous();
}

// Rotate-half RoPE. x [B, H, T, D] float32; cos, sin [B, 1, T, D/2].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

// Scaled dot-product attention with grouped K/V heads.
// q [B, H, T, D] float32; k, v [B, Hkv, L, D] (any float dtype); mask bool [B or 1, 1, T, L],
// true = may attend (every query row has at least one true). Returns [B, T, H*D] float32.
torch::Tensor attend(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                     const torch::Tensor& mask) {
  const int64_t B = q.size(0), H = q.size(1), T = q.size(2), D = q.size(3);
  const int64_t Hkv = k.size(1), G = H / Hkv;
#if TORCH_VERSION_MAJOR >= 2
  const int64_t L = k.size(2);
  // Query head h reads K/V head h / G (transformers' repeat_kv).
  auto kr = k.unsqueeze(2).expand({B, Hkv, G, L, D}).reshape({B, H, L, D});
  auto vr = v.unsqueeze(2).expand({B, Hkv, G, L, D}).reshape({B, H, L, D});
  auto out = torch::scaled_dot_product_attention(q.to(k.scalar_type()), kr, vr, mask);
  return out.transpose(1, 2).reshape({B, T, H * D}).to(torch::kFloat32);
#else
  // The G query heads of a group, with their T positions, as G*T rows against their one K/V
  // head: a plain batched matmul over [B*Hkv] that reads the cache view without copying it.
  auto qg = q.reshape({B, Hkv, G * T, D});
  auto kf = k.to(torch::kFloat32);  // [B, Hkv, L, D]
  auto vf = v.to(torch::kFloat32);
  const int64_t L = k.size(2);
  auto scores = torch::matmul(qg, kf.transpose(-1, -2)) * (1.0 / std::sqrt(double(D)));  // [B, Hkv, G*T, L]
  scores = scores.view({B, Hkv, G, T, L})
               .masked_fill(mask.unsqueeze(2).logical_not(), -std::numeric_limits<float>::infinity())
               .view({B, Hkv, G * T, L});
  auto probs = torch::softmax(scores, -1);
  auto out = torch::matmul(probs, vf);  // [B, Hkv, G*T, D]
  return out.view({B, H, T, D}).transpose(1, 2).reshape({B, T, H * D});
#endif
}

std::mutex g_rope_mutex;    // guards the lazily grown cos/sin tables
std::mutex g_panels_mutex;  // guards the lazily packed bf16 panels

}  // namespace

// ---------------------------------------------------------------------------------------------
// The model

LlamaModelImpl::LlamaModelImpl(const ModelHParams& hp) : hp_(hp) {
  TORCH_CHECK(hp.n_layer > 0 && hp.n_head > 0 && hp.n_head_kv > 0 && hp.n_head % hp.n_head_kv == 0,
              "invalid hparams");
  model = register_module("model", LlamaBackbone(hp));
  if (!hp.tie_embeddings) lm_head = register_module("lm_head", Proj(hp.n_embd, hp.n_vocab, false));
  inv_freq_ = rope_inv_freq(hp);
}

torch::Device LlamaModelImpl::device() const { return model->embed_tokens.device(); }
torch::ScalarType LlamaModelImpl::dtype() const { return model->embed_tokens.scalar_type(); }

void LlamaModelImpl::ensure_rope(int64_t n_pos, torch::Device device) {
  std::lock_guard<std::mutex> lock(g_rope_mutex);
  if (cos_.defined() && cos_.size(0) >= n_pos && cos_.device() == device) return;
  int64_t n = std::max<int64_t>(n_pos, std::min<int64_t>(hp_.max_position, 8192));
  if (cos_.defined() && cos_.size(0) < n_pos) n = std::max(n, 2 * cos_.size(0));
  // angle[p, i] = p * inv_freq[i] in float32 (as transformers does).
  auto pos = torch::arange(n, torch::kInt64).to(torch::kFloat32);
  auto angle = torch::outer(pos, inv_freq_);
  cos_ = angle.cos().to(device);
  sin_ = angle.sin().to(device);
}

torch::Tensor LlamaModelImpl::lm_logits(const torch::Tensor& hidden) {
  if (lm_head) return lm_head(hidden);
  const auto& w = model->embed_tokens;
  return torch::linear(hidden.to(w.scalar_type()), w).to(torch::kFloat32);
}

torch::Tensor LlamaModelImpl::forward_hidden(const torch::Tensor& tokens) {
  TORCH_CHECK(tokens.dim() == 2, "tokens must be [B, T]");
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  const auto dev = device();
  auto tok = tokens.to(dev, torch::kInt64);

  ensure_rope(T, dev);
  auto cos = cos_.narrow(0, 0, T).view({1, 1, T, D / 2});
  auto sin = sin_.narrow(0, 0, T).view({1, 1, T, D / 2});
  auto mask = torch::ones({T, T}, torch::TensorOptions().dtype(torch::kBool).device(dev)).tril().view({1, 1, T, T});

  auto x = torch::embedding(model->embed_tokens, tok).to(torch::kFloat32);  // [B, T, E]
  for (auto& layer : model->layers) {
    auto& at = layer->self_attn;
    auto hn = layer->input_layernorm(x);
    auto q = apply_rope(at->q_proj(hn).view({B, T, H, D}).transpose(1, 2), cos, sin);
    auto k = apply_rope(at->k_proj(hn).view({B, T, Hkv, D}).transpose(1, 2), cos, sin);
    auto v = at->v_proj(hn).view({B, T, Hkv, D}).transpose(1, 2);
    x = x + at->o_proj(attend(q, k, v, mask));
    x = x + layer->mlp(layer->post_attention_layernorm(x));
  }
  return model->norm(x);
}

torch::Tensor LlamaModelImpl::forward(const torch::Tensor& tokens) {
  return lm_logits(forward_hidden(tokens));
}

torch::Tensor LlamaModelImpl::forward_cached(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                                             const std::vector<int64_t>& n_new, KvCache& cache,
                                             bool last_only) {
  torch::NoGradGuard no_grad;
  check(tokens.dim() == 2, "forward_cached: tokens must be [B, T], got ", tokens.sizes());
  const int64_t B = tokens.size(0), T = tokens.size(1);
  const int64_t H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  check(B > 0 && T > 0, "forward_cached: empty batch ", tokens.sizes());
  check(int64_t(slots.size()) == B && int64_t(n_new.size()) == B, "forward_cached: ", B,
        " rows but ", slots.size(), " slots and ", n_new.size(), " n_new");
  check(int64_t(cache.k.size()) == hp_.n_layer, "forward_cached: cache has ", cache.k.size(),
        " layers, model has ", hp_.n_layer);

  // Per row: old length, new length, and whether the slots are one contiguous ascending run.
  std::vector<int64_t> old_len(B), new_len(B);
  std::vector<char> used(size_t(cache.n_slots()), 0);
  bool contiguous = true;
  int64_t L = 0, max_pos = 0, n_valid = 0;
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = slots[b];
    check(s >= 0 && s < cache.n_slots(), "forward_cached: slot ", s, " out of range [0, ", cache.n_slots(), ")");
    check(!used[size_t(s)], "forward_cached: slot ", s, " appears twice in one batch");
    used[size_t(s)] = 1;
    check(n_new[b] >= 1 && n_new[b] <= T, "forward_cached: n_new[", b, "] = ", n_new[b], " must be in 1..", T);
    old_len[b] = cache.lengths[size_t(s)];
    new_len[b] = old_len[b] + n_new[b];
    check(new_len[b] <= cache.max_len(), "forward_cached: slot ", s, " would hold ", new_len[b],
          " tokens, cache max_len is ", cache.max_len());
    contiguous = contiguous && s == slots[0] + b;
    L = std::max(L, new_len[b]);
    max_pos = std::max(max_pos, old_len[b] + T);
    n_valid += n_new[b];
  }

  const auto dev = device();
  auto ik = torch::TensorOptions().dtype(torch::kInt64);
  auto tok = tokens.to(torch::kInt64);
  {
    auto mn = tok.min().item<int64_t>(), mx = tok.max().item<int64_t>();
    check(mn >= 0 && mx < hp_.n_vocab, "forward_cached: token id out of range [0, ", hp_.n_vocab, "): ",
          mn < 0 ? mn : mx);
  }
  tok = tok.to(dev);

  if (T == 1 && can_decode_cpu(cache)) {
    auto tc = tok.contiguous();
    std::vector<int64_t> ids(tc.data_ptr<int64_t>(), tc.data_ptr<int64_t>() + B);
    auto logits = decode_step_cpu(ids, slots, old_len, cache);  // [B, V]
    for (int64_t b = 0; b < B; ++b) cache.lengths[size_t(slots[b])] = new_len[b];
    return last_only ? logits : logits.view({B, 1, hp_.n_vocab});
  }

  // Positions [B, T]: old_len[b] + t (padding positions continue the run; their K/V are not stored).
  // Valid (b, t) pairs, flattened b*T + t, with their cache slot and position.
  std::vector<int64_t> pos(size_t(B * T)), flat, w_slot, w_pos;
  flat.reserve(size_t(n_valid));
  w_slot.reserve(size_t(n_valid));
  w_pos.reserve(size_t(n_valid));
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < T; ++t) {
      pos[size_t(b * T + t)] = old_len[b] + t;
      if (t < n_new[b]) {
        flat.push_back(b * T + t);
        w_slot.push_back(slots[b]);
        w_pos.push_back(old_len[b] + t);
      }
    }
  auto pos_t = torch::tensor(pos, ik).view({B, T}).to(dev);
  auto flat_t = torch::tensor(flat, ik).to(dev);
  auto w_slot_t = torch::tensor(w_slot, ik).to(dev);
  auto w_pos_t = torch::tensor(w_pos, ik).to(dev);
  auto slots_t = torch::tensor(slots, ik).to(dev);
  auto new_len_t = torch::tensor(new_len, ik).to(dev).view({B, 1, 1, 1});

  ensure_rope(max_pos, dev);
  auto cos = cos_.index_select(0, pos_t.flatten()).view({B, 1, T, D / 2});
  auto sin = sin_.index_select(0, pos_t.flatten()).view({B, 1, T, D / 2});
  // mask[b, 0, t, j]: key j is in row b's slot (j < new_len) and not in the future (j <= pos).
  auto j = torch::arange(L, ik.device(dev)).view({1, 1, 1, L});
  auto mask = (j <= pos_t.view({B, 1, T, 1})).logical_and(j < new_len_t);  // [B, 1, T, L]

  // The used prefix [0, L) of each row's slot: a view when slots are contiguous, else a gather.
  auto rows = [&](const torch::Tensor& c) {
    auto prefix = c.narrow(2, 0, L);
    return contiguous ? prefix.narrow(0, slots[0], B) : prefix.index_select(0, slots_t);
  };

  auto x = torch::embedding(model->embed_tokens, tok).to(torch::kFloat32);  // [B, T, E]
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    auto& layer = model->layers[size_t(l)];
    auto& at = layer->self_attn;
    auto hn = layer->input_layernorm(x);
    auto q = apply_rope(at->q_proj(hn).view({B, T, H, D}).transpose(1, 2), cos, sin);
    auto k = apply_rope(at->k_proj(hn).view({B, T, Hkv, D}).transpose(1, 2), cos, sin);
    auto v = at->v_proj(hn).view({B, T, Hkv, D});
    // Scatter the valid tokens' K/V: cache[slot, :, pos, :] = kv[b, t]  ([N, Hkv, D]).
    auto& ck = cache.k[size_t(l)];
    auto& cv = cache.v[size_t(l)];
    auto k_rows = k.transpose(1, 2).reshape({B * T, Hkv, D}).index_select(0, flat_t);
    auto v_rows = v.reshape({B * T, Hkv, D}).index_select(0, flat_t);
    ck.index_put_({w_slot_t, Slice(), w_pos_t}, k_rows.to(ck.scalar_type()));
    cv.index_put_({w_slot_t, Slice(), w_pos_t}, v_rows.to(cv.scalar_type()));
    x = x + at->o_proj(attend(q, rows(ck), rows(cv), mask));
    x = x + layer->mlp(layer->post_attention_layernorm(x));
  }
  for (int64_t b = 0; b < B; ++b) cache.lengths[size_t(slots[b])] = new_len[b];

  if (last_only) {
    std::vector<int64_t> last(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) last[size_t(b)] = b * T + n_new[b] - 1;
    auto xl = x.reshape({B * T, hp_.n_embd}).index_select(0, torch::tensor(last, ik).to(dev));  // [B, E]
    return lm_logits(model->norm(xl));
  }
  return lm_logits(model->norm(x));
}

// ---------------------------------------------------------------------------------------------
// The CPU decode step

namespace {

bool kernel_ok(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.is_contiguous() &&
         (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16);
}

torch::Tensor as_f32(const torch::Tensor& t) { return t.to(torch::kFloat32).contiguous(); }

}  // namespace

void LlamaModelImpl::attach_quantized(const torch::Tensor& param, cpu::WeightFormat format,
                                      std::vector<uint8_t> blocks) {
  check(param.dim() == 2 && param.size(1) % 32 == 0, "attach_quantized: weight of shape ", param.sizes(),
        " (need [rows, K] with K a multiple of 32)");
  check(format == cpu::WeightFormat::kQ8_0 || format == cpu::WeightFormat::kQ4_1,
        "attach_quantized: not a quantized format");
  const int64_t want = param.size(0) * cpu::weight_row_bytes(format, param.size(1));
  check(int64_t(blocks.size()) == want, "attach_quantized: ", blocks.size(), " bytes of blocks for a weight of shape ",
        param.sizes(), ", expected ", want);
  quantized_[param.unsafeGetTensorImpl()] = {format, std::move(blocks), param.data_ptr(), param._version()};
}

int64_t LlamaModelImpl::quantized_in_use() const {
  int64_t n = 0;
  for (const auto& p : parameters()) {
    const auto ref = decode_weight(p);
    n += ref.format == cpu::WeightFormat::kQ8_0 || ref.format == cpu::WeightFormat::kQ4_1;
  }
  return n;
}

int64_t LlamaModelImpl::quantized_bytes() const {
  int64_t n = 0;
  for (const auto& p : parameters())
    if (const auto ref = decode_weight(p);
        ref.format == cpu::WeightFormat::kQ8_0 || ref.format == cpu::WeightFormat::kQ4_1)
      n += int64_t(quantized_.at(p.unsafeGetTensorImpl()).blocks.size());
  return n;
}

cpu::WeightRef LlamaModelImpl::decode_weight(const torch::Tensor& w) const {
  const bool bf16 = w.scalar_type() == torch::kBFloat16;
  const bool on_cpu = w.device().is_cpu();
  cpu::WeightRef ref{w.data_ptr(), w.size(0), bf16 ? cpu::WeightFormat::kBF16 : cpu::WeightFormat::kF32};
  if (auto it = quantized_.find(w.unsafeGetTensorImpl());
      it != quantized_.end() && on_cpu && it->second.data == w.data_ptr() && it->second.version == w._version())
    ref = {it->second.blocks.data(), w.size(0), it->second.format, bf16};
  if (auto it = panels_.find(w.unsafeGetTensorImpl());
      it != panels_.end() && on_cpu && it->second.data == w.data_ptr() && it->second.version == w._version())
    ref.panels = static_cast<const uint16_t*>(it->second.packed.data_ptr());
  return ref;
}

std::vector<const torch::Tensor*> LlamaModelImpl::decode_matrices() const {
  std::vector<const torch::Tensor*> out;
  for (const auto& layer : model->layers) {
    const auto& at = layer->self_attn;
    for (const auto* w : {&at->q_proj->weight, &at->k_proj->weight, &at->v_proj->weight, &at->o_proj->weight,
                          &layer->mlp->gate_proj->weight, &layer->mlp->up_proj->weight, &layer->mlp->down_proj->weight})
      out.push_back(w);
  }
  out.push_back(lm_head ? &lm_head->weight : &model->embed_tokens);
  return out;
}

void LlamaModelImpl::ensure_panels() {
  for (const torch::Tensor* w : decode_matrices()) {
    if (w->scalar_type() != torch::kBFloat16 || w->size(1) % 2 != 0 || !w->is_contiguous()) continue;
    PanelCopy& pc = panels_[w->unsafeGetTensorImpl()];
    if (pc.packed.defined() && pc.data == w->data_ptr() && pc.version == w->_version()) continue;
    pc.packed = torch::empty({cpu::bf16_panels_size(w->size(0), w->size(1))}, torch::kInt16);
    cpu::pack_bf16_panels(static_cast<const uint16_t*>(w->data_ptr()), w->size(0), w->size(1),
                          static_cast<uint16_t*>(pc.packed.data_ptr()));
    pc.data = w->data_ptr();
    pc.version = w->_version();
  }
}

int64_t LlamaModelImpl::panel_bytes() const {
  int64_t n = 0;
  for (const auto& [impl, pc] : panels_) n += pc.packed.defined() ? pc.packed.nbytes() : 0;
  return n;
}

bool LlamaModelImpl::can_decode_cpu(const KvCache& cache) const {
  if (!device().is_cpu() || hp_.head_dim % 2 != 0 || c10::GradMode::is_enabled()) return false;
  for (size_t l = 0; l < cache.k.size(); ++l)
    if (!kernel_ok(cache.k[l]) || !kernel_ok(cache.v[l]) || cache.k[l].scalar_type() != cache.v[l].scalar_type())
      return false;
  if (!kernel_ok(model->embed_tokens)) return false;
  for (const torch::Tensor* w : decode_matrices())
    if (!kernel_ok(*w)) return false;
  return true;
}

torch::Tensor LlamaModelImpl::decode_step_cpu(const std::vector<int64_t>& tok, const std::vector<int64_t>& slots,
                                              const std::vector<int64_t>& old_len, KvCache& cache) {
  const int64_t B = int64_t(tok.size()), E = hp_.n_embd, H = hp_.n_head, Hkv = hp_.n_head_kv, D = hp_.head_dim;
  const int64_t F = hp_.n_ff, V = hp_.n_vocab, nq = (H + 2 * Hkv) * D;
  const auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
  if (B >= cpu::kPanelMinRows && cpu::has_avx512_bf16() && dtype() == torch::kBFloat16) {
    std::lock_guard<std::mutex> lock(g_panels_mutex);
    ensure_panels();
  }
  auto x = torch::embedding(model->embed_tokens, torch::tensor(tok, torch::kInt64)).to(torch::kFloat32).contiguous();
  // Scratch, float32: hn [B, E] normed stream, qkv [B, nq], att [B, H*D], gu [B, 2F] gate | up, act [B, F].
  auto hn = torch::empty({B, E}, f32), qkv = torch::empty({B, nq}, f32), att = torch::empty({B, H * D}, f32);
  auto gu = torch::empty({B, 2 * F}, f32), act = torch::empty({B, F}, f32);
  int64_t max_pos = 1;
  for (int64_t p : old_len) max_pos = std::max(max_pos, p + 1);
  ensure_rope(max_pos, torch::kCPU);
  auto pos_t = torch::tensor(old_len, torch::kInt64);
  auto cos = cos_.index_select(0, pos_t).contiguous(), sin = sin_.index_select(0, pos_t).contiguous();  // [B, D/2]
  float *xp = x.data_ptr<float>(), *hp = hn.data_ptr<float>(), *qp = qkv.data_ptr<float>();
  float *ap = att.data_ptr<float>(), *gp = gu.data_ptr<float>(), *actp = act.data_ptr<float>();

  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    auto& layer = model->layers[size_t(l)];
    auto& at = layer->self_attn;
    auto& mlp = layer->mlp;
    // x += o_proj(attn(rms_norm(x)))
    auto w_in = as_f32(layer->input_layernorm->weight);
    cpu::rms_norm(xp, w_in.data_ptr<float>(), B, E, hp_.rms_eps, hp);
    const cpu::WeightRef w_qkv[3] = {decode_weight(at->q_proj->weight), decode_weight(at->k_proj->weight),
                                     decode_weight(at->v_proj->weight)};
    cpu::matmul_wt(hp, B, E, w_qkv, 3, qp, nq, /*accumulate=*/false);
    if (hp_.qkv_bias) {
      auto bias = as_f32(torch::cat({at->q_proj->bias, at->k_proj->bias, at->v_proj->bias}));
      const float* bp = bias.data_ptr<float>();
      for (int64_t b = 0; b < B; ++b)
        for (int64_t i = 0; i < nq; ++i) qp[b * nq + i] += bp[i];
    }
    auto& ck = cache.k[size_t(l)];
    cpu::attention_decode(qp, B, H, Hkv, D, cos.data_ptr<float>(), sin.data_ptr<float>(), ck.data_ptr(),
                          cache.v[size_t(l)].data_ptr(), ck.scalar_type() == torch::kBFloat16, cache.max_len(),
                          slots.data(), old_len.data(), ap);
    const cpu::WeightRef w_o = decode_weight(at->o_proj->weight);
    cpu::matmul_wt(ap, B, H * D, &w_o, 1, xp, E, /*accumulate=*/true);
    // x += down(silu(gate(h)) * up(h)), h = rms_norm(x)
    auto w_post = as_f32(layer->post_attention_layernorm->weight);
    cpu::rms_norm(xp, w_post.data_ptr<float>(), B, E, hp_.rms_eps, hp);
    const cpu::WeightRef w_gu[2] = {decode_weight(mlp->gate_proj->weight), decode_weight(mlp->up_proj->weight)};
    cpu::matmul_wt(hp, B, E, w_gu, 2, gp, 2 * F, /*accumulate=*/false);
    cpu::silu_mul(gp, B, F, actp);
    const cpu::WeightRef w_down = decode_weight(mlp->down_proj->weight);
    cpu::matmul_wt(actp, B, F, &w_down, 1, xp, E, /*accumulate=*/true);
  }
  auto w_norm = as_f32(model->norm->weight);
  cpu::rms_norm(xp, w_norm.data_ptr<float>(), B, E, hp_.rms_eps, hp);
  auto logits = torch::empty({B, V}, f32);
  const cpu::WeightRef w_out = decode_weight(lm_head ? lm_head->weight : model->embed_tokens);
  cpu::matmul_wt(hp, B, E, &w_out, 1, logits.data_ptr<float>(), V, /*accumulate=*/false);
  return logits;
}

void LlamaModelImpl::init_weights(uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  auto gen = at::detail::createCPUGenerator(seed);
  for (auto& p : named_parameters()) {
    const std::string& name = p.key();
    auto& w = p.value();
    auto ends_with = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (ends_with("norm.weight")) {
      w.fill_(1.0);
    } else if (ends_with(".bias")) {
      w.zero_();
    } else {
      auto t = torch::empty(w.sizes(), torch::kFloat32);
      t.normal_(0.0, std, gen);
      w.copy_(t);
    }
  }
}

}  // namespace retort

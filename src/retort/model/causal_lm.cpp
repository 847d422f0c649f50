#include "retort/model/causal_lm.h"

#include <cmath>
#include <cstring>
#include <limits>

#include <ATen/Parallel.h>
#include <torch/version.h>

#include "retort/model/family.h"
#include "retort/util/error.h"

namespace retort {

using torch::indexing::Slice;

// ---------------------------------------------------------------------------------------------
// Helpers for family files (family.h)

namespace {
thread_local torch::ScalarType g_param_dtype = torch::kFloat32;
std::mutex g_panels_mutex;  // guards the lazily packed bf16 panels and the vector copies
}  // namespace

torch::Tensor new_param(torch::IntArrayRef shape) {
  return torch::empty(shape, torch::TensorOptions().dtype(g_param_dtype));
}

ParamDtypeScope::ParamDtypeScope(torch::ScalarType dtype) : saved_(g_param_dtype) { g_param_dtype = dtype; }
ParamDtypeScope::~ParamDtypeScope() { g_param_dtype = saved_; }

ProjImpl::ProjImpl(int64_t in, int64_t out, bool has_bias) {
  weight = register_parameter("weight", new_param({out, in}));
  if (has_bias) bias = register_parameter("bias", new_param({out}));
}

torch::Tensor ProjImpl::forward(const torch::Tensor& x) {
  return torch::linear(x.to(weight.scalar_type()), weight, bias).to(torch::kFloat32);
}

std::pair<torch::Tensor, torch::Tensor> RopeTable::get(int64_t n_pos, torch::Device device, int64_t min_rows) {
  std::lock_guard<std::mutex> lock(mu_);
  if (cos_.defined() && cos_.size(0) >= n_pos && cos_.device() == device) return {cos_, sin_};
  int64_t n = std::max(n_pos, min_rows);
  if (cos_.defined() && cos_.size(0) < n_pos) n = std::max(n, 2 * cos_.size(0));
  auto pos = torch::arange(n, torch::kInt64).to(torch::kFloat32);
  auto angle = torch::outer(pos, inv_freq_);  // [n, D/2] float32
  cos_ = angle.cos().to(device);
  sin_ = angle.sin().to(device);
  return {cos_, sin_};
}

torch::Tensor rope_inv_freq(double theta, int64_t d, const RopeScaling& rs, const std::vector<float>& freq_factors) {
  auto exponent = torch::arange(0, d, 2, torch::kInt64).to(torch::kFloat32) / double(d);
  auto inv = 1.0 / torch::pow(theta, exponent);  // [d/2] float32
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
  if (!freq_factors.empty()) inv = inv / torch::tensor(freq_factors, torch::kFloat32);
  return inv.contiguous();
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
  return torch::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, -1);
}

torch::Tensor attend_torch(const torch::Tensor& q_in, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& mask, double scale) {
  const int64_t B = q_in.size(0), H = q_in.size(1), T = q_in.size(2), D = q_in.size(3);
  const int64_t Hkv = k.size(1), G = H / Hkv;
#if TORCH_VERSION_MAJOR >= 2
  const int64_t L = k.size(2);
  // SDPA scales by 1/sqrt(D); another scale is folded into q (exact when it is 1/sqrt(D)).
  const double fold = scale * std::sqrt(double(D));
  auto q = std::abs(fold - 1.0) < 1e-12 ? q_in : q_in * fold;
  // Query head h reads K/V head h / G (transformers' repeat_kv).
  auto kr = k.unsqueeze(2).expand({B, Hkv, G, L, D}).reshape({B, H, L, D});
  auto vr = v.unsqueeze(2).expand({B, Hkv, G, L, D}).reshape({B, H, L, D});
  auto out = torch::scaled_dot_product_attention(q.to(k.scalar_type()), kr, vr, mask);
  return out.transpose(1, 2).reshape({B, T, H * D}).to(torch::kFloat32);
#else
  // The G query heads of a group, with their T positions, as G*T rows against their one K/V
  // head: a plain batched matmul over [B*Hkv] that reads the cache view without copying it.
  auto qg = q_in.reshape({B, Hkv, G * T, D});
  auto kf = k.to(torch::kFloat32);  // [B, Hkv, L, D]
  auto vf = v.to(torch::kFloat32);
  const int64_t L = k.size(2);
  auto scores = torch::matmul(qg, kf.transpose(-1, -2)) * scale;  // [B, Hkv, G*T, L]
  scores = scores.view({B, Hkv, G, T, L})
               .masked_fill(mask.unsqueeze(2).logical_not(), -std::numeric_limits<float>::infinity())
               .view({B, Hkv, G * T, L});
  auto probs = torch::softmax(scores, -1);
  auto out = torch::matmul(probs, vf);  // [B, Hkv, G*T, D]
  return out.view({B, H, T, D}).transpose(1, 2).reshape({B, T, H * D});
#endif
}

torch::Tensor causal_mask(int64_t T, int64_t window, torch::Device device) {
  auto i = torch::arange(T, torch::TensorOptions().dtype(torch::kInt64).device(device));
  auto diff = i.view({T, 1}) - i.view({1, T});  // t - j
  auto m = diff >= 0;
  if (window > 0) m = m.logical_and(diff < window);
  return m.view({1, 1, T, T});
}

TorchCachedBatch::TorchCachedBatch(const CachedRows& rows, torch::Device dev)
    : B(rows.B), T(rows.T), L(0) {
  auto ik = torch::TensorOptions().dtype(torch::kInt64);
  std::vector<int64_t> p(size_t(B * T)), flat, last(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t t = 0; t < T; ++t) p[size_t(b * T + t)] = rows.old_len[size_t(b)] + t;
    L = std::max(L, rows.new_len[size_t(b)]);
    contiguous_ = contiguous_ && rows.slots[size_t(b)] == rows.slots[0] + b;
    last[size_t(b)] = b * T + (rows.new_len[size_t(b)] - rows.old_len[size_t(b)]) - 1;
  }
  for (int64_t i = 0; i < rows.n(); ++i) flat.push_back(rows.batch_row[size_t(i)] * T + rows.col[size_t(i)]);
  first_slot_ = rows.slots[0];
  pos = torch::tensor(p, ik).view({B, T}).to(dev);
  flat_ = torch::tensor(flat, ik).to(dev);
  w_slot_ = torch::tensor(rows.slot, ik).to(dev);
  w_pos_ = torch::tensor(rows.pos, ik).to(dev);
  slots_ = torch::tensor(rows.slots, ik).to(dev);
  new_len_ = torch::tensor(rows.new_len, ik).to(dev).view({B, 1, 1, 1});
  last_ = torch::tensor(last, ik).to(dev);
}

torch::Tensor TorchCachedBatch::mask(int64_t window) const {
  auto j = torch::arange(L, torch::TensorOptions().dtype(torch::kInt64).device(pos.device())).view({1, 1, 1, L});
  auto p = pos.view({B, 1, T, 1});
  auto m = (j <= p).logical_and(j < new_len_);  // [B, 1, T, L]
  if (window > 0) m = m.logical_and(p - j < window);
  return m;
}

std::pair<torch::Tensor, torch::Tensor> TorchCachedBatch::store(torch::Tensor& ck, torch::Tensor& cv,
                                                                const torch::Tensor& k, const torch::Tensor& v) const {
  const int64_t Hkv = k.size(2), D = k.size(3);
  // cache[slot, :, pos, :] = kv[b, t] for the valid (b, t): [N, Hkv, D].
  auto k_rows = k.reshape({B * T, Hkv, D}).index_select(0, flat_);
  auto v_rows = v.reshape({B * T, Hkv, D}).index_select(0, flat_);
  ck.index_put_({w_slot_, Slice(), w_pos_}, k_rows.to(ck.scalar_type()));
  cv.index_put_({w_slot_, Slice(), w_pos_}, v_rows.to(cv.scalar_type()));
  // The used prefix [0, L) of each row's slot: a view when slots are contiguous, else a gather.
  auto rows = [&](const torch::Tensor& c) {
    auto prefix = c.narrow(2, 0, L);
    return contiguous_ ? prefix.narrow(0, first_slot_, B) : prefix.index_select(0, slots_);
  };
  return {rows(ck), rows(cv)};
}

torch::Tensor TorchCachedBatch::last_rows(const torch::Tensor& x) const {
  auto sizes = x.sizes().vec();
  std::vector<int64_t> flat_shape = {B * T};
  flat_shape.insert(flat_shape.end(), sizes.begin() + 2, sizes.end());
  return x.reshape(flat_shape).index_select(0, last_);
}

CausalLM make_causal_lm(const ModelHParams& hp) {
  if (hp.arch == "llama" || hp.arch == "mistral" || hp.arch == "qwen2") return make_llama_family(hp);
  if (hp.arch == "gemma3") return make_gemma3(hp);
  fail("model: architecture \"", hp.arch, "\" is not supported (supported: ", supported_architectures(), ")");
}

// ---------------------------------------------------------------------------------------------
// The seam

namespace {

bool kernel_ok(const torch::Tensor& t) {
  return t.defined() && t.device().is_cpu() && t.is_contiguous() &&
         (t.scalar_type() == torch::kFloat32 || t.scalar_type() == torch::kBFloat16);
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool is_matrix(LayerTensor t) {
  switch (t) {
    case LayerTensor::kQ: case LayerTensor::kK: case LayerTensor::kV: case LayerTensor::kO:
    case LayerTensor::kGate: case LayerTensor::kUp: case LayerTensor::kDown: return true;
    default: return false;
  }
}

}  // namespace

CausalLMImpl::CausalLMImpl(const ModelHParams& hp)
    : hp_(hp), family_(family_info(hp.arch)), cpu_rope_(std::make_unique<CpuRopeTables>(hp)) {}

std::unique_ptr<KvSlots> CausalLMImpl::new_cache(int64_t n_slots, int64_t max_len) {
  return std::make_unique<KvCache>(hp_, n_slots, max_len, device(), dtype());
}

void CausalLMImpl::forward_last(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                                const std::vector<int64_t>& n_new, KvSlots& cache, float* logits) {
  auto* kv = dynamic_cast<KvCache*>(&cache);
  check(kv != nullptr, "forward_last: a libtorch model runs on its own KvCache (make it with new_cache)");
  auto t = torch::from_blob(const_cast<int64_t*>(tokens), {B, T}, torch::kInt64).to(device());
  auto out = forward_cached(t, slots, n_new, *kv, /*last_only=*/true).to(torch::kCPU, torch::kFloat32).contiguous();
  std::memcpy(logits, out.data_ptr<float>(), size_t(out.numel()) * 4);
}

int64_t CausalLMImpl::gguf_permuted_heads(const std::string& name) const {
  const auto& archs = family_.gguf_permuted_archs;
  if (std::find(archs.begin(), archs.end(), hp_.arch) == archs.end()) return 0;
  if (name.find("self_attn.q_proj.") != std::string::npos) return hp_.n_head;
  if (name.find("self_attn.k_proj.") != std::string::npos) return hp_.n_head_kv;
  return 0;
}

float CausalLMImpl::gguf_offset(const std::string& name) const {
  return family_.norm_plus_one && ends_with(name, "norm.weight") ? -1.0f : 0.0f;
}

torch::Device CausalLMImpl::device() const { return embedding_weight().device(); }
torch::ScalarType CausalLMImpl::dtype() const { return embedding_weight().scalar_type(); }

torch::Tensor CausalLMImpl::lm_logits(const torch::Tensor& hidden) {
  const torch::Tensor& w = output_weight();
  const cpu::WeightRef ref = kernel_weight(w);
  const bool only_blocks = ref.data != w.data_ptr();
  if (only_blocks && !dense() && hidden.device().is_cpu() && !hidden.requires_grad()) {
    // An inference-only model: the head exists only as blocks.
    auto h = hidden.to(torch::kFloat32).contiguous();
    const int64_t E = hp_.n_embd, n = h.numel() / E;
    auto sizes = h.sizes().vec();
    sizes.back() = hp_.n_vocab;
    auto out = torch::empty(sizes, torch::kFloat32);
    cpu::matmul_wt(h.data_ptr<float>(), n, E, &ref, 1, out.data_ptr<float>(), hp_.n_vocab, false);
    return out;
  }
  check(dense(), "model: this model was loaded for inference only (its matrices are kept as GGUF blocks); ",
        "load it with LoadOptions::inference_only = false to train it or run libtorch passes on it");
  return torch::linear(hidden.to(w.scalar_type()), w).to(torch::kFloat32);
}

torch::Tensor CausalLMImpl::forward_cached(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                                           const std::vector<int64_t>& n_new, KvCache& cache, bool last_only) {
  return run_cached(tokens, slots, n_new, cache, last_only ? CachedOut::kLastLogits : CachedOut::kAllLogits);
}

torch::Tensor CausalLMImpl::cached_hidden(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                                          const std::vector<int64_t>& n_new, KvCache& cache) {
  return run_cached(tokens, slots, n_new, cache, CachedOut::kAllHidden);
}

torch::Tensor CausalLMImpl::run_cached(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                                       const std::vector<int64_t>& n_new, KvCache& cache, CachedOut what) {
  torch::NoGradGuard no_grad;
  const bool last_only = what == CachedOut::kLastLogits;
  check(tokens.dim() == 2, "forward_cached: tokens must be [B, T], got ", tokens.sizes());
  const int64_t B = tokens.size(0), T = tokens.size(1);
  check(int64_t(cache.k.size()) == hp_.n_layer, "forward_cached: cache has ", cache.k.size(), " layers, model has ",
        hp_.n_layer);
  auto tok = tokens.to(torch::kCPU, torch::kInt64).contiguous();
  const CachedRows rows = make_cached_rows(tok.data_ptr<int64_t>(), B, T, slots, n_new, cache, hp_.n_vocab);

  torch::Tensor out;
  if (can_run_cpu_kernels(cache)) {
    const int64_t E = hp_.n_embd, V = hp_.n_vocab, N = rows.n();
    // The rows whose logits are returned: each batch row's last, or all.
    std::vector<int64_t> want;
    for (int64_t i = 0; i < N; ++i)
      if (!last_only || i + 1 == N || rows.batch_row[size_t(i + 1)] != rows.batch_row[size_t(i)]) want.push_back(i);
    const bool hidden_only = what == CachedOut::kAllHidden;
    if (N >= cpu::kPanelMinRows && cpu::has_avx512_bf16() && dtype() == torch::kBFloat16) ensure_panels();
    auto rows_out = torch::empty({int64_t(want.size()), hidden_only ? E : V}, torch::kFloat32);
    run_cached_rows(hp_, family_, cpu_weights(), *cpu_rope_, rows, want, cache.view(), hidden_only,
                    rows_out.data_ptr<float>());
    if (last_only) {
      out = rows_out;
    } else {
      std::vector<int64_t> at;
      for (int64_t i : want) at.push_back(rows.batch_row[size_t(i)] * T + rows.col[size_t(i)]);
      const int64_t C = rows_out.size(1);
      out = torch::zeros({B * T, C}, torch::kFloat32).index_copy_(0, torch::tensor(at, torch::kInt64), rows_out);
      out = out.view({B, T, C});
    }
  } else {
    check(dense(), "forward_cached: this model was loaded for inference only (GGUF blocks) and the CPU kernels ",
          "cannot run here (", device().is_cpu() ? "a weight or the cache is in a form they do not read" : "not on the CPU",
          "); load it with LoadOptions::inference_only = false");
    auto hidden = cached_hidden_torch(tokens.to(device(), torch::kInt64), rows, cache, last_only);
    out = what == CachedOut::kAllHidden ? hidden : lm_logits(hidden);
    if (!last_only) {
      // Padding positions: zeros, as on the kernel path.
      auto valid = torch::arange(T, torch::kInt64).view({1, T}) <
                   torch::tensor(n_new, torch::kInt64).view({B, 1});
      out = out * valid.to(out.device()).unsqueeze(-1).to(out.scalar_type());
    }
  }
  for (int64_t b = 0; b < B; ++b) cache.lengths[size_t(slots[size_t(b)])] = rows.new_len[size_t(b)];
  return out;
}

void CausalLMImpl::init_weights(uint64_t seed, double std) {
  torch::NoGradGuard no_grad;
  check(dense(), "init_weights: the model was loaded for inference only");
  auto gen = at::detail::createCPUGenerator(seed);
  const float norm_one = norm_identity();
  for (auto& p : named_parameters()) {
    const std::string& name = p.key();
    auto& w = p.value();
    auto ends_with = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (ends_with("norm.weight")) {
      w.fill_(norm_one);
    } else if (ends_with(".bias")) {
      w.zero_();
    } else {
      auto t = torch::empty(w.sizes(), torch::kFloat32);
      t.normal_(0.0, std, gen);
      w.copy_(t);
    }
  }
}

void CausalLMImpl::attach_kernel_weight(const torch::Tensor& param, cpu::WeightFormat format, const void* data,
                                        std::shared_ptr<const void> owner, bool only_copy) {
  check(param.dim() == 2, "attach_kernel_weight: weight of shape ", param.sizes(), " (need [rows, K])");
  const int64_t K = param.size(1);
  check(K % cpu::weight_block_elems(format) == 0, "attach_kernel_weight: K = ", K, " is not a multiple of the ",
        cpu::weight_format_name(format), " block (", cpu::weight_block_elems(format), ")");
  Blocks b;
  b.format = format;
  b.data = data;
  b.owner = std::move(owner);
  b.bytes = param.size(0) * cpu::weight_row_bytes(format, K);
  b.only_copy = only_copy;
  if (only_copy) {
    // The dense values are never made: one NaN broadcast to the shape, so anything but the kernels
    // that reads the parameter gets NaN instead of plausible numbers (and the libtorch passes refuse).
    torch::NoGradGuard no_grad;
    auto hollow = torch::full({1}, std::numeric_limits<float>::quiet_NaN(),
                              torch::TensorOptions().dtype(param.scalar_type()))
                      .expand(param.sizes());
    const_cast<torch::Tensor&>(param).set_data(hollow);
  } else {
    b.param_data = param.data_ptr();
    b.param_version = param._version();
  }
  blocks_[param.unsafeGetTensorImpl()] = std::move(b);
}

const CausalLMImpl::Blocks* CausalLMImpl::valid_blocks(const torch::Tensor& w) const {
  auto it = blocks_.find(w.unsafeGetTensorImpl());
  if (it == blocks_.end()) return nullptr;
  const Blocks& b = it->second;
  if (b.only_copy) return &b;
  return w.device().is_cpu() && b.param_data == w.data_ptr() && b.param_version == w._version() ? &b : nullptr;
}

int64_t CausalLMImpl::quantized_in_use() const {
  int64_t n = 0;
  for (const auto& p : parameters()) n += valid_blocks(p) != nullptr;
  return n;
}

int64_t CausalLMImpl::quantized_bytes() const {
  int64_t n = 0;
  for (const auto& p : parameters())
    if (const Blocks* b = valid_blocks(p)) n += b->bytes;
  return n;
}

bool CausalLMImpl::dense() const {
  for (const auto& [impl, b] : blocks_)
    if (b.only_copy) return false;
  return true;
}

cpu::WeightRef CausalLMImpl::kernel_weight(const torch::Tensor& w) const {
  const bool bf16 = w.scalar_type() == torch::kBFloat16;
  if (const Blocks* b = valid_blocks(w)) return {b->data, w.size(0), b->format, bf16};
  cpu::WeightRef ref{w.data_ptr(), w.size(0), bf16 ? cpu::WeightFormat::kBF16 : cpu::WeightFormat::kF32};
  if (auto it = panels_.find(w.unsafeGetTensorImpl());
      it != panels_.end() && w.device().is_cpu() && it->second.data == w.data_ptr() && it->second.version == w._version())
    ref.panels = static_cast<const uint16_t*>(it->second.packed.data_ptr());
  return ref;
}

const float* CausalLMImpl::f32_vector(const torch::Tensor& p, float offset) {
  std::lock_guard<std::mutex> lock(g_panels_mutex);
  VectorCopy& c = vectors_[p.unsafeGetTensorImpl()];
  if (c.values.empty() || c.data != p.data_ptr() || c.version != p._version() || c.offset != offset) {
    auto f = p.to(torch::kCPU, torch::kFloat32).contiguous();
    c.values.assign(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
    for (float& v : c.values) v = v + offset;  // float32 sum, as (1.0 + w.float()) computes it
    c.data = p.data_ptr();
    c.version = p._version();
    c.offset = offset;
  }
  return c.values.data();
}

void CausalLMImpl::ensure_panels() {
  std::lock_guard<std::mutex> lock(g_panels_mutex);
  for (const torch::Tensor* w : kernel_matrices()) {
    if (w->scalar_type() != torch::kBFloat16 || w->size(1) % 2 != 0 || !w->is_contiguous() ||
        valid_blocks(*w) != nullptr)
      continue;
    Panels& pc = panels_[w->unsafeGetTensorImpl()];
    if (pc.packed.defined() && pc.data == w->data_ptr() && pc.version == w->_version()) continue;
    pc.packed = torch::empty({cpu::bf16_panels_size(w->size(0), w->size(1))}, torch::kInt16);
    cpu::pack_bf16_panels(static_cast<const uint16_t*>(w->data_ptr()), w->size(0), w->size(1),
                          static_cast<uint16_t*>(pc.packed.data_ptr()));
    pc.data = w->data_ptr();
    pc.version = w->_version();
  }
}

int64_t CausalLMImpl::panel_bytes() const {
  int64_t n = 0;
  for (const auto& [impl, pc] : panels_) n += pc.packed.defined() ? pc.packed.nbytes() : 0;
  return n;
}

bool CausalLMImpl::can_run_cpu_kernels(const KvCache& cache) {
  if (!cpu_kernels_ || !device().is_cpu() || hp_.head_dim % 2 != 0 || c10::GradMode::is_enabled()) return false;
  for (size_t l = 0; l < cache.k.size(); ++l)
    if (!kernel_ok(cache.k[l]) || !kernel_ok(cache.v[l]) || cache.k[l].scalar_type() != cache.v[l].scalar_type())
      return false;
  std::vector<const torch::Tensor*> ws = kernel_matrices();
  ws.push_back(&embedding_weight());
  for (const torch::Tensor* w : ws)
    if (valid_blocks(*w) == nullptr && !kernel_ok(*w)) return false;
  return true;
}

const torch::Tensor& CausalLMImpl::param(const std::string& name) {
  if (params_by_name_.empty())
    for (const auto& p : named_parameters()) params_by_name_[p.key()] = p.value();
  static const torch::Tensor none;
  auto it = params_by_name_.find(name);
  return it == params_by_name_.end() ? none : it->second;
}

std::vector<const torch::Tensor*> CausalLMImpl::kernel_matrices() {
  std::vector<const torch::Tensor*> out;
  for (int64_t l = 0; l < hp_.n_layer; ++l)
    for (const FamilyTensor& t : family_.layer_tensors)
      if (is_matrix(t.role)) {
        const torch::Tensor& p = param("model.layers." + std::to_string(l) + "." + t.hf);
        if (p.defined()) out.push_back(&p);
      }
  out.push_back(&output_weight());
  return out;
}

CpuWeights CausalLMImpl::cpu_weights() {
  CpuWeights w;
  w.bf16 = dtype() == torch::kBFloat16;
  w.embedding = kernel_weight(embedding_weight());
  w.output = kernel_weight(output_weight());
  const float norm_offset = family_.norm_plus_one ? 1.0f : 0.0f;  // the kernels multiply by 1 + w
  w.final_norm = f32_vector(param("model.norm.weight"), norm_offset);
  w.layers.resize(size_t(hp_.n_layer));
  for (int64_t l = 0; l < hp_.n_layer; ++l) {
    CpuLayerWeights& L = w.layers[size_t(l)];
    for (const FamilyTensor& t : family_.layer_tensors) {
      const torch::Tensor& p = param("model.layers." + std::to_string(l) + "." + t.hf);
      if (!p.defined()) continue;  // e.g. biases of a model without them
      if (is_matrix(t.role)) L.matrix[int(t.role)] = kernel_weight(p);
      else L.vector[int(t.role)] = f32_vector(p, ends_with(t.hf, "norm.weight") ? norm_offset : 0.0f);
    }
  }
  return w;
}

}  // namespace retort

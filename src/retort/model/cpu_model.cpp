#include "retort/model/cpu_model.h"

#include <cmath>
#include <cstring>

#include "retort/util/error.h"
#include "retort/util/parallel.h"

namespace retort {

void KvSlots::clear(int64_t slot) {
  check(slot >= 0 && slot < n_slots(), "kv cache: slot ", slot, " out of range [0, ", n_slots(), ")");
  lengths[size_t(slot)] = 0;
}

void KvSlots::clear_all() {
  for (auto& n : lengths) n = 0;
}

KvBuffers::KvBuffers(const ModelHParams& hp, int64_t n_slots, int64_t max_len, bool bf16)
    : max_len_(max_len), bf16_(bf16) {
  check(n_slots > 0, "kv cache: n_slots must be positive, got ", n_slots);
  check(max_len > 0, "kv cache: max_len must be positive, got ", max_len);
  lengths.assign(size_t(n_slots), 0);
  // Zeros, not garbage: masked-out entries are never read, but a finite cache keeps accidents finite.
  const size_t n = size_t(n_slots * hp.n_head_kv * max_len * hp.head_dim);
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    if (bf16) {
      k16_.emplace_back(n, 0);
      v16_.emplace_back(n, 0);
    } else {
      k32_.emplace_back(n, 0.0f);
      v32_.emplace_back(n, 0.0f);
    }
  }
}

KvView KvBuffers::view() {
  KvView v;
  v.bf16 = bf16_;
  v.max_len = max_len_;
  for (size_t l = 0; l < std::max(k16_.size(), k32_.size()); ++l) {
    v.k.push_back(bf16_ ? static_cast<void*>(k16_[l].data()) : static_cast<void*>(k32_[l].data()));
    v.v.push_back(bf16_ ? static_cast<void*>(v16_[l].data()) : static_cast<void*>(v32_[l].data()));
  }
  return v;
}

CachedRows make_cached_rows(const int64_t* tp, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                            const std::vector<int64_t>& n_new, const KvSlots& cache, int64_t n_vocab) {
  check(B > 0 && T > 0, "forward_cached: empty batch [", B, ", ", T, "]");
  check(int64_t(slots.size()) == B && int64_t(n_new.size()) == B, "forward_cached: ", B, " rows but ", slots.size(),
        " slots and ", n_new.size(), " n_new");
  CachedRows rows;
  rows.B = B;
  rows.T = T;
  rows.slots = slots;
  rows.old_len.resize(size_t(B));
  rows.new_len.resize(size_t(B));
  std::vector<char> used(size_t(cache.n_slots()), 0);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t s = slots[size_t(b)];
    check(s >= 0 && s < cache.n_slots(), "forward_cached: slot ", s, " out of range [0, ", cache.n_slots(), ")");
    check(!used[size_t(s)], "forward_cached: slot ", s, " appears twice in one batch");
    used[size_t(s)] = 1;
    check(n_new[size_t(b)] >= 1 && n_new[size_t(b)] <= T, "forward_cached: n_new[", b, "] = ", n_new[size_t(b)],
          " must be in 1..", T);
    rows.old_len[size_t(b)] = cache.lengths[size_t(s)];
    rows.new_len[size_t(b)] = rows.old_len[size_t(b)] + n_new[size_t(b)];
    check(rows.new_len[size_t(b)] <= cache.max_len(), "forward_cached: slot ", s, " would hold ",
          rows.new_len[size_t(b)], " tokens, cache max_len is ", cache.max_len());
    for (int64_t t = 0; t < n_new[size_t(b)]; ++t) {
      const int64_t id = tp[b * T + t];
      check(id >= 0 && id < n_vocab, "forward_cached: token id out of range [0, ", n_vocab, "): ", id);
      rows.tok.push_back(id);
      rows.slot.push_back(s);
      rows.pos.push_back(rows.old_len[size_t(b)] + t);
      rows.batch_row.push_back(b);
      rows.col.push_back(t);
    }
  }
  return rows;
}

// ---------------------------------------------------------------------------------------------
// RoPE

std::vector<float> rope_inv_freq_f32(double theta, int64_t d, const RopeScaling& rs, const std::vector<float>& factors) {
  std::vector<float> inv(size_t(d / 2));
  for (int64_t i = 0; i < d / 2; ++i) {
    // transformers: 1.0 / (base ** (arange(0, d, 2).float() / d)), each step in float32.
    const float exponent = float(2 * i) / float(d);
    inv[size_t(i)] = float(1.0 / double(float(std::pow(theta, double(exponent)))));
  }
  if (rs.type == "linear") {
    for (float& f : inv) f = f / float(rs.factor);
  } else if (rs.type == "llama3") {
    // transformers' _compute_llama3_parameters: low frequencies (long wavelengths) divided by `factor`,
    // high frequencies kept, the band between interpolated smoothly.
    const double old_len = double(rs.original_max_position);
    const double low_wavelen = old_len / rs.low_freq_factor, high_wavelen = old_len / rs.high_freq_factor;
    for (float& f : inv) {
      const float wavelen = float(2 * M_PI) / f;
      const float scaled = wavelen > low_wavelen ? f / float(rs.factor) : f;
      if (wavelen >= high_wavelen && wavelen <= low_wavelen) {
        const float smooth = (float(old_len) / wavelen - float(rs.low_freq_factor)) /
                             float(rs.high_freq_factor - rs.low_freq_factor);
        f = (1 - smooth) * scaled / float(rs.factor) + smooth * scaled;
      } else {
        f = scaled;
      }
    }
  } else {
    check(rs.type == "none", "rope: unknown scaling type ", rs.type);
  }
  if (!factors.empty())
    for (size_t i = 0; i < inv.size(); ++i) inv[i] = inv[i] / factors[i];
  return inv;
}

void CpuRope::gather(const int64_t* pos, int64_t n, std::vector<float>& cos, std::vector<float>& sin) {
  const int64_t half = int64_t(inv_freq_.size());
  int64_t need = 0;
  for (int64_t i = 0; i < n; ++i) need = std::max(need, pos[i] + 1);
  std::lock_guard<std::mutex> lock(mu_);
  if (need > rows_) {
    const int64_t grow = std::max({need, 2 * rows_, int64_t(1024)});
    cos_.resize(size_t(grow * half));
    sin_.resize(size_t(grow * half));
    for (int64_t p = rows_; p < grow; ++p)
      for (int64_t i = 0; i < half; ++i) {
        const float angle = float(p) * inv_freq_[size_t(i)];
        cos_[size_t(p * half + i)] = std::cos(angle);
        sin_[size_t(p * half + i)] = std::sin(angle);
      }
    rows_ = grow;
  }
  cos.resize(size_t(n * half));
  sin.resize(size_t(n * half));
  for (int64_t i = 0; i < n; ++i) {
    std::memcpy(cos.data() + i * half, cos_.data() + pos[i] * half, size_t(half) * 4);
    std::memcpy(sin.data() + i * half, sin_.data() + pos[i] * half, size_t(half) * 4);
  }
}

CpuRopeTables::CpuRopeTables(const ModelHParams& hp)
    : global(rope_inv_freq_f32(hp.rope_theta, hp.head_dim, hp.rope_scaling, hp.rope_freq_factors)),
      local(rope_inv_freq_f32(hp.rope_theta_local, hp.head_dim, RopeScaling{}, {})) {}

// ---------------------------------------------------------------------------------------------
// Families

const FamilyInfo& family_info(const std::string& arch) {
  if (arch == "llama" || arch == "mistral" || arch == "qwen2") return llama_family_info();
  if (arch == "gemma3") return gemma3_family_info();
  fail("model: architecture \"", arch, "\" is not supported (supported: ", supported_architectures(), ")");
}

std::string gguf_tensor_name(const FamilyInfo& family, const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string pre = "model.layers.";
  if (hf.rfind(pre, 0) != 0) return "";
  const size_t dot = hf.find('.', pre.size());
  if (dot == std::string::npos) return "";
  const std::string layer = hf.substr(pre.size(), dot - pre.size()), rest = hf.substr(dot + 1);
  for (const FamilyTensor& t : family.layer_tensors)
    if (rest == t.hf) return "blk." + layer + "." + t.gguf;
  return "";
}

void embed_rows(const cpu::WeightRef& e, const int64_t* tok, int64_t n, int64_t E, float* out) {
  parallel_for(0, n, 64, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) cpu::dequant_row(e, tok[i], E, out + i * E);
  });
}

// ---------------------------------------------------------------------------------------------
// A pass end to end

namespace {

// Rows of new tokens per pass: bounds the scratch (rows x (2 n_ff + ...) floats) while giving the matrix
// kernels enough rows to reuse each weight tile. Results do not depend on it.
constexpr int64_t kChunkRows = 512;

}  // namespace

void run_cached_rows(const ModelHParams& hp, const FamilyInfo& family, const CpuWeights& w, CpuRopeTables& rope,
                     const CachedRows& rows, const std::vector<int64_t>& want, const KvView& cache, bool hidden_only,
                     float* out, float* hidden_sums) {
  const int64_t E = hp.n_embd, V = hp.n_vocab, N = rows.n();
  check(int64_t(w.layers.size()) == hp.n_layer && int64_t(cache.k.size()) == hp.n_layer, "cached pass: ",
        w.layers.size(), " layers of weights and ", cache.k.size(), " of cache for a model of ", hp.n_layer);
  std::vector<float> hidden(size_t(int64_t(want.size()) * E));
  std::vector<float> chunk(size_t(std::min(N, kChunkRows) * E));
  size_t k = 0;
  for (int64_t r0 = 0; r0 < N; r0 += kChunkRows) {
    const int64_t r1 = std::min(N, r0 + kChunkRows);
    family.pass(hp, w, rope, rows, r0, r1, cache, chunk.data());
    if (hidden_sums != nullptr)
      for (int64_t i = r0; i < r1; ++i) {
        float* dst = hidden_sums + rows.batch_row[size_t(i)] * E;
        const float* src = chunk.data() + (i - r0) * E;
        for (int64_t e = 0; e < E; ++e) dst[e] += src[e];
      }
    for (; k < want.size() && want[k] < r1; ++k)
      std::memcpy(hidden.data() + int64_t(k) * E, chunk.data() + (want[k] - r0) * E, size_t(E) * 4);
  }
  if (hidden_only) {
    std::memcpy(out, hidden.data(), hidden.size() * 4);
    return;
  }
  cpu::matmul_wt(hidden.data(), int64_t(want.size()), E, &w.output, 1, out, V, /*accumulate=*/false);
}

}  // namespace retort

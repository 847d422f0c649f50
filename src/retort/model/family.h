// retort/model/family.h — what a model family's file needs besides the seam (causal_lm.h):
// parameters created with the loader's dtype, RoPE tables, the libtorch attention and cache plumbing
// shared by every family's libtorch passes, and the family registry. Not for the rest of retort.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "retort/model/causal_lm.h"

namespace retort {

// A new, uninitialized parameter tensor for a family constructor, in the dtype the current
// ParamDtypeScope says (float32 by default). Uninitialized memory is not resident until written, so a
// loader that replaces a matrix by its GGUF blocks never pays for the dense copy.
torch::Tensor new_param(torch::IntArrayRef shape);
class ParamDtypeScope {
 public:
  explicit ParamDtypeScope(torch::ScalarType dtype);
  ~ParamDtypeScope();
  ParamDtypeScope(const ParamDtypeScope&) = delete;
  ParamDtypeScope& operator=(const ParamDtypeScope&) = delete;

 private:
  torch::ScalarType saved_;
};

// y = x Wᵀ (+ b); weight [out, in]. The matmul runs in the weight dtype, the result is float32.
struct ProjImpl : torch::nn::Module {
  ProjImpl(int64_t in, int64_t out, bool bias);
  torch::Tensor forward(const torch::Tensor& x);  // float32 [..., in] -> float32 [..., out]
  torch::Tensor weight, bias;                     // [out, in], [out] or undefined
};
TORCH_MODULE(Proj);

// cos/sin tables of rotate-half RoPE for one set of frequencies, grown on demand (thread-safe).
class RopeTable {
 public:
  RopeTable() = default;
  explicit RopeTable(torch::Tensor inv_freq) : inv_freq_(std::move(inv_freq)) {}
  // cos, sin [n', D/2] float32 on `device`, n' >= n_pos. angle[p, i] = p * inv_freq[i] in float32,
  // as transformers computes it. Grown to at least min_rows (and doubling) so growth is rare.
  std::pair<torch::Tensor, torch::Tensor> get(int64_t n_pos, torch::Device device, int64_t min_rows = 0);

 private:
  torch::Tensor inv_freq_;  // [D/2] float32, CPU
  torch::Tensor cos_, sin_;
  std::mutex mu_;
};

// inv_freq[i] = theta^(-2i/d) in float32 as transformers computes it, then the scaling (linear,
// llama3) and the GGUF's per-frequency divisors. [head_dim / 2] float32.
torch::Tensor rope_inv_freq(double theta, int64_t head_dim, const RopeScaling& scaling,
                            const std::vector<float>& freq_factors);

// Rotate-half RoPE. x [B, H, T, D] float32; cos, sin broadcastable to [B, H, T, D/2].
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// Scaled dot-product attention with grouped K/V heads (libtorch ops: training and GPU path).
// q [B, H, T, D] float32; k, v [B, Hkv, L, D]; mask bool [B or 1, 1, T, L], true = may attend (every
// query row has at least one true). scores = q·kᵀ * scale. Returns [B, T, H*D] float32.
torch::Tensor attend_torch(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                           const torch::Tensor& mask, double scale);

// Causal mask [1, 1, T, T] (window > 0: also t - j < window) for a full pass from position 0.
torch::Tensor causal_mask(int64_t T, int64_t window, torch::Device device);

// A CachedRows batch as libtorch tensors on `device`, for a family's cached_hidden_torch.
struct TorchCachedBatch {
  TorchCachedBatch(const CachedRows& rows, torch::Device device);
  int64_t B, T, L;       // L: keys of the longest slot after this batch
  torch::Tensor pos;     // [B, T] int64: old_len[b] + t (padding positions continue the run)
  // Key j visible to (b, t): j < new_len[b], j <= pos[b, t], and pos - j < window when window > 0.
  torch::Tensor mask(int64_t window) const;  // [B, 1, T, L] bool
  // Writes the valid tokens' k, v (each [B, T, Hkv, D]) to one layer's cache at (slot, pos), and
  // returns the used prefix [0, L) of each row's slot: k, v [B, Hkv, L, D].
  std::pair<torch::Tensor, torch::Tensor> store(torch::Tensor& k_cache, torch::Tensor& v_cache, const torch::Tensor& k,
                                                const torch::Tensor& v) const;
  // Rows of x [B, T, ...] at each batch row's last valid token: [B, ...].
  torch::Tensor last_rows(const torch::Tensor& x) const;

 private:
  torch::Tensor flat_, w_slot_, w_pos_, slots_, new_len_, last_;
  int64_t first_slot_ = 0;
  bool contiguous_ = true;
};

// GGUF names shared by the families: model.embed_tokens.weight -> token_embd.weight, model.norm.weight ->
// output_norm.weight, lm_head.weight -> output.weight, and model.layers.N.<role> -> blk.N.<gguf role>
// for each (role, gguf role) pair of `roles`. "" when the name has no GGUF tensor.
std::string gguf_name_by_role(const std::string& param_name, const char* const (*roles)[2], size_t n_roles);

// Each family's file defines its constructor; make_causal_lm (causal_lm.cpp) maps hp.arch to it.
CausalLM make_llama_family(const ModelHParams& hp);  // llama, mistral, qwen2
CausalLM make_gemma3(const ModelHParams& hp);        // gemma3

}  // namespace retort

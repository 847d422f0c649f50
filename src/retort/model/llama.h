// retort/model/llama.h — the Llama family forward pass on libtorch:
// Llama 2/3 (incl. llama3 RoPE scaling), SmolLM/SmolLM2, Mistral, Qwen2/2.5 (q/k/v bias);
// grouped-query attention; tied or separate output embedding.
//
//   x = embed(tokens)
//   per layer:  h = x + o_proj(attn(rms_norm(x)))
//               x = h + down(silu(gate(rms_norm(h))) * up(rms_norm(h)))
//   logits = lm_head(rms_norm(x))
//
// RoPE is rotate-half (NeoX / Hugging Face layout); the GGUF loader un-permutes
// llama.cpp's interleaved q/k rows so one implementation serves both formats.
// Parameter names equal Hugging Face's (model.layers.N.self_attn.q_proj.weight, ...),
// so named_parameters() maps 1:1 onto a transformers checkpoint.
// The residual stream, norms, RoPE and softmax are float32; weights stay in their dtype.
#pragma once

#include <cstdint>
#include <unordered_map>
#include <vector>

#include <torch/torch.h>

#include "retort/model/cpu_kernels.h"
#include "retort/model/hparams.h"
#include "retort/model/kv_cache.h"

namespace retort {

// y = x Wᵀ (+ b); weight [out, in]. Parameters are created uninitialized (loading fills them;
// LlamaModelImpl::init_weights draws them for training from scratch).
struct ProjImpl : torch::nn::Module {
  ProjImpl(int64_t in, int64_t out, bool bias);
  torch::Tensor forward(const torch::Tensor& x);  // x float32 [..., in] -> float32 [..., out]
  torch::Tensor weight, bias;                     // [out, in], [out] or undefined
};
TORCH_MODULE(Proj);

// x * rsqrt(mean(x²) + eps) * w, computed in float32.
struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int64_t n, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // float32 [..., n]
  torch::Tensor weight;                           // [n]
  double eps;
};
TORCH_MODULE(RmsNorm);

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const ModelHParams& hp);
  Proj q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
};
TORCH_MODULE(Attention);

struct MlpImpl : torch::nn::Module {
  explicit MlpImpl(const ModelHParams& hp);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  Proj gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(Mlp);

struct DecoderLayerImpl : torch::nn::Module {
  explicit DecoderLayerImpl(const ModelHParams& hp);
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  Attention self_attn{nullptr};
  Mlp mlp{nullptr};
};
TORCH_MODULE(DecoderLayer);

// Holds embed_tokens, layers, norm under the name "model" (as transformers does).
struct LlamaBackboneImpl : torch::nn::Module {
  explicit LlamaBackboneImpl(const ModelHParams& hp);
  torch::Tensor embed_tokens;  // [n_vocab, n_embd], registered as "embed_tokens.weight"
  std::vector<DecoderLayer> layers;
  RmsNorm norm{nullptr};
};
TORCH_MODULE(LlamaBackbone);

class LlamaModelImpl : public torch::nn::Module {
 public:
  explicit LlamaModelImpl(const ModelHParams& hp);

  // Full causal pass without cache (training / scoring), positions 0..T-1.
  // tokens [B, T] int64 -> logits [B, T, V] float32. Differentiable.
  torch::Tensor forward(const torch::Tensor& tokens);
  // Same, returning the final hidden states after the output norm: [B, T, n_embd] float32.
  torch::Tensor forward_hidden(const torch::Tensor& tokens);

  // Cached pass (inference, no autograd): tokens [B, T] int64, right-padded; slots[b] is the
  // cache slot of row b (distinct); n_new[b] in 1..T valid tokens of row b. Row b's tokens take
  // positions cache.lengths[slots[b]] .. + n_new[b] - 1 and attend causally to everything already
  // in its slot; their K/V are written to the cache and lengths advance by n_new.
  // Returns float32 logits: last_only ? [B, V] (each row's last valid token) : [B, T, V]
  // (rows' padding positions hold meaningless values).
  torch::Tensor forward_cached(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                               const std::vector<int64_t>& n_new, KvCache& cache, bool last_only);

  // Output projection of float32 hidden states [..., n_embd] -> logits [..., V] float32.
  torch::Tensor lm_logits(const torch::Tensor& hidden);

  // Normal(0, std) weights, unit norms, zero biases (training from scratch). Deterministic in seed.
  void init_weights(uint64_t seed, double std = 0.02);

  // The CPU decode step can multiply a weight in the ggml blocks its checkpoint stores (Q8_0, Q4_1)
  // instead of the dense parameter: the blocks dequantize to exactly the float32 values the loader put
  // in the parameter (bf16 parameters: those values rounded), and a step reads 3-6x fewer bytes, which
  // is what batch-1 decode is bound by. load_model attaches them for GGUF checkpoints on the CPU.
  // blocks: [rows, K/32] blocks in this module's row order. A copy is used only while the parameter
  // is unchanged since attaching (same storage, same version counter): training it, copy_, .to()
  // make the decode step fall back to the parameter.
  void attach_quantized(const torch::Tensor& param, cpu::WeightFormat format, std::vector<uint8_t> blocks);
  void drop_quantized() { quantized_.clear(); }
  // Attached copies that are still valid (the decode step will use them), and their bytes.
  int64_t quantized_in_use() const;
  int64_t quantized_bytes() const;
  // Batched decode (at least cpu::kPanelMinRows rows) of a bf16 model on an AVX512-BF16 CPU reads its
  // weights packed into panels (cpu::pack_bf16_panels): made from the parameters on the first such step
  // (+2 bytes per weight, ~270 MB for SmolLM2-135M), remade when a parameter changes. Bytes held now:
  int64_t panel_bytes() const;
  void drop_panels() { panels_.clear(); }

  const ModelHParams& hparams() const { return hp_; }
  torch::Device device() const;
  torch::ScalarType dtype() const;  // of the weights

  LlamaBackbone model{nullptr};
  Proj lm_head{nullptr};  // null when tied: logits use model->embed_tokens

 private:
  // cos/sin tables [n_pos, head_dim/2] float32 on `device`, grown to cover n_pos positions.
  void ensure_rope(int64_t n_pos, torch::Device device);
  // forward_cached for one new token per row on the CPU (the decode step): fused kernels from
  // cpu_kernels.h, no per-layer libtorch ops. tok [B] ids; old_len[b] = cached tokens of row b.
  torch::Tensor decode_step_cpu(const std::vector<int64_t>& tok, const std::vector<int64_t>& slots,
                                const std::vector<int64_t>& old_len, KvCache& cache);
  bool can_decode_cpu(const KvCache& cache) const;
  // The weight matrices the decode step multiplies (7 per layer, then the output head).
  std::vector<const torch::Tensor*> decode_matrices() const;
  // Packs (or repacks, when stale) the panels of every bf16 decode matrix.
  void ensure_panels();
  // The operand the decode kernels read for weight w: its attached quantized copy when valid, else w.
  cpu::WeightRef decode_weight(const torch::Tensor& w) const;

  struct QuantizedCopy {
    cpu::WeightFormat format;
    std::vector<uint8_t> blocks;
    const void* data = nullptr;  // the parameter's storage and version when attached
    int64_t version = 0;
  };
  std::unordered_map<const c10::TensorImpl*, QuantizedCopy> quantized_;
  struct PanelCopy {
    torch::Tensor packed;  // int16 [bf16_panels_size], 64-byte aligned by libtorch's allocator
    const void* data = nullptr;
    int64_t version = 0;
  };
  std::unordered_map<const c10::TensorImpl*, PanelCopy> panels_;

  ModelHParams hp_;
  torch::Tensor inv_freq_;       // [head_dim/2] float32 (CPU), scaling applied
  torch::Tensor cos_, sin_;      // [n_rope, head_dim/2] float32, not registered (not weights)
};
TORCH_MODULE(LlamaModel);

}  // namespace retort

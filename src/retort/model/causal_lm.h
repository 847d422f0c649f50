// retort/model/causal_lm.h — the seam between "a causal language model" and the rest of retort.
//
// Decoding, capture, the trainer, the losses, evaluation and export see a model only through
// CausalLMImpl. A model family's training module (model/llama.cpp, model/gemma3.cpp) is one file that
// subclasses it; make_causal_lm (causal_lm.cpp) maps the architecture to it, and its torch-free inference
// pass lives beside it (model/*_rows.cpp). docs/model-families.md says how to add a family.
//
// What the base class does once for every family:
//  - forward_cached: validates a batch against the KV cache and runs it either on the CPU kernels
//    (cpu_kernels.h; prefill and decode alike, one row per new token) or, on a GPU or when the
//    kernels cannot run, on the family's libtorch pass;
//  - weights the kernels read in another form than the dense parameter: the GGUF's ggml blocks
//    (attach_kernel_weight) and packed bf16 panels for batched bf16 decode;
//  - the output head and RoPE tables.
// What a family writes: its modules (parameter names equal Hugging Face's, so named_parameters()
// maps 1:1 onto a transformers checkpoint), forward_hidden (libtorch, differentiable), the cached
// libtorch pass, the CPU rows pass, and the names its tensors have in a GGUF file.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <torch/torch.h>

#include "retort/model/cpu_kernels.h"
#include "retort/model/cpu_model.h"
#include "retort/model/hparams.h"
#include "retort/model/kv_cache.h"

namespace retort {

class CausalLMImpl : public torch::nn::Module, public CachedLM {
 public:
  explicit CausalLMImpl(const ModelHParams& hp);
  ~CausalLMImpl() override = default;

  // ---- the passes --------------------------------------------------------------------------------
  // Full causal pass without cache (training, scoring), positions 0..T-1, libtorch ops, differentiable.
  // tokens [B, T] int64 -> hidden states after the final norm [B, T, n_embd] float32.
  virtual torch::Tensor forward_hidden(const torch::Tensor& tokens) = 0;
  // tokens [B, T] -> logits [B, T, V] float32.
  torch::Tensor forward(const torch::Tensor& tokens) { return lm_logits(forward_hidden(tokens)); }
  // Output projection of final hidden states [..., n_embd] float32 -> logits [..., V] float32.
  virtual torch::Tensor lm_logits(const torch::Tensor& hidden);

  // Cached pass (inference, no autograd): tokens [B, T] int64, right-padded; slots[b] is the cache
  // slot of row b (distinct); n_new[b] in 1..T valid tokens of row b. Row b's tokens take positions
  // cache.lengths[slots[b]] .. + n_new[b] - 1 and attend causally to everything already in its slot;
  // their K/V are written to the cache and lengths advance by n_new.
  // Returns float32 logits: last_only ? [B, V] (each row's last valid token) : [B, T, V] (padding
  // positions hold zeros).
  // On the CPU kernel path every token is one row through the same kernels, whatever the batch: the
  // logits of a token in float32 do not depend on which other sequences share the batch, nor on
  // whether its prompt was prefilled at once or fed token by token (cpu_kernels.h says which kernel
  // paths hold this; bf16 weights with 4+ rows do not).
  torch::Tensor forward_cached(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                               const std::vector<int64_t>& n_new, KvCache& cache, bool last_only);
  // The same pass, returning the final hidden states (after the output norm) of every position instead
  // of logits: [B, T, n_embd] float32 (padding positions zero). For scoring many positions against a
  // large vocabulary without materializing [B, T, V]: project chunks of rows with lm_logits.
  torch::Tensor cached_hidden(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                              const std::vector<int64_t>& n_new, KvCache& cache);

  // CachedLM (generation): forward_cached on a KvCache of this model's device and dtype.
  std::unique_ptr<KvSlots> new_cache(int64_t n_slots, int64_t max_len) override;
  void forward_last(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                    const std::vector<int64_t>& n_new, KvSlots& cache, float* logits) override;

  // Normal(0, std) matrices, zero biases, norm weights at norm_identity(). Deterministic in seed.
  void init_weights(uint64_t seed, double std = 0.02);
  // The norm weight that makes a norm the plain RMS normalization: 1 (x·w), Gemma 0 (x·(1 + w)).
  float norm_identity() const { return family_.norm_plus_one ? 0.0f : 1.0f; }

  // ---- checkpoints (from the family's FamilyInfo, cpu_model.h) ----------------------------------------
  // The GGUF tensor of a parameter ("model.layers.3.mlp.up_proj.weight" -> "blk.3.ffn_up.weight"),
  // "" if it has none.
  std::string gguf_name(const std::string& param_name) const { return gguf_tensor_name(family_, param_name); }
  // llama.cpp's converter permutes the q/k rows of some architectures for interleaved RoPE; > 0: the
  // parameter's rows are so permuted in GGUF files, in this many heads (the loader undoes it).
  int64_t gguf_permuted_heads(const std::string& param_name) const;
  // A GGUF may store a transformed value: parameter = stored + offset (Gemma's norms store 1 + w).
  float gguf_offset(const std::string& param_name) const;
  const FamilyInfo& family() const { return family_; }

  // ---- weights the kernels read in another form -----------------------------------------------------
  // The embedding table [V, E] and the output head [V, E] (the embedding when tied).
  virtual const torch::Tensor& embedding_weight() const = 0;
  virtual const torch::Tensor& output_weight() const = 0;

  // A matrix parameter [rows, K] may be read by the CPU kernels from ggml blocks instead of its dense
  // values: they dequantize to exactly the float32 values the loader puts in the parameter. `data`
  // points to rows * weight_row_bytes(format, K) bytes in this module's row order, kept alive by
  // `owner` (a vector we own, or the GGUF file's mapping).
  // Two kinds: a *copy* (only_copy false: the parameter holds the same values; used only while the
  // parameter is unchanged since attaching — same storage and version counter — so training, copy_ or
  // .to() make the kernels fall back to the parameter), or the *only* copy (inference-only loads: the
  // parameter is made hollow — one NaN broadcast to its shape, no memory — and the libtorch passes
  // refuse to run; dense() turns false).
  void attach_kernel_weight(const torch::Tensor& param, cpu::WeightFormat format, const void* data,
                            std::shared_ptr<const void> owner, bool only_copy);
  void drop_kernel_weights() { blocks_.clear(); }
  // Matrices the kernels read from blocks now, and the bytes those blocks hold.
  int64_t quantized_in_use() const;
  int64_t quantized_bytes() const;
  // Batched decode (at least cpu::kPanelMinRows rows) of a bf16 model on an AVX512-BF16 CPU reads its
  // dense weights packed into panels (cpu::pack_bf16_panels): made on the first such step (+2 bytes
  // per weight), remade when a parameter changes. Bytes held now:
  int64_t panel_bytes() const;
  void drop_panels() { panels_.clear(); }

  // True when the model holds dense values for every parameter (false after an inference-only load).
  bool dense() const;
  // Tests and benchmarks: false forces the libtorch cached pass on the CPU (the reference the kernel
  // path is checked against).
  void set_cpu_kernels(bool on) { cpu_kernels_ = on; }

  const ModelHParams& hparams() const override { return hp_; }
  torch::Device device() const;
  torch::ScalarType dtype() const;  // of the weights (the first floating parameter's)

 protected:
  // The libtorch cached pass (GPU; CPU when the kernels cannot run). Returns final hidden states of
  // the rows asked for: hidden [B, T, E] float32 (last_only: [B, E]).
  virtual torch::Tensor cached_hidden_torch(const torch::Tensor& tokens, const CachedRows& rows, KvCache& cache,
                                            bool last_only) = 0;
  // The operand the kernels read for matrix w: its blocks when attached and valid, else w itself
  // (with its panels when packed and valid).
  cpu::WeightRef kernel_weight(const torch::Tensor& w) const;

  ModelHParams hp_;
  const FamilyInfo& family_;

 private:
  bool can_run_cpu_kernels(const KvCache& cache);
  void ensure_panels();
  // The parameter named `name` (cached name lookup); undefined when absent.
  const torch::Tensor& param(const std::string& name);
  // Every parameter's place in the CPU pass: CpuWeights pointing at the parameters (their blocks, their
  // dense values, float32 copies of vectors). Cheap: pointers and cached small copies.
  CpuWeights cpu_weights();
  // The matrices the CPU pass multiplies (for panels and the kernel check).
  std::vector<const torch::Tensor*> kernel_matrices();
  // A small float32 CPU copy of a vector parameter (norm weights, biases), cached while unchanged.
  const float* f32_vector(const torch::Tensor& p, float offset = 0.0f);
  enum class CachedOut { kLastLogits, kAllLogits, kAllHidden };
  torch::Tensor run_cached(const torch::Tensor& tokens, const std::vector<int64_t>& slots,
                           const std::vector<int64_t>& n_new, KvCache& cache, CachedOut what);

  struct Blocks {
    cpu::WeightFormat format;
    const void* data = nullptr;
    std::shared_ptr<const void> owner;
    int64_t bytes = 0;
    bool only_copy = false;             // the parameter is hollow (inference-only load)
    const void* param_data = nullptr;   // a copy: the parameter's storage and version when attached
    int64_t param_version = 0;
  };
  // w's blocks if attached and usable now (only copy, or a copy of w's current values), else null.
  const Blocks* valid_blocks(const torch::Tensor& w) const;
  std::unordered_map<const c10::TensorImpl*, Blocks> blocks_;
  struct Panels {
    torch::Tensor packed;  // int16 [bf16_panels_size]
    const void* data = nullptr;
    int64_t version = 0;
  };
  std::unordered_map<const c10::TensorImpl*, Panels> panels_;
  struct VectorCopy {
    std::vector<float> values;
    const void* data = nullptr;
    int64_t version = 0;
    float offset = 0;
  };
  std::unordered_map<const c10::TensorImpl*, VectorCopy> vectors_;
  bool cpu_kernels_ = true;
  std::unordered_map<std::string, torch::Tensor> params_by_name_;
  std::unique_ptr<CpuRopeTables> cpu_rope_;
};

// A model of any family: TORCH_MODULE-style holder (m->forward(...), *m, m.ptr()).
class CausalLM : public torch::nn::ModuleHolder<CausalLMImpl> {
 public:
  CausalLM() : ModuleHolder(nullptr) {}
  CausalLM(std::nullptr_t) : ModuleHolder(nullptr) {}
  // Any family's module (shared_ptr<LlamaModelImpl>, LlamaModel(...).ptr(), ...).
  template <class T, class = std::enable_if_t<std::is_base_of_v<CausalLMImpl, T>>>
  CausalLM(std::shared_ptr<T> module) : ModuleHolder(std::shared_ptr<CausalLMImpl>(std::move(module))) {}
  template <class T, class = std::enable_if_t<std::is_base_of_v<CausalLMImpl, T>>>
  CausalLM(const torch::nn::ModuleHolder<T>& holder) : CausalLM(holder.ptr()) {}
};

// A fresh model of hp.arch's family with uninitialized weights. Unknown arch -> retort::Error
// naming the supported ones.
CausalLM make_causal_lm(const ModelHParams& hp);

}  // namespace retort

// retort/model/cpu_model.h — a causal LM's cached forward pass on the CPU kernels, without libtorch.
//
// Every new token, prefill or decode, is one row: embed, then per layer the family's sequence of kernels
// (cpu_kernels.h), then the output norm and head. A family's pass reads its weights through CpuWeights —
// matrices as cpu::WeightRef (dense float32/bf16 or GGUF blocks), vectors as float32 — so the same code
// runs for a libtorch model (CausalLMImpl points CpuWeights at its parameters) and for a model loaded
// straight from a GGUF file's mapping (runtime_model.h), and both give the same bits.
//
// A family is: a FamilyInfo (which tensors a layer has, their Hugging Face and GGUF names, how GGUF
// stores them) and a RowsPass (the forward pass). model/llama_rows.cpp and model/gemma3_rows.cpp are the
// two; docs/model-families.md says how to add a third.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "retort/model/cpu_kernels.h"
#include "retort/model/hparams.h"

namespace retort {

// ---- the KV cache ------------------------------------------------------------------------------

// What the kernels see of a cache: per layer k and v [n_slots, n_head_kv, max_len, head_dim].
struct KvView {
  std::vector<void*> k, v;
  bool bf16 = false;
  int64_t max_len = 0;
};

// A cache of n_slots sequences; each slot advances independently (slot s holds lengths[s] tokens).
class KvSlots {
 public:
  virtual ~KvSlots() = default;
  std::vector<int64_t> lengths;
  int64_t n_slots() const { return int64_t(lengths.size()); }
  virtual int64_t max_len() const = 0;
  virtual KvView view() = 0;  // throws when the cache is not in CPU memory
  void clear(int64_t slot);   // lengths[slot] = 0 (stale entries stay finite and are masked)
  void clear_all();
};

// A cache in plain CPU memory, float32 or bf16, zero-filled.
class KvBuffers : public KvSlots {
 public:
  KvBuffers(const ModelHParams& hp, int64_t n_slots, int64_t max_len, bool bf16);
  int64_t max_len() const override { return max_len_; }
  KvView view() override;

 private:
  int64_t max_len_ = 0;
  bool bf16_ = false;
  std::vector<std::vector<uint16_t>> k16_, v16_;
  std::vector<std::vector<float>> k32_, v32_;
};

// ---- a batch of new tokens ---------------------------------------------------------------------------

// One batch for a cached pass, flattened: row i is token tok[i] of the batch's row b = batch_row[i] (at
// column t = col[i] of the padded [B, T] input), going to cache slot slot[i] at position pos[i]. Rows
// are ordered by (b, t), so each slot's positions ascend.
struct CachedRows {
  int64_t B = 0, T = 0;
  std::vector<int64_t> tok, slot, pos, batch_row, col;
  std::vector<int64_t> slots, old_len, new_len;  // per batch row b
  int64_t n() const { return int64_t(tok.size()); }
};

// Validates a padded batch against the cache (slots distinct and in range, n_new[b] in 1..T, ids in the
// vocabulary, room in every slot) and flattens it. tokens: [B, T] row-major.
CachedRows make_cached_rows(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                            const std::vector<int64_t>& n_new, const KvSlots& cache, int64_t n_vocab);

// ---- weights -------------------------------------------------------------------------------------------

// The tensors a layer may have. Families use a subset.
enum class LayerTensor : uint8_t {
  kAttnNorm, kQ, kK, kV, kO, kQBias, kKBias, kVBias, kQNorm, kKNorm, kPostAttnNorm,
  kFfnNorm, kGate, kUp, kDown, kPostFfnNorm,
};
constexpr int kLayerTensors = 16;

// One layer's weights as the kernels read them: matrices [rows, K]; vectors float32, norm weights as the
// kernel multiplies by them (Gemma: 1 + w). Absent tensors are null / have no data.
struct CpuLayerWeights {
  cpu::WeightRef matrix[kLayerTensors];
  const float* vector[kLayerTensors] = {};
  const cpu::WeightRef& m(LayerTensor t) const { return matrix[int(t)]; }
  const float* v(LayerTensor t) const { return vector[int(t)]; }
};

struct CpuWeights {
  cpu::WeightRef embedding;  // [V, E]
  cpu::WeightRef output;     // [V, E] (the embedding when tied)
  const float* final_norm = nullptr;
  std::vector<CpuLayerWeights> layers;
  bool bf16 = false;  // the model's dtype is bf16 (activations rounded where a bf16 model rounds them)
};

// ---- families ------------------------------------------------------------------------------------------

// cos/sin tables of rotate-half RoPE for one set of frequencies, float32, grown on demand (thread-safe).
// angle[p, i] = float(p) * inv_freq[i] in float32, as transformers computes it.
class CpuRope {
 public:
  CpuRope() = default;
  explicit CpuRope(std::vector<float> inv_freq) : inv_freq_(std::move(inv_freq)) {}
  // cos, sin [n, D/2] at positions pos[0..n).
  void gather(const int64_t* pos, int64_t n, std::vector<float>& cos, std::vector<float>& sin);
  const std::vector<float>& inv_freq() const { return inv_freq_; }

 private:
  std::vector<float> inv_freq_;
  std::vector<float> cos_, sin_;  // [rows, D/2]
  int64_t rows_ = 0;
  std::mutex mu_;
};

// inv_freq[i] = theta^(-2i/d) in float32 as transformers computes it, then the scaling (linear, llama3)
// and the GGUF's per-frequency divisors. [head_dim / 2].
std::vector<float> rope_inv_freq_f32(double theta, int64_t head_dim, const RopeScaling& scaling,
                                     const std::vector<float>& freq_factors);

// The RoPE tables a model's pass uses: global (every layer of the Llama family) and, for families with
// local layers, local.
struct CpuRopeTables {
  explicit CpuRopeTables(const ModelHParams& hp);
  CpuRope global, local;
};

// A family's pass over rows [r0, r1) of `rows`: their K/V go to the cache; final hidden states after the
// output norm, float32 [r1 - r0, n_embd], into out.
using RowsPass = void (*)(const ModelHParams& hp, const CpuWeights& w, CpuRopeTables& rope, const CachedRows& rows,
                          int64_t r0, int64_t r1, const KvView& cache, float* out);

struct FamilyTensor {
  LayerTensor role;
  const char* hf;    // under "model.layers.N."
  const char* gguf;  // under "blk.N."
};

struct FamilyInfo {
  const char* name;
  RowsPass pass;
  std::vector<FamilyTensor> layer_tensors;
  // Norm weights are w in checkpoints and the kernels multiply by 1 + w (Gemma); GGUF files store 1 + w.
  bool norm_plus_one = false;
  // llama.cpp's converter permutes the q/k rows of these architectures for interleaved RoPE.
  std::vector<std::string> gguf_permuted_archs;
  // Embeddings are multiplied by sqrt(n_embd) (Gemma).
  bool scaled_embedding = false;
};

// The family of an architecture (hp.arch); unknown -> retort::Error naming the supported ones.
const FamilyInfo& family_info(const std::string& arch);
const FamilyInfo& llama_family_info();   // model/llama_rows.cpp
const FamilyInfo& gemma3_family_info();  // model/gemma3_rows.cpp

// The runtime's names of a parameter: "" when none. hf: "model.layers.3.mlp.up_proj.weight" ->
// "blk.3.ffn_up.weight"; also the embedding, output norm and head.
std::string gguf_tensor_name(const FamilyInfo& family, const std::string& hf_name);

// Rows tok[0..n) of an embedding table [V, E] (any WeightFormat) as float32 [n, E].
void embed_rows(const cpu::WeightRef& embedding, const int64_t* tok, int64_t n, int64_t E, float* out);

// ---- a cached forward pass, end to end ---------------------------------------------------------------

// Runs rows in chunks through the family's pass, then the head for the rows asked for:
// want_rows (indices into rows, ascending); out: logits [n_want, V], or (hidden_only) final hidden
// states [n_want, E]. The cache lengths are not touched (the caller advances them).
// hidden_sums (optional): [B, E]; every row's final hidden state is added to hidden_sums[batch_row]
// (the crawl monitor's prompt embedding is their mean over a prompt: no extra forward).
void run_cached_rows(const ModelHParams& hp, const FamilyInfo& family, const CpuWeights& w, CpuRopeTables& rope,
                     const CachedRows& rows, const std::vector<int64_t>& want_rows, const KvView& cache,
                     bool hidden_only, float* out, float* hidden_sums = nullptr);

// The model interface generation uses (decode/generate.h): any model that can extend a KV cache by a
// batch of tokens and return each row's next-token logits. Implemented by runtime models (no libtorch)
// and by libtorch models (CausalLMImpl).
class CachedLM {
 public:
  virtual ~CachedLM() = default;
  virtual const ModelHParams& hparams() const = 0;
  // A cache of n_slots sequences of up to max_len tokens, in the model's KV dtype and place.
  virtual std::unique_ptr<KvSlots> new_cache(int64_t n_slots, int64_t max_len) = 0;
  // tokens [B, T] row-major, right-padded; row b's n_new[b] tokens go to slot slots[b] (see
  // make_cached_rows) and the cache advances. logits: [B, V] float32, each row's last new token.
  virtual void forward_last(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                            const std::vector<int64_t>& n_new, KvSlots& cache, float* logits) = 0;
  // forward_last, and also the sum over each batch row's new tokens of their final hidden states
  // (after the final norm): hidden_sums [B, E], overwritten. Returns false (sums untouched) for a
  // model that cannot give them at no extra cost; the default.
  virtual bool forward_last_pooled(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                                   const std::vector<int64_t>& n_new, KvSlots& cache, float* logits,
                                   float* hidden_sums) {
    forward_last(tokens, B, T, slots, n_new, cache, logits);
    return false;
  }
};

}  // namespace retort

// retort/model/runtime_model.h — load a checkpoint for inference without libtorch.
//
// A RuntimeModel runs the family's cached pass (cpu_model.h) on weights read in place: a GGUF file's
// matrices stay in the file's mapping as ggml blocks (or float32 / bf16) and are never copied or made
// dense; only small vectors (norms, biases) and tensors in a format the kernels do not read (F16,
// Q2_K, Q3_K, ...: dequantized to float32) and llama.cpp's permuted q/k rows (reordered) are copied.
// Hugging Face directories are read from their safetensors mappings the same way (F32 in place, F16
// converted). BF16 matrices are read in place by a bf16 model; a float32 model gets float32 copies,
// since the BF16 kernel rounds x to bf16. Resident memory is about the file's size — what a device
// expects — except a BF16 checkpoint run in float32 (about twice).
//
// The checkpoint's metadata (path resolution, tokenizer, chat template, end-of-generation ids,
// generation defaults) is read here for both loaders: this one and the libtorch loader (loader.h).
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/model/cpu_model.h"
#include "retort/model/hparams.h"

namespace retort {

class Tokenizer;

// $RETORT_HOME (default ~/.cache/retort) + "/models".
std::string model_cache_dir();
// An existing .gguf file | an existing directory | a short name in the cache (<name>.gguf or
// <name>/). Otherwise retort::Error listing what the cache holds and pointing to scripts/setup.sh.
std::string resolve_model_path(const std::string& spec);

// What a checkpoint says besides its weights.
struct CheckpointInfo {
  std::string path, format;  // resolved path; "gguf" | "hf"
  ModelHParams hparams;
  std::shared_ptr<Tokenizer> tokenizer;  // null if the checkpoint has none (or it was not asked for)
  std::string chat_template;             // Jinja source ("" if none)
  std::vector<int32_t> eos_ids;          // tokenizer eog ids ∪ generation_config/config eos_token_id, sorted
  nlohmann::json generation_defaults = nlohmann::json::object();  // generation_config.json or {}
  struct TensorEntry {
    std::string name;
    std::vector<int64_t> shape;
    std::string type;  // ggml type name ("Q4_1") or safetensors dtype ("BF16")
    uint64_t bytes;
  };
  std::vector<TensorEntry> tensors;  // as stored in the checkpoint, for `retort inspect`
};
// Reads everything but the weights (hyperparameters validated; the tokenizer when load_tokenizer).
CheckpointInfo read_checkpoint_info(const std::string& spec, bool load_tokenizer);

// Teacher forcing over many token sequences: the logits [n_vocab] at every position t of each sequence s
// (the distribution of token t + 1 given seqs[s][0..t]), through fn(s, t, logits). Sequences run longest
// first in groups of `group` cache slots, `chunk` tokens per forward, so rows of similar length pad
// little. The rows of one forward go to fn on all threads at once (parallel_for), each (s, t) exactly
// once and in no set order: fn must write only what belongs to its (s, t). Rows are batched, so logits
// equal one sequence at a time up to the kernels' summation order.
class RuntimeModel;
void for_each_position_logits(RuntimeModel& model, const std::vector<std::vector<int32_t>>& seqs, int64_t chunk,
                              int64_t group, const std::function<void(size_t s, int64_t t, const float* logits)>& fn);

struct RuntimeLoadOptions {
  bool load_tokenizer = true;
  // bf16 numerics: a bf16 KV cache, and activations rounded to bf16 where a bf16 model rounds them
  // (quantized matrices with 4+ rows multiply in bf16 on AVX512-BF16). Default: float32 throughout.
  bool bf16 = false;
};

class RuntimeModel : public CachedLM {
 public:
  const ModelHParams& hparams() const override { return hp_; }
  std::unique_ptr<KvSlots> new_cache(int64_t n_slots, int64_t max_len) override;
  void forward_last(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                    const std::vector<int64_t>& n_new, KvSlots& cache, float* logits) override;
  bool forward_last_pooled(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                           const std::vector<int64_t>& n_new, KvSlots& cache, float* logits,
                           float* hidden_sums) override;
  // The rows asked for of a batch (want_rows: indices into make_cached_rows' rows): their logits
  // [n_want, V], or final hidden states [n_want, E] (hidden_only). The cache advances.
  void forward_rows(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                    const std::vector<int64_t>& n_new, KvSlots& cache, bool last_only, bool hidden_only,
                    std::vector<float>& out);

  const FamilyInfo& family() const { return *family_; }
  const CpuWeights& weights() const { return w_; }
  // Bytes of weights this model holds: read in place from the checkpoint's mapping, and copied.
  int64_t mapped_bytes() const { return mapped_bytes_; }
  int64_t copied_bytes() const { return copied_bytes_; }

 private:
  friend std::shared_ptr<RuntimeModel> load_runtime_weights(const CheckpointInfo&, const RuntimeLoadOptions&);
  RuntimeModel(const ModelHParams& hp);
  ModelHParams hp_;
  const FamilyInfo* family_;
  CpuWeights w_;
  std::unique_ptr<CpuRopeTables> rope_;
  bool bf16_ = false;
  std::vector<std::shared_ptr<const void>> owners_;  // mappings and copies the weights point into
  int64_t mapped_bytes_ = 0, copied_bytes_ = 0;
};

// The weights of the checkpoint `info` describes, as a runtime model.
std::shared_ptr<RuntimeModel> load_runtime_weights(const CheckpointInfo& info, const RuntimeLoadOptions& opts);

// A checkpoint loaded for inference: its metadata and the runtime model.
struct RuntimeLoaded : CheckpointInfo {
  std::shared_ptr<RuntimeModel> model;
  double load_seconds = 0;
};
RuntimeLoaded load_runtime_model(const std::string& spec, const RuntimeLoadOptions& opts = {});

}  // namespace retort

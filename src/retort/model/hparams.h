// retort/model/hparams.h — hyperparameters of a causal LM, read from GGUF metadata or HF config.json.
//
// Supported architectures: the Llama family (model/llama.cpp) — "llama" (Llama 2/3, SmolLM/SmolLM2),
// "mistral", "qwen2" (Qwen2/2.5: q/k/v bias) — and "gemma3" (model/gemma3.cpp; HF model_type
// "gemma3_text"). Anything else is a retort::Error naming the supported ones.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace retort {

class GgufFile;

struct RopeScaling {
  std::string type = "none";  // "none" | "linear" | "llama3"
  double factor = 1.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int64_t original_max_position = 8192;
};

struct ModelHParams {
  std::string arch;  // "llama" | "mistral" | "qwen2" | "gemma3"
  int64_t n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  int64_t max_position = 0;
  double rope_theta = 10000.0, rms_eps = 1e-5;
  RopeScaling rope_scaling;
  // GGUF `rope_freqs.weight` (llama3-style GGUFs store the scaling as per-frequency divisors):
  // inv_freq[i] /= rope_freq_factors[i]. Empty when absent. [head_dim / 2]
  std::vector<float> rope_freq_factors;
  bool qkv_bias = false, tie_embeddings = false;

  // Gemma 3 (zero / defaults elsewhere):
  // softmax(q·k * attn_scale); 0 means 1/sqrt(head_dim). Gemma: query_pre_attn_scalar^-1/2.
  double attn_scale = 0;
  // Local (sliding-window) attention: a query at position p sees keys j with p - j < sliding_window.
  // Layer l is local iff sliding_window > 0 and local_layers[l]; local layers use rope_theta_local and
  // no RoPE scaling, global layers rope_theta and rope_scaling.
  int64_t sliding_window = 0;
  std::vector<uint8_t> local_layers;  // [n_layer] or empty (no local layers)
  double rope_theta_local = 10000.0;

  bool is_local(int64_t layer) const {
    return sliding_window > 0 && layer < int64_t(local_layers.size()) && local_layers[size_t(layer)] != 0;
  }
  double query_scale() const;  // attn_scale, or 1/sqrt(head_dim)

  int64_t n_params() const;
  nlohmann::json to_json() const;  // for `retort inspect --json` and manifests
};

// The architectures above, for error messages: "llama, mistral, qwen2, gemma3".
std::string supported_architectures();

// Missing key -> retort::Error naming the file and key; unknown architecture -> Error naming it.
ModelHParams hparams_from_gguf(const GgufFile&);
// `config` is config.json; `path_for_errors` names it in messages.
ModelHParams hparams_from_hf_config(const nlohmann::json& config, const std::string& path_for_errors);

}  // namespace retort

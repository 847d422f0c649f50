// retort/model/hparams.h — hyperparameters of a Llama-family model, read from GGUF or HF config.json.
//
// Supported architectures (one forward pass in llama.cpp): "llama" (Llama 2/3, SmolLM/SmolLM2),
// "mistral", "qwen2" (Qwen2/2.5: q/k/v bias). Anything else is a retort::Error.
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
  std::string arch;  // "llama" | "mistral" | "qwen2"
  int64_t n_vocab = 0, n_embd = 0, n_layer = 0, n_head = 0, n_head_kv = 0, head_dim = 0, n_ff = 0;
  int64_t max_position = 0;
  double rope_theta = 10000.0, rms_eps = 1e-5;
  RopeScaling rope_scaling;
  // GGUF `rope_freqs.weight` (llama3-style GGUFs store the scaling as per-frequency divisors):
  // inv_freq[i] /= rope_freq_factors[i]. Empty when absent. [head_dim / 2]
  std::vector<float> rope_freq_factors;
  bool qkv_bias = false, tie_embeddings = false;

  int64_t n_params() const;
  nlohmann::json to_json() const;  // for `retort inspect --json` and manifests
};

// The architectures above, for error messages: "llama, mistral, qwen2".
std::string supported_architectures();

// Missing key -> retort::Error naming the file and key; unknown architecture -> Error naming it.
ModelHParams hparams_from_gguf(const GgufFile&);
// `config` is config.json; `path_for_errors` names it in messages.
ModelHParams hparams_from_hf_config(const nlohmann::json& config, const std::string& path_for_errors);

}  // namespace retort

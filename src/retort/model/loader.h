// retort/model/loader.h — find a checkpoint (GGUF file or Hugging Face dir), read its
// hyperparameters, weights, tokenizer, chat template and generation defaults.
//
// GGUF tensors of any supported quant type are dequantized to float32 at load, then cast to
// LoadOptions::dtype. llama.cpp's converter permutes attn_q/attn_k rows of "llama"/"mistral"
// models for interleaved RoPE; the loader undoes that so one rotate-half RoPE serves both.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "retort/model/hparams.h"
#include "retort/model/llama.h"

namespace retort {

class Tokenizer;
class GgufFile;
class HfCheckpoint;

struct LoadOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  bool load_tokenizer = true;
  // GGUF on the CPU: keep the Q8_0/Q4_1 blocks of the matrix weights for the decode step
  // (LlamaModelImpl::attach_quantized; ~0.6-1.1 bytes per weight more memory, 3-6x fewer bytes read
  // per decode step). False: decode from the dense parameters only.
  bool quantized_decode = true;
};

struct LoadedModel {
  std::string path, format;  // resolved path; "gguf" | "hf"
  ModelHParams hparams;
  LlamaModel model{nullptr};
  std::shared_ptr<Tokenizer> tokenizer;  // null if the checkpoint has none (or !load_tokenizer)
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
  double load_seconds = 0;
};

// $RETORT_HOME (default ~/.cache/retort) + "/models".
std::string model_cache_dir();
// An existing .gguf file | an existing directory | a short name in the cache (<name>.gguf or
// <name>/). Otherwise retort::Error listing what the cache holds and pointing to scripts/setup.sh.
std::string resolve_model_path(const std::string& spec);

LoadedModel load_model(const std::string& spec, const LoadOptions& = {});

// Lower level: copy a checkpoint's weights into `model` (whose hparams must come from it).
// Missing tensor or shape mismatch -> retort::Error naming the file, tensor, expected and found shape.
void load_weights_gguf(LlamaModelImpl& model, const GgufFile& f);
void load_weights_hf(LlamaModelImpl& model, const HfCheckpoint& ckpt);
// Attach to `model` (already loaded from f) the Q8_0/Q4_1 blocks of every matrix weight stored so,
// rows reordered like the dense copy. Returns how many were attached.
int64_t attach_quantized_gguf(LlamaModelImpl& model, const GgufFile& f);

// The GGUF name of a Hugging Face parameter name ("model.layers.3.mlp.up_proj.weight" ->
// "blk.3.ffn_up.weight"); "" when there is none.
std::string gguf_tensor_name(const std::string& hf_name);

}  // namespace retort

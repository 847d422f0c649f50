// retort/model/loader.h — find a checkpoint (GGUF file or Hugging Face dir), read its
// hyperparameters, weights, tokenizer, chat template and generation defaults, and build the model of
// its family (make_causal_lm).
//
// GGUF tensors of any supported quant type are dequantized to float32 at load, then cast to
// LoadOptions::dtype — except, on an inference-only load, the matrices the CPU kernels read straight
// from their ggml blocks, which stay in the file's mapping and are never made dense. The family says
// how its parameters are named and stored in GGUF (CausalLMImpl::gguf_name, gguf_permuted_heads for
// llama.cpp's q/k row permutation, gguf_offset for Gemma's 1 + w norms).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "retort/decode/generate.h"
#include "retort/model/causal_lm.h"
#include "retort/model/hparams.h"
#include "retort/model/runtime_model.h"

namespace retort {

class GgufFile;
class HfCheckpoint;

struct LoadOptions {
  torch::Device device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;
  bool load_tokenizer = true;
  // GGUF on the CPU, not inference_only: also keep the blocks of those matrices beside the dense
  // parameters, for the CPU kernels (~0.6-1.1 bytes per weight more memory, 3-6x fewer bytes read per
  // decode step). False: the kernels read the dense parameters.
  bool quantized_decode = true;
  // GGUF on the CPU, for generation only (generate, chat, serve, capture): matrices stored in a block
  // format the CPU kernels read (cpu::WeightFormat) stay as the file's blocks and get no dense copy —
  // resident memory is about the file's size. The model then runs forward_cached only (on the CPU
  // kernels) and refuses libtorch passes (training, forward_hidden); CausalLMImpl::dense() is false.
  bool inference_only = false;
};

// A checkpoint loaded as a libtorch model: its metadata (runtime_model.h) and the model.
struct LoadedModel : CheckpointInfo {
  CausalLM model;
  double load_seconds = 0;
};

// Generation on a libtorch model (decode/generate.h).
inline std::vector<GenerationResult> generate(LoadedModel& model, const std::vector<GenerationRequest>& requests,
                                              const GenerateOptions& opts = {}) {
  return generate(model, *model.model, requests, opts);
}

LoadedModel load_model(const std::string& spec, const LoadOptions& = {});

// Lower level: copy a checkpoint's weights into `model` (whose hparams must come from it).
// Missing tensor or shape mismatch -> retort::Error naming the file, tensor, expected and found shape.
// Parameters that already have only-copy kernel blocks (inference-only loads) are skipped.
void load_weights_gguf(CausalLMImpl& model, const GgufFile& f);
void load_weights_hf(CausalLMImpl& model, const HfCheckpoint& ckpt);
// Attach to `model` the blocks of every matrix weight stored in a format the CPU kernels read, rows
// reordered like the dense parameter (CausalLMImpl::attach_kernel_weight). only_copy: the blocks
// replace the dense values (before load_weights_gguf, which then skips them); else a copy of a loaded
// parameter. Returns how many were attached.
int64_t attach_gguf_blocks(CausalLMImpl& model, const GgufFile& f, bool only_copy);

}  // namespace retort

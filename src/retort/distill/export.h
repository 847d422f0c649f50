// retort/distill/export.h — write a model (a trained student) for other tools:
//  - a Hugging Face directory: model.safetensors (HF parameter names), config.json
//    (LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM; Gemma3ForCausalLM as transformers 5
//    writes Gemma3TextConfig), generation_config.json, tokenizer.json + tokenizer_config.json (with the
//    chat template and special tokens; byte-level BPE, or Gemma's SentencePiece BPE in Hugging Face's
//    form) — loads in transformers with the same logits, and back into retort;
//  - a GGUF file (F32, F16, Q8_0, Q4_0 or llama.cpp's Q4_K_M mix for the 2-D weights; norms stay F32,
//    Gemma's stored as 1 + w) with the full tokenizer metadata and chat template — llama.cpp loads and runs it.
// A Gemma vocabulary without a chat template gets Gemma 3's (export_chat_template in chat_template.h).
// Both are written atomically: the directory is built as DIR.tmp.<pid> and renamed; the
// GGUF through AtomicFile. An existing target is replaced only after the new one is whole.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/io/ggml_quants.h"

namespace retort {

class CausalLMImpl;
class Tokenizer;

struct ExportInfo {
  std::string chat_template;   // "" = none
  std::vector<int32_t> eos_ids;
  nlohmann::json generation_defaults = nlohmann::json::object();
  nlohmann::json provenance = nlohmann::json::object();  // written to the metadata (teacher, loss, steps, ...)
};

void export_hf(const CausalLMImpl& model, const Tokenizer& tok, const ExportInfo& info, const std::string& dir,
               const std::string& dtype = "f32");  // "f32" | "bf16" | "f16"
// gguf_type: one of kGgufExportTypes
void export_gguf(const CausalLMImpl& model, const Tokenizer& tok, const ExportInfo& info, const std::string& path,
                 const std::string& gguf_type = "f16");

// The --type values export_gguf takes, in the order help and errors list them.
inline constexpr const char* kGgufExportTypes[] = {"f32", "f16", "q8_0", "q4_0", "q4_k_m"};

// The ggml type export_gguf stores tensor `name` (its GGUF name; row-major `shape`, rows of shape.back()
// elements) in, for a file of `gguf_type` from a model of `n_layer` layers; `has_output`: the model has its
// own output.weight (not tied to token_embd). 1-D tensors stay F32. f32 / f16: every 2-D weight. The
// quantized types pick what llama-quantize picks for that file type without an importance matrix
// (llama.cpp src/llama-quant.cpp, llama_tensor_get_type), so the files match tensor for tensor:
//  - q8_0: Q8_0.
//  - q4_0: Q4_0; the output matrix (token_embd when tied) Q6_K.
//  - q4_k_m: Q4_K; the output matrix Q6_K; attn_v and ffn_down Q6_K in the layers where
//    use_more_bits(i, n) = i < n/8 || i >= 7n/8 || (i - n/8) % 3 == 2 (the first and last eighth, every
//    third between).
// Rows that do not fit the chosen block fall back as llama.cpp's do: Q4_K -> Q5_0, Q6_K -> Q8_0 (the output
// matrix straight to Q8_0 when its row is not a multiple of 256), then F16 when the row is not a multiple of
// 32 either. Q4_0 and Q8_0 rows not a multiple of 32 become F16 (llama-quantize refuses those).
GgmlType gguf_export_type(const std::string& gguf_type, const std::string& name, const std::vector<int64_t>& shape,
                          int64_t n_layer, bool has_output);

}  // namespace retort

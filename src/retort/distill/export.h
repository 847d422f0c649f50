// retort/distill/export.h — write a model (a trained student) for other tools:
//  - a Hugging Face directory: model.safetensors (HF parameter names), config.json
//    (LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM; Gemma3ForCausalLM as transformers 5
//    writes Gemma3TextConfig), generation_config.json, tokenizer.json + tokenizer_config.json (with the
//    chat template and special tokens; byte-level BPE, or Gemma's SentencePiece BPE in Hugging Face's
//    form) — loads in transformers with the same logits, and back into retort;
//  - a GGUF file (F32, F16 or Q8_0 for the 2-D weights; norms stay F32, Gemma's stored as 1 + w) with the
//    full tokenizer metadata and chat template — llama.cpp loads and runs it.
// A Gemma vocabulary without a chat template gets Gemma 3's (export_chat_template in chat_template.h).
// Both are written atomically: the directory is built as DIR.tmp.<pid> and renamed; the
// GGUF through AtomicFile. An existing target is replaced only after the new one is whole.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

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
// gguf_type: "f32" | "f16" | "q8_0"
void export_gguf(const CausalLMImpl& model, const Tokenizer& tok, const ExportInfo& info, const std::string& path,
                 const std::string& gguf_type = "f16");

}  // namespace retort

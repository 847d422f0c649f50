// src/cli/common.h — options and helpers shared by the `retort` subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "retort/model/loader.h"
#include "retort/decode/generate.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"

namespace retort::cli {

// Options every model-using subcommand takes.
struct ModelOptions {
  std::string model = "smollm2-135m-instruct";  // .gguf path, HF dir, or a short name in the model cache
  int threads = 0;                              // 0 = all cores
  std::string device = "cpu";                   // cpu | cuda | cuda:N
  std::string dtype = "auto";                   // auto | f32 | bf16 (auto: f32 on CPU, bf16 on CUDA)
};

void add_model_options(CLI::App& sub, ModelOptions& o);
// Sets the thread count (libtorch intra-op) and resolves device/dtype, then loads the model.
// inference_only: for commands that only generate or score (generate, chat, capture): a GGUF's matrices
// stay as its blocks, with no dense copy (LoadOptions::inference_only).
LoadedModel load_for_cli(const ModelOptions& o, bool load_tokenizer = true, bool inference_only = false);
// Loads only the tokenizer of a model (no weights): for `retort tokenize`.
std::shared_ptr<Tokenizer> load_tokenizer_only(const std::string& spec);
// Applies --threads (0 = all cores; Debian's libtorch otherwise starts with one intra-op thread).
void apply_threads(int threads);

// --max-tokens, --temperature, --top-k, --top-p, --min-p, --seed.
void add_sampling_options(CLI::App& sub, SamplingParams& s, int64_t& max_tokens);
// Token ids for a raw prompt (BOS added when the tokenizer asks for it) or a chat (rendered with the model's template).
std::vector<int32_t> prompt_ids(const LoadedModel& m, const std::vector<ChatMessage>& messages, const std::string& raw,
                                bool chat);

// Subcommand registration: each lives in its own file (cmd_<name>.cpp).
void register_inspect(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_generate(CLI::App& app);
void register_chat(CLI::App& app);
void register_watermark(CLI::App& app);
void register_capture(CLI::App& app);
void register_eval(CLI::App& app);
void register_distill(CLI::App& app);
void register_export(CLI::App& app);

}  // namespace retort::cli

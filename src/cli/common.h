// src/cli/common.h — options and helpers shared by the `retort` subcommands.
#pragma once

#include <CLI/CLI.hpp>
#include <string>

#include "retort/decode/generate.h"
#include "retort/model/runtime_model.h"
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

// A model to generate with: its metadata and its forward pass, whichever runtime loaded it. `retort`
// loads it without libtorch (runtime_model.h; CPU); `retort-torch` also runs it on a GPU through libtorch.
struct CliModel {
  std::shared_ptr<CheckpointInfo> info;  // path, hparams, tokenizer, chat template, eos ids
  CachedLM* lm = nullptr;                // owned by *info
  const CheckpointInfo& operator*() const { return *info; }
  const CheckpointInfo* operator->() const { return info.get(); }
};
// Applies --threads, resolves --device/--dtype and loads. Defined once per binary: cli/load_runtime.cpp
// (`retort`) and cli/load_torch.cpp (`retort-torch`).
CliModel load_cli_model(const ModelOptions& o, bool load_tokenizer = true);
// True when `o` asks for something only retort-torch runs (a GPU device).
bool needs_torch(const ModelOptions& o);
// Loads only the tokenizer of a model (no weights): for `retort tokenize`.
std::shared_ptr<Tokenizer> load_tokenizer_only(const std::string& spec);
// Applies --threads (0 = all cores) to OpenMP (and, in retort-torch, to libtorch).
void apply_threads(int threads);

// --max-tokens, --temperature, --top-k, --top-p, --min-p, --seed.
void add_sampling_options(CLI::App& sub, SamplingParams& s, int64_t& max_tokens);
// Token ids for a raw prompt (BOS added when the tokenizer asks for it) or a chat (rendered with the model's template).
std::vector<int32_t> prompt_ids(const CheckpointInfo& m, const std::vector<ChatMessage>& messages, const std::string& raw,
                                bool chat);

// Subcommand registration: each lives in its own file (cmd_<name>.cpp). `retort` registers the ones
// that run without libtorch and hands the others (capture, distill, eval, export; anything on a GPU) to
// retort-torch beside it (main.cpp).
void register_inspect(CLI::App& app);
void register_tokenize(CLI::App& app);
void register_generate(CLI::App& app);
void register_chat(CLI::App& app);
void register_watermark(CLI::App& app);
void register_keys(CLI::App& app);
void register_monitor(CLI::App& app);  // `monitor calibrate|report` (cmd_monitor.cpp)
void register_serve(CLI::App& app);
void register_capture(CLI::App& app);
void register_eval(CLI::App& app);
void register_distill(CLI::App& app);
void register_export(CLI::App& app);
void register_antidistill(CLI::App& app);  // `antidistill prepare` (cmd_antidistill.cpp, retort-torch)
void register_audit(CLI::App& app);
// `demo` (cmd_demo.cpp): runs scripts/demo.py, the whole story on loopback.
void register_demo(CLI::App& app);
// `audit provenance` (cmd_audit_provenance.cpp), added under `audit` by register_audit.
void register_audit_provenance(CLI::App* audit);
// `audit report`, the case file (cmd_audit_report.cpp).
void register_audit_report(CLI::App* audit);

}  // namespace retort::cli

// `retort export --model SRC --out PATH --format hf|gguf`: write any model retort loads (GGUF,
// Hugging Face dir, a distill checkpoint) as a Hugging Face directory or a GGUF file, with its
// tokenizer, chat template, end-of-generation ids and generation defaults.
#include <cstdio>
#include <filesystem>
#include <iostream>

#include "cli/torch_common.h"
#include "retort/distill/export.h"
#include "retort/util/error.h"

namespace retort::cli {
namespace {

struct ExportArgs {
  std::string model = "smollm2-135m-instruct";
  std::string out;
  std::string format;
  std::string type = "f16";   // gguf
  std::string dtype = "f32";  // hf
  std::string name;
  int threads = 0;
};

void run(const ExportArgs& a) {
  check(!a.out.empty(), "export: --out is required");
  std::string format = a.format;
  if (format.empty()) {
    const bool gguf_name = a.out.size() > 5 && a.out.compare(a.out.size() - 5, 5, ".gguf") == 0;
    format = gguf_name ? "gguf" : "hf";
  }
  ModelOptions mo;
  mo.model = a.model;
  mo.threads = a.threads;
  mo.dtype = "f32";  // export reads float32 weights and writes the requested type
  LoadedModel m = load_for_cli(mo);
  check(m.tokenizer != nullptr, "export: ", m.path, " has no tokenizer; an exported model needs one");
  ExportInfo info;
  info.chat_template = m.chat_template;
  info.eos_ids = m.eos_ids;
  info.generation_defaults = m.generation_defaults;
  info.provenance = {{"source", m.path}, {"source_format", m.format}};
  if (!a.name.empty()) info.provenance["name"] = a.name;
  if (format == "hf") {
    export_hf(*m.model, *m.tokenizer, info, a.out, a.dtype);
  } else {
    export_gguf(*m.model, *m.tokenizer, info, a.out, a.type);
  }
  std::error_code ec;
  uint64_t bytes = 0;
  if (std::filesystem::is_directory(a.out, ec)) {
    for (const auto& e : std::filesystem::directory_iterator(a.out, ec))
      if (e.is_regular_file()) bytes += e.file_size();
  } else {
    bytes = std::filesystem::file_size(a.out, ec);
  }
  std::fprintf(stderr, "exported %s (%s, %lld parameters) to %s (%s%s, %.1f MiB)\n", m.path.c_str(),
               m.hparams.arch.c_str(), static_cast<long long>(m.hparams.n_params()), a.out.c_str(), format.c_str(),
               format == "hf" ? (" " + a.dtype).c_str() : (" " + a.type).c_str(), double(bytes) / (1 << 20));
}

}  // namespace

void register_export(CLI::App& app) {
  auto a = std::make_shared<ExportArgs>();
  CLI::App* sub = app.add_subcommand("export", "write a model as a Hugging Face directory or a GGUF file (with its tokenizer and chat template)");
  sub->add_option("-m,--model", a->model, "source: a .gguf file, a Hugging Face / distill checkpoint directory, or a short name")
      ->capture_default_str();
  sub->add_option("-o,--out", a->out, "output directory (hf) or .gguf file (gguf); replaced atomically")->required();
  sub->add_option("--format", a->format, "hf or gguf (default: gguf when --out ends in .gguf, else hf)")
      ->check(CLI::IsMember({"hf", "gguf"}));
  std::vector<std::string> types(std::begin(kGgufExportTypes), std::end(kGgufExportTypes));
  sub->add_option("--type", a->type, "gguf: type of the 2-D weights (norms stay f32); q4_0 and q4_k_m pick per-tensor "
                  "types as llama-quantize does (output matrix q6_k; q4_k_m: q6_k attn_v/ffn_down in some layers); "
                  "rows that do not fit a block fall back (q5_0, q8_0, f16)")
      ->check(CLI::IsMember(types))
      ->capture_default_str();
  sub->add_option("--dtype", a->dtype, "hf: dtype of model.safetensors")
      ->check(CLI::IsMember({"f32", "bf16", "f16"}))
      ->capture_default_str();
  sub->add_option("--name", a->name, "model name for the metadata (gguf general.name)");
  sub->add_option("-t,--threads", a->threads, "CPU threads (0 = all cores)");
  sub->callback([a] { run(*a); });
}

}  // namespace retort::cli

// `retort inspect MODEL`: architecture, parameters, tensors with types, tokenizer, chat template, memory.
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "retort/io/gguf.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

namespace retort::cli {
namespace {

struct InspectArgs {
  ModelOptions model;
  bool json = false;
  bool tensors = false;
  bool metadata = false;
};

std::string human_bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) b /= 1024, ++u;
  char buf[32];
  std::snprintf(buf, sizeof buf, u == 0 ? "%.0f %s" : "%.1f %s", b, units[u]);
  return buf;
}

void run(InspectArgs& a) {
  using nlohmann::json;
  apply_threads(a.model.threads);
  RuntimeLoaded m = load_runtime_model(a.model.model);
  const ModelHParams& hp = m.hparams;
  namespace fs = std::filesystem;

  uint64_t file_bytes = 0;
  if (fs::is_directory(m.path)) {
    for (auto& e : fs::recursive_directory_iterator(m.path))
      if (e.is_regular_file()) file_bytes += e.file_size();
  } else {
    file_bytes = fs::file_size(m.path);
  }
  const int64_t n_params = hp.n_params();
  // What generation keeps resident: the weights read in place from the file's mapping, plus copies
  // (vectors, permuted q/k rows, tensors in formats the kernels do not read).
  const uint64_t mapped = uint64_t(m.model->mapped_bytes()), copied = uint64_t(m.model->copied_bytes());
  const uint64_t resident = mapped + copied;
  // K and V per token: 2 * layers * kv_heads * head_dim float32 values.
  const uint64_t kv_per_token = 2ull * hp.n_layer * hp.n_head_kv * hp.head_dim * 4;

  std::map<std::string, std::pair<int64_t, uint64_t>> by_type;  // type -> (count, bytes)
  for (const auto& t : m.tensors) {
    auto& e = by_type[t.type];
    e.first += 1;
    e.second += t.bytes;
  }

  json j;
  j["path"] = m.path;
  j["format"] = m.format;
  j["hparams"] = hp.to_json();
  j["parameters"] = n_params;
  j["memory"] = {{"file_bytes", file_bytes},
                 {"weights_resident_bytes", resident},
                 {"weights_in_place_bytes", mapped},
                 {"weights_copied_bytes", copied},
                 {"kv_cache_bytes_per_token", kv_per_token},
                 {"load_seconds", m.load_seconds}};
  json types = json::object();
  for (auto& [t, e] : by_type) types[t] = {{"tensors", e.first}, {"bytes", e.second}};
  j["tensor_types"] = types;
  if (m.tokenizer) {
    const Tokenizer& tok = *m.tokenizer;
    json special = json::object();
    if (tok.bos_id()) special["bos"] = {{"id", *tok.bos_id()}, {"text", tok.token_text(*tok.bos_id())}};
    if (tok.eos_id()) special["eos"] = {{"id", *tok.eos_id()}, {"text", tok.token_text(*tok.eos_id())}};
    json eog = json::array();
    for (int32_t id : tok.eog_ids()) eog.push_back({{"id", id}, {"text", tok.token_text(id)}});
    special["end_of_generation"] = eog;
    j["tokenizer"] = {{"type", tok.model_type() == "spm" ? "SentencePiece BPE" : "byte-level BPE"},
                      {"pre_tokenizer", tok.pre_tokenizer_name()},
                      {"n_vocab", tok.n_vocab()},
                      {"hash", tok.hash()},
                      {"special", special}};
  }
  std::string chat_format = "none";
  if (m.tokenizer && ChatTemplate::available(m.chat_template, *m.tokenizer)) {
    try {
      chat_format = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer).name();
    } catch (const Error& e) {
      chat_format = std::string("unsupported (") + e.what() + ")";
    }
  }
  j["chat_template"] = {{"format", chat_format}, {"source", m.chat_template}};
  if (a.tensors || a.json) {
    json ts = json::array();
    for (const auto& t : m.tensors) ts.push_back({{"name", t.name}, {"shape", t.shape}, {"type", t.type}, {"bytes", t.bytes}});
    j["tensors"] = ts;
  }
  json metadata_text = json::object();
  if (m.format == "gguf" && (a.metadata || a.json)) {
    GgufFile g = GgufFile::open(m.path);
    json md = json::object();
    json md_text = json::object();  // human-readable, for the text output
    for (const auto& k : g.keys()) {
      // JSON keeps values typed ("llama", not "\"llama\""); long arrays (a vocabulary has 50k entries) stay elided text.
      const GgufValue& v = g.get(k);
      const std::string text = g.value_to_string(k);
      md[k] = text;
      md_text[k] = text;
      try {
        const bool short_array = v.is_array() && v.array_size() <= 64;
        const GgufValueType et = short_array ? v.array_type() : GgufValueType::ARRAY;
        if (v.is_string()) md[k] = std::string(v.as_string());
        else if (v.type == GgufValueType::BOOL) md[k] = v.as_bool();
        else if (v.is_float()) md[k] = v.as_float();
        else if (v.type == GgufValueType::UINT64) md[k] = v.as_uint();
        else if (v.is_integer()) md[k] = v.as_int();
        else if (et == GgufValueType::STRING) md[k] = v.as_string_array();
        else if (et == GgufValueType::FLOAT32 || et == GgufValueType::FLOAT64) md[k] = v.as_float_array();
        else if (et != GgufValueType::ARRAY && et != GgufValueType::BOOL) md[k] = v.as_int_array();
      } catch (const Error&) {
        // a value JSON cannot hold as such (uint64 array above INT64_MAX): keep the text form
      }
    }
    j["metadata"] = md;
    metadata_text = md_text;
  }

  if (a.json) {
    std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << "\n";
    return;
  }
  std::printf("model        %s (%s)\n", m.path.c_str(), m.format.c_str());
  std::printf("architecture %s: %lld layers, d_model %lld, heads %lld (kv %lld, head_dim %lld), ffn %lld, vocab %lld\n",
              hp.arch.c_str(), (long long)hp.n_layer, (long long)hp.n_embd, (long long)hp.n_head,
              (long long)hp.n_head_kv, (long long)hp.head_dim, (long long)hp.n_ff, (long long)hp.n_vocab);
  std::printf("             rope theta %g, scaling %s, rms eps %g, context %lld, qkv bias %s, tied embeddings %s\n",
              hp.rope_theta, hp.rope_scaling.type.c_str(), hp.rms_eps, (long long)hp.max_position,
              hp.qkv_bias ? "yes" : "no", hp.tie_embeddings ? "yes" : "no");
  std::printf("parameters   %.1fM\n", n_params / 1e6);
  std::printf("memory       file %s, weights for generation %s (%s read in place from the file, %s copied), "
              "KV cache %s per token (f32), loaded in %.2f s\n",
              human_bytes(file_bytes).c_str(), human_bytes(resident).c_str(), human_bytes(mapped).c_str(),
              human_bytes(copied).c_str(), human_bytes(kv_per_token).c_str(), m.load_seconds);
  std::printf("tensors      %zu:", m.tensors.size());
  for (auto& [t, e] : by_type) std::printf(" %s×%lld (%s)", t.c_str(), (long long)e.first, human_bytes(e.second).c_str());
  std::printf("\n");
  if (m.tokenizer) {
    const Tokenizer& tok = *m.tokenizer;
    std::printf("tokenizer    %s, pre-tokenizer %s, %d tokens, hash %s\n",
                tok.model_type() == "spm" ? "SentencePiece BPE" : "byte-level BPE", tok.pre_tokenizer_name().c_str(),
                tok.n_vocab(), tok.hash().c_str());
    std::printf("             bos %s, eos %s, end of generation:",
                tok.bos_id() ? tok.token_text(*tok.bos_id()).c_str() : "-",
                tok.eos_id() ? tok.token_text(*tok.eos_id()).c_str() : "-");
    for (int32_t id : tok.eog_ids()) std::printf(" %s(%d)", tok.token_text(id).c_str(), id);
    std::printf("\n");
  } else {
    std::printf("tokenizer    none in this checkpoint\n");
  }
  std::printf("chat         %s\n", chat_format.c_str());
  if (a.metadata)
    for (auto& [k, v] : metadata_text.items()) std::printf("  %-44s %s\n", k.c_str(), v.get<std::string>().c_str());
  if (a.tensors)
    for (const auto& t : m.tensors) {
      std::string shape;
      for (size_t i = 0; i < t.shape.size(); ++i) shape += (i ? "×" : "") + std::to_string(t.shape[i]);
      std::printf("  %-40s %-8s %-16s %s\n", t.name.c_str(), t.type.c_str(), shape.c_str(), human_bytes(t.bytes).c_str());
    }
}

}  // namespace

void register_inspect(CLI::App& app) {
  auto a = std::make_shared<InspectArgs>();
  CLI::App* sub = app.add_subcommand("inspect", "show a model: architecture, parameters, tensors, tokenizer, chat template, memory");
  sub->add_option("model", a->model.model, "model (.gguf, HF directory or short name)")->capture_default_str();
  sub->add_option("-t,--threads", a->model.threads, "CPU threads (0 = all cores)");
  sub->add_flag("--json", a->json, "everything as JSON (includes tensors and metadata)");
  sub->add_flag("--tensors", a->tensors, "list every tensor with its type and shape");
  sub->add_flag("--metadata", a->metadata, "list the GGUF metadata");
  sub->callback([a] { run(*a); });
}

}  // namespace retort::cli

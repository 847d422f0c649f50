#include "retort/model/loader.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <optional>
#include <set>

#include <ATen/Parallel.h>

#include "retort/io/ggml_quants.h"
#include "retort/io/gguf.h"
#include "retort/io/hf_checkpoint.h"
#include "retort/io/safetensors.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;

namespace retort {

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool starts_with(const std::string& s, const std::string& p) { return s.rfind(p, 0) == 0; }

// One parameter to fill: where it comes from and how.
struct WeightJob {
  torch::Tensor param;
  std::string src;        // tensor name in the checkpoint
  int64_t unpermute = 0;  // > 0: undo llama.cpp's q/k row permutation with this many heads
};

// Rows of one head in llama.cpp order are (i, j) pairs, i < head_dim/2, j < 2; the Hugging Face
// order is (j, i). w [n_head * head_dim, ...] -> same shape, rows reordered.
torch::Tensor unpermute_rows(const torch::Tensor& w, int64_t n_head) {
  auto sizes = w.sizes().vec();
  const int64_t head_dim = sizes[0] / n_head;
  std::vector<int64_t> v = {n_head, head_dim / 2, 2};
  for (size_t d = 1; d < sizes.size(); ++d) v.push_back(sizes[d]);
  return w.reshape(v).transpose(1, 2).reshape(sizes).contiguous();
}

// Fill every job in parallel: read float32 (directly into the parameter when it is float32 on
// the CPU and needs no reordering), reorder, copy.
void run_jobs(std::vector<WeightJob>& jobs, const std::function<void(const std::string&, float*)>& read) {
  torch::NoGradGuard no_grad;
  std::vector<std::exception_ptr> errors(jobs.size());
  at::parallel_for(0, int64_t(jobs.size()), 1, [&](int64_t begin, int64_t end) {
    torch::NoGradGuard no_grad_here;  // grad mode is per thread: the workers' own is on
    for (int64_t i = begin; i < end; ++i) {
      auto& job = jobs[size_t(i)];
      try {
        auto& p = job.param;
        bool direct = p.device().is_cpu() && p.scalar_type() == torch::kFloat32 && p.is_contiguous() &&
                      job.unpermute == 0;
        if (direct) {
          read(job.src, p.data_ptr<float>());
        } else {
          auto tmp = torch::empty(p.sizes(), torch::kFloat32);
          read(job.src, tmp.data_ptr<float>());
          if (job.unpermute > 0) tmp = unpermute_rows(tmp, job.unpermute);
          p.copy_(tmp);
        }
      } catch (...) {
        errors[size_t(i)] = std::current_exception();
      }
    }
  });
  for (auto& e : errors)
    if (e) std::rethrow_exception(e);
}

const char* const kRole[][2] = {
    {"input_layernorm.weight", "attn_norm.weight"}, {"post_attention_layernorm.weight", "ffn_norm.weight"},
    {"self_attn.q_proj.weight", "attn_q.weight"},   {"self_attn.q_proj.bias", "attn_q.bias"},
    {"self_attn.k_proj.weight", "attn_k.weight"},   {"self_attn.k_proj.bias", "attn_k.bias"},
    {"self_attn.v_proj.weight", "attn_v.weight"},   {"self_attn.v_proj.bias", "attn_v.bias"},
    {"self_attn.o_proj.weight", "attn_output.weight"}, {"mlp.gate_proj.weight", "ffn_gate.weight"},
    {"mlp.up_proj.weight", "ffn_up.weight"},        {"mlp.down_proj.weight", "ffn_down.weight"},
};

}  // namespace

std::string gguf_tensor_name(const std::string& hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  const std::string pre = "model.layers.";
  if (!starts_with(hf, pre)) return "";
  size_t dot = hf.find('.', pre.size());
  if (dot == std::string::npos) return "";
  std::string layer = hf.substr(pre.size(), dot - pre.size()), rest = hf.substr(dot + 1);
  for (const auto& r : kRole)
    if (rest == r[0]) return "blk." + layer + "." + r[1];
  return "";
}

void load_weights_gguf(LlamaModelImpl& model, const GgufFile& f) {
  const ModelHParams& hp = model.hparams();
  // llama.cpp permutes q/k for these architectures (convert_hf_to_gguf.py, LlamaModel.permute).
  const bool permuted = hp.arch == "llama" || hp.arch == "mistral";
  std::vector<WeightJob> jobs;
  for (auto& p : model.named_parameters()) {
    std::string src = gguf_tensor_name(p.key());
    TORCH_CHECK(!src.empty(), "no GGUF name for parameter ", p.key());
    const GgufTensorInfo* t = f.find_tensor(src);
    check(t != nullptr, "gguf ", f.path(), ": tensor ", src, " is missing (expected shape ",
          shape_str(p.value().sizes().vec()), ")");
    check(t->shape() == p.value().sizes().vec(), "gguf ", f.path(), ": tensor ", src, " has shape ",
          shape_str(t->shape()), ", expected ", shape_str(p.value().sizes().vec()), " from the hyperparameters");
    int64_t unpermute = 0;
    if (permuted && p.key().find("self_attn.q_proj") != std::string::npos) unpermute = hp.n_head;
    if (permuted && p.key().find("self_attn.k_proj") != std::string::npos) unpermute = hp.n_head_kv;
    jobs.push_back({p.value(), src, unpermute});
  }
  run_jobs(jobs, [&](const std::string& name, float* dst) { f.read_f32(*f.find_tensor(name), dst); });
}

int64_t attach_quantized_gguf(LlamaModelImpl& model, const GgufFile& f) {
  const ModelHParams& hp = model.hparams();
  const bool permuted = hp.arch == "llama" || hp.arch == "mistral";
  int64_t n = 0;
  for (auto& p : model.named_parameters()) {
    const torch::Tensor& w = p.value();
    // The embedding is a decode-step matrix only as the tied output head.
    if (w.dim() != 2 || (p.key() == "model.embed_tokens.weight" && model.lm_head)) continue;
    const GgufTensorInfo* t = f.find_tensor(gguf_tensor_name(p.key()));
    if (t == nullptr || w.size(1) % 32 != 0) continue;
    cpu::WeightFormat format;
    if (t->type == uint32_t(GgmlType::Q8_0)) format = cpu::WeightFormat::kQ8_0;
    else if (t->type == uint32_t(GgmlType::Q4_1)) format = cpu::WeightFormat::kQ4_1;
    else continue;
    const int64_t rows = w.size(0), row_bytes = cpu::weight_row_bytes(format, w.size(1));
    check(int64_t(t->nbytes) == rows * row_bytes, "gguf ", f.path(), ": tensor ", t->name, " has ", t->nbytes,
          " bytes, expected ", rows * row_bytes);
    const uint8_t* src = f.tensor_data(*t);
    std::vector<uint8_t> blocks(size_t(rows * row_bytes));
    // llama.cpp's q/k row order within a head is (i, j), i < head_dim/2, j < 2; ours is (j, i).
    int64_t heads = 0;
    if (permuted && p.key().find("self_attn.q_proj") != std::string::npos) heads = hp.n_head;
    if (permuted && p.key().find("self_attn.k_proj") != std::string::npos) heads = hp.n_head_kv;
    const int64_t hd = heads > 0 ? rows / heads : 0;
    for (int64_t r = 0; r < rows; ++r) {
      int64_t from = r;
      if (heads > 0) {
        const int64_t h = r / hd, j = (r % hd) / (hd / 2), i = r % (hd / 2);
        from = h * hd + i * 2 + j;
      }
      std::memcpy(blocks.data() + r * row_bytes, src + from * row_bytes, size_t(row_bytes));
    }
    model.attach_quantized(w, format, std::move(blocks));
    ++n;
  }
  return n;
}

void load_weights_hf(LlamaModelImpl& model, const HfCheckpoint& ckpt) {
  std::vector<WeightJob> jobs;
  for (auto& p : model.named_parameters()) {
    const std::string& name = p.key();
    const SafetensorsTensorInfo* t = ckpt.find_tensor(name);
    check(t != nullptr, ckpt.dir(), ": tensor ", name, " is missing (expected shape ",
          shape_str(p.value().sizes().vec()), ")",
          name == "lm_head.weight" ? "; if the output embedding is tied, set tie_word_embeddings in config.json" : "");
    check(t->shape == p.value().sizes().vec(), ckpt.dir(), ": tensor ", name, " in ",
          ckpt.file_of(name).path(), " has shape ", shape_str(t->shape), ", expected ",
          shape_str(p.value().sizes().vec()), " from config.json");
    jobs.push_back({p.value(), name, 0});
  }
  run_jobs(jobs, [&](const std::string& name, float* dst) { ckpt.read_f32(name, dst); });
}

std::string model_cache_dir() {
  if (const char* h = std::getenv("RETORT_HOME"); h && *h) return std::string(h) + "/models";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/retort/models";
}

std::string resolve_model_path(const std::string& spec) {
  check(!spec.empty(), "model: empty model name or path");
  std::error_code ec;
  if (fs::is_regular_file(spec, ec)) return spec;
  if (fs::is_directory(spec, ec)) return spec;
  const std::string dir = model_cache_dir();
  const bool plain_name = spec.find('/') == std::string::npos;
  if (plain_name) {
    if (fs::is_regular_file(dir + "/" + spec + ".gguf", ec)) return dir + "/" + spec + ".gguf";
    if (fs::is_directory(dir + "/" + spec, ec)) return dir + "/" + spec;
    if (fs::is_regular_file(dir + "/" + spec, ec)) return dir + "/" + spec;
  }
  std::vector<std::string> have;
  if (fs::is_directory(dir, ec))
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      std::string n = e.path().filename().string();
      if (e.is_directory()) have.push_back(n + "/");
      else if (n.size() > 5 && n.compare(n.size() - 5, 5, ".gguf") == 0) have.push_back(n.substr(0, n.size() - 5));
    }
  std::sort(have.begin(), have.end());
  std::string list;
  for (const auto& h : have) list += (list.empty() ? "" : ", ") + h;
  fail("model \"", spec, "\" not found: it is not an existing file or directory",
       plain_name ? ", nor a model in the cache " + dir : "",
       have.empty() ? std::string(" (the cache holds no models)") : " (the cache holds: " + list + ")",
       "; run scripts/setup.sh to install the default model, or pass a .gguf file or a Hugging Face directory");
}

namespace {

void add_eos(std::vector<int32_t>& out, const nlohmann::json* j) {
  if (j == nullptr) return;
  if (j->is_number_integer()) out.push_back(j->get<int32_t>());
  if (j->is_array())
    for (const auto& e : *j)
      if (e.is_number_integer()) out.push_back(e.get<int32_t>());
}

const nlohmann::json* field(const nlohmann::json* obj, const char* key) {
  if (obj == nullptr || !obj->is_object()) return nullptr;
  auto it = obj->find(key);
  return it == obj->end() ? nullptr : &*it;
}

// tokenizer_config.json "chat_template": a string, or a list of {"name", "template"}
// (the one named "default", else the first); else a chat_template.jinja file beside it.
std::string hf_chat_template(const HfCheckpoint& ckpt) {
  if (const nlohmann::json* ct = field(ckpt.tokenizer_config(), "chat_template")) {
    if (ct->is_string()) return ct->get<std::string>();
    if (ct->is_array()) {
      std::string first;
      for (const auto& e : *ct) {
        if (!e.is_object() || !e.contains("template") || !e["template"].is_string()) continue;
        std::string t = e["template"].get<std::string>();
        if (e.value("name", "") == "default") return t;
        if (first.empty()) first = t;
      }
      return first;
    }
  }
  std::error_code ec;
  std::string jinja = ckpt.dir() + "/chat_template.jinja";
  if (fs::is_regular_file(jinja, ec)) return read_file(jinja);
  return "";
}

}  // namespace

LoadedModel load_model(const std::string& spec, const LoadOptions& opts) {
  auto t0 = std::chrono::steady_clock::now();
  LoadedModel out;
  out.path = resolve_model_path(spec);
  std::error_code ec;
  std::vector<int32_t> eos;
  std::optional<GgufFile> gguf;

  if (fs::is_directory(out.path, ec)) {
    check(fs::is_regular_file(out.path + "/config.json", ec), "model directory ", out.path,
          " has no config.json: expected a Hugging Face checkpoint (config.json + *.safetensors)");
    out.format = "hf";
    HfCheckpoint ckpt = HfCheckpoint::open(out.path);
    out.hparams = hparams_from_hf_config(ckpt.config(), out.path + "/config.json");
    out.model = LlamaModel(out.hparams);
    load_weights_hf(*out.model, ckpt);
    for (const auto& name : ckpt.tensor_names()) {
      const SafetensorsTensorInfo* t = ckpt.find_tensor(name);
      out.tensors.push_back({name, t->shape, dtype_name(t->dtype), t->end - t->begin});
    }
    if (const nlohmann::json* g = ckpt.generation_config()) {
      out.generation_defaults = *g;
      add_eos(eos, field(g, "eos_token_id"));
    }
    add_eos(eos, field(&ckpt.config(), "eos_token_id"));
    out.chat_template = hf_chat_template(ckpt);
    if (opts.load_tokenizer && !ckpt.tokenizer_json_path().empty()) {
      std::string tc = out.path + "/tokenizer_config.json";
      if (!fs::is_regular_file(tc, ec)) tc.clear();
      out.tokenizer = std::make_shared<Tokenizer>(Tokenizer::from_hf_json(ckpt.tokenizer_json_path(), tc));
    }
  } else {
    out.format = "gguf";
    gguf.emplace(GgufFile::open(out.path));
    const GgufFile& f = *gguf;
    out.hparams = hparams_from_gguf(f);
    out.model = LlamaModel(out.hparams);
    load_weights_gguf(*out.model, f);
    for (const auto& t : f.tensors()) out.tensors.push_back({t.name, t.shape(), ggml_type_name(t.type), t.nbytes});
    out.chat_template = f.find_string("tokenizer.chat_template").value_or("");
    if (auto id = f.find_int("tokenizer.ggml.eos_token_id")) eos.push_back(int32_t(*id));
    if (opts.load_tokenizer && f.find("tokenizer.ggml.model") != nullptr)
      out.tokenizer = std::make_shared<Tokenizer>(Tokenizer::from_gguf(f));
  }

  if (out.tokenizer)
    for (auto id : out.tokenizer->eog_ids()) eos.push_back(int32_t(id));
  std::sort(eos.begin(), eos.end());
  eos.erase(std::unique(eos.begin(), eos.end()), eos.end());
  out.eos_ids = eos;

  if (opts.device != torch::Device(torch::kCPU) || opts.dtype != torch::kFloat32)
    out.model->to(opts.device, opts.dtype);
  if (gguf && opts.quantized_decode && opts.device.is_cpu()) attach_quantized_gguf(*out.model, *gguf);
  out.model->eval();
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

}  // namespace retort

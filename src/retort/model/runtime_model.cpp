#include "retort/model/runtime_model.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <numeric>
#include <optional>

#include "retort/io/ggml_quants.h"
#include "retort/io/gguf.h"
#include "retort/io/half.h"
#include "retort/io/hf_checkpoint.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/parallel.h"

namespace fs = std::filesystem;

namespace retort {

// ---------------------------------------------------------------------------------------------
// Finding a checkpoint and what it says besides its weights

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

CheckpointInfo read_checkpoint_info(const std::string& spec, bool load_tokenizer) {
  CheckpointInfo out;
  out.path = resolve_model_path(spec);
  std::error_code ec;
  std::vector<int32_t> eos;
  if (fs::is_directory(out.path, ec)) {
    check(fs::is_regular_file(out.path + "/config.json", ec), "model directory ", out.path,
          " has no config.json: expected a Hugging Face checkpoint (config.json + *.safetensors)");
    out.format = "hf";
    HfCheckpoint ckpt = HfCheckpoint::open(out.path);
    out.hparams = hparams_from_hf_config(ckpt.config(), out.path + "/config.json");
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
    if (load_tokenizer && !ckpt.tokenizer_json_path().empty()) {
      std::string tc = out.path + "/tokenizer_config.json";
      if (!fs::is_regular_file(tc, ec)) tc.clear();
      out.tokenizer = std::make_shared<Tokenizer>(Tokenizer::from_hf_json(ckpt.tokenizer_json_path(), tc));
    }
  } else {
    out.format = "gguf";
    GgufFile f = GgufFile::open(out.path);
    out.hparams = hparams_from_gguf(f);
    for (const auto& t : f.tensors()) out.tensors.push_back({t.name, t.shape(), ggml_type_name(t.type), t.nbytes});
    out.chat_template = f.find_string("tokenizer.chat_template").value_or("");
    if (auto id = f.find_int("tokenizer.ggml.eos_token_id")) eos.push_back(int32_t(*id));
    if (load_tokenizer && f.find("tokenizer.ggml.model") != nullptr)
      out.tokenizer = std::make_shared<Tokenizer>(Tokenizer::from_gguf(f));
  }
  if (out.tokenizer)
    for (auto id : out.tokenizer->eog_ids()) eos.push_back(int32_t(id));
  std::sort(eos.begin(), eos.end());
  eos.erase(std::unique(eos.begin(), eos.end()), eos.end());
  out.eos_ids = eos;
  return out;
}

// ---------------------------------------------------------------------------------------------
// Weights in place

namespace {

std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

bool is_norm(LayerTensor t) {
  switch (t) {
    case LayerTensor::kAttnNorm: case LayerTensor::kQNorm: case LayerTensor::kKNorm:
    case LayerTensor::kPostAttnNorm: case LayerTensor::kFfnNorm: case LayerTensor::kPostFfnNorm: return true;
    default: return false;
  }
}

// Where one checkpoint's tensors come from: a GGUF file or a Hugging Face directory.
class Source {
 public:
  virtual ~Source() = default;
  virtual std::string where() const = 0;
  // null when absent. shape row-major; raw pointer to the data in the mapping, its ggml type or dtype.
  struct Tensor {
    std::vector<int64_t> shape;
    const uint8_t* data = nullptr;
    std::optional<cpu::WeightFormat> format;  // when the kernels read it in place
    int64_t bytes = 0;
  };
  virtual std::optional<Tensor> find(const std::string& hf_name, const std::string& gguf_name) const = 0;
  virtual void read_f32(const std::string& hf_name, const std::string& gguf_name, float* dst) const = 0;
  virtual std::shared_ptr<const void> owner() const = 0;
  virtual bool permuted_qk() const = 0;  // llama.cpp's q/k row order (GGUF of some architectures)
};

class GgufSource : public Source {
 public:
  GgufSource(std::shared_ptr<GgufFile> f, bool permuted) : f_(std::move(f)), permuted_(permuted) {}
  std::string where() const override { return "gguf " + f_->path(); }
  std::optional<Tensor> find(const std::string&, const std::string& g) const override {
    const GgufTensorInfo* t = f_->find_tensor(g);
    if (t == nullptr) return std::nullopt;
    Tensor out;
    out.shape = t->shape();
    out.data = f_->tensor_data(*t);
    out.bytes = int64_t(t->nbytes);
    cpu::WeightFormat fmt;
    if (cpu::weight_format_of_ggml(t->type, &fmt)) out.format = fmt;
    return out;
  }
  void read_f32(const std::string&, const std::string& g, float* dst) const override {
    f_->read_f32(*f_->find_tensor(g), dst);
  }
  std::shared_ptr<const void> owner() const override { return f_; }
  bool permuted_qk() const override { return permuted_; }

 private:
  std::shared_ptr<GgufFile> f_;
  bool permuted_;
};

class HfSource : public Source {
 public:
  explicit HfSource(std::shared_ptr<HfCheckpoint> c) : c_(std::move(c)) {}
  std::string where() const override { return c_->dir(); }
  std::optional<Tensor> find(const std::string& h, const std::string&) const override {
    const SafetensorsTensorInfo* t = c_->find_tensor(h);
    if (t == nullptr) return std::nullopt;
    Tensor out;
    out.shape = t->shape;
    out.data = c_->file_of(h).data(*t);
    out.bytes = int64_t(t->end - t->begin);
    if (t->dtype == DType::F32) out.format = cpu::WeightFormat::kF32;
    if (t->dtype == DType::BF16) out.format = cpu::WeightFormat::kBF16;
    return out;
  }
  void read_f32(const std::string& h, const std::string&, float* dst) const override { c_->read_f32(h, dst); }
  std::shared_ptr<const void> owner() const override { return c_; }
  bool permuted_qk() const override { return false; }

 private:
  std::shared_ptr<HfCheckpoint> c_;
};

}  // namespace

RuntimeModel::RuntimeModel(const ModelHParams& hp)
    : hp_(hp), family_(&family_info(hp.arch)), rope_(std::make_unique<CpuRopeTables>(hp)) {}

std::shared_ptr<RuntimeModel> load_runtime_weights(const CheckpointInfo& info, const RuntimeLoadOptions& opts) {
  const ModelHParams& hp = info.hparams;
  std::shared_ptr<RuntimeModel> m(new RuntimeModel(hp));
  const FamilyInfo& fam = *m->family_;
  m->bf16_ = opts.bf16;
  m->w_.bf16 = opts.bf16;
  std::unique_ptr<Source> src;
  if (info.format == "gguf") {
    const auto& archs = fam.gguf_permuted_archs;
    const bool permuted = std::find(archs.begin(), archs.end(), hp.arch) != archs.end();
    src = std::make_unique<GgufSource>(std::make_shared<GgufFile>(GgufFile::open(info.path)), permuted);
  } else {
    src = std::make_unique<HfSource>(std::make_shared<HfCheckpoint>(HfCheckpoint::open(info.path)));
  }
  m->owners_.push_back(src->owner());

  // A matrix [rows, K] the kernels read: in place when they read its format (and its rows need no
  // reordering), else a float32 copy (dequantized / converted / reordered).
  auto matrix = [&](const std::string& hf, const std::string& gguf, const std::vector<int64_t>& shape,
                    int64_t permute_heads) -> cpu::WeightRef {
    auto t = src->find(hf, gguf);
    check(t.has_value(), src->where(), ": tensor ", info.format == "gguf" ? gguf : hf, " is missing (expected shape ",
          shape_str(shape), ")");
    check(t->shape == shape, src->where(), ": tensor ", info.format == "gguf" ? gguf : hf, " has shape ",
          shape_str(t->shape), ", expected ", shape_str(shape), " from the hyperparameters");
    const int64_t rows = shape[0], K = shape[1];
    cpu::WeightRef ref;
    ref.rows = rows;
    ref.bf16_math = opts.bf16;
    // The kernels multiply a BF16 matrix with x rounded to bf16 (on AVX512-BF16): right for a bf16 model,
    // but a float32 one computes with the weights upcast (transformers, the libtorch loader), so there a
    // BF16 matrix gets a float32 copy (exact; twice its bytes).
    const bool reads_in_place = t->format && !(*t->format == cpu::WeightFormat::kBF16 && !opts.bf16);
    if (reads_in_place && K % cpu::weight_block_elems(*t->format) == 0 &&
        t->bytes == rows * cpu::weight_row_bytes(*t->format, K)) {
      ref.format = *t->format;
      if (permute_heads == 0) {
        ref.data = t->data;
        m->mapped_bytes_ += t->bytes;
        return ref;
      }
      // llama.cpp's q/k row order within a head is (i, j), i < head_dim/2, j < 2; ours is (j, i).
      const int64_t row_bytes = cpu::weight_row_bytes(ref.format, K), hd = rows / permute_heads;
      auto copy = std::make_shared<std::vector<uint8_t>>(size_t(rows * row_bytes));
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t h = r / hd, j = (r % hd) / (hd / 2), i = r % (hd / 2);
        std::memcpy(copy->data() + r * row_bytes, t->data + (h * hd + i * 2 + j) * row_bytes, size_t(row_bytes));
      }
      ref.data = copy->data();
      m->owners_.push_back(copy);
      m->copied_bytes_ += int64_t(copy->size());
      return ref;
    }
    auto dense = std::make_shared<std::vector<float>>(size_t(rows * K));
    src->read_f32(hf, gguf, dense->data());
    if (permute_heads > 0) {
      std::vector<float> tmp(*dense);
      const int64_t hd = rows / permute_heads;
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t h = r / hd, j = (r % hd) / (hd / 2), i = r % (hd / 2);
        std::memcpy(dense->data() + r * K, tmp.data() + (h * hd + i * 2 + j) * K, size_t(K) * 4);
      }
    }
    ref.format = cpu::WeightFormat::kF32;
    ref.data = dense->data();
    m->owners_.push_back(dense);
    m->copied_bytes_ += int64_t(dense->size()) * 4;
    return ref;
  };
  // A vector as float32, `offset` added (Gemma's norms: the kernels multiply by 1 + w, where a GGUF
  // stores 1 + w and a checkpoint w; computed as float(w) + 1 like transformers' (1.0 + w.float())).
  auto vector = [&](const std::string& hf, const std::string& gguf, int64_t n, bool norm, bool required) -> const float* {
    auto t = src->find(hf, gguf);
    if (!t) {
      check(!required, src->where(), ": tensor ", info.format == "gguf" ? gguf : hf, " is missing (expected shape [", n, "])");
      return nullptr;
    }
    check(t->shape == std::vector<int64_t>{n}, src->where(), ": tensor ", info.format == "gguf" ? gguf : hf,
          " has shape ", shape_str(t->shape), ", expected [", n, "]");
    auto v = std::make_shared<std::vector<float>>(size_t(n));
    src->read_f32(hf, gguf, v->data());
    if (norm && fam.norm_plus_one)
      for (float& x : *v) x = info.format == "gguf" ? (x - 1.0f) + 1.0f : x + 1.0f;
    m->owners_.push_back(v);
    m->copied_bytes_ += n * 4;
    return v->data();
  };

  const int64_t E = hp.n_embd, V = hp.n_vocab, D = hp.head_dim, F = hp.n_ff;
  const int64_t q = hp.n_head * D, kv = hp.n_head_kv * D;
  m->w_.embedding = matrix("model.embed_tokens.weight", "token_embd.weight", {V, E}, 0);
  m->w_.output = hp.tie_embeddings ? m->w_.embedding : matrix("lm_head.weight", "output.weight", {V, E}, 0);
  m->w_.final_norm = vector("model.norm.weight", "output_norm.weight", E, true, true);
  m->w_.layers.resize(size_t(hp.n_layer));
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const std::string hf_pre = "model.layers." + std::to_string(l) + ".", g_pre = "blk." + std::to_string(l) + ".";
    CpuLayerWeights& L = m->w_.layers[size_t(l)];
    for (const FamilyTensor& t : fam.layer_tensors) {
      const std::string hf = hf_pre + t.hf, gguf = g_pre + t.gguf;
      switch (t.role) {
        case LayerTensor::kQ: L.matrix[int(t.role)] = matrix(hf, gguf, {q, E}, src->permuted_qk() ? hp.n_head : 0); break;
        case LayerTensor::kK: L.matrix[int(t.role)] = matrix(hf, gguf, {kv, E}, src->permuted_qk() ? hp.n_head_kv : 0); break;
        case LayerTensor::kV: L.matrix[int(t.role)] = matrix(hf, gguf, {kv, E}, 0); break;
        case LayerTensor::kO: L.matrix[int(t.role)] = matrix(hf, gguf, {E, q}, 0); break;
        case LayerTensor::kGate:
        case LayerTensor::kUp: L.matrix[int(t.role)] = matrix(hf, gguf, {F, E}, 0); break;
        case LayerTensor::kDown: L.matrix[int(t.role)] = matrix(hf, gguf, {E, F}, 0); break;
        case LayerTensor::kQBias: L.vector[int(t.role)] = vector(hf, gguf, q, false, hp.qkv_bias); break;
        case LayerTensor::kKBias:
        case LayerTensor::kVBias: L.vector[int(t.role)] = vector(hf, gguf, kv, false, hp.qkv_bias); break;
        case LayerTensor::kQNorm:
        case LayerTensor::kKNorm: L.vector[int(t.role)] = vector(hf, gguf, D, true, true); break;
        default: L.vector[int(t.role)] = vector(hf, gguf, E, is_norm(t.role), true); break;
      }
    }
    if (!hp.qkv_bias)
      for (LayerTensor b : {LayerTensor::kQBias, LayerTensor::kKBias, LayerTensor::kVBias}) L.vector[int(b)] = nullptr;
  }
  return m;
}

RuntimeLoaded load_runtime_model(const std::string& spec, const RuntimeLoadOptions& opts) {
  const auto t0 = std::chrono::steady_clock::now();
  RuntimeLoaded out;
  static_cast<CheckpointInfo&>(out) = read_checkpoint_info(spec, opts.load_tokenizer);
  out.model = load_runtime_weights(out, opts);
  out.load_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

// ---------------------------------------------------------------------------------------------
// Running it

std::unique_ptr<KvSlots> RuntimeModel::new_cache(int64_t n_slots, int64_t max_len) {
  return std::make_unique<KvBuffers>(hp_, n_slots, max_len, bf16_);
}

void RuntimeModel::forward_rows(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                                const std::vector<int64_t>& n_new, KvSlots& cache, bool last_only, bool hidden_only,
                                std::vector<float>& out) {
  const CachedRows rows = make_cached_rows(tokens, B, T, slots, n_new, cache, hp_.n_vocab);
  std::vector<int64_t> want;
  for (int64_t i = 0; i < rows.n(); ++i)
    if (!last_only || i + 1 == rows.n() || rows.batch_row[size_t(i + 1)] != rows.batch_row[size_t(i)]) want.push_back(i);
  out.resize(want.size() * size_t(hidden_only ? hp_.n_embd : hp_.n_vocab));
  run_cached_rows(hp_, *family_, w_, *rope_, rows, want, cache.view(), hidden_only, out.data());
  for (int64_t b = 0; b < B; ++b) cache.lengths[size_t(slots[size_t(b)])] = rows.new_len[size_t(b)];
}

void RuntimeModel::forward_last(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                                const std::vector<int64_t>& n_new, KvSlots& cache, float* logits) {
  const CachedRows rows = make_cached_rows(tokens, B, T, slots, n_new, cache, hp_.n_vocab);
  std::vector<int64_t> want;
  for (int64_t i = 0; i < rows.n(); ++i)
    if (i + 1 == rows.n() || rows.batch_row[size_t(i + 1)] != rows.batch_row[size_t(i)]) want.push_back(i);
  run_cached_rows(hp_, *family_, w_, *rope_, rows, want, cache.view(), /*hidden_only=*/false, logits);
  for (int64_t b = 0; b < B; ++b) cache.lengths[size_t(slots[size_t(b)])] = rows.new_len[size_t(b)];
}

bool RuntimeModel::forward_last_pooled(const int64_t* tokens, int64_t B, int64_t T, const std::vector<int64_t>& slots,
                                       const std::vector<int64_t>& n_new, KvSlots& cache, float* logits,
                                       float* hidden_sums) {
  const CachedRows rows = make_cached_rows(tokens, B, T, slots, n_new, cache, hp_.n_vocab);
  std::vector<int64_t> want;
  for (int64_t i = 0; i < rows.n(); ++i)
    if (i + 1 == rows.n() || rows.batch_row[size_t(i + 1)] != rows.batch_row[size_t(i)]) want.push_back(i);
  std::fill_n(hidden_sums, B * hp_.n_embd, 0.0f);
  run_cached_rows(hp_, *family_, w_, *rope_, rows, want, cache.view(), /*hidden_only=*/false, logits, hidden_sums);
  for (int64_t b = 0; b < B; ++b) cache.lengths[size_t(slots[size_t(b)])] = rows.new_len[size_t(b)];
  return true;
}

void for_each_position_logits(RuntimeModel& model, const std::vector<std::vector<int32_t>>& seqs, int64_t chunk,
                              int64_t group, const std::function<void(size_t s, int64_t t, const float* logits)>& fn) {
  check(chunk >= 1 && group >= 1, "for_each_position_logits: chunk and group must be >= 1");
  const int64_t V = model.hparams().n_vocab;
  std::vector<size_t> order(seqs.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return seqs[a].size() > seqs[b].size(); });
  std::vector<float> logits;
  for (size_t g0 = 0; g0 < order.size(); g0 += size_t(group)) {
    const size_t g1 = std::min(order.size(), g0 + size_t(group));
    const int64_t max_len = int64_t(seqs[order[g0]].size());  // longest first
    if (max_len == 0) break;                                   // the rest are empty too
    std::unique_ptr<KvSlots> cache = model.new_cache(int64_t(g1 - g0), max_len);
    for (int64_t done = 0; done < max_len; done += chunk) {
      // The sequences that still have tokens at column `done`; each feeds up to `chunk` of them.
      std::vector<size_t> active;  // indices into order
      std::vector<int64_t> slots, n_new;
      for (size_t i = g0; i < g1; ++i) {
        const int64_t len = int64_t(seqs[order[i]].size());
        if (len <= done) continue;
        active.push_back(i);
        slots.push_back(int64_t(i - g0));
        n_new.push_back(std::min(chunk, len - done));
      }
      const int64_t B = int64_t(active.size()), T = *std::max_element(n_new.begin(), n_new.end());
      std::vector<int64_t> tok(size_t(B * T), 0);
      for (int64_t b = 0; b < B; ++b) {
        const auto& s = seqs[order[active[size_t(b)]]];
        for (int64_t t = 0; t < n_new[size_t(b)]; ++t) tok[size_t(b * T + t)] = s[size_t(done + t)];
      }
      model.forward_rows(tok.data(), B, T, slots, n_new, *cache, /*last_only=*/false, /*hidden_only=*/false, logits);
      // Rows come ordered by (batch row, column), n_new[b] of them per row: (sequence, position) of each.
      std::vector<std::pair<size_t, int64_t>> where;
      for (int64_t b = 0; b < B; ++b)
        for (int64_t t = 0; t < n_new[size_t(b)]; ++t) where.push_back({order[active[size_t(b)]], done + t});
      parallel_for(0, int64_t(where.size()), 1, [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) fn(where[size_t(r)].first, where[size_t(r)].second, logits.data() + r * V);
      });
    }
  }
}

}  // namespace retort

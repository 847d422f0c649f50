#include "retort/model/hparams.h"

#include <cmath>

#include "retort/io/gguf.h"
#include "retort/util/error.h"

namespace retort {

namespace {

const char* const kArchs[] = {"llama", "mistral", "qwen2", "gemma3"};

bool is_supported(const std::string& arch) {
  for (const char* a : kArchs)
    if (arch == a) return true;
  return false;
}

// Shapes must be positive and heads must divide evenly; names the source on failure.
void validate(const ModelHParams& hp, const std::string& where) {
  auto positive = [&](int64_t v, const char* name) {
    check(v > 0, where, ": ", name, " must be positive, got ", v);
  };
  positive(hp.n_vocab, "n_vocab");
  positive(hp.n_embd, "n_embd");
  positive(hp.n_layer, "n_layer");
  positive(hp.n_head, "n_head");
  positive(hp.n_head_kv, "n_head_kv");
  positive(hp.head_dim, "head_dim");
  positive(hp.n_ff, "n_ff");
  positive(hp.max_position, "max_position");
  check(hp.n_head % hp.n_head_kv == 0, where, ": n_head (", hp.n_head,
        ") must be a multiple of n_head_kv (", hp.n_head_kv, ")");
  check(hp.head_dim % 2 == 0, where, ": head_dim must be even for RoPE, got ", hp.head_dim);
  check(hp.rope_theta > 0, where, ": rope theta must be positive, got ", hp.rope_theta);
  check(hp.rms_eps > 0, where, ": rms norm epsilon must be positive, got ", hp.rms_eps);
  if (!hp.rope_freq_factors.empty())
    check(int64_t(hp.rope_freq_factors.size()) == hp.head_dim / 2, where, ": rope_freqs has ",
          hp.rope_freq_factors.size(), " entries, expected head_dim/2 = ", hp.head_dim / 2);
  check(hp.attn_scale >= 0, where, ": attention scale must be positive, got ", hp.attn_scale);
  check(hp.sliding_window >= 0, where, ": sliding window must be >= 0, got ", hp.sliding_window);
  check(hp.local_layers.empty() || int64_t(hp.local_layers.size()) == hp.n_layer, where, ": ",
        hp.local_layers.size(), " layer types for ", hp.n_layer, " layers");
  check(hp.rope_theta_local > 0, where, ": local rope theta must be positive, got ", hp.rope_theta_local);
}

// Gemma 3 alternates local and global layers: with pattern P, layer l is global iff (l + 1) % P == 0
// (llama.cpp's set_swa_pattern, transformers' sliding_window_pattern). P = 1: all global.
std::vector<uint8_t> local_pattern(int64_t n_layer, int64_t pattern) {
  std::vector<uint8_t> out(size_t(n_layer), 0);
  for (int64_t l = 0; l < n_layer; ++l) out[size_t(l)] = pattern > 1 && (l + 1) % pattern != 0;
  return out;
}

}  // namespace

std::string supported_architectures() {
  std::string s;
  for (const char* a : kArchs) s += (s.empty() ? "" : ", ") + std::string(a);
  return s;
}

double ModelHParams::query_scale() const { return attn_scale > 0 ? attn_scale : 1.0 / std::sqrt(double(head_dim)); }

int64_t ModelHParams::n_params() const {
  int64_t q = n_head * head_dim, kv = n_head_kv * head_dim;
  int64_t per_layer = n_embd * q + 2 * n_embd * kv + q * n_embd  // q, k, v, o
                      + 3 * n_embd * n_ff                          // gate, up, down
                      + 2 * n_embd;                                // two norms
  if (arch == "gemma3") per_layer += 2 * n_embd + 2 * head_dim;   // post-norms, q/k norms
  if (qkv_bias) per_layer += q + 2 * kv;
  int64_t n = n_vocab * n_embd + n_layer * per_layer + n_embd;
  if (!tie_embeddings) n += n_vocab * n_embd;
  return n;
}

nlohmann::json ModelHParams::to_json() const {
  nlohmann::json j;
  j["arch"] = arch;
  j["n_vocab"] = n_vocab;
  j["n_embd"] = n_embd;
  j["n_layer"] = n_layer;
  j["n_head"] = n_head;
  j["n_head_kv"] = n_head_kv;
  j["head_dim"] = head_dim;
  j["n_ff"] = n_ff;
  j["max_position"] = max_position;
  j["rope_theta"] = rope_theta;
  j["rms_eps"] = rms_eps;
  j["rope_scaling"] = {{"type", rope_scaling.type},
                       {"factor", rope_scaling.factor},
                       {"low_freq_factor", rope_scaling.low_freq_factor},
                       {"high_freq_factor", rope_scaling.high_freq_factor},
                       {"original_max_position", rope_scaling.original_max_position}};
  j["rope_freq_factors"] = !rope_freq_factors.empty();
  j["qkv_bias"] = qkv_bias;
  j["tie_embeddings"] = tie_embeddings;
  if (attn_scale > 0) j["attn_scale"] = attn_scale;
  if (sliding_window > 0) {
    j["sliding_window"] = sliding_window;
    std::string types;
    for (uint8_t local : local_layers) types += local ? 'L' : 'G';
    j["layer_types"] = types;  // L = local (sliding window), G = global
    j["rope_theta_local"] = rope_theta_local;
  }
  j["n_params"] = n_params();
  return j;
}

ModelHParams hparams_from_gguf(const GgufFile& f) {
  const std::string& path = f.path();
  ModelHParams hp;
  hp.arch = f.get_string("general.architecture");
  check(is_supported(hp.arch), "gguf ", path, ": architecture \"", hp.arch,
        "\" is not supported (supported: ", supported_architectures(), ")");
  const std::string p = hp.arch + ".";
  hp.n_layer = f.get_int(p + "block_count");
  hp.n_embd = f.get_int(p + "embedding_length");
  hp.n_ff = f.get_int(p + "feed_forward_length");
  hp.n_head = f.get_int(p + "attention.head_count");
  hp.n_head_kv = f.find_int(p + "attention.head_count_kv").value_or(hp.n_head);
  hp.max_position = f.get_int(p + "context_length");
  hp.rms_eps = f.get_float(p + "attention.layer_norm_rms_epsilon");
  hp.rope_theta = f.find_float(p + "rope.freq_base").value_or(10000.0);
  check(hp.n_head > 0, "gguf ", path, ": ", p, "attention.head_count must be positive");
  hp.head_dim = f.find_int(p + "attention.key_length").value_or(hp.n_embd / hp.n_head);
  if (auto rot = f.find_int(p + "rope.dimension_count"))
    check(*rot == hp.head_dim, "gguf ", path, ": partial RoPE (", p, "rope.dimension_count = ", *rot,
          ", head_dim ", hp.head_dim, ") is not supported");

  const GgufTensorInfo* embd = f.find_tensor("token_embd.weight");
  check(embd != nullptr, "gguf ", path, ": tensor token_embd.weight is missing");
  check(embd->ne.size() == 2, "gguf ", path, ": tensor token_embd.weight must be 2-D");
  hp.n_vocab = f.find_int(p + "vocab_size").value_or(embd->ne[1]);
  hp.tie_embeddings = f.find_tensor("output.weight") == nullptr;
  hp.qkv_bias = f.find_tensor("blk.0.attn_q.bias") != nullptr;

  if (auto type = f.find_string(p + "rope.scaling.type")) {
    if (*type == "linear") {
      hp.rope_scaling.type = "linear";
      hp.rope_scaling.factor = f.get_float(p + "rope.scaling.factor");
    } else if (*type != "none") {
      fail("gguf ", path, ": ", p, "rope.scaling.type \"", *type,
           "\" is not supported (supported: none, linear; llama3 via rope_freqs.weight)");
    }
  }
  if (const GgufTensorInfo* rf = f.find_tensor("rope_freqs.weight")) {
    hp.rope_freq_factors.resize(size_t(rf->n_elements()));
    f.read_f32(*rf, hp.rope_freq_factors.data());
  }
  if (hp.arch == "gemma3") {
    // llama.cpp (llama-model.cpp, LLM_ARCH_GEMMA3): local layers every layer but each 6th, local RoPE
    // base 10000, query scale 1/sqrt(head_dim) (27B: 1/sqrt(n_embd / n_head)) unless the file says.
    hp.tie_embeddings = f.find_tensor("output.weight") == nullptr;
    hp.sliding_window = f.find_int(p + "attention.sliding_window").value_or(0);
    hp.local_layers = local_pattern(hp.n_layer, f.find_int(p + "attention.sliding_window_pattern").value_or(6));
    hp.rope_theta_local = f.find_float(p + "rope.freq_base_swa").value_or(10000.0);
    if (auto scale = f.find_float(p + "attention.scale")) hp.attn_scale = *scale;
    else if (hp.n_layer == 62) hp.attn_scale = 1.0 / std::sqrt(double(hp.n_embd / hp.n_head));  // Gemma 3 27B
    if (auto cap = f.find_float(p + "final_logit_softcapping"))
      check(*cap == 0, "gguf ", path, ": final logit softcapping (", *cap, ") is not supported");
  }
  validate(hp, "gguf " + path);
  return hp;
}

namespace {

// config.json accessors: errors name the file and key.
const nlohmann::json& need(const nlohmann::json& c, const char* key, const std::string& path) {
  auto it = c.find(key);
  check(it != c.end() && !it->is_null(), path, ": missing key \"", key, "\"");
  return *it;
}

int64_t need_int(const nlohmann::json& c, const char* key, const std::string& path) {
  const auto& v = need(c, key, path);
  check(v.is_number_integer(), path, ": key \"", key, "\" must be an integer, got ", v.dump());
  return v.get<int64_t>();
}

int64_t opt_int(const nlohmann::json& c, const char* key, int64_t def, const std::string& path) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return def;
  check(it->is_number_integer(), path, ": key \"", key, "\" must be an integer, got ", it->dump());
  return it->get<int64_t>();
}

double opt_float(const nlohmann::json& c, const char* key, double def, const std::string& path) {
  auto it = c.find(key);
  if (it == c.end() || it->is_null()) return def;
  check(it->is_number(), path, ": key \"", key, "\" must be a number, got ", it->dump());
  return it->get<double>();
}

// transformers 4 writes "rope_scaling": {"rope_type"|"type": ...}; transformers 5 writes
// "rope_parameters": {"rope_type": ..., "rope_theta": ...}.
void read_rope(const nlohmann::json& c, ModelHParams& hp, const std::string& path) {
  hp.rope_theta = opt_float(c, "rope_theta", 10000.0, path);
  const nlohmann::json* rs = nullptr;
  const char* rs_key = "rope_scaling";
  if (auto it = c.find("rope_parameters"); it != c.end() && it->is_object()) {
    rs = &*it;
    rs_key = "rope_parameters";
    hp.rope_theta = opt_float(*rs, "rope_theta", hp.rope_theta, path);
  }
  if (auto it = c.find("rope_scaling"); it != c.end() && it->is_object()) rs = &*it, rs_key = "rope_scaling";
  if (rs == nullptr) return;
  std::string type = "default";
  if (auto it = rs->find("rope_type"); it != rs->end() && it->is_string()) type = it->get<std::string>();
  else if (auto it2 = rs->find("type"); it2 != rs->end() && it2->is_string()) type = it2->get<std::string>();
  const std::string where = path + " " + rs_key;
  if (type == "default" || type == "none") return;
  if (type == "linear") {
    hp.rope_scaling.type = "linear";
    hp.rope_scaling.factor = need(*rs, "factor", where).get<double>();
  } else if (type == "llama3") {
    hp.rope_scaling.type = "llama3";
    hp.rope_scaling.factor = need(*rs, "factor", where).get<double>();
    hp.rope_scaling.low_freq_factor = need(*rs, "low_freq_factor", where).get<double>();
    hp.rope_scaling.high_freq_factor = need(*rs, "high_freq_factor", where).get<double>();
    hp.rope_scaling.original_max_position = need_int(*rs, "original_max_position_embeddings", where);
  } else {
    fail(where, ": rope type \"", type, "\" is not supported (supported: default, linear, llama3)");
  }
  check(hp.rope_scaling.factor > 0, where, ": factor must be positive");
}

// Gemma 3 text config (transformers 4.5x and 5.x spellings): query_pre_attn_scalar, sliding_window with
// layer_types or sliding_window_pattern, local RoPE base (rope_local_base_freq, or
// rope_parameters.sliding_attention.rope_theta), global RoPE (rope_theta + rope_scaling, or
// rope_parameters.full_attention), no logit softcapping.
void read_gemma3(const nlohmann::json& c, ModelHParams& hp, const std::string& path) {
  hp.tie_embeddings = true;  // Gemma3TextConfig's default
  hp.attn_scale = 1.0 / std::sqrt(opt_float(c, "query_pre_attn_scalar", double(hp.head_dim), path));
  for (const char* key : {"final_logit_softcapping", "attn_logit_softcapping"})
    if (auto it = c.find(key); it != c.end() && !it->is_null())
      fail(path, ": ", key, " = ", it->dump(), " is not supported (Gemma 3 has none)");
  hp.sliding_window = opt_int(c, "sliding_window", 0, path);
  if (auto it = c.find("layer_types"); it != c.end() && it->is_array()) {
    check(int64_t(it->size()) == hp.n_layer, path, ": layer_types has ", it->size(), " entries for ", hp.n_layer,
          " layers");
    for (const auto& t : *it) {
      check(t == "sliding_attention" || t == "full_attention", path, ": layer_types entry ", t.dump(),
            " (expected \"sliding_attention\" or \"full_attention\")");
      hp.local_layers.push_back(t == "sliding_attention");
    }
  } else {
    hp.local_layers = local_pattern(hp.n_layer, opt_int(c, "sliding_window_pattern", 6, path));
  }
  if (auto it = c.find("rope_parameters"); it != c.end() && it->is_object() && it->contains("full_attention")) {
    const nlohmann::json& full = (*it)["full_attention"];
    const nlohmann::json& local = it->value("sliding_attention", nlohmann::json::object());
    nlohmann::json global_cfg = {{"rope_parameters", full}};
    read_rope(global_cfg, hp, path + " rope_parameters.full_attention");
    hp.rope_theta_local = opt_float(local, "rope_theta", 10000.0, path);
    const std::string lt = local.value("rope_type", "default");
    check(lt == "default", path, ": rope_parameters.sliding_attention.rope_type \"", lt, "\" is not supported");
  } else {
    read_rope(c, hp, path);
    hp.rope_theta_local = opt_float(c, "rope_local_base_freq", 10000.0, path);
  }
}

}  // namespace

ModelHParams hparams_from_hf_config(const nlohmann::json& c, const std::string& path) {
  check(c.is_object(), path, ": expected a JSON object");
  ModelHParams hp;
  const auto& mt = need(c, "model_type", path);
  check(mt.is_string(), path, ": key \"model_type\" must be a string");
  hp.arch = mt.get<std::string>();
  if (hp.arch == "gemma3_text") hp.arch = "gemma3";
  check(hp.arch != "gemma3" || mt == "gemma3_text", path,
        ": model_type \"gemma3\" is the multimodal Gemma 3; retort loads its text model (model_type \"gemma3_text\")");
  check(is_supported(hp.arch), path, ": model_type \"", mt.get<std::string>(), "\" is not supported (supported: ",
        supported_architectures(), "; Gemma 3 as gemma3_text)");
  const bool gemma = hp.arch == "gemma3";
  for (const char* act_key : {"hidden_act", "hidden_activation"})
    if (auto it = c.find(act_key); it != c.end() && it->is_string()) {
      const std::string want = gemma ? "gelu_pytorch_tanh" : "silu";
      check(*it == want, path, ": ", act_key, " \"", it->get<std::string>(), "\" is not supported for ", hp.arch,
            " (only ", want, ")");
    }
  hp.n_vocab = need_int(c, "vocab_size", path);
  hp.n_embd = need_int(c, "hidden_size", path);
  hp.n_layer = need_int(c, "num_hidden_layers", path);
  hp.n_head = need_int(c, "num_attention_heads", path);
  check(hp.n_head > 0, path, ": num_attention_heads must be positive");
  hp.n_head_kv = opt_int(c, "num_key_value_heads", hp.n_head, path);
  hp.head_dim = opt_int(c, "head_dim", hp.n_embd / hp.n_head, path);
  hp.n_ff = need_int(c, "intermediate_size", path);
  hp.max_position = opt_int(c, "max_position_embeddings", 2048, path);
  hp.rms_eps = opt_float(c, "rms_norm_eps", 1e-6, path);
  // Sliding-window attention of the Llama family (Mistral 7B v0.1: 4096; Qwen2 only with
  // use_sliding_window) is not modelled: within the window it equals full attention, so cap the
  // usable context at the window and let longer requests fail with a clear context-length error
  // instead of silently diverging. (Gemma 3's local layers are modelled: below.)
  if (auto it = c.find("sliding_window"); !gemma && it != c.end() && it->is_number_integer()) {
    bool used = hp.arch == "mistral";
    if (auto u = c.find("use_sliding_window"); u != c.end() && u->is_boolean()) used = u->get<bool>();
    if (used && it->get<int64_t>() > 0) hp.max_position = std::min(hp.max_position, it->get<int64_t>());
  }
  if (gemma) {
    read_gemma3(c, hp, path);
  } else {
    read_rope(c, hp, path);
  }
  if (auto it = c.find("tie_word_embeddings"); it != c.end() && it->is_boolean()) hp.tie_embeddings = it->get<bool>();
  if (hp.arch == "qwen2") {
    hp.qkv_bias = true;
  } else if (auto it = c.find("attention_bias"); it != c.end() && it->is_boolean()) {
    // Llama's attention_bias also adds an o_proj bias, which retort does not model.
    check(!it->get<bool>(), path, ": attention_bias = true is not supported for ", hp.arch);
  }
  if (auto it = c.find("mlp_bias"); it != c.end() && it->is_boolean())
    check(!it->get<bool>(), path, ": mlp_bias = true is not supported");
  validate(hp, path);
  return hp;
}

}  // namespace retort

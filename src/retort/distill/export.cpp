#include "retort/distill/export.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <unordered_set>

#include "retort/io/ggml_quants.h"
#include "retort/io/gguf_writer.h"
#include "retort/io/safetensors.h"
#include "retort/model/causal_lm.h"
#include "retort/model/loader.h"
#include "retort/text/chat_template.h"
#include "retort/text/pretokenize.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace fs = std::filesystem;

namespace retort {

namespace {

using ojson = nlohmann::ordered_json;

std::string dump(const ojson& j) { return j.dump(2, ' ', false, ojson::error_handler_t::replace) + "\n"; }

// A parameter as a float32 CPU contiguous tensor (the model may be bf16 or on a GPU).
torch::Tensor cpu_f32(const torch::Tensor& t) { return t.detach().to(torch::kCPU, torch::kFloat32).contiguous(); }

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer files

// HF's own spelling of the GPT-2 ByteLevel regex (what ByteLevel(use_regex=true) applies).
const char* const kHfGpt2Regex = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

ojson byte_level(bool use_regex, bool trim_offsets) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", trim_offsets}, {"use_regex", use_regex}};
}

ojson split(const std::string& regex) {
  return {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
}

// The pre_tokenizer real checkpoints of each family carry (SmolLM2: Digits + ByteLevel;
// Llama-3 / Qwen2: Split + ByteLevel without its own regex; GPT-2: ByteLevel alone).
ojson pre_tokenizer_json(const Tokenizer& tok) {
  const std::string name = tok.pre_tokenizer_name();
  if (name == "gpt2") return byte_level(true, true);
  if (name == "smollm")
    return {{"type", "Sequence"},
            {"pretokenizers", ojson::array({{{"type", "Digits"}, {"individual_digits", true}}, byte_level(true, true)})}};
  // llama3, qwen2, custom: each regex an Isolated split, then the byte mapping.
  ojson seq = ojson::array();
  for (const std::string& p : tok.pre_tokenizer_patterns()) seq.push_back(split(p == kGpt2Pattern ? kHfGpt2Regex : p));
  seq.push_back(byte_level(false, false));
  return {{"type", "Sequence"}, {"pretokenizers", seq}};
}

ojson added_token_json(const Tokenizer::AddedTokenInfo& a, bool with_id) {
  ojson j;
  if (with_id) j["id"] = a.id;
  j["content"] = a.content;
  j["single_word"] = false;
  j["lstrip"] = a.lstrip;
  j["rstrip"] = a.rstrip;
  j["normalized"] = a.normalized;
  j["special"] = a.special;
  return j;
}

// BOS prepended by the post-processor, as Llama-3's and Gemma's tokenizer.json do.
ojson bos_post_processor(const Tokenizer& tok) {
  const std::string bos = tok.token_text(*tok.bos_id());
  ojson a = {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, b = {{"Sequence", {{"id", "B"}, {"type_id", 1}}}};
  auto special = [&](int type_id) { return ojson{{"SpecialToken", {{"id", bos}, {"type_id", type_id}}}}; };
  return {{"type", "TemplateProcessing"},
          {"single", ojson::array({special(0), a})},
          {"pair", ojson::array({special(0), a, special(1), b})},
          {"special_tokens", {{bos, {{"id", bos}, {"ids", {*tok.bos_id()}}, {"tokens", {bos}}}}}}};
}

// The vocabulary {text: id} in id order. Appended to ordered_json's vector directly: its operator[] looks
// every key up linearly, which is quadratic (minutes for Gemma's 262k tokens). A text held by several ids
// keeps the first, as the tokenizer's own lookup does.
ojson vocab_json(const Tokenizer& tok) {
  ojson vocab = ojson::object();
  auto& entries = vocab.get_ref<ojson::object_t&>();
  entries.reserve(size_t(tok.n_vocab()));
  std::unordered_set<std::string> seen;
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    if (tok.is_hole(id)) continue;
    std::string text = tok.token_text(id);
    if (seen.insert(text).second) entries.ojson::object_t::Container::emplace_back(std::move(text), id);
  }
  return vocab;
}

ojson bpe_model_json(const Tokenizer& tok, bool sentencepiece) {
  ojson vocab = vocab_json(tok);
  ojson merges = ojson::array();
  for (const auto& [a, b] : tok.merges()) merges.push_back(ojson::array({a, b}));  // not {a, b}: that is an object
  const auto unk = tok.unk_id();
  return {{"type", "BPE"},
          {"dropout", nullptr},
          {"unk_token", sentencepiece && unk ? ojson(tok.token_text(*unk)) : ojson(nullptr)},
          {"continuing_subword_prefix", nullptr},
          {"end_of_word_suffix", nullptr},
          {"fuse_unk", sentencepiece},
          {"byte_fallback", sentencepiece},
          {"ignore_merges", tok.ignores_merges()},
          {"vocab", std::move(vocab)},
          {"merges", std::move(merges)}};
}

// SentencePiece BPE (Gemma) as Hugging Face's Gemma tokenizers are (transformers GemmaTokenizer, and its
// conversion of this GGUF): BPE with byte_fallback, normalizer " " -> "▁", a Split on " " (a no-op after
// that normalizer), decoder "▁" -> " " + ByteFallback + Fuse, BOS by the post-processor. Merges derived
// from the scores (Tokenizer::merges). Two choices differ from transformers' GGUF conversion so that
// HF encodes exactly as SentencePiece (and retort) do: every user-defined piece (Gemma's runs of
// newlines, tabs and spaces, HTML tags) is an added token with normalized: true, matched whole in the
// "▁" text, leftmost-longest (the conversion leaves the space runs to BPE: 40 spaces 16 + 24 where
// SentencePiece gives 31 + 9); and a run of spaces keeps the GGUF's spelling ("  ", not "▁▁"), so its
// only way in is that added token, and the tokenizer's hash stays the GGUF's.
std::string spm_tokenizer_json(const Tokenizer& tok) {
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ojson added = ojson::array();
  for (const auto& a : tok.added_tokens()) added.push_back(added_token_json(a, true));
  j["added_tokens"] = added;
  j["normalizer"] = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}};
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"String", " "}}}, {"behavior", "MergedWithPrevious"},
                        {"invert", false}};
  j["post_processor"] = tok.add_bos_token() ? bos_post_processor(tok) : ojson(nullptr);
  j["decoder"] = {{"type", "Sequence"},
                  {"decoders", ojson::array({{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                                             {{"type", "ByteFallback"}},
                                             {{"type", "Fuse"}}})}};
  j["model"] = bpe_model_json(tok, /*sentencepiece=*/true);
  return j.dump(-1, ' ', false, ojson::error_handler_t::strict);
}

std::string tokenizer_json(const Tokenizer& tok) {
  if (tok.model_type() == "spm") return spm_tokenizer_json(tok);
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  ojson added = ojson::array();
  for (const auto& a : tok.added_tokens()) added.push_back(added_token_json(a, true));
  j["added_tokens"] = added;
  j["normalizer"] = tok.normalizes_nfc() ? ojson{{"type", "NFC"}} : ojson(nullptr);
  j["pre_tokenizer"] = pre_tokenizer_json(tok);
  if (tok.add_bos_token()) {
    j["post_processor"] = bos_post_processor(tok);
  } else {
    j["post_processor"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", false}, {"use_regex", true}};
  }
  j["decoder"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true}, {"use_regex", true}};
  j["model"] = bpe_model_json(tok, /*sentencepiece=*/false);
  // Compact: a 49k vocabulary pretty-printed is several MB of whitespace.
  return j.dump(-1, ' ', false, ojson::error_handler_t::strict);
}

std::string tokenizer_config_json(const Tokenizer& tok, const ExportInfo& info, int64_t max_position) {
  ojson c;
  c["add_bos_token"] = tok.add_bos_token();
  c["add_eos_token"] = false;
  ojson dec = ojson::object();
  for (const auto& a : tok.added_tokens()) dec[std::to_string(a.id)] = added_token_json(a, false);
  c["added_tokens_decoder"] = dec;
  auto token = [&](std::optional<int32_t> id) { return id ? ojson(tok.token_text(*id)) : ojson(nullptr); };
  c["bos_token"] = token(tok.bos_id());
  c["eos_token"] = token(tok.eos_id());
  c["pad_token"] = token(tok.pad_id());
  c["unk_token"] = tok.model_type() == "spm" ? token(tok.unk_id()) : ojson(nullptr);
  const std::string tmpl = export_chat_template(info.chat_template.empty() ? tok.chat_template() : info.chat_template, tok);
  if (!tmpl.empty()) c["chat_template"] = tmpl;
  c["clean_up_tokenization_spaces"] = false;
  c["model_max_length"] = max_position;
  // Gemma checkpoints name GemmaTokenizer (transformers 5 loads it from this tokenizer.json as written).
  c["tokenizer_class"] = tok.model_type() == "spm" ? "GemmaTokenizer" : "PreTrainedTokenizerFast";
  return dump(c);
}

// ---------------------------------------------------------------------------------------------
// Hugging Face config files

const char* hf_architecture(const std::string& arch) {
  if (arch == "llama") return "LlamaForCausalLM";
  if (arch == "mistral") return "MistralForCausalLM";
  if (arch == "qwen2") return "Qwen2ForCausalLM";
  if (arch == "gemma3") return "Gemma3ForCausalLM";
  fail("export: architecture \"", arch, "\" has no Hugging Face class (supported: ", supported_architectures(), ")");
}

const char* torch_dtype_name(const std::string& dtype) {
  if (dtype == "f32") return "float32";
  if (dtype == "bf16") return "bfloat16";
  return "float16";
}

ojson id_or_null(std::optional<int32_t> id) { return id ? ojson(*id) : ojson(nullptr); }

// eos_token_id: one id, or the list when several end generation.
ojson eos_json(const Tokenizer& tok, const ExportInfo& info) {
  std::vector<int32_t> ids = info.eos_ids;
  if (ids.empty() && tok.eos_id()) ids.push_back(*tok.eos_id());
  if (ids.empty()) return nullptr;
  // The tokenizer's own eos first (transformers treats the first as the eos token).
  if (auto e = tok.eos_id()) {
    auto it = std::find(ids.begin(), ids.end(), *e);
    if (it != ids.end()) std::rotate(ids.begin(), it, it + 1);
  }
  if (ids.size() == 1) return ids[0];
  return ids;
}

// transformers-5 rope_parameters of one layer kind: {factor?, rope_theta, rope_type}.
ojson rope_parameters(double theta, const RopeScaling& rs) {
  ojson r;
  if (rs.type == "linear") {
    r["factor"] = rs.factor;
  } else if (rs.type == "llama3") {
    r["factor"] = rs.factor;
    r["high_freq_factor"] = rs.high_freq_factor;
    r["low_freq_factor"] = rs.low_freq_factor;
    r["original_max_position_embeddings"] = rs.original_max_position;
  }
  r["rope_theta"] = theta;
  r["rope_type"] = rs.type == "none" ? "default" : rs.type;
  return r;
}

// Gemma 3's query_pre_attn_scalar: softmax scale = query_pre_attn_scalar^-1/2. Gemma3TextConfig types it
// int, so a whole number is written as one (1/(1/sqrt(24))² is 24.000000000000004 in doubles).
ojson query_pre_attn_scalar(const ModelHParams& hp) {
  if (hp.attn_scale == 0) return hp.head_dim;
  const double q = 1.0 / (hp.attn_scale * hp.attn_scale), whole = std::round(q);
  if (std::fabs(q - whole) <= 1e-9 * whole) return int64_t(whole);
  return q;
}

// Gemma3TextConfig as transformers 5 writes it (keys sorted): Gemma3ForCausalLM, model_type gemma3_text,
// layer_types from the local layers, rope_parameters per layer kind (the global one carries the scaling).
std::string gemma3_config_json(const ModelHParams& hp, const Tokenizer& tok, const ExportInfo& info,
                               const std::string& dtype) {
  ojson c;
  c["architectures"] = {"Gemma3ForCausalLM"};
  c["attention_bias"] = false;
  c["attention_dropout"] = 0.0;
  c["attn_logit_softcapping"] = nullptr;
  c["bos_token_id"] = id_or_null(tok.bos_id());
  c["dtype"] = torch_dtype_name(dtype);
  c["eos_token_id"] = eos_json(tok, info);
  c["final_logit_softcapping"] = nullptr;
  c["head_dim"] = hp.head_dim;
  c["hidden_activation"] = "gelu_pytorch_tanh";
  c["hidden_size"] = hp.n_embd;
  c["initializer_range"] = 0.02;
  c["intermediate_size"] = hp.n_ff;
  ojson types = ojson::array();
  for (int64_t l = 0; l < hp.n_layer; ++l) types.push_back(hp.is_local(l) ? "sliding_attention" : "full_attention");
  c["layer_types"] = types;
  c["max_position_embeddings"] = hp.max_position;
  c["model_type"] = "gemma3_text";
  c["num_attention_heads"] = hp.n_head;
  c["num_hidden_layers"] = hp.n_layer;
  c["num_key_value_heads"] = hp.n_head_kv;
  c["pad_token_id"] = id_or_null(tok.pad_id());
  c["query_pre_attn_scalar"] = query_pre_attn_scalar(hp);
  if (!info.provenance.empty()) c["retort"] = info.provenance;
  c["rms_norm_eps"] = hp.rms_eps;
  c["rope_parameters"] = {{"full_attention", rope_parameters(hp.rope_theta, hp.rope_scaling)},
                          {"sliding_attention", rope_parameters(hp.rope_theta_local, RopeScaling{})}};
  c["sliding_window"] = hp.sliding_window > 0 ? ojson(hp.sliding_window) : ojson(nullptr);
  c["tie_word_embeddings"] = hp.tie_embeddings;
  c["use_bidirectional_attention"] = false;
  c["use_cache"] = true;
  c["vocab_size"] = hp.n_vocab;
  return dump(c);
}

std::string config_json(const ModelHParams& hp, const Tokenizer& tok, const ExportInfo& info, const std::string& dtype) {
  check(hp.rope_freq_factors.empty(), "export hf: this model stores per-frequency RoPE factors (GGUF rope_freqs.weight), "
        "which a Hugging Face config.json cannot express; export it as GGUF instead");
  if (hp.arch == "gemma3") return gemma3_config_json(hp, tok, info, dtype);
  ojson c;
  c["architectures"] = {hf_architecture(hp.arch)};
  c["model_type"] = hp.arch;
  c["vocab_size"] = hp.n_vocab;
  c["hidden_size"] = hp.n_embd;
  c["intermediate_size"] = hp.n_ff;
  c["num_hidden_layers"] = hp.n_layer;
  c["num_attention_heads"] = hp.n_head;
  c["num_key_value_heads"] = hp.n_head_kv;
  c["head_dim"] = hp.head_dim;
  c["hidden_act"] = "silu";
  c["max_position_embeddings"] = hp.max_position;
  c["rms_norm_eps"] = hp.rms_eps;
  c["rope_theta"] = hp.rope_theta;
  const RopeScaling& rs = hp.rope_scaling;
  if (rs.type == "linear") {
    c["rope_scaling"] = {{"rope_type", "linear"}, {"factor", rs.factor}};
  } else if (rs.type == "llama3") {
    c["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", rs.factor},
                         {"low_freq_factor", rs.low_freq_factor},
                         {"high_freq_factor", rs.high_freq_factor},
                         {"original_max_position_embeddings", rs.original_max_position}};
  } else {
    c["rope_scaling"] = nullptr;
  }
  if (hp.arch == "llama") {
    c["attention_bias"] = false;
    c["mlp_bias"] = false;
  }
  if (hp.arch == "mistral" || hp.arch == "qwen2") c["sliding_window"] = nullptr;
  if (hp.arch == "qwen2") c["use_sliding_window"] = false;
  c["attention_dropout"] = 0.0;
  c["initializer_range"] = 0.02;
  c["tie_word_embeddings"] = hp.tie_embeddings;
  c["bos_token_id"] = id_or_null(tok.bos_id());
  c["eos_token_id"] = eos_json(tok, info);
  if (tok.pad_id()) c["pad_token_id"] = *tok.pad_id();
  c["torch_dtype"] = torch_dtype_name(dtype);
  c["use_cache"] = true;
  if (!info.provenance.empty()) c["retort"] = info.provenance;
  return dump(c);
}

std::string generation_config_json(const Tokenizer& tok, const ExportInfo& info) {
  ojson g = ojson::object();
  g["bos_token_id"] = id_or_null(tok.bos_id());
  g["eos_token_id"] = eos_json(tok, info);
  if (tok.pad_id()) g["pad_token_id"] = *tok.pad_id();
  // Sampling defaults the source carried (temperature, top_p, ...), ids above take precedence.
  if (info.generation_defaults.is_object())
    for (auto it = info.generation_defaults.begin(); it != info.generation_defaults.end(); ++it)
      if (!g.contains(it.key()) && it.key() != "transformers_version") g[it.key()] = it.value();
  return dump(g);
}

// Publish `tmp` as `dir`: an existing dir is moved aside first and removed only after the
// new one is in place, so a crash leaves either the old or the new directory whole.
void publish_dir(const std::string& tmp, const std::string& dir) {
  std::error_code ec;
  const std::string old = dir + ".old." + std::to_string(::getpid());
  const bool existed = fs::exists(dir, ec);
  if (existed) {
    fs::remove_all(old, ec);
    fs::rename(dir, old, ec);
    check(!ec, "export: cannot move the existing ", dir, " aside (", ec.message(), ")");
  }
  fs::rename(tmp, dir, ec);
  if (ec) {
    std::error_code ec2;
    if (existed) fs::rename(old, dir, ec2);
    fail("export: cannot rename ", tmp, " to ", dir, " (", ec.message(), ")");
  }
  if (existed) fs::remove_all(old, ec);
}

// ---------------------------------------------------------------------------------------------
// GGUF

// Hugging Face (rotate-half) q/k rows -> llama.cpp's interleaved order: the inverse of the
// loader's unpermute (convert_hf_to_gguf.py LlamaModel.permute). w [n_head * head_dim, ...].
torch::Tensor permute_rows(const torch::Tensor& w, int64_t n_head) {
  auto sizes = w.sizes().vec();
  const int64_t head_dim = sizes[0] / n_head;
  std::vector<int64_t> v = {n_head, 2, head_dim / 2};
  for (size_t d = 1; d < sizes.size(); ++d) v.push_back(sizes[d]);
  return w.reshape(v).transpose(1, 2).reshape(sizes).contiguous();
}

// llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) for retort's.
std::string gguf_pre_name(const Tokenizer& tok) {
  const std::string n = tok.pre_tokenizer_name();
  if (n == "smollm") return "smollm";
  if (n == "gpt2") return "gpt-2";
  if (n == "llama3") return "llama-bpe";
  if (n == "qwen2") return "qwen2";
  fail("export gguf: the tokenizer's pre-tokenizer is custom (not gpt2, smollm, llama3 or qwen2), which llama.cpp "
       "cannot name in tokenizer.ggml.pre; export it as a Hugging Face directory instead");
}

// Per-frequency RoPE divisors llama.cpp wants for llama3 scaling (convert_hf_to_gguf.py
// LlamaModel.generate_extra_tensors): 1 for short wavelengths, `factor` for long ones,
// 1 / ((1 - s) / factor + s) between.
std::vector<float> llama3_rope_factors(const ModelHParams& hp) {
  const RopeScaling& rs = hp.rope_scaling;
  const double old_len = double(rs.original_max_position);
  const double low_wavelen = old_len / rs.low_freq_factor, high_wavelen = old_len / rs.high_freq_factor;
  std::vector<float> out;
  for (int64_t i = 0; i < hp.head_dim; i += 2) {
    const float freq = 1.0f / std::pow(float(hp.rope_theta), float(i) / float(hp.head_dim));
    const double wavelen = 2 * M_PI / double(freq);
    if (wavelen < high_wavelen) {
      out.push_back(1.0f);
    } else if (wavelen > low_wavelen) {
      out.push_back(float(rs.factor));
    } else {
      const double smooth = (old_len / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
      out.push_back(float(1.0 / ((1 - smooth) / rs.factor + smooth)));
    }
  }
  return out;
}

// SentencePiece BPE (Gemma) as llama.cpp's converter writes it (_set_vocab_sentencepiece): model "llama",
// scores, token types 1 normal, 3 control, 4 user-defined, 6 byte, no prefix space. Scores the tokenizer
// does not have (a piece no merge of a tokenizer.json makes) are written below every real one.
void add_spm_tokenizer_gguf(GgufWriter& w, const Tokenizer& tok) {
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_string("tokenizer.ggml.pre", "default");
  const size_t n = size_t(tok.n_vocab());
  std::vector<std::string> tokens(n);
  std::vector<float> scores(n);
  std::vector<int32_t> types(n);
  float lowest = 0;
  for (int32_t id = 0; id < tok.n_vocab(); ++id)
    if (std::isfinite(tok.score(id))) lowest = std::min(lowest, tok.score(id));
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    const size_t i = size_t(id);
    if (tok.is_hole(id)) {
      tokens[i] = "[PAD" + std::to_string(id) + "]";
      types[i] = 5;
      scores[i] = -1000;
      continue;
    }
    tokens[i] = tok.token_text(id);
    if (tok.is_special(id)) types[i] = 3, scores[i] = -1000;  // Gemma's GGUF: -1000 for control and user-defined
    else if (tok.is_added(id)) types[i] = 4, scores[i] = -1000;
    else if (tok.is_byte(id)) types[i] = 6, scores[i] = 0;
    else types[i] = 1, scores[i] = std::isfinite(tok.score(id)) ? tok.score(id) : lowest - 1;
  }
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_float32_array("tokenizer.ggml.scores", scores);
  w.add_int32_array("tokenizer.ggml.token_type", types);
  if (auto id = tok.unk_id()) w.add_uint32("tokenizer.ggml.unknown_token_id", uint32_t(*id));
  w.add_bool("tokenizer.ggml.add_sep_token", false);
  w.add_bool("tokenizer.ggml.add_space_prefix", false);
}

void add_byte_level_tokenizer_gguf(GgufWriter& w, const Tokenizer& tok) {
  w.add_string("tokenizer.ggml.model", "gpt2");
  w.add_string("tokenizer.ggml.pre", gguf_pre_name(tok));
  std::vector<std::string> tokens(size_t(tok.n_vocab()));
  std::vector<int32_t> types(size_t(tok.n_vocab()));
  for (int32_t id = 0; id < tok.n_vocab(); ++id) {
    // llama.cpp token types: 1 normal, 3 control (special), 4 user-defined (added, not special), 5 unused.
    if (tok.is_hole(id)) {
      tokens[size_t(id)] = "[PAD" + std::to_string(id) + "]";
      types[size_t(id)] = 5;
    } else {
      tokens[size_t(id)] = tok.token_text(id);
      types[size_t(id)] = tok.is_special(id) ? 3 : tok.is_added(id) ? 4 : 1;
    }
  }
  w.add_string_array("tokenizer.ggml.tokens", tokens);
  w.add_int32_array("tokenizer.ggml.token_type", types);
  std::vector<std::string> merges;
  for (const auto& [a, b] : tok.merges()) merges.push_back(a + " " + b);
  w.add_string_array("tokenizer.ggml.merges", merges);
}

void add_tokenizer_gguf(GgufWriter& w, const Tokenizer& tok, const ExportInfo& info) {
  if (tok.model_type() == "spm") {
    add_spm_tokenizer_gguf(w, tok);
  } else {
    add_byte_level_tokenizer_gguf(w, tok);
  }
  if (auto id = tok.bos_id()) w.add_uint32("tokenizer.ggml.bos_token_id", uint32_t(*id));
  if (auto id = tok.eos_id()) w.add_uint32("tokenizer.ggml.eos_token_id", uint32_t(*id));
  if (auto id = tok.pad_id()) w.add_uint32("tokenizer.ggml.padding_token_id", uint32_t(*id));
  w.add_bool("tokenizer.ggml.add_bos_token", tok.add_bos_token());
  w.add_bool("tokenizer.ggml.add_eos_token", false);
  const std::string tmpl = export_chat_template(info.chat_template.empty() ? tok.chat_template() : info.chat_template, tok);
  if (!tmpl.empty()) w.add_string("tokenizer.chat_template", tmpl);
}

// Gemma 3's keys beyond the common ones (llama.cpp convert_hf_to_gguf.py Gemma3Model): the sliding window.
// llama.cpp assumes the rest (llama-model.cpp LLM_ARCH_GEMMA3): every 6th layer global, local RoPE base
// 10000, query scale 1/sqrt(head_dim) (27B, 62 layers: 1/sqrt(n_embd / n_head)). A model that departs from
// that also gets the keys retort reads for it (attention.sliding_window_pattern, rope.freq_base_swa,
// attention.scale); llama.cpp ignores them, so such a file runs as trained in retort only, and this warns.
// It warns too under 6 layers: llama.cpp then has no global layer and aborts (checked with llama-cli).
void add_gemma3_gguf(GgufWriter& w, const ModelHParams& hp) {
  check(hp.rope_scaling.type == "none" || hp.rope_scaling.type == "linear",
        "export gguf: Gemma 3 with ", hp.rope_scaling.type, " RoPE scaling has no GGUF form (llama.cpp's gemma3 reads "
        "linear scaling only); export it as a Hugging Face directory instead");
  check(hp.rope_freq_factors.empty(), "export gguf: Gemma 3 with per-frequency RoPE factors has no GGUF form; export it "
        "as a Hugging Face directory instead");
  w.add_uint32("gemma3.attention.sliding_window", uint32_t(hp.sliding_window));
  std::vector<std::string> departs;
  // The layer types as a period P, layer l global iff (l + 1) % P == 0 (P = 1: all global), as the GGUF says them.
  auto period_fits = [&](int64_t p) {
    for (int64_t l = 0; l < hp.n_layer; ++l)
      if (hp.is_local(l) != (p > 1 && (l + 1) % p != 0)) return false;
    return true;
  };
  if (!period_fits(6)) {
    std::string types;
    for (int64_t l = 0; l < hp.n_layer; ++l) types += hp.is_local(l) ? 'L' : 'G';
    int64_t period = 1;
    while (period <= hp.n_layer && !period_fits(period)) ++period;
    check(period_fits(period), "export gguf: Gemma 3 layer types ", types, " (L local, G global) are not every P-th "
          "layer global, which is all a GGUF can say; export it as a Hugging Face directory instead");
    w.add_uint32("gemma3.attention.sliding_window_pattern", uint32_t(period));
    departs.push_back(cat("layer types ", types));
  }
  if (hp.rope_theta_local != 10000.0) {
    w.add_float32("gemma3.rope.freq_base_swa", float(hp.rope_theta_local));
    departs.push_back(cat("local RoPE base ", hp.rope_theta_local));
  }
  const double llamacpp_scale =
      1.0 / std::sqrt(double(hp.n_layer == 62 ? hp.n_embd / hp.n_head : hp.head_dim));
  if (std::fabs(hp.query_scale() - llamacpp_scale) > 1e-7 * llamacpp_scale) {
    w.add_float32("gemma3.attention.scale", float(hp.query_scale()));
    departs.push_back(cat("query scale ", hp.query_scale()));
  }
  if (hp.n_layer < 6)
    std::fprintf(stderr, "[export] warning: this Gemma 3 has %lld layers; llama.cpp's gemma3 takes every 6th layer as "
                 "global, finds none, and aborts on the first batch (GGML_ASSERT(buffer) in its KV cache, llama.cpp "
                 "0.9.4); retort runs the file. Give a student 6 or more layers to run it in llama.cpp\n",
                 static_cast<long long>(hp.n_layer));
  if (!departs.empty()) {
    std::string list;
    for (const auto& d : departs) list += (list.empty() ? "" : ", ") + d;
    std::fprintf(stderr, "[export] warning: this Gemma 3 has %s; retort reads that from the GGUF, llama.cpp assumes "
                 "Gemma 3's defaults and will not run it as trained\n", list.c_str());
  }
}

// Layer index of "blk.N.*"; -1 for other names.
int64_t gguf_layer(const std::string& name) {
  if (name.rfind("blk.", 0) != 0) return -1;
  int64_t n = 0;
  size_t i = 4;
  for (; i < name.size() && name[i] >= '0' && name[i] <= '9'; ++i) n = n * 10 + (name[i] - '0');
  return i > 4 && i < name.size() && name[i] == '.' ? n : -1;
}

std::string export_type_list() {
  std::string list;
  for (const char* t : kGgufExportTypes) list += (list.empty() ? "" : ", ") + std::string(t);
  return list;
}

}  // namespace

GgmlType gguf_export_type(const std::string& gguf_type, const std::string& name, const std::vector<int64_t>& shape,
                          int64_t n_layer, bool has_output) {
  if (shape.size() < 2) return GgmlType::F32;
  if (gguf_type == "f32") return GgmlType::F32;
  if (gguf_type == "f16") return GgmlType::F16;
  const int64_t row = shape.back();
  const bool q4_0 = gguf_type == "q4_0", q4_k_m = gguf_type == "q4_k_m";
  check(gguf_type == "q8_0" || q4_0 || q4_k_m, "export gguf: --type must be one of ", export_type_list(), ", got \"",
        gguf_type, "\"");
  if (gguf_type == "q8_0") return row % 32 == 0 ? GgmlType::Q8_0 : GgmlType::F16;
  GgmlType t = q4_0 ? GgmlType::Q4_0 : GgmlType::Q4_K;
  const bool is_output = name == "output.weight" || (!has_output && name == "token_embd.weight");
  if (is_output) {
    // The output matrix: Q6_K, or Q8_0 when the row does not fit the file type's own block.
    t = row % (q4_0 ? 32 : 256) != 0 ? GgmlType::Q8_0 : GgmlType::Q6_K;
  } else if (q4_k_m && (name.find("attn_v.weight") != std::string::npos || name.find("ffn_down") != std::string::npos)) {
    // llama.cpp counts attn_v tensors and ffn_down layers in blk order; retort has one of each per layer.
    const int64_t i = gguf_layer(name), n = n_layer;
    const bool more_bits = i >= 0 && (i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2);
    if (more_bits) t = GgmlType::Q6_K;
  }
  int64_t block = 0;
  ggml_type_layout(static_cast<uint32_t>(t), &block, nullptr);
  if (row % block != 0) {
    if (t == GgmlType::Q4_K) t = GgmlType::Q5_0;
    else if (t == GgmlType::Q6_K) t = GgmlType::Q8_0;
    if (row % 32 != 0) t = GgmlType::F16;
  }
  return t;
}

void export_hf(const CausalLMImpl& model, const Tokenizer& tok, const ExportInfo& info, const std::string& dir,
               const std::string& dtype) {
  check(dtype == "f32" || dtype == "bf16" || dtype == "f16", "export hf: --dtype must be f32, bf16 or f16, got \"",
        dtype, "\"");
  check(!dir.empty(), "export hf: empty output directory");
  const ModelHParams& hp = model.hparams();
  check(tok.n_vocab() <= hp.n_vocab, "export hf: the tokenizer has ", tok.n_vocab(),
        " tokens but the model's vocabulary is ", hp.n_vocab);
  const std::string cfg = config_json(hp, tok, info, dtype);  // validates before anything is written

  std::string trimmed = dir;
  while (trimmed.size() > 1 && trimmed.back() == '/') trimmed.pop_back();
  const std::string tmp = trimmed + ".tmp." + std::to_string(::getpid());
  std::error_code ec;
  fs::remove_all(tmp, ec);
  fs::create_directories(tmp, ec);
  check(!ec, "export hf: cannot create ", tmp, " (", ec.message(), ")");
  try {
    // Weights under their Hugging Face names (named_parameters() uses them; tied models have no lm_head).
    const torch::ScalarType st = dtype == "f32" ? torch::kFloat32 : dtype == "bf16" ? torch::kBFloat16 : torch::kFloat16;
    const DType sd = dtype == "f32" ? DType::F32 : dtype == "bf16" ? DType::BF16 : DType::F16;
    std::vector<torch::Tensor> keep;
    std::vector<SafetensorsWriteTensor> tensors;
    for (const auto& p : model.named_parameters()) {
      keep.push_back(p.value().detach().to(torch::kCPU, st).contiguous());
      const auto& t = keep.back();
      tensors.push_back({p.key(), sd, t.sizes().vec(), t.data_ptr(), size_t(t.numel()) * t.element_size()});
    }
    write_safetensors(tmp + "/model.safetensors", tensors, {{"format", "pt"}});
    keep.clear();
    write_file_atomic(tmp + "/config.json", cfg);
    write_file_atomic(tmp + "/generation_config.json", generation_config_json(tok, info));
    write_file_atomic(tmp + "/tokenizer.json", tokenizer_json(tok));
    write_file_atomic(tmp + "/tokenizer_config.json", tokenizer_config_json(tok, info, hp.max_position));
    publish_dir(tmp, trimmed);
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
}

void export_gguf(const CausalLMImpl& model, const Tokenizer& tok, const ExportInfo& info, const std::string& path,
                 const std::string& gguf_type) {
  // general.file_type: llama.cpp's llama_ftype (ALL_F32, MOSTLY_F16, MOSTLY_Q8_0, MOSTLY_Q4_0, MOSTLY_Q4_K_M).
  uint32_t file_type;
  if (gguf_type == "f32") file_type = 0;
  else if (gguf_type == "f16") file_type = 1;
  else if (gguf_type == "q8_0") file_type = 7;
  else if (gguf_type == "q4_0") file_type = 2;
  else if (gguf_type == "q4_k_m") file_type = 15;
  else fail("export gguf: --type must be one of ", export_type_list(), ", got \"", gguf_type, "\"");
  const bool quantized = file_type >= 2;
  const ModelHParams& hp = model.hparams();
  check(tok.n_vocab() <= hp.n_vocab, "export gguf: the tokenizer has ", tok.n_vocab(),
        " tokens but the model's vocabulary is ", hp.n_vocab);
  const std::string a = hp.arch + ".";

  GgufWriter w;
  w.add_string("general.architecture", hp.arch);
  w.add_string("general.type", "model");
  std::string name = "retort export";
  if (info.provenance.is_object() && info.provenance.contains("name") && info.provenance["name"].is_string())
    name = info.provenance["name"].get<std::string>();
  w.add_string("general.name", name);
  if (!info.provenance.empty()) w.add_string("retort.provenance", info.provenance.dump());
  w.add_uint32(a + "block_count", uint32_t(hp.n_layer));
  w.add_uint32(a + "context_length", uint32_t(hp.max_position));
  w.add_uint32(a + "embedding_length", uint32_t(hp.n_embd));
  w.add_uint32(a + "feed_forward_length", uint32_t(hp.n_ff));
  w.add_uint32(a + "attention.head_count", uint32_t(hp.n_head));
  w.add_uint32(a + "attention.head_count_kv", uint32_t(hp.n_head_kv));
  w.add_float32(a + "rope.freq_base", float(hp.rope_theta));
  w.add_float32(a + "attention.layer_norm_rms_epsilon", float(hp.rms_eps));
  if (hp.head_dim * hp.n_head != hp.n_embd || hp.arch == "gemma3") {  // llama.cpp's converter always writes Gemma's
    w.add_uint32(a + "attention.key_length", uint32_t(hp.head_dim));
    w.add_uint32(a + "attention.value_length", uint32_t(hp.head_dim));
  }
  w.add_uint32(a + "rope.dimension_count", uint32_t(hp.head_dim));
  w.add_uint32(a + "vocab_size", uint32_t(hp.n_vocab));
  if (hp.rope_scaling.type == "linear") {
    w.add_string(a + "rope.scaling.type", "linear");
    w.add_float32(a + "rope.scaling.factor", float(hp.rope_scaling.factor));
  }
  if (hp.arch == "gemma3") add_gemma3_gguf(w, hp);
  // A quantized file is laid out as llama-quantize writes one from our F32 export (these two keys last,
  // tensors sorted by layer, then name), so that the two files are the same byte for byte.
  if (!quantized) w.add_uint32("general.file_type", file_type);
  add_tokenizer_gguf(w, tok, info);
  if (quantized) {
    w.add_uint32("general.quantization_version", 2);
    w.add_uint32("general.file_type", file_type);
  }

  struct Entry {
    std::string name;
    std::vector<int64_t> shape;
    GgmlType type;
    std::function<void(uint8_t*)> fill;
  };
  std::vector<Entry> entries;
  // llama3 scaling travels as rope_freqs.weight (what llama.cpp reads); GGUF-sourced factors as they were.
  std::vector<float> freqs = hp.rope_freq_factors;
  if (freqs.empty() && hp.rope_scaling.type == "llama3") freqs = llama3_rope_factors(hp);
  if (!freqs.empty())
    entries.push_back({"rope_freqs.weight", {int64_t(freqs.size())}, GgmlType::F32,
                       [freqs](uint8_t* dst) { std::memcpy(dst, freqs.data(), freqs.size() * 4); }});

  bool has_output = false;
  for (const auto& p : model.named_parameters()) has_output |= model.gguf_name(p.key()) == "output.weight";
  for (const auto& p : model.named_parameters()) {
    const std::string& hf = p.key();
    const std::string gname = model.gguf_name(hf);
    check(!gname.empty(), "export gguf: parameter ", hf, " has no GGUF name");
    const int64_t permute = model.gguf_permuted_heads(hf);
    const float offset = model.gguf_offset(hf);  // stored = parameter - offset
    const torch::Tensor param = p.value();
    const std::vector<int64_t> shape = param.sizes().vec();
    const GgmlType t = gguf_export_type(gguf_type, gname, shape, hp.n_layer, has_output);
    entries.push_back({gname, shape, t, [param, permute, offset, t](uint8_t* dst) {
                         torch::Tensor x = cpu_f32(param);
                         if (offset != 0) x = x - offset;
                         if (permute > 0) x = permute_rows(x, permute);
                         quantize(t, x.data_ptr<float>(), dst, x.numel());
                       }});
  }
  if (quantized)  // llama.cpp's weight_name_comparer: layer (-1 outside blk.N), then name
    std::stable_sort(entries.begin(), entries.end(), [](const Entry& x, const Entry& y) {
      const int64_t lx = gguf_layer(x.name), ly = gguf_layer(y.name);
      return lx != ly ? lx < ly : x.name < y.name;
    });
  for (Entry& e : entries) w.add_tensor(e.name, e.shape, e.type, std::move(e.fill));
  w.write(path);
}

}  // namespace retort

// Tests for src/retort/distill/export, io/gguf_writer and the F16/BF16/Q8_0 quantizers.
//
// References:
//   tests/data/export/make_golden.py (the `gguf` Python package): quantize() bytes for F16, BF16
//     and Q8_0 on committed inputs, and a GGUFWriter file our GgufWriter must reproduce byte for byte;
//   round trips through the loaders (whose own tests compare against transformers / gguf-py):
//     export -> load_model -> the same logits (exact in float32, close for f16 / q8_0), and
//     tokenizer.json written from our Tokenizer -> Tokenizer::from_hf_json -> the same ids on the
//     tokenizer test corpus, which tests/data/tokenizer/gen_golden.py checked against HF tokenizers;
//   Gemma 3: tests/data/tokenizer/spm_tiny/tokenizer.json (the SentencePiece tokenizer.json form built in
//     Python with transformers' merges; HF tokenizers on it = `sentencepiece`) and the Gemma goldens.
// Checked outside CI (numbers in the commit messages): tests/data/export/verify_transformers.py (HF dirs,
// Gemma included), verify_gemma_tokenizer.py (HF tokenizers on retort's Gemma tokenizer.json),
// verify_llamacpp.sh (GGUF).
#include <gtest/gtest.h>

#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <tuple>

#include <nlohmann/json.hpp>

#include "retort/model/llama.h"
#include "retort/distill/export.h"
#include "retort/distill/student.h"
#include "retort/io/ggml_quants.h"
#include "retort/io/gguf.h"
#include "retort/io/gguf_writer.h"
#include "retort/io/safetensors.h"
#include "retort/model/loader.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using retort_test::expect_error;
using retort_test::gemma3_path;
using retort_test::smollm2_path;

namespace {

const std::string kData = RETORT_TEST_DATA;

// A fresh scratch directory per test, removed at the end.
struct TempDir {
  std::string path;
  TempDir() {
    path = (fs::temp_directory_path() / ("retort_test_export." + std::to_string(::getpid()) + "." +
                                         ::testing::UnitTest::GetInstance()->current_test_info()->name()))
               .string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

std::vector<uint8_t> bytes_of(const std::string& path) {
  std::string s = read_file(path);
  return std::vector<uint8_t>(s.begin(), s.end());
}

// Every text of the tokenizer test corpus (the {"text": ...} lines; {"hex": ...} lines as bytes).
std::vector<std::string> corpus() {
  std::vector<std::string> out;
  std::ifstream in(kData + "/tokenizer/corpus.jsonl");
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line);
    if (j.contains("text")) {
      out.push_back(j["text"].get<std::string>());
    } else if (j.contains("hex")) {
      std::string h = j["hex"].get<std::string>(), b;
      for (size_t i = 0; i + 1 < h.size(); i += 2) b += char(std::stoi(h.substr(i, 2), nullptr, 16));
      out.push_back(b);
    }
  }
  return out;
}

torch::Tensor tokens(int64_t vocab, int64_t B, int64_t T, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(vocab, {B, T}, gen, torch::kInt64);
}

torch::Tensor logits(CausalLMImpl& m, const torch::Tensor& t) {
  torch::NoGradGuard ng;
  return m.forward(t);
}

// Tiny random model on a fixture tokenizer.
ModelHParams tiny_hp(const std::string& arch, int64_t vocab) {
  ModelHParams hp;
  hp.arch = arch;
  hp.n_vocab = vocab, hp.n_embd = 64, hp.n_layer = 2, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 16;
  hp.n_ff = 96, hp.max_position = 256, hp.rope_theta = 50000;
  hp.rms_eps = double(1e-6f);  // GGUF stores it as float32
  if (arch == "qwen2") hp.qkv_bias = true, hp.tie_embeddings = true;
  if (arch == "llama") {
    hp.rope_scaling.type = "llama3";
    hp.rope_scaling.factor = 8, hp.rope_scaling.low_freq_factor = 1, hp.rope_scaling.high_freq_factor = 4;
    hp.rope_scaling.original_max_position = 64;
  }
  return hp;
}

CausalLM tiny_model(const ModelHParams& hp, uint64_t seed) {
  auto m = make_random_student(hp, seed);
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed + 1);
  for (auto& p : m->named_parameters()) {  // non-trivial norms and biases, larger weights
    if (p.key().find("norm") != std::string::npos || p.key().find("bias") != std::string::npos)
      p.value().copy_(torch::rand(p.value().sizes(), gen) + 0.5);
    else
      p.value().mul_(5);
  }
  m->eval();
  return m;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Quantizers and the GGUF writer against gguf-py

TEST(Quantize, BytesEqualGgufPy) {
  std::string in = read_file(kData + "/export/quant_input.f32");
  ASSERT_EQ(in.size(), 2048u * 4);
  const float* x = reinterpret_cast<const float*>(in.data());
  const std::pair<GgmlType, const char*> cases[] = {
      {GgmlType::F16, "quant_f16.bin"},   {GgmlType::BF16, "quant_bf16.bin"}, {GgmlType::Q8_0, "quant_q8_0.bin"},
      {GgmlType::Q4_0, "quant_q4_0.bin"}, {GgmlType::Q5_0, "quant_q5_0.bin"}};
  for (auto [type, file] : cases) {
    SCOPED_TRACE(file);
    auto want = bytes_of(kData + "/export/" + file);
    ASSERT_EQ(int64_t(want.size()), ggml_row_bytes(type, 2048));
    std::vector<uint8_t> got(want.size());
    quantize(type, x, got.data(), 2048);
    size_t diff = 0;
    for (size_t i = 0; i < got.size(); ++i) diff += got[i] != want[i];
    EXPECT_EQ(diff, 0u);
    // And back: dequantize(quantize(x)) stays near x. Q8_0: within d/2 per block, plus the fp16
    // rounding of d (relative 2^-11, or 2^-25 absolute when subnormal) times |q| <= 127.
    std::vector<float> back(2048);
    dequantize(type, got.data(), back.data(), 2048);
    if (type == GgmlType::Q8_0)
      for (int b = 0; b < 64; ++b) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        for (int j = 0; j < 32; ++j) EXPECT_LE(std::fabs(back[b * 32 + j] - x[b * 32 + j]), amax / 127 * (0.5f + 127.0f / 2048) + 127 * 3e-8f);
      }
    // Q4_0 / Q5_0 (d = absmax / 8 or 16): round half up, so within d/2, except the end opposite the signed
    // max, which clips one step short (within d); plus the fp16 rounding of d times |q| <= 16.
    if (type == GgmlType::Q4_0 || type == GgmlType::Q5_0) {
      const float levels = type == GgmlType::Q4_0 ? 8.0f : 16.0f;
      for (int b = 0; b < 64; ++b) {
        float amax = 0;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[b * 32 + j]));
        if (!std::isfinite(amax / levels * 65504)) continue;
        const float d = amax / levels;
        for (int j = 0; j < 32; ++j)
          EXPECT_LE(std::fabs(back[b * 32 + j] - x[b * 32 + j]), d * (1.0f + 16.0f / 2048) + 16 * 3e-8f) << b << " " << j;
      }
    }
  }
  std::vector<uint8_t> out(34);
  expect_error([&] { quantize(GgmlType::Q8_0, x, out.data(), 31); }, {"Q8_0", "31"});
  expect_error([&] { quantize(GgmlType::Q4_0, x, out.data(), 48); }, {"Q4_0", "48"});
  expect_error([&] { quantize(GgmlType::Q2_K, x, out.data(), 256); }, {"Q2_K", "not supported"});
}

// Q4_K and Q6_K against llama.cpp itself (the gguf package cannot quantize K-quants): make_golden.py ran
// ggml's quantize_row_q4_K_ref / quantize_row_q6_K_ref (through ctypes, as llama-quantize runs them without
// an importance matrix) on 32 super-blocks of hard cases, and dequantized the result with gguf.quants.
TEST(Quantize, KQuantsBytesEqualLlamaCpp) {
  std::string in = read_file(kData + "/export/quant_input_k.f32");
  ASSERT_EQ(in.size(), 8192u * 4);
  const float* x = reinterpret_cast<const float*>(in.data());
  // Relative RMSE per super-block (RMSE / rms(x)) measured on these blocks with llama.cpp's own bytes:
  // Q4_K 0.064-0.107 on normal-like blocks, Q6_K 0.012-0.037. Bounds with some room; the 1e-7 floor
  // covers blocks whose scale underflows fp16 (the 1e-20 block quantizes to zeros in llama.cpp too).
  const std::tuple<GgmlType, const char*, double> cases[] = {{GgmlType::Q4_K, "q4_k", 0.12}, {GgmlType::Q6_K, "q6_k", 0.045}};
  for (auto [type, name, rel] : cases) {
    SCOPED_TRACE(name);
    auto want = bytes_of(kData + "/export/quant_" + name + ".bin");
    ASSERT_EQ(int64_t(want.size()), ggml_row_bytes(type, 8192));
    std::vector<uint8_t> got(want.size());
    quantize(type, x, got.data(), 8192);
    int64_t block_bytes = 0;
    ggml_type_layout(static_cast<uint32_t>(type), nullptr, &block_bytes);
    size_t diff_blocks = 0;
    for (size_t b = 0; b < 32; ++b)
      diff_blocks += std::memcmp(got.data() + b * block_bytes, want.data() + b * block_bytes, size_t(block_bytes)) != 0;
    EXPECT_EQ(diff_blocks, 0u);
    // Our dequantization of our blocks = the gguf package's of llama.cpp's, bit for bit.
    std::vector<float> back(8192);
    dequantize(type, got.data(), back.data(), 8192);
    std::string deq = read_file(kData + "/export/quant_" + std::string(name) + ".deq.f32");
    ASSERT_EQ(deq.size(), 8192u * 4);
    EXPECT_EQ(std::memcmp(back.data(), deq.data(), deq.size()), 0);
    for (int b = 0; b < 32; ++b) {
      double se = 0, ss = 0;
      for (int j = 0; j < 256; ++j) {
        const double e = double(back[b * 256 + j]) - x[b * 256 + j];
        se += e * e, ss += double(x[b * 256 + j]) * x[b * 256 + j];
      }
      EXPECT_LE(std::sqrt(se / 256), rel * std::sqrt(ss / 256) + 1e-7) << "super-block " << b;
    }
  }
  std::vector<uint8_t> out(210);
  expect_error([&] { quantize(GgmlType::Q4_K, x, out.data(), 128); }, {"Q4_K", "128", "256"});
}

TEST(GgufWriter, BytesEqualGgufPy) {
  TempDir tmp;
  std::string in = read_file(kData + "/export/quant_input.f32");
  const float* x = reinterpret_cast<const float*>(in.data());
  GgufWriter w;
  w.add_string("general.architecture", "llama");
  w.add_uint8("t.u8", 200);
  w.add_int8("t.i8", -100);
  w.add_uint16("t.u16", 60000);
  w.add_int16("t.i16", -30000);
  w.add_uint32("t.u32", 4000000000u);
  w.add_int32("t.i32", -2000000000);
  w.add_uint64("t.u64", (uint64_t(1) << 63) + 5);
  w.add_int64("t.i64", -(int64_t(1) << 62));
  w.add_float32("t.f32", 0.1f);
  w.add_float64("t.f64", 1e-300);
  w.add_bool("t.bool", true);
  w.add_string("t.str", "h\xc3\xa9llo\n\"world\"");
  w.add_string_array("t.strs", {"a", "", "\xc4\xa0" "b c"});
  w.add_int32_array("t.i32s", {1, -2, 3});
  w.add_float32_array("t.f32s", {0.5f, -1.25f});
  w.add_bool_array("t.bools", {true, false, true});
  w.add_tensor("a.weight", {5}, GgmlType::F32, [](uint8_t* dst) {
    for (int i = 0; i < 5; ++i) {
      float v = 0.25f * float(i);
      std::memcpy(dst + 4 * i, &v, 4);
    }
  });
  w.add_tensor("b.weight", {3, 32}, GgmlType::F16, [x](uint8_t* dst) { quantize(GgmlType::F16, x, dst, 96); });
  w.add_tensor("c.weight", {2, 64}, GgmlType::Q8_0, [x](uint8_t* dst) { quantize(GgmlType::Q8_0, x + 96, dst, 128); });
  const std::string path = tmp.path + "/w.gguf";
  w.write(path);
  EXPECT_EQ(bytes_of(path), bytes_of(kData + "/export/writer.gguf"));
  // Our reader agrees on a few values.
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.get("t.u64").as_uint(), (uint64_t(1) << 63) + 5);
  EXPECT_EQ(f.get_string_array("t.strs")[2], "\xc4\xa0" "b c");
  EXPECT_EQ(f.find_tensor("c.weight")->shape(), (std::vector<int64_t>{2, 64}));

  GgufWriter bad;
  bad.add_uint32("k", 1);
  expect_error([&] { bad.add_uint32("k", 2); }, {"k", "twice"});
  expect_error([&] { bad.add_tensor("q", {2, 33}, GgmlType::Q8_0, [](uint8_t*) {}); }, {"q", "33", "32"});
}

// ---------------------------------------------------------------------------------------------
// Tiny random models: HF and GGUF round trips

TEST(ExportHf, TinyRoundTripExactLogitsAndTokenizer) {
  for (auto [arch, tokdir] : std::initializer_list<std::pair<const char*, const char*>>{
           {"llama", "llama3"}, {"qwen2", "qwen2_nfc"}, {"mistral", "qwen2"}}) {
    SCOPED_TRACE(arch);
    TempDir tmp;
    Tokenizer tok = Tokenizer::from_hf_json(kData + "/tokenizer/" + std::string(tokdir) + "/tokenizer.json");
    ModelHParams hp = tiny_hp(arch, tok.n_vocab());
    CausalLM m = tiny_model(hp, 7);
    ExportInfo info;
    info.chat_template = "{{ messages[0]['content'] }}";
    info.eos_ids = {1};
    info.provenance = {{"teacher", "unit test"}};
    const std::string dir = tmp.path + "/hf";
    export_hf(*m, tok, info, dir);
    LoadedModel back = load_model(dir);
    EXPECT_EQ(back.format, "hf");
    EXPECT_EQ(back.hparams.to_json(), hp.to_json());
    auto t = tokens(hp.n_vocab, 2, 9, 3);
    EXPECT_TRUE(torch::equal(logits(*m, t), logits(*back.model, t)));
    ASSERT_TRUE(back.tokenizer);
    EXPECT_EQ(back.tokenizer->hash(), tok.hash());
    EXPECT_EQ(back.tokenizer->add_bos_token(), tok.add_bos_token());
    EXPECT_EQ(back.tokenizer->bos_id(), tok.bos_id());
    EXPECT_EQ(back.chat_template, info.chat_template);
    EXPECT_NE(std::find(back.eos_ids.begin(), back.eos_ids.end(), 1), back.eos_ids.end());
    for (const auto& text : corpus()) EXPECT_EQ(back.tokenizer->encode(text, true, true), tok.encode(text, true, true));
    auto cfg = nlohmann::json::parse(read_file(dir + "/config.json"));
    EXPECT_EQ(cfg["tie_word_embeddings"], hp.tie_embeddings);
    EXPECT_EQ(cfg["head_dim"], 16);
    EXPECT_EQ(cfg["retort"]["teacher"], "unit test");
  }
}

TEST(ExportHf, Bf16AndReplaceAndErrors) {
  TempDir tmp;
  Tokenizer tok = Tokenizer::from_hf_json(kData + "/tokenizer/qwen2/tokenizer.json");
  ModelHParams hp = tiny_hp("qwen2", tok.n_vocab());
  CausalLM m = tiny_model(hp, 8);
  const std::string dir = tmp.path + "/out";
  fs::create_directories(dir);
  write_file_atomic(dir + "/stale.txt", "old");
  export_hf(*m, tok, {}, dir, "bf16");
  EXPECT_FALSE(fs::exists(dir + "/stale.txt"));  // replaced whole
  for (const auto& e : fs::directory_iterator(tmp.path))
    EXPECT_EQ(e.path().filename().string(), "out") << "left behind: " << e.path();
  LoadedModel back = load_model(dir);
  EXPECT_EQ(back.tensors[0].type, "BF16");
  // bf16 weights: the reloaded model equals the original with its weights rounded to bf16.
  auto r = tiny_model(hp, 8);
  {
    torch::NoGradGuard ng;
    for (auto& p : r->named_parameters()) p.value().copy_(p.value().to(torch::kBFloat16).to(torch::kFloat32));
  }
  auto t = tokens(hp.n_vocab, 1, 7, 4);
  EXPECT_TRUE(torch::equal(logits(*r, t), logits(*back.model, t)));
  expect_error([&] { export_hf(*m, tok, {}, dir, "f8"); }, {"dtype", "f8"});
  EXPECT_TRUE(fs::exists(dir + "/model.safetensors"));
}

TEST(ExportGguf, TinyRoundTrip) {
  for (auto [arch, tokdir] : std::initializer_list<std::pair<const char*, const char*>>{
           {"llama", "llama3"}, {"qwen2", "qwen2_nfc"}, {"mistral", "qwen2_nfc"}}) {
    SCOPED_TRACE(arch);
    TempDir tmp;
    Tokenizer tok = Tokenizer::from_hf_json(kData + "/tokenizer/" + std::string(tokdir) + "/tokenizer.json");
    ModelHParams hp = tiny_hp(arch, tok.n_vocab());
    CausalLM m = tiny_model(hp, 9);
    ExportInfo info;
    info.chat_template = "{{ bos_token }}";
    auto t = tokens(hp.n_vocab, 2, 11, 5);
    auto ref = logits(*m, t);
    for (std::string type : {"f32", "f16", "q8_0", "q4_0", "q4_k_m"}) {
      SCOPED_TRACE(type);
      const std::string path = tmp.path + "/m." + type + ".gguf";
      export_gguf(*m, tok, info, path, type);
      LoadedModel back = load_model(path);
      GgufFile f = GgufFile::open(path);
      EXPECT_EQ(f.get_string("general.architecture"), arch);
      EXPECT_EQ(f.find_tensor("blk.0.attn_norm.weight")->type, 0u);  // 1-D stays F32
      // Rows of 64: q4_k_m's Q4_K falls back to Q5_0 (6), as in llama-quantize.
      const std::map<std::string, uint32_t> ffn_up = {{"f32", 0}, {"f16", 1}, {"q8_0", 8}, {"q4_0", 2}, {"q4_k_m", 6}};
      EXPECT_EQ(f.find_tensor("blk.1.ffn_up.weight")->type, ffn_up.at(type));
      EXPECT_EQ(f.find_tensor("rope_freqs.weight") != nullptr, arch == std::string("llama"));
      EXPECT_EQ(back.tokenizer->hash(), tok.hash());
      EXPECT_EQ(back.chat_template, "{{ bos_token }}");
      // llama3 scaling is stored as rope_freqs on export; the loaded hparams carry the factors instead.
      ModelHParams want = hp;
      want.rope_scaling = back.hparams.rope_scaling;
      want.rope_freq_factors = back.hparams.rope_freq_factors;
      EXPECT_EQ(back.hparams.to_json(), want.to_json());
      auto got = logits(*back.model, t);
      const double err = (got - ref).abs().max().item<double>(), scale = ref.abs().max().item<double>();
      if (type == "f32" && arch != std::string("llama")) EXPECT_TRUE(torch::equal(got, ref));
      else if (type == "f32") EXPECT_LT(err, 1e-4 * scale);  // llama3 factors: same RoPE up to float rounding
      else if (type == "f16") EXPECT_LT(err, 5e-3 * scale);
      else if (type == "q8_0") EXPECT_LT(err, 3e-2 * scale);
      else EXPECT_LT(err, 0.6 * scale);  // 4-bit weights of a random model scaled up; Q4KMRoundTrip checks weights
      if (type == "f32") {
        // Exact weights: q/k rows went through the llama.cpp permutation and back.
        auto pa = m->named_parameters(), pb = back.model->named_parameters();
        for (const auto& kv : pa) EXPECT_TRUE(torch::equal(kv.value(), pb[kv.key()])) << kv.key();
      }
    }
    expect_error([&] { export_gguf(*m, tok, info, tmp.path + "/x.gguf", "q4_k"); }, {"type", "q4_k", "q4_0, q4_k_m"});
  }
}

// The per-tensor types of q4_0 and q4_k_m files: llama-quantize's choices (llama-quant.cpp), by hand.
TEST(ExportGguf, QuantTypesFollowLlamaQuantize) {
  auto type = [](const char* file_type, const std::string& name, std::vector<int64_t> shape, int64_t n_layer,
                 bool has_output) { return gguf_export_type(file_type, name, shape, n_layer, has_output); };
  // 8 layers: use_more_bits is true for layers 0 (< 8/8), 7 (>= 56/8), 3 and 6 ((i - 1) % 3 == 2).
  for (int64_t l = 0; l < 8; ++l) {
    const bool more = l == 0 || l == 3 || l == 6 || l == 7;
    const std::string b = "blk." + std::to_string(l) + ".";
    EXPECT_EQ(type("q4_k_m", b + "attn_v.weight", {128, 256}, 8, false), more ? GgmlType::Q6_K : GgmlType::Q4_K) << l;
    EXPECT_EQ(type("q4_k_m", b + "ffn_down.weight", {256, 768}, 8, false), more ? GgmlType::Q6_K : GgmlType::Q4_K) << l;
    for (const char* t : {"attn_q.weight", "attn_k.weight", "attn_output.weight", "ffn_gate.weight", "ffn_up.weight"})
      EXPECT_EQ(type("q4_k_m", b + t, {256, 256}, 8, false), GgmlType::Q4_K) << t;
    EXPECT_EQ(type("q4_0", b + "attn_v.weight", {128, 256}, 8, false), GgmlType::Q4_0);
    EXPECT_EQ(type("q4_k_m", b + "attn_norm.weight", {256}, 8, false), GgmlType::F32);
  }
  // 30 layers (SmolLM2-135M): 0-2 and 26-29, and 5, 8, ..., 23 between.
  std::string more30;
  for (int64_t l = 0; l < 30; ++l)
    if (type("q4_k_m", "blk." + std::to_string(l) + ".ffn_down.weight", {576, 1536}, 30, false) == GgmlType::Q6_K)
      more30 += std::to_string(l) + " ";
  EXPECT_EQ(more30, "0 1 2 5 8 11 14 17 20 23 26 27 28 29 ");
  // The output matrix (token_embd when tied): Q6_K; Q8_0 when its row does not fit the file type's block.
  EXPECT_EQ(type("q4_k_m", "token_embd.weight", {1000, 256}, 8, false), GgmlType::Q6_K);
  EXPECT_EQ(type("q4_k_m", "token_embd.weight", {1000, 256}, 8, true), GgmlType::Q4_K);
  EXPECT_EQ(type("q4_k_m", "output.weight", {1000, 256}, 8, true), GgmlType::Q6_K);
  EXPECT_EQ(type("q4_k_m", "token_embd.weight", {1000, 576}, 8, false), GgmlType::Q8_0);
  EXPECT_EQ(type("q4_0", "token_embd.weight", {1000, 512}, 8, false), GgmlType::Q6_K);
  EXPECT_EQ(type("q4_0", "token_embd.weight", {1000, 576}, 8, false), GgmlType::Q8_0);  // Q6_K's own fallback
  EXPECT_EQ(type("q4_0", "token_embd.weight", {1000, 40}, 8, false), GgmlType::F16);
  // Rows that do not fit: Q4_K -> Q5_0, Q6_K -> Q8_0, then F16.
  EXPECT_EQ(type("q4_k_m", "blk.1.attn_q.weight", {576, 576}, 8, false), GgmlType::Q5_0);
  EXPECT_EQ(type("q4_k_m", "blk.0.attn_v.weight", {192, 576}, 8, false), GgmlType::Q8_0);
  EXPECT_EQ(type("q4_k_m", "blk.1.attn_q.weight", {40, 40}, 8, false), GgmlType::F16);
  EXPECT_EQ(type("q4_k_m", "blk.0.ffn_down.weight", {40, 40}, 8, false), GgmlType::F16);
  EXPECT_EQ(type("q4_0", "blk.1.attn_q.weight", {40, 40}, 8, false), GgmlType::F16);
  expect_error([&] { type("q5_k_m", "blk.1.attn_q.weight", {256, 256}, 8, false); },
               {"q5_k_m", "f32, f16, q8_0, q4_0, q4_k_m"});
}

// A student shaped for K-quants (rows of 256 and 512, 8 layers): the q4_k_m file holds the mix above, and
// retort reads back exactly the dequantized blocks.
TEST(ExportGguf, Q4KMRoundTrip) {
  TempDir tmp;
  Tokenizer tok = Tokenizer::from_hf_json(kData + "/tokenizer/qwen2/tokenizer.json");
  ModelHParams hp = tiny_hp("qwen2", tok.n_vocab());
  hp.n_embd = 256, hp.n_layer = 8, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 64, hp.n_ff = 512;
  CausalLM m = tiny_model(hp, 11);
  auto t = tokens(hp.n_vocab, 1, 9, 3);
  auto ref = torch::log_softmax(logits(*m, t), -1);
  for (std::string ft : {"q4_k_m", "q4_0"}) {
    SCOPED_TRACE(ft);
    const std::string path = tmp.path + "/m.gguf";
    export_gguf(*m, tok, {}, path, ft);
    GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.value_to_string("general.file_type"), ft == "q4_k_m" ? "15" : "2");
    EXPECT_EQ(f.value_to_string("general.quantization_version"), "2");
    const uint32_t q4 = ft == "q4_k_m" ? 12u : 2u, q6 = 14u;
    EXPECT_EQ(f.find_tensor("token_embd.weight")->type, q6);  // tied: the output matrix
    for (int l = 0; l < 8; ++l) {
      const bool more = ft == "q4_k_m" && (l == 0 || l == 3 || l == 6 || l == 7);
      const std::string b = "blk." + std::to_string(l) + ".";
      EXPECT_EQ(f.find_tensor(b + "attn_v.weight")->type, more ? q6 : q4) << l;
      EXPECT_EQ(f.find_tensor(b + "ffn_down.weight")->type, more ? q6 : q4) << l;
      EXPECT_EQ(f.find_tensor(b + "ffn_up.weight")->type, q4) << l;
      EXPECT_EQ(f.find_tensor(b + "attn_q.bias")->type, 0u) << l;
    }
    LoadedModel back = load_model(path);
    auto pb = back.model->named_parameters();
    for (const auto& kv : m->named_parameters()) {
      const std::string gname = m->gguf_name(kv.key());
      if (kv.value().dim() != 2 || m->gguf_permuted_heads(kv.key()) > 0) continue;  // q/k rows are permuted
      const GgufTensorInfo* ti = f.find_tensor(gname);
      torch::Tensor x = kv.value().detach().contiguous();
      std::vector<uint8_t> q(size_t(ggml_row_bytes(GgmlType(ti->type), x.numel())));
      quantize(GgmlType(ti->type), x.data_ptr<float>(), q.data(), x.numel());
      torch::Tensor want = torch::empty_like(x);
      dequantize(GgmlType(ti->type), q.data(), want.data_ptr<float>(), x.numel());
      EXPECT_TRUE(torch::equal(pb[kv.key()], want)) << kv.key();
    }
    auto got = torch::log_softmax(logits(*back.model, t), -1);
    const double kl = (ref.exp() * (ref - got)).sum(-1).max().item<double>();
    std::cout << ft << " tiny student: max KL " << kl << "\n";
    EXPECT_GT(kl, 0.0);
    EXPECT_LT(kl, ft == "q4_k_m" ? 0.5 : 1.0);
  }
}

TEST(ExportGguf, Q8FallsBackToF16ForShortRows) {
  TempDir tmp;
  Tokenizer tok = Tokenizer::from_hf_json(kData + "/tokenizer/qwen2/tokenizer.json");
  ModelHParams hp = tiny_hp("qwen2", tok.n_vocab());
  hp.n_ff = 40;  // ffn_down rows have 40 values: not a multiple of 32
  CausalLM m = tiny_model(hp, 10);
  export_gguf(*m, tok, {}, tmp.path + "/m.gguf", "q8_0");
  GgufFile f = GgufFile::open(tmp.path + "/m.gguf");
  EXPECT_EQ(f.find_tensor("blk.0.ffn_down.weight")->type, 1u);
  EXPECT_EQ(f.find_tensor("blk.0.ffn_up.weight")->type, 8u);
  EXPECT_EQ(f.find_tensor("token_embd.weight")->type, 8u);
  load_model(tmp.path + "/m.gguf");
}

// ---------------------------------------------------------------------------------------------
// The default model

namespace {

ExportInfo info_of(const LoadedModel& src) {
  ExportInfo info;
  info.chat_template = src.chat_template;
  info.eos_ids = src.eos_ids;
  info.generation_defaults = src.generation_defaults;
  return info;
}

}  // namespace

TEST(ExportDefault, HfF32ReloadsToTheSameLogitsAndTokens) {
  if (!fs::exists(smollm2_path())) GTEST_SKIP() << "SmolLM2 GGUF not found at " << smollm2_path();
  TempDir tmp;
  LoadedModel src = load_model(smollm2_path());
  ExportInfo info = info_of(src);
  auto t = tokens(src.hparams.n_vocab, 1, 16, 6);
  auto ref = logits(*src.model, t);

  export_hf(*src.model, *src.tokenizer, info, tmp.path + "/hf");
  {
    LoadedModel hf = load_model(tmp.path + "/hf");
    EXPECT_TRUE(torch::equal(logits(*hf.model, t), ref));
    EXPECT_EQ(hf.tokenizer->hash(), src.tokenizer->hash());
    EXPECT_EQ(hf.chat_template, src.chat_template);
    EXPECT_EQ(hf.eos_ids, src.eos_ids);
    // The exported tokenizer.json (read alone, as HF would) encodes the corpus as the GGUF tokenizer does.
    Tokenizer alone = Tokenizer::from_hf_json(tmp.path + "/hf/tokenizer.json");
    EXPECT_EQ(alone.pre_tokenizer_name(), "smollm");
    for (const auto& text : corpus()) EXPECT_EQ(alone.encode(text), src.tokenizer->encode(text));
  }
}

TEST(ExportDefault, GgufF32ReloadsToTheSameLogitsAndMetadata) {
  if (!fs::exists(smollm2_path())) GTEST_SKIP() << "SmolLM2 GGUF not found at " << smollm2_path();
  TempDir tmp;
  LoadedModel src = load_model(smollm2_path());
  ExportInfo info = info_of(src);
  auto t = tokens(src.hparams.n_vocab, 1, 16, 6);
  auto ref = logits(*src.model, t);

  export_gguf(*src.model, *src.tokenizer, info, tmp.path + "/m.gguf", "f32");
  {
    LoadedModel g = load_model(tmp.path + "/m.gguf");
    EXPECT_TRUE(torch::equal(logits(*g.model, t), ref));
    EXPECT_EQ(g.tokenizer->hash(), src.tokenizer->hash());
    EXPECT_EQ(g.chat_template, src.chat_template);
    EXPECT_EQ(g.eos_ids, src.eos_ids);
    GgufFile a = GgufFile::open(smollm2_path()), b = GgufFile::open(tmp.path + "/m.gguf");
    for (const char* k : {"llama.context_length", "llama.embedding_length", "llama.block_count",
                          "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                          "llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size",
                          "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                          "tokenizer.ggml.padding_token_id", "tokenizer.ggml.pre", "tokenizer.ggml.model",
                          "tokenizer.ggml.add_bos_token"})
      if (a.find(k)) EXPECT_EQ(a.value_to_string(k), b.value_to_string(k)) << k;
    EXPECT_EQ(a.get_int_array("tokenizer.ggml.token_type"), b.get_int_array("tokenizer.ggml.token_type"));
    EXPECT_EQ(a.get_string_array("tokenizer.ggml.merges"), b.get_string_array("tokenizer.ggml.merges"));
  }
}

TEST(ExportDefault, GgufQ8IsClose) {
  if (!fs::exists(smollm2_path())) GTEST_SKIP() << "SmolLM2 GGUF not found at " << smollm2_path();
  TempDir tmp;
  LoadedModel src = load_model(smollm2_path());
  export_gguf(*src.model, *src.tokenizer, {}, tmp.path + "/m.gguf", "q8_0");
  LoadedModel g = load_model(tmp.path + "/m.gguf");
  auto t = tokens(src.hparams.n_vocab, 1, 16, 7);
  auto ref = torch::log_softmax(logits(*src.model, t), -1), got = torch::log_softmax(logits(*g.model, t), -1);
  // Q8_0 on top of Q4_1 weights: the next-token distribution barely moves.
  auto p = ref.exp();
  double kl = (p * (ref - got)).sum(-1).max().item<double>();
  EXPECT_LT(kl, 0.02);
  EXPECT_GT(kl, 0.0);  // it was quantized
  EXPECT_EQ(ref.argmax(-1).eq(got.argmax(-1)).sum().item<int64_t>() >= 14, true);
}

// ---------------------------------------------------------------------------------------------
// Gemma 3: config.json as transformers 5 writes it, norms stored 1 + w in GGUF, and the SentencePiece
// tokenizer in Hugging Face's form (its reference: tests/data/tokenizer/spm_tiny, which
// gen_golden_gemma3.py checked against `sentencepiece` and HF `tokenizers`).

namespace {

const std::string kTinySpm = kData + "/tokenizer/spm_tiny/tokenizer.gguf";

std::vector<nlohmann::json> jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::string unhex(const std::string& h) {
  std::string b;
  for (size_t i = 0; i + 1 < h.size(); i += 2) b += char(std::stoi(h.substr(i, 2), nullptr, 16));
  return b;
}

// A tiny Gemma 3. `llamacpp_defaults`: what llama.cpp assumes for gemma3 (every 6th layer global, local
// RoPE base 10000, query scale 1/sqrt(head_dim)); otherwise tiny-gemma3's kind of departures (layers
// L L G L, query_pre_attn_scalar 24). Both: sliding window 6, linear RoPE scaling on global layers.
ModelHParams tiny_gemma3_hp(int64_t vocab, bool llamacpp_defaults) {
  ModelHParams hp = tiny_hp("gemma3", vocab);
  hp.tie_embeddings = true;
  hp.rope_theta = 1e6;
  hp.rope_scaling.type = "linear";
  hp.rope_scaling.factor = 2;
  hp.sliding_window = 6;
  hp.rope_theta_local = 1e4;
  if (llamacpp_defaults) {
    hp.n_layer = 6;
    hp.local_layers = {1, 1, 1, 1, 1, 0};
  } else {
    hp.n_layer = 4;
    hp.local_layers = {1, 1, 0, 1};
    hp.attn_scale = 1.0 / std::sqrt(24.0);
  }
  return hp;
}

// Gemma's norms are x·(1 + w); GGUF stores 1 + w in float32, which keeps w exactly only when 1 + w is a
// float32 (|w| < 1 loses its last bits, as llama.cpp's converter does too). The tiny model's norm weights are
// multiples of 2^-12, so its f32 GGUF round trip is exact.
CausalLM tiny_gemma3(const ModelHParams& hp, uint64_t seed) {
  CausalLM m = tiny_model(hp, seed);
  torch::NoGradGuard ng;
  for (auto& p : m->named_parameters())
    if (p.key().find("norm") != std::string::npos) p.value().mul_(4096).round_().div_(4096);
  return m;
}

ExportInfo gemma_info() {
  ExportInfo info;
  info.eos_ids = {1, 5};  // <eos>, <end_of_turn>
  info.provenance = {{"teacher", "unit test"}};
  return info;
}

}  // namespace

TEST(ExportHf, TinyGemma3RoundTripExactLogitsAndSentencePieceTokenizer) {
  Tokenizer tok = Tokenizer::from_gguf(GgufFile::open(kTinySpm));
  for (bool standard : {false, true}) {
    SCOPED_TRACE(standard ? "llama.cpp's defaults" : "layers LLGL, query_pre_attn_scalar 24");
    TempDir tmp;
    ModelHParams hp = tiny_gemma3_hp(tok.n_vocab(), standard);
    CausalLM m = tiny_gemma3(hp, 11);
    const std::string dir = tmp.path + "/hf";
    export_hf(*m, tok, gemma_info(), dir);
    LoadedModel back = load_model(dir);
    ModelHParams want = hp;
    want.attn_scale = hp.query_scale();  // config.json always states the scale (query_pre_attn_scalar)
    EXPECT_EQ(back.hparams.to_json(), want.to_json());
    auto t = tokens(hp.n_vocab, 2, 11, 3);  // 11 > the sliding window
    EXPECT_TRUE(torch::equal(logits(*m, t), logits(*back.model, t)));

    auto cfg = nlohmann::json::parse(read_file(dir + "/config.json"));
    EXPECT_EQ(cfg["architectures"], nlohmann::json::array({"Gemma3ForCausalLM"}));
    EXPECT_EQ(cfg["model_type"], "gemma3_text");
    EXPECT_EQ(cfg["hidden_activation"], "gelu_pytorch_tanh");
    EXPECT_EQ(cfg["query_pre_attn_scalar"], standard ? 16 : 24);
    EXPECT_TRUE(cfg["query_pre_attn_scalar"].is_number_integer());  // Gemma3TextConfig types it int
    EXPECT_EQ(cfg["sliding_window"], 6);
    EXPECT_EQ(cfg["layer_types"][2], standard ? "sliding_attention" : "full_attention");
    EXPECT_EQ(cfg["rope_parameters"]["full_attention"],
              nlohmann::json({{"factor", 2.0}, {"rope_theta", 1e6}, {"rope_type", "linear"}}));
    EXPECT_EQ(cfg["rope_parameters"]["sliding_attention"],
              nlohmann::json({{"rope_theta", 1e4}, {"rope_type", "default"}}));
    EXPECT_TRUE(cfg["final_logit_softcapping"].is_null());
    EXPECT_TRUE(cfg["attn_logit_softcapping"].is_null());
    EXPECT_EQ(cfg["tie_word_embeddings"], true);
    EXPECT_EQ(cfg["eos_token_id"], nlohmann::json::array({1, 5}));
    EXPECT_EQ(cfg["retort"]["teacher"], "unit test");
    auto st = SafetensorsFile::open(dir + "/model.safetensors");
    EXPECT_EQ(st.find("lm_head.weight"), nullptr);  // tied
    EXPECT_NE(st.find("model.layers.0.self_attn.q_norm.weight"), nullptr);

    // The tokenizer: SentencePiece in Hugging Face's form, read back to the same encoder.
    ASSERT_TRUE(back.tokenizer);
    EXPECT_EQ(back.tokenizer->model_type(), "spm");
    EXPECT_EQ(back.tokenizer->hash(), tok.hash());
    EXPECT_EQ(back.tokenizer->unk_id(), tok.unk_id());
    EXPECT_EQ(back.tokenizer->add_bos_token(), true);
    for (const auto& g : jsonl(kData + "/tokenizer/spm_tiny/golden.jsonl"))
      EXPECT_EQ(back.tokenizer->encode(g["text"].get<std::string>()), g["ids"].get<std::vector<int32_t>>());
    for (const auto& text : corpus()) EXPECT_EQ(back.tokenizer->encode(text, true, true), tok.encode(text, true, true));
    // The file equals the committed reference built in Python (same vocabulary, transformers' merges).
    auto ours = nlohmann::json::parse(read_file(dir + "/tokenizer.json"));
    auto ref = nlohmann::json::parse(read_file(kData + "/tokenizer/spm_tiny/tokenizer.json"));
    EXPECT_EQ(ours, ref);

    // A Gemma vocabulary without a template gets Gemma 3's, rendered natively as before.
    auto tc = nlohmann::json::parse(read_file(dir + "/tokenizer_config.json"));
    EXPECT_EQ(tc["chat_template"], read_file(kData + "/tokenizer/chat/gemma3.jinja"));
    EXPECT_EQ(tc["unk_token"], "<unk>");
    EXPECT_EQ(back.chat_template, tc["chat_template"].get<std::string>());
    const std::vector<ChatMessage> msgs = {{"system", "Be brief."}, {"user", " hi "}, {"assistant", "ab"}};
    EXPECT_EQ(ChatTemplate::from_jinja(back.chat_template, tok).render(msgs),
              ChatTemplate::from_jinja("", tok).render(msgs));
  }
}

TEST(ExportGguf, TinyGemma3RoundTrip) {
  Tokenizer tok = Tokenizer::from_gguf(GgufFile::open(kTinySpm));
  TempDir tmp;
  ModelHParams hp = tiny_gemma3_hp(tok.n_vocab(), /*llamacpp_defaults=*/true);
  CausalLM m = tiny_gemma3(hp, 12);
  auto t = tokens(hp.n_vocab, 2, 11, 5);
  for (std::string type : {"f32", "f16", "q8_0"}) {
    SCOPED_TRACE(type);
    // What the file holds: every matrix through the format and back (norms stay F32).
    const GgmlType gt = type == "f32" ? GgmlType::F32 : type == "f16" ? GgmlType::F16 : GgmlType::Q8_0;
    CausalLM in_file = tiny_gemma3(hp, 12);
    {
      torch::NoGradGuard ng;
      for (auto& p : in_file->parameters()) {
        if (p.dim() != 2) continue;
        auto x = p.detach().contiguous();
        std::vector<uint8_t> blocks(size_t(ggml_row_bytes(gt, x.size(1)) * x.size(0)));
        quantize(gt, x.data_ptr<float>(), blocks.data(), x.numel());
        dequantize(gt, blocks.data(), x.data_ptr<float>(), x.numel());
      }
    }
    auto ref = logits(*in_file, t);
    const std::string path = tmp.path + "/m." + type + ".gguf";
    export_gguf(*m, tok, gemma_info(), path, type);
    GgufFile f = GgufFile::open(path);
    EXPECT_EQ(f.get_string("general.architecture"), "gemma3");
    // llama.cpp's converter's keys, and nothing llama.cpp would not read for a model with its defaults.
    EXPECT_EQ(f.get_int("gemma3.attention.sliding_window"), 6);
    EXPECT_EQ(f.get_int("gemma3.attention.key_length"), 16);
    EXPECT_EQ(f.get_int("gemma3.attention.value_length"), 16);
    EXPECT_EQ(f.get_string("gemma3.rope.scaling.type"), "linear");
    EXPECT_EQ(f.find("gemma3.attention.scale"), nullptr);
    EXPECT_EQ(f.find("gemma3.attention.sliding_window_pattern"), nullptr);
    EXPECT_EQ(f.find("gemma3.rope.freq_base_swa"), nullptr);
    EXPECT_EQ(f.find_tensor("output.weight"), nullptr);  // tied
    EXPECT_EQ(f.get_string("tokenizer.ggml.model"), "llama");
    EXPECT_EQ(f.get_bool("tokenizer.ggml.add_space_prefix"), false);
    EXPECT_EQ(f.get_int("tokenizer.ggml.unknown_token_id"), *tok.unk_id());
    // Norms are stored as 1 + w.
    std::vector<float> stored(size_t(hp.n_embd));
    f.read_f32(*f.find_tensor("blk.0.post_attention_norm.weight"), stored.data());
    auto w = m->named_parameters()["model.layers.0.post_attention_layernorm.weight"];
    for (int64_t i = 0; i < hp.n_embd; ++i) EXPECT_EQ(stored[size_t(i)], w[i].item<float>() + 1.0f);

    LoadedModel back = load_model(path);
    ModelHParams want = hp;
    EXPECT_EQ(back.hparams.to_json(), want.to_json());
    EXPECT_EQ(back.tokenizer->hash(), tok.hash());
    EXPECT_EQ(back.chat_template, read_file(kData + "/tokenizer/chat/gemma3.jinja"));
    // Exact in every format: the loaded weights are the stored values (norms: (1 + w) - 1 = w).
    EXPECT_TRUE(torch::equal(logits(*back.model, t), ref));
    auto pa = in_file->named_parameters(), pb = back.model->named_parameters();
    for (const auto& kv : pa) EXPECT_TRUE(torch::equal(kv.value(), pb[kv.key()])) << kv.key();
    for (const auto& g : jsonl(kData + "/tokenizer/spm_tiny/golden.jsonl"))
      EXPECT_EQ(back.tokenizer->encode(g["text"].get<std::string>()), g["ids"].get<std::vector<int32_t>>());
  }
}

// What llama.cpp assumes for gemma3 but this model departs from is written in the keys retort reads (so the
// round trip stays exact); layer types no "every P-th layer global" can say are refused.
TEST(ExportGguf, Gemma3DeparturesFromLlamaCppDefaults) {
  Tokenizer tok = Tokenizer::from_gguf(GgufFile::open(kTinySpm));
  TempDir tmp;
  ModelHParams hp = tiny_gemma3_hp(tok.n_vocab(), /*llamacpp_defaults=*/false);
  hp.local_layers = {1, 0, 1, 1};
  expect_error([&] { export_gguf(*tiny_gemma3(hp, 13), tok, {}, tmp.path + "/x.gguf", "f32"); },
               {"layer types LGLL", "Hugging Face"});
  EXPECT_FALSE(fs::exists(tmp.path + "/x.gguf"));
  hp.n_layer = 6;
  hp.local_layers = {1, 1, 0, 1, 1, 0};  // every 3rd layer global
  hp.attn_scale = 0.125;                 // query_pre_attn_scalar 64: exact in float32
  hp.rope_theta_local = 20000;
  CausalLM m = tiny_gemma3(hp, 13);
  const std::string path = tmp.path + "/m.gguf";
  export_gguf(*m, tok, {}, path, "f32");
  GgufFile f = GgufFile::open(path);
  EXPECT_EQ(f.get_int("gemma3.attention.sliding_window_pattern"), 3);
  EXPECT_EQ(f.get_float("gemma3.attention.scale"), 0.125);
  EXPECT_EQ(f.get_float("gemma3.rope.freq_base_swa"), 20000.0);
  LoadedModel back = load_model(path);
  EXPECT_EQ(back.hparams.to_json(), hp.to_json());
  auto t = tokens(hp.n_vocab, 1, 13, 6);
  EXPECT_TRUE(torch::equal(logits(*m, t), logits(*back.model, t)));
}

// ---------------------------------------------------------------------------------------------
// Gemma 3 270M (GGUF Q4_K_M; skipped when absent)

namespace {

#define SKIP_WITHOUT_GEMMA3() \
  if (!fs::exists(gemma3_path())) GTEST_SKIP() << "Gemma 3 GGUF not found at " << gemma3_path()

LoadedModel& gemma3_dense() {
  static LoadedModel m = [] {
    LoadOptions o;
    o.quantized_decode = false;
    return load_model(gemma3_path(), o);
  }();
  return m;
}

// Every case of the Gemma golden files (tests/data/tokenizer/gemma3: `sentencepiece`'s ids) through `tok`:
// the number that differ (0 expected), with the first few named.
int gemma_golden_mismatches(const Tokenizer& tok) {
  int bad = 0, n = 0;
  auto check_case = [&](const std::string& text, const nlohmann::json& g) {
    for (auto [key, special] : {std::pair<const char*, bool>{"ids", true}, {"ids_raw", false}}) {
      ++n;
      if (tok.encode(text, special) != g[key].get<std::vector<int32_t>>() && ++bad <= 3)
        ADD_FAILURE() << key << " differ for " << nlohmann::json(text).dump(-1, ' ', false,
                                                                              nlohmann::json::error_handler_t::replace);
    }
  };
  const auto texts = corpus();
  const auto golden = jsonl(kData + "/tokenizer/gemma3/golden.jsonl");
  EXPECT_EQ(golden.size(), texts.size());
  for (size_t i = 0; i < golden.size() && i < texts.size(); ++i) check_case(texts[i], golden[i]);
  for (const auto& g : jsonl(kData + "/tokenizer/gemma3/cases.jsonl"))
    check_case(g.contains("text") ? g["text"].get<std::string>() : unhex(g["hex"]), g);
  EXPECT_GT(n, 500);
  return bad;
}

}  // namespace

TEST(ExportGemma3, HfF32ReloadsToTheSameLogitsAndTokenizer) {
  SKIP_WITHOUT_GEMMA3();
  TempDir tmp;
  LoadedModel& src = gemma3_dense();
  ExportInfo info = info_of(src);
  export_hf(*src.model, *src.tokenizer, info, tmp.path + "/hf");
  LoadedModel hf = load_model(tmp.path + "/hf");
  auto t = tokens(src.hparams.n_vocab, 1, 16, 6);
  EXPECT_TRUE(torch::equal(logits(*hf.model, t), logits(*src.model, t)));
  EXPECT_EQ(hf.eos_ids, src.eos_ids);
  // The tokenizer.json read alone, as HF would: the GGUF's encoder, hash and all.
  Tokenizer alone = Tokenizer::from_hf_json(tmp.path + "/hf/tokenizer.json", tmp.path + "/hf/tokenizer_config.json");
  EXPECT_EQ(alone.hash(), src.tokenizer->hash());
  EXPECT_EQ(alone.n_vocab(), 262144);
  EXPECT_EQ(alone.unk_id(), src.tokenizer->unk_id());
  EXPECT_EQ(alone.eos_id(), src.tokenizer->eos_id());
  EXPECT_EQ(alone.pad_id(), src.tokenizer->pad_id());
  EXPECT_EQ(alone.eog_ids(), src.tokenizer->eog_ids());
  EXPECT_EQ(gemma_golden_mismatches(alone), 0);
  EXPECT_EQ(hf.chat_template, read_file(kData + "/tokenizer/chat/gemma3.jinja"));
}

TEST(ExportGemma3, GgufF32IsExactQ8IsClose) {
  SKIP_WITHOUT_GEMMA3();
  TempDir tmp;
  LoadedModel& src = gemma3_dense();
  auto t = tokens(src.hparams.n_vocab, 1, 16, 7);
  auto ref = torch::log_softmax(logits(*src.model, t), -1);
  export_gguf(*src.model, *src.tokenizer, info_of(src), tmp.path + "/m.gguf", "f32");
  {
    LoadedModel g = load_model(tmp.path + "/m.gguf");
    EXPECT_TRUE(torch::equal(torch::log_softmax(logits(*g.model, t), -1), ref));
    EXPECT_EQ(g.tokenizer->hash(), src.tokenizer->hash());
    GgufFile a = GgufFile::open(gemma3_path()), b = GgufFile::open(tmp.path + "/m.gguf");
    for (const auto& k : a.keys())
      if (k.rfind("gemma3.", 0) == 0 || k.rfind("tokenizer.ggml.", 0) == 0) {
        ASSERT_NE(b.find(k), nullptr) << k;
        if (k != "tokenizer.ggml.tokens" && k != "tokenizer.ggml.scores" && k != "tokenizer.ggml.token_type")
          EXPECT_EQ(a.value_to_string(k), b.value_to_string(k)) << k;
      }
    EXPECT_EQ(a.get_string_array("tokenizer.ggml.tokens"), b.get_string_array("tokenizer.ggml.tokens"));
    EXPECT_EQ(a.get_int_array("tokenizer.ggml.token_type"), b.get_int_array("tokenizer.ggml.token_type"));
    EXPECT_EQ(a.get_float_array("tokenizer.ggml.scores"), b.get_float_array("tokenizer.ggml.scores"));
  }
  export_gguf(*src.model, *src.tokenizer, {}, tmp.path + "/q8.gguf", "q8_0");
  LoadedModel q = load_model(tmp.path + "/q8.gguf");
  auto got = torch::log_softmax(logits(*q.model, t), -1);
  const double kl = (ref.exp() * (ref - got)).sum(-1).max().item<double>();
  std::cout << "Gemma 3 270M re-exported as Q8_0: max KL over 16 positions " << kl << "\n";
  EXPECT_LT(kl, 0.05);
  EXPECT_GE(ref.argmax(-1).eq(got.argmax(-1)).sum().item<int64_t>(), 14);
}

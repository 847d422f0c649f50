// Tests for the torch-free runtime model (src/retort/model/runtime_model.*, cpu_model.*, llama_rows.cpp,
// gemma3_rows.cpp): the pass `retort generate`, `retort chat` and `retort serve` run, checked against
// the same independent references as the libtorch model, and against the libtorch model itself.
//
// References (committed data, made by the committed scripts beside it; tests/test_model.cpp and
// tests/test_gemma3.cpp read the same files):
//   tests/data/model/make_golden.py -> smollm2_golden.safetensors: transformers (float32, eager) on the
//     SmolLM2-135M-Instruct Q4_1 GGUF: per position argmax, top-2 logit gap, top-20 ids and logprobs;
//     greedy ids of generate(max_new_tokens=32).
//   tests/data/model/make_gemma3_golden.py -> gemma3_golden.safetensors: the same for Gemma 3 270M Q4_K_M.
//   tests/data/hf/make_tiny_checkpoints.py, make_tiny_gemma3.py -> hf/golden/<name>.safetensors:
//     transformers float32 logits [3, 24, 256] and 16 greedy ids per row of tiny random checkpoints
//     (Llama with llama3 RoPE, F32; Qwen2 with q/k/v bias, tied, BF16; Mistral, F16, sharded; Gemma 3
//     with sliding window 6, F32).
//
// Tolerances, as the libtorch tests state them. transformers dequantizes the same GGUF blocks to the same
// float32 values (the `gguf` package; retort::dequantize is bit-exact with it), so both sides compute one
// function in float32 and differ only in summation order: top-20 logprobs within 2e-3 nats (30 / 18
// layers), the same top-1 wherever the reference's top-2 logit gap is at least 1e-3 (below that either of
// the reference's top two is accepted). Tiny checkpoints: logits within 1e-4 (2 to 4 layers).
// Between the runtime model and the libtorch model (GGUF: loaded inference-only; HF: float32 parameters)
// there is no tolerance: both run run_cached_rows on the same float32 weight values with the same
// kernels, so the logits are the same bits.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <set>

#include "retort/io/safetensors.h"
#include "retort/model/kv_cache.h"
#include "retort/model/loader.h"
#include "retort/model/runtime_model.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using namespace retort_test;

namespace {

const std::string kData = RETORT_TEST_DATA;

// ---- running a CachedLM --------------------------------------------------------------------------

using Rows = std::vector<std::vector<int64_t>>;

// Logits [T, V] of every position of `ids`, prefilled in one call (forward_rows, all rows).
std::vector<float> prefill_logits(RuntimeModel& m, const std::vector<int64_t>& ids) {
  const int64_t T = int64_t(ids.size());
  auto cache = m.new_cache(1, T);
  std::vector<float> out;
  m.forward_rows(ids.data(), 1, T, {0}, {T}, *cache, /*last_only=*/false, /*hidden_only=*/false, out);
  EXPECT_EQ(cache->lengths[0], T);
  return out;
}

// Logits [T, V] of every position of `ids`, fed one token per forward_last call (the decode path).
std::vector<float> decode_logits(CachedLM& m, const std::vector<int64_t>& ids) {
  const int64_t T = int64_t(ids.size()), V = m.hparams().n_vocab;
  auto cache = m.new_cache(1, T);
  std::vector<float> out(size_t(T * V));
  for (int64_t t = 0; t < T; ++t) m.forward_last(&ids[size_t(t)], 1, 1, {0}, {1}, *cache, out.data() + t * V);
  return out;
}

// Rows of different lengths in one right-padded forward_last into `slots` of `cache`: logits [B, V].
std::vector<float> forward_last_batch(CachedLM& m, const Rows& rows, const std::vector<int64_t>& slots,
                                      KvSlots& cache) {
  const int64_t B = int64_t(rows.size());
  int64_t T = 0;
  for (const auto& r : rows) T = std::max(T, int64_t(r.size()));
  std::vector<int64_t> tokens(size_t(B * T), 0), n_new;
  for (int64_t b = 0; b < B; ++b) {
    std::copy(rows[size_t(b)].begin(), rows[size_t(b)].end(), tokens.begin() + b * T);
    n_new.push_back(int64_t(rows[size_t(b)].size()));
  }
  std::vector<float> out(size_t(B * m.hparams().n_vocab));
  m.forward_last(tokens.data(), B, T, slots, n_new, cache, out.data());
  return out;
}

// Greedy decoding through forward_last: all prompts in one batch (right-padded prefill), then one token
// per row per step. The n_steps new ids of each row.
Rows greedy(CachedLM& m, const Rows& prompts, int64_t n_steps) {
  const int64_t B = int64_t(prompts.size()), V = m.hparams().n_vocab;
  int64_t T = 0;
  for (const auto& p : prompts) T = std::max(T, int64_t(p.size()));
  auto cache = m.new_cache(B, T + n_steps);
  std::vector<int64_t> slots;
  for (int64_t b = 0; b < B; ++b) slots.push_back(b);
  std::vector<float> logits = forward_last_batch(m, prompts, slots, *cache);
  Rows out(static_cast<size_t>(B));
  for (int64_t step = 0;; ++step) {
    std::vector<int64_t> next;
    for (int64_t b = 0; b < B; ++b) {
      const float* row = logits.data() + b * V;
      next.push_back(int64_t(std::max_element(row, row + V) - row));
      out[size_t(b)].push_back(next.back());
    }
    if (step + 1 == n_steps) break;
    m.forward_last(next.data(), B, 1, slots, std::vector<int64_t>(size_t(B), 1), *cache, logits.data());
  }
  return out;
}

// Max |a - b| over two equally long float arrays (for messages when they should be the same bits).
double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double d = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) d = std::max(d, double(std::abs(a[i] - b[i])));
  return d;
}

bool same_bits(const float* a, const float* b, int64_t n) { return std::memcmp(a, b, size_t(n) * 4) == 0; }

torch::Tensor as_tensor(const std::vector<float>& v, int64_t rows, int64_t cols) {
  return torch::from_blob(const_cast<float*>(v.data()), {rows, cols}, torch::kFloat32).clone();
}

// ---- the GGUF goldens ---------------------------------------------------------------------------------

struct GoldenPrompt {
  std::vector<int64_t> ids;
  torch::Tensor argmax, gap, top_ids, top_lp;  // [T], [T], [T, 20], [T, 20]
};

std::vector<GoldenPrompt> golden_prompts(const SafetensorsFile& g) {
  std::vector<GoldenPrompt> out;
  for (int i = 0; g.find(cat("p", i, "_input_ids")); ++i)
    out.push_back({to_vec(read_i64(g, cat("p", i, "_input_ids"))), read_i64(g, cat("p", i, "_argmax")),
                   read_f32(g, cat("p", i, "_top2_gap")), read_i64(g, cat("p", i, "_top_ids")),
                   read_f32(g, cat("p", i, "_top_logprobs"))});
  return out;
}

// The greedy prompts and transformers' new ids (up to 32; fewer when it stopped at EOS).
std::pair<Rows, Rows> golden_greedy(const SafetensorsFile& g) {
  Rows prompts, expected;
  for (int i = 0; g.find(cat("g", i, "_prompt_ids")); ++i) {
    auto prompt = to_vec(read_i64(g, cat("g", i, "_prompt_ids")));
    auto all = to_vec(read_i64(g, cat("g", i, "_output_ids")));
    prompts.push_back(prompt);
    expected.emplace_back(all.begin() + int64_t(prompt.size()), all.end());
  }
  return {prompts, expected};
}

// Logits [T, V] against the reference: top-1 at every position (either of the reference's top two where
// its gap is under 1e-3). Returns max |logprob - reference| over the reference's top-20.
double check_golden(const std::vector<float>& logits, const GoldenPrompt& g, int64_t V, const std::string& what) {
  const int64_t T = int64_t(g.ids.size());
  EXPECT_EQ(int64_t(logits.size()), T * V) << what;
  auto lp = torch::log_softmax(as_tensor(logits, T, V), -1);
  auto ours = lp.argmax(-1);
  for (int64_t t = 0; t < T; ++t) {
    const int64_t a = ours[t].item<int64_t>(), r = g.argmax[t].item<int64_t>();
    if (g.gap[t].item<float>() < 1e-3f) EXPECT_TRUE(a == r || a == g.top_ids[t][1].item<int64_t>()) << what << " pos " << t;
    else EXPECT_EQ(a, r) << what << " position " << t << " (reference top-2 gap " << g.gap[t].item<float>() << ")";
  }
  return (lp.gather(1, g.top_ids) - g.top_lp).abs().max().item<double>();
}

struct GgufCase {
  const char* name;
  std::string (*path)();
  const char* golden;  // under tests/data/model
};

std::ostream& operator<<(std::ostream& os, const GgufCase& c) { return os << c.name; }

const GgufCase kGgufCases[] = {
    {"SmolLM2_Q4_1", smollm2_path, "smollm2_golden.safetensors"},
    {"Gemma3_270M_Q4_K_M", gemma3_path, "gemma3_golden.safetensors"},
};

// Each GGUF model, loaded once by the runtime loader (float32, no tokenizer).
RuntimeLoaded& runtime(const std::string& path) {
  static std::map<std::string, std::unique_ptr<RuntimeLoaded>> loaded;
  auto& m = loaded[path];
  if (!m) {
    RuntimeLoadOptions o;
    o.load_tokenizer = false;
    m = std::make_unique<RuntimeLoaded>(load_runtime_model(path, o));
    std::cout << path << ": load_runtime_model " << m->load_seconds << " s\n";
  }
  return *m;
}

// The same file as a libtorch model loaded inference-only: its matrices stay as the file's blocks.
LoadedModel libtorch_inference_only(const std::string& path, torch::ScalarType dtype) {
  LoadOptions o;
  o.dtype = dtype;
  o.load_tokenizer = false;
  o.inference_only = true;
  return load_model(path, o);
}

class RuntimeGguf : public ::testing::TestWithParam<GgufCase> {
 protected:
  void SetUp() override {
    if (!fs::exists(GetParam().path()))
      GTEST_SKIP() << GetParam().name << " GGUF not found at " << GetParam().path()
                   << " (run scripts/setup.sh to put it in the model cache)";
  }
  RuntimeModel& model() { return *runtime(GetParam().path()).model; }
  SafetensorsFile golden() { return SafetensorsFile::open(kData + "/model/" + GetParam().golden); }
};

}  // namespace

// ---------------------------------------------------------------------------------------------
// GGUF models vs transformers

// Prefill: every position of each golden prompt from one forward_rows call.
TEST_P(RuntimeGguf, PrefillMatchesTransformers) {
  RuntimeModel& m = model();
  const auto prompts = golden_prompts(golden());
  ASSERT_GE(prompts.size(), 5u);
  double max_diff = 0;
  for (size_t i = 0; i < prompts.size(); ++i)
    max_diff = std::max(max_diff, check_golden(prefill_logits(m, prompts[i].ids), prompts[i], m.hparams().n_vocab,
                                               cat("prefill, prompt ", i)));
  std::cout << GetParam().name << " runtime prefill: max |logprob - transformers| over top-20 = " << max_diff << "\n";
  EXPECT_LE(max_diff, 2e-3);
}

// Decode: each golden prompt one token per forward_last call, each step reading the cache the earlier
// steps wrote. Every float32 kernel is batch-invariant (cpu_kernels.h), so the decode logits are the
// prefill logits bit for bit — and therefore as close to transformers.
TEST_P(RuntimeGguf, DecodeMatchesTransformersAndPrefill) {
  RuntimeModel& m = model();
  const int64_t V = m.hparams().n_vocab;
  const auto prompts = golden_prompts(golden());
  double max_diff = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    const auto decoded = decode_logits(m, prompts[i].ids);
    max_diff = std::max(max_diff, check_golden(decoded, prompts[i], V, cat("decode, prompt ", i)));
    const auto prefilled = prefill_logits(m, prompts[i].ids);
    EXPECT_TRUE(same_bits(decoded.data(), prefilled.data(), int64_t(decoded.size())))
        << "prompt " << i << ": decode differs from prefill by up to " << max_abs_diff(decoded, prefilled);
  }
  std::cout << GetParam().name << " runtime decode: max |logprob - transformers| over top-20 = " << max_diff << "\n";
  EXPECT_LE(max_diff, 2e-3);
}

// Greedy generation as `retort generate` drives the model: three prompts of different lengths in one
// batch, then one token per row per step, against transformers' generate() of each prompt alone.
TEST_P(RuntimeGguf, GreedyMatchesTransformers) {
  auto [prompts, expected] = golden_greedy(golden());
  ASSERT_EQ(prompts.size(), 3u);
  const Rows out = greedy(model(), prompts, 32);
  for (size_t i = 0; i < prompts.size(); ++i) {
    ASSERT_LE(expected[i].size(), out[i].size());
    EXPECT_EQ(Rows::value_type(out[i].begin(), out[i].begin() + int64_t(expected[i].size())), expected[i])
        << "batched prompt " << i;
  }
}

// A row's logits do not depend on the batch: prompts of different lengths in one forward_last, in
// scattered slots of a cache whose other slots hold an unrelated sequence, equal each prompt alone in a
// fresh cache, bit for bit; so does a second step adding 1, 3 and 2 tokens, and a forward_rows of every
// position of the batch.
TEST_P(RuntimeGguf, BatchedRowsEqualSingleRowsBitForBit) {
  RuntimeModel& m = model();
  const int64_t V = m.hparams().n_vocab;
  const auto golden_ps = golden_prompts(golden());
  const Rows prompts = {golden_ps[1].ids, golden_ps[0].ids, golden_ps[5].ids};  // lengths differ
  ASSERT_NE(prompts[0].size(), prompts[1].size());
  ASSERT_NE(prompts[1].size(), prompts[2].size());
  const Rows more = {{golden_ps[2].ids[3]}, {golden_ps[2].ids[4], 17, 900}, {11, golden_ps[3].ids[2]}};
  const std::vector<int64_t> slots = {3, 0, 2};

  auto batch_cache = m.new_cache(4, 80);
  std::vector<float> junk(static_cast<size_t>(V));
  const std::vector<int64_t> junk_ids = golden_ps[4].ids;
  m.forward_last(junk_ids.data(), 1, int64_t(junk_ids.size()), {1}, {int64_t(junk_ids.size())}, *batch_cache,
                 junk.data());
  const auto first = forward_last_batch(m, prompts, slots, *batch_cache);
  const auto second = forward_last_batch(m, more, slots, *batch_cache);
  EXPECT_EQ(batch_cache->lengths[1], int64_t(junk_ids.size()));

  for (size_t b = 0; b < prompts.size(); ++b) {
    auto alone = m.new_cache(1, 80);
    const auto a1 = forward_last_batch(m, {prompts[b]}, {0}, *alone);
    const auto a2 = forward_last_batch(m, {more[b]}, {0}, *alone);
    EXPECT_TRUE(same_bits(first.data() + int64_t(b) * V, a1.data(), V)) << "prefill, row " << b;
    EXPECT_TRUE(same_bits(second.data() + int64_t(b) * V, a2.data(), V)) << "second step, row " << b;
    EXPECT_EQ(batch_cache->lengths[size_t(slots[b])], int64_t(prompts[b].size() + more[b].size()));
  }

  // forward_rows of every position of a padded batch: row b's T_b rows, in order, are its prefill alone.
  auto cache = m.new_cache(3, 64);
  int64_t T = 0;
  std::vector<int64_t> n_new;
  for (const auto& p : prompts) T = std::max(T, int64_t(p.size())), n_new.push_back(int64_t(p.size()));
  std::vector<int64_t> tokens(size_t(3 * T), 0);
  for (int64_t b = 0; b < 3; ++b) std::copy(prompts[size_t(b)].begin(), prompts[size_t(b)].end(), tokens.begin() + b * T);
  std::vector<float> all;
  m.forward_rows(tokens.data(), 3, T, {0, 1, 2}, n_new, *cache, /*last_only=*/false, /*hidden_only=*/false, all);
  int64_t at = 0;
  for (size_t b = 0; b < prompts.size(); ++b) {
    const auto alone = prefill_logits(m, prompts[b]);
    EXPECT_TRUE(same_bits(all.data() + at * V, alone.data(), int64_t(alone.size()))) << "forward_rows, row " << b;
    at += int64_t(prompts[b].size());
  }
  EXPECT_EQ(int64_t(all.size()), at * V);
}

// The runtime model and the libtorch CausalLM loaded inference-only read the same blocks through the same
// kernels (CausalLMImpl points CpuWeights at its attached blocks): prefill of every position, and decode
// token by token, give the same bits.
TEST_P(RuntimeGguf, SameLogitsAsLibtorchInferenceOnly) {
  RuntimeModel& rt = model();
  LoadedModel lt = libtorch_inference_only(GetParam().path(), torch::kFloat32);
  ASSERT_FALSE(lt.model->dense());
  const int64_t V = rt.hparams().n_vocab;
  const auto prompts = golden_prompts(golden());
  for (size_t i : {size_t(0), size_t(2)}) {
    const auto& ids = prompts[i].ids;
    const int64_t T = int64_t(ids.size());
    KvCache cache(lt.hparams, 1, T, torch::kCPU, torch::kFloat32);
    auto lt_all = lt.model->forward_cached(torch::tensor(ids, torch::kInt64).view({1, T}), {0}, {T}, cache, false);
    const auto rt_all = prefill_logits(rt, ids);
    std::vector<float> lt_vec(lt_all.data_ptr<float>(), lt_all.data_ptr<float>() + T * V);
    EXPECT_TRUE(same_bits(rt_all.data(), lt_vec.data(), T * V))
        << "prefill, prompt " << i << ": max |runtime - libtorch| = " << max_abs_diff(rt_all, lt_vec);
    const auto lt_dec = decode_logits(*lt.model, ids);
    const auto rt_dec = decode_logits(rt, ids);
    EXPECT_TRUE(same_bits(rt_dec.data(), lt_dec.data(), T * V))
        << "decode, prompt " << i << ": max |runtime - libtorch| = " << max_abs_diff(rt_dec, lt_dec);
  }
}

// --dtype bf16: the runtime's bf16 numerics (bf16 KV cache, bf16 math for quantized matrices at 4+ rows on
// AVX512-BF16) are the libtorch bf16 model's, bit for bit, at 1 row and at 4 rows per step.
TEST_P(RuntimeGguf, Bf16SameAsLibtorchBf16) {
  RuntimeLoadOptions o;
  o.load_tokenizer = false;
  o.bf16 = true;
  RuntimeLoaded rt = load_runtime_model(GetParam().path(), o);
  LoadedModel lt = libtorch_inference_only(GetParam().path(), torch::kBFloat16);
  const int64_t V = rt.hparams.n_vocab;
  const auto ids = golden_prompts(golden())[0].ids;
  for (int64_t B : {1, 4}) {
    const Rows rows(size_t(B), ids);
    std::vector<int64_t> slots;
    for (int64_t b = 0; b < B; ++b) slots.push_back(b);
    auto rc = rt.model->new_cache(B, int64_t(ids.size()) + 2);
    auto lc = lt.model->new_cache(B, int64_t(ids.size()) + 2);
    auto r1 = forward_last_batch(*rt.model, rows, slots, *rc), l1 = forward_last_batch(*lt.model, rows, slots, *lc);
    const Rows next(size_t(B), {ids[1]});
    auto r2 = forward_last_batch(*rt.model, next, slots, *rc), l2 = forward_last_batch(*lt.model, next, slots, *lc);
    EXPECT_TRUE(same_bits(r1.data(), l1.data(), B * V)) << "prefill, batch " << B << ": max diff " << max_abs_diff(r1, l1);
    EXPECT_TRUE(same_bits(r2.data(), l2.data(), B * V)) << "decode, batch " << B << ": max diff " << max_abs_diff(r2, l2);
  }
}

// The file's matrices are read in place: mapped_bytes() is every matrix's bytes in the file, except llama.cpp's
// permuted q/k (SmolLM2: reordered into a copy of the same blocks). copied_bytes() is those reordered
// blocks plus the float32 vectors (norms) — never a dense copy of a matrix. Bound: copied_bytes =
// permuted q/k blocks + 4 bytes per vector element exactly, and under 10% of the file.
TEST_P(RuntimeGguf, MapsMatricesCopiesOnlyVectorsAndReorderedBlocks) {
  const RuntimeLoaded& m = runtime(GetParam().path());
  const auto& perm = m.model->family().gguf_permuted_archs;
  const bool permuted = std::find(perm.begin(), perm.end(), m.hparams.arch) != perm.end();
  // What the kernels read in place in a float32 model (cpu_kernels.h; BF16 only in a bf16 model).
  const std::set<std::string> in_place = {"F32", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"};
  int64_t matrices = 0, reordered = 0, vectors = 0, dense_f32 = 0;
  for (const auto& t : m.tensors) {
    if (t.shape.size() == 2) {
      EXPECT_TRUE(in_place.count(t.type)) << t.name << " is " << t.type << ": the kernels do not read it in place";
      matrices += int64_t(t.bytes);
      dense_f32 += 4 * t.shape[0] * t.shape[1];
      const bool qk = t.name.find(".attn_q.weight") != std::string::npos || t.name.find(".attn_k.weight") != std::string::npos;
      if (permuted && qk) reordered += int64_t(t.bytes);
    } else {
      ASSERT_EQ(t.shape.size(), 1u) << t.name;
      vectors += 4 * t.shape[0];
    }
  }
  const int64_t file = int64_t(fs::file_size(m.path));
  std::cout << GetParam().name << ": file " << file << " B, matrices " << matrices << " B (dense float32 "
            << dense_f32 << " B); mapped " << m.model->mapped_bytes() << " B, copied " << m.model->copied_bytes()
            << " B (" << 100.0 * double(m.model->copied_bytes()) / double(file) << "% of the file; reordered q/k "
            << reordered << " B, vectors " << vectors << " B)\n";
  EXPECT_EQ(m.model->mapped_bytes(), matrices - reordered);
  EXPECT_EQ(m.model->copied_bytes(), reordered + vectors);
  EXPECT_LT(m.model->copied_bytes(), file / 10);
  EXPECT_GT(m.model->mapped_bytes() + m.model->copied_bytes(), file * 9 / 10);  // the weights are the file
}

INSTANTIATE_TEST_SUITE_P(Model, RuntimeGguf, ::testing::ValuesIn(kGgufCases),
                         [](const auto& info) { return std::string(info.param.name); });

// ---------------------------------------------------------------------------------------------
// Tiny Hugging Face checkpoint directories vs transformers

class RuntimeHf : public ::testing::TestWithParam<std::string> {};

// All paths on one tiny model: batched prefill of every position, decode token by token, greedy
// generation past the sliding window (Gemma 3), the libtorch model on the same inputs, and the weights
// read in place from the safetensors mappings. tiny-qwen2 is stored in BF16: read in place, the BF16
// kernel would round x to bf16 in a float32 model (logits 0.19 off transformers, greedy ids diverging).
TEST_P(RuntimeHf, MatchesTransformersAndLibtorch) {
  const std::string name = GetParam(), dir = kData + "/hf/" + name;
  RuntimeLoaded m = load_runtime_model(dir);
  EXPECT_EQ(m.format, "hf");
  ASSERT_TRUE(m.tokenizer != nullptr);
  RuntimeModel& rt = *m.model;
  SafetensorsFile g = SafetensorsFile::open(kData + "/hf/golden/" + name + ".safetensors");
  const auto ids = read_i64(g, "input_ids");          // [3, 24]
  const auto ref = read_f32(g, "logits");             // [3, 24, 256]
  const auto ref_greedy = read_i64(g, "greedy_ids");  // [3, 16]
  const int64_t B = ids.size(0), T = ids.size(1), V = rt.hparams().n_vocab;
  ASSERT_EQ(ref.size(2), V);
  const std::vector<int64_t> flat = to_vec(ids), slots = {0, 1, 2}, n_new(size_t(B), T);

  // Prefill, the three rows in one call.
  auto cache = rt.new_cache(B, T);
  std::vector<float> all;
  rt.forward_rows(flat.data(), B, T, slots, n_new, *cache, /*last_only=*/false, /*hidden_only=*/false, all);
  const double prefill_diff = (as_tensor(all, B * T, V).view({B, T, V}) - ref).abs().max().item<double>();

  // Decode, row by row and token by token: the prefill's bits.
  std::vector<float> decoded;
  for (int64_t b = 0; b < B; ++b) {
    const auto d = decode_logits(rt, to_vec(ids[b]));
    decoded.insert(decoded.end(), d.begin(), d.end());
  }
  EXPECT_TRUE(same_bits(decoded.data(), all.data(), B * T * V)) << "decode vs prefill: " << max_abs_diff(decoded, all);
  std::cout << name << " runtime: max |logit - transformers| prefill " << prefill_diff << ", decode "
            << (as_tensor(decoded, B * T, V).view({B, T, V}) - ref).abs().max().item<double>() << "\n";
  EXPECT_LE(prefill_diff, 1e-4);

  // Greedy, the three rows batched (transformers ran each alone).
  Rows prompts;
  for (int64_t r = 0; r < B; ++r) prompts.push_back(to_vec(ids[r]));
  const Rows out = greedy(rt, prompts, ref_greedy.size(1));
  for (int64_t r = 0; r < B; ++r) EXPECT_EQ(out[size_t(r)], to_vec(ref_greedy[r])) << name << " row " << r;

  // The libtorch model of the same directory (float32), cached pass on the CPU kernels.
  LoadOptions lo;
  lo.load_tokenizer = false;
  LoadedModel lt = load_model(dir, lo);
  KvCache lcache(lt.hparams, B, T, torch::kCPU, torch::kFloat32);
  auto lt_all = lt.model->forward_cached(ids, slots, n_new, lcache, false).contiguous();
  const std::vector<float> lt_vec(lt_all.data_ptr<float>(), lt_all.data_ptr<float>() + B * T * V);
  EXPECT_TRUE(same_bits(all.data(), lt_vec.data(), B * T * V))
      << name << ": max |runtime - libtorch| = " << max_abs_diff(all, lt_vec);

  // Weights of a float32 model: F32 matrices in place; BF16 (tiny-qwen2) and F16 (tiny-mistral) ones
  // converted to float32 copies (the BF16 kernel would round x to bf16); vectors copied as float32.
  int64_t in_place = 0, converted = 0, vectors = 0;
  for (const auto& t : m.tensors) {
    if (t.shape.size() != 2) vectors += 4 * t.shape[0];
    else if (t.type == "F32") in_place += int64_t(t.bytes);
    else converted += 4 * t.shape[0] * t.shape[1];
  }
  std::cout << name << ": mapped " << rt.mapped_bytes() << " B, copied " << rt.copied_bytes() << " B\n";
  EXPECT_EQ(rt.mapped_bytes(), in_place);
  EXPECT_EQ(rt.copied_bytes(), converted + vectors);
}

INSTANTIATE_TEST_SUITE_P(Model, RuntimeHf, ::testing::Values("tiny-llama", "tiny-qwen2", "tiny-mistral", "tiny-gemma3"),
                         [](const auto& info) {
                           std::string s = info.param;
                           std::replace(s.begin(), s.end(), '-', '_');
                           return s;
                         });

// tests/test_util.h — helpers shared by the GoogleTest files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <initializer_list>
#include <string>

#include "retort/io/safetensors.h"
#include "retort/model/loader.h"
#include "retort/util/error.h"

namespace retort_test {

// Expect `f()` to throw retort::Error whose message contains every one of `parts`.
template <class F>
void expect_error(F&& f, std::initializer_list<std::string> parts) {
  try {
    f();
    ADD_FAILURE() << "expected retort::Error";
  } catch (const retort::Error& e) {
    std::string msg = e.what();
    for (const auto& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "missing \"" << p << "\" in: " << msg;
  }
}

// A fresh directory per test (named after the test), removed afterwards.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
    path = std::filesystem::temp_directory_path() /
           retort::cat("retort_", ::getpid(), "_", info->test_suite_name(), "_", info->name());
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string str(const std::string& sub) const { return (path / sub).string(); }
  std::string operator/(const std::string& sub) const { return str(sub); }
};

// The default teacher in the model cache (tests GTEST_SKIP when it is absent).
inline std::string smollm2_path() { return retort::model_cache_dir() + "/smollm2-135m-instruct.gguf"; }
// Gemma 3 270M (SentencePiece tokenizer; tests GTEST_SKIP when it is absent).
inline std::string gemma3_path() { return retort::model_cache_dir() + "/gemma3-270m.gguf"; }

// A tensor of a golden safetensors file as int64 / float32 (throws when it is missing).
inline torch::Tensor read_i64(const retort::SafetensorsFile& f, const std::string& name) {
  const auto* t = f.find(name);
  if (t == nullptr) throw std::runtime_error("golden tensor missing: " + name);
  auto out = torch::empty(t->shape, torch::kInt64);
  f.read_i64(*t, out.data_ptr<int64_t>());
  return out;
}

inline torch::Tensor read_f32(const retort::SafetensorsFile& f, const std::string& name) {
  const auto* t = f.find(name);
  if (t == nullptr) throw std::runtime_error("golden tensor missing: " + name);
  auto out = torch::empty(t->shape, torch::kFloat32);
  f.read_f32(*t, out.data_ptr<float>());
  return out;
}

inline std::vector<int64_t> to_vec(const torch::Tensor& t) {
  auto c = t.contiguous();
  return std::vector<int64_t>(c.data_ptr<int64_t>(), c.data_ptr<int64_t>() + c.numel());
}

// Greedy decoding through forward_cached: rows of different prompt lengths in one batch,
// right-padded prefill, then one token per step. Returns the n_steps new ids per row.
inline std::vector<std::vector<int64_t>> greedy_batch(retort::CausalLMImpl& model,
                                                      const std::vector<std::vector<int64_t>>& prompts,
                                                      int64_t n_steps, torch::ScalarType cache_dtype = torch::kFloat32) {
  const int64_t B = int64_t(prompts.size());
  int64_t T = 0;
  for (const auto& p : prompts) T = std::max<int64_t>(T, int64_t(p.size()));
  retort::KvCache cache(model.hparams(), B, T + n_steps, torch::kCPU, cache_dtype);
  auto tokens = torch::zeros({B, T}, torch::kInt64);
  std::vector<int64_t> slots, n_new;
  for (int64_t b = 0; b < B; ++b) {
    for (size_t t = 0; t < prompts[size_t(b)].size(); ++t) tokens[b][int64_t(t)] = prompts[size_t(b)][t];
    slots.push_back(b);
    n_new.push_back(int64_t(prompts[size_t(b)].size()));
  }
  std::vector<std::vector<int64_t>> out(static_cast<size_t>(B));
  auto logits = model.forward_cached(tokens, slots, n_new, cache, /*last_only=*/true);  // [B, V]
  for (int64_t step = 0; step < n_steps; ++step) {
    auto next = logits.argmax(-1);  // [B]
    for (int64_t b = 0; b < B; ++b) out[size_t(b)].push_back(next[b].item<int64_t>());
    if (step + 1 == n_steps) break;
    logits = model.forward_cached(next.view({B, 1}), slots, std::vector<int64_t>(size_t(B), 1), cache, true);
  }
  return out;
}

}  // namespace retort_test

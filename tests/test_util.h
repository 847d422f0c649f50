// tests/test_util.h — helpers shared by the GoogleTest files.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <initializer_list>
#include <string>

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

}  // namespace retort_test

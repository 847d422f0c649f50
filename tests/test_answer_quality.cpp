// Tests for retort/distill/answer_quality: the repeated-n-gram share against a plain O(n²)
// recomputation from its definition, and, on the default model, the teacher's NLL of its own greedy
// answers (one batched teacher-forced pass) against the raw log-probs the decoder reported token by
// token (KV-cached decode, a different computation of the same numbers).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include "retort/decode/generate.h"
#include "retort/distill/answer_quality.h"
#include "retort/model/loader.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

using namespace retort;

namespace {

// The definition, written out: n-gram i is repeated when an equal n-gram starts at some j < i.
double repeated_share_naive(const std::vector<int32_t>& ids, int n) {
  if (int(ids.size()) < n) return 0.0;
  const int grams = int(ids.size()) - n + 1;
  int repeated = 0;
  for (int i = 0; i < grams; ++i) {
    bool seen = false;
    for (int j = 0; j < i && !seen; ++j) {
      bool same = true;
      for (int k = 0; k < n && same; ++k) same = ids[size_t(i + k)] == ids[size_t(j + k)];
      seen = same;
    }
    repeated += seen;
  }
  return double(repeated) / grams;
}

std::string default_model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base = home && *home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

}  // namespace

TEST(AnswerQuality, RepeatedNgramShareByHand) {
  EXPECT_EQ(repeated_ngram_share({}, 4), 0.0);
  EXPECT_EQ(repeated_ngram_share({1, 2, 3}, 4), 0.0);       // no 4-gram at all
  EXPECT_EQ(repeated_ngram_share({1, 2, 3, 4}, 4), 0.0);    // one 4-gram, first seen
  // "a b c d a b c d a b c d": 9 four-grams, the first 4 new, the other 5 repeats.
  EXPECT_DOUBLE_EQ(repeated_ngram_share({1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4}, 4), 5.0 / 9.0);
  // One token over and over: every n-gram after the first repeats.
  EXPECT_DOUBLE_EQ(repeated_ngram_share(std::vector<int32_t>(10, 7), 4), 6.0 / 7.0);
  EXPECT_DOUBLE_EQ(repeated_ngram_share({5, 5, 6, 5, 5, 6}, 2), 2.0 / 5.0);
  EXPECT_THROW(repeated_ngram_share({1, 2}, 0), Error);
}

TEST(AnswerQuality, RepeatedNgramShareMatchesDefinition) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    std::uniform_int_distribution<int> len(0, 60), vocab(0, 1 + trial % 6), gram(1, 5);
    std::vector<int32_t> ids(size_t(len(rng)));
    for (auto& x : ids) x = vocab(rng);
    // Ids beyond one byte, so packing whole 32-bit ids (not bytes) is what is tested.
    if (trial % 3 == 0)
      for (auto& x : ids) x = x * 65537 + 300;
    const int n = gram(rng);
    EXPECT_DOUBLE_EQ(repeated_ngram_share(ids, n), repeated_share_naive(ids, n)) << "trial " << trial;
  }
}

TEST(AnswerQuality, TeacherNllOfOwnAnswersEqualsDecoderLogprobs) {
  if (!std::filesystem::exists(default_model_path()))
    GTEST_SKIP() << "default model not found at " << default_model_path() << " (run scripts/setup.sh)";
  LoadedModel m = load_model(default_model_path());
  ChatTemplate chat = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer);
  std::vector<std::vector<int32_t>> prompts;
  for (const char* q : {"Why is the sky blue?", "Name three fruits.", "What is 2 + 2?", "Write a haiku about rain."})
    prompts.push_back(chat.encode({{"user", q}}, *m.tokenizer));

  AnswerQuality q = answer_quality(m, *m.model, prompts, /*max_tokens=*/24, m.model.get(), /*batch_tokens=*/96);
  ASSERT_EQ(q.answers, 4);
  ASSERT_EQ(q.ids.size(), 4u);

  // The same greedy answers with the decoder's raw log-probs.
  std::vector<GenerationRequest> reqs(prompts.size());
  for (size_t i = 0; i < prompts.size(); ++i) reqs[i].prompt = prompts[i], reqs[i].sampling.temperature = 0, reqs[i].max_tokens = 24;
  double nll = 0, rep = 0;
  int64_t tokens = 0, stopped = 0;
  auto results = generate(m, reqs);
  for (size_t i = 0; i < results.size(); ++i) {
    std::vector<int32_t> ids;
    for (const auto& t : results[i].tokens) ids.push_back(t.token), nll -= t.logprob_raw;
    EXPECT_EQ(ids, q.ids[i]) << "answer " << i;
    EXPECT_EQ(results[i].text, q.texts[i]);
    rep += repeated_share_naive(ids, 4);
    tokens += int64_t(ids.size());
    stopped += results[i].finish_reason == "stop";
  }
  EXPECT_EQ(q.tokens, tokens);
  EXPECT_DOUBLE_EQ(q.mean_tokens, double(tokens) / 4);
  EXPECT_DOUBLE_EQ(q.stopped, double(stopped) / 4);
  EXPECT_NEAR(q.repeated_4gram, rep / 4, 1e-12);
  // Two float32 computations of the same log-probs (KV-cached, one row at a time, vs one padded batch):
  // they differ only in summation order. Each log-prob is a difference of logits of size |z| ≲ 30 made
  // from dot products of length d = 576 through 30 layers; an error of a few ulps per dot product
  // (float32 ε = 6e-8) relative to |z| gives |Δ log p| ≲ 1e-4 per token, and the mean of ~90 tokens
  // shrinks rather than adds it. 1e-3 is an order of magnitude above that and far below any real
  // difference (a wrong position or a missing token moves the mean by > 0.01).
  EXPECT_NEAR(q.teacher_nll, nll / double(tokens), 1e-3);
  EXPECT_GT(q.teacher_nll, 0.0);

  // No teacher: the NLL is absent (NaN, null in JSON).
  AnswerQuality alone = answer_quality(m, *m.model, prompts, 8, nullptr);
  EXPECT_TRUE(std::isnan(alone.teacher_nll));
  EXPECT_TRUE(alone.to_json()["teacher_nll"].is_null());
  EXPECT_THROW(answer_quality(m, *m.model, prompts, 0, nullptr), Error);
}

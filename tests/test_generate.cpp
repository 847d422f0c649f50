// Generation with the default model: greedy ids and raw logprobs against transformers
// (golden from tests/data/decode/make_golden.py), batch independence under continuous
// batching, seeded repeatability, stop strings, max_tokens, the logits-processor hook, errors.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "retort/decode/generate.h"
#include "retort/model/loader.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

using namespace retort;

namespace {

std::string default_model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base = home && *home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

std::vector<int32_t> ids_of(const GenerationResult& r) {
  std::vector<int32_t> out;
  for (const auto& t : r.tokens) out.push_back(t.token);
  return out;
}

class Generate : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(default_model_path())) return;
    model_ = new LoadedModel(load_model(default_model_path()));
    golden_ = new nlohmann::json(
        nlohmann::json::parse(read_file(std::string(RETORT_TEST_DATA) + "/decode/generate_golden.json")));
  }
  static void TearDownTestSuite() {
    delete model_;
    delete golden_;
    model_ = nullptr;
    golden_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model not found at " << default_model_path() << " (run scripts/setup.sh)";
  }
  static LoadedModel* model_;
  static nlohmann::json* golden_;
};
LoadedModel* Generate::model_ = nullptr;
nlohmann::json* Generate::golden_ = nullptr;

}  // namespace

TEST_F(Generate, GreedyMatchesTransformers) {
  std::vector<GenerationRequest> reqs;
  for (const auto& c : (*golden_)["cases"]) {
    GenerationRequest r;
    r.prompt = c["prompt_ids"].get<std::vector<int32_t>>();
    r.sampling.temperature = 0;
    r.max_tokens = (*golden_)["max_new_tokens"];
    r.top_logprobs = 5;
    reqs.push_back(r);
  }
  // All together (batched prefill of different lengths) — must equal transformers one by one.
  auto results = generate(*model_, reqs);
  ASSERT_EQ(results.size(), reqs.size());
  const auto eos_text = model_->tokenizer->token_bytes((*golden_)["eos_token_id"].get<int32_t>());
  for (size_t i = 0; i < reqs.size(); ++i) {
    const auto& c = (*golden_)["cases"][i];
    const auto& r = results[i];
    EXPECT_EQ(ids_of(r), c["generated_ids"].get<std::vector<int32_t>>()) << "case " << i << ": " << c["prompt_text"];
    EXPECT_EQ(r.prompt_tokens, int64_t(reqs[i].prompt.size()));
    const bool eos = c["ended_with_eos"];
    EXPECT_EQ(r.finish_reason, eos ? "stop" : "length") << "case " << i;
    std::string want = c["completion"];
    if (eos) {
      ASSERT_GE(want.size(), eos_text.size());
      ASSERT_EQ(want.substr(want.size() - eos_text.size()), eos_text);
      want.resize(want.size() - eos_text.size());  // the EOS token is not part of the text
    }
    EXPECT_EQ(r.text, want) << "case " << i;
    const auto& steps = c["steps"];
    ASSERT_EQ(r.tokens.size(), steps.size());
    for (size_t t = 0; t < steps.size(); ++t) {
      const auto& g = r.tokens[t];
      EXPECT_NEAR(g.logprob_raw, steps[t]["logprob"].get<double>(), 2e-3) << "case " << i << " step " << t;
      // greedy without a processor: the processed distribution is the raw one
      EXPECT_NEAR(g.logprob, g.logprob_raw, 1e-5);
      ASSERT_EQ(g.top_raw.size(), 5u);
      ASSERT_EQ(g.top.size(), 5u);
      const auto& top = steps[t]["top"];
      for (size_t j = 0; j < 5; ++j) {
        EXPECT_NEAR(g.top_raw[j].logprob, top[j][1].get<double>(), 2e-3) << "case " << i << " step " << t;
        EXPECT_EQ(g.top[j].token, g.top_raw[j].token);
        // ids must agree unless the reference itself has a near-tie there
        const double gap_prev = j ? top[j - 1][1].get<double>() - top[j][1].get<double>() : 1.0;
        const double gap_next = j + 1 < 5 ? top[j][1].get<double>() - top[j + 1][1].get<double>() : 1.0;
        if (gap_prev > 4e-3 && gap_next > 4e-3) {
          EXPECT_EQ(g.top_raw[j].token, top[j][0].get<int32_t>()) << "case " << i << " step " << t;
        }
      }
      EXPECT_EQ(g.top_raw[0].token, g.token);
    }
  }
}

TEST_F(Generate, BatchedEqualsAloneWithContinuousBatching) {
  const Tokenizer& tok = *model_->tokenizer;
  std::string long_text;
  for (int i = 0; i < 12; ++i) long_text += "The quick brown fox jumps over the lazy dog number " + std::to_string(i) + ". ";
  const std::vector<std::string> texts = {
      "Hi",
      "The capital of France is",
      long_text,
      "def add(a, b):\n    return",
      "Once upon a time",
      std::string("A list of fruits: apple, banana, cherry, ") + long_text.substr(0, 150),
      "1 2 3",
      "Water boils at",
  };
  std::vector<int32_t> one_token = {tok.encode("Hello")[0]};
  for (int mode = 0; mode < 2; ++mode) {
    std::vector<GenerationRequest> reqs;
    for (size_t i = 0; i < texts.size(); ++i) {
      GenerationRequest r;
      r.prompt = i == 0 ? one_token : tok.encode(texts[i]);
      r.max_tokens = 2 + int64_t(i % 4);  // different lengths so slots free at different steps
      if (mode == 0) {
        r.sampling.temperature = 0;
      } else {
        r.sampling.temperature = 0.9;
        r.sampling.top_p = 0.95;
        r.sampling.top_k = 50;
        r.sampling.seed = 1000 + i;
      }
      reqs.push_back(r);
    }
    ASSERT_GT(reqs[2].prompt.size(), 120u);
    GenerateOptions batched;
    batched.max_batch = 3;
    batched.prefill_chunk = 32;  // the long prompts are prefilled in several chunks
    std::vector<size_t> order;
    batched.on_token = [&](size_t i, const GeneratedToken&, const std::string&) { order.push_back(i); };
    auto together = generate(*model_, reqs, batched);
    // Continuous batching: never more than 3 requests in flight, and request 3 starts as soon
    // as a slot frees, before request 2 (4 tokens) is done.
    std::map<size_t, std::pair<size_t, size_t>> span;  // request -> first, last position in `order`
    for (size_t k = 0; k < order.size(); ++k) {
      if (!span.count(order[k])) span[order[k]] = {k, k};
      span[order[k]].second = k;
    }
    for (size_t k = 0; k < order.size(); ++k) {
      int in_flight = 0;
      for (const auto& [req, fl] : span) in_flight += fl.first <= k && k <= fl.second;
      EXPECT_LE(in_flight, 3);
    }
    if (together[2].tokens.size() == 4) {
      EXPECT_LT(span[3].first, span[2].second);
    }
    ASSERT_EQ(together.size(), reqs.size());
    for (size_t i = 0; i < reqs.size(); ++i) {
      GenerateOptions alone;
      alone.max_batch = 1;
      auto r = generate(*model_, {reqs[i]}, alone);
      EXPECT_EQ(ids_of(together[i]), ids_of(r[0])) << "mode " << mode << " request " << i;
      EXPECT_EQ(together[i].text, r[0].text);
      EXPECT_EQ(together[i].finish_reason, r[0].finish_reason);
      for (size_t t = 0; t < std::min(r[0].tokens.size(), together[i].tokens.size()); ++t)
        EXPECT_EQ(together[i].tokens[t].logprob_raw, r[0].tokens[t].logprob_raw);  // batch-invariant kernels
      EXPECT_EQ(int64_t(r[0].tokens.size()) <= reqs[i].max_tokens, true);
    }
    EXPECT_EQ(order.size(), [&] {
      size_t n = 0;
      for (const auto& r : together) n += r.tokens.size();
      return n;
    }());
    if (mode == 1) {
      // Seeded sampling repeats exactly, also in another batch order and width.
      std::vector<GenerationRequest> reversed(reqs.rbegin(), reqs.rend());
      GenerateOptions wide;
      wide.max_batch = 8;
      auto rev = generate(*model_, reversed, wide);
      for (size_t i = 0; i < reqs.size(); ++i) {
        EXPECT_EQ(ids_of(rev[reqs.size() - 1 - i]), ids_of(together[i]));
      }
      // and a different seed gives a different sample somewhere
      auto reseeded = reqs;
      for (auto& r : reseeded) r.sampling.seed += 77;
      auto other = generate(*model_, reseeded, batched);
      bool differs = false;
      for (size_t i = 0; i < reqs.size(); ++i) differs |= ids_of(other[i]) != ids_of(together[i]);
      EXPECT_TRUE(differs);
    }
  }
}

TEST_F(Generate, StopStringsAndMaxTokens) {
  // transformers' greedy continuation of "1, 2, 3, 4, 5," is " 6, 7, 8, 9, 10, 11, 12,"
  const auto& c = (*golden_)["cases"][3];
  ASSERT_EQ(c["completion"].get<std::string>().substr(0, 13), " 6, 7, 8, 9, ");
  GenerationRequest r;
  r.prompt = c["prompt_ids"].get<std::vector<int32_t>>();
  r.sampling.temperature = 0;
  r.max_tokens = 24;
  r.stop = {"9, 1", "never appears"};  // spans tokens: "9" "," " 1"
  std::string streamed;
  size_t calls = 0;
  GenerateOptions opts;
  opts.on_token = [&](size_t i, const GeneratedToken&, const std::string& piece) {
    EXPECT_EQ(i, 0u);
    streamed += piece;
    ++calls;
    EXPECT_EQ(streamed.find("9, 1"), std::string::npos);  // never streams (part of) a stop string past it
  };
  auto res = generate(*model_, {r}, opts)[0];
  EXPECT_EQ(res.finish_reason, "stop");
  EXPECT_EQ(res.text, " 6, 7, 8, ");
  EXPECT_EQ(streamed, res.text);
  EXPECT_EQ(calls, res.tokens.size());
  // the tokens stop at the one that completed the stop string
  const std::string all = model_->tokenizer->decode(ids_of(res));
  EXPECT_NE(all.find("9, 1"), std::string::npos);
  res.tokens.pop_back();
  EXPECT_EQ(model_->tokenizer->decode(ids_of(res)).find("9, 1"), std::string::npos);

  r.stop = {};
  r.max_tokens = 5;
  auto len = generate(*model_, {r})[0];
  EXPECT_EQ(len.finish_reason, "length");
  ASSERT_EQ(len.tokens.size(), 5u);
  auto golden_ids = c["generated_ids"].get<std::vector<int32_t>>();
  EXPECT_EQ(ids_of(len), std::vector<int32_t>(golden_ids.begin(), golden_ids.begin() + 5));

  r.max_tokens = 0;
  auto none = generate(*model_, {r})[0];
  EXPECT_TRUE(none.tokens.empty());
  EXPECT_EQ(none.finish_reason, "length");
  EXPECT_EQ(none.text, "");
}

TEST_F(Generate, IgnoreEosContinuesPastEos) {
  const auto& c = (*golden_)["cases"][4];
  ASSERT_TRUE(c["ended_with_eos"].get<bool>());
  const auto want = c["generated_ids"].get<std::vector<int32_t>>();
  GenerationRequest r;
  r.prompt = c["prompt_ids"].get<std::vector<int32_t>>();
  r.sampling.temperature = 0;
  r.max_tokens = int64_t(want.size()) + 3;
  r.ignore_eos = true;
  auto res = generate(*model_, {r})[0];
  EXPECT_EQ(res.finish_reason, "length");
  ASSERT_EQ(res.tokens.size(), want.size() + 3);
  const auto got = ids_of(res);
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + want.size()), want);
}

// min_tokens: the golden case that ends with EOS runs on greedily to the minimum. Up to the point it
// would have stopped, the tokens equal transformers' greedy ids; at that step EOS is banned from the
// processed distribution but stays the raw top-1 with its logprob; the EOS token can end the
// sequence once the minimum is reached.
TEST_F(Generate, MinTokensBansEosUntilReached) {
  const auto& c = (*golden_)["cases"][4];
  ASSERT_TRUE(c["ended_with_eos"].get<bool>());
  const auto want = c["generated_ids"].get<std::vector<int32_t>>();  // ends with the EOS id
  const int32_t eos = want.back();
  GenerationRequest r;
  r.prompt = c["prompt_ids"].get<std::vector<int32_t>>();
  r.sampling.temperature = 0;
  r.min_tokens = int64_t(want.size()) + 4;
  r.max_tokens = r.min_tokens + 40;
  r.top_logprobs = 3;
  auto res = generate(*model_, {r})[0];
  ASSERT_GE(int64_t(res.tokens.size()), r.min_tokens);
  const auto got = ids_of(res);
  EXPECT_EQ(std::vector<int32_t>(got.begin(), got.begin() + want.size() - 1),
            std::vector<int32_t>(want.begin(), want.end() - 1));
  for (int64_t i = 0; i < r.min_tokens; ++i) EXPECT_NE(got[size_t(i)], eos) << "EOS generated at " << i;
  const GeneratedToken& at_stop = res.tokens[want.size() - 1];  // where greedy would have stopped
  EXPECT_EQ(at_stop.top_raw.at(0).token, eos);
  for (const auto& t : at_stop.top) EXPECT_NE(t.token, eos);
  EXPECT_NE(at_stop.token, eos);
  if (res.finish_reason == "stop") EXPECT_EQ(got.back(), eos);

  GenerationRequest bad = r;
  bad.min_tokens = -1;
  EXPECT_THROW(generate(*model_, {bad}), Error);
}

namespace {
// Bans one token and records every context it is shown.
struct BanToken : LogitsProcessor {
  int32_t banned;
  std::vector<std::vector<int32_t>> contexts;
  explicit BanToken(int32_t b) : banned(b) {}
  void process(std::span<const int32_t> ctx, float* logits, int64_t n) override {
    contexts.emplace_back(ctx.begin(), ctx.end());
    ASSERT_EQ(n, 49152);
    logits[banned] = -INFINITY;
  }
};
// Takes over the choice: always the same token.
struct Always : LogitsProcessor {
  int32_t token;
  int calls = 0;
  explicit Always(int32_t t) : token(t) {}
  void process(std::span<const int32_t>, float*, int64_t) override {}
  int32_t choose(std::span<const int32_t>, const float* probs, int64_t n) override {
    double s = 0;
    for (int64_t i = 0; i < n; ++i) s += probs[i];
    EXPECT_NEAR(s, 1.0, 1e-3);
    ++calls;
    return token;
  }
};
}  // namespace

TEST_F(Generate, LogitsProcessorHook) {
  const auto& c = (*golden_)["cases"][0];  // "The capital of France is" -> " Paris..."
  const auto prompt = c["prompt_ids"].get<std::vector<int32_t>>();
  const int32_t paris = c["generated_ids"][0];
  auto ban = std::make_shared<BanToken>(paris);
  GenerationRequest r;
  r.prompt = prompt;
  r.sampling.temperature = 0;
  r.max_tokens = 6;
  r.processor = ban;
  GenerationRequest plain = r;
  plain.processor = nullptr;
  // a batch with an unprocessed neighbour: the hook sees only its own sequence
  auto res = generate(*model_, {r, plain});
  ASSERT_EQ(res[0].tokens.size(), 6u);
  ASSERT_EQ(ban->contexts.size(), 6u);  // once per generated token
  for (size_t t = 0; t < 6; ++t) {
    std::vector<int32_t> want = prompt;
    for (size_t j = 0; j < t; ++j) want.push_back(res[0].tokens[j].token);
    EXPECT_EQ(ban->contexts[t], want) << "step " << t;
    EXPECT_NE(res[0].tokens[t].token, paris);
    // processed logprob is under the banned distribution, so it is >= the raw one
    EXPECT_GE(res[0].tokens[t].logprob, res[0].tokens[t].logprob_raw - 1e-6);
    for (const auto& a : res[0].tokens[t].top) EXPECT_NE(a.token, paris);
  }
  EXPECT_EQ(res[1].tokens[0].token, paris);
  EXPECT_NE(ids_of(res[0]), ids_of(res[1]));

  auto always = std::make_shared<Always>(paris);
  GenerationRequest forced = plain;
  forced.sampling.temperature = 0.8;
  forced.max_tokens = 4;
  forced.processor = always;
  auto f = generate(*model_, {forced})[0];
  EXPECT_EQ(ids_of(f), std::vector<int32_t>(4, paris));
  EXPECT_EQ(always->calls, 4);
}

TEST_F(Generate, StreamingPiecesConcatenateToText) {
  GenerationRequest r;
  r.prompt = model_->tokenizer->encode("Les élèves français aiment le café et les crêpes");
  r.sampling.seed = 5;
  r.max_tokens = 20;
  std::string streamed;
  GenerateOptions opts;
  opts.on_token = [&](size_t, const GeneratedToken&, const std::string& piece) { streamed += piece; };
  auto res = generate(*model_, {r}, opts)[0];
  EXPECT_EQ(streamed, res.text);
}

TEST_F(Generate, BadRequestsThrow) {
  GenerationRequest ok;
  ok.prompt = {1, 2, 3};
  ok.max_tokens = 1;
  auto bad = ok;
  bad.prompt = {};
  EXPECT_THROW(generate(*model_, {ok, bad}), Error);
  bad = ok;
  bad.prompt = {1, 49152};
  EXPECT_THROW(generate(*model_, {bad}), Error);
  bad = ok;
  bad.sampling.top_p = 0;
  EXPECT_THROW(generate(*model_, {bad}), Error);
  bad = ok;
  bad.max_tokens = -1;
  EXPECT_THROW(generate(*model_, {bad}), Error);
  bad = ok;
  bad.stop = {""};
  EXPECT_THROW(generate(*model_, {bad}), Error);
  bad = ok;
  bad.prompt.assign(size_t(model_->hparams.max_position + 1), 1);
  try {
    generate(*model_, {bad});
    FAIL() << "expected an error for a prompt longer than the context";
  } catch (const Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(std::to_string(model_->hparams.max_position + 1)), std::string::npos) << msg;
    EXPECT_NE(msg.find(std::to_string(model_->hparams.max_position)), std::string::npos) << msg;
  }
  GenerateOptions zero;
  zero.max_batch = 0;
  EXPECT_THROW(generate(*model_, {ok}, zero), Error);
}

// The online engine (serve/engine.h) and the step-at-a-time decoder under it (decode/batch_decoder.h), on
// the default model loaded without libtorch: requests that arrive while others decode give exactly the
// tokens generate() gives them alone; cancellation frees the slot at once; the queue is bounded;
// deadlines end a request with "timeout"; shutdown ends everything and calls every on_done.
#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <mutex>
#include <thread>

#include "retort/decode/batch_decoder.h"
#include "retort/model/runtime_model.h"
#include "retort/serve/engine.h"
#include "retort/text/tokenizer.h"
#include "test_util.h"

using namespace retort;
using namespace retort_test;
using namespace std::chrono_literals;

namespace {

std::vector<int32_t> ids_of(const GenerationResult& r) {
  std::vector<int32_t> out;
  for (const auto& t : r.tokens) out.push_back(t.token);
  return out;
}

// Collects on_done results from the scheduler thread.
struct Outcomes {
  std::mutex mu;
  std::condition_variable cv;
  std::map<int, GenerationResult> done;
  BatchDecoder::DoneFn sink(int i) {
    return [this, i](GenerationResult&& r) {
      std::lock_guard<std::mutex> lock(mu);
      done[i] = std::move(r);
      cv.notify_all();
    };
  }
  bool wait(size_t n, std::chrono::seconds limit = 120s) {
    std::unique_lock<std::mutex> lock(mu);
    return cv.wait_for(lock, limit, [&] { return done.size() >= n; });
  }
};

class EngineTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(smollm2_path())) return;
    model_ = new RuntimeLoaded(load_runtime_model(smollm2_path()));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model not found at " << smollm2_path() << " (run scripts/setup.sh)";
  }
  static GenerationRequest request(const std::string& text, int64_t max_tokens, double temperature, uint64_t seed) {
    GenerationRequest r;
    r.prompt = model_->tokenizer->encode(text);
    r.max_tokens = max_tokens;
    r.sampling.temperature = temperature;
    r.sampling.seed = seed;
    r.top_logprobs = 3;
    return r;
  }
  static RuntimeLoaded* model_;
};
RuntimeLoaded* EngineTest::model_ = nullptr;

}  // namespace

// Requests join a running batch at different steps (and one long prompt is prefilled in chunks while the
// others decode): each yields bit-for-bit what generate() gives it alone.
TEST_F(EngineTest, ArrivalsDuringDecodingEqualGeneratingAlone) {
  std::string long_text;
  for (int i = 0; i < 30; ++i) long_text += "Sentence number " + std::to_string(i) + " is about foxes and dogs. ";
  std::vector<GenerationRequest> reqs = {request("The capital of France is", 24, 0, 0),
                                         request("Once upon a time", 20, 0.8, 7),
                                         request(long_text, 12, 0, 0),
                                         request("def fib(n):", 16, 1.0, 11),
                                         request("Water boils at", 8, 0.7, 3)};
  reqs[0].ignore_eos = true;  // runs its 24 tokens: the others arrive while it decodes
  std::vector<GenerationResult> alone;
  for (const auto& r : reqs) alone.push_back(generate(*model_, {r})[0]);

  EngineOptions opts;
  opts.decoder.n_slots = 3;  // fewer slots than requests: some wait for a slot to free
  opts.decoder.max_len = 1024;
  opts.decoder.prefill_chunk = 64;  // the long prompt takes several steps
  opts.decoder.prefill_budget = 64;
  Engine engine(*model_, *model_->model, opts);
  Outcomes out;
  std::mutex step_mu;
  int64_t steps = 0, mixed_steps = 0;
  engine.on_step = [&](const EngineStep& s) {
    std::lock_guard<std::mutex> lock(step_mu);
    ++steps;
    if (s.decode_rows > 0 && s.prefill_tokens > 0) ++mixed_steps;
  };
  // Request 0 first; each later one once request 0 has generated two more tokens, so it arrives while
  // request 0 (at least) is decoding.
  std::atomic<int> first_tokens{0};
  ASSERT_TRUE(engine.submit(reqs[0], [&](const GeneratedToken&, const std::string&) { ++first_tokens; }, out.sink(0)));
  for (size_t i = 1; i < reqs.size(); ++i) {
    while (first_tokens.load() < int(2 * i)) std::this_thread::sleep_for(1ms);
    ASSERT_TRUE(engine.submit(reqs[i], nullptr, out.sink(int(i))).has_value());
  }
  ASSERT_TRUE(out.wait(reqs.size()));
  for (size_t i = 0; i < reqs.size(); ++i) {
    const GenerationResult& r = out.done[int(i)];
    EXPECT_EQ(ids_of(r), ids_of(alone[i])) << "request " << i;
    EXPECT_EQ(r.text, alone[i].text) << "request " << i;
    EXPECT_EQ(r.finish_reason, alone[i].finish_reason);
    ASSERT_EQ(r.tokens.size(), alone[i].tokens.size());
    for (size_t t = 0; t < r.tokens.size(); ++t) {
      EXPECT_EQ(r.tokens[t].logprob_raw, alone[i].tokens[t].logprob_raw) << "request " << i << " token " << t;
      ASSERT_EQ(r.tokens[t].top_raw.size(), 3u);
      EXPECT_EQ(r.tokens[t].top_raw[2].logprob, alone[i].tokens[t].top_raw[2].logprob);
    }
  }
  std::lock_guard<std::mutex> lock(step_mu);
  EXPECT_GT(mixed_steps, 0) << "no step prefilled a new request while others decoded (" << steps << " steps)";
}

// A cancelled request's slot is free for the next one at once; the queued request then runs.
TEST_F(EngineTest, CancelFreesTheSlot) {
  EngineOptions opts;
  opts.decoder.n_slots = 1;
  opts.decoder.max_len = 4096;
  Engine engine(*model_, *model_->model, opts);
  Outcomes out;
  GenerationRequest endless = request("Count: 1, 2, 3,", 4000, 0, 0);
  endless.ignore_eos = true;
  std::atomic<int> tokens{0};
  const auto a = engine.submit(endless, [&](const GeneratedToken&, const std::string&) { ++tokens; }, out.sink(0));
  const auto b = engine.submit(request("Hello", 4, 0, 0), nullptr, out.sink(1));
  ASSERT_TRUE(a && b);
  while (tokens.load() < 3) std::this_thread::sleep_for(1ms);
  EXPECT_EQ(engine.running(), 1u);
  EXPECT_EQ(engine.queued(), 1u);
  engine.cancel(*a);
  ASSERT_TRUE(out.wait(2, 60s));
  EXPECT_EQ(out.done[0].finish_reason, "cancelled");
  EXPECT_GE(out.done[0].tokens.size(), 3u);
  EXPECT_LT(out.done[0].tokens.size(), 4000u);
  EXPECT_EQ(out.done[1].tokens.size(), 4u);
}

TEST_F(EngineTest, BoundedQueueRefusesWhenFull) {
  EngineOptions opts;
  opts.decoder.n_slots = 1;
  opts.decoder.max_len = 4096;
  opts.max_queue = 2;
  Engine engine(*model_, *model_->model, opts);
  Outcomes out;
  GenerationRequest endless = request("Count: 1, 2, 3,", 4000, 0, 0);
  endless.ignore_eos = true;
  std::atomic<int> tokens{0};
  const auto a = engine.submit(endless, [&](const GeneratedToken&, const std::string&) { ++tokens; }, out.sink(0));
  ASSERT_TRUE(a);
  while (tokens.load() < 1) std::this_thread::sleep_for(1ms);  // a holds the only slot
  const auto b = engine.submit(request("Hi", 2, 0, 0), nullptr, out.sink(1));
  const auto c = engine.submit(request("Hi", 2, 0, 0), nullptr, out.sink(2));
  const auto d = engine.submit(request("Hi", 2, 0, 0), nullptr, out.sink(3));
  EXPECT_TRUE(b && c);
  EXPECT_FALSE(d) << "a third waiting request must be refused (max_queue 2)";
  engine.cancel(*a);
  ASSERT_TRUE(out.wait(3, 60s));
  EXPECT_EQ(out.done.count(3), 0u) << "a refused request's callbacks must never run";
}

TEST_F(EngineTest, DeadlineEndsWithTimeout) {
  EngineOptions opts;
  opts.decoder.n_slots = 2;
  opts.decoder.max_len = 4096;
  Engine engine(*model_, *model_->model, opts);
  Outcomes out;
  GenerationRequest endless = request("Count: 1, 2, 3,", 4000, 0, 0);
  endless.ignore_eos = true;
  ASSERT_TRUE(engine.submit(endless, nullptr, out.sink(0), Engine::Clock::now() + 300ms));
  ASSERT_TRUE(out.wait(1, 60s));
  EXPECT_EQ(out.done[0].finish_reason, "timeout");
  EXPECT_GT(out.done[0].tokens.size(), 0u);
  EXPECT_LT(out.done[0].tokens.size(), 4000u);
}

TEST_F(EngineTest, InvalidRequestsAreRefusedBeforeQueueing) {
  EngineOptions opts;
  opts.decoder.n_slots = 1;
  opts.decoder.max_len = 64;
  Engine engine(*model_, *model_->model, opts);
  GenerationRequest empty;
  expect_error([&] { engine.submit(empty, nullptr, nullptr); }, {"prompt is empty"});
  GenerationRequest too_long = request(std::string(400, 'a') + " b c d e f g h", 4, 0, 0);
  expect_error([&] { engine.submit(too_long, nullptr, nullptr); }, {"context is 64 tokens"});
  GenerationRequest bad = request("Hi", 4, -1, 0);
  expect_error([&] { engine.submit(bad, nullptr, nullptr); }, {"temperature"});
  EXPECT_EQ(engine.queued(), 0u);
}

// Shutdown stops accepting, lets running requests go on until the deadline, then cancels them; every
// accepted request's on_done has been called when it returns.
TEST_F(EngineTest, ShutdownCancelsAtTheDeadlineAndCallsEveryDone) {
  EngineOptions opts;
  opts.decoder.n_slots = 2;
  opts.decoder.max_len = 4096;
  auto engine = std::make_unique<Engine>(*model_, *model_->model, opts);
  Outcomes out;
  GenerationRequest endless = request("Count: 1, 2, 3,", 4000, 0, 0);
  endless.ignore_eos = true;
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(engine->submit(endless, nullptr, out.sink(i)));
  ASSERT_TRUE(engine->submit(request("Hi", 1, 0, 0), nullptr, out.sink(3)));
  std::this_thread::sleep_for(50ms);
  const auto t0 = Engine::Clock::now();
  engine->shutdown(t0 + 200ms);
  EXPECT_LT(Engine::Clock::now() - t0, 5s);
  EXPECT_FALSE(engine->submit(request("Hi", 1, 0, 0), nullptr, out.sink(9)));
  std::lock_guard<std::mutex> lock(out.mu);
  EXPECT_EQ(out.done.size(), 4u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(out.done[i].finish_reason, "cancelled") << i;
}

// The crawl monitor's prompt embedding: summed from the prefill's own final hidden states (chunked, while
// other rows decode), it equals the mean of the prompt's final hidden states from a separate forward.
TEST_F(EngineTest, PromptEmbeddingIsTheMeanFinalHiddenState) {
  std::string long_text;
  for (int i = 0; i < 12; ++i) long_text += "Sentence number " + std::to_string(i) + " is about rivers. ";
  BatchDecoderOptions opts;
  opts.n_slots = 2;
  opts.max_len = 512;
  opts.prefill_chunk = 16;  // the long prompt is summed over several steps
  opts.prefill_budget = 16;
  BatchDecoder dec(*model_, *model_->model, opts);
  std::vector<GenerationRequest> reqs = {request("The capital of France is", 8, 0, 0), request(long_text, 4, 0, 0),
                                         request("No embedding asked", 4, 0, 0)};
  reqs[0].want_prompt_embedding = reqs[1].want_prompt_embedding = true;
  Outcomes out;
  for (size_t i = 0; i < reqs.size(); ++i) dec.add(reqs[i], nullptr, out.sink(int(i)));
  while (!dec.idle()) dec.step();
  ASSERT_EQ(out.done.size(), 3u);
  EXPECT_TRUE(out.done[2].prompt_embedding.empty());
  const int64_t E = model_->hparams.n_embd;
  for (int i = 0; i < 2; ++i) {
    const auto& prompt = reqs[size_t(i)].prompt;
    ASSERT_EQ(int64_t(out.done[i].prompt_embedding.size()), E);
    auto cache = model_->model->new_cache(1, 512);
    std::vector<int64_t> toks(prompt.begin(), prompt.end());
    std::vector<float> hidden;
    model_->model->forward_rows(toks.data(), 1, int64_t(toks.size()), {0}, {int64_t(toks.size())}, *cache,
                                /*last_only=*/false, /*hidden_only=*/true, hidden);
    double max_err = 0, max_abs = 0;
    for (int64_t e = 0; e < E; ++e) {
      double mean = 0;
      for (size_t t = 0; t < prompt.size(); ++t) mean += hidden[t * size_t(E) + size_t(e)];
      mean /= double(prompt.size());
      max_err = std::max(max_err, std::abs(mean - double(out.done[i].prompt_embedding[size_t(e)])));
      max_abs = std::max(max_abs, std::abs(mean));
    }
    // Rows are batch-invariant (cpu_kernels.h); only the float32 sum's order differs: T·ε·max|h|.
    EXPECT_LE(max_err, double(prompt.size()) * 1.2e-7 * max_abs + 1e-6) << "request " << i;
  }
}

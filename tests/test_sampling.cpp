// Sampling: truncation against Hugging Face's logits warpers (golden from
// tests/data/decode/make_sampling_golden.py), a float64 recomputation at full vocabulary size,
// chi-square of seeded draws, determinism, greedy ties, logprobs and the processor hook.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>

#include "retort/decode/logits_processor.h"
#include "retort/decode/sampling.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

using namespace retort;

namespace {

std::vector<float> random_logits(int64_t n, double scale, uint32_t seed) {
  std::mt19937 gen(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(n);
  for (auto& v : x) v = nd(gen) * static_cast<float>(scale);
  return x;
}

// float64 reference: temperature, top-k (ties with the k-th kept), top-p, min-p by full sort.
std::map<int32_t, double> reference(const std::vector<float>& logits, const SamplingParams& p) {
  const int64_t n = logits.size();
  std::vector<double> x(n);
  for (int64_t i = 0; i < n; ++i) x[i] = static_cast<double>(logits[i]) / p.temperature;
  std::vector<int32_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return x[a] > x[b]; });
  std::vector<bool> keep(n, true);
  if (p.top_k > 0 && p.top_k < n) {
    const double kth = x[order[p.top_k - 1]];
    for (int64_t i = 0; i < n; ++i) keep[i] = x[i] >= kth;
  }
  auto probs = [&]() {
    double m = x[order[0]], z = 0;
    std::vector<double> q(n, 0.0);
    for (int64_t i = 0; i < n; ++i)
      if (keep[i]) z += std::exp(x[i] - m);
    for (int64_t i = 0; i < n; ++i)
      if (keep[i]) q[i] = std::exp(x[i] - m) / z;
    return q;
  };
  if (p.top_p < 1) {
    auto q = probs();
    double above = 0;
    for (int32_t v : order) {
      if (!keep[v]) continue;
      if (above >= p.top_p) keep[v] = false;
      above += q[v];
    }
  }
  if (p.min_p > 0) {
    auto q = probs();
    const double pmax = q[order[0]];
    for (int64_t i = 0; i < n; ++i)
      if (q[i] < p.min_p * pmax) keep[i] = false;
  }
  auto q = probs();
  std::map<int32_t, double> out;
  for (int64_t i = 0; i < n; ++i)
    if (keep[i]) out[static_cast<int32_t>(i)] = q[i];
  return out;
}

std::map<int32_t, double> as_map(const SamplingDistribution& d) {
  std::map<int32_t, double> out;
  for (size_t i = 0; i < d.tokens.size(); ++i) out[d.tokens[i]] = d.probs[i];
  return out;
}

// Tolerance of a probability retort computes against the float64 reference. retort forms
// w = exp((logit - max) / T) in float32 (sampling.cpp): the argument a = x - m carries one rounding of
// |a| 2^-24 from the subtraction and one from the scaling, the exponential ~2 ulp (cpu_kernels.h), and the
// normaliser, a w-weighted mean of such errors, a few more. |a| = log(p_max / p) <= -log p, so
//   |p_retort - p| <= p (16 - log p) 2^-23   (+ 1e-12 for float64 rounding of tiny p)
// holds on any x86-64 CPU, vector or scalar path.
double float32_tolerance(double p) { return 1e-12 + p * (16.0 - std::log(std::max(p, 1e-300))) * 0x1p-23; }

void expect_same_distribution(const std::map<int32_t, double>& got, const std::map<int32_t, double>& want,
                              const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (const auto& [tok, pr] : want) {
    auto it = got.find(tok);
    ASSERT_TRUE(it != got.end()) << what << ": token " << tok << " missing";
    EXPECT_NEAR(it->second, pr, float32_tolerance(pr)) << what << ": token " << tok;
  }
}

}  // namespace

TEST(Sampling, MatchesTransformersWarpers) {
  const auto j = nlohmann::json::parse(read_file(std::string(RETORT_TEST_DATA) + "/decode/sampling_golden.json"));
  const int64_t n = j["n_vocab"];
  std::vector<std::vector<float>> logit_sets;
  for (const auto& l : j["logits"]) logit_sets.push_back(l.get<std::vector<float>>());
  int n_cases = 0;
  for (const auto& c : j["cases"]) {
    SamplingParams p;
    p.temperature = c["params"]["temperature"];
    p.top_k = c["params"]["top_k"];
    p.top_p = c["params"]["top_p"];
    p.min_p = c["params"]["min_p"];
    const auto& logits = logit_sets.at(c["logits_index"].get<size_t>());
    std::map<int32_t, double> want;
    for (const auto& kv : c["kept"]) want[kv[0].get<int32_t>()] = kv[1].get<double>();
    SamplingDistribution d = make_distribution(logits.data(), n, p);
    expect_same_distribution(as_map(d), want, c.dump().substr(0, 120));
    // dense view agrees and sums to 1
    double s = 0;
    for (float v : d.dense) s += v;
    EXPECT_NEAR(s, 1.0, 1e-5);
    ++n_cases;
  }
  EXPECT_GE(n_cases, 30);
}

TEST(Sampling, FullVocabularyMatchesFloat64Reference) {
  const int64_t n = 49152;
  const std::vector<SamplingParams> params = {
      {1.0, 0, 1.0, 0.0, 0},   {0.5, 0, 1.0, 0.0, 0},  {1.0, 0, 0.9, 0.0, 0},   {1.0, 0, 0.999, 0.0, 0},
      {0.7, 100, 0.9, 0.0, 0}, {1.0, 0, 1.0, 0.01, 0}, {1.2, 1000, 0.95, 0.002, 0}, {1.0, 1, 1.0, 0.0, 0},
  };
  for (double scale : {1.0, 5.0}) {
    auto logits = random_logits(n, scale, 7);
    for (const auto& p : params) {
      SamplingDistribution d = make_distribution(logits.data(), n, p);
      expect_same_distribution(as_map(d), reference(logits, p),
                               cat("T=", p.temperature, " k=", p.top_k, " p=", p.top_p, " min_p=", p.min_p,
                                   " scale=", scale));
    }
  }
}

TEST(Sampling, TemperatureIsSoftmaxOfScaledLogits) {
  auto logits = random_logits(1000, 2.0, 3);
  for (double t : {0.25, 1.0, 3.0}) {
    SamplingParams p;
    p.temperature = t;
    SamplingDistribution d = make_distribution(logits.data(), 1000, p);
    double m = *std::max_element(logits.begin(), logits.end()) / t, z = 0;
    for (float v : logits) z += std::exp(v / t - m);
    ASSERT_EQ(d.tokens.size(), 1000u);
    for (size_t i = 0; i < d.tokens.size(); ++i) {
      const int32_t v = d.tokens[i];
      const double want = std::exp(logits[v] / t - m) / z;
      EXPECT_NEAR(d.probs[i], want, float32_tolerance(want));
      EXPECT_NEAR(d.logprob(v, logits.data()), logits[v] / t - m - std::log(z), 1e-5);
    }
  }
}

TEST(Sampling, ChiSquareOfSeededDraws) {
  // Draw through the full per-step path (sample_token, step = counter) and compare the
  // empirical frequencies with the kept distribution. Fixed seeds make the test deterministic.
  auto logits = random_logits(5000, 1.5, 11);
  SamplingParams p;
  p.temperature = 0.9;
  p.top_k = 12;
  p.seed = 42;
  SamplingDistribution d = make_distribution(logits.data(), 5000, p);
  ASSERT_EQ(d.tokens.size(), 12u);
  const int n_draws = 24000;
  std::map<int32_t, int> count;
  std::vector<int32_t> ctx = {1, 2, 3};
  for (int s = 0; s < n_draws; ++s) {
    GeneratedToken g = sample_token(ctx, logits.data(), 5000, p, nullptr, s, 0);
    count[g.token]++;
  }
  double chi2 = 0;
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const double e = d.probs[i] * n_draws;
    const double o = count[d.tokens[i]];
    chi2 += (o - e) * (o - e) / e;
  }
  EXPECT_EQ(count.size(), 12u);  // never outside the support
  // df = 11; P[chi2 > 31.26] = 0.001.
  EXPECT_LT(chi2, 31.26);

  // Same over seeds at a fixed step (what a batch of requests with different seeds sees).
  std::map<int32_t, int> count2;
  for (int s = 0; s < n_draws; ++s) count2[sample_from(d, rng_uniform(1000 + s, 0))]++;
  double chi2b = 0;
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    const double e = d.probs[i] * n_draws, o = count2[d.tokens[i]];
    chi2b += (o - e) * (o - e) / e;
  }
  EXPECT_LT(chi2b, 31.26);
}

TEST(Sampling, UniformIsInRangeAndSpread) {
  double mean = 0;
  const int n = 100000;
  for (int i = 0; i < n; ++i) {
    const double u = rng_uniform(5, i);
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
    mean += u;
  }
  EXPECT_NEAR(mean / n, 0.5, 0.005);
  EXPECT_NE(rng_u64(1, 0), rng_u64(2, 0));
  EXPECT_NE(rng_u64(1, 0), rng_u64(1, 1));
}

TEST(Sampling, SeededRunsRepeatExactly) {
  auto logits = random_logits(49152, 3.0, 5);
  SamplingParams p;
  p.temperature = 1.0;
  p.top_p = 0.95;
  p.seed = 123;
  std::vector<int32_t> ctx = {7};
  std::vector<int32_t> a, b, c;
  for (int s = 0; s < 50; ++s) {
    a.push_back(sample_token(ctx, logits.data(), 49152, p, nullptr, s, 0).token);
    b.push_back(sample_token(ctx, logits.data(), 49152, p, nullptr, s, 0).token);
  }
  // Different step order (e.g. interleaved with other sequences) gives the same token per step.
  for (int s = 49; s >= 0; --s) c.insert(c.begin(), sample_token(ctx, logits.data(), 49152, p, nullptr, s, 0).token);
  EXPECT_EQ(a, b);
  EXPECT_EQ(a, c);
  p.seed = 124;
  std::vector<int32_t> d;
  for (int s = 0; s < 50; ++s) d.push_back(sample_token(ctx, logits.data(), 49152, p, nullptr, s, 0).token);
  EXPECT_NE(a, d);
}

TEST(Sampling, GreedyTieGoesToLowestIdAndReportsProcessedLogprob) {
  std::vector<float> logits = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f, 2.0f};
  SamplingParams p;
  p.temperature = 0;
  p.top_k = 1;  // ignored by greedy
  GeneratedToken g = sample_token(std::vector<int32_t>{}, logits.data(), 6, p, nullptr, 0, 3);
  EXPECT_EQ(g.token, 1);
  double z = 0;
  for (float v : logits) z += std::exp(static_cast<double>(v));
  EXPECT_NEAR(g.logprob, 2.0 - std::log(z), 1e-6);
  EXPECT_NEAR(g.logprob_raw, 2.0 - std::log(z), 1e-6);
  ASSERT_EQ(g.top_raw.size(), 3u);
  EXPECT_EQ(g.top_raw[0].token, 1);
  EXPECT_EQ(g.top_raw[1].token, 3);
  EXPECT_EQ(g.top_raw[2].token, 5);
  ASSERT_EQ(g.top.size(), 3u);
  EXPECT_EQ(g.top[2].token, 5);
  EXPECT_EQ(argmax(logits.data(), 6), 1);
}

TEST(Sampling, LogprobsRawAndProcessed) {
  auto logits = random_logits(2000, 2.0, 9);
  SamplingParams p;
  p.temperature = 0.8;
  p.top_k = 5;
  p.seed = 1;
  GeneratedToken g = sample_token(std::vector<int32_t>{1}, logits.data(), 2000, p, nullptr, 0, 8);
  double m = *std::max_element(logits.begin(), logits.end()), z = 0;
  for (float v : logits) z += std::exp(v - m);
  const double lse = m + std::log(z);
  EXPECT_NEAR(g.logprob_raw, logits[g.token] - lse, 1e-5);
  ASSERT_EQ(g.top_raw.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_NEAR(g.top_raw[i].logprob, logits[g.top_raw[i].token] - lse, 1e-5);
    if (i) {
      EXPECT_GE(g.top_raw[i - 1].logprob, g.top_raw[i].logprob);
    }
  }
  // processed: only the 5 kept tokens, renormalised over them at T = 0.8
  ASSERT_EQ(g.top.size(), 5u);
  auto ref = reference(logits, p);
  double total = 0;
  for (const auto& t : g.top) {
    ASSERT_TRUE(ref.count(t.token));
    EXPECT_NEAR(t.logprob, std::log(ref[t.token]), 1e-5);
    total += std::exp(t.logprob);
  }
  EXPECT_NEAR(total, 1.0, 1e-5);
  EXPECT_NEAR(g.logprob, std::log(ref.at(g.token)), 1e-5);
  for (size_t i = 0; i < 5; ++i) EXPECT_EQ(g.top[i].token, g.top_raw[i].token);
}

namespace {
struct Ban : LogitsProcessor {
  int32_t banned;
  std::vector<std::vector<int32_t>> seen;
  explicit Ban(int32_t b) : banned(b) {}
  void process(std::span<const int32_t> ctx, float* logits, int64_t) override {
    seen.emplace_back(ctx.begin(), ctx.end());
    logits[banned] = -INFINITY;
  }
};
struct Pick : Ban {
  int32_t pick;
  std::vector<float> last_probs;
  Pick(int32_t b, int32_t p) : Ban(b), pick(p) {}
  int32_t choose(std::span<const int32_t>, const float* probs, int64_t n) override {
    last_probs.assign(probs, probs + n);
    return pick;
  }
};
}  // namespace

TEST(Sampling, ProcessorBiasAndChoose) {
  std::vector<float> logits = {0.0f, 3.0f, 1.0f, 2.5f};
  SamplingParams greedy;
  greedy.temperature = 0;
  Ban ban(1);
  std::vector<int32_t> ctx = {9, 8};
  GeneratedToken g = sample_token(ctx, logits.data(), 4, greedy, &ban, 0, 4);
  EXPECT_EQ(g.token, 3);
  ASSERT_EQ(ban.seen.size(), 1u);
  EXPECT_EQ(ban.seen[0], ctx);
  // raw logprob still from the unprocessed logits; processed top excludes the banned token
  double zr = std::exp(0.0) + std::exp(3.0) + std::exp(1.0) + std::exp(2.5);
  EXPECT_NEAR(g.logprob_raw, 2.5 - std::log(zr), 1e-6);
  double zp = std::exp(0.0) + std::exp(1.0) + std::exp(2.5);
  EXPECT_NEAR(g.logprob, 2.5 - std::log(zp), 1e-6);
  EXPECT_EQ(g.top.size(), 3u);
  EXPECT_EQ(g.top_raw.size(), 4u);
  for (const auto& t : g.top) EXPECT_NE(t.token, 1);

  SamplingParams topk;
  topk.top_k = 2;
  Pick pick(1, 2);  // ban 1, then choose token 2
  g = sample_token(ctx, logits.data(), 4, topk, &pick, 0, 0);
  EXPECT_EQ(g.token, 2);
  ASSERT_EQ(pick.last_probs.size(), 4u);
  // final distribution: top-2 of {0, 1, 2.5} after ban = tokens 3 and 2
  EXPECT_EQ(pick.last_probs[1], 0.0f);
  EXPECT_EQ(pick.last_probs[0], 0.0f);
  EXPECT_NEAR(pick.last_probs[3], std::exp(2.5) / (std::exp(2.5) + std::exp(1.0)), 1e-6);
  EXPECT_NEAR(g.logprob, std::log(std::exp(1.0) / (std::exp(2.5) + std::exp(1.0))), 1e-6);
  Pick outside(1, 0);  // token 0 is outside the top-2 support
  g = sample_token(ctx, logits.data(), 4, topk, &outside, 0, 0);
  EXPECT_EQ(g.token, 0);
  EXPECT_TRUE(std::isinf(g.logprob) && g.logprob < 0);
  Pick bad(1, 4);
  EXPECT_THROW(sample_token(ctx, logits.data(), 4, topk, &bad, 0, 0), Error);
}

TEST(Sampling, BadInputThrows) {
  std::vector<float> logits = {0.0f, 1.0f};
  auto with = [](auto f) {
    SamplingParams p;
    f(p);
    return p;
  };
  EXPECT_THROW(make_distribution(logits.data(), 2, with([](auto& p) { p.temperature = -1; })), Error);
  EXPECT_THROW(make_distribution(logits.data(), 2, with([](auto& p) { p.top_k = -2; })), Error);
  EXPECT_THROW(make_distribution(logits.data(), 2, with([](auto& p) { p.top_p = 0; })), Error);
  EXPECT_THROW(make_distribution(logits.data(), 2, with([](auto& p) { p.top_p = 1.5; })), Error);
  EXPECT_THROW(make_distribution(logits.data(), 2, with([](auto& p) { p.min_p = -0.1; })), Error);
  EXPECT_THROW(make_distribution(logits.data(), 2, with([](auto& p) { p.temperature = NAN; })), Error);
  std::vector<float> nan = {0.0f, NAN};
  EXPECT_THROW(make_distribution(nan.data(), 2, SamplingParams{}), Error);
  std::vector<float> banned = {-INFINITY, -INFINITY};
  EXPECT_THROW(make_distribution(banned.data(), 2, SamplingParams{}), Error);
  try {
    make_distribution(logits.data(), 2, with([](auto& p) { p.top_p = 2; }));
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("top_p"), std::string::npos);
  }
}

TEST(Sampling, BannedTokensAreNeverSampled) {
  auto logits = random_logits(100, 1.0, 2);
  for (int i = 0; i < 100; i += 2) logits[i] = -INFINITY;
  SamplingParams p;
  p.seed = 3;
  for (int s = 0; s < 500; ++s) {
    GeneratedToken g = sample_token(std::vector<int32_t>{}, logits.data(), 100, p, nullptr, s, 5);
    ASSERT_EQ(g.token % 2, 1);
    for (const auto& t : g.top) ASSERT_EQ(t.token % 2, 1);
  }
}

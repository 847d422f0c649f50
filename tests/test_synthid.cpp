// SynthID-Text against Hugging Face transformers (golden: tests/data/synthid/make_golden.py):
// sampling table, g-values, context-repetition and EOS masks, mean / weighted-mean scores,
// the tournament distribution as transformers' processor leaves it, detection of text
// watermarked by transformers' generate(), and of text watermarked by retort. Plus the
// tournament's law against an explicit knock-out tournament, choose()'s empirical draw
// frequencies, the statistics against brute-force enumeration, configs and keys.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>

#include "retort/decode/generate.h"
#include "retort/model/loader.h"
#include "retort/protect/synthid.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/stats.h"

using namespace retort;
using json = nlohmann::json;

namespace {

const json& golden() {
  static json g = json::parse(read_file(std::string(RETORT_TEST_DATA) + "/synthid/synthid_golden.json"));
  return g;
}

SynthIdConfig config_of(const json& c) {
  SynthIdConfig cfg = synthid_config_from_json(c.dump(), "golden config");
  return cfg;
}

std::shared_ptr<const SynthIdScheme> scheme_of(const std::string& name) {
  return std::make_shared<SynthIdScheme>(config_of(golden()["configs"][name]["config"]));
}

std::vector<int32_t> ints(const json& j) { return j.get<std::vector<int32_t>>(); }

std::string default_model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base =
      home && *home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

}  // namespace

TEST(SynthId, SamplingTableMatchesTorch) {
  for (const auto& [name, rec] : golden()["configs"].items()) {
    SynthIdScheme s(config_of(rec["config"]));
    int64_t ones = 0;
    for (uint8_t t : s.table()) ones += t;
    EXPECT_EQ(ones, rec["table_ones"].get<int64_t>()) << name;
    auto head = rec["table_head"].get<std::vector<int>>();
    for (size_t i = 0; i < head.size(); i++) ASSERT_EQ(s.table()[i], head[i]) << name << " entry " << i;
  }
}

TEST(SynthId, GValuesMasksAndScoresMatchTransformers) {
  int checked = 0;
  for (const auto& [name, rec] : golden()["configs"].items()) {
    SynthIdScheme s(config_of(rec["config"]));
    const int m = s.depth(), n = s.ngram_len();
    for (const auto& seq : rec["sequences"]) {
      std::vector<int32_t> tokens = ints(seq["tokens"]);
      std::vector<uint8_t> g = s.sequence_g_values(tokens);
      const auto& want = seq["g_values"];
      ASSERT_EQ(g.size(), want.size() * m) << name;
      for (size_t i = 0; i < want.size(); i++)
        for (int d = 0; d < m; d++) ASSERT_EQ(g[i * m + d], want[i][d].get<int>()) << name << " pos " << i << " layer " << d;
      std::vector<uint8_t> rep = s.context_repetition_mask(tokens);
      EXPECT_EQ(std::vector<int>(rep.begin(), rep.end()), seq["repetition_mask"].get<std::vector<int>>()) << name;
      std::vector<uint8_t> eos = synthid_eos_mask(tokens, 2);
      std::vector<int> eos_tail(eos.begin() + std::min<size_t>(eos.size(), n - 1), eos.end());
      EXPECT_EQ(eos_tail, seq["eos_mask"].get<std::vector<int>>()) << name;
      SynthIdScore sc = synthid_score(s, tokens, 2);
      if (seq.contains("mean")) {
        ASSERT_FALSE(sc.too_short);
        EXPECT_NEAR(sc.mean, seq["mean"].get<double>(), 1e-6) << name;
        EXPECT_NEAR(sc.weighted_mean, seq["weighted_mean"].get<double>(), 1e-6) << name;
        checked++;
      } else {
        EXPECT_TRUE(sc.too_short);
      }
    }
  }
  EXPECT_GE(checked, 15);
}

TEST(SynthId, TournamentMatchesTransformersProcessor) {
  for (const auto& c : golden()["tournament"]) {
    auto s = scheme_of(c["config"]);
    if (c["config"] == "b") {  // the golden ran config b with skip_first_ngram_calls
      SynthIdConfig cfg = s->config();
      cfg.skip_first_ngram_calls = true;
      s = std::make_shared<SynthIdScheme>(cfg);
    }
    std::vector<int32_t> prompt = ints(c["prompt"]), gen = ints(c["generated"]);
    SynthIdProcessor proc(s, /*seed=*/1, /*prompt_len=*/static_cast<int64_t>(prompt.size()));
    int unchanged = 0;
    for (size_t t = 0; t < gen.size(); t++) {
      std::vector<int32_t> ctx = prompt;
      ctx.insert(ctx.end(), gen.begin(), gen.begin() + t);
      auto in = c["steps"][t]["probs_in"].get<std::vector<double>>();
      auto out = c["steps"][t]["probs_out"].get<std::vector<double>>();
      std::vector<double> q = proc.distribution(ctx, in);
      bool same = true;
      for (size_t v = 0; v < q.size(); v++) {
        ASSERT_NEAR(q[v], out[v], 1e-12) << "config " << c["config"] << " step " << t << " token " << v;
        same = same && std::abs(in[v] - out[v]) < 1e-15;
      }
      unchanged += same;
    }
    EXPECT_GE(unchanged, 1) << "the golden should include an unwatermarked (repeated-context) step";
  }
}

// The vectorised update equals the law of the winner of an explicit knock-out tournament:
// winner_d(v) = Σ_u 2 P_{d-1}(v) P_{d-1}(u) · [1 if g_d(v) > g_d(u), 1/2 if equal, 0 otherwise].
TEST(SynthId, TournamentIsTheKnockOutLaw) {
  SynthIdConfig cfg;
  cfg.keys = {11, 22, 33};
  cfg.ngram_len = 3;
  SynthIdScheme s(cfg);
  const int V = 7, m = 3;
  std::vector<double> p = {0.3, 0.2, 0.0, 0.15, 0.15, 0.1, 0.1};
  for (uint64_t trial = 0; trial < 20; trial++) {
    std::vector<int32_t> ctx = {static_cast<int32_t>(trial), 5};
    uint64_t h = s.context_hash(ctx);
    std::vector<std::vector<uint8_t>> g(V, std::vector<uint8_t>(m));
    for (int v = 0; v < V; v++) s.g_values(h, v, g[v].data());
    std::vector<double> law = p;
    for (int d = 0; d < m; d++) {
      std::vector<double> next(V, 0);
      for (int v = 0; v < V; v++)
        for (int u = 0; u < V; u++) {
          double w = g[v][d] > g[u][d] ? 1.0 : g[v][d] == g[u][d] ? 0.5 : 0.0;
          next[v] += 2 * law[v] * law[u] * w;
        }
      law = next;
    }
    std::vector<double> q = p;
    s.tournament(h, q);
    for (int v = 0; v < V; v++) EXPECT_NEAR(q[v], law[v], 1e-12) << "trial " << trial << " token " << v;
  }
}

// m = 1: choose() draws from q(v) = p(v) (1 + g(v) − Σ_u g(u) p(u)). Empirical frequencies over
// many seeds (one draw each) against the analytic law, 5 standard errors.
TEST(SynthId, ChooseSamplesTheTournamentDistribution) {
  SynthIdConfig cfg;
  cfg.keys = {424242};
  cfg.ngram_len = 2;
  auto s = std::make_shared<SynthIdScheme>(cfg);
  const int V = 6;
  std::vector<float> pf = {0.35f, 0.25f, 0.2f, 0.1f, 0.07f, 0.03f};
  std::vector<int32_t> ctx = {9, 17, 3};
  uint64_t h = s->context_hash(std::vector<int32_t>{3});
  double G = 0;
  std::vector<uint8_t> g(V);
  for (int v = 0; v < V; v++) {
    s->g_values(h, v, &g[v]);
    G += g[v] * double(pf[v]);
  }
  ASSERT_GT(G, 0.05);
  ASSERT_LT(G, 0.95);  // both g classes present, so the tournament changes something
  const int draws = 40000;
  std::vector<int> count(V, 0);
  for (int i = 0; i < draws; i++) {
    SynthIdProcessor proc(s, /*seed=*/1000 + i);
    count[proc.choose(ctx, pf.data(), V)]++;
  }
  for (int v = 0; v < V; v++) {
    double q = pf[v] * (1 + g[v] - G);
    double se = std::sqrt(q * (1 - q) / draws);
    EXPECT_NEAR(count[v] / double(draws), q, 5 * se + 1e-9) << "token " << v;
  }
}

TEST(SynthId, StatisticsAgainstEnumeration) {
  // 4 positions x 3 layers, π = 0.47: all 2^12 outcomes enumerated.
  const int N = 4, m = 3;
  const double pi = 0.47;
  std::vector<double> w = {2.0, 1.0, 0.5};
  std::vector<double> wn = w;  // normalised to sum m, as synthid_score_g does
  double ws = 0;
  for (double x : w) ws += x;
  for (double& x : wn) x *= m / ws;
  for (int observed = 0; observed < (1 << (N * m)); observed += 97) {
    std::vector<uint8_t> g(N * m), mask(N, 1);
    for (int b = 0; b < N * m; b++) g[b] = (observed >> b) & 1;
    SynthIdScore sc = synthid_score_g(g, mask, m, pi, w);
    double obs_w = sc.weighted_mean * m * N;
    double p_mean = 0, p_w = 0;
    for (int o = 0; o < (1 << (N * m)); o++) {
      int ones = __builtin_popcount(o);
      double pr = std::pow(pi, ones) * std::pow(1 - pi, N * m - ones);
      double sw = 0;
      for (int b = 0; b < N * m; b++)
        if ((o >> b) & 1) sw += wn[b % m];
      if (ones >= sc.ones) p_mean += pr;
      if (sw >= obs_w - 1e-9) p_w += pr;
    }
    EXPECT_NEAR(sc.mean_log10_p, std::log10(p_mean), 1e-9) << observed;
    EXPECT_GE(sc.weighted_log10_p, std::log10(p_w) - 1e-9) << "Chernoff must not undercut the exact tail, " << observed;
    if (observed == 0) EXPECT_EQ(sc.weighted_log10_p, 0.0);
  }
  // All ones: exact π^(N m) for both.
  std::vector<uint8_t> ones(N * m, 1), mask(N, 1);
  SynthIdScore all = synthid_score_g(ones, mask, m, pi, w);
  EXPECT_NEAR(all.mean_log10_p, N * m * std::log10(pi), 1e-9);
  EXPECT_NEAR(all.weighted_log10_p, N * m * std::log10(pi), 1e-9);
  // Nothing unmasked: no test.
  std::vector<uint8_t> none(N, 0);
  EXPECT_TRUE(synthid_score_g(ones, none, m, pi).too_short);

  // Pooling documents (the per-account test) is the mean test on all their g-values at once:
  // two documents pooled == one document holding both, enumerated above the same way.
  std::vector<uint8_t> g1(N * m), g2(N * m), both;
  for (int b = 0; b < N * m; b++) g1[b] = (0x5a3 >> b) & 1, g2[b] = (0x1c7 >> b) & 1;
  both = g1;
  both.insert(both.end(), g2.begin(), g2.end());
  std::vector<uint8_t> mask2(2 * N, 1);
  const SynthIdScore docs[3] = {synthid_score_g(g1, mask, m, pi), synthid_score_g(g2, mask, m, pi),
                                synthid_score_g(ones, none, m, pi)};  // the third is too short: adds nothing
  const SynthIdPooled pooled = synthid_pool(docs);
  const SynthIdScore joint = synthid_score_g(both, mask2, m, pi);
  EXPECT_EQ(pooled.documents, 2);
  EXPECT_EQ(pooled.ones, joint.ones);
  EXPECT_EQ(pooled.g_values, 2 * N * m);
  EXPECT_NEAR(pooled.log10_p, joint.mean_log10_p, 1e-12);
  EXPECT_TRUE(synthid_pool(std::span<const SynthIdScore>(docs + 2, 1)).too_short);
}

TEST(SynthId, DetectsTextWatermarkedByTransformers) {
  const json& g = golden();
  if (!g.contains("hf_generated")) GTEST_SKIP() << "golden made without the model";
  auto s = scheme_of("gen");
  const int32_t eos = g["hf_generated"]["eos_id"].get<int32_t>();
  for (const auto& rec : g["hf_generated"]["watermarked"]) {
    SynthIdScore sc = synthid_score(*s, ints(rec["tokens"]), eos);
    EXPECT_NEAR(sc.mean, rec["mean"].get<double>(), 1e-6);
    EXPECT_NEAR(sc.weighted_mean, rec["weighted_mean"].get<double>(), 1e-6);
    EXPECT_LT(sc.mean_p, 1e-3) << "mean " << sc.mean << " over " << sc.scored << " positions";
    EXPECT_LT(sc.weighted_p, 1e-3) << "weighted mean " << sc.weighted_mean;
  }
  for (const auto& rec : g["hf_generated"]["plain"]) {
    SynthIdScore sc = synthid_score(*s, ints(rec["tokens"]), eos);
    EXPECT_NEAR(sc.mean, rec["mean"].get<double>(), 1e-6);
    EXPECT_GT(sc.mean_p, 1e-3) << "unwatermarked text must not look watermarked";
    EXPECT_GT(sc.weighted_p, 1e-3);
  }
}

TEST(SynthId, TextWatermarkedByRetortIsScoredLikeTransformers) {
  const json& g = golden();
  if (!std::filesystem::exists(default_model_path())) GTEST_SKIP() << "default model not found at " << default_model_path();
  LoadedModel model = load_model(default_model_path());
  auto s = scheme_of("gen");
  const char* questions[] = {"Write a short story about a lighthouse keeper.", "Explain how rain forms.",
                             "Describe your favourite city and why you like it."};
  std::vector<GenerationRequest> reqs;
  for (int i = 0; i < 3; i++) {
    GenerationRequest r;
    r.prompt = model.tokenizer->encode(
        std::string("<|im_start|>user\n") + questions[i] + "<|im_end|>\n<|im_start|>assistant\n", true);
    r.sampling.temperature = 1.0;
    r.sampling.seed = 77 + i;
    r.max_tokens = 120;
    r.ignore_eos = true;
    r.processor = std::make_shared<SynthIdProcessor>(s, /*seed=*/500 + i, static_cast<int64_t>(r.prompt.size()));
    reqs.push_back(r);
  }
  auto results = generate(model, reqs);
  const int32_t eos = g.contains("hf_generated") ? g["hf_generated"]["eos_id"].get<int32_t>() : -1;
  json dump = {{"sequences", json::array()}};
  for (const auto& r : results) {
    std::vector<int32_t> ids;
    for (const auto& t : r.tokens) ids.push_back(t.token);
    dump["sequences"].push_back(ids);
    SynthIdScore sc = synthid_score(*s, ids, eos);
    EXPECT_LT(sc.mean_p, 1e-3) << "mean " << sc.mean << " over " << sc.scored << " positions: " << r.text;
  }
  if (const char* path = std::getenv("RETORT_SYNTHID_DUMP")) write_file_atomic(path, dump.dump());
  // transformers' scores of retort-watermarked tokens (recorded by make_golden.py from a dump).
  if (!g.contains("retort_scored_by_hf")) GTEST_SKIP() << "golden has no retort_scored_by_hf";
  int same_tokens = 0;
  const auto& hf = g["retort_scored_by_hf"]["sequences"];
  for (size_t i = 0; i < hf.size(); i++) {
    std::vector<int32_t> ids = ints(hf[i]["tokens"]);
    SynthIdScore sc = synthid_score(*s, ids, eos);
    EXPECT_NEAR(sc.mean, hf[i]["mean"].get<double>(), 1e-6);
    EXPECT_NEAR(sc.weighted_mean, hf[i]["weighted_mean"].get<double>(), 1e-6);
    std::vector<uint8_t> rep = s->context_repetition_mask(ids);
    EXPECT_EQ(std::vector<int>(rep.begin(), rep.end()), hf[i]["repetition_mask"].get<std::vector<int>>());
    EXPECT_LT(sc.mean_p, 1e-3);
    if (i < dump["sequences"].size() && dump["sequences"][i] == hf[i]["tokens"]) same_tokens++;
  }
  std::printf("retort regenerated %d of %zu recorded sequences token for token\n", same_tokens, hf.size());
}

TEST(SynthId, ConfigsKeysAndErrors) {
  EXPECT_EQ(parse_synthid_keys("654, 400,836"), (std::vector<int64_t>{654, 400, 836}));
  EXPECT_EQ(parse_synthid_keys("-5"), (std::vector<int64_t>{-5}));
  EXPECT_THROW(parse_synthid_keys("654,,1"), Error);
  EXPECT_THROW(parse_synthid_keys("12x"), Error);
  EXPECT_THROW(parse_synthid_keys(""), Error);

  SynthIdConfig c = synthid_config_from_json(R"({"watermarking_config": {"ngram_len": 4, "keys": [1, 2, 3],
      "sampling_table_size": 1000, "sampling_table_seed": 9, "context_history_size": 16}})", "gen_config.json");
  EXPECT_EQ(c.ngram_len, 4);
  EXPECT_EQ(c.keys, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(c.sampling_table_size, 1000);
  EXPECT_EQ(c.sampling_table_seed, 9u);
  EXPECT_EQ(c.context_history_size, 16);
  SynthIdConfig back = synthid_config_from_json(synthid_config_to_json(c), "roundtrip");
  EXPECT_EQ(back.keys, c.keys);
  EXPECT_EQ(back.sampling_table_seed, c.sampling_table_seed);
  try {
    synthid_config_from_json(R"({"ngram_len": 1, "keys": [1]})", "w.json");
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("w.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("ngram_len"), std::string::npos);
  }
  EXPECT_THROW(synthid_config_from_json(R"({"ngram_len": 5})", "w.json"), Error);
  EXPECT_THROW(synthid_config_from_json(R"({"ngram_len": 5, "keys": ["a"]})", "w.json"), Error);
  EXPECT_THROW(synthid_config_from_json("{nope", "w.json"), Error);
  EXPECT_THROW(synthid_config_from_json(R"({"ngram_len": 5, "keys": [1], "sampling_table_size": 0})", "w.json"), Error);

  WatermarkKey k1 = key_from_hex(std::string(64, 'a'), "test");
  WatermarkKey k2 = derive_account_key(k1, "alice");
  auto a = derive_synthid_keys(k1, 30), b = derive_synthid_keys(k1, 30), c2 = derive_synthid_keys(k2, 30);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c2);
  for (int64_t x : a) EXPECT_GE(x, 0);
  EXPECT_EQ(derive_synthid_keys(k1, 5), std::vector<int64_t>(a.begin(), a.begin() + 5));
  EXPECT_THROW(derive_synthid_keys(k1, 0), Error);

  SynthIdScheme s(c);
  std::vector<float> probs = {0.5f, 0.5f};
  SynthIdProcessor proc(std::make_shared<SynthIdScheme>(c), 1, /*prompt_len=*/5);
  std::vector<int32_t> short_ctx = {1, 2};
  EXPECT_THROW(proc.choose(short_ctx, probs.data(), 2), Error);
}

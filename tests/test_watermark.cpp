// Watermarks: the portable keyed hash against a Python re-implementation
// (tests/data/watermark/make_golden.py), keys, KGW and Gumbel embed/score consistency,
// detection with deduplication and exact p-values, per-account attribution, bad input.
// End-to-end checks generate with the default model (skipped when it is absent).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <sstream>

#include "retort/audit/watermark_detect.h"
#include "retort/decode/generate.h"
#include "retort/model/loader.h"
#include "retort/protect/gumbel.h"
#include "retort/protect/keyed_hash.h"
#include "retort/protect/keys.h"
#include "retort/protect/kgw.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "test_util.h"

using namespace retort;

namespace {

WatermarkKey test_key() {  // the KEY of make_golden.py
  WatermarkKey k;
  for (int i = 0; i < 32; ++i) k.bytes[i] = static_cast<uint8_t>((7 * i + 3) & 0xff);
  return k;
}

WatermarkKey key_with_byte(uint8_t b) {
  WatermarkKey k;
  k.bytes.fill(b);
  return k;
}

std::vector<int32_t> parse_ids(const std::string& s) {
  std::vector<int32_t> v;
  if (s == "-") return v;
  std::stringstream ss(s);
  std::string x;
  while (std::getline(ss, x, ',')) v.push_back(std::stoi(x));
  return v;
}

std::vector<uint8_t> parse_hex(const std::string& s) {
  std::vector<uint8_t> v;
  if (s == "-") return v;
  for (size_t i = 0; i + 1 < s.size(); i += 2) v.push_back(static_cast<uint8_t>(std::stoul(s.substr(i, 2), nullptr, 16)));
  return v;
}

std::string hex64(uint64_t h) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(h));
  return b;
}

std::string tmp_path(const std::string& name) {
  return (std::filesystem::temp_directory_path() / ("retort_wm_" + std::to_string(::getpid()) + "_" + name)).string();
}

}  // namespace

TEST(WatermarkHash, MatchesPythonReimplementation) {
  std::ifstream in(std::string(RETORT_TEST_DATA) + "/watermark/golden.txt");
  ASSERT_TRUE(in) << "missing tests/data/watermark/golden.txt (run make_golden.py)";
  const WatermarkKey key = test_key();
  const HashKey hk = key.hash_key();
  std::map<std::string, int> seen;
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string kind;
    ls >> kind;
    ++seen[kind];
    if (kind == "siphash") {
      std::string data, want;
      ls >> data >> want;
      auto bytes = parse_hex(data);
      EXPECT_EQ(hex64(siphash24(HashKey{0x0706050403020100ULL, 0x0f0e0d0c0b0a0908ULL}, bytes.data(), bytes.size())), want)
          << line;
    } else if (kind == "commit") {
      std::string k, want;
      ls >> k >> want;
      EXPECT_EQ(key_from_hex(k, "golden").commitment(), want) << line;
    } else if (kind == "account") {
      std::string m, id, want;
      ls >> m >> id >> want;
      EXPECT_EQ(key_to_hex(derive_account_key(key_from_hex(m, "golden"), id)), want) << line;
    } else if (kind == "hash") {
      uint64_t dom;
      std::string ctx, want;
      int32_t tok;
      ls >> dom >> ctx >> tok >> want;
      EXPECT_EQ(hex64(keyed_hash(hk, dom, parse_ids(ctx), tok)), want) << line;
    } else if (kind == "seed") {
      uint64_t dom;
      std::string ctx, want;
      ls >> dom >> ctx >> want;
      EXPECT_EQ(hex64(keyed_seed(hk, dom, parse_ids(ctx))), want) << line;
    } else if (kind == "stream") {
      uint64_t seed;
      uint32_t v;
      std::string want;
      ls >> seed >> v >> want;
      EXPECT_EQ(hex64(stream_hash(seed, v)), want) << line;
    } else if (kind == "hash64") {
      uint64_t dom, a, b;
      std::string want;
      ls >> dom >> a >> b >> want;
      EXPECT_EQ(hex64(keyed_hash_u64(hk, dom, a, b)), want) << line;
    } else if (kind == "kgw") {
      KgwConfig c;
      std::string ctx;
      int32_t tok;
      int want;
      ls >> c.context >> c.h >> c.gamma >> ctx >> tok >> want;
      EXPECT_EQ(kgw_is_green(hk, c, parse_ids(ctx), tok), want == 1) << line;
    } else if (kind == "gumbel") {
      GumbelConfig c;
      std::string ctx;
      int32_t tok;
      double want;
      ls >> c.h >> ctx >> tok >> want;
      EXPECT_EQ(gumbel_uniform(hk, c, parse_ids(ctx), tok), want) << line;
    }
  }
  for (const char* k : {"siphash", "commit", "account", "hash", "seed", "stream", "hash64", "kgw", "gumbel"}) EXPECT_GT(seen[k], 0) << k;
}

TEST(WatermarkHash, UniformAndThreshold) {
  EXPECT_EQ(green_threshold(0), 0u);
  EXPECT_EQ(green_threshold(0.25), uint64_t{1} << 62);
  EXPECT_EQ(green_threshold(0.5), uint64_t{1} << 63);
  EXPECT_EQ(green_threshold(1.0), UINT64_MAX);
  EXPECT_GT(hash_to_uniform(0), 0.0);
  EXPECT_LT(hash_to_uniform(UINT64_MAX), 1.0);
  EXPECT_TRUE(std::isfinite(std::log1p(-hash_to_uniform(UINT64_MAX))));
}

TEST(WatermarkKgw, GreenFractionAndProcessorAgreeWithScore) {
  const int64_t V = 49152;
  const HashKey hk = test_key().hash_key();
  for (const char* scheme : {"selfhash", "lefthash"}) {
    KgwConfig c;
    c.context = scheme;
    KgwProcessor proc(test_key(), c);
    for (int trial = 0; trial < 3; ++trial) {
      std::vector<int32_t> ctx = {100 + trial, 2000, 31 * trial, 4567};
      std::vector<uint8_t> green(V);
      kgw_green_mask(hk, c, ctx, V, green.data());
      int64_t n_green = 0;
      for (uint8_t g : green) n_green += g;
      // Bin(V, 0.25): sd = 96 tokens; allow 5 sd.
      EXPECT_NEAR(double(n_green), 0.25 * V, 5 * std::sqrt(V * 0.25 * 0.75)) << scheme;
      std::vector<float> logits(V, 0.5f);
      proc.process(ctx, logits.data(), V);
      for (int64_t v = 0; v < V; ++v)
        ASSERT_EQ(logits[v], green[v] ? 2.5f : 0.5f) << scheme << " token " << v;
    }
  }
  // lefthash depends only on the previous token; selfhash changes when a context token changes.
  KgwConfig left;
  left.context = "lefthash";
  std::vector<uint8_t> a(V), b(V);
  kgw_green_mask(hk, left, std::vector<int32_t>{5, 6, 7}, V, a.data());
  kgw_green_mask(hk, left, std::vector<int32_t>{9, 9, 7}, V, b.data());
  EXPECT_EQ(a, b);
}

TEST(WatermarkGumbel, ChooseIsArgmaxAndDistortionFree) {
  const HashKey hk = test_key().hash_key();
  GumbelConfig c;
  GumbelProcessor proc(test_key(), c);
  // Over many contexts, the keyed choice follows p (the scheme is distortion-free).
  const std::vector<float> p = {0.5f, 0.3f, 0.15f, 0.05f, 0.0f};
  std::vector<int> count(p.size(), 0);
  const int N = 20000;
  for (int i = 0; i < N; ++i) {
    std::vector<int32_t> ctx = {i, i / 7, 3, i % 11};
    int32_t t = proc.choose(ctx, p.data(), int64_t(p.size()));
    ASSERT_GE(t, 0);
    ASSERT_LT(t, 4) << "a zero-probability token was chosen";
    if (i < 50) {  // the rule itself: argmax ln(r_v)/p_v
      int32_t best = -1;
      double bv = -INFINITY;
      for (int v = 0; v < 4; ++v) {
        double val = std::log(gumbel_uniform(hk, c, ctx, v)) / p[v];
        if (val > bv) bv = val, best = v;
      }
      EXPECT_EQ(t, best);
    }
    ++count[t];
  }
  for (size_t v = 0; v < 4; ++v) {
    double sd = std::sqrt(N * p[v] * (1 - p[v]));
    EXPECT_NEAR(count[v], N * p[v], 5 * sd) << "token " << v;
  }
  // Shorter context than h: no choice, the sampler decides.
  EXPECT_EQ(proc.choose(std::vector<int32_t>{1, 2}, p.data(), int64_t(p.size())), -1);
}

// choose() skips the logarithm for candidates that cannot win (gumbel.h); on full-size
// vocabularies it must still pick the argmax over every token: peaked, flat and truncated
// distributions, each checked against the brute-force rule.
TEST(WatermarkGumbel, FilteredArgmaxEqualsFullArgmaxOnFullVocabulary) {
  const HashKey hk = test_key().hash_key();
  GumbelConfig c;
  GumbelProcessor proc(test_key(), c);
  const int64_t V = 49152;
  std::mt19937 rng(11);
  std::normal_distribution<double> normal;
  for (int trial = 0; trial < 60; ++trial) {
    const double spread = trial % 3 == 0 ? 0.0 : trial % 3 == 1 ? 1.0 : 4.0;  // flat, mild, peaked
    std::vector<double> x(V);
    double mx = -INFINITY, sum = 0;
    for (auto& v : x) mx = std::max(mx, v = spread * normal(rng));
    for (auto& v : x) sum += (v = std::exp(v - mx));
    std::vector<float> p(V);
    for (int64_t v = 0; v < V; ++v) p[v] = float(x[v] / sum);
    if (trial % 5 == 4)  // a truncated support (as after top-k / top-p)
      for (int64_t v = 0; v < V; ++v)
        if (v % 7 != 0) p[v] = 0;
    std::vector<int32_t> ctx = {trial, 17, 4 * trial, 99};
    int32_t best = -1;
    double bv = -INFINITY;
    for (int64_t v = 0; v < V; ++v) {
      if (!(p[v] > 0)) continue;
      double val = std::log(gumbel_uniform(hk, c, ctx, int32_t(v))) / double(p[v]);
      if (val > bv) bv = val, best = int32_t(v);
    }
    EXPECT_EQ(proc.choose(ctx, p.data(), V), best) << "trial " << trial;
  }
}

TEST(WatermarkDetect, DedupTooShortAndExactP) {
  const WatermarkKey key = test_key();
  DetectorConfig c;  // kgw selfhash, window 3
  std::vector<int32_t> rep;
  for (int i = 0; i < 50; ++i)
    for (int32_t t : {10, 20, 30, 40, 50}) rep.push_back(t);
  DetectionResult r = detect_tokens(key, c, rep);
  EXPECT_EQ(r.tokens, 250);
  EXPECT_EQ(r.tokens_scored, 5);  // five distinct (3-token window, token) pairs
  EXPECT_FALSE(r.too_short);
  c.dedup = false;
  EXPECT_EQ(detect_tokens(key, c, rep).tokens_scored, 247);
  c.dedup = true;

  // Shorter than the window, or empty: too short, no test.
  for (std::vector<int32_t> t : {std::vector<int32_t>{}, std::vector<int32_t>{1, 2, 3}}) {
    DetectionResult s = detect_tokens(key, c, t);
    EXPECT_TRUE(s.too_short);
    EXPECT_EQ(s.tokens_scored, 0);
  }
  // The p-value is the exact binomial / gamma tail of the counts.
  DetectionResult k = detection_from_counts(c, 100, 100, 60);
  EXPECT_NEAR(k.log10_p, -29.650810047348520899 / std::log(10.0), 1e-10);  // mpmath
  EXPECT_NEAR(k.z, (60 - 25) / std::sqrt(100 * 0.25 * 0.75), 1e-12);
  DetectorConfig g;
  g.scheme = "gumbel";
  DetectionResult gr = detection_from_counts(g, 50, 50, 200);
  EXPECT_NEAR(gr.log10_p * std::log(10.0), -84.669265662003493131, 1e-8);  // Q(50, 200), mpmath
  // Far tails keep a log10 p even when p underflows.
  DetectionResult tiny = detection_from_counts(c, 2000, 2000, 2000);
  EXPECT_NEAR(tiny.log10_p, 2000 * std::log10(0.25), 1e-6);
  EXPECT_EQ(tiny.p_value, 0.0);

  DetectorConfig bad;
  bad.scheme = "synthid-ish";
  EXPECT_THROW(detect_tokens(key, bad, rep), Error);
  bad.scheme = "kgw";
  bad.kgw.gamma = 1.5;
  EXPECT_THROW(detect_tokens(key, bad, rep), Error);
}

// KGW selfhash: green-ness is a function of (min-hash seed, token), and many different windows
// select the same seed, so the scorer counts each distinct (seed, token) once. Reference: the
// seeds recomputed from kgw.h's definition (keyed_seed anchors, stream_hash), a std::set, and
// kgw_is_green.
// (Counting windows instead put 19% of human-written documents at p < 1e-3 for one key in
// bench/watermark_eval.)
TEST(WatermarkDetect, SelfhashDedupOnSeed) {
  const WatermarkKey key = test_key();
  const HashKey hk = key.hash_key();
  DetectorConfig c;  // kgw selfhash, h = 4: window of 3 previous tokens
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> tok(0, 29);  // a small vocabulary: windows repeat seeds
  std::vector<int32_t> x(3000);
  for (auto& t : x) t = tok(rng);
  std::set<std::pair<uint64_t, int32_t>> units;
  std::set<std::vector<int32_t>> windows;
  double green = 0;
  for (size_t t = 3; t < x.size(); ++t) {
    const uint32_t v = static_cast<uint32_t>(x[t]);
    auto anchor = [&](int32_t u) { return keyed_seed(hk, kDomainKgwSelfAnchor, std::span<const int32_t>(&u, 1)); };
    uint64_t seed = stream_hash(anchor(x[t]), v);
    for (size_t j = t - 3; j < t; ++j) seed = std::min(seed, stream_hash(anchor(x[j]), v));
    windows.insert({x[t - 3], x[t - 2], x[t - 1], x[t]});
    if (units.insert({seed, x[t]}).second)
      green += kgw_is_green(hk, c.kgw, std::span<const int32_t>(x.data() + t - 3, 3), x[t]) ? 1 : 0;
  }
  ASSERT_LT(units.size(), windows.size() / 2);  // the case that matters: far fewer seeds than windows
  DetectionResult r = detect_tokens(key, c, x);
  EXPECT_EQ(r.tokens, static_cast<int64_t>(x.size()));
  EXPECT_EQ(r.tokens_scored, static_cast<int64_t>(units.size()));
  EXPECT_EQ(r.score, green);
  // The pair API gives the same counts.
  WatermarkScorer s(key, c);
  for (size_t t = 0; t < x.size(); ++t) s.add_pair(std::span<const int32_t>(x.data(), t), x[t]);
  EXPECT_EQ(s.result().tokens_scored, r.tokens_scored);
  EXPECT_EQ(s.result().score, r.score);
  // Lefthash's outcome depends on the whole window: there every distinct window counts.
  c.kgw.context = "lefthash";
  std::set<std::pair<int32_t, int32_t>> bigrams;
  for (size_t t = 1; t < x.size(); ++t) bigrams.insert({x[t - 1], x[t]});
  EXPECT_EQ(detect_tokens(key, c, x).tokens_scored, static_cast<int64_t>(bigrams.size()));
}

// add_tokens() (pipelined blocks), add_pair() per position and a reused scorer with reset()
// count the same pairs, for every scheme, on documents that repeat n-grams and cross block
// boundaries (lengths around the 32-position block).
TEST(WatermarkDetect, BlockedResetAndPairApiAgree) {
  const WatermarkKey key = test_key();
  std::mt19937 rng(9);
  std::uniform_int_distribution<int32_t> tok(0, 40);
  std::vector<std::vector<int32_t>> docs;
  for (size_t len : {0, 2, 5, 31, 32, 33, 36, 64, 65, 200, 1000}) {
    std::vector<int32_t> d(len);
    for (auto& t : d) t = tok(rng);
    docs.push_back(d);
  }
  std::vector<DetectorConfig> configs(4);
  configs[1].kgw.context = "lefthash";
  configs[2].kgw.context = "lefthash";
  configs[2].kgw.h = 3;
  configs[3].scheme = "gumbel";
  for (const DetectorConfig& c : configs) {
    WatermarkScorer reused(key, c);
    for (const auto& d : docs) {
      const DetectionResult want = detect_tokens(key, c, d);
      reused.reset();
      reused.add_tokens(d);
      WatermarkScorer by_pair(key, c);
      for (size_t t = 0; t < d.size(); ++t) by_pair.add_pair(std::span<const int32_t>(d.data(), t), d[t]);
      for (const DetectionResult& r : {reused.result(), by_pair.result()}) {
        EXPECT_EQ(r.tokens, want.tokens) << c.scheme << " " << c.kgw.context << " len " << d.size();
        EXPECT_EQ(r.tokens_scored, want.tokens_scored) << c.scheme << " " << c.kgw.context << " len " << d.size();
        EXPECT_DOUBLE_EQ(r.score, want.score) << c.scheme << " " << c.kgw.context << " len " << d.size();
      }
      // Reference count of distinct (window, token) pairs (selfhash: fewer, see above).
      if (c.scheme == "kgw" && c.kgw.context == "lefthash") {
        std::set<std::vector<int32_t>> pairs;
        const size_t w = size_t(c.kgw.width());
        for (size_t t = w; t < d.size(); ++t) pairs.insert(std::vector<int32_t>(d.begin() + long(t - w), d.begin() + long(t + 1)));
        EXPECT_EQ(want.tokens_scored, int64_t(pairs.size())) << "len " << d.size();
      }
    }
  }
}

TEST(WatermarkKeys, FileEnvAndErrors) {
  const std::string good = tmp_path("good.key"), bad = tmp_path("bad.key");
  const std::string hex = key_to_hex(test_key());
  write_file_atomic(good, hex + "\n");
  EXPECT_EQ(load_key_file(good), test_key());
  EXPECT_EQ(load_key(good), test_key());
  // Wrong format: an Error naming the file, never echoing the contents.
  const std::string secretish = "deadbeefcafebabe0123456789SECRET";
  write_file_atomic(bad, secretish + "\n");
  try {
    load_key_file(bad);
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(bad), std::string::npos) << msg;
    EXPECT_EQ(msg.find("deadbeef"), std::string::npos) << msg;
    EXPECT_EQ(msg.find("SECRET"), std::string::npos) << msg;
  }
  write_file_atomic(bad, std::string(64, 'g'));
  EXPECT_THROW(load_key_file(bad), Error);
  write_file_atomic(bad, "");
  EXPECT_THROW(load_key_file(bad), Error);
  EXPECT_THROW(load_key_file(tmp_path("missing.key")), Error);
  // Equal halves fold to the all-zero SipHash key (hash_key XORs them): refused, naming the file.
  write_file_atomic(bad, std::string(32, '0') + std::string(32, '0'));
  retort_test::expect_error([&] { load_key_file(bad); }, {bad, "halves are equal", "keygen"});
  write_file_atomic(bad, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef");
  retort_test::expect_error([&] { load_key_file(bad); }, {bad, "halves are equal"});

  ::setenv(kWatermarkKeyEnv, hex.c_str(), 1);
  EXPECT_EQ(load_key(""), test_key());
  ::setenv(kWatermarkKeyEnv, "zz", 1);
  EXPECT_THROW(load_key(""), Error);
  ::unsetenv(kWatermarkKeyEnv);
  try {
    load_key("");
    FAIL() << "expected an Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(kWatermarkKeyEnv), std::string::npos);
  }
  // The commitment names the key without containing it.
  EXPECT_EQ(test_key().commitment().size(), 64u);
  EXPECT_EQ(test_key().commitment().find(hex.substr(0, 16)), std::string::npos);
  EXPECT_NE(derive_account_key(test_key(), "1"), derive_account_key(test_key(), "2"));
  EXPECT_THROW(derive_account_key(test_key(), ""), Error);
  std::filesystem::remove(good);
  std::filesystem::remove(bad);
}

// ---- End to end with the default model ------------------------------------------------

namespace {

std::string default_model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base =
      home && *home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

constexpr int kDocs = 10;
const char* kTopics[kDocs] = {"the ocean",   "a city at night", "learning to cook", "the history of bread",
                              "mountains",   "a lost dog",      "the moon landing", "why people garden",
                              "winter rain", "an old library"};

// One batched generate() for every document the tests need:
//   [0, 10) KGW selfhash δ=2, [10, 20) Gumbel, [20, 30) plain, [30, 33) KGW with account 17's key.
struct Corpus {
  std::vector<std::vector<int32_t>> kgw, gumbel, plain, account17;
};

class WatermarkModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(default_model_path())) return;
    model_ = new LoadedModel(load_model(default_model_path()));
    corpus_ = new Corpus;
    ChatTemplate tpl = ChatTemplate::from_jinja(model_->chat_template, *model_->tokenizer);
    // δ = 4, not the default 2: at δ = 2 this model's chat completions are ~53% green, so a
    // 64-token document reaches p < 1e-4 only ~84% of the time and ten of them all do by
    // luck. At δ = 4 (~80% green) every document clears it with a wide margin. Power at
    // δ = 2 is measured in bench/watermark_eval, not here.
    KgwConfig strong;
    strong.delta = 4;
    auto kgw = std::make_shared<KgwProcessor>(test_key(), strong);
    auto gum = std::make_shared<GumbelProcessor>(test_key(), GumbelConfig{});
    auto acct = std::make_shared<KgwProcessor>(derive_account_key(master(), "acct-17"), strong);
    std::vector<GenerationRequest> reqs;
    auto add = [&](int i, std::shared_ptr<LogitsProcessor> p) {
      GenerationRequest r;
      std::string prompt = std::string("Write a long paragraph about ") + kTopics[i % kDocs] + ".";
      r.prompt = model_->tokenizer->encode(tpl.render({{"user", prompt}}, true), true, false);
      r.sampling.temperature = 1.0;
      r.sampling.seed = 1000 + reqs.size();
      r.max_tokens = 72;
      r.ignore_eos = true;  // fixed length keeps the test's power (and time) predictable
      r.processor = std::move(p);
      reqs.push_back(std::move(r));
    };
    for (int i = 0; i < kDocs; ++i) add(i, kgw);
    for (int i = 0; i < kDocs; ++i) add(i, gum);
    for (int i = 0; i < kDocs; ++i) add(i, nullptr);
    for (int i = 0; i < 3; ++i) add(i + 3, acct);
    GenerateOptions opts;
    opts.max_batch = int64_t(reqs.size());
    auto results = generate(*model_, reqs, opts);
    // Detection starts from text, as a user would: decode, then re-tokenize.
    for (size_t i = 0; i < results.size(); ++i) {
      std::vector<int32_t> ids = model_->tokenizer->encode(results[i].text, /*parse_special=*/false, false);
      auto& dst = i < 10 ? corpus_->kgw : i < 20 ? corpus_->gumbel : i < 30 ? corpus_->plain : corpus_->account17;
      dst.push_back(std::move(ids));
    }
  }
  static void TearDownTestSuite() {
    delete model_;
    delete corpus_;
    model_ = nullptr;
    corpus_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model not found at " << default_model_path() << " (run scripts/setup.sh)";
  }
  static WatermarkKey master() { return key_with_byte(0x42); }
  static LoadedModel* model_;
  static Corpus* corpus_;
};
LoadedModel* WatermarkModel::model_ = nullptr;
Corpus* WatermarkModel::corpus_ = nullptr;

}  // namespace

TEST_F(WatermarkModel, KgwDetectedOnlyWithTheRightKey) {
  DetectorConfig c;
  for (int i = 0; i < kDocs; ++i) {
    DetectionResult right = detect_tokens(test_key(), c, corpus_->kgw[i]);
    DetectionResult wrong = detect_tokens(key_with_byte(0x99), c, corpus_->kgw[i]);
    DetectionResult plain = detect_tokens(test_key(), c, corpus_->plain[i]);
    EXPECT_GT(right.tokens_scored, 40) << "doc " << i;
    EXPECT_LT(right.p_value, 1e-4) << "doc " << i << ": " << right.score << "/" << right.tokens_scored << " green";
    EXPECT_GT(wrong.p_value, 1e-3) << "doc " << i;
    EXPECT_GT(plain.p_value, 1e-3) << "doc " << i;
  }
}

TEST_F(WatermarkModel, GumbelDetectedOnlyWithTheRightKey) {
  DetectorConfig c;
  c.scheme = "gumbel";
  for (int i = 0; i < kDocs; ++i) {
    DetectionResult right = detect_tokens(test_key(), c, corpus_->gumbel[i]);
    DetectionResult wrong = detect_tokens(key_with_byte(0x99), c, corpus_->gumbel[i]);
    DetectionResult plain = detect_tokens(test_key(), c, corpus_->plain[i]);
    EXPECT_LT(right.p_value, 1e-4) << "doc " << i << ": score " << right.score << " over " << right.tokens_scored;
    EXPECT_GT(wrong.p_value, 1e-3) << "doc " << i;
    EXPECT_GT(plain.p_value, 1e-3) << "doc " << i;
  }
}

TEST_F(WatermarkModel, PerAccountAttributionAfterHolm) {
  std::vector<std::string> accounts;
  for (int i = 0; i < 50; ++i) accounts.push_back("acct-" + std::to_string(i));
  DetectorConfig c;
  auto res = detect_accounts(master(), accounts, c, corpus_->account17);
  ASSERT_EQ(res.size(), 50u);
  for (size_t i = 0; i < res.size(); ++i) {
    if (i == 17) {
      EXPECT_LT(res[i].p_holm, 1e-4) << "account 17";
    } else {
      EXPECT_GT(res[i].p_holm, 0.01) << res[i].account;
    }
    EXPECT_EQ(res[i].key_commitment, derive_account_key(master(), accounts[i]).commitment());
  }
}

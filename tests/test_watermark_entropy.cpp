// tests/test_watermark_entropy.cpp — entropy-filtered (SWEET-style) watermark detection
// (audit/watermark_detect.h): the masked scorer against a brute-force recount, model_entropies against
// a float64 recomputation from libtorch's own forward pass, calibration under the null with the filter
// (random text and masks; the model's own unwatermarked text with its real entropies), and a selection
// that never reads the key. Model tests use the default teacher (skipped when it is absent).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "retort/audit/watermark_detect.h"
#include "retort/decode/generate.h"
#include "retort/model/loader.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/keyed_hash.h"
#include "retort/protect/kgw.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/stats.h"
#include "test_util.h"

using namespace retort;

namespace {

WatermarkKey key_with_byte(uint8_t b) {
  WatermarkKey k;
  k.bytes.fill(b);
  return k;
}

WatermarkKey random_key(std::mt19937_64& rng) {
  WatermarkKey k;
  for (auto& b : k.bytes) b = static_cast<uint8_t>(rng());
  return k;
}

// Brute force of the masked scorer over several documents pooled in one scorer: every selected position
// t >= w, its unit — (window, token), or for KGW selfhash (seed, token) with the seed recomputed from
// kgw.h's definition — kept in a std::set, the first occurrence scored with watermark_pair_score.
struct Recount {
  int64_t tokens = 0, masked = 0, scored = 0;
  double score = 0;
};
Recount brute_force(const WatermarkKey& key, const DetectorConfig& c, const std::vector<std::vector<int32_t>>& docs,
                    const std::vector<std::vector<uint8_t>>& masks) {
  const HashKey hk = key.hash_key();
  const size_t w = size_t(detector_window(c));
  const bool selfhash = c.scheme == "kgw" && c.kgw.context == "selfhash";
  std::set<std::vector<int64_t>> seen;
  Recount r;
  for (size_t d = 0; d < docs.size(); ++d) {
    const auto& x = docs[d];
    r.tokens += int64_t(x.size());
    for (size_t t = w; t < x.size(); ++t) {
      if (!masks[d][t]) {
        ++r.masked;
        continue;
      }
      std::span<const int32_t> win(x.data() + t - w, w);
      std::vector<int64_t> unit;
      if (selfhash) {
        const uint32_t v = uint32_t(x[t]);
        auto anchor = [&](int32_t u) { return keyed_seed(hk, kDomainKgwSelfAnchor, std::span<const int32_t>(&u, 1)); };
        uint64_t seed = stream_hash(anchor(x[t]), v);
        for (int32_t u : win) seed = std::min(seed, stream_hash(anchor(u), v));
        unit = {int64_t(seed >> 1), int64_t(seed & 1), x[t]};
      } else {
        unit.assign(win.begin(), win.end());
        unit.push_back(x[t]);
      }
      if (c.dedup && !seen.insert(unit).second) continue;
      ++r.scored;
      r.score += watermark_pair_score(hk, c, win, x[t]);
    }
  }
  return r;
}

}  // namespace

// The masked scorer (pipelined blocks, dedup across documents) counts exactly the selected positions'
// distinct units, for every scheme and context, with and without dedup; an all-ones mask is no mask.
TEST(WatermarkEntropy, MaskedScoreEqualsABruteForceRecount) {
  const WatermarkKey key = key_with_byte(0x3c);
  std::mt19937_64 rng(17);
  std::uniform_int_distribution<int32_t> tok(0, 40);  // a small vocabulary: many repeated units
  std::vector<std::vector<int32_t>> docs;
  std::vector<std::vector<uint8_t>> masks, ones;
  for (size_t len : {0, 1, 3, 31, 32, 33, 70, 200, 1500}) {
    std::vector<int32_t> d(len);
    std::vector<uint8_t> m(len);
    for (auto& t : d) t = tok(rng);
    for (auto& b : m) b = (rng() % 3) != 0;  // ~2/3 selected
    docs.push_back(d);
    masks.push_back(m);
    ones.push_back(std::vector<uint8_t>(len, 1));
  }
  std::vector<DetectorConfig> configs(5);
  configs[1].kgw.context = "lefthash";
  configs[2].kgw.context = "lefthash";
  configs[2].kgw.h = 3;
  configs[3].scheme = "gumbel";
  configs[4].kgw.context = "lefthash";
  configs[4].dedup = false;
  for (const DetectorConfig& c : configs) {
    const std::string what = c.scheme + " " + c.kgw.context + " h " + std::to_string(detector_window(c)) +
                             (c.dedup ? "" : " no dedup");
    WatermarkScorer pooled(key, c), one(key, c), plain(key, c);
    for (size_t d = 0; d < docs.size(); ++d) {
      one.reset();
      one.add_tokens(docs[d], masks[d]);
      const Recount want = brute_force(key, c, {docs[d]}, {masks[d]});
      const DetectionResult r = one.result();
      EXPECT_EQ(r.tokens, want.tokens) << what << " doc " << d;
      EXPECT_EQ(r.tokens_masked, want.masked) << what << " doc " << d;
      EXPECT_EQ(r.tokens_scored, want.scored) << what << " doc " << d;
      EXPECT_NEAR(r.score, want.score, 1e-9 * (1 + want.score)) << what << " doc " << d;
      const DetectionResult again = detect_tokens(key, c, docs[d], masks[d]);
      EXPECT_EQ(again.tokens_scored, r.tokens_scored);
      EXPECT_EQ(again.score, r.score);
      // All ones = the unmasked scorer.
      const DetectionResult all = detect_tokens(key, c, docs[d], ones[d]), none = detect_tokens(key, c, docs[d]);
      EXPECT_EQ(all.tokens_scored, none.tokens_scored) << what;
      EXPECT_EQ(all.score, none.score) << what;
      EXPECT_EQ(all.tokens_masked, 0);
      pooled.add_tokens(docs[d], masks[d]);
      plain.add_tokens(docs[d]);
    }
    const Recount want = brute_force(key, c, docs, masks);
    const DetectionResult r = pooled.result();
    EXPECT_EQ(r.tokens_masked, want.masked) << what;
    EXPECT_EQ(r.tokens_scored, want.scored) << what;
    EXPECT_NEAR(r.score, want.score, 1e-9 * (1 + want.score)) << what;
    EXPECT_LT(r.tokens_scored, plain.result().tokens_scored) << what;
    // The p-value is the same exact tail over the selected units.
    const DetectionResult from_counts = detection_from_counts(c, r.tokens, r.tokens_scored, r.score);
    EXPECT_DOUBLE_EQ(r.log10_p, from_counts.log10_p) << what;
  }
  // A mask of the wrong length is an error, not a silent misalignment.
  WatermarkScorer s(key, DetectorConfig{});
  std::vector<uint8_t> short_mask(docs[5].size() - 1, 1);
  EXPECT_THROW(s.add_tokens(docs[5], short_mask), Error);
  // Entropy mask: >= threshold, NaN never selected.
  const std::vector<double> H = {0.0, 0.5, 0.49999, NAN, 3.0};
  EXPECT_EQ(entropy_mask(H, 0.5), (std::vector<uint8_t>{0, 1, 0, 0, 1}));
}

// logits_entropy against the closed forms: uniform over V is ln V, one-hot (other logits −inf) is 0,
// two tokens at logits (0, ln 3) are p = (1/4, 3/4).
TEST(WatermarkEntropy, LogitsEntropyClosedForms) {
  std::vector<float> z(1000, 1.5f);
  EXPECT_NEAR(logits_entropy(z.data(), int64_t(z.size())), std::log(1000.0), 1e-12);
  std::fill(z.begin(), z.end(), -INFINITY);
  z[7] = 3;
  EXPECT_EQ(logits_entropy(z.data(), int64_t(z.size())), 0.0);
  const float two[2] = {0.0f, float(std::log(3.0))};
  const double p = 1.0 / (1.0 + std::exp(double(two[1])));
  EXPECT_NEAR(logits_entropy(two, 2), -(p * std::log(p) + (1 - p) * std::log(1 - p)), 1e-12);
}

// Under the null the key is independent of the text and of the mask: over many keys, the randomized
// p-values of the filtered test are Uniform(0, 1) (KS) and the exact ones are never anti-conservative.
// Text and mask here are random; the model test below uses real text and real entropies.
TEST(WatermarkEntropy, NullIsCalibratedWithARandomMask) {
  std::mt19937_64 rng(23);
  std::uniform_int_distribution<int32_t> tok(0, 49151);
  std::vector<int32_t> x(300);
  for (auto& t : x) t = tok(rng);
  std::vector<double> H(x.size());
  std::exponential_distribution<double> ent(1.0);
  for (auto& h : H) h = ent(rng);  // stand-in entropies, drawn without any key
  const std::vector<uint8_t> mask = entropy_mask(H, 0.7);
  for (const std::string ctx : {"selfhash", "lefthash"}) {
    DetectorConfig c;
    c.kgw.context = ctx;
    std::vector<double> p_rand;
    int64_t below = 0;
    std::uniform_real_distribution<double> u(0, 1);
    for (int k = 0; k < 2000; ++k) {
      const DetectionResult r = detect_tokens(random_key(rng), c, x, mask);
      ASSERT_FALSE(r.too_short);
      const int64_t s = std::llround(r.score);
      const double ge = std::exp(log_binomial_sf(s, r.tokens_scored, 0.25)),
                   gt = std::exp(log_binomial_sf(s + 1, r.tokens_scored, 0.25));
      p_rand.push_back(gt + u(rng) * (ge - gt));
      below += r.p_value <= 0.05;
    }
    const KsResult ks = ks_uniform(p_rand);
    EXPECT_GT(ks.p_value, 1e-3) << ctx << ": KS D " << ks.d;
    EXPECT_LE(below, 0.05 * 2000 + 3 * std::sqrt(2000 * 0.05 * 0.95)) << ctx;
  }
}

namespace {

// The default teacher twice: the runtime model (what model_entropies reads) and the libtorch module
// (the independent reference forward), plus a few of its chat completions — watermarked (KGW lefthash
// δ = 2 under key 0x51) and plain — with their chat-formatted prompts.
struct EntropyFixture {
  RuntimeLoaded rt;
  std::unique_ptr<LoadedModel> torch;
  std::vector<std::vector<int32_t>> prompts, marked, plain;
};

class WatermarkEntropyModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!std::filesystem::exists(retort_test::smollm2_path())) return;
    torch::NoGradGuard ng;
    f_ = new EntropyFixture;
    f_->rt = load_runtime_model(retort_test::smollm2_path());
    f_->torch = std::make_unique<LoadedModel>(load_model(retort_test::smollm2_path()));
    ChatTemplate tpl = ChatTemplate::from_jinja(f_->rt.chat_template, *f_->rt.tokenizer);
    const char* asks[] = {"Write about rivers.", "What is 12 times 7? Answer with the number only.",
                          "List three colors.", "Describe a busy market."};
    KgwConfig kc;
    kc.context = "lefthash";
    auto proc = std::make_shared<KgwProcessor>(key(), kc);
    std::vector<GenerationRequest> reqs;
    for (int w = 0; w < 2; ++w)
      for (const char* a : asks) {
        GenerationRequest r;
        r.prompt = tpl.encode({{"user", a}}, *f_->rt.tokenizer);
        r.sampling.temperature = 1.0;
        r.sampling.seed = 77 + reqs.size();
        r.max_tokens = 40;
        r.ignore_eos = true;
        r.processor = w == 0 ? proc : nullptr;
        reqs.push_back(std::move(r));
      }
    GenerateOptions opts;
    opts.max_batch = int64_t(reqs.size());
    const auto res = generate(f_->rt, reqs, opts);
    for (size_t i = 0; i < res.size(); ++i) {
      std::vector<int32_t> ids;
      for (const auto& t : res[i].tokens) ids.push_back(t.token);
      (i < 4 ? f_->marked : f_->plain).push_back(ids);
      if (i < 4) f_->prompts.push_back(reqs[i].prompt);
    }
  }
  static void TearDownTestSuite() {
    delete f_;
    f_ = nullptr;
  }
  void SetUp() override {
    if (!f_) GTEST_SKIP() << "default model not found at " << retort_test::smollm2_path() << " (run scripts/setup.sh)";
  }
  static WatermarkKey key() { return key_with_byte(0x51); }
  static EntropyFixture* f_;
};
EntropyFixture* WatermarkEntropyModel::f_ = nullptr;

// Reference entropies: one libtorch forward of prompt ++ text, logits to float64, log_softmax and
// H = −Σ p ln p in float64. [text.size()], NaN at t = 0 without a prompt.
std::vector<double> reference_entropies(LoadedModel& m, const std::vector<int32_t>& prompt, const std::vector<int32_t>& text) {
  torch::NoGradGuard ng;
  std::vector<int64_t> ids(prompt.begin(), prompt.end());
  ids.insert(ids.end(), text.begin(), text.end());
  torch::Tensor logits = m.model->forward(torch::tensor(ids, torch::kInt64).unsqueeze(0))[0].to(torch::kFloat64);
  torch::Tensor lp = torch::log_softmax(logits, -1);
  torch::Tensor H = -(lp.exp() * lp).sum(-1);  // [L]
  std::vector<double> out(text.size(), NAN);
  for (size_t t = 0; t < text.size(); ++t) {
    const int64_t row = int64_t(prompt.size() + t) - 1;  // the row that predicts text[t]
    if (row >= 0) out[t] = H[row].item<double>();
  }
  return out;
}

}  // namespace

// model_entropies (batched in groups and chunks, through the runtime kernels) equals a float64
// recomputation from libtorch's forward, with and without a prompt; the filtered score equals a
// brute-force recount over the positions the reference entropies select.
TEST_F(WatermarkEntropyModel, EntropiesAndFilteredScoreMatchAFloat64Recount) {
  std::vector<std::vector<int32_t>> prompts = f_->prompts, texts = f_->marked;
  prompts.push_back({});  // one document without a prompt: H[0] has no context
  texts.push_back(f_->plain[0]);
  // chunk 7, group 2: documents split over groups and every chunk boundary inside prompts and texts.
  const auto H = model_entropies(*f_->rt.model, prompts, texts, /*chunk=*/7, /*group=*/2);
  ASSERT_EQ(H.size(), texts.size());
  std::vector<double> all_ref;
  std::vector<std::vector<double>> ref;
  double worst = 0;
  for (size_t d = 0; d < texts.size(); ++d) {
    ASSERT_EQ(H[d].size(), texts[d].size());
    ref.push_back(reference_entropies(*f_->torch, prompts[d], texts[d]));
    for (size_t t = 0; t < texts[d].size(); ++t) {
      if (std::isnan(ref[d][t])) {
        EXPECT_TRUE(std::isnan(H[d][t])) << "doc " << d << " position " << t;
        continue;
      }
      worst = std::max(worst, std::abs(H[d][t] - ref[d][t]));
      all_ref.push_back(ref[d][t]);
    }
  }
  EXPECT_TRUE(std::isnan(H.back()[0]));
  EXPECT_LT(worst, 2e-3) << "max |H - H_ref| over " << all_ref.size() << " positions";
  // Both low- and high-entropy positions occur (the arithmetic answer is nearly certain).
  EXPECT_LT(*std::min_element(all_ref.begin(), all_ref.end()), 0.1);
  EXPECT_GT(*std::max_element(all_ref.begin(), all_ref.end()), 2.0);
  // A threshold in the widest gap of the reference entropies near 1 nat, so the masks cannot differ by rounding.
  std::sort(all_ref.begin(), all_ref.end());
  double thr = 1.0, gap = 0;
  for (size_t i = 0; i + 1 < all_ref.size(); ++i)
    if (all_ref[i] > 0.5 && all_ref[i + 1] < 2.0 && all_ref[i + 1] - all_ref[i] > gap)
      gap = all_ref[i + 1] - all_ref[i], thr = 0.5 * (all_ref[i] + all_ref[i + 1]);
  ASSERT_GT(gap, 10 * worst);
  DetectorConfig c;
  c.kgw.context = "lefthash";
  const HashKey hk = key().hash_key();
  for (size_t d = 0; d < texts.size(); ++d) {
    const std::vector<uint8_t> mask = entropy_mask(H[d], thr);
    const DetectionResult r = detect_tokens(key(), c, texts[d], mask);
    // Brute force: distinct (previous token, token) bigrams at positions with reference H >= thr.
    std::set<std::pair<int32_t, int32_t>> seen;
    int64_t masked = 0, green = 0;
    for (size_t t = 1; t < texts[d].size(); ++t) {
      if (!(ref[d][t] >= thr)) {
        ++masked;
        continue;
      }
      if (!seen.insert({texts[d][t - 1], texts[d][t]}).second) continue;
      green += kgw_is_green(hk, c.kgw, std::span<const int32_t>(texts[d].data() + t - 1, 1), texts[d][t]);
    }
    EXPECT_EQ(r.tokens_masked, masked) << "doc " << d;
    EXPECT_EQ(r.tokens_scored, int64_t(seen.size())) << "doc " << d;
    EXPECT_EQ(r.score, double(green)) << "doc " << d;
  }
}

// The selection reads the model, the prompt and the text — never the key (model_entropies takes none):
// computed twice it is the same bits, batched otherwise the same mask, and two keys (the one that watermarked the text and an unrelated one) score it with the same
// positions masked and, for lefthash (whose units do not depend on the key), the same units.
TEST_F(WatermarkEntropyModel, SelectionNeverReadsTheKey) {
  const auto H1 = model_entropies(*f_->rt.model, f_->prompts, f_->marked);
  const auto H1b = model_entropies(*f_->rt.model, f_->prompts, f_->marked);
  const auto H2 = model_entropies(*f_->rt.model, f_->prompts, f_->marked, /*chunk=*/16, /*group=*/3);
  DetectorConfig c;
  c.kgw.context = "lefthash";
  for (size_t d = 0; d < H1.size(); ++d) {
    for (size_t t = 0; t < H1[d].size(); ++t) EXPECT_EQ(H1[d][t], H1b[d][t]) << "doc " << d << " position " << t;
    const auto m1 = entropy_mask(H1[d], 0.3), m2 = entropy_mask(H2[d], 0.3);
    EXPECT_EQ(m1, m2) << "doc " << d;
    const DetectionResult a = detect_tokens(key(), c, f_->marked[d], m1);
    const DetectionResult b = detect_tokens(key_with_byte(0x99), c, f_->marked[d], m1);
    EXPECT_EQ(a.tokens_masked, b.tokens_masked);
    EXPECT_EQ(a.tokens_scored, b.tokens_scored);
    EXPECT_GT(a.tokens_masked, 0) << "doc " << d << ": no low-entropy position to skip";
  }
}

// The model's own unwatermarked completions with their real entropy masks, scored under 1,000 random
// keys (the null: the key is independent of the text): randomized p-values Uniform(0, 1) by KS, for
// selfhash and lefthash.
TEST_F(WatermarkEntropyModel, NullIsCalibratedOnUnwatermarkedTextWithRealEntropies) {
  std::vector<std::vector<int32_t>> texts = f_->plain;
  const auto H = model_entropies(*f_->rt.model, f_->prompts, texts);
  std::vector<std::vector<uint8_t>> masks;
  for (const auto& h : H) masks.push_back(entropy_mask(h, 0.3));
  std::mt19937_64 rng(31);
  std::uniform_real_distribution<double> u(0, 1);
  for (const std::string ctx : {"selfhash", "lefthash"}) {
    DetectorConfig c;
    c.kgw.context = ctx;
    std::vector<double> p_rand;
    for (int k = 0; k < 1000; ++k) {
      WatermarkScorer s(random_key(rng), c);  // all four documents pooled, deduplicated across them
      for (size_t d = 0; d < texts.size(); ++d) s.add_tokens(texts[d], masks[d]);
      const DetectionResult r = s.result();
      ASSERT_FALSE(r.too_short);
      const int64_t g = std::llround(r.score);
      const double ge = std::exp(log_binomial_sf(g, r.tokens_scored, 0.25)),
                   gt = std::exp(log_binomial_sf(g + 1, r.tokens_scored, 0.25));
      p_rand.push_back(gt + u(rng) * (ge - gt));
    }
    const KsResult ks = ks_uniform(p_rand);
    EXPECT_GT(ks.p_value, 1e-3) << ctx << ": KS D " << ks.d;
  }
}

// tests/test_radioactivity.cpp — audit/radioactivity: the filters and dedup against a brute-force
// recount, calibration under the null and power when predictions lean green, per-account attribution,
// the suspect's top-1 predictions against one-prefix-at-a-time decoding, and reading mode with the real
// teacher as a clean suspect (same tokenizer) and Gemma 3 as one with another tokenizer.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <map>
#include <random>
#include <set>

#include "retort/audit/radioactivity.h"
#include "retort/decode/generate.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/kgw.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/stats.h"
#include "test_util.h"

using namespace retort;
using retort_test::expect_error;

namespace {

// A random-looking key per seed. (Not a constant fill: WatermarkKey::hash_key() folds the two 16-byte halves
// by XOR, so every key whose halves are equal — 0xAB repeated, say — gives the same all-zero SipHash key.)
WatermarkKey key_with_byte(uint8_t b) {
  WatermarkKey k;
  std::mt19937_64 rng(0x9E3779B97F4A7C15ULL ^ b);
  for (auto& x : k.bytes) x = uint8_t(rng());
  return k;
}

DetectorConfig lefthash(int h = 2) {
  DetectorConfig c;
  c.kgw.context = "lefthash";
  c.kgw.h = h;
  return c;
}

// A token from [0, vocab) that is green (or red) for `key` after `context`, drawn at random.
int32_t draw(std::mt19937_64& rng, const WatermarkKey& key, const KgwConfig& kc, std::span<const int32_t> context,
             int32_t vocab, bool green) {
  std::uniform_int_distribution<int32_t> u(0, vocab - 1);
  for (;;) {
    const int32_t t = u(rng);
    if (kgw_is_green(key.hash_key(), kc, context, t) == green) return t;
  }
}

}  // namespace

TEST(Radioactivity, FiltersAndDedupMatchABruteForceRecount) {
  const WatermarkKey key = key_with_byte(7);
  const DetectorConfig c = lefthash(2);  // window 2
  std::mt19937_64 rng(1);
  std::uniform_int_distribution<int32_t> tok(0, 9);  // a small vocabulary: many repeats
  std::vector<std::vector<int32_t>> prompts(3), texts(20);
  for (auto& p : prompts)
    for (int i = 0; i < 12; ++i) p.push_back(tok(rng));
  for (auto& t : texts)
    for (int i = 0; i < 30; ++i) t.push_back(tok(rng));
  std::vector<int32_t> served;
  for (int i = 0; i < 300; ++i) served.push_back(tok(rng));

  WindowSet pw(2), sw(2);
  for (const auto& p : prompts) pw.add_windows_of(p);
  sw.add_windows_of(served);
  RadioactivityTest test(key, c);
  test.set_prompt_windows(&pw);
  test.set_seen_windows(&sw);
  for (const auto& t : texts) test.add_text(t);
  const RadioactivityResult r = test.result("closed");

  // The same rules written out plainly.
  auto windows_of = [](const std::vector<std::vector<int32_t>>& v) {
    std::set<std::vector<int32_t>> s;
    for (const auto& x : v)
      for (size_t i = 0; i + 2 <= x.size(); ++i) s.insert({x[i], x[i + 1]});
    return s;
  };
  const auto P = windows_of(prompts), S = windows_of({served});
  std::set<std::vector<int32_t>> seen_pairs;
  int64_t positions = 0, no_window = 0, in_prompt = 0, unseen = 0, repeated = 0, scored = 0, green = 0;
  for (const auto& t : texts)
    for (size_t i = 1; i < t.size(); ++i) {
      ++positions;
      if (i < 2) {
        ++no_window;
        continue;
      }
      const std::vector<int32_t> win = {t[i - 2], t[i - 1]};
      if (P.count(win)) {
        ++in_prompt;
        continue;
      }
      if (!S.count(win)) {
        ++unseen;
        continue;
      }
      if (!seen_pairs.insert({win[0], win[1], t[i]}).second) {
        ++repeated;
        continue;
      }
      ++scored;
      green += kgw_is_green(key.hash_key(), c.kgw, win, t[i]);
    }
  EXPECT_EQ(r.counts.positions, positions);
  EXPECT_EQ(r.counts.no_window, no_window);
  EXPECT_EQ(r.counts.in_prompt, in_prompt);
  EXPECT_EQ(r.counts.unseen, unseen);
  EXPECT_EQ(r.counts.repeated, repeated);
  EXPECT_EQ(r.counts.scored, scored);
  EXPECT_GT(in_prompt, 0);
  EXPECT_GT(unseen, 0);
  EXPECT_GT(repeated, 0);
  EXPECT_EQ(r.test.score, double(green));
  // The exact tail, summed here in long double from the pmf.
  long double tail = 0;
  for (int64_t k = green; k <= scored; ++k)
    tail += std::exp(std::lgamma((long double)scored + 1) - std::lgamma((long double)k + 1) -
                     std::lgamma((long double)(scored - k) + 1) + k * std::log(0.25L) + (scored - k) * std::log(0.75L));
  EXPECT_NEAR(r.test.log10_p, std::log10((double)tail), 1e-9);
}

TEST(Radioactivity, NotEnoughEvidenceGivesNoPValueButTheCountNeeded) {
  DetectorConfig c = lefthash(1);
  c.min_tokens = 1000;
  RadioactivityTest test(key_with_byte(3), c);
  std::mt19937_64 rng(5);
  const KgwConfig& kc = c.kgw;
  std::vector<int32_t> ctx = {0};
  // 300 pairs, 40% green: a strong lean, but fewer pairs than the test needs.
  for (int i = 0; i < 300; ++i) {
    ctx[0] = 1000 + i;
    test.add(ctx, draw(rng, key_with_byte(3), kc, ctx, 50000, i % 5 < 2));
  }
  const RadioactivityResult r = test.result("closed", 1e-5);
  EXPECT_TRUE(r.test.too_short);
  EXPECT_EQ(r.counts.scored, 300);
  EXPECT_NEAR(r.score_rate, 0.4, 1e-12);
  // T = (z σ / (rate − γ))², z = 4.2649 for 1e-5, σ² = 0.1875.
  const double z = 4.264890793922825;
  EXPECT_NEAR(double(r.pairs_needed), std::ceil(z * z * 0.1875 / (0.15 * 0.15)), 1.0);
  EXPECT_EQ(radioactivity_pairs_needed(c, 0.25, 1e-5), -1);
  EXPECT_EQ(radioactivity_pairs_needed(c, 0.2, 1e-5), -1);
}

TEST(Radioactivity, NullIsCalibratedAndALeanTowardGreenIsFound) {
  // Under the null (predictions that ignore the key) p-values are uniform: 200 keys, 400 pairs each.
  const DetectorConfig c = lefthash(1);
  std::mt19937_64 rng(11);
  std::uniform_int_distribution<int32_t> u(0, 49151);
  std::vector<double> p;
  int below_5pct = 0;
  for (int k = 0; k < 200; ++k) {
    RadioactivityTest test(key_with_byte(uint8_t(k)), c);
    for (int i = 0; i < 400; ++i) {
      const std::vector<int32_t> ctx = {u(rng)};
      test.add(ctx, u(rng));
    }
    const RadioactivityResult r = test.result("closed");
    p.push_back(r.test.p_value);
    below_5pct += r.test.p_value < 0.05;
  }
  // Exact binomial tails are discrete, hence conservative: at most ~5% below 0.05 (+3σ for 200 tests).
  EXPECT_LE(below_5pct, 10 + 10);
  EXPECT_GT(*std::min_element(p.begin(), p.end()), 1e-4);
  // A suspect whose predictions are green 30% of the time instead of 25%: 20,000 pairs reach p < 1e-5;
  // the same pairs under another key do not.
  const WatermarkKey ours = key_with_byte(0xAB), other = key_with_byte(0xCD);
  RadioactivityTest with_ours(ours, c), with_other(other, c);
  std::bernoulli_distribution lean(0.30);
  for (int i = 0; i < 20000; ++i) {
    const std::vector<int32_t> ctx = {u(rng)};
    const int32_t t = draw(rng, ours, c.kgw, ctx, 49152, lean(rng));
    with_ours.add(ctx, t);
    with_other.add(ctx, t);
  }
  EXPECT_LT(with_ours.result("closed").test.p_value, 1e-5);
  EXPECT_GT(with_other.result("closed").test.p_value, 1e-3);
}

TEST(Radioactivity, PerAccountAttributionAfterHolm) {
  const WatermarkKey master = key_with_byte(0x42);
  std::vector<std::string> accounts;
  for (int i = 0; i < 20; ++i) accounts.push_back("acct-" + std::to_string(i));
  const DetectorConfig c = lefthash(1);
  RadioactivityTest test(master, c, accounts);
  const WatermarkKey learned = derive_account_key(master, "acct-7");
  std::mt19937_64 rng(3);
  std::uniform_int_distribution<int32_t> u(0, 49151);
  std::bernoulli_distribution lean(0.40);
  for (int i = 0; i < 3000; ++i) {
    const std::vector<int32_t> ctx = {u(rng)};
    test.add(ctx, draw(rng, learned, c.kgw, ctx, 49152, lean(rng)));
  }
  const RadioactivityResult r = test.result("closed");
  ASSERT_EQ(r.accounts.size(), 20u);
  for (size_t i = 0; i < r.accounts.size(); ++i) {
    EXPECT_EQ(r.accounts[i].account, accounts[i]);
    EXPECT_EQ(r.accounts[i].key_commitment, derive_account_key(master, accounts[i]).commitment());
    if (i == 7)
      EXPECT_LT(r.accounts[i].p_holm, 1e-10);
    else
      EXPECT_GT(r.accounts[i].p_holm, 1e-3) << accounts[i];
    EXPECT_GE(r.accounts[i].log10_p_holm, r.accounts[i].result.log10_p - 1e-12);
  }
  EXPECT_GT(r.test.p_value, 1e-3);  // the master key itself was not the one learned
}

TEST(Radioactivity, ATextServedToOneAccountIsScoredByThatAccountsTestAlone) {
  // Three accounts; acct-1's texts lean green under acct-1's key (its student learned them), the others'
  // texts are null. Scored by their own account's test only, acct-1 stands out and acct-0 / acct-2 see only
  // their own (null) texts. (Whether "own" beats "all" depends on how much other text would dilute it: in
  // the demo, 1e-38 against 1e-3; here the in-text filter on random texts costs about as much as it saves.)
  const WatermarkKey master = key_with_byte(0x17);
  const std::vector<std::string> accounts = {"acct-0", "acct-1", "acct-2"};
  DetectorConfig c;  // selfhash, the serving default: the in-text rule then also consults the account's seeds
  RadioactivityTest own(master, c, accounts), all(master, c, accounts);
  EXPECT_EQ(own.account_index("acct-2"), 2);
  EXPECT_EQ(own.account_index("nobody"), RadioactivityTest::kNoAccount);
  std::mt19937_64 rng(5);
  std::uniform_int_distribution<int32_t> u(0, 49151);
  std::bernoulli_distribution lean(0.45);
  int64_t texts_of[3] = {0, 0, 0};
  for (int i = 0; i < 240; ++i) {
    const int a = i % 3;
    std::vector<int32_t> text(40);
    for (auto& t : text) t = u(rng);
    const WatermarkKey k = derive_account_key(master, accounts[size_t(a)]);
    own.begin_text(text, a);
    all.begin_text(text);
    for (size_t t = 4; t < text.size(); ++t) {
      const std::span<const int32_t> ctx(text.data() + t - 4, 4);
      const int32_t p = a == 1 ? draw(rng, k, c.kgw, ctx, 49152, lean(rng)) : u(rng);
      own.add_reading(t, p);
      all.add_reading(t, p);
    }
    ++texts_of[a];
  }
  const RadioactivityResult ro = own.result("open"), ra = all.result("open");
  // The master key marked none of these texts: "own" leaves it nothing to score (counted as other_key).
  EXPECT_EQ(ro.test.tokens_scored, 0);
  EXPECT_GT(ro.counts.other_key, 0);
  EXPECT_EQ(ra.counts.other_key, 0);
  EXPECT_GT(ra.test.p_value, 1e-3);
  // Own: each account's test saw its own third of the texts; all: every text.
  for (int a = 0; a < 3; ++a) {
    EXPECT_LT(ro.accounts[size_t(a)].result.tokens_scored, ra.accounts[size_t(a)].result.tokens_scored * 0.45) << a;
    EXPECT_GT(ro.accounts[size_t(a)].result.tokens_scored, ra.accounts[size_t(a)].result.tokens_scored * 0.2) << a;
  }
  EXPECT_LT(ro.accounts[1].p_holm, 1e-10);
  EXPECT_GT(ro.accounts[0].p_holm, 1e-3);
  EXPECT_GT(ro.accounts[2].p_holm, 1e-3);
  // A text served to an untested account is scored by no test.
  RadioactivityTest none(master, c, accounts);
  std::vector<int32_t> text(20);
  for (auto& t : text) t = u(rng);
  none.begin_text(text, RadioactivityTest::kNoAccount);
  for (size_t t = 4; t < text.size(); ++t) none.add_reading(t, u(rng));
  const RadioactivityResult rn = none.result("open");
  EXPECT_EQ(rn.test.tokens_scored, 0);
  EXPECT_GT(rn.counts.other_key, 0);
  for (const auto& a : rn.accounts) EXPECT_EQ(a.result.tokens_scored, 0);
  expect_error([&] { none.begin_text(text, 3); }, {"out of range"});
}

TEST(Radioactivity, ReadingSkipsUnitsThatShapedTheTextEarlier) {
  // lefthash h = 1: a prediction after window w is not scored when w already started a step earlier in the
  // same text (its green list shaped that step's token, which the suspect can copy).
  const DetectorConfig c = lefthash(1);
  RadioactivityTest test(key_with_byte(9), c);
  const std::vector<int32_t> text = {5, 6, 7, 5, 8, 6};
  test.begin_text(text);
  EXPECT_FALSE(test.add_reading(0, 1));  // no window
  EXPECT_TRUE(test.add_reading(1, 1));   // window {5}: first step
  EXPECT_TRUE(test.add_reading(2, 1));   // {6}
  EXPECT_TRUE(test.add_reading(3, 1));   // {7}
  EXPECT_FALSE(test.add_reading(4, 2));  // {5} again: its step 1 came earlier
  EXPECT_TRUE(test.add_reading(5, 3));   // {8}: its first step is step 5 itself (fair: the prediction
                                         // does not see the token that step chose)
  const RadioactivityCounts n = test.result("open").counts;
  EXPECT_EQ(n.no_window, 1);
  EXPECT_EQ(n.in_text, 1);
  EXPECT_EQ(n.scored, 4);
  expect_error([&] { test.add_reading(7, 1); }, {"past the text"});
}

// ---- with real models ------------------------------------------------------------------------------------

namespace {

struct Models {
  RuntimeLoaded teacher, gemma;
  bool have_teacher = false, have_gemma = false;
};
Models* g_models = nullptr;

const Models& models() {
  if (!g_models) {
    g_models = new Models;
    if (std::filesystem::exists(retort_test::smollm2_path())) {
      g_models->teacher = load_runtime_model(retort_test::smollm2_path());
      g_models->have_teacher = true;
    }
    if (std::filesystem::exists(retort_test::gemma3_path())) {
      g_models->gemma = load_runtime_model(retort_test::gemma3_path());
      g_models->have_gemma = true;
    }
  }
  return *g_models;
}

// Watermarked chat answers of the teacher (KGW, δ = 4: a strong watermark, the hardest case for the
// reading-mode null since the texts lean hard on green tokens the suspect might copy).
std::vector<ReadingItem> watermarked_answers(RuntimeLoaded& teacher, const WatermarkKey& key, const KgwConfig& kc,
                                             int n, int64_t max_tokens) {
  static const char* kTopics[] = {"the ocean", "bread", "volcanoes", "chess", "trains", "bees", "winter", "maps"};
  ChatTemplate tpl = ChatTemplate::from_jinja(teacher.chat_template, *teacher.tokenizer);
  auto proc = std::make_shared<KgwProcessor>(key, kc);
  std::vector<GenerationRequest> reqs;
  std::vector<std::vector<int32_t>> prefixes;
  for (int i = 0; i < n; ++i) {
    GenerationRequest r;
    r.prompt = tpl.encode({{"user", std::string("Write a paragraph about ") + kTopics[i % 8] + "."}}, *teacher.tokenizer);
    r.sampling.temperature = 1.0;
    r.sampling.seed = 77 + uint64_t(i);
    r.max_tokens = max_tokens;
    r.processor = proc;
    prefixes.push_back(r.prompt);
    reqs.push_back(std::move(r));
  }
  GenerateOptions o;
  o.max_batch = n;
  const auto res = generate(teacher, reqs, o);
  std::vector<ReadingItem> items;
  for (int i = 0; i < n; ++i) items.push_back({prefixes[size_t(i)], res[size_t(i)].text});
  return items;
}

}  // namespace

TEST(RadioactivityModel, TopOnePredictionsEqualOnePrefixAtATime) {
  const Models& m = models();
  if (!m.have_teacher) GTEST_SKIP() << "default model not found at " << retort_test::smollm2_path() << " (run scripts/setup.sh)";
  RuntimeModel& lm = *m.teacher.model;
  const Tokenizer& tok = *m.teacher.tokenizer;
  const std::vector<std::vector<int32_t>> seqs = {tok.encode("The capital of France is Paris, and the capital", false, true),
                                                  tok.encode("1, 2, 3, 4, 5,", false, true),
                                                  tok.encode("Bees make honey", false, true)};
  // chunk 4: rows of different lengths leave the batch at different chunks.
  const auto pred = top1_predictions(lm, seqs, /*chunk=*/4);
  ASSERT_EQ(pred.size(), seqs.size());
  const int64_t V = lm.hparams().n_vocab;
  std::vector<float> logits(static_cast<size_t>(V), 0.0f);
  for (size_t s = 0; s < seqs.size(); ++s) {
    ASSERT_EQ(pred[s].size(), seqs[s].size());
    for (size_t j = 0; j < seqs[s].size(); ++j) {
      // Reference: a fresh cache, the prefix [0..j] at once, the last row's logits, argmax (lowest id on ties).
      auto cache = lm.new_cache(1, int64_t(j + 1));
      std::vector<int64_t> t(seqs[s].begin(), seqs[s].begin() + int64_t(j + 1));
      lm.forward_last(t.data(), 1, int64_t(t.size()), {0}, {int64_t(t.size())}, *cache, logits.data());
      const int32_t want = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      EXPECT_EQ(pred[s][j], want) << "sequence " << s << " position " << j;
    }
  }
  // "The capital of France is" continues with " Paris".
  size_t is_at = 0;
  while (is_at < seqs[0].size() && !tok.decode(std::vector<int32_t>(seqs[0].begin(), seqs[0].begin() + int64_t(is_at + 1))).ends_with(" is"))
    ++is_at;
  ASSERT_LT(is_at, seqs[0].size());
  EXPECT_EQ(tok.decode({pred[0][is_at]}), " Paris");
}

TEST(RadioactivityModel, TheCleanTeacherReadingItsOwnWatermarkedTextIsNotRadioactive) {
  const Models& m = models();
  if (!m.have_teacher) GTEST_SKIP() << "default model not found at " << retort_test::smollm2_path() << " (run scripts/setup.sh)";
  RuntimeLoaded& teacher = const_cast<RuntimeLoaded&>(m.teacher);
  const WatermarkKey key = key_with_byte(0x5A);
  for (const std::string ctx : {"lefthash", "selfhash"}) {
    KgwConfig kc;
    kc.context = ctx;
    kc.delta = 4;
    const auto items = watermarked_answers(teacher, key, kc, 12, 96);
    DetectorConfig c;
    c.kgw = kc;
    c.min_tokens = 200;
    // The texts themselves are strongly watermarked...
    RadioactivityTest texts(key, c);
    for (const auto& it : items) texts.add_text(teacher.tokenizer->encode(it.text, false, false));
    EXPECT_LT(texts.result("closed").test.p_value, 1e-20) << ctx;
    // ...but the model that wrote them, never trained on them, reads them without a trace of the key.
    RadioactivityTest test(key, c);
    read_texts_with_suspect(*teacher.model, *teacher.tokenizer, *teacher.tokenizer, items, test);
    const RadioactivityResult r = test.result("open");
    EXPECT_FALSE(r.test.too_short) << ctx;
    EXPECT_GT(r.test.p_value, 1e-3) << ctx << ": " << r.test.score << "/" << r.test.tokens_scored << " green, "
                                    << r.counts.in_text << " units skipped as earlier in the text";
    EXPECT_EQ(r.counts.unscorable, 0);
  }
}

TEST(RadioactivityModel, ASuspectWithAnotherTokenizerIsReadAtSharedBoundaries) {
  const Models& m = models();
  if (!m.have_teacher || !m.have_gemma) GTEST_SKIP() << "needs both smollm2-135m-instruct and gemma3-270m (run scripts/setup.sh)";
  RuntimeLoaded& teacher = const_cast<RuntimeLoaded&>(m.teacher);
  RuntimeLoaded& gemma = const_cast<RuntimeLoaded&>(m.gemma);
  const Tokenizer& ours = *teacher.tokenizer;
  const Tokenizer& theirs = *gemma.tokenizer;
  ASSERT_FALSE(same_tokenizer(ours, theirs));
  const WatermarkKey key = key_with_byte(0x33);
  DetectorConfig c = lefthash(1);
  c.kgw.delta = 4;
  c.min_tokens = 100;
  auto items = watermarked_answers(teacher, key, c.kgw, 6, 64);
  for (auto& it : items) it.prefix = {*theirs.bos_id()};  // Gemma reads the text after its BOS
  RadioactivityTest test(key, c);
  read_texts_with_suspect(*gemma.model, theirs, ours, items, test);
  const RadioactivityResult r = test.result("open");

  // Reference for the positions offered: Gemma's token starts that are also our token starts (offsets
  // computed from decode() of prefixes, not from token bytes).
  int64_t offered = 0, aligned = 0;
  for (const auto& it : items) {
    const auto x = ours.encode(it.text, false, false), s = theirs.encode(it.text, false, false);
    std::set<size_t> our_starts;
    for (size_t t = 0; t <= x.size(); ++t) our_starts.insert(ours.decode(std::vector<int32_t>(x.begin(), x.begin() + t)).size());
    for (size_t j = 0; j < s.size(); ++j) {
      ++offered;
      aligned += our_starts.count(theirs.decode(std::vector<int32_t>(s.begin(), s.begin() + j)).size()) > 0;
    }
  }
  EXPECT_EQ(r.counts.positions, offered);
  // Unaligned positions and predictions that are not one of our tokens are the unscorable ones.
  EXPECT_GE(r.counts.unscorable, offered - aligned);
  EXPECT_GT(r.counts.scored, 100);
  EXPECT_GT(r.test.p_value, 1e-3) << "Gemma never saw our key: " << r.test.score << "/" << r.test.tokens_scored;
}

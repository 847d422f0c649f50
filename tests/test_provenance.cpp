// Model provenance testing (retort/audit/provenance.h).
// References: the sign test against a brute-force count of all 2^n sign patterns; Holm against the
// step-down procedure run directly at each level; the sequential design's family-wise error rate and
// power measured by simulation (suspects whose similarities to candidate and control are exchangeable,
// and suspects that copy the candidate); real models (SmolLM2-135M-Instruct, Gemma 3 270M; GTEST_SKIP
// when absent) in process and through `retort audit provenance`.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>

#include "retort/audit/provenance.h"
#include "retort/decode/generate.h"
#include "retort/io/jsonl.h"
#include "retort/model/runtime_model.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/file.h"
#include "retort/util/parallel.h"
#include "retort/util/stats.h"
#include "test_util.h"

extern char** environ;

namespace {

using namespace retort;
using retort_test::expect_error;
namespace fs = std::filesystem;

const std::string kPrompts = std::string(RETORT_SOURCE_DIR) + "/data/provenance/prompts.jsonl";

TEST(ProvenanceSimilarity, WordsAndPositions) {
  const auto w = split_words("  The cat\tsat\n\non  the mat. ");
  ASSERT_EQ(w.size(), 6u);
  EXPECT_EQ(w[0], "The");
  EXPECT_EQ(w[4], "the");
  EXPECT_EQ(w[5], "mat.");
  EXPECT_TRUE(split_words(" \n\t").empty());

  EXPECT_DOUBLE_EQ(word_prefix_similarity("a b c d", "a b c d", 4), 1.0);
  EXPECT_DOUBLE_EQ(word_prefix_similarity("a b c d", "a x c y", 4), 0.5);
  EXPECT_DOUBLE_EQ(word_prefix_similarity("a  b\nc", "a b c", 4), 0.75);  // whitespace does not matter
  EXPECT_DOUBLE_EQ(word_prefix_similarity("a b", "a b", 4), 0.5);        // a missing word never matches
  EXPECT_DOUBLE_EQ(word_prefix_similarity("", "", 16), 0.0);
  EXPECT_DOUBLE_EQ(word_prefix_similarity("x a b c", "a b c", 3), 0.0);  // position-wise, no alignment
  EXPECT_DOUBLE_EQ(word_prefix_similarity("a b c d e f", "a b c d e z", 5), 1.0);  // only the first k
  EXPECT_DOUBLE_EQ(word_prefix_similarity("Paris.", "paris.", 1), 0.0);             // exact words
}

TEST(ProvenanceSignTest, MatchesBruteForceCount) {
  for (int n = 0; n <= 18; ++n) {
    std::vector<int64_t> at_least(size_t(n) + 2, 0);  // #{patterns with >= k positives}
    for (uint32_t pattern = 0; pattern < (1u << n); ++pattern) {
      const int pos = __builtin_popcount(pattern);
      for (int k = 0; k <= pos; ++k) ++at_least[size_t(k)];
    }
    for (int pos = 0; pos <= n; ++pos) {
      const double want = double(at_least[size_t(pos)]) / std::ldexp(1.0, n);
      const double got = std::exp(sign_test_log_p(pos, n - pos));
      EXPECT_NEAR(got, want, 1e-13 * want) << "n " << n << " positives " << pos;
    }
  }
  EXPECT_EQ(sign_test_log_p(0, 0), 0.0);
  EXPECT_NEAR(sign_test_log_p(1000, 0), -1000 * std::log(2.0), 1e-9);  // 2^-1000: below the double range
}

// Holm's step-down run directly: sort ascending, reject p_(i) while p_(i) <= alpha / (m - i + 1).
std::vector<bool> holm_step_down(const std::vector<double>& p, double alpha) {
  const size_t m = p.size();
  std::vector<size_t> order(m);
  for (size_t i = 0; i < m; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return p[a] < p[b]; });
  std::vector<bool> rej(m, false);
  for (size_t i = 0; i < m; ++i) {
    if (p[order[i]] > alpha / double(m - i)) break;
    rej[order[i]] = true;
  }
  return rej;
}

TEST(ProvenanceHolm, MatchesStepDownAtEveryLevel) {
  std::mt19937_64 rng(7);
  std::uniform_real_distribution<double> u(0.0, 1.0);
  const std::vector<double> alphas = {0.001, 0.01, 0.02, 0.05, 0.1, 0.2};
  for (int trial = 0; trial < 3000; ++trial) {
    const size_t m = 1 + size_t(trial % 6);
    std::vector<double> p(m), lp(m);
    for (size_t i = 0; i < m; ++i) {
      p[i] = std::pow(u(rng), 3.0) * 0.3;                    // many small p-values
      if (i > 0 && u(rng) < 0.2) p[i] = p[i - 1];            // ties
      lp[i] = std::log(p[i]);
    }
    const std::vector<double> adj = holm_bonferroni_log(lp);
    for (double alpha : alphas) {
      const std::vector<bool> rej = holm_step_down(p, alpha);
      for (size_t i = 0; i < m; ++i) {
        const double a = std::exp(adj[i]);
        if (std::fabs(a - alpha) < 1e-12 * alpha) continue;  // on the boundary: rounding decides
        EXPECT_EQ(a <= alpha, bool(rej[i])) << "trial " << trial << " m " << m << " alpha " << alpha;
      }
    }
  }
}

TEST(ProvenanceTest, BadInputNamesTheProblem) {
  ProvenanceConfig c;
  expect_error([&] { ProvenanceTest(c, 1, 0, 437); }, {"no control models", "--controls"});
  expect_error([&] { ProvenanceTest(c, 0, 2, 437); }, {"no candidate", "--candidate"});
  expect_error([&] { ProvenanceTest(c, 1, 2, 20); }, {"20 prompts", "fewer than one batch"});
  ProvenanceConfig b = c;
  b.budget = 40;
  expect_error([&] { check_provenance_config(b); }, {"--budget 40", "smaller than one batch", "--batch 50"});
  ProvenanceConfig w = c;
  w.words = 0;
  expect_error([&] { check_provenance_config(w); }, {"--words"});
  ProvenanceConfig al = c;
  al.alpha = 1.5;
  expect_error([&] { check_provenance_config(al); }, {"--alpha"});

  ProvenanceTest t(c, 1, 1, 100);
  t.add({0.5}, {0.1});
  expect_error([&] { t.look(); }, {"look() after 1 prompts", "batch holds 50"});
  expect_error([&] { t.add({0.5, 0.2}, {0.1}); }, {"one similarity per candidate"});
}

TEST(ProvenanceTest, PlanAndPValues) {
  ProvenanceConfig c;  // k 16, alpha 0.01, batch 50, budget 1000
  ProvenanceTest small(c, 1, 1, 437);
  EXPECT_EQ(small.max_prompts(), 437);
  EXPECT_EQ(small.planned_looks(), 9);  // ceil(437 / 50): the last batch holds 37
  ProvenanceTest t(c, 1, 2, 5000);
  EXPECT_EQ(t.max_prompts(), 1000);
  EXPECT_EQ(t.planned_looks(), 20);
  // 25 prompts favour T over both controls; 10 favour control 1 (and T over control 2); 15 are ties with both.
  for (int i = 0; i < 50; ++i) {
    if (i < 25) t.add({0.5}, {0.25, 0.25});
    else if (i < 35) t.add({0.25}, {0.5, 0.0});
    else t.add({0.25}, {0.25, 0.25});
  }
  t.look();
  const ProvenanceCandidate& r = t.candidates()[0];
  EXPECT_EQ(r.controls[0].positive, 25);
  EXPECT_EQ(r.controls[0].negative, 10);
  EXPECT_EQ(r.controls[0].ties, 15);
  EXPECT_EQ(r.controls[1].positive, 35);
  EXPECT_EQ(r.controls[1].negative, 0);
  EXPECT_NEAR(r.controls[0].log_p, log_binomial_sf(25, 35, 0.5), 1e-12);
  EXPECT_NEAR(r.controls[1].log_p, 35 * std::log(0.5), 1e-9);
  EXPECT_EQ(r.log_p, r.controls[0].log_p);  // the weaker control decides
  EXPECT_NEAR(r.log_p_seq, std::log(20.0) + r.log_p, 1e-12);
  EXPECT_NEAR(r.mean_sim(), (25 * 0.5 + 25 * 0.25) / 50, 1e-12);
  EXPECT_NEAR(r.mean_sim_control(0), (25 * 0.25 + 10 * 0.5 + 15 * 0.25) / 50, 1e-12);
  // P[Bin(35, 1/2) >= 25] = 0.0083 > 0.01 / 20: not yet, and far from futile.
  EXPECT_FALSE(r.derived);
  EXPECT_FALSE(r.futile);
  EXPECT_FALSE(t.stopped());
}

// --- Simulation -----------------------------------------------------------------------------------

// A prompt's answers as word-position matches out of k = 16: each of the 16 positions of a model's answer
// agrees with the suspect's with probability q (the prompt's "easiness", shared by every model), raised
// toward 1 for a candidate the suspect was derived from. With probability `tie` a control and the
// candidate give the same answer (same similarity) — greedy answers to easy prompts often coincide.
struct Simulator {
  std::mt19937_64 rng;
  explicit Simulator(uint64_t seed) : rng(seed) {}
  double uniform() { return double(rng() >> 11) * 0x1.0p-53; }
  double sim(double q) {
    int m = 0;
    for (int j = 0; j < 16; ++j) m += uniform() < q;
    return m / 16.0;
  }
  // Runs one suspect through the sequential test. copy[j] > 0: the suspect was derived from candidate j
  // (its agreement is q + copy (1 - q)).
  void run(ProvenanceTest& t, const std::vector<double>& copy, double tie = 0.2) {
    const size_t nt = copy.size(), nc = t.candidates()[0].controls.size();
    while (int64_t n = t.next_batch()) {
      for (int64_t i = 0; i < n; ++i) {
        const double q = std::pow(uniform(), 2.0) * 0.8;
        std::vector<double> sc(nc), st(nt);
        for (size_t c = 0; c < nc; ++c) sc[c] = sim(q);
        for (size_t j = 0; j < nt; ++j) {
          if (!t.wants_candidate(j)) {
            st[j] = std::nan("");
            continue;
          }
          st[j] = copy[j] > 0 ? sim(q + copy[j] * (1 - q)) : uniform() < tie ? sc[0] : sim(q);
        }
        t.add(st, sc);
      }
      t.look();
    }
  }
};

struct SimSummary {
  int64_t runs = 0, any_derived = 0;
  std::vector<int64_t> derived;  // per candidate
  double mean_prompts = 0;
};

SimSummary simulate(const ProvenanceConfig& c, int64_t runs, const std::vector<double>& copy, int64_t n_controls,
                    uint64_t seed) {
  SimSummary s;
  s.runs = runs;
  s.derived.assign(copy.size(), 0);
  Simulator sim(seed);
  for (int64_t r = 0; r < runs; ++r) {
    ProvenanceTest t(c, int64_t(copy.size()), n_controls, 100000);
    sim.run(t, copy);
    bool any = false;
    for (size_t j = 0; j < copy.size(); ++j) {
      s.derived[j] += t.candidates()[j].derived;
      any = any || t.candidates()[j].derived;
    }
    s.any_derived += any;
    s.mean_prompts += double(t.prompts_used()) / double(runs);
  }
  return s;
}

TEST(ProvenanceSequential, FalsePositiveRateUnderTheNullIsAtMostAlpha) {
  ProvenanceConfig c;  // alpha 0.01, batch 50, budget 1000: 20 looks at 0.01 / 20
  const SimSummary s = simulate(c, 2000, {0.0, 0.0}, 2, 11);
  const double fpr = double(s.any_derived) / double(s.runs);
  std::printf("[ null: 2000 suspects, 2 candidates, 2 controls, alpha 0.01 ] family-wise false positives %lld "
              "(rate %.4f), mean prompts %.0f\n", (long long)s.any_derived, fpr, s.mean_prompts);
  EXPECT_LE(fpr, c.alpha);
  // Nothing to find: most runs go (nearly) to the end of the budget; futility may stop the last looks.
  EXPECT_GT(s.mean_prompts, 900);
}

TEST(ProvenanceSequential, OneLookIsCalibratedNotJustConservative) {
  // One look (budget = batch): the sign test alone at alpha 0.05 over 200 prompts. Its size must be <= alpha
  // and not far below (the exact test is discrete, nothing else is conservative here).
  ProvenanceConfig c;
  c.alpha = 0.05;
  c.batch = 200;
  c.budget = 200;
  const SimSummary s = simulate(c, 2000, {0.0}, 1, 12);
  const double fpr = double(s.any_derived) / double(s.runs);
  std::printf("[ null, one look, alpha 0.05 ] false positive rate %.4f\n", fpr);
  EXPECT_LE(fpr, 0.05 + 3 * std::sqrt(0.05 * 0.95 / 2000));
  EXPECT_GE(fpr, 0.02);
}

TEST(ProvenanceSequential, PowerAndEarlyStoppingForADerivedSuspect) {
  ProvenanceConfig c;
  // A weak copy: each word position agrees with the suspect 3% more often (of what is left) than an unrelated
  // model's. (At 2%, power over the 1,000-prompt budget falls to about 0.77.)
  const SimSummary weak = simulate(c, 300, {0.03}, 2, 13);
  // A clear copy: 60% — a fine-tune or distillation of the candidate.
  const SimSummary clear = simulate(c, 300, {0.6}, 2, 14);
  std::printf("[ derived: 300 suspects each ] weak copy: power %.3f, mean prompts %.0f; clear copy: power %.3f, "
              "mean prompts %.0f\n", double(weak.derived[0]) / 300, weak.mean_prompts, double(clear.derived[0]) / 300,
              clear.mean_prompts);
  EXPECT_GE(weak.derived[0], 285);   // power >= 0.95
  EXPECT_EQ(clear.derived[0], 300);
  EXPECT_NEAR(clear.mean_prompts, 50, 1e-9);  // decided at the first look
  EXPECT_LT(weak.mean_prompts, 600);  // a null suspect uses ~940 (FalsePositiveRate... above)
}

TEST(ProvenanceSequential, DecidedCandidatesAreNotAskedAgain) {
  // Candidate 1 is the parent (clear), candidate 2 is not: candidate 1 is decided at look 1 and asked nothing
  // more, while candidate 2 runs on to the budget (or its futility).
  ProvenanceConfig c;
  c.budget = 300;
  Simulator sim(15);
  ProvenanceTest t(c, 2, 2, 437);
  sim.run(t, {0.6, 0.0});
  const auto& r = t.candidates();
  EXPECT_TRUE(r[0].derived);
  EXPECT_EQ(r[0].decided_look, 1);
  EXPECT_EQ(r[0].prompts, 50);
  EXPECT_FALSE(r[1].derived);
  EXPECT_GT(r[1].prompts, 50);
  EXPECT_EQ(t.prompts_used(), r[1].prompts);
  // A decided candidate must be given NaN.
  ProvenanceTest u(c, 1, 1, 437);
  for (int i = 0; i < 50; ++i) u.add({1.0}, {0.0});
  u.look();
  ASSERT_TRUE(u.candidates()[0].derived);
  EXPECT_TRUE(u.stopped());
  EXPECT_TRUE(u.stopped_early());
  EXPECT_EQ(u.next_batch(), 0);
}

TEST(ProvenanceSequential, FutilityOnlyWhenEvenAPerfectRestCouldNotPass) {
  // Candidate exactly like the control: every prompt ties (n = 0) or goes against it. Check at every look
  // that "futile" is declared exactly when adding all-positive prompts up to the budget would not pass.
  ProvenanceConfig c;
  c.budget = 500;
  ProvenanceTest t(c, 1, 1, 437);  // 437 prompts: 9 looks, the last of 37
  Simulator sim(16);
  bool saw_futile = false;
  while (int64_t n = t.next_batch()) {
    for (int64_t i = 0; i < n; ++i) {
      const double u = sim.uniform();
      t.add({u < 0.5 ? 0.25 : 0.0}, {u < 0.5 ? 0.25 : u < 0.8 ? 0.5 : 0.0});  // ties, or the control wins
    }
    t.look();
    const ProvenanceCandidate& r = t.candidates()[0];
    const int64_t left = t.max_prompts() - t.prompts_used();
    const double best = sign_test_log_p(r.controls[0].positive + left, r.controls[0].negative);
    const bool could_pass = std::log(double(t.planned_looks())) + std::min(best, r.log_p_min) <= std::log(c.alpha);
    if (left > 0) EXPECT_EQ(r.futile, !could_pass) << "look " << t.looks();
    saw_futile = saw_futile || r.futile;
  }
  EXPECT_TRUE(saw_futile);
  EXPECT_TRUE(t.stopped_early());
  EXPECT_LT(t.prompts_used(), 437);
  EXPECT_FALSE(t.candidates()[0].derived);
}

// --- Real models ------------------------------------------------------------------------------------

struct RealPrompt {
  std::vector<ChatMessage> messages;
};

std::vector<RealPrompt> first_prompts(size_t n) {
  std::vector<RealPrompt> out;
  for_each_jsonl_object(kPrompts, [&](const nlohmann::json& j, int64_t) {
    if (out.size() >= n) return;
    RealPrompt p;
    for (const auto& m : j["messages"]) p.messages.push_back({m["role"].get<std::string>(), m["content"].get<std::string>()});
    out.push_back(std::move(p));
  });
  return out;
}

// Prompts the in-process real-model tests ask: 20, with a wide margin. Measured with the teacher's answers
// as the suspect: closer to the teacher than to Gemma on every one of the first 50 prompts (signs +50 −0);
// over the first 20 (+20 −0) the sign test gives p = 2^-20 ≈ 1e-6 against α = 0.01 (17 of 20 would still
// pass), mean similarity 0.69 to the teacher (test: > 0.5) and 0.025 to Gemma (test: < 0.3); over 50,
// 0.71 and 0.022.
constexpr size_t kRealPrompts = 20;

// Greedy answers of a model in the cache to the first kRealPrompts shipped prompts, 16 tokens, through its
// chat template: computed once per test binary.
const std::vector<std::string>& answers(const std::string& path) {
  static std::map<std::string, std::vector<std::string>> cache;
  if (auto it = cache.find(path); it != cache.end()) return it->second;
  retort::set_num_threads(2);
  RuntimeLoaded m = load_runtime_model(path);
  const ChatTemplate tpl = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer);
  std::vector<GenerationRequest> reqs;
  for (const RealPrompt& p : first_prompts(kRealPrompts)) {
    GenerationRequest q;
    q.prompt = tpl.encode(p.messages, *m.tokenizer);
    q.sampling.temperature = 0;
    q.max_tokens = 16;
    reqs.push_back(std::move(q));
  }
  std::vector<std::string> out;
  for (auto& g : generate(m, reqs)) out.push_back(g.text);
  return cache[path] = out;
}

ProvenanceTest run_real(const std::vector<std::string>& s, const std::vector<std::string>& t,
                        const std::vector<std::string>& c) {
  ProvenanceConfig cfg;
  cfg.batch = cfg.budget = int64_t(s.size());  // one look at alpha 0.01
  ProvenanceTest test(cfg, 1, 1, int64_t(s.size()));
  for (size_t i = 0; i < s.size(); ++i) test.add_answers(s[i], {t[i]}, {c[i]});
  test.look();
  return test;
}

TEST(ProvenanceRealModels, TeacherFileIsDerivedFromTheTeacher) {
  if (!fs::exists(retort_test::smollm2_path()) || !fs::exists(retort_test::gemma3_path()))
    GTEST_SKIP() << "needs smollm2-135m-instruct and gemma3-270m in the model cache";
  const auto& teacher = answers(retort_test::smollm2_path());
  const auto& gemma = answers(retort_test::gemma3_path());
  const ProvenanceTest t = run_real(teacher, teacher, gemma);
  const ProvenanceCandidate& r = t.candidates()[0];
  std::printf("[ suspect = teacher, control = gemma3 ] sim to teacher %.3f, to gemma3 %.3f, +%lld -%lld =%lld, "
              "p %.3g\n", r.mean_sim(), r.mean_sim_control(0), (long long)r.controls[0].positive,
              (long long)r.controls[0].negative, (long long)r.controls[0].ties, std::exp(r.log_p));
  EXPECT_TRUE(r.derived);
  EXPECT_GT(r.mean_sim(), 0.5);
  EXPECT_LT(r.mean_sim_control(0), 0.3);
}

TEST(ProvenanceRealModels, GemmaIsNotShownDerivedFromTheTeacher) {
  if (!fs::exists(retort_test::smollm2_path()) || !fs::exists(retort_test::gemma3_path()))
    GTEST_SKIP() << "needs smollm2-135m-instruct and gemma3-270m in the model cache";
  const auto& teacher = answers(retort_test::smollm2_path());
  const auto& gemma = answers(retort_test::gemma3_path());
  const ProvenanceTest t = run_real(gemma, teacher, teacher);  // the control is the candidate itself
  const ProvenanceCandidate& r = t.candidates()[0];
  EXPECT_FALSE(r.derived);
  EXPECT_EQ(r.controls[0].positive + r.controls[0].negative, 0);
  EXPECT_EQ(r.log_p, 0.0);
}

// --- The command ------------------------------------------------------------------------------------

struct CliRun {
  int code = -1;
  std::string out, err;
};

CliRun run_cli(const std::vector<std::string>& args) {
  static int counter = 0;
  const fs::path dir = fs::temp_directory_path() / ("retort_test_provenance_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const std::string out = (dir / ("run" + std::to_string(counter) + ".out")).string();
  const std::string err = (dir / ("run" + std::to_string(counter++) + ".err")).string();
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  // $RETORT_TEST_CLI runs another build of the command instead of this tree's.
  const char* cli = std::getenv("RETORT_TEST_CLI");
  std::vector<std::string> argv_s = {cli && *cli ? cli : RETORT_CLI_PATH};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);
  CliRun r;
  pid_t pid = 0;
  if (posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), environ) != 0) return r;
  posix_spawn_file_actions_destroy(&fa);
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st)) r.code = WEXITSTATUS(st);
  auto slurp = [](const std::string& p) {
    std::ifstream f(p);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  };
  r.out = slurp(out);
  r.err = slurp(err);
  fs::remove(out);
  fs::remove(err);
  return r;
}

bool cli_has_provenance() {
  static const bool has = [] {
    const CliRun r = run_cli({"audit", "provenance", "--help"});
    return r.code == 0 && r.out.find("--candidate") != std::string::npos;
  }();
  return has;
}

#define REQUIRE_CLI()                                                                                    \
  if (!cli_has_provenance())                                                                             \
  GTEST_SKIP() << "`retort audit provenance` is not registered in this build (register_audit_provenance)"

TEST(ProvenanceCli, BadInputIsAClearError) {
  REQUIRE_CLI();
  const std::string teacher = retort_test::smollm2_path();
  auto expect_fail = [](const CliRun& r, std::initializer_list<std::string> parts) {
    EXPECT_EQ(r.code, 1) << r.err;
    for (const auto& p : parts) EXPECT_NE(r.err.find(p), std::string::npos) << "missing \"" << p << "\" in: " << r.err;
  };
  expect_fail(run_cli({"audit", "provenance", "--suspect", teacher, "--candidate", teacher}), {"no control models"});
  expect_fail(run_cli({"audit", "provenance", "--suspect", teacher, "--candidate", teacher, "--controls", teacher,
                       "--budget", "10"}),
              {"--budget 10", "smaller than one batch"});
  expect_fail(run_cli({"audit", "provenance", "--suspect", "/nonexistent/suspect.gguf", "--candidate", teacher,
                       "--controls", teacher}),
              {"suspect (/nonexistent/suspect.gguf) cannot be loaded"});
  expect_fail(run_cli({"audit", "provenance", "--suspect", "url:http://127.0.0.1:9/v1#m", "--candidate", teacher,
                       "--controls", teacher}),
              {"suspect (url:http://127.0.0.1:9/v1#m) did not answer as an OpenAI-compatible endpoint", "127.0.0.1:9"});
  expect_fail(run_cli({"audit", "provenance", "--suspect", teacher, "--candidate", teacher, "--controls", teacher,
                       "--prompts", "/nonexistent/prompts.jsonl"}),
              {"/nonexistent/prompts.jsonl"});
}

TEST(ProvenanceCli, TeacherFileAgainstGemmaControlEndToEnd) {
  REQUIRE_CLI();
  if (!fs::exists(retort_test::smollm2_path()) || !fs::exists(retort_test::gemma3_path()))
    GTEST_SKIP() << "needs smollm2-135m-instruct and gemma3-270m in the model cache";
  retort_test::TempDir tmp;
  const CliRun r = run_cli({"audit", "provenance", "--suspect", retort_test::smollm2_path(), "--candidate",
                            "smollm2-135m-instruct", "--controls", retort_test::gemma3_path(), "--budget", "10",
                            "--batch", "10", "--max-tokens", "16", "-t", "2", "--json", "--out", tmp / "out.json", "--answers",
                            tmp / "answers.jsonl"});
  ASSERT_EQ(r.code, 0) << r.err;
  const auto j = nlohmann::json::parse(r.out);
  EXPECT_EQ(j, nlohmann::json::parse(retort::read_file(tmp / "out.json")));
  EXPECT_EQ(j["audit"], "provenance");
  ASSERT_EQ(j["candidates"].size(), 1u);
  EXPECT_EQ(j["candidates"][0]["derived"], true);
  EXPECT_EQ(j["candidates"][0]["decision"], "derived from smollm2-135m-instruct");
  EXPECT_EQ(j["candidates"][0]["decided_at_look"], 1);  // 10 of 10 prompts closer: p = 2^-10 < 0.01
  EXPECT_EQ(j["looks_planned"], 1);
  EXPECT_EQ(j["queries"]["suspect"], 10);
  EXPECT_EQ(j["queries"]["all_models"], 20);  // the suspect and the candidate are one file: asked once
  EXPECT_EQ(j["candidates"][0]["candidate"]["same_model_as"], "suspect");
  EXPECT_EQ(j["suspect"]["sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(j["suspect"]["prompt_format"], "chat template (chatml)");
  EXPECT_EQ(j["controls"][0]["kind"], "local");
  EXPECT_NE(j["verdict"].get<std::string>().find("derived"), std::string::npos);
  int lines = 0;
  std::ifstream a(tmp / "answers.jsonl");
  for (std::string line; std::getline(a, line);) {
    const auto row = nlohmann::json::parse(line);
    EXPECT_EQ(row["suspect"], row["candidates"][0]);
    ++lines;
  }
  EXPECT_EQ(lines, 10);

  // The case file from this result alone: provenance shown, no watermark test run.
  const CliRun rep = run_cli({"audit", "report", "--provenance", tmp / "out.json", "--out", tmp / "case"});
  ASSERT_EQ(rep.code, 0) << rep.err;
  const auto c = nlohmann::json::parse(retort::read_file(tmp / "case/case.json"));
  EXPECT_EQ(c["verdict"]["finding"], "provenance_only");
  EXPECT_NE(c["verdict"]["paragraph"].get<std::string>().find("derived from smollm2-135m-instruct"), std::string::npos)
      << c["verdict"];
  const std::string html = retort::read_file(tmp / "case/case.html");
  EXPECT_NE(html.find("id=\"provenance\""), std::string::npos);
  EXPECT_NE(html.find("vs " + retort_test::gemma3_path()), std::string::npos);  // the control's row
  EXPECT_NE(html.find("derived from smollm2-135m-instruct"), std::string::npos);
}

}  // namespace

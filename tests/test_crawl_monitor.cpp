// The crawl monitor (protect/crawl_monitor.h): its statistics against float64 recomputations and
// published values, calibration, account and cluster verdicts on synthetic traffic, the serve
// database's monitor tables.
#include <sqlite3.h>

#include <cmath>
#include <random>
#include <set>

#include "retort/protect/crawl_monitor.h"
#include "retort/serve/monitor_db.h"
#include "retort/serve/serve_db.h"
#include "retort/util/stats.h"
#include "test_util.h"

using namespace retort;
using retort_test::expect_error;
using retort_test::TempDir;

TEST(MonitorStats, NormalQuantileMatchesKnownValues) {
  EXPECT_NEAR(normal_quantile(0.975), 1.959963984540054, 1e-12);
  EXPECT_NEAR(normal_quantile(0.5), 0.0, 1e-15);
  EXPECT_NEAR(normal_quantile(1e-10), -6.361340902404056, 1e-9);
  for (double p : {1e-6, 0.01, 0.3, 0.77, 0.999999}) EXPECT_NEAR(normal_sf(-normal_quantile(p)), p, 1e-12 * std::max(1.0, p / 1e-6));
}

TEST(MonitorStats, ShapiroWilkOnPublishedExamples) {
  // Shapiro & Wilk (1965), section 4 example: weights of 11 men (lb), W = 0.79 (two decimals in the paper).
  EXPECT_NEAR(shapiro_wilk_w({148, 154, 158, 160, 161, 162, 166, 170, 182, 195, 236}), 0.79, 0.006);
  // Normal scores are as normal as a sample gets; a two-point sample is far from normal.
  std::vector<double> scores;
  for (int i = 1; i <= 50; ++i) scores.push_back(normal_quantile((i - 0.375) / 50.25));
  EXPECT_GT(shapiro_wilk_w(scores), 0.99);
  std::vector<double> two(40, 0.0);
  for (size_t i = 0; i < 20; ++i) two[i] = 1;
  EXPECT_LT(shapiro_wilk_w(two), 0.7);
  EXPECT_EQ(shapiro_wilk_w({3, 3, 3, 3}), 1.0);
  expect_error([] { shapiro_wilk_w({1, 2}); }, {"3 to 5000"});
}

TEST(MonitorStats, MinHashEstimatesJaccard) {
  const auto a = minhash_signature("Explain photosynthesis in detail, step by step, as a textbook would.");
  const auto b = minhash_signature("Explain plate tectonics in detail, step by step, as a textbook would.");
  const auto c = minhash_signature("My tomato plants have yellow leaves, what should I do?");
  // Bigram sets: a and b share 9 of 13 distinct bigrams (Jaccard 0.69); a and c share none.
  EXPECT_NEAR(minhash_similarity(a, b), 9.0 / 13.0, 0.2);
  EXPECT_LT(minhash_similarity(a, c), 0.1);
  EXPECT_EQ(minhash_similarity(a, minhash_signature("explain PHOTOSYNTHESIS in detail step by step as a textbook would")), 1.0);
}

namespace {

// Synthetic traffic. Benign users talk about two topics of their own (embeddings near two random unit
// directions), pause 5-120 s, vary their parameters; crawlers cover everything evenly and regularly.
struct Traffic {
  std::mt19937_64 rng{20261203};
  static constexpr int kDim = 16;
  std::vector<float> direction() {
    std::normal_distribution<float> n(0, 1);
    std::vector<float> v(kDim);
    double s = 0;
    for (auto& x : v) x = n(rng), s += x * x;
    for (auto& x : v) x = float(x / std::sqrt(s));
    return v;
  }
  std::vector<float> near(const std::vector<float>& c, float noise) {
    std::normal_distribution<float> n(0, noise);
    std::vector<float> v(c);
    for (auto& x : v) x += n(rng);
    return v;
  }
  std::string words(int n) {
    std::string s;
    for (int i = 0; i < n; ++i) s += "w" + std::to_string(rng() % 5000) + " ";
    return s;
  }
  std::vector<MonitorEvent> benign(const std::string& account, int requests, int64_t t0) {
    const auto topic_a = direction(), topic_b = direction();
    std::vector<MonitorEvent> out;
    int64_t t = t0;
    for (int i = 0; i < requests; ++i) {
      MonitorEvent e;
      e.account = account;
      e.unix_ms = t;
      t += 5000 + int64_t(rng() % 115000);
      e.prompt_text = words(8 + int(rng() % 12));
      e.embedding = near(rng() % 2 ? topic_a : topic_b, 0.35f);
      e.has_history = rng() % 2;
      if (rng() % 4 == 0) e.temperature = 0.7;
      if (rng() % 5 == 0) e.max_tokens = 100 + int64_t(rng() % 400);
      out.push_back(std::move(e));
    }
    return out;
  }
  MonitorEvent crawl(const std::string& account, int64_t t) {
    MonitorEvent e;
    e.account = account;
    e.unix_ms = t;
    e.prompt_text = words(12);
    e.embedding = near(std::vector<float>(kDim, 0.0f), 1.0f);  // every direction
    e.max_tokens = 256;
    e.top_logprobs = 20;
    return e;
  }
};

MonitorCalibration calibrated(Traffic& tr, int accounts) {
  std::map<std::string, std::vector<MonitorEvent>> benign;
  for (int u = 0; u < accounts; ++u) {
    const std::string name = "cal-" + std::to_string(u);
    benign[name] = tr.benign(name, 60, 0);
  }
  CalibrateOptions o;
  o.window = 32;
  o.min_requests = 8;
  o.pool_size = 256;
  o.model = "synthetic";
  return calibrate_monitor(benign, o);
}

}  // namespace

TEST(CrawlMonitor, MmdEqualsFloat64Recomputation) {
  Traffic tr;
  const MonitorCalibration cal = calibrated(tr, 12);
  ASSERT_EQ(cal.n_embd, Traffic::kDim);
  ASSERT_GE(cal.pool.size(), 200u);
  auto events = tr.benign("x", 20, 0);
  std::vector<MonitorItem> items;
  for (const auto& e : events) items.push_back(make_monitor_item(e, &cal));
  std::vector<const MonitorItem*> win;
  for (const auto& it : items) win.push_back(&it);
  const double got = monitor_statistics(win, {}, &cal).at("mmd");
  // float64: centre, normalise, Gaussian kernel, the unbiased MMD² against the pool.
  auto unit = [&](const std::vector<float>& e) {
    std::vector<double> u(e.size());
    double n = 0;
    for (size_t i = 0; i < e.size(); ++i) u[i] = double(e[i]) - double(cal.center[i]), n += u[i] * u[i];
    for (auto& x : u) x /= std::sqrt(n);
    return u;
  };
  auto k = [&](const std::vector<double>& a, const std::vector<double>& b) {
    double d = 0;
    for (size_t i = 0; i < a.size(); ++i) d += (a[i] - b[i]) * (a[i] - b[i]);
    return std::exp(-d / (2 * cal.sigma2));
  };
  std::vector<std::vector<double>> x, y;
  for (const auto& e : events) x.push_back(unit(e.embedding));
  for (const auto& p : cal.pool) y.push_back(std::vector<double>(p.begin(), p.end()));
  double kxx = 0, kyy = 0, kxy = 0;
  const double m = double(x.size()), p = double(y.size());
  for (size_t i = 0; i < x.size(); ++i)
    for (size_t j = 0; j < x.size(); ++j)
      if (i != j) kxx += k(x[i], x[j]);
  for (size_t i = 0; i < y.size(); ++i)
    for (size_t j = 0; j < y.size(); ++j)
      if (i != j) kyy += k(y[i], y[j]);
  for (const auto& a : x)
    for (const auto& b : y) kxy += k(a, b);
  const double want = kxx / (m * (m - 1)) + kyy / (p * (p - 1)) - 2 * kxy / (m * p);
  // Unit vectors stored in float32: kernel values carry ~1e-7 relative error each.
  EXPECT_NEAR(got, want, 1e-5);
}

TEST(CrawlMonitor, FlagsCrawlersNotHeldOutBenignUsers) {
  Traffic tr;
  const MonitorCalibration cal = calibrated(tr, 24);
  for (const char* t : {"mmd", "prada", "rate", "spread", "logprobs"}) EXPECT_TRUE(cal.threshold.count(t)) << t;
  CrawlMonitor m(cal);
  // Ten held-out benign users and one crawler (a request every 2 s), interleaved in time.
  std::vector<MonitorEvent> stream;
  for (int u = 0; u < 10; ++u) {
    auto ev = tr.benign("user-" + std::to_string(u), 60, 0);
    stream.insert(stream.end(), ev.begin(), ev.end());
  }
  for (int i = 0; i < 200; ++i) stream.push_back(tr.crawl("crawler", 1000 + int64_t(i) * 2000));
  std::stable_sort(stream.begin(), stream.end(), [](const auto& a, const auto& b) { return a.unix_ms < b.unix_ms; });
  for (const auto& e : stream) m.observe(e);
  m.update_clusters();
  const auto crawler = m.flagged("crawler");
  ASSERT_TRUE(crawler.has_value());
  EXPECT_LE(crawler->flagged_at_request, cal.min_requests + 4);
  ASSERT_FALSE(crawler->reasons.empty());
  EXPECT_GE(crawler->reasons[0].ratio, 1.0);
  EXPECT_FALSE(crawler->reasons[0].text.empty());
  for (int u = 0; u < 10; ++u) {
    const auto v = m.flagged("user-" + std::to_string(u));
    EXPECT_FALSE(v.has_value()) << "user-" << u << " flagged: " << v->to_json().dump();
  }
}

TEST(CrawlMonitor, LinksAHydraCrawlIntoOneCluster) {
  Traffic tr;
  MonitorCalibration cal = calibrated(tr, 24);
  CrawlMonitor m(cal);
  std::vector<MonitorEvent> stream;
  for (int u = 0; u < 6; ++u) {
    auto ev = tr.benign("user-" + std::to_string(u), 40, 0);
    stream.insert(stream.end(), ev.begin(), ev.end());
  }
  // 12 accounts, 10 requests each, one prompt set split between them, one client's parameters; the
  // router hands each request to an account at random, so no account keeps a machine's rhythm.
  std::vector<int> owner;
  for (int i = 0; i < 120; ++i) owner.push_back(i % 12);
  std::shuffle(owner.begin(), owner.end(), tr.rng);
  for (int i = 0; i < 120; ++i) {
    MonitorEvent e = tr.crawl("hydra-" + std::to_string(owner[size_t(i)]), 5000 + int64_t(i) * 2500);
    e.top_logprobs = -1;  // no logprobs: nothing per account gives it away
    stream.push_back(e);
  }
  std::stable_sort(stream.begin(), stream.end(), [](const auto& a, const auto& b) { return a.unix_ms < b.unix_ms; });
  for (const auto& e : stream) m.observe(e);
  m.update_clusters();
  std::optional<MonitorVerdict> cluster;
  for (const auto& v : m.verdicts())
    if (v.cluster && v.members[0].rfind("hydra-", 0) == 0 && (!cluster || v.members.size() > cluster->members.size()))
      cluster = v;  // (earlier, smaller clusters that were flagged stay on record)
  ASSERT_TRUE(cluster.has_value());
  EXPECT_EQ(cluster->members.size(), 12u);
  for (const auto& name : cluster->members) EXPECT_EQ(name.rfind("hydra-", 0), 0u) << name;
  EXPECT_TRUE(cluster->flagged);
  EXPECT_EQ(cluster->requests, 120);
  EXPECT_FALSE(cluster->links.empty());
  for (int i = 0; i < 12; ++i) EXPECT_TRUE(m.flagged("hydra-" + std::to_string(i)).has_value());
  for (int u = 0; u < 6; ++u) EXPECT_FALSE(m.flagged("user-" + std::to_string(u)).has_value());
}

// The demo's hydra (scripts/demo.py): `retort capture --api-keys-file` over 8 accounts, sample i with key
// i mod 8, 204 prompts, the capture's fixed parameters, among benign users; monitor defaults (window 64,
// min_requests 16). The pairwise runs test needs 6 requests of each account inside their common span — 7
// sent, 56 for the hydra — to reach z 3.03; the turn-taking test links the 8 once each has sent 4 (32),
// and accounts link at once while joining, so the cluster is flagged by then (at 25-event updates with
// accounts joining at 8 and no group test: 75).
TEST(CrawlMonitor, FlagsARoundRobinHydraAsSoonAsItsTimingShows) {
  Traffic tr;
  // People's timing: sessions of 1-8 requests 5-60 s apart, 5-40 min between sessions (Traffic::benign's
  // steady pace makes benign pairs alternate, which raises the timing bar to z ≈ 6; see below).
  auto sessions = [&](std::vector<MonitorEvent> ev) {
    int64_t t = int64_t(tr.rng() % 600'000);
    int left = 0;
    for (auto& e : ev) {
      if (left-- <= 0) left = 1 + int(tr.rng() % 8), t += 300'000 + int64_t(tr.rng() % 2'100'000);
      e.unix_ms = t += 5'000 + int64_t(tr.rng() % 55'000);
    }
    return ev;
  };
  std::map<std::string, std::vector<MonitorEvent>> benign_cal;
  for (int u = 0; u < 24; ++u)
    benign_cal["cal-" + std::to_string(u)] = sessions(tr.benign("cal-" + std::to_string(u), 70, 0));
  CalibrateOptions o;
  o.pool_size = 256;
  o.model = "synthetic";
  const MonitorCalibration cal = calibrate_monitor(benign_cal, o);
  ASSERT_EQ(cal.min_requests, 16);
  std::vector<MonitorEvent> stream;
  for (int u = 0; u < 8; ++u) {
    auto ev = sessions(tr.benign("user-" + std::to_string(u), 40, 0));
    stream.insert(stream.end(), ev.begin(), ev.end());
  }
  std::exponential_distribution<double> gap(1.0 / 380);  // ~2.6 requests a second, as in the demo
  double t = 60'000;
  for (int i = 0; i < 204; ++i) {
    MonitorEvent e = tr.crawl("hydra-" + std::to_string(i % 8), int64_t(t += gap(tr.rng)));
    e.max_tokens = 48, e.temperature = 1, e.seed_given = true;  // and top_logprobs 20
    stream.push_back(e);
  }
  std::stable_sort(stream.begin(), stream.end(), [](const auto& a, const auto& b) { return a.unix_ms < b.unix_ms; });
  EXPECT_EQ(cal.link_turn_taking_p, MonitorCalibration::kMaxTurnTakingP) << "benign sessions never take turns";
  // A server observes requests as it reads their prompts: of several in flight a later one may be observed
  // first, with its arrival time. Jumbled: hydra-1's 2nd and 3rd requests observed the other way round.
  for (bool jumbled : {false, true}) {
    SCOPED_TRACE(jumbled ? "observed out of order" : "observed in order");
    std::vector<MonitorEvent> order = stream;
    if (jumbled) {
      std::vector<size_t> at;
      for (size_t i = 0; i < order.size(); ++i)
        if (order[i].account == "hydra-1") at.push_back(i);
      ASSERT_GE(at.size(), 3u);
      std::swap(order[at[1]], order[at[2]]);
    }
    CrawlMonitor m(cal);
    int hydra_sent = 0, flagged_at = -1;
    for (const auto& e : order) {
      hydra_sent += e.account.rfind("hydra-", 0) == 0;
      for (const auto& v : m.observe(e))
        if (flagged_at < 0 && v.cluster && v.members[0].rfind("hydra-", 0) == 0) flagged_at = hydra_sent;
    }
    ASSERT_GT(flagged_at, 0) << "never flagged as a cluster; link_lockstep_z " << cal.link_lockstep_z;
    EXPECT_LE(flagged_at, 4 * 8 + 4) << "link_turn_taking_p " << cal.link_turn_taking_p;
    for (int u = 0; u < 8; ++u) EXPECT_FALSE(m.flagged("user-" + std::to_string(u)).has_value()) << u;
  }
}

// The runs test against its definition in float64, and its null distribution: independent Poisson
// streams give z of mean 0 and deviation 1; accounts served in turn alternate (z large).
TEST(MonitorStats, LockstepRunsTest) {
  // Perfect alternation, 20 and 20, a first: the common span drops a's first and b's last request, so
  // n1 = n2 = 19, R = 38, E[R] = 1 + 2·361/38 = 20, Var[R] = 2·361·(722 − 38)/(38²·37).
  std::vector<int64_t> a, b;
  for (int i = 0; i < 20; ++i) a.push_back(1000 * (2 * i)), b.push_back(1000 * (2 * i + 1));
  EXPECT_NEAR(lockstep_z(a, b), (38.0 - 20.0) / std::sqrt(2.0 * 361 * 684 / (1444.0 * 37)), 1e-12);
  // Only the common span counts: b starting after a ends leaves nothing in common.
  std::vector<int64_t> late;
  for (int i = 0; i < 20; ++i) late.push_back(100'000 + 1000 * i);
  EXPECT_TRUE(std::isnan(lockstep_z(a, late)));
  EXPECT_TRUE(std::isnan(lockstep_z({1, 2, 3}, {4, 5, 6})));
  // Null: 2,000 pairs of independent Poisson streams of 30 requests.
  std::mt19937_64 rng(7);
  std::exponential_distribution<double> gap(1.0 / 20'000);
  auto poisson = [&](int n) {
    std::vector<int64_t> t;
    double x = 0;
    for (int i = 0; i < n; ++i) t.push_back(int64_t(x += gap(rng)));
    return t;
  };
  double sum = 0, sum2 = 0;
  int n = 0, past = 0;
  for (int k = 0; k < 2000; ++k) {
    const double z = lockstep_z(poisson(30), poisson(30));
    if (std::isnan(z)) continue;
    sum += z, sum2 += z * z, ++n;
    past += z >= MonitorCalibration::kMinLockstepZ;
  }
  ASSERT_GT(n, 1900);
  const double mean = sum / n, sd = std::sqrt(sum2 / n - mean * mean);
  EXPECT_NEAR(mean, 0.0, 0.1);
  EXPECT_NEAR(sd, 1.0, 0.1);
  EXPECT_LE(past, 10);  // P(z >= 3) ≈ 0.0013 under the null
  // One Poisson stream handed to 5 accounts in turn: every pair alternates.
  const auto stream = poisson(150);
  std::vector<std::vector<int64_t>> acc(5);
  for (size_t i = 0; i < stream.size(); ++i) acc[i % 5].push_back(stream[i]);
  for (int i = 0; i < 5; ++i)
    for (int j = i + 1; j < 5; ++j) EXPECT_GT(lockstep_z(acc[size_t(i)], acc[size_t(j)]), 5.0);
}

// The turn-taking test against its bound recomputed in float64 by counting, its null (independent Poisson
// streams: p is a p-value), and a hydra found among accounts of the same client that send on their own.
TEST(MonitorStats, TurnTaking) {
  // Three accounts in turn, 4 rounds (each round's requests in one millisecond, so the common span holds
  // all 12; ties go in account order): 12 of 12 periodic. Of the 12!/(4!)³ equally likely interleavings,
  // 3! are one order repeated: p = 3!·(4!)³/12!, times k·C(k, m) = 3 for the choice.
  std::vector<std::vector<int64_t>> three(3);
  for (int i = 0; i < 12; ++i) three[size_t(i % 3)].push_back(1000 * (i / 3));
  TurnTaking t = turn_taking(three);
  ASSERT_EQ(t.members.size(), 3u);
  EXPECT_EQ(t.periodic, 12);
  EXPECT_EQ(t.requests, 12);
  double interleavings = 1;  // 12! / (4!)^3 by the multinomial product C(12,4)·C(8,4)
  for (int i = 1; i <= 4; ++i) interleavings *= double(12 - 4 + i) / i * double(8 - 4 + i) / i;
  EXPECT_NEAR(t.p_members / (6.0 / interleavings), 1.0, 1e-9);
  EXPECT_NEAR(t.p / (3 * 6.0 / interleavings), 1.0, 1e-9);
  // The third round in another order (1, 0, 2) breaks the stretch: shorter, p larger.
  three[1][2] -= 1;
  const TurnTaking j = turn_taking(three);
  EXPECT_LT(j.periodic, 12);
  EXPECT_GT(j.p, t.p);
  // Exhaustively: every interleaving of 3 accounts × 4 requests (times = positions), each equally likely
  // under independent streams. The share with p <= a is at most a, for every a the test gives.
  std::vector<int> labels = {0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2};
  std::vector<double> ps;
  do {
    std::vector<std::vector<int64_t>> acc(3);
    for (size_t i = 0; i < labels.size(); ++i) acc[size_t(labels[i])].push_back(int64_t(i));
    ps.push_back(turn_taking(acc, 4).p);
  } while (std::next_permutation(labels.begin(), labels.end()));
  ASSERT_EQ(ps.size(), 34650u);
  std::sort(ps.begin(), ps.end());
  ASSERT_LT(ps[100], 1.0) << "the test must find turns somewhere among them";
  for (size_t i = 0; i < ps.size() && ps[i] < 1; ++i) {
    const size_t at_most = size_t(std::upper_bound(ps.begin(), ps.end(), ps[i]) - ps.begin());
    EXPECT_LE(double(at_most) / double(ps.size()), ps[i]) << "p " << ps[i];
  }
  // Fewer than 3 accounts with min_each requests: nothing.
  EXPECT_TRUE(turn_taking({{1, 2, 3, 4}, {5, 6, 7, 8}}).members.empty());
  // Null: 5 independent Poisson streams of 8 requests, 3,000 times. P(p <= a) <= a for every a.
  std::mt19937_64 rng(11);
  std::exponential_distribution<double> gap(1.0 / 20'000);
  auto poisson = [&](int n, double from) {
    std::vector<int64_t> ms;
    for (int i = 0; i < n; ++i) ms.push_back(int64_t(from += gap(rng)));
    return ms;
  };
  int below_05 = 0, below_01 = 0, below_bar = 0;
  const int trials = 3000;
  for (int k = 0; k < trials; ++k) {
    std::vector<std::vector<int64_t>> acc;
    for (int a = 0; a < 5; ++a) acc.push_back(poisson(8, 0));
    const double p = turn_taking(acc).p;
    below_05 += p <= 0.05, below_01 += p <= 0.01, below_bar += p <= MonitorCalibration::kMaxTurnTakingP;
  }
  EXPECT_LE(below_05, 0.05 * trials);
  EXPECT_LE(below_01, 0.01 * trials);
  EXPECT_EQ(below_bar, 0);
  // A hydra of 6 handed one Poisson stream in turn, one account of the same client sending on its own at
  // the same time, and one that finished before: the 6 are found.
  const auto stream = poisson(36, 500'000);
  std::vector<std::vector<int64_t>> acc(6);
  for (size_t i = 0; i < stream.size(); ++i) acc[i % 6].push_back(stream[i]);
  acc.push_back(poisson(20, 500'000));  // on its own, at the same time
  acc.push_back(poisson(10, 0));        // finished before
  const TurnTaking h = turn_taking(acc);
  EXPECT_EQ(h.members, (std::vector<size_t>{0, 1, 2, 3, 4, 5}));
  EXPECT_EQ(h.periodic, h.requests);
  EXPECT_LT(h.p, 1e-9);
}

// A crawl split by topic over 20 accounts (each account its own corner of the embedding space, so no
// two look like one distribution), dispatched in turn: linked on timing and parameters, flagged as one.
// Benign users sending the very same parameters at their own times stay out of it.
TEST(CrawlMonitor, LinksATopicSplitHydraByTiming) {
  Traffic tr;
  const MonitorCalibration cal = calibrated(tr, 24);
  CrawlMonitor m(cal);
  std::vector<MonitorEvent> stream;
  for (int u = 0; u < 6; ++u) {
    auto ev = tr.benign("user-" + std::to_string(u), 40, 0);
    for (auto& e : ev) e.max_tokens = 256, e.temperature = -1, e.seed_given = true, e.has_history = false;
    stream.insert(stream.end(), ev.begin(), ev.end());
  }
  std::vector<std::vector<float>> topic;
  for (int h = 0; h < 20; ++h) topic.push_back(tr.direction());
  std::exponential_distribution<double> gap(1.0 / 15'000);
  double t = 5000;
  // 40 requests per account: the synthetic benign users keep a steady pace (gaps 5-120 s), so pairs of
  // them alternate more than random (calibration puts the bar at z ≈ 6; people's sessions give ~3).
  for (int i = 0; i < 800; ++i) {
    MonitorEvent e = tr.crawl("hydra-" + std::to_string(100 + i % 20), int64_t(t += gap(tr.rng)));
    e.embedding = tr.near(topic[size_t(i % 20)], 0.3f);
    e.top_logprobs = -1;
    e.seed_given = true;
    stream.push_back(e);
  }
  std::stable_sort(stream.begin(), stream.end(), [](const auto& a, const auto& b) { return a.unix_ms < b.unix_ms; });
  for (const auto& e : stream) m.observe(e);
  m.update_clusters();
  std::optional<MonitorVerdict> cluster;
  for (const auto& v : m.verdicts())
    if (v.cluster && v.members[0].rfind("hydra-", 0) == 0 && (!cluster || v.members.size() > cluster->members.size()))
      cluster = v;
  ASSERT_TRUE(cluster.has_value()) << "link_lockstep_z " << cal.link_lockstep_z;
  EXPECT_EQ(cluster->members.size(), 20u);
  for (const auto& name : cluster->members) EXPECT_EQ(name.rfind("hydra-", 0), 0u) << name;
  EXPECT_TRUE(cluster->flagged);
  EXPECT_EQ(cluster->statistics.at("lockstep"), 20.0);
  ASSERT_FALSE(cluster->flag_reasons.empty());
  EXPECT_EQ(cluster->flag_reasons[0].test, "lockstep");
  bool timing = false;
  for (const auto& l : cluster->links) timing = timing || l.find(" timing (") != std::string::npos;  // either test
  EXPECT_TRUE(timing);
  for (int u = 0; u < 6; ++u) {
    const auto v = m.flagged("user-" + std::to_string(u));
    EXPECT_FALSE(v.has_value()) << u << ": " << v->to_json().dump();
  }
}

// A script's rhythm is context, not evidence: a benign user sending like clockwork at a benign pace
// shows the regularity reason, unscored, and stays unflagged.
TEST(CrawlMonitor, RegularityAloneDoesNotFlag) {
  Traffic tr;
  const MonitorCalibration cal = calibrated(tr, 24);
  CrawlMonitor m(cal);
  auto ev = tr.benign("cron", 60, 0);
  for (size_t i = 0; i < ev.size(); ++i) ev[i].unix_ms = 60'000 * int64_t(i) + int64_t(i % 3) * 100;
  for (const auto& e : ev) m.observe(e);
  std::optional<MonitorVerdict> v;
  for (const auto& x : m.verdicts())
    if (x.subject == "cron") v = x;
  ASSERT_TRUE(v.has_value());
  EXPECT_GT(v->statistics.at("regularity"), 2 * cal.threshold.at("regularity")[2]);
  EXPECT_FALSE(v->flagged) << v->to_json().dump();
  bool shown = false;
  for (const auto& r : v->reasons)
    shown = shown || (r.test == "regularity" && r.text.find("not scored") != std::string::npos);
  EXPECT_TRUE(shown);
  EXPECT_FALSE(monitor_test_scored("regularity"));
  EXPECT_TRUE(monitor_test_scored("rate"));
}

TEST(CrawlMonitor, UncalibratedScoresNothing) {
  Traffic tr;
  CrawlMonitor m(std::nullopt);
  for (int i = 0; i < 50; ++i) EXPECT_TRUE(m.observe(tr.crawl("c", int64_t(i) * 1000)).empty());
  const auto v = m.verdicts();
  ASSERT_FALSE(v.empty());
  EXPECT_EQ(v[0].score, 0);
  EXPECT_TRUE(v[0].statistics.count("rate"));  // features are still computed
}

TEST(CrawlMonitor, CalibrationFileRoundTripAndBadInput) {
  TempDir dir;
  Traffic tr;
  const MonitorCalibration cal = calibrated(tr, 8);
  const std::string path = (dir.path / "cal.json").string();
  cal.save(path);
  const MonitorCalibration back = MonitorCalibration::load(path);
  EXPECT_EQ(back.threshold, cal.threshold);
  EXPECT_EQ(back.pool.size(), cal.pool.size());
  EXPECT_EQ(back.sigma2, cal.sigma2);
  EXPECT_EQ(back.link_lockstep_z, cal.link_lockstep_z);
  EXPECT_EQ(back.link_turn_taking_p, cal.link_turn_taking_p);
  EXPECT_EQ(back.benign_turn_taking_p, cal.benign_turn_taking_p);
  EXPECT_GT(cal.link_turn_taking_p, 0);
  EXPECT_GE(cal.link_lockstep_z, MonitorCalibration::kMinLockstepZ);
  expect_error([&] { MonitorCalibration::load((dir.path / "missing.json").string()); }, {"missing.json", "monitor calibrate"});
  retort::write_file_atomic((dir.path / "bad.json").string(), "{\"format\": \"retort-monitor-calibration/1\"}");
  expect_error([&] { MonitorCalibration::load((dir.path / "bad.json").string()); }, {"bad.json", "missing"});
  std::map<std::string, std::vector<MonitorEvent>> few = {{"a", tr.benign("a", 5, 0)}};
  expect_error([&] { calibrate_monitor(few, {}); }, {"at least 4 accounts"});
  // An event of another width than the calibration's.
  CrawlMonitor m(cal);
  MonitorEvent e = tr.crawl("c", 0);
  e.embedding.resize(8);
  expect_error([&] { m.observe(e); }, {"8 values", "16", "synthetic"});
}

TEST(MonitorDb, EventsActionsVerdictsAndUpgradeFromVersion1) {
  TempDir dir;
  const std::string path = (dir.path / "serve.db").string();
  Traffic tr;
  {
    auto db = ServeDb::open(path);
    auto ev = tr.benign("alice", 3, 1000);
    ev[1].top_logprobs = 5;
    ev[2].system_prompt = "be brief";
    ev[2].seed_given = true;
    std::vector<std::pair<std::string, MonitorEvent>> rows;
    for (size_t i = 0; i < ev.size(); ++i) rows.push_back({"req-" + std::to_string(i), ev[i]});
    write_monitor_events(*db, rows);
    write_monitor_events(*db, rows);  // the same request ids again: kept once
    const auto back = read_monitor_events(*db, {});
    ASSERT_EQ(back.at("alice").size(), 3u);
    for (size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(back.at("alice")[i].embedding, ev[i].embedding);
      EXPECT_EQ(back.at("alice")[i].prompt_text, ev[i].prompt_text);
      EXPECT_EQ(back.at("alice")[i].top_logprobs, ev[i].top_logprobs);
      EXPECT_EQ(back.at("alice")[i].system_prompt, ev[i].system_prompt);
      EXPECT_EQ(back.at("alice")[i].seed_given, ev[i].seed_given);
    }
    EXPECT_TRUE(read_monitor_events(*db, {"bob"}).empty());
    MonitorActionRecord a;
    a.unix_ms = 5;
    a.subject = "cluster:x";
    a.members = {"x", "y"};
    a.actions = {"flag", "throttle"};
    a.score = 2.5;
    a.requests = 40;
    a.reasons = nlohmann::json::array({{{"test", "rate"}, {"text", "fast"}}});
    write_monitor_action(*db, a);
    const auto acts = read_monitor_actions(*db);
    ASSERT_EQ(acts.size(), 1u);
    EXPECT_EQ(acts[0].members, a.members);
    EXPECT_EQ(acts[0].actions, a.actions);
    EXPECT_DOUBLE_EQ(acts[0].score, 2.5);
    MonitorVerdict v1, v2;
    v1.subject = "a", v1.score = 0.5;
    v2.subject = "b", v2.score = 3;
    write_monitor_verdicts(*db, {v1, v2}, 7);
    v1.score = 4;
    write_monitor_verdicts(*db, {v1}, 8);  // updated in place
    const auto vs = read_monitor_verdicts(*db);
    ASSERT_EQ(vs.size(), 2u);
    EXPECT_EQ(vs[0]["subject"], "a");
    EXPECT_EQ(vs[0]["score"], 4.0);
  }
  // A version-1 file (no monitor tables) is upgraded in place on open; its rows stay.
  const std::string old = (dir.path / "v1.db").string();
  {
    auto db = ServeDb::open(old);
    db->exec("DROP TABLE monitor_events; DROP TABLE monitor_actions; DROP TABLE monitor_verdicts; "
             "PRAGMA user_version=1",
             "make a version-1 file");
  }
  auto db = ServeDb::open(old);
  SqlStatement v(*db, "PRAGMA user_version");
  ASSERT_TRUE(v.step("read"));
  EXPECT_EQ(v.int64(0), kServeDbSchemaVersion);  // and on to the current version
  EXPECT_TRUE(read_monitor_events(*db, {}).empty());
}

// The per-account caches (distances and near-duplicates to earlier requests, filled as each request
// arrives) give the same statistics as computing the window afresh.
TEST(CrawlMonitor, CachedWindowStatisticsEqualDirectOnes) {
  Traffic tr;
  const MonitorCalibration cal = calibrated(tr, 8);
  CrawlMonitor m(cal);
  auto events = tr.benign("u", 80, 0);  // more than the window: old requests leave it
  for (int i = 0; i < 10; ++i) events[size_t(i * 7)].prompt_text = events[3].prompt_text + " again";  // near-duplicates
  for (const auto& e : events) m.observe(e);
  std::vector<MonitorItem> items;
  for (size_t i = events.size() - size_t(cal.window); i < events.size(); ++i) items.push_back(make_monitor_item(events[i], &cal));
  std::vector<const MonitorItem*> win;
  for (const auto& it : items) win.push_back(&it);
  const auto direct = monitor_statistics(win, {}, &cal);
  const auto v = m.verdicts();
  ASSERT_EQ(v.size(), 1u);
  for (const auto& [name, value] : direct) {
    ASSERT_TRUE(v[0].statistics.count(name)) << name;
    EXPECT_NEAR(v[0].statistics.at(name), value, 1e-5 * std::max(1.0, std::abs(value))) << name;
  }
  EXPECT_GT(direct.at("templated"), 0.0);
}

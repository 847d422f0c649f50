// retort/protect/crawl_monitor.cpp — features, tests, clusters and calibration (see crawl_monitor.h).
#include "retort/protect/crawl_monitor.h"

#include <algorithm>
#include <charconv>
#include <cctype>
#include <cmath>
#include <deque>
#include <fstream>
#include <functional>
#include <numeric>
#include <set>
#include <sstream>
#include <unordered_map>

#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/stats.h"

namespace retort {

using nlohmann::json;

namespace {

constexpr int kHistory = 256;          // embeddings kept per account for nearest-earlier-query distances
constexpr int64_t kBurstMs = 10'000;   // the span bursts are counted in
constexpr double kStrongRatio = 2.0;   // one test this far past its threshold flags alone

// Accounts join the linking from this many requests on: 6 for min_requests 16 — perfect alternation of
// 6 requests each is a runs-test z of 3.03, just past kMinLockstepZ, the fewest a timing link can rest on.
// (At min_requests / 2 = 8, the demo's 8-account hydra had sent 72 of its 204 requests when it was linked;
// at 6, with linking while accounts join (observe()), 50 on the same traffic: `retort monitor rescore`.)
int min_link_requests(int min_requests) { return std::max(4, min_requests * 3 / 8); }
// Accounts enter the turn-taking test (a group's timing) from this many requests: 4 for min_requests 16.
// In the demo 6 of 8 hydra accounts, 4 requests each, had 14 requests in their common span, all in turn:
// p 3e-5 after the correction for the choice (turn_taking), under the 1e-4 bar.
int min_turn_requests(int min_requests) { return std::max(3, min_requests / 4); }

const char* kTestNames[] = {"mmd",    "prada",     "rate",        "burst",    "regularity",
                            "spread", "templated", "single_turn", "logprobs", "fingerprint", "lockstep"};

// What a test's statistic measures, for the reasons people read.
std::string describe(const std::string& test, double v, double thr) {
  char buf[256];
  auto f = [&](const char* fmt) {
    std::snprintf(buf, sizeof(buf), fmt, v, thr);
    return std::string(buf);
  };
  if (test == "mmd") return f("prompt embeddings far from benign traffic: MMD² %.4f > %.4f");
  if (test == "prada") return f("nearest-query distances not normal (PRADA): 1 − W %.3f > %.3f");
  if (test == "rate") return f("request rate %.1f/min > %.1f/min");
  if (test == "burst") return f("burst of %.0f requests in 10 s > %.1f");
  if (test == "regularity") return f("machine-regular arrivals: 1/CV of gaps %.2f > %.2f");
  if (test == "spread") return f("prompts cover a wide range of topics: mean embedding distance %.3f > %.3f");
  if (test == "templated") return f("templated prompts: %.2f of them near-duplicate others > %.2f");
  if (test == "single_turn") return f("single-turn requests only: share %.2f > %.2f");
  if (test == "logprobs") return f("heavy logprob use: %.2f > %.2f (share × (top_logprobs+1)/21)");
  if (test == "fingerprint") return f("one fixed parameter set: share %.2f > %.2f");
  if (test == "lockstep") return f("%.0f member accounts send in lockstep (their requests alternate or go round in turn) > %.1f");
  return f("%.4f > %.4f");
}

// FNV-1a, 64 bits: a hash that is the same in every build (calibration files carry fingerprints).
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ULL;
  return h;
}

std::string fingerprint_of(const MonitorEvent& e) { return monitor_fingerprint(e); }

// |a − b|², the monitor's hot spot (every kernel value). Eight independent partial sums: one running sum
// is a chain the compiler may not reorder, eight are vectorized (the order is fixed, so every build and
// machine gives the same bits).
double sqdist(const std::vector<float>& a, const std::vector<float>& b) {
  constexpr size_t kLanes = 8;
  double lane[kLanes] = {};
  const size_t n = a.size(), body = n - n % kLanes;
  for (size_t i = 0; i < body; i += kLanes)
    for (size_t k = 0; k < kLanes; ++k) {
      const double d = double(a[i + k]) - double(b[i + k]);
      lane[k] += d * d;
    }
  double s = 0;
  for (size_t i = body; i < n; ++i) {
    const double d = double(a[i]) - double(b[i]);
    s += d * d;
  }
  for (double l : lane) s += l;
  return s;
}

// Unbiased two-sample MMD² between two windows of unit embeddings.
double mmd2_between(const std::vector<const std::vector<float>*>& x, const std::vector<const std::vector<float>*>& y,
                    double sigma2) {
  const size_t m = x.size(), n = y.size();
  if (m < 2 || n < 2) return 0;
  double kxx = 0, kyy = 0, kxy = 0;
  for (size_t i = 0; i < m; ++i)
    for (size_t j = i + 1; j < m; ++j) kxx += 2 * monitor_kernel(*x[i], *x[j], sigma2);
  for (size_t i = 0; i < n; ++i)
    for (size_t j = i + 1; j < n; ++j) kyy += 2 * monitor_kernel(*y[i], *y[j], sigma2);
  for (size_t i = 0; i < m; ++i)
    for (size_t j = 0; j < n; ++j) kxy += monitor_kernel(*x[i], *y[j], sigma2);
  return kxx / double(m * (m - 1)) + kyy / double(n * (n - 1)) - 2 * kxy / double(m * n);
}

}  // namespace

const char* monitor_test_name(MonitorTest t) { return kTestNames[int(t)]; }

bool monitor_test_scored(const std::string& name) {
  return name != "regularity" && name != "single_turn" && name != "fingerprint";
}

std::string monitor_fingerprint(const MonitorEvent& e) {
  // Explicit parameters only: a request that sets none has no fingerprint.
  if (e.max_tokens < 0 && e.temperature < 0 && e.top_logprobs < 0 && e.n == 1 && e.system_prompt.empty() &&
      !e.seed_given)
    return "";
  std::ostringstream o;
  o << "max_tokens=" << e.max_tokens << ";temperature=" << e.temperature << ";top_logprobs=" << e.top_logprobs
    << ";n=" << e.n << ";seed=" << (e.seed_given ? "given" : "none") << ";system=" << std::hex << fnv1a(e.system_prompt);
  return o.str();
}

std::optional<MonitorTest> monitor_test_from_name(const std::string& name) {
  for (int i = 0; i < int(MonitorTest::kCount); ++i)
    if (name == kTestNames[i]) return MonitorTest(i);
  return std::nullopt;
}

// ---- calibration file ----------------------------------------------------------------------------

// Float vectors as JSON numbers of the float's shortest decimal form (about 9 digits, not the 17 of its
// double widening): half the file, and reading it back gives the same floats.
static json floats_json(const std::vector<float>& v) {
  json a = json::array();
  char buf[32];
  for (float f : v) {
    const auto r = std::to_chars(buf, buf + sizeof(buf), f);
    *r.ptr = '\0';
    a.push_back(std::strtod(buf, nullptr));
  }
  return a;
}

json MonitorCalibration::to_json() const {
  json pool_json = json::array();
  for (const auto& p : pool) pool_json.push_back(floats_json(p));
  return {{"format", "retort-monitor-calibration/1"}, {"model", model}, {"n_embd", n_embd}, {"window", window},
          {"min_requests", min_requests}, {"margin", margin}, {"sigma2", sigma2}, {"k_yy", k_yy},
          {"threshold", threshold}, {"benign_extreme", benign_extreme}, {"benign_accounts", benign_accounts},
          {"benign_requests", benign_requests}, {"benign_windows", benign_windows}, {"link_mmd", link_mmd},
          {"link_lockstep_z", link_lockstep_z},
          {"benign_lockstep_z", benign_lockstep_z}, {"link_turn_taking_p", link_turn_taking_p},
          {"benign_turn_taking_p", benign_turn_taking_p}, {"common_fingerprints", common_fingerprints}, {"center", floats_json(center)},
          {"pool", std::move(pool_json)}};
}

MonitorCalibration MonitorCalibration::from_json(const json& j, const std::string& source) {
  check(j.is_object() && j.value("format", "") == "retort-monitor-calibration/1", source,
        ": not a monitor calibration (format retort-monitor-calibration/1); make one with `retort monitor calibrate`");
  MonitorCalibration c;
  try {
    c.model = j.at("model").get<std::string>();
    c.n_embd = j.at("n_embd").get<int64_t>();
    c.window = j.at("window").get<int>();
    c.min_requests = j.at("min_requests").get<int>();
    c.margin = j.at("margin").get<double>();
    c.sigma2 = j.at("sigma2").get<double>();
    c.k_yy = j.at("k_yy").get<double>();
    c.threshold = j.at("threshold").get<std::map<std::string, std::vector<double>>>();
    c.benign_extreme = j.at("benign_extreme").get<std::map<std::string, std::vector<double>>>();
    c.benign_accounts = j.at("benign_accounts").get<int>();
    c.benign_requests = j.at("benign_requests").get<int>();
    c.benign_windows = j.at("benign_windows").get<int>();
    c.link_mmd = j.at("link_mmd").get<double>();
    c.link_lockstep_z = j.value("link_lockstep_z", 0.0);  // absent in files made before timing links
    c.benign_lockstep_z = j.value("benign_lockstep_z", 0.0);
    c.link_turn_taking_p = j.value("link_turn_taking_p", 0.0);  // absent in files made before the test
    c.benign_turn_taking_p = j.value("benign_turn_taking_p", 1.0);
    c.common_fingerprints = j.at("common_fingerprints").get<std::vector<std::string>>();
    c.center = j.at("center").get<std::vector<float>>();
    c.pool = j.at("pool").get<std::vector<std::vector<float>>>();
  } catch (const json::exception& e) {
    fail(source, ": monitor calibration field missing or of the wrong type (", e.what(),
         "); make it again with `retort monitor calibrate`");
  }
  check(c.window >= 2 && c.min_requests >= 3 && c.sigma2 > 0, source, ": window must be >= 2, min_requests >= 3 "
        "and sigma2 > 0");
  for (const auto& [k, v] : c.threshold) {
    check(monitor_test_from_name(k).has_value(), source, ": unknown test \"", k, "\"");
    check(int(v.size()) == kBuckets, source, ": test \"", k, "\" has ", v.size(), " thresholds, expected ", kBuckets);
  }
  for (const auto& y : c.pool)
    check(int64_t(y.size()) == c.n_embd, source, ": a pool embedding has ", y.size(), " values, n_embd is ", c.n_embd);
  check(c.center.empty() || int64_t(c.center.size()) == c.n_embd, source, ": center has ", c.center.size(),
        " values, n_embd is ", c.n_embd);
  return c;
}

void MonitorCalibration::save(const std::string& path) const { write_file_atomic(path, to_json().dump() + "\n"); }

MonitorCalibration MonitorCalibration::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  check(bool(f), "monitor: cannot read the calibration ", path, " (make one with `retort monitor calibrate`)");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    fail("monitor: calibration ", path, " is not valid JSON: ", e.what());
  }
  return from_json(j, path);
}

// ---- verdicts -----------------------------------------------------------------------------------

json MonitorVerdict::to_json() const {
  auto list = [](const std::vector<MonitorReason>& rr) {
    json rs = json::array();
    for (const auto& r : rr)
      rs.push_back({{"test", r.test}, {"value", r.value}, {"threshold", r.threshold}, {"ratio", r.ratio},
                    {"text", r.text}});
    return rs;
  };
  return {{"subject", subject}, {"cluster", cluster}, {"members", members}, {"requests", requests},
          {"score", score}, {"max_score", max_score}, {"flagged", flagged}, {"flagged_at_request", flagged_at_request},
          {"flagged_unix_ms", flagged_unix_ms}, {"reasons", list(reasons)}, {"flag_reasons", list(flag_reasons)},
          {"statistics", statistics}, {"links", links}};
}

// ---- statistics ---------------------------------------------------------------------------------

std::vector<float> monitor_normalize(const std::vector<float>& e, const MonitorCalibration& cal) {
  if (e.empty()) return {};
  std::vector<float> u(e);
  if (cal.center.size() == u.size())
    for (size_t i = 0; i < u.size(); ++i) u[i] -= cal.center[i];
  double n = 0;
  for (float v : u) n += double(v) * v;
  n = std::sqrt(n);
  if (n > 0)
    for (float& v : u) v = float(v / n);
  return u;
}

double monitor_kernel(const std::vector<float>& a, const std::vector<float>& b, double sigma2) {
  return std::exp(-sqdist(a, b) / (2 * sigma2));
}

double lockstep_z(const std::vector<int64_t>& a_ms, const std::vector<int64_t>& b_ms, int min_each) {
  if (a_ms.empty() || b_ms.empty()) return NAN;
  const int64_t from = std::max(a_ms.front(), b_ms.front()), to = std::min(a_ms.back(), b_ms.back());
  auto a0 = std::lower_bound(a_ms.begin(), a_ms.end(), from), a1 = std::upper_bound(a_ms.begin(), a_ms.end(), to);
  auto b0 = std::lower_bound(b_ms.begin(), b_ms.end(), from), b1 = std::upper_bound(b_ms.begin(), b_ms.end(), to);
  const double n1 = double(a1 - a0), n2 = double(b1 - b0), n = n1 + n2;
  if (n1 < min_each || n2 < min_each) return NAN;
  // Merge (a first at equal times) and count the runs.
  int runs = 0, last = -1;
  while (a0 != a1 || b0 != b1) {
    const int who = (b0 == b1 || (a0 != a1 && *a0 <= *b0)) ? 0 : 1;
    (who == 0 ? a0 : b0)++;
    runs += who != last;
    last = who;
  }
  const double mean = 1 + 2 * n1 * n2 / n;
  const double var = 2 * n1 * n2 * (2 * n1 * n2 - n) / (n * n * (n - 1));
  return var > 0 ? (double(runs) - mean) / std::sqrt(var) : NAN;
}

namespace {
double log_falling(double n, double k) { return std::lgamma(n + 1) - std::lgamma(n - k + 1); }

// The longest periodic stretch of the members' merged requests within their common span, and its log p
// for these members (see turn_taking in the header).
TurnTaking periodic_stretch(const std::vector<std::vector<int64_t>>& t, const std::vector<size_t>& members) {
  TurnTaking r;
  r.members = members;
  const size_t m = members.size();
  if (m < 3) return r;
  int64_t from = INT64_MIN, to = INT64_MAX;
  for (size_t i : members) from = std::max(from, t[i].front()), to = std::min(to, t[i].back());
  std::vector<std::pair<int64_t, size_t>> merged;  // (time, member), ties in member order
  std::vector<double> n(m, 0);
  for (size_t a = 0; a < m; ++a)
    for (auto it = std::lower_bound(t[members[a]].begin(), t[members[a]].end(), from);
         it != t[members[a]].end() && *it <= to; ++it)
      merged.push_back({*it, a}), ++n[a];
  std::sort(merged.begin(), merged.end());
  const size_t N = merged.size();
  r.requests = int64_t(N);
  if (N < 2 * m) return r;
  // Runs of x[i] == x[i + m]: a run [a, c) makes [a, c + m) periodic when x[a, a + m) holds every member.
  size_t best = 0;
  for (size_t a = 0; a + m < N;) {
    size_t c = a;
    while (c + m < N && merged[c].second == merged[c + m].second) ++c;
    if (c > a) {
      std::vector<char> seen(m, 0);
      size_t distinct = 0;
      for (size_t i = a; i < a + m; ++i) distinct += !seen[merged[i].second]++;
      if (distinct == m) best = std::max(best, c - a + m);
    }
    a = c + 1;
  }
  r.periodic = int64_t(best);
  if (best < 2 * m) return r;
  // The stretch holds q + 1 requests of rem members and q of the rest; the bound gives the q + 1 to the
  // members with most requests (the largest product).
  const size_t q = best / m, rem = best % m;
  std::vector<double> sorted = n;
  std::sort(sorted.rbegin(), sorted.rend());
  double log_p = std::log(double(N - best + 1)) + std::lgamma(double(m) + 1) - log_falling(double(N), double(best));
  for (size_t i = 0; i < m; ++i) log_p += log_falling(sorted[i], double(q + (i < rem)));
  r.p_members = std::min(1.0, std::exp(log_p));
  return r;
}
}  // namespace

TurnTaking turn_taking(const std::vector<std::vector<int64_t>>& times_ms, int min_each) {
  std::vector<size_t> eligible;
  for (size_t i = 0; i < times_ms.size(); ++i)
    if (int64_t(times_ms[i].size()) >= min_each) eligible.push_back(i);
  if (eligible.size() < 3) return {};
  for (size_t i : eligible)
    if (!std::is_sorted(times_ms[i].begin(), times_ms[i].end())) {  // sorted copies, then the same test
      std::vector<std::vector<int64_t>> sorted = times_ms;
      for (auto& t : sorted) std::sort(t.begin(), t.end());
      return turn_taking(sorted, min_each);
    }
  const size_t k = eligible.size();
  // Start from the accounts of the most recent 2k requests (a group taking turns now shows there).
  std::vector<std::pair<int64_t, size_t>> all;
  for (size_t i : eligible)
    for (int64_t ms : times_ms[i]) all.push_back({ms, i});
  std::sort(all.begin(), all.end());
  std::set<size_t> recent;
  for (size_t x = all.size() > 2 * k ? all.size() - 2 * k : 0; x < all.size(); ++x) recent.insert(all[x].second);
  auto corrected = [&](TurnTaking r) {
    const double m = double(r.members.size());
    const double log_choices = std::log(double(k)) + std::lgamma(double(k) + 1) - std::lgamma(m + 1) - std::lgamma(double(k) - m + 1);
    r.p = r.p_members >= 1 ? 1.0 : std::min(1.0, std::exp(std::log(r.p_members) + log_choices));
    return r;
  };
  TurnTaking best = corrected(periodic_stretch(times_ms, std::vector<size_t>(recent.begin(), recent.end())));
  // Other groups: those whose turns show in the stream of all k accounts — a stretch of at least two
  // rounds with period m (3 ≤ m ≤ k) whose first m requests are m different accounts.
  std::set<std::vector<size_t>> groups;
  for (size_t m = 3; m <= k; ++m)
    for (size_t a = 0; a + m < all.size();) {
      size_t c = a;
      while (c + m < all.size() && all[c].second == all[c + m].second) ++c;
      if (c >= a + m) {
        std::vector<size_t> g;
        for (size_t i = a; i < a + m; ++i) g.push_back(all[i].second);
        std::sort(g.begin(), g.end());
        if (std::adjacent_find(g.begin(), g.end()) == g.end()) groups.insert(g);
      }
      a = c + 1;
    }
  for (const auto& g : groups) {
    TurnTaking r = corrected(periodic_stretch(times_ms, g));
    if (r.p < best.p) best = std::move(r);
  }
  // Drop the member whose absence lowers p most (an account of the same client sending on its own, or one
  // that happened to send in the last rounds), while that helps.
  while (best.members.size() > 3) {
    TurnTaking next = best;
    for (size_t x = 0; x < best.members.size(); ++x) {
      std::vector<size_t> fewer = best.members;
      fewer.erase(fewer.begin() + std::ptrdiff_t(x));
      TurnTaking r = corrected(periodic_stretch(times_ms, fewer));
      if (r.p < next.p) next = std::move(r);
    }
    if (!(next.p < best.p)) break;
    best = std::move(next);
  }
  if (best.p >= 1) return {};
  return best;
}

std::vector<uint32_t> minhash_signature(const std::string& text) {
  // Words: runs of letters/digits, lower-cased. Shingles: word bigrams (a single word alone).
  std::vector<std::string> words;
  std::string w;
  for (char ch : text) {
    const unsigned char c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c >= 0x80) w += char(std::tolower(c));
    else if (!w.empty()) words.push_back(std::move(w)), w.clear();
  }
  if (!w.empty()) words.push_back(std::move(w));
  std::vector<uint64_t> shingles;
  if (words.size() == 1) shingles.push_back(std::hash<std::string>{}(words[0]));
  for (size_t i = 0; i + 1 < words.size(); ++i) shingles.push_back(std::hash<std::string>{}(words[i] + " " + words[i + 1]));
  std::vector<uint32_t> sig(kMinHashes, UINT32_MAX);
  for (uint64_t s : shingles)
    for (int k = 0; k < kMinHashes; ++k) {
      // splitmix64 of (shingle, k): an independent hash per position.
      uint64_t z = s + 0x9e3779b97f4a7c15ULL * uint64_t(k + 1);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      z ^= z >> 31;
      sig[size_t(k)] = std::min(sig[size_t(k)], uint32_t(z >> 32));
    }
  return sig;
}

double minhash_similarity(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b) {
  if (a.size() != b.size() || a.empty()) return 0;
  int eq = 0;
  for (size_t i = 0; i < a.size(); ++i) eq += a[i] == b[i] && a[i] != UINT32_MAX;
  return double(eq) / double(a.size());
}

MonitorItem make_monitor_item(const MonitorEvent& e, const MonitorCalibration* cal) {
  MonitorItem it;
  it.event = e;
  it.event.embedding.clear();
  if (!e.embedding.empty()) {
    MonitorCalibration none;
    it.unit = monitor_normalize(e.embedding, cal ? *cal : none);
    if (cal && !cal->pool.empty() && cal->pool[0].size() == it.unit.size()) {
      double s = 0;
      for (const auto& y : cal->pool) s += monitor_kernel(it.unit, y, cal->sigma2);
      it.k_pool = s / double(cal->pool.size());
    }
  }
  it.minhash = minhash_signature(e.prompt_text);
  it.text_hash = std::hash<std::string>{}(e.prompt_text);
  return it;
}

std::map<std::string, double> monitor_statistics(const std::vector<const MonitorItem*>& win,
                                                 const std::vector<double>& nearest, const MonitorCalibration* cal) {
  std::map<std::string, double> st;
  const size_t m = win.size();
  if (m == 0) return st;
  // Pairwise distances and near-duplicates: from the items' caches when the window is one account's
  // consecutive stream, else computed.
  bool cached = true;
  for (size_t k = 0; k < m && cached; ++k)
    cached = win[k]->seq == win[0]->seq + int64_t(k) && win[k]->event.account == win[0]->event.account &&
             win[k]->dist_prev.size() >= k && win[k]->dup_prev.size() >= k;
  auto dist = [&](size_t i, size_t j) -> double {  // i < j
    if (cached) return win[j]->dist_prev[j - i - 1];
    if (win[i]->unit.empty() || win[j]->unit.empty()) return NAN;
    return std::sqrt(sqdist(win[i]->unit, win[j]->unit));
  };
  auto dup = [&](size_t i, size_t j) -> bool {  // i < j
    if (cached) return win[j]->dup_prev[j - i - 1] != 0;
    return minhash_similarity(win[i]->minhash, win[j]->minhash) >= kNearDuplicate;
  };
  // Embeddings: MMD² against the pool (cross terms cached per item), spread.
  size_t n_emb = 0;
  double kxy = 0;
  for (const MonitorItem* it : win)
    if (!it->unit.empty()) ++n_emb, kxy += it->k_pool;
  if (n_emb >= 2) {
    const double sigma2 = cal ? cal->sigma2 : 1.0;
    double kxx = 0, dsum = 0;
    for (size_t j = 1; j < m; ++j)
      for (size_t i = 0; i < j; ++i) {
        const double d = dist(i, j);
        if (std::isnan(d)) continue;
        kxx += 2 * std::exp(-d * d / (2 * sigma2));
        dsum += 2 * d;
      }
    const double pairs = double(n_emb * (n_emb - 1));
    st["spread"] = dsum / pairs;
    if (cal && !cal->pool.empty()) st["mmd"] = kxx / pairs + cal->k_yy - 2 * kxy / double(n_emb);
  }
  if (nearest.size() >= 3) st["prada"] = 1 - shapiro_wilk_w(std::vector<double>(nearest.end() - std::min<size_t>(nearest.size(), kHistory), nearest.end()));
  // Timing, in time order: a server observes requests as their prompts are read, and of several in
  // flight a later one can come first (its time is still its arrival).
  std::vector<int64_t> ts;
  for (const MonitorItem* it : win) ts.push_back(it->event.unix_ms);
  std::sort(ts.begin(), ts.end());
  const int64_t t0 = ts.front(), t1 = ts.back();
  if (m >= 2) {
    st["rate"] = double(m - 1) * 60000.0 / double(std::max<int64_t>(t1 - t0, 1000));
    std::vector<double> gaps;
    for (size_t i = 1; i < m; ++i) gaps.push_back(double(ts[i] - ts[i - 1]));
    const double mean = std::accumulate(gaps.begin(), gaps.end(), 0.0) / double(gaps.size());
    double var = 0;
    for (double g : gaps) var += (g - mean) * (g - mean);
    var /= double(gaps.size());
    const double cv = mean > 0 ? std::sqrt(var) / mean : 0;
    if (gaps.size() >= 3) st["regularity"] = 1 / std::max(cv, 0.01);
  }
  size_t burst = 0;
  for (size_t i = 0, j = 0; i < m; ++i) {
    while (ts[i] - ts[j] > kBurstMs) ++j;
    burst = std::max(burst, i - j + 1);
  }
  st["burst"] = double(burst);
  // Prompts and parameters.
  size_t templated = 0, single = 0;
  double lp = 0;
  std::map<std::string, size_t> fp;
  std::vector<uint8_t> has_dup(m, 0);
  for (size_t j = 1; j < m; ++j)
    for (size_t i = 0; i < j; ++i)
      if (dup(i, j)) has_dup[i] = has_dup[j] = 1;
  for (size_t i = 0; i < m; ++i) {
    const MonitorItem& a = *win[i];
    templated += has_dup[i];
    single += !a.event.has_history;
    if (a.event.top_logprobs >= 0) lp += double(a.event.top_logprobs + 1) / 21.0 * std::max(1, a.event.n);
    ++fp[fingerprint_of(a.event)];
  }
  size_t fp_mode = 0;
  for (const auto& [k, c] : fp)
    if (!k.empty()) fp_mode = std::max(fp_mode, c);
  st["templated"] = double(templated) / double(m);
  st["single_turn"] = double(single) / double(m);
  st["logprobs"] = lp / double(m);
  st["fingerprint"] = double(fp_mode) / double(m);
  return st;
}

// ---- the monitor --------------------------------------------------------------------------------

struct CrawlMonitor::Impl {
  std::optional<MonitorCalibration> cal;
  struct Account {
    std::string name;
    std::deque<MonitorItem> window;             // last cal.window items
    std::deque<std::vector<float>> history;     // last kHistory unit embeddings
    std::vector<double> nearest;                // distance of each query to its nearest earlier one
    std::set<size_t> texts;                     // hashes of every prompt seen (exact duplicates across accounts)
    int64_t first_ms = 0, last_ms = 0;
    MonitorVerdict verdict;
  };
  std::map<std::string, Account> accounts;
  std::map<std::string, MonitorVerdict> clusters;        // subject -> verdict
  std::map<std::string, std::string> cluster_of;          // account -> cluster subject
  // Complementary coverage's MMD² per pair of accounts, with the two accounts' request counts it was
  // computed at: recomputed only when either account has sent since (most pairs, most updates, have not).
  std::map<std::pair<std::string, std::string>, std::tuple<int64_t, int64_t, double>> coverage_mmd;
  int64_t events = 0;
  mutable std::mutex mu;

  int window() const { return cal ? cal->window : 64; }
  int min_requests() const { return cal ? cal->min_requests : 16; }

  // Scores `v` from its statistics; returns true when it became flagged now.
  bool score(MonitorVerdict& v, int64_t now_ms) {
    v.reasons.clear();
    v.score = 0;
    if (!cal || v.requests < min_requests()) return false;
    const int b = cal->bucket(v.requests);
    double r1 = 0, r2 = 0;  // the two largest ratios
    for (const auto& [test, value] : v.statistics) {
      auto it = cal->threshold.find(test);
      if (it == cal->threshold.end() || !(it->second[size_t(b)] > 0)) continue;
      const double thr = it->second[size_t(b)];
      const double ratio = value / thr;
      const bool scored = monitor_test_scored(test);
      if (scored && ratio > r1) r2 = r1, r1 = ratio;
      else if (scored) r2 = std::max(r2, ratio);
      if (ratio >= 1)
        v.reasons.push_back({test, value, thr, ratio, describe(test, value, thr) + (scored ? "" : " (context, not scored)")});
    }
    // Each threshold is a benign extreme, so with several tests a benign account passes one of them now
    // and then; it takes two scored tests past their thresholds, or one past twice its threshold.
    v.score = std::max(r2, r1 / kStrongRatio);
    v.max_score = std::max(v.max_score, v.score);
    // Scored reasons first (what flagged it), each group by ratio.
    std::sort(v.reasons.begin(), v.reasons.end(), [](const auto& a, const auto& b) {
      const bool sa = monitor_test_scored(a.test), sb = monitor_test_scored(b.test);
      return sa != sb ? sa : a.ratio > b.ratio;
    });
    if (v.score >= 1 && !v.flagged) {
      v.flag_reasons = v.reasons;
      v.flagged = true;
      v.flagged_at_request = v.requests;
      v.flagged_unix_ms = now_ms;
      return true;
    }
    return false;
  }

  std::vector<const MonitorItem*> window_of(const Account& a) const {
    std::vector<const MonitorItem*> w;
    for (const auto& it : a.window) w.push_back(&it);
    return w;
  }
};

CrawlMonitor::CrawlMonitor(std::optional<MonitorCalibration> cal) : impl_(std::make_unique<Impl>()) {
  impl_->cal = std::move(cal);
}
CrawlMonitor::~CrawlMonitor() = default;

bool CrawlMonitor::calibrated() const { return impl_->cal.has_value(); }
const MonitorCalibration* CrawlMonitor::calibration() const { return impl_->cal ? &*impl_->cal : nullptr; }

std::vector<MonitorVerdict> CrawlMonitor::observe(const MonitorEvent& e) {
  if (e.account.empty()) return {};
  Impl& s = *impl_;
  const MonitorCalibration* cal = s.cal ? &*s.cal : nullptr;
  if (cal && !e.embedding.empty() && cal->n_embd > 0)
    check(int64_t(e.embedding.size()) == cal->n_embd, "monitor: an embedding of ", e.embedding.size(),
          " values against a calibration of ", cal->n_embd, " (calibrated on another model: ", cal->model, ")");
  MonitorItem item = make_monitor_item(e, cal);  // the expensive part, outside the lock
  std::vector<MonitorVerdict> changed;
  bool clusters_due = false, joining = false;
  {
    std::lock_guard<std::mutex> lock(s.mu);
    Impl::Account& a = s.accounts[e.account];
    if (a.name.empty()) {
      a.name = e.account;
      a.first_ms = e.unix_ms;
      a.verdict.subject = e.account;
      a.verdict.members = {e.account};
    }
    a.last_ms = std::max(a.last_ms, e.unix_ms);
    if (!item.unit.empty()) {
      if (!a.history.empty()) {  // PRADA: the distance to the nearest earlier query
        double best = INFINITY;
        for (const auto& h : a.history) best = std::min(best, sqdist(h, item.unit));
        a.nearest.push_back(std::sqrt(best));
        if (a.nearest.size() > size_t(kHistory)) a.nearest.erase(a.nearest.begin());
      }
      a.history.push_back(item.unit);
      if (a.history.size() > size_t(kHistory)) a.history.pop_front();
    }
    a.texts.insert(item.text_hash);
    item.seq = a.verdict.requests;
    for (auto it = a.window.rbegin(); it != a.window.rend() && int(item.dist_prev.size()) < s.window() - 1; ++it) {
      item.dist_prev.push_back(item.unit.empty() || it->unit.empty() ? NAN : float(std::sqrt(sqdist(item.unit, it->unit))));
      item.dup_prev.push_back(minhash_similarity(item.minhash, it->minhash) >= kNearDuplicate);
    }
    a.window.push_back(std::move(item));
    while (int(a.window.size()) > s.window()) a.window.pop_front();
    ++a.verdict.requests;
    a.verdict.statistics = monitor_statistics(s.window_of(a), a.nearest, cal);
    if (s.score(a.verdict, e.unix_ms)) changed.push_back(a.verdict);
    clusters_due = ++s.events % kClusterEvery == 0;
    // The moments a link of this account's can first hold (a timing link needs min_link requests of each
    // account inside their common span, so a round-robin hydra's links form over its accounts' next few
    // requests): link now rather than up to kClusterEvery events later. Only clusters whose members change
    // are scored then, so a settled (benign) cluster is not scored more often than every kClusterEvery.
    const int64_t min_link = min_link_requests(s.min_requests()), min_turn = min_turn_requests(s.min_requests());
    joining = !clusters_due && a.verdict.requests >= min_turn && a.verdict.requests < min_link + kLinkSoon;
  }
  if (clusters_due || joining)
    for (auto& v : link_accounts(/*rescore_unchanged=*/clusters_due)) changed.push_back(std::move(v));
  return changed;
}

std::vector<MonitorVerdict> CrawlMonitor::update_clusters() { return link_accounts(true); }

std::vector<MonitorVerdict> CrawlMonitor::link_accounts(bool rescore_unchanged) {
  Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.mu);
  const MonitorCalibration* cal = s.cal ? &*s.cal : nullptr;
  const int min_link = min_link_requests(s.min_requests());
  // Accounts from min_turn requests on; those below min_link link only through the turn-taking test.
  const int min_turn = min_turn_requests(s.min_requests());
  std::vector<Impl::Account*> acc;
  for (auto& [name, a] : s.accounts)
    if (a.verdict.requests >= std::min(min_turn, min_link)) acc.push_back(&a);
  const size_t A = acc.size();
  // Evidence per pair (i < j): shared templates (near-duplicate prompts across the two accounts, found
  // through MinHash bands), one and the same explicit parameter set, complementary coverage.
  std::map<std::pair<size_t, size_t>, std::set<std::string>> evidence;
  std::map<std::pair<size_t, size_t>, std::set<size_t>> shared;  // (i, j) -> prompts of i near-duplicating j's
  std::unordered_map<uint64_t, std::vector<std::pair<size_t, size_t>>> bands;  // band key -> (account, item)
  constexpr int kBands = 16, kRows = kMinHashes / kBands;
  for (size_t i = 0; i < A; ++i)
    for (size_t k = 0; k < acc[i]->window.size(); ++k) {
      const auto& sig = acc[i]->window[k].minhash;
      for (int b = 0; b < kBands; ++b) {
        uint64_t key = uint64_t(b) * 0x9e3779b97f4a7c15ULL;
        for (int r = 0; r < kRows; ++r) key = (key ^ sig[size_t(b * kRows + r)]) * 0x100000001b3ULL;
        bands[key].push_back({i, k});
      }
    }
  for (const auto& [key, items] : bands) {
    if (items.size() < 2 || items.size() > 64) continue;  // a band every prompt shares says nothing
    for (size_t x = 0; x < items.size(); ++x)
      for (size_t y = x + 1; y < items.size(); ++y) {
        auto [i, ki] = items[x];
        auto [j, kj] = items[y];
        if (i == j) continue;
        const auto& a = acc[i]->window[ki];
        const auto& b = acc[j]->window[kj];
        if (a.text_hash == b.text_hash) continue;  // the same prompt is not a template
        if (minhash_similarity(a.minhash, b.minhash) < kNearDuplicate) continue;
        if (i > j) std::swap(i, j), std::swap(ki, kj);
        shared[{i, j}].insert(ki);
      }
  }
  for (const auto& [pair, prompts] : shared)
    if (prompts.size() >= 3) evidence[pair].insert("shared templates (" + std::to_string(prompts.size()) + " prompts)");
  std::vector<std::string> fps(A);
  for (size_t i = 0; i < A; ++i) {
    std::map<std::string, size_t> c;
    for (const auto& it : acc[i]->window) ++c[fingerprint_of(it.event)];
    for (const auto& [k, n] : c)
      if (!k.empty() && double(n) >= 0.9 * double(acc[i]->window.size())) fps[i] = k;
  }
  for (size_t i = 0; i < A; ++i) {
    if (fps[i].empty() || (cal && std::find(cal->common_fingerprints.begin(), cal->common_fingerprints.end(), fps[i]) !=
                                          cal->common_fingerprints.end()))
      continue;  // a parameter set benign users share links nobody
    for (size_t j = i + 1; j < A; ++j)
      if (fps[i] == fps[j]) evidence[{i, j}].insert("the same request parameters");
  }
  // Timing, for pairs with other evidence (the runs test is O(window); all pairs would be O(accounts²)):
  // one client handing its requests to its accounts in turn makes their requests alternate.
  const std::string kLockstepEvidence = "lockstep timing";
  std::set<std::pair<size_t, size_t>> lockstep;
  std::vector<std::vector<int64_t>> times(A);  // each account's window, in time order (observed in the
  for (size_t i = 0; i < A; ++i) {             // order prompts were read, not always of arrival)
    for (const auto& it : acc[i]->window) times[i].push_back(it.event.unix_ms);
    std::sort(times[i].begin(), times[i].end());
  }
  // Connected components over pairs (union-find), for the turn-taking groups and for the clusters.
  auto components = [A](const auto& pairs) {
    std::vector<size_t> up(A);
    std::iota(up.begin(), up.end(), 0);
    std::function<size_t(size_t)> top = [&](size_t x) { return up[x] == x ? x : up[x] = top(up[x]); };
    for (const auto& pair : pairs) up[top(pair.first)] = top(pair.second);
    std::vector<size_t> root(A);
    for (size_t i = 0; i < A; ++i) root[i] = top(i);
    return root;
  };
  // A group's timing first: within each group of accounts joined by templates or parameters, the
  // accounts taking turns (turn_taking) — found from their 4th request on, where a pair's runs test needs
  // 6 each. Its pairs with other evidence get it as evidence; they may link below min_link.
  std::set<std::pair<size_t, size_t>> turn_pairs;
  if (cal && cal->link_turn_taking_p > 0) {
    std::vector<std::pair<size_t, size_t>> joined;
    for (const auto& [pair, ev] : evidence) joined.push_back(pair);
    const std::vector<size_t> group_of = components(joined);
    std::map<size_t, std::vector<size_t>> groups;
    for (size_t i = 0; i < A; ++i) groups[group_of[i]].push_back(i);
    for (const auto& [g, members] : groups) {
      if (members.size() < 3) continue;
      std::vector<std::vector<int64_t>> t;
      for (size_t i : members) t.push_back(times[i]);
      const TurnTaking tt = turn_taking(t, min_turn);
      if (tt.members.empty() || !(tt.p <= cal->link_turn_taking_p)) continue;
      char p_text[32], buf[192];
      if (tt.p > 0) std::snprintf(p_text, sizeof(p_text), "p %.1e", tt.p);
      else std::snprintf(p_text, sizeof(p_text), "p < 1e-300");  // below double's range
      std::snprintf(buf, sizeof(buf), " (%zu accounts' requests go round in one order: %lld of %lld in turn, %s <= %.0e)",
                    tt.members.size(), (long long)tt.periodic, (long long)tt.requests, p_text, cal->link_turn_taking_p);
      for (size_t x = 0; x < tt.members.size(); ++x)
        for (size_t y = x + 1; y < tt.members.size(); ++y) {
          const size_t i = std::min(members[tt.members[x]], members[tt.members[y]]);
          const size_t j = std::max(members[tt.members[x]], members[tt.members[y]]);
          auto e = evidence.find({i, j});
          if (e == evidence.end()) continue;
          e->second.insert(std::string("turn-taking timing") + buf);
          turn_pairs.insert({i, j});
          lockstep.insert({i, j});
        }
    }
  }
  if (cal && cal->link_lockstep_z > 0)
    for (auto& [pair, ev] : evidence) {
      if (turn_pairs.count(pair)) continue;  // timing evidence already
      const double z = lockstep_z(times[pair.first], times[pair.second]);
      if (!(z >= cal->link_lockstep_z)) continue;
      char buf[128];
      std::snprintf(buf, sizeof(buf), " (their requests alternate: runs test z %.1f >= %.1f)", z, cal->link_lockstep_z);
      ev.insert(kLockstepEvidence + buf);
      lockstep.insert(pair);
    }
  // Complementary coverage, for pairs with other evidence: no prompt in common, yet prompts from one
  // distribution — their two-sample MMD² below link_mmd, the smallest between any two benign users.
  for (auto& [pair, ev] : evidence) {
    if (!cal || !(cal->link_mmd > 0)) break;
    auto [i, j] = pair;
    bool overlap = false;
    for (size_t h : acc[i]->texts) overlap = overlap || acc[j]->texts.count(h);
    if (overlap) continue;
    std::vector<const std::vector<float>*> x, y;
    for (const auto& it : acc[i]->window)
      if (!it.unit.empty()) x.push_back(&it.unit);
    for (const auto& it : acc[j]->window)
      if (!it.unit.empty()) y.push_back(&it.unit);
    // link_mmd was measured between windows of at least min_requests; fewer scatter below it by chance.
    if (x.size() < size_t(s.min_requests()) || y.size() < size_t(s.min_requests())) continue;
    const int64_t ni = acc[i]->verdict.requests, nj = acc[j]->verdict.requests;
    auto& [ci, cj, mmd2] = s.coverage_mmd[{acc[i]->name, acc[j]->name}];
    if (ci != ni || cj != nj) ci = ni, cj = nj, mmd2 = mmd2_between(x, y, cal->sigma2);
    if (mmd2 < cal->link_mmd) ev.insert("complementary coverage (disjoint prompts, one distribution)");
  }
  // Link on two kinds of evidence; clusters are the connected components.
  std::map<std::pair<size_t, size_t>, std::set<std::string>> links;
  std::vector<std::pair<size_t, size_t>> linked;
  for (const auto& [pair, ev] : evidence)
    if (ev.size() >= 2 && (turn_pairs.count(pair) ||
                           std::min(acc[pair.first]->verdict.requests, acc[pair.second]->verdict.requests) >= min_link)) {
      linked.push_back(pair);
      links[pair] = ev;
    }
  const std::vector<size_t> root = components(linked);
  std::map<size_t, std::vector<size_t>> comps;
  for (size_t i = 0; i < A; ++i) comps[root[i]].push_back(i);
  std::vector<MonitorVerdict> changed;
  s.cluster_of.clear();
  std::map<std::string, MonitorVerdict> next;
  for (const auto& [r, members] : comps) {
    if (members.size() < 2) continue;
    std::vector<std::string> names;
    for (size_t i : members) names.push_back(acc[i]->name);
    std::sort(names.begin(), names.end());
    const std::string subject = "cluster:" + names.front();
    MonitorVerdict v;
    if (auto old = s.clusters.find(subject); old != s.clusters.end()) {
      if (!rescore_unchanged && old->second.members == names) {  // as it was: scored at the regular update
        for (const auto& n : names) s.cluster_of[n] = subject;
        next[subject] = old->second;
        continue;
      }
      v = old->second;  // keeps flagged_at
    }
    v.subject = subject;
    v.cluster = true;
    v.members = names;
    v.requests = 0;
    // The cluster as one account: its members' windows merged in time order, the last `window` kept.
    std::vector<const MonitorItem*> merged;
    int64_t now = 0;
    for (size_t i : members) {
      v.requests += acc[i]->verdict.requests;
      for (const auto& it : acc[i]->window) merged.push_back(&it);
      now = std::max(now, acc[i]->last_ms);
    }
    std::sort(merged.begin(), merged.end(),
              [](const MonitorItem* a, const MonitorItem* b) { return a->event.unix_ms < b->event.unix_ms; });
    if (int(merged.size()) > s.window()) merged.erase(merged.begin(), merged.end() - s.window());
    std::vector<double> nearest;
    std::vector<const std::vector<float>*> seen;
    for (const MonitorItem* it : merged) {
      if (it->unit.empty()) continue;
      if (!seen.empty()) {
        double best = INFINITY;
        for (const auto* h : seen) best = std::min(best, sqdist(*h, it->unit));
        nearest.push_back(std::sqrt(best));
      }
      seen.push_back(&it->unit);
    }
    v.statistics = monitor_statistics(merged, nearest, cal);
    // Members in lockstep with another member: one client's accounts.
    std::set<size_t> in_step;
    for (const auto& [i, j] : lockstep)
      if (root[i] == r && root[j] == r) in_step.insert(i), in_step.insert(j);
    v.statistics["lockstep"] = double(in_step.size());
    v.links.clear();
    for (const auto& [pair, ev] : links)
      if (root[pair.first] == r) {
        std::string l = acc[pair.first]->name + " ~ " + acc[pair.second]->name + ":";
        for (const auto& e : ev) l += " " + e + ";";
        v.links.push_back(l);
      }
    if (s.score(v, now)) changed.push_back(v);
    for (const auto& n : names) s.cluster_of[n] = subject;
    next[subject] = std::move(v);
  }
  // A flagged cluster that split or merged stays on record under its subject.
  for (auto& [subject, v] : s.clusters)
    if (v.flagged && !next.count(subject)) next[subject] = std::move(v);
  s.clusters = std::move(next);
  return changed;
}

std::optional<MonitorVerdict> CrawlMonitor::flagged(const std::string& account) const {
  const Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.mu);
  auto it = s.accounts.find(account);
  if (it != s.accounts.end() && it->second.verdict.flagged) return it->second.verdict;
  for (const auto& [subject, v] : s.clusters)
    if (v.flagged && std::find(v.members.begin(), v.members.end(), account) != v.members.end()) return v;
  return std::nullopt;
}

std::vector<MonitorVerdict> CrawlMonitor::verdicts() const {
  const Impl& s = *impl_;
  std::lock_guard<std::mutex> lock(s.mu);
  std::vector<MonitorVerdict> out;
  for (const auto& [n, a] : s.accounts) out.push_back(a.verdict);
  for (const auto& [n, v] : s.clusters) out.push_back(v);
  std::stable_sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.score > b.score; });
  return out;
}

// ---- calibration --------------------------------------------------------------------------------

MonitorCalibration calibrate_monitor(const std::map<std::string, std::vector<MonitorEvent>>& benign,
                                     const CalibrateOptions& opts) {
  check(opts.window >= 2 && opts.min_requests >= 3 && opts.min_requests <= opts.window, "monitor calibrate: window ",
        opts.window, " and min_requests ", opts.min_requests, " must satisfy 3 <= min_requests <= window");
  check(opts.margin >= 1, "monitor calibrate: margin must be >= 1, got ", opts.margin);
  check(benign.size() >= 4, "monitor calibrate: needs benign traffic of at least 4 accounts, got ", benign.size());
  MonitorCalibration cal;
  cal.window = opts.window;
  cal.min_requests = opts.min_requests;
  cal.margin = opts.margin;
  cal.model = opts.model;
  // Split: accounts in name order, alternately into the pool half and the window half.
  std::vector<std::string> pool_accounts, window_accounts;
  size_t k = 0;
  for (const auto& [name, ev] : benign) (k++ % 2 == 0 ? pool_accounts : window_accounts).push_back(name);
  // The pool: embeddings of the pool half, evenly thinned to pool_size.
  std::vector<const std::vector<float>*> raw;
  for (const auto& name : pool_accounts)
    for (const auto& e : benign.at(name))
      if (!e.embedding.empty()) raw.push_back(&e.embedding);
  if (!raw.empty()) {
    cal.n_embd = int64_t(raw[0]->size());
    cal.center.assign(size_t(cal.n_embd), 0.0f);
    std::vector<double> c(size_t(cal.n_embd), 0.0);
    for (const auto* e : raw) {
      check(int64_t(e->size()) == cal.n_embd, "monitor calibrate: embeddings of different sizes");
      for (size_t i = 0; i < e->size(); ++i) c[i] += (*e)[i];
    }
    for (size_t i = 0; i < c.size(); ++i) cal.center[i] = float(c[i] / double(raw.size()));
    const size_t P = std::min(raw.size(), size_t(std::max(2, opts.pool_size)));
    for (size_t i = 0; i < P; ++i) cal.pool.push_back(monitor_normalize(*raw[i * raw.size() / P], cal));
    // σ² by the median heuristic: σ = the median pairwise distance.
    std::vector<double> d2;
    for (size_t i = 0; i < cal.pool.size(); ++i)
      for (size_t j = i + 1; j < cal.pool.size(); ++j) d2.push_back(sqdist(cal.pool[i], cal.pool[j]));
    check(!d2.empty(), "monitor calibrate: the pool needs at least 2 embeddings");
    std::nth_element(d2.begin(), d2.begin() + long(d2.size() / 2), d2.end());
    cal.sigma2 = std::max(1e-6, d2[d2.size() / 2]);
    double kyy = 0;
    for (size_t i = 0; i < cal.pool.size(); ++i)
      for (size_t j = i + 1; j < cal.pool.size(); ++j) kyy += 2 * monitor_kernel(cal.pool[i], cal.pool[j], cal.sigma2);
    cal.k_yy = kyy / double(cal.pool.size() * (cal.pool.size() - 1));
  }
  // Replay each account request by request through one monitor (no thresholds yet) and keep every
  // statistic's extreme; mmd only over the window half (the pool half would be compared with itself).
  MonitorCalibration probe = cal;
  probe.threshold.clear();
  std::set<std::string> window_set(window_accounts.begin(), window_accounts.end());
  std::vector<int> reached(MonitorCalibration::kBuckets, 0);  // accounts that reached each bucket
  std::vector<std::vector<const std::vector<float>*>> last_windows;  // each account's last window (unit)
  std::vector<std::vector<float>> units;  // reserved below: at most `window` per account, so pointers stay valid
  units.reserve(benign.size() * size_t(opts.window));
  std::map<std::string, int> fingerprint_accounts;
  for (const auto& [name, events] : benign) {
    CrawlMonitor m(probe);
    ++cal.benign_accounts;
    cal.benign_requests += int(events.size());
    for (int b = 0; b < MonitorCalibration::kBuckets; ++b) {
      const int64_t lo = b == 0 ? opts.min_requests : b == 1 ? 2 * opts.min_requests : 4 * opts.min_requests;
      reached[size_t(b)] += int64_t(events.size()) >= lo;
    }
    std::map<std::string, size_t> fps;
    for (const auto& e : events) ++fps[fingerprint_of(e)];
    for (const auto& [fp, c] : fps)
      if (!fp.empty() && double(c) >= 0.9 * double(events.size())) ++fingerprint_accounts[fp];
    if (int64_t(events.size()) >= opts.min_requests) {
      last_windows.emplace_back();
      const size_t from = events.size() - std::min(events.size(), size_t(opts.window));
      for (size_t k = from; k < events.size(); ++k)
        if (!events[k].embedding.empty()) {
          units.push_back(monitor_normalize(events[k].embedding, cal));
          last_windows.back().push_back(&units.back());
        }
    }
    int64_t n = 0;
    for (const auto& e0 : events) {
      MonitorEvent e = e0;
      e.account = name;
      m.observe(e);
      if (++n < opts.min_requests) continue;
      ++cal.benign_windows;
      const int b = cal.bucket(n);
      for (const auto& v : m.verdicts()) {
        if (v.cluster) continue;
        for (const auto& [test, value] : v.statistics) {
          if (test == "mmd" && !window_set.count(name)) continue;
          auto [it, fresh] = cal.benign_extreme.emplace(test, std::vector<double>(MonitorCalibration::kBuckets, -INFINITY));
          it->second[size_t(b)] = std::max(it->second[size_t(b)], value);
        }
      }
    }
  }
  for (auto& [test, extreme] : cal.benign_extreme) {
    // A bucket too few benign accounts reached takes the previous bucket's extreme (statistics of more
    // requests scatter less, so that is the conservative choice).
    for (int b = 1; b < MonitorCalibration::kBuckets; ++b)
      if (!std::isfinite(extreme[size_t(b)]) || reached[size_t(b)] < MonitorCalibration::kMinBucketAccounts)
        extreme[size_t(b)] = extreme[size_t(b - 1)];
    std::vector<double>& thr = cal.threshold[test];
    for (double e : extreme)  // shares live in [0, 1]: a benign extreme of 1 leaves nothing to flag (> 1)
      thr.push_back(std::isfinite(e) && e > 0 ? e * opts.margin : std::isfinite(e) ? 1e-9 : 1e300);
  }
  // Links: the closest two benign accounts' windows bound "one distribution"; parameter sets two benign
  // accounts share are common.
  double closest = INFINITY;
  if (!cal.pool.empty())
    for (size_t i = 0; i < last_windows.size(); ++i)
      for (size_t j = i + 1; j < last_windows.size(); ++j)
        if (last_windows[i].size() >= 4 && last_windows[j].size() >= 4)
          closest = std::min(closest, mmd2_between(last_windows[i], last_windows[j], cal.sigma2));
  cal.link_mmd = std::isfinite(closest) ? std::max(0.0, closest) : 0;
  for (const auto& [fp, n] : fingerprint_accounts)
    if (n >= 2) cal.common_fingerprints.push_back(fp);
  // Timing: every pair of benign accounts' windows as the monitor sees them — the accounts' requests
  // merged in time, every kClusterEvery requests and whenever an account is joining the linking — and the
  // largest runs-test z between any two.
  {
    std::vector<std::pair<int64_t, size_t>> stream;  // (time, account)
    size_t a = 0;
    for (const auto& [name, events] : benign) {
      for (const auto& e : events) stream.push_back({e.unix_ms, a});
      ++a;
    }
    std::stable_sort(stream.begin(), stream.end(), [](const auto& x, const auto& y) { return x.first < y.first; });
    std::vector<std::vector<int64_t>> win(a);
    std::vector<int64_t> seen(a, 0), seen_before(a, 0);  // requests so far; at the previous update
    double zmax = -INFINITY, pmin = 1;
    const int min_link = min_link_requests(opts.min_requests), min_turn = min_turn_requests(opts.min_requests);
    for (size_t k = 0; k < stream.size(); ++k) {
      auto& w = win[stream[k].second];
      w.push_back(stream[k].first);
      if (int(w.size()) > opts.window) w.erase(w.begin());
      const int64_t n = ++seen[stream[k].second];
      const bool joining = n >= min_turn && n < min_link + CrawlMonitor::kLinkSoon;  // observe() links then too
      if ((k + 1) % CrawlMonitor::kClusterEvery != 0 && !joining && k + 1 != stream.size()) continue;
      // Turn-taking among benign accounts, all of them taken as one group (as if all shared templates):
      // the smallest p for the group found, uncorrected for its choice.
      const TurnTaking tt = turn_taking(win, min_turn);
      if (!tt.members.empty()) pmin = std::min(pmin, tt.p_members);
      // Only pairs with an account that sent since the previous update have new windows (the rest
      // would repeat their z): O(changed × accounts) per update, not O(accounts²).
      for (size_t i = 0; i < a; ++i)
        for (size_t j = i + 1; j < a; ++j)
          if (seen[i] >= min_link && seen[j] >= min_link && (seen[i] != seen_before[i] || seen[j] != seen_before[j])) {
            const double z = lockstep_z(win[i], win[j]);
            if (std::isfinite(z)) zmax = std::max(zmax, z);
          }
      seen_before = seen;
    }
    cal.benign_lockstep_z = std::isfinite(zmax) ? zmax : 0;
    cal.link_lockstep_z = std::max(MonitorCalibration::kMinLockstepZ, std::isfinite(zmax) ? zmax * opts.margin : 0);
    cal.benign_turn_taking_p = pmin;
    cal.link_turn_taking_p = std::min(MonitorCalibration::kMaxTurnTakingP, pmin / 100);
  }
  // Accounts in lockstep within a cluster: by the threshold above no two benign accounts are, but one
  // customer spreading its own job over two keys would be; the benign extreme taken is 2.
  cal.benign_extreme["lockstep"] = std::vector<double>(MonitorCalibration::kBuckets, 2.0);
  cal.threshold["lockstep"] = std::vector<double>(MonitorCalibration::kBuckets, 2.0 * opts.margin);
  return cal;
}

}  // namespace retort

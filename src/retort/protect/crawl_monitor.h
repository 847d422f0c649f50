// retort/protect/crawl_monitor.h — spotting distillation crawls in a server's request stream.
//
// The server hands every served request to observe() (a MonitorEvent: who, when, the prompt's text
// and embedding, the request's parameters). Per account the monitor keeps its recent requests and
// computes features (MonitorFeatures) and tests; accounts are linked into clusters ("hydra" crawls
// spread over many accounts) and each cluster is scored as one account made of its members' requests.
//
// Tests, each with a threshold calibrated on benign traffic only (MonitorCalibration):
//   - mmd: the unbiased MMD² (Gretton et al. 2012) between the account's last `window` prompt
//     embeddings X and a benign reference pool Y (Liu et al. 2026), Gaussian kernel
//     k(x, y) = exp(−|x − y|² / (2σ²)) on centred, L2-normalised embeddings, σ from the median
//     heuristic on Y:
//        MMD² = 1/(m(m−1)) Σ_{i≠j} k(x_i, x_j) + 1/(p(p−1)) Σ_{i≠j} k(y_i, y_j) − 2/(mp) Σ_{i,j} k(x_i, y_j);
//     its threshold comes from benign-vs-benign windows (calibration accounts held out of the pool);
//   - prada: Shapiro–Wilk W of the distances from each query to its nearest earlier query of the same
//     account (Juuti et al. 2019); an alarm when W falls below the benign range;
//   - behaviour: request rate, bursts, inter-arrival regularity, embedding spread (coverage),
//     templated prompts (MinHash near-duplicates), single-turn share, logprob and n use, a fixed
//     parameter fingerprint. Each is compared with the benign range of the same feature;
//   - lockstep (clusters): member accounts whose requests alternate with another member's (lockstep_z).
// A test's ratio is its statistic over its threshold (≥ 1 = past it). Each threshold is a benign
// extreme, so one of the tests passing it barely is expected now and then of a benign account: the
// score is max(second-largest ratio, largest ratio / 2) over the scored tests — two tests past their
// thresholds, or one twice past — and score ≥ 1 flags. Three tests only describe how a client sends
// (context: regularity, single_turn, fingerprint): an API's customers are scripts, and a script's
// rhythm or fixed parameters are not evidence of harvesting, so they are reported and used to link
// accounts but not scored. Every test past its threshold is a reason. A test speaks only once the
// account has min_requests requests (the statistics are meaningless on fewer).
//
// Thread-safe: observe() from any thread; the state is guarded by one mutex (the work per event is
// O(window · (pool + window) · n_embd) — about a millisecond for SmolLM2's 576 dimensions).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace retort {

struct MonitorEvent {
  std::string account;            // "" = anonymous: not monitored
  std::string client_ip;          // the peer address (no port)
  int64_t unix_ms = 0;            // request received
  std::string prompt_text;        // the last user message (chat) or the prompt (completions)
  std::vector<float> embedding;   // [n_embd] the prompt's mean final hidden state; empty when none
  int user_turns = 1;             // user messages in the request
  bool has_history = false;       // the request carries earlier assistant turns (a real conversation)
  int n = 1;
  int top_logprobs = -1;          // -1 = no logprobs asked; 0 = the sampled token's only
  int64_t max_tokens = -1;        // -1 = not given
  double temperature = -1;        // -1 = not given
  std::string system_prompt;      // "" = none
  bool seed_given = false;        // the client sent a seed (its value says nothing: every request may differ)
};

// The tests in the order they are reported.
enum class MonitorTest : int {
  kMmd, kPrada, kRate, kBurst, kRegularity, kSpread, kTemplated, kSingleTurn, kLogprobs, kFingerprint,
  kLockstep,  // clusters only: member accounts sending in lockstep
  kCount
};
const char* monitor_test_name(MonitorTest t);  // "mmd", "prada", ...
// Context tests (regularity, single_turn, fingerprint): reported, not scored (see above).
bool monitor_test_scored(const std::string& name);
std::optional<MonitorTest> monitor_test_from_name(const std::string& name);

// The benign ranges the tests compare against, and the reference pool. Made by calibrate_monitor()
// from benign traffic; saved as JSON (save/load).
struct MonitorCalibration {
  int window = 64;                      // requests per account the statistics look at
  int min_requests = 16;                // a test speaks from this many requests on
  double margin = 1.10;                 // thresholds = the benign extreme moved by this factor
  std::vector<float> center;            // [E] mean of the pool's raw embeddings (subtracted before normalising)
  std::vector<std::vector<float>> pool; // [P][E] centred, normalised benign embeddings
  double sigma2 = 1;                    // σ² of the kernel
  double k_yy = 0;                      // 1/(p(p−1)) Σ_{i≠j} k(y_i, y_j)
  // Per test and per size bucket: threshold (the statistic's value at ratio 1) and the benign extreme it
  // came from. Statistics of few requests scatter more, so each bucket of requests seen has its own:
  // bucket 0 = [min_requests, 2·min_requests), 1 = [2·min_requests, 4·min_requests), 2 = the rest. A
  // bucket fewer than kMinBucketAccounts benign accounts reached takes the previous bucket's threshold.
  // A test absent here is not scored (e.g. mmd without embeddings).
  static constexpr int kBuckets = 3;
  static constexpr int kMinBucketAccounts = 8;
  std::map<std::string, std::vector<double>> threshold, benign_extreme;
  int bucket(int64_t requests) const {
    return requests < 2 * min_requests ? 0 : requests < 4 * min_requests ? 1 : 2;
  }
  // Linking accounts (clusters): two windows "from one distribution" when their two-sample MMD² is
  // below link_mmd — the smallest MMD² between any two benign accounts' windows (0 = never); request
  // parameter sets that two or more benign accounts share are no evidence of a link.
  double link_mmd = 0;
  std::vector<std::string> common_fingerprints;
  // Linking on timing: two accounts "in lockstep" when the runs test of their interleaved requests
  // (lockstep_z) reaches link_lockstep_z — the largest z between any two benign accounts' windows ×
  // margin, at least kMinLockstepZ (0 = never: a calibration made before timing links existed).
  static constexpr double kMinLockstepZ = 3.0;
  double link_lockstep_z = 0, benign_lockstep_z = 0;
  // Linking on a group's timing (turn_taking): accounts whose requests go round in one order link when the
  // test's p-value is at most link_turn_taking_p — kMaxTurnTakingP, or 1/100 of the smallest p the test
  // gave any group of benign accounts (benign_turn_taking_p, no correction for the group's choice) if
  // that is lower. 0 = never (a calibration made before the test existed).
  static constexpr double kMaxTurnTakingP = 1e-4;
  double link_turn_taking_p = 0, benign_turn_taking_p = 1;
  int benign_accounts = 0, benign_requests = 0, benign_windows = 0;
  std::string model;                    // the served model the embeddings came from (path stem)
  int64_t n_embd = 0;

  nlohmann::json to_json() const;
  static MonitorCalibration from_json(const nlohmann::json& j, const std::string& source);
  void save(const std::string& path) const;  // atomic
  static MonitorCalibration load(const std::string& path);
};

// What the monitor knows about one account or cluster now.
struct MonitorReason {
  std::string test;         // "mmd", ...
  double value = 0, threshold = 0, ratio = 0;
  std::string text;         // for people: "prompt embeddings far from benign traffic: MMD² 0.041 > 0.012"
};
struct MonitorVerdict {
  std::string subject;               // account name, or "cluster:<first member>"
  bool cluster = false;
  std::vector<std::string> members;  // accounts (a cluster's, or the account itself)
  int64_t requests = 0;              // requests seen
  double score = 0;                  // max(2nd ratio, largest / 2) over scored tests (0 before min_requests)
  double max_score = 0;              // the highest score so far (what a threshold sweep compares)
  bool flagged = false;              // score >= 1 (stays true once reached)
  int64_t flagged_at_request = -1;   // requests seen when first flagged; -1 = never
  int64_t flagged_unix_ms = -1;
  std::vector<MonitorReason> reasons;         // tests past their threshold now, largest ratio first
  std::vector<MonitorReason> flag_reasons;    // the reasons when it was first flagged
  std::map<std::string, double> statistics;   // every test's current value
  std::vector<std::string> links;             // clusters: why the members are linked
  nlohmann::json to_json() const;
};

// One request as the statistics use it: the event, its centred unit embedding, its mean kernel value
// against the pool (the cross term of MMD², computed once), its MinHash signature.
struct MonitorItem {
  MonitorEvent event;                 // embedding cleared (the normalised copy is kept)
  std::vector<float> unit;            // monitor_normalize(event.embedding); empty when none
  double k_pool = 0;                  // 1/p Σ_j k(unit, y_j)
  std::vector<uint32_t> minhash;
  size_t text_hash = 0;               // std::hash of the prompt text (exact duplicates)
  // Within one account's stream, filled as the item joins it (so a window costs O(window) per request,
  // not O(window²)): its index in the stream, and per earlier item (nearest first, up to window − 1)
  // the embedding distance (NaN when either has none) and whether the prompts near-duplicate.
  int64_t seq = -1;
  std::vector<float> dist_prev;
  std::vector<uint8_t> dup_prev;
};
MonitorItem make_monitor_item(const MonitorEvent& e, const MonitorCalibration* cal);

// Every test's statistic over a window of items (one account's, or a cluster's merged stream, oldest
// first) and the nearest-earlier-query distances (PRADA) of that stream. Exposed for calibration and tests.
std::map<std::string, double> monitor_statistics(const std::vector<const MonitorItem*>& window,
                                                 const std::vector<double>& nearest_distances,
                                                 const MonitorCalibration* cal);

// Unit-length centred embedding (cal.center subtracted); empty in, empty out.
std::vector<float> monitor_normalize(const std::vector<float>& e, const MonitorCalibration& cal);
// k(a, b) = exp(−|a − b|² / (2σ²)).
double monitor_kernel(const std::vector<float>& a, const std::vector<float>& b, double sigma2);

// MinHash signature of a prompt's word bigrams (lower-cased letters and digits), kMinHashes values.
inline constexpr int kMinHashes = 64;
std::vector<uint32_t> minhash_signature(const std::string& text);
// The explicit request parameters of an event as one string ("" when it sets none).
std::string monitor_fingerprint(const MonitorEvent& e);
// Timing: the Wald–Wolfowitz runs test on two accounts' request times (each ascending). Over the span
// both are active, label the requests by account in time order and count the runs R (maximal blocks of
// one account). Independent streams interleave at random: E[R] = 1 + 2·n1·n2/N,
// Var[R] = 2·n1·n2·(2·n1·n2 − N) / (N²·(N − 1)). One client handing requests to its accounts in turn makes
// them alternate (R near N): z = (R − E[R]) / √Var[R] is large; people's sessions clump (z < 0).
// NaN when either account has fewer than min_each requests in the common span.
double lockstep_z(const std::vector<int64_t>& a_ms, const std::vector<int64_t>& b_ms, int min_each = 6);
// Timing of a group: one client handing its requests to m ≥ 3 accounts in turn makes their merged stream
// periodic — every round holds each account once, in one order — long before any two of them have
// alternated often enough for lockstep_z. Over the members' common span (N requests, n_i each), take the
// longest stretch of ℓ ≥ 2m requests that repeats one order of all m members. Under independent streams
// (every interleaving equally likely) a given stretch of ℓ is periodic with probability at most
// m! · Π_i n_i^(k_i) / N^(ℓ) (falling powers; k_i = member i's requests in it, the larger ones given to
// the members with most requests), and there are N − ℓ + 1 stretches. The members are chosen from the
// k accounts given (those with ≥ min_each requests): the most recent 2k requests' accounts, then
// dropping members while that lowers p; p is multiplied by k · C(k, m) (Bonferroni over every group of
// that size), so it stays a p-value whatever group was chosen. members empty when no group of 3 has a
// periodic stretch of two rounds.
struct TurnTaking {
  std::vector<size_t> members;  // indices into times_ms
  int64_t requests = 0;         // N
  int64_t periodic = 0;         // ℓ
  double p_members = 1;         // for these members alone (no correction for choosing them)
  double p = 1;                 // corrected for the choice among the k accounts
};
TurnTaking turn_taking(const std::vector<std::vector<int64_t>>& times_ms, int min_each = 4);
// Share of equal positions: an unbiased estimate of the Jaccard similarity of the two bigram sets.
double minhash_similarity(const std::vector<uint32_t>& a, const std::vector<uint32_t>& b);
inline constexpr double kNearDuplicate = 0.5;  // MinHash similarity from which two prompts share a template

class CrawlMonitor {
 public:
  // Without a calibration the monitor computes features (reported) but scores nothing.
  explicit CrawlMonitor(std::optional<MonitorCalibration> cal);
  ~CrawlMonitor();

  // Adds one request. Returns the verdicts that changed to flagged by it (the account's, a cluster's).
  std::vector<MonitorVerdict> observe(const MonitorEvent& e);
  // Links accounts into clusters and scores them (done by observe() every kClusterEvery events; and, for
  // clusters whose members changed only, when an account has just become linkable: see observe()).
  std::vector<MonitorVerdict> update_clusters();

  // Is this account flagged, alone or as a member of a flagged cluster? The verdict that flagged it.
  std::optional<MonitorVerdict> flagged(const std::string& account) const;
  // Every account's and cluster's verdict, highest score first.
  std::vector<MonitorVerdict> verdicts() const;
  bool calibrated() const;
  const MonitorCalibration* calibration() const;

  static constexpr int kClusterEvery = 25;
  // An account's requests from its min_turn_requests-th to its (min_link_requests + kLinkSoon − 1)-th each
  // link at once.
  static constexpr int kLinkSoon = 4;

 private:
  // rescore_unchanged: false scores only clusters whose members changed (a link made between updates).
  std::vector<MonitorVerdict> link_accounts(bool rescore_unchanged);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Calibration from benign traffic: events grouped by account (each in time order). Accounts are split
// in two halves by a fixed rule (sorted names, alternating); the pool is drawn from one half (at most
// pool_size embeddings). Every account is replayed request by request through the same statistics and
// each test's extreme is kept per bucket — mmd over the other half only (benign-vs-benign windows: no
// window against a pool it is part of). Thresholds are the extremes moved by `margin`.
struct CalibrateOptions {
  int window = 64, min_requests = 16;
  double margin = 1.10;
  int pool_size = 512;
  std::string model;
};
MonitorCalibration calibrate_monitor(const std::map<std::string, std::vector<MonitorEvent>>& benign,
                                     const CalibrateOptions& opts);

}  // namespace retort

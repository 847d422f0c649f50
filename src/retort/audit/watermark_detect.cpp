// Watermark scoring and exact tests; see watermark_detect.h.
#include "retort/audit/watermark_detect.h"

#include <cmath>

#include "retort/util/error.h"
#include "retort/util/stats.h"

namespace retort {

void check_detector_config(const DetectorConfig& c) {
  if (c.scheme == "kgw")
    check_kgw_config(c.kgw);
  else if (c.scheme == "gumbel")
    check_gumbel_config(c.gumbel);
  else
    fail("watermark detect: scheme '", c.scheme, "' is unknown; use kgw or gumbel");
  check(c.min_tokens >= 1, "watermark detect: min_tokens = ", c.min_tokens, " must be >= 1");
}

int detector_window(const DetectorConfig& c) {
  return c.scheme == "kgw" ? c.kgw.previous_tokens() : c.gumbel.h;
}

double watermark_pair_score(const HashKey& key, const DetectorConfig& c, std::span<const int32_t> context,
                            int32_t token) {
  if (c.scheme == "kgw") return kgw_is_green(key, c.kgw, context, token) ? 1.0 : 0.0;
  return gumbel_score(key, c.gumbel, context, token);
}

namespace {
constexpr HashKey kFingerprintKeyA{0x7265746f72742d64ULL, 0x656475702d612d31ULL};  // public, fixed
constexpr HashKey kFingerprintKeyB{0x7265746f72742d64ULL, 0x656475702d622d32ULL};
constexpr uint64_t kFingerprintDomain = 0;
}  // namespace

WatermarkScorer::WatermarkScorer(const WatermarkKey& key, DetectorConfig config)
    : key_(key.hash_key()), config_(std::move(config)) {
  check_detector_config(config_);
  window_ = detector_window(config_);
}

bool WatermarkScorer::add_pair(std::span<const int32_t> context, int32_t token) {
  ++offered_;
  if (context.size() < static_cast<size_t>(window_)) return false;
  std::span<const int32_t> win = context.subspan(context.size() - window_);
  if (config_.dedup) {
    Fingerprint f{keyed_hash(kFingerprintKeyA, kFingerprintDomain, win, token),
                  keyed_hash(kFingerprintKeyB, kFingerprintDomain, win, token)};
    if (!seen_.insert(f).second) return false;
  }
  score_ += watermark_pair_score(key_, config_, win, token);
  ++scored_;
  return true;
}

void WatermarkScorer::add_tokens(std::span<const int32_t> tokens) {
  for (size_t t = 0; t < tokens.size(); ++t) add_pair(tokens.first(t), tokens[t]);
}

DetectionResult WatermarkScorer::result() const { return detection_from_counts(config_, offered_, scored_, score_); }

DetectionResult detection_from_counts(const DetectorConfig& c, int64_t offered, int64_t scored, double score) {
  DetectionResult r;
  r.scheme = c.scheme;
  r.tokens = offered;
  r.tokens_scored = scored;
  r.score = score;
  r.too_short = scored < c.min_tokens;
  if (r.too_short) return r;
  const double T = double(scored);
  double log_p;
  if (c.scheme == "kgw") {
    const double g = c.kgw.gamma;
    r.z = (score - g * T) / std::sqrt(T * g * (1 - g));
    log_p = log_binomial_sf(static_cast<int64_t>(std::llround(score)), scored, g);
  } else {
    r.z = (score - T) / std::sqrt(T);
    log_p = log_gamma_sf(score, T);
  }
  r.log10_p = log_p / std::log(10.0);
  r.p_value = std::exp(log_p);
  return r;
}

DetectionResult detect_tokens(const WatermarkKey& key, const DetectorConfig& c, std::span<const int32_t> tokens) {
  WatermarkScorer s(key, c);
  s.add_tokens(tokens);
  return s.result();
}

std::vector<AccountDetection> detect_accounts(const WatermarkKey& master, const std::vector<std::string>& accounts,
                                              const DetectorConfig& c,
                                              const std::vector<std::vector<int32_t>>& docs) {
  check(!accounts.empty(), "watermark detect: the account list is empty");
  std::vector<AccountDetection> out(accounts.size());
  std::vector<double> log_p(accounts.size(), 0.0);
  for (size_t i = 0; i < accounts.size(); ++i) {
    WatermarkKey k = derive_account_key(master, accounts[i]);
    WatermarkScorer s(k, c);
    for (const auto& d : docs) s.add_tokens(d);
    out[i].account = accounts[i];
    out[i].key_commitment = k.commitment();
    out[i].result = s.result();
    if (!out[i].result.too_short) log_p[i] = out[i].result.log10_p * std::log(10.0);
  }
  std::vector<double> adj = holm_bonferroni_log(log_p);
  for (size_t i = 0; i < accounts.size(); ++i) {
    out[i].log10_p_holm = adj[i] / std::log(10.0);
    out[i].p_holm = std::exp(adj[i]);
  }
  return out;
}

}  // namespace retort

// Watermark scoring and exact tests; see watermark_detect.h.
#include "retort/audit/watermark_detect.h"

#include <algorithm>
#include <cmath>
#include <nlohmann/json.hpp>

#include "retort/model/runtime_model.h"
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
// Table hash of one (window, token) pair: a multiply-xorshift per token id, then the
// MurmurHash3 64-bit finalizer. Only places pairs in the table (equality is exact).
inline uint64_t pair_hash(std::span<const int32_t> win, int32_t token) {
  uint64_t h = 0x9e3779b97f4a7c15ULL;
  for (int32_t x : win) {
    h = (h ^ static_cast<uint32_t>(x)) * 0xbf58476d1ce4e5b9ULL;
    h ^= h >> 29;
  }
  h = (h ^ static_cast<uint32_t>(token)) * 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 33;
  h *= 0xff51afd7ed558ccdULL;
  h ^= h >> 33;
  h *= 0xc4ceb9fe1a85ec53ULL;
  h ^= h >> 33;
  return h;
}

// A selfhash (seed, token) unit is stored as the seed's two 32-bit halves + the token.
struct SeedKey {
  int32_t ints[2];
  explicit SeedKey(uint64_t seed)
      : ints{static_cast<int32_t>(static_cast<uint32_t>(seed)), static_cast<int32_t>(static_cast<uint32_t>(seed >> 32))} {}
};
inline uint64_t self_unit_hash(uint64_t seed, int32_t token) { return pair_hash(SeedKey(seed).ints, token); }

constexpr int32_t kSeedCacheMax = 1 << 20;  // token ids whose per-token seed (anchor, lefthash h = 1) is cached
}  // namespace

WatermarkScorer::WatermarkScorer(const WatermarkKey& key, DetectorConfig config)
    : key_(key.hash_key()), config_(std::move(config)) {
  check_detector_config(config_);
  window_ = detector_window(config_);
  kgw_ = config_.scheme == "kgw";
  lefthash_ = kgw_ && config_.kgw.context == "lefthash";
  selfhash_ = kgw_ && !lefthash_;
  key_width_ = selfhash_ ? 2 : window_;
  if (kgw_) threshold_ = green_threshold(config_.kgw.gamma);
  if (selfhash_) green_seed_ = keyed_seed(key_, kDomainKgwSelfGreenSeed, {});
}

void WatermarkScorer::reserve_pairs(size_t n) {
  const size_t want = n_pairs_ + n;
  check(want < (size_t(1) << 32) - 1, "watermark detect: more than 2^32 distinct pairs in one scorer; split the input");
  size_t cap = table_.empty() ? 16 : table_.size();
  while (cap < 2 * want) cap *= 2;
  keys_.reserve(want * static_cast<size_t>(key_width_ + 1));
  if (cap == table_.size()) return;
  // Rehash: each stored pair's hash is recomputed from its ints.
  table_.assign(cap, Slot{0, 0});
  const size_t mask = cap - 1, w1 = static_cast<size_t>(key_width_) + 1;
  for (size_t k = 0; k < n_pairs_; ++k) {
    const int32_t* key = keys_.data() + k * w1;
    const uint64_t h = pair_hash({key, w1 - 1}, key[w1 - 1]);
    size_t i = h & mask;
    while (table_[i].idx != 0) i = (i + 1) & mask;
    table_[i] = Slot{static_cast<uint32_t>(h >> 32), static_cast<uint32_t>(k + 1)};
  }
}

bool WatermarkScorer::insert_pair(std::span<const int32_t> win, int32_t token, uint64_t h) {
  if (2 * (n_pairs_ + 1) > table_.size()) reserve_pairs(std::max<size_t>(n_pairs_, 8));
  const size_t mask = table_.size() - 1, w = win.size();
  const uint32_t tag = static_cast<uint32_t>(h >> 32);
  for (size_t i = h & mask;; i = (i + 1) & mask) {
    Slot& s = table_[i];
    if (s.idx == 0) {
      s = Slot{tag, static_cast<uint32_t>(n_pairs_ + 1)};
      keys_.insert(keys_.end(), win.begin(), win.end());
      keys_.push_back(token);
      ++n_pairs_;
      return true;
    }
    if (s.tag != tag) continue;
    const int32_t* k = keys_.data() + size_t(s.idx - 1) * (w + 1);
    if (k[w] != token) continue;
    bool same = true;
    for (size_t j = 0; j < w; ++j) same &= k[j] == win[j];
    if (same) return false;
  }
}

double WatermarkScorer::score_pair(std::span<const int32_t> win, int32_t token) {
  if (!kgw_) return gumbel_score(key_, config_.gumbel, win, token);
  // The definitions of kgw.h, with the per-call config parsing hoisted out.
  const uint32_t v = static_cast<uint32_t>(token);
  if (lefthash_) return stream_hash(left_seed(win), v) < threshold_ ? 1.0 : 0.0;
  return stream_hash(self_seed(win, token) ^ green_seed_, v) < threshold_ ? 1.0 : 0.0;
}

uint64_t WatermarkScorer::anchor(int32_t u) {
  if (u < 0 || u >= kSeedCacheMax) return kgw_self_anchor(key_, u);
  if (static_cast<size_t>(u) >= seed_cache_.size()) seed_cache_.resize(static_cast<size_t>(u) + 1, 0);
  uint64_t& a = seed_cache_[u];
  if (a == 0) a = kgw_self_anchor(key_, u);  // (a true 0 is just recomputed)
  return a;
}

uint64_t WatermarkScorer::left_seed(std::span<const int32_t> win) {
  // h = 1 (the default): the seed is a function of one token id, cached like the anchors.
  if (win.size() != 1 || win[0] < 0 || win[0] >= kSeedCacheMax) return keyed_seed(key_, kDomainKgwLeftSeed, win);
  const int32_t u = win[0];
  if (static_cast<size_t>(u) >= seed_cache_.size()) seed_cache_.resize(static_cast<size_t>(u) + 1, 0);
  uint64_t& a = seed_cache_[u];
  if (a == 0) a = keyed_seed(key_, kDomainKgwLeftSeed, win);
  return a;
}

uint64_t WatermarkScorer::self_seed(std::span<const int32_t> win, int32_t token) {
  const uint32_t v = static_cast<uint32_t>(token);
  uint64_t seed = stream_hash(anchor(token), v);
  for (int32_t u : win) seed = std::min(seed, stream_hash(anchor(u), v));
  return seed;
}

// selfhash: green-ness is a function of (seed, token) alone, and different windows often pick
// the same seed (the min is P(v, v) for ~1/h of them whatever the context; else the pair with
// one shared context token). Counting each window would count one coin flip many times (on
// human text with one key, 19% of documents came out at p < 1e-3), so the distinct unit
// is (seed, token), stored as two ints + the token.
bool WatermarkScorer::add_self_pair(std::span<const int32_t> win, int32_t token) {
  const uint64_t seed = self_seed(win, token);
  return add_self_unit(seed, token, self_unit_hash(seed, token));
}

bool WatermarkScorer::add_self_unit(uint64_t seed, int32_t token, uint64_t hash) {
  const SeedKey key(seed);
  if (!insert_pair(key.ints, token, hash)) return false;
  score_ += stream_hash(seed ^ green_seed_, static_cast<uint32_t>(token)) < threshold_ ? 1.0 : 0.0;
  ++scored_;
  return true;
}

bool WatermarkScorer::add_pair(std::span<const int32_t> context, int32_t token) {
  ++offered_;
  if (context.size() < static_cast<size_t>(window_)) return false;
  std::span<const int32_t> win = context.subspan(context.size() - window_);
  if (selfhash_ && config_.dedup) return add_self_pair(win, token);
  if (config_.dedup && !insert_pair(win, token, pair_hash(win, token))) return false;
  score_ += score_pair(win, token);
  ++scored_;
  return true;
}

void WatermarkScorer::add_tokens(std::span<const int32_t> tokens) { add_tokens_masked(tokens, nullptr); }

void WatermarkScorer::add_tokens(std::span<const int32_t> tokens, std::span<const uint8_t> score_position) {
  check(score_position.size() == tokens.size(), "watermark detect: the score_position mask has ",
        score_position.size(), " entries for ", tokens.size(), " tokens");
  add_tokens_masked(tokens, score_position.data());
}

void WatermarkScorer::add_tokens_masked(std::span<const int32_t> tokens, const uint8_t* score_position) {
  const size_t w = static_cast<size_t>(window_);
  if (tokens.size() <= w) {
    offered_ += static_cast<int64_t>(tokens.size());
    return;
  }
  offered_ += static_cast<int64_t>(w);  // positions without a full window
  const int32_t* p = tokens.data();
  const size_t n = tokens.size();
  auto selected = [score_position](size_t t) { return score_position == nullptr || score_position[t] != 0; };
  if (!config_.dedup) {
    for (size_t t = w; t < n; ++t) {
      if (!selected(t)) {
        ++masked_;
        continue;
      }
      score_ += score_pair({p + t - w, w}, p[t]);
      ++scored_;
    }
    offered_ += static_cast<int64_t>(n - w);
    return;
  }
  // Dedup, software-pipelined: the table outgrows the caches past ~10^5 pairs, so the hashes
  // of block k + 1 are computed and their slots prefetched before block k is inserted, and
  // the misses overlap. selfhash's unit is (seed, token): its seeds are kept per position.
  reserve_pairs(n - w);
  constexpr size_t kBlock = 32;
  uint64_t hs[2][kBlock], seeds[2][kBlock];
  const size_t mask = table_.size() - 1;
  auto prepare = [&](size_t t0, int buf) {
    const size_t nb = std::min(kBlock, n - t0);
    for (size_t b = 0; b < nb; ++b) {
      const size_t t = t0 + b;
      if (!selected(t)) continue;
      if (selfhash_) {
        const uint64_t seed = self_seed({p + t - w, w}, p[t]);
        seeds[buf][b] = seed;
        hs[buf][b] = self_unit_hash(seed, p[t]);
      } else {
        hs[buf][b] = pair_hash({p + t - w, w}, p[t]);
      }
      __builtin_prefetch(&table_[hs[buf][b] & mask]);
    }
  };
  prepare(w, 0);
  for (size_t t0 = w, k = 0; t0 < n; t0 += kBlock, ++k) {
    const int buf = static_cast<int>(k & 1);
    if (t0 + kBlock < n) prepare(t0 + kBlock, buf ^ 1);
    const size_t nb = std::min(kBlock, n - t0);
    for (size_t b = 0; b < nb; ++b, ++offered_) {
      const size_t t = t0 + b;
      if (!selected(t)) {
        ++masked_;
        continue;
      }
      if (selfhash_) {
        add_self_unit(seeds[buf][b], p[t], hs[buf][b]);
        continue;
      }
      std::span<const int32_t> win(p + t - w, w);
      if (!insert_pair(win, p[t], hs[buf][b])) continue;
      score_ += score_pair(win, p[t]);
      ++scored_;
    }
  }
}

void WatermarkScorer::reset() {
  offered_ = scored_ = masked_ = 0;
  score_ = 0;
  n_pairs_ = 0;
  keys_.clear();
  std::fill(table_.begin(), table_.end(), Slot{0, 0});
}

DetectionResult WatermarkScorer::result() const {
  DetectionResult r = detection_from_counts(config_, offered_, scored_, score_);
  r.tokens_masked = masked_;
  return r;
}

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
  WatermarkScorer s(key, c);  // (many documents with one key: reuse one scorer with reset())
  s.add_tokens(tokens);
  return s.result();
}

DetectionResult detect_tokens(const WatermarkKey& key, const DetectorConfig& c, std::span<const int32_t> tokens,
                              std::span<const uint8_t> score_position) {
  WatermarkScorer s(key, c);
  s.add_tokens(tokens, score_position);
  return s.result();
}

double logits_entropy(const float* z, int64_t V) {
  double m = -INFINITY;
  for (int64_t v = 0; v < V; ++v) m = std::max(m, double(z[v]));
  if (!std::isfinite(m)) return NAN;
  double sum = 0, dot = 0;  // Σ e^(z − m), Σ (z − m) e^(z − m)
  for (int64_t v = 0; v < V; ++v) {
    const double d = double(z[v]) - m;
    const double e = std::exp(d);
    sum += e;
    if (e > 0) dot += d * e;  // a −inf logit adds 0 (not −inf · 0)
  }
  return std::max(0.0, std::log(sum) - dot / sum);  // (≥ 0; rounding can leave −1e-16 at one-hot)
}

std::vector<uint8_t> entropy_mask(std::span<const double> entropies, double min_entropy) {
  std::vector<uint8_t> m(entropies.size(), 0);
  for (size_t t = 0; t < entropies.size(); ++t) m[t] = entropies[t] >= min_entropy ? 1 : 0;  // NaN: false
  return m;
}

std::vector<std::vector<double>> model_entropies(RuntimeModel& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const std::vector<std::vector<int32_t>>& texts, int64_t chunk,
                                                 int64_t group) {
  check(prompts.empty() || prompts.size() == texts.size(), "model_entropies: ", prompts.size(), " prompts for ",
        texts.size(), " texts (give none or one per text)");
  check(chunk >= 1 && group >= 1, "model_entropies: chunk and group must be >= 1");
  const int64_t V = model.hparams().n_vocab, n_ctx = model.hparams().max_position;
  std::vector<std::vector<double>> out(texts.size());
  // Document d is read as seq = prompt ++ text, cut to the model's context; row r of seq predicts
  // seq[r + 1], so text position t (seq index P + t) takes row P + t − 1.
  std::vector<std::vector<int32_t>> seqs(texts.size());
  std::vector<size_t> prompt_len(texts.size(), 0);
  for (size_t d = 0; d < texts.size(); ++d) {
    out[d].assign(texts[d].size(), NAN);
    if (!prompts.empty()) seqs[d] = prompts[d], prompt_len[d] = prompts[d].size();
    seqs[d].insert(seqs[d].end(), texts[d].begin(), texts[d].end());
    // The last token's own row predicts nothing we score.
    if (!seqs[d].empty()) seqs[d].pop_back();
    if (n_ctx > 0 && int64_t(seqs[d].size()) > n_ctx) seqs[d].resize(size_t(n_ctx));
  }
  for_each_position_logits(model, seqs, chunk, group, [&](size_t d, int64_t r, const float* row) {
    const int64_t t = r + 1 - int64_t(prompt_len[d]);  // rows inside the prompt score nothing
    if (t >= 0) out[d][size_t(t)] = logits_entropy(row, V);
  });
  return out;
}

std::vector<AccountDetection> detect_accounts(const WatermarkKey& master, const std::vector<std::string>& accounts,
                                              const DetectorConfig& c,
                                              const std::vector<std::vector<int32_t>>& docs,
                                              const std::vector<std::vector<uint8_t>>& masks) {
  check(!accounts.empty(), "watermark detect: the account list is empty");
  check(masks.empty() || masks.size() == docs.size(), "watermark detect: ", masks.size(), " masks for ",
        docs.size(), " documents");
  std::vector<AccountDetection> out(accounts.size());
  std::vector<double> log_p(accounts.size(), 0.0);
  for (size_t i = 0; i < accounts.size(); ++i) {
    WatermarkKey k = derive_account_key(master, accounts[i]);
    WatermarkScorer s(k, c);
    for (size_t d = 0; d < docs.size(); ++d) {
      if (masks.empty()) s.add_tokens(docs[d]);
      else s.add_tokens(docs[d], masks[d]);
    }
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

nlohmann::ordered_json detection_json(const DetectionResult& r, bool entropy_filter) {
  using J = nlohmann::ordered_json;
  J j;
  j["tokens"] = r.tokens;
  j["tokens_scored"] = r.tokens_scored;
  j["too_short"] = r.too_short;
  if (entropy_filter) j["tokens_skipped_low_entropy"] = r.tokens_masked;
  j["score"] = r.score;
  j["z"] = r.too_short ? J(nullptr) : J(r.z);
  j["p_value"] = r.too_short ? J(nullptr) : J(r.p_value);
  j["log10_p"] = r.too_short ? J(nullptr) : J(r.log10_p);
  return j;
}

nlohmann::ordered_json account_detection_json(const AccountDetection& a, bool entropy_filter) {
  using J = nlohmann::ordered_json;
  J j = detection_json(a.result, entropy_filter);
  j["account"] = a.account;
  j["key_commitment"] = a.key_commitment;
  j["p_holm"] = a.result.too_short ? J(nullptr) : J(a.p_holm);
  j["log10_p_holm"] = a.result.too_short ? J(nullptr) : J(a.log10_p_holm);
  return j;
}

}  // namespace retort

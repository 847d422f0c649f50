// retort/protect/synthid.cpp — SynthID-Text g-values, tournament, scores (see synthid.h).
#include "retort/protect/synthid.h"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <limits>
#include <random>

#include <nlohmann/json.hpp>

#include "retort/decode/sampling.h"
#include "retort/protect/keyed_hash.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/stats.h"

namespace retort {

namespace {

constexpr uint64_t kLcgMul = 6364136223846793005ULL;  // transformers' accumulate_hash multiplier

inline uint64_t acc(uint64_t h, int64_t x) { return (h + static_cast<uint64_t>(x)) * kLcgMul + 1; }

// torch's `%` on int64 (floor mod): result in [0, T) for T > 0.
inline int64_t floor_mod(uint64_t h, int64_t t) {
  int64_t r = static_cast<int64_t>(h) % t;
  return r < 0 ? r + t : r;
}

constexpr double kLog10E = 0.43429448190325182765;

// linspace(10, 1, m) scaled to sum m (or the caller's weights, scaled the same way).
std::vector<double> normalised_weights(std::span<const double> weights, int m) {
  std::vector<double> w;
  if (weights.empty()) {
    w.resize(m);
    for (int i = 0; i < m; i++) w[i] = m == 1 ? 10.0 : 10.0 + (1.0 - 10.0) * i / (m - 1);
  } else {
    check(static_cast<int>(weights.size()) == m, "synthid: ", weights.size(), " weights for ", m, " layers");
    w.assign(weights.begin(), weights.end());
  }
  double sum = 0;
  for (double x : w) {
    check(std::isfinite(x) && x >= 0, "synthid: layer weights must be finite and >= 0");
    sum += x;
  }
  check(sum > 0, "synthid: layer weights are all zero");
  for (double& x : w) x *= m / sum;
  return w;
}

}  // namespace

// ---- config ---------------------------------------------------------------------------------

void check_synthid_config(const SynthIdConfig& c) {
  check(!c.keys.empty() && c.keys.size() <= 1024, "synthid config: keys must list 1..1024 integers (one per layer), got ",
        c.keys.size());
  check(c.ngram_len >= 2 && c.ngram_len <= 64, "synthid config: ngram_len must be in 2..64, got ", c.ngram_len);
  check(c.sampling_table_size >= 1 && c.sampling_table_size <= (int64_t{1} << 24),
        "synthid config: sampling_table_size must be in 1..2^24, got ", c.sampling_table_size);
  check(c.context_history_size >= 1, "synthid config: context_history_size must be >= 1, got ",
        c.context_history_size);
}

SynthIdConfig synthid_config_from_json(std::string_view json_text, std::string_view source) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json_text);
  } catch (const std::exception& e) {
    fail(source, ": not valid JSON (", e.what(), ")");
  }
  if (j.is_object() && j.contains("watermarking_config")) j = j["watermarking_config"];
  check(j.is_object(), source, ": expected a JSON object with SynthID fields (ngram_len, keys, ...)");
  SynthIdConfig c;
  auto get_int = [&](const char* name, auto& out) {
    if (!j.contains(name)) return;
    const auto& v = j[name];
    check(v.is_number_integer(), source, ": field \"", name, "\" must be an integer");
    out = v.get<std::remove_reference_t<decltype(out)>>();
  };
  check(j.contains("keys") && j["keys"].is_array(), source, ": field \"keys\" (a list of integers) is missing");
  for (const auto& k : j["keys"]) {
    check(k.is_number_integer(), source, ": field \"keys\" must hold integers only");
    c.keys.push_back(k.get<int64_t>());
  }
  check(j.contains("ngram_len"), source, ": field \"ngram_len\" is missing");
  get_int("ngram_len", c.ngram_len);
  get_int("sampling_table_size", c.sampling_table_size);
  if (j.contains("sampling_table_seed")) {
    const auto& v = j["sampling_table_seed"];
    check(v.is_number_integer(), source, ": field \"sampling_table_seed\" must be an integer");
    c.sampling_table_seed = v.is_number_unsigned() ? v.get<uint64_t>() : static_cast<uint64_t>(v.get<int64_t>());
  }
  get_int("context_history_size", c.context_history_size);
  if (j.contains("skip_first_ngram_calls")) {
    check(j["skip_first_ngram_calls"].is_boolean(), source, ": field \"skip_first_ngram_calls\" must be true/false");
    c.skip_first_ngram_calls = j["skip_first_ngram_calls"].get<bool>();
  }
  try {
    check_synthid_config(c);
  } catch (const Error& e) {
    fail(source, ": ", e.what());
  }
  return c;
}

SynthIdConfig load_synthid_config(const std::string& path) { return synthid_config_from_json(read_file(path), path); }

std::string synthid_config_to_json(const SynthIdConfig& c) {
  nlohmann::json j;
  j["ngram_len"] = c.ngram_len;
  j["keys"] = c.keys;
  j["sampling_table_size"] = c.sampling_table_size;
  j["sampling_table_seed"] = c.sampling_table_seed;
  j["context_history_size"] = c.context_history_size;
  j["skip_first_ngram_calls"] = c.skip_first_ngram_calls;
  return j.dump();
}

std::vector<int64_t> parse_synthid_keys(std::string_view csv) {
  std::vector<int64_t> keys;
  size_t pos = 0;
  while (pos <= csv.size()) {
    size_t end = csv.find(',', pos);
    if (end == std::string_view::npos) end = csv.size();
    std::string_view item = csv.substr(pos, end - pos);
    while (!item.empty() && item.front() == ' ') item.remove_prefix(1);
    while (!item.empty() && item.back() == ' ') item.remove_suffix(1);
    int64_t v = 0;
    auto [p, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    check(!item.empty() && ec == std::errc() && p == item.data() + item.size(), "--synthid-keys: entry ",
          keys.size() + 1, " (\"", item, "\") is not a 64-bit integer; expected e.g. 654,400,836");
    keys.push_back(v);
    pos = end + 1;
  }
  check(!keys.empty(), "--synthid-keys: no keys given");
  return keys;
}

std::vector<int64_t> derive_synthid_keys(const WatermarkKey& key, int m) {
  check(m >= 1 && m <= 1024, "synthid: number of layers must be in 1..1024, got ", m);
  HashKey hk = key.hash_key();
  std::vector<int64_t> keys(m);
  for (int d = 0; d < m; d++) keys[d] = static_cast<int64_t>(keyed_hash_u64(hk, kDomainSynthid, 0, d) >> 1);
  return keys;
}

// ---- scheme ---------------------------------------------------------------------------------

SynthIdScheme::SynthIdScheme(SynthIdConfig config) : config_(std::move(config)) {
  check_synthid_config(config_);
  // torch.randint(0, 2, (T,), generator=manual_seed(seed)) on CPU: at::mt19937 seeded with the
  // low 32 bits (the standard mt19937 initialisation), one 32-bit draw per entry, value % 2.
  std::mt19937 mt(static_cast<uint32_t>(config_.sampling_table_seed & 0xffffffffULL));
  table_.resize(config_.sampling_table_size);
  int64_t ones = 0;
  for (auto& t : table_) {
    t = static_cast<uint8_t>(mt() % 2);
    ones += t;
  }
  ones_fraction_ = static_cast<double>(ones) / static_cast<double>(table_.size());
}

uint64_t SynthIdScheme::context_hash(std::span<const int32_t> context) const {
  uint64_t h = 1;
  for (int32_t t : context) h = acc(h, t);
  return h;
}

void SynthIdScheme::g_values(uint64_t ctx_hash, int32_t token, uint8_t* out) const {
  uint64_t h = acc(ctx_hash, token);
  const int64_t t = config_.sampling_table_size;
  for (size_t d = 0; d < config_.keys.size(); d++) out[d] = table_[floor_mod(acc(h, config_.keys[d]), t)];
}

std::vector<uint8_t> SynthIdScheme::sequence_g_values(std::span<const int32_t> tokens) const {
  const int64_t n = config_.ngram_len, m = depth(), len = static_cast<int64_t>(tokens.size());
  if (len < n) return {};
  std::vector<uint8_t> g((len - n + 1) * m);
  for (int64_t t = n - 1; t < len; t++) {
    uint64_t h = context_hash(tokens.subspan(t - n + 1, n - 1));
    g_values(h, tokens[t], g.data() + (t - n + 1) * m);
  }
  return g;
}

std::vector<uint8_t> SynthIdScheme::context_repetition_mask(std::span<const int32_t> tokens) const {
  const int64_t n = config_.ngram_len, len = static_cast<int64_t>(tokens.size());
  if (len < n) return {};
  const int64_t positions = len - n + 1, hist = config_.context_history_size;
  std::vector<uint64_t> hashes(positions);
  std::vector<uint8_t> mask(positions);
  for (int64_t i = 0; i < positions; i++) {
    hashes[i] = context_hash(tokens.subspan(i, n - 1));
    // transformers' history starts as `hist` zeros, so a hash of 0 counts as seen until
    // they are pushed out.
    bool repeated = hashes[i] == 0 && i < hist;
    for (int64_t j = std::max<int64_t>(0, i - hist); j < i && !repeated; j++) repeated = hashes[j] == hashes[i];
    mask[i] = repeated ? 0 : 1;
  }
  return mask;
}

namespace {
// g[i] = table[floor_mod(acc(h[i], key), T)] for i < n. With T a power of two (the default
// 65536), floor_mod of the int64 is the low bits of its two's-complement form: a mask.
RETORT_HASH_CLONES void layer_g_values(const uint64_t* h, int64_t n, int64_t key, const uint8_t* table, int64_t t,
                                       uint8_t* g) {
  if ((t & (t - 1)) == 0) {
    const uint64_t mask = static_cast<uint64_t>(t) - 1;
    for (int64_t i = 0; i < n; ++i) g[i] = table[acc(h[i], key) & mask];
  } else {
    for (int64_t i = 0; i < n; ++i) g[i] = table[floor_mod(acc(h[i], key), t)];
  }
}
}  // namespace

void SynthIdScheme::tournament(uint64_t ctx_hash, std::vector<double>& probs) const {
  // Layer-major over the support: per layer one pass for the g-values, one for the mass
  // Σ_u g_d(u) p(u), one for the update; [support] arrays stay in cache.
  std::vector<int32_t> support;
  for (size_t v = 0; v < probs.size(); v++)
    if (probs[v] > 0) support.push_back(static_cast<int32_t>(v));
  const int64_t n = static_cast<int64_t>(support.size());
  std::vector<uint64_t> h(n);
  std::vector<double> p(n);
  std::vector<uint8_t> g(n);
  for (int64_t i = 0; i < n; i++) {
    h[i] = acc(ctx_hash, support[i]);
    p[i] = probs[support[i]];
  }
  for (int64_t key : config_.keys) {
    layer_g_values(h.data(), n, key, table_.data(), config_.sampling_table_size, g.data());
    double mass = 0;
    for (int64_t i = 0; i < n; i++) mass += g[i] ? p[i] : 0.0;
    for (int64_t i = 0; i < n; i++) p[i] *= 1.0 + g[i] - mass;
  }
  for (int64_t i = 0; i < n; i++) probs[support[i]] = p[i];
}

std::vector<uint8_t> synthid_eos_mask(std::span<const int32_t> tokens, int32_t eos_id) {
  std::vector<uint8_t> mask(tokens.size(), 1);
  for (size_t i = 0; i < tokens.size(); i++) {
    if (tokens[i] == eos_id) {
      std::fill(mask.begin() + i, mask.end(), 0);
      break;
    }
  }
  return mask;
}

// ---- statistics -----------------------------------------------------------------------------

double synthid_weighted_log10_tail(double s, int64_t n_positions, std::span<const double> weights, double pi) {
  if (n_positions <= 0) return 0;
  double sum_w = 0, min_w = std::numeric_limits<double>::infinity();
  for (double w : weights) {
    sum_w += w;
    if (w > 0) min_w = std::min(min_w, w);
  }
  const double n = static_cast<double>(n_positions);
  const double mean = n * pi * sum_w, max = n * sum_w;
  if (s <= mean) return 0;
  if (pi <= 0) return -std::numeric_limits<double>::infinity();
  if (pi >= 1) return 0;
  if (s > max * (1 + 1e-12)) return -std::numeric_limits<double>::infinity();
  // Only "every g with w > 0 is 1" reaches s: exact tail π^(N · #{w > 0}).
  if (s > max - min_w * 0.5) {
    int64_t k = 0;
    for (double w : weights) k += w > 0;
    return n * static_cast<double>(k) * std::log(pi) * kLog10E;
  }
  // f(λ) = −λ s + N Σ_d log(1 − π + π e^{λ w_d}), convex; f'(λ) = −s + N Σ_d w_d q_d(λ),
  // q_d = π e^{λw} / (1 − π + π e^{λw}). Root of f' by bisection on λ >= 0.
  auto log_mgf = [&](double lambda) {
    double acc_ = 0;
    for (double w : weights) {
      double x = lambda * w;  // log(1−π+π e^x) = x + log(π + (1−π) e^{−x})
      acc_ += x + std::log(pi + (1 - pi) * std::exp(-x));
    }
    return acc_;
  };
  auto dfdl = [&](double lambda) {
    double acc_ = 0;
    for (double w : weights) {
      double x = lambda * w;
      double q = pi / (pi + (1 - pi) * std::exp(-x));
      acc_ += w * q;
    }
    return -s + n * acc_;
  };
  double lo = 0, hi = 1;
  while (dfdl(hi) < 0 && hi < 1e6) hi *= 2;
  for (int it = 0; it < 200; it++) {
    double mid = 0.5 * (lo + hi);
    (dfdl(mid) < 0 ? lo : hi) = mid;
  }
  double lambda = 0.5 * (lo + hi);
  double f = -lambda * s + n * log_mgf(lambda);
  return std::min(0.0, f * kLog10E);
}

SynthIdScore synthid_score_g(std::span<const uint8_t> g_values, std::span<const uint8_t> mask, int depth, double pi,
                             std::span<const double> weights) {
  check(depth >= 1, "synthid score: depth must be >= 1");
  check(g_values.size() == mask.size() * static_cast<size_t>(depth), "synthid score: ", g_values.size(),
        " g-values for ", mask.size(), " positions x ", depth, " layers");
  std::vector<double> w = normalised_weights(weights, depth);
  SynthIdScore r;
  r.depth = depth;
  r.positions = static_cast<int64_t>(mask.size());
  r.pi = pi;
  double wsum = 0;
  for (size_t i = 0; i < mask.size(); i++) {
    if (!mask[i]) continue;
    r.scored++;
    for (int d = 0; d < depth; d++) {
      uint8_t g = g_values[i * depth + d];
      r.ones += g;
      if (g) wsum += w[d];
    }
  }
  if (r.scored == 0) return r;
  r.too_short = false;
  const double denom = static_cast<double>(depth) * static_cast<double>(r.scored);
  r.mean = static_cast<double>(r.ones) / denom;
  r.weighted_mean = wsum / denom;
  double ln_p = log_binomial_sf(r.ones, r.scored * depth, pi);
  r.mean_log10_p = ln_p * kLog10E;
  r.mean_p = std::exp(ln_p);
  // Tail at the observed sum, less a relative 1e-12 so rounding in the sum never makes the
  // bound smaller than the probability of the observed value.
  r.weighted_log10_p = synthid_weighted_log10_tail(wsum * (1 - 1e-12), r.scored, w, pi);
  r.weighted_p = std::pow(10.0, r.weighted_log10_p);
  return r;
}

SynthIdScore synthid_score(const SynthIdScheme& scheme, std::span<const int32_t> tokens, std::optional<int32_t> eos_id,
                           std::span<const double> weights) {
  std::vector<uint8_t> g = scheme.sequence_g_values(tokens);
  std::vector<uint8_t> mask = scheme.context_repetition_mask(tokens);
  if (eos_id && !mask.empty()) {
    std::vector<uint8_t> eos = synthid_eos_mask(tokens, *eos_id);
    for (size_t i = 0; i < mask.size(); i++) mask[i] &= eos[i + scheme.ngram_len() - 1];
  }
  SynthIdScore r = synthid_score_g(g, mask, scheme.depth(), scheme.table_ones_fraction(), weights);
  r.tokens = static_cast<int64_t>(tokens.size());
  return r;
}

// ---- processor ------------------------------------------------------------------------------

SynthIdProcessor::SynthIdProcessor(std::shared_ptr<const SynthIdScheme> scheme, uint64_t seed, int64_t prompt_len)
    : scheme_(std::move(scheme)), seed_(seed), prompt_len_(prompt_len) {
  check(scheme_ != nullptr, "synthid processor: no scheme");
}

std::optional<uint64_t> SynthIdProcessor::step_context(std::span<const int32_t> context) const {
  const int64_t n = scheme_->ngram_len(), hist = scheme_->config().context_history_size;
  // seq = (n-1 zeros) ++ the tokens the contexts are drawn from; the context of the step
  // that produces seq position t is seq[t-n+1 .. t-1].
  std::span<const int32_t> body = context;
  int64_t calls = -1;  // 1-based index of this step in the generation (HF's num_calls)
  if (prompt_len_ >= 0) {
    check(static_cast<int64_t>(context.size()) >= prompt_len_, "synthid processor: context (", context.size(),
          " tokens) shorter than the prompt (", prompt_len_, ")");
    body = context.subspan(prompt_len_);
    calls = static_cast<int64_t>(body.size()) + 1;
    if (scheme_->config().skip_first_ngram_calls && calls < n) return std::nullopt;
  }
  std::vector<int32_t> seq(n - 1, 0);
  seq.insert(seq.end(), body.begin(), body.end());
  const int64_t t = static_cast<int64_t>(seq.size());  // the position being chosen
  uint64_t h = scheme_->context_hash(std::span<const int32_t>(seq).subspan(t - n + 1, n - 1));
  // Earlier steps: positions t' < t with a full window in seq; with prompt_len >= 0 these are
  // the generation's own steps (t' >= n-1), skipped ones (never recorded by HF) excluded.
  int64_t first = n - 1;
  if (prompt_len_ < 0 || scheme_->config().skip_first_ngram_calls) first = 2 * (n - 1);
  if (prompt_len_ >= 0 && h == 0 && t - first < hist) return std::nullopt;  // HF's history starts as zeros
  for (int64_t tp = std::max(first, t - hist); tp < t; tp++) {
    if (scheme_->context_hash(std::span<const int32_t>(seq).subspan(tp - n + 1, n - 1)) == h) return std::nullopt;
  }
  return h;
}

std::vector<double> SynthIdProcessor::distribution(std::span<const int32_t> context,
                                                   std::span<const double> probs) const {
  std::vector<double> q(probs.begin(), probs.end());
  if (auto h = step_context(context)) scheme_->tournament(*h, q);
  return q;
}

std::vector<double> SynthIdProcessor::distribution(std::span<const int32_t> context, const float* probs,
                                                   int64_t n_vocab) const {
  std::vector<double> p(probs, probs + n_vocab);
  return distribution(context, std::span<const double>(p));
}

int32_t SynthIdProcessor::choose(std::span<const int32_t> context, const float* probs, int64_t n_vocab) {
  std::vector<double> q = distribution(context, probs, n_vocab);
  // u from (seed, whole context): a request's draws are a pure function of its tokens.
  uint64_t ctx = 0x5157'4e44'4944ULL;
  for (size_t i = 0; i < context.size(); i++) ctx = rng_u64(ctx ^ static_cast<uint32_t>(context[i]), i);
  double u = rng_uniform(seed_, ctx);
  double total = 0;
  for (double x : q) total += x;
  double target = u * total, cum = 0;
  int32_t last = -1;
  for (int64_t v = 0; v < n_vocab; v++) {
    if (q[v] <= 0) continue;
    last = static_cast<int32_t>(v);
    cum += q[v];
    if (target < cum) return last;
  }
  return last;  // rounding at the top end: the last token in the support
}

SynthIdPooled synthid_pool(std::span<const SynthIdScore> docs) {
  SynthIdPooled r;
  double pi = 0.5;
  for (const SynthIdScore& d : docs) {
    if (d.too_short || d.scored < 1) continue;
    check(r.documents == 0 || d.pi == pi, "synthid: pooled documents were scored with different sampling tables");
    pi = d.pi;
    ++r.documents;
    r.scored += d.scored;
    r.g_values += d.scored * d.depth;
    r.ones += d.ones;
  }
  if (r.documents == 0) return r;
  r.too_short = false;
  r.mean = static_cast<double>(r.ones) / static_cast<double>(r.g_values);
  const double ln_p = log_binomial_sf(r.ones, r.g_values, pi);
  r.log10_p = ln_p * kLog10E;
  r.p = std::exp(ln_p);
  return r;
}

}  // namespace retort

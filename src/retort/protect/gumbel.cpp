// Gumbel-max watermark; see gumbel.h.
#include "retort/protect/gumbel.h"

#include <cmath>
#include <limits>
#include <vector>

#include "retort/util/parallel.h"

#include "retort/util/error.h"

namespace retort {

void check_gumbel_config(const GumbelConfig& c) {
  check(c.h >= 1 && c.h <= 16, "gumbel: context width h = ", c.h, " must be in 1..16");
}

double gumbel_uniform(const HashKey& key, const GumbelConfig& c, std::span<const int32_t> context, int32_t token) {
  const size_t h = static_cast<size_t>(c.h);
  check(context.size() >= h, "gumbel: context of ", context.size(), " tokens; the score needs ", h);
  const uint64_t S = keyed_seed(key, kDomainGumbelSeed, context.subspan(context.size() - h));
  return hash_to_uniform(stream_hash(S, static_cast<uint32_t>(token)));
}

double gumbel_score(const HashKey& key, const GumbelConfig& c, std::span<const int32_t> context, int32_t token) {
  return -std::log1p(-gumbel_uniform(key, c, context, token));
}

GumbelProcessor::GumbelProcessor(const WatermarkKey& key, GumbelConfig config)
    : key_(key.hash_key()), config_(config) {
  check_gumbel_config(config_);
}

namespace {
// keep[i] for v = lo + i: p_v > 0 and 1 − r_v <= bound·p_v (the necessary condition to win;
// bound carries a relative margin for rounding). 1 − r_v is exact in a double.
RETORT_HASH_CLONES void gumbel_candidates(uint64_t S, const float* probs, double bound, int64_t lo, int64_t n,
                                          uint8_t* keep) {
  for (int64_t i = 0; i < n; ++i) {
    const double p = probs[lo + i];
    const double r = hash_to_uniform(stream_hash(S, static_cast<uint32_t>(lo + i)));
    keep[i] = (p > 0) & (1.0 - r <= bound * p);
  }
}
}  // namespace

int32_t GumbelProcessor::choose(std::span<const int32_t> context, const float* probs, int64_t n_vocab) {
  const size_t h = static_cast<size_t>(config_.h);
  if (context.size() < h) return -1;
  const uint64_t S = keyed_seed(key_, kDomainGumbelSeed, context.subspan(context.size() - h));
  // ln r < 0, so ln(r)/p ranks r^{1/p}; only tokens in the support (p > 0) compete.
  auto value = [&](int64_t v) {
    return std::log(hash_to_uniform(stream_hash(S, static_cast<uint32_t>(v)))) / double(probs[v]);
  };
  int64_t m = 0;
  for (int64_t v = 1; v < n_vocab; ++v)
    if (probs[v] > probs[m]) m = v;
  if (!(probs[m] > 0)) return -1;
  const double bound = -value(m) * (1 + 1e-9);
  thread_local std::vector<uint8_t> keep_buffer;  // one per sampling thread
  keep_buffer.resize(static_cast<size_t>(n_vocab));
  uint8_t* keep = keep_buffer.data();
  parallel_for(0, n_vocab, 8192, [&](int64_t lo, int64_t hi) { gumbel_candidates(S, probs, bound, lo, hi - lo, keep + lo); });
  // Exact values for the survivors, in id order (ties, of measure zero, to the lower id).
  int32_t best = static_cast<int32_t>(m);
  double best_val = value(m);
  for (int64_t v = 0; v < n_vocab; ++v) {
    if (!keep[v]) continue;
    const double x = value(v);
    if (x > best_val || (x == best_val && v < best)) {
      best_val = x;
      best = static_cast<int32_t>(v);
    }
  }
  return best;
}

}  // namespace retort

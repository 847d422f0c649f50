// Gumbel-max watermark; see gumbel.h.
#include "retort/protect/gumbel.h"

#include <cmath>
#include <limits>
#include <vector>

#include <ATen/Parallel.h>

#include "retort/util/error.h"

namespace retort {

void check_gumbel_config(const GumbelConfig& c) {
  check(c.h >= 1 && c.h <= 16, "gumbel: context width h = ", c.h, " must be in 1..16");
}

double gumbel_uniform(const HashKey& key, const GumbelConfig& c, std::span<const int32_t> context, int32_t token) {
  const size_t h = static_cast<size_t>(c.h);
  check(context.size() >= h, "gumbel: context of ", context.size(), " tokens; the score needs ", h);
  return hash_to_uniform(keyed_hash(key, kDomainGumbel, context.subspan(context.size() - h), token));
}

double gumbel_score(const HashKey& key, const GumbelConfig& c, std::span<const int32_t> context, int32_t token) {
  return -std::log1p(-gumbel_uniform(key, c, context, token));
}

GumbelProcessor::GumbelProcessor(const WatermarkKey& key, GumbelConfig config)
    : key_(key.hash_key()), config_(config) {
  check_gumbel_config(config_);
}

int32_t GumbelProcessor::choose(std::span<const int32_t> context, const float* probs, int64_t n_vocab) {
  const size_t h = static_cast<size_t>(config_.h);
  if (context.size() < h) return -1;
  std::span<const int32_t> prev = context.subspan(context.size() - h);
  // ln r < 0, so ln(r)/p ranks r^{1/p}; tokens outside the support get -inf. Hashing is
  // split across threads; the argmax (ties, of measure zero, to the lower id) is serial.
  std::vector<double> val(n_vocab);
  at::parallel_for(0, n_vocab, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t v = lo; v < hi; ++v)
      val[v] = probs[v] > 0
                   ? std::log(hash_to_uniform(keyed_hash(key_, kDomainGumbel, prev, int32_t(v)))) / double(probs[v])
                   : -std::numeric_limits<double>::infinity();
  });
  int32_t best = -1;
  double best_val = -std::numeric_limits<double>::infinity();
  for (int64_t v = 0; v < n_vocab; ++v)
    if (val[v] > best_val) {
      best_val = val[v];
      best = int32_t(v);
    }
  return best;
}

}  // namespace retort

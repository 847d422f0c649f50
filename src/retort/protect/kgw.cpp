// KGW green lists; see kgw.h for the definitions.
#include "retort/protect/kgw.h"

#include <algorithm>
#include <cmath>

#include <ATen/Parallel.h>

#include "retort/util/error.h"

namespace retort {

int KgwConfig::width() const {
  if (h > 0) return h;
  return context == "lefthash" ? 1 : 4;
}

int KgwConfig::previous_tokens() const { return context == "lefthash" ? width() : width() - 1; }

void check_kgw_config(const KgwConfig& c) {
  check(c.gamma > 0 && c.gamma < 1, "kgw: gamma = ", c.gamma, " must be in (0, 1) (the green fraction; 0.25 is usual)");
  check(std::isfinite(c.delta) && c.delta >= 0, "kgw: delta = ", c.delta, " must be finite and >= 0 (2 is usual)");
  check(c.context == "selfhash" || c.context == "lefthash", "kgw: context scheme '", c.context,
        "' is unknown; use selfhash or lefthash");
  int w = c.width();
  if (c.context == "selfhash")
    check(w >= 2 && w <= 16, "kgw: selfhash context width h = ", w, " must be in 2..16 (it includes the token itself)");
  else
    check(w >= 1 && w <= 16, "kgw: lefthash context width h = ", w, " must be in 1..16");
}

namespace {
inline uint64_t self_pair(const HashKey& k, int32_t u, int32_t v) {
  return keyed_hash_u64(k, kDomainKgwSelfPair, static_cast<uint32_t>(u), static_cast<uint32_t>(v));
}
}  // namespace

bool kgw_is_green(const HashKey& key, const KgwConfig& c, std::span<const int32_t> context, int32_t token) {
  const size_t n_prev = static_cast<size_t>(c.previous_tokens());
  check(context.size() >= n_prev, "kgw: context of ", context.size(), " tokens; the green test needs ", n_prev);
  std::span<const int32_t> prev = context.subspan(context.size() - n_prev);
  const uint64_t thr = green_threshold(c.gamma);
  if (c.context == "lefthash") return keyed_hash(key, kDomainKgwLeft, prev, token) < thr;
  uint64_t seed = self_pair(key, token, token);
  for (int32_t u : prev) seed = std::min(seed, self_pair(key, u, token));
  return keyed_hash_u64(key, kDomainKgwSelfGreen, seed, static_cast<uint32_t>(token)) < thr;
}

void kgw_green_mask(const HashKey& key, const KgwConfig& c, std::span<const int32_t> context, int64_t n_vocab,
                    uint8_t* green) {
  for (int64_t v = 0; v < n_vocab; ++v) green[v] = kgw_is_green(key, c, context, static_cast<int32_t>(v));
}

KgwProcessor::KgwProcessor(const WatermarkKey& key, KgwConfig config)
    : key_(key.hash_key()), config_(std::move(config)) {
  check_kgw_config(config_);
  threshold_ = green_threshold(config_.gamma);
}

void KgwProcessor::process(std::span<const int32_t> context, float* logits, int64_t n_vocab) {
  const size_t n_prev = static_cast<size_t>(config_.previous_tokens());
  if (context.size() < n_prev) return;  // too little context to seed a green list: left unwatermarked
  std::span<const int32_t> prev = context.subspan(context.size() - n_prev);
  const float delta = static_cast<float>(config_.delta);
  if (config_.context == "lefthash") {
    at::parallel_for(0, n_vocab, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t v = lo; v < hi; ++v)
        if (keyed_hash(key_, kDomainKgwLeft, prev, static_cast<int32_t>(v)) < threshold_) logits[v] += delta;
    });
    return;
  }
  // selfhash: P(v, v) does not depend on the context, so it is computed once per vocabulary.
  if (static_cast<int64_t>(self_pair_.size()) != n_vocab) {
    self_pair_.resize(n_vocab);
    at::parallel_for(0, n_vocab, 4096, [&](int64_t lo, int64_t hi) {
      for (int64_t v = lo; v < hi; ++v) self_pair_[v] = self_pair(key_, int32_t(v), int32_t(v));
    });
  }
  // Candidates are independent: split the vocabulary across threads (each v written once).
  at::parallel_for(0, n_vocab, 4096, [&](int64_t lo, int64_t hi) {
    for (int64_t v = lo; v < hi; ++v) {
      uint64_t seed = self_pair_[v];
      for (int32_t u : prev) seed = std::min(seed, self_pair(key_, u, int32_t(v)));
      if (keyed_hash_u64(key_, kDomainKgwSelfGreen, seed, static_cast<uint32_t>(v)) < threshold_) logits[v] += delta;
    }
  });
}

}  // namespace retort

// KGW green lists; see kgw.h for the definitions.
#include "retort/protect/kgw.h"

#include <algorithm>
#include <cmath>

#include "retort/util/parallel.h"

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

uint64_t kgw_self_anchor(const HashKey& key, int32_t u) {
  return keyed_seed(key, kDomainKgwSelfAnchor, std::span<const int32_t>(&u, 1));
}

namespace {

// green[i] for v = lo + i, i < n: stream_hash(S, v) < thr.
RETORT_HASH_CLONES void left_green(uint64_t S, uint64_t thr, int64_t lo, int64_t n, uint8_t* green) {
  for (int64_t i = 0; i < n; ++i) green[i] = stream_hash(S, static_cast<uint32_t>(lo + i)) < thr;
}

// selfhash over v = lo + i, i < n: seed = min(self_pair[i], P(u, v) for each anchor), then the
// green draw. Blocks of 256 so the min runs as vector loops over v, one anchor at a time.
RETORT_HASH_CLONES void self_green(const uint64_t* anchors, int n_anchors, const uint64_t* self_pair, uint64_t g,
                                   uint64_t thr, int64_t lo, int64_t n, uint8_t* green) {
  constexpr int64_t kBlock = 256;
  uint64_t seed[kBlock];
  for (int64_t b = 0; b < n; b += kBlock) {
    const int64_t m = std::min(kBlock, n - b);
    const uint32_t v0 = static_cast<uint32_t>(lo + b);
    for (int64_t i = 0; i < m; ++i) seed[i] = self_pair[b + i];
    for (int a = 0; a < n_anchors; ++a) {
      const uint64_t A = anchors[a];
      for (int64_t i = 0; i < m; ++i) seed[i] = std::min(seed[i], stream_hash(A, v0 + static_cast<uint32_t>(i)));
    }
    for (int64_t i = 0; i < m; ++i) green[b + i] = stream_hash(seed[i] ^ g, v0 + static_cast<uint32_t>(i)) < thr;
  }
}

RETORT_HASH_CLONES void add_where(const uint8_t* green, float delta, int64_t n, float* logits) {
  for (int64_t i = 0; i < n; ++i) logits[i] += green[i] ? delta : 0.0f;
}

std::vector<uint64_t> prev_anchors(const HashKey& key, std::span<const int32_t> prev) {
  std::vector<uint64_t> a;
  for (int32_t u : prev) a.push_back(kgw_self_anchor(key, u));
  return a;
}

void self_pair_table(const HashKey& key, int64_t lo, int64_t hi, uint64_t* out) {
  for (int64_t v = lo; v < hi; ++v) out[v - lo] = stream_hash(kgw_self_anchor(key, int32_t(v)), uint32_t(v));
}

constexpr int64_t kGrain = 8192;  // candidates per parallel task

}  // namespace

bool kgw_is_green(const HashKey& key, const KgwConfig& c, std::span<const int32_t> context, int32_t token) {
  const size_t n_prev = static_cast<size_t>(c.previous_tokens());
  check(context.size() >= n_prev, "kgw: context of ", context.size(), " tokens; the green test needs ", n_prev);
  std::span<const int32_t> prev = context.subspan(context.size() - n_prev);
  const uint64_t thr = green_threshold(c.gamma);
  const uint32_t v = static_cast<uint32_t>(token);
  if (c.context == "lefthash") return stream_hash(keyed_seed(key, kDomainKgwLeftSeed, prev), v) < thr;
  const std::vector<uint64_t> anchors = prev_anchors(key, prev);
  const uint64_t seed = kgw_self_seed(anchors, stream_hash(kgw_self_anchor(key, token), v), token);
  return stream_hash(seed ^ keyed_seed(key, kDomainKgwSelfGreenSeed, {}), v) < thr;
}

void kgw_green_mask(const HashKey& key, const KgwConfig& c, std::span<const int32_t> context, int64_t n_vocab,
                    uint8_t* green) {
  const size_t n_prev = static_cast<size_t>(c.previous_tokens());
  check(context.size() >= n_prev, "kgw: context of ", context.size(), " tokens; the green test needs ", n_prev);
  std::span<const int32_t> prev = context.subspan(context.size() - n_prev);
  const uint64_t thr = green_threshold(c.gamma);
  if (c.context == "lefthash") {
    const uint64_t S = keyed_seed(key, kDomainKgwLeftSeed, prev);
    parallel_for(0, n_vocab, kGrain, [&](int64_t lo, int64_t hi) { left_green(S, thr, lo, hi - lo, green + lo); });
    return;
  }
  const std::vector<uint64_t> anchors = prev_anchors(key, prev);
  const uint64_t g = keyed_seed(key, kDomainKgwSelfGreenSeed, {});
  parallel_for(0, n_vocab, kGrain, [&](int64_t lo, int64_t hi) {
    std::vector<uint64_t> self(static_cast<size_t>(hi - lo));
    self_pair_table(key, lo, hi, self.data());
    self_green(anchors.data(), int(anchors.size()), self.data(), g, thr, lo, hi - lo, green + lo);
  });
}

KgwProcessor::KgwProcessor(const WatermarkKey& key, KgwConfig config)
    : key_(key.hash_key()), config_(std::move(config)) {
  check_kgw_config(config_);
  threshold_ = green_threshold(config_.gamma);
  green_seed_ = keyed_seed(key_, kDomainKgwSelfGreenSeed, {});
}

void KgwProcessor::process(std::span<const int32_t> context, float* logits, int64_t n_vocab) {
  const size_t n_prev = static_cast<size_t>(config_.previous_tokens());
  if (context.size() < n_prev) return;  // too little context to seed a green list: left unwatermarked
  std::span<const int32_t> prev = context.subspan(context.size() - n_prev);
  const float delta = static_cast<float>(config_.delta);
  thread_local std::vector<uint8_t> green_buffer;  // one per sampling thread
  green_buffer.resize(static_cast<size_t>(n_vocab));
  uint8_t* green = green_buffer.data();  // (a thread_local is not captured: pass the pointer)
  if (config_.context == "lefthash") {
    const uint64_t S = keyed_seed(key_, kDomainKgwLeftSeed, prev);
    parallel_for(0, n_vocab, kGrain, [&](int64_t lo, int64_t hi) {
      left_green(S, threshold_, lo, hi - lo, green + lo);
      add_where(green + lo, delta, hi - lo, logits + lo);
    });
    return;
  }
  // selfhash: P(v, v) does not depend on the context: one table per processor.
  std::call_once(self_pair_once_, [&] {
    self_pair_.resize(static_cast<size_t>(n_vocab));
    parallel_for(0, n_vocab, kGrain, [&](int64_t lo, int64_t hi) { self_pair_table(key_, lo, hi, self_pair_.data() + lo); });
  });
  check(static_cast<int64_t>(self_pair_.size()) == n_vocab, "kgw: processor built for a vocabulary of ",
        self_pair_.size(), " tokens used with ", n_vocab, "; use one processor per model");
  const std::vector<uint64_t> anchors = prev_anchors(key_, prev);
  parallel_for(0, n_vocab, kGrain, [&](int64_t lo, int64_t hi) {
    self_green(anchors.data(), int(anchors.size()), self_pair_.data() + lo, green_seed_, threshold_, lo, hi - lo,
               green + lo);
    add_where(green + lo, delta, hi - lo, logits + lo);
  });
}

}  // namespace retort

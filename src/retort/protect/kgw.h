// retort/protect/kgw.h — the KGW green-list watermark (Kirchenbauer et al. 2023), both sides.
//
// Embed: before sampling, add δ to the logits of the "green" tokens of the current context.
// Score: a token is green or not given its context; over T scored tokens with s green,
// unwatermarked text has s ~ Bin(T, γ) (exact tail in audit/watermark_detect.h).
//
// Green-ness of candidate v after context (..., c_{t-2}, c_{t-1}), with keyed_seed and
// stream_hash from keyed_hash.h:
//   lefthash (h previous tokens, default h = 1):
//     S = keyed_seed(kDomainKgwLeftSeed, [c_{t-h} .. c_{t-1}])
//     green iff stream_hash(S, v) < γ·2^64
//   selfhash (window of h tokens that ends with the candidate itself, default h = 4, so
//   h − 1 previous tokens; the "anchored min-hash with self-salt" of Kirchenbauer et al.,
//   "On the Reliability of Watermarks for LLMs", 2023):
//     A_u     = keyed_seed(kDomainKgwSelfAnchor, [u])       (one SipHash per token id u)
//     P(u, v) = stream_hash(A_u, v)                         (pair hash anchored on v)
//     seed    = min( P(c_{t-h+1}, v), ..., P(c_{t-1}, v), P(v, v) )
//     green iff stream_hash(seed ^ G, v) < γ·2^64,  G = keyed_seed(kDomainKgwSelfGreenSeed, [])
//   Taking the min makes the seed survive an edit of any context token but the argmin one.
// A step costs one SipHash per context (lefthash) or per previous token (selfhash; P(v, v)
// is a per-key table) and 1 (lefthash) or h + 1 (selfhash) stream hashes per candidate.
// Positions with fewer than `previous_tokens()` tokens of context are neither watermarked
// nor scored.
#pragma once

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <vector>

#include "retort/decode/logits_processor.h"
#include "retort/protect/keyed_hash.h"
#include "retort/protect/keys.h"

namespace retort {

struct KgwConfig {
  double gamma = 0.25;                // green fraction, in (0, 1)
  double delta = 2.0;                 // logit bias added to green tokens, >= 0
  std::string context = "selfhash";   // "selfhash" | "lefthash"
  int h = 0;                          // context width; 0 = the scheme's default (selfhash 4, lefthash 1)

  // Previous tokens the green test reads: selfhash h − 1, lefthash h.
  int previous_tokens() const;
  int width() const;  // h with the default resolved
};

// Throws retort::Error naming the bad field (gamma outside (0,1), delta < 0 or not finite,
// unknown context scheme, h out of range: selfhash 2..16, lefthash 1..16).
void check_kgw_config(const KgwConfig& c);

// Green test for one candidate; `context` must hold at least previous_tokens() tokens
// (only the last ones are read).
bool kgw_is_green(const HashKey& key, const KgwConfig& c, std::span<const int32_t> context, int32_t token);

// A_u of selfhash.
uint64_t kgw_self_anchor(const HashKey& key, int32_t u);
// The selfhash seed of (previous tokens, v) given their anchors and P(v, v).
inline uint64_t kgw_self_seed(std::span<const uint64_t> prev_anchors, uint64_t self_pair, int32_t v) {
  uint64_t seed = self_pair;
  for (uint64_t a : prev_anchors) seed = std::min(seed, stream_hash(a, static_cast<uint32_t>(v)));
  return seed;
}

// green[v] = 1 if v is green after `context`, for all v in [0, n_vocab) (vectorized).
void kgw_green_mask(const HashKey& key, const KgwConfig& c, std::span<const int32_t> context, int64_t n_vocab,
                    uint8_t* green);

class KgwProcessor : public LogitsProcessor {
 public:
  KgwProcessor(const WatermarkKey& key, KgwConfig config);  // checks the config
  void process(std::span<const int32_t> context, float* logits, int64_t n_vocab) override;
  const KgwConfig& config() const { return config_; }

 private:
  HashKey key_;
  KgwConfig config_;
  uint64_t threshold_;
  uint64_t green_seed_;  // selfhash G
  // selfhash: P(v, v) for every v, built by the first process() call (process() may run
  // on several threads at once for different sequences, hence the once_flag).
  std::once_flag self_pair_once_;
  std::vector<uint64_t> self_pair_;
};

}  // namespace retort

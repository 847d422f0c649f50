// retort/protect/kgw.h — the KGW green-list watermark (Kirchenbauer et al. 2023), both sides.
//
// Embed: before sampling, add δ to the logits of the "green" tokens of the current context.
// Score: a token is green or not given its context; over T scored tokens with s green,
// unwatermarked text has s ~ Bin(T, γ) (exact tail in audit/watermark_detect.h).
//
// Green-ness of candidate v after context (..., c_{t-2}, c_{t-1}), with H = keyed_hash.h:
//   lefthash (h previous tokens, default h = 1):
//     green iff H(kDomainKgwLeft, [c_{t-h} .. c_{t-1}], v) < γ·2^64
//   selfhash (window of h tokens that ends with the candidate itself, default h = 4, so
//   h − 1 previous tokens; the "anchored min-hash with self-salt" of Kirchenbauer et al.,
//   "On the Reliability of Watermarks for LLMs", 2023):
//     P(u, v) = H_u64(kDomainKgwSelfPair, u, v)          (pair hash anchored on v)
//     seed    = min( P(c_{t-h+1}, v), ..., P(c_{t-1}, v), P(v, v) )
//     green iff H_u64(kDomainKgwSelfGreen, seed, v) < γ·2^64
//   Taking the min makes the seed survive an edit of any context token but the argmin one.
// Positions with fewer than `previous_tokens()` tokens of context are neither watermarked
// nor scored.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "retort/decode/logits_processor.h"
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

// green[v] = 1 if v is green after `context`, for all v in [0, n_vocab).
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
  std::vector<uint64_t> self_pair_;  // selfhash: P(v, v) for every v, filled on first use
};

}  // namespace retort

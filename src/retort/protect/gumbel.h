// retort/protect/gumbel.h — the Gumbel-max watermark (Aaronson 2022), both sides.
//
// Embed: at each step, with S = keyed_seed(kDomainGumbelSeed, [c_{t-h} .. c_{t-1}]),
// r_v = U(stream_hash(S, v)) for every token v (keyed_hash.h; U maps 64 bits into (0, 1)),
// and the next token is
//     argmax_v r_v^{1/p_v} = argmax_v ln(r_v) / p_v     over v with p_v > 0,
// p the final sampling distribution. Over the key this is an exact sample from p
// (distortion-free), but it is deterministic given the context.
// The argmax needs no logarithm per candidate: with b = −ln(r_m)/p_m for the most likely
// token m, a token can only win if −ln r_v <= b·p_v, and −ln r >= 1 − r, so one vector pass
// keeps the v with 1 − r_v <= b·p_v (a few, in expectation about b) and only those get
// the exact ln(r_v)/p_v. The result is the full argmax's, token for token.
// Score: per token s = −ln(1 − r_token). Unwatermarked, each s ~ Exp(1), so the sum of T
// distinct ones is Gamma(T, 1) (exact tail in audit/watermark_detect.h); watermarked
// tokens have large r and push the sum up.
#pragma once

#include <cstdint>
#include <span>

#include "retort/decode/logits_processor.h"
#include "retort/protect/keys.h"

namespace retort {

struct GumbelConfig {
  int h = 4;  // previous tokens hashed, 1..16
};

void check_gumbel_config(const GumbelConfig& c);

// r for `token` after `context` (only the last h tokens are read; needs at least h).
double gumbel_uniform(const HashKey& key, const GumbelConfig& c, std::span<const int32_t> context, int32_t token);
// −ln(1 − r): the per-token detection score.
double gumbel_score(const HashKey& key, const GumbelConfig& c, std::span<const int32_t> context, int32_t token);

class GumbelProcessor : public LogitsProcessor {
 public:
  GumbelProcessor(const WatermarkKey& key, GumbelConfig config);
  void process(std::span<const int32_t>, float*, int64_t) override {}
  // argmax ln(r_v)/p_v; -1 (normal sampling) when the context is shorter than h.
  int32_t choose(std::span<const int32_t> context, const float* probs, int64_t n_vocab) override;

 private:
  HashKey key_;
  GumbelConfig config_;
};

}  // namespace retort

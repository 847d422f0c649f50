// retort/audit/watermark_detect.h — scoring token sequences for a watermark, with exact p-values.
//
// One position t of a token sequence x is the pair (window, x_t), window = the w tokens
// before it (w = KGW previous_tokens() or Gumbel h). Positions without a full window are
// skipped. Each distinct (window, token) pair is scored once (repeated n-grams would
// otherwise count many times: a text repeating one phrase is not more watermarked).
// KGW selfhash: green-ness depends on (min-hash seed, token) only, and many windows share a
// seed, so there the distinct unit is (seed, token) — the only one with independent outcomes.
//
// Statistics over T scored pairs, with exact tails (util/stats.h):
//   kgw:    score s = green count;          z = (s − γT)/√(Tγ(1−γ));  p = P[Bin(T, γ) >= s]
//   gumbel: score S = Σ −ln(1 − r);         z = (S − T)/√T;           p = P[Gamma(T, 1) >= S]
// A result with fewer than `min_tokens` scored pairs is marked too_short and carries no
// p-value (p_value = 1, log10_p = 0 are placeholders, not a test).
//
// Scoring only some positions (SWEET: Lee et al. 2023, "Who Wrote this Code? Watermarking for Code
// Generation"): add_tokens() / detect_tokens() take an optional mask score_position[t] (one byte per
// token, != 0 = score). A masked-out position is never scored nor entered into the dedup table; the
// test is then the same binomial / gamma tail over the T selected distinct pairs. It stays exact as
// long as the mask is a function of the text (and anything else independent of the key): under the
// null the key is independent of the text, so given the text — hence given the mask — each distinct
// unit is still an independent Bernoulli(γ) / Exp(1) draw. The mask of model_entropies() +
// entropy_mask() qualifies: it reads the key holder's model on prompt + text, never the key.
// Low-entropy positions are the ones where the watermark's bias could not change the choice (one
// token carries nearly all the mass), so they only dilute the green count.
#pragma once

#include <cstdint>
#include <nlohmann/json_fwd.hpp>
#include <span>
#include <string>
#include <vector>

#include "retort/protect/gumbel.h"
#include "retort/protect/keys.h"
#include "retort/protect/kgw.h"

namespace retort {

class RuntimeModel;  // model/runtime_model.h

struct DetectorConfig {
  std::string scheme = "kgw";  // "kgw" | "gumbel"
  KgwConfig kgw;
  GumbelConfig gumbel;
  bool dedup = true;
  int64_t min_tokens = 1;  // fewer scored pairs -> too_short
};

// Throws retort::Error for an unknown scheme or bad scheme parameters.
void check_detector_config(const DetectorConfig& c);
// Tokens of context each scored position needs.
int detector_window(const DetectorConfig& c);

struct DetectionResult {
  std::string scheme;
  int64_t tokens = 0;         // positions offered (including skipped and repeated ones)
  int64_t tokens_scored = 0;  // distinct (window, token) pairs scored: T
  double score = 0;           // kgw: green count; gumbel: Σ −ln(1 − r)
  double z = 0;
  double p_value = 1;         // exp(log_p); underflows to 0 below ~1e-308, see log10_p
  double log10_p = 0;         // exact, even far below 1e-308
  bool too_short = true;
  int64_t tokens_masked = 0;  // positions with a full window that the score_position mask left out
};

// Per-pair score: kgw 1 (green) or 0; gumbel −ln(1 − r). `context` holds >= detector_window().
double watermark_pair_score(const HashKey& key, const DetectorConfig& c, std::span<const int32_t> context,
                            int32_t token);

// Accumulates pairs (deduplicated) and gives the test. Pair-level API for radioactivity:
// add_pair() with any context (e.g. the real input tokens) and any token (e.g. a suspect
// model's top-1 prediction there).
class WatermarkScorer {
 public:
  WatermarkScorer(const WatermarkKey& key, DetectorConfig config);  // checks the config
  // Scores (last w tokens of context, token); returns false when skipped (short or repeated).
  bool add_pair(std::span<const int32_t> context, int32_t token);
  // Every position t >= w of one token sequence.
  void add_tokens(std::span<const int32_t> tokens);
  // Only the positions t >= w with score_position[t] != 0 (score_position: [tokens.size()]); the
  // others with a full window are counted in tokens_masked. The mask must not depend on the key.
  void add_tokens(std::span<const int32_t> tokens, std::span<const uint8_t> score_position);
  DetectionResult result() const;
  // Forgets every pair and count (a new document) but keeps the per-key seed caches and the
  // table's memory: scoring many documents with one key, reuse one scorer.
  void reset();
  int window() const { return window_; }
  // KGW selfhash only: the seed of the unit (seed, token) that (last window() tokens of win, token) scores
  // as — min over u in window ∪ {token} of stream_hash(A_u, token) (kgw.h). Cached anchors.
  uint64_t selfhash_seed(std::span<const int32_t> win, int32_t token) { return self_seed(win, token); }
  bool is_selfhash() const { return selfhash_; }
  // The running score (kgw: green count; gumbel: Σ −ln(1 − r)) of the pairs scored so far.
  double score_sum() const { return score_; }

 private:
  // Dedup: open addressing over the distinct (window, token) pairs seen so far, each kept
  // exactly ((w + 1) ints in keys_), so two pairs merge only when equal. Power-of-two
  // capacity, linear probing on a 64-bit mixing hash, load <= 1/2; no per-pair allocation.
  struct Slot {
    uint32_t tag;  // high 32 bits of the pair's hash
    uint32_t idx;  // 1 + the pair's index in keys_ (its ints start at (idx − 1)(w + 1)); 0 = empty
  };
  void reserve_pairs(size_t n);                                       // room for n more pairs
  bool insert_pair(std::span<const int32_t> win, int32_t token, uint64_t hash);  // false: seen before
  double score_pair(std::span<const int32_t> win, int32_t token);     // watermark_pair_score, fast
  uint64_t anchor(int32_t u);                                         // kgw selfhash A_u, cached
  uint64_t left_seed(std::span<const int32_t> win);                   // kgw lefthash S, cached for h = 1
  uint64_t self_seed(std::span<const int32_t> win, int32_t token);    // kgw selfhash min-hash seed
  bool add_self_pair(std::span<const int32_t> win, int32_t token);    // selfhash with dedup on (seed, token)
  bool add_self_unit(uint64_t seed, int32_t token, uint64_t hash);    // ... given the seed and its table hash

  void add_tokens_masked(std::span<const int32_t> tokens, const uint8_t* score_position);  // null = all

  HashKey key_;
  DetectorConfig config_;
  int window_;
  bool kgw_ = false, lefthash_ = false, selfhash_ = false;
  int key_width_ = 0;                      // ints of a dedup key before the token: window_, or 2 (selfhash seed)
  uint64_t threshold_ = 0;                 // kgw: green iff hash < threshold
  int64_t offered_ = 0, scored_ = 0, masked_ = 0;
  double score_ = 0;
  std::vector<Slot> table_;
  std::vector<int32_t> keys_;
  size_t n_pairs_ = 0;
  uint64_t green_seed_ = 0;                // kgw selfhash G
  // Per-token seeds by token id, 0 = not yet computed: selfhash A_u, or lefthash (h = 1) S.
  std::vector<uint64_t> seed_cache_;
};

// The test from raw counts (T pairs, score); exposed for callers that count elsewhere.
DetectionResult detection_from_counts(const DetectorConfig& c, int64_t offered, int64_t scored, double score);

// One token sequence; with a mask, only its selected positions (see add_tokens).
DetectionResult detect_tokens(const WatermarkKey& key, const DetectorConfig& c, std::span<const int32_t> tokens);
DetectionResult detect_tokens(const WatermarkKey& key, const DetectorConfig& c, std::span<const int32_t> tokens,
                              std::span<const uint8_t> score_position);

// ---- the key holder's model: per-position entropies (SWEET's selection statistic) ----

// The entropy, in nats, of the model's next-token distribution at every position of each text:
//   H[d][t] = −Σ_v p(v) ln p(v),   p = softmax(z),   z = logits of `model` on prompts[d] ++ texts[d][0..t)
// — the raw distribution (temperature 1, before any watermark bias or truncation) that texts[d][t]
// was drawn from when prompts[d] is the prompt the text was generated for, as generation fed it (e.g.
// chat-formatted by ChatTemplate::encode). Computed in float64 from the model's float32 logits:
//   H = ln Σ_v e^(z_v − m) − Σ_v (z_v − m) e^(z_v − m) / Σ_v e^(z_v − m),   m = max_v z_v.
// Shapes: prompts is empty (no prompt anywhere) or [n_docs]; texts [n_docs][n_d]; the result
// [n_docs][n_d]. H[d][0] is NaN when prompts[d] is empty (no context), and so is every position
// past the model's context length (max_position). Reads neither a key nor the watermark config.
// Documents run in groups of `group` cache slots, `chunk` tokens per forward; rows are batched, so
// the logits are those of one row at a time up to the kernels' summation order.
std::vector<std::vector<double>> model_entropies(RuntimeModel& model, const std::vector<std::vector<int32_t>>& prompts,
                                                 const std::vector<std::vector<int32_t>>& texts, int64_t chunk = 64,
                                                 int64_t group = 8);
// H in nats of one row of logits [n_vocab], as above.
double logits_entropy(const float* logits, int64_t n_vocab);
// score_position[t] = 1 iff entropies[t] >= min_entropy (NaN: 0). [entropies.size()].
std::vector<uint8_t> entropy_mask(std::span<const double> entropies, double min_entropy);

// Which account's key watermarked `docs`? One test per account (keys derived from the
// master with derive_account_key), all docs pooled, then Holm–Bonferroni over accounts.
struct AccountDetection {
  std::string account;
  std::string key_commitment;
  DetectionResult result;
  double log10_p_holm = 0;  // Holm-adjusted; 0 when too short
  double p_holm = 1;
};
// masks: empty (score every position) or one score_position mask per doc (see add_tokens).
std::vector<AccountDetection> detect_accounts(const WatermarkKey& master, const std::vector<std::string>& accounts,
                                              const DetectorConfig& c,
                                              const std::vector<std::vector<int32_t>>& docs,
                                              const std::vector<std::vector<uint8_t>>& masks = {});

// A result as the commands write it (`watermark detect --json`, `audit radioactivity`): tokens, tokens_scored,
// too_short, score, then z, p_value, log10_p (null when too short; p_value is 0 below ~1e-308, log10_p
// exact). entropy_filter adds tokens_skipped_low_entropy (tokens_masked).
nlohmann::ordered_json detection_json(const DetectionResult& r, bool entropy_filter = false);
// One account's row: detection_json, then account, key_commitment, p_holm and log10_p_holm (null when too short).
nlohmann::ordered_json account_detection_json(const AccountDetection& a, bool entropy_filter = false);

}  // namespace retort

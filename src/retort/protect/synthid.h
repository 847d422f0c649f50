// retort/protect/synthid.h — SynthID-Text (Dathathri et al., Nature 2024), compatible with
// Hugging Face transformers' SynthIDTextWatermarkLogitsProcessor: the same keys, ngram_len,
// sampling_table_size and sampling_table_seed give the same g-values, so text watermarked by
// either is scored the same by both.
//
// g-values (transformers' hashing, reproduced bit for bit; all arithmetic mod 2^64):
//   acc(h, x)   = (h + x) · 6364136223846793005 + 1
//   ctx_hash    = acc(...acc(1, c_1)..., c_{n-1})          (the n-1 tokens before the position)
//   key_d(v)    = acc(acc(ctx_hash, v), keys[d])             d = 0..m-1, v the candidate token
//   g_d(v)      = table[key_d(v) mod T]                      (mod as on signed int64, result in [0, T))
//   table[i]    = mt19937(seed mod 2^32)() mod 2             (torch.randint(0, 2, (T,)) on CPU)
//
// Embed (tournament): with p the final sampling distribution (after temperature/top-k/top-p),
// each of the m layers reweights p(v) ← p(v) · (1 + g_d(v) − Σ_u g_d(u) p(u)): the exact law of
// the winner of a 2^m-candidate knock-out tournament (the "vectorized" form transformers uses).
// A step whose context was already seen (within the last context_history_size steps) is left
// unwatermarked. retort applies it in LogitsProcessor::choose, which receives exactly the
// distribution transformers' processor sees (it runs after all warpers), and draws from the
// reweighted distribution. Greedy decoding (temperature 0) never calls choose: it is not
// watermarked.
//
// Score (detector side, as transformers' SynthIDTextWatermarkDetector prepares it): for a token
// sequence of length L, positions t = n-1..L-1 give m g-values each; a position is masked when
// its context hash was seen among the previous context_history_size positions, or at/after
// the first EOS. mean = Σ g / (m N) over the N unmasked positions; weighted mean uses
// weights w (default linspace(10, 1, m)) normalised to sum m: Σ w_d g_d / (m N)
// (google-deepmind/synthid-text detector_mean.py).
//
// Tests: without the watermark each g-value is modelled as an independent Bernoulli(π),
// π = fraction of ones in the table (≈ 1/2).
//   mean:           exact binomial tail P[Bin(N m, π) >= Σ g].
//   weighted mean:  Chernoff bound  inf_λ exp(−λ S) Π E[exp(λ w_d g)]^N ≥ P[W >= S],
//                   a provably conservative p-value (labelled "chernoff_bound"); exact when
//                   S is the maximum (every g = 1).
//
// Keys from a retort secret (so per-account keys work): keys[d] = H(kDomainSynthid, 0, d) >> 1
// (keyed_hash_u64 with the key's SipHash key; 63-bit non-negative, fits HF's int64 keys).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "retort/decode/logits_processor.h"
#include "retort/protect/keys.h"

namespace retort {

// Field names and defaults of transformers' SynthIDTextWatermarkingConfig.
struct SynthIdConfig {
  std::vector<int64_t> keys;  // one per tournament layer; m = keys.size() (1..1024)
  int ngram_len = 5;          // n >= 2: the n-1 previous tokens key the g-values
  int64_t sampling_table_size = 65536;  // T, 1..2^24
  uint64_t sampling_table_seed = 0;     // only the low 32 bits matter (as torch's mt19937)
  int64_t context_history_size = 1024;  // >= 1
  bool skip_first_ngram_calls = false;  // leave the first n-1 generated tokens unwatermarked
};

// Throws retort::Error naming the bad field.
void check_synthid_config(const SynthIdConfig& c);
// Parses transformers' JSON form ({"ngram_len": 5, "keys": [...], ...}; a generation_config.json
// with a "watermarking_config" object also works). `source` names the file for errors.
SynthIdConfig synthid_config_from_json(std::string_view json_text, std::string_view source);
SynthIdConfig load_synthid_config(const std::string& path);
std::string synthid_config_to_json(const SynthIdConfig& c);  // transformers' field names
// "654,400,836" -> keys. Error names the bad entry.
std::vector<int64_t> parse_synthid_keys(std::string_view csv);
// keys[d] = keyed_hash_u64(key.hash_key(), kDomainSynthid, 0, d) >> 1, d = 0..m-1.
std::vector<int64_t> derive_synthid_keys(const WatermarkKey& key, int m);

// The keyed part: the sampling table and the hashing. Immutable, shareable across threads.
class SynthIdScheme {
 public:
  explicit SynthIdScheme(SynthIdConfig config);  // checks the config, builds the table

  const SynthIdConfig& config() const { return config_; }
  int depth() const { return static_cast<int>(config_.keys.size()); }
  int ngram_len() const { return config_.ngram_len; }
  const std::vector<uint8_t>& table() const { return table_; }  // [T] of 0/1
  double table_ones_fraction() const { return ones_fraction_; }   // π

  // Hash of exactly ngram_len-1 context tokens.
  uint64_t context_hash(std::span<const int32_t> context) const;
  // out[d] = g_d(token) after a context with hash ctx_hash; out has depth() entries.
  void g_values(uint64_t ctx_hash, int32_t token, uint8_t* out) const;

  // [L-n+1, m] row-major g-values of each full n-gram of `tokens` (empty when L < n).
  std::vector<uint8_t> sequence_g_values(std::span<const int32_t> tokens) const;
  // [L-n+1]: 1 = context not seen among the previous context_history_size positions, 0 = repeated.
  std::vector<uint8_t> context_repetition_mask(std::span<const int32_t> tokens) const;

  // The tournament: probs [n] (sums to 1, zeros outside the support) reweighted in place over
  // the m layers for a context with hash ctx_hash. Float64 throughout.
  void tournament(uint64_t ctx_hash, std::vector<double>& probs) const;

 private:
  SynthIdConfig config_;
  std::vector<uint8_t> table_;
  double ones_fraction_ = 0.5;
};

// [L]: 1 before the first `eos_id`, 0 from it on (transformers' compute_eos_token_mask).
std::vector<uint8_t> synthid_eos_mask(std::span<const int32_t> tokens, int32_t eos_id);

struct SynthIdScore {
  int64_t tokens = 0;     // L
  int64_t positions = 0;  // full n-grams: max(0, L - n + 1)
  int64_t scored = 0;     // N: unmasked positions
  int depth = 0;          // m
  int64_t ones = 0;       // Σ g over unmasked positions and layers
  double mean = 0;           // ones / (m N)
  double weighted_mean = 0;  // Σ w_d g_d / (m N)
  double pi = 0.5;           // P[g = 1] under no watermark (table's ones fraction)
  // Mean: exact binomial tail P[Bin(m N, π) >= ones].
  double mean_log10_p = 0;
  double mean_p = 1;
  // Weighted mean: Chernoff upper bound on P[W >= observed] (conservative).
  double weighted_log10_p = 0;
  double weighted_p = 1;
  std::string weighted_p_method = "chernoff_bound";
  bool too_short = true;  // N == 0: no test (p = 1 placeholders)
};

// Scores one token sequence (the completion only, as transformers' detector does).
// eos_id: mask from the first EOS on (none when unset). weights: per-layer, non-negative,
// not all zero; default linspace(10, 1, m). Both are normalised to sum m.
SynthIdScore synthid_score(const SynthIdScheme& scheme, std::span<const int32_t> tokens,
                           std::optional<int32_t> eos_id = std::nullopt,
                           std::span<const double> weights = {});

// Score from precomputed g-values [P, m] and mask [P] (P positions). Same statistics.
SynthIdScore synthid_score_g(std::span<const uint8_t> g_values, std::span<const uint8_t> mask, int depth, double pi,
                             std::span<const double> weights = {});

// Several documents scored under one scheme (one key), pooled into one mean test: Σ ones over
// Σ m·N g-values, exact binomial tail P[Bin(Σ m N, π) >= Σ ones]. This is the per-account
// test of attribution (one p-value per account, then Holm–Bonferroni across accounts).
// Documents too short to test add nothing; too_short when none can be tested.
struct SynthIdPooled {
  int64_t documents = 0;  // documents that contributed
  int64_t scored = 0;     // Σ N
  int64_t g_values = 0;   // Σ m N
  int64_t ones = 0;       // Σ ones
  double mean = 0;
  double log10_p = 0;
  double p = 1;
  bool too_short = true;
};
SynthIdPooled synthid_pool(std::span<const SynthIdScore> docs);

// log10 of the Chernoff bound on P[Σ_{N positions} Σ_d w_d g_d >= s], g ~ iid Bernoulli(π).
double synthid_weighted_log10_tail(double s, int64_t n_positions, std::span<const double> weights, double pi);

// Embedding processor. choose() reweights the final distribution with the tournament and
// draws from it with u = rng_uniform(seed, hash of the whole context) (decode/sampling.h):
// deterministic per (seed, prompt, tokens so far); give each request its own seed.
//
// Context semantics:
//   prompt_len >= 0 (one processor per request): exactly transformers' generation — the hash
//     context is the last n-1 tokens of (n-1 zeros ++ generated tokens), and the repetition
//     history holds the contexts of this generation's earlier steps.
//   prompt_len < 0 (shareable across requests): the hash context is the last n-1 tokens of
//     prompt ++ generated (zero-padded on the left when shorter), and the history is the
//     contexts of the previous context_history_size positions of that whole sequence.
// Either way every n-gram inside the completion carries the watermark that both detectors
// score; only the first n-1 completion tokens (never scored) differ.
class SynthIdProcessor : public LogitsProcessor {
 public:
  SynthIdProcessor(std::shared_ptr<const SynthIdScheme> scheme, uint64_t seed, int64_t prompt_len = -1);
  void process(std::span<const int32_t>, float*, int64_t) override {}
  int32_t choose(std::span<const int32_t> context, const float* probs, int64_t n_vocab) override;

  // The distribution choose() draws from (probs when this step is left unwatermarked).
  std::vector<double> distribution(std::span<const int32_t> context, const float* probs, int64_t n_vocab) const;
  std::vector<double> distribution(std::span<const int32_t> context, std::span<const double> probs) const;

 private:
  // Hash context for the step after `context`, or nullopt when the step is not watermarked.
  std::optional<uint64_t> step_context(std::span<const int32_t> context) const;

  std::shared_ptr<const SynthIdScheme> scheme_;
  uint64_t seed_;
  int64_t prompt_len_;
};

}  // namespace retort

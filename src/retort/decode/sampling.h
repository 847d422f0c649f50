// retort/decode/sampling.h — turning one sequence's logits [V] into the next token, on CPU.
//
// Pipeline for one step of one sequence (the order of Hugging Face's warpers):
//   raw logits → LogitsProcessor::process → temperature → top-k → top-p → min-p
//   → renormalise → LogitsProcessor::choose or inverse-CDF draw (or argmax when temperature == 0).
//
// Determinism: the uniform number used at generation step s of a request is
// rng_uniform(seed, s), a pure function of (seed, s). It does not depend on
// which other sequences share the batch, their order, or how many draws they made,
// so a request gives the same tokens alone or batched.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace retort {

class LogitsProcessor;

struct SamplingParams {
  double temperature = 1.0;  // 0 => greedy (argmax of the processed logits; ties -> lowest id)
  int64_t top_k = 0;         // keep the k highest logits (and any tied with the k-th, as HF does); 0 = off
  double top_p = 1.0;        // nucleus: keep the smallest prefix (by prob desc) whose mass reaches top_p; 1 = off
  double min_p = 0.0;        // keep tokens with p >= min_p * p_max; 0 = off
  uint64_t seed = 0;
};

struct TokenLogprob {
  int32_t token;
  float logprob;
};

struct GeneratedToken {
  int32_t token = -1;
  float logprob_raw = 0;              // log softmax of the raw model logits (temperature 1, no processing)
  float logprob = 0;                  // log-prob under the distribution actually sampled from (see below)
  std::vector<TokenLogprob> top_raw;  // top_logprobs alternatives, raw; by logprob desc, ties by id
  std::vector<TokenLogprob> top;      // top_logprobs alternatives, processed; only tokens in the support
};
// `logprob` semantics: with temperature > 0 it is log p(token) under the renormalised,
// truncated distribution (after processor, temperature, top-k/top-p/min-p). With
// temperature == 0 (greedy) it is log_softmax of the processed logits at temperature 1
// without truncation. A token picked by LogitsProcessor::choose outside the support
// gets -infinity.

// Throws retort::Error naming the bad field (temperature < 0, top_k < 0, top_p not in (0,1], ...).
void check_sampling_params(const SamplingParams& p);

// Counter-based generator: a keyed hash (two splitmix64 finalizer rounds) of (seed, counter).
uint64_t rng_u64(uint64_t seed, uint64_t counter);
// Uniform in [0, 1) with 53 random bits.
double rng_uniform(uint64_t seed, uint64_t counter);

// The distribution a step samples from.
struct SamplingDistribution {
  std::vector<int32_t> tokens;  // support; by prob desc (ties by id) when truncated, by id otherwise
  std::vector<double> probs;    // probs[i] of tokens[i]; sums to 1
  std::vector<float> dense;     // [V] probabilities, 0 outside the support (what choose() sees)
  double log_norm = 0;          // log p(v) = scaled_logit(v) - log_norm for v in the support
  double scale = 1;             // 1 / temperature (1 when greedy)
  bool by_prob = false;         // tokens are ordered by prob desc, ties by id (true when truncated)

  // log p(token); logits are the ones given to make_distribution. -inf outside the support.
  float logprob(int32_t token, const float* logits) const;
};

// logits [n] after any processor; -inf entries are banned tokens. Throws retort::Error when
// params are invalid, logits contain NaN, or every token is banned.
SamplingDistribution make_distribution(const float* logits, int64_t n, const SamplingParams& p);

// Inverse CDF over dist.tokens in stored order; u in [0, 1).
int32_t sample_from(const SamplingDistribution& dist, double u);

// Index of the largest value; ties -> lowest index. -inf everywhere -> 0.
int32_t argmax(const float* x, int64_t n);

// log(sum(exp(x))) computed with max subtraction, accumulated in float64.
double log_sum_exp(const float* x, int64_t n);

// The k largest entries of x as (index, x[index] - shift), by value desc, ties by index asc.
std::vector<TokenLogprob> top_entries(const float* x, int64_t n, int64_t k, double shift);

// One full step for one sequence: processor, sampling, logprobs.
//   context: prompt + tokens generated so far; raw_logits [n_vocab] float32 (not modified);
//   step: index of the token being generated (0 for the first), the RNG counter;
//   banned: token ids set to -inf before the processor (a minimum length bans EOS) — part of the
//   processing: the raw logprobs do not see it.
// Throws retort::Error on NaN logits, everything banned, or a choose() result out of range.
GeneratedToken sample_token(std::span<const int32_t> context, const float* raw_logits, int64_t n_vocab,
                            const SamplingParams& params, LogitsProcessor* processor, uint64_t step,
                            int top_logprobs, std::span<const int32_t> banned = {});

}  // namespace retort

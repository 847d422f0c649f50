// retort/decode/sampling.cpp — temperature / top-k / top-p / min-p, draws and logprobs for one sequence.
#include "retort/decode/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "retort/decode/logits_processor.h"
#include "retort/model/cpu_kernels.h"
#include "retort/util/error.h"

namespace retort {

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// splitmix64's output function: a bijective 64-bit mixer with full avalanche.
uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Order for "largest first": by value desc, ties by index asc.
struct ByValueDesc {
  const float* x;
  bool operator()(int32_t a, int32_t b) const { return x[a] > x[b] || (x[a] == x[b] && a < b); }
};

}  // namespace

void check_sampling_params(const SamplingParams& p) {
  check(std::isfinite(p.temperature) && p.temperature >= 0, "sampling: temperature must be >= 0 (0 = greedy), got ",
        p.temperature);
  check(p.top_k >= 0, "sampling: top_k must be >= 0 (0 = off), got ", p.top_k);
  check(p.top_p > 0 && p.top_p <= 1, "sampling: top_p must be in (0, 1] (1 = off), got ", p.top_p);
  check(p.min_p >= 0 && p.min_p <= 1, "sampling: min_p must be in [0, 1] (0 = off), got ", p.min_p);
}

uint64_t rng_u64(uint64_t seed, uint64_t counter) {
  // Key the stream with the seed, then mix the counter in; two rounds so that nearby
  // (seed, counter) pairs are unrelated.
  return mix64(mix64(seed ^ 0x6a09e667f3bcc909ULL) + counter * 0x9e3779b97f4a7c15ULL);
}

double rng_uniform(uint64_t seed, uint64_t counter) {
  return static_cast<double>(rng_u64(seed, counter) >> 11) * 0x1.0p-53;
}

int32_t argmax(const float* x, int64_t n) {
  int64_t best = 0;
  for (int64_t i = 1; i < n; ++i)
    if (x[i] > x[best]) best = i;
  return static_cast<int32_t>(best);
}

double log_sum_exp(const float* x, int64_t n) {
  const float m = cpu::row_max(x, n);
  if (std::isnan(m)) return m;
  if (m == kNegInf) return -std::numeric_limits<double>::infinity();
  if (m == std::numeric_limits<float>::infinity()) return m;
  return m + std::log(cpu::exp_shifted(x, n, m, 1.0f, nullptr));  // float exp, float64 sum
}

std::vector<TokenLogprob> top_entries(const float* x, int64_t n, int64_t k, double shift) {
  k = std::min(k, n);
  if (k <= 0) return {};
  std::vector<int32_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  auto before = [x](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), before);
  std::vector<TokenLogprob> out(k);
  for (int64_t i = 0; i < k; ++i) out[i] = {idx[i], static_cast<float>(x[idx[i]] - shift)};
  return out;
}

float SamplingDistribution::logprob(int32_t token, const float* logits) const {
  if (token < 0 || token >= static_cast<int64_t>(dense.size())) return kNegInf;
  // dense[token] == 0 means outside the support, or a kept token whose prob underflowed float.
  if (dense[token] == 0 && std::find(tokens.begin(), tokens.end(), token) == tokens.end()) return kNegInf;
  return static_cast<float>(static_cast<double>(logits[token]) * scale - log_norm);
}

SamplingDistribution make_distribution(const float* logits, int64_t n, const SamplingParams& p) {
  check_sampling_params(p);
  check(n > 0, "sampling: empty vocabulary");
  const bool greedy = p.temperature == 0;
  SamplingDistribution d;
  d.scale = greedy ? 1.0 : 1.0 / p.temperature;

  // x = logits / T; m = max x. The weights w = exp(x - m) = exp((logits - max logits) / T) come from one
  // vectorized pass in float (cpu_kernels.h: ~2e-7 relative), sums in float64. Order and ties are those of
  // the logits (1/T > 0 keeps them).
  const float lmax = cpu::row_max(logits, n);
  if (std::isnan(lmax)) {
    for (int64_t i = 0; i < n; ++i)
      check(!std::isnan(logits[i]), "sampling: logits contain NaN at token ", i,
            " (the model or a logits processor produced it)");
  }
  check(lmax > kNegInf, "sampling: every token has logit -inf (a logits processor banned the whole vocabulary)");
  check(lmax < std::numeric_limits<float>::infinity(), "sampling: logits contain +inf");
  const double m = static_cast<double>(lmax) * d.scale;
  auto x = [&](int32_t v) { return static_cast<double>(logits[v]) * d.scale; };
  std::vector<float> w(n);
  cpu::exp_shifted(logits, n, lmax, static_cast<float>(d.scale), w.data());
  std::vector<int32_t> cand;
  cand.reserve(n);
  for (int64_t i = 0; i < n; ++i)
    if (logits[i] > kNegInf) cand.push_back(static_cast<int32_t>(i));

  const bool truncate = !greedy && ((p.top_k > 0 && p.top_k < static_cast<int64_t>(cand.size())) ||
                                    p.top_p < 1 || p.min_p > 0);
  ByValueDesc desc{logits};
  if (truncate) {
    // top-k: nth_element puts the k largest first; HF also keeps tokens tied with the k-th.
    if (p.top_k > 0 && p.top_k < static_cast<int64_t>(cand.size())) {
      const int64_t k = p.top_k;
      std::nth_element(cand.begin(), cand.begin() + (k - 1), cand.end(), desc);
      const float kth = logits[cand[k - 1]];
      std::vector<int32_t> kept(cand.begin(), cand.begin() + k);
      for (size_t i = k; i < cand.size(); ++i)
        if (logits[cand[i]] >= kth) kept.push_back(cand[i]);
      cand.swap(kept);
    }
    // z = total mass of the top-k set (what top-p is measured against).
    double z = 0;
    for (int32_t v : cand) z += w[v];
    // min-p: p_v / p_max = w_v >= min_p. Its kept set and top-p's are both prefixes of the desc
    // order, so applying min-p first (to shrink what top-p looks at) gives the same intersection.
    if (p.min_p > 0) {
      std::vector<int32_t> kept;
      for (int32_t v : cand)
        if (w[v] >= p.min_p) kept.push_back(v);
      cand.swap(kept);
    }
    // top-p: keep v iff the mass of tokens strictly before v (desc order) is < top_p * z.
    // Without a full sort: histogram the mass by x - m into bins of width kBinWidth; bins
    // wholly before the bin where the cumulative mass reaches the target are kept, bins after
    // it are dropped, and only the crossing bin is sorted.
    if (p.top_p < 1 && cand.size() > 1) {
      constexpr int kBins = 2048;
      constexpr double kBinWidth = 1.0 / 32;  // bins cover x - m in (-64, 0]; the last takes the rest
      auto bin_of = [&](int32_t v) {
        const double d = (m - x(v)) / kBinWidth;
        return d >= kBins - 1 ? kBins - 1 : static_cast<int>(d);
      };
      std::vector<double> mass(kBins, 0.0);
      for (int32_t v : cand) mass[bin_of(v)] += w[v];
      const double target = p.top_p * z;
      double before = 0;
      int cross = 0;
      while (cross < kBins - 1 && before + mass[cross] < target) before += mass[cross++];
      std::vector<int32_t> kept, edge;
      for (int32_t v : cand) {
        const int b = bin_of(v);
        if (b < cross) kept.push_back(v);
        else if (b == cross) edge.push_back(v);
      }
      std::sort(edge.begin(), edge.end(), desc);
      for (int32_t v : edge) {
        if (before >= target && !kept.empty()) break;
        kept.push_back(v);
        before += w[v];
      }
      cand.swap(kept);
    }
    std::sort(cand.begin(), cand.end(), desc);
    d.by_prob = true;
  }

  // Renormalise over the support: log p(v) = x_v - log_norm.
  double zs = 0;
  for (int32_t v : cand) zs += w[v];
  d.log_norm = m + std::log(zs);
  d.tokens = std::move(cand);
  d.probs.resize(d.tokens.size());
  d.dense.assign(n, 0.0f);
  for (size_t i = 0; i < d.tokens.size(); ++i) {
    d.probs[i] = w[d.tokens[i]] / zs;
    d.dense[d.tokens[i]] = static_cast<float>(d.probs[i]);
  }
  return d;
}

int32_t sample_from(const SamplingDistribution& dist, double u) {
  double c = 0;
  for (size_t i = 0; i < dist.tokens.size(); ++i) {
    c += dist.probs[i];
    if (u < c) return dist.tokens[i];
  }
  // Rounding left the total a hair under 1 and u above it: take the last token with mass.
  for (size_t i = dist.tokens.size(); i-- > 0;)
    if (dist.probs[i] > 0) return dist.tokens[i];
  return dist.tokens.back();
}

GeneratedToken sample_token(std::span<const int32_t> context, const float* raw_logits, int64_t n_vocab,
                            const SamplingParams& params, LogitsProcessor* processor, uint64_t step,
                            int top_logprobs, std::span<const int32_t> banned) {
  GeneratedToken out;
  if (!processor && banned.empty() && params.temperature == 0) {
    // Greedy without a processor: the processed distribution is the raw one; one pass each.
    check_sampling_params(params);
    const double lse = log_sum_exp(raw_logits, n_vocab);
    check(std::isfinite(lse), "sampling: logits contain NaN or inf (the model produced them)");
    out.token = argmax(raw_logits, n_vocab);
    out.logprob_raw = out.logprob = static_cast<float>(raw_logits[out.token] - lse);
    if (top_logprobs > 0) out.top = out.top_raw = top_entries(raw_logits, n_vocab, top_logprobs, lse);
    return out;
  }
  std::vector<float> work(raw_logits, raw_logits + n_vocab);
  for (int32_t t : banned)
    if (t >= 0 && t < n_vocab) work[size_t(t)] = -INFINITY;
  if (processor) processor->process(context, work.data(), n_vocab);
  SamplingDistribution dist = make_distribution(work.data(), n_vocab, params);

  int32_t tok = -1;
  if (processor) {
    tok = processor->choose(context, dist.dense.data(), n_vocab);
    check(tok >= -1 && tok < n_vocab, "sampling: LogitsProcessor::choose returned token ", tok,
          ", outside [-1, ", n_vocab, ")");
  }
  if (tok < 0) tok = params.temperature == 0 ? argmax(work.data(), n_vocab)
                                             : sample_from(dist, rng_uniform(params.seed, step));
  out.token = tok;
  out.logprob = dist.logprob(tok, work.data());

  const double lse_raw = log_sum_exp(raw_logits, n_vocab);
  check(std::isfinite(lse_raw), "sampling: raw logits are not finite");
  out.logprob_raw = static_cast<float>(raw_logits[tok] - lse_raw);
  if (top_logprobs > 0) {
    out.top_raw = top_entries(raw_logits, n_vocab, top_logprobs, lse_raw);
    const int64_t k = std::min<int64_t>(top_logprobs, static_cast<int64_t>(dist.tokens.size()));
    out.top.reserve(k);
    if (dist.by_prob) {
      for (int64_t i = 0; i < k; ++i)
        out.top.push_back({dist.tokens[i], dist.logprob(dist.tokens[i], work.data())});
    } else {
      // Full support in id order: rank the processed logits (same order as x / T; banned = -inf).
      for (const TokenLogprob& t : top_entries(work.data(), n_vocab, k, 0))
        out.top.push_back({t.token, dist.logprob(t.token, work.data())});
    }
  }
  return out;
}

}  // namespace retort

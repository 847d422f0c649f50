// Exact tails in log space; see stats.h.
#include "retort/util/stats.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>

#include "retort/util/error.h"

namespace retort {

namespace {
constexpr double kNegInf = -std::numeric_limits<double>::infinity();
constexpr double kTiny = 1e-300;

double log_choose(int64_t n, int64_t k) {
  return std::lgamma(double(n) + 1) - std::lgamma(double(k) + 1) - std::lgamma(double(n - k) + 1);
}
}  // namespace

double log_binomial_sf(int64_t k, int64_t n, double p) {
  check(n >= 0, "log_binomial_sf: n = ", n, " < 0");
  check(p >= 0 && p <= 1, "log_binomial_sf: p = ", p, " is not in [0, 1]");
  if (k <= 0) return 0;
  if (k > n) return kNegInf;
  if (p == 0) return kNegInf;
  if (p == 1) return 0;
  const double lp = std::log(p), lq = std::log1p(-p), odds = p / (1 - p);
  if (double(k) > double(n) * p) {
    // Upper tail sum_{j>=k} pmf(j) = pmf(k) · (1 + r_k + r_k r_{k+1} + ...),
    // r_j = pmf(j+1)/pmf(j) = (n − j)/(j + 1) · p/(1 − p) < 1 past the mode: terms only shrink.
    double log_first = log_choose(n, k) + double(k) * lp + double(n - k) * lq;
    double sum = 1, term = 1;
    for (int64_t j = k; j < n; ++j) {
      term *= double(n - j) / double(j + 1) * odds;
      sum += term;
      if (term < sum * 1e-17) break;
    }
    return log_first + std::log(sum);
  }
  // k <= np: k <= floor(np) <= median, so P[X >= k] >= 1/2 and 1 − P[X <= k−1] does not cancel.
  // Lower sum from j = k−1 down: pmf(j−1)/pmf(j) = j/(n − j + 1) · (1 − p)/p.
  int64_t top = k - 1;
  double log_first = log_choose(n, top) + double(top) * lp + double(n - top) * lq;
  double sum = 1, term = 1;
  for (int64_t j = top; j > 0; --j) {
    term *= double(j) / double(n - j + 1) / odds;
    sum += term;
    if (term < sum * 1e-17) break;
  }
  double lower = std::exp(log_first + std::log(sum));
  return std::log1p(-std::min(lower, 1.0));
}

double log_gamma_sf(double x, double a) {
  check(a > 0 && std::isfinite(a), "log_gamma_sf: shape = ", a, " must be positive and finite");
  if (std::isnan(x)) fail("log_gamma_sf: x is NaN");
  if (x <= 0) return 0;
  if (std::isinf(x)) return kNegInf;
  const double log_prefix = a * std::log(x) - x - std::lgamma(a);  // log(x^a e^-x / Γ(a))
  if (x < a + 1) {
    // P(a, x) = x^a e^-x / Γ(a) · Σ_{n>=0} x^n / (a (a+1) ... (a+n)); Q = 1 − P is not tiny here.
    double ap = a, del = 1 / a, sum = del;
    for (int i = 0; i < 100000000; ++i) {
      ap += 1;
      del *= x / ap;
      sum += del;
      if (std::fabs(del) < std::fabs(sum) * 1e-17) break;
    }
    double lower = std::exp(log_prefix + std::log(sum));
    return std::log1p(-std::min(lower, 1.0));
  }
  // Q(a, x) = x^a e^-x / Γ(a) · 1/(x+1−a − 1(1−a)/(x+3−a − 2(2−a)/(x+5−a − ...))), modified Lentz.
  double b = x + 1 - a, c = 1 / kTiny, d = 1 / b, h = d;
  for (int i = 1; i < 100000000; ++i) {
    double an = -double(i) * (double(i) - a);
    b += 2;
    d = an * d + b;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1 / d;
    double del = d * c;
    h *= del;
    if (std::fabs(del - 1) < 1e-16) break;
  }
  return log_prefix + std::log(h);
}

double normal_sf(double z) { return 0.5 * std::erfc(z / std::sqrt(2.0)); }

double log_normal_sf(double z) {
  if (z < 30) return std::log(normal_sf(z));
  // Mills ratio: sf(z) = φ(z)/z · (1 − 1/z² + 3/z⁴ − 15/z⁶ + 105/z⁸ − ...).
  double z2 = z * z;
  double series = 1 - 1 / z2 + 3 / (z2 * z2) - 15 / (z2 * z2 * z2) + 105 / (z2 * z2 * z2 * z2);
  return -0.5 * z2 - 0.5 * std::log(2 * M_PI) - std::log(z) + std::log(series);
}

std::vector<double> holm_bonferroni(const std::vector<double>& p) {
  std::vector<double> lp(p.size());
  for (size_t i = 0; i < p.size(); ++i) {
    check(p[i] >= 0 && p[i] <= 1, "holm_bonferroni: p-value ", i, " = ", p[i], " is not in [0, 1]");
    lp[i] = p[i] > 0 ? std::log(p[i]) : kNegInf;
  }
  std::vector<double> adj = holm_bonferroni_log(lp);
  for (double& a : adj) a = std::exp(a);
  return adj;
}

std::vector<double> holm_bonferroni_log(const std::vector<double>& log_p) {
  const size_t m = log_p.size();
  std::vector<size_t> order(m);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return log_p[a] < log_p[b]; });
  std::vector<double> adj(m);
  double running = kNegInf;
  for (size_t i = 0; i < m; ++i) {
    double a = std::min(0.0, std::log(double(m - i)) + log_p[order[i]]);
    running = std::max(running, a);
    adj[order[i]] = running;
  }
  return adj;
}

KsResult ks_uniform(std::vector<double> x) {
  KsResult r;
  const size_t n = x.size();
  if (n == 0) return r;
  std::sort(x.begin(), x.end());
  for (size_t i = 0; i < n; ++i) {
    double hi = double(i + 1) / double(n) - x[i], lo = x[i] - double(i) / double(n);
    r.d = std::max(r.d, std::max(hi, lo));
  }
  double sn = std::sqrt(double(n));
  double lambda = (sn + 0.12 + 0.11 / sn) * r.d;
  // Q_KS(λ) = 2 Σ (−1)^{k−1} exp(−2k²λ²); the alternating series is useless for tiny λ (then p = 1).
  double a2 = -2 * lambda * lambda, fac = 2, sum = 0, prev = 0;
  for (int k = 1; k <= 100; ++k) {
    double term = fac * std::exp(a2 * k * k);
    sum += term;
    if (std::fabs(term) <= 1e-10 * prev || std::fabs(term) <= 1e-16 * sum) {
      r.p_value = std::clamp(sum, 0.0, 1.0);
      return r;
    }
    fac = -fac;
    prev = std::fabs(term);
  }
  r.p_value = 1;
  return r;
}

std::string format_p(double log10_p) {
  char b[48];
  if (log10_p > -300) {
    std::snprintf(b, sizeof b, "%.3g", std::pow(10.0, log10_p));
    return b;
  }
  double e = std::floor(log10_p), m = std::pow(10.0, log10_p - e);
  if (m >= 9.995) m = 1, e += 1;  // 9.996e-401 prints as 1.00e-400
  std::snprintf(b, sizeof b, "%.2fe%.0f", m, e);
  return b;
}

}  // namespace retort

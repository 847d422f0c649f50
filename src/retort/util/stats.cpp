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

double normal_quantile(double p) {
  check(p > 0 && p < 1, "normal_quantile: p must be in (0, 1), got ", p);
  // Acklam's coefficients.
  static const double a[] = {-3.969683028665376e+01, 2.209460984245205e+02, -2.759285104469687e+02,
                             1.383577518672690e+02, -3.066479806614716e+01, 2.506628277459239e+00};
  static const double b[] = {-5.447609879822406e+01, 1.615858368580409e+02, -1.556989798598866e+02,
                             6.680131188771972e+01, -1.328068155288572e+01};
  static const double c[] = {-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e+00,
                             -2.549732539343734e+00, 4.374664141464968e+00, 2.938163982698783e+00};
  static const double d[] = {7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e+00,
                             3.754408661907416e+00};
  const double lo = 0.02425, hi = 1 - lo;
  double x;
  if (p < lo) {
    const double q = std::sqrt(-2 * std::log(p));
    x = (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  } else if (p <= hi) {
    const double q = p - 0.5, r = q * q;
    x = (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * q /
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1);
  } else {
    const double q = std::sqrt(-2 * std::log1p(-p));
    x = -(((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) /
        ((((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1);
  }
  // One Halley step: e = Φ(x) − p.
  const double e = 0.5 * std::erfc(-x / std::sqrt(2.0)) - p;
  const double u = e * std::sqrt(2 * M_PI) * std::exp(x * x / 2);
  return x - u / (1 + x * u / 2);
}

double shapiro_wilk_w(std::vector<double> x) {
  const int64_t n = int64_t(x.size());
  check(n >= 3 && n <= 5000, "shapiro_wilk_w: needs 3 to 5000 values, got ", n);
  std::sort(x.begin(), x.end());
  double mean = 0;
  for (double v : x) mean += v;
  mean /= double(n);
  double ss = 0;
  for (double v : x) ss += (v - mean) * (v - mean);
  if (!(ss > 0)) return 1.0;
  std::vector<double> m(static_cast<size_t>(n)), a(static_cast<size_t>(n));
  double mm = 0;
  for (int64_t i = 0; i < n; ++i) {
    m[size_t(i)] = normal_quantile((double(i + 1) - 0.375) / (double(n) + 0.25));
    mm += m[size_t(i)] * m[size_t(i)];
  }
  if (n == 3) {  // exact: a = (−√½, 0, √½)
    a[0] = -std::sqrt(0.5), a[1] = 0, a[2] = std::sqrt(0.5);
  } else {
    const double u = 1 / std::sqrt(double(n));
    const double mn = m[size_t(n - 1)], mn1 = m[size_t(n - 2)];
    const double an = mn / std::sqrt(mm) + 0.221157 * u - 0.147981 * u * u - 2.071190 * std::pow(u, 3) +
                      4.434685 * std::pow(u, 4) - 2.706056 * std::pow(u, 5);
    double phi;
    int64_t k;  // coefficients set at each end
    double an1 = 0;
    if (n > 5) {
      an1 = mn1 / std::sqrt(mm) + 0.042981 * u - 0.293762 * u * u - 1.752461 * std::pow(u, 3) +
            5.682633 * std::pow(u, 4) - 3.582633 * std::pow(u, 5);
      phi = (mm - 2 * mn * mn - 2 * mn1 * mn1) / (1 - 2 * an * an - 2 * an1 * an1);
      k = 2;
    } else {
      phi = (mm - 2 * mn * mn) / (1 - 2 * an * an);
      k = 1;
    }
    for (int64_t i = k; i < n - k; ++i) a[size_t(i)] = m[size_t(i)] / std::sqrt(phi);
    a[size_t(n - 1)] = an, a[0] = -an;
    if (k == 2) a[size_t(n - 2)] = an1, a[1] = -an1;
  }
  double num = 0;
  for (int64_t i = 0; i < n; ++i) num += a[size_t(i)] * x[size_t(i)];
  return std::min(1.0, num * num / ss);
}

}  // namespace retort

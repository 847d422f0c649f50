// retort/util/stats.h — exact tail probabilities for detection tests, in log space.
//
// Detection p-values get tiny (1e-300 and below), so every tail is returned as a natural
// log. No normal approximation where an exact tail exists, and no floor on p.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace retort {

// log P[Bin(n, p) >= k]. k <= 0 -> 0; k > n -> -inf. 0 <= p <= 1.
// Summed in log space from the pmf (lgamma at the start term, then term ratios),
// from the side that does not cancel.
double log_binomial_sf(int64_t k, int64_t n, double p);

// log P[Gamma(shape, 1) >= x] = log Q(shape, x), the regularized upper incomplete gamma.
// Series for P when x < shape + 1 (then log1p(-P)), Lentz continued fraction otherwise.
// shape > 0; x <= 0 -> 0.
double log_gamma_sf(double x, double shape);

// P[N(0,1) >= z] and its log (accurate for large z via erfc / the asymptotic series).
double normal_sf(double z);
double log_normal_sf(double z);

// Holm–Bonferroni step-down adjusted p-values (same order as the input):
//   sort p ascending p_(1..m); adj_(j) = max_{i<=j} min(1, (m − i + 1) p_(i)).
// Reject H_j at level α iff adj_j <= α.
std::vector<double> holm_bonferroni(const std::vector<double>& p);
// The same on natural-log p-values (for p below 1e-308); returns log adjusted p.
std::vector<double> holm_bonferroni_log(const std::vector<double>& log_p);

// Kolmogorov–Smirnov test of x_1..x_n against Uniform(0,1).
struct KsResult {
  double d = 0;        // sup |F_n(x) − x|
  double p_value = 1;  // Kolmogorov distribution with Stephens' small-n correction:
                       // λ = (√n + 0.12 + 0.11/√n) d,  p = 2 Σ_{k>=1} (−1)^{k−1} exp(−2 k² λ²)
};
KsResult ks_uniform(std::vector<double> x);

// Φ⁻¹(p), the standard normal quantile, 0 < p < 1 (Acklam's rational approximation, relative error
// < 1.2e-9, refined by one Halley step on erfc).
double normal_quantile(double p);

// The Shapiro–Wilk W statistic of a sample (3 <= n <= 5000), with Royston's (1992, AS R94)
// approximation of the coefficients:
//   m_i = Φ⁻¹((i − 3/8)/(n + 1/4)),  c = m/|m|,  u = 1/√n,
//   a_n = c_n + 0.221157u − 0.147981u² − 2.071190u³ + 4.434685u⁴ − 2.706056u⁵,
//   a_{n−1} = c_{n−1} + 0.042981u − 0.293762u² − 1.752461u³ + 5.682633u⁴ − 3.582633u⁵  (n > 5),
//   the middle a_i = m_i/√φ with φ making Σa² = 1;  W = (Σ a_i x_(i))² / Σ (x_i − x̄)².
// W is in (0, 1]; near 1 for a normal sample. A constant sample gives 1 (nothing to reject).
double shapiro_wilk_w(std::vector<double> x);

// A p-value for people, from its log10 (exact far below the double range): "0.0123", "3.1e-42",
// "2.50e-412" (3 significant digits above 1e-300, mantissa and exponent below).
std::string format_p(double log10_p);

}  // namespace retort

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

// A p-value for people, from its log10 (exact far below the double range): "0.0123", "3.1e-42",
// "2.50e-412" (3 significant digits above 1e-300, mantissa and exponent below).
std::string format_p(double log10_p);

}  // namespace retort

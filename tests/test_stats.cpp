// Exact tails (util/stats.h) against mpmath goldens (tests/data/stats/make_golden.py).
#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>

#include "retort/util/error.h"
#include "retort/util/stats.h"

using namespace retort;

namespace {

// |got − want| <= 1e-9 · max(1, |want|): log p to nine significant digits, p down to 1e-300.
void expect_log_close(double got, double want, const std::string& what) {
  if (std::isinf(want)) {
    EXPECT_EQ(got, want) << what;
    return;
  }
  EXPECT_NEAR(got, want, 1e-9 * std::max(1.0, std::fabs(want))) << what;
}

double parse(const std::string& s) {
  if (s == "-inf") return -std::numeric_limits<double>::infinity();
  return std::stod(s);
}

}  // namespace

TEST(Stats, GoldenTails) {
  std::ifstream in(std::string(RETORT_TEST_DATA) + "/stats/golden.txt");
  ASSERT_TRUE(in) << "missing tests/data/stats/golden.txt (run make_golden.py)";
  std::string line;
  int n_cases = 0;
  bool saw_tiny = false;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    std::string kind;
    ls >> kind;
    if (kind == "binom") {
      int64_t k, n;
      std::string p, want;
      ls >> k >> n >> p >> want;
      double w = parse(want);
      expect_log_close(log_binomial_sf(k, n, std::stod(p)), w, line);
      if (w < -690) saw_tiny = true;
    } else if (kind == "gamma") {
      std::string x, a, want;
      ls >> x >> a >> want;
      double w = parse(want);
      expect_log_close(log_gamma_sf(std::stod(x), std::stod(a)), w, line);
      if (w < -690) saw_tiny = true;
    } else if (kind == "normal") {
      std::string z, want;
      ls >> z >> want;
      expect_log_close(log_normal_sf(std::stod(z)), parse(want), line);
      if (std::stod(z) < 30)
        EXPECT_NEAR(normal_sf(std::stod(z)), std::exp(parse(want)), 1e-12 * std::exp(parse(want))) << line;
    } else if (kind == "ks") {
      std::string d, want;
      int n;
      ls >> d >> n >> want;
      // Build a sample whose statistic is exactly d: the first point pushed right by d.
      std::vector<double> x(n);
      // x_(i) = (i+1)/n − d gives D = max_i ((i+1)/n − x_(i)) = d exactly.
      for (int i = 0; i < n; ++i) x[i] = double(i + 1) / n - std::stod(d);
      KsResult r = ks_uniform(x);
      EXPECT_NEAR(r.d, std::stod(d), 1e-12) << line;
      EXPECT_NEAR(r.p_value, parse(want), 1e-9) << line;
    } else {
      continue;
    }
    ++n_cases;
  }
  EXPECT_GT(n_cases, 50);
  EXPECT_TRUE(saw_tiny) << "golden set should reach p < 1e-300";
}

TEST(Stats, BinomialEdges) {
  EXPECT_EQ(log_binomial_sf(0, 0, 0.3), 0.0);
  EXPECT_EQ(log_binomial_sf(1, 0, 0.3), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(log_binomial_sf(3, 10, 0.0), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(log_binomial_sf(10, 10, 1.0), 0.0);
  // P[Bin(n, p) >= n] = p^n, far below the double range.
  EXPECT_NEAR(log_binomial_sf(2000, 2000, 0.25), 2000 * std::log(0.25), 1e-9 * 2000 * 1.4);
  EXPECT_THROW(log_binomial_sf(1, 10, 1.5), Error);
  EXPECT_THROW(log_binomial_sf(1, -1, 0.5), Error);
}

TEST(Stats, GammaEdges) {
  EXPECT_EQ(log_gamma_sf(0, 3), 0.0);
  EXPECT_EQ(log_gamma_sf(-1, 3), 0.0);
  // Exp(1): P[X >= x] = e^-x exactly, far into the tail.
  for (double x : {0.1, 1.0, 10.0, 700.0, 5000.0}) EXPECT_NEAR(log_gamma_sf(x, 1), -x, 1e-9 * std::max(1.0, x));
  EXPECT_THROW(log_gamma_sf(1, 0), Error);
  EXPECT_THROW(log_gamma_sf(std::nan(""), 1), Error);
}

TEST(Stats, HolmBonferroniHandExample) {
  // m = 4, p = (0.01, 0.04, 0.03, 0.005). Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03,
  // 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06. Back in input order:
  std::vector<double> adj = holm_bonferroni({0.01, 0.04, 0.03, 0.005});
  ASSERT_EQ(adj.size(), 4u);
  EXPECT_NEAR(adj[0], 0.03, 1e-15);
  EXPECT_NEAR(adj[1], 0.06, 1e-15);
  EXPECT_NEAR(adj[2], 0.06, 1e-15);
  EXPECT_NEAR(adj[3], 0.02, 1e-15);
  // Caps at 1, and the log form works below 1e-308.
  EXPECT_EQ(holm_bonferroni({0.6, 0.7})[1], 1.0);
  std::vector<double> la = holm_bonferroni_log({-1000.0, -2.0, -3000.0});
  EXPECT_NEAR(la[2], std::log(3.0) - 3000, 1e-9);
  EXPECT_NEAR(la[0], std::log(2.0) - 1000, 1e-9);
  EXPECT_NEAR(la[1], -2.0, 1e-12);
  EXPECT_THROW(holm_bonferroni({0.5, 1.5}), Error);
}

TEST(Stats, KsUniform) {
  // A fine, evenly spread sample is uniform; a sample squeezed into [0, 0.5] is not.
  std::vector<double> even, squeezed;
  for (int i = 0; i < 500; ++i) {
    even.push_back((i + 0.5) / 500);
    squeezed.push_back(0.5 * (i + 0.5) / 500);
  }
  KsResult a = ks_uniform(even), b = ks_uniform(squeezed);
  EXPECT_NEAR(a.d, 0.5 / 500, 1e-12);
  EXPECT_GT(a.p_value, 0.99);
  EXPECT_NEAR(b.d, 0.5, 1e-3);
  EXPECT_LT(b.p_value, 1e-50);
  EXPECT_EQ(ks_uniform({}).p_value, 1.0);
}

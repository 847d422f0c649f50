// Tests for src/retort/distill/losses: every KD loss against an independent float64
// reference written with plain loops over std::vector<double> (no libtorch ops), the ends and
// invariants (JSD β = 0 / 1, identical distributions, non-negativity, τ² scaling, sparse with
// k = V equals dense), finite-difference gradients, and chunked vs unchunked on a tiny model.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "retort/distill/losses.h"
#include "retort/model/hparams.h"
#include "retort/model/llama.h"
#include "retort/util/error.h"

using namespace retort;

namespace {

using Vec = std::vector<double>;
using Mat = std::vector<Vec>;  // [rows][V]

const std::vector<LossKind> kDivergences = {LossKind::ForwardKL, LossKind::ReverseKL,     LossKind::JSD,
                                            LossKind::SkewKL,    LossKind::SkewReverseKL, LossKind::TVD};

// ---------------------------------------------------------------------------------------------
// The float64 reference: definitions written out, one row at a time.

Vec ref_softmax(const Vec& z, double tau) {
  double mx = *std::max_element(z.begin(), z.end());
  Vec p(z.size());
  double s = 0;
  for (size_t i = 0; i < z.size(); ++i) s += p[i] = std::exp((z[i] - mx) / tau);
  for (auto& x : p) x /= s;
  return p;
}

// KL(a ‖ b) = Σ a log(a/b), 0·log(0/b) = 0.
double ref_kl(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); ++i)
    if (a[i] > 0) s += a[i] * std::log(a[i] / b[i]);
  return s;
}

Vec mix(double w, const Vec& a, const Vec& b) {  // w a + (1−w) b
  Vec m(a.size());
  for (size_t i = 0; i < a.size(); ++i) m[i] = w * a[i] + (1 - w) * b[i];
  return m;
}

double ref_divergence(LossKind kind, const Vec& p, const Vec& q, double beta, double alpha) {
  switch (kind) {
    case LossKind::ForwardKL: return ref_kl(p, q);
    case LossKind::ReverseKL: return ref_kl(q, p);
    case LossKind::JSD:
      if (beta == 0) return ref_kl(p, q);  // TRL's ends: limits divided by the vanishing factor
      if (beta == 1) return ref_kl(q, p);
      return beta * ref_kl(p, mix(beta, p, q)) + (1 - beta) * ref_kl(q, mix(beta, p, q));
    case LossKind::SkewKL: return ref_kl(p, mix(alpha, p, q));
    case LossKind::SkewReverseKL: return ref_kl(q, mix(alpha, q, p));
    case LossKind::TVD: {
      double s = 0;
      for (size_t i = 0; i < p.size(); ++i) s += std::fabs(p[i] - q[i]);
      return 0.5 * s;
    }
    case LossKind::CE: break;
  }
  ADD_FAILURE() << "no reference for ce here";
  return 0;
}

double ref_dense(const Vec& z, const Vec& t, const LossConfig& c) {
  double f = c.t2_scale ? c.temperature * c.temperature : 1.0;
  return f * ref_divergence(c.kind, ref_softmax(t, c.temperature), ref_softmax(z, c.temperature), c.beta, c.alpha);
}

// The sparse signal as a capture writes it: top-k ids of the teacher (descending), their
// log-probs at τ = 1, and the tail mass 1 − Σ top-k clamped at 0.
struct Sparse {
  std::vector<std::vector<int64_t>> ids;
  Mat logprobs;
  Vec tail;
};

Sparse make_sparse(const Mat& teacher, size_t k) {
  Sparse s;
  for (const auto& t : teacher) {
    Vec p = ref_softmax(t, 1.0);
    std::vector<int64_t> order(p.size());
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return p[a] > p[b]; });
    order.resize(k);
    Vec lp;
    double mass = 0;
    for (auto i : order) {
      lp.push_back(std::log(p[i]));
      mass += p[i];
    }
    s.ids.push_back(order);
    s.logprobs.push_back(lp);
    s.tail.push_back(std::max(0.0, 1.0 - mass));
  }
  return s;
}

// Both distributions collapsed onto the k ids + one tail bucket (no bucket when k = V):
// teacher re-tempered as p̃ ∝ [exp(l_i/τ) …, max(tail, 1e-8)^{1/τ}], student q̃ = softmax(z/τ)
// summed over the vocabulary outside the ids.
double ref_sparse(const Vec& z, const std::vector<int64_t>& ids, const Vec& lp, double tail, const LossConfig& c) {
  const double tau = c.temperature;
  const size_t k = ids.size(), V = z.size();
  const bool bucket = k < V;
  Vec p, q;
  double s = 0;
  for (size_t i = 0; i < k; ++i) s += std::exp(lp[i] / tau), p.push_back(std::exp(lp[i] / tau));
  if (bucket) {
    double pt = std::pow(std::max(tail, 1e-8), 1.0 / tau);
    s += pt, p.push_back(pt);
  }
  for (auto& x : p) x /= s;
  Vec qf = ref_softmax(z, tau);
  std::vector<bool> in_k(V, false);
  for (auto i : ids) q.push_back(qf[size_t(i)]), in_k[size_t(i)] = true;
  if (bucket) {
    double qt = 0;
    for (size_t v = 0; v < V; ++v)
      if (!in_k[v]) qt += qf[v];
    q.push_back(qt);
  }
  double f = c.t2_scale ? tau * tau : 1.0;
  return f * ref_divergence(c.kind, p, q, c.beta, c.alpha);
}

double ref_ce(const Vec& z, int64_t y) { return -std::log(ref_softmax(z, 1.0)[size_t(y)]); }

// ---------------------------------------------------------------------------------------------
// Random inputs and conversions

Mat random_logits(std::mt19937_64& rng, size_t n, size_t V, double scale) {
  std::normal_distribution<double> nd(0.0, scale);
  Mat m(n, Vec(V));
  for (auto& row : m)
    for (auto& x : row) x = nd(rng);
  return m;
}

torch::Tensor to_tensor(const Mat& m, torch::ScalarType dt) {
  auto t = torch::empty({int64_t(m.size()), int64_t(m[0].size())}, torch::kFloat64);
  auto a = t.accessor<double, 2>();
  for (size_t i = 0; i < m.size(); ++i)
    for (size_t j = 0; j < m[i].size(); ++j) a[int64_t(i)][int64_t(j)] = m[i][j];
  return t.to(dt);
}

struct SparseTensors {
  torch::Tensor ids, logprobs, tail;
};

SparseTensors to_tensors(const Sparse& s) {
  const int64_t n = int64_t(s.ids.size()), k = int64_t(s.ids[0].size());
  SparseTensors t{torch::empty({n, k}, torch::kInt64), torch::empty({n, k}, torch::kFloat32),
                  torch::empty({n}, torch::kFloat32)};
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      t.ids[i][j] = s.ids[size_t(i)][size_t(j)];
      t.logprobs[i][j] = float(s.logprobs[size_t(i)][size_t(j)]);
    }
    t.tail[i] = float(s.tail[size_t(i)]);
  }
  return t;
}

// The reference must see the float32 values the library sees.
Sparse round_to_f32(Sparse s) {
  for (auto& r : s.logprobs)
    for (auto& x : r) x = double(float(x));
  for (auto& x : s.tail) x = double(float(x));
  return s;
}

Vec to_vec(const torch::Tensor& t) {
  auto c = t.detach().to(torch::kFloat64).contiguous();
  return Vec(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

LossConfig config(LossKind kind, double tau, double beta = 0.5, double alpha = 0.1, bool t2 = true) {
  LossConfig c;
  c.kind = kind;
  c.temperature = tau;
  c.beta = beta;
  c.alpha = alpha;
  c.t2_scale = t2;
  return c;
}

std::string describe(const LossConfig& c) {
  return loss_kind_name(c.kind) + " tau=" + std::to_string(c.temperature) + " beta=" + std::to_string(c.beta) +
         " alpha=" + std::to_string(c.alpha) + " t2=" + std::to_string(c.t2_scale);
}

// Every (kind, β, α) combination the tests sweep, including the ends.
std::vector<LossConfig> sweep(double tau) {
  std::vector<LossConfig> out;
  out.push_back(config(LossKind::ForwardKL, tau));
  out.push_back(config(LossKind::ReverseKL, tau));
  for (double b : {0.0, 0.1, 0.5, 0.9, 1.0}) out.push_back(config(LossKind::JSD, tau, b));
  for (double a : {0.0, 0.1, 0.5, 0.9}) out.push_back(config(LossKind::SkewKL, tau, 0.5, a));
  for (double a : {0.0, 0.1, 0.5, 0.9}) out.push_back(config(LossKind::SkewReverseKL, tau, 0.5, a));
  out.push_back(config(LossKind::TVD, tau));
  return out;
}

void expect_close(const Vec& got, const Vec& want, double rel, double abs, const std::string& what) {
  ASSERT_EQ(got.size(), want.size()) << what;
  for (size_t i = 0; i < got.size(); ++i)
    EXPECT_NEAR(got[i], want[i], abs + rel * std::fabs(want[i])) << what << " row " << i;
}

template <class F>
void expect_error(F&& f, const std::string& part) {
  try {
    f();
    ADD_FAILURE() << "expected retort::Error mentioning \"" << part << "\"";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(part), std::string::npos) << "missing \"" << part << "\" in: " << e.what();
  }
}

constexpr size_t kRows = 8, kVocab = 50;

}  // namespace

// ---------------------------------------------------------------------------------------------
// Values against the float64 reference

TEST(Losses, DenseMatchesReference) {
  std::mt19937_64 rng(1);
  auto zs = random_logits(rng, kRows, kVocab, 2.5), ts = random_logits(rng, kRows, kVocab, 2.5);
  for (double tau : {0.5, 1.0, 2.0, 4.0}) {
    for (auto c : sweep(tau)) {
      for (bool t2 : {true, false}) {
        c.t2_scale = t2;
        Vec want;
        for (size_t i = 0; i < kRows; ++i) want.push_back(ref_dense(zs[i], ts[i], c));
        // float64 logits: the implementation's arithmetic against the definitions.
        auto got64 = dense_loss_rows(to_tensor(zs, torch::kFloat64), to_tensor(ts, torch::kFloat64), c);
        expect_close(to_vec(got64), want, 1e-10, 1e-12, describe(c) + " f64");
        // float32 logits: the training path.
        auto got32 = dense_loss_rows(to_tensor(zs, torch::kFloat32), to_tensor(ts, torch::kFloat32), c);
        EXPECT_EQ(got32.scalar_type(), torch::kFloat32);
        expect_close(to_vec(got32), want, 2e-4, 2e-5, describe(c) + " f32");
      }
    }
  }
}

TEST(Losses, SparseMatchesReference) {
  std::mt19937_64 rng(2);
  auto zs = random_logits(rng, kRows, kVocab, 2.5), ts = random_logits(rng, kRows, kVocab, 2.5);
  for (size_t k : {1, 5, 20}) {
    Sparse s = round_to_f32(make_sparse(ts, k));
    auto st = to_tensors(s);
    for (double tau : {0.5, 1.0, 2.0}) {
      for (auto c : sweep(tau)) {
        Vec want;
        for (size_t i = 0; i < kRows; ++i) want.push_back(ref_sparse(zs[i], s.ids[i], s.logprobs[i], s.tail[i], c));
        auto got64 = sparse_loss_rows(to_tensor(zs, torch::kFloat64), st.ids, st.logprobs, st.tail, c);
        expect_close(to_vec(got64), want, 1e-9, 1e-12, describe(c) + " k=" + std::to_string(k) + " f64");
        auto got32 = sparse_loss_rows(to_tensor(zs, torch::kFloat32), st.ids, st.logprobs, st.tail, c);
        expect_close(to_vec(got32), want, 2e-4, 2e-5, describe(c) + " k=" + std::to_string(k) + " f32");
      }
    }
  }
}

TEST(Losses, SparseTailNearZeroStaysFinite) {
  // A very peaked teacher: the stored tail is 0 or float32 noise. A peaked student too: its
  // tail bucket is tiny but must still be computed by summation, not as 1 − Σ top-k.
  std::mt19937_64 rng(3);
  auto ts = random_logits(rng, kRows, kVocab, 1.0), zs = random_logits(rng, kRows, kVocab, 1.0);
  for (size_t i = 0; i < kRows; ++i) ts[i][i] += 40.0, zs[i][(i + 1) % kVocab] += 30.0;
  Sparse s = round_to_f32(make_sparse(ts, 3));
  for (auto& x : s.tail) x = 0.0;  // clamped noise
  auto st = to_tensors(s);
  for (double tau : {0.5, 1.0, 2.0}) {
    for (const auto& c : sweep(tau)) {
      Vec want;
      for (size_t i = 0; i < kRows; ++i) want.push_back(ref_sparse(zs[i], s.ids[i], s.logprobs[i], s.tail[i], c));
      auto z = to_tensor(zs, torch::kFloat64).requires_grad_(true);
      auto rows = sparse_loss_rows(z, st.ids, st.logprobs, st.tail, c);
      expect_close(to_vec(rows), want, 1e-9, 1e-12, describe(c));
      rows.sum().backward();
      EXPECT_TRUE(torch::isfinite(z.grad()).all().item<bool>()) << describe(c);
      auto rows32 = sparse_loss_rows(to_tensor(zs, torch::kFloat32), st.ids, st.logprobs, st.tail, c);
      EXPECT_TRUE(torch::isfinite(rows32).all().item<bool>()) << describe(c);
      expect_close(to_vec(rows32), want, 1e-3, 1e-4, describe(c) + " f32");
    }
  }
}

TEST(Losses, CrossEntropyMatchesReference) {
  std::mt19937_64 rng(4);
  auto zs = random_logits(rng, kRows, kVocab, 3.0);
  auto y = torch::empty({int64_t(kRows)}, torch::kInt64);
  Vec want;
  for (size_t i = 0; i < kRows; ++i) {
    int64_t t = int64_t((i * 7 + 3) % kVocab);
    y[int64_t(i)] = t;
    want.push_back(ref_ce(zs[i], t));
  }
  expect_close(to_vec(ce_loss_rows(to_tensor(zs, torch::kFloat64), y)), want, 1e-12, 1e-12, "ce f64");
  expect_close(to_vec(ce_loss_rows(to_tensor(zs, torch::kFloat32), y)), want, 1e-5, 1e-5, "ce f32");
}

// ---------------------------------------------------------------------------------------------
// The ends and the invariants

TEST(Losses, JsdEndsAreTheKlDirections) {
  std::mt19937_64 rng(5);
  auto zs = random_logits(rng, kRows, kVocab, 2.0), ts = random_logits(rng, kRows, kVocab, 2.0);
  auto z = to_tensor(zs, torch::kFloat64), t = to_tensor(ts, torch::kFloat64);
  for (double tau : {1.0, 2.0}) {
    auto fkl = to_vec(dense_loss_rows(z, t, config(LossKind::ForwardKL, tau)));
    auto rkl = to_vec(dense_loss_rows(z, t, config(LossKind::ReverseKL, tau)));
    for (size_t i = 0; i < kRows; ++i) {
      // fkl and rkl differ, so the ends really pick a direction (and neither is 0).
      ASSERT_GT(fkl[i], 1e-2);
      ASSERT_GT(std::fabs(fkl[i] - rkl[i]), 1e-3);
    }
    expect_close(to_vec(dense_loss_rows(z, t, config(LossKind::JSD, tau, 0.0))), fkl, 1e-12, 0, "jsd beta=0");
    expect_close(to_vec(dense_loss_rows(z, t, config(LossKind::JSD, tau, 1.0))), rkl, 1e-12, 0, "jsd beta=1");
    // Near the ends the formula vanishes like β·KL(p‖q) and (1−β)·KL(q‖p): the ends are those
    // limits divided by the vanishing factor.
    const double eps = 1e-8;  // the next order is β·χ²(p‖q), large for random logits
    auto near0 = to_vec(dense_loss_rows(z, t, config(LossKind::JSD, tau, eps)));
    auto near1 = to_vec(dense_loss_rows(z, t, config(LossKind::JSD, tau, 1 - eps)));
    for (size_t i = 0; i < kRows; ++i) {
      EXPECT_NEAR(near0[i] / eps, fkl[i], 1e-3 * fkl[i] + 1e-6) << i;
      EXPECT_NEAR(near1[i] / eps, rkl[i], 1e-3 * rkl[i] + 1e-6) << i;
    }
    // β = 0.5 is symmetric in p and q.
    auto j = to_vec(dense_loss_rows(z, t, config(LossKind::JSD, tau, 0.5)));
    auto jswap = to_vec(dense_loss_rows(t, z, config(LossKind::JSD, tau, 0.5)));
    expect_close(j, jswap, 1e-10, 1e-14, "jsd symmetric");
  }
  // Skew α = 0 is the plain direction.
  auto c0 = config(LossKind::SkewKL, 1.0, 0.5, 0.0), r0 = config(LossKind::SkewReverseKL, 1.0, 0.5, 0.0);
  expect_close(to_vec(dense_loss_rows(z, t, c0)), to_vec(dense_loss_rows(z, t, config(LossKind::ForwardKL, 1.0))),
               1e-12, 0, "skl alpha=0");
  expect_close(to_vec(dense_loss_rows(z, t, r0)), to_vec(dense_loss_rows(z, t, config(LossKind::ReverseKL, 1.0))),
               1e-12, 0, "srkl alpha=0");
}

TEST(Losses, IdenticalDistributionsGiveZero) {
  std::mt19937_64 rng(6);
  auto zs = random_logits(rng, kRows, kVocab, 2.0);
  auto z = to_tensor(zs, torch::kFloat32);
  Sparse s = make_sparse(zs, 10);  // the student's own top-10 as the teacher signal
  auto st = to_tensors(s);
  for (double tau : {0.5, 1.0, 3.0}) {
    for (const auto& c : sweep(tau)) {
      for (double x : to_vec(dense_loss_rows(z, z.clone(), c))) EXPECT_NEAR(x, 0.0, 1e-5) << describe(c);
      if (tau == 1.0)  // (at τ ≠ 1 the tail pseudo-token is re-tempered approximately)
        for (double x : to_vec(sparse_loss_rows(z, st.ids, st.logprobs, st.tail, c)))
          EXPECT_NEAR(x, 0.0, 1e-5) << describe(c) << " sparse";
    }
  }
}

TEST(Losses, NonNegative) {
  std::mt19937_64 rng(7);
  auto zs = random_logits(rng, 64, kVocab, 4.0), ts = random_logits(rng, 64, kVocab, 4.0);
  auto z = to_tensor(zs, torch::kFloat32), t = to_tensor(ts, torch::kFloat32);
  auto st = to_tensors(make_sparse(ts, 8));
  for (double tau : {0.5, 1.0, 2.0}) {
    for (const auto& c : sweep(tau)) {
      auto d = dense_loss_rows(z, t, c), sp = sparse_loss_rows(z, st.ids, st.logprobs, st.tail, c);
      EXPECT_GE(d.min().item<double>(), -1e-6) << describe(c);
      EXPECT_GE(sp.min().item<double>(), -1e-6) << describe(c);
      EXPECT_GT(d.max().item<double>(), 1e-3) << describe(c);  // and not trivially zero
      EXPECT_GT(sp.max().item<double>(), 1e-3) << describe(c);
    }
  }
}

TEST(Losses, TemperatureSquaredScaling) {
  std::mt19937_64 rng(8);
  auto zs = random_logits(rng, kRows, kVocab, 2.0), ts = random_logits(rng, kRows, kVocab, 2.0);
  auto z = to_tensor(zs, torch::kFloat64), t = to_tensor(ts, torch::kFloat64);
  auto st = to_tensors(make_sparse(ts, 5));
  for (double tau : {0.5, 2.0, 3.0}) {
    for (auto c : sweep(tau)) {
      c.t2_scale = true;
      auto with = to_vec(dense_loss_rows(z, t, c)), with_s = to_vec(sparse_loss_rows(z, st.ids, st.logprobs, st.tail, c));
      c.t2_scale = false;
      auto without = to_vec(dense_loss_rows(z, t, c)),
           without_s = to_vec(sparse_loss_rows(z, st.ids, st.logprobs, st.tail, c));
      for (auto& x : without) x *= tau * tau;
      for (auto& x : without_s) x *= tau * tau;
      expect_close(with, without, 1e-12, 0, describe(c));
      expect_close(with_s, without_s, 1e-12, 0, describe(c) + " sparse");
    }
  }
}

TEST(Losses, SparseWithFullVocabularyEqualsDense) {
  std::mt19937_64 rng(9);
  auto zs = random_logits(rng, kRows, kVocab, 2.0), ts = random_logits(rng, kRows, kVocab, 2.0);
  Sparse s = make_sparse(ts, kVocab);
  for (auto& x : s.tail) x = 0.0;  // empty tail
  auto st = to_tensors(s);
  auto z = to_tensor(zs, torch::kFloat32), t = to_tensor(ts, torch::kFloat32);
  for (double tau : {0.5, 1.0, 2.0}) {
    for (const auto& c : sweep(tau)) {
      auto zd = z.clone().requires_grad_(true), zsp = z.clone().requires_grad_(true);
      auto d = dense_loss_rows(zd, t, c), sp = sparse_loss_rows(zsp, st.ids, st.logprobs, st.tail, c);
      expect_close(to_vec(sp), to_vec(d), 1e-4, 1e-5, describe(c));
      d.sum().backward();
      sp.sum().backward();
      EXPECT_TRUE(torch::allclose(zsp.grad(), zd.grad(), 1e-3, 1e-5)) << describe(c);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Gradients: autograd through the losses vs float64 central differences on the logits.

namespace {

// f(z) = Σ_n w_n loss_n(z) with distinct row weights, so each row's gradient is checked.
template <class Loss>
void check_gradient(Loss&& loss, const torch::Tensor& z0, const std::string& what) {
  const int64_t n = z0.size(0), V = z0.size(1);
  auto w = torch::linspace(0.5, 1.5, n, torch::kFloat64);
  auto z = z0.clone().requires_grad_(true);
  (loss(z) * w).sum().backward();
  auto analytic = z.grad();
  const double h = 1e-6;
  double worst = 0;
  for (int64_t i = 0; i < n; ++i) {
    for (int64_t j = 0; j < V; ++j) {
      auto zp = z0.clone(), zm = z0.clone();
      zp[i][j] += h;
      zm[i][j] -= h;
      torch::NoGradGuard no_grad;
      torch::Tensor fp = (loss(zp) * w).sum(), fm = (loss(zm) * w).sum();
      double fd = (fp.item<double>() - fm.item<double>()) / (2 * h);
      double an = analytic[i][j].item<double>();
      worst = std::max(worst, std::fabs(fd - an) / (1e-6 + std::fabs(fd)));
      EXPECT_NEAR(an, fd, 1e-6 + 1e-5 * std::fabs(fd)) << what << " at [" << i << ", " << j << "]";
    }
  }
  EXPECT_LT(worst, 1e-3) << what;
}

}  // namespace

TEST(Losses, GradientsMatchFiniteDifferences) {
  std::mt19937_64 rng(10);
  const size_t n = 3, V = 12;
  auto zs = random_logits(rng, n, V, 2.0), ts = random_logits(rng, n, V, 2.0);
  auto z0 = to_tensor(zs, torch::kFloat64), t = to_tensor(ts, torch::kFloat64);
  auto st = to_tensors(make_sparse(ts, 4));
  Sparse s0 = make_sparse(ts, 4);
  for (auto& x : s0.tail) x = 0.0;
  auto st0 = to_tensors(s0);  // the floored-tail path
  auto y = torch::tensor({int64_t(1), int64_t(7), int64_t(11)});
  check_gradient([&](const torch::Tensor& z) { return ce_loss_rows(z, y); }, z0, "ce");
  for (double tau : {0.7, 1.0, 1.8}) {
    for (const auto& c : sweep(tau)) {
      check_gradient([&](const torch::Tensor& z) { return dense_loss_rows(z, t, c); }, z0, describe(c) + " dense");
      check_gradient([&](const torch::Tensor& z) { return sparse_loss_rows(z, st.ids, st.logprobs, st.tail, c); },
                     z0, describe(c) + " sparse");
      check_gradient([&](const torch::Tensor& z) { return sparse_loss_rows(z, st0.ids, st0.logprobs, st0.tail, c); },
                     z0, describe(c) + " sparse, zero tail");
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Chunked over rows on a tiny model: same loss, same parameter gradients as one unchunked pass.

namespace {

ModelHParams tiny_hparams(bool tied, int64_t n_embd = 32) {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = 100;
  hp.n_embd = n_embd;
  hp.n_layer = 2;
  hp.n_head = 4;
  hp.n_head_kv = 2;
  hp.head_dim = n_embd / 4;
  hp.n_ff = 64;
  hp.max_position = 64;
  hp.tie_embeddings = tied;
  return hp;
}

struct Grads {
  double loss = 0;
  int64_t agree = 0;
  std::vector<torch::Tensor> g;
};

Grads collect(CausalLMImpl& m, double loss, int64_t agree) {
  Grads out{loss, agree, {}};
  for (auto& p : m.parameters()) {
    out.g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
    p.mutable_grad() = torch::Tensor();
  }
  return out;
}

}  // namespace

TEST(Losses, ChunkedMatchesUnchunked) {
  const int64_t B = 3, T = 9, N = B * T;
  const double scale = 0.37;
  auto gen = at::detail::createCPUGenerator(11);
  auto tokens = torch::randint(0, 100, {B, T}, gen, torch::kInt64);
  auto targets = torch::randint(0, 100, {N}, gen, torch::kInt64);

  LlamaModel teacher(tiny_hparams(/*tied=*/true, /*n_embd=*/48));
  teacher->init_weights(12, 0.3);
  torch::Tensor t_hidden, t_logits;
  {
    torch::NoGradGuard no_grad;
    t_hidden = teacher->forward_hidden(tokens).reshape({N, -1});
    t_logits = teacher->lm_logits(t_hidden);
  }
  auto t_logprobs_full = t_logits.log_softmax(1);
  auto [topk_lp, topk_ids] = t_logprobs_full.topk(6, 1);
  auto tail = (1 - topk_lp.exp().sum(1)).clamp_min(0);

  for (bool tied : {true, false}) {
    LlamaModel student(tiny_hparams(tied));
    student->init_weights(13, 0.3);
    struct Case {
      LossConfig cfg;
      bool dense;
    };
    std::vector<Case> cases = {{config(LossKind::ForwardKL, 1.0), false},
                               {config(LossKind::JSD, 2.0, 0.3), false},
                               {config(LossKind::ReverseKL, 0.8), true},
                               {config(LossKind::TVD, 1.5), true},
                               {config(LossKind::CE, 1.0), false}};
    for (const auto& cs : cases) {
      const auto& cfg = cs.cfg;
      const std::string what = describe(cfg) + (cs.dense ? " dense" : " sparse") + (tied ? " tied" : " untied");
      TeacherSignal sig;
      sig.targets = targets;
      if (cs.dense) {
        sig.teacher_hidden = t_hidden;
        sig.teacher = teacher.get();
      } else {
        sig.topk_ids = topk_ids;
        sig.topk_logprobs = topk_lp;
        sig.tail_mass = tail;
      }
      // Unchunked reference: [N, V] logits, the public per-row losses, autograd through all.
      Grads ref;
      {
        auto hidden = student->forward_hidden(tokens).reshape({N, -1});
        auto logits = student->lm_logits(hidden);
        torch::Tensor rows, top1;
        if (cfg.kind == LossKind::CE) {
          rows = ce_loss_rows(logits, targets), top1 = targets;
        } else if (cs.dense) {
          rows = dense_loss_rows(logits, t_logits, cfg), top1 = t_logits.argmax(1);
        } else {
          rows = sparse_loss_rows(logits, topk_ids, topk_lp, tail, cfg), top1 = topk_ids.select(1, 0);
        }
        (rows.sum() * scale).backward();
        ref = collect(*student, rows.sum().item<double>(), logits.argmax(1).eq(top1).sum().item<int64_t>());
      }
      ASSERT_GT(ref.loss, 0.0) << what;
      for (int64_t chunk : {int64_t(1), int64_t(7), N, N + 5}) {
        auto hidden = student->forward_hidden(tokens).reshape({N, -1});
        auto r = chunked_loss_backward(*student, hidden, sig, cfg, scale, chunk);
        EXPECT_EQ(r.rows, N);
        auto got = collect(*student, r.loss_sum, r.agree);
        EXPECT_NEAR(got.loss, ref.loss, 1e-4 * std::fabs(ref.loss)) << what << " chunk " << chunk;
        EXPECT_EQ(got.agree, ref.agree) << what << " chunk " << chunk;
        ASSERT_EQ(got.g.size(), ref.g.size());
        for (size_t i = 0; i < got.g.size(); ++i) {
          const double tol = 1e-4 * ref.g[i].abs().max().item<double>() + 1e-7;
          EXPECT_LE((got.g[i] - ref.g[i]).abs().max().item<double>(), tol) << what << " chunk " << chunk << " param " << i;
        }
        // Evaluation: the same numbers, no gradients anywhere.
        torch::Tensor h_eval;
        {
          torch::NoGradGuard no_grad;
          h_eval = student->forward_hidden(tokens).reshape({N, -1});
        }
        auto e = chunked_loss_eval(*student, h_eval, sig, cfg, chunk);
        EXPECT_NEAR(e.loss_sum, ref.loss, 1e-4 * std::fabs(ref.loss)) << what;
        EXPECT_EQ(e.agree, ref.agree) << what;
        for (auto& p : student->parameters()) EXPECT_FALSE(p.grad().defined()) << what;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Bad input

TEST(Losses, BadConfigIsAnError) {
  expect_error([] { config(LossKind::ForwardKL, 0.0).validate(); }, "temperature");
  expect_error([] { config(LossKind::ForwardKL, -1.0).validate(); }, "temperature");
  expect_error([] { config(LossKind::ForwardKL, std::nan("")).validate(); }, "temperature");
  expect_error([] { config(LossKind::JSD, 1.0, -0.1).validate(); }, "beta");
  expect_error([] { config(LossKind::JSD, 1.0, 1.1).validate(); }, "beta");
  expect_error([] { config(LossKind::JSD, 1.0, std::nan("")).validate(); }, "beta");
  expect_error([] { config(LossKind::SkewKL, 1.0, 0.5, 1.0).validate(); }, "alpha");
  expect_error([] { config(LossKind::SkewKL, 1.0, 0.5, -0.01).validate(); }, "alpha");
  expect_error([] { loss_kind_from_name("kld"); }, "jsd");
  EXPECT_NO_THROW(config(LossKind::JSD, 0.1, 0.0, 0.0).validate());
  EXPECT_NO_THROW(config(LossKind::JSD, 5.0, 1.0, 0.99).validate());

  for (auto k : {LossKind::CE, LossKind::ForwardKL, LossKind::ReverseKL, LossKind::JSD, LossKind::SkewKL,
                 LossKind::SkewReverseKL, LossKind::TVD})
    EXPECT_EQ(loss_kind_from_name(loss_kind_name(k)), k);
  EXPECT_EQ(loss_kind_from_name("sft"), LossKind::CE);
  EXPECT_EQ(loss_kind_from_name("forward_kl"), LossKind::ForwardKL);
  EXPECT_EQ(loss_kind_from_name("reverse_kl"), LossKind::ReverseKL);
  EXPECT_EQ(loss_kind_from_name("tv"), LossKind::TVD);

  // A bad config reaches the loss functions as an error too, not a NaN.
  auto z = torch::randn({2, 10});
  auto ids = torch::tensor({int64_t(0), int64_t(1), int64_t(2), int64_t(3)}).view({2, 2});
  auto lp = torch::full({2, 2}, -1.0f), tail = torch::full({2}, 0.2f);
  expect_error([&] { sparse_loss_rows(z, ids, lp, tail, config(LossKind::ForwardKL, 0.0)); }, "temperature");
  expect_error([&] { dense_loss_rows(z, z, config(LossKind::JSD, 1.0, 2.0)); }, "beta");
}

TEST(Losses, BadSignalIsAnError) {
  auto z = torch::randn({2, 10});
  auto lp = torch::full({2, 2}, -1.0f), tail = torch::full({2}, 0.2f);
  auto cfg = config(LossKind::ForwardKL, 1.0);
  auto out_of_vocab = torch::tensor({int64_t(0), int64_t(1), int64_t(2), int64_t(10)}).view({2, 2});
  expect_error([&] { sparse_loss_rows(z, out_of_vocab, lp, tail, cfg); }, "vocabulary");
  auto ids = torch::tensor({int64_t(0), int64_t(1), int64_t(2), int64_t(3)}).view({2, 2});
  expect_error([&] { sparse_loss_rows(z, ids, torch::full({2, 3}, -1.0f), tail, cfg); }, "topk_logprobs");
  expect_error([&] { sparse_loss_rows(z, ids, lp, torch::full({3}, 0.2f), cfg); }, "tail_mass");
  expect_error([&] { dense_loss_rows(z, torch::randn({2, 11}), cfg); }, "teacher logits");
  expect_error([&] { ce_loss_rows(z, torch::tensor({int64_t(3), int64_t(12)})); }, "vocabulary");

  LlamaModel student(tiny_hparams(true));
  student->init_weights(1);
  TeacherSignal sig;
  sig.targets = torch::zeros({5}, torch::kInt64);
  expect_error([&] { chunked_loss_eval(*student, torch::zeros({5, 31}), sig, cfg); }, "n_embd");
  expect_error([&] { chunked_loss_eval(*student, torch::zeros({5, 32}), sig, cfg); }, "topk_ids");
  expect_error([&] { chunked_loss_eval(*student, torch::zeros({5, 32}), sig, config(LossKind::CE, 1.0), 0); },
               "chunk_rows");
}

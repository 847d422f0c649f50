// Tests for src/retort/distill/adamw: AdamW and gradient clipping against an independent
// float64 recomputation written with plain loops from the published formula
// (Loshchilov & Hutter, as torch.optim.AdamW implements it).
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <random>

#include "retort/distill/adamw.h"
#include "retort/io/safetensors.h"
#include "retort/util/error.h"

namespace fs = std::filesystem;
using namespace retort;

namespace {

// The reference: one parameter as plain doubles.
struct RefParam {
  std::vector<double> p, m, v;
  bool decay;
};

void ref_step(RefParam& r, const std::vector<double>& g, int t, double lr, double b1, double b2, double eps,
              double wd) {
  const double bc1 = 1 - std::pow(b1, t), bc2 = 1 - std::pow(b2, t);
  for (size_t i = 0; i < r.p.size(); ++i) {
    if (r.decay) r.p[i] *= 1 - lr * wd;
    r.m[i] = b1 * r.m[i] + (1 - b1) * g[i];
    r.v[i] = b2 * r.v[i] + (1 - b2) * g[i] * g[i];
    const double mhat = r.m[i] / bc1, vhat = r.v[i] / bc2;
    r.p[i] -= lr * mhat / (std::sqrt(vhat) + eps);
  }
}

std::vector<double> to_vec(const torch::Tensor& t) {
  auto c = t.to(torch::kFloat64).contiguous();
  return std::vector<double>(c.data_ptr<double>(), c.data_ptr<double>() + c.numel());
}

}  // namespace

TEST(AdamW, MatchesFloat64ReferenceWithDecayOnlyOnMatrices) {
  torch::manual_seed(7);
  auto w = torch::randn({5, 3}).requires_grad_(true);  // decays
  auto b = torch::randn({4}).requires_grad_(true);     // 1-D: no decay
  const double b1 = 0.9, b2 = 0.95, eps = 1e-8, wd = 0.1;
  AdamW opt({{"w", w}, {"b", b}}, AdamWConfig{b1, b2, eps, wd});
  EXPECT_TRUE(opt.params()[0].decay);
  EXPECT_FALSE(opt.params()[1].decay);

  RefParam rw{to_vec(w), std::vector<double>(15, 0), std::vector<double>(15, 0), true};
  RefParam rb{to_vec(b), std::vector<double>(4, 0), std::vector<double>(4, 0), false};
  std::mt19937 gen(3);
  std::normal_distribution<float> nd(0, 1);
  for (int t = 1; t <= 20; ++t) {
    const double lr = 1e-2 * (1 + 0.1 * t);  // changing lr, as under a schedule
    // Gradients of very different scales, some exactly zero.
    auto gw = torch::empty({5, 3}), gb = torch::empty({4});
    for (int i = 0; i < 15; ++i) gw.data_ptr<float>()[i] = (i % 7 == 0) ? 0.f : nd(gen) * (t % 3 == 0 ? 100.f : 0.01f);
    for (int i = 0; i < 4; ++i) gb.data_ptr<float>()[i] = nd(gen);
    w.mutable_grad() = gw.clone();
    b.mutable_grad() = gb.clone();
    opt.step(lr);
    ref_step(rw, to_vec(gw), t, lr, b1, b2, eps, wd);
    ref_step(rb, to_vec(gb), t, lr, b1, b2, eps, wd);
  }
  EXPECT_EQ(opt.steps(), 20);
  auto pw = to_vec(w), pb = to_vec(b), mw = to_vec(opt.params()[0].m), vw = to_vec(opt.params()[0].v);
  for (size_t i = 0; i < pw.size(); ++i) {
    EXPECT_NEAR(pw[i], rw.p[i], 1e-5 * (1 + std::abs(rw.p[i]))) << "w[" << i << "]";
    EXPECT_NEAR(mw[i], rw.m[i], 1e-5 * (1 + std::abs(rw.m[i])));
    EXPECT_NEAR(vw[i], rw.v[i], 1e-4 * std::abs(rw.v[i]) + 1e-9);
  }
  for (size_t i = 0; i < pb.size(); ++i) EXPECT_NEAR(pb[i], rb.p[i], 1e-5 * (1 + std::abs(rb.p[i]))) << "b[" << i << "]";
}

TEST(AdamW, FirstStepMovesEachCoordinateByLr) {
  // With m̂ = g and v̂ = g², the first step is lr · sign(g) (eps aside): a sanity anchor.
  auto p = torch::zeros({3}).requires_grad_(true);
  AdamW opt({{"p", p}}, AdamWConfig{});
  p.mutable_grad() = torch::tensor({2.0f, -0.5f, 1e-3f});
  opt.step(0.1);
  EXPECT_NEAR(p[0].item<double>(), -0.1, 1e-6);
  EXPECT_NEAR(p[1].item<double>(), 0.1, 1e-6);
  EXPECT_NEAR(p[2].item<double>(), -0.1, 1e-5);
}

TEST(AdamW, ParamsWithoutGradAreUntouched) {
  auto a = torch::ones({2, 2}).requires_grad_(true), c = torch::ones({2, 2}).requires_grad_(true);
  AdamW opt({{"a", a}, {"c", c}}, AdamWConfig{0.9, 0.95, 1e-8, 0.5});
  a.mutable_grad() = torch::ones({2, 2});
  opt.step(0.1);
  EXPECT_TRUE(torch::equal(c, torch::ones({2, 2})));  // no grad: no decay, no update
  EXPECT_FALSE(torch::equal(a, torch::ones({2, 2})));
  opt.zero_grad();
  EXPECT_FALSE(a.grad().defined());
}

TEST(AdamW, SaveLoadContinuesBitwise) {
  torch::manual_seed(11);
  auto init = torch::randn({4, 6});
  auto grads = torch::randn({6, 4, 6});
  auto run = [&](bool reload_at_3, const std::string& path) {
    auto p = init.clone().requires_grad_(true);
    auto opt = std::make_unique<AdamW>(std::vector<std::pair<std::string, torch::Tensor>>{{"p", p}},
                                       AdamWConfig{0.9, 0.95, 1e-8, 0.1});
    for (int t = 0; t < 6; ++t) {
      if (reload_at_3 && t == 3) {
        opt->save(path);
        auto saved = p.detach().clone();
        p = saved.clone().requires_grad_(true);  // a fresh process: new tensors
        opt = std::make_unique<AdamW>(std::vector<std::pair<std::string, torch::Tensor>>{{"p", p}},
                                      AdamWConfig{0.9, 0.95, 1e-8, 0.1});
        opt->load(path);
        EXPECT_EQ(opt->steps(), 3);
      }
      p.mutable_grad() = grads[t].clone();
      opt->step(1e-2);
    }
    return p.detach().clone();
  };
  const auto path = (fs::temp_directory_path() / ("retort_adamw_" + std::to_string(::getpid()) + ".safetensors")).string();
  auto straight = run(false, path);
  auto resumed = run(true, path);
  EXPECT_TRUE(torch::equal(straight, resumed));
  fs::remove(path);
}

TEST(AdamW, LoadRejectsAnotherModelsState) {
  const auto path = (fs::temp_directory_path() / ("retort_adamw_bad_" + std::to_string(::getpid()) + ".safetensors")).string();
  auto p = torch::zeros({2, 3}).requires_grad_(true);
  AdamW opt({{"p", p}}, AdamWConfig{});
  opt.save(path);
  auto q = torch::zeros({3, 3}).requires_grad_(true);
  AdamW other({{"p", q}}, AdamWConfig{});
  try {
    other.load(path);
    ADD_FAILURE() << "expected retort::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("shape"), std::string::npos) << e.what();
  }
  auto r = torch::zeros({2, 3}).requires_grad_(true);
  AdamW renamed({{"r", r}}, AdamWConfig{});
  EXPECT_THROW(renamed.load(path), Error);
  fs::remove(path);
}

TEST(ClipGradNorm, GlobalNormAndScaling) {
  auto a = torch::zeros({2}).requires_grad_(true), b = torch::zeros({1}).requires_grad_(true);
  AdamW opt({{"a", a}, {"b", b}}, AdamWConfig{});
  a.mutable_grad() = torch::tensor({3.0f, 0.0f});
  b.mutable_grad() = torch::tensor({4.0f});
  EXPECT_NEAR(clip_grad_norm(opt.params(), 0), 5.0, 1e-6);  // 0 = no clipping
  EXPECT_NEAR(b.grad()[0].item<double>(), 4.0, 0);
  EXPECT_NEAR(clip_grad_norm(opt.params(), 1.0), 5.0, 1e-6);
  EXPECT_NEAR(a.grad()[0].item<double>(), 3.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(b.grad()[0].item<double>(), 4.0 / (5.0 + 1e-6), 1e-6);
  EXPECT_NEAR(clip_grad_norm(opt.params(), 10.0), 1.0, 1e-5);  // under the limit: unchanged
  EXPECT_NEAR(b.grad()[0].item<double>(), 4.0 / (5.0 + 1e-6), 1e-6);
}

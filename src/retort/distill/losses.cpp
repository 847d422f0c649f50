// retort/distill/losses.cpp — knowledge-distillation losses; see losses.h for the signal
// layouts and shared/REFERENCES.md "Knowledge distillation losses" for the sources.
//
// How the numbers are made. Every loss here is a divergence D(p̃, q̃) between a teacher
// distribution p̃ and a student distribution q̃ over a set of J outcomes per row:
//   dense:  J = V, the vocabulary;  sparse: J = k + 1, the teacher's top-k ids and one tail bucket.
// Both are held as log-probabilities lp, lq [N, J]. For each kind we write D and its
// derivative g = ∂D/∂lq (teacher fixed) in closed form, and map g back to the student logits z
// through lq = log_softmax(z/τ) (collapsed onto the outcomes when sparse):
//   dense:   ∂D/∂u_v = g_v − q_v·G,                        u = z/τ, G = Σ_j g_j
//   sparse:  ∂D/∂u_v = g_i − q_i·G               v = id_i ∈ K
//            ∂D/∂u_v = q_v·(g_tail/q_tail − G)   v ∉ K  (q_tail = Σ_{v∉K} q_v)
// so the gradient of a [chunk, V] block is one softmax-sized buffer, written in place, instead
// of the chain of [chunk, V] temporaries autograd would keep (the fused approach of Liger's
// cross-entropy). The public *_loss_rows functions wrap this in a custom autograd Function;
// chunked_loss_backward feeds the gradient straight into the output head's backward.
//
// Zeros and infinities. Log-probabilities are clamped below at kLogFloor = −1e4, far under
// where exp() underflows to exactly 0 (≈ −745 in float64), so the clamp changes no nonzero
// probability and every term x·(log x − log y) with x = 0 is 0·finite = 0, never −inf·0 = NaN.
// The student's tail bucket sum is taken over the vocabulary with K masked out (not as
// 1 − Σ_K q, which cancels to noise when the student is confident).
#include "retort/distill/losses.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "retort/model/causal_lm.h"
#include "retort/util/error.h"

namespace retort {

namespace {

// Below any log-probability a finite logit can produce; exp(kLogFloor) == 0 in float32/64.
constexpr double kLogFloor = -1e4;
// The stored teacher tail mass is 1 − Σ top-k in float32, noise below ~1e-7; a stored 0 means
// "tiny", not "impossible". It is floored here so that reverse-direction terms (rkl, srkl,
// jsd near β = 1), which divide by the teacher's mass, stay finite: log(q_tail / 1e-8) ≤ 18.5.
constexpr double kTeacherTailFloor = 1e-8;

// Per-row divergence D [N] and g = ∂D/∂lq [N, J] for log-probabilities lp, lq [N, J] (both
// clamped at kLogFloor, both normalized over J). Computed in lq's dtype, no autograd.
struct DivergenceRows {
  torch::Tensor d, g;
};

DivergenceRows divergence(LossKind kind, const torch::Tensor& lp, const torch::Tensor& lq, double beta,
                          double alpha, bool want_grad) {
  // The ends of JSD(β) and skew α = 0 are the plain KLs (see below); map them first.
  if (kind == LossKind::JSD && beta == 0.0) kind = LossKind::ForwardKL;
  if (kind == LossKind::JSD && beta == 1.0) kind = LossKind::ReverseKL;
  if (kind == LossKind::SkewKL && alpha == 0.0) kind = LossKind::ForwardKL;
  if (kind == LossKind::SkewReverseKL && alpha == 0.0) kind = LossKind::ReverseKL;

  DivergenceRows out;
  switch (kind) {
    case LossKind::CE:
    case LossKind::ForwardKL: {
      // fkl: KL(p ‖ q) = Σ_j p_j (log p_j − log q_j);   g_j = −p_j
      // (ce is fkl against a one-hot p: −log q(y).)
      auto p = lp.exp();
      out.d = (p * (lp - lq)).sum(1);
      if (want_grad) out.g = p.neg_();
      break;
    }
    case LossKind::ReverseKL: {
      // rkl: KL(q ‖ p) = Σ_j q_j (log q_j − log p_j);   g_j = q_j (log q_j − log p_j + 1)
      auto q = lq.exp();
      auto r = lq - lp;
      out.d = (q * r).sum(1);
      if (want_grad) out.g = r.add_(1.0).mul_(q);
      break;
    }
    case LossKind::JSD: {
      // Generalized JSD (GKD, TRL), 0 < β < 1:
      //   D = β KL(p ‖ m) + (1−β) KL(q ‖ m),   m = β p + (1−β) q
      //   g_j = (1−β) q_j (log q_j − log m_j)   (the ∂m terms cancel: Σ (βp + (1−β)q)/m = 1 per j)
      // The ends follow TRL's convention: D vanishes like β·KL(p‖q) as β → 0 and like
      // (1−β)·KL(q‖p) as β → 1, and at the ends we take those limits divided by the vanishing
      // factor: β = 0 is forward KL(p ‖ q), β = 1 is reverse KL(q ‖ p) (mapped above). So
      // JSD(β) is discontinuous at the ends by design; β = 0 or 1 never silently gives 0.
      auto lm = torch::logaddexp(lp + std::log(beta), lq + std::log1p(-beta));
      auto p = lp.exp(), q = lq.exp();
      auto rq = lq - lm;
      out.d = beta * (p * (lp - lm)).sum(1) + (1.0 - beta) * (q * rq).sum(1);
      if (want_grad) out.g = rq.mul_(q).mul_(1.0 - beta);
      break;
    }
    case LossKind::SkewKL: {
      // skew forward KL (DistiLLM), 0 < α < 1 (α = 0 is fkl, mapped above):
      //   D = KL(p ‖ m) = Σ p (log p − log m),   m = α p + (1−α) q
      //   g_j = −(1−α) p_j q_j / m_j
      auto lm = torch::logaddexp(lp + std::log(alpha), lq + std::log1p(-alpha));
      out.d = (lp.exp() * (lp - lm)).sum(1);
      if (want_grad) out.g = (lp + lq - lm).exp_().mul_(-(1.0 - alpha));
      break;
    }
    case LossKind::SkewReverseKL: {
      // skew reverse KL, 0 < α < 1 (α = 0 is rkl, mapped above):
      //   D = KL(q ‖ m) = Σ q (log q − log m),   m = α q + (1−α) p
      //   g_j = q_j (log q_j − log m_j + 1 − α q_j / m_j)
      auto lm = torch::logaddexp(lq + std::log(alpha), lp + std::log1p(-alpha));
      auto q = lq.exp();
      auto r = lq - lm;
      out.d = (q * r).sum(1);
      if (want_grad) {
        auto q_over_m = r.exp();  // exp(lq − lm) = q/m
        out.g = r.add_(1.0).sub_(q_over_m.mul_(alpha)).mul_(q);
      }
      break;
    }
    case LossKind::TVD: {
      // total variation: D = ½ Σ |p − q|;   g_j = ½ sign(q_j − p_j) q_j   (subgradient 0 at ties)
      auto q = lq.exp();
      auto diff = q - lp.exp();
      out.d = diff.abs().sum(1).mul_(0.5);
      if (want_grad) out.g = diff.sign_().mul_(q).mul_(0.5);
      break;
    }
  }
  return out;
}

// Loss rows and (optionally) their gradient w.r.t. the logits, before any outer scale.
struct RowsAndGrad {
  torch::Tensor loss;    // [N]
  torch::Tensor grad;    // [N, V] = ∂ loss_n / ∂ z_n (undefined unless asked)
  torch::Tensor argmax;  // [N] int64, argmax of the student logits
};

double divergence_factor(const LossConfig& cfg) {
  return cfg.t2_scale ? cfg.temperature * cfg.temperature : 1.0;
}

// Sparse signal. z [N, V] logits (no autograd), ids [N, k] (distinct per row), teacher log-probs
// tlp [N, k] at τ = 1, tail [N] teacher tail mass. With `bucket` false (k ≥ V, or ce) there
// is no tail outcome: J = k and tail is ignored.
RowsAndGrad sparse_rows(const torch::Tensor& z, const torch::Tensor& ids, const torch::Tensor& tlp,
                        const torch::Tensor& tail, LossKind kind, double tau, double beta, double alpha,
                        double factor, bool want_grad) {
  torch::NoGradGuard no_grad;
  const int64_t V = z.size(1), k = ids.size(1);
  const bool bucket = kind != LossKind::CE && k < V;
  const auto opts = z.options();

  // Teacher p̃ at τ: top-k re-tempered relative to each other, the tail bucket as one
  // pseudo-token of log-mass log(tail)/τ, renormalized over the J outcomes:
  //   lp = a − logsumexp(a),  a = [l_1 … l_k, log max(tail, floor)] / τ
  auto a = tlp.to(opts);
  if (bucket) {
    auto t = tail.to(opts).clamp_min(kTeacherTailFloor).log_().unsqueeze(1);
    a = torch::cat({a, t}, 1);
  }
  if (tau != 1.0) a = a / tau;
  auto lp = (a - a.logsumexp(1, true)).clamp_min_(kLogFloor);

  // Student q̃ at τ from one buffer e = exp((z − max z)/τ) [N, V]:
  //   S = Σ_v e_v,  log q_i = (z_i − max)/τ − log S,  log q_tail = log Σ_{v∉K} e_v − log S
  auto [zmax, argmax] = z.max(1, true);
  auto e = z - zmax;
  if (tau != 1.0) e.div_(tau);
  e.exp_();
  auto zk = z.gather(1, ids);
  auto lqk = (zk - zmax) / tau;
  torch::Tensor S, Sx;  // [N, 1]
  if (bucket) {
    auto SK = e.gather(1, ids).sum(1, true);
    e.scatter_(1, ids, 0.0);
    Sx = e.sum(1, true);
    S = Sx + SK;
  } else {
    S = e.sum(1, true);
  }
  auto logS = S.log();
  lqk.sub_(logS);
  auto lq = bucket ? torch::cat({lqk, Sx.log() - logS}, 1) : lqk;
  lq.clamp_min_(kLogFloor);

  if (kind == LossKind::CE) lp.zero_();  // one-hot teacher on the target: p = 1, log p = 0
  auto div = divergence(kind, lp, lq, beta, alpha, want_grad);
  RowsAndGrad out;
  out.loss = div.d.mul_(factor);
  out.argmax = argmax.squeeze(1);
  if (!want_grad) return out;

  // ∂/∂z = (factor/τ)·∂D/∂u; the chain rule of the header comment.
  const double f = factor / tau;
  auto G = div.g.sum(1, true);  // [N, 1]
  auto gk = div.g.narrow(1, 0, k);
  // Tail entries (or, without a bucket, every entry outside K): e_v/S · (g_tail/q_tail − G).
  auto coef = -G / S;
  if (bucket) {
    auto g_tail = div.g.narrow(1, k, 1);
    coef = coef + torch::where(Sx > 0, g_tail / Sx, torch::zeros_like(Sx));  // g_tail/q_tail/S
  }
  auto grad = e.mul_(coef.mul_(f));
  // Entries in K: g_i − q_i G.
  auto in_k = (gk - lqk.exp() * G).mul_(f);
  grad.scatter_(1, ids, in_k);
  out.grad = grad;
  return out;
}

// Dense signal. z, t [N, V] student and teacher logits (no autograd).
RowsAndGrad dense_rows(const torch::Tensor& z, const torch::Tensor& t, LossKind kind, double tau, double beta,
                       double alpha, double factor, bool want_grad) {
  torch::NoGradGuard no_grad;
  auto tz = t.to(z.options());
  auto lp = (tau == 1.0 ? tz : tz / tau).log_softmax(1).clamp_min_(kLogFloor);
  auto lq = (tau == 1.0 ? z : z / tau).log_softmax(1).clamp_min_(kLogFloor);
  auto div = divergence(kind, lp, lq, beta, alpha, want_grad);
  lp = torch::Tensor();  // free [N, V] before the gradient buffer
  RowsAndGrad out;
  out.loss = div.d.mul_(factor);
  out.argmax = z.argmax(1);
  if (!want_grad) return out;
  // ∂/∂z = (factor/τ)·(g − q·G)
  auto G = div.g.sum(1, true);
  auto grad = lq.exp_().mul_(G).neg_().add_(div.g).mul_(factor / tau);
  out.grad = grad;
  return out;
}

// Differentiable wrapper: the loss rows are the output; the gradient was computed with them.
struct PrecomputedGradRows : torch::autograd::Function<PrecomputedGradRows> {
  // z: the logits (the input that receives the gradient); rows [N]; grad [N, V] = ∂rows_n/∂z_n.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, const torch::Tensor& z,
                               const torch::Tensor& rows, const torch::Tensor& grad) {
    (void)z;
    ctx->save_for_backward({grad});
    return rows.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto grad = ctx->get_saved_variables()[0];
    return {grad * grad_out[0].unsqueeze(1), torch::Tensor(), torch::Tensor()};
  }
};

torch::Tensor attach(const torch::Tensor& z, RowsAndGrad&& r) {
  if (!r.grad.defined()) return r.loss;
  return PrecomputedGradRows::apply(z, r.loss, r.grad);
}

bool needs_grad(const torch::Tensor& z) { return torch::GradMode::is_enabled() && z.requires_grad(); }

void check_logits(const torch::Tensor& z, const char* what) {
  check(z.defined() && z.dim() == 2 && z.size(1) > 0, what, ": student logits must be [N, V], got ",
        z.defined() ? z.sizes() : torch::IntArrayRef{});
  check(z.is_floating_point(), what, ": student logits must be floating point, got ", z.scalar_type());
}

// ids [N, k] int64 in [0, V), logprobs [N, k], tail [N]; one cheap pass over [N, k].
void check_sparse(const torch::Tensor& ids, const torch::Tensor& lp, const torch::Tensor& tail, int64_t n,
                  int64_t V, const char* what) {
  check(ids.defined() && lp.defined() && tail.defined(), what,
        ": sparse teacher signal needs topk_ids, topk_logprobs and tail_mass");
  check(ids.dim() == 2 && ids.size(0) == n && ids.size(1) > 0, what, ": topk_ids must be [", n, ", k], got ",
        ids.sizes());
  check(ids.scalar_type() == torch::kInt64, what, ": topk_ids must be int64, got ", ids.scalar_type());
  check(lp.sizes() == ids.sizes(), what, ": topk_logprobs ", lp.sizes(), " must match topk_ids ", ids.sizes());
  check(tail.dim() == 1 && tail.size(0) == n, what, ": tail_mass must be [", n, "], got ", tail.sizes());
  if (n == 0) return;
  auto lo = ids.min().item<int64_t>(), hi = ids.max().item<int64_t>();
  check(lo >= 0 && hi < V, what, ": topk_ids range [", lo, ", ", hi, "] is outside the vocabulary [0, ", V,
        ") — the signal was captured with another vocabulary than the student's");
}

void check_targets(const torch::Tensor& y, int64_t n, int64_t V, const char* what) {
  check(y.defined() && y.dim() == 1 && y.size(0) == n, what, ": targets must be [", n, "], got ",
        y.defined() ? y.sizes() : torch::IntArrayRef{});
  check(y.scalar_type() == torch::kInt64, what, ": targets must be int64, got ", y.scalar_type());
  if (n == 0) return;
  auto lo = y.min().item<int64_t>(), hi = y.max().item<int64_t>();
  check(lo >= 0 && hi < V, what, ": target ids range [", lo, ", ", hi, "] is outside the vocabulary [0, ", V, ")");
}

RowsAndGrad ce_rows(const torch::Tensor& z, const torch::Tensor& y, bool want_grad) {
  auto ids = y.to(z.device()).view({-1, 1});
  auto zeros = torch::zeros({z.size(0), 1}, z.options());
  return sparse_rows(z, ids, zeros, zeros.view({-1}), LossKind::CE, 1.0, 0, 0, 1.0, want_grad);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Names and config

LossKind loss_kind_from_name(const std::string& name) {
  if (name == "ce" || name == "sft") return LossKind::CE;
  if (name == "fkl" || name == "forward_kl") return LossKind::ForwardKL;
  if (name == "rkl" || name == "reverse_kl") return LossKind::ReverseKL;
  if (name == "jsd") return LossKind::JSD;
  if (name == "skl") return LossKind::SkewKL;
  if (name == "srkl") return LossKind::SkewReverseKL;
  if (name == "tvd" || name == "tv") return LossKind::TVD;
  fail("unknown loss \"", name, "\"; use one of ce (sft), fkl (forward_kl), rkl (reverse_kl), jsd, skl, srkl, tvd (tv)");
}

std::string loss_kind_name(LossKind k) {
  switch (k) {
    case LossKind::CE: return "ce";
    case LossKind::ForwardKL: return "fkl";
    case LossKind::ReverseKL: return "rkl";
    case LossKind::JSD: return "jsd";
    case LossKind::SkewKL: return "skl";
    case LossKind::SkewReverseKL: return "srkl";
    case LossKind::TVD: return "tvd";
  }
  return "?";
}

void LossConfig::validate() const {
  const auto k = static_cast<int>(kind);
  check(k >= static_cast<int>(LossKind::CE) && k <= static_cast<int>(LossKind::TVD), "loss config: unknown loss kind ",
        k);
  check(std::isfinite(temperature) && temperature > 0, "loss config: temperature must be > 0, got ", temperature);
  check(beta >= 0.0 && beta <= 1.0, "loss config: jsd beta must be in [0, 1], got ", beta);
  check(alpha >= 0.0 && alpha < 1.0, "loss config: skew alpha must be in [0, 1), got ", alpha);
}

// ---------------------------------------------------------------------------------------------
// Per-row losses

torch::Tensor ce_loss_rows(const torch::Tensor& student_logits, const torch::Tensor& targets) {
  check_logits(student_logits, "ce loss");
  check_targets(targets, student_logits.size(0), student_logits.size(1), "ce loss");
  // ce: −log q(y) = logsumexp(z) − z_y;  ∂/∂z = softmax(z) − onehot(y)
  return attach(student_logits, ce_rows(student_logits.detach(), targets, needs_grad(student_logits)));
}

torch::Tensor sparse_loss_rows(const torch::Tensor& student_logits, const torch::Tensor& topk_ids,
                               const torch::Tensor& topk_logprobs, const torch::Tensor& tail_mass,
                               const LossConfig& cfg) {
  cfg.validate();
  check(cfg.kind != LossKind::CE, "sparse loss: ce takes the data tokens; use ce_loss_rows");
  check_logits(student_logits, "sparse loss");
  const auto& z = student_logits;
  check_sparse(topk_ids, topk_logprobs, tail_mass, z.size(0), z.size(1), "sparse loss");
  auto r = sparse_rows(z.detach(), topk_ids.to(z.device()), topk_logprobs, tail_mass, cfg.kind, cfg.temperature,
                       cfg.beta, cfg.alpha, divergence_factor(cfg), needs_grad(z));
  return attach(z, std::move(r));
}

torch::Tensor dense_loss_rows(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                              const LossConfig& cfg) {
  cfg.validate();
  check(cfg.kind != LossKind::CE, "dense loss: ce takes the data tokens; use ce_loss_rows");
  check_logits(student_logits, "dense loss");
  const auto& z = student_logits;
  check(teacher_logits.defined() && teacher_logits.sizes() == z.sizes(), "dense loss: teacher logits ",
        teacher_logits.defined() ? teacher_logits.sizes() : torch::IntArrayRef{}, " must match student logits ",
        z.sizes(), " (same vocabulary)");
  auto r = dense_rows(z.detach(), teacher_logits.detach(), cfg.kind, cfg.temperature, cfg.beta, cfg.alpha,
                      divergence_factor(cfg), needs_grad(z));
  return attach(z, std::move(r));
}

// ---------------------------------------------------------------------------------------------
// Chunked over rows

namespace {

ChunkedLossResult chunked(CausalLMImpl& student, const torch::Tensor& hidden, const TeacherSignal& signal,
                          const LossConfig& cfg, double scale, int64_t chunk_rows, bool backward) {
  cfg.validate();
  const char* what = backward ? "chunked loss" : "chunked loss eval";
  check(chunk_rows > 0, what, ": chunk_rows must be > 0, got ", chunk_rows);
  check(hidden.defined() && hidden.dim() == 2, what, ": student hidden states must be [N, d], got ",
        hidden.defined() ? hidden.sizes() : torch::IntArrayRef{});
  const int64_t N = hidden.size(0), V = student.hparams().n_vocab;
  const auto dev = hidden.device();
  check(hidden.size(1) == student.hparams().n_embd, what, ": hidden size ", hidden.size(1),
        " differs from the student's n_embd ", student.hparams().n_embd);
  check_targets(signal.targets, N, V, what);
  const bool ce = cfg.kind == LossKind::CE;
  const bool dense = !ce && signal.dense();
  if (dense) {
    check(signal.teacher != nullptr, what, ": dense teacher signal needs the teacher model");
    check(signal.teacher_hidden.dim() == 2 && signal.teacher_hidden.size(0) == N, what,
          ": teacher hidden states must be [", N, ", d], got ", signal.teacher_hidden.sizes());
    check(signal.teacher->hparams().n_vocab == V, what, ": teacher vocabulary ", signal.teacher->hparams().n_vocab,
          " differs from the student's ", V, "; distill across tokenizers with ce on teacher text");
  } else if (!ce) {
    check_sparse(signal.topk_ids, signal.topk_logprobs, signal.tail_mass, N, V, what);
  }
  const double factor = divergence_factor(cfg);

  ChunkedLossResult res;
  res.rows = N;
  if (N == 0) return res;

  auto h_all = hidden.detach();
  torch::Tensor grad_hidden = backward ? torch::empty_like(h_all) : torch::Tensor();  // [N, d]
  auto loss_acc = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat64).device(dev));
  auto agree_acc = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt64).device(dev));
  auto targets = signal.targets.to(dev);
  torch::Tensor ids, tlp, tail;
  if (!ce && !dense) {
    ids = signal.topk_ids.to(dev);
    tlp = signal.topk_logprobs.to(dev);
    tail = signal.tail_mass.to(dev);
  }

  for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
    const int64_t n = std::min(chunk_rows, N - r0);
    // A leaf per chunk: the head's backward fills its .grad, which goes into grad_hidden.
    auto hc = h_all.narrow(0, r0, n).detach();
    if (backward) hc.requires_grad_(true);
    torch::Tensor logits;  // [n, V]
    {
      torch::AutoGradMode grad_mode(backward);
      logits = student.lm_logits(hc);
    }
    auto z = logits.detach();
    RowsAndGrad r;
    torch::Tensor top1;  // [n] the teacher's choice for the agreement count
    if (ce) {
      top1 = targets.narrow(0, r0, n);
      r = ce_rows(z, top1, backward);
    } else if (dense) {
      torch::Tensor t;
      {
        torch::NoGradGuard no_grad;
        t = signal.teacher->lm_logits(signal.teacher_hidden.narrow(0, r0, n).to(dev));
      }
      top1 = t.argmax(1);
      r = dense_rows(z, t, cfg.kind, cfg.temperature, cfg.beta, cfg.alpha, factor, backward);
    } else {
      auto idc = ids.narrow(0, r0, n);
      top1 = idc.select(1, 0);
      r = sparse_rows(z, idc, tlp.narrow(0, r0, n), tail.narrow(0, r0, n), cfg.kind, cfg.temperature, cfg.beta,
                      cfg.alpha, factor, backward);
    }
    loss_acc += r.loss.sum().to(torch::kFloat64);
    agree_acc += r.argmax.eq(top1).sum();
    if (backward) {
      // d(scale · Σ loss)/d logits, into the head weights and hc.grad.
      logits.backward(r.grad.mul_(scale));
      r = RowsAndGrad();
      logits = torch::Tensor();
      grad_hidden.narrow(0, r0, n).copy_(hc.grad());
    }
  }
  res.loss_sum = loss_acc.item<double>();
  res.agree = agree_acc.item<int64_t>();
  if (backward && hidden.requires_grad()) hidden.backward(grad_hidden);
  return res;
}

}  // namespace

ChunkedLossResult chunked_loss_backward(CausalLMImpl& student, const torch::Tensor& hidden,
                                        const TeacherSignal& signal, const LossConfig& cfg, double scale,
                                        int64_t chunk_rows) {
  return chunked(student, hidden, signal, cfg, scale, chunk_rows, /*backward=*/true);
}

ChunkedLossResult chunked_loss_eval(CausalLMImpl& student, const torch::Tensor& hidden,
                                    const TeacherSignal& signal, const LossConfig& cfg, int64_t chunk_rows) {
  torch::NoGradGuard no_grad;
  return chunked(student, hidden, signal, cfg, 1.0, chunk_rows, /*backward=*/false);
}

}  // namespace retort

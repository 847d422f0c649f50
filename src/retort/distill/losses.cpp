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
// Across tokenizers: ULD (Boizard et al.) with GOLD's span merging and hybrid loss (TRL)
//
// Notation. Teacher rows j predict its tokens t_j, student rows j its tokens s_j. The teacher at
// τ_t comes from the sparse signal renormalized over its k + 1 known outcomes (top-k, and the tail
// as one pseudo-token, as in sparse_rows):
//   a_j = [l_j1 … l_jk, log tail_j] / τ_t,   Z_j = logsumexp(a_j)
//   p_ji = exp(l_ji/τ_t − Z_j),   p_j,tail = exp(log tail_j/τ_t − Z_j),   p_j(t_j) = exp(λ_j/τ_t − Z_j)
// with λ_j = token_logprob (at τ_t = 1 this only removes float32 rounding of Σ = 1). The
// student: q_j = softmax(z_j / τ_s) over its V_s tokens.
//
// Span merging (GOLD). A span pairs teacher rows [t0, t1) and student rows [s0, s1) that cover the
// same bytes, whose text has probability Π p_j(t_j) under the teacher and Π q_j(s_j) under the
// student. Its distribution is one row's distribution scaled by the probabilities of the other
// rows' own tokens (chain rule; unnormalized, as in TRL):
//   First:  P = p_t0 · Π_{t0<j<t1} p_j(t_j)         Q = q_s0 · Π_{s0<j<s1} q_j(s_j)
//   Last:   P = p_{t1−1} · Π_{t0≤j<t1−1} p_j(t_j)   Q = q_{s1−1} · Π_{s0≤j<s1−1} q_j(s_j)
// P has k entries and a tail P_tail, Q has V_s entries; a one-token side is its row unchanged.
//
// ULD. The paper's loss is Σ_r |P_(r) − Q_(r)| over both vectors sorted descending and zero-padded
// to equal length: the Wasserstein-1 distance between them with uniform cost, in closed form. The
// teacher's top-k are the first k of its sorted vector (every tail token is ≤ the k-th), but its
// ranks after k are unknown, so both sorted vectors are collapsed after rank k:
//   L_uld = Σ_{r=1..k} |P_(r) − Q_(r)| + |P_tail − Σ_{r>k} Q_(r)|
// This is the full ULD when the tail is empty, and a lower bound on it for every way the tail
// could be spread (triangle inequality), as the (k+1)-outcome divergences of sparse_rows are.
// Σ_{r>k} Q_(r) is summed over the entries outside the top k, not taken as a difference.
//
// Hybrid (GOLD's uld_use_hybrid_loss). Matched entries: the teacher's top-k tokens (of the span's
// base row) whose bytes the student's vocabulary has, at student ids m_i (a student id claimed
// twice in a row counts for the earlier entry only). With TRL's floor P'_i = max(P_i, 1e-8),
// Q'_i = max(Q_{m_i}, 1e-8) and μ_i = β P'_i + (1−β) Q'_i:
//   L_m = Σ_{i matched} β P'_i log(P'_i/μ_i) + (1−β) Q'_i log(Q'_i/μ_i)
//         (β = 0: Σ P' log(P'/Q');  β = 1: Σ Q' log(Q'/P'), TRL's ends)
//   L_u = L_uld between the k_u unmatched teacher entries with P_tail and Q with the matched ids
//         removed: ranks ≤ k_u compared, the student's later ranks collapsed against P_tail
//   L   = w_m L_m + w_u L_u
//
// Where this differs from TRL's ULDLoss (trl/experimental/gold/gold_trainer.py):
// - TRL has the teacher's dense distribution and sorts whole vocabularies; the stored signal has
//   the top k, hence the collapse after rank k above.
// - TRL's hybrid matches every token of the shared vocabulary by its vocabulary string; here the
//   matched set is the teacher's top-k tokens found in the student's vocabulary by bytes (so
//   "Ġa" and "▁a" match); shared tokens outside the top k lie inside the tail and are compared on
//   the sorted side. TRL's adaptive weights w_m = shared / V_t are left to the caller.
// - The rows here are the store's layout, row j predicting token j, so both merge strategies
//   multiply probabilities of the tokens their rows predict. TRL's "observed" slices logits at the
//   answer positions, where row j predicts token j + 1 (its "bayesian" is shifted to row j → j).
// - Scalars are multiplied as sums of log-probabilities, without TRL's 1e-8 floor.
// - Losses are per span (Σ over entries); TRL divides each sequence's sum by its number of spans
//   and averages over the batch, which the caller does with these rows.

namespace {

constexpr double kXTokProbFloor = 1e-8;  // TRL's floor inside the hybrid JSD's logs

void check_xtok(const torch::Tensor& z, const torch::Tensor* ids, const XTokTeacher& t, const std::vector<TokenSpan>& spans,
                const XTokConfig& cfg, const char* what) {
  cfg.validate();
  check_logits(z, what);
  const int64_t N = z.size(0), V = z.size(1);
  check(t.token_logprob.defined() && t.topk_logprobs.defined() && t.tail_mass.defined(), what,
        ": the teacher signal needs token_logprob, topk_logprobs and tail_mass");
  check(t.topk_logprobs.dim() == 2 && t.topk_logprobs.size(1) > 0, what, ": topk_logprobs must be [T, k], got ",
        t.topk_logprobs.sizes());
  const int64_t T = t.topk_logprobs.size(0), k = t.topk_logprobs.size(1);
  check(t.token_logprob.dim() == 1 && t.token_logprob.size(0) == T, what, ": token_logprob must be [", T, "], got ",
        t.token_logprob.sizes());
  check(t.tail_mass.dim() == 1 && t.tail_mass.size(0) == T, what, ": tail_mass must be [", T, "], got ",
        t.tail_mass.sizes());
  if (cfg.hybrid) {
    const auto& m = t.topk_student_ids;
    check(m.defined() && m.dim() == 2 && m.size(0) == T && m.size(1) == k, what,
          ": hybrid loss needs topk_student_ids [", T, ", ", k, "], got ", m.defined() ? m.sizes() : torch::IntArrayRef{});
    check(m.scalar_type() == torch::kInt64, what, ": topk_student_ids must be int64, got ", m.scalar_type());
    if (T > 0) {
      auto lo = m.min().item<int64_t>(), hi = m.max().item<int64_t>();
      check(lo >= -1 && hi < V, what, ": topk_student_ids range [", lo, ", ", hi, "] is outside [-1, ", V,
            ") (student ids, −1 for none): map the teacher's ids with map_vocab_by_bytes(teacher, student)");
    }
  }
  if (ids) check_targets(*ids, N, V, what);
  for (size_t i = 0; i < spans.size(); ++i) {
    const auto& s = spans[i];
    check(0 <= s.t0 && s.t0 < s.t1 && s.t1 <= T && 0 <= s.s0 && s.s0 < s.s1 && s.s1 <= N, what, ": span ", i,
          " (teacher [", s.t0, ", ", s.t1, "), student [", s.s0, ", ", s.s1, ")) is empty or outside the ", T,
          " teacher and ", N, " student rows");
  }
}

// Per-span losses; the formulas are in the comment above. `ids` may be null when every span has
// one student row (no student scalars to multiply in).
torch::Tensor xtok_rows(const torch::Tensor& z, const torch::Tensor* ids, const XTokTeacher& teacher,
                        const std::vector<TokenSpan>& spans, const XTokConfig& cfg) {
  const int64_t S = int64_t(spans.size()), V = z.size(1), k = teacher.topk_logprobs.size(1);
  if (S == 0) return z.narrow(0, 0, 0).sum(1);  // [0], still on the graph
  const bool first = cfg.merge == SpanMerge::First;
  const auto dev = z.device();
  const auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  const auto i64 = torch::TensorOptions().dtype(torch::kInt64);

  // Base rows and the (row, span) pairs whose own-token probabilities scale each span.
  std::vector<int64_t> bt(static_cast<size_t>(S)), bs(static_cast<size_t>(S)), t_rows, t_span, s_rows, s_span;
  for (int64_t i = 0; i < S; ++i) {
    const auto& sp = spans[size_t(i)];
    bt[size_t(i)] = first ? sp.t0 : sp.t1 - 1;
    bs[size_t(i)] = first ? sp.s0 : sp.s1 - 1;
    for (int64_t j = sp.t0; j < sp.t1; ++j)
      if (j != bt[size_t(i)]) t_rows.push_back(j), t_span.push_back(i);
    for (int64_t j = sp.s0; j < sp.s1; ++j)
      if (j != bs[size_t(i)]) s_rows.push_back(j), s_span.push_back(i);
  }
  auto index = [&](const std::vector<int64_t>& v) { return torch::tensor(v, i64); };

  // Teacher (float64 on the CPU, no autograd): log p at τ_t, then the span's P [S, k] and P_tail [S].
  torch::Tensor P, P_tail;
  {
    torch::NoGradGuard no_grad;
    const double tau = cfg.teacher_temperature;
    auto l = teacher.topk_logprobs.detach().to(torch::kCPU, torch::kFloat64);
    auto lt = teacher.tail_mass.detach().to(torch::kCPU, torch::kFloat64).clamp_min(0.0).log();  // log 0 = −inf: no tail
    auto a = torch::cat({l, lt.unsqueeze(1)}, 1).div_(tau);
    auto Z = a.logsumexp(1);  // [T]
    auto own = teacher.token_logprob.detach().to(torch::kCPU, torch::kFloat64) / tau - Z;
    auto c = torch::zeros({S}, f64);
    if (!t_rows.empty()) c.index_add_(0, index(t_span), own.index_select(0, index(t_rows)));
    auto b = index(bt);
    P = (l / tau - Z.unsqueeze(1)).index_select(0, b).add_(c.unsqueeze(1)).exp_();
    P_tail = (lt / tau - Z).index_select(0, b).add_(c).exp_();
    P = P.to(z.options());
    P_tail = P_tail.to(z.options());
  }

  // Student (autograd): Q = exp(log_softmax(z_b/τ_s) + Σ log q_j(s_j)) [S, V].
  const double ts = cfg.student_temperature;
  auto lq = (z.index_select(0, index(bs).to(dev)) / ts).log_softmax(1);
  if (!s_rows.empty()) {
    auto rows = index(s_rows).to(dev);
    auto zr = z.index_select(0, rows) / ts;                                   // [R, V]
    auto own = zr.gather(1, ids->index_select(0, rows).view({-1, 1})).squeeze(1) - zr.logsumexp(1);
    auto c = torch::zeros({S}, z.options()).index_add(0, index(s_span).to(dev), own);
    lq = lq + c.unsqueeze(1);
  }
  auto Q = lq.exp();

  // Matched entries (hybrid): m [S, k] student ids of the base row's top-k, −1 unmatched, deduplicated.
  torch::Tensor matched, L_m;  // [S, k] bool, [S]
  auto Pu = P;
  auto Qu = Q;
  if (cfg.hybrid) {
    auto m = teacher.topk_student_ids.detach().to(torch::kCPU).index_select(0, index(bt)).contiguous();
    auto ma = m.accessor<int64_t, 2>();
    for (int64_t i = 0; i < S; ++i)
      for (int64_t r = 1; r < k; ++r)
        for (int64_t e = 0; e < r && ma[i][r] >= 0; ++e)
          if (ma[i][e] == ma[i][r]) ma[i][r] = -1;
    matched = m.ge(0).to(dev);
    auto mids = m.to(dev);
    const double beta = cfg.beta;
    auto Pm = P.clamp_min(kXTokProbFloor);
    auto Qm = Q.gather(1, mids.clamp_min(0)).clamp_min(kXTokProbFloor);
    torch::Tensor terms;
    if (beta == 0.0) {
      terms = Pm * (Pm.log() - Qm.log());
    } else if (beta == 1.0) {
      terms = Qm * (Qm.log() - Pm.log());
    } else {
      auto lmu = (beta * Pm + (1.0 - beta) * Qm).log();
      terms = beta * Pm * (Pm.log() - lmu) + (1.0 - beta) * Qm * (Qm.log() - lmu);
    }
    L_m = torch::where(matched, terms, torch::zeros_like(terms)).sum(1);
    // Remove the matched entries from both sides of the sorted comparison: teacher entries set to
    // 0 (sorted to the end, where they are padding), student ids multiplied by 0 (an extra column
    // V takes the writes of unmatched entries).
    Pu = torch::where(matched, torch::zeros_like(P), P);
    auto keep = torch::ones({S, V + 1}, z.options())
                    .scatter_(1, torch::where(matched, mids, torch::full_like(mids, V)), 0.0)
                    .narrow(1, 0, V);
    Qu = Q * keep;
  }

  // Sorted comparison of ranks r < k_u, the rest collapsed: L_u [S].
  auto ku = cfg.hybrid ? matched.logical_not().sum(1) : torch::full({S}, k, i64.device(dev));
  auto Ps = std::get<0>(Pu.sort(1, /*descending=*/true));  // [S, k]
  const int64_t kk = std::min(k, V);
  auto [vals, idx] = Qu.topk(kk, 1);  // [S, kk], descending
  auto in_rank = torch::arange(kk, i64.device(dev)).unsqueeze(0).lt(ku.unsqueeze(1));  // [S, kk]
  auto diff = (Ps.narrow(1, 0, kk) - vals).abs();
  auto L_u = torch::where(in_rank, diff, torch::zeros_like(diff)).sum(1);
  if (kk < k) {
    // The student has fewer than k tokens: its sorted vector is zero-padded, |P_(r) − 0| for r ≥ V.
    auto more = torch::arange(kk, k, i64.device(dev)).unsqueeze(0).lt(ku.unsqueeze(1));
    auto pr = Ps.narrow(1, kk, k - kk);
    L_u = L_u + torch::where(more, pr, torch::zeros_like(pr)).sum(1);
  }
  // Σ_{r ≥ k_u} Q_(r): the ranks < k_u zeroed in place of a subtraction.
  auto rest = Qu.scatter(1, idx, torch::where(in_rank, torch::zeros_like(vals), vals)).sum(1);
  L_u = L_u + (P_tail - rest).abs();

  if (!cfg.hybrid) return L_u;
  return cfg.matched_weight * L_m + cfg.unmatched_weight * L_u;
}

}  // namespace

void XTokConfig::validate() const {
  check(std::isfinite(student_temperature) && student_temperature > 0,
        "cross-tokenizer loss config: student_temperature must be > 0, got ", student_temperature);
  check(std::isfinite(teacher_temperature) && teacher_temperature > 0,
        "cross-tokenizer loss config: teacher_temperature must be > 0, got ", teacher_temperature);
  check(merge == SpanMerge::First || merge == SpanMerge::Last, "cross-tokenizer loss config: unknown merge ",
        static_cast<int>(merge));
  if (!hybrid) return;
  check(beta >= 0.0 && beta <= 1.0, "cross-tokenizer loss config: hybrid beta must be in [0, 1], got ", beta);
  check(std::isfinite(matched_weight) && matched_weight >= 0 && std::isfinite(unmatched_weight) &&
            unmatched_weight >= 0,
        "cross-tokenizer loss config: the hybrid loss needs matched_weight and unmatched_weight >= 0, got ",
        matched_weight, " and ", unmatched_weight,
        " (TRL's adaptive choice: matched = the share of teacher tokens whose bytes the student's vocabulary has, "
        "see map_vocab_by_bytes; unmatched = 1 - matched)");
}

torch::Tensor xtok_loss_spans(const torch::Tensor& student_logits, const torch::Tensor& student_ids,
                              const XTokTeacher& teacher, const std::vector<TokenSpan>& spans,
                              const XTokConfig& cfg) {
  check_xtok(student_logits, &student_ids, teacher, spans, cfg, "cross-tokenizer loss");
  auto ids = student_ids.to(student_logits.device());
  return xtok_rows(student_logits, &ids, teacher, spans, cfg);
}

torch::Tensor uld_loss_rows(const torch::Tensor& student_logits, const XTokTeacher& teacher, const XTokConfig& cfg) {
  const char* what = "uld loss";
  check_logits(student_logits, what);
  const int64_t N = student_logits.size(0);
  check(teacher.topk_logprobs.defined() && teacher.topk_logprobs.dim() == 2 && teacher.topk_logprobs.size(0) == N,
        what, ": the teacher signal must have the student's ", N, " rows (truncate both to the shorter), got ",
        teacher.topk_logprobs.defined() ? teacher.topk_logprobs.sizes() : torch::IntArrayRef{});
  std::vector<TokenSpan> spans(static_cast<size_t>(N));
  for (int64_t i = 0; i < N; ++i) spans[size_t(i)] = {i, i + 1, i, i + 1};
  check_xtok(student_logits, nullptr, teacher, spans, cfg, what);
  return xtok_rows(student_logits, nullptr, teacher, spans, cfg);
}

XTokLossResult xtok_loss_backward(CausalLMImpl& student, const torch::Tensor& hidden, const torch::Tensor& targets,
                                  const std::vector<XTokSequenceRows>& seqs, const XTokConfig& cfg, double ce_scale,
                                  double span_scale, bool backward) {
  const char* what = "cross-tokenizer loss";
  check(hidden.defined() && hidden.dim() == 2 && hidden.size(1) == student.hparams().n_embd, what,
        ": student hidden states must be [N, n_embd], got ", hidden.defined() ? hidden.sizes() : torch::IntArrayRef{});
  const int64_t N = hidden.size(0);
  check_targets(targets, N, student.hparams().n_vocab, what);
  XTokLossResult res;
  auto h_all = hidden.detach();
  torch::Tensor grad_hidden = backward ? torch::zeros_like(h_all) : torch::Tensor();
  auto tg = targets.to(hidden.device());
  for (const XTokSequenceRows& q : seqs) {
    check(q.row0 >= 0 && q.rows >= 0 && q.row0 + q.rows <= N, what, ": sequence rows [", q.row0, ", ", q.row0 + q.rows,
          ") outside the ", N, " rows");
    if (q.rows == 0) continue;
    auto hc = h_all.narrow(0, q.row0, q.rows).detach();
    if (backward) hc.requires_grad_(true);
    torch::AutoGradMode grad_mode(backward);
    auto logits = student.lm_logits(hc).to(torch::kFloat32);  // [rows, V]
    auto y = tg.narrow(0, q.row0, q.rows);
    auto ce = torch::nn::functional::cross_entropy(
        logits, y, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
    auto total = ce * ce_scale;
    res.ce_sum += ce.item<double>();
    res.rows += q.rows;
    res.agree += logits.argmax(1).eq(y).sum().item<int64_t>();
    if (q.teacher != nullptr && !q.spans.empty()) {
      check(span_scale == 0 || q.teacher->topk_logprobs.defined(), what, ": a sequence has spans but no teacher signal");
      auto l = xtok_loss_spans(logits, y, *q.teacher, q.spans, cfg).sum();
      res.span_sum += l.item<double>();
      res.spans += int64_t(q.spans.size());
      if (span_scale != 0) total = total + l * span_scale;
    }
    if (backward) {
      total.backward();
      grad_hidden.narrow(0, q.row0, q.rows).copy_(hc.grad());
    }
  }
  if (backward && hidden.requires_grad()) hidden.backward(grad_hidden);
  return res;
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

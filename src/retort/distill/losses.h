// retort/distill/losses.h — knowledge-distillation losses (definitions in losses.cpp, next
// to each formula; see shared/REFERENCES.md "Knowledge distillation losses").
//
// Per scored position, with teacher distribution p and student distribution q over the
// vocabulary, both at temperature τ (p_τ ∝ p^{1/τ}, q_τ = softmax(z/τ)):
//   ce        −log q(y)                      y = the token in the data (SFT / sequence-level KD; τ unused)
//   fkl       KL(p_τ ‖ q_τ) = Σ p log(p/q)   forward KL (mode covering; Hinton et al.)
//   rkl       KL(q_τ ‖ p_τ)                  reverse KL (mode seeking; MiniLLM)
//   jsd       β KL(p ‖ m) + (1−β) KL(q ‖ m), m = β p + (1−β) q   generalized JSD (GKD; β=0.5 symmetric)
//   skl       KL(p ‖ α p + (1−α) q)          skew forward KL (DistiLLM)
//   srkl      KL(q ‖ α q + (1−α) p)          skew reverse KL
//   tvd       ½ Σ |p − q|                    total variation
// Every divergence is multiplied by τ² when LossConfig::t2_scale (Hinton), so gradients keep
// their size as τ changes.
//
// Sparse signal (what the store holds): the teacher's top-k ids with log-probs and the tail
// mass 1 − Σ top-k. Both distributions are collapsed onto k + 1 outcomes — the k ids and one
// "rest of the vocabulary" bucket (student: 1 − Σ_k q) — and the divergence is taken between
// those (k+1)-point distributions (exact when the tail is empty; a lower bound otherwise by
// the data-processing inequality). With τ ≠ 1 the teacher's top-k are re-tempered exactly
// relative to each other and the tail bucket keeps its log-mass divided by τ (one
// pseudo-token), the standard approximation. A stored tail below 1e-8 (float32 noise) counts
// as 1e-8, so reverse-direction terms stay finite; with k ≥ V there is no bucket at all.
//
// Dense signal: teacher logits over the whole vocabulary, from a teacher model running in
// the same process.
//
// Memory: chunked_loss_backward never materializes [N, V] logits; it runs the output head
// on chunk_rows hidden rows at a time, backpropagates each chunk into the head weights and
// into a gradient buffer for the hidden states, and frees the chunk (as Liger's fused
// linear cross-entropy does), so peak memory is O(chunk_rows · V), not O(N · V).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "retort/distill/xtok_align.h"

namespace retort {

class CausalLMImpl;

enum class LossKind { CE, ForwardKL, ReverseKL, JSD, SkewKL, SkewReverseKL, TVD };

// "ce" | "fkl" | "rkl" | "jsd" | "skl" | "srkl" | "tvd" (also "sft" for ce, "forward_kl",
// "reverse_kl", "tv"); unknown -> retort::Error listing the names.
LossKind loss_kind_from_name(const std::string& name);
std::string loss_kind_name(LossKind);

struct LossConfig {
  LossKind kind = LossKind::ForwardKL;
  double temperature = 1.0;  // τ > 0
  double beta = 0.5;         // JSD β in [0, 1]; the ends follow TRL: β = 0 is KL(p‖q), β = 1 is KL(q‖p) (losses.cpp)
  double alpha = 0.1;        // skew α in [0, 1)
  bool t2_scale = true;      // multiply divergences by τ²
  void validate() const;     // retort::Error naming the bad field
};

// Per-row losses [N] (float32, differentiable w.r.t. student_logits) for N rows.
//   student_logits [N, V] float32
//   targets        [N] int64          the data token (ce)
//   topk_ids       [N, k] int64       sparse teacher signal; topk_logprobs [N, k] float32 (τ = 1)
//   tail_mass      [N] float32        1 − Σ exp(topk_logprobs), clamped to ≥ 0
//   teacher_logits [N, V] float32     dense teacher signal
torch::Tensor ce_loss_rows(const torch::Tensor& student_logits, const torch::Tensor& targets);
torch::Tensor sparse_loss_rows(const torch::Tensor& student_logits, const torch::Tensor& topk_ids,
                               const torch::Tensor& topk_logprobs, const torch::Tensor& tail_mass,
                               const LossConfig& cfg);
torch::Tensor dense_loss_rows(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                              const LossConfig& cfg);

// ---------------------------------------------------------------------------------------------
// Across tokenizers: Universal Logit Distillation (ULD; Boizard et al., TMLR 2025) with GOLD's
// span merging and hybrid loss (TRL, trl/experimental/gold). Formulas and how they relate to
// TRL's are at xtok_loss_spans in losses.cpp. The teacher's vocabulary is not the student's, so
// the teacher enters only through probabilities (sorted, for ULD) and, for the hybrid loss,
// through the student ids of its top-k tokens whose bytes the student's vocabulary also has.

// Which row of a multi-token span carries the span's distribution (TRL uld_token_merge_strategy):
//   First ("observed"): the first row's distribution × the probabilities of the later tokens
//   Last ("bayesian"):  the last row's distribution × the probabilities of the earlier tokens
enum class SpanMerge { First, Last };

struct XTokConfig {
  double student_temperature = 1.0;  // τ_s > 0 (no τ² factor, as TRL)
  double teacher_temperature = 1.0;  // τ_t > 0
  SpanMerge merge = SpanMerge::First;
  bool hybrid = false;           // exact JSD on tokens both vocabularies have, sorted ULD on the rest
  double matched_weight = -1;    // hybrid: w_m ≥ 0 and w_u ≥ 0 must both be set; TRL's adaptive choice is
  double unmatched_weight = -1;  //   w_m = share of teacher tokens the student has (map_vocab_by_bytes), w_u = 1 − w_m
  double beta = 0.5;             // hybrid: JSD β on the matched tokens, ends as LossConfig::beta
  void validate() const;         // retort::Error naming the bad field
};

// The teacher's sparse signal on its own tokenization of the completion, T rows; row j is the
// teacher's prediction of its token j (the signal store's layout).
struct XTokTeacher {
  torch::Tensor token_logprob;     // [T] f32     log p_j(t_j), the teacher's own token (τ = 1)
  torch::Tensor topk_logprobs;     // [T, k] f32  top-k log-probs (τ = 1)
  torch::Tensor tail_mass;         // [T] f32     1 − Σ exp(topk_logprobs), ≥ 0
  torch::Tensor topk_student_ids;  // [T, k] int64, hybrid only: the student id with the same bytes as each
                                   //   top-k token, −1 where the student has none (map_vocab_by_bytes)
};

// Per-span losses [S] (differentiable w.r.t. student_logits), one per span of `spans` (from
// align_token_spans; any subset, e.g. without the EOS span).
//   student_logits [N_s, V_s] float   row j predicts the student's token j of the same completion
//   student_ids    [N_s] int64        the student's tokens (their probabilities merge spans)
torch::Tensor xtok_loss_spans(const torch::Tensor& student_logits, const torch::Tensor& student_ids,
                              const XTokTeacher& teacher, const std::vector<TokenSpan>& spans,
                              const XTokConfig& cfg);
// ULD as in the paper: row i of the student against row i of the teacher (T = N_s; the caller
// truncates both to the shorter length), no merging. [N_s].
torch::Tensor uld_loss_rows(const torch::Tensor& student_logits, const XTokTeacher& teacher, const XTokConfig& cfg);

// A micro-batch's cross-tokenizer loss, one sequence at a time through the output head (peak memory: one
// sequence's [rows, V] logits and the loss's temporaries), like chunked_loss_backward:
//   total = ce_scale · Σ_rows −log q(target) + span_scale · Σ_spans xtok_loss_spans
// hidden [N, d] are the student's final hidden states of the scored rows (part of its graph), targets [N] the
// student's tokens they predict; sequence i owns rows [row0, row0 + rows) and its spans count student rows
// from row0 (spans past the sequence's rows must be left out by the caller). With no teacher (text-only SFT),
// span_scale must be 0.
struct XTokSequenceRows {
  int64_t row0 = 0, rows = 0;
  const XTokTeacher* teacher = nullptr;  // null: this sequence has no teacher signal (ce only)
  std::vector<TokenSpan> spans;
};
struct XTokLossResult {
  double ce_sum = 0, span_sum = 0;  // before the scales
  int64_t rows = 0, spans = 0;
  int64_t agree = 0;                // rows where the student's argmax is the target
};
XTokLossResult xtok_loss_backward(CausalLMImpl& student, const torch::Tensor& hidden, const torch::Tensor& targets,
                                  const std::vector<XTokSequenceRows>& seqs, const XTokConfig& cfg, double ce_scale,
                                  double span_scale, bool backward = true);

// The teacher's signal for N scored rows: sparse (topk_* + tail_mass), or dense (the
// teacher's final hidden states; logits are made per chunk with teacher->lm_logits). `targets`
// is always set (ce needs it; the others report it for agreement metrics).
struct TeacherSignal {
  torch::Tensor targets;                 // [N] int64
  torch::Tensor topk_ids, topk_logprobs, tail_mass;  // [N,k] int64, [N,k] f32, [N] f32
  torch::Tensor teacher_hidden;          // [N, d_teacher] float32 (no grad)
  CausalLMImpl* teacher = nullptr;     // with teacher_hidden
  bool dense() const { return teacher_hidden.defined(); }
};

struct ChunkedLossResult {
  double loss_sum = 0;       // Σ per-row losses (before `scale`)
  int64_t rows = 0;
  int64_t agree = 0;         // rows where argmax student == teacher's top-1 (sparse: topk_ids[:,0]; dense: argmax; ce: target)
};

// hidden: [N, d] float32 final hidden states of the student (after the output norm), part of
// the student's autograd graph. Computes Σ_rows loss, and accumulates the gradient of
// scale · Σ_rows loss into the student's parameters (output head directly; everything below
// via hidden.backward). chunk_rows bounds the live [chunk_rows, V] logits.
ChunkedLossResult chunked_loss_backward(CausalLMImpl& student, const torch::Tensor& hidden,
                                        const TeacherSignal& signal, const LossConfig& cfg, double scale,
                                        int64_t chunk_rows = 256);
// Same numbers without gradients (evaluation).
ChunkedLossResult chunked_loss_eval(CausalLMImpl& student, const torch::Tensor& hidden,
                                    const TeacherSignal& signal, const LossConfig& cfg, int64_t chunk_rows = 256);

}  // namespace retort

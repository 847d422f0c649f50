// retort/distill/student.h — make a student: a smaller model of the teacher's family on the teacher's
// tokenizer, either fresh (random init, any family) or cut out of the teacher (Minitron-style prune,
// the Llama family).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "retort/model/hparams.h"
#include "retort/model/causal_lm.h"

namespace retort {

struct LoadedModel;

// The sizes a user chooses. 0 = keep the teacher's value.
struct StudentConfig {
  int64_t n_layer = 0, n_embd = 0, n_head = 0, n_head_kv = 0, n_ff = 0;
  std::string init = "prune";  // "prune" (from the teacher) | "random"
  // Which teacher layers a pruned student keeps (see prune_from_teacher): "spread" | "influence" | "block".
  std::string keep = "spread";
  uint64_t seed = 0;

  // {"layers","hidden","heads","kv_heads","ffn","init","seed"} or the string form
  // "layers=8,hidden=256,heads=4,kv_heads=2,ffn=768,init=prune". Unknown key / bad value ->
  // retort::Error naming it.
  static StudentConfig from_json(const nlohmann::json& j, const std::string& where);
  static StudentConfig parse(const std::string& spec);
  nlohmann::json to_json() const;
};

// The student's hyperparameters: the teacher's (arch, vocab, RoPE, norm eps, tying, bias) with
// the config's sizes. Gemma 3: local layers by the teacher's rule (every P-th layer global when the
// teacher's are so, else the teacher's types at evenly spread layers), and the query scale
// 1/sqrt(head_dim) when head_dim changes. Impossible sizes (heads not dividing hidden, kv_heads not dividing heads,
// larger than the teacher when init = prune, zero/negative) -> retort::Error naming the field
// and what would work.
ModelHParams student_hparams(const ModelHParams& teacher, const StudentConfig& cfg);

// A fresh student: init_weights(cfg.seed).
CausalLM make_random_student(const ModelHParams& hp, uint64_t seed);

// A student cut out of the teacher (Minitron-style, without the retraining search):
//  - width: run the teacher on `calibration` token rows ([B, T] int64) and rank hidden
//    channels by mean |activation| of the residual stream (Σ over layers), attention heads
//    by the mean norm of their output, FFN neurons by mean |silu(gate)·up|; keep the top ones
//    (indices kept in ascending order) and slice every weight accordingly;
//    RMSNorm weights keep their slice times sqrt(mean_kept E[x²] / mean_all E[x²]) measured
//    on the calibration rows, so each norm's output keeps the teacher's scale;
//  - depth: keep n_layer of the teacher's layers, chosen by `keep` (keep_layers in student.cpp):
//    "spread" evenly (first and last kept), "influence" the n that turn the residual stream most
//    (ShortGPT's block influence), "block" all but the contiguous block whose input and output
//    streams are closest (Gromov et al.); the angles are measured on the calibration rows.
//  - KV heads: keep groups whole; n_head_kv must divide the kept query heads.
// Deterministic for the same teacher, calibration and config. Returns float32 weights.
// Llama-family teachers only (other families: retort::Error suggesting init=random).
CausalLM prune_from_teacher(LoadedModel& teacher, const ModelHParams& student_hp,
                              const torch::Tensor& calibration, const std::string& keep = "spread");

}  // namespace retort

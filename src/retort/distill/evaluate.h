// retort/distill/evaluate.h — how close is a student to its teacher, on held-out teacher text.
//
// On the completion positions of a SignalStore (teacher text the student never trained on):
//   nll          mean −log q_student(token)            (perplexity = exp(nll))
//   teacher_nll  mean −log p_teacher(token)            (from the store: token_logprob)
//   top1_agree   fraction of positions where argmax q_student == the teacher's top-1
//   kl           mean KL(p_teacher ‖ q_student) on the stored top-k + tail bucket (see losses.h)
//   student_tail mean q_student mass outside the teacher's stored top-k; teacher_tail: the stored tail mass
//   kl_dense     with a teacher model: mean KL(p_teacher ‖ q_student) over the whole vocabulary, from the
//                teacher's own forward pass. By the chain rule kl_dense = kl + Σ p_tail·KL(p|tail ‖ q|tail)
//                (up to the stored signal's rounding), so kl_dense − kl is what the student gets wrong
//                *inside* the tail bucket — the part a sparse top-k signal cannot teach.
// plus, when asked, speed (tokens/s for prefill and batch-1 decode) and size (parameters, bytes).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace retort {

class CausalLMImpl;
class CachedLM;
class SignalStore;
class Tokenizer;
struct CheckpointInfo;
struct GenerationResult;

struct EvalMetrics {
  int64_t samples = 0, positions = 0;
  double nll = 0, ppl = 0, teacher_nll = 0, top1_agree = 0, kl = 0;
  double student_tail = 0, teacher_tail = 0;
  double kl_dense = -1;  // < 0: not measured (no teacher model given)
  nlohmann::json to_json() const;
};

// Teacher-forced pass of `model` over the store's samples (batched by length, no grad).
// max_samples = 0: all. The store's tokenizer hash must equal `tokenizer_hash` (retort::Error otherwise).
// `dense_teacher` (optional, same tokenizer and vocabulary size): also measure kl_dense.
EvalMetrics evaluate_on_store(CausalLMImpl& model, const SignalStore& store, const std::string& tokenizer_hash,
                              int64_t max_samples = 0, int64_t batch_tokens = 4096,
                              CausalLMImpl* dense_teacher = nullptr);

// The store's first `n` distinct prompts (token ids as captured: chat formatting included).
std::vector<std::vector<int32_t>> store_prompts(const SignalStore& store, int64_t n);

// A readable form of a formatted prompt: the last text segment between special tokens, without a
// leading role line ("user\n...") — the user's message for chat templates, the text for raw prompts.
std::string prompt_display(const Tokenizer& tok, const std::vector<int32_t>& ids);

// Greedy completions of already-formatted prompts (at most max_tokens each). `info` gives the
// tokenizer and end-of-turn ids: a student passes its teacher's. greedy_generate returns the whole
// results (tokens, finish reasons), greedy_replies their text.
std::vector<GenerationResult> greedy_generate(const CheckpointInfo& info, CachedLM& lm,
                                              const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens);
std::vector<std::string> greedy_replies(const CheckpointInfo& info, CachedLM& lm,
                                        const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens);

}  // namespace retort

// retort/distill/evaluate.h — how close is a student to its teacher, on held-out teacher text.
//
// On the completion positions of a SignalStore (teacher text the student never trained on):
//   nll          mean −log q_student(token)            (perplexity = exp(nll))
//   teacher_nll  mean −log p_teacher(token)            (from the store: token_logprob)
//   top1_agree   fraction of positions where argmax q_student == the teacher's top-1
//   kl           mean KL(p_teacher ‖ q_student) on the stored top-k + tail bucket (see losses.h)
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
  nlohmann::json to_json() const;
};

// Teacher-forced pass of `model` over the store's samples (batched by length, no grad).
// max_samples = 0: all. The store's tokenizer hash must equal `tokenizer_hash` (retort::Error otherwise).
EvalMetrics evaluate_on_store(CausalLMImpl& model, const SignalStore& store, const std::string& tokenizer_hash,
                              int64_t max_samples = 0, int64_t batch_tokens = 4096);

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

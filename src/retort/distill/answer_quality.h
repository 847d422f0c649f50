// retort/distill/answer_quality.h — how a model's own greedy answers read, set next to its teacher's.
//
// Teacher-forced metrics (evaluate.h) say how close a student is on the teacher's text; a user reads
// the student's own text. On held-out prompts, greedy (temperature 0) answers of at most max_tokens:
//   repeated_4gram   mean over answers of (4-grams that already occurred earlier in the same answer) /
//                    (4-grams in the answer); 0 for an answer under 4 tokens. "the sky, the sky, the sky"
//                    scores high, a fluent paragraph near 0.
//   stopped          share of answers that ended with an end-of-turn token (not cut at max_tokens)
//   mean_tokens      mean answer length in tokens (the end token included when generated)
//   teacher_nll      mean −log p_teacher(token | prompt, earlier answer tokens) over every answer token,
//                    the end token included: how plausible the teacher finds the text (the teacher's own
//                    greedy answers set the scale).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace retort {

class CausalLMImpl;
class CachedLM;
struct CheckpointInfo;

struct AnswerQuality {
  int64_t answers = 0, tokens = 0;
  double repeated_4gram = 0, stopped = 0, mean_tokens = 0;
  double teacher_nll = 0;  // NaN when no teacher scored the answers
  std::vector<std::vector<int32_t>> ids;  // each answer's tokens
  std::vector<std::string> texts;         // each answer's text
  nlohmann::json to_json() const;         // the numbers (not the answers)
};

// Share of the n-grams of `ids` that already occurred earlier in `ids` (0 when there are none).
double repeated_ngram_share(const std::vector<int32_t>& ids, int n);

// Greedy answers of `lm` to already-formatted prompts (`info` gives the tokenizer and end-of-turn ids:
// a student passes its teacher's), scored by `teacher` when it is not null (teacher-forced, no grad,
// batches of at most batch_tokens tokens).
AnswerQuality answer_quality(const CheckpointInfo& info, CachedLM& lm, const std::vector<std::vector<int32_t>>& prompts,
                             int64_t max_tokens, CausalLMImpl* teacher, int64_t batch_tokens = 4096);

// Sets q.teacher_nll: `teacher` scores the answers q holds to `prompts` (the ones answer_quality was
// given) — for a caller that keeps one model in memory at a time.
void score_answers(AnswerQuality& q, const std::vector<std::vector<int32_t>>& prompts, CausalLMImpl& teacher,
                   int64_t batch_tokens = 4096);

}  // namespace retort

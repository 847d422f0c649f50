// retort/distill/xtok_data.h — a teacher's text store (text_store.h) made ready for a student with its own
// tokenizer: the data of cross-tokenizer distillation (losses.h xtok_loss_spans) and of SFT on the teacher's
// text, and the held-out measures that compare students whatever their tokenizer.
//
// For each sample of the store:
//   prompt      the student's own encoding: its chat template for a chat prompt (the messages as sent to the
//               teacher), BOS + text for a raw one (prompt_file.h encode_prompt)
//   completion  the teacher's text encoded by the student's tokenizer (no special tokens), then the student's
//               end of answer (chat: end-of-turn; raw: EOS) when the teacher stopped (finish_reason "stop"):
//               the teacher's stop is a hard label, as in a signal store captured from an API
//   signal      (stores with logprobs) the teacher's rows — its own token's logprob, top-k logprobs, tail
//               mass 1 − Σ top-k — and the student id with the same bytes as each top-k token (−1 if none,
//               for the hybrid loss); spans pair teacher rows with the student's completion rows that cover
//               the same bytes (xtok_align.h). The end-of-answer row has no teacher row and is in no span.
// A sample is skipped, with its reason counted and kept, when the teacher's token bytes do not add up to the
// completion text, or when the student's tokenizer cannot represent the text (its tokens' bytes differ from
// it: an <unk>, a normalizer that rewrites characters).
//
// Held-out measure (evaluate_xtok): the student's NLL of the teacher's completions on its own tokenization,
// per byte of text (nats; bits = nats / ln 2), so students with different tokenizers compare; the end of
// answer is left out (it has no bytes). Beside it, the teacher's NLL per byte of its own samples (from the
// store's logprobs), and top-1 agreement where it is defined: on spans of one token on each side whose teacher
// top-1 token the student's vocabulary has, whether the student's argmax is that token.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/distill/xtok_align.h"

namespace retort {

class CausalLMImpl;
struct CheckpointInfo;
class SignalStore;
class TextStore;

struct XTokExample {
  int64_t sample_id = 0;
  std::vector<int64_t> ids;      // student tokens: prompt, completion (and end of answer)
  int64_t prompt_len = 0;
  int64_t completion_bytes = 0;  // bytes of the completion text
  bool stop_label = false;       // the last token is the student's end of answer
  // The teacher's signal: T rows of k (empty without logprobs).
  int64_t T = 0;
  std::vector<float> token_logprob;       // [T]
  std::vector<float> topk_logprobs;       // [T, k] (τ = 1)
  std::vector<float> tail_mass;           // [T]
  std::vector<int64_t> topk_student_ids;  // [T, k]
  std::vector<TokenSpan> spans;           // student rows counted from the first completion token
};

struct XTokData {
  std::string dir, identity;       // the store, and its identity + the student tokenizer's hash
  int64_t k = 0;                   // 0: text only (ce is the only loss)
  std::vector<XTokExample> examples;
  struct Skip {
    int64_t sample_id = 0;
    std::string where, reason;
  };
  std::vector<Skip> skipped;
  // Share of the teacher's top-k entries (over the whole store) whose bytes are a student token: the matched
  // weight of the hybrid loss when none is given (TRL's adaptive weight counts shared vocabulary instead; the
  // vocabulary of a teacher behind an API is unknown).
  double matched_share = 0;
  int64_t completion_bytes = 0, teacher_rows = 0;
  nlohmann::json summary() const;  // counts, skips by reason, matched share
};

// `student` needs its tokenizer (and a chat template when the store has chat prompts). retort::Error when
// nothing is left to train on, naming the store and the most common reason.
XTokData make_xtok_data(const TextStore& store, const CheckpointInfo& student);
// A signal store of a teacher with another tokenizer (a local capture, or one from an API with
// --teacher-tokenizer), read as text: ids to bytes through the teacher's tokenizer (the manifest's teacher, or
// its source's teacher_tokenizer; it must be here), prompts from the prompts file the manifest names (its
// sha256 must still match). The teacher's end-of-answer token at a completion's end becomes the student's own
// (a hard label); a special token among the top-k has no bytes and no student id (its probability still counts
// in the sorted comparison).
XTokData make_xtok_data(const SignalStore& store, const CheckpointInfo& student);

struct XTokEval {
  int64_t samples = 0, bytes = 0, tokens = 0;
  double nll_per_byte = 0;          // nats
  double teacher_nll_per_byte = 0;  // nats (stores with logprobs; else NaN)
  double top1_agree = 0;            // where defined (NaN where nowhere)
  int64_t agree_positions = 0;
  nlohmann::json to_json() const;
};

// The first `max_samples` examples (0 = all), teacher-forced in batches; no gradients.
XTokEval evaluate_xtok(CausalLMImpl& student, const XTokData& data, int64_t max_samples = 0, int64_t max_seq = 0);

}  // namespace retort

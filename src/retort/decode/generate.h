// retort/decode/generate.h — batched generation with continuous batching.
//
// Up to GenerateOptions::max_batch sequences share one KV cache (one slot each). New
// requests are prefilled together (right-padded rows, long prompts in chunks); then every
// step runs one forward_cached over all active sequences ([B, 1] tokens -> [B, V] logits)
// and samples each row on CPU (see sampling.h). A finished sequence frees its slot and the
// next queued request is prefilled into it.
//
// Determinism: request i's token at step s uses rng_uniform(seed_i, s) only, and on the float32 CPU
// kernel path a row's logits do not depend on the batch (cpu_kernels.h), so the same request yields the
// same tokens alone or in any batch, at any position. (bf16 batched paths can differ from single-row
// ones in the last bits; that can flip a choice only where two tokens are equally likely to ~1e-3.)
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "retort/decode/logits_processor.h"
#include "retort/decode/sampling.h"

namespace retort {

struct CheckpointInfo;
struct RuntimeLoaded;
class CachedLM;

struct GenerationRequest {
  std::vector<int32_t> prompt;  // already tokenized (chat formatting is the caller's job); not empty
  SamplingParams sampling;
  int64_t max_tokens = 256;     // >= 0; also capped by the model's context (finish_reason "length")
  // Generation ends when the decoded completion contains one of these; the text is cut at
  // the first occurrence (the stop string and anything after it are dropped; the token that
  // completed it stays in `tokens`). Streaming holds back text that could start a stop string.
  std::vector<std::string> stop;
  bool ignore_eos = false;      // keep going past EOS/EOG tokens (model.eos_ids)
  // EOS/EOG tokens are banned (logit -inf, a processing step: raw logprobs keep them) until this many
  // tokens are generated, so the completion runs on rather than ending early (transformers'
  // min_new_tokens). 0 = no minimum; capped by max_tokens.
  int64_t min_tokens = 0;
  int top_logprobs = 0;         // alternatives to report per token (raw and processed), 0 = none
  std::shared_ptr<LogitsProcessor> processor;  // may be null
  // BatchDecoder only: also return the prompt's embedding (GenerationResult::prompt_embedding), the
  // mean of its tokens' final hidden states, summed during prefill at no extra forward.
  bool want_prompt_embedding = false;
};

struct GenerationResult {
  // Generated tokens, including the EOS/EOG token that ended the sequence (its text is not
  // part of `text`).
  std::vector<GeneratedToken> tokens;
  std::string text;            // decoded completion (stop string removed), lossy UTF-8
  // "stop" (EOS or stop string) | "length" (max_tokens or context); from a BatchDecoder also
  // "cancelled" (cancel()) | "error" (sampling failed: `error` says why).
  std::string finish_reason;
  std::string error;
  int64_t prompt_tokens = 0;
  // [n_embd] mean over the prompt's tokens of their final hidden states (after the final norm), when
  // want_prompt_embedding and the model can give them (runtime models); empty otherwise.
  std::vector<float> prompt_embedding;
};

struct GenerateOptions {
  int64_t max_batch = 32;  // sequences decoded together; the rest queue (continuous batching)
  int64_t prefill_chunk = 512;  // prompt tokens per row per prefill forward (bounds activation memory)
  // Streaming: called after each token of request i with the newly completed UTF-8 text
  // (may be empty while a multi-byte character or a possible stop string is incomplete).
  // The pieces of a request concatenate to its final `text`.
  std::function<void(size_t request_index, const GeneratedToken&, const std::string& text_piece)> on_token;
};

// Runs every request to completion on `lm`; results[i] belongs to requests[i]. `model` gives the
// tokenizer (may be null: no text, no stop strings), the end-of-generation ids and the path for
// messages. Throws retort::Error for bad requests (empty prompt, token id out of range, prompt longer
// than the model's context, invalid sampling params) before any work starts.
std::vector<GenerationResult> generate(const CheckpointInfo& model, CachedLM& lm,
                                       const std::vector<GenerationRequest>& requests, const GenerateOptions& opts = {});
// A model loaded for inference without libtorch (runtime_model.h). (A libtorch LoadedModel: loader.h.)
std::vector<GenerationResult> generate(RuntimeLoaded& model, const std::vector<GenerationRequest>& requests,
                                       const GenerateOptions& opts = {});

}  // namespace retort

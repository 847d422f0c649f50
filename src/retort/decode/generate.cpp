// retort/decode/generate.cpp — offline generation: every request through one BatchDecoder.
#include "retort/decode/generate.h"

#include <algorithm>

#include "retort/decode/batch_decoder.h"
#include "retort/model/cpu_model.h"
#include "retort/model/runtime_model.h"
#include "retort/util/error.h"

namespace retort {

std::vector<GenerationResult> generate(const CheckpointInfo& model, CachedLM& lm,
                                       const std::vector<GenerationRequest>& requests, const GenerateOptions& opts) {
  check(opts.max_batch >= 1, "generate: max_batch must be at least 1, got ", opts.max_batch);
  check(opts.prefill_chunk >= 1, "generate: prefill_chunk must be at least 1, got ", opts.prefill_chunk);
  const int64_t max_pos = lm.hparams().max_position;
  // Checks that need no cache first (so a bad request fails before any memory is allocated), and the
  // cache's size: the most tokens any request writes (its prompt plus all generated tokens but the last).
  std::vector<GenerationResult> results(requests.size());
  int64_t max_len = 1, n_running = 0;
  for (size_t i = 0; i < requests.size(); ++i) {
    const GenerationRequest& r = requests[i];
    const int64_t n = static_cast<int64_t>(r.prompt.size());
    check(n > 0, "generate: request ", i, ": the prompt is empty; give at least one token (e.g. BOS)");
    check(max_pos <= 0 || n <= max_pos, "generate: request ", i, ": the prompt has ", n,
          " tokens but the model's context is ", max_pos, " tokens (", model.path,
          "); shorten the prompt by at least ", n - max_pos, " tokens");
    check(r.max_tokens >= 0, "generate: request ", i, ": max_tokens must be >= 0, got ", r.max_tokens);
    const int64_t limit = max_pos > 0 ? std::min(r.max_tokens, max_pos - n + 1) : r.max_tokens;
    max_len = std::max(max_len, n + std::max<int64_t>(limit, 1) - 1);
    if (limit > 0) ++n_running;
  }
  BatchDecoderOptions dopts;
  dopts.n_slots = std::max<int64_t>(1, std::min(opts.max_batch, n_running));
  dopts.max_len = max_len;
  dopts.prefill_chunk = opts.prefill_chunk;
  dopts.prefill_budget = std::max<int64_t>(opts.prefill_chunk, 512);
  BatchDecoder decoder(model, lm, dopts);
  for (size_t i = 0; i < requests.size(); ++i) {
    BatchDecoder::TokenFn on_token;
    if (opts.on_token)
      on_token = [&opts, i](const GeneratedToken& g, const std::string& piece) { opts.on_token(i, g, piece); };
    try {
      decoder.add(requests[i], std::move(on_token), [&results, i](GenerationResult&& r) { results[i] = std::move(r); });
    } catch (const Error& e) {
      fail("generate: request ", i, ": ", e.what());
    }
  }
  while (!decoder.idle()) decoder.step();
  for (size_t i = 0; i < results.size(); ++i)
    check(results[i].finish_reason != "error", "generate: request ", i, ": ", results[i].error);
  return results;
}

std::vector<GenerationResult> generate(RuntimeLoaded& model, const std::vector<GenerationRequest>& requests,
                                       const GenerateOptions& opts) {
  return generate(model, *model.model, requests, opts);
}

}  // namespace retort

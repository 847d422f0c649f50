// retort/decode/logits_processor.h — the per-sequence hook in the decode loop.
//
// Watermarks and antidistillation plug in here:
//   - KGW green list: process() adds δ to the logits of a keyed green list of the context.
//   - Gumbel-max / SynthID tournament: choose() replaces the draw with a keyed choice over
//     the final distribution.
//   - Antidistillation: process() adds (λ / 2ε)(logits_{θ+εg} − logits_{θ−εg}) from a proxy.
//
// Calls per generated token of one sequence, in order:
//   process(context, logits) once, then (if the sequence samples) choose(context, probs) once.
// `context` is the sequence's prompt followed by the tokens generated so far (not yet the
// token being chosen). generate() samples the rows of a batch in parallel, so process() and
// choose() may run at the same time on several threads for different sequences: a
// processor object shared by several requests must be safe for that (the watermark schemes
// keep no mutable per-call state: they are pure functions of key and context), and one
// that keeps per-sequence state needs one object per request. Calls for one sequence are
// never concurrent and come in step order.
#pragma once

#include <cstdint>
#include <span>

namespace retort {

class LogitsProcessor {
 public:
  virtual ~LogitsProcessor() = default;
  // logits: [n_vocab] float32 on CPU, modifiable in place (set -inf to ban a token).
  virtual void process(std::span<const int32_t> context, float* logits, int64_t n_vocab) = 0;
  // Optionally take over the choice. probs: [n_vocab], the final distribution the normal
  // sampler would use (after temperature/top-k/top-p/min-p, renormalised; 0 outside the
  // support; at temperature 0 it is softmax of the processed logits). Return -1 to let the
  // normal sampler (or argmax when greedy) choose.
  virtual int32_t choose(std::span<const int32_t> context, const float* probs, int64_t n_vocab) {
    (void)context, (void)probs, (void)n_vocab;
    return -1;
  }
};

}  // namespace retort

// retort/decode/logits_processor.h — the per-sequence hook in the decode loop.
//
// Watermarks and antidistillation plug in here:
//   - KGW green list: process() adds δ to the logits of a keyed green list of the context.
//   - Gumbel-max / SynthID tournament: choose() replaces the draw with a keyed choice over
//     the final distribution.
//   - Antidistillation (protect/antidistill.h): process() adds τ·(λ / 2ε)(logits_{θ+εg} − logits_{θ−εg})
//     from a proxy, so that after the temperature the logits are logits/τ + (λ / 2ε)(...).
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
#include <memory>
#include <span>
#include <utility>
#include <vector>

namespace retort {

class LogitsProcessor;

// Work that the processors of several sequences can do together: antidistillation runs its two proxies
// over all of a decode step's rows in one batched forward instead of one forward per row. Before it
// samples a step's rows, BatchDecoder asks each row's processor for its batched parts, groups them by
// BatchedWork object and calls prepare() once per group, on the decoding thread; each part's process()
// then finds its result ready. prepare() is only an optimisation: a part whose row it skipped (or that
// is used outside BatchDecoder) does the work alone in process(), with the same bits.
class BatchedWork {
 public:
  virtual ~BatchedWork() = default;
  // parts[i] (a processor that named this object) at contexts[i] (as process() will get it). Must not
  // throw for one bad row: it leaves that row to its own process(), which reports the error.
  virtual void prepare(std::span<LogitsProcessor* const> parts, std::span<const std::span<const int32_t>> contexts) = 0;
};
struct BatchedPart {
  BatchedWork* work;
  LogitsProcessor* part;
};

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
  // Appends this processor's parts whose process() work can be batched with other sequences'
  // (see BatchedWork; a chain appends its parts'). Default: none.
  virtual void batched_parts(std::vector<BatchedPart>& out) { (void)out; }
};

struct SamplingParams;

// Makes the processor of one request. A server shares one factory between all requests; make() may be
// called on several threads at once. A scheme without per-sequence state may return the same object
// every time; one with state (antidistillation's proxy KV caches) returns a fresh one. `sampling` is
// the request's settings (antidistillation scales its term by the temperature).
class LogitsProcessorFactory {
 public:
  virtual ~LogitsProcessorFactory() = default;
  virtual std::shared_ptr<LogitsProcessor> make(const SamplingParams& sampling) const = 0;
};

// Several processors on one sequence, e.g. antidistillation and a watermark: process() runs each in
// the order given (each sees the logits the previous one left); choose() asks each in order and the
// first that returns a token (>= 0) chooses. Null entries are skipped. Per-sequence state is the parts';
// a chain holding a stateful part is itself per request.
class ChainedProcessor : public LogitsProcessor {
 public:
  explicit ChainedProcessor(std::vector<std::shared_ptr<LogitsProcessor>> parts) : parts_(std::move(parts)) {}
  void process(std::span<const int32_t> context, float* logits, int64_t n_vocab) override {
    for (const auto& p : parts_)
      if (p) p->process(context, logits, n_vocab);
  }
  int32_t choose(std::span<const int32_t> context, const float* probs, int64_t n_vocab) override {
    for (const auto& p : parts_)
      if (p)
        if (int32_t t = p->choose(context, probs, n_vocab); t >= 0) return t;
    return -1;
  }
  void batched_parts(std::vector<BatchedPart>& out) override {
    for (const auto& p : parts_)
      if (p) p->batched_parts(out);
  }
  const std::vector<std::shared_ptr<LogitsProcessor>>& parts() const { return parts_; }

 private:
  std::vector<std::shared_ptr<LogitsProcessor>> parts_;
};

// The processor of a request from optional parts: null when none, the part itself when one, else a chain.
inline std::shared_ptr<LogitsProcessor> chain_processors(std::vector<std::shared_ptr<LogitsProcessor>> parts) {
  std::erase(parts, nullptr);
  if (parts.empty()) return nullptr;
  if (parts.size() == 1) return parts[0];
  return std::make_shared<ChainedProcessor>(std::move(parts));
}

}  // namespace retort

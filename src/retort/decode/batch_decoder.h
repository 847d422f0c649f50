// retort/decode/batch_decoder.h — continuous batching, one model step at a time.
//
// A BatchDecoder owns a KV cache of n_slots sequences of up to max_len tokens. Requests may be added at
// any time; each step() runs ONE forward pass over a mixed batch:
//   - every sequence that is generating contributes its last token (a row of 1 new token);
//   - sequences still reading their prompt contribute a chunk of it (a row of up to prefill_chunk
//     tokens), as many as fit the step's prefill token budget;
// then samples the next token of every row whose prompt is complete. So a new request is prefilled
// into a free slot while the others keep decoding, and a long prompt never stalls them for more than a
// chunk (chunked prefill, as vLLM and llama-server schedule). Rows are flattened by the model (no
// padding is computed), and the CPU kernels are batch-invariant, so a request yields the same tokens
// alone, in any batch, and whatever else shares its steps.
//
// Not thread-safe: one thread adds, cancels and steps (serve/engine.h wraps it in a scheduler thread;
// generate() runs it to completion). Callbacks run on that thread, inside step().
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "retort/decode/generate.h"

namespace retort {

class KvSlots;
class StreamDecoder;

struct BatchDecoderOptions {
  int64_t n_slots = 32;        // sequences decoded together; the rest wait in the queue
  int64_t max_len = 0;         // KV tokens per slot; 0 = the model's context (hparams.max_position)
  int64_t prefill_chunk = 512; // prompt tokens per row per step
  // Prompt tokens per step while other sequences are decoding (bounds their step latency); when nothing
  // decodes, a step takes up to kIdlePrefillBudget prompt tokens.
  int64_t prefill_budget = 512;
};

class BatchDecoder {
 public:
  // Called after each token with the newly completed UTF-8 text (may be empty while a multi-byte
  // character or a possible stop string is incomplete); the pieces concatenate to the final text.
  using TokenFn = std::function<void(const GeneratedToken&, const std::string& text_piece)>;
  // Called once when the request ends: finished ("stop" | "length") or cancelled ("cancelled").
  using DoneFn = std::function<void(GenerationResult&&)>;

  BatchDecoder(const CheckpointInfo& model, CachedLM& lm, const BatchDecoderOptions& opts);
  ~BatchDecoder();
  BatchDecoder(const BatchDecoder&) = delete;
  BatchDecoder& operator=(const BatchDecoder&) = delete;

  // retort::Error naming what is wrong with the request (prompt, max_tokens, sampling, ...). Reads only
  // what the constructor set: safe to call from other threads while another steps.
  void validate(const GenerationRequest& r) const;
  // Validates the request (retort::Error naming the field; nothing is queued then) and queues it.
  // Returns its id. A request whose token limit is 0 finishes at once (done is called before add returns).
  uint64_t add(GenerationRequest req, TokenFn on_token, DoneFn on_done);
  // Ends a queued or running request now: its slot is freed, done gets finish_reason "cancelled" and the
  // tokens so far. Unknown or finished ids are ignored.
  void cancel(uint64_t id);
  // One forward pass and the sampling after it (see above). No-op when idle().
  void step();

  bool idle() const { return active_.empty() && queue_.empty(); }
  size_t n_queued() const { return queue_.size(); }
  size_t n_running() const { return active_.size(); }
  int64_t n_slots() const { return n_slots_; }
  // Tokens a request may hold in its slot (prompt + generated - 1); prompt + max_tokens - 1 beyond it
  // is cut to finish_reason "length".
  int64_t slot_len() const { return max_len_; }
  // Tokens the last step() computed: decode rows and prompt tokens.
  int64_t last_step_decode_rows() const { return last_decode_rows_; }
  int64_t last_step_prefill_tokens() const { return last_prefill_tokens_; }

 private:
  struct Sequence;
  void admit();
  void advance_rows(const std::vector<Sequence*>& rows, const float* logits);
  void advance(Sequence& s, GeneratedToken g);
  void finish(Sequence& s, const char* reason);
  void retire_finished();

  const CheckpointInfo& m_;
  CachedLM& lm_;
  BatchDecoderOptions opts_;
  int64_t n_vocab_ = 0, n_slots_ = 0, max_len_ = 0;
  std::unique_ptr<KvSlots> cache_;
  std::vector<float> hidden_sums_;  // [B, E] scratch for prompt embeddings
  std::vector<int64_t> free_slots_;
  uint64_t next_id_ = 1;
  std::deque<std::unique_ptr<Sequence>> queue_;   // waiting for a slot, in arrival order
  std::deque<std::unique_ptr<Sequence>> active_;  // holding a slot: prefilling or generating
  std::vector<float> logits_;                     // [rows, V] of the last forward
  int64_t last_decode_rows_ = 0, last_prefill_tokens_ = 0;
};

}  // namespace retort

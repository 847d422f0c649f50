// retort/serve/engine.h — the online engine: one model, one scheduler thread, requests at any time.
//
// HTTP threads submit() requests and get their tokens back through callbacks; the scheduler thread
// owns a BatchDecoder (decode/batch_decoder.h) and steps it whenever there is work: each step decodes
// one token of every running sequence and prefills a chunk of new ones into free slots (continuous
// batching over time). Cancellation (a client went away) and per-request deadlines free the slot at
// the next step boundary. The queue is bounded: submit() refuses when it is full, so the server can
// answer 429 instead of letting latency grow without bound.
//
// Callbacks run on the scheduler thread between forward passes: they must be quick (hand the token to
// the HTTP thread and return) and must not call back into the engine.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "retort/decode/batch_decoder.h"

namespace retort {

struct EngineOptions {
  BatchDecoderOptions decoder;  // slots, context per slot, prefill chunking
  size_t max_queue = 256;       // requests waiting for a slot before submit() refuses
};

// What the scheduler did in one step, for metrics.
struct EngineStep {
  double seconds = 0;
  int64_t decode_rows = 0, prefill_tokens = 0;
};

class Engine {
 public:
  using Clock = std::chrono::steady_clock;
  Engine(const CheckpointInfo& model, CachedLM& lm, const EngineOptions& opts);
  ~Engine();  // shutdown(now) if still running
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // retort::Error naming what is wrong with the request (thread-safe; submit() calls it too).
  void validate(const GenerationRequest& req) const { decoder_.validate(req); }
  // Queues a request. Returns a ticket, or nullopt when the queue is full or the engine is shutting down
  // (the callbacks are then never called). Throws retort::Error for an invalid request. `deadline`: the
  // request is ended with finish_reason "timeout" (tokens so far kept) if still running then.
  // on_done is called exactly once for every accepted request.
  std::optional<uint64_t> submit(GenerationRequest req, BatchDecoder::TokenFn on_token, BatchDecoder::DoneFn on_done,
                                 std::optional<Clock::time_point> deadline = std::nullopt);
  // Ends the request at the next step boundary (finish_reason "cancelled"). Unknown/finished: ignored.
  void cancel(uint64_t ticket);
  // Stops accepting; running and queued requests go on until `deadline`, then are cancelled; returns
  // when the scheduler thread has ended (every on_done has been called).
  void shutdown(Clock::time_point deadline);

  size_t queued() const { return queued_.load(); }    // waiting for a slot (including not yet seen)
  size_t running() const { return running_.load(); }  // holding a slot
  int64_t n_slots() const { return decoder_.n_slots(); }
  int64_t slot_len() const { return decoder_.slot_len(); }
  bool accepting() const { return accepting_.load(); }
  // Called on the scheduler thread after every step (set before the first submit).
  std::function<void(const EngineStep&)> on_step;

 private:
  struct Pending {
    uint64_t ticket;
    GenerationRequest req;
    BatchDecoder::TokenFn on_token;
    BatchDecoder::DoneFn on_done;
    std::optional<Clock::time_point> deadline;
  };
  struct Running {
    uint64_t decoder_id;
    std::optional<Clock::time_point> deadline;
    bool timed_out = false;
    std::string failure;  // a step failed while it ran: it ends with finish_reason "error"
  };
  void loop();

  BatchDecoder decoder_;
  size_t max_queue_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<Pending> inbox_;           // guarded by mu_
  std::vector<uint64_t> cancels_;        // guarded by mu_
  std::optional<Clock::time_point> stop_at_;  // guarded by mu_: set by shutdown()
  std::unordered_map<uint64_t, Running> running_tickets_;  // scheduler thread only
  std::atomic<uint64_t> next_ticket_{1};
  std::atomic<size_t> queued_{0}, running_{0};
  std::atomic<bool> accepting_{true};
  std::thread thread_;
};

}  // namespace retort

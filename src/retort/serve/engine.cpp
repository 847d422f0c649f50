// retort/serve/engine.cpp — the scheduler thread around a BatchDecoder (see engine.h).
#include "retort/serve/engine.h"

#include <cstdio>

#include "retort/util/error.h"

namespace retort {

Engine::Engine(const CheckpointInfo& model, CachedLM& lm, const EngineOptions& opts)
    : decoder_(model, lm, opts.decoder), max_queue_(opts.max_queue) {
  thread_ = std::thread([this] { loop(); });
}

Engine::~Engine() {
  if (thread_.joinable()) shutdown(Clock::now());
}

std::optional<uint64_t> Engine::submit(GenerationRequest req, BatchDecoder::TokenFn on_token,
                                       BatchDecoder::DoneFn on_done, std::optional<Clock::time_point> deadline) {
  validate(req);
  std::lock_guard<std::mutex> lock(mu_);
  if (!accepting_.load() || queued_.load() >= max_queue_) return std::nullopt;
  const uint64_t ticket = next_ticket_++;
  inbox_.push_back({ticket, std::move(req), std::move(on_token), std::move(on_done), deadline});
  ++queued_;
  cv_.notify_one();
  return ticket;
}

void Engine::cancel(uint64_t ticket) {
  std::lock_guard<std::mutex> lock(mu_);
  cancels_.push_back(ticket);
  cv_.notify_one();
}

void Engine::shutdown(Clock::time_point deadline) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    accepting_ = false;
    stop_at_ = deadline;
    cv_.notify_one();
  }
  if (thread_.joinable()) thread_.join();
}

void Engine::loop() {
  for (;;) {
    std::vector<Pending> arrived;
    std::vector<uint64_t> cancelled;
    std::optional<Clock::time_point> stop_at;
    {
      std::unique_lock<std::mutex> lock(mu_);
      // Sleep until there is work; with requests running, wake for the nearest deadline too.
      auto has_work = [&] { return !inbox_.empty() || !cancels_.empty() || stop_at_ || !decoder_.idle(); };
      cv_.wait(lock, has_work);
      arrived.swap(inbox_);
      cancelled.swap(cancels_);
      stop_at = stop_at_;
    }
    for (Pending& p : arrived) {
      const uint64_t ticket = p.ticket;
      running_tickets_[ticket] = Running{0, p.deadline};
      // The decoder's done callback: mark timeouts, forget the ticket, then tell the caller.
      auto done = [this, ticket, on_done = std::move(p.on_done)](GenerationResult&& r) {
        auto it = running_tickets_.find(ticket);
        if (it != running_tickets_.end()) {
          if (it->second.timed_out) r.finish_reason = "timeout";
          if (!it->second.failure.empty()) {
            r.finish_reason = "error";
            r.error = it->second.failure;
          }
          running_tickets_.erase(it);
        }
        if (on_done) on_done(std::move(r));
      };
      try {
        const uint64_t id = decoder_.add(std::move(p.req), std::move(p.on_token), std::move(done));
        if (auto it = running_tickets_.find(ticket); it != running_tickets_.end()) it->second.decoder_id = id;
      } catch (const std::exception& e) {  // validated in submit(); only an internal error lands here
        running_tickets_.erase(ticket);
        GenerationResult r;
        r.finish_reason = "error";
        r.error = e.what();
        if (p.on_done) p.on_done(std::move(r));
      }
    }
    for (uint64_t t : cancelled)
      if (auto it = running_tickets_.find(t); it != running_tickets_.end()) decoder_.cancel(it->second.decoder_id);
    const auto now = Clock::now();
    std::vector<uint64_t> expired;
    for (auto& [t, r] : running_tickets_)
      if ((r.deadline && now >= *r.deadline) || (stop_at && now >= *stop_at)) {
        r.timed_out = r.deadline && now >= *r.deadline;
        expired.push_back(r.decoder_id);
      }
    for (uint64_t id : expired) decoder_.cancel(id);

    if (!decoder_.idle()) {
      const auto t0 = Clock::now();
      try {
        decoder_.step();
      } catch (const std::exception& e) {
        // A failed forward pass (out of memory, a corrupt weight block) ends every running request rather
        // than the process; their callers see finish_reason "error" and the server answers 500.
        std::fprintf(stderr, "engine: step failed, cancelling %zu running requests: %s\n", running_tickets_.size(),
                     e.what());
        std::vector<uint64_t> ids;
        for (auto& [t, r] : running_tickets_) {
          r.failure = std::string("the model step failed: ") + e.what();
          ids.push_back(r.decoder_id);
        }
        for (uint64_t id : ids) decoder_.cancel(id);
      }
      EngineStep st;
      st.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
      st.decode_rows = decoder_.last_step_decode_rows();
      st.prefill_tokens = decoder_.last_step_prefill_tokens();
      if (on_step) on_step(st);
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      queued_ = inbox_.size() + decoder_.n_queued();
      running_ = decoder_.n_running();
      if (stop_at_ && decoder_.idle() && inbox_.empty()) break;
    }
  }
}

}  // namespace retort

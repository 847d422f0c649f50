// retort/decode/generate.cpp — the continuous-batching decode loop.
#include "retort/decode/generate.h"

#include <algorithm>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>

#include "retort/model/cpu_model.h"
#include "retort/model/runtime_model.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/parallel.h"

namespace retort {

namespace {

// Most prompt tokens (rows × chunk length) one prefill forward handles; bounds the
// attention scores [rows, n_head, T, L] and MLP activations of a prefill.
constexpr int64_t kPrefillTokenBudget = 4096;

struct Sequence {
  size_t req = 0;                 // index into requests / results
  int64_t slot = 0;               // KV cache slot
  std::vector<int32_t> context;   // prompt + generated tokens
  int64_t prefilled = 0;          // prompt tokens already in the cache
  int64_t limit = 0;              // tokens to generate at most
  int64_t n_generated = 0;
  std::optional<StreamDecoder> decoder;
  std::string text;               // decoded completion so far
  size_t emitted = 0;             // bytes of `text` already passed to on_token
  bool done = false;
};

// Length of the longest suffix of `text` that is a proper prefix of some stop string:
// those bytes may still become a stop string, so streaming holds them back.
size_t stop_holdback(const std::string& text, const std::vector<std::string>& stop) {
  size_t best = 0;
  for (const std::string& s : stop) {
    for (size_t l = std::min(s.size() - 1, text.size()); l > best; --l)
      if (text.compare(text.size() - l, l, s, 0, l) == 0) {
        best = l;
        break;
      }
  }
  return best;
}

// Earliest occurrence of any stop string that ends after byte `from` of text (earlier
// occurrences were looked for at earlier steps); npos when none.
size_t find_stop(const std::string& text, size_t from, const std::vector<std::string>& stop) {
  size_t best = std::string::npos;
  for (const std::string& s : stop) {
    const size_t start = from >= s.size() ? from - s.size() + 1 : 0;
    const size_t pos = text.find(s, start);
    if (pos != std::string::npos && pos < best) best = pos;
  }
  return best;
}

class Generator {
 public:
  Generator(const CheckpointInfo& m, CachedLM& lm, const std::vector<GenerationRequest>& reqs,
            const GenerateOptions& opts)
      : m_(m), lm_(lm), reqs_(reqs), opts_(opts), results_(reqs.size()) {}

  std::vector<GenerationResult> run();

 private:
  void validate();
  void prefill(std::vector<Sequence*>& seqs);
  void decode_step();
  // Samples the next token of each sequence from its logits row ([rows, V] float32 CPU),
  // then updates text, streams and finishes them in row order.
  void advance_rows(const std::vector<Sequence*>& rows, const float* logits);
  void advance(Sequence& s, GeneratedToken g);
  void finish(Sequence& s, const char* reason);
  void retire_finished();

  const CheckpointInfo& m_;
  CachedLM& lm_;
  const std::vector<GenerationRequest>& reqs_;
  const GenerateOptions& opts_;
  std::vector<GenerationResult> results_;
  std::vector<int64_t> limits_;
  int64_t n_vocab_ = 0;
  std::unique_ptr<KvSlots> cache_;
  std::vector<int64_t> free_slots_;
  std::deque<std::unique_ptr<Sequence>> active_;
  std::vector<float> logits_;  // [rows, V] of the last forward
};

void Generator::validate() {
  check(opts_.max_batch >= 1, "generate: max_batch must be at least 1, got ", opts_.max_batch);
  check(opts_.prefill_chunk >= 1, "generate: prefill_chunk must be at least 1, got ", opts_.prefill_chunk);
  const ModelHParams& hp = lm_.hparams();
  n_vocab_ = hp.n_vocab;
  const int64_t max_pos = hp.max_position;
  limits_.resize(reqs_.size());
  for (size_t i = 0; i < reqs_.size(); ++i) {
    const GenerationRequest& r = reqs_[i];
    const int64_t n = static_cast<int64_t>(r.prompt.size());
    check(n > 0, "generate: request ", i, ": the prompt is empty; give at least one token (e.g. BOS)");
    for (int64_t t = 0; t < n; ++t)
      check(r.prompt[t] >= 0 && r.prompt[t] < n_vocab_, "generate: request ", i, ": prompt token ", t, " is id ",
            r.prompt[t], ", outside the model's vocabulary [0, ", n_vocab_, ")");
    check(max_pos <= 0 || n <= max_pos, "generate: request ", i, ": the prompt has ", n,
          " tokens but the model's context is ", max_pos, " tokens (", m_.path,
          "); shorten the prompt by at least ", n - max_pos, " tokens");
    check(r.max_tokens >= 0, "generate: request ", i, ": max_tokens must be >= 0, got ", r.max_tokens);
    check(r.min_tokens >= 0, "generate: request ", i, ": min_tokens must be >= 0, got ", r.min_tokens);
    check(r.top_logprobs >= 0 && r.top_logprobs <= n_vocab_, "generate: request ", i,
          ": top_logprobs must be in [0, ", n_vocab_, "], got ", r.top_logprobs);
    for (const std::string& s : r.stop)
      check(!s.empty(), "generate: request ", i, ": empty stop string (it would stop immediately)");
    check(r.stop.empty() || m_.tokenizer, "generate: request ", i,
          ": stop strings need a tokenizer to decode text, and this checkpoint has none");
    try {
      check_sampling_params(r.sampling);
    } catch (const Error& e) {
      fail("generate: request ", i, ": ", e.what());
    }
    // The last generated token is never fed back, so a prompt of n tokens can produce up to
    // max_pos - n + 1 tokens inside the context.
    limits_[i] = max_pos > 0 ? std::min(r.max_tokens, max_pos - n + 1) : r.max_tokens;
  }
}

std::vector<GenerationResult> Generator::run() {
  validate();
  std::deque<size_t> queue;
  int64_t max_len = 1;
  for (size_t i = 0; i < reqs_.size(); ++i) {
    results_[i].prompt_tokens = static_cast<int64_t>(reqs_[i].prompt.size());
    results_[i].finish_reason = "length";
    if (limits_[i] == 0) continue;
    queue.push_back(i);
    // Tokens ever written to the cache: the prompt plus all generated tokens but the last.
    max_len = std::max(max_len, results_[i].prompt_tokens + limits_[i] - 1);
  }
  if (queue.empty()) return std::move(results_);

  const int64_t n_slots = std::min<int64_t>(opts_.max_batch, static_cast<int64_t>(queue.size()));
  cache_ = lm_.new_cache(n_slots, max_len);
  for (int64_t s = n_slots - 1; s >= 0; --s) free_slots_.push_back(s);

  while (!queue.empty() || !active_.empty()) {
    // Admit queued requests into free slots and prefill them together.
    std::vector<Sequence*> fresh;
    while (!queue.empty() && !free_slots_.empty()) {
      auto s = std::make_unique<Sequence>();
      s->req = queue.front();
      queue.pop_front();
      s->slot = free_slots_.back();
      free_slots_.pop_back();
      cache_->clear(s->slot);
      const GenerationRequest& r = reqs_[s->req];
      s->context = r.prompt;
      s->context.reserve(r.prompt.size() + limits_[s->req]);
      s->limit = limits_[s->req];
      if (m_.tokenizer) s->decoder.emplace(*m_.tokenizer);
      fresh.push_back(s.get());
      active_.push_back(std::move(s));
    }
    if (!fresh.empty()) {
      prefill(fresh);
      retire_finished();
      continue;  // freed slots may admit more before the next decode step
    }
    decode_step();
    retire_finished();
  }
  return std::move(results_);
}

void Generator::prefill(std::vector<Sequence*>& seqs) {
  std::vector<Sequence*> pending = seqs;
  while (!pending.empty()) {
    int64_t t_len = 1;
    for (Sequence* s : pending)
      t_len = std::max(t_len, std::min<int64_t>(opts_.prefill_chunk, int64_t(s->context.size()) - s->prefilled));
    const size_t n_rows = std::min<size_t>(pending.size(), std::max<int64_t>(1, kPrefillTokenBudget / t_len));
    // tokens [n_rows, t_len], right-padded with token 0 (masked by n_new).
    std::vector<int64_t> flat(n_rows * t_len, 0), slots(n_rows), n_new(n_rows);
    for (size_t b = 0; b < n_rows; ++b) {
      Sequence* s = pending[b];
      n_new[b] = std::min<int64_t>(t_len, int64_t(s->context.size()) - s->prefilled);
      slots[b] = s->slot;
      for (int64_t t = 0; t < n_new[b]; ++t) flat[b * t_len + t] = s->context[s->prefilled + t];
    }
    logits_.resize(n_rows * size_t(n_vocab_));
    lm_.forward_last(flat.data(), int64_t(n_rows), t_len, slots, n_new, *cache_, logits_.data());  // [n_rows, V]
    std::vector<Sequence*> rest, ready;
    std::vector<int64_t> ready_rows;
    for (size_t b = 0; b < n_rows; ++b) {
      Sequence* s = pending[b];
      s->prefilled += n_new[b];
      if (s->prefilled == int64_t(s->context.size())) {
        ready.push_back(s);
        ready_rows.push_back(int64_t(b));
      } else {
        rest.push_back(s);
      }
    }
    if (!ready.empty()) {
      // The ready rows' logits, in order, at the front of logits_ (ready_rows ascend, so moving each row
      // down never overwrites one still to move).
      for (size_t i = 0; i < ready_rows.size(); ++i)
        if (ready_rows[i] != int64_t(i))
          std::copy_n(logits_.data() + ready_rows[i] * n_vocab_, n_vocab_, logits_.data() + int64_t(i) * n_vocab_);
      advance_rows(ready, logits_.data());
    }
    rest.insert(rest.end(), pending.begin() + n_rows, pending.end());
    pending.swap(rest);
  }
}

void Generator::decode_step() {
  const size_t n_rows = active_.size();
  std::vector<int64_t> flat(n_rows), slots(n_rows), n_new(n_rows, 1);
  for (size_t b = 0; b < n_rows; ++b) {
    flat[b] = active_[b]->context.back();
    slots[b] = active_[b]->slot;
  }
  logits_.resize(n_rows * size_t(n_vocab_));
  lm_.forward_last(flat.data(), int64_t(n_rows), 1, slots, n_new, *cache_, logits_.data());  // [n_rows, V]
  std::vector<Sequence*> rows;
  for (auto& s : active_) rows.push_back(s.get());
  advance_rows(rows, logits_.data());
}

void Generator::advance_rows(const std::vector<Sequence*>& rows, const float* base) {
  std::vector<GeneratedToken> picked(rows.size());
  auto sample_row = [&](size_t b) {
    Sequence& s = *rows[b];
    const GenerationRequest& r = reqs_[s.req];
    const bool ban_eos = !r.ignore_eos && s.n_generated < r.min_tokens;
    picked[b] = sample_token(s.context, base + b * n_vocab_, n_vocab_, r.sampling, r.processor.get(),
                             static_cast<uint64_t>(s.n_generated), r.top_logprobs,
                             ban_eos ? std::span<const int32_t>(m_.eos_ids) : std::span<const int32_t>());
  };
  // Rows are independent: sample them in parallel (processors included; see the threading
  // contract in logits_processor.h).
  std::exception_ptr error;
  std::mutex error_mutex;
  parallel_for(0, int64_t(rows.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      try {
        sample_row(size_t(b));
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        error = std::current_exception();
      }
    }
  });
  if (error) std::rethrow_exception(error);
  for (size_t b = 0; b < rows.size(); ++b) advance(*rows[b], std::move(picked[b]));
}

void Generator::advance(Sequence& s, GeneratedToken g) {
  const GenerationRequest& r = reqs_[s.req];
  GenerationResult& res = results_[s.req];
  s.context.push_back(g.token);
  ++s.n_generated;

  const bool eog = !r.ignore_eos && std::find(m_.eos_ids.begin(), m_.eos_ids.end(), g.token) != m_.eos_ids.end();
  // Appends decoded bytes and cuts the text at a stop string completed by them.
  bool stopped = false;
  auto append = [&](const std::string& piece) {
    const size_t before = s.text.size();
    s.text += piece;
    if (r.stop.empty() || piece.empty()) return;
    const size_t pos = find_stop(s.text, before, r.stop);
    if (pos != std::string::npos) {
      s.text.resize(pos);
      stopped = true;
    }
  };
  if (s.decoder && !eog) append(s.decoder->push(g.token));  // the EOS token's text is not part of the completion
  const char* reason = nullptr;
  if (eog || stopped) reason = "stop";
  else if (s.n_generated >= s.limit) reason = "length";
  if (reason && s.decoder && !stopped) {
    append(s.decoder->flush());  // an incomplete UTF-8 tail becomes U+FFFD
    if (stopped) reason = "stop";
  }

  // Stream: everything up to what might still begin a stop string.
  const size_t safe = reason ? s.text.size() : s.text.size() - stop_holdback(s.text, r.stop);
  std::string piece;
  if (safe > s.emitted) {
    piece = s.text.substr(s.emitted, safe - s.emitted);
    s.emitted = safe;
  }
  res.tokens.push_back(std::move(g));
  if (opts_.on_token) opts_.on_token(s.req, res.tokens.back(), piece);
  if (reason) finish(s, reason);
}

void Generator::finish(Sequence& s, const char* reason) {
  GenerationResult& res = results_[s.req];
  res.finish_reason = reason;
  res.text = std::move(s.text);
  s.done = true;
}

void Generator::retire_finished() {
  std::deque<std::unique_ptr<Sequence>> keep;
  for (auto& s : active_) {
    if (s->done) {
      cache_->clear(s->slot);
      free_slots_.push_back(s->slot);
    } else {
      keep.push_back(std::move(s));
    }
  }
  active_.swap(keep);
}

}  // namespace

std::vector<GenerationResult> generate(const CheckpointInfo& model, CachedLM& lm,
                                       const std::vector<GenerationRequest>& requests, const GenerateOptions& opts) {
  Generator g(model, lm, requests, opts);
  return g.run();
}

std::vector<GenerationResult> generate(RuntimeLoaded& model, const std::vector<GenerationRequest>& requests,
                                       const GenerateOptions& opts) {
  return generate(model, *model.model, requests, opts);
}

}  // namespace retort

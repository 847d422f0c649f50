// retort/decode/batch_decoder.cpp — the continuous-batching decode loop (see batch_decoder.h).
#include "retort/decode/batch_decoder.h"

#include <algorithm>

#include "retort/model/cpu_model.h"
#include "retort/model/runtime_model.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/parallel.h"

namespace retort {

namespace {

// Prompt tokens one step may take when no sequence is decoding (nobody waits on the step): bounds the
// attention scores and MLP activations of a prefill forward.
constexpr int64_t kIdlePrefillBudget = 4096;

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

}  // namespace

struct BatchDecoder::Sequence {
  uint64_t id = 0;
  GenerationRequest req;
  TokenFn on_token;
  DoneFn on_done;
  GenerationResult result;
  int64_t slot = -1;              // KV cache slot; -1 while queued
  std::vector<int32_t> context;   // prompt + generated tokens
  int64_t prefilled = 0;          // prompt tokens already in the cache
  bool generating = false;        // the whole prompt is in the cache: each step feeds the last token
  int64_t limit = 0;              // tokens to generate at most
  int64_t n_generated = 0;
  std::optional<StreamDecoder> decoder;
  std::string text;               // decoded completion so far
  size_t emitted = 0;             // bytes of `text` already passed to on_token
  bool done = false;
  std::vector<float> hidden_sum;  // [E] prompt tokens' final hidden states summed (want_prompt_embedding)
};

BatchDecoder::BatchDecoder(const CheckpointInfo& model, CachedLM& lm, const BatchDecoderOptions& opts)
    : m_(model), lm_(lm), opts_(opts) {
  check(opts.n_slots >= 1, "decoder: n_slots (max batch) must be at least 1, got ", opts.n_slots);
  check(opts.prefill_chunk >= 1, "decoder: prefill_chunk must be at least 1, got ", opts.prefill_chunk);
  check(opts.prefill_budget >= 1, "decoder: prefill_budget must be at least 1, got ", opts.prefill_budget);
  const ModelHParams& hp = lm_.hparams();
  n_vocab_ = hp.n_vocab;
  n_slots_ = opts.n_slots;
  max_len_ = opts.max_len > 0 ? opts.max_len : hp.max_position;
  check(max_len_ >= 1, "decoder: the model states no context length (", m_.path, "); give max_len");
  if (hp.max_position > 0) max_len_ = std::min(max_len_, hp.max_position);
  cache_ = lm_.new_cache(n_slots_, max_len_);
  for (int64_t s = n_slots_ - 1; s >= 0; --s) free_slots_.push_back(s);
}

BatchDecoder::~BatchDecoder() = default;

void BatchDecoder::validate(const GenerationRequest& r) const {
  const int64_t n = static_cast<int64_t>(r.prompt.size());
  check(n > 0, "the prompt is empty; give at least one token (e.g. BOS)");
  for (int64_t t = 0; t < n; ++t)
    check(r.prompt[t] >= 0 && r.prompt[t] < n_vocab_, "prompt token ", t, " is id ", r.prompt[t],
          ", outside the model's vocabulary [0, ", n_vocab_, ")");
  check(n <= max_len_, "the prompt has ", n, " tokens but the context is ", max_len_, " tokens (", m_.path,
        "); shorten the prompt by at least ", n - max_len_, " tokens");
  check(r.max_tokens >= 0, "max_tokens must be >= 0, got ", r.max_tokens);
  check(r.min_tokens >= 0, "min_tokens must be >= 0, got ", r.min_tokens);
  check(r.top_logprobs >= 0 && r.top_logprobs <= n_vocab_, "top_logprobs must be in [0, ", n_vocab_, "], got ",
        r.top_logprobs);
  for (const std::string& s : r.stop) check(!s.empty(), "empty stop string (it would stop immediately)");
  check(r.stop.empty() || m_.tokenizer, "stop strings need a tokenizer to decode text, and this checkpoint has none");
  check_sampling_params(r.sampling);
}

uint64_t BatchDecoder::add(GenerationRequest req, TokenFn on_token, DoneFn on_done) {
  validate(req);
  auto s = std::make_unique<Sequence>();
  s->id = next_id_++;
  const int64_t n = static_cast<int64_t>(req.prompt.size());
  // The last generated token is never fed back, so a prompt of n tokens can produce up to
  // max_len - n + 1 tokens inside the slot.
  s->limit = std::min(req.max_tokens, max_len_ - n + 1);
  s->result.prompt_tokens = n;
  s->result.finish_reason = "length";
  s->req = std::move(req);
  s->on_token = std::move(on_token);
  s->on_done = std::move(on_done);
  const uint64_t id = s->id;
  if (s->limit == 0) {
    if (s->on_done) s->on_done(std::move(s->result));
    return id;
  }
  queue_.push_back(std::move(s));
  return id;
}

void BatchDecoder::cancel(uint64_t id) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it)
    if ((*it)->id == id) {
      auto s = std::move(*it);
      queue_.erase(it);
      finish(*s, "cancelled");
      return;
    }
  for (auto& s : active_)
    if (s->id == id && !s->done) {
      finish(*s, "cancelled");
      retire_finished();
      return;
    }
}

void BatchDecoder::admit() {
  while (!queue_.empty() && !free_slots_.empty()) {
    std::unique_ptr<Sequence> s = std::move(queue_.front());
    queue_.pop_front();
    s->slot = free_slots_.back();
    free_slots_.pop_back();
    cache_->clear(s->slot);
    s->context = s->req.prompt;
    s->context.reserve(s->req.prompt.size() + s->limit);
    if (m_.tokenizer) s->decoder.emplace(*m_.tokenizer);
    active_.push_back(std::move(s));
  }
}

void BatchDecoder::step() {
  admit();
  last_decode_rows_ = last_prefill_tokens_ = 0;
  if (active_.empty()) return;

  // The rows of this step: every generating sequence (1 token), then prompt chunks within the budget.
  std::vector<Sequence*> rows;
  std::vector<int64_t> n_new;
  for (auto& s : active_)
    if (s->generating) {
      rows.push_back(s.get());
      n_new.push_back(1);
    }
  last_decode_rows_ = int64_t(rows.size());
  int64_t budget = rows.empty() ? std::max(kIdlePrefillBudget, opts_.prefill_chunk) : opts_.prefill_budget;
  for (auto& s : active_) {
    if (s->generating || budget <= 0) continue;
    const int64_t take = std::min({opts_.prefill_chunk, int64_t(s->context.size()) - s->prefilled, budget});
    rows.push_back(s.get());
    n_new.push_back(take);
    budget -= take;
    last_prefill_tokens_ += take;
  }
  const int64_t B = int64_t(rows.size());
  const int64_t T = *std::max_element(n_new.begin(), n_new.end());
  // tokens [B, T], right-padded with token 0 (masked by n_new).
  std::vector<int64_t> flat(static_cast<size_t>(B * T), 0), slots(static_cast<size_t>(B));
  for (int64_t b = 0; b < B; ++b) {
    Sequence* s = rows[b];
    slots[b] = s->slot;
    const int64_t from = s->generating ? int64_t(s->context.size()) - 1 : s->prefilled;
    for (int64_t t = 0; t < n_new[b]; ++t) flat[b * T + t] = s->context[from + t];
  }
  logits_.resize(size_t(B * n_vocab_));
  // Prompt embeddings: the final hidden states of prefill rows are summed in the same forward.
  bool want_hidden = false;
  for (int64_t b = 0; b < B; ++b) want_hidden = want_hidden || (!rows[b]->generating && rows[b]->req.want_prompt_embedding);
  const int64_t E = lm_.hparams().n_embd;
  bool pooled = false;
  if (want_hidden) {
    hidden_sums_.resize(size_t(B * E));
    pooled = lm_.forward_last_pooled(flat.data(), B, T, slots, n_new, *cache_, logits_.data(), hidden_sums_.data());
  } else {
    lm_.forward_last(flat.data(), B, T, slots, n_new, *cache_, logits_.data());  // [B, V]
  }
  if (pooled)
    for (int64_t b = 0; b < B; ++b) {
      Sequence* s = rows[b];
      if (s->generating || !s->req.want_prompt_embedding) continue;
      if (s->hidden_sum.empty()) s->hidden_sum.assign(size_t(E), 0.0f);
      for (int64_t e = 0; e < E; ++e) s->hidden_sum[size_t(e)] += hidden_sums_[size_t(b * E + e)];
      if (s->prefilled + n_new[b] == int64_t(s->context.size())) {  // the prompt is complete: its mean
        s->result.prompt_embedding.resize(size_t(E));
        const float inv = 1.0f / float(s->context.size());
        for (int64_t e = 0; e < E; ++e) s->result.prompt_embedding[size_t(e)] = s->hidden_sum[size_t(e)] * inv;
        s->hidden_sum = {};
      }
    }

  // Rows that sample now: the generating ones and those whose prompt this step completed. Their logits
  // move to the front of logits_, in order (sampled rows ascend, so no row is overwritten before it moves).
  std::vector<Sequence*> ready;
  for (int64_t b = 0; b < B; ++b) {
    Sequence* s = rows[b];
    if (!s->generating) {
      s->prefilled += n_new[b];
      if (s->prefilled < int64_t(s->context.size())) continue;
      s->generating = true;
    }
    const int64_t i = int64_t(ready.size());
    if (b != i) std::copy_n(logits_.data() + b * n_vocab_, n_vocab_, logits_.data() + i * n_vocab_);
    ready.push_back(s);
  }
  if (!ready.empty()) advance_rows(ready, logits_.data());
  retire_finished();
}

// The rows' batchable processor work (logits_processor.h: BatchedWork), one prepare() per work object.
// An error here is not the rows' end: each part then does its work alone in process() and reports it.
static void prepare_batched_work(const std::vector<std::pair<const GenerationRequest*, const std::vector<int32_t>*>>& rows) {
  std::vector<BatchedPart> parts;
  std::vector<std::span<const int32_t>> part_ctx;
  for (const auto& [req, ctx] : rows) {
    if (!req->processor) continue;
    req->processor->batched_parts(parts);
    part_ctx.resize(parts.size(), std::span<const int32_t>(*ctx));
  }
  if (parts.empty()) return;
  std::vector<bool> taken(parts.size(), false);
  for (size_t i = 0; i < parts.size(); ++i) {
    if (taken[i]) continue;
    std::vector<LogitsProcessor*> group;
    std::vector<std::span<const int32_t>> contexts;
    for (size_t j = i; j < parts.size(); ++j)
      if (!taken[j] && parts[j].work == parts[i].work) {
        taken[j] = true;
        group.push_back(parts[j].part);
        contexts.push_back(part_ctx[j]);
      }
    try {
      parts[i].work->prepare(group, contexts);
    } catch (...) {
    }
  }
}

void BatchDecoder::advance_rows(const std::vector<Sequence*>& rows, const float* base) {
  {
    std::vector<std::pair<const GenerationRequest*, const std::vector<int32_t>*>> work_rows;
    for (Sequence* s : rows) work_rows.emplace_back(&s->req, &s->context);
    prepare_batched_work(work_rows);
  }
  std::vector<GeneratedToken> picked(rows.size());
  auto sample_row = [&](size_t b) {
    Sequence& s = *rows[b];
    const GenerationRequest& r = s.req;
    const bool ban_eos = !r.ignore_eos && s.n_generated < r.min_tokens;
    picked[b] = sample_token(s.context, base + b * n_vocab_, n_vocab_, r.sampling, r.processor.get(),
                             static_cast<uint64_t>(s.n_generated), r.top_logprobs,
                             ban_eos ? std::span<const int32_t>(m_.eos_ids) : std::span<const int32_t>());
  };
  // Rows are independent: sample them in parallel (processors included; see the threading
  // contract in logits_processor.h). A row that fails (NaN logits, a processor's error) ends its own
  // request with finish_reason "error"; the others go on.
  std::vector<std::string> errors(rows.size());
  parallel_for(0, int64_t(rows.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t b = lo; b < hi; ++b) {
      try {
        sample_row(size_t(b));
      } catch (const std::exception& e) {
        errors[size_t(b)] = e.what();
        if (errors[size_t(b)].empty()) errors[size_t(b)] = "sampling failed";
      } catch (...) {
        errors[size_t(b)] = "sampling failed";
      }
    }
  });
  for (size_t b = 0; b < rows.size(); ++b) {
    if (errors[b].empty()) {
      advance(*rows[b], std::move(picked[b]));
    } else {
      rows[b]->result.error = std::move(errors[b]);
      finish(*rows[b], "error");
    }
  }
}

void BatchDecoder::advance(Sequence& s, GeneratedToken g) {
  const GenerationRequest& r = s.req;
  GenerationResult& res = s.result;
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
  if (s.on_token) s.on_token(res.tokens.back(), piece);
  if (reason) finish(s, reason);
}

void BatchDecoder::finish(Sequence& s, const char* reason) {
  GenerationResult& res = s.result;
  res.finish_reason = reason;
  res.text = std::move(s.text);
  s.done = true;
  if (s.on_done) s.on_done(std::move(res));
}

void BatchDecoder::retire_finished() {
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

}  // namespace retort

// retort/distill/xtok_data.cpp — see xtok_data.h.
#include "retort/distill/xtok_data.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <unordered_map>

#include <torch/torch.h>

#include "retort/distill/prompt_file.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/text_store.h"
#include "retort/model/causal_lm.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/keys.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// The first offset where a and b differ, with a few bytes of each around it (hex), for skip reasons.
std::string first_difference(const std::string& a, const std::string& b, const char* a_name, const char* b_name) {
  size_t i = 0;
  while (i < a.size() && i < b.size() && a[i] == b[i]) ++i;
  const size_t from = i >= 4 ? i - 4 : 0;
  return cat("byte ", i, ": ", a_name, " ", bytes_to_hex(a.substr(from, 12)), ", ", b_name, " ",
             bytes_to_hex(b.substr(from, 12)), " (from byte ", from, ")");
}

struct SkipSample {
  std::string reason;
};

// The length of the longest prefix of b that ends on a whole UTF-8 character (b is assumed valid before a
// possibly cut last character).
size_t complete_utf8_prefix(const std::string& b) {
  size_t i = b.size(), back = 0;
  while (i > 0 && back < 4 && (static_cast<unsigned char>(b[i - 1]) & 0xC0) == 0x80) --i, ++back;
  if (i == 0) return b.size();
  const unsigned char lead = static_cast<unsigned char>(b[i - 1]);
  const size_t need = lead >= 0xF0 ? 4 : lead >= 0xE0 ? 3 : lead >= 0xC0 ? 2 : 1;
  return need == back + 1 ? b.size() : (need > back + 1 ? i - 1 : b.size());
}

}  // namespace

namespace {

// The examples of a store's samples (as text: a text store's records, or a signal store's read through the
// teacher's tokenizer).
XTokData make_from_samples(const std::vector<TextSample>& samples, const std::string& dir, const std::string& identity,
                           int64_t k, const CheckpointInfo& student) {
  check(student.tokenizer != nullptr, student.path, ": the student has no tokenizer");
  const Tokenizer& tok = *student.tokenizer;
  XTokData d;
  d.dir = dir;
  d.identity = identity + "/" + tok.hash();
  d.k = k;

  // The student's ids by their bytes (the lowest id where several share them), for the hybrid loss.
  std::unordered_map<std::string, int64_t> by_bytes;
  for (int32_t i = tok.n_vocab() - 1; i >= 0; --i) {
    if (tok.is_hole(i)) continue;
    const std::string b = tok.token_bytes(i);
    if (!b.empty() && !tok.is_special(i)) by_bytes[b] = i;
  }

  int64_t top_entries = 0, top_matched = 0;
  for (const TextSample& s : samples) {
    try {
      XTokExample e;
      e.sample_id = s.sample_id;
      PromptLine line;
      line.chat = s.chat;
      line.messages = s.messages;
      line.raw = s.prompt;
      const std::vector<int32_t> prompt = encode_prompt(student, line, s.where);
      e.ids.assign(prompt.begin(), prompt.end());
      e.prompt_len = int64_t(e.ids.size());
      check(e.prompt_len >= 1, s.where, ": the prompt encodes to no tokens for the student");
      // An answer cut by max_tokens inside a UTF-8 character: the server renders the partial character as
      // U+FFFD in the text while the tokens carry its raw bytes. Both are cut back to the last whole character,
      // with the teacher tokens that end by then (a token is never cut).
      std::string completion = s.completion;
      std::vector<TextToken> kept_tokens;
      const std::vector<TextToken>* tokens = &s.tokens;
      if (s.has_tokens && s.finish_reason != "stop") {
        std::string joined;
        for (const TextToken& t : s.tokens) joined += t.bytes;
        const size_t whole = complete_utf8_prefix(joined);
        if (whole < joined.size() &&
            (completion == joined.substr(0, whole) + "\xEF\xBF\xBD" || completion == joined.substr(0, whole))) {
          size_t end = 0;
          for (const TextToken& t : s.tokens) {
            if (end + t.bytes.size() > whole) break;
            end += t.bytes.size();
            kept_tokens.push_back(t);
          }
          completion = joined.substr(0, end);
          tokens = &kept_tokens;
        }
      }
      if (completion.empty()) throw SkipSample{"the completion is empty"};
      // The student's tokens of the completion must spell it exactly.
      const std::vector<int32_t> comp = tok.encode(completion, /*parse_special=*/false, /*add_bos=*/false);
      std::vector<std::string> student_pieces;
      std::string spelled;
      for (int32_t id : comp) {
        student_pieces.push_back(tok.token_bytes(id));
        spelled += student_pieces.back();
      }
      if (spelled != completion)
        throw SkipSample{cat("the student's tokenizer cannot represent the text (its tokens spell other bytes at ",
                             first_difference(completion, spelled, "text", "tokens"), ")")};
      e.ids.insert(e.ids.end(), comp.begin(), comp.end());
      e.completion_bytes = int64_t(completion.size());
      if (s.has_tokens) {
        const int64_t k = d.k, T = int64_t((*tokens).size());
        std::vector<std::string> teacher_pieces;
        std::string joined;
        for (const TextToken& t : *tokens) {
          teacher_pieces.push_back(t.bytes);
          joined += t.bytes;
        }
        if (joined != completion)
          throw SkipSample{cat("the teacher's token bytes do not add up to the completion text (",
                               first_difference(completion, joined, "text", "tokens"), ")")};
        e.spans = align_token_spans(teacher_pieces, student_pieces);
        e.T = T;
        e.token_logprob.reserve(size_t(T));
        e.topk_logprobs.reserve(size_t(T * k));
        e.topk_student_ids.reserve(size_t(T * k));
        for (const TextToken& t : *tokens) {
          e.token_logprob.push_back(t.logprob);
          double mass = 0;
          for (int64_t q = 0; q < k; ++q) {
            const auto& [b, lp] = t.top[size_t(q)];
            e.topk_logprobs.push_back(lp);
            mass += std::exp(double(lp));
            const auto it = by_bytes.find(b);
            e.topk_student_ids.push_back(it == by_bytes.end() ? -1 : it->second);
            top_matched += it != by_bytes.end();
          }
          top_entries += k;
          e.tail_mass.push_back(float(std::clamp(1.0 - mass, 0.0, 1.0)));
        }
        d.teacher_rows += T;
      }
      if (s.finish_reason == "stop") {
        e.ids.push_back(answer_stop_token(student, line));
        e.stop_label = true;
      }
      d.completion_bytes += e.completion_bytes;
      d.examples.push_back(std::move(e));
    } catch (const SkipSample& x) {
      d.skipped.push_back({s.sample_id, s.where, x.reason});
    }
  }
  d.matched_share = top_entries > 0 ? double(top_matched) / double(top_entries) : 0.0;
  if (d.examples.empty()) {
    std::map<std::string, int64_t> why;
    for (const auto& s : d.skipped) ++why[s.reason.substr(0, s.reason.find(" ("))];
    std::string most;
    int64_t n = 0;
    for (const auto& [r, c] : why)
      if (c > n) most = r, n = c;
    fail("store ", dir, ": no sample is usable for the student ", student.path,
         samples.empty() ? std::string(" (the store holds no samples)")
                                 : cat(" (", d.skipped.size(), " skipped; most often: ", most, ", e.g. ",
                                       d.skipped.front().where, ": ", d.skipped.front().reason, ")"));
  }
  return d;
}

}  // namespace

XTokData make_xtok_data(const TextStore& store, const CheckpointInfo& student) {
  return make_from_samples(store.samples(), store.dir(), store.identity(), store.k(), student);
}

XTokData make_xtok_data(const SignalStore& store, const CheckpointInfo& student) {
  const StoreManifest& m = store.manifest();
  // The teacher's tokenizer: the local teacher's model, or the one a capture from an API was given.
  std::string spec;
  if (m.source.is_object() && m.source.contains("teacher_tokenizer") && m.source["teacher_tokenizer"].is_object())
    spec = m.source["teacher_tokenizer"].value("spec", "");
  else if (m.teacher.is_object())
    spec = m.teacher.value("path", m.teacher.value("spec", ""));
  check(!spec.empty(), "signal store ", store.dir(), ": the manifest names no teacher, whose tokenizer is needed to read "
        "its ids as text for a student with another tokenizer");
  CheckpointInfo teacher;
  try {
    teacher = read_checkpoint_info(spec, /*load_tokenizer=*/true);
  } catch (const std::exception& e) {
    fail("signal store ", store.dir(), ": its teacher ", spec, " is needed to read its token ids as text for a student "
         "with another tokenizer, and cannot be opened (", e.what(), ")");
  }
  check(teacher.tokenizer && teacher.tokenizer->hash() == m.tokenizer_hash, "signal store ", store.dir(), ": ", spec,
        " does not have the tokenizer the store was captured with (hash ", m.tokenizer_hash, ")");
  const Tokenizer& tt = *teacher.tokenizer;
  // The prompts as text: the prompts file the store names, as long as it still holds what was captured.
  const std::string ppath = m.prompts.is_object() ? m.prompts.value("path", "") : "";
  check(!ppath.empty() && fs::exists(ppath), "signal store ", store.dir(), ": its prompts file ",
        ppath.empty() ? std::string("(none named)") : ppath, " is not there; the student needs the prompts as text to "
        "encode them its own way");
  {
    MappedFile f(ppath);
    check(m.prompts.value("sha256", "") == sha256_hex(f.data(), f.size()), "signal store ", store.dir(),
          ": its prompts file ", ppath, " changed since the capture; restore it, or capture again");
  }
  CaptureOptions co;
  co.mode = m.mode;
  co.chat = m.generation.value("chat", true);
  co.system = m.generation.value("system", "");
  const std::vector<PromptLine> lines = read_prompt_lines(ppath, co);
  const int64_t S = std::max<int64_t>(1, m.generation.value("samples_per_prompt", int64_t(1)));
  const std::vector<int32_t> eog = tt.eog_ids();
  std::vector<TextSample> samples;
  for (int64_t i = 0; i < store.n_samples(); ++i) {
    const SignalSample x = store.sample(i);
    TextSample s;
    s.sample_id = x.id;
    s.prompt_index = x.id / S;
    s.sample_index = x.id % S;
    s.where = cat(store.dir(), " sample ", x.id);
    check(s.prompt_index < int64_t(lines.size()), s.where, ": prompt ", s.prompt_index, " is past the ", lines.size(),
          " lines of ", ppath);
    const PromptLine& p = lines[size_t(s.prompt_index)];
    s.chat = p.chat;
    s.messages = p.messages;
    s.prompt = p.raw;
    s.has_tokens = true;
    const int64_t n = x.completion_len(), k = store.manifest().k;
    for (int64_t j = 0; j < n; ++j) {
      const int32_t id = x.tokens[x.prompt_len + j];
      // The teacher's end of answer closes the sample: the student's own takes its place (a hard label).
      if (j + 1 == n && std::find(eog.begin(), eog.end(), id) != eog.end()) {
        s.finish_reason = "stop";
        break;
      }
      TextToken t;
      t.bytes = tt.is_special(id) ? std::string() : tt.token_bytes(id);
      t.logprob = x.token_logprob[j];
      for (int64_t q = 0; q < k; ++q) {
        const int32_t c = x.topk_ids[j * k + q];
        t.top.push_back({tt.is_special(c) ? std::string() : tt.token_bytes(c), x.topk_logprobs[j * k + q]});
      }
      s.completion += t.bytes;
      s.tokens.push_back(std::move(t));
    }
    if (s.finish_reason.empty()) s.finish_reason = "length";
    samples.push_back(std::move(s));
  }
  std::string ident = m.tokenizer_hash + "/" + std::to_string(store.n_samples());
  for (const auto& sh : m.shards) ident += "/" + sh.sha256.substr(0, 16);
  return make_from_samples(samples, store.dir(), ident, m.k, student);
}

json XTokData::summary() const {
  std::map<std::string, int64_t> why;
  for (const auto& s : skipped) ++why[s.reason.substr(0, s.reason.find(" ("))];
  json first = json::array();
  for (size_t i = 0; i < skipped.size() && i < 5; ++i)
    first.push_back({{"sample_id", skipped[i].sample_id}, {"where", skipped[i].where}, {"reason", skipped[i].reason}});
  return {{"store", dir},       {"samples", examples.size()},      {"skipped", skipped.size()},
          {"skip_reasons", why}, {"first_skips", first},            {"k", k},
          {"completion_bytes", completion_bytes}, {"teacher_rows", teacher_rows}, {"matched_share", matched_share}};
}

json XTokEval::to_json() const {
  auto num = [](double x) { return std::isfinite(x) ? json(x) : json(nullptr); };
  return {{"samples", samples},
          {"bytes", bytes},
          {"tokens", tokens},
          {"nll_per_byte", num(nll_per_byte)},
          {"bits_per_byte", num(nll_per_byte / std::log(2.0))},
          {"teacher_nll_per_byte", num(teacher_nll_per_byte)},
          {"top1_agree", num(top1_agree)},
          {"agree_positions", agree_positions}};
}

XTokEval evaluate_xtok(CausalLMImpl& student, const XTokData& data, int64_t max_samples, int64_t max_seq) {
  torch::NoGradGuard no_grad;
  const int64_t n = max_samples > 0 ? std::min<int64_t>(max_samples, int64_t(data.examples.size()))
                                    : int64_t(data.examples.size());
  const int64_t ctx = student.hparams().max_position;
  const int64_t limit = max_seq > 0 ? max_seq : (ctx > 0 ? ctx : INT64_MAX);
  const torch::Device dev = student.device();
  XTokEval r;
  double nll = 0, teacher_nll = 0;
  int64_t agree = 0;
  // Batches of a few samples (longest first), each [B, L] right-padded; rows are scored in chunks.
  std::vector<const XTokExample*> order;
  for (int64_t i = 0; i < n; ++i) order.push_back(&data.examples[size_t(i)]);
  std::stable_sort(order.begin(), order.end(), [](auto* a, auto* b) { return a->ids.size() > b->ids.size(); });
  constexpr int64_t kBatchTokens = 2048, kChunkRows = 128;
  for (size_t b0 = 0; b0 < order.size();) {
    const int64_t L = std::min<int64_t>(limit, int64_t(order[b0]->ids.size()));
    size_t b1 = b0 + 1;
    while (b1 < order.size() && int64_t(b1 - b0 + 1) * L <= kBatchTokens) ++b1;
    const int64_t B = int64_t(b1 - b0);
    std::vector<int64_t> tok(size_t(B * L), 0), rows, targets, teacher_top1;  // teacher_top1: student id, -1, or -2 (no measure)
    for (int64_t b = 0; b < B; ++b) {
      const XTokExample& e = *order[b0 + size_t(b)];
      const int64_t len = std::min<int64_t>(L, int64_t(e.ids.size()));
      for (int64_t t = 0; t < len; ++t) tok[size_t(b * L + t)] = e.ids[size_t(t)];
      // Whole samples only: one cut by the context is not measured (its bytes would not match).
      if (len < int64_t(e.ids.size())) continue;
      const int64_t n_text = int64_t(e.ids.size()) - e.prompt_len - (e.stop_label ? 1 : 0);
      std::vector<int64_t> top1(size_t(n_text), -2);
      for (const TokenSpan& sp : e.spans)
        if (sp.t1 - sp.t0 == 1 && sp.s1 - sp.s0 == 1) top1[size_t(sp.s0)] = e.topk_student_ids[size_t(sp.t0 * data.k)];
      for (int64_t j = 0; j < n_text; ++j) {
        rows.push_back(b * L + e.prompt_len + j - 1);
        targets.push_back(e.ids[size_t(e.prompt_len + j)]);
        teacher_top1.push_back(top1[size_t(j)]);
      }
      for (float lp : e.token_logprob) teacher_nll -= lp;
      r.samples += 1;
      r.bytes += e.completion_bytes;
      r.tokens += n_text;
    }
    const auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    auto hidden = student.forward_hidden(torch::tensor(tok, i64).view({B, L}).to(dev)).reshape({B * L, -1});
    const int64_t N = int64_t(rows.size());
    if (N > 0) {
      hidden = hidden.index_select(0, torch::tensor(rows, i64).to(dev));
      auto tgt = torch::tensor(targets, i64).to(dev);
      auto t1 = torch::tensor(teacher_top1, i64).to(dev);
      for (int64_t r0 = 0; r0 < N; r0 += kChunkRows) {
        const int64_t c = std::min(kChunkRows, N - r0);
        auto logits = student.lm_logits(hidden.narrow(0, r0, c)).to(torch::kFloat32);
        nll -= logits.log_softmax(-1).gather(1, tgt.narrow(0, r0, c).unsqueeze(1)).to(torch::kFloat64).sum().item<double>();
        auto want = t1.narrow(0, r0, c);
        auto defined = want.ge(0);
        agree += (logits.argmax(-1).eq(want) & defined).sum().item<int64_t>();
        r.agree_positions += defined.sum().item<int64_t>();
      }
    }
    b0 = b1;
  }
  r.nll_per_byte = r.bytes > 0 ? nll / double(r.bytes) : NAN;
  r.teacher_nll_per_byte = r.bytes > 0 && data.k > 0 ? teacher_nll / double(r.bytes) : NAN;
  r.top1_agree = r.agree_positions > 0 ? double(agree) / double(r.agree_positions) : NAN;
  return r;
}

}  // namespace retort

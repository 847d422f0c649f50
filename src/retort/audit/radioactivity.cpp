// retort/audit/radioactivity.cpp — the radioactivity test (see radioactivity.h): filters, dedup'd exact
// scoring under the master and account keys, and the suspect's top-1 predictions for reading mode.
#include "retort/audit/radioactivity.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <unordered_map>

#include "retort/model/runtime_model.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/stats.h"

namespace retort {

namespace {

std::string pack_window(std::span<const int32_t> win) {
  std::string s(win.size() * sizeof(int32_t), '\0');
  std::memcpy(s.data(), win.data(), s.size());
  return s;
}

// One-sided normal quantile z with P[N(0,1) >= z] = p, by bisection on normal_sf (p in (0, 0.5]).
double upper_normal_quantile(double p) {
  double lo = 0, hi = 40;
  for (int i = 0; i < 200; ++i) {
    const double mid = 0.5 * (lo + hi);
    (std::log(std::max(p, 1e-300)) < log_normal_sf(mid) ? lo : hi) = mid;
  }
  return 0.5 * (lo + hi);
}

}  // namespace

// ---- windows -----------------------------------------------------------------------------------------------

void WindowSet::add_windows_of(std::span<const int32_t> tokens) {
  const size_t w = size_t(width_);
  if (w == 0 || tokens.size() < w) return;
  for (size_t t = 0; t + w <= tokens.size(); ++t) set_.insert(pack_window(tokens.subspan(t, w)));
}

bool WindowSet::contains_suffix_of(std::span<const int32_t> context) const {
  const size_t w = size_t(width_);
  if (context.size() < w) return false;
  return set_.count(pack_window(context.subspan(context.size() - w))) > 0;
}

// ---- the test ------------------------------------------------------------------------------------------------

int64_t radioactivity_pairs_needed(const DetectorConfig& c, double rate, double target_p) {
  const bool kgw = c.scheme == "kgw";
  const double null_rate = kgw ? c.kgw.gamma : 1.0;
  const double sigma2 = kgw ? c.kgw.gamma * (1 - c.kgw.gamma) : 1.0;
  const double excess = rate - null_rate;
  if (!(excess > 0)) return -1;
  const double z = upper_normal_quantile(target_p);
  return int64_t(std::ceil(z * z * sigma2 / (excess * excess)));
}

RadioactivityTest::RadioactivityTest(const WatermarkKey& master, DetectorConfig config, std::vector<std::string> accounts)
    : config_(std::move(config)), window_(0), master_(master, config_), account_ids_(std::move(accounts)) {
  check(config_.dedup, "radioactivity: scoring needs dedup (a repeated (window, token) pair is not new evidence)");
  window_ = master_.window();
  for (const std::string& a : account_ids_) {
    check(!a.empty(), "radioactivity: an empty account id in the account list");
    const WatermarkKey k = derive_account_key(master, a);
    account_commitments_.push_back(k.commitment());
    account_scorers_.emplace_back(k, config_);
  }
}

void RadioactivityTest::set_prompt_windows(const WindowSet* w) {
  check(!w || w->width() == window_, "radioactivity: prompt windows of width ", w ? w->width() : 0, ", the test's is ",
        window_);
  prompt_windows_ = w;
}

void RadioactivityTest::set_seen_windows(const WindowSet* w) {
  check(!w || w->width() == window_, "radioactivity: seen windows of width ", w ? w->width() : 0, ", the test's is ",
        window_);
  seen_windows_ = w;
}

bool RadioactivityTest::add(std::span<const int32_t> context, int32_t token) {
  ++counts_.positions;
  if (context.size() < size_t(window_)) return ++counts_.no_window, false;
  if (prompt_windows_ && prompt_windows_->contains_suffix_of(context)) return ++counts_.in_prompt, false;
  if (seen_windows_ && !seen_windows_->contains_suffix_of(context)) return ++counts_.unseen, false;
  // Account scorers see the same pairs (or, reading a text served to one account, that account's scorer
  // alone); each dedups on its own (KGW selfhash dedups per key seed).
  if (text_account_ != kAllAccounts) {
    if (text_account_ >= 0) account_scorers_[size_t(text_account_)].add_pair(context, token);
    return ++counts_.other_key, false;
  }
  for (WatermarkScorer& s : account_scorers_) s.add_pair(context, token);
  if (!master_.add_pair(context, token)) return ++counts_.repeated, false;
  ++counts_.scored;
  return true;
}

void RadioactivityTest::start_sample(std::span<const int32_t> tokens) {
  open_sample_ = nullptr;
  if (int(samples_.size()) >= max_samples_) return;
  std::vector<SampleMark>& s = samples_.emplace_back(tokens.size());
  for (size_t i = 0; i < tokens.size(); ++i) s[i].token = tokens[i];
  open_sample_ = s.data();
  open_sample_len_ = s.size();
}

void RadioactivityTest::mark(size_t t, int32_t prediction, bool scored, double score) {
  if (!open_sample_ || t >= open_sample_len_) return;
  SampleMark& m = open_sample_[t];
  m.prediction = prediction;
  if (scored) m.kind = score > (config_.scheme == "kgw" ? 0.5 : 1.0) ? SampleMark::kGreen : SampleMark::kRed;
}

int RadioactivityTest::account_index(const std::string& account) const {
  const auto it = std::find(account_ids_.begin(), account_ids_.end(), account);
  return it == account_ids_.end() ? kNoAccount : int(it - account_ids_.begin());
}

void RadioactivityTest::add_text(std::span<const int32_t> tokens) {
  text_account_ = kAllAccounts;
  start_sample(tokens);
  for (size_t t = 1; t < tokens.size(); ++t) {
    const double before = master_.score_sum();
    const bool scored = add(tokens.first(t), tokens[t]);
    mark(t, -1, scored, master_.score_sum() - before);
  }
  open_sample_ = nullptr;
}

void RadioactivityTest::begin_text(std::span<const int32_t> text, int account) {
  check(account == kAllAccounts || account == kNoAccount || (account >= 0 && size_t(account) < account_ids_.size()),
        "radioactivity: account index ", account, " out of range");
  text_account_ = account;
  text_.assign(text.begin(), text.end());
  start_sample(text_);
  text_window_first_.clear();
  if (master_.is_selfhash()) return;
  const size_t w = size_t(window_);
  for (size_t s = w; s < text_.size(); ++s)
    text_window_first_.emplace(pack_window(std::span(text_).subspan(s - w, w)), s);
}

bool RadioactivityTest::add_reading(size_t t, int32_t prediction) {
  check(t <= text_.size(), "radioactivity: reading position ", t, " past the text's ", text_.size(), " tokens");
  const size_t w = size_t(window_);
  if (t >= w) {
    const std::span<const int32_t> text(text_);
    bool earlier = false;
    if (master_.is_selfhash()) {
      // Step s scored candidate v under seed(window_s, v); ours is seed(window_t, prediction). Seeds depend
      // on the key: the text's own key decides (the account's, for a text served to one account).
      WatermarkScorer& k = text_account_ >= 0 ? account_scorers_[size_t(text_account_)] : master_;
      const uint64_t seed = k.selfhash_seed(text.subspan(t - w, w), prediction);
      for (size_t s = w; s < t && !earlier; ++s) earlier = k.selfhash_seed(text.subspan(s - w, w), prediction) == seed;
    } else {
      const auto it = text_window_first_.find(pack_window(text.subspan(t - w, w)));
      earlier = it != text_window_first_.end() && it->second < t;
    }
    if (earlier) {
      ++counts_.positions, ++counts_.in_text;
      mark(t, prediction, false, 0);
      return false;
    }
  }
  const double before = master_.score_sum();
  const bool scored = add(std::span(text_).first(t), prediction);
  mark(t, prediction, scored, master_.score_sum() - before);
  return scored;
}

RadioactivityResult RadioactivityTest::result(const std::string& mode, double target_p) const {
  RadioactivityResult r;
  r.mode = mode;
  r.counts = counts_;
  r.test = master_.result();
  r.samples = samples_;
  r.target_p = target_p;
  const bool kgw = config_.scheme == "kgw";
  r.null_rate = kgw ? config_.kgw.gamma : 1.0;
  r.score_rate = r.test.tokens_scored > 0 ? r.test.score / double(r.test.tokens_scored) : 0.0;
  r.pairs_needed = r.test.tokens_scored > 0 ? radioactivity_pairs_needed(config_, r.score_rate, target_p) : -1;
  if (!account_scorers_.empty()) {
    std::vector<double> log_p(account_scorers_.size(), 0.0);
    for (size_t i = 0; i < account_scorers_.size(); ++i) {
      AccountDetection a;
      a.account = account_ids_[i];
      a.key_commitment = account_commitments_[i];
      a.result = account_scorers_[i].result();
      if (!a.result.too_short) log_p[i] = a.result.log10_p * std::log(10.0);
      r.accounts.push_back(std::move(a));
    }
    const std::vector<double> adj = holm_bonferroni_log(log_p);
    for (size_t i = 0; i < r.accounts.size(); ++i) {
      r.accounts[i].log10_p_holm = adj[i] / std::log(10.0);
      r.accounts[i].p_holm = std::exp(adj[i]);
    }
  }
  return r;
}

// ---- reading mode --------------------------------------------------------------------------------------------

std::vector<std::vector<int32_t>> top1_predictions(RuntimeModel& model,
                                                   const std::vector<std::vector<int32_t>>& sequences, int64_t chunk) {
  check(chunk >= 1, "top1_predictions: chunk must be >= 1");
  const int64_t V = model.hparams().n_vocab;
  std::vector<std::vector<int32_t>> out(sequences.size());
  for (size_t s = 0; s < sequences.size(); ++s) out[s].resize(sequences[s].size());
  // Groups of 8 sequences sharing one cache.
  for_each_position_logits(model, sequences, chunk, /*group=*/8, [&](size_t s, int64_t t, const float* row) {
    int32_t best = 0;  // argmax, lowest id on ties
    for (int64_t v = 1; v < V; ++v)
      if (row[v] > row[best]) best = int32_t(v);
    out[s][size_t(t)] = best;
  });
  return out;
}

bool same_tokenizer(const Tokenizer& a, const Tokenizer& b) {
  return a.n_vocab() == b.n_vocab() && a.hash() == b.hash();
}

void read_texts_with_suspect(RuntimeModel& suspect, const Tokenizer& suspect_tok, const Tokenizer& our_tok,
                             const std::vector<ReadingItem>& items, RadioactivityTest& test,
                             const std::function<void(size_t)>& progress) {
  const bool same = same_tokenizer(suspect_tok, our_tok);
  const int64_t n_ctx = suspect.hparams().max_position;
  // Batches of items, so that the predictions of one batch are scored before the next is read.
  constexpr size_t kBatch = 32;
  for (size_t i0 = 0; i0 < items.size(); i0 += kBatch) {
    const size_t i1 = std::min(items.size(), i0 + kBatch);
    std::vector<std::vector<int32_t>> ours(i1 - i0), theirs(i1 - i0), inputs(i1 - i0);
    for (size_t i = i0; i < i1; ++i) {
      const ReadingItem& it = items[i];
      ours[i - i0] = our_tok.encode(it.text, /*parse_special=*/false, /*add_bos=*/false);
      theirs[i - i0] = same ? ours[i - i0] : suspect_tok.encode(it.text, false, false);
      std::vector<int32_t>& in = inputs[i - i0];
      in = it.prefix;
      in.insert(in.end(), theirs[i - i0].begin(), theirs[i - i0].end());
      // A text longer than the suspect's context is read up to it (the rest is not offered).
      if (n_ctx > 0 && int64_t(in.size()) > n_ctx) in.resize(size_t(n_ctx));
    }
    const std::vector<std::vector<int32_t>> pred = top1_predictions(suspect, inputs);
    for (size_t k = 0; k < ours.size(); ++k) {
      const ReadingItem& it = items[i0 + k];
      const std::vector<int32_t>& x = ours[k];
      const std::vector<int32_t>& s = theirs[k];
      const size_t P = it.prefix.size();
      const size_t read = inputs[k].size() - P;  // suspect tokens of the text that were read
      // Suspect position j (its token s[j]) was predicted from row P + j − 1.
      auto prediction = [&](size_t j) { return pred[k][P + j - 1]; };
      test.begin_text(x, it.account);
      if (same) {
        for (size_t t = (P == 0 ? 1 : 0); t < read; ++t) test.add_reading(t, prediction(t));
        continue;
      }
      // Byte offsets of our token boundaries: offset -> number of our tokens before it.
      std::unordered_map<size_t, size_t> ours_at;
      size_t off = 0;
      ours_at[0] = 0;
      for (size_t t = 0; t < x.size(); ++t) ours_at[off += our_tok.token_bytes(x[t]).size()] = t + 1;
      size_t soff = 0;
      for (size_t j = 0; j < read; ++j) {
        if (j > 0 || P > 0) {
          const auto at = ours_at.find(soff);
          if (at == ours_at.end()) {
            test.add_unscorable();  // the suspect's position falls inside one of our tokens
          } else {
            const std::string piece = suspect_tok.token_bytes(prediction(j));
            const std::vector<int32_t> as_ours = our_tok.encode(piece, false, false);
            if (as_ours.size() == 1 && our_tok.token_bytes(as_ours[0]) == piece)
              test.add_reading(at->second, as_ours[0]);
            else
              test.add_unscorable();
          }
        }
        soff += suspect_tok.token_bytes(s[j]).size();
      }
    }
    if (progress) progress(i1);
  }
}

}  // namespace retort

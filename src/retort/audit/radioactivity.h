// retort/audit/radioactivity.h — was a suspect model trained on our watermarked text?
//
// Sander et al., "Watermarking Makes Language Models Radioactive" (NeurIPS 2024). A model fine-tuned on
// text watermarked with our key picks up the key's preference for "green" continuations; our key finds
// that preference in what the model predicts or writes, where nobody else can.
//
//   open model ("reading mode"): run our watermarked texts x through the suspect; at each position t take
//     its top-1 prediction p_t and score the pair (x_{t-w..t-1}, p_t) with our key — the window is the
//     REAL text, the token is the suspect's.
//   closed model: prompt the suspect, re-tokenize what it writes (y) with the key holder's tokenizer and
//     score (y_{t-w..t-1}, y_t).
//
// Both go through one RadioactivityTest, which filters every observation before it is scored:
//   no_window   fewer than w key-holder tokens before the position (w = detector_window);
//   in_prompt   the window occurs in a prompt (a model copying its prompt repeats our text, not our key);
//   unseen      (optional) the window never occurs in our served text — keeps only the windows the suspect
//               could have learned from, which sharpens the test when our text is a small share of its data;
//   unscorable  cross-tokenizer reading mode: the suspect's prediction is not exactly one key-holder token;
//   in_text     reading mode only: the prediction's scoring unit was a candidate at an EARLIER step of the
//               same watermarked text — its green-ness shaped that text, which the suspect reads, so a clean
//               model copying from its context would look radioactive. Unit = (window, token) for KGW
//               lefthash and Gumbel (the window occurred earlier in the text), (seed, token) for KGW selfhash
//               (the same min-hash seed at an earlier window). Every other unit's hash is independent of
//               everything the suspect sees (a keyed random function), so its score is a fair draw.
//   repeated    (window, token) already scored: each distinct pair counts once (WatermarkScorer's dedup;
//               KGW selfhash: each (seed, token)). Without it a clean model looks radioactive.
// Then the exact test of watermark_detect.h on the distinct pairs: KGW P[Bin(T, γ) >= green], Gumbel
// P[Gamma(T, 1) >= S], down to 1e-300 and below (log10_p). Per-account attribution scores the same pairs
// with every account's derived key, one p-value each, Holm–Bonferroni across accounts.
//
// Under the null (a model that never saw our watermark) the green-ness of a deduplicated pair is a fair
// coin of bias γ whatever the model predicts: the key is a keyed hash of (window, token), and the model does
// not know the key. So the p-value is exact for any suspect, and the control models check it empirically.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "retort/audit/watermark_detect.h"
#include "retort/protect/keys.h"

namespace retort {

class RuntimeModel;
class Tokenizer;

// A set of w-token windows (exact token sequences).
class WindowSet {
 public:
  explicit WindowSet(int width) : width_(width) {}
  // Every window of `width` consecutive tokens in `tokens`.
  void add_windows_of(std::span<const int32_t> tokens);
  // The last `width` tokens of `context` (false when shorter).
  bool contains_suffix_of(std::span<const int32_t> context) const;
  size_t size() const { return set_.size(); }
  int width() const { return width_; }

 private:
  int width_;
  std::unordered_set<std::string> set_;  // windows packed as width * 4 bytes
};

struct RadioactivityCounts {
  int64_t positions = 0;  // observations offered
  int64_t no_window = 0, in_prompt = 0, unseen = 0, unscorable = 0, in_text = 0, repeated = 0;
  // Reading texts served to a named account: pairs the master key does not score (that account's key
  // marked the text, and that account's test scores them; begin_text).
  int64_t other_key = 0;
  int64_t scored = 0;     // distinct pairs scored (the test's T)
};

// One position of a sample text, for people to read: the key holder's token there, the suspect's prediction
// (open test; -1 in the closed test), and what the test did with the pair.
struct SampleMark {
  enum Kind : int8_t { kNotScored = 0, kGreen = 1, kRed = 2 };  // gumbel: green = score above its mean 1
  int32_t token = 0;
  int32_t prediction = -1;
  Kind kind = kNotScored;
};

struct RadioactivityResult {
  std::string mode;  // "open" | "closed"
  RadioactivityCounts counts;
  DetectionResult test;                   // the master key (too_short: not enough evidence, no p-value)
  std::vector<AccountDetection> accounts; // per account, Holm-corrected; empty without accounts
  double score_rate = 0;                  // kgw: green share of the scored pairs; gumbel: mean score
  double null_rate = 0;                   // its value under the null: γ (kgw) or 1 (gumbel)
  // Scored pairs needed to reach p <= target_p at the observed rate (normal approximation); -1 when the
  // observed rate is not above the null's (more of the same evidence would not help).
  int64_t pairs_needed = -1;
  double target_p = 1e-5;
  std::vector<std::vector<SampleMark>> samples;  // the first texts, as set_samples asked
};

// Pairs needed for the one-sided test to reach p <= target_p when a share `rate` (kgw) or a mean score
// `rate` (gumbel) persists: T = (z_target · σ / (rate − null))² with σ² = γ(1 − γ) (kgw) or 1 (gumbel).
int64_t radioactivity_pairs_needed(const DetectorConfig& c, double rate, double target_p);

class RadioactivityTest {
 public:
  // accounts: account ids whose derived keys are tested too (empty: the master key only).
  RadioactivityTest(const WatermarkKey& master, DetectorConfig config, std::vector<std::string> accounts = {});
  // Filters (owned by the caller, must outlive the test; null = no filter). Widths must be window().
  void set_prompt_windows(const WindowSet* w);
  void set_seen_windows(const WindowSet* w);
  // Keep the marks of the first n texts (add_text / begin_text) for the case file.
  void set_samples(int n) { max_samples_ = n; }

  // One observation: `context` = the key holder's tokens before the position (the last window() are used),
  // `token` = the key holder's token there (open: the suspect's prediction; closed: what it wrote).
  // Returns true when the pair was scored.
  bool add(std::span<const int32_t> context, int32_t token);
  // A position the suspect predicted but whose prediction maps to no single key-holder token.
  void add_unscorable() { ++counts_.positions, ++counts_.unscorable; }
  // Every position t >= 1 of a text the suspect wrote, in key-holder tokens (closed mode).
  void add_text(std::span<const int32_t> tokens);

  // Reading mode: open one watermarked text (key-holder tokens; kept until the next begin_text), then
  // add_reading(t, p) for the suspect's prediction p of position t (context = text[0..t)), in any order.
  // `account`: the index (account_index) of the account the text was served to — only that account's key
  // can have marked it, so only its test scores the text's positions (other accounts' tests, and the master
  // key's, would add null pairs and dilute the evidence: counted as other_key); kAllAccounts: every test
  // scores it (who got it is unknown); kNoAccount: served to an account not tested — no test scores it.
  static constexpr int kAllAccounts = -1, kNoAccount = -2;
  void begin_text(std::span<const int32_t> text, int account = kAllAccounts);
  // Index of an account id in the tested list; kNoAccount when it is not there.
  int account_index(const std::string& account) const;
  bool add_reading(size_t t, int32_t prediction);

  RadioactivityResult result(const std::string& mode, double target_p = 1e-5) const;
  int window() const { return window_; }
  const DetectorConfig& config() const { return config_; }

 private:
  DetectorConfig config_;
  int window_;
  WatermarkScorer master_;
  std::vector<std::string> account_ids_;
  std::vector<std::string> account_commitments_;
  std::vector<WatermarkScorer> account_scorers_;
  // Reading mode: the open text, and (lefthash, gumbel) the first position each of its windows starts a step.
  std::vector<int32_t> text_;
  int text_account_ = kAllAccounts;  // begin_text's account; add_text and add() outside reading: all
  std::unordered_map<std::string, size_t> text_window_first_;
  const WindowSet* prompt_windows_ = nullptr;
  const WindowSet* seen_windows_ = nullptr;
  RadioactivityCounts counts_;
  int max_samples_ = 0;
  std::vector<std::vector<SampleMark>> samples_;
  SampleMark* open_sample_ = nullptr;  // the current text's marks when it is a sample (else null)
  size_t open_sample_len_ = 0;
  void start_sample(std::span<const int32_t> tokens);
  void mark(size_t t, int32_t prediction, bool scored, double score);
};

// ---- open model: the suspect reads our texts ------------------------------------------------------------

// One watermarked text as the suspect reads it: `prefix` (the suspect's tokens before it: its BOS and/or
// the chat-rendered prompt; may be empty) then `text`.
struct ReadingItem {
  std::vector<int32_t> prefix;
  std::string text;
  int account = RadioactivityTest::kAllAccounts;  // see RadioactivityTest::begin_text
};

// The suspect's top-1 prediction at every position of prefix + tokens: out[j] = argmax of its logits
// after (prefix + tokens)[0..j] — i.e. its guess for position j + 1. Batched over items, `chunk` tokens
// per forward call. Ties go to the lowest id (as greedy decoding).
std::vector<std::vector<int32_t>> top1_predictions(RuntimeModel& model,
                                                   const std::vector<std::vector<int32_t>>& sequences,
                                                   int64_t chunk = 128);

// Reading mode end to end: tokenizes each text with both tokenizers (ours = key holder's), runs the
// suspect and adds one observation per text position to `test`. With the same tokenizer the suspect's
// prediction is scored as is. With another one, a suspect position is used where its byte offset is also
// a boundary of our tokenization, and its predicted token's bytes must encode to exactly one of our
// tokens (else add_unscorable). `progress` (may be null) is called after each batch with items done.
void read_texts_with_suspect(RuntimeModel& suspect, const Tokenizer& suspect_tok, const Tokenizer& our_tok,
                             const std::vector<ReadingItem>& items, RadioactivityTest& test,
                             const std::function<void(size_t)>& progress = {});

// True when two tokenizers give the same ids for every string (same vocabulary, merges and settings).
bool same_tokenizer(const Tokenizer& a, const Tokenizer& b);

}  // namespace retort

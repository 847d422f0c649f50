// retort/audit/provenance.cpp — see provenance.h for the test and why it is valid.
#include "retort/audit/provenance.h"

#include <algorithm>
#include <cmath>

#include "retort/util/error.h"
#include "retort/util/stats.h"

namespace retort {

namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\v' || c == '\f' || c == '\r'; }

}  // namespace

std::vector<std::string_view> split_words(std::string_view text) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < text.size()) {
    while (i < text.size() && is_space(text[i])) ++i;
    const size_t a = i;
    while (i < text.size() && !is_space(text[i])) ++i;
    if (i > a) out.push_back(text.substr(a, i - a));
  }
  return out;
}

double word_prefix_similarity(std::string_view a, std::string_view b, int k) {
  check(k >= 1, "word_prefix_similarity: k must be >= 1, not ", k);
  const std::vector<std::string_view> wa = split_words(a), wb = split_words(b);
  const size_t n = std::min({wa.size(), wb.size(), size_t(k)});
  int matches = 0;
  for (size_t j = 0; j < n; ++j) matches += wa[j] == wb[j];
  return double(matches) / double(k);
}

double sign_test_log_p(int64_t positive, int64_t negative) {
  const int64_t n = positive + negative;
  if (n <= 0) return 0.0;
  return log_binomial_sf(positive, n, 0.5);
}

void check_provenance_config(const ProvenanceConfig& c) {
  check(c.words >= 1, "provenance: --words (word positions compared per answer) must be >= 1, not ", c.words);
  check(c.alpha > 0 && c.alpha < 1, "provenance: --alpha must be in (0, 1), not ", c.alpha);
  check(c.batch >= 1, "provenance: --batch (prompts between looks) must be >= 1, not ", c.batch);
  check(c.budget >= c.batch, "provenance: --budget ", c.budget, " is smaller than one batch (--batch ", c.batch,
        "); raise the budget or lower the batch");
}

ProvenanceTest::ProvenanceTest(const ProvenanceConfig& config, int64_t n_candidates, int64_t n_controls,
                               int64_t prompts_available)
    : cfg_(config) {
  check_provenance_config(cfg_);
  check(n_candidates >= 1, "provenance: no candidate parent to test (give --candidate)");
  check(n_controls >= 1, "provenance: no control models: the test compares each candidate with models known to be "
        "unrelated to the suspect (give --controls C1,C2,...)");
  check(prompts_available >= cfg_.batch, "provenance: ", prompts_available, " prompts are fewer than one batch (--batch ",
        cfg_.batch, "); give more prompts or a smaller batch");
  max_prompts_ = std::min(cfg_.budget, prompts_available);
  looks_planned_ = (max_prompts_ + cfg_.batch - 1) / cfg_.batch;
  cands_.resize(size_t(n_candidates));
  for (auto& c : cands_) c.controls.resize(size_t(n_controls));
  ctrl_sum_.assign(size_t(n_controls), 0.0);
}

int64_t ProvenanceTest::next_batch() const {
  if (stopped_) return 0;
  return std::min(cfg_.batch, max_prompts_ - (used_ - since_look_));
}

void ProvenanceTest::add(const std::vector<double>& sim_candidates, const std::vector<double>& sim_controls) {
  check(!stopped_, "provenance: add() after the test stopped");
  check(since_look_ < next_batch(), "provenance: add() of more prompts than the batch holds; call look()");
  check(sim_candidates.size() == cands_.size() && sim_controls.size() == ctrl_sum_.size(),
        "provenance: add() needs one similarity per candidate (", cands_.size(), ") and per control (", ctrl_sum_.size(),
        ")");
  for (size_t j = 0; j < cands_.size(); ++j) {
    ProvenanceCandidate& t = cands_[j];
    const double st = sim_candidates[j];
    check(std::isnan(st) == t.decided(), "provenance: add(): candidate ", j, " ",
          t.decided() ? "is decided and must get NaN" : "is undecided and needs a similarity");
    if (t.decided()) continue;
    ++t.prompts;
    t.sum_sim += st;
    for (size_t c = 0; c < ctrl_sum_.size(); ++c) {
      ProvenanceControlStats& k = t.controls[c];
      const double sc = sim_controls[c];
      k.sum_sim += sc;
      if (st > sc) ++k.positive;
      else if (st < sc) ++k.negative;
      else ++k.ties;
    }
  }
  for (size_t c = 0; c < ctrl_sum_.size(); ++c) ctrl_sum_[c] += sim_controls[c];
  ++used_;
  ++since_look_;
}

void ProvenanceTest::add_answers(const std::string& suspect, const std::vector<std::string>& candidates,
                                 const std::vector<std::string>& controls) {
  check(candidates.size() == cands_.size() && controls.size() == ctrl_sum_.size(),
        "provenance: add_answers() needs one answer per candidate and per control");
  std::vector<double> st(cands_.size()), sc(ctrl_sum_.size());
  for (size_t j = 0; j < st.size(); ++j)
    st[j] = cands_[j].decided() ? std::nan("") : word_prefix_similarity(suspect, candidates[j], cfg_.words);
  for (size_t c = 0; c < sc.size(); ++c) sc[c] = word_prefix_similarity(suspect, controls[c], cfg_.words);
  add(st, sc);
}

bool ProvenanceTest::look() {
  check(!stopped_, "provenance: look() after the test stopped");
  check(since_look_ == next_batch(), "provenance: look() after ", since_look_, " prompts; the batch holds ",
        next_batch());
  ++looks_;
  since_look_ = 0;
  const double log_looks = std::log(double(looks_planned_));
  const double log_alpha = std::log(cfg_.alpha);
  const int64_t remaining = max_prompts_ - used_;

  // Sign tests of every candidate still being asked (a decided one keeps the values it was decided with).
  for (ProvenanceCandidate& t : cands_) {
    if (t.decided()) continue;
    t.log_p = -INFINITY;
    for (ProvenanceControlStats& k : t.controls) {
      k.log_p = sign_test_log_p(k.positive, k.negative);
      t.log_p = std::max(t.log_p, k.log_p);  // intersection–union: T must beat every control
    }
    t.log_p_min = looks_ == 1 ? t.log_p : std::min(t.log_p_min, t.log_p);
    t.log_p_seq = std::min(0.0, log_looks + t.log_p_min);  // Bonferroni over the planned looks
  }

  std::vector<double> seq(cands_.size());
  for (size_t j = 0; j < cands_.size(); ++j) seq[j] = cands_[j].log_p_seq;
  const std::vector<double> holm = holm_bonferroni_log(seq);
  for (size_t j = 0; j < cands_.size(); ++j) {
    ProvenanceCandidate& t = cands_[j];
    t.log_p_holm = holm[j];
    if (t.decided()) continue;
    if (t.log_p_holm <= log_alpha) {
      t.derived = true;
      t.decided_look = looks_;
      continue;
    }
    if (remaining == 0) continue;
    // Futility: the best the rest could do is one more positive difference per prompt against every control.
    double best = -INFINITY;
    for (const ProvenanceControlStats& k : t.controls)
      best = std::max(best, sign_test_log_p(k.positive + remaining, k.negative));
    if (log_looks + std::min(t.log_p_min, best) > log_alpha) {
      t.futile = true;
      t.decided_look = looks_;
    }
  }

  bool all_decided = true;
  for (const ProvenanceCandidate& t : cands_) all_decided = all_decided && t.decided();
  stopped_ = all_decided || remaining == 0;
  return stopped_;
}

}  // namespace retort

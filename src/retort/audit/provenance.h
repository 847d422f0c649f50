// retort/audit/provenance.h — model provenance testing (Nikolic et al., NeurIPS 2025, "Model Provenance
// Testing for Large Language Models"): is a suspect model derived from a candidate parent?
//
// Every model answers the same prompts greedily. On prompt i the suspect S is compared with a candidate T
// and with each control C (models known to be unrelated to S) by a tokenizer-free similarity
//   s_i(S, X) = #{ j < k : word_j(S's answer) == word_j(X's answer) } / k      (words split on whitespace;
//                                                                              a missing word never matches)
// H0(T, C): S is no more similar to T than to C — the paired differences d_i = s_i(S,T) − s_i(S,C) are
// symmetric about 0. Exact one-sided sign test: p = P[Bin(n, 1/2) >= #{d_i > 0}], n = #{d_i != 0}.
// T must beat every control, so T's p is the largest over controls (an intersection–union test: valid at
// level α with no correction over controls).
//
// Sequential design: prompts in batches; after each batch a look; L = ceil(max_prompts / batch) looks are
// planned. Bonferroni over looks: P_T = min(1, L · min over looks of p_T) is a p-value for the whole run
// (P[some look has p_T <= α/L] <= α). Holm–Bonferroni across candidates on the P_T; T is declared derived
// when its Holm-adjusted P_T <= α. Both steps are monotone, so a candidate once declared stays declared, and
// stopping early (or freezing a decided candidate's statistics) only raises the P_T's: the family-wise
// error over candidates and looks stays <= α.
//
// A candidate is decided when declared derived, or futile: even if every remaining prompt favoured it over
// every control, its P_T could not reach α. A decided candidate is asked nothing more; the test stops when
// every candidate is decided or the budget is spent.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace retort {

// Whitespace-separated words of a text (ASCII space, \t, \n, \v, \f, \r).
std::vector<std::string_view> split_words(std::string_view text);
// The share of the first k word positions where both texts have the same word (see above). k >= 1.
double word_prefix_similarity(std::string_view a, std::string_view b, int k);

// Exact one-sided sign test: log P[Bin(positive + negative, 1/2) >= positive] (natural log); 0 when there
// are no nonzero differences.
double sign_test_log_p(int64_t positive, int64_t negative);

struct ProvenanceConfig {
  int words = 16;         // k: word positions compared per answer
  double alpha = 0.01;    // family-wise error rate over candidates and looks
  int64_t batch = 50;     // prompts between looks
  int64_t budget = 1000;  // most prompts the suspect is asked
};
// Throws retort::Error naming the bad field (words < 1, alpha outside (0, 1), batch < 1, budget < batch).
void check_provenance_config(const ProvenanceConfig& c);

// One candidate against one control, over the prompts the candidate was asked.
struct ProvenanceControlStats {
  double sum_sim = 0;                       // Σ s_i(S, C)
  int64_t positive = 0, negative = 0, ties = 0;  // signs of d_i = s_i(S,T) − s_i(S,C)
  double log_p = 0;                         // sign test at the latest look (natural log)
};

struct ProvenanceCandidate {
  int64_t prompts = 0;     // prompts this candidate was asked (frozen once decided)
  double sum_sim = 0;      // Σ s_i(S, T)
  std::vector<ProvenanceControlStats> controls;
  double log_p = 0;        // max over controls at the latest look
  double log_p_min = 0;    // smallest log_p over the looks
  double log_p_seq = 0;    // log min(1, L · exp(log_p_min)): valid for the sequential design
  double log_p_holm = 0;   // Holm–Bonferroni across candidates of the P_T
  bool derived = false;    // log_p_holm <= log α
  bool futile = false;     // not derived, and could not become so with the prompts left
  int64_t decided_look = 0;  // the look (1-based) that decided it; 0 while undecided
  double mean_sim() const { return prompts > 0 ? sum_sim / double(prompts) : 0.0; }
  double mean_sim_control(size_t c) const { return prompts > 0 ? controls[c].sum_sim / double(prompts) : 0.0; }
  bool decided() const { return derived || futile; }
};

// The sequential test. Usage:
//   ProvenanceTest t(cfg, n_candidates, n_controls, prompts_available);
//   while (int64_t n = t.next_batch()) {
//     for each of the next n prompts: t.add(sim to each candidate (NaN for a decided one), sim to each control);
//     t.look();
//   }
class ProvenanceTest {
 public:
  // Throws retort::Error for a bad config, no candidates, no controls, or fewer prompts than one batch.
  ProvenanceTest(const ProvenanceConfig& config, int64_t n_candidates, int64_t n_controls, int64_t prompts_available);

  const ProvenanceConfig& config() const { return cfg_; }
  int64_t max_prompts() const { return max_prompts_; }  // min(budget, prompts available)
  int64_t planned_looks() const { return looks_planned_; }
  int64_t looks() const { return looks_; }
  int64_t prompts_used() const { return used_; }
  // Prompts to add before the next look; 0 once the test has stopped.
  int64_t next_batch() const;
  bool stopped() const { return stopped_; }
  // True when it stopped before the budget (every candidate decided).
  bool stopped_early() const { return stopped_ && used_ < max_prompts_; }
  // Whether candidate j still needs answers (not decided).
  bool wants_candidate(size_t j) const { return !cands_[j].decided(); }

  // One prompt: sim_candidates[j] = s(S, T_j), NaN exactly for the decided candidates (they were not asked);
  // sim_controls[c] = s(S, C_c). Values in [0, 1].
  void add(const std::vector<double>& sim_candidates, const std::vector<double>& sim_controls);
  // The same from answers (empty strings for the decided candidates), compared with config().words.
  void add_answers(const std::string& suspect, const std::vector<std::string>& candidates,
                   const std::vector<std::string>& controls);
  // After next_batch() prompts were added: updates every p-value and decision. Returns stopped().
  bool look();

  const std::vector<ProvenanceCandidate>& candidates() const { return cands_; }
  // Mean s(S, C) over every prompt used.
  double control_mean_sim(size_t c) const { return used_ > 0 ? ctrl_sum_[c] / double(used_) : 0.0; }

 private:
  ProvenanceConfig cfg_;
  int64_t max_prompts_ = 0, looks_planned_ = 0, looks_ = 0, used_ = 0, since_look_ = 0;
  bool stopped_ = false;
  std::vector<ProvenanceCandidate> cands_;
  std::vector<double> ctrl_sum_;
};

}  // namespace retort

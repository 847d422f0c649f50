// retort/distill/answer_quality.cpp — greedy answers, their repetition and the teacher's NLL of them
// (see answer_quality.h).
#include "retort/distill/answer_quality.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <unordered_set>

#include <torch/torch.h>

#include "retort/decode/generate.h"
#include "retort/distill/evaluate.h"
#include "retort/model/causal_lm.h"
#include "retort/util/error.h"

namespace retort {

nlohmann::json AnswerQuality::to_json() const {
  nlohmann::json j = {{"answers", answers},         {"tokens", tokens},   {"repeated_4gram", repeated_4gram},
                      {"stopped", stopped},         {"mean_tokens", mean_tokens}};
  j["teacher_nll"] = std::isnan(teacher_nll) ? nlohmann::json(nullptr) : nlohmann::json(teacher_nll);
  return j;
}

double repeated_ngram_share(const std::vector<int32_t>& ids, int n) {
  check(n >= 1, "repeated_ngram_share: n must be >= 1, got ", n);
  if (int64_t(ids.size()) < n) return 0.0;
  // An n-gram of 32-bit ids packed into one string key (exact, no hash collisions to reason about).
  std::unordered_set<std::string> seen;
  const size_t grams = ids.size() - size_t(n) + 1;
  size_t repeated = 0;
  for (size_t i = 0; i < grams; ++i) {
    std::string key(reinterpret_cast<const char*>(ids.data() + i), sizeof(int32_t) * size_t(n));
    if (!seen.insert(std::move(key)).second) ++repeated;
  }
  return double(repeated) / double(grams);
}

namespace {

// Σ −log p_teacher over the answer tokens of each (prompt, answer) pair; batches of similar length.
double teacher_nll_sum(CausalLMImpl& teacher, const std::vector<std::vector<int32_t>>& prompts,
                       const std::vector<std::vector<int32_t>>& answers, int64_t batch_tokens) {
  torch::NoGradGuard no_grad;
  const torch::Device dev = teacher.device();
  std::vector<size_t> order;
  for (size_t i = 0; i < prompts.size(); ++i)
    if (!answers[i].empty()) order.push_back(i);
  auto len = [&](size_t i) { return int64_t(prompts[i].size() + answers[i].size()); };
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return len(a) > len(b); });
  double sum = 0;
  const int64_t chunk_rows = 256;  // live logits: [chunk_rows, V] float32
  size_t b0 = 0;
  while (b0 < order.size()) {
    const int64_t L = len(order[b0]);
    size_t b1 = b0 + 1;
    while (b1 < order.size() && int64_t(b1 - b0 + 1) * L <= batch_tokens) ++b1;
    const int64_t B = int64_t(b1 - b0);
    // tokens [B, L] right-padded with 0; answer token j of row b is predicted at position |prompt| − 1 + j.
    std::vector<int64_t> tok(size_t(B * L), 0), rows, targets;
    for (int64_t b = 0; b < B; ++b) {
      const auto& p = prompts[order[b0 + size_t(b)]];
      const auto& a = answers[order[b0 + size_t(b)]];
      int64_t t = 0;
      for (int32_t id : p) tok[size_t(b * L + t++)] = id;
      for (size_t j = 0; j < a.size(); ++j) {
        tok[size_t(b * L + t++)] = a[j];
        rows.push_back(b * L + int64_t(p.size()) - 1 + int64_t(j));
        targets.push_back(a[j]);
      }
    }
    const int64_t N = int64_t(rows.size());
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    torch::Tensor hidden = teacher.forward_hidden(torch::from_blob(tok.data(), {B, L}, i64).to(dev)).reshape({B * L, -1});
    hidden = hidden.index_select(0, torch::from_blob(rows.data(), {N}, i64).to(dev));  // [N, d]
    torch::Tensor tgt = torch::from_blob(targets.data(), {N}, i64).to(dev);
    for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
      const int64_t r1 = std::min(N, r0 + chunk_rows);
      torch::Tensor logq = torch::log_softmax(teacher.lm_logits(hidden.slice(0, r0, r1)).to(torch::kFloat32), -1);
      sum -= logq.gather(1, tgt.slice(0, r0, r1).unsqueeze(1)).to(torch::kFloat64).sum().item<double>();
    }
    b0 = b1;
  }
  return sum;
}

}  // namespace

AnswerQuality answer_quality(const CheckpointInfo& info, CachedLM& lm, const std::vector<std::vector<int32_t>>& prompts,
                             int64_t max_tokens, CausalLMImpl* teacher, int64_t batch_tokens) {
  check(max_tokens >= 1, "answer quality: max_tokens must be >= 1, got ", max_tokens);
  check(batch_tokens >= 1, "answer quality: batch_tokens must be >= 1, got ", batch_tokens);
  AnswerQuality q;
  q.teacher_nll = std::numeric_limits<double>::quiet_NaN();
  if (prompts.empty()) return q;
  int64_t stopped = 0;
  double rep = 0;
  for (auto& r : greedy_generate(info, lm, prompts, max_tokens)) {
    std::vector<int32_t> ids;
    for (const auto& t : r.tokens) ids.push_back(t.token);
    rep += repeated_ngram_share(ids, 4);
    stopped += r.finish_reason == "stop";
    q.tokens += int64_t(ids.size());
    q.ids.push_back(std::move(ids));
    q.texts.push_back(std::move(r.text));
  }
  q.answers = int64_t(q.ids.size());
  q.repeated_4gram = rep / double(q.answers);
  q.stopped = double(stopped) / double(q.answers);
  q.mean_tokens = double(q.tokens) / double(q.answers);
  if (teacher != nullptr) score_answers(q, prompts, *teacher, batch_tokens);
  return q;
}

void score_answers(AnswerQuality& q, const std::vector<std::vector<int32_t>>& prompts, CausalLMImpl& teacher,
                   int64_t batch_tokens) {
  check(prompts.size() == q.ids.size(), "answer quality: ", q.ids.size(), " answers for ", prompts.size(), " prompts");
  check(batch_tokens >= 1, "answer quality: batch_tokens must be >= 1, got ", batch_tokens);
  if (q.tokens > 0) q.teacher_nll = teacher_nll_sum(teacher, prompts, q.ids, batch_tokens) / double(q.tokens);
}

}  // namespace retort

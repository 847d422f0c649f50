// retort/distill/evaluate.cpp — student-vs-teacher metrics on a signal store (see evaluate.h).
#include "retort/distill/evaluate.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include <torch/torch.h>

#include "retort/decode/generate.h"
#include "retort/distill/losses.h"
#include "retort/distill/signal_store.h"
#include "retort/model/causal_lm.h"
#include "retort/model/runtime_model.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

namespace retort {

nlohmann::json EvalMetrics::to_json() const {
  nlohmann::json j = {{"samples", samples},         {"positions", positions},       {"nll", nll},
                      {"ppl", ppl},                 {"teacher_nll", teacher_nll},   {"top1_agree", top1_agree},
                      {"kl", kl},                   {"student_tail", student_tail}, {"teacher_tail", teacher_tail}};
  if (kl_dense >= 0) j["kl_dense"] = kl_dense;
  return j;
}

EvalMetrics evaluate_on_store(CausalLMImpl& model, const SignalStore& store, const std::string& tokenizer_hash,
                              int64_t max_samples, int64_t batch_tokens, CausalLMImpl* dense_teacher) {
  const StoreManifest& man = store.manifest();
  check(man.tokenizer_hash == tokenizer_hash, "signal store ", store.dir(), " was captured with tokenizer ",
        man.tokenizer_hash, " but the model being evaluated uses tokenizer ", tokenizer_hash,
        ": evaluate a model that shares the teacher's tokenizer, or capture a store with this one");
  const ModelHParams& hp = model.hparams();
  check(man.n_vocab <= hp.n_vocab, "signal store ", store.dir(), " has vocabulary size ", man.n_vocab,
        " but the model has only ", hp.n_vocab, " logits");
  check(man.k >= 1, "signal store ", store.dir(), ": k = ", man.k, " (need at least the teacher's top-1)");
  check(batch_tokens >= 1, "evaluate: batch_tokens must be >= 1 (got ", batch_tokens, ")");
  check(!dense_teacher || dense_teacher->hparams().n_vocab == hp.n_vocab, "evaluate: the teacher has ",
        dense_teacher ? dense_teacher->hparams().n_vocab : 0, " logits and the model ", hp.n_vocab,
        ": a dense KL needs one vocabulary");

  const int64_t n = max_samples > 0 ? std::min(max_samples, store.n_samples()) : store.n_samples();
  const int64_t k = man.k;
  std::vector<SignalSample> samples;
  samples.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    SignalSample s = store.sample(i);
    check(s.prompt_len >= 1 || s.completion_len() == 0, "signal store ", store.dir(), ": sample ", s.id,
          " has no prompt token, so its first completion token has no prediction");
    check(hp.max_position <= 0 || s.n_tokens <= hp.max_position, "signal store ", store.dir(), ": sample ", s.id,
          " has ", s.n_tokens, " tokens, more than the model's context of ", hp.max_position);
    if (s.completion_len() > 0) samples.push_back(s);
  }
  // Longest first, so each batch's rows have similar lengths (little padding).
  std::stable_sort(samples.begin(), samples.end(),
                   [](const SignalSample& a, const SignalSample& b) { return a.n_tokens > b.n_tokens; });

  LossConfig fkl;  // KL(p‖q) on the stored top-k + tail bucket, τ = 1: the same definition as training
  fkl.kind = LossKind::ForwardKL;
  fkl.temperature = 1.0;
  fkl.t2_scale = false;
  const int64_t chunk_rows = 256;  // live logits: [chunk_rows, V] float32
  const torch::Device dev = model.device();

  torch::NoGradGuard no_grad;
  double nll_sum = 0, teacher_nll_sum = 0, kl_sum = 0, kl_dense_sum = 0, student_tail_sum = 0, teacher_tail_sum = 0;
  int64_t agree = 0, positions = 0;
  size_t b0 = 0;
  while (b0 < samples.size()) {
    // Pack rows while B × L (L = the first, longest row) stays within batch_tokens.
    const int64_t L = samples[b0].n_tokens;
    size_t b1 = b0 + 1;
    while (b1 < samples.size() && int64_t(b1 - b0 + 1) * L <= batch_tokens) ++b1;
    const int64_t B = int64_t(b1 - b0);

    // tokens [B, L] right-padded with 0 (causal attention: padding never reaches valid positions).
    // Scored row c of sample s is position prompt_len − 1 + j of its row (predicting token prompt_len + j).
    std::vector<int64_t> tok(B * L, 0), rows;
    std::vector<int64_t> targets, topk_ids;
    std::vector<float> topk_lp, tail;
    for (int64_t b = 0; b < B; ++b) {
      const SignalSample& s = samples[b0 + b];
      for (int64_t t = 0; t < s.n_tokens; ++t) tok[b * L + t] = s.tokens[t];
      for (int64_t j = 0; j < s.completion_len(); ++j) {
        rows.push_back(b * L + s.prompt_len - 1 + j);
        targets.push_back(s.tokens[s.prompt_len + j]);
        for (int64_t i = 0; i < k; ++i) {
          topk_ids.push_back(s.topk_ids[j * k + i]);
          topk_lp.push_back(s.topk_logprobs[j * k + i]);
        }
        tail.push_back(std::max(0.0f, s.tail_mass[j]));
        teacher_tail_sum += std::max(0.0f, s.tail_mass[j]);
        teacher_nll_sum -= s.token_logprob[j];
      }
    }
    const int64_t N = int64_t(rows.size());
    auto i64 = torch::TensorOptions().dtype(torch::kInt64);
    auto f32 = torch::TensorOptions().dtype(torch::kFloat32);
    torch::Tensor tokens = torch::from_blob(tok.data(), {B, L}, i64).to(dev);
    torch::Tensor hidden = model.forward_hidden(tokens).reshape({B * L, -1});  // [B·L, d] float32
    hidden = hidden.index_select(0, torch::from_blob(rows.data(), {N}, i64).to(dev));  // [N, d]
    torch::Tensor tgt = torch::from_blob(targets.data(), {N}, i64).to(dev);
    torch::Tensor ids = torch::from_blob(topk_ids.data(), {N, k}, i64).to(dev);
    torch::Tensor lps = torch::from_blob(topk_lp.data(), {N, k}, f32).to(dev);
    torch::Tensor tails = torch::from_blob(tail.data(), {N}, f32).to(dev);
    torch::Tensor teacher_hidden;  // [N, d_teacher]
    if (dense_teacher)
      teacher_hidden = dense_teacher->forward_hidden(tokens.to(dense_teacher->device()))
                           .reshape({B * L, -1})
                           .index_select(0, torch::from_blob(rows.data(), {N}, i64).to(dense_teacher->device()));

    for (int64_t r0 = 0; r0 < N; r0 += chunk_rows) {
      const int64_t r1 = std::min(N, r0 + chunk_rows);
      torch::Tensor logits = model.lm_logits(hidden.slice(0, r0, r1)).to(torch::kFloat32);  // [c, V]
      torch::Tensor logq = torch::log_softmax(logits, -1);
      nll_sum -= logq.gather(1, tgt.slice(0, r0, r1).unsqueeze(1)).sum().item<double>();
      agree += (logits.argmax(-1) == ids.slice(0, r0, r1).select(1, 0)).sum().item<int64_t>();
      torch::Tensor kl = sparse_loss_rows(logits, ids.slice(0, r0, r1), lps.slice(0, r0, r1),
                                          tails.slice(0, r0, r1), fkl);
      kl_sum += kl.to(torch::kFloat64).sum().item<double>();
      // q mass outside the teacher's top-k: 1 − Σ_{i ∈ top-k} q_i  (float64 so the sum of small terms holds)
      torch::Tensor q_topk = logq.gather(1, ids.slice(0, r0, r1)).to(torch::kFloat64).exp().sum(1);
      student_tail_sum += (1.0 - q_topk).clamp_min(0.0).sum().item<double>();
      if (dense_teacher) {
        // KL(p‖q) = Σ_v p_v (log p_v − log q_v) over the whole vocabulary, in float64.
        torch::Tensor logp = torch::log_softmax(
            dense_teacher->lm_logits(teacher_hidden.slice(0, r0, r1)).to(torch::kFloat64), -1);
        torch::Tensor lq = logq.to(torch::kFloat64).to(logp.device());
        kl_dense_sum += (logp.exp() * (logp - lq)).sum().item<double>();
      }
    }
    positions += N;
    b0 = b1;
  }

  EvalMetrics m;
  m.samples = n;
  m.positions = positions;
  if (positions > 0) {
    m.nll = nll_sum / positions;
    m.teacher_nll = teacher_nll_sum / positions;
    m.top1_agree = double(agree) / positions;
    m.kl = kl_sum / positions;
    m.student_tail = student_tail_sum / positions;
    m.teacher_tail = teacher_tail_sum / positions;
    if (dense_teacher) m.kl_dense = kl_dense_sum / positions;
  }
  m.ppl = std::exp(m.nll);
  return m;
}

std::vector<std::vector<int32_t>> store_prompts(const SignalStore& store, int64_t n) {
  const nlohmann::json& g = store.manifest().generation;
  int64_t spp = g.is_object() && g.contains("samples_per_prompt") && g["samples_per_prompt"].is_number_integer()
                    ? std::max<int64_t>(1, g["samples_per_prompt"].get<int64_t>())
                    : 1;
  std::vector<std::vector<int32_t>> out;
  std::vector<int64_t> seen;
  for (int64_t i = 0; i < store.n_samples() && int64_t(out.size()) < n; ++i) {
    SignalSample s = store.sample(i);
    int64_t prompt_index = s.id / spp;
    if (s.prompt_len < 1 || std::find(seen.begin(), seen.end(), prompt_index) != seen.end()) continue;
    seen.push_back(prompt_index);
    out.emplace_back(s.tokens, s.tokens + s.prompt_len);
  }
  return out;
}

std::string prompt_display(const Tokenizer& tok, const std::vector<int32_t>& ids) {
  std::vector<std::string> segs(1);
  for (int32_t id : ids) {
    if (tok.is_special(id))
      segs.emplace_back();
    else
      segs.back() += tok.decode({id});
  }
  auto trim = [](std::string s) {
    size_t a = s.find_first_not_of(" \t\r\n"), b = s.find_last_not_of(" \t\r\n");
    return a == std::string::npos ? std::string() : s.substr(a, b - a + 1);
  };
  std::string best;
  for (auto s : segs) {
    s = trim(s);
    size_t nl = s.find('\n');
    std::string head = s.substr(0, nl);
    if (head == "system" || head == "user" || head == "assistant") s = nl == std::string::npos ? "" : trim(s.substr(nl));
    if (!s.empty()) best = s;
  }
  return best;
}

std::vector<GenerationResult> greedy_generate(const CheckpointInfo& info, CachedLM& lm,
                                              const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens) {
  std::vector<GenerationRequest> reqs;
  for (const auto& p : prompts) {
    GenerationRequest r;
    r.prompt = p;
    r.sampling.temperature = 0;
    r.max_tokens = max_tokens;
    reqs.push_back(std::move(r));
  }
  return generate(info, lm, reqs);
}

std::vector<std::string> greedy_replies(const CheckpointInfo& info, CachedLM& lm,
                                        const std::vector<std::vector<int32_t>>& prompts, int64_t max_tokens) {
  std::vector<std::string> out;
  for (auto& r : greedy_generate(info, lm, prompts, max_tokens)) out.push_back(std::move(r.text));
  return out;
}

}  // namespace retort

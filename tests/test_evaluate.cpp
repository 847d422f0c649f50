// Tests for retort/distill/evaluate: evaluate_on_store (batched, padded, chunked) against an
// independent float64 recomputation — one plain model.forward per sample, log_softmax in
// double, KL(p‖q) on the top-k + tail bucket written out from its definition — and, on the
// default model, a teacher scored on a store captured from itself (agreement 1, KL ≈ 0,
// forward NLL == the stored token log-probs).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#include "retort/distill/capture.h"
#include "retort/distill/evaluate.h"
#include "retort/distill/signal_store.h"
#include "retort/model/llama.h"
#include "retort/model/loader.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using namespace retort_test;

namespace {

std::string default_model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base = home && *home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

ModelHParams tiny_hparams() {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = 96, hp.n_embd = 32, hp.n_layer = 2, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 8, hp.n_ff = 48;
  hp.max_position = 64;
  hp.rope_theta = 10000.0, hp.rms_eps = 1e-5;
  hp.tie_embeddings = true;
  return hp;
}

struct TinySample {
  std::vector<int32_t> tokens;
  int64_t prompt_len;
  std::vector<float> token_lp, topk_lp, tail;
  std::vector<int32_t> topk_ids;
};

// A store of `n` samples from a made-up "teacher": random logits per position (float64 softmax),
// its k best ids by prob desc, their log-probs, the tail mass, and a token drawn from it.
std::vector<TinySample> write_tiny_store(const std::string& dir, int64_t n, int64_t k, int64_t V, uint64_t seed) {
  StoreManifest man;
  man.mode = "generate";
  man.teacher = {{"spec", "made-up"}};
  man.tokenizer_hash = "tiny-tokenizer";
  man.n_vocab = V;
  man.k = k;
  man.generation = {{"temperature", 1.0}, {"samples_per_prompt", 1}};
  man.prompts = {{"path", "none"}, {"count", n}};
  SignalStoreWriter w(dir, man);
  std::mt19937_64 rng(seed);
  std::normal_distribution<double> normal(0.0, 2.0);
  std::uniform_real_distribution<double> uni(0.0, 1.0);
  std::vector<TinySample> out;
  for (int64_t s = 0; s < n; ++s) {
    TinySample t;
    t.prompt_len = 1 + int64_t(rng() % 6);
    int64_t comp = 1 + int64_t(rng() % 14);
    for (int64_t i = 0; i < t.prompt_len; ++i) t.tokens.push_back(int32_t(rng() % V));
    for (int64_t j = 0; j < comp; ++j) {
      std::vector<double> z(V), p(V);
      for (auto& v : z) v = normal(rng);
      double mx = *std::max_element(z.begin(), z.end()), sum = 0;
      for (int64_t v = 0; v < V; ++v) sum += (p[v] = std::exp(z[v] - mx));
      for (auto& v : p) v /= sum;
      std::vector<int32_t> order(V);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
      double top = 0;
      for (int64_t i = 0; i < k; ++i) {
        t.topk_ids.push_back(order[i]);
        t.topk_lp.push_back(float(std::log(p[order[i]])));
        top += p[order[i]];
      }
      t.tail.push_back(float(std::max(0.0, 1.0 - top)));
      double u = uni(rng), c = 0;
      int32_t tok = int32_t(V - 1);
      for (int64_t v = 0; v < V; ++v)
        if ((c += p[v]) >= u) {
          tok = int32_t(v);
          break;
        }
      t.tokens.push_back(tok);
      t.token_lp.push_back(float(std::log(p[tok])));
    }
    w.add(s, t.tokens, t.prompt_len, t.token_lp, t.topk_ids, t.topk_lp, t.tail);
    if (s % 4 == 3) w.flush();  // several shards
    out.push_back(std::move(t));
  }
  w.finish();
  return out;
}

struct Reference {
  int64_t positions = 0;
  double nll = 0, teacher_nll = 0, top1_agree = 0, kl = 0;
  double student_tail = 0, teacher_tail = 0;
};

// Independent recomputation: one unbatched forward per sample, everything after it in double.
// KL(p‖q) over the k + 1 outcomes {top-k ids, rest}: p from the stored log-probs and tail mass
// (tail floored at 1e-8 as losses.cpp does, then p renormalized), q_rest = Σ_{v∉K} q_v.
Reference reference(CausalLMImpl& model, const std::vector<TinySample>& samples, int64_t k) {
  torch::NoGradGuard no_grad;
  Reference r;
  int64_t agree = 0;
  for (const auto& s : samples) {
    std::vector<int64_t> ids(s.tokens.begin(), s.tokens.end());
    auto logits = model.forward(torch::tensor(ids).unsqueeze(0))[0].to(torch::kFloat64);  // [T, V]
    auto logq = torch::log_softmax(logits, -1);
    const int64_t comp = int64_t(s.tokens.size()) - s.prompt_len;
    for (int64_t j = 0; j < comp; ++j) {
      auto lq = logq[s.prompt_len - 1 + j];
      auto q = lq.exp();
      int32_t target = s.tokens[s.prompt_len + j];
      r.nll -= lq[target].item<double>();
      r.teacher_nll -= s.token_lp[j];
      agree += lq.argmax().item<int64_t>() == s.topk_ids[j * k];
      std::vector<double> p(k + 1), qq(k + 1);
      double psum = 0, qk = 0;
      for (int64_t i = 0; i < k; ++i) {
        psum += (p[i] = std::exp(double(s.topk_lp[j * k + i])));
        qk += (qq[i] = q[s.topk_ids[j * k + i]].item<double>());
      }
      psum += (p[k] = std::max(double(s.tail[j]), 1e-8));
      qq[k] = q.sum().item<double>() - qk;
      r.student_tail += qq[k];
      r.teacher_tail += std::max(0.0, double(s.tail[j]));
      double kl = 0;
      for (int64_t i = 0; i <= k; ++i) {
        double pi = p[i] / psum;
        if (pi > 0) kl += pi * (std::log(pi) - std::log(qq[i]));
      }
      r.kl += kl;
      ++r.positions;
    }
  }
  r.nll /= r.positions, r.teacher_nll /= r.positions, r.kl /= r.positions;
  r.student_tail /= r.positions, r.teacher_tail /= r.positions;
  r.top1_agree = double(agree) / r.positions;
  return r;
}

// Mean KL(p_teacher ‖ q_student) over the whole vocabulary at every completion position, from one
// unbatched forward of each model per sample, in double.
double dense_kl_reference(CausalLMImpl& student, CausalLMImpl& teacher, const std::vector<TinySample>& samples) {
  torch::NoGradGuard no_grad;
  double sum = 0;
  int64_t n = 0;
  for (const auto& s : samples) {
    std::vector<int64_t> ids(s.tokens.begin(), s.tokens.end());
    auto x = torch::tensor(ids).unsqueeze(0);
    auto logq = torch::log_softmax(student.forward(x)[0].to(torch::kFloat64), -1);
    auto logp = torch::log_softmax(teacher.forward(x)[0].to(torch::kFloat64), -1);
    for (int64_t j = 0; j < int64_t(s.tokens.size()) - s.prompt_len; ++j, ++n) {
      auto lp = logp[s.prompt_len - 1 + j], lq = logq[s.prompt_len - 1 + j];
      sum += (lp.exp() * (lp - lq)).sum().item<double>();
    }
  }
  return sum / n;
}

}  // namespace

TEST(Evaluate, MatchesAnUnbatchedFloat64Recomputation) {
  TempDir dir;
  const int64_t k = 6;
  ModelHParams hp = tiny_hparams();
  auto samples = write_tiny_store(dir / "store", /*n=*/11, k, hp.n_vocab, /*seed=*/7);
  LlamaModel model(hp);
  model->init_weights(/*seed=*/3, /*std=*/0.3);  // peaked enough that argmax ties do not occur
  SignalStore store = SignalStore::open(dir / "store");
  ASSERT_EQ(store.n_samples(), 11);

  Reference ref = reference(*model, samples, k);
  std::printf("reference: positions %lld nll %.6f kl %.6f agree %.4f\n", (long long)ref.positions, ref.nll, ref.kl,
              ref.top1_agree);
  EXPECT_GT(ref.kl, 0.01);  // the made-up teacher is far from this model: a non-trivial comparison
  EXPECT_GT(ref.top1_agree, 0.0);
  EXPECT_LT(ref.top1_agree, 1.0);
  // One row per batch, a few padded rows per batch, everything in one batch: all the same numbers.
  for (int64_t batch_tokens : {1, 40, 4096}) {
    SCOPED_TRACE(cat("batch_tokens ", batch_tokens));
    EvalMetrics m = evaluate_on_store(*model, store, "tiny-tokenizer", 0, batch_tokens);
    EXPECT_EQ(m.samples, 11);
    EXPECT_EQ(m.positions, ref.positions);
    EXPECT_NEAR(m.nll, ref.nll, 1e-5 * ref.nll);
    EXPECT_NEAR(m.ppl, std::exp(ref.nll), 1e-5 * std::exp(ref.nll));
    EXPECT_NEAR(m.teacher_nll, ref.teacher_nll, 1e-6 * ref.teacher_nll);
    EXPECT_DOUBLE_EQ(m.top1_agree, ref.top1_agree);
    EXPECT_NEAR(m.kl, ref.kl, 1e-5 * ref.kl + 1e-6);
    EXPECT_NEAR(m.student_tail, ref.student_tail, 1e-5);
    EXPECT_NEAR(m.teacher_tail, ref.teacher_tail, 1e-6);
    EXPECT_LT(m.kl_dense, 0);  // no teacher model: not measured, and not in the JSON
    nlohmann::json j = m.to_json();
    EXPECT_FALSE(j.contains("kl_dense"));
    EXPECT_EQ(j["positions"].get<int64_t>(), ref.positions);
    EXPECT_DOUBLE_EQ(j["kl"].get<double>(), m.kl);
  }
  // max_samples: the first N samples in store order.
  std::vector<TinySample> first3(samples.begin(), samples.begin() + 3);
  Reference ref3 = reference(*model, first3, k);
  EvalMetrics m3 = evaluate_on_store(*model, store, "tiny-tokenizer", 3, 64);
  EXPECT_EQ(m3.samples, 3);
  EXPECT_EQ(m3.positions, ref3.positions);
  EXPECT_NEAR(m3.nll, ref3.nll, 1e-5 * ref3.nll);
  EXPECT_NEAR(m3.kl, ref3.kl, 1e-5 * ref3.kl + 1e-6);
}

// kl_dense: the whole-vocabulary KL from a teacher model's own forward pass, against the float64
// recomputation; zero for a model against itself; refused across vocabulary sizes.
TEST(Evaluate, DenseKLFromATeacherModel) {
  TempDir dir;
  ModelHParams hp = tiny_hparams();
  auto samples = write_tiny_store(dir / "store", /*n=*/9, /*k=*/5, hp.n_vocab, /*seed=*/11);
  SignalStore store = SignalStore::open(dir / "store");
  LlamaModel student(hp), teacher(hp);
  student->init_weights(/*seed=*/3, /*std=*/0.3);
  teacher->init_weights(/*seed=*/4, /*std=*/0.3);
  const double ref = dense_kl_reference(*student, *teacher, samples);
  EXPECT_GT(ref, 0.05);
  for (int64_t batch_tokens : {1, 4096}) {
    SCOPED_TRACE(cat("batch_tokens ", batch_tokens));
    EvalMetrics m = evaluate_on_store(*student, store, "tiny-tokenizer", 0, batch_tokens, teacher.get());
    EXPECT_NEAR(m.kl_dense, ref, 1e-5 * ref);
    EXPECT_DOUBLE_EQ(m.to_json()["kl_dense"].get<double>(), m.kl_dense);
    // The stored-signal metrics do not depend on the teacher model.
    EvalMetrics plain = evaluate_on_store(*student, store, "tiny-tokenizer", 0, batch_tokens);
    EXPECT_DOUBLE_EQ(m.kl, plain.kl);
    EXPECT_DOUBLE_EQ(m.nll, plain.nll);
  }
  EvalMetrics self = evaluate_on_store(*student, store, "tiny-tokenizer", 0, 4096, student.get());
  EXPECT_NEAR(self.kl_dense, 0.0, 1e-6);  // the student's log q rounds in float32
  ModelHParams other = hp;
  other.n_vocab = 120;
  LlamaModel wide(other);
  wide->init_weights(1);
  EXPECT_THROW(evaluate_on_store(*student, store, "tiny-tokenizer", 0, 4096, wide.get()), Error);
}

TEST(Evaluate, RefusesAStoreFromAnotherTokenizer) {
  TempDir dir;
  ModelHParams hp = tiny_hparams();
  write_tiny_store(dir / "store", 2, 4, hp.n_vocab, 1);
  LlamaModel model(hp);
  model->init_weights(1);
  SignalStore store = SignalStore::open(dir / "store");
  try {
    evaluate_on_store(*model, store, "another-tokenizer");
    ADD_FAILURE() << "no retort::Error";
  } catch (const Error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find("tiny-tokenizer"), std::string::npos) << msg;
    EXPECT_NE(msg.find("another-tokenizer"), std::string::npos) << msg;
    EXPECT_NE(msg.find(store.dir()), std::string::npos) << msg;
  }
  // A store whose vocabulary is larger than the model's output.
  ModelHParams small = hp;
  small.n_vocab = 50;
  LlamaModel model_small(small);
  model_small->init_weights(1);
  EXPECT_THROW(evaluate_on_store(*model_small, store, "tiny-tokenizer"), Error);
}

// The teacher against a store captured from itself: the same distribution on both sides.
TEST(Evaluate, TeacherAgainstItsOwnCapture) {
  if (!fs::exists(default_model_path()))
    GTEST_SKIP() << "default model not found at " << default_model_path() << " (run scripts/setup.sh)";
  TempDir dir;
  {
    std::ofstream f(dir / "prompts.jsonl");
    f << R"({"prompt": "Name three colours of the rainbow."})" << "\n"
      << R"({"prompt": "What is 12 times 7?"})" << "\n"
      << R"({"messages": [{"role": "user", "content": "Write one sentence about rivers."}]})" << "\n";
  }
  LoadedModel teacher = load_model(default_model_path());
  CaptureOptions o;
  o.prompts_path = dir / "prompts.jsonl";
  o.out_dir = dir / "store";
  o.sampling.temperature = 1.0;
  o.sampling.seed = 5;
  o.max_tokens = 20;
  o.k = 8;
  o.batch = 3;
  o.progress = false;
  capture(teacher, default_model_path(), o);
  SignalStore store = SignalStore::open(dir / "store");
  ASSERT_EQ(store.n_samples(), 3);

  EvalMetrics m = evaluate_on_store(*teacher.model, store, teacher.tokenizer->hash(), 0, 64);
  std::printf("teacher vs its own capture: %s\n", m.to_json().dump().c_str());
  EXPECT_EQ(m.samples, 3);
  EXPECT_EQ(m.positions, store.n_scored());
  EXPECT_GT(m.positions, 10);
  EXPECT_EQ(m.top1_agree, 1.0);
  EXPECT_NEAR(m.kl, 0.0, 2e-4);
  EXPECT_GE(m.kl, -1e-6);
  EXPECT_NEAR(m.student_tail, m.teacher_tail, 2e-3);  // its own mass outside its own top-k, as stored
  EXPECT_NEAR(m.nll, m.teacher_nll, 2e-3);  // full forward vs the cached decode that captured it
  EXPECT_GT(m.nll, 0.05);                    // sampled text: a real, non-zero NLL
  EXPECT_THROW(evaluate_on_store(*teacher.model, store, "0000000000000000"), Error);

  // `retort eval` end to end on the same store, the teacher as its own student: both columns
  // equal the library's numbers, the size is the file's, the generations coincide.
  std::string cmd = cat(RETORT_CLI_PATH, " eval --model ", default_model_path(), " --teacher ", default_model_path(),
                        " --data ", dir / "store", " --json --generations 2 --max-tokens 8 --speed-prompt 16",
                        " --speed-tokens 4 --answers 2 --answer-tokens 6 2>", dir / "stderr.txt");
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0) << cmd << "\n" << out;
  nlohmann::json j = nlohmann::json::parse(out);
  int64_t n_params = 0;
  for (const auto& t : teacher.model->parameters()) n_params += t.numel();
  for (const char* role : {"student", "teacher"}) {
    SCOPED_TRACE(role);
    const auto& r = j[role];
    EXPECT_EQ(r["metrics"]["positions"].get<int64_t>(), m.positions);
    EXPECT_NEAR(r["metrics"]["nll"].get<double>(), m.nll, 1e-6);
    EXPECT_NEAR(r["metrics"]["kl"].get<double>(), m.kl, 1e-6);
    EXPECT_EQ(r["metrics"]["top1_agree"].get<double>(), 1.0);
    EXPECT_EQ(r["parameters"].get<int64_t>(), n_params);
    EXPECT_EQ(r["bytes"].get<int64_t>(), int64_t(fs::file_size(default_model_path())));
    EXPECT_GT(r["speed"]["prefill_tok_s"].get<double>(), 0);
    EXPECT_GT(r["speed"]["decode_tok_s"].get<double>(), 0);
  }
  EXPECT_NEAR(j["teacher_nll_forward_minus_store"].get<double>(), m.nll - m.teacher_nll, 1e-6);  // other batching
  ASSERT_EQ(j["generations"].size(), 2u);
  for (const auto& g : j["generations"]) {
    EXPECT_EQ(g["student"], g["teacher"]);
    EXPECT_FALSE(g["prompt"].get<std::string>().empty());
  }
  EXPECT_EQ(j["generations"][0]["prompt"], "Name three colours of the rainbow.");
  // --answers: the teacher as its own student gives the same answers, so every number is equal; the
  // teacher's NLL of them is a real one, and at most 6 tokens each.
  const auto& an = j["answers"];
  EXPECT_EQ(an["prompts"], 2);
  EXPECT_EQ(an["student"], an["teacher"]) << an.dump();
  EXPECT_EQ(an["student"]["answers"], 2);
  EXPECT_LE(an["student"]["mean_tokens"].get<double>(), 6.0);
  EXPECT_GT(an["student"]["teacher_nll"].get<double>(), 0.0);
  // A directory that is no store: exit status 1 and an error naming it.
  std::string bad = cat(RETORT_CLI_PATH, " eval --model ", default_model_path(), " --data ", dir / "nowhere",
                        " 2>&1");
  p = popen(bad.c_str(), "r");
  ASSERT_NE(p, nullptr);
  out.clear();
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  int status = pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 1) << out;
  EXPECT_NE(out.find("nowhere"), std::string::npos) << out;
}

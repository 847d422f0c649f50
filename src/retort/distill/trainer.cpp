#include "retort/distill/trainer.h"

#include <ATen/autocast_mode.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <memory>
#include <sstream>

#include "retort/decode/generate.h"
#include "retort/distill/adamw.h"
#include "retort/distill/distributed.h"
#include "retort/distill/report.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/xtok_data.h"
#include "retort/io/hf_checkpoint.h"
#include "retort/model/loader.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "retort/util/progress.h"

namespace fs = std::filesystem;

namespace retort {

// ---------------------------------------------------------------------------------------------
// Small pieces: PRNG, hashing, schedule, sample order

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

namespace {

std::string fnv1a_hex(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : s) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

// Uniform double in [0, 1) from the top 53 bits.
double unit_double(uint64_t x) { return double(x >> 11) * (1.0 / 9007199254740992.0); }

// A value derived from (seed, a, b) only: used for on-policy draws and sampling seeds.
uint64_t mix3(uint64_t seed, uint64_t a, uint64_t b) {
  uint64_t s = seed ^ 0x6a09e667f3bcc909ull;
  splitmix64(s);
  s ^= a * 0x9e3779b97f4a7c15ull;
  splitmix64(s);
  s ^= b * 0xc2b2ae3d27d4eb4full;
  return splitmix64(s);
}

}  // namespace

double lr_at(const TrainerConfig& cfg, int64_t step) {
  if (step < cfg.warmup) return cfg.lr * double(step + 1) / double(cfg.warmup);
  const int64_t decay_steps = std::max<int64_t>(1, cfg.steps - cfg.warmup);
  const double progress = std::min(1.0, double(step - cfg.warmup) / double(decay_steps));
  const double r = cfg.min_lr_ratio;
  return cfg.lr * (r + (1 - r) * 0.5 * (1 + std::cos(M_PI * progress)));
}

// Epoch e's permutation: Fisher–Yates from the end, j = splitmix64(state) mod (i + 1), state
// seeded with seed ⊕ (e · golden-ratio constant). Cached for the last epoch asked.
int64_t sample_at(uint64_t seed, int64_t n, int64_t g) {
  thread_local uint64_t c_seed = 0;
  thread_local int64_t c_n = -1, c_epoch = -1;
  thread_local std::vector<int64_t> perm;
  const int64_t epoch = g / n;
  if (c_seed != seed || c_n != n || c_epoch != epoch) {
    perm.resize(size_t(n));
    for (int64_t i = 0; i < n; ++i) perm[size_t(i)] = i;
    uint64_t state = seed ^ (uint64_t(epoch) * 0x9e3779b97f4a7c15ull);
    for (int64_t i = n - 1; i > 0; --i) {
      const int64_t j = int64_t(splitmix64(state) % uint64_t(i + 1));
      std::swap(perm[size_t(i)], perm[size_t(j)]);
    }
    c_seed = seed;
    c_n = n;
    c_epoch = epoch;
  }
  return perm[size_t(g % n)];
}

// ---------------------------------------------------------------------------------------------
// Config

nlohmann::json TrainerConfig::hashed_json() const {
  nlohmann::json j = {{"loss", loss_kind_name(loss.kind)},
          {"temperature", loss.temperature},
          {"beta", loss.beta},
          {"alpha", loss.alpha},
          {"t2_scale", loss.t2_scale},
          {"dense", dense},
          {"steps", steps},
          {"batch", batch},
          {"accum", accum},
          {"max_seq", max_seq},
          {"lr", lr},
          {"min_lr_ratio", min_lr_ratio},
          {"warmup", warmup},
          {"weight_decay", weight_decay},
          {"beta1", beta1},
          {"beta2", beta2},
          {"eps", eps},
          {"clip", clip},
          {"seed", seed},
          {"lambda", on_policy_lambda},
          {"on_policy_max_tokens", on_policy_max_tokens},
          {"on_policy_temperature", on_policy_temperature},
          {"chunk_rows", chunk_rows}};
  if (cross_tokenizer) {
    j["cross_tokenizer"] = true;
    j["loss"] = xtok_loss.empty() ? "ce" : xtok_loss;
    if (!xtok_loss.empty()) {
      j["xtok"] = {{"ce_weight", xtok_ce_weight},
                   {"weight", xtok_weight},
                   {"student_temperature", xtok.student_temperature},
                   {"teacher_temperature", xtok.teacher_temperature},
                   {"merge", xtok.merge == SpanMerge::First ? "first" : "last"}};
      if (xtok.hybrid)
        j["xtok"].update({{"matched_weight", xtok.matched_weight},
                          {"unmatched_weight", xtok.unmatched_weight},
                          {"beta", xtok.beta}});
    }
  }
  return j;
}

nlohmann::json TrainerConfig::to_json() const {
  auto j = hashed_json();
  j["eval_every"] = eval_every;
  j["eval_samples"] = eval_samples;
  j["save_every"] = save_every;
  j["keep_checkpoints"] = keep_checkpoints;
  return j;
}

std::string TrainerConfig::hash() const { return fnv1a_hex(hashed_json().dump()); }

void TrainerConfig::validate() const {
  loss.validate();
  check(steps >= 1, "--steps must be >= 1, got ", steps);
  check(batch >= 1, "--batch must be >= 1, got ", batch);
  check(accum >= 1, "--accum must be >= 1, got ", accum);
  check(max_seq >= 2, "--max-seq must be >= 2, got ", max_seq);
  check(lr > 0 && std::isfinite(lr), "--lr must be > 0, got ", lr);
  check(min_lr_ratio >= 0 && min_lr_ratio <= 1, "--min-lr-ratio must be in [0, 1], got ", min_lr_ratio);
  check(warmup >= 0, "--warmup must be >= 0, got ", warmup);
  check(weight_decay >= 0, "--weight-decay must be >= 0, got ", weight_decay);
  check(beta1 >= 0 && beta1 < 1, "--beta1 must be in [0, 1), got ", beta1);
  check(beta2 >= 0 && beta2 < 1, "--beta2 must be in [0, 1), got ", beta2);
  check(eps > 0, "--eps must be > 0, got ", eps);
  check(clip >= 0, "--clip must be >= 0 (0 = off), got ", clip);
  check(on_policy_lambda >= 0 && on_policy_lambda <= 1, "--lambda must be in [0, 1], got ", on_policy_lambda);
  check(on_policy_max_tokens >= 1, "--on-policy-max-tokens must be >= 1, got ", on_policy_max_tokens);
  check(on_policy_temperature >= 0, "--on-policy-temperature must be >= 0, got ", on_policy_temperature);
  check(chunk_rows >= 1, "--chunk-rows must be >= 1, got ", chunk_rows);
  check(eval_every >= 0 && save_every >= 0, "--eval-every and --save-every must be >= 0");
  check(keep_checkpoints >= 1, "--keep-checkpoints must be >= 1, got ", keep_checkpoints);
  check(xtok_loss.empty() || xtok_loss == "uld" || xtok_loss == "gold", "--loss ", xtok_loss,
        ": the cross-tokenizer losses are uld and gold");
  if (!cross_tokenizer) {
    check(xtok_loss.empty(), "--loss ", xtok_loss, " distills across tokenizers: train on a text store (a capture "
          "from an API without --teacher-tokenizer)");
    return;
  }
  check(xtok_loss.empty() ? loss.kind == LossKind::CE : true, "--loss ", loss_kind_name(loss.kind),
        ": a text store (a teacher with another tokenizer) trains with ce (SFT on the teacher's text), uld or gold; "
        "the same-vocabulary losses need a signal store in the student's tokenizer");
  check(!dense && on_policy_lambda == 0, "--dense and --lambda need the teacher in process with the student's "
        "tokenizer; across tokenizers the signal is the store's");
  check(xtok_ce_weight >= 0 && xtok_weight >= 0 && std::isfinite(xtok_ce_weight) && std::isfinite(xtok_weight),
        "--xtok-ce-weight and --xtok-weight must be >= 0");
  if (!xtok_loss.empty()) xtok.validate();
}

// ---------------------------------------------------------------------------------------------
// Checkpoint files

namespace {

constexpr const char* kStateFile = "trainer_state.json";
constexpr const char* kOptimizerFile = "optimizer.safetensors";

void fsync_dir(const fs::path& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// step-NNNNNN (complete checkpoints only: temp dirs carry a ".tmp." suffix).
std::vector<std::pair<int64_t, fs::path>> list_checkpoints(const std::string& out_dir) {
  std::vector<std::pair<int64_t, fs::path>> out;
  const fs::path root = fs::path(out_dir) / "checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() != 11 || name.rfind("step-", 0) != 0 || !e.is_directory()) continue;
    if (!std::all_of(name.begin() + 5, name.end(), [](char c) { return c >= '0' && c <= '9'; })) continue;
    out.emplace_back(std::stoll(name.substr(5)), e.path());
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string step_dir_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step-%06lld", static_cast<long long>(step));
  return buf;
}

// Identity of a store: its tokenizer, sample count and every shard's sha256.
std::string store_identity(const SignalStore& s) {
  std::string acc = s.manifest().tokenizer_hash + "|" + std::to_string(s.n_samples()) + "|" +
                    std::to_string(s.manifest().k);
  for (const auto& sh : s.manifest().shards) acc += "|" + sh.sha256;
  return fnv1a_hex(acc);
}

// The training data's identity and name, whichever kind it is.
std::string data_identity(const TrainerInputs& in) {
  return in.xtok_data ? in.xtok_data->identity : store_identity(*in.data);
}
std::string data_dir(const TrainerInputs& in) { return in.xtok_data ? in.xtok_data->dir : in.data->dir(); }
int64_t data_samples(const TrainerInputs& in) {
  return in.xtok_data ? int64_t(in.xtok_data->examples.size()) : in.data->n_samples();
}

}  // namespace

std::string latest_checkpoint(const std::string& out_dir) {
  auto all = list_checkpoints(out_dir);
  return all.empty() ? "" : all.back().second.string();
}

// ---------------------------------------------------------------------------------------------
// The trainer

namespace {

// One micro-batch, ready for the student: tokens [B, T] right-padded, the flat indices b*T + t
// of the scored positions [N], and the teacher's signal for those rows.
struct MicroBatch {
  torch::Tensor tokens;  // [B, T] int64
  torch::Tensor rows;    // [N] int64
  TeacherSignal signal;
  std::vector<XTokSequenceRows> xtok;  // across tokenizers: each sequence's rows, teacher and spans
  std::vector<std::unique_ptr<XTokTeacher>> xtok_teachers;
  int64_t n_spans = 0;
  int64_t n_tokens = 0;  // non-padding input tokens
  int64_t n_rows() const { return rows.defined() ? rows.size(0) : 0; }
};

// A sequence to train on: prompt + completion ids, and per completion token the sparse signal
// (pointers into the store; null for on-policy sequences, whose signal comes from the teacher).
struct Sequence {
  std::vector<int64_t> ids;
  int64_t prompt_len = 0;
  const SignalSample* stored = nullptr;
  const XTokExample* xtok = nullptr;  // across tokenizers
};

// Autocast-like mixed precision on CUDA: matmuls in bf16, master weights float32. A no-op on CPU.
struct AutocastGuard {
  bool on = false, prev = false;
  explicit AutocastGuard(bool enable) : on(enable) {
    if (!on) return;
    prev = at::autocast::is_enabled();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
  }
  ~AutocastGuard() {
    if (!on) return;
    at::autocast::set_enabled(prev);
    at::autocast::clear_cache();
  }
};

class Trainer {
 public:
  Trainer(const TrainerInputs& in, const TrainerConfig& cfg, const std::string& out_dir)
      : in_(in), cfg_(cfg), out_(out_dir) {}
  TrainResult run();

 private:
  void check_inputs();
  std::vector<Sequence> take_sequences(int64_t first_g, int64_t count, std::vector<SignalSample>& storage);
  void on_policy_rewrite(std::vector<Sequence>& seqs, int64_t step, int64_t first);
  MicroBatch build(const std::vector<Sequence>& seqs);
  TeacherSignal teacher_signal(const torch::Tensor& tokens, const torch::Tensor& rows, const torch::Tensor& targets);
  void save_checkpoint(int64_t step, AdamW& opt);
  int64_t resume(AdamW& opt);
  void truncate_metrics(int64_t step);
  void append_metrics(const nlohmann::json& j);
  EvalMetrics run_eval(int64_t step);
  MicroBatch build_xtok(const std::vector<Sequence>& seqs);
  void write_report(bool final);
  nlohmann::json state_json(int64_t step) const;

  const TrainerInputs& in_;
  TrainerConfig cfg_;
  std::string out_;
  torch::Device dev_{torch::kCPU};
  int64_t k_ = 0;
  double elapsed_before_ = 0;  // seconds of the run before a resume
  int64_t tokens_ = 0, scored_ = 0;
  std::vector<nlohmann::json> history_;  // metrics lines (for the report)
  std::optional<EvalMetrics> last_eval_;
  nlohmann::json last_xtok_eval_;
  std::chrono::steady_clock::time_point t0_;
};

void Trainer::check_inputs() {
  check(!in_.student.is_empty(), "distill: no student model");
  check(in_.tokenizer != nullptr, "distill: the student needs a tokenizer (the teacher's)");
  if (cfg_.cross_tokenizer) {
    check(in_.xtok_data != nullptr, "distill: no cross-tokenizer training data (--data TEXT_STORE)");
    check(in_.xtok_data->k > 0 || cfg_.xtok_loss.empty(), "distill: --loss ", cfg_.xtok_loss, " needs the teacher's "
          "logprobs, but the text store ", in_.xtok_data->dir, " holds text only (captured with --signal text); "
          "train with --loss ce, or capture again with --signal logprobs");
    if (cfg_.xtok_loss == "gold") {
      cfg_.xtok.hybrid = true;
      if (cfg_.xtok.matched_weight < 0) cfg_.xtok.matched_weight = in_.xtok_data->matched_share;
      if (cfg_.xtok.unmatched_weight < 0) cfg_.xtok.unmatched_weight = 1.0 - cfg_.xtok.matched_weight;
    }
    cfg_.validate();
    for (const auto& p : in_.student->parameters())
      check(p.scalar_type() == torch::kFloat32, "distill: the student's weights must be float32 master weights");
    dev_ = in_.student->device();
    k_ = in_.xtok_data->k;
    return;
  }
  check(in_.data != nullptr, "distill: no training data (--data STORE)");
  cfg_.validate();
  const auto& hp = in_.student->hparams();
  const auto& man = in_.data->manifest();
  check(man.tokenizer_hash == in_.tokenizer->hash(), "distill: the data store ", in_.data->dir(),
        " was captured with another tokenizer (hash ", man.tokenizer_hash, ") than the student's (hash ",
        in_.tokenizer->hash(), "); capture it again with a teacher that shares the student's tokenizer");
  check(man.n_vocab <= hp.n_vocab, "distill: the data store ", in_.data->dir(), " has vocabulary ", man.n_vocab,
        ", larger than the student's ", hp.n_vocab);
  check(in_.data->n_samples() > 0, "distill: the data store ", in_.data->dir(), " holds no samples");
  if (in_.eval_data) {
    check(in_.eval_data->manifest().tokenizer_hash == in_.tokenizer->hash(), "distill: the eval store ",
          in_.eval_data->dir(), " was captured with another tokenizer than the student's");
  }
  if (cfg_.dense || cfg_.on_policy_lambda > 0) {
    check(in_.teacher != nullptr, "distill: ", cfg_.dense ? "--dense" : "--lambda > 0",
          " needs the teacher in process (--teacher MODEL)");
    check(in_.teacher->tokenizer && in_.teacher->tokenizer->hash() == in_.tokenizer->hash(),
          "distill: the teacher's tokenizer differs from the student's");
    check(in_.teacher->hparams.n_vocab == hp.n_vocab, "distill: teacher vocabulary ", in_.teacher->hparams.n_vocab,
          " != student vocabulary ", hp.n_vocab);
  }
  for (const auto& p : in_.student->parameters())
    check(p.scalar_type() == torch::kFloat32, "distill: the student's weights must be float32 master weights");
  dev_ = in_.student->device();
  k_ = man.k;
}

std::vector<Sequence> Trainer::take_sequences(int64_t first_g, int64_t count, std::vector<SignalSample>& storage) {
  if (in_.xtok_data) {
    const auto& ex = in_.xtok_data->examples;
    std::vector<Sequence> out(static_cast<size_t>(count));
    for (int64_t i = 0; i < count; ++i) {
      const XTokExample& e = ex[size_t(sample_at(cfg_.seed, int64_t(ex.size()), first_g + i))];
      auto& q = out[size_t(i)];
      q.ids.assign(e.ids.begin(), e.ids.begin() + std::min<int64_t>(int64_t(e.ids.size()), cfg_.max_seq));
      q.prompt_len = e.prompt_len;
      q.xtok = &e;
    }
    return out;
  }
  const int64_t n = in_.data->n_samples();
  storage.resize(size_t(count));
  std::vector<Sequence> out(static_cast<size_t>(count));
  for (int64_t i = 0; i < count; ++i) {
    storage[size_t(i)] = in_.data->sample(sample_at(cfg_.seed, n, first_g + i));
    const auto& s = storage[size_t(i)];
    auto& q = out[size_t(i)];
    const int64_t len = std::min(s.n_tokens, cfg_.max_seq);
    q.ids.assign(s.tokens, s.tokens + len);
    q.prompt_len = s.prompt_len;
    q.stored = &s;
  }
  return out;
}

// GKD: the student writes the completions (from the stored prompts); the teacher will score them.
// seqs[b] is sequence first + b of the step; its sampling seed depends on that place only (micro-batch
// (first + b) / batch, row (first + b) mod batch), not on how the step is split over ranks.
void Trainer::on_policy_rewrite(std::vector<Sequence>& seqs, int64_t step, int64_t first) {
  LoadedModel lm;
  lm.path = "student";
  lm.format = "memory";
  lm.hparams = in_.student->hparams();
  lm.model = in_.student;
  lm.tokenizer = std::shared_ptr<Tokenizer>(const_cast<Tokenizer*>(in_.tokenizer), [](Tokenizer*) {});
  lm.eos_ids = in_.teacher->eos_ids;
  std::vector<GenerationRequest> reqs;
  std::vector<size_t> which;
  for (size_t b = 0; b < seqs.size(); ++b) {
    auto& q = seqs[b];
    const int64_t room = cfg_.max_seq - q.prompt_len;
    if (q.prompt_len < 1 || room < 1) continue;
    GenerationRequest r;
    r.prompt.assign(q.ids.begin(), q.ids.begin() + q.prompt_len);
    r.sampling.temperature = cfg_.on_policy_temperature;
    const int64_t i = first + int64_t(b);
    r.sampling.seed = mix3(cfg_.seed, uint64_t(step * cfg_.accum + i / cfg_.batch), uint64_t(i % cfg_.batch));
    r.max_tokens = std::min(cfg_.on_policy_max_tokens, room);
    reqs.push_back(std::move(r));
    which.push_back(b);
  }
  if (reqs.empty()) return;
  GenerateOptions go;
  go.max_batch = int64_t(reqs.size());
  auto results = generate(lm, reqs, go);
  for (size_t i = 0; i < which.size(); ++i) {
    auto& q = seqs[which[i]];
    q.ids.resize(size_t(q.prompt_len));
    for (const auto& t : results[i].tokens) q.ids.push_back(t.token);
    q.stored = nullptr;
  }
}

// The teacher's signal at `rows` of a [B, T] batch: its final hidden states there (dense), or
// its top-k log-probs + tail mass (sparse), computed in chunks of rows.
TeacherSignal Trainer::teacher_signal(const torch::Tensor& tokens, const torch::Tensor& rows,
                                      const torch::Tensor& targets) {
  torch::NoGradGuard no_grad;
  auto& teacher = *in_.teacher->model;
  auto th = teacher.forward_hidden(tokens.to(teacher.device()));  // [B, T, d_t]
  auto hid = th.reshape({-1, th.size(-1)}).index_select(0, rows.to(th.device())).to(dev_);
  TeacherSignal sig;
  sig.targets = targets;
  if (cfg_.dense) {
    sig.teacher_hidden = hid;
    sig.teacher = &teacher;
    return sig;
  }
  const int64_t N = hid.size(0);
  std::vector<torch::Tensor> ids, lps, tails;
  for (int64_t r0 = 0; r0 < N; r0 += cfg_.chunk_rows) {
    const int64_t n = std::min(cfg_.chunk_rows, N - r0);
    auto lp = torch::log_softmax(teacher.lm_logits(hid.narrow(0, r0, n).to(teacher.device())), -1);
    auto top = lp.topk(k_, -1);
    auto vals = std::get<0>(top).to(torch::kFloat32);
    ids.push_back(std::get<1>(top));
    lps.push_back(vals);
    tails.push_back(torch::clamp_min(1.0 - vals.exp().sum(-1), 0.0));
  }
  sig.topk_ids = torch::cat(ids).to(dev_, torch::kInt64);
  sig.topk_logprobs = torch::cat(lps).to(dev_);
  sig.tail_mass = torch::cat(tails).to(dev_);
  return sig;
}

// Across tokenizers: the same rows as build() (the student's completion tokens), and per sequence its teacher
// rows and the spans that lie wholly inside the rows kept (a sample cut by max_seq loses the spans past the cut).
MicroBatch Trainer::build_xtok(const std::vector<Sequence>& seqs) {
  const int64_t B = int64_t(seqs.size());
  int64_t T = 1;
  for (const auto& q : seqs) T = std::max<int64_t>(T, int64_t(q.ids.size()) - 1);
  MicroBatch mb;
  auto tokens = torch::zeros({B, T}, torch::kInt64);
  auto* tp = tokens.data_ptr<int64_t>();
  std::vector<int64_t> rows, targets;
  const bool distill = !cfg_.xtok_loss.empty();
  for (int64_t b = 0; b < B; ++b) {
    const auto& q = seqs[size_t(b)];
    const XTokExample& e = *q.xtok;
    const int64_t len = int64_t(q.ids.size());
    for (int64_t t = 0; t + 1 < len; ++t) tp[b * T + t] = q.ids[size_t(t)];
    mb.n_tokens += std::max<int64_t>(0, len - 1);
    XTokSequenceRows sr;
    sr.row0 = int64_t(rows.size());
    for (int64_t j = std::max<int64_t>(q.prompt_len, 1); j < len; ++j) {
      rows.push_back(b * T + j - 1);
      targets.push_back(q.ids[size_t(j)]);
    }
    sr.rows = int64_t(rows.size()) - sr.row0;
    if (distill && e.T > 0 && sr.rows > 0) {
      auto t = std::make_unique<XTokTeacher>();
      const int64_t k = k_;
      t->token_logprob = torch::tensor(e.token_logprob, torch::kFloat32);
      t->topk_logprobs = torch::tensor(e.topk_logprobs, torch::kFloat32).view({e.T, k});
      t->tail_mass = torch::tensor(e.tail_mass, torch::kFloat32);
      if (cfg_.xtok.hybrid) t->topk_student_ids = torch::tensor(e.topk_student_ids, torch::kInt64).view({e.T, k});
      // Student rows of the spans count from the first completion token, as the rows here do (prompt_len >= 1).
      for (const TokenSpan& sp : e.spans)
        if (sp.s1 <= sr.rows) sr.spans.push_back(sp);
      sr.teacher = t.get();
      mb.n_spans += int64_t(sr.spans.size());
      mb.xtok_teachers.push_back(std::move(t));
    }
    mb.xtok.push_back(std::move(sr));
  }
  mb.tokens = tokens.to(dev_);
  mb.rows = torch::tensor(rows, torch::kInt64).to(dev_);
  mb.signal.targets = torch::tensor(targets, torch::kInt64).to(dev_);
  return mb;
}

MicroBatch Trainer::build(const std::vector<Sequence>& seqs) {
  if (in_.xtok_data) return build_xtok(seqs);
  const int64_t B = int64_t(seqs.size());
  int64_t T = 1;
  for (const auto& q : seqs) T = std::max<int64_t>(T, int64_t(q.ids.size()) - 1);
  MicroBatch mb;
  // Inputs are ids[0 .. len-2]; position t predicts ids[t+1]. Padding id 0 (never scored).
  auto tokens = torch::zeros({B, T}, torch::kInt64);
  auto* tp = tokens.data_ptr<int64_t>();
  std::vector<int64_t> rows, targets;
  std::vector<int64_t> topk_ids;
  std::vector<float> topk_lp, tail;
  const bool need_teacher = std::any_of(seqs.begin(), seqs.end(), [](const Sequence& q) { return !q.stored; }) ||
                            cfg_.dense;
  for (int64_t b = 0; b < B; ++b) {
    const auto& q = seqs[size_t(b)];
    const int64_t len = int64_t(q.ids.size());
    for (int64_t t = 0; t + 1 < len; ++t) tp[b * T + t] = q.ids[size_t(t)];
    mb.n_tokens += std::max<int64_t>(0, len - 1);
    // Scored: predictions of ids[j] for j in [prompt_len, len) from position j - 1.
    for (int64_t j = std::max<int64_t>(q.prompt_len, 1); j < len; ++j) {
      rows.push_back(b * T + j - 1);
      targets.push_back(q.ids[size_t(j)]);
      if (!need_teacher) {
        const int64_t c = j - q.prompt_len;  // completion position in the store
        const auto* s = q.stored;
        for (int64_t i = 0; i < k_; ++i) {
          topk_ids.push_back(s->topk_ids[c * k_ + i]);
          topk_lp.push_back(s->topk_logprobs[c * k_ + i]);
        }
        tail.push_back(s->tail_mass[c]);
      }
    }
  }
  const int64_t N = int64_t(rows.size());
  mb.tokens = tokens.to(dev_);
  mb.rows = torch::tensor(rows, torch::kInt64).to(dev_);
  auto targets_t = torch::tensor(targets, torch::kInt64).to(dev_);
  if (N == 0) return mb;
  if (need_teacher) {
    mb.signal = teacher_signal(mb.tokens, mb.rows, targets_t);
  } else {
    mb.signal.targets = targets_t;
    mb.signal.topk_ids = torch::tensor(topk_ids, torch::kInt64).view({N, k_}).to(dev_);
    mb.signal.topk_logprobs = torch::tensor(topk_lp, torch::kFloat32).view({N, k_}).to(dev_);
    mb.signal.tail_mass = torch::tensor(tail, torch::kFloat32).to(dev_);
  }
  return mb;
}

nlohmann::json Trainer::state_json(int64_t step) const {
  const int64_t per_step = cfg_.batch * cfg_.accum;
  return {{"format", "retort-trainer-state"},
          {"version", 1},
          {"step", step},
          {"cursor", step * per_step},
          {"epoch", (step * per_step) / data_samples(in_)},
          {"seed", cfg_.seed},
          {"config", cfg_.to_json()},
          {"config_hash", cfg_.hash()},
          {"data", {{"dir", data_dir(in_)}, {"identity", data_identity(in_)}, {"samples", data_samples(in_)}}},
          {"tokens", tokens_},
          {"scored", scored_},
          {"world_size", in_.dist ? in_.dist->world_size() : 1},  // informational: resume works on any
          {"elapsed", elapsed_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count()},
          {"provenance", in_.provenance}};
}

void Trainer::save_checkpoint(int64_t step, AdamW& opt) {
  const fs::path root = fs::path(out_) / "checkpoints";
  const fs::path final_dir = root / step_dir_name(step);
  const fs::path tmp = root / (step_dir_name(step) + ".tmp." + std::to_string(::getpid()));
  std::error_code ec;
  try {
    fs::create_directories(root);
    fs::remove_all(tmp, ec);
    ExportInfo info = in_.export_info;
    info.provenance["checkpoint_step"] = step;
    export_hf(*in_.student.ptr(), *in_.tokenizer, info, tmp.string(), "f32");
    if (const char* f = std::getenv("RETORT_TEST_FAIL_CHECKPOINT"); f && *f && std::string(f) != "0")
      fail("injected failure (RETORT_TEST_FAIL_CHECKPOINT is set)");
    opt.save((tmp / kOptimizerFile).string());
    write_file_atomic((tmp / kStateFile).string(), state_json(step).dump(2) + "\n");
    fsync_dir(tmp);
    if (fs::exists(final_dir)) fs::remove_all(final_dir);
    fs::rename(tmp, final_dir);
    fsync_dir(root);
  } catch (const std::exception& e) {
    fs::remove_all(tmp, ec);
    const std::string prev = latest_checkpoint(out_);
    fail("checkpoint at step ", step, ": could not write ", final_dir.string(), ": ", e.what(),
         ". Nothing half-written was left; ",
         prev.empty() ? std::string("there is no earlier checkpoint")
                      : cat("the last complete checkpoint is ", prev, " (continue from it with --resume)"),
         ". Free disk space or fix the directory's permissions.");
  }
  // Keep the newest keep_checkpoints.
  auto all = list_checkpoints(out_);
  for (size_t i = 0; i + size_t(cfg_.keep_checkpoints) < all.size(); ++i) fs::remove_all(all[i].second, ec);
}

int64_t Trainer::resume(AdamW& opt) {
  const std::string dir = latest_checkpoint(out_);
  if (dir.empty()) return 0;
  const std::string state_path = dir + "/" + kStateFile;
  nlohmann::json st;
  try {
    st = nlohmann::json::parse(read_file(state_path));
  } catch (const nlohmann::json::exception& e) {
    fail("resume: ", state_path, " is not valid JSON (", e.what(), "); the checkpoint is damaged — delete ", dir,
         " to resume from the one before it");
  }
  check(st.is_object() && st.value("format", "") == "retort-trainer-state", "resume: ", state_path,
        " is not a retort trainer state");
  check(st.contains("step") && st["step"].is_number_integer(), "resume: ", state_path, ": \"step\" missing");
  const int64_t step = st["step"].get<int64_t>();
  check(step >= 0 && step <= cfg_.steps, "resume: ", state_path, ": step ", step, " outside 0..", cfg_.steps);
  const std::string want = cfg_.hash(), have = st.value("config_hash", "");
  if (have != want) {
    std::string diff;
    const auto now = cfg_.hashed_json();
    const auto then = st.value("config", nlohmann::json::object());
    for (const auto& [key, v] : now.items())
      if (!then.contains(key) || then[key] != v)
        diff += cat(diff.empty() ? "" : ", ", key, " ", then.contains(key) ? then[key].dump() : "(absent)", " -> ",
                    v.dump());
    fail("resume: the checkpoint ", dir, " was made with another training config (", diff.empty() ? "hash differs" : diff,
         "); resume with the same settings, or train into a new --out");
  }
  const std::string ident = data_identity(in_);
  check(st.contains("data") && st["data"].value("identity", "") == ident, "resume: the checkpoint ", dir,
        " was trained on another data store than ", data_dir(in_), "; pass the same --data");
  // Weights: the checkpoint is an HF dir of the same shapes.
  auto ckpt = HfCheckpoint::open(dir);
  auto hp = hparams_from_hf_config(ckpt.config(), dir + "/config.json");
  const auto& shp = in_.student->hparams();
  check(hp.n_layer == shp.n_layer && hp.n_embd == shp.n_embd && hp.n_head == shp.n_head &&
            hp.n_head_kv == shp.n_head_kv && hp.n_ff == shp.n_ff && hp.n_vocab == shp.n_vocab,
        "resume: the checkpoint ", dir, " holds a model of other sizes than the student");
  {
    torch::NoGradGuard no_grad;
    load_weights_hf(*in_.student.ptr(), ckpt);
  }
  opt.load(dir + "/" + kOptimizerFile);
  check(opt.steps() == step, "resume: ", dir, ": optimizer step ", opt.steps(), " != trainer step ", step);
  tokens_ = st.value("tokens", int64_t(0));
  scored_ = st.value("scored", int64_t(0));
  elapsed_before_ = st.value("elapsed", 0.0);
  truncate_metrics(step);
  return step;
}

void Trainer::truncate_metrics(int64_t step) {
  const std::string path = out_ + "/metrics.jsonl";
  history_.clear();
  if (!fs::exists(path)) return;
  std::istringstream in(read_file(path));
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("step") || j["step"].get<int64_t>() > step) continue;
    if (j.contains("eval")) {
      EvalMetrics m;
      m.nll = j["eval"].value("nll", 0.0);
      m.ppl = j["eval"].value("ppl", 0.0);
      m.top1_agree = j["eval"].value("top1_agree", 0.0);
      m.kl = j["eval"].value("kl", 0.0);
      m.teacher_nll = j["eval"].value("teacher_nll", 0.0);
      m.samples = j["eval"].value("samples", int64_t(0));
      m.positions = j["eval"].value("positions", int64_t(0));
      last_eval_ = m;
    }
    history_.push_back(j);
    kept += line + "\n";
  }
  write_file_atomic(path, kept);
}

void Trainer::append_metrics(const nlohmann::json& j) {
  history_.push_back(j);
  std::ofstream f(out_ + "/metrics.jsonl", std::ios::app);
  f << j.dump() << "\n";
  f.flush();
  check(bool(f), "distill: could not append to ", out_, "/metrics.jsonl");
}

EvalMetrics Trainer::run_eval(int64_t step) {
  torch::NoGradGuard no_grad;
  AutocastGuard ac(dev_.is_cuda());
  if (in_.xtok_data) {
    last_xtok_eval_ = evaluate_xtok(*in_.student.ptr(), *in_.xtok_eval, cfg_.eval_samples, cfg_.max_seq).to_json();
    append_metrics({{"step", step}, {"eval", last_xtok_eval_}});
    return EvalMetrics();
  }
  auto m = evaluate_on_store(*in_.student.ptr(), *in_.eval_data, in_.tokenizer->hash(), cfg_.eval_samples);
  append_metrics({{"step", step}, {"eval", m.to_json()}});
  last_eval_ = m;
  return m;
}

void Trainer::write_report(bool final) {
  Chart loss{"training loss", "step", cat(loss_kind_name(cfg_.loss.kind), " loss"), {}, false};
  Chart lr{"learning rate", "step", "lr", {}, false};
  Chart gn{"gradient norm (before clipping)", "step", "‖g‖", {}, true};
  Chart ev{"held-out: student NLL and KL(teacher‖student)", "step", "nats", {}, false};
  Chart ag{"held-out: top-1 agreement with the teacher", "step", "fraction", {}, false};
  ChartSeries s_loss{"loss", {}}, s_lr{"lr", {}}, s_gn{"grad norm", {}}, s_nll{"student NLL", {}},
      s_tnll{"teacher NLL", {}}, s_kl{"KL", {}}, s_ag{"top-1 agreement", {}}, s_tag{"train top-1 agreement", {}};
  for (const auto& j : history_) {
    const double x = double(j.value("step", int64_t(0)));
    if (j.contains("eval")) {
      const auto& e = j["eval"];
      auto num = [&](const char* a, const char* b) {  // per position, or per byte across tokenizers
        const auto& v = e.contains(a) ? e[a] : e.contains(b) ? e[b] : nlohmann::json();
        return v.is_number() ? v.get<double>() : NAN;
      };
      s_nll.points.emplace_back(x, num("nll", "nll_per_byte"));
      s_tnll.points.emplace_back(x, num("teacher_nll", "teacher_nll_per_byte"));
      s_kl.points.emplace_back(x, num("kl", "kl"));
      s_ag.points.emplace_back(x, num("top1_agree", "top1_agree"));
    } else {
      s_loss.points.emplace_back(x, j.value("loss", NAN));
      s_lr.points.emplace_back(x, j.value("lr", NAN));
      s_gn.points.emplace_back(x, j.value("grad_norm", NAN));
      s_tag.points.emplace_back(x, j.value("agree", NAN));
    }
  }
  loss.series = {s_loss};
  lr.series = {s_lr};
  gn.series = {s_gn};
  ev.series = {s_nll, s_tnll, s_kl};
  ag.series = {s_ag, s_tag};
  nlohmann::ordered_json summary = nlohmann::ordered_json::object();  // shown in the order written
  summary["status"] = final ? "finished" : "running";
  summary["data"] = data_dir(in_);
  summary["loss"] = cfg_.cross_tokenizer ? cfg_.hashed_json()["loss"].get<std::string>() : loss_kind_name(cfg_.loss.kind);
  summary["student params"] = in_.student->hparams().n_params();
  if (!history_.empty()) {
    for (auto it = history_.rbegin(); it != history_.rend(); ++it)
      if (!it->contains("eval")) {
        summary["step"] = (*it)["step"];
        summary["last loss"] = (*it)["loss"];
        summary["tokens trained"] = (*it)["tokens"];
        summary["tokens/s"] = (*it)["tok_s"];
        summary["elapsed s"] = (*it)["elapsed"];
        break;
      }
  }
  if (!last_xtok_eval_.is_null()) {
    summary["held-out NLL per byte (student tokens)"] = last_xtok_eval_["nll_per_byte"];
    summary["teacher NLL per byte"] = last_xtok_eval_["teacher_nll_per_byte"];
    summary["top-1 agreement (one-token spans)"] = last_xtok_eval_["top1_agree"];
  }
  if (last_eval_) {
    summary["held-out NLL"] = last_eval_->nll;
    summary["held-out ppl"] = last_eval_->ppl;
    summary["top-1 agreement"] = last_eval_->top1_agree;
    summary["KL(teacher||student)"] = last_eval_->kl;
  }
  std::vector<std::pair<std::string, std::string>> sections;
  sections.emplace_back("Configuration", "<pre>" + html_escape(cfg_.to_json().dump(2)) + "</pre>");
  if (!in_.provenance.empty())
    sections.emplace_back("Provenance", "<pre>" + html_escape(in_.provenance.dump(2)) + "</pre>");
  write_html_report(out_ + "/report.html", "retort distill — " + cfg_.label, summary, {loss, ev, ag, lr, gn},
                    sections);
}

TrainResult Trainer::run() {
  check_inputs();
  Distributed* dist = in_.dist;
  const bool root = !dist || dist->is_root();  // the one that writes OUT
  const int rank = dist ? dist->rank() : 0, world = dist ? dist->world_size() : 1;
  if (root) fs::create_directories(out_);
  t0_ = std::chrono::steady_clock::now();
  // Stale temp dirs of a killed checkpoint write.
  if (root) {
    std::error_code ec;
    const fs::path root = fs::path(out_) / "checkpoints";
    if (fs::is_directory(root, ec))
      for (const auto& e : fs::directory_iterator(root, ec))
        if (e.path().filename().string().find(".tmp.") != std::string::npos) fs::remove_all(e.path(), ec);
  }

  auto& student = *in_.student.ptr();
  std::vector<std::pair<std::string, torch::Tensor>> named;
  for (auto& p : student.named_parameters()) {
    p.value().requires_grad_(true);
    named.emplace_back(p.key(), p.value());
  }
  AdamW opt(named, AdamWConfig{cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay});

  TrainResult res;
  int64_t start = 0;
  if (!root) {
    // Everything comes from rank 0 below.
  } else if (cfg_.resume) {
    start = resume(opt);
  } else {
    const std::string prev = latest_checkpoint(out_);
    check(prev.empty(), "distill: ", out_, " already holds a training run (", prev,
          "); pass --resume to continue it, or choose another --out");
    std::error_code ec;
    fs::remove(fs::path(out_) / "metrics.jsonl", ec);
  }
  std::unique_ptr<GradReducer> reducer;
  if (dist) {
    // Rank 0's start (fresh or resumed) everywhere: weights, AdamW state, counters.
    std::vector<torch::Tensor> state;
    for (const auto& p : opt.params()) state.insert(state.end(), {p.value.detach(), p.m, p.v});
    dist->broadcast(state, "broadcast of the start weights and optimizer state from rank 0");
    auto counters = torch::tensor({start, opt.steps(), tokens_, scored_}, torch::kInt64);
    auto elapsed = torch::tensor({elapsed_before_}, torch::kFloat64);
    dist->broadcast({counters, elapsed}, "broadcast of the start step from rank 0");
    start = counters[0].item<int64_t>();
    opt.set_steps(counters[1].item<int64_t>());
    tokens_ = counters[2].item<int64_t>();
    scored_ = counters[3].item<int64_t>();
    elapsed_before_ = elapsed[0].item<double>();
    std::vector<torch::Tensor> params;
    for (const auto& p : opt.params()) params.push_back(p.value);
    reducer = std::make_unique<GradReducer>(*dist, student, params);
    dist->take_comm_seconds();
  }
  // Rank 0 alone does `what`; the others wait for it.
  auto on_root = [&](const std::string& what, const std::function<void()>& fn) {
    if (root) fn();
    if (dist) dist->sync_with_root(what);
  };
  res.start_step = start;

  ProgressBar bar(cfg_.label, cfg_.steps, "steps");
  bar.set_enabled(cfg_.progress && root);
  const int64_t per_step = cfg_.batch * cfg_.accum;
  const int64_t tokens_at_start = tokens_;
  double last_loss = 0;
  if (start > 0) bar.update(start, 0, cat("resumed at step ", start));

  int64_t step = start;
  for (; step < cfg_.steps; ++step) {
    if (cfg_.halt_after > 0 && step - start >= cfg_.halt_after) {
      res.halted = true;
      break;
    }
    if (dist) test_kill_hook(rank, step);
    const double lr = lr_at(cfg_, step);
    const bool on_policy = cfg_.on_policy_lambda > 0 &&
                           unit_double(mix3(cfg_.seed, uint64_t(step), 0xfeedull)) < cfg_.on_policy_lambda;
    // All micro-batches of the step first: the loss is normalized by the step's scored rows.
    // This rank's share of the step's sequences is [lo, hi) (all of them in one process).
    const int64_t lo = per_step * rank / world, hi = per_step * (rank + 1) / world;
    std::vector<std::vector<SignalSample>> storage(size_t((hi - lo + cfg_.batch - 1) / cfg_.batch));
    std::vector<MicroBatch> micro;
    int64_t n_rows = 0, n_tokens = 0, n_spans = 0;
    for (int64_t i = lo; i < hi; i += cfg_.batch) {
      const int64_t n = std::min(cfg_.batch, hi - i);
      auto seqs = take_sequences(step * per_step + i, n, storage[size_t((i - lo) / cfg_.batch)]);
      if (on_policy) on_policy_rewrite(seqs, step, i);
      micro.push_back(build(seqs));
      n_rows += micro.back().n_rows();
      n_tokens += micro.back().n_tokens;
      n_spans += micro.back().n_spans;
    }
    if (dist) {  // the global counts: every rank divides by the same N
      auto c = torch::tensor({n_rows, n_tokens, n_spans}, torch::kInt64);
      dist->all_reduce_sum(c, cat("all-reduce of the token counts of step ", step + 1));
      n_rows = c[0].item<int64_t>();
      n_tokens = c[1].item<int64_t>();
      n_spans = c[2].item<int64_t>();
    }
    // Across tokenizers: the step's loss is w_ce · (Σ CE / rows) + w · (Σ span losses / spans).
    const bool xtok = in_.xtok_data != nullptr, spans_on = xtok && !cfg_.xtok_loss.empty() && n_spans > 0;
    const double ce_scale = xtok ? (cfg_.xtok_loss.empty() ? 1.0 : cfg_.xtok_ce_weight) / double(std::max<int64_t>(n_rows, 1)) : 0;
    const double span_scale = spans_on ? cfg_.xtok_weight / double(n_spans) : 0;
    check(n_rows > 0, "distill: step ", step + 1, " has no completion tokens to learn from (--max-seq ", cfg_.max_seq,
          " may be shorter than the prompts)");

    opt.zero_grad();
    double loss_sum = 0;
    int64_t agree = 0;
    size_t last_mb = micro.size();
    for (size_t m = 0; m < micro.size(); ++m)
      if (micro[m].n_rows() > 0) last_mb = m;
    for (size_t m = 0; m < micro.size(); ++m) {
      auto& mb = micro[m];
      if (mb.n_rows() == 0) continue;
      if (reducer && m == last_mb) reducer->arm();  // gradients become final in this backward
      torch::Tensor rows_hidden;
      {
        AutocastGuard ac(dev_.is_cuda());
        auto hidden = student.forward_hidden(mb.tokens);  // [B, T, d]
        rows_hidden = hidden.reshape({-1, hidden.size(-1)}).index_select(0, mb.rows).to(torch::kFloat32);
      }
      if (xtok) {
        auto r = xtok_loss_backward(student, rows_hidden, mb.signal.targets, mb.xtok, cfg_.xtok, ce_scale, span_scale);
        // loss_sum · (1 / n_rows) is the step's loss, as for the other losses.
        loss_sum += (ce_scale * r.ce_sum + span_scale * r.span_sum) * double(n_rows);
        agree += r.agree;
        continue;
      }
      auto r = chunked_loss_backward(student, rows_hidden, mb.signal, cfg_.loss, 1.0 / double(n_rows), cfg_.chunk_rows);
      loss_sum += r.loss_sum;
      agree += r.agree;
    }
    double comm_s = 0;
    if (dist) {
      reducer->finish(step);
      const auto sums = dist->all_reduce_sum({loss_sum, double(agree)}, cat("all-reduce of the loss of step ", step + 1));
      loss_sum = sums[0];
      agree = int64_t(std::llround(sums[1]));
      comm_s = dist->take_comm_seconds();
    }
    const double grad_norm = clip_grad_norm(opt.params(), cfg_.clip);
    opt.step(lr);
    opt.zero_grad();

    tokens_ += n_tokens;
    scored_ += n_rows;
    last_loss = loss_sum / double(n_rows);
    const double secs = bar.elapsed_seconds();
    const double tok_s = secs > 0 ? double(tokens_ - tokens_at_start) / secs : 0;
    nlohmann::json line = {{"step", step + 1},
                    {"loss", last_loss},
                    {"lr", lr},
                    {"grad_norm", grad_norm},
                    {"tokens", tokens_},
                    {"scored", scored_},
                    {"tok_s", tok_s},
                    {"elapsed", elapsed_before_ + std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count()},
                    {"agree", double(agree) / double(n_rows)},
                    {"on_policy", on_policy}};
    if (dist) {
      line["world_size"] = world;
      line["comm_s"] = comm_s;  // rank 0's time blocked in collectives during the step
    }
    if (root) append_metrics(line);
    bar.update(step + 1, tokens_ - tokens_at_start, cat("loss ", std::to_string(last_loss).substr(0, 6)));
    check(std::isfinite(last_loss), "distill: the loss became ", last_loss, " at step ", step + 1,
          "; lower --lr or raise --warmup");

    const bool last = step + 1 == cfg_.steps;
    if ((in_.eval_data || in_.xtok_eval) && cfg_.eval_every > 0 && (step + 1) % cfg_.eval_every == 0 && !last) {
      on_root(cat("the evaluation at step ", step + 1), [&] {
        run_eval(step + 1);
        write_report(false);
      });
    }
    if (cfg_.save_every > 0 && (step + 1) % cfg_.save_every == 0)
      on_root(cat("the checkpoint of step ", step + 1), [&] { save_checkpoint(step + 1, opt); });
  }
  res.steps = step;
  res.tokens = tokens_;
  res.scored = scored_;
  res.last_loss = last_loss;
  if (!res.halted) {
    on_root("the final evaluation, model and report", [&] {
      if (in_.eval_data || in_.xtok_eval) run_eval(step);
      if (cfg_.write_final) {
        ExportInfo info = in_.export_info;
        info.provenance["steps"] = step;
        export_hf(student, *in_.tokenizer, info, out_ + "/final", "f32");
      }
      write_report(true);
    });
  }
  bar.finish(cat("loss ", std::to_string(last_loss).substr(0, 6)));
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
  res.tokens_per_s = res.seconds > 0 ? double(tokens_ - tokens_at_start) / res.seconds : 0;
  res.eval = last_eval_;
  res.xtok_eval = last_xtok_eval_;
  return res;
}

}  // namespace

TrainResult train(const TrainerInputs& in, const TrainerConfig& cfg, const std::string& out_dir) {
  Trainer t(in, cfg, out_dir);
  return t.run();
}

}  // namespace retort

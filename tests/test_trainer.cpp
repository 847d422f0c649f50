// Tests for src/retort/distill/trainer: the training loop against an independent float64
// recomputation, exact resume, and bad input.
//
// Reference: tests/data/trainer/make_golden.py (PyTorch float64 + transformers LlamaForCausalLM,
// torch.optim.AdamW, clip_grad_norm_) trains the same tiny student on the same store for 10
// steps and writes golden.safetensors (per-step loss, grad norm, lr; final weights). The store
// itself is written by that script with the `safetensors` package, so reading it here also
// checks Python interop of the store format.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "retort/distill/signal_store.h"
#include "retort/distill/student.h"
#include "retort/distill/trainer.h"
#include "retort/io/safetensors.h"
#include "retort/model/loader.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using retort_test::expect_error;

namespace {

const std::string kData = std::string(RETORT_TEST_DATA) + "/trainer";

struct TempDir {
  fs::path path;
  explicit TempDir(const std::string& tag) {
    path = fs::temp_directory_path() / ("retort_trainer_" + tag + "_" + std::to_string(::getpid()));
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

LoadedModel load_student() {
  LoadOptions lo;
  lo.dtype = torch::kFloat32;
  return load_model(kData + "/student", lo);
}

// The run of make_golden.py.
TrainerConfig golden_config() {
  TrainerConfig c;
  c.loss.kind = LossKind::ForwardKL;
  c.loss.temperature = 1.0;
  c.steps = 10;
  c.batch = 3;
  c.accum = 2;
  c.max_seq = 12;
  c.lr = 1e-2;
  c.warmup = 3;
  c.min_lr_ratio = 0.1;
  c.weight_decay = 0.1;
  c.beta1 = 0.9;
  c.beta2 = 0.95;
  c.eps = 1e-8;
  c.clip = 1.0;
  c.seed = 5;
  c.progress = false;
  c.write_final = false;
  return c;
}

TrainerInputs inputs(LoadedModel& m, const SignalStore& store) {
  TrainerInputs in;
  in.student = m.model;
  in.tokenizer = m.tokenizer.get();
  in.data = &store;
  return in;
}

std::vector<nlohmann::json> read_metrics(const std::string& out) {
  std::vector<nlohmann::json> lines;
  std::istringstream in(read_file(out + "/metrics.jsonl"));
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) lines.push_back(nlohmann::json::parse(line));
  return lines;
}

std::vector<double> golden_vec(const SafetensorsFile& f, const std::string& name) {
  const auto* t = f.find(name);
  if (!t) throw std::runtime_error("golden tensor missing: " + name);
  std::vector<double> out(size_t(t->n_elements()));
  std::memcpy(out.data(), f.data(*t), out.size() * sizeof(double));
  return out;
}

}  // namespace

TEST(Trainer, LrScheduleAndSampleOrder) {
  auto c = golden_config();
  EXPECT_NEAR(lr_at(c, 0), 1e-2 / 3, 1e-15);
  EXPECT_NEAR(lr_at(c, 2), 1e-2, 1e-15);
  EXPECT_NEAR(lr_at(c, 3), 1e-2, 1e-15);                      // cosine starts at the peak
  EXPECT_NEAR(lr_at(c, 10), 1e-3, 1e-15);                     // and ends at min_lr_ratio · lr
  // Every epoch is a permutation.
  std::vector<int> seen(14, 0);
  for (int g = 14; g < 28; ++g) ++seen[size_t(sample_at(5, 14, g))];
  for (int s : seen) EXPECT_EQ(s, 1);
}

TEST(Trainer, TenStepsMatchFloat64Reference) {
  auto golden = SafetensorsFile::open(kData + "/golden.safetensors");
  auto store = SignalStore::open(kData + "/store");
  auto m = load_student();
  TempDir out("golden");
  auto r = train(inputs(m, store), golden_config(), out.path.string());
  EXPECT_EQ(r.steps, 10);

  auto loss = golden_vec(golden, "loss"), norm = golden_vec(golden, "grad_norm"), lr = golden_vec(golden, "lr");
  auto lines = read_metrics(out.path.string());
  ASSERT_EQ(lines.size(), 10u);
  for (size_t s = 0; s < 10; ++s) {
    EXPECT_EQ(lines[s]["step"].get<int64_t>(), int64_t(s + 1));
    // float32 training vs the float64 reference: relative 2e-5 on the loss, 1e-4 on the norm.
    EXPECT_NEAR(lines[s]["loss"].get<double>(), loss[s], 2e-5 * loss[s]) << "step " << s + 1;
    EXPECT_NEAR(lines[s]["grad_norm"].get<double>(), norm[s], 1e-4 * norm[s]) << "step " << s + 1;
    EXPECT_NEAR(lines[s]["lr"].get<double>(), lr[s], 1e-15) << "step " << s + 1;
  }
  // Final weights: within 2e-5 absolute (AdamW moves each weight by up to ~lr per step; the
  // float32 run tracks the float64 one to ~1e-6 over 10 steps).
  double worst = 0;
  std::string worst_name;
  int64_t checked = 0;
  for (const auto& p : m.model->named_parameters()) {
    auto want = golden_vec(golden, "w." + p.key());
    auto have = p.value().detach().to(torch::kFloat64).contiguous();
    ASSERT_EQ(size_t(have.numel()), want.size()) << p.key();
    const double* h = have.data_ptr<double>();
    for (size_t i = 0; i < want.size(); ++i) {
      const double d = std::abs(h[i] - want[i]);
      if (d > worst) {
        worst = d;
        worst_name = p.key();
      }
    }
    checked += have.numel();
  }
  EXPECT_EQ(checked, m.hparams.n_params());
  EXPECT_LT(worst, 2e-5) << "largest difference in " << worst_name;
  // And the weights did move (the comparison is not against the initial state).
  auto init = load_student();
  auto w0 = init.model->named_parameters()["model.embed_tokens.weight"];
  auto w1 = m.model->named_parameters()["model.embed_tokens.weight"];
  EXPECT_GT((w1 - w0).abs().max().item<double>(), 1e-3);
}

TEST(Trainer, KilledAndResumedEqualsUninterrupted) {
  auto store = SignalStore::open(kData + "/store");
  auto cfg = golden_config();
  cfg.steps = 8;
  cfg.save_every = 3;
  cfg.write_final = true;

  TempDir a("straight"), b("resumed");
  auto straight = load_student();
  train(inputs(straight, store), cfg, a.path.string());

  {
    auto killed = load_student();
    auto c = cfg;
    c.halt_after = 5;  // dies after step 5: the newest checkpoint is step 3
    auto r = train(inputs(killed, store), c, b.path.string());
    EXPECT_TRUE(r.halted);
    EXPECT_EQ(r.steps, 5);
    EXPECT_FALSE(fs::exists(b / "final"));
  }
  EXPECT_EQ(latest_checkpoint(b.path.string()), b / "checkpoints/step-000003");
  // A checkpoint is a loadable model.
  EXPECT_EQ(load_student().hparams.n_params(), load_model(b / "checkpoints/step-000003").hparams.n_params());

  // Without --resume the directory is refused; with it, the run continues from step 3.
  {
    auto again = load_student();
    expect_error([&] { train(inputs(again, store), cfg, b.path.string()); }, {"--resume"});
  }
  auto resumed = load_student();  // fresh initial weights: everything must come from the checkpoint
  auto c = cfg;
  c.resume = true;
  c.eval_every = 1;  // watch settings may change on resume
  auto r = train(inputs(resumed, store), c, b.path.string());
  EXPECT_EQ(r.start_step, 3);
  EXPECT_EQ(r.steps, 8);

  auto pa = straight.model->named_parameters(), pb = resumed.model->named_parameters();
  for (const auto& p : pa) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key() << " differs";
  // metrics.jsonl: steps 1..8 once each (lines after the checkpoint were dropped on resume),
  // with the same losses as the uninterrupted run.
  auto la = read_metrics(a.path.string()), lb = read_metrics(b.path.string());
  ASSERT_EQ(lb.size(), 8u);
  for (size_t i = 0; i < 8; ++i) {
    EXPECT_EQ(lb[i]["step"].get<int64_t>(), int64_t(i + 1));
    EXPECT_EQ(lb[i]["loss"].get<double>(), la[i]["loss"].get<double>()) << "step " << i + 1;
  }
  // keep_checkpoints = 2: steps 3 and 6 remain; final/ is a loadable model equal to the result.
  EXPECT_TRUE(fs::exists(b / "checkpoints/step-000003"));
  EXPECT_TRUE(fs::exists(b / "checkpoints/step-000006"));
  auto fin = load_model(b / "final");
  auto pf = fin.model->named_parameters();
  for (const auto& p : pb) EXPECT_TRUE(torch::equal(p.value(), pf[p.key()])) << p.key();
  EXPECT_TRUE(fs::exists(b / "report.html"));
}

TEST(Trainer, StoreFromAnotherTokenizerIsRefused) {
  TempDir d("foreign");
  fs::copy(kData + "/store", d / "store");
  auto man = nlohmann::json::parse(read_file(d / "store/manifest.json"));
  man["tokenizer_hash"] = "0123456789abcdef";
  write_file_atomic(d / "store/manifest.json", man.dump());
  auto store = SignalStore::open(d / "store");
  auto m = load_student();
  expect_error([&] { train(inputs(m, store), golden_config(), d / "out"); }, {"another tokenizer", "store"});
}

TEST(Trainer, ImpossibleSizesAndBadConfigAreRefused) {
  auto m = load_student();
  // Wider than the teacher (a prune cannot grow), KV heads not dividing heads, negative depth.
  EXPECT_THROW(student_hparams(m.hparams, StudentConfig::parse("layers=2,hidden=64,heads=4,kv_heads=2,ffn=64")), Error);
  EXPECT_THROW(student_hparams(m.hparams, StudentConfig::parse("layers=2,hidden=32,heads=4,kv_heads=3,ffn=64")), Error);
  EXPECT_THROW(student_hparams(m.hparams, StudentConfig::parse("layers=-1")), Error);
  auto store = SignalStore::open(kData + "/store");
  TempDir d("badcfg");
  auto c = golden_config();
  c.batch = 0;
  expect_error([&] { train(inputs(m, store), c, d.path.string()); }, {"--batch"});
  c = golden_config();
  c.min_lr_ratio = 2;
  expect_error([&] { train(inputs(m, store), c, d.path.string()); }, {"--min-lr-ratio"});
  c = golden_config();
  c.max_seq = 2;  // shorter than every prompt: nothing to learn from
  expect_error([&] { train(inputs(m, store), c, d.path.string()); }, {"no completion tokens", "--max-seq"});
}

TEST(Trainer, CorruptCheckpointOrOtherConfigOnResumeIsRefused) {
  auto store = SignalStore::open(kData + "/store");
  auto cfg = golden_config();
  cfg.steps = 6;
  cfg.save_every = 2;
  cfg.keep_checkpoints = 1;
  TempDir d("corrupt");
  {
    auto m = load_student();
    auto c = cfg;
    c.halt_after = 2;
    train(inputs(m, store), c, d.path.string());
  }
  const std::string ck = d / "checkpoints/step-000002";
  ASSERT_TRUE(fs::exists(ck));
  auto resume_cfg = cfg;
  resume_cfg.resume = true;

  // Another config.
  {
    auto m = load_student();
    auto c = resume_cfg;
    c.lr = 5e-3;
    expect_error([&] { train(inputs(m, store), c, d.path.string()); }, {"another training config", "lr"});
  }
  // A damaged optimizer state.
  const std::string opt = ck + "/optimizer.safetensors";
  const std::string opt_bytes = read_file(opt);
  {
    std::ofstream f(opt, std::ios::binary | std::ios::trunc);
    f << opt_bytes.substr(0, opt_bytes.size() / 2);
  }
  {
    auto m = load_student();
    EXPECT_THROW(train(inputs(m, store), resume_cfg, d.path.string()), Error);
  }
  write_file_atomic(opt, opt_bytes);
  // A damaged model file.
  const std::string model = ck + "/model.safetensors";
  const std::string model_bytes = read_file(model);
  {
    std::ofstream f(model, std::ios::binary | std::ios::trunc);
    f << "not a safetensors file";
  }
  {
    auto m = load_student();
    EXPECT_THROW(train(inputs(m, store), resume_cfg, d.path.string()), Error);
  }
  write_file_atomic(model, model_bytes);
  // A damaged state file.
  const std::string state = ck + "/trainer_state.json";
  const std::string state_bytes = read_file(state);
  write_file_atomic(state, "{\"format\": \"retort-trainer-state\", \"step\": ");
  {
    auto m = load_student();
    expect_error([&] { train(inputs(m, store), resume_cfg, d.path.string()); }, {"trainer_state.json", "not valid JSON"});
  }
  // Restored: the resume works again.
  write_file_atomic(state, state_bytes);
  auto m = load_student();
  auto r = train(inputs(m, store), resume_cfg, d.path.string());
  EXPECT_EQ(r.start_step, 2);
  EXPECT_EQ(r.steps, 6);
}

TEST(Trainer, FailedCheckpointWriteLeavesNothingHalfWritten) {
  auto store = SignalStore::open(kData + "/store");
  auto cfg = golden_config();
  cfg.steps = 4;
  cfg.save_every = 2;
  TempDir d("failwrite");
  auto m = load_student();
  ::setenv("RETORT_TEST_FAIL_CHECKPOINT", "1", 1);
  expect_error([&] { train(inputs(m, store), cfg, d.path.string()); },
               {"checkpoint at step 2", "no earlier checkpoint", "Nothing half-written"});
  ::unsetenv("RETORT_TEST_FAIL_CHECKPOINT");
  // The checkpoints dir holds nothing: no step dir, no temp dir.
  int entries = 0;
  if (fs::exists(d / "checkpoints"))
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(d / "checkpoints")) ++entries;
  EXPECT_EQ(entries, 0);
  EXPECT_EQ(latest_checkpoint(d.path.string()), "");
}

// Tests for src/retort/distill/trainer: the training loop against an independent float64
// recomputation, exact resume, and bad input.
//
// Reference: tests/data/trainer/make_golden.py (PyTorch float64 + transformers LlamaForCausalLM,
// torch.optim.AdamW, clip_grad_norm_) trains the same tiny student on the same store for 10
// steps and writes golden.safetensors (per-step loss, grad norm, lr; final weights). The store
// itself is written by that script with the `safetensors` package, so reading it here also
// checks Python interop of the store format.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "retort/distill/capture.h"
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

// ---------------------------------------------------------------------------------------------
// A Gemma 3 student, end to end as `retort distill --teacher T --data STORE --student ...,init=random` runs it:
// capture from the teacher, a random student of the teacher's family, a few steps with checkpoints, each
// checkpoint (an HF directory written by export_hf) loading back to the trained weights and the store's
// tokenizer.

namespace {

// Capture `prompts` raw (no chat template) from `teacher` into `dir`: 2 samples each, 12 tokens, top-8.
SignalStore capture_store(LoadedModel& teacher, const std::string& spec, const std::vector<std::string>& prompts,
                          const std::string& dir) {
  std::string lines;
  for (const auto& p : prompts) lines += nlohmann::json({{"prompt", p}}).dump() + "\n";
  write_file_atomic(dir + ".jsonl", lines);
  CaptureOptions o;
  o.prompts_path = dir + ".jsonl";
  o.out_dir = dir;
  o.samples_per_prompt = 2;
  o.max_tokens = 12;
  o.k = 8;
  o.chat = false;
  o.sampling.seed = 3;
  o.progress = false;
  capture(teacher, spec, o);
  return SignalStore::open(dir);
}

TrainerConfig gemma_config() {
  TrainerConfig c = golden_config();
  c.steps = 4;
  c.batch = 2;
  c.accum = 1;
  c.max_seq = 32;
  c.warmup = 1;
  c.save_every = 2;
  c.write_final = true;
  return c;
}

// Trains a student of `teacher` (spec e.g. "layers=2,...,init=random") on `store`; checks that every
// checkpoint and final/ load back as a Gemma 3 with the trained weights (final) and the store's tokenizer.
void train_and_reload(LoadedModel& teacher, const SignalStore& store, const std::string& spec, const std::string& out) {
  const ModelHParams hp = student_hparams(teacher.hparams, StudentConfig::parse(spec));
  TrainerInputs in;
  in.student = make_random_student(hp, /*seed=*/1);
  in.tokenizer = teacher.tokenizer.get();
  in.export_info.chat_template = teacher.chat_template;
  in.export_info.eos_ids = teacher.eos_ids;
  in.data = &store;
  auto before = in.student->named_parameters()["model.embed_tokens.weight"].clone();
  auto r = train(in, gemma_config(), out);
  EXPECT_EQ(r.steps, 4);
  EXPECT_TRUE(std::isfinite(r.last_loss));
  EXPECT_GT((in.student->named_parameters()["model.embed_tokens.weight"] - before).abs().max().item<double>(), 0);

  ASSERT_EQ(latest_checkpoint(out), out + "/checkpoints/step-000004");
  for (const std::string dir : {out + "/checkpoints/step-000002", out + "/checkpoints/step-000004", out + "/final"}) {
    SCOPED_TRACE(dir);
    LoadedModel back = load_model(dir);
    EXPECT_EQ(back.hparams.arch, "gemma3");
    EXPECT_EQ(back.hparams.to_json()["layer_types"], hp.to_json()["layer_types"]);
    EXPECT_DOUBLE_EQ(back.hparams.query_scale(), hp.query_scale());
    EXPECT_EQ(back.hparams.n_params(), hp.n_params());
    ASSERT_TRUE(back.tokenizer);
    EXPECT_EQ(back.tokenizer->hash(), store.manifest().tokenizer_hash);  // a later run accepts the store
  }
  LoadedModel fin = load_model(out + "/final");
  auto ids = torch::randint(0, hp.n_vocab, {2, 9}, torch::kInt64);
  torch::NoGradGuard ng;
  EXPECT_TRUE(torch::equal(in.student->forward(ids), fin.model->forward(ids)));
}

}  // namespace

// Teacher: the tiny random Gemma 3 checkpoint (tests/data/hf/tiny-gemma3: 4 layers L L G L, byte-level
// tokenizer). The student keeps the teacher's layer rule (every 3rd layer global) at 3 layers: L L G.
TEST(TrainerGemma3, TinyRandomStudentTrainsAndCheckpointsLoadBack) {
  TempDir d("gemma3_tiny");
  LoadedModel teacher = load_model(std::string(RETORT_TEST_DATA) + "/hf/tiny-gemma3");
  auto store = capture_store(teacher, "tiny-gemma3", {"abc", "hello there", "xyz 123", "a b c d"}, d / "store");
  EXPECT_EQ(store.n_samples(), 8);
  const std::string spec = "layers=3,hidden=32,heads=2,kv_heads=1,ffn=64,init=random";
  EXPECT_EQ(student_hparams(teacher.hparams, StudentConfig::parse(spec)).to_json()["layer_types"], "LLG");
  train_and_reload(teacher, store, spec, d / "run");
  // init=prune is the Llama family's only: refused up front, naming what to use.
  expect_error([&] { student_hparams(teacher.hparams, StudentConfig::parse("layers=2,init=prune")); },
               {"init=prune", "gemma3", "init=random"});
}

// Teacher: Gemma 3 270M (GGUF, SentencePiece tokenizer; skipped when absent). The checkpoints carry the
// tokenizer as tokenizer.json, which must read back to the GGUF's (same hash), or the run could not be
// continued from a checkpoint on the same store.
TEST(TrainerGemma3, StudentOfGemma3_270mKeepsTheTokenizerThroughCheckpoints) {
  if (!fs::exists(retort_test::gemma3_path())) GTEST_SKIP() << "Gemma 3 GGUF not found at " << retort_test::gemma3_path();
  TempDir d("gemma3_270m");
  LoadOptions lo;
  lo.inference_only = true;  // capture reads the blocks; the student is made fresh
  LoadedModel teacher = load_model(retort_test::gemma3_path(), lo);
  auto store = capture_store(teacher, "gemma3-270m", {"The capital of France is", "def f(x):\n    return"},
                             d / "store");
  const std::string spec = "layers=2,hidden=64,heads=2,kv_heads=1,ffn=128,init=random";
  const ModelHParams hp = student_hparams(teacher.hparams, StudentConfig::parse(spec));
  EXPECT_EQ(hp.to_json()["layer_types"], "LL");  // every 6th layer global, as the teacher's
  EXPECT_EQ(hp.head_dim, 32);
  EXPECT_DOUBLE_EQ(hp.query_scale(), 1.0 / std::sqrt(32.0));
  train_and_reload(teacher, store, spec, d / "run");
  // Continuing from a checkpoint (`--student DIR`): its tokenizer is accepted for the store.
  LoadedModel ck = load_model(d / "run/checkpoints/step-000002");
  TrainerInputs in;
  in.student = ck.model;
  in.tokenizer = ck.tokenizer.get();
  in.data = &store;
  auto c = gemma_config();
  c.steps = 1;
  c.save_every = 0;
  c.write_final = false;
  EXPECT_EQ(train(in, c, d / "more").steps, 1);
}

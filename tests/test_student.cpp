// Tests for src/retort/distill/student: configs, hparams validation, random and pruned students.
//
// References: pruning is checked by construction rather than against its own importance code:
//   - identity prune (student sizes == teacher sizes) must give the teacher's logits bit for bit;
//   - a tiny teacher with parts made provably useless (zeroed residual channels, FFN neurons whose
//     gate row is zero so silu(0)·up = 0, a KV group whose v rows are zero) must lose exactly those
//     parts, the student's weights must be the teacher's slices, and (hidden size kept) its logits
//     must equal the teacher's up to float summation order.
#include <gtest/gtest.h>

#include <filesystem>

#include "retort/distill/student.h"
#include "retort/model/loader.h"
#include "retort/util/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using namespace retort_test;
using torch::indexing::Slice;

namespace {

ModelHParams smollm_like() {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = 49152, hp.n_embd = 576, hp.n_layer = 30, hp.n_head = 9, hp.n_head_kv = 3, hp.head_dim = 64;
  hp.n_ff = 1536, hp.max_position = 8192, hp.rope_theta = 100000, hp.rms_eps = 1e-5, hp.tie_embeddings = true;
  return hp;
}

ModelHParams tiny() {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = 64, hp.n_embd = 32, hp.n_layer = 4, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 8;
  hp.n_ff = 48, hp.max_position = 64, hp.rope_theta = 10000, hp.rms_eps = 1e-5;
  return hp;
}

torch::Tensor calibration(int64_t vocab, int64_t B, int64_t T, uint64_t seed) {
  auto gen = at::detail::createCPUGenerator(seed);
  return torch::randint(vocab, {B, T}, gen, torch::kInt64);
}

std::vector<int64_t> all_but(int64_t n, const std::vector<int64_t>& drop) {
  std::vector<int64_t> out;
  for (int64_t i = 0; i < n; ++i)
    if (std::find(drop.begin(), drop.end(), i) == drop.end()) out.push_back(i);
  return out;
}

torch::Tensor idx(const std::vector<int64_t>& v) { return torch::tensor(v, torch::kInt64); }

}  // namespace

TEST(StudentConfig, ParseJsonRoundTrip) {
  auto c = StudentConfig::parse("layers=8, hidden=256,heads=4,kv_heads=2,ffn=768,init=random,seed=7");
  EXPECT_EQ(c.n_layer, 8);
  EXPECT_EQ(c.n_embd, 256);
  EXPECT_EQ(c.n_head, 4);
  EXPECT_EQ(c.n_head_kv, 2);
  EXPECT_EQ(c.n_ff, 768);
  EXPECT_EQ(c.init, "random");
  EXPECT_EQ(c.seed, 7u);
  auto d = StudentConfig::from_json(c.to_json(), "test");
  EXPECT_EQ(d.to_json(), c.to_json());
  auto e = StudentConfig::from_json(nlohmann::json("layers=2"), "test");
  EXPECT_EQ(e.n_layer, 2);
  EXPECT_EQ(e.n_embd, 0);
  EXPECT_EQ(e.init, "prune");

  expect_error([] { StudentConfig::parse("layers=8,depth=3"); }, {"unknown student key \"depth\"", "kv_heads"});
  expect_error([] { StudentConfig::parse("layers=-1"); }, {"layers", "non-negative integer"});
  expect_error([] { StudentConfig::parse("layers"); }, {"key=value"});
  expect_error([] { StudentConfig::parse("init=distill"); }, {"init", "prune", "random"});
  expect_error([] { StudentConfig::from_json({{"hidden", "big"}}, "cfg.json"); }, {"cfg.json", "hidden"});
  expect_error([] { StudentConfig::from_json({{"width", 3}}, "cfg.json"); }, {"cfg.json", "unknown student key \"width\""});
}

TEST(StudentHParams, SizesAndErrors) {
  const ModelHParams t = smollm_like();
  // Prune: head_dim stays the teacher's; default KV heads keep groups within the teacher's 3.
  auto s = student_hparams(t, StudentConfig::parse("layers=8,hidden=256,heads=4,ffn=768"));
  EXPECT_EQ(s.n_layer, 8);
  EXPECT_EQ(s.n_embd, 256);
  EXPECT_EQ(s.n_head, 4);
  EXPECT_EQ(s.n_head_kv, 2);
  EXPECT_EQ(s.head_dim, 64);
  EXPECT_EQ(s.n_ff, 768);
  EXPECT_EQ(s.n_vocab, t.n_vocab);
  EXPECT_TRUE(s.tie_embeddings);
  auto same = student_hparams(t, StudentConfig{});
  EXPECT_EQ(same.to_json(), t.to_json());

  // Random: head_dim = hidden / heads.
  auto r = student_hparams(t, StudentConfig::parse("hidden=256,heads=4,kv_heads=2,init=random"));
  EXPECT_EQ(r.head_dim, 64);
  auto r2 = student_hparams(t, StudentConfig::parse("layers=40,hidden=1024,heads=16,init=random"));
  EXPECT_EQ(r2.head_dim, 64);
  EXPECT_EQ(r2.n_head_kv, 8);  // fewest KV heads dividing 16 with <= 3 query heads per group

  expect_error([&] { student_hparams(t, StudentConfig::parse("hidden=256,heads=5,init=random")); },
               {"heads=5 does not divide hidden=256", "try heads=4 (head_dim 64)"});
  expect_error([&] { student_hparams(t, StudentConfig::parse("layers=31")); },
               {"layers=31 is larger than the teacher's 30", "init=random"});
  expect_error([&] { student_hparams(t, StudentConfig::parse("hidden=1024")); }, {"hidden=1024", "576"});
  expect_error([&] { student_hparams(t, StudentConfig::parse("heads=6,kv_heads=4")); }, {"kv_heads=4", "3"});
  expect_error([&] { student_hparams(t, StudentConfig::parse("heads=8,kv_heads=2")); },
               {"4 query heads per KV group", "only 3"});
  expect_error([&] { student_hparams(t, StudentConfig::parse("heads=6,kv_heads=4,init=random")); },
               {"kv_heads=4 does not divide heads=6", "1, 2, 3, 6"});
}

TEST(Student, RandomIsDeterministicInSeed) {
  ModelHParams hp = tiny();
  auto a = make_random_student(hp, 1), b = make_random_student(hp, 1), c = make_random_student(hp, 2);
  auto pa = a->named_parameters(), pb = b->named_parameters(), pc = c->named_parameters();
  ASSERT_EQ(pa.size(), pb.size());
  for (const auto& kv : pa) EXPECT_TRUE(torch::equal(kv.value(), pb[kv.key()])) << kv.key();
  EXPECT_FALSE(torch::equal(pa["model.layers.0.self_attn.q_proj.weight"], pc["model.layers.0.self_attn.q_proj.weight"]));
  EXPECT_TRUE(torch::equal(pa["model.norm.weight"], torch::ones({hp.n_embd})));
  auto w = pa["model.layers.1.mlp.up_proj.weight"];
  EXPECT_EQ(w.sizes(), (std::vector<int64_t>{48, 32}));
  EXPECT_NEAR(w.std().item<double>(), 0.02, 0.002);
}

// Teacher with provably useless parts; see the file comment.
struct UselessParts {
  std::vector<int64_t> channels = {3, 17};                        // residual channels always 0
  std::vector<int64_t> neurons = {1, 5, 6, 20, 33, 40, 41, 47};   // gate rows 0 in every layer
  int64_t dead_group = 1;                                          // v rows of KV group 1 are 0
};

LoadedModel useless_teacher(const UselessParts& u, bool qkv_bias) {
  ModelHParams hp = tiny();
  hp.qkv_bias = qkv_bias;
  LoadedModel lm;
  lm.hparams = hp;
  lm.model = make_random_student(hp, 11);
  torch::NoGradGuard ng;
  auto p = lm.model->named_parameters();
  auto gen = at::detail::createCPUGenerator(3);
  for (auto& kv : p)  // larger weights and non-trivial norms/biases so importance is well separated
    if (kv.key().find("norm") != std::string::npos || kv.key().find("bias") != std::string::npos)
      kv.value().copy_(torch::rand(kv.value().sizes(), gen) + 0.5);
    else
      kv.value().mul_(10);
  auto ch = idx(u.channels), nn = idx(u.neurons);
  p["model.embed_tokens.weight"].index_fill_(1, ch, 0.0);
  p["lm_head.weight"].normal_(0, 0.2, gen);
  const int64_t D = hp.head_dim;
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    std::string pre = "model.layers." + std::to_string(l) + ".";
    p[pre + "self_attn.o_proj.weight"].index_fill_(0, ch, 0.0);
    p[pre + "mlp.down_proj.weight"].index_fill_(0, ch, 0.0);
    p[pre + "mlp.gate_proj.weight"].index_fill_(0, nn, 0.0);
    p[pre + "self_attn.v_proj.weight"].narrow(0, u.dead_group * D, D).zero_();
    if (qkv_bias) p[pre + "self_attn.v_proj.bias"].narrow(0, u.dead_group * D, D).zero_();
  }
  lm.model->eval();
  return lm;
}

TEST(Student, PruneDropsUselessHeadsAndNeurons) {
  for (bool bias : {false, true}) {
    SCOPED_TRACE(bias ? "qkv bias" : "no bias");
    UselessParts u;
    LoadedModel t = useless_teacher(u, bias);
    auto hp = student_hparams(t.hparams, StudentConfig::parse("heads=2,kv_heads=1,ffn=40"));
    auto calib = calibration(64, 2, 12, 5);
    auto s = prune_from_teacher(t, hp, calib);
    auto sp = s->named_parameters(), tp = t.model->named_parameters();
    const int64_t D = 8;
    auto kv_rows = idx({0, 1, 2, 3, 4, 5, 6, 7});              // live group 0
    auto q_rows = torch::arange(0, 2 * D, torch::kInt64);       // its query heads 0, 1
    auto ff = idx(all_but(48, u.neurons));
    for (int64_t l = 0; l < 4; ++l) {
      std::string pre = "model.layers." + std::to_string(l) + ".";
      EXPECT_TRUE(torch::equal(sp[pre + "self_attn.k_proj.weight"], tp[pre + "self_attn.k_proj.weight"].index_select(0, kv_rows)));
      EXPECT_TRUE(torch::equal(sp[pre + "self_attn.q_proj.weight"], tp[pre + "self_attn.q_proj.weight"].index_select(0, q_rows)));
      EXPECT_TRUE(torch::equal(sp[pre + "self_attn.o_proj.weight"], tp[pre + "self_attn.o_proj.weight"].index_select(1, q_rows)));
      EXPECT_TRUE(torch::equal(sp[pre + "mlp.up_proj.weight"], tp[pre + "mlp.up_proj.weight"].index_select(0, ff)));
      EXPECT_TRUE(torch::equal(sp[pre + "mlp.down_proj.weight"], tp[pre + "mlp.down_proj.weight"].index_select(1, ff)));
      if (bias)
        EXPECT_TRUE(torch::equal(sp[pre + "self_attn.q_proj.bias"], tp[pre + "self_attn.q_proj.bias"].index_select(0, q_rows)));
    }
    // Only dead parts were removed: the same function, up to summation order.
    torch::NoGradGuard ng;
    auto tokens = calibration(64, 2, 10, 9);
    auto lt = t.model->forward(tokens), ls = s->forward(tokens);
    EXPECT_LT((lt - ls).abs().max().item<double>(), 1e-4 * (1 + lt.abs().max().item<double>()));
    // Deterministic.
    auto s2 = prune_from_teacher(t, hp, calib);
    for (const auto& kv : sp) EXPECT_TRUE(torch::equal(kv.value(), s2->named_parameters()[kv.key()])) << kv.key();
  }
}

TEST(Student, PruneDropsDeadChannelsAndSpreadsLayers) {
  UselessParts u;
  LoadedModel t = useless_teacher(u, false);
  auto hp = student_hparams(t.hparams, StudentConfig::parse("layers=2,hidden=30"));
  EXPECT_EQ(hp.head_dim, 8);
  auto s = prune_from_teacher(t, hp, calibration(64, 2, 12, 5));
  auto sp = s->named_parameters(), tp = t.model->named_parameters();
  auto ch = idx(all_but(32, u.channels));
  EXPECT_TRUE(torch::equal(sp["model.embed_tokens.weight"], tp["model.embed_tokens.weight"].index_select(1, ch)));
  EXPECT_TRUE(torch::equal(sp["lm_head.weight"], tp["lm_head.weight"].index_select(1, ch)));
  // Dropped channels are 0, so the norm rescale is exactly sqrt(32 / 30) (see prune_from_teacher).
  const double rescale = std::sqrt(32.0 / 30.0);
  EXPECT_TRUE(torch::allclose(sp["model.norm.weight"], tp["model.norm.weight"].index_select(0, ch) * rescale, 1e-5, 0));
  // Layers 0 and 3 (first and last) of the teacher's 4; heads/FFN are all kept.
  for (auto [si, ti] : std::initializer_list<std::pair<int, int>>{{0, 0}, {1, 3}}) {
    std::string s_pre = "model.layers." + std::to_string(si) + ".", t_pre = "model.layers." + std::to_string(ti) + ".";
    EXPECT_TRUE(torch::allclose(sp[s_pre + "input_layernorm.weight"],
                                tp[t_pre + "input_layernorm.weight"].index_select(0, ch) * rescale, 1e-5, 0));
    EXPECT_TRUE(torch::equal(sp[s_pre + "self_attn.q_proj.weight"], tp[t_pre + "self_attn.q_proj.weight"].index_select(1, ch)));
    EXPECT_TRUE(torch::equal(sp[s_pre + "self_attn.o_proj.weight"], tp[t_pre + "self_attn.o_proj.weight"].index_select(0, ch)));
    EXPECT_TRUE(torch::equal(sp[s_pre + "mlp.down_proj.weight"], tp[t_pre + "mlp.down_proj.weight"].index_select(0, ch)));
  }
  // Width-only prune of the dead channels: with the norm rescale it is the same function.
  {
    auto hp_w = student_hparams(t.hparams, StudentConfig::parse("hidden=30"));
    auto sw = prune_from_teacher(t, hp_w, calibration(64, 2, 12, 5));
    torch::NoGradGuard ng;
    auto tokens = calibration(64, 2, 10, 9);
    auto lt = t.model->forward(tokens), lw = sw->forward(tokens);
    EXPECT_LT((lt - lw).abs().max().item<double>(), 1e-4 * (1 + lt.abs().max().item<double>()));
  }
  // Calibration ids out of range are input errors.
  expect_error([&] { prune_from_teacher(t, hp, torch::full({1, 3}, 64, torch::kInt64)); }, {"calibration", "64"});
}

TEST(Student, IdentityPruneOfDefaultModelIsTheTeacher) {
  if (!fs::exists(smollm2_path())) GTEST_SKIP() << "SmolLM2 GGUF not found at " << smollm2_path();
  LoadOptions lo;
  lo.load_tokenizer = false;
  LoadedModel t = load_model(smollm2_path(), lo);
  auto calib = calibration(t.hparams.n_vocab, 2, 16, 1);
  auto s = prune_from_teacher(t, student_hparams(t.hparams, StudentConfig{}), calib);
  torch::NoGradGuard ng;
  auto tokens = calibration(t.hparams.n_vocab, 1, 12, 2);
  EXPECT_TRUE(torch::equal(t.model->forward(tokens), s->forward(tokens)));

  // A real cut: shapes follow the config, logits stay finite.
  auto hp = student_hparams(t.hparams, StudentConfig::parse("layers=6,hidden=384,heads=6,ffn=768"));
  EXPECT_EQ(hp.n_head_kv, 2);
  auto small = prune_from_teacher(t, hp, calib);
  auto p = small->named_parameters();
  EXPECT_EQ(p["model.layers.5.self_attn.k_proj.weight"].sizes(), (std::vector<int64_t>{128, 384}));
  EXPECT_EQ(p["model.layers.5.self_attn.q_proj.weight"].sizes(), (std::vector<int64_t>{384, 384}));
  EXPECT_EQ(p["model.layers.5.mlp.down_proj.weight"].sizes(), (std::vector<int64_t>{384, 768}));
  auto logits = small->forward(tokens);
  EXPECT_EQ(logits.sizes(), (std::vector<int64_t>{1, 12, t.hparams.n_vocab}));
  EXPECT_TRUE(torch::isfinite(logits).all().item<bool>());
}

// A 6-layer teacher whose `identity` layers add nothing to the residual stream (o_proj and down_proj
// zero), so the stream's angle across them is 0 and across every other layer is not.
LoadedModel teacher_with_identity_layers(const std::vector<int64_t>& identity) {
  ModelHParams hp = tiny();
  hp.n_layer = 6;
  LoadedModel lm;
  lm.hparams = hp;
  lm.model = make_random_student(hp, 21);
  torch::NoGradGuard ng;
  auto p = lm.model->named_parameters();
  for (auto& kv : p)
    if (kv.key().find("norm") == std::string::npos) kv.value().mul_(10);  // layers that visibly turn the stream
  for (int64_t l : identity) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    p[pre + "self_attn.o_proj.weight"].zero_();
    p[pre + "mlp.down_proj.weight"].zero_();
  }
  lm.model->eval();
  return lm;
}

// The student's layer i must be teacher layer kept[i], weight for weight (full width: no slicing).
void expect_layers(CausalLM& s, LoadedModel& t, const std::vector<int64_t>& kept) {
  auto sp = s->named_parameters(), tp = t.model->named_parameters();
  for (size_t i = 0; i < kept.size(); ++i)
    for (const char* w : {"self_attn.q_proj.weight", "self_attn.o_proj.weight", "mlp.down_proj.weight", "input_layernorm.weight"})
      EXPECT_TRUE(torch::equal(sp["model.layers." + std::to_string(i) + "." + w],
                               tp["model.layers." + std::to_string(kept[i]) + "." + w]))
          << "student layer " << i << " should be teacher layer " << kept[i] << " (" << w << ")";
}

TEST(Student, PruneKeepsTheLayersThatTurnTheStream) {
  auto calib = calibration(64, 2, 12, 5);
  torch::NoGradGuard ng;
  auto tokens = calibration(64, 2, 10, 9);
  // influence: the two identity layers 1 and 3 (apart) are the ones dropped; block: the contiguous
  // identity block 2..3. Either way the student is the teacher's function (up to summation order),
  // while spread (llround(i · 5/3): 0, 2, 3, 5) keeps an identity layer and drops a working one.
  struct Case {
    std::vector<int64_t> identity;
    const char* keep;
    std::vector<int64_t> kept;
  };
  for (const Case& c : {Case{{1, 3}, "influence", {0, 2, 4, 5}}, Case{{2, 3}, "block", {0, 1, 4, 5}}}) {
    SCOPED_TRACE(c.keep);
    LoadedModel t = teacher_with_identity_layers(c.identity);
    auto hp = student_hparams(t.hparams, StudentConfig::parse(std::string("layers=4,keep=") + c.keep));
    auto s = prune_from_teacher(t, hp, calib, c.keep);
    expect_layers(s, t, c.kept);
    auto lt = t.model->forward(tokens);
    EXPECT_LT((lt - s->forward(tokens)).abs().max().item<double>(), 1e-4 * (1 + lt.abs().max().item<double>()));
    auto spread = prune_from_teacher(t, hp, calib, "spread");
    expect_layers(spread, t, {0, 2, 3, 5});
    EXPECT_GT((lt - spread->forward(tokens)).abs().max().item<double>(), 1e-2);
  }
  // The config names the choice; a wrong one is an error naming the key and the choices.
  EXPECT_EQ(StudentConfig::parse("layers=4,keep=block").keep, "block");
  EXPECT_EQ(StudentConfig::from_json(nlohmann::json{{"keep", "influence"}}, "x").keep, "influence");
  expect_error([] { StudentConfig::parse("keep=middle"); }, {"keep", "spread", "influence", "block", "middle"});
}

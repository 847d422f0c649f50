// Antidistillation sampling (protect/antidistill.h, distill/antidistill_prepare.h) on a tiny random Llama
// proxy built here (2 layers, E 64, vocabulary 256 from tests/data/hf/tiny-llama):
//  - the term the processor adds equals τ·λ/(2ε)·(z(θ+εg) − z(θ−εg)) recomputed in float64 by an independent
//    Llama forward written below in plain libtorch ops (no retort model code), from the proxy's θ and g;
//  - g equals the float64 gradient of the same loss (autograd through the float64 reference);
//  - the proxies' KV caches fed token by token (and rolled back) give the bits of a fresh full forward;
//  - λ = 0 generates exactly the tokens and logprobs of plain sampling;
//  - the central difference approximates the directional derivative ⟨∇θ z, g⟩ (float64, tiny step);
//  - ChainedProcessor order and choose() semantics;
//  - bad input: missing dir / manifest, another tokenizer than the teacher's, bad λ;
//  - the CLI end to end: `retort antidistill prepare` from a signal store, `retort generate --antidistill`.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "retort/decode/generate.h"
#include "retort/distill/antidistill_prepare.h"
#include "retort/distill/export.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/student.h"
#include "retort/distill/tasks.h"
#include "retort/text/chat_template.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/antidistill.h"
#include "retort/text/tokenizer.h"
#include "retort/util/file.h"
#include "test_util.h"

using namespace retort;
using retort_test::expect_error;
using retort_test::TempDir;
using nlohmann::json;

namespace {

const std::string kData = RETORT_TEST_DATA;

ModelHParams tiny_hp(int64_t vocab) {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = vocab, hp.n_embd = 64, hp.n_layer = 2, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 16;
  hp.n_ff = 96, hp.max_position = 512, hp.rope_theta = 10000;
  hp.rms_eps = double(1e-6f);  // GGUF stores it as float32
  return hp;
}

// Random weights large enough for peaked, context-dependent logits; norms away from 1.
CausalLM tiny_proxy(const ModelHParams& hp, uint64_t seed) {
  CausalLM m = make_random_student(hp, seed);
  torch::NoGradGuard ng;
  auto gen = at::detail::createCPUGenerator(seed + 1);
  for (auto& p : m->named_parameters()) {
    if (p.key().find("norm") != std::string::npos)
      p.value().copy_(torch::rand(p.value().sizes(), gen) + 0.5);
    else
      p.value().mul_(5);
  }
  m->eval();
  return m;
}

std::vector<int32_t> random_ids(int64_t n, int64_t vocab, uint64_t seed) {
  std::vector<int32_t> out;
  for (int64_t i = 0; i < n; ++i) out.push_back(int32_t(rng_u64(seed, uint64_t(i)) % uint64_t(vocab)));
  return out;
}

// ---- an independent float64 Llama forward ----------------------------------------------------------
// From Hugging Face's LlamaForCausalLM (rotate-half RoPE, no scaling; GQA; RMSNorm; SwiGLU), over a map of
// HF-named float64 parameters. tokens [T] -> logits [T, V].
using Params = std::map<std::string, torch::Tensor>;

torch::Tensor rms_norm64(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return x * torch::rsqrt(x.square().mean(-1, /*keepdim=*/true) + eps) * w;
}

torch::Tensor rope64(const torch::Tensor& x, double theta) {  // x [T, H, D]
  const int64_t T = x.size(0), D = x.size(2);
  auto inv = torch::pow(theta, -torch::arange(0, D, 2, torch::kFloat64) / double(D));       // [D/2]
  auto ang = torch::arange(T, torch::kFloat64).unsqueeze(1) * inv.unsqueeze(0);             // [T, D/2]
  auto cos = torch::cat({ang.cos(), ang.cos()}, -1).unsqueeze(1), sin = torch::cat({ang.sin(), ang.sin()}, -1).unsqueeze(1);
  auto x1 = x.slice(-1, 0, D / 2), x2 = x.slice(-1, D / 2, D);
  return x * cos + torch::cat({-x2, x1}, -1) * sin;
}

torch::Tensor llama_logits64(const ModelHParams& hp, const Params& p, const std::vector<int32_t>& ids) {
  const int64_t T = int64_t(ids.size()), H = hp.n_head, Hkv = hp.n_head_kv, D = hp.head_dim;
  auto tok = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64);
  auto x = p.at("model.embed_tokens.weight").index_select(0, tok);  // [T, E]
  auto mask = torch::ones({T, T}, torch::kBool).triu(1);             // true above the diagonal: future
  for (int64_t l = 0; l < hp.n_layer; ++l) {
    const std::string b = "model.layers." + std::to_string(l) + ".";
    auto h = rms_norm64(x, p.at(b + "input_layernorm.weight"), hp.rms_eps);
    auto q = rope64(torch::matmul(h, p.at(b + "self_attn.q_proj.weight").t()).view({T, H, D}), hp.rope_theta);
    auto k = rope64(torch::matmul(h, p.at(b + "self_attn.k_proj.weight").t()).view({T, Hkv, D}), hp.rope_theta);
    auto v = torch::matmul(h, p.at(b + "self_attn.v_proj.weight").t()).view({T, Hkv, D});
    k = k.repeat_interleave(H / Hkv, 1), v = v.repeat_interleave(H / Hkv, 1);                 // [T, H, D]
    auto s = torch::einsum("thd,shd->hts", {q, k}) / std::sqrt(double(D));                  // [H, T, T]
    auto a = torch::softmax(s.masked_fill(mask, -INFINITY), -1);
    auto o = torch::einsum("hts,shd->thd", {a, v}).reshape({T, H * D});
    x = x + torch::matmul(o, p.at(b + "self_attn.o_proj.weight").t());
    h = rms_norm64(x, p.at(b + "post_attention_layernorm.weight"), hp.rms_eps);
    auto gate = torch::matmul(h, p.at(b + "mlp.gate_proj.weight").t());
    auto up = torch::matmul(h, p.at(b + "mlp.up_proj.weight").t());
    x = x + torch::matmul(torch::silu(gate) * up, p.at(b + "mlp.down_proj.weight").t());
  }
  x = rms_norm64(x, p.at("model.norm.weight"), hp.rms_eps);
  const auto& head = hp.tie_embeddings ? p.at("model.embed_tokens.weight") : p.at("lm_head.weight");
  return torch::matmul(x, head.t());
}

// θ + c·g in float64, by HF name.
Params params64(CausalLMImpl& m, const ProxyGradient* g = nullptr, double c = 0) {
  Params out;
  size_t i = 0;
  for (auto& p : m.named_parameters()) {
    auto t = p.value().detach().to(torch::kFloat64).clone();
    if (g) t += c * g->grads[i].to(torch::kFloat64);
    out[p.key()] = t;
    ++i;
  }
  return out;
}

// The proxy, its traces and g, shared by the tests (built once: ~1 s).
struct Fixture {
  Tokenizer tok = Tokenizer::from_hf_json(kData + "/hf/tiny-llama/tokenizer.json");
  ModelHParams hp = tiny_hp(tok.n_vocab());
  CausalLM proxy = tiny_proxy(hp, 7);
  std::vector<AntidistillTrace> traces;
  ProxyGradient g;
  Fixture() {
    for (int n = 0; n < 4; ++n) traces.push_back({random_ids(20 + 3 * n, hp.n_vocab, 100 + n), 6});
    g = proxy_loss_gradient(*proxy, traces);
  }
  CheckpointInfo teacher_info() const {
    CheckpointInfo t;
    t.path = "tiny-teacher.gguf";
    t.hparams = hp;
    t.tokenizer = std::make_shared<Tokenizer>(tok);
    return t;
  }
  // A teacher on the proxy's tokenizer: the proxy itself at θ, as a GGUF in DIR (with DIR/ad prepared).
  RuntimeLoaded teacher_in(const std::string& dir) {
    prepare(dir + "/ad", kAntidistillEpsRel);
    export_gguf(*proxy, tok, ExportInfo{}, dir + "/teacher.gguf", "f32");
    return load_runtime_model(dir + "/teacher.gguf");
  }
  // DIR for eps_rel; returns ε.
  double prepare(const std::string& dir, double eps_rel) {
    const double eps = antidistill_eps(g, eps_rel);
    write_antidistill_dir(*proxy, tok, ExportInfo{}, g, eps, eps_rel, dir, {{"test", true}}, traces[0].tokens);
    return eps;
  }
};

Fixture& fixture() {
  static Fixture* f = new Fixture();
  return *f;
}

}  // namespace

// The float64 reference agrees with retort's float32 model, and g with autograd through the reference.
TEST(Antidistill, GradientMatchesFloat64Reference) {
  Fixture& f = fixture();
  Params p = params64(*f.proxy);
  {
    torch::NoGradGuard ng;
    auto ids = f.traces[0].tokens;
    auto ref = llama_logits64(f.hp, p, ids);
    auto t = torch::tensor(std::vector<int64_t>(ids.begin(), ids.end()), torch::kInt64).view({1, -1});
    auto z32 = f.proxy->forward(t)[0].to(torch::kFloat64);
    EXPECT_LT((z32 - ref).abs().max().item<double>(), 1e-4 * (1 + ref.abs().max().item<double>()));
  }
  // g64 = (1/N) Σ_n ∇ mean-NLL_n through the float64 reference.
  std::vector<torch::Tensor> leaves;
  for (auto& [name, t] : p) leaves.push_back(t.requires_grad_(true));
  torch::Tensor total = torch::zeros({}, torch::kFloat64);
  for (const auto& tr : f.traces) {
    const int64_t T = int64_t(tr.tokens.size()), P = tr.prompt_len;
    auto z = llama_logits64(f.hp, p, tr.tokens).slice(0, P - 1, T - 1);
    auto y = torch::tensor(std::vector<int64_t>(tr.tokens.begin() + P, tr.tokens.end()), torch::kInt64);
    total = total + torch::nn::functional::cross_entropy(z, y);
  }
  total = total / double(f.traces.size());
  EXPECT_NEAR(total.item<double>(), f.g.mean_loss, 1e-4 * f.g.mean_loss);
  auto grads = torch::autograd::grad({total}, leaves);
  double err = 0, norm = 0;
  size_t i = 0;
  for (auto& [name, t] : p) {
    // f.g is in named_parameters() order; find this name.
    auto it = std::find(f.g.names.begin(), f.g.names.end(), name);
    ASSERT_NE(it, f.g.names.end()) << name;
    auto d = f.g.grads[size_t(it - f.g.names.begin())].to(torch::kFloat64) - grads[i++];
    err += d.square().sum().item<double>();
    norm += grads[i - 1].square().sum().item<double>();
  }
  // float32 forward/backward against float64: relative error a few 1e-6 measured; 1e-4 allows for summation order.
  EXPECT_LT(std::sqrt(err), 1e-4 * std::sqrt(norm));
  EXPECT_NEAR(f.g.grad_norm, std::sqrt(norm), 1e-4 * std::sqrt(norm));
}

// (a) The added term against float64: τ·λ/(2ε)·(z64(θ+εg) − z64(θ−εg)) at the context's last position.
TEST(Antidistill, AddedTermEqualsFloat64Recomputation) {
  Fixture& f = fixture();
  TempDir tmp;
  const double eps = f.prepare(tmp / "ad", kAntidistillEpsRel);
  auto factory = load_antidistill(tmp / "ad", /*lambda=*/0.5, f.teacher_info());
  SamplingParams sp;
  sp.temperature = 0.8;
  auto proc = factory->make(sp);
  ASSERT_NE(proc, nullptr);
  auto* ad = dynamic_cast<AntidistillProcessor*>(proc.get());
  ASSERT_NE(ad, nullptr);
  EXPECT_DOUBLE_EQ(ad->scale(), 0.8 * 0.5 / (2 * eps));
  const json& manifest = factory->proxy().manifest;
  EXPECT_EQ(manifest["test"], true);
  EXPECT_GT(manifest["delta_std"].get<double>(), 0);  // the scale of Δ on the probe trace

  const auto ctx = random_ids(17, f.hp.n_vocab, 5);
  std::vector<float> logits(size_t(f.hp.n_vocab), 0.0f);
  logits[3] = -INFINITY;  // a banned token stays banned
  proc->process(ctx, logits.data(), f.hp.n_vocab);
  EXPECT_TRUE(std::isinf(logits[3]) && logits[3] < 0);

  torch::NoGradGuard ng;
  auto zp = llama_logits64(f.hp, params64(*f.proxy, &f.g, +eps), ctx)[-1];  // [V]
  auto zm = llama_logits64(f.hp, params64(*f.proxy, &f.g, -eps), ctx)[-1];
  auto ref = ad->scale() * (zp - zm);
  // The float32 proxies' logits against float64 (forward rounding plus fl32(θ ± εg)).
  auto zp32 = torch::from_blob(const_cast<float*>(ad->last_plus().data()), {f.hp.n_vocab}, torch::kFloat32).to(torch::kFloat64);
  auto zm32 = torch::from_blob(const_cast<float*>(ad->last_minus().data()), {f.hp.n_vocab}, torch::kFloat32).to(torch::kFloat64);
  const double zmax = zp.abs().max().item<double>();
  const double dz = std::max((zp32 - zp).abs().max().item<double>(), (zm32 - zm).abs().max().item<double>());
  // float32 logits carry ≲ 32·u·max|z| (u = 2^-24; measured 6.7·u·max|z| on this model).
  EXPECT_LT(dz, 32 * 0x1p-24 * zmax);
  std::printf("max |z32 - z64| = %.2f u·max|z|\n", dz / (0x1p-24 * zmax));
  // So the added term may be off by scale·2·dz (plus the float32 rounding of the sum).
  double worst = 0, ref_max = 0;
  for (int64_t v = 0; v < f.hp.n_vocab; ++v) {
    if (v == 3) continue;
    worst = std::max(worst, std::abs(double(logits[size_t(v)]) - ref[v].item<double>()));
    ref_max = std::max(ref_max, std::abs(ref[v].item<double>()));
  }
  const double bound = ad->scale() * 2 * 32 * 0x1p-24 * zmax + 0x1p-24 * ref_max;
  EXPECT_LT(worst, bound) << "ref_max " << ref_max << " dz " << dz;
  // The term is not lost in that error (signal ≫ noise at the default ε).
  EXPECT_LT(worst, 1e-2 * ref_max);
  RecordProperty("added_term_max", std::to_string(ref_max));
  RecordProperty("added_term_err", std::to_string(worst));

  // Greedy: the term is added unscaled by τ.
  sp.temperature = 0;
  auto greedy = std::dynamic_pointer_cast<AntidistillProcessor>(factory->make(sp));
  EXPECT_DOUBLE_EQ(greedy->scale(), 0.5 / (2 * eps));
}

// (b) Incremental use of the proxies' KV caches equals a fresh full forward, bit for bit.
TEST(Antidistill, IncrementalCacheEqualsFreshForward) {
  Fixture& f = fixture();
  TempDir tmp;
  f.prepare(tmp / "ad", kAntidistillEpsRel);
  auto proxy = load_antidistill_proxy(tmp / "ad", f.teacher_info());
  const auto full = random_ids(300, f.hp.n_vocab, 9);  // past the first cache (256): it grows once
  AntidistillProcessor inc(proxy, 1.0, 1.0);
  std::vector<float> logits(size_t(f.hp.n_vocab));
  auto same_as_fresh = [&](std::span<const int32_t> ctx) {
    AntidistillProcessor fresh(proxy, 1.0, 1.0);
    fresh.process(ctx, logits.data(), f.hp.n_vocab);
    EXPECT_EQ(fresh.tokens_fed(), int64_t(ctx.size()));
    EXPECT_EQ(inc.last_plus(), fresh.last_plus()) << ctx.size();
    EXPECT_EQ(inc.last_minus(), fresh.last_minus()) << ctx.size();
  };
  std::span<const int32_t> all(full);
  inc.process(all.first(10), logits.data(), f.hp.n_vocab);
  int64_t fed = inc.tokens_fed();
  EXPECT_EQ(fed, 10);
  for (size_t n = 11; n <= 40; ++n) {  // one new token per step: one token per proxy
    inc.process(all.first(n), logits.data(), f.hp.n_vocab);
    EXPECT_EQ(inc.tokens_fed(), ++fed);
  }
  same_as_fresh(all.first(40));
  inc.process(all.first(40), logits.data(), f.hp.n_vocab);  // the same context again: no work
  EXPECT_EQ(inc.tokens_fed(), fed);
  // A context that leaves the cached one (another continuation after 30 tokens): rolled back, not refilled.
  std::vector<int32_t> other(full.begin(), full.begin() + 30);
  other.push_back((full[30] + 1) % int32_t(f.hp.n_vocab));
  inc.process(other, logits.data(), f.hp.n_vocab);
  EXPECT_EQ(inc.tokens_fed(), fed + 1);
  same_as_fresh(other);
  // Growing past the cache's 256 positions refills it once; still the same bits.
  inc.process(all.first(260), logits.data(), f.hp.n_vocab);
  same_as_fresh(all.first(260));
  inc.process(all.first(261), logits.data(), f.hp.n_vocab);
  same_as_fresh(all.first(261));
}

// (c) λ = 0 is exactly plain sampling: same tokens and logprobs for the same seeds, sampled and greedy.
TEST(Antidistill, LambdaZeroIsPlainSampling) {
  Fixture& f = fixture();
  TempDir tmp;
  RuntimeLoaded teacher = f.teacher_in(tmp.path.string());  // the teacher: the proxy at θ
  auto proxy = load_antidistill_proxy(tmp / "ad", teacher);
  EXPECT_EQ(AntidistillFactory(proxy, 0.0).make(SamplingParams{}), nullptr);  // the factory adds nothing
  std::vector<GenerationRequest> plain, zero, strong;
  for (int i = 0; i < 4; ++i) {
    GenerationRequest r;
    r.prompt = random_ids(5 + i, f.hp.n_vocab, 50 + i);
    r.sampling.temperature = i == 3 ? 0.0 : 0.9;
    r.sampling.top_p = i == 1 ? 0.9 : 1.0;
    r.sampling.seed = 1000 + i;
    r.max_tokens = 24;
    r.ignore_eos = true;
    plain.push_back(r);
    r.processor = std::make_shared<AntidistillProcessor>(proxy, 0.0, r.sampling.temperature);
    zero.push_back(r);
    r.processor = std::make_shared<AntidistillProcessor>(proxy, 50.0, r.sampling.temperature);
    strong.push_back(r);
  }
  auto a = generate(teacher, plain), b = generate(teacher, zero), c = generate(teacher, strong);
  int differ = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].tokens.size(), b[i].tokens.size());
    for (size_t t = 0; t < a[i].tokens.size(); ++t) {
      EXPECT_EQ(a[i].tokens[t].token, b[i].tokens[t].token) << i << " " << t;
      EXPECT_EQ(a[i].tokens[t].logprob, b[i].tokens[t].logprob) << i << " " << t;
    }
    for (size_t t = 0; t < std::min(a[i].tokens.size(), c[i].tokens.size()); ++t)
      differ += a[i].tokens[t].token != c[i].tokens[t].token;
  }
  EXPECT_GT(differ, 0) << "a strong λ changes nothing: the processor is not applied";
}

// Under BatchDecoder the proxies run once per step for all rows (BatchedWork), with the bits of each
// sequence alone: 6 sequences (more than the pool's first 4 slots), prompts prefilled in chunks of 8 so
// rows are at different stages in one step, and one prompt past the pool's first slot length (256).
TEST(Antidistill, BatchedProxiesEqualOneSequenceAtATime) {
  Fixture& f = fixture();
  TempDir tmp;
  RuntimeLoaded teacher = f.teacher_in(tmp.path.string());
  auto make_requests = [&](std::shared_ptr<const AntidistillProxy> proxy) {
    std::vector<GenerationRequest> reqs;
    for (int i = 0; i < 6; ++i) {
      GenerationRequest r;
      r.prompt = random_ids(i == 2 ? 270 : 5 + 7 * i, f.hp.n_vocab, 80 + i);
      r.sampling.temperature = i == 4 ? 0.0 : 1.0;
      r.sampling.seed = 2000 + i;
      r.max_tokens = 20;
      r.ignore_eos = true;
      r.processor = std::make_shared<AntidistillProcessor>(proxy, 20.0, r.sampling.temperature);
      reqs.push_back(r);
    }
    return reqs;
  };
  auto batched_proxy = load_antidistill_proxy(tmp / "ad", teacher);
  auto alone_proxy = load_antidistill_proxy(tmp / "ad", teacher);
  GenerateOptions batched;
  batched.max_batch = 6, batched.prefill_chunk = 8;
  auto a = generate(teacher, make_requests(batched_proxy), batched);
  std::vector<GenerationResult> b;
  auto alone_reqs = make_requests(alone_proxy);
  for (auto& r : alone_reqs) b.push_back(generate(teacher, std::vector<GenerationRequest>{r})[0]);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    ASSERT_EQ(a[i].tokens.size(), b[i].tokens.size()) << i;
    for (size_t t = 0; t < a[i].tokens.size(); ++t) {
      EXPECT_EQ(a[i].tokens[t].token, b[i].tokens[t].token) << i << " " << t;
      EXPECT_EQ(a[i].tokens[t].logprob, b[i].tokens[t].logprob) << i << " " << t;
    }
  }
  const AntidistillStats sa = antidistill_stats(*batched_proxy), sb = antidistill_stats(*alone_proxy);
  // Alone: one forward per generated token per sequence (20 each) plus the prompts' fills.
  EXPECT_EQ(sb.rows, sb.forwards);
  EXPECT_GE(sb.forwards, 6 * 20);
  // Batched: the decode steps carry several rows each, so far fewer forwards for at least as many rows.
  EXPECT_GE(sa.rows, 6 * 20);
  EXPECT_LT(sa.forwards, sb.forwards / 2) << sa.rows << " rows";
}

// Tasks answered under a provider's sampling (distill/tasks.h TaskDecoding): task i gets seed + i and a
// processor of its own from the factory — the replies of those requests generated one by one.
TEST(Antidistill, SampledTasksUseTheFactoryAndSeeds) {
  Fixture& f = fixture();
  TempDir tmp;
  RuntimeLoaded teacher = f.teacher_in(tmp.path.string());
  AntidistillFactory factory(load_antidistill_proxy(tmp / "ad", teacher), 50.0);
  std::vector<Task> tasks;
  for (int i = 0; i < 4; ++i) {
    Task t;
    t.id = "t" + std::to_string(i), t.category = "c", t.check = "contains", t.answer = "a";
    t.prompt = "question number " + std::to_string(i);
    t.max_tokens = 10;
    tasks.push_back(t);
  }
  TaskDecoding dec;
  dec.sampling.temperature = 1.0;
  dec.sampling.seed = 77;
  dec.processors = &factory;
  const TaskRun run = run_tasks(teacher, *teacher.model, tasks, 3, dec);
  TaskDecoding plain = dec;
  plain.processors = nullptr;
  const TaskRun run_plain = run_tasks(teacher, *teacher.model, tasks, 3, plain);
  ASSERT_EQ(run.outcomes.size(), tasks.size());
  const bool chat = ChatTemplate::available(teacher.chat_template, *teacher.tokenizer);
  int differ = 0;
  for (size_t i = 0; i < tasks.size(); ++i) {
    GenerationRequest r;
    r.prompt = chat ? ChatTemplate::from_jinja(teacher.chat_template, *teacher.tokenizer)
                          .encode({{"user", tasks[i].prompt}}, *teacher.tokenizer)
                    : teacher.tokenizer->encode(tasks[i].prompt, /*parse_special=*/false, /*add_bos=*/true);
    r.sampling = dec.sampling;
    r.sampling.seed = 77 + i;
    r.max_tokens = 10;
    r.processor = factory.make(r.sampling);
    const GenerationResult g = generate(teacher, std::vector<GenerationRequest>{r})[0];
    EXPECT_EQ(run.outcomes[i].reply, g.text) << i;
    EXPECT_EQ(run.outcomes[i].tokens, int64_t(g.tokens.size())) << i;
    differ += run_plain.outcomes[i].reply != g.text;
  }
  EXPECT_GT(differ, 0) << "the factory's processors change no reply: they are not applied";
}

// (d) The central difference approximates ⟨∇θ z, g⟩. Reference: float64 central difference with a step
// 1e-6 of ‖θ‖ (truncation ~1e-12, rounding ~1e-10 relative). Errors of the float32 proxies' difference:
// truncation ∝ eps_rel², rounding ∝ u·max|z| / ε. Measured (max error / max|⟨∇z, g⟩|): eps_rel 1e-4 → 1.1e-4
// (rounding), 1e-3 → 8.6e-4, 1e-2 → 8e-2 (truncation, ×100 per ×10).
TEST(Antidistill, FiniteDifferenceApproximatesDirectionalDerivative) {
  Fixture& f = fixture();
  TempDir tmp;
  const auto ctx = random_ids(15, f.hp.n_vocab, 21);
  torch::NoGradGuard ng;
  const double h = 1e-6 * f.g.param_norm / f.g.grad_norm;
  auto jvp = (llama_logits64(f.hp, params64(*f.proxy, &f.g, +h), ctx)[-1] -
              llama_logits64(f.hp, params64(*f.proxy, &f.g, -h), ctx)[-1]) / (2 * h);  // ⟨∇θ z, g⟩ [V]
  const double jmax = jvp.abs().max().item<double>();
  ASSERT_GT(jmax, 0);
  std::vector<float> logits(size_t(f.hp.n_vocab));
  std::map<double, double> rel;
  for (double eps_rel : {1e-5, 1e-4, 1e-3, 1e-2}) {
    const std::string dir = tmp / ("ad" + std::to_string(int(std::lround(-std::log10(eps_rel)))));
    const double eps = f.prepare(dir, eps_rel);
    AntidistillProcessor p(load_antidistill_proxy(dir, f.teacher_info()), 1.0, 1.0);
    p.process(ctx, logits.data(), f.hp.n_vocab);
    double err = 0;
    for (int64_t v = 0; v < f.hp.n_vocab; ++v)
      err = std::max(err, std::abs((double(p.last_plus()[size_t(v)]) - double(p.last_minus()[size_t(v)])) / (2 * eps) -
                                   jvp[v].item<double>()));
    rel[eps_rel] = err / jmax;
    RecordProperty("rel_err_eps_rel_" + std::to_string(eps_rel), std::to_string(rel[eps_rel]));
    std::printf("eps_rel %g: eps %.3e, max |fd32 - jvp| / max |jvp| = %.2e\n", eps_rel, eps, rel[eps_rel]);
  }
  // The default: within 1e-3 (measured 1.1e-4).
  EXPECT_LT(rel[kAntidistillEpsRel], 1e-3);
  // Rounding grows as ε shrinks (∝ 1/ε), truncation as it grows (∝ ε²): both ends are worse.
  EXPECT_GT(rel[1e-5], 3 * rel[1e-4]);
  EXPECT_GT(rel[1e-2], 30 * rel[1e-3]);
}

TEST(Antidistill, ChainedProcessorOrderAndChoose) {
  struct Add : LogitsProcessor {
    float a, m;
    int32_t pick;
    Add(float a_, float m_, int32_t p) : a(a_), m(m_), pick(p) {}
    void process(std::span<const int32_t>, float* x, int64_t n) override {
      for (int64_t i = 0; i < n; ++i) x[i] = (x[i] + a) * m;
    }
    int32_t choose(std::span<const int32_t>, const float*, int64_t) override { return pick; }
  };
  auto first = std::make_shared<Add>(1.0f, 2.0f, -1), second = std::make_shared<Add>(3.0f, 1.0f, 5),
       third = std::make_shared<Add>(0.0f, 1.0f, 7);
  auto chain = chain_processors({first, nullptr, second, third});
  std::vector<float> x = {1, 2};
  std::vector<int32_t> ctx = {0};
  chain->process(ctx, x.data(), 2);
  EXPECT_EQ(x, (std::vector<float>{7, 9}));  // ((1+1)*2)+3, ((2+1)*2)+3: in order
  EXPECT_EQ(chain->choose(ctx, x.data(), 2), 5);  // the first that chooses
  EXPECT_EQ(chain_processors({nullptr, first}), first);
  EXPECT_EQ(chain_processors({nullptr}), nullptr);
}

// (e) Bad input.
TEST(Antidistill, BadInput) {
  Fixture& f = fixture();
  TempDir tmp;
  const CheckpointInfo teacher = f.teacher_info();
  expect_error([&] { load_antidistill(tmp / "missing", 1.0, teacher); },
               {"missing", "not a directory", "retort antidistill prepare"});
  std::filesystem::create_directories(tmp / "empty");
  expect_error([&] { load_antidistill(tmp / "empty", 1.0, teacher); },
               {"empty/antidistill.json", "not found", "retort antidistill prepare"});

  f.prepare(tmp / "ad", kAntidistillEpsRel);
  // A teacher on another tokenizer (the Qwen2 fixture's).
  CheckpointInfo other = teacher;
  other.path = "other-teacher.gguf";
  other.tokenizer = std::make_shared<Tokenizer>(Tokenizer::from_hf_json(kData + "/tokenizer/qwen2/tokenizer.json"));
  other.hparams.n_vocab = other.tokenizer->n_vocab();
  expect_error([&] { load_antidistill(tmp / "ad", 1.0, other); },
               {"ad/antidistill.json", "another tokenizer than the teacher's", f.tok.hash(), other.tokenizer->hash(),
                "other-teacher.gguf", "retort antidistill prepare"});
  expect_error([&] { load_antidistill(tmp / "ad", std::nan(""), teacher); }, {"lambda", "finite"});

  // A damaged manifest, and a missing proxy file.
  const std::string mpath = tmp / "ad/antidistill.json";
  json m = json::parse(read_file(mpath));
  write_file_atomic(mpath, "{not json");
  expect_error([&] { load_antidistill(tmp / "ad", 1.0, teacher); }, {"antidistill.json", "not valid JSON"});
  json bad = m;
  bad["format"] = "something-else";
  write_file_atomic(mpath, bad.dump());
  expect_error([&] { load_antidistill(tmp / "ad", 1.0, teacher); }, {"antidistill.json", "format"});
  write_file_atomic(mpath, m.dump());
  std::filesystem::remove(tmp / "ad/proxy_minus.gguf");
  expect_error([&] { load_antidistill(tmp / "ad", 1.0, teacher); }, {"proxy_minus.gguf", "not found"});

  // A processor fed a teacher of another vocabulary size.
  f.prepare(tmp / "ad", kAntidistillEpsRel);  // replaces the damaged dir whole
  AntidistillProcessor p(load_antidistill_proxy(tmp / "ad", teacher), 1.0, 1.0);
  std::vector<float> logits(10);
  std::vector<int32_t> ctx = {1, 2};
  expect_error([&] { p.process(ctx, logits.data(), 10); }, {"10 tokens", "proxy"});
  expect_error([&] { antidistill_eps(ProxyGradient{}, 1e-3); }, {"gradient"});
}

// The CLI: prepare from a signal store of the teacher's traces, then generate with it; bad options.
TEST(Antidistill, CliPrepareAndGenerate) {
  Fixture& f = fixture();
  TempDir tmp;
  export_gguf(*f.proxy, f.tok, ExportInfo{}, tmp / "teacher.gguf", "f32");
  export_gguf(*f.proxy, f.tok, ExportInfo{}, tmp / "proxy.gguf", "q8_0");
  StoreManifest sm;
  sm.teacher = {{"spec", "teacher.gguf"}, {"path", tmp / "teacher.gguf"}, {"format", "gguf"}, {"sha256", std::string(64, 'a')}};
  sm.tokenizer_hash = f.tok.hash();
  sm.n_vocab = f.hp.n_vocab;
  sm.k = 1;
  sm.generation = {{"temperature", 1.0}, {"max_tokens", 32}, {"samples_per_prompt", 1}, {"seed", 0}};
  sm.prompts = {{"path", "/p.jsonl"}, {"sha256", std::string(64, 'b')}, {"count", 3}};
  {
    SignalStoreWriter w(tmp / "store", sm);
    for (int64_t i = 0; i < 3; ++i) {
      const AntidistillTrace& t = f.traces[size_t(i)];
      const size_t c = t.tokens.size() - size_t(t.prompt_len);
      w.add(i, t.tokens, t.prompt_len, std::vector<float>(c, -1.0f),
            std::vector<int32_t>(t.tokens.begin() + t.prompt_len, t.tokens.end()), std::vector<float>(c, -1.0f),
            std::vector<float>(c, 0.5f));
    }
    w.finish();
  }
  auto run = [&](const std::string& args) {
    const std::string cmd = std::string(RETORT_CLI_PATH) + " " + args + " > " + (tmp / "out.txt") + " 2> " + (tmp / "err.txt");
    const int rc = std::system(cmd.c_str());
    return std::make_pair(rc, read_file(tmp / "out.txt") + read_file(tmp / "err.txt"));
  };
  auto [rc, out] = run("antidistill prepare --threads 1 --proxy " + (tmp / "proxy.gguf") + " --teacher " +
                       (tmp / "teacher.gguf") + " --traces " + (tmp / "store") + " --out " + (tmp / "ad"));
  ASSERT_EQ(rc, 0) << out;
  json m = json::parse(read_file(tmp / "ad/antidistill.json"));
  EXPECT_EQ(m["traces"]["samples"], 3);
  EXPECT_EQ(m["tokenizer_hash"], f.tok.hash());
  EXPECT_EQ(m["proxy"]["sha256"].get<std::string>().size(), 64u);
  EXPECT_GT(m["eps"].get<double>(), 0);
  EXPECT_DOUBLE_EQ(m["eps_rel"].get<double>(), kAntidistillEpsRel);
  EXPECT_FALSE(std::filesystem::exists(antidistill_stage_dir(tmp / "ad")));

  std::tie(rc, out) = run("generate --threads 1 -m " + (tmp / "teacher.gguf") + " -p ab -n 6 --ignore-eos --json --antidistill " +
                          (tmp / "ad") + " --antidistill-lambda 0.5");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(json::parse(out.substr(0, out.find('\n')))["tokens"].size(), 6u) << out;

  std::tie(rc, out) = run("generate -m " + (tmp / "teacher.gguf") + " -p ab --antidistill-lambda 1");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--antidistill-lambda needs --antidistill DIR"), std::string::npos) << out;
  std::tie(rc, out) = run("antidistill prepare --proxy " + (tmp / "proxy.gguf") + " --teacher " + (tmp / "teacher.gguf") +
                          " --traces " + (tmp / "nowhere") + " --out " + (tmp / "ad2"));
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("nowhere not found"), std::string::npos) << out;
}

// bench/bench_runtime.cpp — runtime speed of one model, printed as one JSON object.
//
//   build/bench_runtime [--model M] [--threads N] [--dtype f32|bf16] [--prompt-len 128] [--gen 64] [--batches 1,32]
//                       [--quantized 1|0]   (0: decode from dense weights, not the GGUF's Q8_0/Q4_1 blocks)
//                       [--reps 3]          (model-only decode: best of this many passes over the same positions)
//
// Measures: load time; prefill tokens/s (one sequence of --prompt-len tokens); decode tokens/s at each batch size,
// (a) model only: forward_cached on [B,1] + argmax, as llama-batched-bench's S_TG measures, and
// (b) through generate(): sampling, logprobs and stop checks included; peak RSS.
// bench/run_vs_llamacpp.sh runs this next to llama.cpp's llama-bench / llama-batched-bench on the same GGUF.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "retort/decode/generate.h"
#include "retort/model/kv_cache.h"
#include "retort/model/loader.h"

using namespace retort;
using clk = std::chrono::steady_clock;

static double secs_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

int main(int argc, char** argv) {
  std::string model = "smollm2-135m-instruct", dtype = "f32", batches_s = "1,32";
  int threads = 0;
  bool quantized = true;
  int64_t prompt_len = 128, gen = 64, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--dtype") dtype = v;
    else if (k == "--prompt-len") prompt_len = std::stoll(v);
    else if (k == "--gen") gen = std::stoll(v);
    else if (k == "--batches") batches_s = v;
    else if (k == "--quantized") quantized = v != "0";
    else if (k == "--reps") reps = std::max<int64_t>(1, std::stoll(v));
    else { std::fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
  }
  std::vector<int64_t> batches;
  {
    std::stringstream ss(batches_s);
    std::string x;
    while (std::getline(ss, x, ',')) batches.push_back(std::stoll(x));
  }
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  torch::set_num_threads(threads);
  torch::NoGradGuard no_grad;

  nlohmann::json out;
  out["runtime"] = "retort";
  out["threads"] = threads;
  out["dtype"] = dtype;
  LoadOptions lo;
  lo.dtype = dtype == "bf16" ? torch::kBFloat16 : torch::kFloat32;
  lo.quantized_decode = quantized;
  auto t0 = clk::now();
  LoadedModel m = load_model(model, lo);
  out["load_s"] = secs_since(t0);
  out["quantized_decode_weights"] = m.model->quantized_in_use();
  out["model"] = m.path;
  const int64_t V = m.hparams.n_vocab;
  torch::manual_seed(0);

  // Prefill: one sequence of prompt_len tokens (warm up once).
  {
    KvCache cache(m.hparams, 1, prompt_len + 1, torch::kCPU, lo.dtype);
    auto toks = torch::randint(10, V, {1, prompt_len}, torch::kLong);
    m.model->forward_cached(toks, {0}, {prompt_len}, cache, true);
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      cache.clear(0);
      auto t = clk::now();
      m.model->forward_cached(toks, {0}, {prompt_len}, cache, true);
      best = std::min(best, secs_since(t));
    }
    out["prefill_tok_s"] = prompt_len / best;
  }

  for (int64_t B : batches) {
    // (a) model only: prefill B sequences of prompt_len, then gen steps of [B,1] + argmax.
    KvCache cache(m.hparams, B, prompt_len + gen + 1, torch::kCPU, lo.dtype);
    std::vector<int64_t> slots(B), n1(B, 1), np(B, prompt_len);
    for (int64_t b = 0; b < B; ++b) slots[b] = b;
    auto toks = torch::randint(10, V, {B, prompt_len}, torch::kLong);
    auto logits = m.model->forward_cached(toks, slots, np, cache, true);
    const auto first = logits.argmax(-1).unsqueeze(1);
    m.model->forward_cached(first, slots, n1, cache, true);  // warm-up step
    // This machine's speed drifts (shared host): best of reps passes, each rewound to the prompt.
    double dt = 1e30;
    for (int64_t rep = 0; rep < reps; ++rep) {
      for (int64_t b = 0; b < B; ++b) cache.lengths[size_t(b)] = prompt_len;
      auto next = first;
      auto t = clk::now();
      for (int64_t s = 0; s < gen - 1; ++s) {
        logits = m.model->forward_cached(next, slots, n1, cache, true);
        next = logits.argmax(-1).unsqueeze(1);
      }
      dt = std::min(dt, secs_since(t));
    }
    out["decode_model_tok_s_b" + std::to_string(B)] = B * (gen - 1) / dt;

    // (b) through generate(): greedy, EOS ignored so every sequence runs gen tokens.
    std::vector<GenerationRequest> reqs(B);
    for (int64_t b = 0; b < B; ++b) {
      auto p = torch::randint(10, V, {prompt_len}, torch::kLong);
      reqs[b].prompt.resize(prompt_len);
      for (int64_t i = 0; i < prompt_len; ++i) reqs[b].prompt[i] = static_cast<int32_t>(p[i].item<int64_t>());
      reqs[b].max_tokens = gen;
      reqs[b].ignore_eos = true;
      reqs[b].sampling.temperature = 0;
    }
    GenerateOptions go;
    go.max_batch = B;
    clk::time_point first_token;
    bool seen = false;
    int64_t after_first = 0;
    go.on_token = [&](size_t, const GeneratedToken&, const std::string&) {
      if (!seen) {
        seen = true;
        first_token = clk::now();
      } else {
        ++after_first;
      }
    };
    auto tg = clk::now();
    generate(m, reqs, go);
    double total = secs_since(tg);
    // Decode rate: tokens after the first one, over the time after the first one (prefill excluded).
    out["decode_generate_tok_s_b" + std::to_string(B)] = after_first / secs_since(first_token);
    out["generate_total_s_b" + std::to_string(B)] = total;
  }
  struct rusage ru {};
  getrusage(RUSAGE_SELF, &ru);
  out["peak_rss_MiB"] = ru.ru_maxrss / 1024.0;
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

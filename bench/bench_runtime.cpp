// bench/bench_runtime.cpp — runtime speed of one model, printed as one JSON object.
//
//   build/bench_runtime [--model M] [--threads N] [--dtype f32|bf16] [--prompt-len 128] [--gen 64] [--batches 1,32]
//                       [--reps 3]          (model-only decode: best of this many passes over the same positions)
//
// The model is loaded as `retort generate` and `retort serve` load it: the torch-free runtime
// (runtime_model.h), matrices decoded straight from the GGUF's blocks; --dtype bf16 is its bf16 numerics
// (bf16 KV cache, bf16 products on AVX512-BF16).
// Measures: load time; prefill tokens/s (one sequence of --prompt-len tokens); decode tokens/s at each batch size,
// (a) model only: forward_last on [B,1] + argmax, as llama-batched-bench's S_TG measures, and
// (b) through generate(): sampling, logprobs and stop checks included; peak RSS.
// bench/run_vs_llamacpp.sh runs this next to llama.cpp's llama-bench / llama-batched-bench on the same GGUF.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "retort/decode/generate.h"
#include "retort/decode/sampling.h"
#include "retort/model/runtime_model.h"
#include "retort/util/parallel.h"

using namespace retort;
using clk = std::chrono::steady_clock;

static double secs_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

int main(int argc, char** argv) {
  std::string model = "smollm2-135m-instruct", dtype = "f32", batches_s = "1,32";
  int threads = 0;
  int64_t prompt_len = 128, gen = 64, reps = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--dtype") dtype = v;
    else if (k == "--prompt-len") prompt_len = std::stoll(v);
    else if (k == "--gen") gen = std::stoll(v);
    else if (k == "--batches") batches_s = v;
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
  set_num_threads(threads);

  nlohmann::json out;
  out["runtime"] = "retort";
  out["threads"] = threads;
  out["dtype"] = dtype;
  RuntimeLoadOptions lo;
  lo.bf16 = dtype == "bf16";
  auto t0 = clk::now();
  RuntimeLoaded m = load_runtime_model(model, lo);
  out["load_s"] = secs_since(t0);
  out["model"] = m.path;
  RuntimeModel& lm = *m.model;
  const int64_t V = m.hparams.n_vocab;
  std::mt19937_64 rng(0);
  std::uniform_int_distribution<int64_t> tok(10, V - 1);
  std::vector<float> logits;

  // Prefill: one sequence of prompt_len tokens (warm up once).
  {
    auto cache = lm.new_cache(1, prompt_len + 1);
    std::vector<int64_t> toks(static_cast<size_t>(prompt_len));
    for (auto& t : toks) t = tok(rng);
    logits.resize(static_cast<size_t>(V));
    lm.forward_last(toks.data(), 1, prompt_len, {0}, {prompt_len}, *cache, logits.data());
    double best = 1e30;
    for (int rep = 0; rep < 3; ++rep) {
      cache->clear(0);
      auto t = clk::now();
      lm.forward_last(toks.data(), 1, prompt_len, {0}, {prompt_len}, *cache, logits.data());
      best = std::min(best, secs_since(t));
    }
    out["prefill_tok_s"] = prompt_len / best;
  }

  for (int64_t B : batches) {
    // (a) model only: prefill B sequences of prompt_len, then gen steps of [B,1] + argmax.
    auto cache = lm.new_cache(B, prompt_len + gen + 1);
    std::vector<int64_t> slots(static_cast<size_t>(B)), n1(static_cast<size_t>(B), 1), np(static_cast<size_t>(B), prompt_len);
    for (int64_t b = 0; b < B; ++b) slots[size_t(b)] = b;
    std::vector<int64_t> toks(static_cast<size_t>(B * prompt_len));
    for (auto& t : toks) t = tok(rng);
    logits.resize(static_cast<size_t>(B * V));
    lm.forward_last(toks.data(), B, prompt_len, slots, np, *cache, logits.data());
    std::vector<int64_t> first(static_cast<size_t>(B)), next(static_cast<size_t>(B));
    for (int64_t b = 0; b < B; ++b) first[size_t(b)] = argmax(logits.data() + b * V, V);
    lm.forward_last(first.data(), B, 1, slots, n1, *cache, logits.data());  // warm-up step
    // This machine's speed drifts (shared host): best of reps passes, each rewound to the prompt.
    double dt = 1e30;
    for (int64_t rep = 0; rep < reps; ++rep) {
      for (int64_t b = 0; b < B; ++b) cache->lengths[size_t(b)] = prompt_len;
      next = first;
      auto t = clk::now();
      for (int64_t s = 0; s < gen - 1; ++s) {
        lm.forward_last(next.data(), B, 1, slots, n1, *cache, logits.data());
        for (int64_t b = 0; b < B; ++b) next[size_t(b)] = argmax(logits.data() + b * V, V);
      }
      dt = std::min(dt, secs_since(t));
    }
    out["decode_model_tok_s_b" + std::to_string(B)] = double(B * (gen - 1)) / dt;

    // (b) through generate(): greedy, EOS ignored so every sequence runs gen tokens.
    std::vector<GenerationRequest> reqs(static_cast<size_t>(B));
    for (auto& r : reqs) {
      r.prompt.resize(static_cast<size_t>(prompt_len));
      for (auto& t : r.prompt) t = static_cast<int32_t>(tok(rng));
      r.max_tokens = gen;
      r.ignore_eos = true;
      r.sampling.temperature = 0;
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

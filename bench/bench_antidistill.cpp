// bench/bench_antidistill.cpp — the cost per token of antidistillation sampling (protect/antidistill.h):
// generation throughput with it vs plain, on the torch-free runtime `retort serve` uses, one JSON object.
//
//   build/bench_antidistill --antidistill DIR [--model smollm2-135m-instruct] [--lambda 1] [--threads N]
//                           [--batch 1,4,16] [--prompt-len 64] [--gen 64] [--rounds 3] [--temperature 1]
//
// DIR comes from `retort antidistill prepare` (bench/run_antidistill.sh makes one from a pruned student).
// Each round runs generate() plain and with antidistillation on the same prompts (random ids, EOS ignored,
// so every sequence makes --gen tokens), alternating which goes first. Decode rate = tokens after each
// sequence's first one over the time after the first token (prefill excluded): the steady state. Per batch
// size: the best round's tok/s of each, ratio = antidistill / plain, and the model of the cost from one
// decode step of the teacher and of one proxy at that batch (timed here too, the proxies run batched):
// plain_step / (plain_step + 2·proxy_step).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "retort/decode/generate.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/antidistill.h"
#include "retort/util/parallel.h"

using namespace retort;
using clk = std::chrono::steady_clock;

static double secs_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

// Best-of-5 ms of one decode step of `lm` for `batch` sequences at position `pos`.
static double decode_step_ms(CachedLM& lm, int64_t batch, int64_t pos) {
  auto cache = lm.new_cache(batch, pos + 8);
  const int64_t V = lm.hparams().n_vocab;
  std::vector<int64_t> slots(static_cast<size_t>(batch)), fill(static_cast<size_t>(batch * pos));
  std::vector<int64_t> one(static_cast<size_t>(batch), 7);
  for (int64_t b = 0; b < batch; ++b) slots[size_t(b)] = b;
  for (size_t i = 0; i < fill.size(); ++i) fill[i] = int64_t(i % 1000) + 10;
  std::vector<float> logits(size_t(batch * V));
  lm.forward_last(fill.data(), batch, pos, slots, std::vector<int64_t>(size_t(batch), pos), *cache, logits.data());
  double best = 1e30;
  for (int r = 0; r < 5; ++r) {
    for (int64_t b = 0; b < batch; ++b) cache->lengths[size_t(b)] = pos;
    auto t = clk::now();
    lm.forward_last(one.data(), batch, 1, slots, std::vector<int64_t>(size_t(batch), 1), *cache, logits.data());
    best = std::min(best, secs_since(t) * 1e3);
  }
  return best;
}

int main(int argc, char** argv) {
  std::string model = "smollm2-135m-instruct", dir, batches_s = "1,4,16";
  int threads = 0, rounds = 3;
  int64_t prompt_len = 64, gen = 64;
  double lambda = 1.0, temperature = 1.0;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--model") model = v;
    else if (k == "--antidistill") dir = v;
    else if (k == "--lambda") lambda = std::stod(v);
    else if (k == "--threads") threads = std::stoi(v);
    else if (k == "--batch") batches_s = v;
    else if (k == "--prompt-len") prompt_len = std::stoll(v);
    else if (k == "--gen") gen = std::stoll(v);
    else if (k == "--rounds") rounds = std::stoi(v);
    else if (k == "--temperature") temperature = std::stod(v);
    else { std::fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
  }
  if (dir.empty()) {
    std::fprintf(stderr, "--antidistill DIR is required (bench/run_antidistill.sh prepares one)\n");
    return 2;
  }
  std::vector<int64_t> batches;
  {
    std::stringstream ss(batches_s);
    std::string x;
    while (std::getline(ss, x, ',')) batches.push_back(std::stoll(x));
  }
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  set_num_threads(threads);

  RuntimeLoaded teacher = load_runtime_model(model);
  auto factory = load_antidistill(dir, lambda, teacher);
  const int64_t V = teacher.hparams.n_vocab;

  nlohmann::json out;
  out["bench"] = "antidistill";
  out["model"] = teacher.path;
  out["antidistill"] = factory->describe();
  out["proxy_layers"] = factory->proxy().manifest["proxy"].value("n_layer", 0);
  out["threads"] = threads;
  out["prompt_len"] = prompt_len;
  out["gen"] = gen;
  out["temperature"] = temperature;
  for (int64_t batch : batches) {
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t i = 0; i < prompt_len; ++i) prompts[size_t(b)].push_back(int32_t(rng_u64(uint64_t(b), uint64_t(i)) % uint64_t(V - 10) + 10));
    auto run_once = [&](bool ad) {
      std::vector<GenerationRequest> reqs(static_cast<size_t>(batch));
      for (int64_t b = 0; b < batch; ++b) {
        auto& r = reqs[size_t(b)];
        r.prompt = prompts[size_t(b)];
        r.max_tokens = gen;
        r.ignore_eos = true;
        r.sampling.temperature = temperature;
        r.sampling.seed = uint64_t(b);
        if (ad) r.processor = factory->make(r.sampling);
      }
      GenerateOptions go;
      go.max_batch = batch;
      clk::time_point first;
      bool seen = false;
      int64_t after_first = 0;
      go.on_token = [&](size_t, const GeneratedToken&, const std::string&) {
        if (!seen) {
          seen = true;
          first = clk::now();
        } else {
          ++after_first;
        }
      };
      generate(teacher, reqs, go);
      return after_first / secs_since(first);
    };
    run_once(false);  // warm-up (pages of both models in memory)
    run_once(true);
    std::vector<double> plain, ad;
    for (int r = 0; r < rounds; ++r) {
      if (r % 2 == 0) {
        plain.push_back(run_once(false));
        ad.push_back(run_once(true));
      } else {
        ad.push_back(run_once(true));
        plain.push_back(run_once(false));
      }
    }
    const double best_plain = *std::max_element(plain.begin(), plain.end());
    const double best_ad = *std::max_element(ad.begin(), ad.end());
    // Component model: one teacher step and two proxy steps, each for the whole batch (the decoder runs
    // the proxies over all of a step's rows at once: BatchedWork in decode/logits_processor.h).
    const double teacher_ms = decode_step_ms(*teacher.model, batch, prompt_len + gen / 2);
    const double proxy_ms = decode_step_ms(*factory->proxy().plus, batch, prompt_len + gen / 2);
    const AntidistillStats st = antidistill_stats(factory->proxy());
    nlohmann::json j = {{"batch", batch},
                        {"plain_tok_s", best_plain},
                        {"antidistill_tok_s", best_ad},
                        {"ratio", best_ad / best_plain},
                        {"ms_per_token_plain", 1e3 / best_plain},
                        {"ms_per_token_antidistill", 1e3 / best_ad},
                        {"rounds_plain_tok_s", plain},
                        {"rounds_antidistill_tok_s", ad},
                        {"teacher_step_ms", teacher_ms},
                        {"proxy_step_ms", proxy_ms},
                        {"proxy_rows_per_forward_so_far", st.forwards ? double(st.rows) / double(st.forwards) : 0.0},
                        {"model_ratio", teacher_ms / (teacher_ms + 2 * proxy_ms)}};
    out["runs"].push_back(j);
    std::fprintf(stderr, "batch %lld: plain %.1f tok/s, antidistill %.1f tok/s (x%.2f)\n", (long long)batch, best_plain,
                 best_ad, best_ad / best_plain);
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

// bench/bench_train.cpp — distillation training speed and peak memory, printed as one JSON object.
//
//   build/bench_train [--mode step|trainer] [--threads N] [--batch 8] [--seq 256] [--steps 3] [--k 20]
//                     [--prompt 32] [--chunk-rows 256]
//
// Student of the quickstart shape (vocab 49152, hidden 256, 8 layers, 4 heads, 2 KV heads, FFN 768,
// tied embeddings; random init), sparse forward-KL on a synthetic teacher signal (top-k + tail per
// completion position; k = 20), batch × seq tokens per step, loss on the completion positions
// (seq − prompt per row).
//   step:    one hand-written step — forward_hidden, chunked_loss_backward (losses.h), global-norm
//            clipping, AdamW (adamw.h) — after one warm-up step; the retort counterpart of
//            bench/train_step_torch.py.
//   trainer: the real trainer (trainer.h) over a synthetic store, end to end (data, schedule, steps).
// Training tokens/s counts every input token (batch × seq per step), as the PyTorch anchor does.
// Peak RSS is the process's (getrusage), so run one mode per process (run_train_vs_torch.sh does).
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "retort/distill/adamw.h"
#include "retort/distill/losses.h"
#include "retort/distill/signal_store.h"
#include "retort/distill/trainer.h"
#include "retort/io/gguf.h"
#include "retort/model/llama.h"
#include "retort/model/loader.h"
#include "retort/text/tokenizer.h"

using namespace retort;
using clk = std::chrono::steady_clock;

namespace {

double secs_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }
double peak_rss_mib() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_maxrss / 1024.0;  // Linux: KiB
}

ModelHParams quickstart_student() {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = 49152, hp.n_embd = 256, hp.n_layer = 8, hp.n_head = 4, hp.n_head_kv = 2, hp.head_dim = 64, hp.n_ff = 768;
  hp.max_position = 8192;
  hp.rope_theta = 100000.0, hp.rms_eps = 1e-5;
  hp.tie_embeddings = true;
  return hp;
}

// A synthetic teacher signal for one row: k distinct ids with descending log-probs of a
// peaked distribution (mass 0.9 in the top k), the rest as tail.
void signal_row(std::mt19937_64& rng, int64_t V, int64_t k, std::vector<int32_t>& ids, std::vector<float>& lps,
                std::vector<float>& tail) {
  std::vector<double> w(k);
  double sum = 0;
  for (int64_t i = 0; i < k; ++i) sum += (w[i] = 1.0 / double(i + 1));
  std::vector<int32_t> picked;
  while (int64_t(picked.size()) < k) {
    int32_t id = int32_t(rng() % V);
    bool dup = false;
    for (int32_t p : picked) dup |= p == id;
    if (!dup) picked.push_back(id);
  }
  for (int64_t i = 0; i < k; ++i) {
    ids.push_back(picked[i]);
    lps.push_back(float(std::log(0.9 * w[i] / sum)));
  }
  tail.push_back(0.1f);
}

}  // namespace

int run(int argc, char** argv) {
  std::string mode = "step";
  int threads = 0;
  int64_t batch = 8, seq = 256, steps = 3, k = 20, prompt = 32, chunk_rows = 256;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i], v = argv[i + 1];
    if (key == "--mode") mode = v;
    else if (key == "--threads") threads = std::stoi(v);
    else if (key == "--batch") batch = std::stoll(v);
    else if (key == "--seq") seq = std::stoll(v);
    else if (key == "--steps") steps = std::stoll(v);
    else if (key == "--k") k = std::stoll(v);
    else if (key == "--prompt") prompt = std::stoll(v);
    else if (key == "--chunk-rows") chunk_rows = std::stoll(v);
    else { std::fprintf(stderr, "unknown option %s\n", key.c_str()); return 2; }
  }
  if (mode != "step" && mode != "trainer") { std::fprintf(stderr, "--mode step|trainer\n"); return 2; }
  if (threads <= 0) threads = static_cast<int>(std::thread::hardware_concurrency());
  torch::set_num_threads(threads);

  const ModelHParams hp = quickstart_student();
  const int64_t V = hp.n_vocab, comp = seq - prompt;
  nlohmann::json out = {{"runtime", "retort"}, {"mode", mode}, {"threads", threads}, {"batch", batch}, {"seq", seq},
                        {"k", k}, {"loss", "fkl (sparse top-k + tail)"}, {"dtype", "f32"},
                        {"student", {{"vocab", V}, {"hidden", hp.n_embd}, {"layers", hp.n_layer}, {"heads", hp.n_head},
                                     {"kv_heads", hp.n_head_kv}, {"ffn", hp.n_ff}}}};
  LlamaModel student(hp);
  student->init_weights(/*seed=*/1);
  int64_t n_params = 0;
  for (const auto& p : student->parameters()) n_params += p.numel();
  out["student_params_M"] = n_params / 1e6;
  LossConfig loss;  // fkl, τ = 1
  std::mt19937_64 rng(42);

  if (mode == "step") {
    std::vector<std::pair<std::string, torch::Tensor>> named;
    for (const auto& p : student->named_parameters()) named.emplace_back(p.key(), p.value());
    AdamW opt(named, AdamWConfig{});
    // Fixed synthetic batch: tokens [B, T]; scored rows are positions prompt−1 .. T−2 of each row.
    auto tokens = torch::randint(3, V, {batch, seq}, torch::kInt64);
    std::vector<int64_t> rows, targets;
    std::vector<int32_t> ids32;
    std::vector<float> lps, tail;
    for (int64_t b = 0; b < batch; ++b)
      for (int64_t j = 0; j < comp; ++j) {
        rows.push_back(b * seq + prompt - 1 + j);
        targets.push_back(tokens[b][prompt + j].item<int64_t>());
        signal_row(rng, V, k, ids32, lps, tail);
      }
    const int64_t N = int64_t(rows.size());
    TeacherSignal sig;
    sig.targets = torch::tensor(targets);
    sig.topk_ids = torch::tensor(std::vector<int64_t>(ids32.begin(), ids32.end())).view({N, k});
    sig.topk_logprobs = torch::tensor(lps).view({N, k});
    sig.tail_mass = torch::tensor(tail);
    auto row_index = torch::tensor(rows);
    double last_loss = 0;
    auto one_step = [&] {
      opt.zero_grad();
      auto hidden = student->forward_hidden(tokens).reshape({batch * seq, -1}).index_select(0, row_index);
      auto r = chunked_loss_backward(*student, hidden, sig, loss, 1.0 / N, chunk_rows);
      clip_grad_norm(opt.params(), 1.0);
      opt.step(1e-3);
      last_loss = r.loss_sum / r.rows;
    };
    auto t0 = clk::now();
    one_step();  // warm-up (allocator, thread pool)
    out["warmup_step_s"] = secs_since(t0);
    t0 = clk::now();
    for (int64_t s = 0; s < steps; ++s) one_step();
    double secs = secs_since(t0);
    out["steps_timed"] = steps;
    out["step_s"] = secs / steps;
    out["train_tok_s"] = steps * batch * seq / secs;
    out["scored_tok_s"] = steps * N / secs;
    out["last_loss"] = last_loss;
  } else {
    // A synthetic store of enough samples for `steps` batches, then the real trainer.
    namespace fs = std::filesystem;
    fs::path dir = fs::temp_directory_path() / ("retort_bench_train_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    GgufFile gguf = GgufFile::open(resolve_model_path("smollm2-135m-instruct"));
    Tokenizer tok = Tokenizer::from_gguf(gguf);
    StoreManifest man;
    man.teacher = {{"spec", "synthetic"}};
    man.tokenizer_hash = tok.hash();
    man.n_vocab = V;
    man.k = k;
    man.generation = {{"samples_per_prompt", 1}};
    man.prompts = {{"path", "synthetic"}, {"count", batch * steps}};
    {
      SignalStoreWriter w((dir / "store").string(), man);
      for (int64_t s = 0; s < batch * steps; ++s) {
        std::vector<int32_t> tokens;
        for (int64_t t = 0; t < seq; ++t) tokens.push_back(int32_t(3 + rng() % (V - 3)));
        std::vector<float> token_lp(comp, -2.0f), lps, tail;
        std::vector<int32_t> ids;
        for (int64_t j = 0; j < comp; ++j) signal_row(rng, V, k, ids, lps, tail);
        w.add(s, tokens, prompt, token_lp, ids, lps, tail);
      }
      w.finish();
    }
    SignalStore store = SignalStore::open((dir / "store").string());
    TrainerInputs in;
    in.student = student;
    in.tokenizer = &tok;
    in.data = &store;
    TrainerConfig cfg;
    cfg.loss = loss;
    cfg.steps = steps;
    cfg.batch = batch;
    cfg.max_seq = seq;
    cfg.chunk_rows = chunk_rows;
    cfg.progress = false;
    cfg.write_final = false;
    auto t0 = clk::now();
    TrainResult r = train(in, cfg, (dir / "run").string());
    double secs = secs_since(t0);
    out["steps_timed"] = r.steps;
    out["wall_s"] = secs;
    out["train_tok_s"] = r.tokens_per_s;  // the trainer's own count: all input tokens / its run time
    out["tokens"] = r.tokens;
    out["scored"] = r.scored;
    out["last_loss"] = r.last_loss;
    fs::remove_all(dir);
  }
  out["peak_rss_MiB"] = peak_rss_mib();
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_train: %s\n", e.what());
    return 1;
  }
}

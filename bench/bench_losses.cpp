// bench/bench_losses.cpp — speed and peak memory of the KD loss on the output head, printed as
// one JSON object.
//
//   build/bench_losses [--rows 1024] [--vocab 49152] [--embd 576] [--k 20] [--chunk 256] [--reps 2]
//
// The student's and the teacher's output heads have SmolLM2-135M's shapes (tied embeddings,
// hidden 576, vocab 49152); hidden states are random. Cases, each one forward + backward of
// scale·Σ loss into the head weights and the hidden states:
//   chunked_fkl_sparse   chunked_loss_backward, top-k + tail signal
//   chunked_fkl_dense    chunked_loss_backward, teacher logits made per chunk from its hidden states
//   unchunked_fkl_sparse [N, V] logits at once, sparse_loss_rows, autograd
//   naive_fkl_dense      [N, V] student and teacher logits, KL written with libtorch autograd ops
// rows/s is the best of --reps; peak_rss_mib is the growth of the process's peak resident set
// over the run (VmHWM after resetting it through /proc/self/clear_refs), so it is approximate:
// the allocator may reuse memory that an earlier case left mapped. Numbers are reported, not asserted.
#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "retort/distill/losses.h"
#include "retort/model/llama.h"

using namespace retort;
using clk = std::chrono::steady_clock;

namespace {

// Resident-set size and its high-water mark, in MiB, from /proc/self/status.
double proc_status_mib(const std::string& key) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind(key + ":", 0) == 0) return std::stod(line.substr(key.size() + 1)) / 1024.0;
  return -1;
}

// Resets VmHWM to the current RSS (Linux ≥ 4.0); false where not permitted.
bool reset_peak() {
  std::ofstream f("/proc/self/clear_refs");
  f << "5";
  return bool(f);
}

ModelHParams head_hparams(int64_t vocab, int64_t embd) {
  ModelHParams hp;
  hp.arch = "llama";
  hp.n_vocab = vocab;
  hp.n_embd = embd;
  hp.n_layer = 1;
  hp.n_head = 1;
  hp.n_head_kv = 1;
  hp.head_dim = embd;
  hp.n_ff = 8;
  hp.max_position = 64;
  hp.tie_embeddings = true;
  return hp;
}

}  // namespace

int main(int argc, char** argv) {
  int64_t rows = 1024, vocab = 49152, embd = 576, k = 20, chunk = 256;
  int reps = 2;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string key = argv[i], v = argv[i + 1];
    if (key == "--rows") rows = std::stoll(v);
    else if (key == "--vocab") vocab = std::stoll(v);
    else if (key == "--embd") embd = std::stoll(v);
    else if (key == "--k") k = std::stoll(v);
    else if (key == "--chunk") chunk = std::stoll(v);
    else if (key == "--reps") reps = std::stoi(v);
    else { std::fprintf(stderr, "unknown option %s\n", key.c_str()); return 2; }
  }
  torch::manual_seed(1);
  LlamaModel student(head_hparams(vocab, embd)), teacher(head_hparams(vocab, embd));
  student->init_weights(1, 0.05);
  teacher->init_weights(2, 0.05);
  for (auto& p : teacher->parameters()) p.set_requires_grad(false);

  auto hidden0 = torch::randn({rows, embd});
  auto t_hidden = torch::randn({rows, embd});
  TeacherSignal sparse, dense;
  {
    torch::NoGradGuard no_grad;
    auto t_lp = teacher->lm_logits(t_hidden).log_softmax(1);
    auto [lp, ids] = t_lp.topk(k, 1);
    sparse.topk_ids = ids;
    sparse.topk_logprobs = lp;
    sparse.tail_mass = (1 - lp.exp().sum(1)).clamp_min(0);
  }
  sparse.targets = dense.targets = sparse.topk_ids.select(1, 0).contiguous();
  dense.teacher_hidden = t_hidden;
  dense.teacher = teacher.get();
  LossConfig cfg;  // fkl, τ = 1
  const double scale = 1.0 / double(rows);

  nlohmann::json out;
  out["rows"] = rows;
  out["vocab"] = vocab;
  out["n_embd"] = embd;
  out["k"] = k;
  out["chunk_rows"] = chunk;
  out["threads"] = torch::get_num_threads();
  out["peak_rss_measured"] = reset_peak();

  auto run_case = [&](const std::string& name, auto&& step) {
    double best = 1e30, loss = 0, peak = 0;
    for (int r = 0; r < reps; ++r) {
      student->zero_grad();
      auto hidden = hidden0.clone().requires_grad_(true);  // a leaf standing in for the backbone
      reset_peak();
      const double rss0 = proc_status_mib("VmRSS");
      auto t0 = clk::now();
      loss = step(hidden);
      best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
      peak = std::max(peak, proc_status_mib("VmHWM") - rss0);
    }
    out[name] = {{"rows_per_s", double(rows) / best}, {"seconds", best}, {"loss_mean", loss / double(rows)},
                 {"peak_rss_mib", peak}};
  };

  run_case("chunked_fkl_sparse", [&](const torch::Tensor& h) {
    return chunked_loss_backward(*student, h, sparse, cfg, scale, chunk).loss_sum;
  });
  run_case("chunked_fkl_dense", [&](const torch::Tensor& h) {
    return chunked_loss_backward(*student, h, dense, cfg, scale, chunk).loss_sum;
  });
  run_case("unchunked_fkl_sparse", [&](const torch::Tensor& h) {
    auto rows_loss = sparse_loss_rows(student->lm_logits(h), sparse.topk_ids, sparse.topk_logprobs, sparse.tail_mass, cfg);
    (rows_loss.sum() * scale).backward();
    return rows_loss.sum().item<double>();
  });
  run_case("naive_fkl_dense", [&](const torch::Tensor& h) {
    torch::Tensor lp;
    {
      torch::NoGradGuard no_grad;
      lp = teacher->lm_logits(t_hidden).log_softmax(1);
    }
    auto lq = student->lm_logits(h).log_softmax(1);
    auto rows_loss = (lp.exp() * (lp - lq)).sum(1);
    (rows_loss.sum() * scale).backward();
    return rows_loss.sum().item<double>();
  });

  std::printf("%s\n", out.dump(2).c_str());
  return 0;
}

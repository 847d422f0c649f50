// bench/bench_kernels.cpp — the decode-step matrix products of SmolLM2-135M, kernel by kernel, as JSON.
//
//   build/bench_kernels [--threads N] [--rows 1,32] [--reps 20]
//
// For each weight shape of one decode step (q|k|v, o, gate|up, down; the 576 x 49152 output head) and each
// batch size M: retort's decode kernel (cpu::matmul_wt, bf16 and f32 weights) next to libtorch's
// torch::linear on the same bf16 / f32 weights (oneDNN / BLAS), best of --reps, in GFLOP/s, and the whole
// step's matrix time (30 layers + head). The anchor runs in the same process, interleaved.
#include <chrono>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "retort/model/cpu_kernels.h"

using clk = std::chrono::steady_clock;

namespace {

struct Shape {
  const char* name;
  int64_t K;
  std::vector<int64_t> rows;  // matrices fused side by side
  int per_step;               // how many times one decode step runs it
};

template <class F>
double best_seconds(int reps, F&& f) {
  f();  // warm
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    auto t0 = clk::now();
    f();
    best = std::min(best, std::chrono::duration<double>(clk::now() - t0).count());
  }
  return best;
}

}  // namespace

int main(int argc, char** argv) {
  int threads = 0, reps = 20;
  std::string rows_s = "1,32";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--threads") threads = std::stoi(v);
    else if (k == "--rows") rows_s = v;
    else if (k == "--reps") reps = std::stoi(v);
    else { std::fprintf(stderr, "unknown option %s\n", k.c_str()); return 2; }
  }
  if (threads <= 0) threads = int(std::thread::hardware_concurrency());
  torch::set_num_threads(threads);
  torch::NoGradGuard no_grad;
  std::vector<int64_t> ms;
  {
    std::stringstream ss(rows_s);
    std::string x;
    while (std::getline(ss, x, ',')) ms.push_back(std::stoll(x));
  }
  // SmolLM2-135M: E 576, 9 heads x 64 (q 576), 3 kv heads (k, v 192 each), FFN 1536, vocab 49152, 30 layers.
  const std::vector<Shape> shapes = {
      {"qkv", 576, {576, 192, 192}, 30}, {"o", 576, {576}, 30},       {"gate_up", 576, {1536, 1536}, 30},
      {"down", 1536, {576}, 30},         {"head", 576, {49152}, 1}};
  nlohmann::json out;
  out["threads"] = threads;
  out["avx512_bf16"] = retort::cpu::has_avx512_bf16();
  for (int64_t M : ms) {
    nlohmann::json row;
    double step_bf16 = 0, step_panels = 0, step_f32 = 0, step_torch_bf16 = 0, step_torch_f32 = 0;
    for (const auto& s : shapes) {
      int64_t N = 0;
      for (auto r : s.rows) N += r;
      auto x = torch::randn({M, s.K});
      auto w32 = torch::randn({N, s.K}) * 0.05;
      auto w16 = w32.to(torch::kBFloat16).contiguous();
      auto y = torch::empty({M, N});
      auto refs = [&](const torch::Tensor& w) {
        std::vector<retort::cpu::WeightRef> r;
        int64_t off = 0;
        for (auto n : s.rows) {
          const auto part = w.narrow(0, off, n);
          r.push_back({part.data_ptr(), n,
                       w.scalar_type() == torch::kBFloat16 ? retort::cpu::WeightFormat::kBF16 : retort::cpu::WeightFormat::kF32});
          off += n;
        }
        return r;
      };
      const auto r16 = refs(w16), r32 = refs(w32);
      // The same bf16 matrices packed into panels (what a batched decode step reads).
      std::vector<std::vector<uint16_t>> packed;
      auto rp = r16;
      for (auto& r : rp) {
        packed.emplace_back(size_t(retort::cpu::bf16_panels_size(r.rows, s.K)));
        retort::cpu::pack_bf16_panels(static_cast<const uint16_t*>(r.data), r.rows, s.K, packed.back().data());
        r.panels = packed.back().data();
      }
      const double flop = 2.0 * double(M) * double(N) * double(s.K);
      const auto x16 = x.to(torch::kBFloat16);
      double t16 = 1e30, t32 = 1e30, tt16 = 1e30, tt32 = 1e30, tp = 1e30;
      for (int round = 0; round < 3; ++round) {  // interleave retort and the anchor
        t16 = std::min(t16, best_seconds(reps, [&] {
                         retort::cpu::matmul_wt(x.data_ptr<float>(), M, s.K, r16.data(), int(r16.size()),
                                                y.data_ptr<float>(), N, false);
                       }));
        tp = std::min(tp, best_seconds(reps, [&] {
                        retort::cpu::matmul_wt(x.data_ptr<float>(), M, s.K, rp.data(), int(rp.size()),
                                               y.data_ptr<float>(), N, false);
                      }));
        tt16 = std::min(tt16, best_seconds(reps, [&] { (void)torch::linear(x16, w16); }));
        t32 = std::min(t32, best_seconds(reps, [&] {
                         retort::cpu::matmul_wt(x.data_ptr<float>(), M, s.K, r32.data(), int(r32.size()),
                                                y.data_ptr<float>(), N, false);
                       }));
        tt32 = std::min(tt32, best_seconds(reps, [&] { (void)torch::linear(x, w32); }));
      }
      row[s.name] = {{"N", N},
                     {"K", s.K},
                     {"retort_bf16_gflops", flop / t16 / 1e9},
                     {"retort_bf16_panels_gflops", flop / tp / 1e9},
                     {"torch_bf16_gflops", flop / tt16 / 1e9},
                     {"retort_f32_gflops", flop / t32 / 1e9},
                     {"torch_f32_gflops", flop / tt32 / 1e9},
                     {"retort_bf16_ms", t16 * 1e3}};
      step_bf16 += s.per_step * t16;
      step_panels += s.per_step * tp;
      step_f32 += s.per_step * t32;
      step_torch_bf16 += s.per_step * tt16;
      step_torch_f32 += s.per_step * tt32;
    }
    row["step_matmul_ms"] = {{"retort_bf16", step_bf16 * 1e3},
                             {"retort_bf16_panels", step_panels * 1e3},
                             {"retort_f32", step_f32 * 1e3},
                             {"torch_bf16", step_torch_bf16 * 1e3},
                             {"torch_f32", step_torch_f32 * 1e3}};
    out["M" + std::to_string(M)] = row;
  }
  std::printf("%s\n", out.dump(1).c_str());
  return 0;
}

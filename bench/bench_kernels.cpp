// bench/bench_kernels.cpp — the decode-step matrix products, kernel by kernel, as JSON.
//
//   build/bench_kernels [--threads N] [--rows 1,32] [--reps 20] [--sections dense,quant]
//                       [--models smollm2_135m,gemma3_270m]
//
// dense: for each weight shape of one SmolLM2-135M decode step (q|k|v, o, gate|up, down; the 576 x 49152
// output head) and each batch size M: retort's decode kernel (cpu::matmul_wt, bf16 and f32 weights) next to
// libtorch's torch::linear on the same bf16 / f32 weights (oneDNN / BLAS), best of --reps, in GFLOP/s, and
// the whole step's matrix time (30 layers + head). The anchor runs in the same process, interleaved.
// quant: the same for weights kept in their GGUF blocks, with the formats each GGUF stores them in
// (SmolLM2-135M Q4_1/Q8_0, Gemma 3 270M Q5_0/Q4_K/Q6_K/Q8_0; random blocks with finite scales: the speed
// does not depend on the values): retort in float32 math and with bf16_math, next to torch::linear on the
// dequantized matrix in f32 and bf16.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>

#include "retort/io/ggml_quants.h"
#include "retort/io/half.h"
#include "retort/model/cpu_kernels.h"

using clk = std::chrono::steady_clock;

namespace {

struct Shape {
  const char* name;
  int64_t K;
  std::vector<int64_t> rows;  // matrices fused side by side
  int per_step;               // how many times one decode step runs it
};

using retort::cpu::WeightFormat;

// A fused product of quantized matrices: (rows, format) side by side, all with K columns.
struct QuantShape {
  const char* name;
  int64_t K;
  std::vector<std::pair<int64_t, WeightFormat>> mats;
  int per_step;
};

struct QuantModel {
  const char* name;
  std::vector<QuantShape> shapes;
};

// Block geometry of each format, and where its fp16 scales sit in a block (set to finite values).
struct FormatInfo {
  WeightFormat format;
  retort::GgmlType type;
  int64_t block_elems, block_bytes;
  std::vector<int> fp16_at;
};

const FormatInfo& format_info(WeightFormat f) {
  static const std::vector<FormatInfo> infos = {
      {WeightFormat::kQ8_0, retort::GgmlType::Q8_0, 32, 34, {0}},
      {WeightFormat::kQ4_0, retort::GgmlType::Q4_0, 32, 18, {0}},
      {WeightFormat::kQ4_1, retort::GgmlType::Q4_1, 32, 20, {0, 2}},
      {WeightFormat::kQ5_0, retort::GgmlType::Q5_0, 32, 22, {0}},
      {WeightFormat::kQ5_1, retort::GgmlType::Q5_1, 32, 24, {0, 2}},
      {WeightFormat::kQ4_K, retort::GgmlType::Q4_K, 256, 144, {0, 2}},
      {WeightFormat::kQ5_K, retort::GgmlType::Q5_K, 256, 176, {0, 2}},
      {WeightFormat::kQ6_K, retort::GgmlType::Q6_K, 256, 210, {208}},
  };
  for (const auto& i : infos)
    if (i.format == f) return i;
  throw std::runtime_error("bench_kernels: no block layout for this format");
}

// rows x K random blocks of format f (random codes, fp16 scales 0.002..0.02 with random sign).
std::vector<uint8_t> random_blocks(WeightFormat f, int64_t rows, int64_t K, std::mt19937& rng) {
  const FormatInfo& fi = format_info(f);
  std::vector<uint8_t> b(size_t(rows * retort::cpu::weight_row_bytes(f, K)));
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f);
  for (auto& v : b) v = uint8_t(byte(rng));
  for (size_t o = 0; o < b.size(); o += size_t(fi.block_bytes))
    for (int at : fi.fp16_at) {
      const uint16_t h = retort::f32_to_fp16(byte(rng) < 128 ? scale(rng) : -scale(rng));
      std::memcpy(&b[o + size_t(at)], &h, 2);
    }
  return b;
}

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
  std::string rows_s = "1,32", sections = "dense,quant", model_names = "smollm2_135m,gemma3_270m";
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i], v = argv[i + 1];
    if (k == "--threads") threads = std::stoi(v);
    else if (k == "--rows") rows_s = v;
    else if (k == "--reps") reps = std::stoi(v);
    else if (k == "--sections") sections = v;
    else if (k == "--models") model_names = v;
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
    if (sections.find("dense") == std::string::npos) break;
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
  // SmolLM2-135M's GGUF: Q4_1 layers (30), Q8_0 output head (tied embedding).
  const std::vector<QuantModel> models = {
      {"smollm2_135m",
       {{"qkv", 576, {{576, WeightFormat::kQ4_1}, {192, WeightFormat::kQ4_1}, {192, WeightFormat::kQ4_1}}, 30},
        {"o", 576, {{576, WeightFormat::kQ4_1}}, 30},
        {"gate_up", 576, {{1536, WeightFormat::kQ4_1}, {1536, WeightFormat::kQ4_1}}, 30},
        {"down", 1536, {{576, WeightFormat::kQ4_1}}, 30},
        {"head", 576, {{49152, WeightFormat::kQ8_0}}, 1}}},
      // Gemma 3 270M's Q4_K_M GGUF (18 layers, E 640, 4 heads x 256 = q 1024, 1 kv head = k, v 256, FFN 2048,
      // vocab 262144): q, k, gate, up Q5_0; v Q8_0 in 9 layers and Q5_0 in 9; o Q4_K; down Q6_K in 9 layers
      // and Q4_K in 9; the output head is the tied Q8_0 embedding.
      {"gemma3_270m",
       {{"qkv_v8", 640, {{1024, WeightFormat::kQ5_0}, {256, WeightFormat::kQ5_0}, {256, WeightFormat::kQ8_0}}, 9},
        {"qkv_v5", 640, {{1024, WeightFormat::kQ5_0}, {256, WeightFormat::kQ5_0}, {256, WeightFormat::kQ5_0}}, 9},
        {"o", 1024, {{640, WeightFormat::kQ4_K}}, 18},
        {"gate_up", 640, {{2048, WeightFormat::kQ5_0}, {2048, WeightFormat::kQ5_0}}, 18},
        {"down_q6k", 2048, {{640, WeightFormat::kQ6_K}}, 9},
        {"down_q4k", 2048, {{640, WeightFormat::kQ4_K}}, 9},
        {"head", 640, {{262144, WeightFormat::kQ8_0}}, 1}}},
  };
  std::mt19937 rng(7);
  for (const auto& model : models) {
    if (sections.find("quant") == std::string::npos) break;
    if (model_names.find(model.name) == std::string::npos) continue;
    for (int64_t M : ms) {
      nlohmann::json row;
      double step_f32 = 0, step_bf16 = 0, step_torch_f32 = 0, step_torch_bf16 = 0;
      for (const auto& s : model.shapes) {
        int64_t N = 0;
        for (const auto& m : s.mats) N += m.first;
        std::vector<std::vector<uint8_t>> blocks;
        std::vector<retort::cpu::WeightRef> r32, r16;
        auto w32 = torch::empty({N, s.K});
        int64_t off = 0;
        for (const auto& [n, f] : s.mats) {
          blocks.push_back(random_blocks(f, n, s.K, rng));
          retort::dequantize(format_info(f).type, blocks.back().data(), w32.data_ptr<float>() + off * s.K, n * s.K);
          r32.push_back({blocks.back().data(), n, f, /*bf16_math=*/false});
          r16.push_back({blocks.back().data(), n, f, /*bf16_math=*/true});
          off += n;
        }
        const auto w16 = w32.to(torch::kBFloat16);
        auto x = torch::randn({M, s.K});
        const auto x16 = x.to(torch::kBFloat16);
        auto y = torch::empty({M, N});
        const double flop = 2.0 * double(M) * double(N) * double(s.K);
        double t32 = 1e30, t16 = 1e30, tt32 = 1e30, tt16 = 1e30;
        for (int round = 0; round < 3; ++round) {  // interleave retort and the anchor
          t32 = std::min(t32, best_seconds(reps, [&] {
                           retort::cpu::matmul_wt(x.data_ptr<float>(), M, s.K, r32.data(), int(r32.size()),
                                                  y.data_ptr<float>(), N, false);
                         }));
          tt32 = std::min(tt32, best_seconds(reps, [&] { (void)torch::linear(x, w32); }));
          t16 = std::min(t16, best_seconds(reps, [&] {
                           retort::cpu::matmul_wt(x.data_ptr<float>(), M, s.K, r16.data(), int(r16.size()),
                                                  y.data_ptr<float>(), N, false);
                         }));
          tt16 = std::min(tt16, best_seconds(reps, [&] { (void)torch::linear(x16, w16); }));
        }
        int64_t bytes = 0;
        std::string formats;
        for (size_t i = 0; i < s.mats.size(); ++i) {
          bytes += int64_t(blocks[i].size());
          formats += (i ? "|" : "") + retort::ggml_type_name(uint32_t(format_info(s.mats[i].second).type));
        }
        row[s.name] = {{"N", N},
                       {"K", s.K},
                       {"formats", formats},
                       {"retort_f32math_ms", t32 * 1e3},
                       {"retort_f32math_GBps", double(bytes) / t32 / 1e9},
                       {"retort_bf16math_ms", t16 * 1e3},
                       {"torch_f32_ms", tt32 * 1e3},
                       {"torch_bf16_ms", tt16 * 1e3},
                       {"retort_f32math_gflops", flop / t32 / 1e9}};
        step_f32 += s.per_step * t32;
        step_bf16 += s.per_step * t16;
        step_torch_f32 += s.per_step * tt32;
        step_torch_bf16 += s.per_step * tt16;
      }
      row["step_matmul_ms"] = {{"retort_f32math", step_f32 * 1e3},
                               {"retort_bf16math", step_bf16 * 1e3},
                               {"torch_f32", step_torch_f32 * 1e3},
                               {"torch_bf16", step_torch_bf16 * 1e3}};
      out["quant"][model.name]["M" + std::to_string(M)] = row;
    }
  }
  std::printf("%s\n", out.dump(1).c_str());
  return 0;
}

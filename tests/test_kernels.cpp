// Tests of the CPU decode kernels (src/retort/model/cpu_kernels.h) against float64 recomputation,
// on the detected vector path (AVX512 / AVX512-BF16 where the CPU has them) and the scalar fallback.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <random>
#include <vector>

#include "retort/io/ggml_quants.h"
#include "retort/io/half.h"
#include "retort/io/safetensors.h"
#include "retort/model/cpu_kernels.h"
#include "retort/model/kv_cache.h"
#include "retort/model/loader.h"
#include "retort/util/error.h"

using namespace retort;

namespace {

std::vector<float> randn(size_t n, uint32_t seed, float scale = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = cpu::f32_to_bf16(v[i]);
  return o;
}

struct ScalarMode {
  explicit ScalarMode(bool on) { cpu::set_force_scalar(on); }
  ~ScalarMode() { cpu::set_force_scalar(false); }
};

}  // namespace

TEST(Kernels, Bf16RoundTrip) {
  EXPECT_EQ(cpu::f32_to_bf16(1.0f), 0x3f80);
  EXPECT_EQ(cpu::bf16_to_f32(0x3f80), 1.0f);
  // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties to even (1.0).
  EXPECT_EQ(cpu::f32_to_bf16(1.00390625f), 0x3f80);
  EXPECT_EQ(cpu::f32_to_bf16(1.01171875f), 0x3f82);  // 1 + 3*2^-8 -> 1 + 2^-6 (even)
  EXPECT_TRUE(std::isnan(cpu::bf16_to_f32(cpu::f32_to_bf16(NAN))));
}

class MatmulWt : public ::testing::TestWithParam<bool> {};  // param: force scalar

TEST_P(MatmulWt, MatchesFloat64) {
  ScalarMode mode(GetParam());
  // K values exercise full 32/16-wide steps and masked tails; M covers the 4-row tiles and remainders.
  for (int64_t K : {576, 70, 5}) {
    for (int64_t M : {1, 3, 4, 9, 32}) {
      // variant 0: float32 weights; 1: bf16; 2: bf16 with packed panels (even K only).
      for (int variant : {0, 1, 2}) {
        const bool bf16 = variant > 0;
        if (variant == 2 && K % 2 != 0) {
          std::vector<uint16_t> w(static_cast<size_t>(K)), out(static_cast<size_t>(cpu::bf16_panels_size(1, K)));
          EXPECT_THROW(cpu::pack_bf16_panels(w.data(), 1, K, out.data()), Error);
          continue;
        }
        // Matrices side by side with odd sizes: 37 and 8 rows fill part of a 48-column panel, 64 one and a third.
        const std::vector<int64_t> rows = {37, 8, 64};
        int64_t N = 0;
        for (auto r : rows) N += r;
        auto x = randn(size_t(M * K), 1);
        std::vector<std::vector<float>> wf;
        std::vector<std::vector<uint16_t>> wb, panels;
        std::vector<cpu::WeightRef> refs;
        for (size_t i = 0; i < rows.size(); ++i) {
          wf.push_back(randn(size_t(rows[i] * K), 10 + uint32_t(i), 0.1f));
          wb.push_back(to_bf16(wf.back()));
        }
        // When the panels will be read, the dense operand is zeros: a result equal to the product of the
        // real weights shows that the panels (and only they) were used.
        const bool panels_read = variant == 2 && M >= cpu::kPanelMinRows && cpu::has_avx512_bf16();
        const std::vector<uint16_t> zeros(size_t(64 * K), 0);
        for (size_t i = 0; i < rows.size(); ++i) {
          if (variant == 2) {
            panels.emplace_back(size_t(cpu::bf16_panels_size(rows[i], K)));
            cpu::pack_bf16_panels(wb[i].data(), rows[i], K, panels.back().data());
          }
          refs.push_back(bf16 ? cpu::WeightRef{panels_read ? zeros.data() : wb[i].data(), rows[i],
                                               cpu::WeightFormat::kBF16}
                              : cpu::WeightRef{wf[i].data(), rows[i], cpu::WeightFormat::kF32});
          if (variant == 2) refs.back().panels = panels.back().data();
        }
        const int64_t ldy = N + 3;
        std::vector<float> y(size_t(M * ldy), 0.5f);
        cpu::matmul_wt(x.data(), M, K, refs.data(), int(refs.size()), y.data(), ldy, /*accumulate=*/true);
        // Reference in float64 with the weights as stored; with bf16 weights on the AVX512-BF16 path
        // x is rounded to bf16 too: relative error per product <= 2^-8, so bound by 2^-8 * sum |x w|.
        const bool x_rounded = bf16 && cpu::has_avx512_bf16();
        double worst = 0;
        for (int64_t m = 0; m < M; ++m) {
          int64_t col = 0;
          for (size_t i = 0; i < rows.size(); ++i) {
            for (int64_t r = 0; r < rows[i]; ++r) {
              double ref = 0.5, mag = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double w = bf16 ? cpu::bf16_to_f32(wb[i][size_t(r * K + k)]) : wf[i][size_t(r * K + k)];
                ref += double(x[size_t(m * K + k)]) * w;
                mag += std::abs(double(x[size_t(m * K + k)]) * w);
              }
              const double tol = (x_rounded ? 4e-3 : 1e-5) * mag + 1e-6;
              const double err = std::abs(double(y[size_t(m * ldy + col + r)]) - ref);
              worst = std::max(worst, err / tol);
              ASSERT_LE(err, tol) << "K=" << K << " M=" << M << " variant=" << variant << " m=" << m
                                  << " col=" << col + r;
            }
            col += rows[i];
          }
          EXPECT_EQ(y[size_t(m * ldy + N)], 0.5f) << "wrote past the output columns";
        }
      }
    }
  }
}

namespace {

// Quantized formats under test: where each block keeps its fp16 scales (every other byte is a code or a
// packed 6-/8-bit scale, valid at any value), and K values of one, two and several (super-)blocks.
struct QuantFormat {
  cpu::WeightFormat format;
  GgmlType type;
  std::vector<int> fp16_at;  // byte offsets of d and m / dmin in a block
  std::vector<int64_t> Ks;
};

const std::vector<QuantFormat>& quant_formats() {
  using F = cpu::WeightFormat;
  static const std::vector<QuantFormat> v = {
      {F::kQ8_0, GgmlType::Q8_0, {0}, {32, 64, 640}},        {F::kQ4_0, GgmlType::Q4_0, {0}, {32, 64, 640}},
      {F::kQ4_1, GgmlType::Q4_1, {0, 2}, {32, 64, 640}},     {F::kQ5_0, GgmlType::Q5_0, {0}, {32, 64, 640}},
      {F::kQ5_1, GgmlType::Q5_1, {0, 2}, {32, 64, 640}},     {F::kQ4_K, GgmlType::Q4_K, {0, 2}, {256, 512, 1024}},
      {F::kQ5_K, GgmlType::Q5_K, {0, 2}, {256, 512, 1024}},  {F::kQ6_K, GgmlType::Q6_K, {208}, {256, 512, 1024}},
  };
  return v;
}

// rows x K valid blocks: random bytes, then finite fp16 scales of either sign at the scale offsets, 0.002
// to 0.02 in magnitude, one in 16 an fp16 subnormal (the widening must handle those exactly too).
std::vector<uint8_t> random_blocks(const QuantFormat& qf, int64_t rows, int64_t K, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255), sub(1, 0x3ff);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f);
  std::vector<uint8_t> b(size_t(rows * cpu::weight_row_bytes(qf.format, K)));
  for (auto& v : b) v = uint8_t(byte(rng));
  const int64_t bb = cpu::weight_row_bytes(qf.format, cpu::weight_block_elems(qf.format));
  for (size_t o = 0; o < b.size(); o += size_t(bb))
    for (int at : qf.fp16_at) {
      const bool neg = byte(rng) < 128;
      uint16_t h = byte(rng) < 16 ? uint16_t(sub(rng)) : f32_to_fp16(scale(rng));
      if (neg) h |= 0x8000;
      std::memcpy(&b[o + size_t(at)], &h, 2);
    }
  return b;
}

std::vector<float> dequantized(const QuantFormat& qf, const std::vector<uint8_t>& blocks, int64_t rows, int64_t K) {
  std::vector<float> d(size_t(rows * K));
  dequantize(qf.type, blocks.data(), d.data(), rows * K);
  return d;
}

const char* name(cpu::WeightFormat f) { return cpu::weight_format_name(f); }

}  // namespace

// Weights in ggml blocks (every format; random scales, offsets and codes) against the float64 product of
// the dequantized matrix (retort::dequantize, itself checked against the gguf package in test_gguf): the
// few-rows path (M < 4) and the shared-tile path, in float32 and with bf16 math, for M = 1..33. The
// format sits side by side with a Q8_0 matrix in one call (fused q|k|v with mixed formats).
TEST_P(MatmulWt, QuantizedMatchesFloat64OfDequantized) {
  ScalarMode mode(GetParam());
  std::mt19937 rng(42);
  const QuantFormat& q8 = quant_formats()[0];
  const std::vector<int64_t> rows = {37, 8, 64};
  const int64_t N = 37 + 8 + 64, kMaxM = 33, ldy = N + 1;
  for (const QuantFormat& qf : quant_formats()) {
    for (int64_t K : qf.Ks) {
      const std::vector<const QuantFormat*> fmts = {&qf, &q8, &qf};
      std::vector<std::vector<uint8_t>> blocks;
      std::vector<std::vector<float>> dense;
      for (size_t i = 0; i < rows.size(); ++i) {
        blocks.push_back(random_blocks(*fmts[i], rows[i], K, rng));
        dense.push_back(dequantized(*fmts[i], blocks.back(), rows[i], K));
      }
      // float64 products (and sums of |products|, for the bound) of all kMaxM rows of x.
      const auto x = randn(size_t(kMaxM * K), 2);
      std::vector<double> ref(size_t(kMaxM * N)), mag(size_t(kMaxM * N));
      for (int64_t m = 0; m < kMaxM; ++m) {
        int64_t col = 0;
        for (size_t i = 0; i < rows.size(); ++i)
          for (int64_t r = 0; r < rows[i]; ++r, ++col)
            for (int64_t k = 0; k < K; ++k) {
              const double p = double(x[size_t(m * K + k)]) * dense[i][size_t(r * K + k)];
              ref[size_t(m * N + col)] += p;
              mag[size_t(m * N + col)] += std::abs(p);
            }
      }
      for (int64_t M = 1; M <= kMaxM; ++M) {
        for (bool bf16_math : {false, true}) {
          std::vector<cpu::WeightRef> refs;
          for (size_t i = 0; i < rows.size(); ++i) refs.push_back({blocks[i].data(), rows[i], fmts[i]->format, bf16_math});
          std::vector<float> y(size_t(M * ldy), 0.25f);
          const bool acc = M % 2 == 1;
          cpu::matmul_wt(x.data(), M, K, refs.data(), int(refs.size()), y.data(), ldy, acc);
          // bf16 math rounds x and the dequantized weights to bf16: relative error per product <= 2 * 2^-8.
          const bool rounded = bf16_math && M >= 4 && cpu::has_avx512_bf16();
          for (int64_t m = 0; m < M; ++m) {
            for (int64_t c = 0; c < N; ++c) {
              const double tol = (rounded ? 8e-3 : 1e-5) * mag[size_t(m * N + c)] + 1e-6;
              ASSERT_NEAR(y[size_t(m * ldy + c)], (acc ? 0.25 : 0.0) + ref[size_t(m * N + c)], tol)
                  << name(qf.format) << " K=" << K << " M=" << M << " bf16_math=" << bf16_math << " m=" << m
                  << " column " << c;
            }
            ASSERT_EQ(y[size_t(m * ldy + N)], 0.25f) << "wrote past the output columns";
          }
        }
      }
    }
  }
}

// The weights the kernels dequantize are retort::dequantize's, bit for bit: x = unit vectors e_k makes
// y[., c] = W[c, k] exactly (one product by 1, every other term a zero). Checked on each path that
// dequantizes: the few-rows dot products (M = 1, 2, 3), the float32 tiles (M = K) and the bf16 tiles
// (bf16 math: y = W rounded to bf16). A swapped nibble, bit or scale fails here even where the float64
// test's tolerance would not notice.
TEST_P(MatmulWt, DequantizedWeightsBitExact) {
  ScalarMode mode(GetParam());
  std::mt19937 rng(7);
  const int64_t R = 9;  // two 4-row tiles and a single row
  for (const QuantFormat& qf : quant_formats()) {
    for (int64_t K : {qf.Ks.front(), qf.Ks.back()}) {
      const auto blocks = random_blocks(qf, R, K, rng);
      const auto W = dequantized(qf, blocks, R, K);
      for (int64_t M : {int64_t(1), int64_t(2), int64_t(3), K}) {
        for (bool bf16_math : {false, true}) {
          if (bf16_math && M < K) continue;  // M < 4 runs in float32 whatever bf16_math says
          const bool rounded = bf16_math && cpu::has_avx512_bf16();
          const cpu::WeightRef w{blocks.data(), R, qf.format, bf16_math};
          int64_t bad = 0;
          for (int64_t k0 = 0; k0 < K; k0 += M) {
            // row i of x is e_{(k0 + i) mod K}
            std::vector<float> x(size_t(M * K), 0.0f), y(size_t(M * R));
            for (int64_t i = 0; i < M; ++i) x[size_t(i * K + (k0 + i) % K)] = 1.0f;
            cpu::matmul_wt(x.data(), M, K, &w, 1, y.data(), R, false);
            for (int64_t i = 0; i < M; ++i)
              for (int64_t c = 0; c < R; ++c) {
                const int64_t k = (k0 + i) % K;
                float want = W[size_t(c * K + k)];
                if (rounded) want = cpu::bf16_to_f32(cpu::f32_to_bf16(want));
                if (y[size_t(i * R + c)] != want && bad++ < 3)
                  ADD_FAILURE() << name(qf.format) << " K=" << K << " M=" << M << " bf16_math=" << bf16_math
                                << ": W[" << c << ", " << k << "] read as " << y[size_t(i * R + c)] << ", dequantize gives "
                                << want;
              }
          }
          EXPECT_EQ(bad, 0) << name(qf.format) << " K=" << K << " M=" << M << " bf16_math=" << bf16_math;
        }
      }
    }
  }
}

// Batch invariance (cpu_kernels.h): on the float32 paths a row's outputs are bit-identical whatever the
// batch size and whatever the other rows hold: row r computed in a batch of M equals row r computed alone
// (M = 1: the few-rows path; M >= 4: tiles of up to 4 x 4 with remainders). F32 weights (K = 70: masked
// tails), BF16 weights without panels, and every block format with bf16_math off; accumulating into y.
// The long rows (F32 K = 1536, BF16 K = 3072) make x pass in chunks of 16 rows (x_rows_per_pass), so
// batches of 17 and 33 rows cross a chunk boundary.
TEST_P(MatmulWt, BatchInvariant) {
  ScalarMode mode(GetParam());
  std::mt19937 rng(11);
  struct Case {
    cpu::WeightFormat format;
    int64_t K;
    const QuantFormat* qf;  // null for F32 / BF16
  };
  std::vector<Case> cases = {{cpu::WeightFormat::kF32, 70, nullptr},
                             {cpu::WeightFormat::kF32, 576, nullptr},
                             {cpu::WeightFormat::kBF16, 70, nullptr},
                             {cpu::WeightFormat::kF32, 1536, nullptr},
                             {cpu::WeightFormat::kBF16, 576, nullptr},
                             {cpu::WeightFormat::kBF16, 3072, nullptr}};
  for (const QuantFormat& qf : quant_formats()) {
    cases.push_back({qf.format, qf.Ks.front(), &qf});
    cases.push_back({qf.format, qf.Ks.back(), &qf});
  }
  const std::vector<int64_t> rows = {37, 8, 64};
  const int64_t N = 37 + 8 + 64, kMaxM = 33;
  for (const Case& cs : cases) {
    const int64_t K = cs.K;
    std::vector<std::vector<uint8_t>> data;  // the three matrices' bytes
    std::vector<cpu::WeightRef> refs;
    for (size_t i = 0; i < rows.size(); ++i) {
      if (cs.qf != nullptr) {
        data.push_back(random_blocks(*cs.qf, rows[i], K, rng));
      } else {
        const auto w = randn(size_t(rows[i] * K), uint32_t(20 + i), 0.1f);
        if (cs.format == cpu::WeightFormat::kF32) {
          data.emplace_back(w.size() * 4);
          std::memcpy(data.back().data(), w.data(), w.size() * 4);
        } else {
          const auto wb = to_bf16(w);
          data.emplace_back(wb.size() * 2);
          std::memcpy(data.back().data(), wb.data(), wb.size() * 2);
        }
      }
    }
    for (size_t i = 0; i < rows.size(); ++i) refs.push_back({data[i].data(), rows[i], cs.format, /*bf16_math=*/false});
    const auto x = randn(size_t(kMaxM * K), 3);
    const auto y0 = randn(size_t(kMaxM * N), 4);  // accumulated into
    // Each row alone.
    std::vector<float> alone(size_t(kMaxM * N));
    for (int64_t r = 0; r < kMaxM; ++r) {
      std::memcpy(&alone[size_t(r * N)], &y0[size_t(r * N)], size_t(N) * 4);
      cpu::matmul_wt(&x[size_t(r * K)], 1, K, refs.data(), int(refs.size()), &alone[size_t(r * N)], N, true);
    }
    for (int64_t M : {1, 2, 3, 4, 5, 8, 17, 33}) {
      std::vector<float> y(y0.begin(), y0.begin() + M * N);
      cpu::matmul_wt(x.data(), M, K, refs.data(), int(refs.size()), y.data(), N, true);
      for (int64_t r = 0; r < M; ++r)
        for (int64_t c = 0; c < N; ++c)
          ASSERT_EQ(std::memcmp(&y[size_t(r * N + c)], &alone[size_t(r * N + c)], 4), 0)
              << name(cs.format) << " K=" << K << ": row " << r << " column " << c << " is "
              << y[size_t(r * N + c)] << " in a batch of " << M << " and " << alone[size_t(r * N + c)] << " alone";
    }
  }
}

TEST(Kernels, QuantizedWeightNeedsWholeBlocks) {
  std::vector<uint8_t> b(4096);
  std::vector<float> x(2 * 640), y(2);
  const cpu::WeightRef q8{b.data(), 2, cpu::WeightFormat::kQ8_0};
  EXPECT_THROW(cpu::matmul_wt(x.data(), 1, 48, &q8, 1, y.data(), 2, false), Error);
  // Gemma 3's K = 640 is whole Q5_0 blocks but not whole K-quant super-blocks.
  EXPECT_EQ(cpu::weight_row_bytes(cpu::WeightFormat::kQ5_0, 640), 20 * 22);
  EXPECT_EQ(cpu::weight_row_bytes(cpu::WeightFormat::kQ4_K, 512), 2 * 144);
  EXPECT_EQ(cpu::weight_row_bytes(cpu::WeightFormat::kQ6_K, 256), 210);
  EXPECT_THROW(cpu::weight_row_bytes(cpu::WeightFormat::kQ4_K, 640), Error);
  EXPECT_THROW(cpu::weight_row_bytes(cpu::WeightFormat::kQ5_1, 48), Error);
  const cpu::WeightRef q4k{b.data(), 2, cpu::WeightFormat::kQ4_K};
  EXPECT_THROW(cpu::matmul_wt(x.data(), 1, 640, &q4k, 1, y.data(), 2, false), Error);
  try {
    cpu::matmul_wt(x.data(), 1, 640, &q4k, 1, y.data(), 2, false);
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("multiple of 256"), std::string::npos) << e.what();
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, MatmulWt, ::testing::Values(false, true));

class AttentionRows : public ::testing::TestWithParam<bool> {};

// rope_rows then attention_rows against a float64 recomputation: rows in different slots and two rows of
// one slot (a prompt's consecutive tokens: the later one sees the earlier one's key), a query scale that
// is not 1/sqrt(D), and a sliding window.
TEST_P(AttentionRows, MatchesFloat64) {
  ScalarMode mode(GetParam());
  // (H, Hkv): G = 3 (SmolLM2), 1 (multi-head), 9 (beyond the unrolled group sizes), 4 and 2 (with D 64 and
  // 128: the row-at-a-time value kernels), 4 with D 256 (Gemma 3 270M).
  struct Case { int64_t H, Hkv, D; };
  for (auto [H, Hkv, D] : {Case{6, 2, 64}, {6, 2, 128}, {6, 2, 6}, {2, 2, 64}, {9, 1, 64}, {8, 2, 64}, {4, 2, 128},
                           {4, 1, 256}, {9, 1, 6}})
  for (int64_t window : {0, 5})
  for (bool bf16 : {false, true}) {
    const int64_t n = 4, G = H / Hkv, max_len = 40, n_slots = 4;
    const std::vector<int64_t> slot = {2, 0, 3, 3}, pos = {0, 7, 34, 35};  // 1, 8, 35, 36 keys: 16-key blocks + tails
    const float scale = 0.3f / std::sqrt(float(D));
    const int64_t nq = (H + 2 * Hkv) * D;
    auto qkv = randn(size_t(n * nq), 3);
    const auto qkv0 = qkv;
    auto cs = randn(size_t(n * D / 2), 4), sn = randn(size_t(n * D / 2), 5);
    auto kf = randn(size_t(n_slots * Hkv * max_len * D), 6), vf = randn(size_t(n_slots * Hkv * max_len * D), 7);
    auto kb = to_bf16(kf), vb = to_bf16(vf);
    std::vector<float> out(size_t(n * H * D));
    cpu::rope_rows(qkv.data(), n, H, Hkv, D, cs.data(), sn.data());
    const cpu::AttentionShape shape{H, Hkv, D, scale, window};
    cpu::attention_rows(qkv.data(), n, shape, bf16 ? (void*)kb.data() : kf.data(), bf16 ? (void*)vb.data() : vf.data(),
                        bf16, max_len, slot.data(), pos.data(), out.data());
    auto kget = [&](int64_t s, int64_t h, int64_t j, int64_t d) -> double {
      size_t i = size_t(((s * Hkv + h) * max_len + j) * D + d);
      return bf16 ? cpu::bf16_to_f32(kb[i]) : kf[i];
    };
    auto vget = [&](int64_t s, int64_t h, int64_t j, int64_t d) -> double {
      size_t i = size_t(((s * Hkv + h) * max_len + j) * D + d);
      return bf16 ? cpu::bf16_to_f32(vb[i]) : vf[i];
    };
    auto rope = [&](const float* xin, int64_t b, std::vector<double>& xo) {
      const int64_t half = D / 2;
      xo.resize(size_t(D));
      for (int64_t i = 0; i < half; ++i) {
        const double c = cs[size_t(b * half + i)], s = sn[size_t(b * half + i)];
        xo[size_t(i)] = xin[i] * c - double(xin[i + half]) * s;
        xo[size_t(i + half)] = xin[i + half] * c + double(xin[i]) * s;
      }
    };
    const double btol = bf16 ? 1e-2 : 1e-5;
    const bool q_rounded = bf16 && cpu::has_avx512_bf16() && D % 32 == 0;
    for (int64_t b = 0; b < n; ++b) {
      const int64_t first = window > 0 ? std::max<int64_t>(0, pos[b] - window + 1) : 0;
      for (int64_t kh = 0; kh < Hkv; ++kh) {
        // The new key (rotated) and value were written at pos[b].
        std::vector<double> kn;
        rope(&qkv0[size_t(b * nq + (H + kh) * D)], b, kn);
        for (int64_t d = 0; d < D; ++d) {
          EXPECT_NEAR(kget(slot[b], kh, pos[b], d), kn[size_t(d)], btol * (1 + std::abs(kn[size_t(d)])));
          EXPECT_NEAR(vget(slot[b], kh, pos[b], d), qkv0[size_t(b * nq + (H + Hkv + kh) * D + d)],
                      btol * (1 + std::abs(qkv0[size_t(b * nq + (H + Hkv + kh) * D + d)])));
        }
        for (int64_t g = 0; g < G; ++g) {
          const int64_t h = kh * G + g;
          // rope_rows rotated q in float32 (within float rounding of the float64 rotation); the attention
          // reference starts from those float32 values, so that rounding them to bf16 below (a bf16 cache on
          // AVX512-BF16 scores with q rounded, as bf16 attention does) rounds exactly what the kernel rounds.
          std::vector<double> q_exact, q(static_cast<size_t>(D));
          rope(&qkv0[size_t(b * nq + h * D)], b, q_exact);
          for (int64_t d = 0; d < D; ++d) {
            const float qf = qkv[size_t(b * nq + h * D + d)];
            EXPECT_NEAR(qf, q_exact[size_t(d)], 1e-5 * (1 + std::abs(q_exact[size_t(d)])));
            q[size_t(d)] = q_rounded ? cpu::bf16_to_f32(cpu::f32_to_bf16(qf)) : double(qf);
          }
          std::vector<double> sc;
          double mx = -INFINITY;
          for (int64_t j = first; j <= pos[b]; ++j) {
            double s = 0;
            for (int64_t d = 0; d < D; ++d) s += q[size_t(d)] * kget(slot[b], kh, j, d);
            sc.push_back(s * scale);
            mx = std::max(mx, sc.back());
          }
          double sum = 0;
          for (auto& s : sc) sum += (s = std::exp(s - mx));
          for (int64_t d = 0; d < D; ++d) {
            double o = 0;
            for (int64_t j = first; j <= pos[b]; ++j) o += sc[size_t(j - first)] / sum * vget(slot[b], kh, j, d);
            EXPECT_NEAR(out[size_t(b * H * D + h * D + d)], o, q_rounded ? 3e-4 : 1e-4)
                << "D=" << D << " G=" << G << " window=" << window << " bf16=" << bf16 << " row=" << b << " h=" << h;
          }
        }
      }
    }
  }
}

// A row's attention output does not depend on the other rows of the call (bit-exact).
TEST(Kernels, AttentionRowsAreBatchInvariant) {
  const int64_t H = 6, Hkv = 2, D = 64, max_len = 48, nq = (H + 2 * Hkv) * D;
  const std::vector<int64_t> slot = {1, 0, 0, 2}, pos = {20, 30, 31, 5};
  auto qkv = randn(size_t(4 * nq), 13);
  auto cs = randn(size_t(4 * D / 2), 14), sn = randn(size_t(4 * D / 2), 15);
  cpu::rope_rows(qkv.data(), 4, H, Hkv, D, cs.data(), sn.data());
  const cpu::AttentionShape shape{H, Hkv, D, 0.125f, 0};
  for (bool bf16 : {false, true}) {
    auto kf = randn(size_t(3 * Hkv * max_len * D), 16), vf = randn(size_t(3 * Hkv * max_len * D), 17);
    auto kb = to_bf16(kf), vb = to_bf16(vf);
    auto kf2 = kf, vf2 = vf;
    auto kb2 = kb, vb2 = vb;
    std::vector<float> all(size_t(4 * H * D)), alone(size_t(H * D));
    cpu::attention_rows(qkv.data(), 4, shape, bf16 ? (void*)kb.data() : kf.data(), bf16 ? (void*)vb.data() : vf.data(),
                        bf16, max_len, slot.data(), pos.data(), all.data());
    // Row 2 again, alone, on a cache that already holds row 1's key (as the batch left it at pos 30).
    cpu::attention_rows(qkv.data() + nq, 1, shape, bf16 ? (void*)kb2.data() : kf2.data(),
                        bf16 ? (void*)vb2.data() : vf2.data(), bf16, max_len, slot.data() + 1, pos.data() + 1,
                        alone.data());
    cpu::attention_rows(qkv.data() + 2 * nq, 1, shape, bf16 ? (void*)kb2.data() : kf2.data(),
                        bf16 ? (void*)vb2.data() : vf2.data(), bf16, max_len, slot.data() + 2, pos.data() + 2,
                        alone.data());
    EXPECT_EQ(0, std::memcmp(alone.data(), all.data() + 2 * H * D, size_t(H * D) * 4)) << "bf16=" << bf16;
  }
}

INSTANTIATE_TEST_SUITE_P(Kernels, AttentionRows, ::testing::Values(false, true));

class Elementwise : public ::testing::TestWithParam<bool> {};  // param: force scalar

TEST_P(Elementwise, RmsNormAndSiluMul) {
  ScalarMode mode(GetParam());
  const int64_t M = 2, n = 7;
  auto x = randn(size_t(M * n), 8), w = randn(size_t(n), 9);
  std::vector<float> y(size_t(M * n));
  cpu::rms_norm(x.data(), w.data(), M, n, 1e-5, y.data());
  for (int64_t m = 0; m < M; ++m) {
    double ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += double(x[size_t(m * n + i)]) * x[size_t(m * n + i)];
    const double r = 1 / std::sqrt(ss / n + 1e-5);
    for (int64_t i = 0; i < n; ++i) EXPECT_NEAR(y[size_t(m * n + i)], x[size_t(m * n + i)] * r * w[size_t(i)], 1e-5);
  }
  // silu(g) * u against float64, relative: F = 37 covers whole 16-wide vectors and a masked tail;
  // large |g| checks the exp clamps (silu(-100) underflows toward -0, silu(100) = 100).
  const int64_t F = 37;
  auto gu = randn(size_t(M * 2 * F), 10, 4.0f);
  const float extremes[] = {-100.0f, -87.0f, -20.0f, -1e-3f, 0.0f, 1e-3f, 20.0f, 88.0f, 100.0f};
  for (size_t i = 0; i < std::size(extremes); ++i) gu[i * 3] = extremes[i];
  std::vector<float> o(size_t(M * F));
  cpu::silu_mul(gu.data(), M, F, o.data());
  for (int64_t m = 0; m < M; ++m)
    for (int64_t i = 0; i < F; ++i) {
      const double g = gu[size_t(m * 2 * F + i)], u = gu[size_t(m * 2 * F + F + i)];
      const double ref = g / (1 + std::exp(-g)) * u;
      EXPECT_NEAR(o[size_t(m * F + i)], ref, 2e-6 * std::abs(ref) + 1e-30) << "g = " << g;
    }
}

INSTANTIATE_TEST_SUITE_P(Kernels, Elementwise, ::testing::Values(false, true));

// A bf16 model + bf16 KV cache through the decode kernels, token by token, against transformers'
// float32 log-probabilities (tests/data/model/smollm2_golden.safetensors, made by
// tests/data/model/make_golden.py), for each weight path: the GGUF's Q4_1/Q8_0 blocks (batch 1:
// float32 dot products of the exact weights; batch 4: dequantized tiles in bf16) and the dense bf16
// parameters. Stated tolerance: top-20 logprobs within 0.4 nats (measured 0.12-0.14 with blocks at batch 1,
// 0.21-0.33 on the bf16 paths: the worst case moves by ~0.1 with the last-bit order of the float32 sums,
// e.g. the lane-sum tree); the top-1 token agrees wherever transformers' top-2 gap exceeds 0.5 nats.
TEST(Bf16Parity, SmolLM2DecodeMatchesTransformersF32) {
  const std::string path = model_cache_dir() + "/smollm2-135m-instruct.gguf";
  if (!std::filesystem::exists(path)) GTEST_SKIP() << "SmolLM2 GGUF not found at " << path << " (run scripts/setup.sh)";
  SafetensorsFile g = SafetensorsFile::open(std::string(RETORT_TEST_DATA) + "/model/smollm2_golden.safetensors");
  auto rd = [&](const std::string& name, torch::ScalarType st) {
    const auto* t = g.find(name);
    if (t == nullptr) throw std::runtime_error("golden tensor missing: " + name);
    auto out = torch::empty(t->shape, st);
    if (st == torch::kInt64) g.read_i64(*t, out.data_ptr<int64_t>());
    else g.read_f32(*t, out.data_ptr<float>());
    return out;
  };
  torch::NoGradGuard ng;
  for (bool quantized : {true, false}) {
    LoadedModel m = load_model(path, {torch::kCPU, torch::kBFloat16, /*load_tokenizer=*/false, quantized});
    ASSERT_EQ(m.model->quantized_in_use() > 0, quantized);
    for (int64_t B : {1, 4}) {  // B copies of the prompt in one batch: B rows of x per matrix product
      double max_diff = 0;
      int64_t checked = 0, agree = 0;
      for (int i = 0; g.find("p" + std::to_string(i) + "_input_ids"); ++i) {
        const std::string p = "p" + std::to_string(i) + "_";
        auto ids = rd(p + "input_ids", torch::kInt64);
        auto argmax = rd(p + "argmax", torch::kInt64);
        auto gap = rd(p + "top2_gap", torch::kFloat32);
        auto top_ids = rd(p + "top_ids", torch::kInt64);
        auto top_lp = rd(p + "top_logprobs", torch::kFloat32);
        const int64_t T = ids.size(0);
        KvCache cache(m.hparams, B, T, torch::kCPU, torch::kBFloat16);
        std::vector<int64_t> slots(static_cast<size_t>(B), 0), ones(static_cast<size_t>(B), 1);
        for (int64_t b = 0; b < B; ++b) slots[size_t(b)] = b;
        for (int64_t t = 0; t < T; ++t) {
          auto logits = m.model->forward_cached(ids.slice(0, t, t + 1).view({1, 1}).expand({B, 1}).contiguous(), slots,
                                                ones, cache, true);
          auto lp = torch::log_softmax(logits[B - 1], -1);
          EXPECT_TRUE(torch::equal(logits[0], logits[B - 1])) << "rows of one batch differ";
          max_diff = std::max(max_diff, (lp.gather(0, top_ids[t]) - top_lp[t]).abs().max().item<double>());
          if (gap[t].item<float>() > 0.5f) {
            ++checked;
            agree += lp.argmax().item<int64_t>() == argmax[t].item<int64_t>();
            EXPECT_EQ(lp.argmax().item<int64_t>(), argmax[t].item<int64_t>())
                << "quantized " << quantized << " batch " << B << " prompt " << i << " pos " << t;
          }
        }
      }
      std::cout << "SmolLM2 bf16 decode (" << (quantized ? "Q4_1/Q8_0 blocks" : "dense bf16") << ", batch " << B
                << "): max |logprob - transformers f32| over top-20 = " << max_diff << ", top-1 agrees at " << agree
                << "/" << checked << " positions with gap > 0.5\n";
      EXPECT_LE(max_diff, 0.4) << "quantized " << quantized << " batch " << B;
    }
  }
}

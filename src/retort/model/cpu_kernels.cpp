#include "retort/model/cpu_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <type_traits>
#include <cmath>
#include <limits>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "retort/util/parallel.h"

#include "retort/io/ggml_quants.h"
#include "retort/util/error.h"

// GCC 12's AVX512 headers pass _mm512_undefined_ps() (a self-initialized variable) as the unused source
// operand of unmasked intrinsics, and -W(maybe-)uninitialized reports it at every inlined use: over a
// thousand warnings once the kernels are instantiated per format, none about this file's own code.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace retort::cpu {

namespace {

std::atomic<bool> g_force_scalar{false};

bool env_scalar() {
  static const bool v = [] {
    const char* e = std::getenv("RETORT_CPU_SCALAR");
    return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0;
  }();
  return v;
}

bool cpu_avx512f() {
  static const bool v = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw");
  return v;
}

bool cpu_avx512_bf16() {
  static const bool v = cpu_avx512f() && __builtin_cpu_supports("avx512bf16");
  return v;
}

#define RETORT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c")))
#define RETORT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,f16c,avx512bf16")))

// ------------------------------------------------------------------------------------------------
// Vector helpers.

// The sum of the 16 lanes l0..l15, in the canonical tree every float32 product uses:
//   S_p = (l_p + l_{p+8}) + (l_{p+4} + l_{p+12}) for p < 4, sum = (S_0 + S_1) + (S_2 + S_3),
// the tree reduce16 below computes for 16 vectors at once. A result must not depend on which of the two
// reduced it (a tile's shape follows the batch size): see "Batch invariance" in cpu_kernels.h.
// (Not _mm512_reduce_add_ps: its order is the compiler's, and GCC 12's header trips -Wuninitialized.)
RETORT_AVX512 inline float hsum(__m512 v) {
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));  // lane p: l_p + l_{p+8}
  v = _mm512_add_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));  // lane p < 4: S_p
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));        // lane 0: S_0 + S_1, 2: S_2 + S_3
  v = _mm512_add_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));        // lane 0: the sum
  return _mm512_cvtss_f32(v);
}

// Max of the 16 lanes.
RETORT_AVX512 inline float hmax(__m512 v) {
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_max_ps(v, _mm512_shuffle_f32x4(v, v, _MM_SHUFFLE(2, 3, 0, 1)));
  v = _mm512_max_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(1, 0, 3, 2)));
  v = _mm512_max_ps(v, _mm512_permute_ps(v, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm512_cvtss_f32(v);
}

// Sixteen horizontal sums at once: out[4 (i % 4) + i / 4] = sum of the 16 lanes of a[i] (a transpose
// of the index), in 30 shuffles and 15 adds instead of 16 separate reductions of ~8 dependent steps;
// each sum in hsum's tree, bit for bit.
RETORT_AVX512 inline __m512 reduce16(const __m512* a) {
  __m512 c[8], e[4], g[2];
  for (int i = 0; i < 8; ++i)  // 128-bit lanes: [a0 l0+l2, a0 l1+l3, a1 l0+l2, a1 l1+l3]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  for (int i = 0; i < 4; ++i)  // lane k: four partial sums of a[4i + k]
    e[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  for (int i = 0; i < 2; ++i)  // lane k: [a[8i+k] two halves, a[8i+4+k] two halves]
    g[i] = _mm512_add_ps(_mm512_shuffle_ps(e[2 * i], e[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(e[2 * i], e[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  // lane k: [a[k], a[4+k], a[8+k], a[12+k]]
  return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

// exp(x) for 16 floats: 2^n exp(r), n = round(x log2 e), r = x - n ln 2 (ln 2 split in two for an exact
// product), exp(r) by the Cephes expf polynomial; relative error ~2e-7 (1-2 ulp). x clamped to
// [-104, 88.72]: exp underflows to 0 and overflows to +inf as expf does.
RETORT_AVX512 inline __m512 exp512(__m512 x) {
  x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(88.7228394f)), _mm512_set1_ps(-104.0f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  const __m512 y = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(y, n);
}

// Store the MT x NT tile sums s (row i, weight j) to y[i * ldy + j], adding to y when acc.
template <int MT, int NT>
RETORT_AVX512 inline void store_tile(__m512 (&s)[MT][NT], float* y, int64_t ldy, bool acc) {
  if constexpr (MT * NT == 16) {
    alignas(64) float t[16];
    _mm512_store_ps(t, reduce16(&s[0][0]));
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < NT; ++j) {
        const int a = i * NT + j;  // index into s as a flat array
        const float v = t[4 * (a % 4) + a / 4];
        y[i * ldy + j] = acc ? y[i * ldy + j] + v : v;
      }
  } else {
    for (int i = 0; i < MT; ++i)
      for (int j = 0; j < NT; ++j) {
        const float v = hsum(s[i][j]);
        y[i * ldy + j] = acc ? y[i * ldy + j] + v : v;
      }
  }
}

// ------------------------------------------------------------------------------------------------
// Weight formats: values and bytes per block (cpu_kernels.h), and the matching GGUF type.

constexpr int64_t block_elems_of(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32:
    case WeightFormat::kBF16: return 1;
    case WeightFormat::kQ4_K:
    case WeightFormat::kQ5_K:
    case WeightFormat::kQ6_K: return 256;
    default: return 32;
  }
}

constexpr int64_t block_bytes_of(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32: return 4;
    case WeightFormat::kBF16: return 2;
    case WeightFormat::kQ8_0: return 34;
    case WeightFormat::kQ4_0: return 18;
    case WeightFormat::kQ4_1: return 20;
    case WeightFormat::kQ5_0: return 22;
    case WeightFormat::kQ5_1: return 24;
    case WeightFormat::kQ4_K: return 144;
    case WeightFormat::kQ5_K: return 176;
    case WeightFormat::kQ6_K: return 210;
  }
  return 0;
}

GgmlType ggml_type_of(WeightFormat f) {
  switch (f) {
    case WeightFormat::kF32: return GgmlType::F32;
    case WeightFormat::kBF16: return GgmlType::BF16;
    case WeightFormat::kQ8_0: return GgmlType::Q8_0;
    case WeightFormat::kQ4_0: return GgmlType::Q4_0;
    case WeightFormat::kQ4_1: return GgmlType::Q4_1;
    case WeightFormat::kQ5_0: return GgmlType::Q5_0;
    case WeightFormat::kQ5_1: return GgmlType::Q5_1;
    case WeightFormat::kQ4_K: return GgmlType::Q4_K;
    case WeightFormat::kQ5_K: return GgmlType::Q5_K;
    case WeightFormat::kQ6_K: return GgmlType::Q6_K;
  }
  return GgmlType::F32;
}

// ------------------------------------------------------------------------------------------------
// matmul tiles: y[MT rows, NT cols] for x rows (stride ldx) against NT weight rows (stride K).

template <int MT, int NT>
RETORT_AVX512BF16 void tile_bf16(const uint16_t* x, int64_t ldx, const uint16_t* w, int64_t K, float* y,
                                 int64_t ldy, bool acc) {
  __m512 s[MT][NT];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NT; ++j) s[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 32 <= K; k += 32) {
    __m512i wv[NT];
    for (int j = 0; j < NT; ++j) wv[j] = _mm512_loadu_si512(w + j * K + k);
    for (int i = 0; i < MT; ++i) {
      __m512i xv = _mm512_loadu_si512(x + i * ldx + k);
      for (int j = 0; j < NT; ++j) s[i][j] = _mm512_dpbf16_ps(s[i][j], (__m512bh)xv, (__m512bh)wv[j]);
    }
  }
  if (k < K) {
    const __mmask32 m = __mmask32((1ull << (K - k)) - 1);
    __m512i wv[NT];
    for (int j = 0; j < NT; ++j) wv[j] = _mm512_maskz_loadu_epi16(m, w + j * K + k);
    for (int i = 0; i < MT; ++i) {
      __m512i xv = _mm512_maskz_loadu_epi16(m, x + i * ldx + k);
      for (int j = 0; j < NT; ++j) s[i][j] = _mm512_dpbf16_ps(s[i][j], (__m512bh)xv, (__m512bh)wv[j]);
    }
  }
  store_tile<MT, NT>(s, y, ldy, acc);
}

template <int MT, int NT>
RETORT_AVX512 void tile_f32(const float* x, int64_t ldx, const float* w, int64_t K, float* y, int64_t ldy,
                            bool acc) {
  __m512 s[MT][NT];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NT; ++j) s[i][j] = _mm512_setzero_ps();
  int64_t k = 0;
  for (; k + 16 <= K; k += 16) {
    __m512 wv[NT];
    for (int j = 0; j < NT; ++j) wv[j] = _mm512_loadu_ps(w + j * K + k);
    for (int i = 0; i < MT; ++i) {
      __m512 xv = _mm512_loadu_ps(x + i * ldx + k);
      for (int j = 0; j < NT; ++j) s[i][j] = _mm512_fmadd_ps(xv, wv[j], s[i][j]);
    }
  }
  if (k < K) {
    const __mmask16 m = __mmask16((1u << (K - k)) - 1);
    __m512 wv[NT];
    for (int j = 0; j < NT; ++j) wv[j] = _mm512_maskz_loadu_ps(m, w + j * K + k);
    for (int i = 0; i < MT; ++i) {
      __m512 xv = _mm512_maskz_loadu_ps(m, x + i * ldx + k);
      for (int j = 0; j < NT; ++j) s[i][j] = _mm512_fmadd_ps(xv, wv[j], s[i][j]);
    }
  }
  store_tile<MT, NT>(s, y, ldy, acc);
}

template <int NT, class F>
void tile_dispatch_m(int mt, F&& f) {
  switch (mt) {
    case 4: f(std::integral_constant<int, 4>{}); break;
    case 3: f(std::integral_constant<int, 3>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 1>{}); break;
  }
}

// Rows [r0, r1) of one weight against all M rows of x (vector paths). x is taken a chunk of rows at a time
// (x_rows_per_pass): the chunk stays in L2 while the block's weight rows pass over it. Reading all M rows
// for every 4 weight rows instead streams M·K values from L3 or memory each time, which made many-row
// calls (prefill, the audit's reading of texts: M ~ 1,000) memory-bound. Each output is still one tile's
// sum over K in the same order, so results do not depend on the chunking.
constexpr int64_t kXChunkBytes = 96 * 1024;
inline int64_t x_rows_per_pass(int64_t K, int64_t elem_bytes) {
  return std::max<int64_t>(4, kXChunkBytes / (K * elem_bytes) / 4 * 4);
}

// y[m0:m1, r0:r1] via tile<MT, NT>(m, r, nt): weight rows in 4s (then 1s), x rows in 4s, x chunk by chunk.
template <class Tile>
void chunked_tiles(int64_t M, int64_t K, int64_t elem_bytes, int64_t r0, int64_t r1, Tile&& tile) {
  const int64_t mb = x_rows_per_pass(K, elem_bytes);
  for (int64_t m0 = 0; m0 < M; m0 += mb) {
    const int64_t m1 = std::min(M, m0 + mb);
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
      for (int64_t m = m0; m < m1; m += 4)
        tile_dispatch_m<4>(int(std::min<int64_t>(4, m1 - m)), [&](auto mt) {
          tile(mt, std::integral_constant<int, 4>{}, m, r);
        });
    for (; r < r1; ++r)
      for (int64_t m = m0; m < m1; m += 4)
        tile_dispatch_m<1>(int(std::min<int64_t>(4, m1 - m)), [&](auto mt) {
          tile(mt, std::integral_constant<int, 1>{}, m, r);
        });
  }
}

void block_bf16(const uint16_t* xb, int64_t M, int64_t K, const uint16_t* w, int64_t r0, int64_t r1, float* y,
                int64_t ldy, bool acc) {
  chunked_tiles(M, K, 2, r0, r1, [&](auto mt, auto nt, int64_t m, int64_t r) {
    tile_bf16<decltype(mt)::value, decltype(nt)::value>(xb + m * K, K, w + r * K, K, y + m * ldy + r, ldy, acc);
  });
}

void block_f32(const float* x, int64_t M, int64_t K, const float* w, int64_t r0, int64_t r1, float* y, int64_t ldy,
               bool acc) {
  chunked_tiles(M, K, 4, r0, r1, [&](auto mt, auto nt, int64_t m, int64_t r) {
    tile_f32<decltype(mt)::value, decltype(nt)::value>(x + m * K, K, w + r * K, K, y + m * ldy + r, ldy, acc);
  });
}

// Packed bf16 panels (pack_bf16_panels): y[MR rows, up to 48 columns] (+)= x[MR, K] · panel. Per k-pair
// the panel's three vectors (48 columns x 2 k) are loaded once and each row's pair (x[i, 2kk], x[i, 2kk+1])
// is broadcast to all lanes: 3·MR independent vdpbf16ps accumulators and no horizontal sums, where the
// dot-product tiles above reload x for every group of 4 weight rows and reduce 16 lanes per output.
template <int MR>
RETORT_AVX512BF16 void panel_tile(const uint16_t* x, int64_t ldx, const uint16_t* panel, int64_t K2, float* y,
                                  int64_t ldy, int64_t ncols, bool acc) {
  __m512 s[MR][3];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 3; ++j) s[i][j] = _mm512_setzero_ps();
  for (int64_t kk = 0; kk < K2; ++kk) {
    const uint16_t* p = panel + kk * 2 * kPanelCols;
    const __m512bh w0 = (__m512bh)_mm512_loadu_si512(p), w1 = (__m512bh)_mm512_loadu_si512(p + 32),
                   w2 = (__m512bh)_mm512_loadu_si512(p + 64);
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, x + i * ldx + 2 * kk, 4);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(pair);
      s[i][0] = _mm512_dpbf16_ps(s[i][0], xv, w0);
      s[i][1] = _mm512_dpbf16_ps(s[i][1], xv, w1);
      s[i][2] = _mm512_dpbf16_ps(s[i][2], xv, w2);
    }
  }
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 3 && 16 * j < ncols; ++j) {
      const int64_t left = ncols - 16 * j;
      const __mmask16 m = left >= 16 ? __mmask16(0xffff) : __mmask16((1u << left) - 1);
      float* yr = y + i * ldy + 16 * j;
      const __m512 v = acc ? _mm512_add_ps(s[i][j], _mm512_maskz_loadu_ps(m, yr)) : s[i][j];
      _mm512_mask_storeu_ps(yr, m, v);
    }
}

// n floats -> bf16, round to nearest even (vcvtne2ps2bf16, as f32_to_bf16 does).
RETORT_AVX512BF16 void to_bf16(const float* x, int64_t n, uint16_t* out) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    _mm512_storeu_si512(out + i, (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i)));
  // The tail through the same instruction (vcvtneps2bf16 flushes denormals, f32_to_bf16 does not): a
  // row's bf16 copy must not depend on where the batch ends.
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

// Rows [r0, r1) of one weight (r0 a multiple of kPanelCols) from its panels, against all M rows of xb,
// 8 rows at a time (24 accumulators of the 32 vector registers).
constexpr int64_t kChunkPairs = 96;

void block_panels(const uint16_t* xb, int64_t M, int64_t K, const uint16_t* panels, int64_t r0, int64_t r1, float* y,
                  int64_t ldy, bool acc) {
  const int64_t K2 = K / 2;
  for (int64_t r = r0; r < r1; r += kPanelCols) {
    const uint16_t* panel = panels + (r / kPanelCols) * K2 * 2 * kPanelCols;
    const int64_t ncols = std::min(kPanelCols, r1 - r);
    // K in chunks of kChunkPairs k-pairs: the chunk of the panel (18 KiB) stays in L1 while every group
    // of 8 rows passes over it; partial sums go through y.
    for (int64_t c0 = 0; c0 < K2; c0 += kChunkPairs) {
      const int64_t n2 = std::min(kChunkPairs, K2 - c0);
      const uint16_t* pc = panel + c0 * 2 * kPanelCols;
      const bool acc_c = acc || c0 > 0;
      for (int64_t m = 0; m < M; m += 8) {
        const uint16_t* xm = xb + m * K + 2 * c0;
        float* ym = y + m * ldy + r;
        switch (std::min<int64_t>(8, M - m)) {
          case 8: panel_tile<8>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
          case 7: panel_tile<7>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
          case 6: panel_tile<6>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
          case 5: panel_tile<5>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
          case 4: panel_tile<4>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
          case 3: panel_tile<3>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
          case 2: panel_tile<2>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
          default: panel_tile<1>(xm, K, pc, n2, ym, ldy, ncols, acc_c); break;
        }
      }
    }
  }
}

// Portable fallback: float32 accumulation, x not rounded; one output at a time, k ascending.
void block_scalar(const float* x, int64_t M, int64_t K, const WeightRef& wr, int64_t r0, int64_t r1, float* y,
                  int64_t ldy, bool acc) {
  std::vector<float> row(static_cast<size_t>(K));
  const int64_t row_bytes = weight_row_bytes(wr.format, K);
  for (int64_t r = r0; r < r1; ++r) {
    const uint8_t* src = static_cast<const uint8_t*>(wr.data) + r * row_bytes;
    const float* wrow = row.data();
    if (wr.format == WeightFormat::kF32) wrow = reinterpret_cast<const float*>(src);
    else if (wr.format == WeightFormat::kBF16)
      for (int64_t k = 0; k < K; ++k) row[size_t(k)] = bf16_to_f32(reinterpret_cast<const uint16_t*>(src)[k]);
    else dequantize(ggml_type_of(wr.format), src, row.data(), K);  // the reference itself
    for (int64_t m = 0; m < M; ++m) {
      const float* xr = x + m * K;
      float s = 0;
      for (int64_t k = 0; k < K; ++k) s += xr[k] * wrow[k];
      float& out = y[m * ldy + r];
      out = acc ? out + s : s;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Quantized weights: ggml blocks along K (layouts and formulas in cpu_kernels.h). Dequantization is the
// reference's arithmetic, each product and sum one float32 rounding in retort::dequantize's order, so a
// float32 product sees exactly the weights a dense float32 model loaded from the same file holds. The
// _round_ intrinsics keep a product and the sum after it two roundings: GCC's _mm512_mul_ps / add_ps are
// plain vector operators, which -ffp-contract may fuse into one FMA (one rounding, a different last bit).
//
// Every kernel reads the weights through one primitive, dequant32<F>(block, sub): the 32 values of
// sub-block `sub` of one block, i.e. columns [k, k + 32) of a row for k = (block index) E + 32 sub, E the
// block size (32: sub = 0; 256: sub < 8, with its own scale and min). The few-rows dot products and the
// shared tiles are thus one code path for every format, and both see bit-identical weights.

constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

RETORT_AVX512 inline float load_fp16(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return _cvtsh_ss(h);
}

// 16 integer codes -> float32 weights: d q; d q + m; d q - m (each operation rounded on its own).
RETORT_AVX512 inline __m512 mul_q(__m512i q, float d) {
  return _mm512_mul_round_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(d), kRound);
}
RETORT_AVX512 inline __m512 mul_q_add(__m512i q, float d, float m) {
  return _mm512_add_round_ps(mul_q(q, d), _mm512_set1_ps(m), kRound);
}
RETORT_AVX512 inline __m512 mul_q_sub(__m512i q, float d, float m) {
  return _mm512_sub_round_ps(mul_q(q, d), _mm512_set1_ps(m), kRound);
}

// Bytes of v (16-bit lanes) shifted right by n, then masked: (byte >> n) & mask.
RETORT_AVX512 inline __m256i bytes_shift_mask(__m256i v, int n, uint8_t mask) {
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(n)), _mm256_set1_epi8(char(mask)));
}

// The 6-bit scale and min of K-quant sub-block j < 8, packed in 12 bytes (layout in cpu_kernels.h).
inline void k_scale_min(const uint8_t* s, int j, int& sc, int& mn) {
  if (j < 4) {
    sc = s[j] & 63;
    mn = s[j + 4] & 63;
  } else {
    sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// The 32 weights of sub-block `sub` of block b (columns 32 sub .. 32 sub + 31 of the block) as two
// float32 vectors: lo = the first 16, hi = the next 16.
template <WeightFormat F>
RETORT_AVX512 inline void dequant32(const uint8_t* b, int sub, __m512& lo, __m512& hi) {
  if constexpr (F == WeightFormat::kQ8_0) {  // d | int8 q[32]
    const float d = load_fp16(b);
    lo = mul_q(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 2))), d);
    hi = mul_q(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + 18))), d);
  } else if constexpr (F == WeightFormat::kQ4_0 || F == WeightFormat::kQ4_1 || F == WeightFormat::kQ5_0 ||
                       F == WeightFormat::kQ5_1) {
    // d [| m] [| u32 qh] | qs[16]: value j < 16 is the low nibble of qs[j], value 16 + j the high one;
    // Q5 adds bit i of qh as the 5th bit of value i.
    constexpr bool has_m = F == WeightFormat::kQ4_1 || F == WeightFormat::kQ5_1;
    constexpr bool has_qh = F == WeightFormat::kQ5_0 || F == WeightFormat::kQ5_1;
    constexpr int qs_at = 2 + (has_m ? 2 : 0) + (has_qh ? 4 : 0);
    const float d = load_fp16(b);
    const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(b + qs_at));
    const __m128i nib = _mm_set1_epi8(0x0f);
    __m512i ql = _mm512_cvtepu8_epi32(_mm_and_si128(q, nib));
    __m512i qh = _mm512_cvtepu8_epi32(_mm_and_si128(_mm_srli_epi16(q, 4), nib));
    if constexpr (has_qh) {
      uint32_t h;
      std::memcpy(&h, b + (has_m ? 4 : 2), 4);
      const __m512i sixteen = _mm512_set1_epi32(16);
      if constexpr (has_m) {  // Q5_1: q = nibble + 16 bit
        ql = _mm512_mask_add_epi32(ql, __mmask16(h), ql, sixteen);
        qh = _mm512_mask_add_epi32(qh, __mmask16(h >> 16), qh, sixteen);
      } else {  // Q5_0: q - 16 = nibble + 16 bit - 16 = nibble - 16 where the bit is clear
        ql = _mm512_mask_sub_epi32(ql, __mmask16(~h), ql, sixteen);
        qh = _mm512_mask_sub_epi32(qh, __mmask16(~h >> 16), qh, sixteen);
      }
    } else if constexpr (!has_m) {  // Q4_0: q - 8
      ql = _mm512_sub_epi32(ql, _mm512_set1_epi32(8));
      qh = _mm512_sub_epi32(qh, _mm512_set1_epi32(8));
    }
    if constexpr (has_m) {
      const float m = load_fp16(b + 2);
      lo = mul_q_add(ql, d, m);
      hi = mul_q_add(qh, d, m);
    } else {
      lo = mul_q(ql, d);
      hi = mul_q(qh, d);
    }
  } else if constexpr (F == WeightFormat::kQ4_K || F == WeightFormat::kQ5_K) {
    // d | dmin | scales[12] [| qh[32]] | qs[128]: value l of sub-block s is nibble s % 2 of qs[32 (s / 2) + l]
    // (Q5_K: plus bit s of qh[l] as the 5th bit); w = (d sc) q - (dmin mn).
    constexpr bool q5 = F == WeightFormat::kQ5_K;
    int sc, mn;
    k_scale_min(b + 4, sub, sc, mn);
    const float d1 = load_fp16(b) * float(sc), m1 = load_fp16(b + 2) * float(mn);
    __m256i q = bytes_shift_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + (q5 ? 48 : 16) + 32 * (sub / 2))),
                                 4 * (sub % 2), 0x0f);
    if constexpr (q5) {
      const __mmask32 bit = _mm256_test_epi8_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 16)),
                                                  _mm256_set1_epi8(char(1 << sub)));
      q = _mm256_mask_add_epi8(q, bit, q, _mm256_set1_epi8(16));
    }
    lo = mul_q_sub(_mm512_cvtepu8_epi32(_mm256_castsi256_si128(q)), d1, m1);
    hi = mul_q_sub(_mm512_cvtepu8_epi32(_mm256_extracti128_si256(q, 1)), d1, m1);
  } else {
    static_assert(F == WeightFormat::kQ6_K);
    // ql[128] | qh[64] | int8 scales[16] | d: sub-block s = 4 h + t; the low 4 bits of value l are nibble
    // t / 2 of ql[64 h + 32 (t % 2) + l], the high 2 bits are bits 2t, 2t+1 of qh[32 h + l]; q - 32 is an
    // int8, and each half of the sub-block has its own scale: w = (d scales[2 s + l / 16]) (q - 32).
    const int h = sub / 4, t = sub % 4;
    const __m256i low = bytes_shift_mask(
        _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 64 * h + 32 * (t % 2))), 4 * (t / 2), 0x0f);
    const __m256i high =
        bytes_shift_mask(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 128 + 32 * h)), 2 * t, 0x03);
    // (high << 4 stays inside each byte: high < 4.)
    const __m256i q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16(high, 4)), _mm256_set1_epi8(32));
    const float d = load_fp16(b + 208);
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    lo = mul_q(_mm512_cvtepi8_epi32(_mm256_castsi256_si128(q)), d * float(scales[2 * sub]));
    hi = mul_q(_mm512_cvtepi8_epi32(_mm256_extracti128_si256(q, 1)), d * float(scales[2 * sub + 1]));
  }
}

// Few rows of x: y[m, r] for NT weight rows at w (row stride row_bytes), each sub-block dequantized in
// registers and dotted with MT rows of x (row stride K). Independent accumulators keep the FMA pipes busy
// while the weight stream, read once, is the bottleneck. Lane i accumulates k = i mod 16 in ascending k,
// as tile_f32 does on the dequantized rows: the same sums, bit for bit.
template <WeightFormat F, int MT, int NT>
RETORT_AVX512 void quant_direct(const uint8_t* w, int64_t row_bytes, int64_t K, const float* x, float* y,
                                int64_t ldy, bool acc) {
  constexpr int64_t E = block_elems_of(F), BB = block_bytes_of(F);
  __m512 s[MT][NT];
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NT; ++j) s[i][j] = _mm512_setzero_ps();
  for (int64_t kb = 0; kb < K; kb += E) {
    const uint8_t* wb = w + kb / E * BB;
#pragma GCC unroll 8
    for (int sub = 0; sub < int(E / 32); ++sub) {
      const int64_t k = kb + 32 * sub;
      __m512 lo[NT], hi[NT];
      for (int j = 0; j < NT; ++j) dequant32<F>(wb + j * row_bytes, sub, lo[j], hi[j]);
      for (int i = 0; i < MT; ++i) {
        const __m512 xl = _mm512_loadu_ps(x + i * K + k), xh = _mm512_loadu_ps(x + i * K + k + 16);
        for (int j = 0; j < NT; ++j) s[i][j] = _mm512_fmadd_ps(hi[j], xh, _mm512_fmadd_ps(lo[j], xl, s[i][j]));
      }
    }
  }
  store_tile<MT, NT>(s, y, ldy, acc);
}

// n rows of quantized weights -> float32 [n, K]; dequant_rows_bf16: the same rounded to bf16 (nearest
// even). Two functions, not one template, because only the second may use the AVX512-BF16 target.
template <WeightFormat F>
RETORT_AVX512 void dequant_rows_f32(const uint8_t* w, int64_t row_bytes, int64_t n, int64_t K, float* out) {
  constexpr int64_t E = block_elems_of(F), BB = block_bytes_of(F);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t kb = 0; kb < K; kb += E) {
      const uint8_t* wb = w + r * row_bytes + kb / E * BB;
#pragma GCC unroll 8
      for (int sub = 0; sub < int(E / 32); ++sub) {
        __m512 lo, hi;
        dequant32<F>(wb, sub, lo, hi);
        _mm512_storeu_ps(out + r * K + kb + 32 * sub, lo);
        _mm512_storeu_ps(out + r * K + kb + 32 * sub + 16, hi);
      }
    }
}

template <WeightFormat F>
RETORT_AVX512BF16 void dequant_rows_bf16(const uint8_t* w, int64_t row_bytes, int64_t n, int64_t K, uint16_t* out) {
  constexpr int64_t E = block_elems_of(F), BB = block_bytes_of(F);
  for (int64_t r = 0; r < n; ++r)
    for (int64_t kb = 0; kb < K; kb += E) {
      const uint8_t* wb = w + r * row_bytes + kb / E * BB;
#pragma GCC unroll 8
      for (int sub = 0; sub < int(E / 32); ++sub) {
        __m512 lo, hi;
        dequant32<F>(wb, sub, lo, hi);
        _mm512_storeu_si512(out + r * K + kb + 32 * sub, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
      }
    }
}

// Rows [r0, r1) of one quantized weight against all M rows of x (vector paths). xb: x in bf16 (used
// when bf16 math is on). scratch: thread-local space for the block's dequantized rows.
template <WeightFormat F>
void block_quant(const float* x, const uint16_t* xb, int64_t M, int64_t K, const WeightRef& wr, bool bf16_math,
                 int64_t r0, int64_t r1, float* y, int64_t ldy, bool acc, std::vector<float>& scratch) {
  const int64_t row_bytes = weight_row_bytes(F, K);
  const uint8_t* w = static_cast<const uint8_t*>(wr.data);
  if (M < 4) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4)
      tile_dispatch_m<4>(int(M), [&](auto mt) {
        quant_direct<F, decltype(mt)::value, 4>(w + r * row_bytes, row_bytes, K, x, y + r, ldy, acc);
      });
    for (; r < r1; ++r)
      tile_dispatch_m<1>(int(M), [&](auto mt) {
        quant_direct<F, decltype(mt)::value, 1>(w + r * row_bytes, row_bytes, K, x, y + r, ldy, acc);
      });
    return;
  }
  // The block's rows dequantized once (at most kPanelCols rows), then x chunk by chunk as block_f32 does.
  const int64_t n = r1 - r0;
  scratch.resize(size_t(n * K));
  if (bf16_math) {
    auto* wb = reinterpret_cast<uint16_t*>(scratch.data());
    dequant_rows_bf16<F>(w + r0 * row_bytes, row_bytes, n, K, wb);
    chunked_tiles(M, K, 2, 0, n, [&](auto mt, auto nt, int64_t m, int64_t r) {
      tile_bf16<decltype(mt)::value, decltype(nt)::value>(xb + m * K, K, wb + r * K, K, y + m * ldy + r0 + r, ldy, acc);
    });
  } else {
    float* wf = scratch.data();
    dequant_rows_f32<F>(w + r0 * row_bytes, row_bytes, n, K, wf);
    chunked_tiles(M, K, 4, 0, n, [&](auto mt, auto nt, int64_t m, int64_t r) {
      tile_f32<decltype(mt)::value, decltype(nt)::value>(x + m * K, K, wf + r * K, K, y + m * ldy + r0 + r, ldy, acc);
    });
  }
}

// The format's instance of block_quant.
void block_quant_any(const float* x, const uint16_t* xb, int64_t M, int64_t K, const WeightRef& wr, bool bf16_math,
                     int64_t r0, int64_t r1, float* y, int64_t ldy, bool acc, std::vector<float>& scratch) {
  switch (wr.format) {
#define RETORT_QUANT_CASE(F) \
  case F: return block_quant<F>(x, xb, M, K, wr, bf16_math, r0, r1, y, ldy, acc, scratch);
    RETORT_QUANT_CASE(WeightFormat::kQ8_0)
    RETORT_QUANT_CASE(WeightFormat::kQ4_0)
    RETORT_QUANT_CASE(WeightFormat::kQ4_1)
    RETORT_QUANT_CASE(WeightFormat::kQ5_0)
    RETORT_QUANT_CASE(WeightFormat::kQ5_1)
    RETORT_QUANT_CASE(WeightFormat::kQ4_K)
    RETORT_QUANT_CASE(WeightFormat::kQ5_K)
    RETORT_QUANT_CASE(WeightFormat::kQ6_K)
#undef RETORT_QUANT_CASE
    case WeightFormat::kF32:
    case WeightFormat::kBF16: break;
  }
  fail("block_quant: ", weight_format_name(wr.format), " is not a block format");
}

// ------------------------------------------------------------------------------------------------
// Attention over the KV cache: rows of float32 or bf16 (load16 widens 16 of either to float32).

RETORT_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
RETORT_AVX512 inline __m512 load16(const uint16_t* p) {
  __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

inline float to_f(float v) { return v; }
inline float to_f(uint16_t v) { return bf16_to_f32(v); }

// Attention of one new token's G = H / Hkv query heads (sharing kv head kh) over keys 0..L-1.
// Scalar fallback and the AVX512 path (D % 16 == 0) below.
template <class T>
void attend_one(const float* qkv_b, int64_t H, int64_t Hkv, int64_t D, int64_t kh, const T* kc, const T* vc,
                int64_t L, float scale, float* out_b, std::vector<float>& scores) {
  const int64_t G = H / Hkv;
  scores.resize(size_t(L));
  for (int64_t g = 0; g < G; ++g) {
    const int64_t h = kh * G + g;
    const float* q = qkv_b + h * D;
    float mx = -INFINITY;
    for (int64_t j = 0; j < L; ++j) {
      float s = 0;
      for (int64_t d = 0; d < D; ++d) s += q[d] * to_f(kc[j * D + d]);
      s *= scale;
      scores[size_t(j)] = s;
      mx = std::max(mx, s);
    }
    float sum = 0;
    for (int64_t j = 0; j < L; ++j) {
      const float e = std::exp(scores[size_t(j)] - mx);
      scores[size_t(j)] = e;
      sum += e;
    }
    const float inv = 1.0f / sum;
    float* o = out_b + h * D;
    std::fill(o, o + D, 0.0f);
    for (int64_t j = 0; j < L; ++j) {
      const float p = scores[size_t(j)] * inv;
      for (int64_t d = 0; d < D; ++d) o[d] += p * to_f(vc[j * D + d]);
    }
  }
}

// The cache rows of the work item after this one (another slot or kv head: a new memory stream). The
// fast paths fetch a slice of it per step of their own loop, so it is in cache when its turn comes.
struct NextRows {
  const char* k = nullptr;
  const char* v = nullptr;
  int64_t bytes = 0;  // of each of k and v
};

// Prefetch slice i of n of [p, p + bytes).
inline void prefetch_slice(const char* p, int64_t bytes, int64_t i, int64_t n) {
  if (p == nullptr || n <= 0) return;
  const int64_t per = (bytes + n - 1) / n, end = std::min(bytes, (i + 1) * per);
  for (int64_t o = i * per / 64 * 64; o < end; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
}

// The vector path, in three passes over the keys of kv head kh:
//  1. scores s[g, j] = q_g . k_j * scale, 16 keys at a time (one reduce16 instead of 16 reductions);
//     with a bf16 cache on AVX512-BF16 and D % 32 == 0, q is rounded to bf16 and vdpbf16ps reads the
//     cache as stored (the numerics of a bf16 attention), else float32 FMAs on widened rows;
//  2. softmax per head, vectorized;
//  3. o_g = sum_j p[g, j] v_j, each value row widened once and used by all G heads.
RETORT_AVX512BF16 void scores_bf16(const float* q, int64_t G, int64_t D, const uint16_t* kc, int64_t L, float scale_f,
                                   float* sc, int64_t ld_sc, std::vector<uint16_t>& qb, const NextRows& next) {
  qb.resize(size_t(G * D));
  for (int64_t i = 0; i < G * D; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb.data() + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(q + i)));
  const __m512 scale = _mm512_set1_ps(scale_f);
  // 16 keys at a time for all G heads (the block's 16 rows stay in L1 while the heads pass over them).
  const int64_t L16 = L / 16 * 16;
  for (int64_t j = 0; j < L16; j += 16) {
    prefetch_slice(next.k, next.bytes, j / 16, L16 / 16);
    for (int64_t g = 0; g < G; ++g) {
      const uint16_t* qg = qb.data() + g * D;
      __m512 acc[16];  // key j + t accumulates in acc[4 (t % 4) + t / 4], so reduce16 returns keys in order
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 32) {
        const __m512i qv = _mm512_loadu_si512(qg + d);
        for (int t = 0; t < 16; ++t)
          acc[4 * (t % 4) + t / 4] = _mm512_dpbf16_ps(acc[4 * (t % 4) + t / 4], (__m512bh)qv,
                                                      (__m512bh)_mm512_loadu_si512(kc + (j + t) * D + d));
      }
      _mm512_storeu_ps(sc + g * ld_sc + j, _mm512_mul_ps(reduce16(acc), scale));
    }
  }
  for (int64_t g = 0; g < G; ++g) {
    const uint16_t* qg = qb.data() + g * D;
    float* s = sc + g * ld_sc;
    for (int64_t j = L16; j < L; ++j) {
      __m512 a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 32)
        a = _mm512_dpbf16_ps(a, (__m512bh)_mm512_loadu_si512(qg + d), (__m512bh)_mm512_loadu_si512(kc + j * D + d));
      s[j] = hsum(a) * scale_f;
    }
  }
}

template <class T>
RETORT_AVX512 void scores_f32(const float* q, int64_t G, int64_t D, const T* kc, int64_t L, float scale_f, float* sc,
                              int64_t ld_sc) {
  const __m512 scale = _mm512_set1_ps(scale_f);
  for (int64_t g = 0; g < G; ++g) {
    const float* qg = q + g * D;
    float* s = sc + g * ld_sc;
    int64_t j = 0;
    for (; j + 16 <= L; j += 16) {
      __m512 acc[16];
      for (auto& a : acc) a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) {
        const __m512 qv = _mm512_loadu_ps(qg + d);
        for (int t = 0; t < 16; ++t)
          acc[4 * (t % 4) + t / 4] = _mm512_fmadd_ps(qv, load16(kc + (j + t) * D + d), acc[4 * (t % 4) + t / 4]);
      }
      _mm512_storeu_ps(s + j, _mm512_mul_ps(reduce16(acc), scale));
    }
    for (; j < L; ++j) {
      __m512 a = _mm512_setzero_ps();
      for (int64_t d = 0; d < D; d += 16) a = _mm512_fmadd_ps(_mm512_loadu_ps(qg + d), load16(kc + j * D + d), a);
      s[j] = hsum(a) * scale_f;
    }
  }
}

// s[0, L) -> softmax(s) in place.
RETORT_AVX512 void softmax_avx(float* s, int64_t L) {
  __m512 mxv = _mm512_set1_ps(-INFINITY);
  for (int64_t j = 0; j < L; j += 16) {
    const __mmask16 k = L - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (L - j)) - 1);
    mxv = _mm512_mask_max_ps(mxv, k, mxv, _mm512_maskz_loadu_ps(k, s + j));
  }
  const __m512 mx = _mm512_set1_ps(hmax(mxv));
  __m512 sumv = _mm512_setzero_ps();
  for (int64_t j = 0; j < L; j += 16) {
    const __mmask16 k = L - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (L - j)) - 1);
    const __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, s + j), mx)));
    _mm512_mask_storeu_ps(s + j, k, e);
    sumv = _mm512_add_ps(sumv, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / hsum(sumv));
  for (int64_t j = 0; j < L; j += 16) {
    const __mmask16 k = L - j >= 16 ? __mmask16(0xffff) : __mmask16((1u << (L - j)) - 1);
    _mm512_mask_storeu_ps(s + j, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, s + j), inv));
  }
}

// o[g, :] = sum_j p[g, j] v_j for G heads (G a compile-time count so the accumulators stay in registers).
template <int G, class T>
RETORT_AVX512 void weighted_values(const float* p, int64_t ld_p, const T* vc, int64_t L, int64_t D, float* o) {
  for (int64_t d = 0; d < D; d += 16) {
    __m512 acc[G];
    for (auto& a : acc) a = _mm512_setzero_ps();
    for (int64_t j = 0; j < L; ++j) {
      const __m512 v = load16(vc + j * D + d);
      for (int g = 0; g < G; ++g) acc[g] = _mm512_fmadd_ps(_mm512_set1_ps(p[g * ld_p + j]), v, acc[g]);
    }
    for (int g = 0; g < G; ++g) _mm512_storeu_ps(o + g * D + d, acc[g]);
  }
}

// The same with the rows outermost: each value row (D = 16 DC floats) is loaded once, contiguously, for
// G x DC independent accumulators (the loop above has G chains per pass and D/16 strided passes).
template <int G, int DC, class T>
RETORT_AVX512 void weighted_value_rows(const float* p, int64_t ld_p, const T* vc, int64_t L, float* o,
                                       const NextRows& next) {
  constexpr int64_t D = 16 * DC;
  __m512 acc[G][DC];
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_setzero_ps();
  for (int64_t j = 0; j < L; ++j) {
    prefetch_slice(next.v, next.bytes, j, L);
    __m512 v[DC];
    for (int c = 0; c < DC; ++c) v[c] = load16(vc + j * D + 16 * c);
    for (int g = 0; g < G; ++g) {
      const __m512 pg = _mm512_set1_ps(p[g * ld_p + j]);
      for (int c = 0; c < DC; ++c) acc[g][c] = _mm512_fmadd_ps(pg, v[c], acc[g][c]);
    }
  }
  for (int g = 0; g < G; ++g)
    for (int c = 0; c < DC; ++c) _mm512_storeu_ps(o + g * D + 16 * c, acc[g][c]);
}

template <class T>
void attend_one_avx(const float* qkv_b, int64_t H, int64_t Hkv, int64_t D, int64_t kh, const T* kc, const T* vc,
                    int64_t L, float scale, float* out_b, std::vector<float>& scores, std::vector<uint16_t>& qb,
                    const NextRows& next) {
  const int64_t G = H / Hkv, ld = (L + 15) / 16 * 16;
  scores.resize(size_t(G * ld));
  float* sc = scores.data();
  const float* q = qkv_b + kh * G * D;  // the G query heads of kv head kh, adjacent
  if constexpr (std::is_same_v<T, uint16_t>) {
    if (has_avx512_bf16() && D % 32 == 0) scores_bf16(q, G, D, kc, L, scale, sc, ld, qb, next);
    else scores_f32(q, G, D, kc, L, scale, sc, ld);
  } else {
    scores_f32(q, G, D, kc, L, scale, sc, ld);
  }
  for (int64_t g = 0; g < G; ++g) softmax_avx(sc + g * ld, L);
  float* o = out_b + kh * G * D;
  if (D == 64 && G == 3) return weighted_value_rows<3, 4>(sc, ld, vc, L, o, next);  // SmolLM2
  if (D == 64 && G == 4) return weighted_value_rows<4, 4>(sc, ld, vc, L, o, next);
  if (D == 128 && G == 2) return weighted_value_rows<2, 8>(sc, ld, vc, L, o, next);
  if (D == 256 && G == 4) return weighted_value_rows<4, 16>(sc, ld, vc, L, o, next);  // Gemma 3 270M
  switch (G) {
    case 1: return weighted_values<1>(sc, ld, vc, L, D, o);
    case 2: return weighted_values<2>(sc, ld, vc, L, D, o);
    case 3: return weighted_values<3>(sc, ld, vc, L, D, o);
    case 4: return weighted_values<4>(sc, ld, vc, L, D, o);
    case 5: return weighted_values<5>(sc, ld, vc, L, D, o);
    case 6: return weighted_values<6>(sc, ld, vc, L, D, o);
    case 7: return weighted_values<7>(sc, ld, vc, L, D, o);
    case 8: return weighted_values<8>(sc, ld, vc, L, D, o);
    default:
      for (int64_t g = 0; g < G; ++g) weighted_values<1>(sc + g * ld, ld, vc, L, D, o + g * D);
  }
}

// Rotate-half RoPE of one head x [D] in place: (x1, x2) -> (x1 c - x2 s, x2 c + x1 s).
void rope_head(float* x, const float* c, const float* s, int64_t D) {
  const int64_t half = D / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    x[i] = a * c[i] - b * s[i];
    x[i + half] = b * c[i] + a * s[i];
  }
}

}  // namespace

bool has_avx512_bf16() { return !g_force_scalar.load() && !env_scalar() && cpu_avx512_bf16(); }
bool has_avx512f() { return !g_force_scalar.load() && !env_scalar() && cpu_avx512f(); }
void set_force_scalar(bool on) { g_force_scalar.store(on); }

uint16_t f32_to_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

float bf16_to_f32(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

int64_t bf16_panels_size(int64_t rows, int64_t K) { return (rows + kPanelCols - 1) / kPanelCols * kPanelCols * K; }

void pack_bf16_panels(const uint16_t* w, int64_t rows, int64_t K, uint16_t* out) {
  if (K % 2 != 0) fail("pack_bf16_panels: K = ", K, " (must be even: panels hold k in pairs)");
  const int64_t K2 = K / 2, n_panels = (rows + kPanelCols - 1) / kPanelCols;
  // out[((p K2 + kk) kPanelCols + c) 2 + t] = w[p kPanelCols + c, 2 kk + t], zero past the last row.
  parallel_for(0, n_panels, 1, [&](int64_t lo, int64_t hi) {
    for (int64_t p = lo; p < hi; ++p)
      for (int64_t c = 0; c < kPanelCols; ++c) {
        const int64_t n = p * kPanelCols + c;
        uint16_t* o = out + (p * K2 * kPanelCols + c) * 2;
        for (int64_t kk = 0; kk < K2; ++kk) {
          o[kk * 2 * kPanelCols] = n < rows ? w[n * K + 2 * kk] : 0;
          o[kk * 2 * kPanelCols + 1] = n < rows ? w[n * K + 2 * kk + 1] : 0;
        }
      }
  });
}

const char* weight_format_name(WeightFormat format) {
  switch (format) {
    case WeightFormat::kF32: return "F32";
    case WeightFormat::kBF16: return "BF16";
    case WeightFormat::kQ8_0: return "Q8_0";
    case WeightFormat::kQ4_0: return "Q4_0";
    case WeightFormat::kQ4_1: return "Q4_1";
    case WeightFormat::kQ5_0: return "Q5_0";
    case WeightFormat::kQ5_1: return "Q5_1";
    case WeightFormat::kQ4_K: return "Q4_K";
    case WeightFormat::kQ5_K: return "Q5_K";
    case WeightFormat::kQ6_K: return "Q6_K";
  }
  return "unknown";
}

int64_t weight_block_elems(WeightFormat format) { return block_elems_of(format); }

bool is_quantized(WeightFormat format) { return block_elems_of(format) > 1; }

int64_t weight_row_bytes(WeightFormat format, int64_t K) {
  const int64_t e = block_elems_of(format);
  if (K % e != 0)
    fail("weight_row_bytes: a ", weight_format_name(format), " row holds whole blocks of ", e, " values, and K = ", K,
         " is not a multiple of ", e);
  return K / e * block_bytes_of(format);
}


void matmul_wt(const float* x, int64_t M, int64_t K, const WeightRef* w, int n_w, float* y, int64_t ldy,
               bool accumulate) {
  if (M <= 0 || K <= 0) return;
  const bool bf16_vec = has_avx512_bf16();
  const bool f32_vec = has_avx512f();
  bool need_xb = false;
  for (int i = 0; i < n_w; ++i) {
    const bool quant = is_quantized(w[i].format);
    const int64_t e = block_elems_of(w[i].format);
    if (K % e != 0)
      fail("matmul_wt: weight ", i, " is ", weight_format_name(w[i].format), " (blocks of ", e, " values along K), and K = ",
           K, " is not a multiple of ", e, "; keep such a matrix dense (F32 or BF16)");
    need_xb = need_xb || w[i].format == WeightFormat::kBF16 || (quant && w[i].bf16_math && M >= 4) ||
              (w[i].panels != nullptr && M >= kPanelMinRows);
  }
  const bool panels_ok = bf16_vec && M >= kPanelMinRows && K % 2 == 0;
  std::vector<uint16_t> xb;
  if (need_xb && bf16_vec) {
    xb.resize(size_t(M * K));
    to_bf16(x, M * K, xb.data());
  }
  // Work items: blocks of weight rows, never straddling two matrices; a block is one panel.
  struct Block {
    int seg;
    int64_t r0, r1, col0;
  };
  constexpr int64_t kRows = kPanelCols;
  std::vector<Block> blocks;
  int64_t col = 0;
  for (int i = 0; i < n_w; ++i) {
    for (int64_t r = 0; r < w[i].rows; r += kRows) blocks.push_back({i, r, std::min(w[i].rows, r + kRows), col});
    col += w[i].rows;
  }
  parallel_for(0, int64_t(blocks.size()), 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> scratch;
    for (int64_t bi = lo; bi < hi; ++bi) {
      const Block& b = blocks[size_t(bi)];
      const WeightRef& wr = w[b.seg];
      float* yc = y + b.col0;  // column 0 of this matrix's outputs
      if (wr.panels != nullptr && panels_ok) {
        block_panels(xb.data(), M, K, wr.panels, b.r0, b.r1, yc, ldy, accumulate);
        continue;
      }
      switch (wr.format) {
        case WeightFormat::kBF16:
          if (bf16_vec) {
            block_bf16(xb.data(), M, K, static_cast<const uint16_t*>(wr.data), b.r0, b.r1, yc, ldy, accumulate);
            continue;
          }
          break;
        case WeightFormat::kF32:
          if (f32_vec) {
            block_f32(x, M, K, static_cast<const float*>(wr.data), b.r0, b.r1, yc, ldy, accumulate);
            continue;
          }
          break;
        default:  // the block formats
          if (f32_vec) {
            block_quant_any(x, xb.data(), M, K, wr, wr.bf16_math && bf16_vec, b.r0, b.r1, yc, ldy, accumulate,
                            scratch);
            continue;
          }
          break;
      }
      block_scalar(x, M, K, wr, b.r0, b.r1, yc, ldy, accumulate);
    }
  });
}

void rope_rows(float* qkv, int64_t n, int64_t H, int64_t Hkv, int64_t D, const float* cos, const float* sin) {
  const int64_t ldq = (H + 2 * Hkv) * D;
  parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t h = 0; h < H + Hkv; ++h) rope_head(qkv + i * ldq + h * D, cos + i * (D / 2), sin + i * (D / 2), D);
  });
}

void attention_rows(const float* qkv, int64_t n, const AttentionShape& shape, void* k_cache, void* v_cache,
                    bool cache_bf16, int64_t max_len, const int64_t* slot, const int64_t* pos, float* out) {
  const int64_t H = shape.n_head, Hkv = shape.n_head_kv, D = shape.head_dim;
  const int64_t ldq = (H + 2 * Hkv) * D;
  const int64_t elt = cache_bf16 ? 2 : 4;
  const bool vec = has_avx512f() && D % 16 == 0;
  // Cache row of (slot, kv head, position 0), in units of D elements.
  auto base_of = [&](int64_t i, int64_t kh) { return (slot[i] * Hkv + kh) * max_len; };
  // Visible keys of row i: [first, pos] (the window's start, or 0).
  auto first_key = [&](int64_t i) { return shape.window > 0 ? std::max<int64_t>(0, pos[i] - shape.window + 1) : 0; };

  // 1. Every row's k and v into the cache.
  parallel_for(0, n, 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i)
      for (int64_t kh = 0; kh < Hkv; ++kh) {
        const float* kn = qkv + i * ldq + (H + kh) * D;
        const float* vn = qkv + i * ldq + (H + Hkv + kh) * D;
        const int64_t at = (base_of(i, kh) + pos[i]) * D;
        if (cache_bf16) {
          uint16_t* kc = static_cast<uint16_t*>(k_cache) + at;
          uint16_t* vc = static_cast<uint16_t*>(v_cache) + at;
          for (int64_t d = 0; d < D; ++d) kc[d] = f32_to_bf16(kn[d]), vc[d] = f32_to_bf16(vn[d]);
        } else {
          std::memcpy(static_cast<float*>(k_cache) + at, kn, size_t(D) * 4);
          std::memcpy(static_cast<float*>(v_cache) + at, vn, size_t(D) * 4);
        }
      }
  });
  // 2. Each (row, kv head): its G query heads attend to the visible keys.
  parallel_for(0, n * Hkv, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> scores;
    std::vector<uint16_t> q16;
    for (int64_t w = lo; w < hi; ++w) {
      const int64_t i = w / Hkv, kh = w % Hkv;
      const int64_t k0 = first_key(i), L = pos[i] + 1 - k0;
      const int64_t at = (base_of(i, kh) + k0) * D;
      NextRows next;
      if (w + 1 < hi) {
        const int64_t i2 = (w + 1) / Hkv, k02 = first_key(i2);
        const int64_t at2 = (base_of(i2, (w + 1) % Hkv) + k02) * D * elt;
        next = {static_cast<const char*>(k_cache) + at2, static_cast<const char*>(v_cache) + at2,
                (pos[i2] + 1 - k02) * D * elt};
      }
      const float* qi = qkv + i * ldq;
      float* oi = out + i * H * D;
      if (cache_bf16) {
        const uint16_t* kc = static_cast<const uint16_t*>(k_cache) + at;
        const uint16_t* vc = static_cast<const uint16_t*>(v_cache) + at;
        if (vec) attend_one_avx<uint16_t>(qi, H, Hkv, D, kh, kc, vc, L, shape.scale, oi, scores, q16, next);
        else attend_one<uint16_t>(qi, H, Hkv, D, kh, kc, vc, L, shape.scale, oi, scores);
      } else {
        const float* kc = static_cast<const float*>(k_cache) + at;
        const float* vc = static_cast<const float*>(v_cache) + at;
        if (vec) attend_one_avx<float>(qi, H, Hkv, D, kh, kc, vc, L, shape.scale, oi, scores, q16, next);
        else attend_one<float>(qi, H, Hkv, D, kh, kc, vc, L, shape.scale, oi, scores);
      }
    }
  });
}

void rms_norm(const float* x, const float* w, int64_t M, int64_t n, double eps, float* y, int64_t ldx, int64_t ldy) {
  if (ldx == 0) ldx = n;
  if (ldy == 0) ldy = n;
  // Rows are independent; small batches stay on the calling thread (a parallel region costs more).
  parallel_for(0, M, std::max<int64_t>(1, 16384 / std::max<int64_t>(n, 1)), [&](int64_t lo, int64_t hi) {
    for (int64_t m = lo; m < hi; ++m) {
      const float* xr = x + m * ldx;
      float ss = 0;
      for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
      const float r = 1.0f / std::sqrt(ss / float(n) + float(eps));
      float* yr = y + m * ldy;
      for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * r);
    }
  });
}

namespace {

RETORT_AVX512 void silu_mul_avx(const float* gu, int64_t M, int64_t F, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int64_t m = 0; m < M; ++m) {
    const float* g = gu + m * 2 * F;
    const float* u = g + F;
    float* o = out + m * F;
    for (int64_t i = 0; i < F; i += 16) {
      const __mmask16 k = F - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (F - i)) - 1);
      const __m512 gv = _mm512_maskz_loadu_ps(k, g + i), uv = _mm512_maskz_loadu_ps(k, u + i);
      const __m512 e = exp512(_mm512_sub_ps(_mm512_setzero_ps(), gv));
      _mm512_mask_storeu_ps(o + i, k, _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), uv));
    }
  }
}

}  // namespace

namespace {

RETORT_AVX512 float row_max_avx(const float* x, int64_t n) {
  __m512 m = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __mmask16 nan = 0;
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 v = _mm512_mask_loadu_ps(_mm512_set1_ps(-std::numeric_limits<float>::infinity()), k, x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    m = _mm512_max_ps(m, v);
  }
  return nan ? std::numeric_limits<float>::quiet_NaN() : _mm512_reduce_max_ps(m);
}

// Sums 16 lanes as two float64 halves per vector: the float rounding of each exp is the only one.
RETORT_AVX512 double exp_shifted_avx(const float* x, int64_t n, float shift, float scale, float* w) {
  const __m512 sh = _mm512_set1_ps(shift), sc = _mm512_set1_ps(scale);
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + i);
    const __m512 e = _mm512_maskz_mov_ps(k, exp512(_mm512_mul_ps(_mm512_sub_ps(v, sh), sc)));
    if (w) _mm512_mask_storeu_ps(w + i, k, e);
    acc0 = _mm512_add_pd(acc0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
    acc1 = _mm512_add_pd(acc1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
}

}  // namespace

float row_max(const float* x, int64_t n) {
  if (has_avx512f()) return row_max_avx(x, n);
  float m = -std::numeric_limits<float>::infinity();
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(x[i])) return x[i];
    m = std::max(m, x[i]);
  }
  return m;
}

double exp_shifted(const float* x, int64_t n, float shift, float scale, float* w) {
  if (has_avx512f()) return exp_shifted_avx(x, n, shift, scale, w);
  double s = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float e = std::exp((x[i] - shift) * scale);
    if (w) w[i] = e;
    s += e;
  }
  return s;
}

void silu_mul(const float* gu, int64_t M, int64_t F, float* out) {
  parallel_for(0, M, std::max<int64_t>(1, 8192 / std::max<int64_t>(F, 1)), [&](int64_t lo, int64_t hi) {
    if (has_avx512f()) return silu_mul_avx(gu + lo * 2 * F, hi - lo, F, out + lo * F);
    for (int64_t m = lo; m < hi; ++m) {
      const float* g = gu + m * 2 * F;
      const float* u = g + F;
      float* o = out + m * F;
      for (int64_t i = 0; i < F; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
    }
  });
}

namespace {

constexpr float kGeluC = 0.7978845608028654f;  // sqrt(2 / pi)

// gelu_tanh(g) u with tanh(y) = 1 - 2 / (1 + e^{2y}) (exp512: ~2e-7 relative; e^{2y} = inf gives 1, 0 gives -1).
RETORT_AVX512 void gelu_tanh_mul_avx(const float* gu, int64_t M, int64_t F, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f), half = _mm512_set1_ps(0.5f);
  const __m512 c = _mm512_set1_ps(kGeluC), c3 = _mm512_set1_ps(0.044715f);
  for (int64_t m = 0; m < M; ++m) {
    const float* g = gu + m * 2 * F;
    const float* u = g + F;
    float* o = out + m * F;
    for (int64_t i = 0; i < F; i += 16) {
      const __mmask16 k = F - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (F - i)) - 1);
      const __m512 gv = _mm512_maskz_loadu_ps(k, g + i), uv = _mm512_maskz_loadu_ps(k, u + i);
      const __m512 y = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(c3, gv), _mm512_mul_ps(gv, gv), gv));
      const __m512 e = exp512(_mm512_mul_ps(two, y));
      const __m512 t = _mm512_sub_ps(one, _mm512_div_ps(two, _mm512_add_ps(one, e)));
      _mm512_mask_storeu_ps(o + i, k, _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(half, gv), _mm512_add_ps(one, t)), uv));
    }
  }
}

}  // namespace

void gelu_tanh_mul(const float* gu, int64_t M, int64_t F, float* out) {
  parallel_for(0, M, std::max<int64_t>(1, 8192 / std::max<int64_t>(F, 1)), [&](int64_t lo, int64_t hi) {
    if (has_avx512f()) return gelu_tanh_mul_avx(gu + lo * 2 * F, hi - lo, F, out + lo * F);
    for (int64_t m = lo; m < hi; ++m) {
      const float* g = gu + m * 2 * F;
      const float* u = g + F;
      float* o = out + m * F;
      for (int64_t i = 0; i < F; ++i)
        o[i] = 0.5f * g[i] * (1.0f + std::tanh(kGeluC * (g[i] + 0.044715f * g[i] * g[i] * g[i]))) * u[i];
    }
  });
}

bool weight_format_of_ggml(uint32_t ggml_type, WeightFormat* out) {
  for (WeightFormat f : {WeightFormat::kF32, WeightFormat::kBF16, WeightFormat::kQ8_0, WeightFormat::kQ4_0,
                         WeightFormat::kQ4_1, WeightFormat::kQ5_0, WeightFormat::kQ5_1, WeightFormat::kQ4_K,
                         WeightFormat::kQ5_K, WeightFormat::kQ6_K})
    if (uint32_t(ggml_type_of(f)) == ggml_type) {
      *out = f;
      return true;
    }
  return false;
}

void dequant_row(const WeightRef& w, int64_t r, int64_t K, float* out) {
  const uint8_t* src = static_cast<const uint8_t*>(w.data) + r * weight_row_bytes(w.format, K);
  switch (w.format) {
    case WeightFormat::kF32: std::memcpy(out, src, size_t(K) * 4); return;
    case WeightFormat::kBF16:
      for (int64_t k = 0; k < K; ++k) out[k] = bf16_to_f32(reinterpret_cast<const uint16_t*>(src)[k]);
      return;
    default: dequantize(ggml_type_of(w.format), src, out, K); return;  // the reference's arithmetic
  }
}

}  // namespace retort::cpu

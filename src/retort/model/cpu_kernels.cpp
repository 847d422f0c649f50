#include "retort/model/cpu_kernels.h"

#include <immintrin.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <vector>

#include <ATen/Parallel.h>

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

#define RETORT_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))
#define RETORT_AVX512BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")))

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
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NT; ++j) {
      const float v = _mm512_reduce_add_ps(s[i][j]);
      y[i * ldy + j] = acc ? y[i * ldy + j] + v : v;
    }
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
  for (int i = 0; i < MT; ++i)
    for (int j = 0; j < NT; ++j) {
      const float v = _mm512_reduce_add_ps(s[i][j]);
      y[i * ldy + j] = acc ? y[i * ldy + j] + v : v;
    }
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

// Rows [r0, r1) of one weight against all M rows of x (vector paths).
void block_bf16(const uint16_t* xb, int64_t M, int64_t K, const uint16_t* w, int64_t r0, int64_t r1, float* y,
                int64_t ldy, bool acc) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4)
    for (int64_t m = 0; m < M; m += 4)
      tile_dispatch_m<4>(int(std::min<int64_t>(4, M - m)), [&](auto mt) {
        tile_bf16<decltype(mt)::value, 4>(xb + m * K, K, w + r * K, K, y + m * ldy + r, ldy, acc);
      });
  for (; r < r1; ++r)
    for (int64_t m = 0; m < M; m += 4)
      tile_dispatch_m<1>(int(std::min<int64_t>(4, M - m)), [&](auto mt) {
        tile_bf16<decltype(mt)::value, 1>(xb + m * K, K, w + r * K, K, y + m * ldy + r, ldy, acc);
      });
}

void block_f32(const float* x, int64_t M, int64_t K, const float* w, int64_t r0, int64_t r1, float* y, int64_t ldy,
               bool acc) {
  int64_t r = r0;
  for (; r + 4 <= r1; r += 4)
    for (int64_t m = 0; m < M; m += 4)
      tile_dispatch_m<4>(int(std::min<int64_t>(4, M - m)), [&](auto mt) {
        tile_f32<decltype(mt)::value, 4>(x + m * K, K, w + r * K, K, y + m * ldy + r, ldy, acc);
      });
  for (; r < r1; ++r)
    for (int64_t m = 0; m < M; m += 4)
      tile_dispatch_m<1>(int(std::min<int64_t>(4, M - m)), [&](auto mt) {
        tile_f32<decltype(mt)::value, 1>(x + m * K, K, w + r * K, K, y + m * ldy + r, ldy, acc);
      });
}

// Portable fallback: float32 accumulation, x not rounded.
void block_scalar(const float* x, int64_t M, int64_t K, const WeightRef& wr, int64_t r0, int64_t r1, float* y,
                  int64_t ldy, bool acc) {
  std::vector<float> row(static_cast<size_t>(K));
  for (int64_t r = r0; r < r1; ++r) {
    const float* wrow;
    if (wr.bf16) {
      const uint16_t* src = static_cast<const uint16_t*>(wr.data) + r * K;
      for (int64_t k = 0; k < K; ++k) row[size_t(k)] = bf16_to_f32(src[k]);
      wrow = row.data();
    } else {
      wrow = static_cast<const float*>(wr.data) + r * K;
    }
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
// attention helpers: dot(q, k_row) and o += p * v_row over D elements.

RETORT_AVX512 inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }
RETORT_AVX512 inline __m512 load16(const uint16_t* p) {
  __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

inline float to_f(float v) { return v; }
inline float to_f(uint16_t v) { return bf16_to_f32(v); }

template <class T>
RETORT_AVX512 float dot_avx(const float* q, const T* k, int64_t D) {
  __m512 s = _mm512_setzero_ps();
  for (int64_t d = 0; d < D; d += 16) s = _mm512_fmadd_ps(_mm512_loadu_ps(q + d), load16(k + d), s);
  return _mm512_reduce_add_ps(s);
}

template <class T>
RETORT_AVX512 void axpy_avx(float p, const T* v, float* o, int64_t D) {
  const __m512 pv = _mm512_set1_ps(p);
  for (int64_t d = 0; d < D; d += 16)
    _mm512_storeu_ps(o + d, _mm512_fmadd_ps(pv, load16(v + d), _mm512_loadu_ps(o + d)));
}

template <class T>
void attend_one(const float* qkv_b, int64_t H, int64_t Hkv, int64_t D, int64_t kh, const T* kc, const T* vc,
                int64_t L, float* out_b, bool vec, std::vector<float>& scores) {
  const int64_t G = H / Hkv;
  const float scale = float(1.0 / std::sqrt(double(D)));
  scores.resize(size_t(L));
  for (int64_t g = 0; g < G; ++g) {
    const int64_t h = kh * G + g;
    const float* q = qkv_b + h * D;
    float mx = -INFINITY;
    for (int64_t j = 0; j < L; ++j) {
      float s;
      if (vec) {
        s = dot_avx(q, kc + j * D, D);
      } else {
        s = 0;
        for (int64_t d = 0; d < D; ++d) s += q[d] * to_f(kc[j * D + d]);
      }
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
      if (vec) {
        axpy_avx(p, vc + j * D, o, D);
      } else {
        for (int64_t d = 0; d < D; ++d) o[d] += p * to_f(vc[j * D + d]);
      }
    }
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

void matmul_wt(const float* x, int64_t M, int64_t K, const WeightRef* w, int n_w, float* y, int64_t ldy,
               bool accumulate) {
  if (M <= 0 || K <= 0) return;
  const bool bf16_vec = has_avx512_bf16();
  const bool f32_vec = has_avx512f();
  bool any_bf16 = false;
  for (int i = 0; i < n_w; ++i) any_bf16 = any_bf16 || w[i].bf16;
  std::vector<uint16_t> xb;
  if (any_bf16 && bf16_vec) {
    xb.resize(size_t(M * K));
    for (int64_t i = 0; i < M * K; ++i) xb[size_t(i)] = f32_to_bf16(x[i]);
  }
  // Work items: blocks of weight rows, never straddling two matrices.
  struct Block {
    int seg;
    int64_t r0, r1, col0;
  };
  constexpr int64_t kRows = 32;
  std::vector<Block> blocks;
  int64_t col = 0;
  for (int i = 0; i < n_w; ++i) {
    for (int64_t r = 0; r < w[i].rows; r += kRows) blocks.push_back({i, r, std::min(w[i].rows, r + kRows), col});
    col += w[i].rows;
  }
  at::parallel_for(0, int64_t(blocks.size()), 1, [&](int64_t lo, int64_t hi) {
    for (int64_t bi = lo; bi < hi; ++bi) {
      const Block& b = blocks[size_t(bi)];
      const WeightRef& wr = w[b.seg];
      float* yc = y + b.col0;  // column 0 of this matrix's outputs
      if (wr.bf16 && bf16_vec)
        block_bf16(xb.data(), M, K, static_cast<const uint16_t*>(wr.data), b.r0, b.r1, yc, ldy, accumulate);
      else if (!wr.bf16 && f32_vec)
        block_f32(x, M, K, static_cast<const float*>(wr.data), b.r0, b.r1, yc, ldy, accumulate);
      else
        block_scalar(x, M, K, wr, b.r0, b.r1, yc, ldy, accumulate);
    }
  });
}

void attention_decode(float* qkv, int64_t B, int64_t H, int64_t Hkv, int64_t D, const float* cos, const float* sin,
                      void* k_cache, void* v_cache, bool cache_bf16, int64_t max_len, const int64_t* slot,
                      const int64_t* pos, float* out) {
  const int64_t ldq = (H + 2 * Hkv) * D, G = H / Hkv;
  const bool vec = has_avx512f() && D % 16 == 0;
  at::parallel_for(0, B * Hkv, 1, [&](int64_t lo, int64_t hi) {
    std::vector<float> scores;
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t b = i / Hkv, kh = i % Hkv;
      float* qb = qkv + b * ldq;
      const float* c = cos + b * (D / 2);
      const float* s = sin + b * (D / 2);
      for (int64_t g = 0; g < G; ++g) rope_head(qb + (kh * G + g) * D, c, s, D);
      float* kn = qb + H * D + kh * D;
      const float* vn = qb + (H + Hkv) * D + kh * D;
      rope_head(kn, c, s, D);
      const int64_t base = (slot[b] * Hkv + kh) * max_len;  // row of (slot, kv head, position 0)
      const int64_t L = pos[b] + 1;
      if (cache_bf16) {
        uint16_t* kc = static_cast<uint16_t*>(k_cache) + base * D;
        uint16_t* vc = static_cast<uint16_t*>(v_cache) + base * D;
        for (int64_t d = 0; d < D; ++d) {
          kc[pos[b] * D + d] = f32_to_bf16(kn[d]);
          vc[pos[b] * D + d] = f32_to_bf16(vn[d]);
        }
        attend_one<uint16_t>(qb, H, Hkv, D, kh, kc, vc, L, out + b * H * D, vec, scores);
      } else {
        float* kc = static_cast<float*>(k_cache) + base * D;
        float* vc = static_cast<float*>(v_cache) + base * D;
        std::memcpy(kc + pos[b] * D, kn, size_t(D) * 4);
        std::memcpy(vc + pos[b] * D, vn, size_t(D) * 4);
        attend_one<float>(qb, H, Hkv, D, kh, kc, vc, L, out + b * H * D, vec, scores);
      }
    }
  });
}

void rms_norm(const float* x, const float* w, int64_t M, int64_t n, double eps, float* y) {
  for (int64_t m = 0; m < M; ++m) {
    const float* xr = x + m * n;
    float ss = 0;
    for (int64_t i = 0; i < n; ++i) ss += xr[i] * xr[i];
    const float r = 1.0f / std::sqrt(ss / float(n) + float(eps));
    float* yr = y + m * n;
    for (int64_t i = 0; i < n; ++i) yr[i] = w[i] * (xr[i] * r);
  }
}

void silu_mul(const float* gu, int64_t M, int64_t F, float* out) {
  for (int64_t m = 0; m < M; ++m) {
    const float* g = gu + m * 2 * F;
    const float* u = g + F;
    float* o = out + m * F;
    for (int64_t i = 0; i < F; ++i) o[i] = g[i] / (1.0f + std::exp(-g[i])) * u[i];
  }
}

}  // namespace retort::cpu

#include "retort/io/ggml_quants.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "retort/io/half.h"
#include "retort/util/error.h"

// The reference (gguf.quants, numpy) rounds every product and sum separately: y = (d*q) + m.
// A fused multiply-add would round once and differ in the last bit, so contraction stays off.
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif

static_assert(std::endian::native == std::endian::little, "retort reads GGUF data in place: little-endian hosts only");

namespace retort {
namespace {

constexpr int64_t QK_K = 256;  // elements per k-quant super-block

struct TypeInfo {
  uint32_t id;
  const char* name;
  int64_t block_elems;
  int64_t block_bytes;
  bool supported;  // retort can dequantize it
};

// Sizes from ggml-common.h (block_q8_1 is 2 fp16 + 32 int8 = 36 bytes there).
constexpr TypeInfo kTypes[] = {
    {0, "F32", 1, 4, true},
    {1, "F16", 1, 2, true},
    {2, "Q4_0", 32, 18, true},
    {3, "Q4_1", 32, 20, true},
    {6, "Q5_0", 32, 22, true},
    {7, "Q5_1", 32, 24, true},
    {8, "Q8_0", 32, 34, true},
    {9, "Q8_1", 32, 36, false},
    {10, "Q2_K", 256, 84, true},
    {11, "Q3_K", 256, 110, true},
    {12, "Q4_K", 256, 144, true},
    {13, "Q5_K", 256, 176, true},
    {14, "Q6_K", 256, 210, true},
    {15, "Q8_K", 256, 292, true},
    {16, "IQ2_XXS", 256, 66, false},
    {17, "IQ2_XS", 256, 74, false},
    {18, "IQ3_XXS", 256, 98, false},
    {19, "IQ1_S", 256, 50, false},
    {20, "IQ4_NL", 32, 18, false},
    {21, "IQ3_S", 256, 110, false},
    {22, "IQ2_S", 256, 82, false},
    {23, "IQ4_XS", 256, 136, false},
    {24, "I8", 1, 1, false},
    {25, "I16", 1, 2, false},
    {26, "I32", 1, 4, false},
    {27, "I64", 1, 8, false},
    {28, "F64", 1, 8, false},
    {29, "IQ1_M", 256, 56, false},
    {30, "BF16", 1, 2, true},
    {34, "TQ1_0", 256, 54, false},
    {35, "TQ2_0", 256, 66, false},
    {39, "MXFP4", 32, 17, false},
};

const TypeInfo* find_type(uint32_t type) {
  for (const TypeInfo& t : kTypes)
    if (t.id == type) return &t;
  return nullptr;
}

inline uint16_t load_u16(const uint8_t* p) {
  uint16_t v;
  std::memcpy(&v, p, 2);
  return v;
}
inline uint32_t load_u32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline float load_f16(const uint8_t* p) { return fp16_to_f32(load_u16(p)); }

// Q4_0, 18 bytes: fp16 d | qs[16]. y[j] = (lo(qs[j]) - 8)*d, y[j+16] = (hi(qs[j]) - 8)*d.
void block_q4_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint8_t* qs = b + 2;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>((qs[j] & 0x0F) - 8);
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) - 8);
  }
}

// Q4_1, 20 bytes: fp16 d | fp16 m | qs[16]. y = q*d + m.
void block_q4_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint8_t* qs = b + 4;
  for (int j = 0; j < 16; ++j) {
    y[j] = d * static_cast<float>(qs[j] & 0x0F) + m;
    y[j + 16] = d * static_cast<float>(qs[j] >> 4) + m;
  }
}

// Q5_0, 22 bytes: fp16 d | u32 qh (bit i = 5th bit of element i) | qs[16]. y = (q - 16)*d.
void block_q5_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const uint32_t qh = load_u32(b + 2);
  const uint8_t* qs = b + 6;
  for (int j = 0; j < 16; ++j) {
    const int h0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int h1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    y[j] = d * static_cast<float>(((qs[j] & 0x0F) | h0) - 16);
    y[j + 16] = d * static_cast<float>(((qs[j] >> 4) | h1) - 16);
  }
}

// Q5_1, 24 bytes: fp16 d | fp16 m | u32 qh | qs[16]. y = q*d + m.
void block_q5_1(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float m = load_f16(b + 2);
  const uint32_t qh = load_u32(b + 4);
  const uint8_t* qs = b + 8;
  for (int j = 0; j < 16; ++j) {
    const int h0 = static_cast<int>((qh >> j) & 1u) << 4;
    const int h1 = static_cast<int>((qh >> (j + 16)) & 1u) << 4;
    y[j] = d * static_cast<float>((qs[j] & 0x0F) | h0) + m;
    y[j + 16] = d * static_cast<float>((qs[j] >> 4) | h1) + m;
  }
}

// Q8_0, 34 bytes: fp16 d | int8 qs[32]. y = q*d.
void block_q8_0(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 2);
  for (int j = 0; j < 32; ++j) y[j] = d * static_cast<float>(qs[j]);
}

// Q2_K, 84 bytes: scales[16] (lo nibble scale, hi nibble min) | qs[64] | fp16 d | fp16 dmin.
// Element e = 128*h + 32*s + l (h<2, s<4, l<32) is bits 2s..2s+1 of qs[32h + l];
// its 16-element group e/16 gives y = (d*scale)*q - (dmin*min).
void block_q2_k(const uint8_t* b, float* y) {
  const uint8_t* scales = b;
  const uint8_t* qs = b + 16;
  const float d = load_f16(b + 80);
  const float dmin = load_f16(b + 82);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      for (int g = 0; g < 2; ++g) {
        const uint8_t sc = scales[h * 8 + s * 2 + g];
        const float dl = d * static_cast<float>(sc & 0x0F);
        const float ml = dmin * static_cast<float>(sc >> 4);
        float* out = y + h * 128 + s * 32 + g * 16;
        const uint8_t* q = qs + h * 32 + g * 16;
        for (int l = 0; l < 16; ++l) out[l] = dl * static_cast<float>((q[l] >> (2 * s)) & 3) - ml;
      }
    }
  }
}

// Q3_K, 110 bytes: hmask[32] | qs[64] | scales[12] (16 packed 6-bit) | fp16 d.
// Element e = 128*h + 32*s + l: low 2 bits from qs[32h + l] >> 2s, high bit from
// hmask[l] >> (4h + s); q = low - (high ? 0 : 4); y = (d*(scale - 32))*q.
void block_q3_k(const uint8_t* b, float* y) {
  const uint8_t* hmask = b;
  const uint8_t* qs = b + 32;
  const uint8_t* sc = b + 96;
  const float d = load_f16(b + 108);
  float dl[16];
  for (int i = 0; i < 16; ++i) {
    const int lo = (sc[i % 8] >> (4 * (i / 8))) & 0x0F;
    const int hi = (sc[8 + i % 4] >> (2 * (i / 4))) & 0x03;
    dl[i] = d * static_cast<float>((lo | (hi << 4)) - 32);
  }
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      const int bit = 4 * h + s;
      for (int l = 0; l < 32; ++l) {
        const int e = h * 128 + s * 32 + l;
        const int low = (qs[h * 32 + l] >> (2 * s)) & 3;
        const int high = (hmask[l] >> bit) & 1;
        y[e] = dl[e / 16] * static_cast<float>(low - (high ? 0 : 4));
      }
    }
  }
}

// 8 sub-block scales and mins, 6 bits each, packed in 12 bytes (Q4_K, Q5_K):
// j < 4: sc = s[j] & 63, min = s[j+4] & 63;
// j >= 4: sc = (s[j+4] & 15) | ((s[j-4] >> 6) << 4), min = (s[j+4] >> 4) | ((s[j] >> 6) << 4).
void k_scale_min(const uint8_t* s, int j, int* sc, int* mn) {
  if (j < 4) {
    *sc = s[j] & 63;
    *mn = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4);
    *mn = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

// Q4_K, 144 bytes: fp16 d | fp16 dmin | scales[12] | qs[128].
// Sub-block sb = 2c + k (c<4, k<2) of 32 elements: q = (qs[32c + l] >> 4k) & 15,
// y = (d*sc)*q - (dmin*min).
void block_q4_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qs = b + 16;
  for (int sb = 0; sb < 8; ++sb) {
    int sc, mn;
    k_scale_min(scales, sb, &sc, &mn);
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + (sb / 2) * 32;
    const int shift = 4 * (sb % 2);
    for (int l = 0; l < 32; ++l) y[sb * 32 + l] = dl * static_cast<float>((q[l] >> shift) & 0x0F) - ml;
  }
}

// Q5_K, 176 bytes: fp16 d | fp16 dmin | scales[12] | qh[32] | qs[128].
// As Q4_K, plus a 5th bit (qh[l] >> sb) & 1 for element l of sub-block sb.
void block_q5_k(const uint8_t* b, float* y) {
  const float d = load_f16(b);
  const float dmin = load_f16(b + 2);
  const uint8_t* scales = b + 4;
  const uint8_t* qh = b + 16;
  const uint8_t* qs = b + 48;
  for (int sb = 0; sb < 8; ++sb) {
    int sc, mn;
    k_scale_min(scales, sb, &sc, &mn);
    const float dl = d * static_cast<float>(sc);
    const float ml = dmin * static_cast<float>(mn);
    const uint8_t* q = qs + (sb / 2) * 32;
    const int shift = 4 * (sb % 2);
    for (int l = 0; l < 32; ++l) {
      const int v = ((q[l] >> shift) & 0x0F) | (((qh[l] >> sb) & 1) << 4);
      y[sb * 32 + l] = dl * static_cast<float>(v) - ml;
    }
  }
}

// Q6_K, 210 bytes: ql[128] | qh[64] | int8 scales[16] | fp16 d.
// Element e = 128*h + 32*s + l (h<2, s<4, l<32): low 4 bits (ql[64h + 32*(s%2) + l] >> 4*(s/2)),
// high 2 bits (qh[32h + l] >> 2s); q = v - 32; y = (d*scale[e/16])*q.
void block_q6_k(const uint8_t* b, float* y) {
  const uint8_t* ql = b;
  const uint8_t* qh = b + 128;
  const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_f16(b + 208);
  float dl[16];
  for (int i = 0; i < 16; ++i) dl[i] = d * static_cast<float>(scales[i]);
  for (int h = 0; h < 2; ++h) {
    for (int s = 0; s < 4; ++s) {
      const uint8_t* lo = ql + 64 * h + 32 * (s % 2);
      const int lo_shift = 4 * (s / 2);
      for (int l = 0; l < 32; ++l) {
        const int e = h * 128 + s * 32 + l;
        const int v = ((lo[l] >> lo_shift) & 0x0F) | (((qh[32 * h + l] >> (2 * s)) & 3) << 4);
        y[e] = dl[e / 16] * static_cast<float>(v - 32);
      }
    }
  }
}

// Q8_K, 292 bytes: f32 d | int8 qs[256] | int16 bsums[16] (sums of 16-groups, unused here). y = d*q.
void block_q8_k(const uint8_t* b, float* y) {
  float d;
  std::memcpy(&d, b, 4);
  const int8_t* qs = reinterpret_cast<const int8_t*>(b + 4);
  for (int j = 0; j < QK_K; ++j) y[j] = d * static_cast<float>(qs[j]);
}

// ---------------------------------------------------------------------------------------------
// Quantizers. Q4_0 and Q5_0 as gguf.quants (numpy) and ggml's quantize_row_q{4,5}_0_ref; Q4_K and
// Q6_K as ggml's quantize_row_q{4,6}_K_ref (what llama-quantize runs without an importance matrix),
// the gguf package having no K-quant quantizer. Every float operation is the reference's, in its
// order (sums accumulated left to right, a*b*c as (a*b)*c, no fused multiply-add), so the bytes match.

void store_f16(uint8_t* p, float v) {
  const uint16_t h = f32_to_fp16(v);
  std::memcpy(p, &h, 2);
}

// Round to nearest, ties to even, for |v| < 2^22: adding 1.5 * 2^23 leaves the integer in the low
// mantissa bits (ggml's nearest_int; the float adder does the rounding).
inline int nearest_int(float v) {
  const float biased = v + 12582912.0f;
  return static_cast<int>(std::bit_cast<uint32_t>(biased) & 0x007fffffu) - 0x00400000;
}

// The element of largest magnitude, sign kept (the first such one).
float signed_absmax(const float* x, int n) {
  float amax = 0.0f, max = 0.0f;
  for (int j = 0; j < n; ++j)
    if (amax < std::fabs(x[j])) amax = std::fabs(x[j]), max = x[j];
  return max;
}

// Q4_0, per 32 values: d = absmax(signed) / -8, q = min(15, trunc(x/d + 8.5)); lo nibbles hold 0-15.
void quantize_block_q4_0(const float* x, uint8_t* out) {
  const float d = signed_absmax(x, 32) / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_f16(out, d);
  for (int j = 0; j < 16; ++j) {
    const int lo = std::min(15, static_cast<int>(static_cast<int8_t>(x[j] * id + 8.5f)));
    const int hi = std::min(15, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 8.5f)));
    out[2 + j] = static_cast<uint8_t>(lo | (hi << 4));
  }
}

// Q5_0, per 32 values: d = absmax(signed) / -16, q = min(31, trunc(x/d + 16.5)); 5th bits in a u32.
void quantize_block_q5_0(const float* x, uint8_t* out) {
  const float d = signed_absmax(x, 32) / -16.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  store_f16(out, d);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int lo = std::min(31, static_cast<int>(static_cast<int8_t>(x[j] * id + 16.5f)));
    const int hi = std::min(31, static_cast<int>(static_cast<int8_t>(x[j + 16] * id + 16.5f)));
    out[6 + j] = static_cast<uint8_t>((lo & 0x0F) | ((hi & 0x0F) << 4));
    qh |= uint32_t(lo >> 4) << j;
    qh |= uint32_t(hi >> 4) << (j + 16);
  }
  std::memcpy(out + 2, &qh, 4);
}

// Fit x[i] ~ scale * L[i] - the_min with L in 0..nmax, minimising sum w*(err)^2 (ggml's make_qkx2_quants
// with use_mad = false): start from the min/max grid, then try nstep + 1 stretched grids
// (nmax + rmin + is*rdelta steps over the range), each refined by weighted least squares for scale and min
// (min clamped to <= 0), keeping the best. Returns the scale; *the_min = -min >= 0.
float fit_scale_min(int n, int nmax, const float* x, const float* w, uint8_t* L, float* the_min, float rmin, float rdelta,
                    int nstep) {
  float min = x[0], max = x[0];
  float sum_w = w[0];
  float sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < min) min = x[i];
    if (x[i] > max) max = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (min > 0) min = 0;
  if (max == min) {
    for (int i = 0; i < n; ++i) L[i] = 0;
    *the_min = -min;
    return 0.0f;
  }
  float iscale = static_cast<float>(nmax) / (max - min);
  float scale = 1.0f / iscale;
  float best_error = 0;
  for (int i = 0; i < n; ++i) {
    L[i] = static_cast<uint8_t>(std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax));
    const float diff = scale * static_cast<float>(L[i]) + min - x[i];
    best_error += w[i] * (diff * diff);
  }
  uint8_t trial[32];
  for (int is = 0; is <= nstep; ++is) {
    iscale = (rmin + rdelta * static_cast<float>(is) + static_cast<float>(nmax)) / (max - min);
    float sum_l = 0, sum_l2 = 0, sum_xl = 0;
    for (int i = 0; i < n; ++i) {
      const int l = std::clamp(nearest_int(iscale * (x[i] - min)), 0, nmax);
      trial[i] = static_cast<uint8_t>(l);
      const float fl = static_cast<float>(l);
      sum_l += w[i] * fl;
      sum_l2 += w[i] * fl * fl;
      sum_xl += w[i] * fl * x[i];
    }
    const float D = sum_w * sum_l2 - sum_l * sum_l;
    if (D > 0) {
      float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
      float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
      if (this_min > 0) {
        this_min = 0;
        this_scale = sum_xl / sum_l2;
      }
      float err = 0;
      for (int i = 0; i < n; ++i) {
        const float diff = this_scale * static_cast<float>(trial[i]) + this_min - x[i];
        err += w[i] * (diff * diff);
      }
      if (err < best_error) {
        std::memcpy(L, trial, size_t(n));
        best_error = err;
        scale = this_scale;
        min = this_min;
      }
    }
  }
  *the_min = -min;
  return scale;
}

// Q4_K, per 256 values: 8 sub-blocks of 32, each fitted as scale * q - min (q in 0..15) with weights
// rms(sub-block) + |x|; scales and mins quantized to 6 bits against d = max scale / 63, dmin = max min / 63
// (both fp16); then every q re-rounded against the stored scale and min.
void quantize_block_q4_k(const float* x, uint8_t* out) {
  uint8_t L[QK_K];
  float weights[32], scales[8], mins[8];
  float max_scale = 0, max_min = 0;
  for (int j = 0; j < 8; ++j) {
    const float* xs = x + 32 * j;
    float sum_x2 = 0;
    for (int l = 0; l < 32; ++l) sum_x2 += xs[l] * xs[l];
    const float av_x = std::sqrt(sum_x2 / 32.0f);
    for (int l = 0; l < 32; ++l) weights[l] = av_x + std::fabs(xs[l]);
    scales[j] = fit_scale_min(32, 15, xs, weights, L + 32 * j, &mins[j], -1.0f, 0.1f, 20);
    if (scales[j] > max_scale) max_scale = scales[j];
    if (mins[j] > max_min) max_min = mins[j];
  }
  const float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
  const float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
  uint8_t* sc = out + 4;  // 12 bytes: see k_scale_min
  std::memset(sc, 0, 12);
  for (int j = 0; j < 8; ++j) {
    // ggml stores nearest_int into a uint8_t (wrapping) before clamping to 63.
    const uint8_t ls = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_scale * scales[j])));
    const uint8_t lm = std::min<uint8_t>(63, static_cast<uint8_t>(nearest_int(inv_min * mins[j])));
    if (j < 4) {
      sc[j] = ls;
      sc[j + 4] = lm;
    } else {
      sc[j + 4] = static_cast<uint8_t>((ls & 0x0F) | ((lm & 0x0F) << 4));
      sc[j - 4] |= static_cast<uint8_t>((ls >> 4) << 6);
      sc[j] |= static_cast<uint8_t>((lm >> 4) << 6);
    }
  }
  store_f16(out, max_scale / 63.0f);
  store_f16(out + 2, max_min / 63.0f);
  const float d_all = load_f16(out), dmin_all = load_f16(out + 2);
  for (int j = 0; j < 8; ++j) {
    int s, m;
    k_scale_min(sc, j, &s, &m);
    const float d = d_all * static_cast<float>(s);
    if (d == 0.0f) continue;  // keeps the fit's q, as ggml does
    const float dm = dmin_all * static_cast<float>(m);
    for (int l = 0; l < 32; ++l)
      L[32 * j + l] = static_cast<uint8_t>(std::clamp(nearest_int((x[32 * j + l] + dm) / d), 0, 15));
  }
  // Byte 32c + l: sub-block 2c in the low nibble, 2c + 1 in the high one.
  uint8_t* qs = out + 16;
  for (int c = 0; c < 4; ++c)
    for (int l = 0; l < 32; ++l) qs[32 * c + l] = static_cast<uint8_t>(L[64 * c + l] | (L[64 * c + 32 + l] << 4));
}

// Symmetric fit of x ~ scale * (L - nmax), L - nmax in -nmax..nmax-1, weights x^2 (ggml's make_qx_quants,
// rmse_type 1): scale from the signed max, then 18 nearby grids (nmax +- 0.1 k), each least-squares scaled,
// keeping the one with the largest sumlx^2 / suml2 (the least weighted error).
float fit_scale_symmetric(int n, int nmax, const float* x, int8_t* L) {
  float amax = 0, max = 0;
  for (int i = 0; i < n; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  if (amax < 1e-15f) {  // ggml's GROUP_MAX_EPS: all zero
    for (int i = 0; i < n; ++i) L[i] = 0;
    return 0.0f;
  }
  const float fnmax = static_cast<float>(nmax);
  auto sums = [&](float iscale, float* sumlx, float* suml2) {
    *sumlx = *suml2 = 0;
    for (int i = 0; i < n; ++i) {
      const float l = static_cast<float>(std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
      const float w = x[i] * x[i];
      *sumlx += w * x[i] * l;
      *suml2 += w * l * l;
    }
  };
  auto assign = [&](float iscale) {
    for (int i = 0; i < n; ++i) L[i] = static_cast<int8_t>(nmax + std::clamp(nearest_int(iscale * x[i]), -nmax, nmax - 1));
  };
  float iscale = -fnmax / max;
  float sumlx, suml2;
  sums(iscale, &sumlx, &suml2);
  assign(iscale);
  float scale = suml2 != 0.0f ? sumlx / suml2 : 0.0f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    iscale = -(fnmax + 0.1f * static_cast<float>(is)) / max;
    sums(iscale, &sumlx, &suml2);
    if (suml2 > 0 && sumlx * sumlx > best * suml2) {
      assign(iscale);
      scale = sumlx / suml2;
      best = scale * sumlx;
    }
  }
  return scale;
}

// Q6_K, per 256 values: 16 sub-blocks of 16 fitted symmetrically (q in -32..31); the sub-block scales as
// int8 against d = max|scale| / 128 (fp16, sign of the largest); then every q re-rounded against d * scale.
void quantize_block_q6_k(const float* x, uint8_t* out) {
  int8_t L[QK_K];
  float scales[16];
  float max_scale = 0, max_abs_scale = 0;
  for (int ib = 0; ib < 16; ++ib) {
    scales[ib] = fit_scale_symmetric(16, 32, x + 16 * ib, L + 16 * ib);
    if (std::fabs(scales[ib]) > max_abs_scale) max_abs_scale = std::fabs(scales[ib]), max_scale = scales[ib];
  }
  std::memset(out, 0, 210);
  if (max_abs_scale < 1e-15f) return;  // all zero, d = 0
  int8_t* sc = reinterpret_cast<int8_t*>(out + 192);
  const float iscale = -128.0f / max_scale;
  store_f16(out + 208, 1.0f / iscale);
  for (int ib = 0; ib < 16; ++ib) sc[ib] = static_cast<int8_t>(std::min(127, nearest_int(iscale * scales[ib])));
  const float d_all = load_f16(out + 208);
  for (int j = 0; j < 16; ++j) {
    const float d = d_all * static_cast<float>(sc[j]);
    if (d == 0.0f) continue;  // keeps the fit's q, as ggml does
    for (int i = 0; i < 16; ++i)
      L[16 * j + i] = static_cast<int8_t>(32 + std::clamp(nearest_int(x[16 * j + i] / d), -32, 31));
  }
  // Element e = 128h + 32s + l (see block_q6_k): low nibble in ql[64h + 32(s%2) + l] at bit 4(s/2),
  // high 2 bits in qh[32h + l] at bit 2s.
  uint8_t* ql = out;
  uint8_t* qh = out + 128;
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const int8_t* q = L + 128 * h + l;
      ql[64 * h + l] = static_cast<uint8_t>((q[0] & 0x0F) | ((q[64] & 0x0F) << 4));
      ql[64 * h + 32 + l] = static_cast<uint8_t>((q[32] & 0x0F) | ((q[96] & 0x0F) << 4));
      qh[32 * h + l] = static_cast<uint8_t>((q[0] >> 4) | ((q[32] >> 4) << 2) | ((q[64] >> 4) << 4) | ((q[96] >> 4) << 6));
    }
}

template <void (*Block)(const uint8_t*, float*)>
void run_blocks(const uint8_t* src, float* dst, int64_t n_blocks, int64_t block_elems, int64_t block_bytes) {
  for (int64_t i = 0; i < n_blocks; ++i) Block(src + i * block_bytes, dst + i * block_elems);
}

}  // namespace

std::string ggml_type_name(uint32_t type) {
  if (const TypeInfo* t = find_type(type)) return t->name;
  return cat("unknown(", type, ")");
}

bool ggml_type_layout(uint32_t type, int64_t* block_elems, int64_t* block_bytes) {
  const TypeInfo* t = find_type(type);
  if (!t) return false;
  if (block_elems) *block_elems = t->block_elems;
  if (block_bytes) *block_bytes = t->block_bytes;
  return true;
}

bool ggml_type_block(uint32_t type, int64_t* block_elems, int64_t* block_bytes) {
  const TypeInfo* t = find_type(type);
  if (!t || !t->supported) return false;
  if (block_elems) *block_elems = t->block_elems;
  if (block_bytes) *block_bytes = t->block_bytes;
  return true;
}

bool ggml_type_supported(uint32_t type) {
  const TypeInfo* t = find_type(type);
  return t && t->supported;
}

void dequantize(GgmlType type, const uint8_t* src, float* dst, int64_t n_elems) {
  const uint32_t id = static_cast<uint32_t>(type);
  int64_t be = 0, bb = 0;
  check(ggml_type_block(id, &be, &bb), "dequantize: type ", ggml_type_name(id), " is not supported");
  check(n_elems >= 0 && n_elems % be == 0, "dequantize: ", n_elems, " elements is not a whole number of ",
        ggml_type_name(id), " blocks of ", be);
  const int64_t nb = n_elems / be;
  switch (type) {
    case GgmlType::F32:
      if (n_elems > 0) std::memcpy(dst, src, static_cast<size_t>(n_elems) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n_elems; ++i) dst[i] = load_f16(src + 2 * i);
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n_elems; ++i) dst[i] = bf16_to_f32(load_u16(src + 2 * i));
      return;
    case GgmlType::Q4_0: return run_blocks<block_q4_0>(src, dst, nb, be, bb);
    case GgmlType::Q4_1: return run_blocks<block_q4_1>(src, dst, nb, be, bb);
    case GgmlType::Q5_0: return run_blocks<block_q5_0>(src, dst, nb, be, bb);
    case GgmlType::Q5_1: return run_blocks<block_q5_1>(src, dst, nb, be, bb);
    case GgmlType::Q8_0: return run_blocks<block_q8_0>(src, dst, nb, be, bb);
    case GgmlType::Q2_K: return run_blocks<block_q2_k>(src, dst, nb, be, bb);
    case GgmlType::Q3_K: return run_blocks<block_q3_k>(src, dst, nb, be, bb);
    case GgmlType::Q4_K: return run_blocks<block_q4_k>(src, dst, nb, be, bb);
    case GgmlType::Q5_K: return run_blocks<block_q5_k>(src, dst, nb, be, bb);
    case GgmlType::Q6_K: return run_blocks<block_q6_k>(src, dst, nb, be, bb);
    case GgmlType::Q8_K: return run_blocks<block_q8_k>(src, dst, nb, be, bb);
    default: break;
  }
  fail("dequantize: type ", ggml_type_name(id), " is not supported");
}

int64_t ggml_row_bytes(GgmlType type, int64_t n_elems) {
  const uint32_t id = static_cast<uint32_t>(type);
  int64_t be = 0, bb = 0;
  check(ggml_type_layout(id, &be, &bb), "ggml type ", ggml_type_name(id), " is unknown");
  check(n_elems >= 0 && n_elems % be == 0, ggml_type_name(id), ": ", n_elems,
        " elements is not a whole number of blocks of ", be);
  return n_elems / be * bb;
}

void quantize(GgmlType type, const float* src, uint8_t* dst, int64_t n_elems) {
  const uint32_t id = static_cast<uint32_t>(type);
  const int64_t n_bytes = ggml_row_bytes(type, n_elems);
  (void)n_bytes;
  switch (type) {
    case GgmlType::F32:
      if (n_elems > 0) std::memcpy(dst, src, static_cast<size_t>(n_elems) * 4);
      return;
    case GgmlType::F16:
      for (int64_t i = 0; i < n_elems; ++i) {
        uint16_t h = f32_to_fp16(src[i]);
        std::memcpy(dst + 2 * i, &h, 2);
      }
      return;
    case GgmlType::BF16:
      for (int64_t i = 0; i < n_elems; ++i) {
        // gguf.quants.BF16: NaN -> quiet NaN (top half | 0x40); else round to nearest even.
        uint32_t n = std::bit_cast<uint32_t>(src[i]);
        if ((n & 0x7fffffffu) > 0x7f800000u) n = (n & 0xffff0000u) | (64u << 16);
        const uint64_t r = (uint64_t(n) + (0x7fffu + ((n >> 16) & 1u))) >> 16;
        uint16_t b = static_cast<uint16_t>(r);
        std::memcpy(dst + 2 * i, &b, 2);
      }
      return;
    case GgmlType::Q8_0:
      // block_q8_0: fp16 d, int8 qs[32]. Every step is one float32 operation, as numpy does.
      for (int64_t b = 0; b < n_elems / 32; ++b) {
        const float* x = src + 32 * b;
        uint8_t* out = dst + 34 * b;
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float inv = d == 0.0f ? 0.0f : 1.0f / d;
        const uint16_t dh = f32_to_fp16(d);
        std::memcpy(out, &dh, 2);
        for (int j = 0; j < 32; ++j) out[2 + j] = static_cast<uint8_t>(static_cast<int8_t>(std::round(x[j] * inv)));
      }
      return;
    case GgmlType::Q4_0:
      for (int64_t b = 0; b < n_elems / 32; ++b) quantize_block_q4_0(src + 32 * b, dst + 18 * b);
      return;
    case GgmlType::Q5_0:
      for (int64_t b = 0; b < n_elems / 32; ++b) quantize_block_q5_0(src + 32 * b, dst + 22 * b);
      return;
    case GgmlType::Q4_K:
      for (int64_t b = 0; b < n_elems / QK_K; ++b) quantize_block_q4_k(src + QK_K * b, dst + 144 * b);
      return;
    case GgmlType::Q6_K:
      for (int64_t b = 0; b < n_elems / QK_K; ++b) quantize_block_q6_k(src + QK_K * b, dst + 210 * b);
      return;
    default: break;
  }
  fail("quantize: type ", ggml_type_name(id), " is not supported (supported: F32, F16, BF16, Q8_0, Q4_0, Q5_0, Q4_K, Q6_K)");
}

}  // namespace retort

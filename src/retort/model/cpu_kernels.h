// retort/model/cpu_kernels.h — the CPU kernels of the cached forward pass (CausalLMImpl::forward_cached):
// every new token, prefill or decode, is one row through them.
//
// At decode time a step multiplies a few rows (one per sequence) by every weight matrix. libtorch
// pays per-call overhead and, for bf16, oneDNN re-packs the weight each call; these plain kernels
// stream each weight row once and dot it with all M rows. AVX512-BF16 (vdpbf16ps) and AVX512F
// variants are chosen at run time (cpuid); every kernel has a portable scalar fallback.
#pragma once

#include <cstdint>

namespace retort::cpu {

// True when the CPU has AVX512F + AVX512BW + AVX512-BF16 and the fast paths are not disabled
// (set_force_scalar, or environment RETORT_CPU_SCALAR=1).
bool has_avx512_bf16();
bool has_avx512f();
// Tests: route every kernel through the scalar fallback (true) or back to the detected path.
void set_force_scalar(bool on);

// Softmax pieces for sampling one row of logits (one thread: generation samples rows in parallel).
// row_max: the largest of x[0..n), NaN when any x is NaN, -inf when n == 0 or every x is -inf.
// exp_shifted: w[i] = exp((x[i] - shift) * scale) in float (w may be null) and returns the sum of w
// accumulated in float64; -inf x gives 0. The exponential is the Cephes polynomial of the kernels
// (~2e-7 relative) on AVX512F, std::exp otherwise: one row gives the same result whatever else is sampled.
float row_max(const float* x, int64_t n);
double exp_shifted(const float* x, int64_t n, float shift, float scale, float* w);

// bfloat16 <-> float32 (round to nearest even; NaN stays NaN).
uint16_t f32_to_bf16(float f);
float bf16_to_f32(uint16_t b);

// How a weight matrix is stored. Quantized formats are ggml blocks along K, as GGUF stores them, one row
// after another; K must be a multiple of the block size (32 values, or 256 for the K-quants). fp16 d, m,
// dmin are the block's scales; q are the codes; every product and sum below is one float32 rounding,
// in this order (retort::dequantize, bit-exact with the `gguf` Python package):
//   Q4_0, 32 values, 18 bytes: fp16 d | u8 qs[16]             q_j = qs[j] & 15, q_{16+j} = qs[j] >> 4;  w = d (q - 8)
//   Q4_1, 32 values, 20 bytes: fp16 d | fp16 m | u8 qs[16]    q as Q4_0;                                 w = d q + m
//   Q5_0, 32 values, 22 bytes: fp16 d | u32 qh | u8 qs[16]    q_i = (nibble as Q4_0) | ((qh >> i) & 1) << 4;  w = d (q - 16)
//   Q5_1, 32 values, 24 bytes: fp16 d | fp16 m | u32 qh | u8 qs[16]   q as Q5_0;                         w = d q + m
//   Q8_0, 32 values, 34 bytes: fp16 d | int8 q[32];                                                       w = d q
//   Q4_K, 256 values, 144 bytes: fp16 d | fp16 dmin | u8 scales[12] | u8 qs[128]. Sub-block s < 8 of 32
//         values has a 6-bit scale sc_s and min mn_s packed in scales[12] (s < 4: sc = scales[s] & 63,
//         mn = scales[s + 4] & 63; s >= 4: sc = (scales[s + 4] & 15) | (scales[s - 4] >> 6) << 4,
//         mn = (scales[s + 4] >> 4) | (scales[s] >> 6) << 4); value l < 32 of sub-block s:
//         q = (qs[32 (s / 2) + l] >> 4 (s % 2)) & 15;                     w = (d sc_s) q - (dmin mn_s)
//   Q5_K, 256 values, 176 bytes: fp16 d | fp16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
//         as Q4_K with a 5th bit: q |= ((qh[l] >> s) & 1) << 4;          w = (d sc_s) q - (dmin mn_s)
//   Q6_K, 256 values, 210 bytes: u8 ql[128] | u8 qh[64] | int8 scales[16] | fp16 d. Value l < 32 of
//         sub-block s = 4 h + t (h < 2, t < 4): q = ((ql[64 h + 32 (t % 2) + l] >> 4 (t / 2)) & 15)
//         | ((qh[32 h + l] >> 2 t) & 3) << 4;                             w = (d scales[2 s + l / 16]) (q - 32)
enum class WeightFormat : uint8_t { kF32, kBF16, kQ8_0, kQ4_1, kQ4_0, kQ5_0, kQ5_1, kQ4_K, kQ5_K, kQ6_K };

// "Q4_K", "F32", ... (the GGUF type names).
const char* weight_format_name(WeightFormat format);
// Values per block along K: 1 (F32, BF16), 32, or 256 (the K-quants).
int64_t weight_block_elems(WeightFormat format);
// True for the ggml block formats.
bool is_quantized(WeightFormat format);

// Batch invariance. On the float32 paths every output is computed in one canonical order, whatever M,
// the other rows of x, the tile shape or the work split: 16 lanes, lane i accumulating x[m, k] w[c, k]
// for k = i mod 16 in ascending k with FMA, then the lanes summed in one fixed tree, then added to y
// when accumulating. So y[m, c] is bit-identical whatever the batch holds, for
//   - F32 weights (vector and scalar paths);
//   - quantized weights with bf16_math = false (M < 4 dots blocks dequantized in registers, M >= 4
//     dequantizes into tiles: same weights, same order);
//   - BF16 weights without panels (x rounded to bf16 at every M; vdpbf16ps tiles in the same order);
//   - the scalar fallback (set_force_scalar), every format: one row at a time, k ascending (a different
//     order from the vector paths, so scalar and vector results may differ in the last bits).
// Not batch-invariant: quantized weights with bf16_math on an AVX512-BF16 CPU (M < 4 runs in float32,
// M >= 4 in bf16), and weights with panels (M >= kPanelMinRows reads the bf16 panels, fewer rows the
// dense operand), so a row's result there changes when the batch size crosses 4.

// One weight matrix W [rows, K], row-major contiguous.
struct WeightRef {
  const void* data = nullptr;
  int64_t rows = 0;
  WeightFormat format = WeightFormat::kF32;
  // Quantized formats only. With few rows of x (M < 4) every block is dequantized to float32 and dotted
  // in float32 (the product of the dequantized matrix, as a float32 model computes it). With more rows
  // 4 weight rows are dequantized at a time and shared by all M: in float32 (the same result as M < 4,
  // bit for bit), or, when bf16_math is set and the CPU has AVX512-BF16, rounded to bf16 with x rounded
  // too (the numerics of --dtype bf16).
  bool bf16_math = false;
  // Optional: the same matrix in bf16, packed by pack_bf16_panels. With at least kPanelMinRows rows of x
  // on the AVX512-BF16 path the product reads these panels (bf16 math, x rounded to bf16) and ignores data.
  const uint16_t* panels = nullptr;
};

// Packed bf16 panels: output columns in groups of kPanelCols, each group stored k-pair by k-pair as
// [K/2][kPanelCols][2] (the operand layout of vdpbf16ps), so that many rows of x stream one panel with
// one broadcast per row and k-pair and no horizontal sums. Rows past `rows` are zero. K must be even.
constexpr int64_t kPanelCols = 48;
constexpr int64_t kPanelMinRows = 4;
int64_t bf16_panels_size(int64_t rows, int64_t K);  // in uint16_t elements
void pack_bf16_panels(const uint16_t* w, int64_t rows, int64_t K, uint16_t* out);

// The format the kernels read a ggml tensor type (GgmlType id) in, if they read it: F32, BF16 and the
// block types above. False for F16 and the types not listed (Q2_K, Q3_K, IQ*: dequantize them).
bool weight_format_of_ggml(uint32_t ggml_type, WeightFormat* out);

// Bytes of one row of K values in `format`. Throws retort::Error when K is not a multiple of the
// format's block size (a quantized row holds whole blocks).
int64_t weight_row_bytes(WeightFormat format, int64_t K);

// y[m, c] (+)= x[m, :] · W_i[r, :] where output column c = (rows of W_0..W_{i-1}) + r: the
// matrices' outputs side by side (fused q|k|v or gate|up). x float32 [M, K] (row stride K), y float32
// with row stride ldy; accumulate adds to y instead of overwriting. With bf16 weights on the
// AVX512-BF16 path x is rounded to bf16 (products and sums are float32), as a bf16 matmul does;
// quantized weights as WeightRef::bf16_math says. Parallel over output columns. Throws retort::Error
// when K is not a multiple of a quantized weight's block size.
void matmul_wt(const float* x, int64_t M, int64_t K, const WeightRef* w, int n_w, float* y, int64_t ldy,
               bool accumulate);

// Rotate-half RoPE in place on the q and k heads of n rows: qkv float32 [n, (H + 2*Hkv) * D] (q | k | v);
// cos, sin float32 [n, D/2], the tables at each row's position. (x1, x2) -> (x1 c - x2 s, x2 c + x1 s).
void rope_rows(float* qkv, int64_t n, int64_t H, int64_t Hkv, int64_t D, const float* cos, const float* sin);

// Grouped-query attention of n new tokens (rows) over the KV cache.
//  qkv float32 [n, (H + 2*Hkv) * D]: q | k | v of each new token, RoPE already applied.
//  k_cache, v_cache [n_slots, Hkv, max_len, D], float32 or bf16 (cache_bf16).
//  Row i is at position pos[i] of slot slot[i]; first every row's k/v is stored at
//  [slot[i], :, pos[i], :], then each row's query heads attend to keys j of its slot with
//  j <= pos[i] (and pos[i] - j < window when window > 0): softmax(q·k * scale) · v, query head h
//  reading kv head h / (H / Hkv). Rows may share a slot (a prompt's tokens): a row sees the rows
//  before it because all keys are stored before any query attends.
// out float32 [n, H*D]. A row's result depends only on its own query, position and cache contents,
// never on the other rows (batch-invariant).
struct AttentionShape {
  int64_t n_head, n_head_kv, head_dim;
  float scale;
  int64_t window = 0;
};
void attention_rows(const float* qkv, int64_t n, const AttentionShape& shape, void* k_cache, void* v_cache,
                    bool cache_bf16, int64_t max_len, const int64_t* slot, const int64_t* pos, float* out);

// y[m, :] = x[m, :] * rsqrt(mean(x[m, :]²) + eps) * w, x, y float32 [M, n] (may alias), w float32 [n].
// Rows are at stride ldx (x) and ldy (y); 0 means n. Sum of squares in float32, in index order.
void rms_norm(const float* x, const float* w, int64_t M, int64_t n, double eps, float* y, int64_t ldx = 0,
              int64_t ldy = 0);

// out[m, i] = act(gu[m, i]) * gu[m, F + i]; gu float32 [M, 2F], out float32 [M, F].
// silu(g) = g / (1 + e^-g); gelu_tanh(g) = g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g³))) (PyTorch's
// gelu(approximate="tanh"), Gemma's gelu_pytorch_tanh).
void silu_mul(const float* gu, int64_t M, int64_t F, float* out);
void gelu_tanh_mul(const float* gu, int64_t M, int64_t F, float* out);

// Row r of a weight matrix in any WeightFormat as float32 [K] (embedding lookups).
void dequant_row(const WeightRef& w, int64_t r, int64_t K, float* out);

}  // namespace retort::cpu

// retort/io/ggml_quants.h — ggml tensor types: names, block sizes, dequantization to float32.
//
// Block layouts follow ggml's ggml-common.h; values match the Python `gguf`
// package's gguf.quants.dequantize bit for bit (same float32 operation order).
#pragma once

#include <cstdint>
#include <string>

namespace retort {

// ggml type ids as stored in GGUF tensor infos. Ids 4, 5, 31-33 and 36-38 were removed from ggml.
enum class GgmlType : uint32_t {
  F32 = 0,
  F16 = 1,
  Q4_0 = 2,
  Q4_1 = 3,
  Q5_0 = 6,
  Q5_1 = 7,
  Q8_0 = 8,
  Q8_1 = 9,
  Q2_K = 10,
  Q3_K = 11,
  Q4_K = 12,
  Q5_K = 13,
  Q6_K = 14,
  Q8_K = 15,
  IQ2_XXS = 16,
  IQ2_XS = 17,
  IQ3_XXS = 18,
  IQ1_S = 19,
  IQ4_NL = 20,
  IQ3_S = 21,
  IQ2_S = 22,
  IQ4_XS = 23,
  I8 = 24,
  I16 = 25,
  I32 = 26,
  I64 = 27,
  F64 = 28,
  IQ1_M = 29,
  BF16 = 30,
  TQ1_0 = 34,
  TQ2_0 = 35,
  MXFP4 = 39,
};

// "Q4_K", or "unknown(123)" for an id retort does not know.
std::string ggml_type_name(uint32_t type);

// Elements per block and bytes per block of any type ggml knows (including ones retort
// cannot dequantize, so tensor sizes can still be checked); false for an unknown id.
bool ggml_type_layout(uint32_t type, int64_t* block_elems, int64_t* block_bytes);

// Elements per block and bytes per block; false if retort cannot dequantize this type.
bool ggml_type_block(uint32_t type, int64_t* block_elems, int64_t* block_bytes);

// True when dequantize() handles this type.
bool ggml_type_supported(uint32_t type);

// Dequantize n_elems (a multiple of the block size) from src into dst (float32), exactly like
// gguf.quants.dequantize. Supported: F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K,
// Q4_K, Q5_K, Q6_K, Q8_K. Throws retort::Error for other types or a partial block.
// src needs no particular alignment.
void dequantize(GgmlType type, const uint8_t* src, float* dst, int64_t n_elems);

// Bytes that quantize() writes for n_elems of `type` (n_elems a multiple of the block size).
int64_t ggml_row_bytes(GgmlType type, int64_t n_elems);

// Quantize n_elems float32 (a multiple of the block size) into dst, bit for bit like the Python
// `gguf` package's gguf.quants.quantize: F32 (copy), F16 (round to nearest even), BF16 (round to
// nearest even, NaN kept quiet), Q8_0 (per 32 values: d = max|x| / 127 stored as fp16,
// q = round-half-away-from-zero(x * (1/d)) as int8; d = 0 gives q = 0), Q4_0 / Q5_0 (d = signed absmax
// / -8 or -16, q = trunc(x/d + 8.5 or 16.5) clamped); and Q4_K / Q6_K bit for bit like llama.cpp's
// quantize_row_q4_K_ref / quantize_row_q6_K_ref (llama-quantize without an importance matrix; the gguf
// package has no K-quant quantizer). Other types -> retort::Error.
void quantize(GgmlType type, const float* src, uint8_t* dst, int64_t n_elems);

}  // namespace retort

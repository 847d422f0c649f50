// retort/io/half.h — IEEE fp16 and bfloat16 <-> float32 conversion, bit-exact.
//
// fp16: 1 sign, 5 exponent (bias 15), 10 mantissa bits.
// bf16: the top 16 bits of a float32 (1 sign, 8 exponent, 7 mantissa bits).
// float -> half rounds to nearest, ties to even (as torch and numpy do); values past the
// largest finite half become +-inf; NaN stays NaN (quiet, sign kept).
#pragma once

#include <bit>
#include <cstdint>

namespace retort {

inline float fp16_to_f32(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  uint32_t exp = (h >> 10) & 0x1Fu;
  uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1F) {
    // inf / NaN: keep the payload in the top mantissa bits.
    bits = sign | 0x7F800000u | (mant << 13);
  } else if (exp != 0) {
    bits = sign | ((exp + (127 - 15)) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;
  } else {
    // Subnormal half: mant * 2^-24, exact in float32.
    float f = static_cast<float>(mant) * 5.9604644775390625e-8f;  // 2^-24
    return (h & 0x8000u) ? -f : f;
  }
  return std::bit_cast<float>(bits);
}

inline uint16_t f32_to_fp16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  uint32_t ax = x & 0x7FFFFFFFu;
  if (ax >= 0x7F800000u) {
    // inf stays inf; NaN becomes a quiet NaN carrying the top payload bits.
    if (ax == 0x7F800000u) return sign | 0x7C00u;
    return sign | 0x7E00u | static_cast<uint16_t>((ax >> 13) & 0x3FFu);
  }
  // 65520 = largest half (65504) + half an ulp: from there on, RNE gives inf.
  if (ax >= 0x477FF000u) return sign | 0x7C00u;
  if (ax < 0x38800000u) {
    // Result is subnormal or zero (|f| < 2^-14): value = round(|f| * 2^24) ulps of 2^-24.
    // Adding 0.5f (exponent 2^-1) shifts the mantissa so that the float adder's own RNE
    // rounds at the 2^-24 position; the low bits of the sum are the half mantissa.
    float a = std::bit_cast<float>(ax) + 0.5f;
    return sign | static_cast<uint16_t>(std::bit_cast<uint32_t>(a) - 0x3F000000u);
  }
  // Normal: rebias exponent (127 -> 15), drop 13 mantissa bits with RNE. A carry out of
  // the mantissa correctly bumps the exponent (and 65504 + tie rounds to inf above).
  uint32_t lsb = (ax >> 13) & 1u;
  uint32_t r = ax + 0xFFFu + lsb;
  return sign | static_cast<uint16_t>((r - (static_cast<uint32_t>(127 - 15) << 23)) >> 13);
}

inline float bf16_to_f32(uint16_t b) {
  return std::bit_cast<float>(static_cast<uint32_t>(b) << 16);
}

inline uint16_t f32_to_bf16(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) {
    // NaN: truncate, forcing the quiet bit so the payload cannot round to inf.
    return static_cast<uint16_t>((x >> 16) | 0x0040u);
  }
  uint32_t lsb = (x >> 16) & 1u;
  return static_cast<uint16_t>((x + 0x7FFFu + lsb) >> 16);
}

}  // namespace retort

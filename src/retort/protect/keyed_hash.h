// retort/protect/keyed_hash.h — the one keyed hash every watermark scheme uses.
//
// Portable by construction: integer arithmetic only, a fixed little-endian encoding,
// no device RNG. The same key and tokens give the same 64 bits on any CPU or GPU build,
// so a green list drawn while generating on CUDA is the one checked on a laptop.
//
// Primitive: SipHash-2-4 (Aumasson & Bernstein 2012) with a 128-bit key
// (k0, k1) derived from the 32-byte watermark key (keys.h: WatermarkKey::hash_key()).
//
// Message encodings (all integers little-endian):
//   keyed_hash(k, domain, context, token):
//       u64 domain || u32 context[0] || ... || u32 context[n-1] || u32 token
//   keyed_hash_u64(k, domain, a, b):
//       u64 domain || u64 a || u64 b
// `domain` separates the uses (one constant per scheme and role, below), so a KGW hash
// is never reused as a Gumbel uniform. Token ids are encoded as uint32 (ids are >= 0).
//
// Converting 64 bits H:
//   green (KGW):   H < threshold(γ) = floor(γ · 2^64)   (γ = 1 → every token)
//   uniform r:     r = ((H >> 12) + 0.5) · 2^-52, strictly inside (0, 1): 52 bits plus a
//                  half step, exact in a double (53 bits would round the top value to 1),
//                  so ln r and ln(1 − r) are always finite.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

namespace retort {

struct HashKey {
  uint64_t k0 = 0, k1 = 0;
};

// Domain constants (the first 8 bytes of each message). Append new ones; never renumber.
inline constexpr uint64_t kDomainKgwLeft = 1;       // lefthash: (prev h tokens, candidate)
inline constexpr uint64_t kDomainKgwSelfPair = 2;   // selfhash: anchored pair hash (u, candidate)
inline constexpr uint64_t kDomainKgwSelfGreen = 3;  // selfhash: (min pair hash, candidate) -> green
inline constexpr uint64_t kDomainGumbel = 4;        // Gumbel-max: (prev h tokens, candidate) -> r
inline constexpr uint64_t kDomainSynthid = 5;       // SynthID g-values (reserved for protect/synthid)

// SipHash-2-4 of `len` bytes.
uint64_t siphash24(const HashKey& k, const uint8_t* data, size_t len);

// Hash of (domain, context tokens, candidate token); encoding above.
uint64_t keyed_hash(const HashKey& k, uint64_t domain, std::span<const int32_t> context, int32_t token);

// Hash of (domain, a, b) as three u64 words; encoding above.
uint64_t keyed_hash_u64(const HashKey& k, uint64_t domain, uint64_t a, uint64_t b);

// floor(γ · 2^64), saturating: γ <= 0 -> 0 (nothing green), γ >= 1 -> UINT64_MAX.
// Green iff H < threshold (with γ >= 1 every H but UINT64_MAX; treat γ = 1 as "all" upstream).
uint64_t green_threshold(double gamma);

// ((H >> 12) + 0.5) · 2^-52 in [2^-53, 1 − 2^-53].
inline double hash_to_uniform(uint64_t h) { return (static_cast<double>(h >> 12) + 0.5) * 0x1.0p-52; }

}  // namespace retort

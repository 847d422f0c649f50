// retort/protect/keyed_hash.h — the one keyed hash every watermark scheme uses.
//
// Portable by construction: integer arithmetic only, a fixed little-endian encoding,
// no device RNG. The same key and tokens give the same 64 bits on any CPU or GPU build,
// so a green list drawn while generating on CUDA is the one checked on a laptop.
//
// Two layers, as in the reference KGW code (a keyed seed per context that then drives a
// generator over the vocabulary), but keyed with a real PRF and indexable by token:
//   1. keyed_seed(k, domain, context): SipHash-2-4 (Aumasson & Bernstein 2012) with the
//      128-bit key (k0, k1) derived from the 32-byte watermark key (keys.h), one call per
//      context (per generation step, or per scored position).
//   2. stream_hash(seed, v): the splitmix64 output at index v of the stream seeded by `seed`
//      (Steele et al. 2014: state seed + (v + 1)·φ, then its finalizer). One per candidate
//      token; two 64-bit multiplies, so scoring all 49,152 candidates of a step is a short
//      vectorized loop instead of 49,152 SipHash calls (kgw.cpp, gumbel.cpp).
// Knowing stream values for one context tells nothing about another context's: every
// seed is a fresh SipHash output.
//
// Message encodings (all integers little-endian):
//   keyed_seed(k, domain, context):
//       u64 domain || u32 context[0] || ... || u32 context[n-1]
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

// Loops over the vocabulary that call stream_hash get a vectorized clone per x86-64 level
// (AVX-512 has 64-bit lane multiplies), picked at load time; integer results are identical.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RETORT_HASH_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RETORT_HASH_CLONES
#endif

namespace retort {

struct HashKey {
  uint64_t k0 = 0, k1 = 0;
};

// Domain constants (the first 8 bytes of each message). Append new ones; never renumber or
// reuse: 1-4 were the first (one SipHash per candidate) KGW and Gumbel definitions, retired
// because hashing the whole vocabulary with SipHash cost 15-40% of generation throughput.
inline constexpr uint64_t kDomainSynthid = 5;          // SynthID keys (protect/synthid)
inline constexpr uint64_t kDomainKgwLeftSeed = 6;      // lefthash: seed of the previous h tokens
inline constexpr uint64_t kDomainKgwSelfAnchor = 7;    // selfhash: anchor seed of one token u
inline constexpr uint64_t kDomainKgwSelfGreenSeed = 8; // selfhash: the constant mixed into the green draw
inline constexpr uint64_t kDomainGumbelSeed = 9;       // Gumbel-max: seed of the previous h tokens

// splitmix64's finalizer (Stafford's Mix13) of seed + (v + 1)·φ, φ = 0x9e3779b97f4a7c15.
inline uint64_t stream_hash(uint64_t seed, uint32_t v) {
  uint64_t z = seed + (static_cast<uint64_t>(v) + 1) * 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// SipHash-2-4 of `len` bytes.
uint64_t siphash24(const HashKey& k, const uint8_t* data, size_t len);

// Seed of (domain, context tokens); encoding above. Empty context: a per-key constant.
uint64_t keyed_seed(const HashKey& k, uint64_t domain, std::span<const int32_t> context);

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

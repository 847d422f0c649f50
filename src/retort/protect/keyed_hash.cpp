// SipHash-2-4 and the watermark message encodings; see keyed_hash.h.
#include "retort/protect/keyed_hash.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace retort {

namespace {

inline uint64_t rotl(uint64_t x, int b) { return (x << b) | (x >> (64 - b)); }

inline uint64_t load_le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

struct SipState {
  uint64_t v0, v1, v2, v3;
  explicit SipState(const HashKey& k)
      : v0(k.k0 ^ 0x736f6d6570736575ULL),
        v1(k.k1 ^ 0x646f72616e646f6dULL),
        v2(k.k0 ^ 0x6c7967656e657261ULL),
        v3(k.k1 ^ 0x7465646279746573ULL) {}
  void round() {
    v0 += v1; v1 = rotl(v1, 13); v1 ^= v0; v0 = rotl(v0, 32);
    v2 += v3; v3 = rotl(v3, 16); v3 ^= v2;
    v0 += v3; v3 = rotl(v3, 21); v3 ^= v0;
    v2 += v1; v1 = rotl(v1, 17); v1 ^= v2; v2 = rotl(v2, 32);
  }
  void block(uint64_t m) {  // c = 2 compression rounds
    v3 ^= m;
    round();
    round();
    v0 ^= m;
  }
  uint64_t finish() {  // d = 4 finalization rounds
    v2 ^= 0xff;
    round(); round(); round(); round();
    return v0 ^ v1 ^ v2 ^ v3;
  }
};

// Streams bytes into 8-byte little-endian SipHash blocks.
struct SipStream {
  SipState s;
  uint64_t pending = 0;  // bytes not yet forming a full block, little-endian
  int n_pending = 0;
  uint64_t total = 0;
  explicit SipStream(const HashKey& k) : s(k) {}
  void put_u32(uint32_t x) {
    total += 4;
    if (n_pending == 0) {
      pending = x;
      n_pending = 4;
    } else {  // n_pending == 4 (only u32/u64 writes, u64s only at block boundaries)
      pending |= static_cast<uint64_t>(x) << 32;
      s.block(pending);
      pending = 0;
      n_pending = 0;
    }
  }
  void put_u64(uint64_t x) {
    if (n_pending == 0) {
      total += 8;
      s.block(x);
    } else {
      put_u32(static_cast<uint32_t>(x));
      put_u32(static_cast<uint32_t>(x >> 32));
    }
  }
  uint64_t finish() {
    uint64_t b = (total & 0xff) << 56;
    b |= pending;  // n_pending < 8 bytes remain
    s.block(b);
    return s.finish();
  }
};

}  // namespace

uint64_t siphash24(const HashKey& k, const uint8_t* data, size_t len) {
  SipState s(k);
  size_t full = len / 8 * 8;
  for (size_t i = 0; i < full; i += 8) s.block(load_le64(data + i));
  uint64_t b = static_cast<uint64_t>(len & 0xff) << 56;
  for (size_t i = full; i < len; ++i) b |= static_cast<uint64_t>(data[i]) << (8 * (i - full));
  s.block(b);
  return s.finish();
}

uint64_t keyed_seed(const HashKey& k, uint64_t domain, std::span<const int32_t> context) {
  SipStream st(k);
  st.put_u64(domain);
  for (int32_t t : context) st.put_u32(static_cast<uint32_t>(t));
  return st.finish();
}

uint64_t keyed_hash(const HashKey& k, uint64_t domain, std::span<const int32_t> context, int32_t token) {
  SipStream st(k);
  st.put_u64(domain);
  for (int32_t t : context) st.put_u32(static_cast<uint32_t>(t));
  st.put_u32(static_cast<uint32_t>(token));
  return st.finish();
}

uint64_t keyed_hash_u64(const HashKey& k, uint64_t domain, uint64_t a, uint64_t b) {
  SipState s(k);
  s.block(domain);
  s.block(a);
  s.block(b);
  s.block(static_cast<uint64_t>(24) << 56);
  return s.finish();
}

uint64_t green_threshold(double gamma) {
  if (!(gamma > 0)) return 0;
  if (gamma >= 1) return UINT64_MAX;
  // γ·2^64 < 2^64 here; ldexp keeps it exact up to double rounding of γ itself.
  double t = std::floor(std::ldexp(gamma, 64));
  if (t >= 0x1.0p64) return UINT64_MAX;
  return static_cast<uint64_t>(t);
}

}  // namespace retort

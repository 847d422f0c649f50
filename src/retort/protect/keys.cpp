// Watermark keys: hex key files, env var, commitment, HMAC-SHA-256 account keys; see keys.h.
#include "retort/protect/keys.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <vector>

#include "retort/util/error.h"
#include "retort/util/file.h"

namespace retort {

namespace {

constexpr uint32_t kSha256K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

inline uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

void sha256_block(uint32_t h[8], const uint8_t* p) {
  uint32_t w[64];
  for (int i = 0; i < 16; ++i)
    w[i] = (uint32_t(p[4 * i]) << 24) | (uint32_t(p[4 * i + 1]) << 16) | (uint32_t(p[4 * i + 2]) << 8) |
           uint32_t(p[4 * i + 3]);
  for (int i = 16; i < 64; ++i) {
    uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
    uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
    w[i] = w[i - 16] + s0 + w[i - 7] + s1;
  }
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
  for (int i = 0; i < 64; ++i) {
    uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
    uint32_t ch = (e & f) ^ (~e & g);
    uint32_t t1 = hh + S1 + ch + kSha256K[i] + w[i];
    uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
    uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
    uint32_t t2 = S0 + maj;
    hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
  }
  h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::string to_hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = d[p[i] >> 4];
    s[2 * i + 1] = d[p[i] & 15];
  }
  return s;
}

uint64_t le64(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

}  // namespace

std::array<uint8_t, 32> sha256(const uint8_t* data, size_t len) {
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  size_t full = len / 64 * 64;
  for (size_t i = 0; i < full; i += 64) sha256_block(h, data + i);
  // Padding: 0x80, zeros, 64-bit big-endian bit length; one or two final blocks.
  uint8_t tail[128] = {0};
  size_t rem = len - full;
  if (rem) std::memcpy(tail, data + full, rem);
  tail[rem] = 0x80;
  size_t tail_len = rem + 1 + 8 <= 64 ? 64 : 128;
  uint64_t bits = static_cast<uint64_t>(len) * 8;
  for (int i = 0; i < 8; ++i) tail[tail_len - 1 - i] = static_cast<uint8_t>(bits >> (8 * i));
  for (size_t i = 0; i < tail_len; i += 64) sha256_block(h, tail + i);
  std::array<uint8_t, 32> out{};
  for (int i = 0; i < 8; ++i)
    for (int j = 0; j < 4; ++j) out[4 * i + j] = static_cast<uint8_t>(h[i] >> (24 - 8 * j));
  return out;
}

std::array<uint8_t, 32> hmac_sha256(const uint8_t* key, size_t key_len, const uint8_t* msg, size_t msg_len) {
  uint8_t k[64] = {0};
  if (key_len > 64) {
    auto hk = sha256(key, key_len);
    std::memcpy(k, hk.data(), 32);
  } else if (key_len) {
    std::memcpy(k, key, key_len);
  }
  std::vector<uint8_t> inner(64 + msg_len);
  for (int i = 0; i < 64; ++i) inner[i] = k[i] ^ 0x36;
  if (msg_len) std::memcpy(inner.data() + 64, msg, msg_len);
  auto ih = sha256(inner.data(), inner.size());
  uint8_t outer[96];
  for (int i = 0; i < 64; ++i) outer[i] = k[i] ^ 0x5c;
  std::memcpy(outer + 64, ih.data(), 32);
  return sha256(outer, sizeof outer);
}

std::string WatermarkKey::commitment() const {
  static const char tag[] = "retort-watermark-key-v1";
  std::vector<uint8_t> m(tag, tag + sizeof tag - 1);
  m.insert(m.end(), bytes.begin(), bytes.end());
  auto h = sha256(m.data(), m.size());
  return to_hex(h.data(), h.size());
}

HashKey WatermarkKey::hash_key() const {
  const uint8_t* b = bytes.data();
  return HashKey{le64(b) ^ le64(b + 16), le64(b + 8) ^ le64(b + 24)};
}

WatermarkKey key_from_hex(std::string_view hex, std::string_view source) {
  size_t a = 0, e = hex.size();
  while (a < e && std::isspace(static_cast<unsigned char>(hex[a]))) ++a;
  while (e > a && std::isspace(static_cast<unsigned char>(hex[e - 1]))) --e;
  std::string_view s = hex.substr(a, e - a);
  // The message says what is wrong but never repeats the text: it may be (part of) a key.
  check(!s.empty(), "watermark key ", source, ": empty; expected one line of 64 hex digits (32 bytes), ",
        "e.g. from `retort watermark keygen`");
  check(s.size() == 64, "watermark key ", source, ": expected 64 hex digits (32 bytes) on one line, got ", s.size(),
        " characters");
  WatermarkKey k;
  for (size_t i = 0; i < 32; ++i) {
    int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
    check(hi >= 0 && lo >= 0, "watermark key ", source, ": character ", (hi < 0 ? 2 * i : 2 * i + 1) + 1,
          " is not a hex digit; expected 64 hex digits (0-9, a-f)");
    k.bytes[i] = static_cast<uint8_t>(hi * 16 + lo);
  }
  return k;
}

namespace {

// hash_key() folds the two 16-byte halves by XOR: a key whose halves are equal (a repeated pattern, all
// zeros) gives the all-zero SipHash key, which anyone can guess. Refused where users supply keys.
WatermarkKey refuse_weak(const WatermarkKey& k, const std::string& source) {
  check(!std::equal(k.bytes.begin(), k.bytes.begin() + 16, k.bytes.begin() + 16), "watermark key ", source,
        ": its two 16-byte halves are equal, which makes a guessable key; make one with `retort watermark keygen`");
  return k;
}

}  // namespace

WatermarkKey load_key_file(const std::string& path) {
  std::string text = read_file(path);
  check(text.size() <= 1024, "watermark key file ", path, ": ", text.size(),
        " bytes; a key file holds one line of 64 hex digits");
  return refuse_weak(key_from_hex(text, "file " + path), "file " + path);
}

WatermarkKey key_from_env(const char* var) {
  const char* v = std::getenv(var);
  check(v != nullptr, "watermark key: environment variable ", var, " is not set");
  return refuse_weak(key_from_hex(v, std::string("environment variable ") + var), std::string("environment variable ") + var);
}

WatermarkKey load_key(const std::string& key_file) {
  if (!key_file.empty()) return load_key_file(key_file);
  check(std::getenv(kWatermarkKeyEnv) != nullptr, "watermark key missing: pass --key-file FILE or set ",
        kWatermarkKeyEnv, " to 64 hex digits (make one with `retort watermark keygen`)");
  return key_from_env(kWatermarkKeyEnv);
}

WatermarkKey generate_key() {
  WatermarkKey k;
  std::FILE* f = std::fopen("/dev/urandom", "rb");
  check(f != nullptr, "watermark keygen: cannot open /dev/urandom");
  size_t got = std::fread(k.bytes.data(), 1, k.bytes.size(), f);
  std::fclose(f);
  check(got == k.bytes.size(), "watermark keygen: short read from /dev/urandom");
  return k;
}

std::string key_to_hex(const WatermarkKey& k) { return to_hex(k.bytes.data(), k.bytes.size()); }

WatermarkKey derive_account_key(const WatermarkKey& master, std::string_view account_id) {
  check(!account_id.empty(), "watermark: empty account id (per-account keys need a non-empty id)");
  std::string msg = "retort-account-v1:";
  msg.append(account_id);
  WatermarkKey k;
  k.bytes = hmac_sha256(master.bytes.data(), master.bytes.size(), reinterpret_cast<const uint8_t*>(msg.data()),
                        msg.size());
  return k;
}

std::string sha256_hex(const uint8_t* data, size_t len) {
  auto d = sha256(data, len);
  return to_hex(d.data(), d.size());
}

}  // namespace retort

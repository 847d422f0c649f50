// retort/protect/keys.h — watermark keys: loading, naming, per-account derivation.
//
// A key is 32 secret bytes. It comes from a key file (one line of 64 hex digits) or the
// environment variable RETORT_WATERMARK_KEY (the same 64 hex digits). It is never printed,
// logged or written into reports: those name a key by its commitment,
//   commitment = hex(SHA-256("retort-watermark-key-v1" || key))   (64 hex digits),
// which identifies the key but does not reveal it.
//
// Per-account keys (so a leaked text can be traced to the account that received it):
//   account_key = HMAC-SHA-256(master, "retort-account-v1:" || account_id)
// HMAC as in RFC 2104 with SHA-256 (FIPS 180-4), so any HMAC library reproduces it.
//
// The SipHash key used by keyed_hash.h is (k0, k1) = (LE64(key[0..8]) ^ LE64(key[16..24]),
//                                                   LE64(key[8..16]) ^ LE64(key[24..32])).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>

#include "retort/protect/keyed_hash.h"

namespace retort {

inline constexpr const char* kWatermarkKeyEnv = "RETORT_WATERMARK_KEY";

struct WatermarkKey {
  std::array<uint8_t, 32> bytes{};

  std::string commitment() const;  // 64 hex digits; see above
  HashKey hash_key() const;        // the SipHash key for keyed_hash.h
  bool operator==(const WatermarkKey&) const = default;
};

// Parses 64 hex digits (surrounding whitespace ignored). `source` names where the text came
// from (a path, an env var) for the error; the text itself is never echoed.
WatermarkKey key_from_hex(std::string_view hex, std::string_view source);
// Reads a key file. Errors name the file and what is wrong, not the contents.
WatermarkKey load_key_file(const std::string& path);
// Reads RETORT_WATERMARK_KEY (or `var`). Error when unset or malformed.
WatermarkKey key_from_env(const char* var = kWatermarkKeyEnv);
// The key file when `key_file` is not empty, else the environment variable; an Error that
// says how to supply a key when neither is there.
WatermarkKey load_key(const std::string& key_file);
// A fresh random key (from /dev/urandom), and its file form (64 hex digits + newline).
WatermarkKey generate_key();
std::string key_to_hex(const WatermarkKey& k);  // for writing key files only; never log it

// HMAC-SHA-256(master, "retort-account-v1:" || account_id). account_id must not be empty.
WatermarkKey derive_account_key(const WatermarkKey& master, std::string_view account_id);

// FIPS 180-4 SHA-256 and RFC 2104 HMAC-SHA-256 (exposed for other schemes and tests).
std::array<uint8_t, 32> sha256(const uint8_t* data, size_t len);
std::array<uint8_t, 32> hmac_sha256(const uint8_t* key, size_t key_len, const uint8_t* msg, size_t msg_len);
// SHA-256 as 64 lowercase hex digits (file and shard identities in manifests).
std::string sha256_hex(const uint8_t* data, size_t len);

}  // namespace retort

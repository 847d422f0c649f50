// retort/serve/accounts.h — accounts, API keys with their policies, and per-key quotas.
//
// An API key is shown once, when it is created:
//   rtk_<key id: 12 lowercase hex digits>_<secret: 43 base64url characters = 32 random bytes>
// e.g. rtk_3f9a0c1b2d4e_q0Zt...  The key id is public (it appears in the ledger, `retort keys list`,
// logs); the secret is never stored: the database keeps a 16-byte random salt and
//   secret_sha256 = SHA-256(salt || secret bytes)   (FIPS 180-4; the 32 decoded bytes, not the text)
// and authentication compares that hash in constant time. Key ids, salts and secrets come from
// /dev/urandom.
//
// A key belongs to an account (the name per-account watermark keys are derived from, keys.h) and
// carries its policy: rate limits, the logprob policy, watermarking, admin rights. An account is just
// the name its keys share; several keys per account let an operator rotate keys.
//
// Quotas (QuotaTracker) are enforced in memory per key: sliding 60 s windows of requests (rpm) and
// tokens (tpm, prompt + completion), and tokens per UTC day, started from the ledger at startup.
#pragma once

#include <array>
#include <chrono>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "retort/serve/ledger.h"
#include "retort/serve/serve_db.h"

namespace retort {

inline constexpr const char* kApiKeyPrefix = "rtk_";
inline constexpr size_t kKeyIdHexDigits = 12;
inline constexpr size_t kApiKeyLength = 4 + kKeyIdHexDigits + 1 + 43;  // "rtk_" id "_" secret

// What a key may do. Limits: 0 = unlimited.
struct KeyPolicy {
  int64_t rpm = 0;                        // requests per sliding minute
  int64_t tpm = 0;                        // tokens (prompt + completion) per sliding minute
  int64_t tokens_per_day = 0;             // tokens per UTC day
  std::optional<int> max_top_logprobs;    // cap on top_logprobs; nullopt = no per-key cap (server config decides)
  bool logprobs_refused = false;          // requests asking for logprobs are refused
  int round_logprobs_digits = -1;         // logprobs served rounded to this many decimals; -1 = not rounded
  bool watermark = true;                  // text served to this key carries its account's watermark
  bool admin = false;                     // may call admin endpoints (POST /v1/watermark/detect)

  bool operator==(const KeyPolicy&) const = default;
};

// Throws Error naming the field ("rpm", "max_top_logprobs", ...) when a value is out of range.
void validate_policy(const KeyPolicy& p);
// Throws Error unless `account` is 1-128 characters of letters, digits and . _ - @ + :
void validate_account_name(std::string_view account);

struct KeyRecord {
  std::string key_id;  // 12 hex digits
  std::string account;
  KeyPolicy policy;
  int64_t created_unix_ms = 0;
  std::optional<int64_t> revoked_unix_ms;

  bool revoked() const { return revoked_unix_ms.has_value(); }
  bool operator==(const KeyRecord&) const = default;
};

struct NewKey {
  KeyRecord record;
  std::string api_key;  // "rtk_<id>_<secret>": the only copy; show it once, never log it
};

// Why a bearer token was not accepted (for the 401 message and the ledger's error_type).
enum class AuthFailure { none, missing, malformed, unknown_key, wrong_secret, revoked };
const char* auth_failure_name(AuthFailure f);  // "none", "missing", "malformed", ...

struct AuthResult {
  std::optional<KeyRecord> key;  // set only when accepted
  AuthFailure failure = AuthFailure::none;
  std::string key_id;            // the id the token names when it parses ("" otherwise), accepted or not
  std::string account;           // the account of that id when it exists and the secret matched ("" otherwise)
};

// The keys table of a serve database, cached in memory for the server's HTTP threads.
//
// Thread-safe. authenticate() reads the cache (no SQLite on the request path) and re-reads the table
// at most every refresh interval (2 s by default), so a `retort keys revoke` in another process takes
// effect on a running server within that time; changes made through this object apply at once.
class AccountStore {
 public:
  static constexpr std::chrono::milliseconds kDefaultRefreshInterval{2000};

  // Opens (creating when needed) the serve database at `path` (see serve_db.h for the errors).
  static std::unique_ptr<AccountStore> open(const std::string& path,
                                            std::chrono::milliseconds refresh_interval = kDefaultRefreshInterval);
  AccountStore(const AccountStore&) = delete;
  AccountStore& operator=(const AccountStore&) = delete;

  // A new key for `account` (validated, as is the policy). The returned api_key is the only copy.
  NewKey create_key(const std::string& account, const KeyPolicy& policy, int64_t now_unix_ms = unix_now_ms());
  // Every key (revoked ones included), oldest first; only `account`'s when not empty. No secrets.
  std::vector<KeyRecord> list(const std::string& account = "") const;
  // Looks a key up by id (or by a whole "rtk_<id>_..." key; the secret is not checked).
  std::optional<KeyRecord> find(std::string_view key_id) const;
  // Revokes a key (id or whole key). Returns its record; revoked_unix_ms is the earlier time when it
  // was already revoked. Error naming the id and the file when there is no such key.
  KeyRecord revoke(std::string_view key_id, int64_t now_unix_ms = unix_now_ms());
  // Replaces a key's policy (revoked keys included). Error when there is no such key.
  KeyRecord update_policy(std::string_view key_id, const KeyPolicy& policy);

  // `bearer` is an Authorization header value ("Bearer rtk_...") or the bare key; surrounding
  // whitespace is ignored. Accepted: the key exists, its secret hashes to the stored hash (compared
  // in constant time) and it is not revoked. A revoked key is reported as revoked only to a caller
  // holding its secret; an unknown id still costs one hash, like a known one.
  AuthResult check_bearer(std::string_view bearer) const;
  std::optional<KeyRecord> authenticate(std::string_view bearer) const { return check_bearer(bearer).key; }

  // Re-reads the keys table now (done by check_bearer when the cache is older than the interval).
  void refresh() const;

  // The ledger, aggregated (read from the same file).
  UsageReport usage(const UsageQuery& q) const;
  // Tokens per key in ledger rows of the UTC day containing now_unix_ms (for QuotaTracker::seed_day_tokens).
  std::map<std::string, int64_t> tokens_today_by_key(int64_t now_unix_ms) const;

  const std::string& path() const { return path_; }

 private:
  struct StoredKey {
    KeyRecord record;
    std::array<uint8_t, 16> salt{};
    std::array<uint8_t, 32> secret_sha256{};
  };
  AccountStore(std::unique_ptr<ServeDb> db, std::chrono::milliseconds refresh_interval);
  std::unordered_map<std::string, StoredKey> read_all_locked() const;  // db_mu_ held
  std::optional<StoredKey> read_one_locked(std::string_view key_id) const;
  void put_cached(const StoredKey& k) const;
  void refresh_if_stale() const;

  std::string path_;
  std::chrono::milliseconds refresh_interval_;

  mutable std::mutex db_mu_;  // guards db_ (one SQLite connection)
  std::unique_ptr<ServeDb> db_;

  mutable std::shared_mutex cache_mu_;  // guards cache_ and cache_time_
  mutable std::unordered_map<std::string, StoredKey> cache_;
  mutable std::chrono::steady_clock::time_point cache_time_;
  mutable std::mutex refresh_mu_;  // one refresher at a time; the others keep using the cache
};

// ---------------------------------------------------------------------------------------------
// Quotas

struct Admission {
  bool ok = true;
  std::string reason;               // "rpm", "tpm" or "tokens_per_day" when refused
  int64_t retry_after_seconds = 0;  // when refused: until every exceeded limit has room again (>= 1)
  std::string message;              // when refused: for the 429 body, e.g. "rate limit: 60 requests per minute ..."
  // After this admission, for x-ratelimit-* headers; -1 = unlimited.
  int64_t remaining_requests = -1;  // in the current minute
  int64_t remaining_tokens = -1;    // in the current minute (tpm) or day, whichever is less
};

// Per-key rate and token limits over explicit time (Unix ms), so tests can drive the clock. Thread-safe.
//
// admit() refuses a request when the key's last-60-s requests reached rpm, its last-60-s tokens
// reached tpm, or its tokens of the current UTC day reached tokens_per_day; otherwise it counts the
// request. Token counts arrive after the request with record_tokens(), so one request may carry a key
// past tpm or tokens_per_day; the next one is refused. Windows restart empty when the process
// restarts; the day's tokens are seeded from the ledger.
class QuotaTracker {
 public:
  static constexpr int64_t kWindowMs = 60'000;
  static constexpr int64_t kDayMs = 86'400'000;

  Admission admit(const KeyRecord& key, int64_t now_unix_ms);
  void record_tokens(const std::string& key_id, int64_t tokens, int64_t now_unix_ms);
  // Sets the tokens each key used so far in the UTC day of now_unix_ms (AccountStore::tokens_today_by_key).
  void seed_day_tokens(const std::map<std::string, int64_t>& tokens_by_key, int64_t now_unix_ms);

  struct KeyUsage {
    int64_t requests_last_minute = 0;
    int64_t tokens_last_minute = 0;
    int64_t tokens_today = 0;
  };
  KeyUsage usage(const std::string& key_id, int64_t now_unix_ms);

 private:
  struct KeyState {
    std::deque<int64_t> request_times;                    // admitted requests in the window (ms)
    std::deque<std::pair<int64_t, int64_t>> token_events;  // (ms, tokens) in the window
    int64_t tokens_in_window = 0;
    int64_t day = 0;  // UTC day number of tokens_today
    int64_t tokens_today = 0;
  };
  static void advance(KeyState& s, int64_t now_unix_ms);  // drops events older than the window, rolls the day

  std::mutex mu_;
  std::unordered_map<std::string, KeyState> keys_;
};

}  // namespace retort

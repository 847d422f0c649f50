#include "retort/serve/accounts.h"

#include <strings.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstring>

#include "retort/protect/keys.h"
#include "retort/util/error.h"

namespace retort {

namespace {

constexpr size_t kSaltBytes = 16;
constexpr size_t kSecretBytes = 32;
constexpr size_t kSecretChars = 43;  // base64url of 32 bytes, unpadded: ceil(256 / 6)
constexpr int kMaxRoundDigits = 15;  // a double carries ~15.9 significant decimal digits

constexpr char kBase64Url[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

void random_bytes(uint8_t* out, size_t n) {
  std::FILE* f = std::fopen("/dev/urandom", "rb");
  check(f != nullptr, "api keys: cannot open /dev/urandom for key material");
  size_t got = std::fread(out, 1, n, f);
  std::fclose(f);
  check(got == n, "api keys: short read from /dev/urandom");
}

std::string hex(const uint8_t* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string s(2 * n, '0');
  for (size_t i = 0; i < n; ++i) {
    s[2 * i] = d[p[i] >> 4];
    s[2 * i + 1] = d[p[i] & 15];
  }
  return s;
}

// RFC 4648 section 5, no padding.
std::string base64url(const uint8_t* p, size_t n) {
  std::string s;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; ++i) {
    acc = (acc << 8) | p[i];
    bits += 8;
    while (bits >= 6) {
      bits -= 6;
      s += kBase64Url[(acc >> bits) & 63];
    }
  }
  if (bits > 0) s += kBase64Url[(acc << (6 - bits)) & 63];
  return s;
}

int base64url_value(char c) {
  if (c >= 'A' && c <= 'Z') return c - 'A';
  if (c >= 'a' && c <= 'z') return c - 'a' + 26;
  if (c >= '0' && c <= '9') return c - '0' + 52;
  if (c == '-') return 62;
  if (c == '_') return 63;
  return -1;
}

// Decodes exactly kSecretChars characters into kSecretBytes; false unless canonical (unused low bits 0).
bool decode_secret(std::string_view s, std::array<uint8_t, kSecretBytes>& out) {
  if (s.size() != kSecretChars) return false;
  uint32_t acc = 0;
  int bits = 0;
  size_t o = 0;
  for (char c : s) {
    int v = base64url_value(c);
    if (v < 0) return false;
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o < kSecretBytes) out[o++] = static_cast<uint8_t>(acc >> bits);
    }
  }
  return o == kSecretBytes && (acc & ((1u << bits) - 1)) == 0;
}

bool is_key_id(std::string_view s) {
  if (s.size() != kKeyIdHexDigits) return false;
  for (char c : s)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r' || s.front() == '\n'))
    s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n'))
    s.remove_suffix(1);
  return s;
}

// "3f9a0c1b2d4e", "3F9A0C1B2D4E" or a whole "rtk_3f9a0c1b2d4e_..." -> the key id; Error otherwise.
std::string key_id_from_arg(std::string_view arg) {
  std::string_view s = trim(arg);
  if (s.substr(0, 4) == kApiKeyPrefix) s = s.substr(4, kKeyIdHexDigits);
  std::string id(s);
  std::transform(id.begin(), id.end(), id.begin(), [](unsigned char c) { return std::tolower(c); });
  check(is_key_id(id), "key id \"", arg, "\": expected ", kKeyIdHexDigits,
        " hex digits (as `retort keys list` shows them) or a whole rtk_ key");
  return id;
}

// Compares all n bytes whatever differs first, so the time does not tell how much of a hash matched.
bool constant_time_equal(const uint8_t* a, const uint8_t* b, size_t n) {
  volatile uint8_t diff = 0;
  for (size_t i = 0; i < n; ++i) diff = diff | (a[i] ^ b[i]);
  return diff == 0;
}

std::array<uint8_t, 32> secret_hash(const std::array<uint8_t, kSaltBytes>& salt,
                                    const std::array<uint8_t, kSecretBytes>& secret) {
  uint8_t buf[kSaltBytes + kSecretBytes];
  std::memcpy(buf, salt.data(), kSaltBytes);
  std::memcpy(buf + kSaltBytes, secret.data(), kSecretBytes);
  auto h = sha256(buf, sizeof buf);
  std::memset(buf, 0, sizeof buf);
  return h;
}

const char* kSelectKeys =
    "SELECT key_id, account, salt, secret_sha256, rpm, tpm, tokens_per_day, max_top_logprobs, logprobs_refused, "
    "round_logprobs_digits, watermark, admin, created_unix_ms, revoked_unix_ms FROM keys";

int64_t floor_div(int64_t a, int64_t b) { return a / b - ((a % b != 0) && ((a < 0) != (b < 0))); }

}  // namespace

const char* auth_failure_name(AuthFailure f) {
  switch (f) {
    case AuthFailure::none: return "none";
    case AuthFailure::missing: return "missing";
    case AuthFailure::malformed: return "malformed";
    case AuthFailure::unknown_key: return "unknown_key";
    case AuthFailure::wrong_secret: return "wrong_secret";
    case AuthFailure::revoked: return "revoked";
  }
  return "?";
}

void validate_policy(const KeyPolicy& p) {
  check(p.rpm >= 0, "rpm: ", p.rpm, " is negative; give a limit >= 1, or 0 for unlimited");
  check(p.tpm >= 0, "tpm: ", p.tpm, " is negative; give a limit >= 1, or 0 for unlimited");
  check(p.tokens_per_day >= 0, "tokens_per_day: ", p.tokens_per_day,
        " is negative; give a limit >= 1, or 0 for unlimited");
  if (p.max_top_logprobs) {
    check(*p.max_top_logprobs >= 0, "max_top_logprobs: ", *p.max_top_logprobs,
          " is negative; give 0 or more, or `none` to refuse logprobs");
    check(!p.logprobs_refused, "max_top_logprobs: a cap (", *p.max_top_logprobs,
          ") and refusing logprobs contradict each other; give one of them");
  }
  check(p.round_logprobs_digits == -1 || (p.round_logprobs_digits >= 0 && p.round_logprobs_digits <= kMaxRoundDigits),
        "round_logprobs_digits: ", p.round_logprobs_digits, " is out of range; give 0..", kMaxRoundDigits,
        " decimals, or -1 for no rounding");
}

void validate_account_name(std::string_view account) {
  bool ok = !account.empty() && account.size() <= 128;
  for (char c : account)
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                std::strchr("._-@+:", c) != nullptr) && c != '\0';
  check(ok, "account \"", account, "\": an account name is 1-128 characters of letters, digits and . _ - @ + :");
}

// ---------------------------------------------------------------------------------------------
// AccountStore

std::unique_ptr<AccountStore> AccountStore::open(const std::string& path, std::chrono::milliseconds refresh_interval) {
  std::unique_ptr<AccountStore> s(new AccountStore(ServeDb::open(path), refresh_interval));
  s->refresh();
  return s;
}

AccountStore::AccountStore(std::unique_ptr<ServeDb> db, std::chrono::milliseconds refresh_interval)
    : path_(db->path()), refresh_interval_(refresh_interval), db_(std::move(db)) {}

std::unordered_map<std::string, AccountStore::StoredKey> AccountStore::read_all_locked() const {
  std::unordered_map<std::string, StoredKey> out;
  SqlStatement st(*db_, kSelectKeys);
  while (st.step("read the keys table")) {
    StoredKey k;
    k.record.key_id = st.text(0);
    k.record.account = st.text(1);
    const std::string salt = st.blob(2), hash = st.blob(3);
    check(salt.size() == kSaltBytes && hash.size() == 32, "serve db ", path_, ": key ", k.record.key_id,
          " has a damaged salt or hash (", salt.size(), " and ", hash.size(),
          " bytes); revoke it and create a new key");
    std::memcpy(k.salt.data(), salt.data(), kSaltBytes);
    std::memcpy(k.secret_sha256.data(), hash.data(), 32);
    KeyPolicy& p = k.record.policy;
    p.rpm = st.int64(4);
    p.tpm = st.int64(5);
    p.tokens_per_day = st.int64(6);
    if (!st.is_null(7)) p.max_top_logprobs = static_cast<int>(st.int64(7));
    p.logprobs_refused = st.int64(8) != 0;
    p.round_logprobs_digits = static_cast<int>(st.int64(9));
    p.watermark = st.int64(10) != 0;
    p.admin = st.int64(11) != 0;
    k.record.created_unix_ms = st.int64(12);
    if (!st.is_null(13)) k.record.revoked_unix_ms = st.int64(13);
    std::string id = k.record.key_id;
    out.emplace(std::move(id), std::move(k));
  }
  return out;
}

std::optional<AccountStore::StoredKey> AccountStore::read_one_locked(std::string_view key_id) const {
  // The table is small (one row per key ever issued); re-reading it whole keeps one parser.
  auto all = read_all_locked();
  auto it = all.find(std::string(key_id));
  if (it == all.end()) return std::nullopt;
  return it->second;
}

void AccountStore::put_cached(const StoredKey& k) const {
  std::unique_lock<std::shared_mutex> lk(cache_mu_);
  cache_[k.record.key_id] = k;
}

void AccountStore::refresh() const {
  std::lock_guard<std::mutex> r(refresh_mu_);
  std::unordered_map<std::string, StoredKey> fresh;
  {
    std::lock_guard<std::mutex> d(db_mu_);
    fresh = read_all_locked();
  }
  std::unique_lock<std::shared_mutex> lk(cache_mu_);
  cache_.swap(fresh);
  cache_time_ = std::chrono::steady_clock::now();
}

void AccountStore::refresh_if_stale() const {
  {
    std::shared_lock<std::shared_mutex> lk(cache_mu_);
    if (std::chrono::steady_clock::now() - cache_time_ < refresh_interval_) return;
  }
  std::unique_lock<std::mutex> r(refresh_mu_, std::try_to_lock);
  if (!r.owns_lock()) return;  // another thread is refreshing; this request uses the cache as it is
  std::unordered_map<std::string, StoredKey> fresh;
  try {
    std::lock_guard<std::mutex> d(db_mu_);
    fresh = read_all_locked();
  } catch (const Error& e) {
    // Keep serving with the keys we have; try again after the interval.
    std::fprintf(stderr, "error: re-reading API keys: %s (keeping the cached keys)\n", e.what());
    std::unique_lock<std::shared_mutex> lk(cache_mu_);
    cache_time_ = std::chrono::steady_clock::now();
    return;
  }
  std::unique_lock<std::shared_mutex> lk(cache_mu_);
  cache_.swap(fresh);
  cache_time_ = std::chrono::steady_clock::now();
}

NewKey AccountStore::create_key(const std::string& account, const KeyPolicy& policy, int64_t now_unix_ms) {
  validate_account_name(account);
  validate_policy(policy);
  // Holding refresh_mu_ keeps a concurrent refresh from replacing the cache with a read from before
  // the insert.
  std::lock_guard<std::mutex> r(refresh_mu_);
  std::lock_guard<std::mutex> d(db_mu_);
  SqlStatement insert(*db_,
                      "INSERT INTO keys(key_id, account, salt, secret_sha256, rpm, tpm, tokens_per_day, "
                      "max_top_logprobs, logprobs_refused, round_logprobs_digits, watermark, admin, created_unix_ms) "
                      "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)");
  for (int attempt = 0;; ++attempt) {
    // One read: 6 bytes of key id, 16 of salt, 32 of secret.
    uint8_t material[6 + kSaltBytes + kSecretBytes];
    random_bytes(material, sizeof material);
    StoredKey k;
    k.record.key_id = hex(material, 6);
    k.record.account = account;
    k.record.policy = policy;
    k.record.created_unix_ms = now_unix_ms;
    std::memcpy(k.salt.data(), material + 6, kSaltBytes);
    std::array<uint8_t, kSecretBytes> secret;
    std::memcpy(secret.data(), material + 6 + kSaltBytes, kSecretBytes);
    std::memset(material, 0, sizeof material);
    k.secret_sha256 = secret_hash(k.salt, secret);

    insert.reset();
    insert.bind(1, k.record.key_id).bind(2, account).bind_blob(3, k.salt.data(), kSaltBytes);
    insert.bind_blob(4, k.secret_sha256.data(), 32).bind(5, policy.rpm).bind(6, policy.tpm);
    insert.bind(7, policy.tokens_per_day);
    if (policy.max_top_logprobs)
      insert.bind(8, int64_t{*policy.max_top_logprobs});
    else
      insert.bind_null(8);
    insert.bind(9, int64_t{policy.logprobs_refused}).bind(10, int64_t{policy.round_logprobs_digits});
    insert.bind(11, int64_t{policy.watermark}).bind(12, int64_t{policy.admin}).bind(13, now_unix_ms);
    int rc = insert.step_rc();
    if ((rc & 0xff) == SQLITE_CONSTRAINT && attempt < 3) continue;  // a 48-bit id collided: draw another
    if (rc != SQLITE_DONE) {
      insert.reset();
      db_->check_rc(rc, cat("create a key for account ", account));
    }
    NewKey out{k.record, cat(kApiKeyPrefix, k.record.key_id, "_", base64url(secret.data(), kSecretBytes))};
    std::memset(secret.data(), 0, kSecretBytes);
    put_cached(k);
    return out;
  }
}

std::vector<KeyRecord> AccountStore::list(const std::string& account) const {
  std::unordered_map<std::string, StoredKey> all;
  {
    std::lock_guard<std::mutex> d(db_mu_);
    all = read_all_locked();
  }
  std::vector<KeyRecord> out;
  for (auto& [id, k] : all)
    if (account.empty() || k.record.account == account) out.push_back(std::move(k.record));
  std::sort(out.begin(), out.end(), [](const KeyRecord& a, const KeyRecord& b) {
    return a.created_unix_ms != b.created_unix_ms ? a.created_unix_ms < b.created_unix_ms : a.key_id < b.key_id;
  });
  return out;
}

std::optional<KeyRecord> AccountStore::find(std::string_view key_id) const {
  const std::string id = key_id_from_arg(key_id);
  std::lock_guard<std::mutex> d(db_mu_);
  auto k = read_one_locked(id);
  if (!k) return std::nullopt;
  return k->record;
}

KeyRecord AccountStore::revoke(std::string_view key_id, int64_t now_unix_ms) {
  const std::string id = key_id_from_arg(key_id);
  std::lock_guard<std::mutex> r(refresh_mu_);
  std::lock_guard<std::mutex> d(db_mu_);
  SqlStatement update(*db_, "UPDATE keys SET revoked_unix_ms = ?1 WHERE key_id = ?2 AND revoked_unix_ms IS NULL");
  update.bind(1, now_unix_ms).bind(2, id);
  update.step(cat("revoke key ", id));
  auto k = read_one_locked(id);
  check(k.has_value(), "no key ", id, " in ", path_, "; `retort keys list --db ", path_, "` shows the key ids");
  put_cached(*k);
  return k->record;
}

KeyRecord AccountStore::update_policy(std::string_view key_id, const KeyPolicy& p) {
  const std::string id = key_id_from_arg(key_id);
  validate_policy(p);
  std::lock_guard<std::mutex> r(refresh_mu_);
  std::lock_guard<std::mutex> d(db_mu_);
  SqlStatement update(*db_,
                      "UPDATE keys SET rpm = ?1, tpm = ?2, tokens_per_day = ?3, max_top_logprobs = ?4, "
                      "logprobs_refused = ?5, round_logprobs_digits = ?6, watermark = ?7, admin = ?8 "
                      "WHERE key_id = ?9");
  update.bind(1, p.rpm).bind(2, p.tpm).bind(3, p.tokens_per_day);
  if (p.max_top_logprobs)
    update.bind(4, int64_t{*p.max_top_logprobs});
  else
    update.bind_null(4);
  update.bind(5, int64_t{p.logprobs_refused}).bind(6, int64_t{p.round_logprobs_digits});
  update.bind(7, int64_t{p.watermark}).bind(8, int64_t{p.admin}).bind(9, id);
  update.step(cat("update key ", id));
  auto k = read_one_locked(id);
  check(k.has_value(), "no key ", id, " in ", path_, "; `retort keys list --db ", path_, "` shows the key ids");
  put_cached(*k);
  return k->record;
}

AuthResult AccountStore::check_bearer(std::string_view bearer) const {
  AuthResult res;
  std::string_view s = trim(bearer);
  // "Bearer" alone (its token trimmed away) or followed by whitespace and the token.
  if (s.size() >= 6 && strncasecmp(s.data(), "bearer", 6) == 0 && (s.size() == 6 || s[6] == ' ' || s[6] == '\t'))
    s = trim(s.substr(6));
  if (s.empty()) {
    res.failure = AuthFailure::missing;
    return res;
  }
  std::array<uint8_t, kSecretBytes> secret{};
  const bool parsed = s.size() == kApiKeyLength && s.substr(0, 4) == kApiKeyPrefix &&
                      is_key_id(s.substr(4, kKeyIdHexDigits)) && s[4 + kKeyIdHexDigits] == '_' &&
                      decode_secret(s.substr(4 + kKeyIdHexDigits + 1), secret);
  if (!parsed) {
    res.failure = AuthFailure::malformed;
    return res;
  }
  res.key_id = std::string(s.substr(4, kKeyIdHexDigits));

  refresh_if_stale();
  std::optional<StoredKey> stored;
  {
    std::shared_lock<std::shared_mutex> lk(cache_mu_);
    auto it = cache_.find(res.key_id);
    if (it != cache_.end()) stored = it->second;
  }
  // An unknown id still hashes (against zeros), so the reply takes as long as for a known one.
  const StoredKey dummy{};
  const StoredKey& k = stored ? *stored : dummy;
  const auto h = secret_hash(k.salt, secret);
  const bool match = constant_time_equal(h.data(), k.secret_sha256.data(), h.size());
  std::memset(secret.data(), 0, secret.size());
  if (!stored) {
    res.failure = AuthFailure::unknown_key;
  } else if (!match) {
    res.failure = AuthFailure::wrong_secret;
  } else if (stored->record.revoked()) {
    res.failure = AuthFailure::revoked;
    res.account = stored->record.account;
  } else {
    res.account = stored->record.account;
    res.key = std::move(stored->record);
  }
  return res;
}

UsageReport AccountStore::usage(const UsageQuery& q) const {
  std::lock_guard<std::mutex> d(db_mu_);
  return read_usage(*db_, q);
}

std::map<std::string, int64_t> AccountStore::tokens_today_by_key(int64_t now_unix_ms) const {
  const int64_t day_start = floor_div(now_unix_ms, QuotaTracker::kDayMs) * QuotaTracker::kDayMs;
  std::lock_guard<std::mutex> d(db_mu_);
  return read_tokens_by_key_since(*db_, day_start);
}

// ---------------------------------------------------------------------------------------------
// QuotaTracker

void QuotaTracker::advance(KeyState& s, int64_t now) {
  const int64_t cutoff = now - kWindowMs;  // events at or before it are out of the window
  while (!s.request_times.empty() && s.request_times.front() <= cutoff) s.request_times.pop_front();
  while (!s.token_events.empty() && s.token_events.front().first <= cutoff) {
    s.tokens_in_window -= s.token_events.front().second;
    s.token_events.pop_front();
  }
  const int64_t day = floor_div(now, kDayMs);
  if (day > s.day) {
    s.day = day;
    s.tokens_today = 0;
  }
}

Admission QuotaTracker::admit(const KeyRecord& key, int64_t now) {
  const KeyPolicy& p = key.policy;
  std::lock_guard<std::mutex> lk(mu_);
  KeyState& s = keys_[key.key_id];
  advance(s, now);

  // Each exceeded limit, with the wait until it has room; the longest wait is the answer.
  Admission a;
  auto refuse = [&](const char* reason, int64_t wait_ms, std::string message) {
    const int64_t secs = std::max<int64_t>(1, (wait_ms + 999) / 1000);
    if (a.ok || secs > a.retry_after_seconds) {
      a.ok = false;
      a.reason = reason;
      a.retry_after_seconds = secs;
      a.message = std::move(message);
    }
  };
  if (p.rpm > 0 && static_cast<int64_t>(s.request_times.size()) >= p.rpm) {
    // Room when the oldest request that keeps the count at rpm leaves the window.
    const int64_t t = s.request_times[s.request_times.size() - static_cast<size_t>(p.rpm)];
    refuse("rpm", t + kWindowMs - now,
           cat("rate limit reached for key ", key.key_id, ": ", p.rpm, " requests per minute"));
  }
  if (p.tpm > 0 && s.tokens_in_window >= p.tpm) {
    // Room when enough of the oldest tokens leave the window to bring the sum below tpm.
    int64_t left = s.tokens_in_window, t = now;
    for (const auto& [when, tokens] : s.token_events) {
      left -= tokens;
      t = when;
      if (left < p.tpm) break;
    }
    refuse("tpm", t + kWindowMs - now,
           cat("token rate limit reached for key ", key.key_id, ": ", p.tpm, " tokens per minute (used ",
               s.tokens_in_window, ")"));
  }
  if (p.tokens_per_day > 0 && s.tokens_today >= p.tokens_per_day) {
    refuse("tokens_per_day", (s.day + 1) * kDayMs - now,
           cat("daily token quota reached for key ", key.key_id, ": ", p.tokens_per_day,
               " tokens per UTC day (used ", s.tokens_today, ")"));
  }
  if (!a.ok) {
    a.remaining_requests = p.rpm > 0 ? std::max<int64_t>(0, p.rpm - static_cast<int64_t>(s.request_times.size())) : -1;
    a.remaining_tokens = 0;
    return a;
  }
  s.request_times.push_back(now);
  a.remaining_requests = p.rpm > 0 ? p.rpm - static_cast<int64_t>(s.request_times.size()) : -1;
  int64_t remaining_tokens = -1;
  if (p.tpm > 0) remaining_tokens = p.tpm - s.tokens_in_window;
  if (p.tokens_per_day > 0) {
    const int64_t day_left = p.tokens_per_day - s.tokens_today;
    remaining_tokens = remaining_tokens < 0 ? day_left : std::min(remaining_tokens, day_left);
  }
  a.remaining_tokens = remaining_tokens;
  return a;
}

void QuotaTracker::record_tokens(const std::string& key_id, int64_t tokens, int64_t now) {
  if (tokens <= 0) return;
  std::lock_guard<std::mutex> lk(mu_);
  KeyState& s = keys_[key_id];
  advance(s, now);
  s.token_events.emplace_back(now, tokens);
  s.tokens_in_window += tokens;
  s.tokens_today += tokens;
}

void QuotaTracker::seed_day_tokens(const std::map<std::string, int64_t>& tokens_by_key, int64_t now) {
  std::lock_guard<std::mutex> lk(mu_);
  for (const auto& [key_id, tokens] : tokens_by_key) {
    KeyState& s = keys_[key_id];
    advance(s, now);
    s.tokens_today = tokens;
  }
}

QuotaTracker::KeyUsage QuotaTracker::usage(const std::string& key_id, int64_t now) {
  std::lock_guard<std::mutex> lk(mu_);
  auto it = keys_.find(key_id);
  if (it == keys_.end()) return {};
  advance(it->second, now);
  return KeyUsage{static_cast<int64_t>(it->second.request_times.size()), it->second.tokens_in_window,
                  it->second.tokens_today};
}

}  // namespace retort

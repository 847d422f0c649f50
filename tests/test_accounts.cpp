// Tests of API keys, their policies and quotas (retort/serve/accounts.h), and of `retort keys`.
// The stored hash is recomputed here from the printed key (an independent base64url decoder and
// SHA-256 of salt || secret); the database file is searched for the secret; quotas run on a clock
// the test drives, with the expected waits worked out by hand in the comments; the CLI is run as a
// user runs it and its keys are checked against the library (and the other way round).
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <atomic>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <cstring>
#include <regex>
#include <thread>
#include <vector>

#include "retort/protect/keys.h"
#include "retort/serve/accounts.h"
#include "retort/serve/ledger.h"
#include "retort/serve/serve_db.h"
#include "retort/util/file.h"
#include "test_util.h"

namespace {

using namespace retort;
using retort_test::expect_error;
using retort_test::TempDir;

constexpr int64_t kMinute = 60'000;
constexpr int64_t kDay = 86'400'000;
constexpr int64_t kT0 = 1'714'521'600'000;  // 2024-05-01T00:00:00Z

// RFC 4648 base64url, unpadded, written here independently of accounts.cpp.
std::vector<uint8_t> base64url_decode(const std::string& s) {
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  std::vector<uint8_t> out;
  uint32_t acc = 0;
  int bits = 0;
  for (char c : s) {
    acc = (acc << 6) | static_cast<uint32_t>(alphabet.find(c));
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<uint8_t>(acc >> bits));
    }
  }
  return out;
}

// The key with one character of its secret changed (still valid base64url).
std::string flip_secret_char(std::string key, size_t from_end = 5) {
  char& c = key[key.size() - from_end];
  c = c == 'A' ? 'B' : 'A';
  return key;
}

TEST(Keys, CreatedKeyHasTheDocumentedFormAndAuthenticates) {
  TempDir tmp;
  auto store = AccountStore::open(tmp / "serve.db");
  NewKey k = store->create_key("alice", KeyPolicy{}, kT0);
  EXPECT_TRUE(std::regex_match(k.api_key, std::regex("rtk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}"))) << k.api_key;
  EXPECT_EQ(k.api_key.size(), kApiKeyLength);
  EXPECT_EQ(k.api_key.substr(4, 12), k.record.key_id);
  EXPECT_EQ(k.record.account, "alice");
  EXPECT_EQ(k.record.created_unix_ms, kT0);
  EXPECT_FALSE(k.record.revoked());

  auto got = store->authenticate(k.api_key);
  ASSERT_TRUE(got.has_value());
  EXPECT_EQ(*got, k.record);
  // As the Authorization header carries it, with surrounding whitespace.
  EXPECT_TRUE(store->authenticate("Bearer " + k.api_key).has_value());
  EXPECT_TRUE(store->authenticate("  bearer   " + k.api_key + "\r\n").has_value());
  auto res = store->check_bearer("Bearer " + k.api_key);
  EXPECT_EQ(res.failure, AuthFailure::none);
  EXPECT_EQ(res.key_id, k.record.key_id);
  EXPECT_EQ(res.account, "alice");

  // A second key: different id, secret and salt.
  NewKey k2 = store->create_key("alice", KeyPolicy{}, kT0 + 1);
  EXPECT_NE(k2.record.key_id, k.record.key_id);
  EXPECT_NE(k2.api_key.substr(17), k.api_key.substr(17));
  EXPECT_TRUE(store->authenticate(k2.api_key).has_value());
}

TEST(Keys, OnlyASaltedHashIsStored) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  std::string api_key, key_id;
  {
    auto store = AccountStore::open(path);
    NewKey k = store->create_key("bob", KeyPolicy{});
    api_key = k.api_key;
    key_id = k.record.key_id;
  }
  const std::string secret_text = api_key.substr(17);
  const std::vector<uint8_t> secret = base64url_decode(secret_text);
  ASSERT_EQ(secret.size(), 32u);

  // salt and hash as stored; the hash must be SHA-256(salt || the 32 secret bytes).
  auto db = ServeDb::open(path);
  SqlStatement st(*db, "SELECT salt, secret_sha256 FROM keys WHERE key_id = ?1");
  st.bind(1, key_id);
  ASSERT_TRUE(st.step("select"));
  const std::string salt = st.blob(0), hash = st.blob(1);
  ASSERT_EQ(salt.size(), 16u);
  ASSERT_EQ(hash.size(), 32u);
  std::vector<uint8_t> msg(salt.begin(), salt.end());
  msg.insert(msg.end(), secret.begin(), secret.end());
  const auto want = sha256(msg.data(), msg.size());
  EXPECT_EQ(std::memcmp(want.data(), hash.data(), 32), 0);

  // Neither the secret's text nor its bytes are anywhere in the database files.
  for (const char* suffix : {"", "-wal"}) {
    std::error_code ec;
    if (!std::filesystem::exists(path + suffix, ec)) continue;
    const std::string bytes = read_file(path + suffix);
    EXPECT_EQ(bytes.find(secret_text), std::string::npos) << suffix;
    EXPECT_EQ(bytes.find(std::string(secret.begin(), secret.end())), std::string::npos) << suffix;
  }
}

TEST(Keys, RejectionsSayWhy) {
  TempDir tmp;
  auto store = AccountStore::open(tmp / "serve.db");
  NewKey k = store->create_key("carol", KeyPolicy{});
  auto failure = [&](const std::string& bearer) { return store->check_bearer(bearer).failure; };

  EXPECT_EQ(failure(""), AuthFailure::missing);
  EXPECT_EQ(failure("Bearer "), AuthFailure::missing);
  EXPECT_EQ(failure("Bearer    "), AuthFailure::missing);
  EXPECT_EQ(failure("rtk_"), AuthFailure::malformed);
  EXPECT_EQ(failure("sk-proj-abcdef"), AuthFailure::malformed);
  EXPECT_EQ(failure(k.api_key.substr(0, kApiKeyLength - 1)), AuthFailure::malformed);
  EXPECT_EQ(failure(k.api_key + "A"), AuthFailure::malformed);
  EXPECT_EQ(failure("Basic " + k.api_key), AuthFailure::malformed);
  std::string upper_id = k.api_key;
  for (size_t i = 4; i < 16; ++i) upper_id[i] = static_cast<char>(std::toupper(upper_id[i]));
  if (upper_id != k.api_key) {
    EXPECT_EQ(failure(upper_id), AuthFailure::malformed) << "key ids are lowercase hex";
  }
  std::string bad_char = k.api_key;
  bad_char[30] = '+';  // base64, not base64url
  EXPECT_EQ(failure(bad_char), AuthFailure::malformed);
  // 43 characters carry 258 bits: the last character's two low bits must be zero.
  std::string non_canonical = k.api_key;
  char& last = non_canonical.back();
  const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
  last = alphabet[alphabet.find(last) | 1];
  EXPECT_EQ(failure(non_canonical), AuthFailure::malformed);

  auto wrong = store->check_bearer(flip_secret_char(k.api_key));
  EXPECT_EQ(wrong.failure, AuthFailure::wrong_secret);
  EXPECT_EQ(wrong.key_id, k.record.key_id);
  EXPECT_EQ(wrong.account, "") << "a wrong secret learns nothing about the account";
  EXPECT_FALSE(wrong.key.has_value());

  std::string unknown = k.api_key;
  unknown[4] = unknown[4] == '0' ? '1' : '0';
  EXPECT_EQ(failure(unknown), AuthFailure::unknown_key);
  EXPECT_STREQ(auth_failure_name(AuthFailure::unknown_key), "unknown_key");
}

TEST(Keys, RevokedKeysAreRefused) {
  TempDir tmp;
  auto store = AccountStore::open(tmp / "serve.db");
  NewKey a = store->create_key("dave", KeyPolicy{}, kT0);
  NewKey b = store->create_key("dave", KeyPolicy{}, kT0 + 1);

  KeyRecord r = store->revoke(a.record.key_id, kT0 + 100);
  EXPECT_EQ(r.revoked_unix_ms, kT0 + 100);
  auto res = store->check_bearer(a.api_key);
  EXPECT_EQ(res.failure, AuthFailure::revoked);
  EXPECT_EQ(res.account, "dave");
  EXPECT_FALSE(res.key.has_value());
  // Without the secret, a revoked key is only a wrong secret.
  EXPECT_EQ(store->check_bearer(flip_secret_char(a.api_key)).failure, AuthFailure::wrong_secret);
  EXPECT_TRUE(store->authenticate(b.api_key).has_value()) << "revoking one key leaves the account's others";

  // Revoking again keeps the first time; a whole key or an uppercase id names the key too.
  EXPECT_EQ(store->revoke(a.api_key, kT0 + 200).revoked_unix_ms, kT0 + 100);
  std::string upper = b.record.key_id;
  for (auto& c : upper) c = static_cast<char>(std::toupper(c));
  EXPECT_EQ(store->revoke(upper, kT0 + 300).revoked_unix_ms, kT0 + 300);
  EXPECT_FALSE(store->authenticate(b.api_key).has_value());

  expect_error([&] { store->revoke("0123456789ab"); }, {"no key 0123456789ab", store->path(), "retort keys list"});
  expect_error([&] { store->revoke("xyz"); }, {"xyz", "12 hex digits"});
  EXPECT_FALSE(store->find("0123456789ab").has_value());
}

TEST(Keys, ChangesFromAnotherProcessApplyAfterTheRefreshInterval) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  auto server = AccountStore::open(path, std::chrono::milliseconds(100));  // as `retort serve` holds it
  auto cli = AccountStore::open(path);                                      // as `retort keys` would
  NewKey k = cli->create_key("erin", KeyPolicy{});
  // Refresh until the server sees the new key (at most a few intervals).
  auto until = [&](auto pred) {
    for (int i = 0; i < 100 && !pred(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(20));
    return pred();
  };
  EXPECT_TRUE(until([&] { return server->authenticate(k.api_key).has_value(); }));
  cli->revoke(k.record.key_id);
  EXPECT_TRUE(until([&] { return server->check_bearer(k.api_key).failure == AuthFailure::revoked; }));

  KeyPolicy p;
  p.rpm = 7;
  cli->update_policy(k.record.key_id, p);
  server->refresh();
  EXPECT_EQ(server->find(k.record.key_id)->policy.rpm, 7);
}

TEST(Keys, PoliciesRoundTripAndListNeverShowsSecrets) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  KeyPolicy full;
  full.rpm = 60;
  full.tpm = 40'000;
  full.tokens_per_day = 1'000'000;
  full.max_top_logprobs = 5;
  full.round_logprobs_digits = 2;
  full.watermark = false;
  full.admin = true;
  KeyPolicy refused;
  refused.logprobs_refused = true;
  std::vector<NewKey> made;
  {
    auto store = AccountStore::open(path);
    made.push_back(store->create_key("frank", full, kT0 + 2));
    made.push_back(store->create_key("grace", refused, kT0 + 1));
    made.push_back(store->create_key("frank", KeyPolicy{}, kT0 + 3));
  }
  auto store = AccountStore::open(path);
  auto all = store->list();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0], made[1].record) << "oldest first";
  EXPECT_EQ(all[1], made[0].record);
  EXPECT_EQ(all[2], made[2].record);
  EXPECT_EQ(all[1].policy, full);
  EXPECT_EQ(all[0].policy, refused);
  EXPECT_EQ(all[2].policy, KeyPolicy{});
  auto frank = store->list("frank");
  ASSERT_EQ(frank.size(), 2u);
  EXPECT_EQ(frank[0].account, "frank");
  EXPECT_TRUE(store->list("nobody").empty());
  EXPECT_EQ(store->authenticate(made[0].api_key)->policy, full);

  KeyPolicy changed = full;
  changed.max_top_logprobs.reset();
  changed.rpm = 0;
  EXPECT_EQ(store->update_policy(made[0].record.key_id, changed).policy, changed);
  EXPECT_EQ(store->authenticate(made[0].api_key)->policy, changed) << "a change here applies at once";
  expect_error([&] { store->update_policy("0123456789ab", changed); }, {"no key 0123456789ab"});
}

TEST(Keys, BadValuesNameTheField) {
  TempDir tmp;
  auto store = AccountStore::open(tmp / "serve.db");
  expect_error([&] { store->create_key("", KeyPolicy{}); }, {"account", "1-128 characters"});
  expect_error([&] { store->create_key("has space", KeyPolicy{}); }, {"has space", "letters, digits"});
  expect_error([&] { store->create_key(std::string(129, 'a'), KeyPolicy{}); }, {"1-128"});
  expect_error([&] { store->create_key(std::string("nul\0x", 5), KeyPolicy{}); }, {"account"});
  store->create_key("a.b_c-d@e+f:g", KeyPolicy{});  // every allowed punctuation

  auto with = [](auto set) {
    KeyPolicy p;
    set(p);
    return p;
  };
  expect_error([&] { store->create_key("x", with([](KeyPolicy& p) { p.rpm = -1; })); }, {"rpm", "-1"});
  expect_error([&] { store->create_key("x", with([](KeyPolicy& p) { p.tpm = -5; })); }, {"tpm"});
  expect_error([&] { store->create_key("x", with([](KeyPolicy& p) { p.tokens_per_day = -5; })); },
               {"tokens_per_day"});
  expect_error([&] { store->create_key("x", with([](KeyPolicy& p) { p.max_top_logprobs = -2; })); },
               {"max_top_logprobs"});
  expect_error(
      [&] {
        store->create_key("x", with([](KeyPolicy& p) {
                            p.max_top_logprobs = 3;
                            p.logprobs_refused = true;
                          }));
      },
      {"max_top_logprobs", "contradict"});
  expect_error([&] { store->create_key("x", with([](KeyPolicy& p) { p.round_logprobs_digits = 16; })); },
               {"round_logprobs_digits", "0..15"});
  expect_error([&] { store->create_key("x", with([](KeyPolicy& p) { p.round_logprobs_digits = -2; })); },
               {"round_logprobs_digits"});
  EXPECT_EQ(store->list().size(), 1u) << "refused keys leave nothing behind";
}

TEST(Keys, ManyThreadsAuthenticateWhileKeysChange) {
  TempDir tmp;
  auto store = AccountStore::open(tmp / "serve.db", std::chrono::milliseconds(1));  // refresh constantly
  NewKey stable = store->create_key("stable", KeyPolicy{});
  std::atomic<bool> stop{false};
  std::atomic<int64_t> accepted{0}, refused{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t)
    threads.emplace_back([&] {
      while (!stop) {
        if (store->authenticate(stable.api_key))
          ++accepted;
        else
          ++refused;
      }
    });
  std::vector<NewKey> churn;
  for (int i = 0; i < 40; ++i) {
    churn.push_back(store->create_key(cat("churn", i), KeyPolicy{}));
    EXPECT_TRUE(store->authenticate(churn.back().api_key).has_value()) << "a key works the moment it is created";
    if (i % 2) store->revoke(churn[i - 1].record.key_id);
  }
  stop = true;
  for (auto& t : threads) t.join();
  EXPECT_GT(accepted.load(), 0);
  EXPECT_EQ(refused.load(), 0) << "the stable key must never be refused while others change";
  for (int i = 0; i < 40; ++i) EXPECT_EQ(store->authenticate(churn[i].api_key).has_value(), i % 2 == 1) << i;
}

TEST(Keys, DefaultPathFollowsRetortHome) {
  const char* old = std::getenv("RETORT_HOME");
  const std::string saved = old ? old : "";
  ::setenv("RETORT_HOME", "/srv/retort", 1);
  EXPECT_EQ(default_serve_db_path(), "/srv/retort/serve.db");
  ::unsetenv("RETORT_HOME");
  const char* home = std::getenv("HOME");
  EXPECT_EQ(default_serve_db_path(), std::string(home && *home ? home : ".") + "/.cache/retort/serve.db");
  if (old) ::setenv("RETORT_HOME", saved.c_str(), 1);
}

// ---------------------------------------------------------------------------------------------
// Quotas

KeyRecord key_with(const std::string& id, KeyPolicy p) {
  KeyRecord k;
  k.key_id = id;
  k.account = "acct";
  k.policy = p;
  return k;
}

TEST(Quota, UnlimitedKeysAreAlwaysAdmitted) {
  QuotaTracker q;
  KeyRecord k = key_with("k", KeyPolicy{});
  for (int i = 0; i < 10'000; ++i) {
    Admission a = q.admit(k, kT0);
    ASSERT_TRUE(a.ok);
    EXPECT_EQ(a.remaining_requests, -1);
    EXPECT_EQ(a.remaining_tokens, -1);
    q.record_tokens("k", 1000, kT0);
  }
}

TEST(Quota, RequestsPerMinuteSlide) {
  QuotaTracker q;
  KeyPolicy p;
  p.rpm = 3;
  KeyRecord k = key_with("k", p);
  // Requests at 0 s, 10 s, 20 s fill the window.
  EXPECT_EQ(q.admit(k, kT0).remaining_requests, 2);
  EXPECT_EQ(q.admit(k, kT0 + 10'000).remaining_requests, 1);
  EXPECT_EQ(q.admit(k, kT0 + 20'000).remaining_requests, 0);
  // At 30 s: the oldest (0 s) leaves the window at 60 s -> wait 30 s.
  Admission a = q.admit(k, kT0 + 30'000);
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.reason, "rpm");
  EXPECT_EQ(a.retry_after_seconds, 30);
  EXPECT_NE(a.message.find("3 requests per minute"), std::string::npos) << a.message;
  // 59.5 s: still full, 0.5 s left -> rounded up to 1 s.
  a = q.admit(k, kT0 + 59'500);
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.retry_after_seconds, 1);
  // Refused requests do not count: at exactly 60 s the first has left and one more fits.
  EXPECT_TRUE(q.admit(k, kT0 + kMinute).ok);
  EXPECT_FALSE(q.admit(k, kT0 + kMinute).ok);
  EXPECT_EQ(q.usage("k", kT0 + kMinute).requests_last_minute, 3);
  // Other keys are counted apart.
  EXPECT_TRUE(q.admit(key_with("other", p), kT0 + kMinute).ok);
}

TEST(Quota, TokensPerMinuteSlide) {
  QuotaTracker q;
  KeyPolicy p;
  p.tpm = 1000;
  KeyRecord k = key_with("k", p);
  ASSERT_TRUE(q.admit(k, kT0).ok);
  q.record_tokens("k", 600, kT0);
  Admission a = q.admit(k, kT0 + 5'000);
  ASSERT_TRUE(a.ok);
  EXPECT_EQ(a.remaining_tokens, 400);
  q.record_tokens("k", 300, kT0 + 5'000);
  ASSERT_TRUE(q.admit(k, kT0 + 6'000).ok);  // 900 < 1000: admitted, and this one overshoots
  q.record_tokens("k", 500, kT0 + 6'000);   // window: 600 @0 s, 300 @5 s, 500 @6 s = 1400
  // Below 1000 only once 600 @0 s leaves (1400 - 600 = 800): at 60 s, 50 s from 10 s.
  a = q.admit(k, kT0 + 10'000);
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.reason, "tpm");
  EXPECT_EQ(a.retry_after_seconds, 50);
  EXPECT_EQ(a.remaining_tokens, 0);
  EXPECT_FALSE(q.admit(k, kT0 + 59'999).ok);
  EXPECT_TRUE(q.admit(k, kT0 + 60'000).ok);
  EXPECT_EQ(q.usage("k", kT0 + 60'000).tokens_last_minute, 800);
}

TEST(Quota, TokensPerDayResetAtUtcMidnightAndStartFromTheLedger) {
  QuotaTracker q;
  KeyPolicy p;
  p.tokens_per_day = 10'000;
  KeyRecord k = key_with("k", p);
  const int64_t noon = kT0 + kDay / 2;
  // The ledger says this key used 9,500 tokens earlier today.
  q.seed_day_tokens({{"k", 9'500}}, noon);
  Admission a = q.admit(k, noon);
  ASSERT_TRUE(a.ok);
  EXPECT_EQ(a.remaining_tokens, 500);
  q.record_tokens("k", 700, noon);
  a = q.admit(k, noon + 1);
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.reason, "tokens_per_day");
  EXPECT_EQ(a.retry_after_seconds, (kDay / 2 - 1 + 999) / 1000);  // until 2024-05-02T00:00:00Z
  EXPECT_EQ(q.usage("k", noon + 1).tokens_today, 10'200);
  EXPECT_FALSE(q.admit(k, kT0 + kDay - 1).ok);
  EXPECT_TRUE(q.admit(k, kT0 + kDay).ok) << "a new UTC day starts from zero";
  EXPECT_EQ(q.usage("k", kT0 + kDay).tokens_today, 0);
}

TEST(Quota, TheLongestWaitIsReported) {
  QuotaTracker q;
  KeyPolicy p;
  p.rpm = 1;
  p.tokens_per_day = 100;
  KeyRecord k = key_with("k", p);
  ASSERT_TRUE(q.admit(k, kT0).ok);
  q.record_tokens("k", 100, kT0);
  Admission a = q.admit(k, kT0 + 1000);  // rpm room in 59 s, daily room at midnight
  EXPECT_FALSE(a.ok);
  EXPECT_EQ(a.reason, "tokens_per_day");
  EXPECT_EQ(a.retry_after_seconds, (kDay - 1000) / 1000);
}

TEST(Quota, SeededFromARealLedger) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  auto store = AccountStore::open(path);
  NewKey k = store->create_key("heidi", KeyPolicy{});
  const int64_t now = kT0 + kDay + 3'600'000;  // 2024-05-02T01:00Z
  {
    auto ledger = Ledger::open(path);
    auto row = [&](const char* id, int64_t started, int64_t prompt, int64_t completion) {
      LedgerRow r;
      r.request_id = id;
      r.account = "heidi";
      r.key_id = k.record.key_id;
      r.started_unix_ms = started;
      r.prompt_tokens = prompt;
      r.completion_tokens = completion;
      r.http_status = 200;
      ledger->append(r);
    };
    row("yesterday", kT0 + kDay - 1, 1000, 1000);  // 2024-05-01T23:59:59.999Z: not today
    row("today-1", kT0 + kDay, 10, 20);
    row("today-2", now - 1, 5, 7);
  }
  QuotaTracker q;
  q.seed_day_tokens(store->tokens_today_by_key(now), now);
  EXPECT_EQ(q.usage(k.record.key_id, now).tokens_today, 42);
}

// ---------------------------------------------------------------------------------------------
// `retort keys`, as a user runs it

struct CliResult {
  int code = -1;
  std::string out, err;
};

// Runs the built `retort` with `args` (shell-quoted by the caller); stdout and stderr apart.
CliResult run_keys_cli(const std::string& args, const std::string& err_file) {
  CliResult r;
  const std::string cmd = cat(RETORT_CLI_PATH, " ", args, " 2>", err_file);
  FILE* f = ::popen(cmd.c_str(), "r");
  if (f == nullptr) return r;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) r.out.append(buf, n);
  const int st = ::pclose(f);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  r.err = read_file(err_file);
  return r;
}

TEST(KeysCli, CreateListRevokeUsage) {
  if (!std::filesystem::exists(RETORT_CLI_PATH)) GTEST_SKIP() << "build retort_cli first: " << RETORT_CLI_PATH;
  using nlohmann::json;
  TempDir tmp;
  const std::string db = tmp / "serve.db", err = tmp / "stderr.txt";
  auto keys = [&](const std::string& args) { return run_keys_cli("keys " + args + " --db " + db, err); };

  // Text mode: the key alone on stdout, the note on stderr.
  CliResult made = keys("create --account alice --rpm 5 --max-top-logprobs 3 --round-logprobs 2");
  ASSERT_EQ(made.code, 0) << made.err;
  const std::string alice_key = made.out.substr(0, made.out.find('\n'));
  EXPECT_EQ(made.out, alice_key + "\n");
  EXPECT_TRUE(std::regex_match(alice_key, std::regex("rtk_[0-9a-f]{12}_[A-Za-z0-9_-]{43}"))) << made.out;
  EXPECT_NE(made.err.find("only time the key is shown"), std::string::npos) << made.err;

  CliResult bob = keys("create --account bob --max-top-logprobs none --watermark off --admin --json");
  ASSERT_EQ(bob.code, 0) << bob.err;
  const json bj = json::parse(bob.out);
  const std::string bob_key = bj.at("api_key");
  EXPECT_EQ(bj.at("account"), "bob");
  EXPECT_EQ(bj.at("policy").at("logprobs"), "refused");
  EXPECT_TRUE(bj.at("policy").at("max_top_logprobs").is_null());
  EXPECT_EQ(bj.at("policy").at("watermark"), false);
  EXPECT_EQ(bj.at("policy").at("admin"), true);

  // The library accepts what the CLI printed, with the policy the flags gave.
  {
    auto store = AccountStore::open(db);
    auto a = store->authenticate("Bearer " + alice_key);
    ASSERT_TRUE(a.has_value());
    EXPECT_EQ(a->account, "alice");
    EXPECT_EQ(a->policy.rpm, 5);
    EXPECT_EQ(a->policy.max_top_logprobs, 3);
    EXPECT_EQ(a->policy.round_logprobs_digits, 2);
    EXPECT_TRUE(a->policy.watermark);
    EXPECT_FALSE(a->policy.admin);
    auto b = store->authenticate(bob_key);
    ASSERT_TRUE(b.has_value());
    EXPECT_TRUE(b->policy.logprobs_refused);
    EXPECT_TRUE(b->policy.admin);
  }

  CliResult listed = keys("list --json");
  ASSERT_EQ(listed.code, 0) << listed.err;
  const json lj = json::parse(listed.out);
  ASSERT_EQ(lj.at("keys").size(), 2u);
  EXPECT_EQ(lj.at("keys")[0].at("account"), "alice");
  EXPECT_EQ(lj.at("keys")[0].at("key_id"), alice_key.substr(4, 12));
  EXPECT_FALSE(lj.at("keys")[0].contains("api_key"));
  for (const auto* key : {&alice_key, &bob_key}) {
    EXPECT_EQ(listed.out.find(key->substr(17)), std::string::npos) << "list must never show a secret";
    CliResult text = keys("list");
    EXPECT_EQ(text.out.find(key->substr(17)), std::string::npos);
    EXPECT_NE(text.out.find(key->substr(4, 12)), std::string::npos) << text.out;
  }

  CliResult revoked = keys("revoke " + alice_key.substr(4, 12) + " --json");
  ASSERT_EQ(revoked.code, 0) << revoked.err;
  EXPECT_FALSE(json::parse(revoked.out).at("revoked").is_null());
  EXPECT_EQ(json::parse(revoked.out).at("already_revoked"), false);
  EXPECT_EQ(AccountStore::open(db)->check_bearer(alice_key).failure, AuthFailure::revoked);

  // Usage reads what a server's ledger wrote.
  {
    auto ledger = Ledger::open(db);
    for (int i = 0; i < 3; ++i) {
      LedgerRow r;
      r.request_id = cat("req-", i);
      r.account = "bob";
      r.key_id = bj.at("key_id");
      r.started_unix_ms = kT0 + i * kDay;
      r.http_status = i == 2 ? 429 : 200;
      r.prompt_tokens = 10;
      r.completion_tokens = i == 2 ? 0 : 5;
      ledger->append(r);
    }
  }
  CliResult usage = keys("usage --account bob --since 2024-05-02 --json");
  ASSERT_EQ(usage.code, 0) << usage.err;
  const json uj = json::parse(usage.out);
  EXPECT_EQ(uj.at("total").at("requests"), 2);
  EXPECT_EQ(uj.at("total").at("prompt_tokens"), 20);
  EXPECT_EQ(uj.at("total").at("completion_tokens"), 5);
  EXPECT_EQ(uj.at("total").at("by_status").at("200"), 1);
  EXPECT_EQ(uj.at("total").at("by_status").at("429"), 1);
  EXPECT_EQ(uj.at("by_day").size(), 2u);
  EXPECT_EQ(uj.at("by_day")[0].at("day"), "2024-05-02");
  EXPECT_EQ(uj.at("since"), "2024-05-02T00:00:00Z");
  CliResult usage_text = keys("usage");
  EXPECT_EQ(usage_text.code, 0) << usage_text.err;
  EXPECT_NE(usage_text.out.find("3 requests"), std::string::npos) << usage_text.out;

  // Errors: exit 1 and a message that names the thing and what to do.
  CliResult unknown = keys("revoke 0123456789ab");
  EXPECT_EQ(unknown.code, 1);
  EXPECT_NE(unknown.err.find("no key 0123456789ab"), std::string::npos) << unknown.err;
  CliResult bad_cap = keys("create --account carol --max-top-logprobs many");
  EXPECT_EQ(bad_cap.code, 1);
  EXPECT_NE(bad_cap.err.find("--max-top-logprobs"), std::string::npos) << bad_cap.err;
  CliResult bad_since = keys("usage --since last-week");
  EXPECT_EQ(bad_since.code, 1);
  EXPECT_NE(bad_since.err.find("--since"), std::string::npos) << bad_since.err;
  const std::string missing = tmp / "missing.db";
  CliResult no_db = run_keys_cli("keys list --db " + missing, err);
  EXPECT_EQ(no_db.code, 1);
  EXPECT_NE(no_db.err.find("does not exist"), std::string::npos) << no_db.err;
  EXPECT_FALSE(std::filesystem::exists(missing)) << "list must not create a database";
}

}  // namespace

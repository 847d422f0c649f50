// Tests of the usage ledger (retort/serve/ledger.h) and the serve database file (serve_db.h):
// rows read back column by column through plain SQL, batching, duplicate ids, the usage aggregates
// recomputed here by hand, and durability: a child process writing rows is killed with SIGKILL, and
// every row it reported committed must be there, complete, with nothing after the last whole batch.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <chrono>
#include <map>
#include <cstdio>
#include <fstream>
#include <thread>
#include <vector>

#include "retort/protect/keys.h"
#include "retort/serve/accounts.h"
#include "retort/serve/ledger.h"
#include "retort/serve/serve_db.h"
#include "test_util.h"

namespace {

using namespace retort;
using retort_test::expect_error;
using retort_test::TempDir;

constexpr int64_t kDay = 86'400'000;
constexpr int64_t kT0 = 1'714'521'600'000;  // 2024-05-01T00:00:00Z

// Row i of a deterministic sequence: every field is a function of i, so a reader can tell a
// complete row from a damaged one without any other record.
LedgerRow row_for(int64_t i) {
  LedgerRow r;
  char id[32];
  std::snprintf(id, sizeof id, "req-%08lld", static_cast<long long>(i));
  r.request_id = id;
  r.account = i % 11 == 0 ? "" : cat("acct-", i % 3);
  r.key_id = r.account.empty() ? "" : cat("00000000000", i % 3);
  r.endpoint = i % 2 ? "/v1/chat/completions" : "/v1/completions";
  r.model = "smollm2-135m-instruct";
  r.client = cat("127.0.0.1:", 40000 + i % 1000);
  r.started_unix_ms = kT0 + i * 1000;
  r.ended_unix_ms = r.started_unix_ms + 10 + i % 97;
  r.http_status = r.account.empty() ? 401 : (i % 5 == 0 ? 429 : 200);
  r.error_type = r.http_status == 200 ? "" : "invalid_request_error";
  const std::string prompt = cat("prompt ", i);
  r.prompt_sha256 = sha256_hex(reinterpret_cast<const uint8_t*>(prompt.data()), prompt.size());
  r.prompt_tokens = i % 50;
  r.completion_tokens = r.http_status == 200 ? i % 200 : 0;
  r.n = 1 + static_cast<int>(i % 3);
  r.stream = i % 4 == 0;
  r.logprobs_requested = i % 6 == 0 ? static_cast<int>(i % 21) : -1;
  r.logprobs_granted = r.logprobs_requested >= 0 ? std::min(r.logprobs_requested, 5) : -1;
  r.watermark_scheme = r.http_status == 200 ? "kgw" : "";
  r.watermark_key_commitment = r.watermark_scheme.empty() ? "" : std::string(64, 'a' + static_cast<char>(i % 3));
  r.policy = cat("{\"i\":", i, ",\"top_logprobs_capped\":", r.logprobs_granted, "}");
  r.finish_reason = r.http_status == 200 ? (i % 2 ? "stop" : "length") : "";
  return r;
}

// Every ledger row in insertion order, through plain SQL (not through the code under test).
std::vector<LedgerRow> read_rows(const std::string& path) {
  auto db = ServeDb::open(path);
  SqlStatement st(*db,
                  "SELECT request_id, account, key_id, endpoint, model, client, started_unix_ms, ended_unix_ms, "
                  "http_status, error_type, prompt_sha256, prompt_tokens, completion_tokens, n, stream, "
                  "logprobs_requested, logprobs_granted, watermark_scheme, watermark_key_commitment, policy, "
                  "finish_reason FROM ledger ORDER BY rowid");
  std::vector<LedgerRow> out;
  while (st.step("read rows")) {
    LedgerRow r;
    r.request_id = st.text(0);
    r.account = st.text(1);
    r.key_id = st.text(2);
    r.endpoint = st.text(3);
    r.model = st.text(4);
    r.client = st.text(5);
    r.started_unix_ms = st.int64(6);
    r.ended_unix_ms = st.int64(7);
    r.http_status = static_cast<int>(st.int64(8));
    r.error_type = st.text(9);
    r.prompt_sha256 = st.text(10);
    r.prompt_tokens = st.int64(11);
    r.completion_tokens = st.int64(12);
    r.n = static_cast<int>(st.int64(13));
    r.stream = st.int64(14) != 0;
    r.logprobs_requested = static_cast<int>(st.int64(15));
    r.logprobs_granted = static_cast<int>(st.int64(16));
    r.watermark_scheme = st.text(17);
    r.watermark_key_commitment = st.text(18);
    r.policy = st.text(19);
    r.finish_reason = st.text(20);
    out.push_back(std::move(r));
  }
  return out;
}

std::string integrity_check(const std::string& path) {
  auto db = ServeDb::open(path);
  SqlStatement st(*db, "PRAGMA integrity_check");
  std::string all;
  while (st.step("integrity_check")) all += st.text(0);
  return all;
}

// ---------------------------------------------------------------------------------------------
// The file

TEST(ServeDb, CreatesSchemaPrivateAndWal) {
  TempDir tmp;
  const std::string path = tmp / "sub/dir/serve.db";  // parent directories are created
  {
    auto db = ServeDb::open(path);
    SqlStatement v(*db, "PRAGMA user_version");
    ASSERT_TRUE(v.step("v"));
    EXPECT_EQ(v.int64(0), kServeDbSchemaVersion);
    SqlStatement a(*db, "PRAGMA application_id");
    ASSERT_TRUE(a.step("a"));
    EXPECT_EQ(a.int64(0), kServeDbApplicationId);
    SqlStatement j(*db, "PRAGMA journal_mode");
    ASSERT_TRUE(j.step("j"));
    EXPECT_EQ(j.text(0), "wal");
  }
  struct stat st {};
  ASSERT_EQ(::stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u) << "keys and ledger must not be readable by other users";
  auto again = ServeDb::open(path);  // reopening a database of this version works
  EXPECT_EQ(again->path(), path);
}

TEST(ServeDb, RefusesFilesThatAreNotOurs) {
  TempDir tmp;
  const std::string text = tmp / "notes.txt";
  {
    std::ofstream(text) << "this is not a database, and it is long enough to have a header's worth of bytes\n";
  }
  expect_error([&] { ServeDb::open(text); }, {text, "not a retort serve database", "--db"});
  EXPECT_EQ(read_file(text).substr(0, 12), "this is not ") << "a refused file must be left unchanged";

  const std::string other = tmp / "other.db";
  {
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(other.c_str(), &h), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(h, "CREATE TABLE t(x); INSERT INTO t VALUES(1);", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(h);
  }
  expect_error([&] { ServeDb::open(other); }, {other, "another program", "--db"});

  const std::string newer = tmp / "newer.db";
  ServeDb::open(newer);
  {
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(newer.c_str(), &h), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(h, "PRAGMA user_version=99", nullptr, nullptr, nullptr), SQLITE_OK);
    sqlite3_close(h);
  }
  expect_error([&] { ServeDb::open(newer); }, {newer, "schema version 99", "upgrade retort"});

  expect_error([&] { ServeDb::open(tmp.path.string()); }, {"is a directory"});
}

TEST(ServeDb, Iso8601) {
  EXPECT_EQ(iso8601_utc(kT0), "2024-05-01T00:00:00Z");
  EXPECT_EQ(iso8601_utc(kT0 + 3723004), "2024-05-01T01:02:03.004Z");
  EXPECT_EQ(parse_iso8601_utc("2024-05-01", "--since"), kT0);
  EXPECT_EQ(parse_iso8601_utc("2024-05-01T01:02", "--since"), kT0 + 3720000);
  EXPECT_EQ(parse_iso8601_utc("2024-05-01 01:02:03Z", "--since"), kT0 + 3723000);
  EXPECT_EQ(parse_iso8601_utc("2024-05-01T01:02:03.004Z", "--since"), kT0 + 3723004);
  EXPECT_EQ(parse_iso8601_utc("2024-05-01T01:02:03.4", "--since"), kT0 + 3723400);
  EXPECT_EQ(parse_iso8601_utc("1970-01-01", "--since"), 0);
  for (const char* bad : {"", "2024", "2024-5-1", "2024-02-30", "2024-13-01", "2024-05-01T25:00", "2024-05-01X",
                          "yesterday", "2024-05-01T01:02:03.0001"})
    expect_error([&] { parse_iso8601_utc(bad, "--since"); }, {"--since", "YYYY-MM-DD"});
}

// ---------------------------------------------------------------------------------------------
// Writing

TEST(Ledger, RowsReadBackExactly) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  std::vector<LedgerRow> want;
  {
    auto ledger = Ledger::open(path);
    for (int64_t i = 0; i < 1000; ++i) {
      want.push_back(row_for(i));
      ledger->append(row_for(i));
    }
    want.push_back(row_for(1000));
    want.back().policy = "{\"note\":\"quotes ' \\\" and unicode \xC3\xA9\"}";  // text stored as given
    ledger->append(want.back());
    ledger->flush();
    auto s = ledger->stats();
    EXPECT_EQ(s.appended, 1001u);
    EXPECT_EQ(s.committed, 1001u);
    EXPECT_EQ(s.queued, 0u);
    EXPECT_EQ(s.rejected, 0u);
    EXPECT_GE(s.batches, 1u);
    EXPECT_TRUE(ledger->healthy());
    // Readable while the ledger is still open (another connection, as `retort keys usage` is).
    EXPECT_EQ(read_rows(path), want);
  }
  EXPECT_EQ(read_rows(path), want);
  EXPECT_EQ(integrity_check(path), "ok");
}

TEST(Ledger, DestructorFlushes) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  {
    auto ledger = Ledger::open(path);
    for (int64_t i = 0; i < 777; ++i) ledger->append(row_for(i));
  }  // no flush(): the destructor commits what is queued
  EXPECT_EQ(read_rows(path).size(), 777u);
}

TEST(Ledger, FlushWithNothingAppendedReturns) {
  TempDir tmp;
  auto ledger = Ledger::open(tmp / "serve.db");
  ledger->flush();
  EXPECT_EQ(ledger->stats().committed, 0u);
}

TEST(Ledger, DuplicateRequestIdIsRejectedAloneAndTheBatchKept) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  auto ledger = Ledger::open(path);
  ledger->append(row_for(0));
  ledger->append(row_for(1));
  LedgerRow dup = row_for(0);
  dup.http_status = 500;
  ledger->append(dup);  // same request_id as the first: the first row stays
  ledger->append(row_for(2));
  ledger->flush();
  auto s = ledger->stats();
  EXPECT_EQ(s.committed, 4u);
  EXPECT_EQ(s.rejected, 1u);
  EXPECT_NE(ledger->last_error().find("req-00000000"), std::string::npos) << ledger->last_error();
  EXPECT_TRUE(ledger->healthy());
  auto rows = read_rows(path);
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0], row_for(0));
  EXPECT_EQ(rows[1], row_for(1));
  EXPECT_EQ(rows[2], row_for(2));
}

// Served texts (record_completions): one row per choice, committed with the request's ledger row; the text
// comes back byte for byte (quotes, newlines, unicode, an empty choice); a row the ledger rejects brings no
// texts; the account filter.
TEST(Ledger, ServedTextsAreWrittenWithTheirRowAndReadBackExactly) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  LedgerRow a = row_for(1);  // acct-1, chat, 200, kgw
  a.served = ServedTexts{"[{\"role\":\"user\",\"content\":"
                         "\"na\u00efve caf\u00e9 \u2014 \u65e5\u672c\u8a9e \U0001F642\"}]",
                         {"R\u00e9ponse \u00ab un \u00bb \"quoted\" 'single'\n\U0001F642", ""}};
  LedgerRow b = row_for(2);  // acct-2, completions
  b.served = ServedTexts{"\"Once upon\"", {" a time"}};
  LedgerRow dup = row_for(1);  // the same request_id again: rejected, and its texts with it
  dup.served = ServedTexts{"\"other\"", {"must not replace", "nor add", "a third"}};
  {
    auto ledger = Ledger::open(path);
    ledger->append(a);
    ledger->append(b);
    ledger->append(row_for(3));  // acct-0, nothing recorded
    ledger->append(dup);
    ledger->flush();
    EXPECT_EQ(ledger->stats().rejected, 1u);
  }
  auto db = ServeDb::open(path);
  auto read = [&](const std::vector<std::string>& accounts) {
    std::vector<ServedTextRecord> out;
    for_each_served_text(*db, accounts, [&](const ServedTextRecord& r) { out.push_back(r); });
    return out;
  };
  auto rec = [](const LedgerRow& r, int64_t choice) {
    return ServedTextRecord{r.request_id, choice, r.account, r.started_unix_ms, r.endpoint, r.served->prompt,
                            r.served->completions[size_t(choice)], r.watermark_scheme, r.watermark_key_commitment};
  };
  const std::vector<ServedTextRecord> all = {rec(a, 0), rec(a, 1), rec(b, 0)};
  EXPECT_EQ(read({}), all);
  EXPECT_EQ(read({"acct-2"}), std::vector<ServedTextRecord>{rec(b, 0)});
  EXPECT_EQ(read({"nobody", "acct-1"}), (std::vector<ServedTextRecord>{rec(a, 0), rec(a, 1)}));
  EXPECT_TRUE(read({"acct-0"}).empty());
  EXPECT_EQ(count_served_texts(*db), (std::map<std::string, int64_t>{{"acct-1", 2}, {"acct-2", 1}}));
  const auto rows = read_rows(path);  // the ledger rows themselves are unchanged
  ASSERT_EQ(rows.size(), 3u);
  EXPECT_EQ(rows[0], row_for(1));
}

// A version-2 file (before served_texts) is upgraded in place and keeps its rows; a file without the table
// is refused by the reader with what to do.
TEST(ServeDb, UpgradesAVersion2FileInPlace) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  {
    auto ledger = Ledger::open(path);
    ledger->append(row_for(1));
  }
  auto raw_exec = [&](const char* sql) {
    sqlite3* h = nullptr;
    ASSERT_EQ(sqlite3_open(path.c_str(), &h), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(h, sql, nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(h);
    sqlite3_close(h);
  };
  raw_exec("DROP TABLE served_texts; PRAGMA user_version=2");
  {
    auto db = ServeDb::open(path);
    SqlStatement v(*db, "PRAGMA user_version");
    ASSERT_TRUE(v.step("v"));
    EXPECT_EQ(v.int64(0), 3);
    EXPECT_TRUE(count_served_texts(*db).empty());
  }
  EXPECT_EQ(read_rows(path), std::vector<LedgerRow>{row_for(1)});
  raw_exec("DROP TABLE served_texts");  // version 3 without the table: not recreated, and said so
  auto db = ServeDb::open(path);
  expect_error([&] { count_served_texts(*db); }, {path, "no served_texts table", "record_completions"});
}

TEST(Ledger, EmptyRequestIdIsAnError) {
  TempDir tmp;
  auto ledger = Ledger::open(tmp / "serve.db");
  LedgerRow r = row_for(0);
  r.request_id.clear();
  expect_error([&] { ledger->append(r); }, {"request_id"});
}

TEST(Ledger, ManyThreadsAppendWhileAnotherConnectionReads) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  constexpr int kThreads = 4, kPerThread = 20'000;
  auto ledger = Ledger::open(path);
  auto store = AccountStore::open(path);  // the server holds both on one file
  std::atomic<bool> done{false};
  std::thread reader([&] {
    while (!done) {
      auto r = store->usage({});
      EXPECT_LE(r.total.requests, int64_t{kThreads} * kPerThread);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
  });
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t)
    writers.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) ledger->append(row_for(int64_t{t} * kPerThread + i));
    });
  for (auto& w : writers) w.join();
  const double append_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ledger->flush();
  const double total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  done = true;
  reader.join();
  auto s = ledger->stats();
  EXPECT_EQ(s.committed, uint64_t{kThreads} * kPerThread);
  EXPECT_EQ(s.rejected, 0u);
  EXPECT_EQ(store->usage({}).total.requests, int64_t{kThreads} * kPerThread);
  // Informational, not a benchmark: appends should cost the HTTP threads about a microsecond.
  std::printf("[ ledger ] %d rows: appended in %.3f s, committed in %.3f s (%.0f rows/s, %llu batches)\n",
              kThreads * kPerThread, append_s, total_s, kThreads * kPerThread / total_s,
              static_cast<unsigned long long>(s.batches));
}

// ---------------------------------------------------------------------------------------------
// Reading

TEST(Ledger, UsageAggregatesMatchARecount) {
  TempDir tmp;
  const std::string path = tmp / "serve.db";
  constexpr int64_t kRows = 900;  // spread evenly over three UTC days
  std::vector<LedgerRow> rows;
  for (int64_t i = 0; i < kRows; ++i) {
    LedgerRow r = row_for(i);
    r.started_unix_ms = kT0 + i * (3 * kDay / kRows);
    rows.push_back(r);
  }
  {
    auto ledger = Ledger::open(path);
    for (const auto& r : rows) ledger->append(r);
  }
  auto store = AccountStore::open(path);

  auto recount = [&](const std::function<bool(const LedgerRow&)>& keep) {
    UsageTotals t;
    for (const auto& r : rows)
      if (keep(r)) {
        t.requests += 1;
        t.prompt_tokens += r.prompt_tokens;
        t.completion_tokens += r.completion_tokens;
        t.logprobs_requests += r.logprobs_requested >= 0;
        t.by_status[r.http_status] += 1;
      }
    return t;
  };
  auto expect_same = [](const UsageTotals& got, const UsageTotals& want, const std::string& what) {
    EXPECT_EQ(got.requests, want.requests) << what;
    EXPECT_EQ(got.prompt_tokens, want.prompt_tokens) << what;
    EXPECT_EQ(got.completion_tokens, want.completion_tokens) << what;
    EXPECT_EQ(got.logprobs_requests, want.logprobs_requests) << what;
    EXPECT_EQ(got.by_status, want.by_status) << what;
  };

  UsageReport all = store->usage({});
  expect_same(all.total, recount([](const LedgerRow&) { return true; }), "total");
  EXPECT_EQ(all.by_account.size(), 4u);  // acct-0, acct-1, acct-2 and "" (unauthenticated)
  for (const auto& [account, t] : all.by_account)
    expect_same(t, recount([&](const LedgerRow& r) { return r.account == account; }), "account " + account);
  for (const auto& [key_id, t] : all.by_key) {
    expect_same(t, recount([&](const LedgerRow& r) { return r.key_id == key_id; }), "key " + key_id);
    EXPECT_EQ(all.key_account.at(key_id), key_id.empty() ? "" : cat("acct-", key_id.back()));
  }
  ASSERT_EQ(all.by_day.size(), 3u);
  const char* days[] = {"2024-05-01", "2024-05-02", "2024-05-03"};
  for (int d = 0; d < 3; ++d) {
    ASSERT_TRUE(all.by_day.count(days[d])) << days[d];
    expect_same(all.by_day.at(days[d]), recount([&](const LedgerRow& r) {
                  return r.started_unix_ms >= kT0 + d * kDay && r.started_unix_ms < kT0 + (d + 1) * kDay;
                }),
                days[d]);
  }

  UsageQuery q;
  q.account = "acct-1";
  q.since_unix_ms = parse_iso8601_utc("2024-05-02", "--since");
  q.until_unix_ms = parse_iso8601_utc("2024-05-03", "--until");
  UsageReport one = store->usage(q);
  expect_same(one.total, recount([&](const LedgerRow& r) {
                return r.account == "acct-1" && r.started_unix_ms >= *q.since_unix_ms &&
                       r.started_unix_ms < *q.until_unix_ms;
              }),
              "acct-1 on 2024-05-02");
  EXPECT_EQ(one.by_day.size(), 1u);
  EXPECT_EQ(one.by_account.size(), 1u);

  UsageQuery k;
  k.key_id = "000000000002";
  expect_same(store->usage(k).total, recount([](const LedgerRow& r) { return r.key_id == "000000000002"; }), "key");

  // Today's tokens per key, for the quota tracker: only the rows of the UTC day of `now`.
  const int64_t now = kT0 + 2 * kDay + 5;
  auto today = store->tokens_today_by_key(now);
  for (const auto& [key_id, tokens] : today) {
    int64_t want = 0;
    for (const auto& r : rows)
      if (r.key_id == key_id && r.started_unix_ms >= kT0 + 2 * kDay) want += r.prompt_tokens + r.completion_tokens;
    EXPECT_EQ(tokens, want) << key_id;
  }
  EXPECT_EQ(today.count(""), 0u) << "unauthenticated rows belong to no key";
  EXPECT_EQ(today.size(), 3u);
}

// ---------------------------------------------------------------------------------------------
// kill -9

// The child appends rows row_for(0), row_for(1), ... without pause, and after every flush() writes the
// number of rows committed so far (int64) to `fd`. It runs until killed.
[[noreturn]] void crash_child(const std::string& path, int fd, int flush_every) {
  try {
    auto ledger = Ledger::open(path);
    for (int64_t i = 0;; ++i) {
      ledger->append(row_for(i));
      if ((i + 1) % flush_every == 0) {
        ledger->flush();
        const int64_t committed = i + 1;
        if (::write(fd, &committed, sizeof committed) != sizeof committed) ::_exit(4);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "crash child: %s\n", e.what());
  }
  ::_exit(3);
}

TEST(Ledger, CommittedRowsSurviveKill9AndNothingIsHalfWritten) {
  TempDir tmp;
  struct Round {
    int flush_every;      // rows between flushes in the child
    int64_t kill_after;   // rows reported committed before the parent kills it
    int extra_delay_us;   // then this long: the child keeps appending and its writer keeps committing
                          // batches (every 10 ms or 256 rows), so the kill lands inside one at times
  };
  const Round rounds[] = {{500, 2000, 0},        {100, 5000, 300},     {3000, 9000, 1500}, {50, 1000, 50},
                          {2000, 2000, 7000},    {1000, 3000, 13000},  {5000, 5000, 29000},
                          {1000, 1000, 41000}};
  int r = 0;
  for (const Round& round : rounds) {
    SCOPED_TRACE(cat("round ", r));
    const std::string path = tmp / cat("serve", r++, ".db");
    int fds[2];
    ASSERT_EQ(::pipe(fds), 0);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) {
      ::close(fds[0]);
      crash_child(path, fds[1], round.flush_every);
    }
    ::close(fds[1]);
    int64_t reported = 0, v = 0;
    while (reported < round.kill_after && ::read(fds[0], &v, sizeof v) == static_cast<ssize_t>(sizeof v)) reported = v;
    ASSERT_GE(reported, round.kill_after) << "the child stopped before reporting enough rows";
    if (round.extra_delay_us) ::usleep(round.extra_delay_us);
    ASSERT_EQ(::kill(pid, SIGKILL), 0);
    int status = 0;
    ASSERT_EQ(::waitpid(pid, &status, 0), pid);
    ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;
    // Reports written before the kill, still in the pipe.
    while (::read(fds[0], &v, sizeof v) == static_cast<ssize_t>(sizeof v)) reported = v;
    ::close(fds[0]);

    EXPECT_EQ(integrity_check(path), "ok");
    const auto rows = read_rows(path);
    EXPECT_GE(static_cast<int64_t>(rows.size()), reported) << "rows the child saw committed are missing";
    // Batches commit in order and whole: the rows are exactly row_for(0 .. n-1).
    for (size_t i = 0; i < rows.size(); ++i)
      if (!(rows[i] == row_for(static_cast<int64_t>(i)))) {
        ADD_FAILURE() << "row " << i << " (" << rows[i].request_id << ") differs from what was appended";
        break;
      }
    std::printf("[ ledger ] round %d: killed after %lld reported committed, %zu rows on disk\n", r - 1,
                static_cast<long long>(reported), rows.size());
    // The server can reopen it and keep appending after the crash.
    auto ledger = Ledger::open(path);
    ledger->append(row_for(static_cast<int64_t>(rows.size())));
    ledger->flush();
    EXPECT_EQ(read_rows(path).size(), rows.size() + 1);
  }
}

}  // namespace

#include "retort/serve/serve_db.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <filesystem>

#include "retort/util/error.h"

namespace fs = std::filesystem;

namespace retort {

namespace {

constexpr int kBusyTimeoutMs = 5000;

const char* kSchemaV1 = R"sql(
CREATE TABLE keys(
  key_id TEXT PRIMARY KEY NOT NULL,
  account TEXT NOT NULL,
  salt BLOB NOT NULL,
  secret_sha256 BLOB NOT NULL,
  rpm INTEGER NOT NULL DEFAULT 0,
  tpm INTEGER NOT NULL DEFAULT 0,
  tokens_per_day INTEGER NOT NULL DEFAULT 0,
  max_top_logprobs INTEGER,
  logprobs_refused INTEGER NOT NULL DEFAULT 0,
  round_logprobs_digits INTEGER NOT NULL DEFAULT -1,
  watermark INTEGER NOT NULL DEFAULT 1,
  admin INTEGER NOT NULL DEFAULT 0,
  created_unix_ms INTEGER NOT NULL,
  revoked_unix_ms INTEGER
);
CREATE INDEX keys_account ON keys(account);
CREATE TABLE ledger(
  request_id TEXT PRIMARY KEY NOT NULL,
  account TEXT NOT NULL,
  key_id TEXT NOT NULL,
  endpoint TEXT NOT NULL,
  model TEXT NOT NULL,
  client TEXT NOT NULL,
  started_unix_ms INTEGER NOT NULL,
  ended_unix_ms INTEGER NOT NULL,
  http_status INTEGER NOT NULL,
  error_type TEXT NOT NULL,
  prompt_sha256 TEXT NOT NULL,
  prompt_tokens INTEGER NOT NULL,
  completion_tokens INTEGER NOT NULL,
  n INTEGER NOT NULL,
  stream INTEGER NOT NULL,
  logprobs_requested INTEGER NOT NULL,
  logprobs_granted INTEGER NOT NULL,
  watermark_scheme TEXT NOT NULL,
  watermark_key_commitment TEXT NOT NULL,
  policy TEXT NOT NULL,
  finish_reason TEXT NOT NULL
);
CREATE INDEX ledger_started ON ledger(started_unix_ms);
CREATE INDEX ledger_key_started ON ledger(key_id, started_unix_ms);
)sql";

// Version 2 adds the crawl monitor's tables (a version-1 file is upgraded in place on open).
const char* kSchemaV2Monitor = R"sql(
CREATE TABLE IF NOT EXISTS monitor_events(
  request_id TEXT PRIMARY KEY,
  account TEXT NOT NULL,
  unix_ms INTEGER NOT NULL,
  event TEXT NOT NULL,
  embedding BLOB
);
CREATE INDEX IF NOT EXISTS monitor_events_account ON monitor_events(account, unix_ms);
CREATE TABLE IF NOT EXISTS monitor_actions(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  unix_ms INTEGER NOT NULL,
  subject TEXT NOT NULL,
  members TEXT NOT NULL,
  actions TEXT NOT NULL,
  score REAL NOT NULL,
  requests INTEGER NOT NULL,
  reasons TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS monitor_verdicts(
  subject TEXT PRIMARY KEY,
  updated_unix_ms INTEGER NOT NULL,
  verdict TEXT NOT NULL
);
)sql";

// Version 3 adds the texts served, for servers that record them (record_completions; empty otherwise). A
// version-1 or -2 file is upgraded in place on open. Rows come from the ledger's writer, in the transaction
// of their request's ledger row, so a text is on disk exactly when its row is.
const char* kSchemaV3ServedTexts = R"sql(
CREATE TABLE IF NOT EXISTS served_texts(
  request_id TEXT NOT NULL,
  choice INTEGER NOT NULL,
  account TEXT NOT NULL,
  unix_ms INTEGER NOT NULL,
  endpoint TEXT NOT NULL,
  prompt TEXT NOT NULL,
  completion TEXT NOT NULL,
  watermark_scheme TEXT NOT NULL,
  watermark_key_commitment TEXT NOT NULL,
  PRIMARY KEY(request_id, choice)
);
CREATE INDEX IF NOT EXISTS served_texts_account ON served_texts(account, unix_ms);
)sql";

// Creates the file 0600 when it does not exist, so keys and ledger are not world-readable (SQLite
// gives its -wal and -shm files the same mode).
void create_private_file(const std::string& path) {
  const fs::path p(path);
  std::error_code ec;
  if (p.has_parent_path() && !fs::exists(p.parent_path(), ec)) {
    fs::create_directories(p.parent_path(), ec);
    check(!ec, "serve db ", path, ": cannot create the directory ", p.parent_path().string(), ": ", ec.message(),
          "; create it or pass another --db");
  }
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd >= 0) {
    ::close(fd);
    return;
  }
  check(errno == EEXIST, "serve db ", path, ": cannot create the file: ", std::strerror(errno),
        "; check the directory's permissions or pass another --db");
}

const char* kNotOursHelp = "; pass --db with another path (retort creates a new database there)";

}  // namespace

std::string default_serve_db_path() {
  if (const char* h = std::getenv("RETORT_HOME"); h && *h) return std::string(h) + "/serve.db";
  const char* home = std::getenv("HOME");
  return std::string(home && *home ? home : ".") + "/.cache/retort/serve.db";
}

// ---------------------------------------------------------------------------------------------
// ServeDb

std::unique_ptr<ServeDb> ServeDb::open(const std::string& path) {
  check(!path.empty(), "serve db: empty path; pass --db FILE");
  std::error_code ec;
  check(!fs::is_directory(path, ec), "serve db ", path, " is a directory; pass --db with a file path");
  create_private_file(path);

  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
                           nullptr);
  std::unique_ptr<ServeDb> db(new ServeDb(raw, path));
  if (rc != SQLITE_OK)
    fail("serve db ", path, ": cannot open: ", raw ? sqlite3_errmsg(raw) : sqlite3_errstr(rc),
         "; check the path and its permissions or pass another --db");
  sqlite3_extended_result_codes(raw, 1);
  sqlite3_busy_timeout(raw, kBusyTimeoutMs);

  // Identify the file before changing anything in it (journal mode included).
  auto read_pragma = [&](const char* sql) -> int64_t {
    sqlite3_stmt* st = nullptr;
    int r = sqlite3_prepare_v2(raw, sql, -1, &st, nullptr);
    if (r == SQLITE_OK) r = sqlite3_step(st);
    int64_t v = r == SQLITE_ROW ? sqlite3_column_int64(st, 0) : 0;
    std::string msg = sqlite3_errmsg(raw);
    sqlite3_finalize(st);
    if (r != SQLITE_ROW) {
      if ((r & 0xff) == SQLITE_NOTADB)
        fail("serve db ", path, " is not a retort serve database (not an SQLite file)", kNotOursHelp);
      fail("serve db ", path, ": cannot read it: ", msg, "; check the file and its permissions");
    }
    return v;
  };
  auto check_ours = [&](int64_t app_id, int64_t version, int64_t n_objects) {
    if (app_id == kServeDbApplicationId) {
      check(version <= kServeDbSchemaVersion, "serve db ", path, " has schema version ", version,
            ", newer than this retort reads (", kServeDbSchemaVersion, "); upgrade retort, or pass another --db");
      check(version >= 1, "serve db ", path, " is marked as a retort serve database but has no schema (version ",
            version, "); move it away so retort can create a new one");
      return true;
    }
    check(app_id == 0 && version == 0 && n_objects == 0, "serve db ", path,
          " is an SQLite database of another program (application_id ", app_id, ", user_version ", version,
          ", ", n_objects, " tables/indexes), not a retort serve database", kNotOursHelp);
    return false;  // empty: ours to create
  };
  const char* kCountObjects = "SELECT count(*) FROM sqlite_master";
  bool have_schema =
      check_ours(read_pragma("PRAGMA application_id"), read_pragma("PRAGMA user_version"), read_pragma(kCountObjects));

  // WAL is persistent in the file; setting it needs no other connection in rollback mode, which is
  // true for a file that is either new or already WAL (ours always are).
  {
    SqlStatement wal(*db, "PRAGMA journal_mode=WAL");
    check(wal.step("set journal_mode=WAL") && wal.text(0) == "wal", "serve db ", path,
          ": SQLite cannot use its write-ahead log here (journal_mode is ", wal.text(0),
          "); put the database on a local filesystem");
  }
  db->exec("PRAGMA synchronous=NORMAL", "set synchronous=NORMAL");

  if (!have_schema) {
    // Another process may be creating it at the same moment: decide again under the write lock.
    SqlTransaction tx(*db, "create the schema");
    if (!check_ours(read_pragma("PRAGMA application_id"), read_pragma("PRAGMA user_version"),
                    read_pragma(kCountObjects))) {
      db->exec(kSchemaV1, "create the schema");
      db->exec(kSchemaV2Monitor, "create the schema");
      db->exec(kSchemaV3ServedTexts, "create the schema");
      db->exec(cat("PRAGMA application_id=", kServeDbApplicationId, "; PRAGMA user_version=", kServeDbSchemaVersion)
                   .c_str(),
               "mark the schema");
    }
    tx.commit();
  } else if (read_pragma("PRAGMA user_version") < kServeDbSchemaVersion) {
    // Version 1 -> 2: the monitor's tables; 2 -> 3: served_texts. Decided again under the write lock.
    const std::string what = cat("upgrade the schema to version ", kServeDbSchemaVersion);
    SqlTransaction tx(*db, what);
    const int64_t version = read_pragma("PRAGMA user_version");
    if (version < kServeDbSchemaVersion) {
      if (version < 2) db->exec(kSchemaV2Monitor, what);
      if (version < 3) db->exec(kSchemaV3ServedTexts, what);
      db->exec(cat("PRAGMA user_version=", kServeDbSchemaVersion).c_str(), "mark the schema");
    }
    tx.commit();
  }
  return db;
}

ServeDb::~ServeDb() {
  // Closes once every statement is finalized (they are RAII, owned by the users of this connection).
  if (db_ != nullptr) sqlite3_close_v2(db_);
}

void ServeDb::exec(const char* sql, std::string_view what) {
  char* err = nullptr;
  int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &err);
  if (rc != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errstr(rc);
    sqlite3_free(err);
    fail("serve db ", path_, ": ", what, ": ", msg);
  }
}

void ServeDb::check_rc(int rc, std::string_view what) const {
  int primary = rc & 0xff;
  if (primary == SQLITE_OK || primary == SQLITE_ROW || primary == SQLITE_DONE) return;
  const char* hint = "";
  if (primary == SQLITE_BUSY || primary == SQLITE_LOCKED)
    hint = " (another process held the database locked for over 5 s; retry)";
  else if (primary == SQLITE_FULL)
    hint = " (the disk is full; free space and retry)";
  else if (primary == SQLITE_READONLY || primary == SQLITE_PERM || primary == SQLITE_CANTOPEN)
    hint = " (check the permissions of the file, its -wal and -shm files and its directory)";
  fail("serve db ", path_, ": ", what, ": ", sqlite3_errmsg(db_), hint);
}

// ---------------------------------------------------------------------------------------------
// SqlStatement

SqlStatement::SqlStatement(const ServeDb& db, const char* sql) : db_(db) {
  db_.check_rc(sqlite3_prepare_v2(db.handle(), sql, -1, &st_, nullptr), cat("prepare \"", sql, "\""));
}

SqlStatement::~SqlStatement() { sqlite3_finalize(st_); }

SqlStatement& SqlStatement::bind(int i, int64_t v) {
  db_.check_rc(sqlite3_bind_int64(st_, i, v), "bind");
  return *this;
}

SqlStatement& SqlStatement::bind(int i, std::string_view text) {
  db_.check_rc(sqlite3_bind_text(st_, i, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT), "bind");
  return *this;
}

SqlStatement& SqlStatement::bind_blob(int i, const void* data, size_t n) {
  db_.check_rc(sqlite3_bind_blob(st_, i, data, static_cast<int>(n), SQLITE_TRANSIENT), "bind");
  return *this;
}

SqlStatement& SqlStatement::bind_static(int i, std::string_view text) {
  db_.check_rc(sqlite3_bind_text(st_, i, text.data(), static_cast<int>(text.size()), SQLITE_STATIC), "bind");
  return *this;
}

SqlStatement& SqlStatement::bind_null(int i) {
  db_.check_rc(sqlite3_bind_null(st_, i), "bind");
  return *this;
}

bool SqlStatement::step(std::string_view what) {
  int rc = sqlite3_step(st_);
  if (rc == SQLITE_ROW) return true;
  if (rc == SQLITE_DONE) return false;
  sqlite3_reset(st_);
  db_.check_rc(rc, what);
  return false;
}

int SqlStatement::step_rc() { return sqlite3_step(st_); }

void SqlStatement::reset() {
  sqlite3_reset(st_);
  sqlite3_clear_bindings(st_);
}

void SqlStatement::reset_keep_bindings() { sqlite3_reset(st_); }

bool SqlStatement::is_null(int col) const { return sqlite3_column_type(st_, col) == SQLITE_NULL; }
int64_t SqlStatement::int64(int col) const { return sqlite3_column_int64(st_, col); }

std::string SqlStatement::text(int col) const {
  const auto* p = sqlite3_column_text(st_, col);
  int n = sqlite3_column_bytes(st_, col);
  return p ? std::string(reinterpret_cast<const char*>(p), n) : std::string();
}

std::string SqlStatement::blob(int col) const {
  const void* p = sqlite3_column_blob(st_, col);
  int n = sqlite3_column_bytes(st_, col);
  return p ? std::string(static_cast<const char*>(p), n) : std::string();
}

// ---------------------------------------------------------------------------------------------
// SqlTransaction

SqlTransaction::SqlTransaction(ServeDb& db, std::string_view what) : db_(db), what_(what) {
  db_.exec("BEGIN IMMEDIATE", what_);
}

SqlTransaction::~SqlTransaction() {
  if (!done_) sqlite3_exec(db_.handle(), "ROLLBACK", nullptr, nullptr, nullptr);
}

void SqlTransaction::commit() {
  db_.exec("COMMIT", what_);
  done_ = true;
}

// ---------------------------------------------------------------------------------------------
// Time

int64_t unix_now_ms() {
  using namespace std::chrono;
  return duration_cast<milliseconds>(system_clock::now().time_since_epoch()).count();
}

std::string iso8601_utc(int64_t unix_ms) {
  int64_t secs = unix_ms >= 0 ? unix_ms / 1000 : -((-unix_ms + 999) / 1000);
  int64_t ms = unix_ms - secs * 1000;
  std::time_t t = static_cast<std::time_t>(secs);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char b[96];  // room for any int year, so the compiler sees no truncation
  if (ms == 0)
    std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec);
  else
    std::snprintf(b, sizeof b, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday,
                  tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  return b;
}

int64_t parse_iso8601_utc(std::string_view text, std::string_view what) {
  auto bad = [&]() {
    fail(what, ": \"", text, "\" is not a UTC date or time; write YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ");
  };
  // Fixed positions: YYYY-MM-DD[(T| )HH:MM[:SS[.fff]]][Z]
  std::string_view s = text;
  if (!s.empty() && (s.back() == 'Z' || s.back() == 'z')) s.remove_suffix(1);
  auto digits = [&](size_t pos, size_t n) -> int {
    if (pos + n > s.size()) bad();
    int v = 0;
    for (size_t i = pos; i < pos + n; ++i) {
      if (s[i] < '0' || s[i] > '9') bad();
      v = v * 10 + (s[i] - '0');
    }
    return v;
  };
  auto expect = [&](size_t pos, const char* any_of) {
    if (pos >= s.size() || std::strchr(any_of, s[pos]) == nullptr) bad();
  };
  std::tm tm{};
  tm.tm_year = digits(0, 4) - 1900;
  expect(4, "-");
  tm.tm_mon = digits(5, 2) - 1;
  expect(7, "-");
  tm.tm_mday = digits(8, 2);
  int ms = 0;
  if (s.size() > 10) {
    expect(10, "Tt ");
    tm.tm_hour = digits(11, 2);
    expect(13, ":");
    tm.tm_min = digits(14, 2);
    if (s.size() > 16) {
      expect(16, ":");
      tm.tm_sec = digits(17, 2);
      if (s.size() > 19) {
        expect(19, ".");
        size_t n = s.size() - 20;
        if (n < 1 || n > 3) bad();
        ms = digits(20, n);
        for (size_t i = n; i < 3; ++i) ms *= 10;
      }
    }
  }
  if (tm.tm_mon < 0 || tm.tm_mon > 11 || tm.tm_mday < 1 || tm.tm_mday > 31 || tm.tm_hour > 23 || tm.tm_min > 59 ||
      tm.tm_sec > 60)
    bad();
  std::tm copy = tm;
  std::time_t t = timegm(&copy);
  if (copy.tm_mday != tm.tm_mday) bad();  // timegm normalized an impossible date (Feb 30)
  return static_cast<int64_t>(t) * 1000 + ms;
}

}  // namespace retort

// retort/serve/serve_db.h — the serve database: one SQLite file holding API keys and the usage ledger.
//
// Both `retort serve` and `retort keys` open the same file (default $RETORT_HOME/serve.db), each through
// its own connections; SQLite's write-ahead log lets readers and one writer work at once across processes.
//
// The file is marked as ours by PRAGMA application_id = kServeDbApplicationId ("rtsv") and carries its
// schema version in PRAGMA user_version (kServeDbSchemaVersion). Opening
//   - a file that does not exist, or an empty SQLite file   -> the schema is created;
//   - a retort serve database of this version              -> opened;
//   - a retort serve database of a newer version           -> Error: upgrade retort;
//   - anything else (not SQLite, another program's SQLite) -> Error: pass another --db.
//
// Connection settings: journal_mode=WAL, synchronous=NORMAL (a committed transaction survives the
// process being killed, -9 included; a power loss may lose the last transactions but never leaves one
// half-applied), busy_timeout 5 s, foreign keys off (the ledger outlives keys by design).
//
// Schema, version 1 (every column NOT NULL unless marked):
//   keys(key_id TEXT PRIMARY KEY         -- 12 lowercase hex digits, the public half of an API key
//        account TEXT                    -- who the key belongs to; names per-account watermark keys
//        salt BLOB                       -- 16 random bytes
//        secret_sha256 BLOB              -- SHA-256(salt || 32 secret bytes); the secret itself is never stored
//        rpm, tpm, tokens_per_day INTEGER  -- limits, 0 = unlimited
//        max_top_logprobs INTEGER NULL   -- cap on top_logprobs; NULL = no per-key cap
//        logprobs_refused INTEGER        -- 1: requests asking for logprobs are refused
//        round_logprobs_digits INTEGER   -- logprobs rounded to this many decimals; -1 = off
//        watermark INTEGER, admin INTEGER  -- 0/1
//        created_unix_ms INTEGER, revoked_unix_ms INTEGER NULL)
//   ledger(request_id TEXT PRIMARY KEY, account, key_id, endpoint, model, client TEXT,
//          started_unix_ms, ended_unix_ms, http_status INTEGER, error_type, prompt_sha256 TEXT,
//          prompt_tokens, completion_tokens, n, stream, logprobs_requested, logprobs_granted INTEGER,
//          watermark_scheme, watermark_key_commitment, policy, finish_reason TEXT)
//     -- one row per request; see ledger.h for what each field means.
//   indexes: keys(account), ledger(started_unix_ms), ledger(key_id, started_unix_ms)
// Version 2 adds the crawl monitor's tables (monitor_db.h); a version-1 file is upgraded on open:
//   monitor_events(request_id TEXT PRIMARY KEY, account TEXT, unix_ms INTEGER, event TEXT  -- JSON
//                  embedding BLOB NULL)      -- float32 little-endian, the prompt's mean hidden state
//   monitor_actions(id INTEGER PRIMARY KEY, unix_ms, subject, members, actions, score, requests, reasons)
//   monitor_verdicts(subject TEXT PRIMARY KEY, updated_unix_ms INTEGER, verdict TEXT)  -- JSON
// Version 3 adds the texts served, written only by a server with record_completions (ledger.h); a version-1
// or -2 file is upgraded on open:
//   served_texts(request_id TEXT, choice INTEGER, account TEXT, unix_ms INTEGER, endpoint TEXT,
//                prompt TEXT       -- JSON: the messages array (chat) or the prompt string (completions)
//                completion TEXT, watermark_scheme TEXT, watermark_key_commitment TEXT,
//                PRIMARY KEY(request_id, choice))
//   index: served_texts(account, unix_ms)
#pragma once

#include <sqlite3.h>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace retort {

inline constexpr int32_t kServeDbApplicationId = 0x72747376;  // "rtsv"
inline constexpr int kServeDbSchemaVersion = 3;

// $RETORT_HOME/serve.db, else ~/.cache/retort/serve.db (the directory of the model cache's parent).
std::string default_serve_db_path();

// One connection to a serve database. Not thread-safe: whoever shares one serializes its use.
class ServeDb {
 public:
  // Opens (creating the file, its parent directories and the schema when missing) and checks the
  // file as described above. New files are created readable by their owner only (0600).
  static std::unique_ptr<ServeDb> open(const std::string& path);
  ~ServeDb();
  ServeDb(const ServeDb&) = delete;
  ServeDb& operator=(const ServeDb&) = delete;

  sqlite3* handle() const { return db_; }
  const std::string& path() const { return path_; }

  // Runs SQL without results (several statements allowed). Throws Error naming the file and `what`.
  void exec(const char* sql, std::string_view what);
  // Throws Error "serve db PATH: WHAT: <sqlite message>" when rc is not SQLITE_OK/ROW/DONE.
  void check_rc(int rc, std::string_view what) const;

 private:
  ServeDb(sqlite3* db, std::string path) : db_(db), path_(std::move(path)) {}
  sqlite3* db_ = nullptr;
  std::string path_;
};

// A prepared statement, finalized on destruction. Parameter and column indices as SQLite numbers
// them: bind from 1, column from 0.
class SqlStatement {
 public:
  SqlStatement(const ServeDb& db, const char* sql);
  ~SqlStatement();
  SqlStatement(const SqlStatement&) = delete;
  SqlStatement& operator=(const SqlStatement&) = delete;

  SqlStatement& bind(int i, int64_t v);
  SqlStatement& bind(int i, std::string_view text);
  SqlStatement& bind_blob(int i, const void* data, size_t n);
  SqlStatement& bind_null(int i);
  // Binds text without copying it: `text` must stay alive and unchanged until the statement is reset.
  SqlStatement& bind_static(int i, std::string_view text);
  // Steps once: true when a row is ready, false when done. Throws Error (with `what`) on failure.
  bool step(std::string_view what);
  // Like step, but returns the SQLite result code instead of throwing (SQLITE_ROW, SQLITE_DONE, errors).
  int step_rc();
  void reset();  // ready to bind and step again (bindings cleared)
  void reset_keep_bindings();  // ready to step again; every parameter is rebound before the next step

  bool is_null(int col) const;
  int64_t int64(int col) const;
  std::string text(int col) const;
  std::string blob(int col) const;

 private:
  const ServeDb& db_;
  sqlite3_stmt* st_ = nullptr;
};

// Runs statements in one transaction: BEGIN IMMEDIATE on construction (the write lock, waiting up to
// busy_timeout), COMMIT on commit(), ROLLBACK when destroyed uncommitted.
class SqlTransaction {
 public:
  SqlTransaction(ServeDb& db, std::string_view what);
  ~SqlTransaction();
  SqlTransaction(const SqlTransaction&) = delete;
  SqlTransaction& operator=(const SqlTransaction&) = delete;
  void commit();

 private:
  ServeDb& db_;
  std::string what_;
  bool done_ = false;
};

// Unix time in milliseconds <-> "2024-05-01T12:34:56.789Z" (UTC; milliseconds omitted when zero).
std::string iso8601_utc(int64_t unix_ms);
// Parses "YYYY-MM-DD", "YYYY-MM-DDTHH:MM", "YYYY-MM-DDTHH:MM:SS[.fff]" with an optional "Z" (all UTC;
// a space may replace the "T"). `what` names the option for the error ("--since").
int64_t parse_iso8601_utc(std::string_view text, std::string_view what);
// The wall clock in Unix milliseconds.
int64_t unix_now_ms();

}  // namespace retort

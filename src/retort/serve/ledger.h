// retort/serve/ledger.h — the usage ledger: one row per request, whatever happened to it.
//
// Every request the server receives — served, refused (401, 429, 400...), cancelled or failed —
// leaves exactly one row in the `ledger` table of the serve database (serve_db.h). Rows are appended
// from the HTTP threads without waiting for the disk: append() queues, a writer thread commits the
// queue in one transaction per batch (every kBatchInterval or kBatchRows rows, whichever comes first),
// so thousands of requests a second cost one fsync-free WAL append every few milliseconds.
//
// Durability: a row is on disk once its batch commits. flush() waits for that; the destructor
// flushes. A committed row survives kill -9 of the process (WAL, synchronous=NORMAL); a batch the
// process dies inside is rolled back whole, never half-written. Rows still queued when the process
// is killed are lost: the server flushes on graceful shutdown.
//
// Cost: the writer spends ~5-10 us of one core per row when request ids grow with time (e.g.
// "chatcmpl-<hex unix ms><random>"), ~25 us when they are random: request_id is a unique index, and
// random keys make every batch rewrite index pages all over the file.
//
// When a commit fails (disk full, database locked by another process for over busy_timeout), the
// writer keeps the batch and retries every kRetryInterval; flush() throws instead of waiting forever,
// and healthy() / last_error() say what is wrong (for /health and the logs).
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "retort/serve/serve_db.h"

namespace retort {

// The texts one successful generation served, kept when the server runs with record_completions: one row
// per choice in served_texts (serve_db.h), written by the ledger's writer in the transaction of the
// request's ledger row (so a text is on disk exactly when its row is). Account, endpoint, time and the
// watermark columns come from the row.
struct ServedTexts {
  std::string prompt;                    // JSON: the messages array (chat) or the prompt string (completions)
  std::vector<std::string> completions;  // choice i's text, as the client received it

  bool operator==(const ServedTexts&) const = default;
};

struct LedgerRow {
  std::string request_id;                // unique per request (the server's id, e.g. "chatcmpl-...")
  std::string account;                   // "" when unauthenticated
  std::string key_id;                    // 12 hex digits; "" when unauthenticated
  std::string endpoint;                  // "/v1/chat/completions", ...
  std::string model;                     // as requested ("" when the body had none)
  std::string client;                    // peer address "ip:port"
  int64_t started_unix_ms = 0;           // request received
  int64_t ended_unix_ms = 0;             // response finished (or connection gone)
  int http_status = 0;                   // 200, 400, 401, 429, 499 (client went away), 500, ...
  std::string error_type;                // OpenAI error type ("invalid_request_error", ...); "" on success
  std::string prompt_sha256;             // 64 hex digits of SHA-256 of the prompt token ids (int32 LE); "" when none
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;         // summed over the n choices
  int n = 1;                             // choices asked for
  bool stream = false;
  int logprobs_requested = -1;           // top_logprobs asked (0 = logprobs of the sampled token only); -1 = none
  int logprobs_granted = -1;             // top_logprobs served after the policy; -1 = none (refused or not asked)
  std::string watermark_scheme;          // "" = not watermarked
  std::string watermark_key_commitment;  // commitment of the key that marked the text (keys.h); "" when none
  std::string policy;                    // JSON object: what the policy did, e.g. {"top_logprobs_capped_to":5}
  std::string finish_reason;             // "stop", "length", ... comma-joined over choices; "" when none
  std::optional<ServedTexts> served;     // record_completions: the texts served (not a ledger column)

  bool operator==(const LedgerRow&) const = default;
};

class Ledger {
 public:
  static constexpr auto kBatchInterval = std::chrono::milliseconds(10);
  static constexpr size_t kBatchRows = 256;
  static constexpr auto kRetryInterval = std::chrono::milliseconds(200);
  // append() blocks (rather than drop rows or grow without bound) while this many rows are queued:
  // only when the disk cannot keep up for a long while.
  static constexpr size_t kMaxQueuedRows = 1 << 20;

  // Opens (creating when needed) the serve database at `path` on a connection of its own, and starts
  // the writer thread. Throws Error naming the file when it is not a serve database.
  static std::unique_ptr<Ledger> open(const std::string& path);
  ~Ledger();  // flushes (retrying failed commits for up to 10 s), then stops the writer
  Ledger(const Ledger&) = delete;
  Ledger& operator=(const Ledger&) = delete;

  // Queues a row; returns at once (see kMaxQueuedRows). Throws Error for an empty request_id.
  void append(LedgerRow row);
  // Blocks until every row appended before the call is committed. Throws Error naming the file
  // and the SQLite error when a commit fails (the rows stay queued and are retried).
  void flush();

  struct Stats {
    uint64_t appended = 0;   // rows passed to append()
    uint64_t committed = 0;  // rows now on disk
    uint64_t rejected = 0;   // rows SQLite refused (a request_id already in the ledger); logged, not retried
    uint64_t batches = 0;    // transactions committed
    size_t queued = 0;       // rows waiting for the writer
  };
  Stats stats() const;
  bool healthy() const;            // false while commits are failing
  std::string last_error() const;  // the latest commit or insert error; "" when none
  const std::string& path() const { return path_; }

 private:
  Ledger(std::unique_ptr<ServeDb> db);
  void writer_loop();
  // Inserts `batch` in one transaction. Returns "" on success, else the error (batch not committed).
  std::string commit_batch(SqlStatement& insert, SqlStatement& insert_text, const std::vector<LedgerRow>& batch,
                           uint64_t& rejected);

  std::unique_ptr<ServeDb> db_;  // used by the writer thread only
  std::string path_;

  mutable std::mutex mu_;
  std::condition_variable wake_writer_;   // rows reached kBatchRows, a flush, or stop
  std::condition_variable progress_;      // a batch committed or failed; queue space freed
  std::vector<LedgerRow> queue_;          // appended, not yet taken by the writer
  size_t in_flight_ = 0;                  // rows the writer holds (being committed or retried)
  uint64_t appended_ = 0, committed_ = 0, rejected_ = 0, batches_ = 0;  // committed_ includes rejected_
  uint64_t failures_ = 0;                 // failed commits so far (flush() waits for success or a new one)
  bool flush_wanted_ = false, stop_ = false, failing_ = false;
  std::string last_error_;
  std::thread writer_;
};

// ---------------------------------------------------------------------------------------------
// Reading the ledger

struct UsageQuery {
  std::string account;             // "" = every account
  std::string key_id;              // "" = every key
  std::optional<int64_t> since_unix_ms;  // started_unix_ms >= since
  std::optional<int64_t> until_unix_ms;  // started_unix_ms < until
};

struct UsageTotals {
  int64_t requests = 0;
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;
  int64_t logprobs_requests = 0;        // requests that asked for logprobs
  std::map<int, int64_t> by_status;     // HTTP status -> requests
  void add(const UsageTotals& o);
};

struct UsageReport {
  UsageTotals total;
  std::map<std::string, UsageTotals> by_account;                           // account ("" = unauthenticated)
  std::map<std::string, UsageTotals> by_key;                               // key_id ("" = unauthenticated)
  std::map<std::string, std::string> key_account;                          // key_id -> account
  std::map<std::string, UsageTotals> by_day;                               // "YYYY-MM-DD" (UTC)
};

// Aggregates the ledger rows matching `q` (one query over the file; committed rows only).
UsageReport read_usage(const ServeDb& db, const UsageQuery& q);

// Tokens (prompt + completion) per key_id in rows started at or after `since_unix_ms`: what the quota
// tracker starts a day from.
std::map<std::string, int64_t> read_tokens_by_key_since(const ServeDb& db, int64_t since_unix_ms);

// ---------------------------------------------------------------------------------------------
// Reading the served texts (record_completions)

struct ServedTextRecord {
  std::string request_id;
  int64_t choice = 0;
  std::string account;                   // "" when unauthenticated
  int64_t unix_ms = 0;                   // the request's started_unix_ms (wall clock)
  std::string endpoint;                  // "/v1/chat/completions" or "/v1/completions"
  std::string prompt;                    // JSON, as ServedTexts::prompt
  std::string completion;
  std::string watermark_scheme, watermark_key_commitment;  // "" when unmarked

  bool operator==(const ServedTextRecord&) const = default;
};

// Rows of served_texts in the order served (unix_ms, request_id, choice), those of `accounts` only unless it
// is empty; committed rows only. Throws Error naming the file when it has no served_texts table.
void for_each_served_text(const ServeDb& db, const std::vector<std::string>& accounts,
                          const std::function<void(const ServedTextRecord&)>& fn);
// Rows per account in served_texts (every account that has one).
std::map<std::string, int64_t> count_served_texts(const ServeDb& db);

}  // namespace retort

#include "retort/serve/ledger.h"

#include <cstdio>

#include <nlohmann/json.hpp>

#include "retort/util/error.h"

namespace retort {

namespace {

constexpr auto kStopDeadline = std::chrono::seconds(10);

const char* kInsertRow =
    "INSERT INTO ledger(request_id, account, key_id, endpoint, model, client, started_unix_ms, ended_unix_ms, "
    "http_status, error_type, prompt_sha256, prompt_tokens, completion_tokens, n, stream, logprobs_requested, "
    "logprobs_granted, watermark_scheme, watermark_key_commitment, policy, finish_reason) "
    "VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19, ?20, ?21)";

// A request's texts are kept with the first ledger row of its id (a row the ledger rejects brings none).
const char* kInsertText =
    "INSERT OR IGNORE INTO served_texts(request_id, choice, account, unix_ms, endpoint, prompt, completion, "
    "watermark_scheme, watermark_key_commitment) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)";

// Binds every parameter; the text is not copied (the row outlives the step).
void bind_row(SqlStatement& st, const LedgerRow& r) {
  st.bind_static(1, r.request_id).bind_static(2, r.account).bind_static(3, r.key_id).bind_static(4, r.endpoint);
  st.bind_static(5, r.model).bind_static(6, r.client).bind(7, r.started_unix_ms).bind(8, r.ended_unix_ms);
  st.bind(9, int64_t{r.http_status}).bind_static(10, r.error_type).bind_static(11, r.prompt_sha256);
  st.bind(12, r.prompt_tokens).bind(13, r.completion_tokens).bind(14, int64_t{r.n}).bind(15, int64_t{r.stream});
  st.bind(16, int64_t{r.logprobs_requested}).bind(17, int64_t{r.logprobs_granted});
  st.bind_static(18, r.watermark_scheme).bind_static(19, r.watermark_key_commitment).bind_static(20, r.policy);
  st.bind_static(21, r.finish_reason);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Writing

std::unique_ptr<Ledger> Ledger::open(const std::string& path) {
  return std::unique_ptr<Ledger>(new Ledger(ServeDb::open(path)));
}

Ledger::Ledger(std::unique_ptr<ServeDb> db) : db_(std::move(db)), path_(db_->path()) {
  queue_.reserve(kBatchRows);
  writer_ = std::thread([this] { writer_loop(); });
}

Ledger::~Ledger() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stop_ = true;
  }
  wake_writer_.notify_one();
  writer_.join();
  if (committed_ < appended_)
    std::fprintf(stderr, "error: ledger %s: %llu rows could not be written: %s\n", path_.c_str(),
                 static_cast<unsigned long long>(appended_ - committed_), last_error_.c_str());
}

void Ledger::append(LedgerRow row) {
  check(!row.request_id.empty(), "ledger ", path_, ": a row without request_id (every request needs a unique id)");
  std::unique_lock<std::mutex> lk(mu_);
  if (queue_.size() >= kMaxQueuedRows) progress_.wait(lk, [&] { return queue_.size() < kMaxQueuedRows || stop_; });
  queue_.push_back(std::move(row));
  ++appended_;
  if (queue_.size() == kBatchRows) wake_writer_.notify_one();
}

void Ledger::flush() {
  std::unique_lock<std::mutex> lk(mu_);
  const uint64_t target = appended_;
  if (committed_ >= target) return;
  const uint64_t failures_before = failures_;
  flush_wanted_ = true;
  wake_writer_.notify_one();
  progress_.wait(lk, [&] { return committed_ >= target || failures_ > failures_before; });
  check(committed_ >= target, "ledger ", path_, ": cannot commit ", target - committed_, " rows: ", last_error_,
        "; they stay in memory and are retried");
}

Ledger::Stats Ledger::stats() const {
  std::lock_guard<std::mutex> lk(mu_);
  return Stats{appended_, committed_, rejected_, batches_, queue_.size() + in_flight_};
}

bool Ledger::healthy() const {
  std::lock_guard<std::mutex> lk(mu_);
  return !failing_;
}

std::string Ledger::last_error() const {
  std::lock_guard<std::mutex> lk(mu_);
  return last_error_;
}

void Ledger::writer_loop() {
  SqlStatement insert(*db_, kInsertRow);
  SqlStatement insert_text(*db_, kInsertText);
  std::vector<LedgerRow> batch;
  std::chrono::steady_clock::time_point stop_deadline{};
  std::unique_lock<std::mutex> lk(mu_);
  for (;;) {
    if (batch.empty()) {
      wake_writer_.wait_for(lk, kBatchInterval,
                            [&] { return stop_ || flush_wanted_ || queue_.size() >= kBatchRows; });
      if (queue_.empty()) {
        flush_wanted_ = false;
        if (stop_) break;
        continue;
      }
      batch.swap(queue_);  // everything queued: under load the batches grow instead of the queue
      queue_.reserve(kBatchRows);
      in_flight_ = batch.size();
      flush_wanted_ = false;
      progress_.notify_all();  // queue space for append()
    }
    lk.unlock();
    uint64_t rejected = 0;
    std::string err = commit_batch(insert, insert_text, batch, rejected);
    lk.lock();
    if (err.empty()) {
      committed_ += batch.size();
      rejected_ += rejected;
      ++batches_;
      in_flight_ = 0;
      failing_ = false;
      batch.clear();
      progress_.notify_all();
      continue;
    }
    // Keep the batch and retry; flush() callers learn of the failure now.
    if (!failing_) std::fprintf(stderr, "error: %s (retrying every %lld ms)\n", err.c_str(),
                                static_cast<long long>(kRetryInterval.count()));
    failing_ = true;
    last_error_ = err;
    ++failures_;
    progress_.notify_all();
    if (stop_) {
      if (stop_deadline == std::chrono::steady_clock::time_point{})
        stop_deadline = std::chrono::steady_clock::now() + kStopDeadline;
      if (std::chrono::steady_clock::now() >= stop_deadline) break;  // the destructor reports the lost rows
    }
    wake_writer_.wait_for(lk, kRetryInterval, [] { return false; });
  }
}

std::string Ledger::commit_batch(SqlStatement& insert, SqlStatement& insert_text, const std::vector<LedgerRow>& batch,
                                 uint64_t& rejected) {
  sqlite3* h = db_->handle();
  auto error = [&](const char* step) {
    std::string e = cat("ledger ", path_, ": ", step, ": ", sqlite3_errmsg(h));
    insert.reset();
    insert_text.reset();
    sqlite3_exec(h, "ROLLBACK", nullptr, nullptr, nullptr);
    return e;
  };
  if (sqlite3_exec(h, "BEGIN IMMEDIATE", nullptr, nullptr, nullptr) != SQLITE_OK) return error("begin a batch");
  std::string first_rejected;
  for (const LedgerRow& row : batch) {
    try {
      bind_row(insert, row);
    } catch (const Error& e) {
      insert.reset();
      sqlite3_exec(h, "ROLLBACK", nullptr, nullptr, nullptr);
      return e.what();
    }
    int rc = insert.step_rc();
    insert.reset_keep_bindings();
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {  // a request_id already in the ledger: keep the first row
      if (rejected++ == 0) first_rejected = row.request_id;
      continue;
    }
    if (rc != SQLITE_DONE) return error(cat("insert row ", row.request_id).c_str());
    if (!row.served) continue;
    for (size_t i = 0; i < row.served->completions.size(); ++i) {
      try {
        insert_text.bind_static(1, row.request_id).bind(2, int64_t(i)).bind_static(3, row.account);
        insert_text.bind(4, row.started_unix_ms).bind_static(5, row.endpoint).bind_static(6, row.served->prompt);
        insert_text.bind_static(7, row.served->completions[i]).bind_static(8, row.watermark_scheme);
        insert_text.bind_static(9, row.watermark_key_commitment);
      } catch (const Error& e) {
        insert.reset();
        insert_text.reset();
        sqlite3_exec(h, "ROLLBACK", nullptr, nullptr, nullptr);
        return e.what();
      }
      rc = insert_text.step_rc();
      insert_text.reset_keep_bindings();
      if (rc != SQLITE_DONE) return error(cat("insert the served texts of ", row.request_id).c_str());
    }
  }
  if (sqlite3_exec(h, "COMMIT", nullptr, nullptr, nullptr) != SQLITE_OK) return error("commit a batch");
  if (rejected > 0) {
    std::string msg = cat("ledger ", path_, ": ", rejected, " rows rejected, their request_id already in the ledger (",
                          first_rejected, (rejected > 1 ? ", ..." : ""), ")");
    std::fprintf(stderr, "error: %s\n", msg.c_str());
    std::lock_guard<std::mutex> lk(mu_);
    last_error_ = msg;
  }
  return "";
}

// ---------------------------------------------------------------------------------------------
// Reading

void UsageTotals::add(const UsageTotals& o) {
  requests += o.requests;
  prompt_tokens += o.prompt_tokens;
  completion_tokens += o.completion_tokens;
  logprobs_requests += o.logprobs_requests;
  for (const auto& [status, count] : o.by_status) by_status[status] += count;
}

UsageReport read_usage(const ServeDb& db, const UsageQuery& q) {
  // One grouped pass; the four views are sums over its groups.
  std::string sql =
      "SELECT account, key_id, strftime('%Y-%m-%d', started_unix_ms / 1000, 'unixepoch') AS day, http_status, "
      "count(*), sum(prompt_tokens), sum(completion_tokens), sum(logprobs_requested >= 0) FROM ledger WHERE 1";
  if (!q.account.empty()) sql += " AND account = ?1";
  if (!q.key_id.empty()) sql += " AND key_id = ?2";
  if (q.since_unix_ms) sql += " AND started_unix_ms >= ?3";
  if (q.until_unix_ms) sql += " AND started_unix_ms < ?4";
  sql += " GROUP BY account, key_id, day, http_status";
  SqlStatement st(db, sql.c_str());
  if (!q.account.empty()) st.bind(1, q.account);
  if (!q.key_id.empty()) st.bind(2, q.key_id);
  if (q.since_unix_ms) st.bind(3, *q.since_unix_ms);
  if (q.until_unix_ms) st.bind(4, *q.until_unix_ms);

  UsageReport r;
  while (st.step("read usage")) {
    const std::string account = st.text(0), key_id = st.text(1), day = st.text(2);
    UsageTotals t;
    t.requests = st.int64(4);
    t.prompt_tokens = st.int64(5);
    t.completion_tokens = st.int64(6);
    t.logprobs_requests = st.int64(7);
    t.by_status[static_cast<int>(st.int64(3))] = t.requests;
    r.total.add(t);
    r.by_account[account].add(t);
    r.by_key[key_id].add(t);
    r.key_account[key_id] = account;
    r.by_day[day].add(t);
  }
  return r;
}

std::map<std::string, int64_t> read_tokens_by_key_since(const ServeDb& db, int64_t since_unix_ms) {
  SqlStatement st(db,
                  "SELECT key_id, sum(prompt_tokens + completion_tokens) FROM ledger "
                  "WHERE started_unix_ms >= ?1 AND key_id != '' GROUP BY key_id");
  st.bind(1, since_unix_ms);
  std::map<std::string, int64_t> out;
  while (st.step("read today's tokens")) out[st.text(0)] = st.int64(1);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Served texts

namespace {

void check_served_texts_table(const ServeDb& db) {
  SqlStatement st(db, "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'served_texts'");
  check(st.step("look for served_texts") && st.int64(0) == 1, "serve db ", db.path(),
        " has no served_texts table: texts are recorded only by a server started with record_completions "
        "(\"record_completions\": true in its config, or --record-completions)");
}

}  // namespace

void for_each_served_text(const ServeDb& db, const std::vector<std::string>& accounts,
                          const std::function<void(const ServedTextRecord&)>& fn) {
  check_served_texts_table(db);
  // The account list goes in as one JSON array: any number of accounts in one indexed query.
  std::string sql =
      "SELECT request_id, choice, account, unix_ms, endpoint, prompt, completion, watermark_scheme, "
      "watermark_key_commitment FROM served_texts";
  if (!accounts.empty()) sql += " WHERE account IN (SELECT value FROM json_each(?1))";
  sql += " ORDER BY unix_ms, request_id, choice";
  SqlStatement st(db, sql.c_str());
  const std::string list = nlohmann::json(accounts).dump();
  if (!accounts.empty()) st.bind(1, list);
  ServedTextRecord r;
  while (st.step("read served texts")) {
    r.request_id = st.text(0);
    r.choice = st.int64(1);
    r.account = st.text(2);
    r.unix_ms = st.int64(3);
    r.endpoint = st.text(4);
    r.prompt = st.text(5);
    r.completion = st.text(6);
    r.watermark_scheme = st.text(7);
    r.watermark_key_commitment = st.text(8);
    fn(r);
  }
}

std::map<std::string, int64_t> count_served_texts(const ServeDb& db) {
  check_served_texts_table(db);
  SqlStatement st(db, "SELECT account, count(*) FROM served_texts GROUP BY account");
  std::map<std::string, int64_t> out;
  while (st.step("count served texts")) out[st.text(0)] = st.int64(1);
  return out;
}

}  // namespace retort

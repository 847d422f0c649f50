// retort/serve/server.cpp — routes, the request lifecycle and graceful shutdown (see server.h).
#include "retort/serve/server.h"

#include <httplib.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <random>
#include <thread>
#include <unordered_map>

#include "retort/audit/watermark_detect.h"
#include "retort/model/runtime_model.h"
#include "retort/protect/gumbel.h"
#include "retort/protect/keys.h"
#include "retort/protect/kgw.h"
#include "retort/protect/antidistill.h"
#include "retort/protect/crawl_monitor.h"
#include "retort/serve/accounts.h"
#include "retort/serve/engine.h"
#include "retort/serve/ledger.h"
#include "retort/serve/metrics.h"
#include "retort/serve/monitor_db.h"
#include "retort/serve/openai_schema.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/parallel.h"
#include "retort/util/stats.h"

namespace retort {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

namespace {

constexpr const char* kRetortVersion = "0.1.0";

// ---- config -------------------------------------------------------------------------------------------

template <class T>
void read_field(const json& j, const char* name, T& out, const std::string& source) {
  auto it = j.find(name);
  if (it == j.end() || it->is_null()) return;
  try {
    out = it->get<T>();
  } catch (const json::exception&) {
    fail(source, ": field \"", name, "\" has the wrong type (", it->type_name(), "); see docs/serve.md");
  }
}

// ---- connections: one thread each --------------------------------------------------------------------

// cpp-httplib hands every accepted connection to a TaskQueue. Its ThreadPool has a fixed number of
// workers, so a few hundred idle keep-alive or slowloris connections would hold every worker and a new
// client would wait. Here each connection gets its own thread (mostly blocked in recv; a few KiB of
// resident stack), up to max_connections at once; beyond that, accepting pauses until one closes.
class ConnectionThreads : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(size_t max) : state_(std::make_shared<State>()) { state_->max = std::max<size_t>(1, max); }
  void enqueue(std::function<void()> fn) override {
    auto st = state_;  // threads hold the state, not this object (httplib deletes the queue on stop)
    {
      std::unique_lock<std::mutex> lock(st->mu);
      st->cv.wait(lock, [&] { return st->active < st->max; });
      ++st->active;
    }
    std::thread([st, fn = std::move(fn)] {
      try {
        fn();
      } catch (...) {
      }
      std::lock_guard<std::mutex> lock(st->mu);
      --st->active;
      st->cv.notify_all();
    }).detach();
  }
  // Waits (bounded) for the connection threads: after stop() httplib's keep-alive loops end within
  // the read timeout.
  void shutdown() override {
    std::unique_lock<std::mutex> lock(state_->mu);
    state_->cv.wait_for(lock, std::chrono::seconds(20), [&] { return state_->active == 0; });
  }

 private:
  struct State {
    std::mutex mu;
    std::condition_variable cv;
    size_t active = 0, max = 1;
  };
  std::shared_ptr<State> state_;
};

int64_t now_ms() { return unix_now_ms(); }

std::string client_of(const httplib::Request& req) { return req.remote_addr + ":" + std::to_string(req.remote_port); }

// SHA-256 of the prompt's token ids (int32 little-endian): equal prompts hash equal in the ledger.
std::string prompt_hash(const std::vector<int32_t>& ids) {
  return sha256_hex(reinterpret_cast<const uint8_t*>(ids.data()), ids.size() * sizeof(int32_t));
}

// The master watermark key: the file named, else $RETORT_WATERMARK_KEY, else $RETORT_HOME/serve-watermark.key,
// created (0600) with a fresh random key the first time.
WatermarkKey serve_master_key(const std::string& key_file, std::string& where) {
  if (!key_file.empty()) {
    where = key_file;
    return load_key_file(key_file);
  }
  if (const char* env = std::getenv(kWatermarkKeyEnv); env && *env) {
    where = std::string("$") + kWatermarkKeyEnv;
    return key_from_env();
  }
  const std::filesystem::path path = std::filesystem::path(default_serve_db_path()).parent_path() / "serve-watermark.key";
  where = path.string();
  if (std::filesystem::exists(path)) return load_key_file(path.string());
  std::filesystem::create_directories(path.parent_path());
  const WatermarkKey k = generate_key();
  const std::string tmp = path.string() + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    check(bool(f), "serve: cannot write the watermark key file ", tmp);
    ::chmod(tmp.c_str(), 0600);
    f << key_to_hex(k) << "\n";
    f.flush();
    check(bool(f), "serve: cannot write the watermark key file ", tmp);
  }
  std::filesystem::rename(tmp, path);
  std::fprintf(stderr, "serve: created the master watermark key %s (commitment %s); keep it: detection needs it\n",
               path.c_str(), k.commitment().c_str());
  return k;
}

// State shared by one generation request's HTTP thread and the engine's callbacks.
struct Pending {
  std::mutex mu;
  std::condition_variable cv;
  std::vector<GenerationResult> results;
  std::vector<bool> finished;
  int n_done = 0;
  std::string out;                     // streaming: SSE bytes not yet written
  std::unique_ptr<StreamEncoder> enc;  // streaming only
  std::optional<Clock::time_point> first_token;
  std::vector<uint64_t> tickets;
  bool stream_failed = false;  // an error event (which ends with [DONE]) was sent
  bool all_done(size_t n) const { return n_done == int(n); }
};

// X-Retort-Replay-Max-Tokens: a positive integer, nothing else (400 naming the header otherwise).
int64_t replay_max_tokens(const std::string& v) {
  int64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  if (ec != std::errc() || end != v.data() + v.size() || n < 1)
    throw bad_request("X-Retort-Replay-Max-Tokens",
                      "expected a positive integer (the most tokens to generate per choice), got \"" + v + "\"");
  return n;
}

// What served_texts keeps of a prompt, as JSON: the messages as the template rendered them (roles normalized,
// content parts joined) for chat, the prompt string for completions (token ids decoded to text). Both are
// what `retort audit radioactivity --texts` reads.
std::string served_prompt_json(const ApiRequest& r, const Tokenizer& tok) {
  OrderedJson j;  // {"role", "content"} in that order, as clients write them
  if (r.kind == Endpoint::chat) {
    j = OrderedJson::array();
    for (const ChatMessage& m : r.messages) j.push_back({{"role", m.role}, {"content", m.content}});
  } else {
    j = r.prompt_is_ids ? tok.decode(r.prompt_ids) : r.prompt;
  }
  return to_body(j);
}

// What the crawl monitor sees of a request (the embedding comes from the prefill, later).
MonitorEvent monitor_event_of(const ApiRequest& r, const json& body, const std::string& account,
                              const std::string& client_ip, int64_t unix_ms) {
  MonitorEvent e;
  e.account = account;
  e.client_ip = client_ip;
  e.unix_ms = unix_ms;
  e.user_turns = 0;
  for (const ChatMessage& m : r.messages) {
    if (m.role == "user") {
      ++e.user_turns;
      e.prompt_text = m.content;  // the last one
    } else if (m.role == "assistant") {
      e.has_history = true;
    } else if (m.role == "system" && e.system_prompt.empty()) {
      e.system_prompt = m.content;
    }
  }
  if (r.kind == Endpoint::completion) {
    e.user_turns = 1;
    e.prompt_text = r.prompt_is_ids ? std::string() : r.prompt;
  }
  e.n = r.n;
  e.top_logprobs = r.logprobs ? r.top_logprobs : -1;
  if (body.contains("max_tokens") || body.contains("max_completion_tokens")) e.max_tokens = r.max_tokens.value_or(-1);
  if (body.contains("temperature")) e.temperature = r.sampling.temperature;
  e.seed_given = r.seed.has_value();
  return e;
}

}  // namespace

ServeConfig load_serve_config(const std::string& path) {
  ServeConfig c;
  std::ifstream f(path, std::ios::binary);
  check(bool(f), "serve: cannot read the config file ", path, " (give an existing JSON file to --config)");
  json j;
  try {
    j = json::parse(f);
  } catch (const json::exception& e) {
    fail("serve: config file ", path, " is not valid JSON: ", e.what());
  }
  apply_serve_config(c, j, path);
  return c;
}

void apply_serve_config(ServeConfig& c, const json& j, const std::string& source) {
  check(j.is_object(), source, ": the serve config must be a JSON object");
  static const std::vector<std::string> known = {
      "host", "port", "model", "model_id", "db", "require_keys", "threads", "parallel", "ctx_size", "max_queue",
      "prefill_chunk", "max_body_bytes", "request_timeout_s", "shutdown_grace_s", "read_timeout_s",
      "keep_alive_timeout_s", "max_connections", "max_top_logprobs", "round_logprobs_digits", "default_rpm",
      "default_tpm", "default_tokens_per_day", "watermark", "watermark_key_file", "kgw_gamma", "kgw_delta",
      "kgw_context", "watermark_h", "monitor", "monitor_calibration", "monitor_actions", "monitor_throttle_rpm",
      "monitor_cap_top_logprobs", "monitor_replay_clock", "monitor_clock_origin_ms", "monitor_clock_speedup",
      "max_completion_tokens", "record_completions", "antidistill", "antidistill_lambda", "antidistill_all"};
  for (const auto& [k, v] : j.items())
    check(std::find(known.begin(), known.end(), k) != known.end(), source, ": unknown field \"", k,
          "\" (known fields are listed in docs/serve.md)");
  read_field(j, "host", c.host, source);
  read_field(j, "port", c.port, source);
  read_field(j, "model", c.model, source);
  read_field(j, "model_id", c.model_id, source);
  read_field(j, "db", c.db, source);
  read_field(j, "require_keys", c.require_keys, source);
  read_field(j, "threads", c.threads, source);
  read_field(j, "parallel", c.parallel, source);
  read_field(j, "ctx_size", c.ctx_size, source);
  read_field(j, "max_queue", c.max_queue, source);
  read_field(j, "prefill_chunk", c.prefill_chunk, source);
  read_field(j, "max_body_bytes", c.max_body_bytes, source);
  read_field(j, "request_timeout_s", c.request_timeout_s, source);
  read_field(j, "shutdown_grace_s", c.shutdown_grace_s, source);
  read_field(j, "read_timeout_s", c.read_timeout_s, source);
  read_field(j, "keep_alive_timeout_s", c.keep_alive_timeout_s, source);
  read_field(j, "max_connections", c.max_connections, source);
  read_field(j, "max_top_logprobs", c.max_top_logprobs, source);
  read_field(j, "round_logprobs_digits", c.round_logprobs_digits, source);
  read_field(j, "default_rpm", c.default_rpm, source);
  read_field(j, "default_tpm", c.default_tpm, source);
  read_field(j, "default_tokens_per_day", c.default_tokens_per_day, source);
  read_field(j, "watermark", c.watermark, source);
  read_field(j, "watermark_key_file", c.watermark_key_file, source);
  read_field(j, "kgw_gamma", c.kgw_gamma, source);
  read_field(j, "kgw_delta", c.kgw_delta, source);
  read_field(j, "kgw_context", c.kgw_context, source);
  read_field(j, "watermark_h", c.watermark_h, source);
  read_field(j, "monitor", c.monitor, source);
  read_field(j, "monitor_calibration", c.monitor_calibration, source);
  read_field(j, "monitor_actions", c.monitor_actions, source);
  read_field(j, "monitor_throttle_rpm", c.monitor_throttle_rpm, source);
  read_field(j, "monitor_cap_top_logprobs", c.monitor_cap_top_logprobs, source);
  read_field(j, "monitor_replay_clock", c.monitor_replay_clock, source);
  read_field(j, "monitor_clock_origin_ms", c.monitor_clock_origin_ms, source);
  read_field(j, "monitor_clock_speedup", c.monitor_clock_speedup, source);
  read_field(j, "max_completion_tokens", c.max_completion_tokens, source);
  read_field(j, "record_completions", c.record_completions, source);
  read_field(j, "antidistill", c.antidistill, source);
  read_field(j, "antidistill_lambda", c.antidistill_lambda, source);
  read_field(j, "antidistill_all", c.antidistill_all, source);
}

json serve_config_json(const ServeConfig& c) {
  return {{"host", c.host}, {"port", c.port}, {"model", c.model}, {"model_id", c.model_id}, {"db", c.db},
          {"require_keys", c.require_keys}, {"threads", c.threads}, {"parallel", c.parallel},
          {"ctx_size", c.ctx_size}, {"max_queue", c.max_queue}, {"prefill_chunk", c.prefill_chunk},
          {"max_body_bytes", c.max_body_bytes}, {"request_timeout_s", c.request_timeout_s},
          {"shutdown_grace_s", c.shutdown_grace_s}, {"read_timeout_s", c.read_timeout_s},
          {"keep_alive_timeout_s", c.keep_alive_timeout_s}, {"max_connections", c.max_connections},
          {"max_top_logprobs", c.max_top_logprobs}, {"round_logprobs_digits", c.round_logprobs_digits},
          {"default_rpm", c.default_rpm}, {"default_tpm", c.default_tpm},
          {"default_tokens_per_day", c.default_tokens_per_day}, {"watermark", c.watermark},
          {"watermark_key_file", c.watermark_key_file}, {"kgw_gamma", c.kgw_gamma}, {"kgw_delta", c.kgw_delta},
          {"kgw_context", c.kgw_context}, {"watermark_h", c.watermark_h}, {"monitor", c.monitor},
          {"monitor_calibration", c.monitor_calibration}, {"monitor_actions", c.monitor_actions},
          {"monitor_throttle_rpm", c.monitor_throttle_rpm}, {"monitor_cap_top_logprobs", c.monitor_cap_top_logprobs},
          {"monitor_replay_clock", c.monitor_replay_clock}, {"monitor_clock_origin_ms", c.monitor_clock_origin_ms},
          {"monitor_clock_speedup", c.monitor_clock_speedup}, {"max_completion_tokens", c.max_completion_tokens},
          {"record_completions", c.record_completions}, {"antidistill", c.antidistill},
          {"antidistill_lambda", c.antidistill_lambda}, {"antidistill_all", c.antidistill_all}};
}

// ---------------------------------------------------------------------------------------------------------

struct Server::Impl {
  ServeConfig cfg;
  RuntimeLoaded model;
  std::string model_id, fingerprint;
  int64_t created_s = 0;
  std::optional<ChatTemplate> chat;
  std::unique_ptr<Engine> engine;
  std::unique_ptr<AccountStore> store;
  std::unique_ptr<Ledger> ledger;
  QuotaTracker quotas;
  Metrics metrics;
  // Watermark: the master key and, per account, the processor that marks its text.
  DetectorConfig wm;
  bool watermarking = false;
  WatermarkKey master;
  std::mutex wm_mu;
  std::unordered_map<std::string, std::pair<std::shared_ptr<LogitsProcessor>, std::string>> wm_by_account;

  // Antidistillation sampling (cfg.antidistill): for every request (antidistill_all) or the accounts the
  // monitor gives the antidistill action; null when not configured.
  std::shared_ptr<AntidistillFactory> antidistill;
  // The crawl monitor and its worker: HTTP threads queue events; the worker observes them, records them
  // (and every decision) in the serve database on its own connection.
  std::unique_ptr<CrawlMonitor> monitor;
  std::unique_ptr<ServeDb> monitor_db;
  std::thread monitor_thread;
  std::mutex monitor_mu;
  std::condition_variable monitor_cv;
  std::deque<std::pair<std::string, MonitorEvent>> monitor_queue;  // (request id, event)
  bool monitor_stop = false;
  void monitor_loop();
  // The actions that apply to `account` now (empty when it is not flagged), and the verdict behind them.
  std::pair<std::vector<std::string>, std::optional<MonitorVerdict>> monitor_actions_for(const std::string& account);

  httplib::Server http;
  std::atomic<bool> accepting{true}, shut{false};
  std::mutex life_mu;
  std::condition_variable life_cv;
  int bound_port = -1;  // -1 not yet, 0 failed
  int listen_fd = -1;   // the listening socket (set by the socket options callback before bind)
  int in_flight = 0;    // handlers running (guarded by life_mu)
  // When run() started listening: the start of the scaled monitor clock (monitor_clock_origin_ms).
  std::atomic<int64_t> clock_start_ms{0};
  // The monitor's time for a request received at wall time `unix_ms` without a replay header.
  int64_t scaled_clock_ms(int64_t unix_ms) const {
    return cfg.monitor_clock_origin_ms +
           std::llround(double(unix_ms - clock_start_ms.load()) * cfg.monitor_clock_speedup);
  }
  std::mt19937_64 seed_rng{std::random_device{}()};
  std::mutex seed_mu;

  explicit Impl(const ServeConfig& c);
  void routes();

  // One API call: its ledger row, written once, and its metrics.
  struct Call {
    Impl& s;
    LedgerRow row;
    Clock::time_point t0 = Clock::now();
    bool committed = false;
    std::optional<KeyRecord> key;
    std::vector<std::string> monitor_actions;  // what the monitor applies to this call's account
    json monitor_note;                          // {"subject", "score", "actions"} for the ledger's policy
    // Calls in flight are counted from arrival to their ledger row (a stream's ends after its last byte):
    // shutdown waits for them.
    Call(Impl& srv, const httplib::Request& req, const std::string& endpoint) : s(srv) {
      {
        std::lock_guard<std::mutex> lock(s.life_mu);
        ++s.in_flight;
      }
      row.request_id = time_ordered_id("req-");
      row.endpoint = endpoint;
      row.client = client_of(req);
      row.started_unix_ms = now_ms();
    }
    void fail(httplib::Response& res, const ApiError& e) {
      res.status = e.status;
      res.set_content(to_body(e.body()), "application/json");
      if (e.retry_after_s > 0) res.set_header("Retry-After", std::to_string(e.retry_after_s));
      row.http_status = e.status;
      row.error_type = e.type;
    }
    void commit() {
      if (committed) return;
      committed = true;
      row.ended_unix_ms = now_ms();
      if (row.http_status == 0) row.http_status = 200;
      s.metrics.add("retort_requests_total", {{"endpoint", row.endpoint}, {"status", std::to_string(row.http_status)}});
      s.metrics.observe("retort_request_seconds", std::chrono::duration<double>(Clock::now() - t0).count());
      try {
        s.ledger->append(row);
      } catch (const std::exception& e) {
        std::fprintf(stderr, "serve: ledger: %s\n", e.what());
      }
      std::lock_guard<std::mutex> lock(s.life_mu);
      --s.in_flight;
      s.life_cv.notify_all();
    }
  };

  // 401 unless the request carries a valid key (or keys are not required and none was sent).
  void authenticate(const httplib::Request& req, Call& call) {
    const std::string auth = req.get_header_value("Authorization");
    if (auth.empty() && !cfg.require_keys) return;
    const AuthResult a = store->check_bearer(auth);
    call.row.key_id = a.key_id;
    call.row.account = a.account;
    if (!a.key) {
      switch (a.failure) {
        case AuthFailure::missing:
          throw unauthorized("no API key: send the header \"Authorization: Bearer <key>\" (create a key with "
                             "`retort keys create --account NAME`)");
        case AuthFailure::revoked:
          throw unauthorized("this API key was revoked");
        default:
          throw unauthorized("incorrect API key provided");
      }
    }
    call.key = a.key;
    call.row.account = a.key->account;
  }

  // Authentication, then the key's quotas (keys may leave them to the server's defaults): every API call
  // counts against requests per minute; tokens are counted once a generation ends.
  void admit(const httplib::Request& req, httplib::Response& res, Call& call) {
    authenticate(req, call);
    if (!call.key) return;
    KeyRecord k = *call.key;
    if (monitor) {
      auto [actions, verdict] = monitor_actions_for(k.account);
      if (verdict) {
        call.monitor_actions = actions;
        call.monitor_note = {{"subject", verdict->subject}, {"score", verdict->score}, {"actions", actions}};
        call.row.policy = json{{"monitor", call.monitor_note}}.dump();
        auto has = [&](const char* a) { return std::find(actions.begin(), actions.end(), a) != actions.end(); };
        if (has("block")) {
          metrics.add("retort_monitor_enforced_total", {{"action", "block"}});
          throw forbidden("this account is blocked by the crawl monitor (" + verdict->subject +
                          "); contact the provider to review the decision");
        }
        if (has("throttle")) {
          metrics.add("retort_monitor_enforced_total", {{"action", "throttle"}});
          k.policy.rpm = k.policy.rpm == 0 ? cfg.monitor_throttle_rpm : std::min(k.policy.rpm, cfg.monitor_throttle_rpm);
        }
      }
    }
    if (k.policy.rpm == 0) k.policy.rpm = cfg.default_rpm;
    if (k.policy.tpm == 0) k.policy.tpm = cfg.default_tpm;
    if (k.policy.tokens_per_day == 0) k.policy.tokens_per_day = cfg.default_tokens_per_day;
    const Admission a = quotas.admit(k, now_ms());
    if (!a.ok) {
      metrics.add("retort_policy_actions_total", {{"action", "rate_limited_" + a.reason}});
      json pol = {{"rate_limited", a.reason}};
      if (!call.monitor_note.is_null()) pol["monitor"] = call.monitor_note;
      call.row.policy = pol.dump();
      throw rate_limited(a.message, int(std::max<int64_t>(1, a.retry_after_seconds)),
                         a.reason == "tokens_per_day" ? "insufficient_quota" : "rate_limit_exceeded");
    }
    if (a.remaining_requests >= 0) res.set_header("x-ratelimit-remaining-requests", std::to_string(a.remaining_requests));
    if (a.remaining_tokens >= 0) res.set_header("x-ratelimit-remaining-tokens", std::to_string(a.remaining_tokens));
  }

  void check_model(const std::string& name) const {
    if (!name.empty() && name != model_id && name != cfg.model && name != model.path) throw not_found_model(name);
  }

  // The processor that marks text served to `account` ("" = anonymous: the master key), and its commitment.
  std::pair<std::shared_ptr<LogitsProcessor>, std::string> watermark_for(const std::string& account) {
    std::lock_guard<std::mutex> lock(wm_mu);
    auto it = wm_by_account.find(account);
    if (it != wm_by_account.end()) return it->second;
    const WatermarkKey k = account.empty() ? master : derive_account_key(master, account);
    std::shared_ptr<LogitsProcessor> p;
    if (wm.scheme == "kgw") p = std::make_shared<KgwProcessor>(k, wm.kgw);
    else p = std::make_shared<GumbelProcessor>(k, wm.gumbel);
    auto entry = std::make_pair(p, k.commitment());
    wm_by_account.emplace(account, entry);
    return entry;
  }

  uint64_t fresh_seed() {
    std::lock_guard<std::mutex> lock(seed_mu);
    return seed_rng();
  }

  void generate(const httplib::Request& req, httplib::Response& res, Endpoint kind);
  void tokenize(const httplib::Request& req, httplib::Response& res);
  void detokenize(const httplib::Request& req, httplib::Response& res);
  void models(const httplib::Request& req, httplib::Response& res);
  void detect(const httplib::Request& req, httplib::Response& res);
  void monitor_report(const httplib::Request& req, httplib::Response& res);
};

Server::Impl::Impl(const ServeConfig& c) : cfg(c) {
  check(cfg.parallel >= 1, "serve: parallel must be at least 1, got ", cfg.parallel);
  check(cfg.ctx_size >= 2, "serve: ctx_size must be at least 2, got ", cfg.ctx_size);
  check(cfg.max_top_logprobs >= 0 && cfg.max_top_logprobs <= 20, "serve: max_top_logprobs must be in [0, 20], got ",
        cfg.max_top_logprobs);
  check(cfg.round_logprobs_digits >= -1 && cfg.round_logprobs_digits <= 15,
        "serve: round_logprobs_digits must be in [-1, 15] (-1 = off), got ", cfg.round_logprobs_digits);
  check(cfg.request_timeout_s > 0 && cfg.shutdown_grace_s >= 0, "serve: request_timeout_s must be > 0 and "
        "shutdown_grace_s >= 0");
  check(cfg.watermark == "kgw" || cfg.watermark == "gumbel" || cfg.watermark == "none",
        "serve: watermark must be kgw, gumbel or none, got \"", cfg.watermark, "\"");
  check(std::isfinite(cfg.monitor_clock_speedup) && cfg.monitor_clock_speedup > 0,
        "serve: monitor_clock_speedup must be > 0 (monitor time per wall time; 1 = real time), got ",
        cfg.monitor_clock_speedup);
  check(cfg.monitor_clock_origin_ms >= 0, "serve: monitor_clock_origin_ms must be >= 0 (Unix milliseconds; 0 = off), "
        "got ", cfg.monitor_clock_origin_ms);
  check(cfg.monitor_clock_origin_ms == 0 || cfg.monitor_replay_clock, "serve: monitor_clock_origin_ms needs "
        "monitor_replay_clock: true (the scaled monitor clock is for replay evaluations only)");
  check(cfg.monitor_clock_speedup == 1 || cfg.monitor_clock_origin_ms != 0, "serve: monitor_clock_speedup needs "
        "monitor_clock_origin_ms (the monitor time the scaled clock starts at)");
  if (cfg.threads > 0) set_num_threads(cfg.threads);

  // Everything that can fail on the operator's input comes before the model is loaded.
  if (cfg.db.empty()) {  // as `retort keys` finds it: $RETORT_SERVE_DB, else $RETORT_HOME/serve.db
    const char* env = std::getenv("RETORT_SERVE_DB");
    cfg.db = env && *env ? env : default_serve_db_path();
  }
  store = AccountStore::open(cfg.db);
  ledger = Ledger::open(cfg.db);
  std::optional<MonitorCalibration> calibration;
  if (cfg.monitor) {
    static const std::vector<std::string> known_actions = {"flag", "throttle", "cap_logprobs", "antidistill", "block"};
    for (const auto& a : cfg.monitor_actions)
      check(std::find(known_actions.begin(), known_actions.end(), a) != known_actions.end(),
            "serve: monitor_actions: unknown action \"", a, "\" (flag, throttle, cap_logprobs, antidistill, block)");
    check(cfg.monitor_throttle_rpm >= 1, "serve: monitor_throttle_rpm must be at least 1, got ", cfg.monitor_throttle_rpm);
    check(cfg.monitor_cap_top_logprobs >= 0 && cfg.monitor_cap_top_logprobs <= 20,
          "serve: monitor_cap_top_logprobs must be in [0, 20], got ", cfg.monitor_cap_top_logprobs);
    if (!cfg.monitor_calibration.empty()) calibration = MonitorCalibration::load(cfg.monitor_calibration);
    monitor_db = ServeDb::open(cfg.db);
  }
  if (cfg.watermark != "none") {
    wm.scheme = cfg.watermark;
    wm.kgw.gamma = cfg.kgw_gamma;
    wm.kgw.delta = cfg.kgw_delta;
    wm.kgw.context = cfg.kgw_context;
    wm.kgw.h = cfg.watermark_h;
    if (cfg.watermark_h > 0) wm.gumbel.h = cfg.watermark_h;
    check_detector_config(wm);
    std::string where;
    master = serve_master_key(cfg.watermark_key_file, where);
    watermarking = true;
    std::fprintf(stderr, "serve: watermark %s, master key from %s (commitment %s)\n", wm.scheme.c_str(), where.c_str(),
                 master.commitment().c_str());
  }

  model = load_runtime_model(cfg.model);
  check(model.tokenizer != nullptr, "serve: ", model.path, " has no tokenizer; retort serve needs one");
  model_id = cfg.model_id.empty() ? std::filesystem::path(model.path).stem().string() : cfg.model_id;
  std::error_code ec;
  const auto size = std::filesystem::is_regular_file(model.path, ec) ? std::filesystem::file_size(model.path, ec) : 0;
  fingerprint = system_fingerprint(model.path, size, model.tokenizer->hash(), kRetortVersion);
  created_s = now_ms() / 1000;
  if (ChatTemplate::available(model.chat_template, *model.tokenizer))
    chat = ChatTemplate::from_jinja(model.chat_template, *model.tokenizer);

  EngineOptions eo;
  eo.decoder.n_slots = cfg.parallel;
  eo.decoder.max_len = cfg.ctx_size;
  eo.decoder.prefill_chunk = cfg.prefill_chunk;
  eo.decoder.prefill_budget = cfg.prefill_chunk;
  eo.max_queue = cfg.max_queue;
  engine = std::make_unique<Engine>(model, *model.model, eo);
  engine->on_step = [this](const EngineStep& st) { metrics.observe("retort_step_seconds", st.seconds); };
  metrics.set_gauge_source([this] {
    return std::map<std::string, double>{{"retort_queue_length", double(engine->queued())},
                                         {"retort_running_sequences", double(engine->running())},
                                         {"retort_slots", double(engine->n_slots())}};
  });
  quotas.seed_day_tokens(store->tokens_today_by_key(now_ms()), now_ms());
  const bool antidistill_action = std::find(cfg.monitor_actions.begin(), cfg.monitor_actions.end(), "antidistill") !=
                                  cfg.monitor_actions.end();
  check(cfg.antidistill.empty() || cfg.antidistill_lambda != 0, "serve: antidistill is set but antidistill_lambda is "
        "0 (nothing would change); give --antidistill-lambda, e.g. 0.1");
  check(!(cfg.monitor && antidistill_action) || !cfg.antidistill.empty(), "serve: monitor_actions has antidistill but "
        "no antidistill proxy is configured; make one with `retort antidistill prepare` and pass --antidistill DIR");
  check(!cfg.antidistill_all || !cfg.antidistill.empty(), "serve: antidistill_all needs antidistill (a proxy directory)");
  if (!cfg.antidistill.empty()) {
    antidistill = load_antidistill(cfg.antidistill, cfg.antidistill_lambda, model);
    std::fprintf(stderr, "serve: antidistillation proxy %s, lambda %g (%s)\n", cfg.antidistill.c_str(),
                 cfg.antidistill_lambda, cfg.antidistill_all ? "every request" : "accounts the monitor flags");
  }
  if (cfg.monitor) {
    if (calibration)
      check(calibration->n_embd == 0 || calibration->n_embd == model.hparams.n_embd, "serve: the monitor calibration ",
            cfg.monitor_calibration, " has embeddings of ", calibration->n_embd, " values, this model's have ",
            model.hparams.n_embd, " (it was made for ", calibration->model, "); calibrate again on this model");
    std::fprintf(stderr, "serve: crawl monitor on (%s; actions:%s)\n",
                 calibration ? ("calibrated on " + std::to_string(calibration->benign_accounts) + " benign accounts").c_str()
                             : "uncalibrated: recording features, scoring nothing",
                 [&] { std::string a; for (const auto& x : cfg.monitor_actions) a += " " + x; return a; }().c_str());
    monitor = std::make_unique<CrawlMonitor>(std::move(calibration));
    monitor_thread = std::thread([this] { monitor_loop(); });
  }
  routes();
}

void Server::Impl::routes() {
  http.new_task_queue = [this] { return new ConnectionThreads(cfg.max_connections); };
  http.set_payload_max_length(cfg.max_body_bytes);
  http.set_read_timeout(cfg.read_timeout_s, 0);
  http.set_write_timeout(cfg.read_timeout_s, 0);
  http.set_keep_alive_timeout(cfg.keep_alive_timeout_s);
  http.set_keep_alive_max_count(1000);
  http.set_tcp_nodelay(true);
  // httplib's default options set SO_REUSEPORT, so a second server on a port in use would bind too and
  // silently take part of its connections: SO_REUSEADDR only (a restart can still rebind at once).
  http.set_socket_options([this](int sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });

  http.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    const bool ok = accepting.load() && ledger->healthy();
    json j = {{"status", !accepting.load() ? "shutting_down" : ok ? "ok" : "degraded"},
              {"model", model_id},
              {"slots", engine->n_slots()},
              {"running", engine->running()},
              {"queued", engine->queued()},
              {"ledger", ledger->healthy() ? "ok" : ledger->last_error()}};
    // A replayer schedules its requests on the scaled clock: it needs to know when it started.
    if (cfg.monitor_clock_origin_ms != 0)
      j["monitor_clock"] = {{"origin_ms", cfg.monitor_clock_origin_ms}, {"start_unix_ms", clock_start_ms.load()},
                            {"speedup", cfg.monitor_clock_speedup}};
    res.status = ok ? 200 : 503;
    res.set_content(j.dump(), "application/json");
  });
  http.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics.render(), "text/plain; version=0.0.4");
  });
  http.Get("/v1/models", [this](const httplib::Request& q, httplib::Response& r) { models(q, r); });
  http.Get(R"(/v1/models/(.+))", [this](const httplib::Request& q, httplib::Response& r) { models(q, r); });
  http.Post("/v1/chat/completions",
            [this](const httplib::Request& q, httplib::Response& r) { generate(q, r, Endpoint::chat); });
  http.Post("/v1/completions",
            [this](const httplib::Request& q, httplib::Response& r) { generate(q, r, Endpoint::completion); });
  http.Post("/tokenize", [this](const httplib::Request& q, httplib::Response& r) { tokenize(q, r); });
  http.Post("/detokenize", [this](const httplib::Request& q, httplib::Response& r) { detokenize(q, r); });
  http.Post("/v1/watermark/detect", [this](const httplib::Request& q, httplib::Response& r) { detect(q, r); });
  http.Get("/v1/monitor", [this](const httplib::Request& q, httplib::Response& r) { monitor_report(q, r); });

  // Requests httplib answers itself (no route: 404; body over the limit: 413; a malformed request line:
  // 400) get an OpenAI error body and their ledger row here. Responses our handlers made have a body.
  http.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req,
                                                                      httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    Call call(*this, req, req.path.empty() ? "?" : req.path);
    ApiError e = res.status == 413   ? too_large(cfg.max_body_bytes)
                 : res.status == 404 ? not_found_route(req.method, req.path)
                                     : ApiError(res.status, "invalid_request_error", "the HTTP request is malformed");
    call.fail(res, e);
    call.commit();
    return httplib::Server::HandlerResponse::Handled;
  }));
  http.set_exception_handler([this](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "unknown error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    std::fprintf(stderr, "serve: %s %s: internal error: %s\n", req.method.c_str(), req.path.c_str(), what.c_str());
    Call call(*this, req, req.path);
    call.fail(res, internal("internal error; the server logged it"));
    call.commit();
  });
}

std::pair<std::vector<std::string>, std::optional<MonitorVerdict>> Server::Impl::monitor_actions_for(
    const std::string& account) {
  std::optional<MonitorVerdict> v = monitor->flagged(account);
  if (!v) return {{}, std::nullopt};
  return {cfg.monitor_actions, v};
}

// The monitor's worker: observes queued events in order, records them in batches, records every new
// flag with the actions it brings, and keeps the verdicts table current (every 2 s and at the end).
void Server::Impl::monitor_loop() {
  auto last_snapshot = Clock::now();
  bool dirty = false;
  for (;;) {
    std::deque<std::pair<std::string, MonitorEvent>> batch;
    bool stopping;
    {
      std::unique_lock<std::mutex> lock(monitor_mu);
      monitor_cv.wait_for(lock, std::chrono::milliseconds(200), [&] { return monitor_stop || !monitor_queue.empty(); });
      batch.swap(monitor_queue);
      stopping = monitor_stop;
    }
    std::vector<std::pair<std::string, MonitorEvent>> rows;
    for (auto& [id, e] : batch) {
      std::vector<MonitorVerdict> flagged;
      try {  // nothing the monitor does may take the server down
        flagged = monitor->observe(e);
        metrics.add("retort_monitor_events_total", {});
      } catch (const std::exception& ex) {
        std::fprintf(stderr, "serve: monitor: %s\n", ex.what());
      }
      dirty = true;
      for (const MonitorVerdict& v : flagged) {
        MonitorActionRecord a;
        a.unix_ms = now_ms();
        a.subject = v.subject;
        a.members = v.members;
        a.actions = cfg.monitor_actions;
        a.score = v.score;
        a.requests = v.requests;
        a.reasons = v.to_json()["reasons"];
        if (v.cluster) a.reasons.push_back({{"test", "links"}, {"text", json(v.links).dump()}});
        try {
          for (const auto& act : a.actions) metrics.add("retort_monitor_actions_total", {{"action", act}});
          metrics.add("retort_monitor_flagged_total", {{"kind", v.cluster ? "cluster" : "account"}});
        } catch (const std::exception& ex) {
          std::fprintf(stderr, "serve: monitor: %s\n", ex.what());
        }
        std::string why = v.reasons.empty() ? std::string("score ") + std::to_string(v.score) : v.reasons[0].text;
        std::fprintf(stderr, "serve: monitor flagged %s (%zu account%s, %lld requests): %s\n", v.subject.c_str(),
                     v.members.size(), v.members.size() == 1 ? "" : "s", static_cast<long long>(v.requests),
                     why.c_str());
        try {
          write_monitor_action(*monitor_db, a);
        } catch (const std::exception& ex) {
          std::fprintf(stderr, "serve: monitor: %s\n", ex.what());
        }
      }
      rows.emplace_back(std::move(id), std::move(e));
    }
    try {
      write_monitor_events(*monitor_db, rows);
      if (dirty && (stopping || Clock::now() - last_snapshot > std::chrono::seconds(2))) {
        write_monitor_verdicts(*monitor_db, monitor->verdicts(), now_ms());
        last_snapshot = Clock::now();
        dirty = false;
      }
    } catch (const std::exception& ex) {
      std::fprintf(stderr, "serve: monitor: %s\n", ex.what());
    }
    if (stopping) {
      std::lock_guard<std::mutex> lock(monitor_mu);
      if (monitor_queue.empty()) return;
    }
  }
}

void Server::Impl::monitor_report(const httplib::Request& req, httplib::Response& res) {
  Call call(*this, req, "/v1/monitor");
  try {
    admit(req, res, call);
    if (!(call.key && call.key->policy.admin)) throw forbidden("the monitor report needs an admin key (retort keys create --admin)");
    if (!monitor) throw bad_request("", "this server runs without the crawl monitor (monitor: false)");
    json vs = json::array();
    for (const auto& v : monitor->verdicts()) vs.push_back(v.to_json());
    json j = {{"calibrated", monitor->calibrated()}, {"actions", cfg.monitor_actions}, {"verdicts", vs}};
    if (const MonitorCalibration* c = monitor->calibration())
      j["calibration"] = {{"threshold", c->threshold}, {"window", c->window}, {"min_requests", c->min_requests},
                          {"benign_accounts", c->benign_accounts}, {"benign_requests", c->benign_requests}};
    res.set_content(j.dump(), "application/json");
  } catch (const ApiError& e) {
    call.fail(res, e);
  }
  call.commit();
}

void Server::Impl::models(const httplib::Request& req, httplib::Response& res) {
  Call call(*this, req, "/v1/models");
  try {
    admit(req, res, call);
    ModelCard card{model_id, created_s, "retort", engine->slot_len()};
    if (req.matches.size() > 1) {
      call.row.model = req.matches[1];
      if (req.matches[1] != model_id) throw not_found_model(req.matches[1]);
      res.set_content(to_body(model_json(card)), "application/json");
    } else {
      res.set_content(to_body(build_models_response({card})), "application/json");
    }
  } catch (const ApiError& e) {
    call.fail(res, e);
  }
  call.commit();
}

void Server::Impl::tokenize(const httplib::Request& req, httplib::Response& res) {
  Call call(*this, req, "/tokenize");
  try {
    admit(req, res, call);
    const TokenizeRequest r = parse_tokenize_request(parse_body(req.body));
    call.row.model = r.model;
    check_model(r.model);
    std::vector<int32_t> ids;
    const Tokenizer& tok = *model.tokenizer;
    if (r.chat) {
      if (!chat) throw bad_request("messages", "this model has no chat template; send \"content\" instead");
      try {
        ids = chat->encode(r.messages, tok, r.add_generation_prompt);
      } catch (const Error& e) {
        throw bad_request("messages", e.what());
      }
      if (r.add_special && tok.bos_id() && (ids.empty() || ids[0] != *tok.bos_id())) ids.insert(ids.begin(), *tok.bos_id());
    } else {
      ids = tok.encode(r.text, /*parse_special=*/false, r.add_special);
    }
    call.row.prompt_tokens = int64_t(ids.size());
    res.set_content(to_body(build_tokenize_response(ids, r, tok, engine->slot_len())), "application/json");
  } catch (const ApiError& e) {
    call.fail(res, e);
  }
  call.commit();
}

void Server::Impl::detokenize(const httplib::Request& req, httplib::Response& res) {
  Call call(*this, req, "/detokenize");
  try {
    admit(req, res, call);
    const std::vector<int32_t> ids = parse_detokenize_request(parse_body(req.body), model.tokenizer->n_vocab());
    res.set_content(to_body(build_detokenize_response(ids, *model.tokenizer)), "application/json");
  } catch (const ApiError& e) {
    call.fail(res, e);
  }
  call.commit();
}

// POST /v1/watermark/detect (admin keys only):
//   {"text": str} | {"texts": [str, ...]} | {"tokens": [[int, ...], ...]}, optional "accounts": [str, ...]
//   (default: every account with a key).
// Scores the documents, pooled, against the master key and each account's key: one exact p-value each,
// Holm–Bonferroni-adjusted over all of them (master included).
void Server::Impl::detect(const httplib::Request& req, httplib::Response& res) {
  Call call(*this, req, "/v1/watermark/detect");
  try {
    admit(req, res, call);
    if (!(call.key && call.key->policy.admin))
      throw forbidden("watermark detection needs an admin key (retort keys create --admin)");
    if (!watermarking) throw bad_request("", "this server runs without a watermark (watermark: none)");
    const json body = parse_body(req.body);
    std::vector<std::vector<int32_t>> docs;
    auto text_doc = [&](const json& t, const std::string& param) {
      if (!t.is_string()) throw bad_request(param, "expected a string");
      docs.push_back(model.tokenizer->encode(t.get<std::string>(), /*parse_special=*/false, /*add_bos=*/false));
    };
    if (body.contains("text")) text_doc(body["text"], "text");
    if (body.contains("texts")) {
      if (!body["texts"].is_array()) throw bad_request("texts", "expected an array of strings");
      for (size_t i = 0; i < body["texts"].size(); ++i) text_doc(body["texts"][i], "texts[" + std::to_string(i) + "]");
    }
    if (body.contains("tokens")) {
      const json& t = body["tokens"];
      if (!t.is_array()) throw bad_request("tokens", "expected an array of token-id arrays");
      for (size_t i = 0; i < t.size(); ++i) {
        const std::string param = "tokens[" + std::to_string(i) + "]";
        if (!t[i].is_array()) throw bad_request(param, "expected an array of token ids");
        std::vector<int32_t> ids;
        for (const auto& v : t[i]) {
          if (!v.is_number_integer()) throw bad_request(param, "expected integers");
          ids.push_back(v.get<int32_t>());
        }
        check_token_ids(ids, model.tokenizer->n_vocab(), param);
        docs.push_back(std::move(ids));
      }
    }
    if (docs.empty()) throw bad_request("text", "give \"text\", \"texts\" or \"tokens\"");
    std::vector<std::string> accounts;
    if (body.contains("accounts")) {
      if (!body["accounts"].is_array()) throw bad_request("accounts", "expected an array of account names");
      for (const auto& a : body["accounts"]) {
        if (!a.is_string()) throw bad_request("accounts", "expected strings");
        accounts.push_back(a.get<std::string>());
      }
    } else {
      for (const KeyRecord& k : store->list())
        if (std::find(accounts.begin(), accounts.end(), k.account) == accounts.end()) accounts.push_back(k.account);
    }
    // Candidates: the master key, then each account's key.
    std::vector<std::pair<std::string, WatermarkKey>> keys = {{"", master}};
    for (const std::string& a : accounts) keys.emplace_back(a, derive_account_key(master, a));
    std::vector<DetectionResult> results(keys.size());
    parallel_for(0, int64_t(keys.size()), 1, [&](int64_t lo, int64_t hi) {
      for (int64_t i = lo; i < hi; ++i) {
        WatermarkScorer s(keys[size_t(i)].second, wm);
        for (const auto& d : docs) s.add_tokens(d);
        results[size_t(i)] = s.result();
      }
    });
    std::vector<double> log_p;
    for (const auto& r : results) log_p.push_back(r.too_short ? 0.0 : r.log10_p * std::log(10.0));
    const std::vector<double> adj = holm_bonferroni_log(log_p);
    json out_keys = json::array();
    for (size_t i = 0; i < keys.size(); ++i) {
      const DetectionResult& r = results[i];
      out_keys.push_back({{"account", keys[i].first.empty() ? json(nullptr) : json(keys[i].first)},
                          {"key", keys[i].first.empty() ? "master" : "account"},
                          {"key_commitment", keys[i].second.commitment()},
                          {"tokens_scored", r.tokens_scored},
                          {"score", r.score},
                          {"z", r.z},
                          {"p_value", r.p_value},
                          {"log10_p", r.log10_p},
                          {"p_holm", std::exp(adj[i])},
                          {"log10_p_holm", adj[i] / std::log(10.0)},
                          {"too_short", r.too_short}});
    }
    json j = {{"scheme", wm.scheme}, {"documents", docs.size()}, {"correction", "holm-bonferroni"}, {"keys", out_keys}};
    metrics.add("retort_watermark_detect_total", {});
    res.set_content(j.dump(), "application/json");
  } catch (const ApiError& e) {
    call.fail(res, e);
  }
  call.commit();
}

void Server::Impl::generate(const httplib::Request& req, httplib::Response& res, Endpoint kind) {
  auto call = std::make_shared<Call>(*this, req, kind == Endpoint::chat ? "/v1/chat/completions" : "/v1/completions");
  auto p = std::make_shared<Pending>();
  ApiRequest r;
  LogprobsSpec lp;
  std::vector<int32_t> prompt;
  json policy = json::object();
  std::string wm_scheme, wm_commitment;
  std::shared_ptr<MonitorEvent> event;  // what the monitor observes once the request is served
  std::string served_prompt;            // record_completions: the prompt as served_texts keeps it
  try {
    if (!accepting.load()) throw unavailable("the server is shutting down", 5);
    admit(req, res, *call);
    if (!call->monitor_note.is_null()) policy["monitor"] = call->monitor_note;
    const json body = parse_body(req.body);
    r = kind == Endpoint::chat ? parse_chat_request(body) : parse_completion_request(body);
    call->row.model = r.model;
    call->row.n = r.n;
    call->row.stream = r.stream;
    call->row.logprobs_requested = r.logprobs ? r.top_logprobs : -1;
    check_model(r.model);
    if (monitor && call->key) 
      event = std::make_shared<MonitorEvent>(monitor_event_of(r, body, call->key->account, req.remote_addr,
                                                             call->row.started_unix_ms));
    if (event && cfg.monitor_replay_clock && req.has_header("X-Retort-Replay-Time-Ms")) {
      try {
        event->unix_ms = std::stoll(req.get_header_value("X-Retort-Replay-Time-Ms"));
      } catch (const std::exception&) {
        throw bad_request("X-Retort-Replay-Time-Ms", "expected Unix milliseconds");
      }
    } else if (event && cfg.monitor_replay_clock && cfg.monitor_clock_origin_ms != 0) {
      event->unix_ms = scaled_clock_ms(call->row.started_unix_ms);  // a live client, on the replay's clock
    }
    // Replayed traffic may cap its own generation (replay mode only; the monitor saw the request's max_tokens).
    std::optional<int64_t> replay_cap;
    if (cfg.monitor_replay_clock && req.has_header("X-Retort-Replay-Max-Tokens"))
      replay_cap = replay_max_tokens(req.get_header_value("X-Retort-Replay-Max-Tokens"));

    // Logprob policy: the key's (refuse, cap, round), then the server's cap.
    const KeyPolicy kp = call->key ? call->key->policy : KeyPolicy{};
    if (r.logprobs && kp.logprobs_refused) {
      policy["logprobs"] = "refused";
      call->row.policy = policy.dump();
      metrics.add("retort_policy_actions_total", {{"action", "logprobs_refused"}});
      throw forbidden("logprobs are not available to this API key");
    }
    int cap = cfg.max_top_logprobs;
    if (kp.max_top_logprobs) cap = std::min(cap, *kp.max_top_logprobs);
    const bool monitor_cap = std::find(call->monitor_actions.begin(), call->monitor_actions.end(), "cap_logprobs") !=
                             call->monitor_actions.end();
    if (monitor_cap) cap = std::min(cap, cfg.monitor_cap_top_logprobs);
    if (monitor_cap && r.logprobs) metrics.add("retort_monitor_enforced_total", {{"action", "cap_logprobs"}});
    const int digits = kp.round_logprobs_digits >= 0 ? kp.round_logprobs_digits : cfg.round_logprobs_digits;
    lp = granted_logprobs(r, cap, digits);
    if (r.logprobs && lp.top < r.top_logprobs) {
      policy["top_logprobs_capped_to"] = lp.top;
      metrics.add("retort_policy_actions_total", {{"action", "top_logprobs_capped"}});
    }
    if (r.logprobs && lp.round_digits >= 0) {
      policy["logprobs_rounded_to_digits"] = lp.round_digits;
      metrics.add("retort_policy_actions_total", {{"action", "logprobs_rounded"}});
    }
    call->row.logprobs_granted = r.logprobs ? lp.top : -1;

    // The prompt. Text from the client never turns into control tokens (special-token text stays text);
    // a completions prompt given as token ids is taken as is.
    const Tokenizer& tok = *model.tokenizer;
    if (kind == Endpoint::chat) {
      if (!chat) throw bad_request("messages", "this model has no chat template; use /v1/completions with a prompt");
      try {
        prompt = chat->encode(r.messages, tok);
      } catch (const Error& e) {
        throw bad_request("messages", e.what());
      }
    } else if (r.prompt_is_ids) {
      check_token_ids(r.prompt_ids, tok.n_vocab(), "prompt");
      prompt = r.prompt_ids;
    } else {
      prompt = tok.encode(r.prompt, /*parse_special=*/false, /*add_bos=*/true);
    }
    if (prompt.empty()) throw bad_request(kind == Endpoint::chat ? "messages" : "prompt", "the prompt is empty");
    call->row.prompt_tokens = int64_t(prompt.size());
    call->row.prompt_sha256 = prompt_hash(prompt);
    int64_t max_tokens = resolve_max_tokens(r, int64_t(prompt.size()), engine->slot_len());
    if (cfg.max_completion_tokens > 0) max_tokens = std::min(max_tokens, cfg.max_completion_tokens);
    if (replay_cap) max_tokens = std::min(max_tokens, *replay_cap);
    if (cfg.record_completions) served_prompt = served_prompt_json(r, tok);

    std::shared_ptr<LogitsProcessor> processor;
    if (watermarking && (!call->key || call->key->policy.watermark)) {
      auto [proc, commitment] = watermark_for(call->key ? call->key->account : "");
      processor = proc;
      wm_scheme = wm.scheme;
      wm_commitment = commitment;
    }
    call->row.watermark_scheme = wm_scheme;
    call->row.watermark_key_commitment = wm_commitment;
    const bool use_antidistill =
        antidistill && (cfg.antidistill_all || std::find(call->monitor_actions.begin(), call->monitor_actions.end(),
                                                         "antidistill") != call->monitor_actions.end());
    if (use_antidistill) {
      policy["antidistill"] = {{"lambda", antidistill->lambda()}};
      if (!cfg.antidistill_all) metrics.add("retort_monitor_enforced_total", {{"action", "antidistill"}});
    }
    call->row.policy = policy.dump();

    const ResponseMeta meta = make_meta(kind, model_id, fingerprint);
    call->row.request_id = meta.id;
    p->results.resize(size_t(r.n));
    p->finished.assign(size_t(r.n), false);
    if (r.stream) p->enc = std::make_unique<StreamEncoder>(kind, meta, r.n, lp, r.include_usage, tok);
    const uint64_t fallback_seed = fresh_seed();
    const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(cfg.request_timeout_s * 1000));
    for (int i = 0; i < r.n; ++i) {
      GenerationRequest g = generation_request(r, prompt, i, max_tokens, fallback_seed, lp.top);
      // Antidistillation keeps per-sequence proxy caches: a processor per choice, before the watermark
      // (which marks the distribution the sampler finally draws from).
      g.processor = chain_processors({use_antidistill ? antidistill->make(g.sampling) : nullptr, processor});
      g.want_prompt_embedding = event != nullptr && i == 0;
      auto on_token = [this, p, i](const GeneratedToken& t, const std::string& piece) {
        std::lock_guard<std::mutex> lock(p->mu);
        if (!p->first_token) {
          p->first_token = Clock::now();
        }
        if (p->enc) p->out += p->enc->on_token(i, t, piece);
        p->cv.notify_all();
      };
      auto on_done = [p, i](GenerationResult&& g) {
        std::lock_guard<std::mutex> lock(p->mu);
        p->results[size_t(i)] = std::move(g);
        p->finished[size_t(i)] = true;
        if (p->enc) {
          const GenerationResult& res = p->results[size_t(i)];
          if (res.finish_reason == "cancelled" || res.finish_reason == "error") {  // shutdown deadline, failed step
            if (!p->stream_failed)
              p->out += StreamEncoder::error(res.finish_reason == "error"
                                                 ? internal(res.error)
                                                 : unavailable("the server shut down before the request finished"));
            p->stream_failed = true;
          } else
            p->out += p->enc->finish(i, res);
        }
        ++p->n_done;
        p->cv.notify_all();
      };
      std::optional<uint64_t> ticket;
      try {
        ticket = engine->submit(std::move(g), on_token, on_done, deadline);
      } catch (const Error& e) {
        throw bad_request("", e.what());
      }
      if (!ticket) {
        std::vector<uint64_t> sent;
        {
          std::lock_guard<std::mutex> lock(p->mu);
          sent = p->tickets;
        }
        for (uint64_t t : sent) engine->cancel(t);
        if (!accepting.load()) throw unavailable("the server is shutting down", 5);
        metrics.add("retort_policy_actions_total", {{"action", "queue_full"}});
        throw ApiError(429, "rate_limit_error", "the server is busy (its queue is full); retry after a moment", "",
                       "queue_full");
      }
      std::lock_guard<std::mutex> lock(p->mu);
      p->tickets.push_back(*ticket);
    }
  } catch (ApiError& e) {
    if (e.status == 429 && e.retry_after_s <= 0) e.retry_after_s = 1;
    call->fail(res, e);
    call->commit();
    return;
  }

  // From here the response streams out of the engine's callbacks. The provider runs on this HTTP thread;
  // when the client has gone (a write fails), every choice is cancelled and its slot freed.
  const size_t n = size_t(r.n);
  const auto t_arrival = call->t0;
  auto cancel_all = [this, p] {
    std::vector<uint64_t> tickets;
    {
      std::lock_guard<std::mutex> lock(p->mu);
      tickets = p->tickets;
    }
    for (uint64_t t : tickets) engine->cancel(t);
  };
  // Ledger, quotas and metrics once the response is over (or the client is gone).
  auto finish_row = [this, call, p, n, t_arrival, wm_scheme, event, served_prompt](bool client_gone) {
    std::lock_guard<std::mutex> lock(p->mu);
    int64_t completion = 0;
    std::string reasons;
    bool failed = false, cancelled = false;
    for (size_t i = 0; i < n; ++i) {
      const GenerationResult& g = p->results[i];
      completion += int64_t(g.tokens.size());
      if (!reasons.empty()) reasons += ",";
      reasons += g.finish_reason;
      if (g.finish_reason == "error") failed = true;
      if (g.finish_reason == "cancelled") cancelled = true;
    }
    call->row.completion_tokens = completion;
    call->row.finish_reason = reasons;
    if (client_gone) {
      call->row.http_status = 499;  // nginx's "client closed request"
      call->row.error_type = "client_closed_request";
    } else if (failed) {
      call->row.http_status = 500;
      call->row.error_type = "server_error";
    } else if (cancelled) {  // the shutdown deadline ended it
      call->row.http_status = 503;
      call->row.error_type = "server_error";
    }
    if (cfg.record_completions && call->row.http_status == 0) {  // served whole: keep what the client received
      ServedTexts t;
      t.prompt = served_prompt;
      for (size_t i = 0; i < n; ++i) t.completions.push_back(p->results[i].text);
      call->row.served = std::move(t);
    }
    if (call->key) quotas.record_tokens(call->key->key_id, call->row.prompt_tokens + completion, now_ms());
    metrics.add("retort_prompt_tokens_total", {}, double(call->row.prompt_tokens));
    metrics.add("retort_completion_tokens_total", {}, double(completion));
    if (!wm_scheme.empty()) metrics.add("retort_watermarked_tokens_total", {{"scheme", wm_scheme}}, double(completion));
    if (p->first_token)
      metrics.observe("retort_time_to_first_token_seconds",
                      std::chrono::duration<double>(*p->first_token - t_arrival).count());
    if (event && (call->row.http_status == 0 || call->row.http_status == 499)) {  // the prompt was taken
      event->embedding = p->results.empty() ? std::vector<float>{} : p->results[0].prompt_embedding;
      std::lock_guard<std::mutex> lock(monitor_mu);
      monitor_queue.emplace_back(call->row.request_id, std::move(*event));
      monitor_cv.notify_one();
    }
    call->commit();
  };
  if (!call->row.policy.empty() && call->row.policy != "{}") res.set_header("x-retort-policy", call->row.policy);
  if (!wm_scheme.empty()) res.set_header("x-retort-watermark", wm_scheme + ";key=" + wm_commitment);

  if (r.stream) {
    {
      std::lock_guard<std::mutex> lock(p->mu);
      for (int i = 0; i < r.n; ++i) p->out += p->enc->open(i);
    }
    auto sent_done = std::make_shared<bool>(false);
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [p, n, cancel_all, sent_done](size_t, httplib::DataSink& sink) {
          std::string chunk;
          bool over = false;
          {
            std::unique_lock<std::mutex> lock(p->mu);
            p->cv.wait_for(lock, std::chrono::seconds(1), [&] { return !p->out.empty() || p->all_done(n); });
            chunk.swap(p->out);
            if (p->all_done(n)) {
              if (!p->stream_failed) chunk += p->enc->done(usage_of(p->results));  // an error event ended it already
              over = true;
            }
          }
          // Nothing new for a second: an SSE comment keeps proxies from timing out and tells us whether the
          // client is still there.
          if (chunk.empty()) chunk = ": keep-alive\n\n";
          if (!sink.write(chunk.data(), chunk.size())) {
            cancel_all();
            return false;
          }
          if (over) {
            *sent_done = true;
            sink.done();
          }
          return true;
        },
        [p, n, cancel_all, finish_row, sent_done](bool) {
          // A client may close as soon as it has read "data: [DONE]", before the chunked terminator: that
          // request was served. One gone before [DONE] was not.
          if (!*sent_done) {
            cancel_all();
            std::unique_lock<std::mutex> lock(p->mu);
            p->cv.wait(lock, [&] { return p->all_done(n); });  // every on_done has run: results are final
          }
          finish_row(!*sent_done);
        });
    return;
  }

  // Not streaming: wait for every choice. A client that goes away is noticed by writing a space (leading
  // whitespace is valid JSON) each second once the request has run kQuietSeconds; a shorter request never
  // sends one. (The 200 status line goes out with the first byte: a request cancelled by the shutdown
  // deadline after that gets an error body under 200 — the ledger records 503.)
  static constexpr int kQuietSeconds = 5;
  auto written = std::make_shared<bool>(false);
  res.set_chunked_content_provider(
      "application/json",
      [this, p, n, kind, lp, cancel_all, written, call](size_t, httplib::DataSink& sink) {
        std::unique_lock<std::mutex> lock(p->mu);
        if (!p->cv.wait_for(lock, std::chrono::seconds(1), [&] { return p->all_done(n); })) {
          lock.unlock();
          if (Clock::now() - call->t0 < std::chrono::seconds(kQuietSeconds)) return true;  // wait on, silently
          if (!sink.write(" ", 1)) {
            cancel_all();
            return false;
          }
          return true;
        }
        bool failed = false;
        for (const auto& g : p->results) failed = failed || g.finish_reason == "error" || g.finish_reason == "cancelled";
        std::string body;
        if (failed) {
          std::string why;
          for (const auto& g : p->results)
            if (!g.error.empty()) why = g.error;
          body = to_body(internal("generation failed" + (why.empty() ? std::string() : ": " + why)).body());
        } else {
          const ResponseMeta meta{call->row.request_id, call->row.started_unix_ms / 1000, model_id, fingerprint};
          const OrderedJson j = kind == Endpoint::chat
                                    ? build_chat_response(meta, p->results, lp, *model.tokenizer)
                                    : build_completion_response(meta, p->results, lp, *model.tokenizer);
          body = to_body(j);
        }
        lock.unlock();
        if (!sink.write(body.data(), body.size())) {
          cancel_all();
          return false;
        }
        *written = true;
        sink.done();
        return true;
      },
      [p, n, cancel_all, finish_row, written](bool) {
        if (!*written) {
          cancel_all();
          std::unique_lock<std::mutex> lock(p->mu);
          p->cv.wait(lock, [&] { return p->all_done(n); });
        }
        finish_row(!*written);
      });
}

// ---------------------------------------------------------------------------------------------------------

Server::Server(const ServeConfig& config) : impl_(std::make_unique<Impl>(config)) {}

Server::~Server() { shutdown(); }

void Server::run() {
  Impl& s = *impl_;
  int port = s.cfg.port;
  bool ok;
  if (port == 0) {
    port = s.http.bind_to_any_port(s.cfg.host);
    ok = port > 0;
  } else {
    ok = s.http.bind_to_port(s.cfg.host, port);
  }
  {
    std::lock_guard<std::mutex> lock(s.life_mu);
    s.bound_port = ok ? port : 0;
    s.life_cv.notify_all();
  }
  check(ok, "serve: cannot listen on ", s.cfg.host, ":", s.cfg.port,
        " (in use, or not an address of this machine); pick another with --host/--port");
  // httplib listens with a backlog of 5: a burst of new clients (64 connecting at once) overflows it and the
  // kernel drops or cookie-answers their handshakes. Listening again on the bound socket widens the queue.
  if (s.listen_fd >= 0) ::listen(s.listen_fd, SOMAXCONN);
  s.clock_start_ms = now_ms();
  if (s.cfg.monitor_clock_origin_ms != 0)
    std::fprintf(stderr, "serve: monitor clock (replay evaluation): %lld + (now - %lld) x %g ms for requests without "
                 "X-Retort-Replay-Time-Ms\n", static_cast<long long>(s.cfg.monitor_clock_origin_ms),
                 static_cast<long long>(s.clock_start_ms.load()), s.cfg.monitor_clock_speedup);
  if (s.cfg.record_completions)
    std::fprintf(stderr, "serve: recording served texts (prompts and completions) in %s (record_completions)\n",
                 s.cfg.db.c_str());
  std::fprintf(stderr, "serve: %s on http://%s:%d (slots %d, context %lld, keys %s)\n", s.model_id.c_str(),
               s.cfg.host.c_str(), port, s.cfg.parallel, static_cast<long long>(s.engine->slot_len()),
               s.cfg.require_keys ? "required" : "optional");
  s.http.listen_after_bind();
  // listen returns after stop(): wait for shutdown() to finish the rest.
  std::unique_lock<std::mutex> lock(s.life_mu);
  s.life_cv.wait(lock, [&] { return s.shut.load(); });
}

int Server::wait_until_listening() {
  Impl& s = *impl_;
  std::unique_lock<std::mutex> lock(s.life_mu);
  s.life_cv.wait(lock, [&] { return s.bound_port >= 0; });
  return s.bound_port;
}

void Server::shutdown() {
  Impl& s = *impl_;
  if (s.accepting.exchange(false) == false) {
    // A second call (e.g. the destructor after a signal): wait for the first to finish.
    std::unique_lock<std::mutex> lock(s.life_mu);
    s.life_cv.wait(lock, [&] { return s.shut.load(); });
    return;
  }
  const auto deadline = Clock::now() + std::chrono::milliseconds(int64_t(s.cfg.shutdown_grace_s * 1000));
  s.engine->shutdown(deadline);  // every accepted request has ended: the responses can finish
  {
    std::unique_lock<std::mutex> lock(s.life_mu);
    s.life_cv.wait_until(lock, deadline + std::chrono::seconds(5), [&] { return s.in_flight == 0; });
  }
  s.http.stop();
  try {
    s.ledger->flush();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "serve: ledger flush failed: %s\n", e.what());
  }
  if (s.monitor_thread.joinable()) {
    {
      std::lock_guard<std::mutex> lock(s.monitor_mu);
      s.monitor_stop = true;
      s.monitor_cv.notify_all();
    }
    s.monitor_thread.join();
  }
  std::lock_guard<std::mutex> lock(s.life_mu);
  s.shut = true;
  s.life_cv.notify_all();
}

}  // namespace retort

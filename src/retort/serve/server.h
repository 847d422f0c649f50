// retort/serve/server.h — `retort serve`: an OpenAI-compatible HTTP server that defends itself.
//
// One process, one model. HTTP requests are parsed on the HTTP threads (cpp-httplib; one thread per
// connection, so slow or idle clients never hold up a new one) and handed to the Engine's scheduler
// thread (engine.h), which steps the model over every running request. Around it, on every request:
//   1. authentication — a per-account API key (accounts.h), required unless the config says otherwise;
//   2. quotas — requests and tokens per minute, tokens per day (429 with Retry-After);
//   3. logprob policy — per key: refuse, cap top_logprobs, round; the server-wide cap applies to all;
//   4. watermark — text served to an account carries that account's mark (a key derived from the
//      master key, keys.h) unless the key is marked off;
//   5. the ledger — exactly one row per request whatever happened (ledger.h), flushed on shutdown.
// Endpoints and fields: docs/serve.md.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

namespace retort {

struct ServeConfig {
  std::string host = "127.0.0.1";  // loopback by default: exposing the server is a decision
  int port = 8080;                 // 0 = any free port (bound_port() tells)
  std::string model = "smollm2-135m-instruct";  // .gguf, HF directory or a short name in the model cache
  std::string model_id;            // the id /v1/models lists and requests name; "" = the file's stem
  std::string db;                  // keys + ledger; "" = $RETORT_SERVE_DB, else $RETORT_HOME/serve.db
  bool require_keys = true;        // false: anonymous requests are served (ledger account "")
  int threads = 0;                 // compute threads; 0 = all cores
  int parallel = 8;                // sequences decoded together (KV cache slots)
  int64_t ctx_size = 4096;         // tokens per sequence (prompt + completion); capped by the model's
  size_t max_queue = 256;          // requests waiting for a slot; beyond: 429 with Retry-After
  int64_t prefill_chunk = 256;     // prompt tokens per sequence per step while others decode
  size_t max_body_bytes = 4 << 20; // larger bodies: 413
  double request_timeout_s = 600;  // a request still running then ends (finish_reason "length")
  double shutdown_grace_s = 15;    // SIGTERM/SIGINT: in-flight requests get this long to finish
  int read_timeout_s = 10;         // a client that sends nothing for this long is dropped
  int keep_alive_timeout_s = 5;
  size_t max_connections = 2048;   // open connections served at once (each holds a thread)
  int max_top_logprobs = 20;       // server-wide cap on top_logprobs (OpenAI allows 20)
  int round_logprobs_digits = -1;  // server-wide rounding of logprobs, 0-15 decimals; -1 = off (keys may set theirs)
  int64_t default_rpm = 0, default_tpm = 0, default_tokens_per_day = 0;  // for keys that set none; 0 = none
  // Watermark: scheme kgw | gumbel | none; the master key from watermark_key_file, else
  // $RETORT_WATERMARK_KEY, else $RETORT_HOME/serve-watermark.key (created, 0600, on first start).
  std::string watermark = "kgw";
  std::string watermark_key_file;
  double kgw_gamma = 0.25, kgw_delta = 2.0;
  std::string kgw_context = "selfhash";
  int watermark_h = 0;  // context width; 0 = the scheme's default
  // The crawl monitor (protect/crawl_monitor.h): every served request of an account is observed; with a
  // calibration (`retort monitor calibrate`) accounts and clusters are scored, and a flagged one gets
  // monitor_actions (flag | throttle | cap_logprobs | antidistill | block), each recorded with its reasons.
  bool monitor = true;
  std::string monitor_calibration;                    // "" = uncalibrated: features recorded, nothing scored
  std::vector<std::string> monitor_actions = {"flag"};
  int64_t monitor_throttle_rpm = 6;                   // throttle: requests per minute left to a flagged account
  int monitor_cap_top_logprobs = 0;                   // cap_logprobs: top_logprobs left to a flagged account
  // Evaluation only: the monitor takes each request's time from its X-Retort-Replay-Time-Ms header (recorded
  // traffic replayed faster than it happened). Never on a server clients can reach: they would set it.
  // With it, a request may also carry X-Retort-Replay-Max-Tokens: N, capping its completion at N tokens as
  // max_completion_tokens caps every request (the monitor still sees the request's own max_tokens): replayed
  // traffic only needs its prompts and parameters seen, and the cap leaves the CPU to the live clients.
  bool monitor_replay_clock = false;
  // Evaluation only, with monitor_replay_clock: a request without the header is stamped
  // origin + (now - the time the server started listening) x speedup, so a replayer sending recorded
  // request t at wall time start + t / speedup with header origin + t, and a live client (retort capture)
  // without it, share one clock. 0 = off (such a request gets the wall clock).
  int64_t monitor_clock_origin_ms = 0;
  double monitor_clock_speedup = 1;
  int64_t max_completion_tokens = 0;  // server-wide cap on tokens generated per choice; 0 = none
  // Keep every successful chat/completions answer (each choice) with its prompt and account in the serve
  // database's served_texts (`retort keys served` exports them): what a provider keeps for abuse review and
  // an audit needs as "our watermarked texts". It stores users' text, so it is off by default.
  bool record_completions = false;
  // Antidistillation sampling (protect/antidistill.h): a directory made by `retort antidistill prepare`;
  // applied to flagged accounts (action antidistill), or to every request when antidistill_all.
  std::string antidistill;
  double antidistill_lambda = 0;
  bool antidistill_all = false;
};

// A JSON config file (fields as ServeConfig's members). Unknown fields and wrong types: retort::Error
// naming the file and the field.
ServeConfig load_serve_config(const std::string& path);
void apply_serve_config(ServeConfig& c, const nlohmann::json& j, const std::string& source);
// The effective config as JSON (`retort serve --print-config`); no secrets in it.
nlohmann::json serve_config_json(const ServeConfig& c);

class Server {
 public:
  // Loads the model and opens the database (retort::Error naming what is wrong).
  explicit Server(const ServeConfig& config);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Binds host:port (retort::Error naming them when it cannot) and serves until shutdown() has
  // finished. Call once.
  void run();
  // Blocks until run() is listening (or failed); returns the bound port (0 on failure).
  int wait_until_listening();
  // Graceful stop, callable from any thread (e.g. a signal handler's thread): new requests get 503,
  // running ones get shutdown_grace_s to finish (then are cancelled), the ledger is flushed, run()
  // returns. Idempotent.
  void shutdown();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace retort

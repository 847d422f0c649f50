// retort/serve/openai_client.h — a blocking client for any OpenAI-compatible endpoint (retort serve,
// llama.cpp's llama-server, vLLM, hosted APIs): the client half of the wire format in openai_schema.h.
//
// Used by the closed-model audit (audit radioactivity/provenance --suspect-url) and by remote capture.
// One request at a time per client object (callers wanting concurrency make one client per thread).
//
// Retries: HTTP 429, 500, 502, 503, 504, connection failures and timeouts are retried up to max_retries
// times. The wait before retry i (0-based) is Retry-After when the server sent one (seconds, capped at
// max_backoff_s), else min(max_backoff_s, backoff_s · 2^i) with ±25% jitter. Other 4xx answers are not
// retried: they throw at once. Every failure throws retort::Error naming the URL, the HTTP status, and
// the server's own error message and param when it sent an OpenAI error body, with what to do.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/serve/openai_schema.h"
#include "retort/util/error.h"

namespace retort {

// A failure the client will not retry: status is the HTTP status of the answer (0: no answer, or retries
// given up on a transport error), param the request field the server's error body named ("" when none).
// Callers tell a request the server refused (400: skip this one) from a fatal one (401/403/404, a spent quota).
struct OpenAIClientError : Error {
  OpenAIClientError(const std::string& message, int status, std::string param, bool retries_exhausted)
      : Error(message), status(status), param(std::move(param)), retries_exhausted(retries_exhausted) {}
  int status = 0;
  std::string param;
  bool retries_exhausted = false;  // 429/5xx/transport errors that outlasted max_retries
};

struct OpenAIClientOptions {
  std::string base_url;      // "http://127.0.0.1:8080/v1" (a trailing "/v1" is optional; "/v1" is added)
  std::string api_key;       // sent as "Authorization: Bearer <key>" when not empty
  double timeout_s = 120;    // connect + read timeout of one attempt
  int max_retries = 5;       // retries after the first attempt
  double backoff_s = 0.5;    // first wait without Retry-After
  double max_backoff_s = 30; // cap on any wait
  // Tests: replaces the sleep between retries (seconds). Null = std::this_thread::sleep_for.
  std::function<void(double)> sleep;
};

// What the client did, for usage/cost summaries.
struct OpenAIClientStats {
  int64_t requests = 0;          // HTTP attempts sent
  int64_t retries = 0;           // attempts that were retried
  int64_t throttled = 0;         // 429 answers
  int64_t server_errors = 0;     // 5xx answers
  int64_t transport_errors = 0;  // connection failures and timeouts
  int64_t prompt_tokens = 0, completion_tokens = 0;  // from the usage of successful answers
};

class OpenAIClient {
 public:
  // Throws retort::Error for a URL that is not http://host[:port][/path] (https: says that this build
  // has no TLS and to use a local proxy or an http endpoint, unless built with TLS support).
  explicit OpenAIClient(OpenAIClientOptions options);
  ~OpenAIClient();
  OpenAIClient(const OpenAIClient&) = delete;
  OpenAIClient& operator=(const OpenAIClient&) = delete;

  // POST {base}/chat/completions with build_chat_request(r) (stream forced off); the parsed answer.
  ParsedCompletion chat(const ApiRequest& r);
  // POST {base}/completions with build_completion_request(r) (stream forced off).
  ParsedCompletion complete(const ApiRequest& r);
  // GET {base}/models: the model ids the server lists.
  std::vector<std::string> models();

  const OpenAIClientStats& stats() const { return stats_; }
  const std::string& base_url() const { return base_url_; }  // normalized, ending in "/v1"

 private:
  // POST/GET with the retry policy above; returns the parsed JSON body of a 200 answer.
  nlohmann::json send(const std::string& method, const std::string& path, const std::string& body);

  struct Impl;
  std::unique_ptr<Impl> impl_;
  OpenAIClientOptions options_;
  std::string base_url_;
  OpenAIClientStats stats_;
};

}  // namespace retort

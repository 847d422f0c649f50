// retort/distill/remote_capture.h — `retort capture --teacher-url`: record a teacher reachable only through an
// OpenAI-compatible API (retort serve, llama.cpp's llama-server, vLLM, hosted APIs).
//
// Requests. Sample s of prompt p is one request with n = 1 and seed capture_sample_seed(seed, p, s) (the seed a
// local capture gives that sample, so a server that honours seeds answers as `retort capture --teacher` would);
// temperature, top_p, top_k (when set), min_p (when set) and max_tokens are passed through. Chat lines go to
// /chat/completions (the server applies its chat template), raw lines (--no-chat) to /completions.
//
// Signal ("signal"):
//   logprobs  the sampled tokens with top_logprobs = k (<= 20, the API's limit), as the API returns them (strings
//             and bytes). With the teacher's tokenizer known (teacher_tokenizer), tokens map to ids and the store
//             is a signal store (signal_store.h) like a local capture writes, tail mass included. Without it, the
//             pieces are kept as bytes in a text store (below), for cross-tokenizer losses.
//   text      only the text (for SFT): a text store.
// Token bytes map to ids through the tokenizer's vocabulary; where several ids share the bytes (SentencePiece
// byte-fallback tokens <0xNN> beside a one-character piece), the id the tokenizer itself gives those bytes
// wins, and alternatives at one position with the same bytes take the next candidate. A token the tokenizer
// cannot represent makes the sample an unmappable skip (recorded in skipped.jsonl, counted, not asked again).
// llama.cpp's llama-server also sends each token's id, and special tokens with no bytes: an id whose token has
// exactly those bytes (or no bytes and a special token) is taken as is. It lists a token that ends inside a
// UTF-8 character together with the next one (the bytes of both, the logprobs of the second): such a sample
// is an unmappable skip, as the first token's logprobs are unknown.
//
// The stop token. APIs do not list the token that ended a completion (OpenAI, vLLM, retort serve alike), so
// its distribution is unknown; llama-server lists it without bytes, and that entry is dropped. A completion
// with finish_reason "stop" gets the end-of-turn token (chat: the template's; raw: the tokenizer's EOS; the id
// llama-server listed, where it is a special token) appended as a hard label: logprob 0, top-k = that token at
// log-probability 0 and k-1 filler ids (the lowest others) at -9999 (the API's "very unlikely"), tail mass 0.
// The manifest says so ("source"."stop_signal": "label"). Every other position equals what a local capture
// stores, up to the API's decimal rendering of float32 (exact for retort serve).
//
// Reliability. `concurrency` workers, each with its own connection; a shared client-side rate limit
// (requests_per_minute, applied to first attempts); retries with exponential backoff that honour Retry-After
// (serve/openai_client.h). Every finished sample is appended to journal.jsonl (fdatasync'd) before anything
// else, and shards are written atomically: a crash or Ctrl-C (RemoteTeacher::stop) resumes without asking a
// finished sample again and without duplicating one. A 400 answer refuses that sample (recorded in
// skipped.jsonl with the server's message; a refusal of the logprobs fields themselves stops the run with
// advice); 401/403/404 and a spent quota stop the run; a sample whose retries run out is left for the next
// run, and a run of consecutive such failures stops the capture (the server is down).
//
// Provenance: each sample's (model the server reported, system_fingerprint, response id, created, time) goes
// into its shard (signal store: safetensors metadata "provenance"; text store: the record), and the manifest's
// "source" sums the usage (requests, retries, throttling, refusals, tokens) over every run.
//
// Text store: a directory with manifest.json ({"format": "retort-text-store", "version": 1, "teacher",
// "generation", "prompts", "source", "shards": [{"file", "samples", "bytes", "sha256"}], "complete"}) and
// text-NNNNN.jsonl shards, one record per sample:
//   {"sample_id", "prompt_index", "sample_index", "messages" | "prompt", "completion", "finish_reason",
//    "tokens": [{"bytes": hex, "logprob", "top": [[hex, logprob], ...]}, ...]   (signal logprobs only; where the
//              server sends token ids, as llama-server does, each token also has "id" and each top entry a
//              third element, the id),
//    "server": {"model", "system_fingerprint", "response_id", "created"}, "time", "usage"}
// A record is also a valid line of a score-mode prompts file (prompt/messages + completion).
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>

#include "retort/distill/capture.h"

namespace retort {

struct RemoteTeacher {
  std::string url;                  // base URL, e.g. http://127.0.0.1:8080/v1
  std::string model;                // the "model" field sent (--teacher-model)
  std::string api_key;              // Bearer key ("" = none)
  // Several keys (--api-keys-file): sample i is asked with key i mod n, so the requests are spread evenly
  // over the accounts — the way a crawler hides behind many accounts. Empty: api_key for every request.
  std::vector<std::string> api_keys;
  std::string tokenizer;            // --teacher-tokenizer: a model spec with the teacher's tokenizer; "" = unknown
  std::string signal = "logprobs";  // "logprobs" | "text"
  int concurrency = 4;              // requests in flight
  double requests_per_minute = 0;   // client-side limit on request starts; 0 = none
  double timeout_s = 300;           // one attempt
  int max_retries = 8;
  double backoff_s = 1, max_backoff_s = 60;
  int max_consecutive_failures = 8;  // samples in a row that outlast their retries before the run stops
  std::function<void(double)> sleep;      // tests: replaces sleeping between retries
  const std::atomic<bool>* stop = nullptr;  // when set to true: no new requests; finished samples are kept
};

struct RemoteCaptureSummary {
  CaptureSummary capture;  // prompts, samples_total/skipped/written, tokens_generated (completion tokens), seconds
  std::string store_kind;  // "signal" | "text"
  int64_t requests = 0, retries = 0, throttled = 0, server_errors = 0, transport_errors = 0;
  int64_t refused = 0;      // samples the server refused (400), recorded and not asked again
  int64_t unmappable = 0;   // samples with a token the teacher tokenizer lacks, recorded and not asked again
  int64_t failed = 0;       // samples given up after their retries in this run: asked again on resume
  int64_t prompt_tokens = 0, completion_tokens = 0;  // the server's usage
  int64_t prompt_length_mismatches = 0;  // samples whose usage.prompt_tokens differs from the local encoding
  bool interrupted = false;  // stopped by RemoteTeacher::stop
  bool complete = false;     // every sample of the prompts file is stored or recorded as skipped
};

// Throws retort::Error for bad options, a bad prompts file, a store captured with other settings, an
// endpoint that is not OpenAI-compatible or refuses what is needed, or a fatal HTTP answer (what was
// finished is kept first).
RemoteCaptureSummary capture_remote(const RemoteTeacher& teacher, const CaptureOptions& opts);

}  // namespace retort

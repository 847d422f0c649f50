// retort/serve/openai_schema.h — the OpenAI wire format, both directions, in one place.
//
// Server side (`retort serve`): request bodies of POST /v1/chat/completions and /v1/completions are
// parsed and validated into an ApiRequest (every refusal is an ApiError that names the JSON field, as
// OpenAI and vLLM do); responses, stream chunks, error bodies, /v1/models, /tokenize and /detokenize
// bodies are built here, so the HTTP layer only moves bytes. Client side (remote capture, closed-model
// audit): request bodies are built from an ApiRequest and responses (or stream chunks) read back into
// ParsedCompletion. References: https://platform.openai.com/docs/api-reference/chat (Chat Completions),
// https://platform.openai.com/docs/api-reference/completions (legacy Completions), vLLM's
// vllm/entrypoints/openai/protocol.py and llama.cpp's tools/server for the extensions.
//
// What is accepted (fields not listed here are ignored, as vLLM does; `null` means "absent" everywhere):
//   model                     string; "" when absent (the server's own model)
//   messages (chat)           non-empty array of {"role", "content"}; role system | developer (-> system) |
//                             user | assistant; content a string or an array of {"type":"text","text"}
//                             parts (joined with "\n", as vLLM does); null only for an assistant message
//   prompt (completions)      a string, [string], [int, ...] (token ids) or [[int, ...]]: ONE prompt;
//                             several prompts in one request are refused (400, param "prompt")
//   max_completion_tokens     chat; preferred over max_tokens. >= 1. Absent: chat generates up to the
//   max_tokens                context; completions default to 16 (OpenAI's and vLLM's default)
//   temperature [0, 2]  top_p (0, 1]  top_k (-1 or 0 = off, else >= 1)  min_p [0, 1]  seed (int64)
//   stop                      string or array of <= 4 non-empty strings
//   n [1, 16]  stream (bool)  stream_options.include_usage (only with stream: true)
//   logprobs                  chat: bool; completions: int 0..20 = number of top alternatives
//   top_logprobs              chat: 0..20; > 0 needs logprobs: true
//   min_tokens, ignore_eos    vLLM / llama.cpp extensions (min_tokens <= max_tokens)
//   user                      string, kept (the ledger may record it)
// Refused with 400 "not supported" unless neutral: presence_penalty / frequency_penalty (0),
// repetition_penalty (1), logit_bias ({}), response_format ({"type":"text"}), echo (false), suffix (""),
// best_of (== n), tools / functions ([]), tool_choice ("none" | "auto"), messages[i].tool_calls ([]),
// content parts other than text.
//
// Logprobs in responses are the MODEL's distribution: GeneratedToken::logprob_raw and top_raw (log-softmax
// of the raw logits, before temperature, truncation, watermark or any processor) — what vLLM reports by
// default and what a distiller wants. LogprobsSpec::processed switches to the sampled distribution.
// Token lists in logprobs cover the completion's text only: the EOS/EOG token that ended the sequence and
// tokens lying wholly inside a removed stop string are not listed (OpenAI does not list them either), but
// they count in usage.completion_tokens (they were computed). A token whose text straddles the cut is
// listed. -inf (and anything below) is reported as -9999.0, OpenAI's value for "very unlikely" (JSON has
// no infinity).
#pragma once

#include <cstdint>
#include <deque>
#include <nlohmann/json.hpp>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "retort/decode/generate.h"
#include "retort/decode/sampling.h"
#include "retort/text/chat_template.h"

namespace retort {

class Tokenizer;

// Built bodies keep their keys in the order written (OpenAI's order: "id", "object", "created", ...), and a
// legacy top_logprobs dict lists alternatives by rank, as Python's dict does.
using OrderedJson = nlohmann::ordered_json;

// ---------------------------------------------------------------------------------------------------------
// Errors: {"error": {"message", "type", "param", "code"}} with the HTTP status.

struct ApiError : std::runtime_error {
  int status = 400;
  std::string type;   // invalid_request_error | authentication_error | permission_error | not_found_error |
                      // rate_limit_error | server_error
  std::string param;  // the JSON field, e.g. "messages[2].content"; "" -> null
  std::string code;   // e.g. "invalid_type", "context_length_exceeded", "rate_limit_exceeded"; "" -> null
  int retry_after_s = 0;  // > 0: the server sends Retry-After: <seconds> (429, 503)

  ApiError(int status, std::string type, const std::string& message, std::string param = "", std::string code = "");
  OrderedJson body() const;
};

ApiError bad_request(const std::string& param, const std::string& message, const std::string& code = "");
ApiError unauthorized(const std::string& message);  // 401 authentication_error, code invalid_api_key
ApiError forbidden(const std::string& message);     // 403 permission_error
ApiError not_found_model(const std::string& model); // 404 not_found_error, param model, code model_not_found
ApiError not_found_route(const std::string& method, const std::string& path);  // 404 not_found_error
ApiError too_large(size_t limit_bytes);              // 413 invalid_request_error, code request_too_large
// 429 rate_limit_error; code rate_limit_exceeded (requests/tokens per minute) or e.g. "insufficient_quota".
ApiError rate_limited(const std::string& reason, int retry_after_s, const std::string& code = "rate_limit_exceeded");
ApiError unavailable(const std::string& message, int retry_after_s = 1);  // 503 server_error (queue full, shutdown)
ApiError internal(const std::string& message);       // 500 server_error

// The request body as JSON: 400 "body is not valid JSON: <reason> at byte N" for malformed JSON (invalid
// UTF-8 inside strings included), "body is empty", nesting deeper than 64, or a top level that is not an
// object.
nlohmann::json parse_body(std::string_view body);

// A body ready to send: dump() that replaces invalid UTF-8 (never throws).
std::string to_body(const OrderedJson& j);

// ---------------------------------------------------------------------------------------------------------
// Requests.

enum class Endpoint { chat, completion };

struct ApiRequest {
  Endpoint kind = Endpoint::chat;
  std::string model;                  // "" = not given
  std::vector<ChatMessage> messages;  // chat; roles "system" | "user" | "assistant"
  std::string prompt;                 // completions, text form
  std::vector<int32_t> prompt_ids;    // completions, token form (prompt_is_ids)
  bool prompt_is_ids = false;
  std::optional<int64_t> max_tokens;  // absent: up to the context (see resolve_max_tokens)
  std::string max_tokens_param = "max_tokens";  // the field that set it, for errors
  SamplingParams sampling;            // temperature, top_k, top_p, min_p; the seed is `seed` below
  std::optional<int64_t> seed;
  std::vector<std::string> stop;
  int n = 1;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool logprobs = false;       // chat logprobs: true; completions logprobs: k (any k >= 0)
  int top_logprobs = 0;        // chat top_logprobs; completions logprobs k
  int64_t min_tokens = 0;      // extension
  bool ignore_eos = false;     // extension
  std::string user;
};

ApiRequest parse_chat_request(const nlohmann::json& body);
ApiRequest parse_completion_request(const nlohmann::json& body);

// Client side: the body that parses back to `r` (only non-default fields are written).
nlohmann::json build_chat_request(const ApiRequest& r);
nlohmann::json build_completion_request(const ApiRequest& r);

// Tokens to generate for a prompt of `prompt_tokens` in a context of `n_ctx`: max_tokens when given, else
// n_ctx - prompt_tokens. 400 code context_length_exceeded (param messages/prompt, or the max_tokens field)
// when the prompt leaves no room or prompt + max_tokens > n_ctx (OpenAI's rule and message).
int64_t resolve_max_tokens(const ApiRequest& r, int64_t prompt_tokens, int64_t n_ctx);

// 400 naming `param`[i] for an id outside [0, n_vocab) (prompt ids, /detokenize tokens).
void check_token_ids(const std::vector<int32_t>& ids, int32_t n_vocab, const std::string& param);

// Sampling for choice i: seed = (seed or fallback_seed) + i (mod 2^64), so choice i of a request with seed s
// is what an n = 1 request with seed s + i gives. The server draws fallback_seed at random per request.
SamplingParams choice_sampling(const ApiRequest& r, int choice, uint64_t fallback_seed);

// The engine request for choice i (prompt already tokenized; max_tokens from resolve_max_tokens;
// top_logprobs = the count granted by policy, <= r.top_logprobs).
GenerationRequest generation_request(const ApiRequest& r, std::vector<int32_t> prompt, int choice,
                                     int64_t max_tokens, uint64_t fallback_seed, int top_logprobs);

// ---------------------------------------------------------------------------------------------------------
// Responses.

struct ResponseMeta {
  std::string id;                  // "chatcmpl-…" / "cmpl-…": the same for every chunk of a stream
  int64_t created = 0;             // unix seconds
  std::string model;
  std::string system_fingerprint;  // "" -> null
};
// id = time_ordered_id(prefix "chatcmpl-" or "cmpl-"), created = now.
ResponseMeta make_meta(Endpoint kind, const std::string& model, const std::string& system_fingerprint);
std::string random_id(std::string_view prefix, size_t n_chars = 24);
// prefix + 11 hex digits of the Unix time in ms + 13 random alphanumerics (24 characters after the prefix, as
// random_id): ids that grow with time keep the ledger's unique index appending at its end.
std::string time_ordered_id(std::string_view prefix);

// "fp_" + the first 12 hex digits of SHA-256("retort-fp-v1\n" path "\n" size "\n" tokenizer_hash "\n"
// version): changes when the model file, its tokenizer or retort changes (OpenAI: "the backend
// configuration that the model runs with").
std::string system_fingerprint(const std::string& model_path, uint64_t model_size, const std::string& tokenizer_hash,
                               const std::string& retort_version);

// What the response reports about logprobs, after policy.
struct LogprobsSpec {
  bool enabled = false;    // chat logprobs: true / completions logprobs: k; false -> "logprobs": null
  int top = 0;             // alternatives per token, granted (may be < asked: policy cap)
  int round_digits = -1;   // >= 0: every logprob rounded to this many decimals (policy); -1 = exact
  bool processed = false;  // report logprob/top (the sampled distribution) instead of the raw ones
};
// From the request, with the policy applied: top = min(asked, max_top) (max_top < 0: no cap).
LogprobsSpec granted_logprobs(const ApiRequest& r, int max_top = -1, int round_digits = -1);

struct TokenUsage {
  int64_t prompt_tokens = 0;
  int64_t completion_tokens = 0;  // every generated token, EOS and stop-string tokens included
};
// prompt_tokens of the first result (the prompt is shared by the choices), completion tokens summed.
TokenUsage usage_of(const std::vector<GenerationResult>& choices);
OrderedJson usage_json(const TokenUsage& u);

// Engine finish reasons to OpenAI's: "stop", "length"; "timeout" -> "length" (a limit cut it); others as given
// ("cancelled" and "error" have no OpenAI value: the client is gone, or the server sends an error instead).
std::string wire_finish_reason(const std::string& engine_reason);

// Non-streaming bodies; choices[i] is choice i (text, tokens, finish_reason, prompt_tokens of a
// GenerationResult).
OrderedJson build_chat_response(const ResponseMeta& meta, const std::vector<GenerationResult>& choices,
                                const LogprobsSpec& lp, const Tokenizer& tok);
OrderedJson build_completion_response(const ResponseMeta& meta, const std::vector<GenerationResult>& choices,
                                      const LogprobsSpec& lp, const Tokenizer& tok);

// Which text each generated token produced. Token bytes are decoded as the engine decodes them (lossy UTF-8,
// one U+FFFD per maximal ill-formed subpart, a held partial character U+FFFD at the end); a token starts at
// the first character holding one of its bytes. Tokens are released once the text before their start is
// final, so the logprobs of a stream delta are those of the tokens whose text the delta begins. Streaming
// and non-streaming responses share this, so they list the same tokens.
struct AlignedToken {
  GeneratedToken token;
  std::string bytes;         // the token's raw bytes
  int64_t text_offset = 0;   // characters (code points) of the completion before the token's first one
};

class TokenAligner {
 public:
  explicit TokenAligner(const Tokenizer& tok) : tok_(&tok) {}
  void push(const GeneratedToken& t);
  void flush();  // the text ends: a held partial character becomes one U+FFFD
  // Tokens not yet released whose text starts before byte `text_bytes` of the decoded completion, in order.
  std::vector<AlignedToken> release(size_t text_bytes);
  size_t decoded_bytes() const { return out_bytes_; }  // bytes of text decoded so far

 private:
  struct Entry {
    AlignedToken a;
    size_t src = 0;        // byte offset of the token's first byte among all pushed bytes
    size_t out_byte = 0;   // byte offset of its first character in the decoded text (once placed)
  };
  void place_until(size_t src_end);
  const Tokenizer* tok_;
  std::deque<Entry> queue_;  // pushed, not released; the last n_unplaced_ have no start yet
  size_t n_unplaced_ = 0;
  std::string held_;         // bytes of an incomplete character
  size_t src_total_ = 0, out_bytes_ = 0;
  int64_t out_chars_ = 0;
};

// Streaming: one per request (all its choices); not thread-safe. Each call returns the SSE bytes to send
// ("data: {...}\n\n" lines, possibly none). Chat: the first event of a choice sends its role chunk
// (delta {"role":"assistant","content":""}), then content deltas with the logprobs of their tokens, then a
// chunk with the finish_reason and an empty delta. Completions ("object": "text_completion"): text chunks,
// then one with text "" and the finish_reason. With include_usage every chunk carries "usage": null and
// done() sends a last chunk with "choices": [] and the usage, before "data: [DONE]".
class StreamEncoder {
 public:
  StreamEncoder(Endpoint kind, ResponseMeta meta, int n_choices, LogprobsSpec lp, bool include_usage,
                const Tokenizer& tok);
  std::string open(int choice);  // chat: the role chunk now (idempotent); completions: ""
  // From the engine's token callback: the token and the text it completed (may be empty).
  std::string on_token(int choice, const GeneratedToken& t, const std::string& text_piece);
  // The choice ended. Text of result.text not yet sent (none when the pieces covered it) is sent first.
  std::string finish(int choice, const GenerationResult& result);
  std::string done(const TokenUsage& usage);  // usage chunk (include_usage) + "data: [DONE]\n\n"
  // A failure mid-stream: data: {"error": {...}} then [DONE] (the openai client raises APIError on it).
  static std::string error(const ApiError& e);

 private:
  struct ChoiceState {
    TokenAligner aligner;
    size_t sent_bytes = 0;
    bool opened = false, finished = false;
  };
  std::string content_event(int choice, const std::string& text, const std::vector<AlignedToken>& toks);
  OrderedJson chunk(OrderedJson choices) const;
  Endpoint kind_;
  ResponseMeta meta_;
  LogprobsSpec lp_;
  bool include_usage_;
  const Tokenizer* tok_;
  std::vector<ChoiceState> choices_;
};

std::string sse_event(const OrderedJson& j);  // "data: " + compact JSON + "\n\n"
std::string sse_done();                        // "data: [DONE]\n\n"

// The JSON pieces, for callers that assemble bodies themselves. top: alternatives to list.
OrderedJson chat_logprobs_json(const std::vector<AlignedToken>& toks, const LogprobsSpec& lp, const Tokenizer& tok);
OrderedJson completion_logprobs_json(const std::vector<AlignedToken>& toks, const LogprobsSpec& lp,
                                     const Tokenizer& tok);
// A logprob as sent: the float's shortest decimal (exact when read back as float32), or rounded to
// round_digits decimals; below -9999 (or -inf, NaN) -> -9999.0.
double wire_logprob(float lp, int round_digits);
// Token strings. Chat: the bytes as UTF-8 with U+FFFD for invalid bytes (the "bytes" array stays exact).
// Legacy completions (no bytes field): valid UTF-8 as is, else "bytes:\xNN..." with each byte as \xNN,
// the convention OpenAI's legacy API uses, so distinct byte tokens keep distinct dict keys.
std::string lossy_utf8(std::string_view bytes);
std::string legacy_token_string(std::string_view bytes);

// ---------------------------------------------------------------------------------------------------------
// Other endpoints.

struct ModelCard {
  std::string id;
  int64_t created = 0;
  std::string owned_by = "retort";
  int64_t max_model_len = 0;  // vLLM's extension field; 0 -> omitted
};
OrderedJson model_json(const ModelCard& m);                          // GET /v1/models/{id}
OrderedJson build_models_response(const std::vector<ModelCard>& m);  // GET /v1/models: {"object":"list","data"}

// POST /tokenize: {"content": str} (llama.cpp), {"prompt": str} or {"messages": [...]} (vLLM).
struct TokenizeRequest {
  std::string model;
  bool chat = false;                  // messages given: render them with the chat template, then encode
  std::string text;                   // content / prompt
  std::vector<ChatMessage> messages;
  // Prepend BOS as the tokenizer does (add_special / add_special_tokens). Default: false for content and
  // messages (llama.cpp; a template writes its own BOS), true for prompt (vLLM).
  bool add_special = false;
  bool add_generation_prompt = true;  // messages only
  bool with_pieces = false;           // llama.cpp: "tokens" as [{"id", "piece"}]
  bool return_token_strs = false;     // vLLM: also "token_strs" (vocabulary strings)
};
TokenizeRequest parse_tokenize_request(const nlohmann::json& body);
// {"tokens": [...], "count", "max_model_len"[, "token_strs"]}; with_pieces: tokens are {"id", "piece"} where
// piece is the text, or the byte values when the token is not valid UTF-8 alone (as llama.cpp does).
OrderedJson build_tokenize_response(const std::vector<int32_t>& ids, const TokenizeRequest& r, const Tokenizer& tok,
                                    int64_t max_model_len);
// POST /detokenize {"tokens": [int, ...]}: 400 naming tokens[i] for a bad id.
std::vector<int32_t> parse_detokenize_request(const nlohmann::json& body, int32_t n_vocab);
OrderedJson build_detokenize_response(const std::vector<int32_t>& ids, const Tokenizer& tok);  // {"content","prompt"}

// ---------------------------------------------------------------------------------------------------------
// Client side: responses read back. Errors are retort::Error naming the field ("choices[0].logprobs...").

struct ParsedTopLogprob {
  std::string token;
  std::string bytes;  // from "bytes" when sent, else decoded from the token string
  double logprob = 0;
  int64_t id = -1;    // the token id where the server sends one (llama.cpp's server: "id"), else -1
};
struct ParsedTokenLogprob {
  std::string token;
  std::string bytes;         // exact when the response had "bytes" or a "bytes:\xNN" token; else the string's UTF-8
  bool exact_bytes = false;
  double logprob = 0;
  int64_t id = -1;           // as ParsedTopLogprob::id
  std::vector<ParsedTopLogprob> top;  // by logprob desc (legacy dicts carry no order: sorted, ties by token)
  int64_t text_offset = -1;           // legacy completions only
};
struct ParsedChoice {
  int64_t index = 0;
  std::string text;
  std::string finish_reason;  // "" when null (a stream not finished)
  bool has_logprobs = false;
  std::vector<ParsedTokenLogprob> logprobs;
};
struct ParsedCompletion {
  std::string id, object, model, system_fingerprint;
  int64_t created = 0;
  std::vector<ParsedChoice> choices;  // by index
  bool has_usage = false;
  TokenUsage usage;
};
ParsedCompletion parse_chat_response(const nlohmann::json& body);
// Legacy logprobs ({"tokens", "token_logprobs", "top_logprobs", "text_offset"}) or, as llama.cpp's server
// answers /completions, the chat shape ({"content": [...]}).
ParsedCompletion parse_completion_response(const nlohmann::json& body);
// Folds one stream chunk (chat.completion.chunk or text_completion) into `acc`: text and logprobs appended
// per choice index, finish_reason and usage taken when present. Empty `acc` takes the chunk's id/model.
void merge_chunk(ParsedCompletion& acc, const nlohmann::json& chunk);
// An error body {"error": {...}} as an ApiError with the given status (retort::Error if it is not one).
ApiError parse_error_response(int status, const nlohmann::json& body);

// Splits an SSE byte stream into its "data:" payloads (events end with a blank line; "\r\n" accepted;
// comments and other fields skipped). "[DONE]" is returned like any payload.
class SseParser {
 public:
  std::vector<std::string> feed(std::string_view bytes);

 private:
  std::string buf_, data_;
  bool has_data_ = false;
};

}  // namespace retort

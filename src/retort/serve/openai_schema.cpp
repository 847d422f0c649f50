// retort/serve/openai_schema.cpp — see openai_schema.h for what is accepted and what is built.
#include "retort/serve/openai_schema.h"

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <tuple>

#include "retort/protect/keys.h"
#include "retort/text/tokenizer.h"
#include "retort/text/utf8.h"
#include "retort/util/error.h"

namespace retort {

using nlohmann::json;

// ---------------------------------------------------------------------------------------------------------
// Errors

ApiError::ApiError(int status_, std::string type_, const std::string& message, std::string param_, std::string code_)
    : std::runtime_error(message), status(status_), type(std::move(type_)), param(std::move(param_)),
      code(std::move(code_)) {}

OrderedJson ApiError::body() const {
  OrderedJson e;
  e["message"] = lossy_utf8(what());
  e["type"] = type;
  e["param"] = param.empty() ? OrderedJson(nullptr) : OrderedJson(lossy_utf8(param));
  e["code"] = code.empty() ? OrderedJson(nullptr) : OrderedJson(code);
  OrderedJson out;
  out["error"] = std::move(e);
  return out;
}

ApiError bad_request(const std::string& param, const std::string& message, const std::string& code) {
  return ApiError(400, "invalid_request_error", message, param, code);
}

ApiError unauthorized(const std::string& message) {
  return ApiError(401, "authentication_error", message, "", "invalid_api_key");
}

ApiError forbidden(const std::string& message) { return ApiError(403, "permission_error", message); }

ApiError not_found_model(const std::string& model) {
  return ApiError(404, "not_found_error",
                  cat("The model `", model, "` does not exist or you do not have access to it."), "model",
                  "model_not_found");
}

ApiError not_found_route(const std::string& method, const std::string& path) {
  return ApiError(404, "not_found_error", cat("Unknown route: ", method, " ", path, "."), "", "unknown_url");
}

ApiError too_large(size_t limit_bytes) {
  return ApiError(413, "invalid_request_error",
                  cat("Request body is larger than the limit of ", limit_bytes, " bytes."), "", "request_too_large");
}

ApiError rate_limited(const std::string& reason, int retry_after_s, const std::string& code) {
  ApiError e(429, "rate_limit_error", reason, "", code);
  e.retry_after_s = retry_after_s;
  return e;
}

ApiError unavailable(const std::string& message, int retry_after_s) {
  ApiError e(503, "server_error", message, "", "service_unavailable");
  e.retry_after_s = retry_after_s;
  return e;
}

ApiError internal(const std::string& message) { return ApiError(500, "server_error", message); }

namespace {

constexpr int kMaxDepth = 64;       // JSON nesting accepted in a request body
constexpr int kMaxN = 16;           // choices per request
constexpr int kMaxTopLogprobs = 20;
constexpr size_t kMaxStop = 4;
constexpr double kLogprobFloor = -9999.0;

// "1.5", "2": the shortest decimal that reads back as v.
std::string num(double v) {
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

}  // namespace

json parse_body(std::string_view body) {
  if (body.find_first_not_of(" \t\r\n") == std::string_view::npos)
    throw bad_request("", "body is empty: send a JSON object", "invalid_json");
  json j;
  try {
    // The callback bounds nesting, so a hostile body cannot make later recursive walks (dump,
    // destruction) deep; throwing from it aborts the parse.
    j = json::parse(body.begin(), body.end(), [](int depth, json::parse_event_t, json&) {
      if (depth > kMaxDepth)
        throw bad_request("", cat("body is not valid JSON: nested deeper than ", kMaxDepth, " levels"), "invalid_json");
      return true;
    });
  } catch (const json::exception& e) {
    // parse_error: "[json.exception.parse_error.101] parse error at line 1, column 5: <reason>; last read: '...'";
    // out_of_range 406: "[json.exception.out_of_range.406] number overflow parsing '1e400'" (a number beyond
    // double). The reason is kept; the echo of the input is dropped (it may hold secrets or invalid UTF-8).
    std::string reason = e.what();
    if (reason.rfind("[json.exception.", 0) == 0) {
      if (const size_t end = reason.find("] "); end != std::string::npos) reason.erase(0, end + 2);
    }
    if (const size_t col = reason.find("column "); col != std::string::npos) {
      if (const size_t colon = reason.find(": ", col); colon != std::string::npos) reason = reason.substr(colon + 2);
    }
    if (const size_t lr = reason.find("; last read: '"); lr != std::string::npos) {
      const size_t end = reason.find("'", lr + 14);
      reason.erase(lr, end == std::string::npos ? std::string::npos : end + 1 - lr);
    }
    const auto* pe = dynamic_cast<const json::parse_error*>(&e);
    throw bad_request("", cat("body is not valid JSON: ", lossy_utf8(reason), pe ? cat(" at byte ", pe->byte) : ""),
                      "invalid_json");
  }
  if (!j.is_object())
    throw bad_request("", cat("body must be a JSON object, got ", j.is_array() ? "an array" : j.type_name()),
                      "invalid_json");
  return j;
}

std::string to_body(const OrderedJson& j) { return j.dump(-1, ' ', false, OrderedJson::error_handler_t::replace); }

// ---------------------------------------------------------------------------------------------------------
// Field access with OpenAI-style errors

namespace {

std::string type_phrase(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::number_integer:
    case json::value_t::number_unsigned: return "an integer";
    case json::value_t::number_float: return "a decimal";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    default: return "an unsupported value";
  }
}

[[noreturn]] void wrong_type(const std::string& param, const char* expected, const json& v) {
  throw bad_request(param, cat("Invalid type for '", param, "': expected ", expected, ", but got ", type_phrase(v),
                               " instead."),
                    "invalid_type");
}

[[noreturn]] void missing(const std::string& param) {
  throw bad_request(param, cat("Missing required parameter: '", param, "'."), "missing_required_parameter");
}

[[noreturn]] void unsupported_value(const std::string& param, const std::string& why) {
  throw bad_request(param, cat("Unsupported value: '", param, "' ", why), "unsupported_value");
}

[[noreturn]] void unsupported_parameter(const std::string& param, const std::string& why) {
  throw bad_request(param, cat("Unsupported parameter: '", param, "' is not supported by this server: ", why),
                    "unsupported_parameter");
}

// The member, or nullptr when absent or null (OpenAI treats an explicit null as "not given").
const json* field(const json& obj, const char* key) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::optional<double> get_number(const json& obj, const char* key) {
  const json* v = field(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_number()) wrong_type(key, "a number", *v);
  return v->get<double>();
}

// Integers; a decimal with no fraction (5.0) is taken too, as pydantic (vLLM) does.
int64_t as_int(const json& v, const std::string& param) {
  if (v.is_number_unsigned()) {
    const uint64_t u = v.get<uint64_t>();
    if (u > uint64_t(std::numeric_limits<int64_t>::max()))
      throw bad_request(param, cat("Invalid '", param, "': integer above maximum value. Expected a value <= ",
                                   std::numeric_limits<int64_t>::max(), ", but got ", u, " instead."),
                        "integer_above_max_value");
    return int64_t(u);
  }
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    const double d = v.get<double>();
    if (std::isfinite(d) && d == std::floor(d) && std::fabs(d) < 9.0e18) return int64_t(d);
  }
  wrong_type(param, "an integer", v);
}

std::optional<int64_t> get_int(const json& obj, const char* key) {
  const json* v = field(obj, key);
  if (v == nullptr) return std::nullopt;
  return as_int(*v, key);
}

std::optional<bool> get_bool(const json& obj, const char* key, const std::string& param) {
  const json* v = field(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_boolean()) wrong_type(param, "a boolean", *v);
  return v->get<bool>();
}

std::optional<std::string> get_string(const json& obj, const char* key, const std::string& param) {
  const json* v = field(obj, key);
  if (v == nullptr) return std::nullopt;
  if (!v->is_string()) wrong_type(param, "a string", *v);
  return v->get<std::string>();
}

void check_max_d(const std::string& param, double v, double hi) {
  if (v > hi)
    throw bad_request(param, cat("Invalid '", param, "': decimal above maximum value. Expected a value <= ", num(hi),
                                 ", but got ", num(v), " instead."),
                      "decimal_above_max_value");
}

void check_min_d(const std::string& param, double v, double lo, bool open) {
  if (open ? v <= lo : v < lo)
    throw bad_request(param, cat("Invalid '", param, "': decimal below minimum value. Expected a value ",
                                 open ? "> " : ">= ", num(lo), ", but got ", num(v), " instead."),
                      "decimal_below_min_value");
}

void check_range_i(const std::string& param, int64_t v, int64_t lo, int64_t hi) {
  if (v < lo)
    throw bad_request(param, cat("Invalid '", param, "': integer below minimum value. Expected a value >= ", lo,
                                 ", but got ", v, " instead."),
                      "integer_below_min_value");
  if (v > hi)
    throw bad_request(param, cat("Invalid '", param, "': integer above maximum value. Expected a value <= ", hi,
                                 ", but got ", v, " instead."),
                      "integer_above_max_value");
}

// messages: the chat turns, with the roles retort's chat templates render.
std::vector<ChatMessage> parse_messages(const json& body) {
  const json* ms = field(body, "messages");
  if (ms == nullptr) missing("messages");
  if (!ms->is_array()) wrong_type("messages", "an array", *ms);
  if (ms->empty())
    throw bad_request("messages",
                      "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty "
                      "array instead.",
                      "empty_array");
  std::vector<ChatMessage> out;
  out.reserve(ms->size());
  for (size_t i = 0; i < ms->size(); ++i) {
    const json& m = (*ms)[i];
    const std::string p = cat("messages[", i, "]");
    if (!m.is_object()) wrong_type(p, "an object", m);
    const std::optional<std::string> role = get_string(m, "role", p + ".role");
    if (!role) missing(p + ".role");
    ChatMessage msg;
    if (*role == "system" || *role == "developer") msg.role = "system";
    else if (*role == "user" || *role == "assistant") msg.role = *role;
    else if (*role == "tool" || *role == "function")
      unsupported_value(p + ".role", cat("does not support '", *role, "': this server runs no tools or functions."));
    else
      throw bad_request(p + ".role",
                        cat("Invalid value for '", p, ".role': '", *role,
                            "'. Supported values are: 'system', 'developer', 'user' and 'assistant'."),
                        "invalid_value");
    if (const json* tc = field(m, "tool_calls"); tc != nullptr && !(tc->is_array() && tc->empty()))
      unsupported_parameter(p + ".tool_calls", "this server runs no tools.");
    if (field(m, "function_call") != nullptr) unsupported_parameter(p + ".function_call", "this server runs no functions.");
    const json* c = field(m, "content");
    if (c == nullptr) {
      if (msg.role != "assistant") missing(p + ".content");  // an assistant turn may be empty
    } else if (c->is_string()) {
      msg.content = c->get<std::string>();
    } else if (c->is_array()) {
      // Text parts are joined with "\n", as vLLM joins them.
      for (size_t j = 0; j < c->size(); ++j) {
        const json& part = (*c)[j];
        const std::string pp = cat(p, ".content[", j, "]");
        if (!part.is_object()) wrong_type(pp, "an object", part);
        const std::optional<std::string> type = get_string(part, "type", pp + ".type");
        if (!type) missing(pp + ".type");
        if (*type != "text")
          unsupported_value(pp + ".type", cat("does not support '", *type, "': only 'text' content parts are served."));
        const std::optional<std::string> text = get_string(part, "text", pp + ".text");
        if (!text) missing(pp + ".text");
        if (j > 0) msg.content += "\n";
        msg.content += *text;
      }
    } else {
      wrong_type(p + ".content", "one of a string or an array of content parts", *c);
    }
    out.push_back(std::move(msg));
  }
  return out;
}

// Token ids written in a request: integers in [0, 2^31).
int32_t as_token_id(const json& v, const std::string& param) {
  if (!v.is_number_integer()) wrong_type(param, "an integer token id", v);
  const int64_t id = as_int(v, param);
  check_range_i(param, id, 0, std::numeric_limits<int32_t>::max());
  return int32_t(id);
}

void parse_prompt(const json& body, ApiRequest& r) {
  const json* p = field(body, "prompt");
  if (p == nullptr) missing("prompt");
  const char* several = "holds several prompts; send one request per prompt (this server takes one prompt per request).";
  if (p->is_string()) {
    r.prompt = p->get<std::string>();
    return;
  }
  if (!p->is_array()) wrong_type("prompt", "one of a string, an array of strings or an array of token ids", *p);
  if (p->empty())
    throw bad_request("prompt",
                      "Invalid 'prompt': empty array. Expected an array with minimum length 1, but got an empty array "
                      "instead.",
                      "empty_array");
  const json& first = (*p)[0];
  if (first.is_string() || first.is_array()) {  // [string, ...] or [[int, ...], ...]: a list of prompts
    if (p->size() > 1) unsupported_value("prompt", several);
    if (first.is_string()) {
      r.prompt = first.get<std::string>();
      return;
    }
    if (first.empty())
      throw bad_request("prompt[0]", "Invalid 'prompt[0]': empty array of token ids.", "empty_array");
    r.prompt_is_ids = true;
    for (size_t j = 0; j < first.size(); ++j) r.prompt_ids.push_back(as_token_id(first[j], cat("prompt[0][", j, "]")));
    return;
  }
  r.prompt_is_ids = true;
  for (size_t j = 0; j < p->size(); ++j) r.prompt_ids.push_back(as_token_id((*p)[j], cat("prompt[", j, "]")));
}

// Fields both endpoints share.
void parse_common(const json& body, ApiRequest& r) {
  if (auto m = get_string(body, "model", "model")) r.model = *m;

  if (auto t = get_number(body, "temperature")) {
    check_min_d("temperature", *t, 0, false);
    check_max_d("temperature", *t, 2);
    r.sampling.temperature = *t;
  }
  if (auto p = get_number(body, "top_p")) {
    check_min_d("top_p", *p, 0, true);
    check_max_d("top_p", *p, 1);
    r.sampling.top_p = *p;
  }
  if (auto k = get_int(body, "top_k")) {  // vLLM: -1 = off; llama.cpp: 0 = off
    check_range_i("top_k", *k, -1, std::numeric_limits<int32_t>::max());
    r.sampling.top_k = *k < 0 ? 0 : *k;
  }
  if (auto m = get_number(body, "min_p")) {
    check_min_d("min_p", *m, 0, false);
    check_max_d("min_p", *m, 1);
    r.sampling.min_p = *m;
  }
  r.seed = get_int(body, "seed");

  if (const json* s = field(body, "stop")) {
    if (s->is_string()) {
      if (s->get<std::string>().empty())
        throw bad_request("stop", "Invalid 'stop': empty string (it would stop at once).", "invalid_value");
      r.stop.push_back(s->get<std::string>());
    } else if (s->is_array()) {
      if (s->size() > kMaxStop)
        throw bad_request("stop", cat("Invalid 'stop': array too long. Expected an array with maximum length ", kMaxStop,
                                      ", but got an array with length ", s->size(), " instead."),
                          "array_above_max_length");
      for (size_t i = 0; i < s->size(); ++i) {
        const std::string p = cat("stop[", i, "]");
        if (!(*s)[i].is_string()) wrong_type(p, "a string", (*s)[i]);
        if ((*s)[i].get<std::string>().empty())
          throw bad_request(p, cat("Invalid '", p, "': empty string (it would stop at once)."), "invalid_value");
        r.stop.push_back((*s)[i].get<std::string>());
      }
    } else {
      wrong_type("stop", "one of a string or an array of strings", *s);
    }
  }

  if (auto n = get_int(body, "n")) {
    check_range_i("n", *n, 1, kMaxN);
    r.n = int(*n);
  }
  if (auto s = get_bool(body, "stream", "stream")) r.stream = *s;
  if (const json* so = field(body, "stream_options")) {
    if (!so->is_object()) wrong_type("stream_options", "an object", *so);
    if (!r.stream)
      throw bad_request("stream_options", "The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                        "invalid_value");
    if (auto u = get_bool(*so, "include_usage", "stream_options.include_usage")) r.include_usage = *u;
  }

  if (auto m = get_int(body, "min_tokens")) {
    check_range_i("min_tokens", *m, 0, std::numeric_limits<int64_t>::max());
    r.min_tokens = *m;
  }
  if (auto e = get_bool(body, "ignore_eos", "ignore_eos")) r.ignore_eos = *e;
  if (auto u = get_string(body, "user", "user")) r.user = *u;

  // Accepted only at their neutral values: anything else would be silently ignored otherwise.
  for (const char* k : {"presence_penalty", "frequency_penalty"})
    if (auto v = get_number(body, k); v && *v != 0)
      unsupported_value(k, cat("must be 0: this server applies no presence or frequency penalty (got ", num(*v), ")."));
  if (auto v = get_number(body, "repetition_penalty"); v && *v != 1)
    unsupported_value("repetition_penalty", cat("must be 1: this server applies no repetition penalty (got ", num(*v), ")."));
  if (const json* lb = field(body, "logit_bias")) {
    if (!lb->is_object()) wrong_type("logit_bias", "an object", *lb);
    if (!lb->empty()) unsupported_parameter("logit_bias", "logits are not biased on request.");
  }
  if (const json* rf = field(body, "response_format")) {
    if (!rf->is_object()) wrong_type("response_format", "an object", *rf);
    const std::optional<std::string> t = get_string(*rf, "type", "response_format.type");
    if (!t) missing("response_format.type");
    if (*t != "text") unsupported_value("response_format.type", cat("does not support '", *t, "': only 'text' is served."));
  }
  for (const char* k : {"tools", "functions"})
    if (const json* t = field(body, k)) {
      if (!t->is_array()) wrong_type(k, "an array", *t);
      if (!t->empty()) unsupported_parameter(k, "this server runs no tools or functions.");
    }
  for (const char* k : {"tool_choice", "function_call"})
    if (const json* t = field(body, k)) {
      if (!(t->is_string() && (*t == "none" || *t == "auto")))
        unsupported_value(k, "must be 'none' or 'auto': this server runs no tools or functions.");
    }
}

void check_min_tokens(const ApiRequest& r) {
  if (r.max_tokens && r.min_tokens > *r.max_tokens)
    throw bad_request("min_tokens", cat("Invalid 'min_tokens': ", r.min_tokens, " is more than '", r.max_tokens_param,
                                        "' (", *r.max_tokens, ")."),
                      "invalid_value");
}

}  // namespace

ApiRequest parse_chat_request(const json& body) {
  if (!body.is_object()) throw bad_request("", "body must be a JSON object", "invalid_json");
  ApiRequest r;
  r.kind = Endpoint::chat;
  r.messages = parse_messages(body);
  parse_common(body, r);
  // max_completion_tokens replaces max_tokens in OpenAI's current API; both are read, the new one wins.
  const std::optional<int64_t> mt = get_int(body, "max_tokens");
  const std::optional<int64_t> mct = get_int(body, "max_completion_tokens");
  if (mt) check_range_i("max_tokens", *mt, 1, std::numeric_limits<int64_t>::max());
  if (mct) check_range_i("max_completion_tokens", *mct, 1, std::numeric_limits<int64_t>::max());
  if (mct) {
    r.max_tokens = mct;
    r.max_tokens_param = "max_completion_tokens";
  } else if (mt) {
    r.max_tokens = mt;
  }
  if (auto lp = get_bool(body, "logprobs", "logprobs")) r.logprobs = *lp;
  if (auto k = get_int(body, "top_logprobs")) {
    check_range_i("top_logprobs", *k, 0, kMaxTopLogprobs);
    // vLLM's rule: a positive top_logprobs needs logprobs; 0 without it is harmless.
    if (*k > 0 && !r.logprobs)
      throw bad_request("top_logprobs", "Invalid 'top_logprobs': 'logprobs' must be set to true when 'top_logprobs' is "
                        "greater than 0.", "invalid_value");
    r.top_logprobs = int(*k);
  }
  check_min_tokens(r);
  return r;
}

ApiRequest parse_completion_request(const json& body) {
  if (!body.is_object()) throw bad_request("", "body must be a JSON object", "invalid_json");
  ApiRequest r;
  r.kind = Endpoint::completion;
  parse_prompt(body, r);
  parse_common(body, r);
  r.max_tokens = 16;  // the legacy endpoint's default (OpenAI, vLLM)
  if (auto mt = get_int(body, "max_tokens")) {
    check_range_i("max_tokens", *mt, 1, std::numeric_limits<int64_t>::max());
    r.max_tokens = mt;
  }
  if (const json* lp = field(body, "logprobs")) {
    if (!lp->is_number()) wrong_type("logprobs", "an integer", *lp);
    const int64_t k = as_int(*lp, "logprobs");
    check_range_i("logprobs", k, 0, kMaxTopLogprobs);
    r.logprobs = true;
    r.top_logprobs = int(k);
  }
  if (auto echo = get_bool(body, "echo", "echo"); echo && *echo)
    unsupported_value("echo", "must be false: this server does not echo the prompt (no prompt logprobs).");
  if (auto suffix = get_string(body, "suffix", "suffix"); suffix && !suffix->empty())
    unsupported_parameter("suffix", "insertion (a suffix after the completion) is not served.");
  if (auto best_of = get_int(body, "best_of"); best_of && *best_of != r.n)
    unsupported_value("best_of", cat("must equal 'n' (", r.n, "): this server returns every choice it generates."));
  check_min_tokens(r);
  return r;
}

json build_chat_request(const ApiRequest& r) {
  json j;
  if (!r.model.empty()) j["model"] = r.model;
  json ms = json::array();
  for (const ChatMessage& m : r.messages) ms.push_back({{"role", m.role}, {"content", m.content}});
  j["messages"] = std::move(ms);
  if (r.max_tokens) j[r.max_tokens_param.empty() ? "max_tokens" : r.max_tokens_param] = *r.max_tokens;
  if (r.logprobs) {
    j["logprobs"] = true;
    j["top_logprobs"] = r.top_logprobs;
  }
  auto common = [&](json& o) {
    if (r.sampling.temperature != 1.0) o["temperature"] = r.sampling.temperature;
    if (r.sampling.top_p != 1.0) o["top_p"] = r.sampling.top_p;
    if (r.sampling.top_k != 0) o["top_k"] = r.sampling.top_k;
    if (r.sampling.min_p != 0.0) o["min_p"] = r.sampling.min_p;
    if (r.seed) o["seed"] = *r.seed;
    if (!r.stop.empty()) o["stop"] = r.stop;
    if (r.n != 1) o["n"] = r.n;
    if (r.stream) o["stream"] = true;
    if (r.stream && r.include_usage) o["stream_options"] = {{"include_usage", true}};
    if (r.min_tokens != 0) o["min_tokens"] = r.min_tokens;
    if (r.ignore_eos) o["ignore_eos"] = true;
    if (!r.user.empty()) o["user"] = r.user;
  };
  common(j);
  return j;
}

json build_completion_request(const ApiRequest& r) {
  json j;
  if (!r.model.empty()) j["model"] = r.model;
  if (r.prompt_is_ids) j["prompt"] = r.prompt_ids;
  else j["prompt"] = r.prompt;
  if (r.max_tokens) j["max_tokens"] = *r.max_tokens;
  if (r.logprobs) j["logprobs"] = r.top_logprobs;
  ApiRequest copy = r;
  copy.messages.clear();
  copy.logprobs = false;
  copy.max_tokens.reset();
  json rest = build_chat_request(copy);  // the shared fields, written once
  rest.erase("messages");
  rest.erase("model");
  j.update(rest);
  return j;
}

int64_t resolve_max_tokens(const ApiRequest& r, int64_t prompt_tokens, int64_t n_ctx) {
  if (n_ctx <= 0) throw internal("resolve_max_tokens: the model's context length is unknown");
  const char* what = r.kind == Endpoint::chat ? "messages" : "prompt";
  if (prompt_tokens >= n_ctx)
    throw bad_request(what,
                      cat("This model's maximum context length is ", n_ctx, " tokens. However, your ", what,
                          " resulted in ", prompt_tokens, " tokens, which leaves no room for a completion. Please "
                          "reduce the length of the ", what, "."),
                      "context_length_exceeded");
  if (!r.max_tokens) return n_ctx - prompt_tokens;
  if (*r.max_tokens > n_ctx - prompt_tokens)
    throw bad_request(r.max_tokens_param,
                      cat("This model's maximum context length is ", n_ctx, " tokens. However, you requested ",
                          prompt_tokens + *r.max_tokens, " tokens (", prompt_tokens, " in the ", what, ", ",
                          *r.max_tokens, " in the completion). Please reduce the length of the ", what,
                          " or completion."),
                      "context_length_exceeded");
  return *r.max_tokens;
}

void check_token_ids(const std::vector<int32_t>& ids, int32_t n_vocab, const std::string& param) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= n_vocab) {
      const std::string p = cat(param, "[", i, "]");
      throw bad_request(p, cat("Invalid '", p, "': token id ", ids[i], " is out of range: the vocabulary has ", n_vocab,
                               " tokens (ids 0..", n_vocab - 1, ")."),
                        "invalid_value");
    }
}

SamplingParams choice_sampling(const ApiRequest& r, int choice, uint64_t fallback_seed) {
  SamplingParams s = r.sampling;
  s.seed = (r.seed ? uint64_t(*r.seed) : fallback_seed) + uint64_t(choice);
  return s;
}

GenerationRequest generation_request(const ApiRequest& r, std::vector<int32_t> prompt, int choice, int64_t max_tokens,
                                     uint64_t fallback_seed, int top_logprobs) {
  GenerationRequest g;
  g.prompt = std::move(prompt);
  g.sampling = choice_sampling(r, choice, fallback_seed);
  g.max_tokens = max_tokens;
  g.stop = r.stop;
  g.ignore_eos = r.ignore_eos;
  g.min_tokens = std::min(r.min_tokens, max_tokens);
  g.top_logprobs = r.logprobs ? top_logprobs : 0;
  return g;
}

// ---------------------------------------------------------------------------------------------------------
// Response pieces

std::string random_id(std::string_view prefix, size_t n_chars) {
  static constexpr char kAlnum[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  thread_local std::mt19937_64 rng{(uint64_t(std::random_device{}()) << 32) ^ std::random_device{}()};
  std::string out(prefix);
  for (size_t i = 0; i < n_chars; ++i) out += kAlnum[rng() % (sizeof(kAlnum) - 1)];
  return out;
}

std::string time_ordered_id(std::string_view prefix) {
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  char hex[16];
  std::snprintf(hex, sizeof hex, "%011llx", static_cast<unsigned long long>(ms) & 0xfffffffffffULL);
  return random_id(std::string(prefix) + hex, 13);
}

ResponseMeta make_meta(Endpoint kind, const std::string& model, const std::string& fingerprint) {
  ResponseMeta m;
  m.id = time_ordered_id(kind == Endpoint::chat ? "chatcmpl-" : "cmpl-");
  m.created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
  m.model = model;
  m.system_fingerprint = fingerprint;
  return m;
}

std::string system_fingerprint(const std::string& model_path, uint64_t model_size, const std::string& tokenizer_hash,
                               const std::string& retort_version) {
  const std::string s = cat("retort-fp-v1\n", model_path, "\n", model_size, "\n", tokenizer_hash, "\n", retort_version);
  return "fp_" + sha256_hex(reinterpret_cast<const uint8_t*>(s.data()), s.size()).substr(0, 12);
}

LogprobsSpec granted_logprobs(const ApiRequest& r, int max_top, int round_digits) {
  LogprobsSpec s;
  s.enabled = r.logprobs;
  s.top = r.logprobs ? (max_top < 0 ? r.top_logprobs : std::min(r.top_logprobs, max_top)) : 0;
  s.round_digits = round_digits;
  return s;
}

TokenUsage usage_of(const std::vector<GenerationResult>& choices) {
  TokenUsage u;
  if (!choices.empty()) u.prompt_tokens = choices[0].prompt_tokens;
  for (const GenerationResult& c : choices) u.completion_tokens += int64_t(c.tokens.size());
  return u;
}

OrderedJson usage_json(const TokenUsage& u) {
  OrderedJson j;
  j["prompt_tokens"] = u.prompt_tokens;
  j["completion_tokens"] = u.completion_tokens;
  j["total_tokens"] = u.prompt_tokens + u.completion_tokens;
  return j;
}

std::string wire_finish_reason(const std::string& engine_reason) {
  if (engine_reason == "timeout") return "length";
  return engine_reason;
}

double wire_logprob(float lp, int round_digits) {
  if (!(lp > float(kLogprobFloor))) return kLogprobFloor;  // -inf, NaN, or below the floor
  double d;
  if (round_digits >= 0) {
    const double scale = std::pow(10.0, std::min(round_digits, 15));
    d = std::round(double(lp) * scale) / scale;
  } else {
    // The float's shortest decimal, read as a double: prints short and reads back as the same float.
    char buf[32];
    const auto r = std::to_chars(buf, buf + sizeof(buf), lp);
    std::from_chars(buf, r.ptr, d);
  }
  return d == 0 ? 0.0 : d;  // no "-0.0"
}

std::string lossy_utf8(std::string_view bytes) {
  std::string out;
  out.reserve(bytes.size());
  size_t i = 0;
  while (i < bytes.size()) {
    size_t len = 0;
    uint32_t cp = 0;
    const Utf8Status st = utf8_next(bytes.substr(i), &len, &cp);
    if (st == Utf8Status::valid) out.append(bytes.data() + i, len);
    else out += "\xEF\xBF\xBD";  // U+FFFD; an incomplete tail is one maximal subpart
    i += len;
  }
  return out;
}

namespace {

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len = 0;
    uint32_t cp = 0;
    if (utf8_next(s.substr(i), &len, &cp) != Utf8Status::valid) return false;
    i += len;
  }
  return true;
}

OrderedJson bytes_json(std::string_view b) {
  OrderedJson a = OrderedJson::array();
  for (char c : b) a.push_back(int(uint8_t(c)));
  return a;
}

// Decodes "bytes:\xe2\x80" (legacy token strings) into the bytes; nullopt when s is not of that form.
std::optional<std::string> decode_legacy_bytes(std::string_view s) {
  constexpr std::string_view kPrefix = "bytes:";
  if (s.substr(0, kPrefix.size()) != kPrefix || s.size() == kPrefix.size()) return std::nullopt;
  std::string out;
  for (size_t i = kPrefix.size(); i < s.size(); i += 4) {
    if (i + 4 > s.size() || s[i] != '\\' || s[i + 1] != 'x') return std::nullopt;
    unsigned v = 0;
    const auto r = std::from_chars(s.data() + i + 2, s.data() + i + 4, v, 16);
    if (r.ec != std::errc() || r.ptr != s.data() + i + 4) return std::nullopt;
    out += char(v);
  }
  return out;
}

}  // namespace

std::string legacy_token_string(std::string_view bytes) {
  if (valid_utf8(bytes)) return std::string(bytes);
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out = "bytes:";
  for (char c : bytes) {
    const auto b = uint8_t(c);
    out += "\\x";
    out += kHex[b >> 4];
    out += kHex[b & 15];
  }
  return out;
}

OrderedJson chat_logprobs_json(const std::vector<AlignedToken>& toks, const LogprobsSpec& lp, const Tokenizer& tok) {
  OrderedJson content = OrderedJson::array();
  for (const AlignedToken& a : toks) {
    OrderedJson e;
    e["token"] = lossy_utf8(a.bytes);
    e["logprob"] = wire_logprob(lp.processed ? a.token.logprob : a.token.logprob_raw, lp.round_digits);
    e["bytes"] = bytes_json(a.bytes);
    OrderedJson top = OrderedJson::array();
    const std::vector<TokenLogprob>& alts = lp.processed ? a.token.top : a.token.top_raw;
    for (size_t k = 0; k < alts.size() && k < size_t(std::max(lp.top, 0)); ++k) {
      const std::string b = tok.token_bytes(alts[k].token);
      OrderedJson t;
      t["token"] = lossy_utf8(b);
      t["logprob"] = wire_logprob(alts[k].logprob, lp.round_digits);
      t["bytes"] = bytes_json(b);
      top.push_back(std::move(t));
    }
    e["top_logprobs"] = std::move(top);
    content.push_back(std::move(e));
  }
  OrderedJson out;
  out["content"] = std::move(content);
  return out;
}

// Legacy form: parallel arrays. top_logprobs[i] is a {token string: logprob} dict of the top alternatives plus
// the sampled token (OpenAI: "up to logprobs+1 elements"); a string already present keeps its first (higher)
// entry.
OrderedJson completion_logprobs_json(const std::vector<AlignedToken>& toks, const LogprobsSpec& lp,
                                     const Tokenizer& tok) {
  OrderedJson tokens = OrderedJson::array(), token_logprobs = OrderedJson::array(), top = OrderedJson::array(),
              offsets = OrderedJson::array();
  for (const AlignedToken& a : toks) {
    const std::string s = legacy_token_string(a.bytes);
    const double v = wire_logprob(lp.processed ? a.token.logprob : a.token.logprob_raw, lp.round_digits);
    tokens.push_back(s);
    token_logprobs.push_back(v);
    OrderedJson d = OrderedJson::object();
    const std::vector<TokenLogprob>& alts = lp.processed ? a.token.top : a.token.top_raw;
    for (size_t k = 0; k < alts.size() && k < size_t(std::max(lp.top, 0)); ++k) {
      const std::string key = legacy_token_string(tok.token_bytes(alts[k].token));
      if (!d.contains(key)) d[key] = wire_logprob(alts[k].logprob, lp.round_digits);
    }
    if (!d.contains(s)) d[s] = v;
    top.push_back(std::move(d));
    offsets.push_back(a.text_offset);
  }
  OrderedJson out;
  out["tokens"] = std::move(tokens);
  out["token_logprobs"] = std::move(token_logprobs);
  out["top_logprobs"] = std::move(top);
  out["text_offset"] = std::move(offsets);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Token alignment

void TokenAligner::place_until(size_t src_end) {
  while (n_unplaced_ > 0) {
    Entry& e = queue_[queue_.size() - n_unplaced_];
    if (e.src >= src_end) break;
    e.out_byte = out_bytes_;
    e.a.text_offset = out_chars_;
    --n_unplaced_;
  }
}

void TokenAligner::push(const GeneratedToken& t) {
  Entry e;
  e.a.token = t;
  e.a.bytes = tok_->token_bytes(t.token);
  e.src = src_total_;
  src_total_ += e.a.bytes.size();
  held_ += e.a.bytes;
  queue_.push_back(std::move(e));
  ++n_unplaced_;
  // Decode as StreamDecoder does; each finished character (or U+FFFD) places the tokens that start in it.
  const size_t held_src = src_total_ - held_.size();
  size_t i = 0;
  while (i < held_.size()) {
    size_t len = 0;
    uint32_t cp = 0;
    const Utf8Status st = utf8_next(std::string_view(held_).substr(i), &len, &cp);
    if (st == Utf8Status::incomplete) break;
    place_until(held_src + i + len);
    out_bytes_ += st == Utf8Status::valid ? len : 3;
    out_chars_ += 1;
    i += len;
  }
  held_.erase(0, i);
}

void TokenAligner::flush() {
  if (!held_.empty()) {
    place_until(src_total_);
    out_bytes_ += 3;  // one U+FFFD for the held prefix
    out_chars_ += 1;
    held_.clear();
  }
  place_until(std::numeric_limits<size_t>::max());  // tokens without bytes at the end start at the end
}

std::vector<AlignedToken> TokenAligner::release(size_t text_bytes) {
  std::vector<AlignedToken> out;
  while (queue_.size() > n_unplaced_ && queue_.front().out_byte < text_bytes) {
    out.push_back(std::move(queue_.front().a));
    queue_.pop_front();
  }
  return out;
}

namespace {

std::vector<AlignedToken> content_tokens(const GenerationResult& r, const Tokenizer& tok) {
  TokenAligner a(tok);
  for (const GeneratedToken& t : r.tokens) a.push(t);
  a.flush();
  return a.release(r.text.size());
}

OrderedJson fingerprint_json(const ResponseMeta& m) {
  return m.system_fingerprint.empty() ? OrderedJson(nullptr) : OrderedJson(m.system_fingerprint);
}

OrderedJson head(const ResponseMeta& m, const char* object) {
  OrderedJson j;
  j["id"] = m.id;
  j["object"] = object;
  j["created"] = m.created;
  j["model"] = m.model;
  j["system_fingerprint"] = fingerprint_json(m);
  return j;
}

}  // namespace

OrderedJson build_chat_response(const ResponseMeta& meta, const std::vector<GenerationResult>& choices,
                                const LogprobsSpec& lp, const Tokenizer& tok) {
  OrderedJson j = head(meta, "chat.completion");
  OrderedJson cs = OrderedJson::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const GenerationResult& r = choices[i];
    OrderedJson c;
    c["index"] = i;
    OrderedJson msg;
    msg["role"] = "assistant";
    msg["content"] = lossy_utf8(r.text);
    c["message"] = std::move(msg);
    c["logprobs"] = lp.enabled ? chat_logprobs_json(content_tokens(r, tok), lp, tok) : OrderedJson(nullptr);
    c["finish_reason"] = wire_finish_reason(r.finish_reason);
    cs.push_back(std::move(c));
  }
  j["choices"] = std::move(cs);
  j["usage"] = usage_json(usage_of(choices));
  return j;
}

OrderedJson build_completion_response(const ResponseMeta& meta, const std::vector<GenerationResult>& choices,
                                      const LogprobsSpec& lp, const Tokenizer& tok) {
  OrderedJson j = head(meta, "text_completion");
  OrderedJson cs = OrderedJson::array();
  for (size_t i = 0; i < choices.size(); ++i) {
    const GenerationResult& r = choices[i];
    OrderedJson c;
    c["index"] = i;
    c["text"] = lossy_utf8(r.text);
    c["logprobs"] = lp.enabled ? completion_logprobs_json(content_tokens(r, tok), lp, tok) : OrderedJson(nullptr);
    c["finish_reason"] = wire_finish_reason(r.finish_reason);
    cs.push_back(std::move(c));
  }
  j["choices"] = std::move(cs);
  j["usage"] = usage_json(usage_of(choices));
  return j;
}

// ---------------------------------------------------------------------------------------------------------
// Streaming

std::string sse_event(const OrderedJson& j) { return "data: " + to_body(j) + "\n\n"; }
std::string sse_done() { return "data: [DONE]\n\n"; }

StreamEncoder::StreamEncoder(Endpoint kind, ResponseMeta meta, int n_choices, LogprobsSpec lp, bool include_usage,
                             const Tokenizer& tok)
    : kind_(kind), meta_(std::move(meta)), lp_(lp), include_usage_(include_usage), tok_(&tok) {
  choices_.reserve(size_t(std::max(n_choices, 0)));
  for (int i = 0; i < n_choices; ++i) choices_.push_back(ChoiceState{TokenAligner(tok)});
}

OrderedJson StreamEncoder::chunk(OrderedJson choices) const {
  OrderedJson j = head(meta_, kind_ == Endpoint::chat ? "chat.completion.chunk" : "text_completion");
  j["choices"] = std::move(choices);
  if (include_usage_) j["usage"] = nullptr;
  return j;
}

std::string StreamEncoder::open(int choice) {
  ChoiceState& st = choices_.at(size_t(choice));
  if (st.opened) return "";
  st.opened = true;
  if (kind_ != Endpoint::chat) return "";
  OrderedJson c;
  c["index"] = choice;
  OrderedJson delta;
  delta["role"] = "assistant";
  delta["content"] = "";
  c["delta"] = std::move(delta);
  c["logprobs"] = nullptr;
  c["finish_reason"] = nullptr;
  return sse_event(chunk(OrderedJson::array({std::move(c)})));
}

std::string StreamEncoder::content_event(int choice, const std::string& text, const std::vector<AlignedToken>& toks) {
  OrderedJson c;
  c["index"] = choice;
  if (kind_ == Endpoint::chat) {
    OrderedJson delta;
    delta["content"] = lossy_utf8(text);
    c["delta"] = std::move(delta);
    c["logprobs"] = lp_.enabled ? chat_logprobs_json(toks, lp_, *tok_) : OrderedJson(nullptr);
  } else {
    c["text"] = lossy_utf8(text);
    c["logprobs"] = lp_.enabled ? completion_logprobs_json(toks, lp_, *tok_) : OrderedJson(nullptr);
  }
  c["finish_reason"] = nullptr;
  return sse_event(chunk(OrderedJson::array({std::move(c)})));
}

std::string StreamEncoder::on_token(int choice, const GeneratedToken& t, const std::string& text_piece) {
  std::string out = open(choice);
  ChoiceState& st = choices_.at(size_t(choice));
  if (st.finished) return out;
  st.aligner.push(t);
  if (text_piece.empty()) return out;
  st.sent_bytes += text_piece.size();
  // The engine's text can run past what the aligner decoded only when it flushed a held partial character:
  // the sequence ended, so flush too.
  if (st.sent_bytes > st.aligner.decoded_bytes()) st.aligner.flush();
  out += content_event(choice, text_piece, st.aligner.release(st.sent_bytes));
  return out;
}

std::string StreamEncoder::finish(int choice, const GenerationResult& result) {
  std::string out = open(choice);
  ChoiceState& st = choices_.at(size_t(choice));
  if (st.finished) return out;
  st.finished = true;
  if (result.text.size() > st.sent_bytes) {
    const std::string rest = result.text.substr(st.sent_bytes);
    st.aligner.flush();
    st.sent_bytes = result.text.size();
    out += content_event(choice, rest, st.aligner.release(st.sent_bytes));
  }
  OrderedJson c;
  c["index"] = choice;
  if (kind_ == Endpoint::chat) c["delta"] = OrderedJson::object();
  else c["text"] = "";
  c["logprobs"] = nullptr;
  c["finish_reason"] = wire_finish_reason(result.finish_reason);
  out += sse_event(chunk(OrderedJson::array({std::move(c)})));
  return out;
}

std::string StreamEncoder::done(const TokenUsage& usage) {
  std::string out;
  if (include_usage_) {
    OrderedJson j = chunk(OrderedJson::array());
    j["usage"] = usage_json(usage);
    out += sse_event(j);
  }
  return out + sse_done();
}

std::string StreamEncoder::error(const ApiError& e) { return sse_event(e.body()) + sse_done(); }

// ---------------------------------------------------------------------------------------------------------
// Other endpoints

OrderedJson model_json(const ModelCard& m) {
  OrderedJson j;
  j["id"] = m.id;
  j["object"] = "model";
  j["created"] = m.created;
  j["owned_by"] = m.owned_by;
  if (m.max_model_len > 0) j["max_model_len"] = m.max_model_len;
  return j;
}

OrderedJson build_models_response(const std::vector<ModelCard>& models) {
  OrderedJson data = OrderedJson::array();
  for (const ModelCard& m : models) data.push_back(model_json(m));
  OrderedJson j;
  j["object"] = "list";
  j["data"] = std::move(data);
  return j;
}

TokenizeRequest parse_tokenize_request(const json& body) {
  if (!body.is_object()) throw bad_request("", "body must be a JSON object", "invalid_json");
  TokenizeRequest r;
  if (auto m = get_string(body, "model", "model")) r.model = *m;
  const json* content = field(body, "content");
  const json* prompt = field(body, "prompt");
  const json* messages = field(body, "messages");
  if (int(content != nullptr) + int(prompt != nullptr) + int(messages != nullptr) > 1)
    throw bad_request("", "give one of 'content', 'prompt' or 'messages'", "invalid_value");
  if (content != nullptr) {
    if (!content->is_string()) wrong_type("content", "a string", *content);
    r.text = content->get<std::string>();
  } else if (prompt != nullptr) {
    if (!prompt->is_string()) wrong_type("prompt", "a string", *prompt);
    r.text = prompt->get<std::string>();
    r.add_special = true;  // vLLM's add_special_tokens default for a prompt
  } else if (messages != nullptr) {
    r.chat = true;
    r.messages = parse_messages(body);
    if (auto g = get_bool(body, "add_generation_prompt", "add_generation_prompt")) r.add_generation_prompt = *g;
  } else {
    missing("content");
  }
  if (auto a = get_bool(body, "add_special_tokens", "add_special_tokens")) r.add_special = *a;
  if (auto a = get_bool(body, "add_special", "add_special")) r.add_special = *a;
  if (auto w = get_bool(body, "with_pieces", "with_pieces")) r.with_pieces = *w;
  if (auto t = get_bool(body, "return_token_strs", "return_token_strs")) r.return_token_strs = *t;
  return r;
}

OrderedJson build_tokenize_response(const std::vector<int32_t>& ids, const TokenizeRequest& r, const Tokenizer& tok,
                                    int64_t max_model_len) {
  OrderedJson tokens = OrderedJson::array();
  for (int32_t id : ids) {
    if (!r.with_pieces) {
      tokens.push_back(id);
      continue;
    }
    const std::string b = tok.token_bytes(id);
    OrderedJson t;
    t["id"] = id;
    t["piece"] = valid_utf8(b) ? OrderedJson(b) : bytes_json(b);
    tokens.push_back(std::move(t));
  }
  OrderedJson j;
  j["tokens"] = std::move(tokens);
  j["count"] = ids.size();
  j["max_model_len"] = max_model_len;
  if (r.return_token_strs) {
    OrderedJson strs = OrderedJson::array();
    for (int32_t id : ids) strs.push_back(lossy_utf8(tok.token_text(id)));
    j["token_strs"] = std::move(strs);
  }
  return j;
}

std::vector<int32_t> parse_detokenize_request(const json& body, int32_t n_vocab) {
  if (!body.is_object()) throw bad_request("", "body must be a JSON object", "invalid_json");
  const json* t = field(body, "tokens");
  if (t == nullptr) missing("tokens");
  if (!t->is_array()) wrong_type("tokens", "an array of token ids", *t);
  std::vector<int32_t> ids;
  ids.reserve(t->size());
  for (size_t i = 0; i < t->size(); ++i) ids.push_back(as_token_id((*t)[i], cat("tokens[", i, "]")));
  check_token_ids(ids, n_vocab, "tokens");
  return ids;
}

OrderedJson build_detokenize_response(const std::vector<int32_t>& ids, const Tokenizer& tok) {
  std::string text;
  try {
    text = lossy_utf8(tok.decode(ids));
  } catch (const Error& e) {
    throw bad_request("tokens", e.what(), "invalid_value");
  }
  OrderedJson j;
  j["content"] = text;  // llama.cpp
  j["prompt"] = text;   // vLLM
  return j;
}

// ---------------------------------------------------------------------------------------------------------
// Client side

namespace {

[[noreturn]] void bad_response(const std::string& path, const char* expected, const json& v) {
  fail("OpenAI response: '", path, "' should be ", expected, " but is ", type_phrase(v));
}

const json& need(const json& obj, const char* key, const std::string& path) {
  const auto it = obj.find(key);
  if (it == obj.end()) fail("OpenAI response: '", path, "' is missing");
  return *it;
}

std::string opt_string(const json& obj, const char* key, const std::string& path) {
  const auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return "";
  if (!it->is_string()) bad_response(path, "a string", *it);
  return it->get<std::string>();
}

double number(const json& v, const std::string& path) {
  if (v.is_null()) return std::nan("");  // legacy token_logprobs[0] is null with echo
  if (!v.is_number()) bad_response(path, "a number", v);
  return v.get<double>();
}

int64_t integer(const json& v, const std::string& path) {
  if (!v.is_number_integer()) bad_response(path, "an integer", v);
  return v.get<int64_t>();
}

std::string bytes_from_json(const json& v, const std::string& path) {
  if (!v.is_array()) bad_response(path, "an array of byte values", v);
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    const int64_t b = integer(v[i], cat(path, "[", i, "]"));
    if (b < 0 || b > 255) fail("OpenAI response: '", path, "[", i, "]' is ", b, ", not a byte value");
    out += char(uint8_t(b));
  }
  return out;
}

// token + optional bytes -> (bytes, exact).
std::pair<std::string, bool> token_bytes_of(const std::string& token, const json& obj, const std::string& path) {
  const auto it = obj.find("bytes");
  if (it != obj.end() && !it->is_null()) return {bytes_from_json(*it, path + ".bytes"), true};
  if (auto b = decode_legacy_bytes(token)) return {*b, true};
  // The string's UTF-8 is the token's bytes unless the server replaced bytes by U+FFFD.
  return {token, token.find("\xEF\xBF\xBD") == std::string::npos};
}

// llama.cpp's server adds each token's id ("id"); other servers send none. Anything but a non-negative
// integer counts as none.
int64_t token_id_of(const json& obj) {
  const auto it = obj.find("id");
  return it != obj.end() && it->is_number_integer() && it->get<int64_t>() >= 0 ? it->get<int64_t>() : -1;
}

void sort_top(std::vector<ParsedTopLogprob>& top) {
  std::stable_sort(top.begin(), top.end(),
                   [](const ParsedTopLogprob& a, const ParsedTopLogprob& b) { return a.logprob > b.logprob; });
}

std::vector<ParsedTokenLogprob> parse_chat_logprobs(const json& lp, const std::string& path) {
  if (!lp.is_object()) bad_response(path, "an object or null", lp);
  std::vector<ParsedTokenLogprob> out;
  const auto it = lp.find("content");
  if (it == lp.end() || it->is_null()) return out;
  if (!it->is_array()) bad_response(path + ".content", "an array", *it);
  for (size_t i = 0; i < it->size(); ++i) {
    const json& e = (*it)[i];
    const std::string p = cat(path, ".content[", i, "]");
    if (!e.is_object()) bad_response(p, "an object", e);
    ParsedTokenLogprob t;
    const json& token = need(e, "token", p + ".token");
    if (!token.is_string()) bad_response(p + ".token", "a string", token);
    t.token = token.get<std::string>();
    std::tie(t.bytes, t.exact_bytes) = token_bytes_of(t.token, e, p);
    t.logprob = number(need(e, "logprob", p + ".logprob"), p + ".logprob");
    t.id = token_id_of(e);
    if (const auto tl = e.find("top_logprobs"); tl != e.end() && !tl->is_null()) {
      if (!tl->is_array()) bad_response(p + ".top_logprobs", "an array", *tl);
      for (size_t k = 0; k < tl->size(); ++k) {
        const json& a = (*tl)[k];
        const std::string pk = cat(p, ".top_logprobs[", k, "]");
        if (!a.is_object()) bad_response(pk, "an object", a);
        ParsedTopLogprob alt;
        const json& at = need(a, "token", pk + ".token");
        if (!at.is_string()) bad_response(pk + ".token", "a string", at);
        alt.token = at.get<std::string>();
        alt.bytes = token_bytes_of(alt.token, a, pk).first;
        alt.logprob = number(need(a, "logprob", pk + ".logprob"), pk + ".logprob");
        alt.id = token_id_of(a);
        t.top.push_back(std::move(alt));
      }
      sort_top(t.top);
    }
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<ParsedTokenLogprob> parse_legacy_logprobs(const json& lp, const std::string& path) {
  if (!lp.is_object()) bad_response(path, "an object or null", lp);
  // llama.cpp's server answers /completions with the chat shape.
  if (lp.contains("content") && !lp.contains("tokens")) return parse_chat_logprobs(lp, path);
  std::vector<ParsedTokenLogprob> out;
  const json& tokens = need(lp, "tokens", path + ".tokens");
  if (!tokens.is_array()) bad_response(path + ".tokens", "an array", tokens);
  const json& lps = need(lp, "token_logprobs", path + ".token_logprobs");
  if (!lps.is_array() || lps.size() != tokens.size())
    bad_response(path + ".token_logprobs", "an array as long as 'tokens'", lps);
  const auto top = lp.find("top_logprobs");
  const bool has_top = top != lp.end() && !top->is_null();
  if (has_top && (!top->is_array() || top->size() != tokens.size()))
    bad_response(path + ".top_logprobs", "null or an array as long as 'tokens'", *top);
  const auto off = lp.find("text_offset");
  const bool has_off = off != lp.end() && !off->is_null();
  if (has_off && (!off->is_array() || off->size() != tokens.size()))
    bad_response(path + ".text_offset", "null or an array as long as 'tokens'", *off);
  for (size_t i = 0; i < tokens.size(); ++i) {
    ParsedTokenLogprob t;
    const std::string p = cat(path, ".tokens[", i, "]");
    if (!tokens[i].is_string()) bad_response(p, "a string", tokens[i]);
    t.token = tokens[i].get<std::string>();
    std::tie(t.bytes, t.exact_bytes) = token_bytes_of(t.token, json::object(), p);
    t.logprob = number(lps[i], cat(path, ".token_logprobs[", i, "]"));
    if (has_top && !(*top)[i].is_null()) {
      const json& d = (*top)[i];
      if (!d.is_object()) bad_response(cat(path, ".top_logprobs[", i, "]"), "an object", d);
      for (const auto& [k, v] : d.items()) {
        ParsedTopLogprob alt;
        alt.token = k;
        alt.bytes = token_bytes_of(k, json::object(), "").first;
        alt.logprob = number(v, cat(path, ".top_logprobs[", i, "].", k));
        t.top.push_back(std::move(alt));
      }
      sort_top(t.top);
    }
    if (has_off) t.text_offset = integer((*off)[i], cat(path, ".text_offset[", i, "]"));
    out.push_back(std::move(t));
  }
  return out;
}

void parse_head(const json& body, ParsedCompletion& out) {
  if (!body.is_object()) fail("OpenAI response: expected a JSON object, got ", type_phrase(body));
  if (body.contains("error") && !body["error"].is_null()) throw parse_error_response(500, body);
  out.id = opt_string(body, "id", "id");
  out.object = opt_string(body, "object", "object");
  out.model = opt_string(body, "model", "model");
  out.system_fingerprint = opt_string(body, "system_fingerprint", "system_fingerprint");
  if (const auto c = body.find("created"); c != body.end() && !c->is_null()) out.created = integer(*c, "created");
  if (const auto u = body.find("usage"); u != body.end() && !u->is_null()) {
    if (!u->is_object()) bad_response("usage", "an object", *u);
    out.has_usage = true;
    out.usage.prompt_tokens = integer(need(*u, "prompt_tokens", "usage.prompt_tokens"), "usage.prompt_tokens");
    out.usage.completion_tokens =
        integer(need(*u, "completion_tokens", "usage.completion_tokens"), "usage.completion_tokens");
  }
}

ParsedChoice& choice_at(ParsedCompletion& acc, int64_t index) {
  auto it = std::lower_bound(acc.choices.begin(), acc.choices.end(), index,
                             [](const ParsedChoice& c, int64_t i) { return c.index < i; });
  if (it != acc.choices.end() && it->index == index) return *it;
  ParsedChoice c;
  c.index = index;
  return *acc.choices.insert(it, std::move(c));
}

ParsedCompletion parse_response(const json& body, bool chat) {
  ParsedCompletion out;
  parse_head(body, out);
  const json& cs = need(body, "choices", "choices");
  if (!cs.is_array()) bad_response("choices", "an array", cs);
  for (size_t i = 0; i < cs.size(); ++i) {
    const json& c = cs[i];
    const std::string p = cat("choices[", i, "]");
    if (!c.is_object()) bad_response(p, "an object", c);
    const auto idx = c.find("index");
    ParsedChoice& pc = choice_at(out, idx == c.end() ? int64_t(i) : integer(*idx, p + ".index"));
    if (chat) {
      const json& m = need(c, "message", p + ".message");
      if (!m.is_object()) bad_response(p + ".message", "an object", m);
      pc.text = opt_string(m, "content", p + ".message.content");  // null content (refusal, tool call) -> ""
    } else {
      const json& t = need(c, "text", p + ".text");
      if (!t.is_string()) bad_response(p + ".text", "a string", t);
      pc.text = t.get<std::string>();
    }
    pc.finish_reason = opt_string(c, "finish_reason", p + ".finish_reason");
    if (const auto lp = c.find("logprobs"); lp != c.end() && !lp->is_null()) {
      pc.has_logprobs = true;
      pc.logprobs = chat ? parse_chat_logprobs(*lp, p + ".logprobs") : parse_legacy_logprobs(*lp, p + ".logprobs");
    }
  }
  return out;
}

}  // namespace

ParsedCompletion parse_chat_response(const json& body) { return parse_response(body, true); }
ParsedCompletion parse_completion_response(const json& body) { return parse_response(body, false); }

void merge_chunk(ParsedCompletion& acc, const json& chunk) {
  ParsedCompletion h;
  parse_head(chunk, h);
  if (acc.id.empty()) {
    acc.id = h.id;
    acc.object = h.object;
    acc.model = h.model;
    acc.created = h.created;
  }
  if (!h.system_fingerprint.empty()) acc.system_fingerprint = h.system_fingerprint;
  if (h.has_usage) {
    acc.has_usage = true;
    acc.usage = h.usage;
  }
  const auto cs = chunk.find("choices");
  if (cs == chunk.end() || cs->is_null()) return;
  if (!cs->is_array()) bad_response("choices", "an array", *cs);
  for (size_t i = 0; i < cs->size(); ++i) {
    const json& c = (*cs)[i];
    const std::string p = cat("choices[", i, "]");
    if (!c.is_object()) bad_response(p, "an object", c);
    const auto idx = c.find("index");
    ParsedChoice& pc = choice_at(acc, idx == c.end() ? int64_t(i) : integer(*idx, p + ".index"));
    const bool chat = c.contains("delta");
    if (chat) {
      const json& d = c["delta"];
      if (!d.is_object()) bad_response(p + ".delta", "an object", d);
      pc.text += opt_string(d, "content", p + ".delta.content");
    } else {
      pc.text += opt_string(c, "text", p + ".text");
    }
    if (const std::string fr = opt_string(c, "finish_reason", p + ".finish_reason"); !fr.empty()) pc.finish_reason = fr;
    if (const auto lp = c.find("logprobs"); lp != c.end() && !lp->is_null()) {
      pc.has_logprobs = true;
      auto more = chat ? parse_chat_logprobs(*lp, p + ".logprobs") : parse_legacy_logprobs(*lp, p + ".logprobs");
      for (auto& t : more) pc.logprobs.push_back(std::move(t));
    }
  }
}

ApiError parse_error_response(int status, const json& body) {
  const json* e = body.is_object() ? field(body, "error") : nullptr;
  if (e == nullptr) fail("OpenAI response (HTTP ", status, "): not an error body");
  if (e->is_string()) return ApiError(status, "", e->get<std::string>());  // {"error": "message"}
  if (!e->is_object()) bad_response("error", "an object", *e);
  auto str = [&](const char* key) -> std::string {
    const json* v = field(*e, key);
    if (v == nullptr) return "";
    if (v->is_string()) return v->get<std::string>();
    return v->dump();  // llama.cpp sends "code": 400
  };
  return ApiError(status, str("type"), str("message"), str("param"), str("code"));
}

std::vector<std::string> SseParser::feed(std::string_view bytes) {
  buf_.append(bytes);
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t nl; (nl = buf_.find('\n', start)) != std::string::npos; start = nl + 1) {
    std::string_view line(buf_.data() + start, nl - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) {  // end of an event
      if (has_data_) out.push_back(std::move(data_));
      data_.clear();
      has_data_ = false;
      continue;
    }
    if (line.substr(0, 5) != "data:") continue;  // comments (":...") and other fields
    line.remove_prefix(5);
    if (!line.empty() && line.front() == ' ') line.remove_prefix(1);
    if (has_data_) data_ += '\n';
    data_.append(line);
    has_data_ = true;
  }
  buf_.erase(0, start);
  return out;
}

}  // namespace retort

// retort/serve/openai_client.cpp — the blocking OpenAI client (see openai_client.h): URL handling, the retry
// policy, and turning every failure into a retort::Error that says where, what the server said, and what to do.
#include "retort/serve/openai_client.h"

#include <httplib.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <ctime>
#include <random>
#include <thread>

#include "retort/util/error.h"

namespace retort {

using nlohmann::json;

namespace {

// base_url split into what httplib needs. path is the normalized prefix ("/v1", "/openai/v1").
struct ParsedUrl {
  std::string scheme, host, path;
  int port = 0;
  bool bracketed = false;  // an IPv6 literal, written "[::1]" in URLs
  std::string host_port() const { return cat(bracketed ? "[" : "", host, bracketed ? "]" : "", ":", port); }
  // As users write it: the port left out when it is the scheme's default.
  std::string origin() const {
    const bool default_port = port == (scheme == "https" ? 443 : 80);
    return cat(scheme, "://", bracketed ? "[" : "", host, bracketed ? "]" : "", default_port ? "" : cat(":", port));
  }
};

std::string lower(std::string s) {
  for (char& c : s) c = char(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

ParsedUrl parse_base_url(const std::string& url) {
  const std::string usage = "expected http://host[:port][/path], e.g. http://127.0.0.1:8080/v1";
  check(!url.empty(), "OpenAI client: the base URL is empty; ", usage);
  const size_t sep = url.find("://");
  check(sep != std::string::npos, "OpenAI client: '", url, "' is not a URL (no scheme); ", usage);
  ParsedUrl u;
  u.scheme = lower(url.substr(0, sep));
  if (u.scheme == "https") {
#ifndef CPPHTTPLIB_OPENSSL_SUPPORT
    fail("OpenAI client: '", url, "': this build of retort has no TLS support (cpp-httplib without OpenSSL); ",
         "use an http:// endpoint, or a local TLS-terminating proxy that forwards to the https one");
#endif
  } else {
    check(u.scheme == "http", "OpenAI client: '", url, "': unsupported scheme '", u.scheme, "'; ", usage);
  }
  std::string rest = url.substr(sep + 3);
  check(rest.find_first_of("?#") == std::string::npos, "OpenAI client: '", url,
        "': a query or fragment is not allowed in the base URL; ", usage);
  const size_t slash = rest.find('/');
  std::string authority = rest.substr(0, slash);
  u.path = slash == std::string::npos ? "" : rest.substr(slash);
  check(authority.find('@') == std::string::npos, "OpenAI client: '", url,
        "': credentials in the URL are not supported; pass the key as api_key");

  std::string port;
  if (!authority.empty() && authority.front() == '[') {
    const size_t close = authority.find(']');
    check(close != std::string::npos, "OpenAI client: '", url, "': unterminated IPv6 address; ", usage);
    u.host = authority.substr(1, close - 1);
    u.bracketed = true;
    const std::string after = authority.substr(close + 1);
    check(after.empty() || after.front() == ':', "OpenAI client: '", url, "': bad host; ", usage);
    if (!after.empty()) port = after.substr(1);
  } else {
    const size_t colon = authority.find(':');
    u.host = authority.substr(0, colon);
    if (colon != std::string::npos) port = authority.substr(colon + 1);
  }
  check(!u.host.empty(), "OpenAI client: '", url, "': no host; ", usage);
  if (port.empty()) {
    u.port = u.scheme == "https" ? 443 : 80;
  } else {
    const bool digits = port.size() <= 5 && std::all_of(port.begin(), port.end(), [](char c) {
                          return c >= '0' && c <= '9';
                        });
    u.port = digits ? std::atoi(port.c_str()) : 0;
    check(u.port >= 1 && u.port <= 65535, "OpenAI client: '", url, "': port '", port,
          "' is not a number in 1..65535");
  }

  while (!u.path.empty() && u.path.back() == '/') u.path.pop_back();
  // A pasted endpoint URL would otherwise become ".../chat/completions/v1/chat/completions".
  for (const char* endpoint : {"/chat/completions", "/completions", "/models"}) {
    const std::string e = endpoint;
    check(!(u.path.size() >= e.size() && u.path.compare(u.path.size() - e.size(), e.size(), e) == 0),
          "OpenAI client: '", url, "' names an endpoint; give the base URL instead (the part up to /v1)");
  }
  if (u.path.size() < 3 || u.path.compare(u.path.size() - 3, 3, "/v1") != 0) u.path += "/v1";
  return u;
}

// The first bytes of a body that is not an OpenAI error (a proxy's HTML page, a plain-text message), on
// one line, for the error message.
std::string snippet(const std::string& body) {
  constexpr size_t kMax = 200;
  std::string out;
  for (char c : body.substr(0, kMax)) out += (c == '\n' || c == '\r' || c == '\t') ? ' ' : c;
  if (body.size() > kMax) out += "...";
  return lossy_utf8(out);
}

// "HTTP 400 invalid_request_error: <message> (param 'messages', code 'invalid_type')", from an OpenAI error
// body when the server sent one.
std::string describe_http(int status, const std::string& body) {
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!j.is_discarded() && j.is_object() && j.contains("error")) {
    try {
      const ApiError e = parse_error_response(status, j);
      std::string out = cat("HTTP ", status, e.type.empty() ? "" : " " + e.type, ": ", e.what());
      if (!e.param.empty() || !e.code.empty()) {
        out += " (";
        if (!e.param.empty()) out += cat("param '", e.param, "'");
        if (!e.param.empty() && !e.code.empty()) out += ", ";
        if (!e.code.empty()) out += cat("code '", e.code, "'");
        out += ")";
      }
      return out;
    } catch (const Error&) {
      // "error" present but not in OpenAI's shape: fall through to the raw body.
    }
  }
  if (body.find_first_not_of(" \t\r\n") == std::string::npos) return cat("HTTP ", status, " with an empty body");
  return cat("HTTP ", status, ": '", snippet(body), "'");
}

// What the user can do about a refusal that is not retried.
// The "param" of an OpenAI error body, or "".
std::string error_param(const std::string& body) {
  const json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return "";
  const auto e = j.find("error");
  if (e == j.end() || !e->is_object()) return "";
  const auto p = e->find("param");
  return p != e->end() && p->is_string() ? p->get<std::string>() : "";
}

std::string hint_for(int status, bool has_key) {
  switch (status) {
    case 401: return has_key ? "the server refused the API key; check it" : "the server wants an API key; none was given";
    case 403: return "the API key may not use this model or endpoint";
    case 404: return "check the base URL (it should be an OpenAI-compatible server's /v1) and the model name";
    case 413: return "the request is larger than this server accepts; shorten the prompt";
    default:
      if (status >= 300 && status < 400) return "the server redirects; use the URL it redirects to as base URL";
      if (status >= 400 && status < 500) return "the server refused the request as sent";
      return "the server failed; see its logs";
  }
}

bool retried_status(int status) {
  return status == 429 || status == 500 || status == 502 || status == 503 || status == 504;
}

// httplib reports a read timeout as Error::Read: both mean no (complete) answer arrived.
bool retried_transport(httplib::Error e) {
  return e == httplib::Error::Connection || e == httplib::Error::ConnectionTimeout || e == httplib::Error::Read ||
         e == httplib::Error::Write;
}

std::string describe_transport(httplib::Error e, const ParsedUrl& u, double timeout_s) {
  switch (e) {
    case httplib::Error::Connection:
      return cat("could not connect to ", u.host_port(), " (refused, unknown host or unreachable)");
    case httplib::Error::ConnectionTimeout: return cat("no connection to ", u.host_port(), " within ", timeout_s, " s");
    case httplib::Error::Read:
      return cat("no complete answer within ", timeout_s, " s (timeout_s), or the server closed the connection");
    case httplib::Error::Write: return "the request could not be sent (the server closed the connection)";
    case httplib::Error::SSLConnection: return "the TLS handshake failed";
    case httplib::Error::SSLServerVerification: return "the server's TLS certificate could not be verified";
    case httplib::Error::SSLLoadingCerts: return "the system's CA certificates could not be loaded";
    default: return cat("transport error (cpp-httplib: ", httplib::to_string(e), ")");
  }
}

// Retry-After is delta-seconds or an HTTP date (RFC 9110 §10.2.3); OpenAI also sends retry-after-ms. Returns
// seconds to wait, or -1 when there is no usable value.
double retry_after_s(const httplib::Response& res) {
  if (res.has_header("retry-after-ms")) {
    const std::string v = res.get_header_value("retry-after-ms");
    char* end = nullptr;
    const double ms = std::strtod(v.c_str(), &end);
    if (end != v.c_str() && std::isfinite(ms) && ms >= 0) return ms / 1000;
  }
  if (!res.has_header("Retry-After")) return -1;
  const std::string v = res.get_header_value("Retry-After");
  char* end = nullptr;
  const double s = std::strtod(v.c_str(), &end);
  if (end != v.c_str() && std::isfinite(s)) return std::max(0.0, s);
  std::tm tm{};
  if (strptime(v.c_str(), "%a, %d %b %Y %H:%M:%S GMT", &tm) == nullptr) return -1;
  return std::max(0.0, std::difftime(timegm(&tm), std::time(nullptr)));
}

}  // namespace

struct OpenAIClient::Impl {
  ParsedUrl url;
  std::unique_ptr<httplib::ClientImpl> http;
  httplib::Headers headers;
  std::mt19937_64 rng{std::random_device{}()};  // jitter only
};

OpenAIClient::OpenAIClient(OpenAIClientOptions options) : impl_(std::make_unique<Impl>()), options_(std::move(options)) {
  check(options_.timeout_s > 0, "OpenAI client: timeout_s must be > 0 (got ", options_.timeout_s, ")");
  check(options_.max_retries >= 0, "OpenAI client: max_retries must be >= 0 (got ", options_.max_retries, ")");
  check(options_.backoff_s >= 0 && options_.max_backoff_s >= 0, "OpenAI client: backoff_s and max_backoff_s must be >= 0");
  if (!options_.sleep) options_.sleep = [](double s) { std::this_thread::sleep_for(std::chrono::duration<double>(s)); };

  impl_->url = parse_base_url(options_.base_url);
  const ParsedUrl& u = impl_->url;
  base_url_ = u.origin() + u.path;
  // The classes themselves rather than httplib::Client("scheme://host:port"), whose parser takes IPv6
  // literals of digits and colons only. SSLClient verifies the server's certificate against the system's CAs.
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
  if (u.scheme == "https") impl_->http = std::make_unique<httplib::SSLClient>(u.host, u.port);
#endif
  if (!impl_->http) impl_->http = std::make_unique<httplib::ClientImpl>(u.host, u.port);
  // httplib's read timeout bounds each wait for bytes; a non-streaming answer comes whole once generated,
  // so in effect the server has timeout_s to start answering.
  const auto t = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::duration<double>(options_.timeout_s));
  const time_t sec = time_t(t.count() / 1000000), usec = time_t(t.count() % 1000000);
  impl_->http->set_connection_timeout(sec, usec);
  impl_->http->set_read_timeout(sec, usec);
  impl_->http->set_write_timeout(sec, usec);
  // One connection reused across requests: an audit sends thousands, and a TLS handshake each is slow. A
  // connection the server closed meanwhile fails as a transport error and is retried on a fresh one.
  impl_->http->set_keep_alive(true);
  impl_->headers = {{"Accept", "application/json"}};
  if (!options_.api_key.empty()) impl_->headers.emplace("Authorization", "Bearer " + options_.api_key);
}

OpenAIClient::~OpenAIClient() = default;

json OpenAIClient::send(const std::string& method, const std::string& path, const std::string& body) {
  const std::string target = impl_->url.path + path;
  const std::string where = cat(method, " ", base_url_, path);
  for (int attempt = 0;; ++attempt) {
    ++stats_.requests;
    httplib::Result res = method == "GET" ? impl_->http->Get(target, impl_->headers)
                                          : impl_->http->Post(target, impl_->headers, body, "application/json");
    int status = 0;            // 0: no HTTP answer
    std::string failure;
    double server_wait = -1;   // Retry-After, when sent
    if (!res) {
      ++stats_.transport_errors;
      failure = describe_transport(res.error(), impl_->url, options_.timeout_s);
      if (!retried_transport(res.error())) fail(where, ": ", failure);
    } else {
      status = res->status;
      if (status == 429) ++stats_.throttled;
      if (status >= 500) ++stats_.server_errors;
      if (status >= 200 && status < 300) {
        check(res->body.find_first_not_of(" \t\r\n") != std::string::npos, where, ": HTTP ", status,
              " with an empty body: not an OpenAI-compatible answer; is this URL an OpenAI-compatible API?");
        try {
          return parse_body(res->body);
        } catch (const ApiError& e) {
          fail(where, ": HTTP ", status, " but the body is not an OpenAI-compatible answer (", e.what(),
               "); is this URL an OpenAI-compatible API?");
        }
      }
      failure = describe_http(status, res->body);
      if (!retried_status(status))
        throw OpenAIClientError(cat(where, ": ", failure, "; ", hint_for(status, !options_.api_key.empty())), status,
                                error_param(res->body), false);
      // OpenAI's 429 "insufficient_quota" is a spent balance, not a rate: no wait makes it pass.
      if (status == 429 && failure.find("insufficient_quota") != std::string::npos)
        throw OpenAIClientError(cat(where, ": ", failure, "; the account's quota or balance is spent: retrying will "
                                    "not help (raise the quota, or use another key)"),
                                status, "", false);
      server_wait = retry_after_s(*res);
    }

    if (attempt >= options_.max_retries) {
      const char* what = status == 429 ? "the server is rate-limiting: wait, or send requests less often"
                         : status != 0 ? "the server is failing: try later, or see its logs"
                                       : "check that the server is running there, or raise timeout_s for a slow model";
      throw OpenAIClientError(cat(where, ": ", failure, "; gave up after ", attempt + 1,
                                  attempt == 0 ? " attempt" : " attempts", " (max_retries ", options_.max_retries,
                                  "); ", what),
                              status, "", true);
    }
    double wait;
    if (server_wait >= 0) {
      wait = std::min(server_wait, options_.max_backoff_s);
    } else {
      // Jitter keeps clients throttled together from retrying in lockstep; the cap holds after it too.
      std::uniform_real_distribution<double> jitter(0.75, 1.25);
      const double base = std::min(options_.max_backoff_s, std::ldexp(options_.backoff_s, attempt));
      wait = std::min(options_.max_backoff_s, base * jitter(impl_->rng));
    }
    ++stats_.retries;
    options_.sleep(wait);
  }
}

namespace {

void add_usage(OpenAIClientStats& s, const ParsedCompletion& p) {
  if (!p.has_usage) return;
  s.prompt_tokens += p.usage.prompt_tokens;
  s.completion_tokens += p.usage.completion_tokens;
}

// parse_*_response's errors name the field; this adds the URL. A 200 body holding {"error": ...} (some
// proxies do that) is reported as the server's error.
template <class Parse>
ParsedCompletion parse_answer(const json& body, const std::string& where, Parse parse) {
  try {
    return parse(body);
  } catch (const ApiError& e) {
    fail(where, ": HTTP 200 with an error body: ", e.what());
  } catch (const Error& e) {
    fail(where, ": not an OpenAI-compatible answer: ", e.what());
  }
}

}  // namespace

ParsedCompletion OpenAIClient::chat(const ApiRequest& r) {
  ApiRequest q = r;
  q.stream = false;
  q.include_usage = false;
  const json body = send("POST", "/chat/completions", to_body(OrderedJson(build_chat_request(q))));
  ParsedCompletion out = parse_answer(body, "POST " + base_url_ + "/chat/completions", parse_chat_response);
  add_usage(stats_, out);
  return out;
}

ParsedCompletion OpenAIClient::complete(const ApiRequest& r) {
  ApiRequest q = r;
  q.stream = false;
  q.include_usage = false;
  const json body = send("POST", "/completions", to_body(OrderedJson(build_completion_request(q))));
  ParsedCompletion out = parse_answer(body, "POST " + base_url_ + "/completions", parse_completion_response);
  add_usage(stats_, out);
  return out;
}

std::vector<std::string> OpenAIClient::models() {
  const json body = send("GET", "/models", "");
  const std::string where = "GET " + base_url_ + "/models";
  const auto data = body.find("data");
  check(data != body.end() && data->is_array(), where,
        ": not an OpenAI-compatible answer: 'data' should be an array of models");
  std::vector<std::string> ids;
  for (size_t i = 0; i < data->size(); ++i) {
    const json& m = (*data)[i];
    check(m.is_object() && m.contains("id") && m["id"].is_string(), where,
          ": not an OpenAI-compatible answer: 'data[", i, "].id' should be a string");
    ids.push_back(m["id"].get<std::string>());
  }
  return ids;
}

}  // namespace retort

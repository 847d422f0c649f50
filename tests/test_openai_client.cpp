// The blocking OpenAI client (serve/openai_client.h) against a scripted in-process cpp-httplib server on
// loopback: what it sends, how it reads answers back, the retry policy (429/5xx/timeouts, Retry-After, backoff
// with jitter, no retry on other 4xx), its statistics, and the error messages of every failure. One test
// drives a real `retort serve` when the default model is in the cache.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <httplib.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "retort/serve/openai_client.h"
#include "retort/serve/openai_schema.h"
#include "retort/util/error.h"
#include "test_util.h"

extern char** environ;

using namespace retort;
using nlohmann::json;
using retort_test::expect_error;

namespace {

// One scripted answer. delay_s holds the handler back (bounded: the server's destructor cuts it short).
struct Reply {
  int status = 200;
  std::string body;
  httplib::Headers headers;
  double delay_s = 0;
};

struct Received {
  std::string method, path, body, authorization;
};

// An OpenAI-compatible server on 127.0.0.1 (a free port) answering every request under /v1 with the next
// scripted reply; the last one repeats.
class FakeServer {
 public:
  explicit FakeServer(std::vector<Reply> script) : script_(std::move(script)) {
    auto handle = [this](const httplib::Request& req, httplib::Response& res) {
      Reply r;
      {
        std::unique_lock lock(mu_);
        received_.push_back({req.method, req.path, req.body, req.get_header_value("Authorization")});
        r = script_[std::min(next_++, script_.size() - 1)];
        if (r.delay_s > 0)
          released_cv_.wait_for(lock, std::chrono::duration<double>(r.delay_s), [this] { return released_; });
      }
      res.status = r.status;
      for (const auto& [k, v] : r.headers) res.set_header(k, v);
      res.set_content(r.body, "application/json");
    };
    http_.Get(R"(/v1/.*)", handle);
    http_.Post(R"(/v1/.*)", handle);
    // A connection thread waits this long for the next keep-alive request even after stop(): short, so a
    // test whose client outlives the server does not wait 5 s. (Declare clients after the server anyway.)
    http_.set_keep_alive_timeout(1);
    port_ = http_.bind_to_any_port("127.0.0.1");
    if (port_ <= 0) throw std::runtime_error("FakeServer: could not bind a loopback port");
    // The socket listens from here on: connections made before the thread accepts wait in the backlog.
    thread_ = std::thread([this] { http_.listen_after_bind(); });
  }
  ~FakeServer() {
    {
      std::lock_guard lock(mu_);
      released_ = true;
    }
    released_cv_.notify_all();
    http_.stop();
    thread_.join();
  }
  std::string url(const std::string& path = "") const { return "http://127.0.0.1:" + std::to_string(port_) + path; }
  int port() const { return port_; }
  std::vector<Received> received() {
    std::lock_guard lock(mu_);
    return received_;
  }

 private:
  httplib::Server http_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mu_;
  std::condition_variable released_cv_;
  bool released_ = false;
  std::vector<Reply> script_;
  size_t next_ = 0;
  std::vector<Received> received_;
};

// A loopback port nobody listens on: bound by the kernel's choice, then closed.
int closed_port() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  socklen_t len = sizeof a;
  if (fd < 0 || bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) != 0)
    throw std::runtime_error("closed_port: no socket");
  close(fd);
  return ntohs(a.sin_port);
}

// Options for tests: waits recorded instead of slept.
OpenAIClientOptions options(const std::string& url, std::vector<double>* waits, int max_retries = 5) {
  OpenAIClientOptions o;
  o.base_url = url;
  o.max_retries = max_retries;
  o.timeout_s = 5;
  o.sleep = [waits](double s) { waits->push_back(s); };
  return o;
}

// A chat answer in OpenAI's documented shape (https://platform.openai.com/docs/api-reference/chat/object).
std::string chat_answer() {
  return R"({
    "id": "chatcmpl-abc", "object": "chat.completion", "created": 1700000000, "model": "m",
    "system_fingerprint": "fp_123",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hi there"}, "finish_reason": "length",
                 "logprobs": {"content": [
                   {"token": "Hi", "logprob": -0.25, "bytes": [72, 105],
                    "top_logprobs": [{"token": "Hello", "logprob": -2.5, "bytes": [72,101,108,108,111]},
                                     {"token": "Hi", "logprob": -0.25, "bytes": [72, 105]}]},
                   {"token": " there", "logprob": -1.5, "bytes": [32,116,104,101,114,101], "top_logprobs": []}]}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14}})";
}

// A legacy completions answer (https://platform.openai.com/docs/api-reference/completions/object).
std::string completion_answer() {
  return R"({
    "id": "cmpl-xyz", "object": "text_completion", "created": 1700000001, "model": "m",
    "choices": [{"index": 0, "text": " a time", "finish_reason": "stop",
                 "logprobs": {"tokens": [" a", " time"], "token_logprobs": [-0.5, -0.125],
                              "top_logprobs": [{" a": -0.5, " the": -1.0}, {" time": -0.125}],
                              "text_offset": [9, 11]}}],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})";
}

std::string error_body(const ApiError& e) { return to_body(e.body()); }

ApiRequest chat_request() {
  ApiRequest r;
  r.model = "m";
  r.messages = {{"system", "Be brief."}, {"user", "Say hi"}};
  r.max_tokens = 2;
  r.max_tokens_param = "max_completion_tokens";
  r.sampling.temperature = 0.5;
  r.seed = 7;
  r.logprobs = true;
  r.top_logprobs = 2;
  r.stop = {"\n"};
  r.stream = true;  // the client forces it off
  r.include_usage = true;
  return r;
}

TEST(OpenAIClient, ChatAndCompletionAnswersParse) {
  FakeServer server({{200, chat_answer()}, {200, completion_answer()}});
  std::vector<double> waits;
  OpenAIClientOptions o = options(server.url(), &waits);
  o.api_key = "sk-test-123";
  OpenAIClient client(o);
  EXPECT_EQ(client.base_url(), server.url("/v1"));

  const ParsedCompletion c = client.chat(chat_request());
  EXPECT_EQ(c.id, "chatcmpl-abc");
  EXPECT_EQ(c.system_fingerprint, "fp_123");
  ASSERT_EQ(c.choices.size(), 1u);
  EXPECT_EQ(c.choices[0].text, "Hi there");
  EXPECT_EQ(c.choices[0].finish_reason, "length");
  ASSERT_TRUE(c.choices[0].has_logprobs);
  ASSERT_EQ(c.choices[0].logprobs.size(), 2u);
  EXPECT_EQ(c.choices[0].logprobs[0].token, "Hi");
  EXPECT_EQ(c.choices[0].logprobs[0].logprob, -0.25);
  ASSERT_EQ(c.choices[0].logprobs[0].top.size(), 2u);
  EXPECT_EQ(c.choices[0].logprobs[0].top[0].token, "Hi");  // sorted by logprob
  EXPECT_EQ(c.choices[0].logprobs[0].top[1].token, "Hello");
  EXPECT_EQ(c.choices[0].logprobs[1].bytes, " there");
  ASSERT_TRUE(c.has_usage);
  EXPECT_EQ(c.usage.prompt_tokens, 12);
  EXPECT_EQ(c.usage.completion_tokens, 2);

  ApiRequest cr;
  cr.kind = Endpoint::completion;
  cr.prompt = "Once upon";
  cr.max_tokens = 2;
  cr.logprobs = true;
  cr.top_logprobs = 2;
  cr.stream = true;
  const ParsedCompletion p = client.complete(cr);
  ASSERT_EQ(p.choices.size(), 1u);
  EXPECT_EQ(p.object, "text_completion");
  EXPECT_EQ(p.choices[0].text, " a time");
  EXPECT_EQ(p.choices[0].finish_reason, "stop");
  ASSERT_EQ(p.choices[0].logprobs.size(), 2u);
  EXPECT_EQ(p.choices[0].logprobs[1].logprob, -0.125);
  EXPECT_EQ(p.choices[0].logprobs[1].text_offset, 11);
  ASSERT_EQ(p.choices[0].logprobs[0].top.size(), 2u);
  EXPECT_EQ(p.choices[0].logprobs[0].top[1].token, " the");

  // What the server received.
  const std::vector<Received> got = server.received();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].method, "POST");
  EXPECT_EQ(got[0].path, "/v1/chat/completions");
  EXPECT_EQ(got[0].authorization, "Bearer sk-test-123");
  const json chat = json::parse(got[0].body);
  EXPECT_EQ(chat["model"], "m");
  ASSERT_EQ(chat["messages"].size(), 2u);
  EXPECT_EQ(chat["messages"][0], json({{"role", "system"}, {"content", "Be brief."}}));
  EXPECT_EQ(chat["messages"][1]["content"], "Say hi");
  EXPECT_EQ(chat["max_completion_tokens"], 2);
  EXPECT_EQ(chat["temperature"], 0.5);
  EXPECT_EQ(chat["seed"], 7);
  EXPECT_EQ(chat["logprobs"], true);
  EXPECT_EQ(chat["top_logprobs"], 2);
  EXPECT_EQ(chat["stop"], json::array({"\n"}));
  EXPECT_FALSE(chat.contains("stream")) << chat.dump();
  EXPECT_FALSE(chat.contains("stream_options")) << chat.dump();
  EXPECT_EQ(got[1].path, "/v1/completions");
  const json comp = json::parse(got[1].body);
  EXPECT_EQ(comp["prompt"], "Once upon");
  EXPECT_EQ(comp["max_tokens"], 2);
  EXPECT_EQ(comp["logprobs"], 2);
  EXPECT_FALSE(comp.contains("stream"));

  const OpenAIClientStats& s = client.stats();
  EXPECT_EQ(s.requests, 2);
  EXPECT_EQ(s.retries, 0);
  EXPECT_EQ(s.prompt_tokens, 15);
  EXPECT_EQ(s.completion_tokens, 4);
  EXPECT_TRUE(waits.empty());
}

TEST(OpenAIClient, RetriesThrottleAndServerErrorThenSucceeds) {
  FakeServer server({{429, error_body(rate_limited("too many requests", 2)), {{"Retry-After", "2"}}},
                     {500, error_body(internal("boom"))},
                     {200, chat_answer()}});
  std::vector<double> waits;
  OpenAIClientOptions o = options(server.url("/v1/"), &waits);
  o.backoff_s = 0.5;
  OpenAIClient client(o);
  EXPECT_EQ(client.base_url(), server.url("/v1"));
  const ParsedCompletion c = client.chat(chat_request());
  EXPECT_EQ(c.choices.at(0).text, "Hi there");
  const OpenAIClientStats& s = client.stats();
  EXPECT_EQ(s.requests, 3);
  EXPECT_EQ(s.retries, 2);
  EXPECT_EQ(s.throttled, 1);
  EXPECT_EQ(s.server_errors, 1);
  EXPECT_EQ(s.transport_errors, 0);
  EXPECT_EQ(s.completion_tokens, 2);
  ASSERT_EQ(waits.size(), 2u);
  EXPECT_EQ(waits[0], 2.0);  // Retry-After, exactly
  // Retry 1 without Retry-After: backoff_s * 2^1 = 1 s, +-25% jitter.
  EXPECT_GE(waits[1], 0.75);
  EXPECT_LE(waits[1], 1.25);
  for (const Received& r : server.received()) EXPECT_EQ(r.authorization, "");  // no key, no header
}

TEST(OpenAIClient, SpentQuotaIsNotRetried) {
  // OpenAI's answer when the balance is spent: 429, type and code "insufficient_quota".
  FakeServer server({{429, error_body(ApiError(429, "insufficient_quota", "You exceeded your current quota", "",
                                               "insufficient_quota"))},
                     {200, chat_answer()}});
  std::vector<double> waits;
  OpenAIClient client(options(server.url(), &waits));
  expect_error([&] { client.chat(chat_request()); }, {"HTTP 429", "You exceeded your current quota", "will not help"});
  EXPECT_EQ(client.stats().requests, 1);
  EXPECT_EQ(client.stats().throttled, 1);
  EXPECT_TRUE(waits.empty());
}

TEST(OpenAIClient, RetryAfterIsCappedAndHttpDatesAreRead) {
  // An HTTP date 20 s ahead (RFC 9110 IMF-fixdate), and a Retry-After beyond the cap.
  char date[64];
  const std::time_t ahead = std::time(nullptr) + 20;
  std::tm tm{};
  gmtime_r(&ahead, &tm);
  std::strftime(date, sizeof date, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  FakeServer server({{503, error_body(unavailable("queue full")), {{"Retry-After", date}}},
                     {503, error_body(unavailable("queue full")), {{"Retry-After", "100"}}},
                     {200, chat_answer()}});
  std::vector<double> waits;
  OpenAIClientOptions o = options(server.url(), &waits);
  o.max_backoff_s = 30;
  OpenAIClient client(o);
  client.chat(chat_request());
  ASSERT_EQ(waits.size(), 2u);
  EXPECT_NEAR(waits[0], 20, 1.5);
  EXPECT_EQ(waits[1], 30);
  EXPECT_EQ(client.stats().server_errors, 2);
}

TEST(OpenAIClient, BadRequestThrowsAtOnceWithTheServersMessage) {
  FakeServer server({{400, error_body(bad_request("messages[1].content", "Invalid type for 'messages[1].content'",
                                                  "invalid_type"))}});
  std::vector<double> waits;
  OpenAIClient client(options(server.url(), &waits));
  expect_error([&] { client.chat(chat_request()); },
               {"POST " + server.url("/v1/chat/completions"), "HTTP 400", "invalid_request_error",
                "Invalid type for 'messages[1].content'", "param 'messages[1].content'", "code 'invalid_type'"});
  EXPECT_EQ(client.stats().requests, 1);
  EXPECT_EQ(client.stats().retries, 0);
  EXPECT_TRUE(waits.empty());
}

TEST(OpenAIClient, AuthErrorsAndNonOpenAIBodiesAreReported) {
  FakeServer server({{401, error_body(unauthorized("Incorrect API key provided"))},
                     {404, "<html><body>Not Found</body></html>"}});
  std::vector<double> waits;
  OpenAIClient client(options(server.url(), &waits));
  expect_error([&] { client.chat(chat_request()); },
               {"HTTP 401", "Incorrect API key provided", "wants an API key; none was given"});
  expect_error([&] { client.models(); },
               {"GET " + server.url("/v1/models"), "HTTP 404", "<html><body>Not Found", "check the base URL"});
  EXPECT_EQ(client.stats().requests, 2);
}

TEST(OpenAIClient, RetriesExhaustedSaysHowManyAttempts) {
  FakeServer server({{503, error_body(unavailable("the queue is full"))}});
  std::vector<double> waits;
  OpenAIClientOptions o = options(server.url(), &waits, /*max_retries=*/2);
  o.backoff_s = 0.5;
  OpenAIClient client(o);
  expect_error([&] { client.chat(chat_request()); },
               {server.url("/v1/chat/completions"), "HTTP 503", "the queue is full", "gave up after 3 attempts",
                "max_retries 2"});
  const OpenAIClientStats& s = client.stats();
  EXPECT_EQ(s.requests, 3);
  EXPECT_EQ(s.retries, 2);
  EXPECT_EQ(s.server_errors, 3);
  ASSERT_EQ(waits.size(), 2u);  // backoff_s * 2^i, +-25%
  EXPECT_GE(waits[0], 0.375);
  EXPECT_LE(waits[0], 0.625);
  EXPECT_GE(waits[1], 0.75);
  EXPECT_LE(waits[1], 1.25);
  EXPECT_EQ(server.received().size(), 3u);
}

TEST(OpenAIClient, BackoffDoublesWithJitterAndCap) {
  FakeServer server({{502, "bad gateway"}});
  std::vector<double> waits;
  OpenAIClientOptions o = options(server.url(), &waits, /*max_retries=*/4);
  o.backoff_s = 0.5;
  o.max_backoff_s = 1.5;
  OpenAIClient client(o);
  expect_error([&] { client.complete(ApiRequest{}); }, {"HTTP 502: 'bad gateway'", "gave up after 5 attempts"});
  ASSERT_EQ(waits.size(), 4u);
  const double base[] = {0.5, 1.0, 1.5, 1.5};  // min(cap, backoff_s * 2^i)
  for (size_t i = 0; i < 4; ++i) {
    EXPECT_GE(waits[i], 0.75 * base[i]) << i;
    EXPECT_LE(waits[i], std::min(1.5, 1.25 * base[i])) << i;
  }
}

TEST(OpenAIClient, TimeoutsAreTransportErrors) {
  // The server answers after 1.5 s; the client gives up on each attempt after 0.5 s.
  FakeServer server({{200, chat_answer(), {}, /*delay_s=*/1.5}});
  std::vector<double> waits;
  OpenAIClientOptions o = options(server.url(), &waits, /*max_retries=*/1);
  o.timeout_s = 0.5;
  OpenAIClient client(o);
  const auto t0 = std::chrono::steady_clock::now();
  expect_error([&] { client.chat(chat_request()); },
               {server.url("/v1/chat/completions"), "no complete answer within 0.5 s", "gave up after 2 attempts",
                "raise timeout_s"});
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(took, 2.5);  // two 0.5 s timeouts; waiting for the server would take 3 s
  const OpenAIClientStats& s = client.stats();
  EXPECT_EQ(s.requests, 2);
  EXPECT_EQ(s.transport_errors, 2);
  EXPECT_EQ(s.retries, 1);
}

TEST(OpenAIClient, UnreachablePortIsAClearError) {
  const int port = closed_port();
  std::vector<double> waits;
  OpenAIClient client(options("http://127.0.0.1:" + std::to_string(port), &waits, /*max_retries=*/2));
  expect_error([&] { client.models(); },
               {"GET http://127.0.0.1:" + std::to_string(port) + "/v1/models",
                "could not connect to 127.0.0.1:" + std::to_string(port), "gave up after 3 attempts",
                "check that the server is running"});
  EXPECT_EQ(client.stats().requests, 3);
  EXPECT_EQ(client.stats().transport_errors, 3);
  EXPECT_EQ(waits.size(), 2u);
}

TEST(OpenAIClient, MalformedAnswersAreNotOpenAICompatible) {
  FakeServer server({{200, "{\"choices\": [ oops"}, {200, R"({"object": "chat.completion"})"},
                     {200, R"({"error": {"message": "upstream failed", "type": "server_error"}})"}, {200, ""}});
  std::vector<double> waits;
  OpenAIClient client(options(server.url(), &waits));
  const std::string url = server.url("/v1/chat/completions");
  expect_error([&] { client.chat(chat_request()); }, {url, "HTTP 200", "not an OpenAI-compatible answer", "JSON"});
  expect_error([&] { client.chat(chat_request()); }, {url, "not an OpenAI-compatible answer", "'choices' is missing"});
  expect_error([&] { client.chat(chat_request()); }, {url, "upstream failed"});
  expect_error([&] { client.chat(chat_request()); }, {url, "not an OpenAI-compatible answer", "empty"});
  EXPECT_EQ(client.stats().requests, 4);  // none retried
  EXPECT_TRUE(waits.empty());
}

TEST(OpenAIClient, BaseUrls) {
  auto base = [](const std::string& url) {
    OpenAIClientOptions o;
    o.base_url = url;
    return OpenAIClient(o).base_url();
  };
  EXPECT_EQ(base("http://127.0.0.1:8080"), "http://127.0.0.1:8080/v1");
  EXPECT_EQ(base("http://127.0.0.1:8080/v1/"), "http://127.0.0.1:8080/v1");
  EXPECT_EQ(base("HTTP://localhost:80/openai"), "http://localhost/openai/v1");
  EXPECT_EQ(base("http://[::1]:9000"), "http://[::1]:9000/v1");

  expect_error([&] { base(""); }, {"base URL is empty", "http://host[:port][/path]"});
  expect_error([&] { base("ftp://example.com/v1"); }, {"ftp://example.com/v1", "unsupported scheme 'ftp'"});
  expect_error([&] { base("127.0.0.1:8080"); }, {"not a URL"});
  expect_error([&] { base("http://:8080/v1"); }, {"no host"});
  expect_error([&] { base("http://h:99999"); }, {"port '99999'"});
  expect_error([&] { base("http://h:80x"); }, {"port '80x'"});
  expect_error([&] { base("http://h/v1?key=1"); }, {"query"});
  expect_error([&] { base("http://user:pw@h/v1"); }, {"credentials"});
  expect_error([&] { base("http://h:8080/v1/chat/completions"); }, {"names an endpoint"});
  // Debian's cpp-httplib is built with OpenSSL and its pkg-config flags define CPPHTTPLIB_OPENSSL_SUPPORT,
  // which reach this file too (retort_serve links it PUBLIC).
#ifdef CPPHTTPLIB_OPENSSL_SUPPORT
  EXPECT_EQ(base("https://api.example.com/v1"), "https://api.example.com/v1");
#else
  expect_error([&] { base("https://api.example.com/v1"); }, {"https://api.example.com/v1", "no TLS support"});
#endif

  OpenAIClientOptions o;
  o.base_url = "http://h";
  o.timeout_s = 0;
  expect_error([&] { OpenAIClient c(o); }, {"timeout_s"});
}

TEST(OpenAIClient, ModelsListsIds) {
  FakeServer server({{200, R"({"object": "list", "data": [{"id": "smollm2", "object": "model", "owned_by": "retort"},
                                                          {"id": "gemma3", "object": "model"}]})"},
                     {200, R"({"object": "list", "data": {"id": "x"}})"}});
  std::vector<double> waits;
  OpenAIClientOptions o = options(server.url(), &waits);
  o.api_key = "k";
  OpenAIClient client(o);
  EXPECT_EQ(client.models(), (std::vector<std::string>{"smollm2", "gemma3"}));
  expect_error([&] { client.models(); }, {"GET " + server.url("/v1/models"), "'data' should be an array"});
  const std::vector<Received> got = server.received();
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(got[0].method, "GET");
  EXPECT_EQ(got[0].path, "/v1/models");
  EXPECT_EQ(got[0].authorization, "Bearer k");
}

// A real `retort serve` (the default model, no keys) on a free loopback port, stopped by SIGTERM.
class RetortServe {
 public:
  explicit RetortServe(const std::string& home) {
    log_ = home + "/serve.log";
    std::vector<std::string> args = {RETORT_CLI_PATH, "serve", "--port", "0", "--model", retort_test::smollm2_path(),
                                      "--parallel", "1", "--ctx-size", "256", "--no-keys"};
    std::vector<std::string> env = {"RETORT_HOME=" + home, "OMP_WAIT_POLICY=passive"};
    for (char** e = environ; *e; ++e)
      if (std::strncmp(*e, "RETORT_HOME=", 12) != 0 && std::strncmp(*e, "OMP_WAIT_POLICY=", 16) != 0) env.push_back(*e);
    std::vector<char*> argv, envp;
    for (auto& s : args) argv.push_back(s.data());
    argv.push_back(nullptr);
    for (auto& s : env) envp.push_back(s.data());
    envp.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, log_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    const int rc = posix_spawn(&pid_, argv[0], &fa, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) throw std::runtime_error("posix_spawn " + args[0] + " failed");
    const std::regex listening(R"(on http://127\.0\.0\.1:(\d+))");
    for (int i = 0; i < 600 && port_ == 0; ++i) {  // up to 60 s for the model to load
      std::smatch m;
      const std::string text = log();
      if (std::regex_search(text, m, listening)) port_ = std::stoi(m[1]);
      else if (waitpid(pid_, nullptr, WNOHANG) == pid_) {
        pid_ = 0;
        throw std::runtime_error("retort serve exited: " + text);
      } else std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (port_ == 0) throw std::runtime_error("retort serve did not start: " + log());
  }
  ~RetortServe() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    while (waitpid(pid_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }
  std::string log() const {
    std::ifstream f(log_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

 private:
  std::string log_;
  pid_t pid_ = 0;
  int port_ = 0;
};

TEST(OpenAIClient, RealRetortServe) {
  if (!std::filesystem::exists(retort_test::smollm2_path()))
    GTEST_SKIP() << "default model not found at " << retort_test::smollm2_path() << " (run scripts/setup.sh)";
  retort_test::TempDir home;
  RetortServe serve(home.path.string());
  OpenAIClientOptions o;
  o.base_url = serve.url();
  o.timeout_s = 60;
  o.max_retries = 0;
  OpenAIClient client(o);

  const std::vector<std::string> ids = client.models();
  ASSERT_EQ(ids.size(), 1u) << serve.log();
  ApiRequest r;
  r.model = ids[0];
  r.messages = {{"user", "What is the capital of France?"}};
  r.max_tokens = 4;
  r.sampling.temperature = 0;
  r.logprobs = true;
  r.top_logprobs = 2;
  const ParsedCompletion c = client.chat(r);
  ASSERT_EQ(c.choices.size(), 1u);
  EXPECT_FALSE(c.choices[0].text.empty());
  EXPECT_TRUE(c.choices[0].finish_reason == "length" || c.choices[0].finish_reason == "stop");
  EXPECT_TRUE(c.has_usage);
  EXPECT_LE(c.usage.completion_tokens, 4);
  EXPECT_FALSE(c.system_fingerprint.empty());
  ASSERT_TRUE(c.choices[0].has_logprobs);
  ASSERT_FALSE(c.choices[0].logprobs.empty());
  EXPECT_EQ(c.choices[0].logprobs[0].top.size(), 2u);

  ApiRequest q;
  q.model = ids[0];
  q.prompt = "Once upon a time";
  q.max_tokens = 3;
  q.logprobs = true;
  q.top_logprobs = 1;
  const ParsedCompletion p = client.complete(q);
  ASSERT_EQ(p.choices.size(), 1u);
  EXPECT_EQ(p.object, "text_completion");
  EXPECT_LE(p.usage.completion_tokens, 3);

  // The server's own refusal comes back with its message and param.
  ApiRequest bad = r;
  bad.top_logprobs = 50;
  expect_error([&] { client.chat(bad); }, {"HTTP 400", "top_logprobs"});

  EXPECT_EQ(client.stats().requests, 4);
  EXPECT_EQ(client.stats().prompt_tokens, c.usage.prompt_tokens + p.usage.prompt_tokens);
}

}  // namespace

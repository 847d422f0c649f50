// bench/serve_load.cpp — a closed-loop load generator for OpenAI-compatible servers (retort serve,
// llama.cpp's llama-server), printed as one JSON object. bench/run_serve_vs_llamacpp.sh drives it.
//
//   build/serve_load --port P [--host 127.0.0.1] [--keys K1,K2,...] --clients 64 --requests 10000 --mix mixed
//   build/serve_load --port P --clients 32 --mix stream --max-tokens 128 --duration 40 --warmup 10 --ramp-ms 50
//
// Each of --clients threads holds one keep-alive connection and sends its next request as soon as the
// previous one has ended (closed loop), until --requests have been sent or --duration seconds have passed
// (then the requests in flight finish); client c starts c * --ramp-ms after the first. Request i is a pure
// function of (--seed, --mix, i), so two servers get the very same requests. Every request sets
// "ignore_eos": true, so a correct server generates exactly max_tokens per choice; any other count is
// reported (wrong_token_count).
//
// Mixes:
//   mixed   /v1/completions (90%) and /v1/chat/completions (10%; most with a short system message);
//           prompts of 1–24 words (most short); max_tokens 1–16; half streamed (stream_options.include_usage),
//           the others n = 1 (5%: n = 2); 5% ask logprobs (top 5); half greedy, half sampled with a seed;
//           2% of the streamed ones with max_tokens >= 8 hang up after the first content chunk
//           (client_hang_ups: a server should cancel them; retort's ledger records them as 499).
//   stream  /v1/completions only, streamed with usage; prompts of --prompt-words-min..max words; max_tokens
//           uniform in [M/2, 3M/2], M = --max-tokens (clients drift apart instead of finishing in waves);
//           sampled (temperature 0.8, top_p 0.95, seed i).
//
// Numbers (times from the start of the run; tokens from each response's usage):
//   latency_ms      request sent to whole response received, every 200 response (p50/p90/p99/max)
//   ttft_ms         request sent to first content chunk, streamed requests started in the steady window
//   steady          the window [--warmup, end], end = --duration or, without it, the start of the last
//                   request sent (afterwards clients only drain): completion tokens that arrived in the
//                   window / its length. A streamed response's tokens are spread over its content chunks'
//                   arrival times; a non-streamed one's arrive with the response.
//   overall         all completion tokens / (last response - start)
//   requests_sent   requests sent (a request sent again on a fresh connection counts once; see
//                   stale_connection_retries): what a server's ledger should count.
#include <httplib.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

using nlohmann::json;
using clk = std::chrono::steady_clock;

namespace {

struct Options {
  std::string host = "127.0.0.1";
  int port = 0;
  std::vector<std::string> keys;  // client c sends keys[c % size]; none: no Authorization header
  int clients = 32;
  int64_t requests = 1000;        // at most this many requests (the whole run, all clients)
  double duration_s = 0;          // > 0: no new request after this many seconds
  double warmup_s = 5;            // the steady window starts here
  std::string mix = "mixed";      // mixed | stream
  int max_tokens = 128;           // stream mix
  int prompt_words_min = 16, prompt_words_max = 48;  // stream mix
  uint64_t seed = 1;
  int timeout_s = 300;            // per request, read timeout
  int ramp_ms = 0;                // client c starts c * ramp_ms after the first
};

// One request, a pure function of (seed, mix, index).
struct Spec {
  std::string path;
  std::string body;
  bool stream = false, chat = false;
  bool hang_up = false;  // the client closes the connection after the first content chunk
  int n = 1, max_tokens = 1;
};

// What happened to one request.
struct Outcome {
  int status = 0;                   // 0: no HTTP response (transport error)
  std::string error;                // transport error or error body, first 200 bytes
  double start = 0, end = 0;        // seconds since the run's start
  double first = -1;                // first content chunk (streamed); -1 none
  std::vector<double> chunk_times;  // content chunks' arrival (streamed)
  int64_t completion_tokens = -1, prompt_tokens = -1;  // from usage; -1 absent
  int stale_retries = 0;            // sent again: the kept-alive connection had been closed by the server
  bool stream = false, done = false;  // streamed: "data: [DONE]" seen
  bool hung_up = false;               // the client closed the connection on purpose (Spec::hang_up)
  int expected_tokens = 0;
};

// Words for prompts: short, common, one or two tokens each in most vocabularies.
const char* const kWords[] = {
    "the", "river", "morning", "quiet", "engine", "paper", "history", "light", "garden", "winter", "city", "stone",
    "bright", "small", "music", "window", "market", "letter", "summer", "mountain", "question", "answer", "people",
    "house", "water", "reason", "silver", "yellow", "forest", "language", "number", "simple", "machine", "careful",
    "story", "island", "travel", "kitchen", "friend", "north", "coffee", "evening", "school", "table", "science",
    "ocean", "printing", "press", "began", "wrote", "across", "between", "because", "often", "never", "always",
    "slowly", "under", "above", "after", "before", "around", "through", "inside"};
constexpr size_t kNumWords = sizeof(kWords) / sizeof(kWords[0]);

std::string words(std::mt19937_64& rng, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) {
    if (i) s += ' ';
    s += kWords[rng() % kNumWords];
  }
  if (!s.empty()) s[0] = char(std::toupper(static_cast<unsigned char>(s[0])));
  return s;
}

Spec make_spec(const Options& o, int64_t i) {
  std::mt19937_64 rng(o.seed * 0x9E3779B97F4A7C15ull + uint64_t(i));
  auto uniform = [&] { return std::uniform_real_distribution<double>(0, 1)(rng); };
  Spec s;
  json b;
  if (o.mix == "stream") {
    const int n_words = o.prompt_words_min + int(rng() % uint64_t(o.prompt_words_max - o.prompt_words_min + 1));
    s.path = "/v1/completions";
    s.stream = true;
    // Lengths spread around --max-tokens, so clients that started together do not finish together.
    s.max_tokens = std::max(1, o.max_tokens / 2 + int(rng() % uint64_t(o.max_tokens + 1)));
    b = {{"prompt", words(rng, n_words)}, {"max_tokens", s.max_tokens}, {"stream", true},
         {"stream_options", {{"include_usage", true}}}, {"ignore_eos", true}, {"temperature", 0.8},
         {"top_p", 0.95}, {"seed", i}};
  } else {
    s.chat = uniform() < 0.1;
    s.path = s.chat ? "/v1/chat/completions" : "/v1/completions";
    const double u = uniform();
    const int n_words = 1 + int(u * u * 24);  // 1–24, most short
    s.max_tokens = 1 + int(rng() % 16);
    s.stream = uniform() < 0.5;
    // Long enough that the server is still generating when the client goes: it must cancel the request and
    // still write its ledger row.
    s.hang_up = s.stream && s.max_tokens >= 8 && uniform() < 0.02;
    s.n = (!s.stream && uniform() < 0.05) ? 2 : 1;
    const bool logprobs = uniform() < 0.05;
    const std::string prompt = words(rng, n_words);
    if (s.chat) {
      // Most with a short system message; the others get the template's default one.
      b["messages"] = json::array();
      if (uniform() < 0.7) b["messages"].push_back({{"role", "system"}, {"content", "Be brief."}});
      b["messages"].push_back({{"role", "user"}, {"content", prompt}});
    } else {
      b["prompt"] = prompt;
    }
    b["max_tokens"] = s.max_tokens;
    b["ignore_eos"] = true;
    if (s.n != 1) b["n"] = s.n;
    if (s.stream) {
      b["stream"] = true;
      b["stream_options"] = {{"include_usage", true}};
    }
    if (uniform() < 0.5) {
      b["temperature"] = 0.0;
    } else {
      b["temperature"] = 0.7;
      b["top_p"] = 0.9;
      b["seed"] = i;
    }
    if (logprobs) {
      if (s.chat) {
        b["logprobs"] = true;
        b["top_logprobs"] = 5;
      } else {
        b["logprobs"] = 5;
      }
    }
  }
  s.body = b.dump();
  return s;
}

// One SSE "data:" payload of a streamed response.
void on_sse_data(const std::string& data, double now, Outcome& out) {
  if (data == "[DONE]") {
    out.done = true;
    return;
  }
  json j = json::parse(data, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    if (out.error.empty()) out.error = "unparsable SSE data: " + data.substr(0, 200);
    return;
  }
  if (j.contains("error")) {
    if (out.error.empty()) out.error = data.substr(0, 200);
    return;
  }
  if (auto u = j.find("usage"); u != j.end() && u->is_object()) {
    out.completion_tokens = u->value("completion_tokens", int64_t(-1));
    out.prompt_tokens = u->value("prompt_tokens", int64_t(-1));
  }
  if (auto c = j.find("choices"); c != j.end() && c->is_array()) {
    for (const json& ch : *c) {
      if (!ch.contains("finish_reason") || !ch["finish_reason"].is_null()) continue;  // the closing chunk
      if (auto d = ch.find("delta"); d != ch.end() && d->contains("role")) continue;  // chat's opening chunk
      out.chunk_times.push_back(now);
      if (out.first < 0) out.first = now;
    }
  }
}

// `reused`: the connection has carried a response before, so the server may have closed it since.
Outcome send_one(httplib::Client& cli, const Spec& s, const std::string& key, clk::time_point t0, bool reused) {
  auto since = [&] { return std::chrono::duration<double>(clk::now() - t0).count(); };
  Outcome out;
  out.stream = s.stream;
  out.expected_tokens = s.n * s.max_tokens;
  httplib::Request req;
  req.method = "POST";
  req.path = s.path;
  req.headers = {{"Content-Type", "application/json"}, {"Accept", s.stream ? "text/event-stream" : "application/json"}};
  if (!key.empty()) req.headers.emplace("Authorization", "Bearer " + key);
  req.body = s.body;
  std::string body, pending;  // pending: streamed bytes not yet split into events
  req.content_receiver = [&](const char* data, size_t n, uint64_t, uint64_t) {
    body.append(data, n);
    if (!s.stream) return true;
    const double now = since();
    pending.append(data, n);
    // Events end with a blank line; each "data: " line is one payload.
    size_t end;
    while ((end = pending.find("\n\n")) != std::string::npos) {
      std::istringstream event(pending.substr(0, end));
      pending.erase(0, end + 2);
      std::string line;
      while (std::getline(event, line)) {
        if (!line.empty() && line.back() == '\r') line.pop_back();
        if (line.rfind("data: ", 0) == 0) on_sse_data(line.substr(6), now, out);
        else if (line.rfind("error: ", 0) == 0 && out.error.empty()) out.error = line.substr(0, 200);
      }
    }
    if (s.hang_up && !out.chunk_times.empty()) {
      out.hung_up = true;
      return false;  // httplib closes the connection
    }
    return true;
  };
  out.start = since();
  httplib::Response res;
  httplib::Error err = httplib::Error::Success;
  bool ok = cli.send(req, res, err);
  // A server may close a kept-alive connection between two requests (llama-server does after every
  // stream; any server after its keep-alive timeout), and this client notices only when it reads. Nothing
  // came back, so the request never reached a handler: send it once more on a new connection, as HTTP
  // clients with a connection pool do.
  if (!ok && reused && body.empty() && (err == httplib::Error::Read || err == httplib::Error::Write)) {
    ++out.stale_retries;
    res = httplib::Response();
    err = httplib::Error::Success;
    ok = cli.send(req, res, err);
  }
  out.end = since();
  if (out.hung_up) return out;
  if (!ok) {
    out.status = 0;
    out.error = "transport: " + httplib::to_string(err);
    return out;
  }
  out.status = res.status;
  if (res.status != 200) {
    if (out.error.empty()) out.error = body.substr(0, 200);
    return out;
  }
  if (!s.stream) {
    json j = json::parse(body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.contains("usage")) {
      out.error = "unparsable response: " + body.substr(0, 200);
      return out;
    }
    out.completion_tokens = j["usage"].value("completion_tokens", int64_t(-1));
    out.prompt_tokens = j["usage"].value("prompt_tokens", int64_t(-1));
    if (!j.contains("choices") || j["choices"].size() != size_t(s.n)) out.error = "wrong number of choices";
  }
  return out;
}

double percentile(std::vector<double> v, double p) {  // nearest rank
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  const size_t k = size_t(std::max(1.0, std::ceil(p * double(v.size()))));
  return v[std::min(k, v.size()) - 1];
}

json summary_ms(const std::vector<double>& seconds) {
  if (seconds.empty()) return json{{"count", 0}};
  auto ms = [](double s) { return std::round(s * 1e5) / 100; };  // ms, 2 decimals
  return {{"count", seconds.size()}, {"p50", ms(percentile(seconds, 0.50))}, {"p90", ms(percentile(seconds, 0.90))},
          {"p99", ms(percentile(seconds, 0.99))}, {"max", ms(percentile(seconds, 1.0))}};
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::string cur;
  std::istringstream in(s);
  while (std::getline(in, cur, sep))
    if (!cur.empty()) out.push_back(cur);
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string k = argv[i];
    if (i + 1 >= argc) {
      std::fprintf(stderr, "serve_load: %s needs a value\n", k.c_str());
      return 2;
    }
    const std::string v = argv[++i];
    if (k == "--host") o.host = v;
    else if (k == "--port") o.port = std::stoi(v);
    else if (k == "--keys") o.keys = split(v, ',');
    else if (k == "--clients") o.clients = std::stoi(v);
    else if (k == "--requests") o.requests = std::stoll(v);
    else if (k == "--duration") o.duration_s = std::stod(v);
    else if (k == "--warmup") o.warmup_s = std::stod(v);
    else if (k == "--mix") o.mix = v;
    else if (k == "--max-tokens") o.max_tokens = std::stoi(v);
    else if (k == "--prompt-words-min") o.prompt_words_min = std::stoi(v);
    else if (k == "--prompt-words-max") o.prompt_words_max = std::stoi(v);
    else if (k == "--seed") o.seed = std::stoull(v);
    else if (k == "--timeout") o.timeout_s = std::stoi(v);
    else if (k == "--ramp-ms") o.ramp_ms = std::stoi(v);
    else {
      std::fprintf(stderr, "serve_load: unknown option %s (see the comment at the top of bench/serve_load.cpp)\n",
                   k.c_str());
      return 2;
    }
  }
  if (o.port <= 0 || o.clients < 1 || o.requests < 1 || (o.mix != "mixed" && o.mix != "stream") ||
      o.prompt_words_min < 1 || o.prompt_words_max < o.prompt_words_min || o.max_tokens < 1) {
    std::fprintf(stderr, "serve_load: need --port, --clients >= 1, --requests >= 1, --mix mixed|stream, "
                         "1 <= --prompt-words-min <= --prompt-words-max, --max-tokens >= 1\n");
    return 2;
  }

  std::atomic<int64_t> next{0};
  std::mutex mu;
  std::vector<Outcome> outcomes;
  outcomes.reserve(size_t(o.requests));
  const clk::time_point t0 = clk::now();
  std::vector<std::thread> threads;
  for (int c = 0; c < o.clients; ++c) {
    threads.emplace_back([&, c] {
      const std::string key = o.keys.empty() ? "" : o.keys[size_t(c) % o.keys.size()];
      httplib::Client cli(o.host, o.port);
      cli.set_keep_alive(true);
      cli.set_tcp_nodelay(true);
      cli.set_connection_timeout(10, 0);
      cli.set_read_timeout(o.timeout_s, 0);
      cli.set_write_timeout(30, 0);
      std::vector<Outcome> mine;
      bool reused = false;
      std::this_thread::sleep_for(std::chrono::milliseconds(int64_t(c) * o.ramp_ms));
      for (;;) {
        if (o.duration_s > 0 && std::chrono::duration<double>(clk::now() - t0).count() >= o.duration_s) break;
        const int64_t i = next.fetch_add(1);
        if (i >= o.requests) break;
        mine.push_back(send_one(cli, make_spec(o, i), key, t0, reused));
        reused = mine.back().status != 0 && !mine.back().hung_up;
      }
      std::lock_guard<std::mutex> lock(mu);
      for (auto& x : mine) outcomes.push_back(std::move(x));
    });
  }
  for (auto& t : threads) t.join();

  // ---- summary ----
  std::map<std::string, int64_t> by_status;
  int64_t n_5xx = 0, transport = 0, wrong_count = 0, incomplete = 0, other_errors = 0;
  int64_t completion = 0, prompt = 0, streamed = 0, stale = 0, hung_up = 0;
  double last_end = 0, last_start = 0;
  std::vector<std::string> samples;  // a few error messages
  std::vector<double> latency;
  for (const Outcome& x : outcomes) {
    stale += x.stale_retries;
    if (x.hung_up) {  // not a response: counted apart
      ++hung_up;
      continue;
    }
    ++by_status[std::to_string(x.status)];
    last_end = std::max(last_end, x.end);
    last_start = std::max(last_start, x.start);
    if (x.status >= 500) ++n_5xx;
    if (x.status == 0) ++transport;
    bool bad = x.status != 200;
    if (x.status == 200) {
      latency.push_back(x.end - x.start);
      if (x.stream) ++streamed;
      if (x.stream && !x.done) ++incomplete, bad = true;
      if (x.completion_tokens != x.expected_tokens) ++wrong_count, bad = true;
      if (!x.error.empty()) ++other_errors, bad = true;
      completion += std::max<int64_t>(0, x.completion_tokens);
      prompt += std::max<int64_t>(0, x.prompt_tokens);
    }
    if (bad && samples.size() < 5)
      samples.push_back("status " + std::to_string(x.status) + (x.stream ? " (streamed" : " (not streamed") +
                        ", " + std::to_string(x.start) + "-" + std::to_string(x.end) + " s): " +
                        (x.error.empty() ? "tokens " + std::to_string(x.completion_tokens) + " != expected " +
                                               std::to_string(x.expected_tokens)
                                         : x.error));
  }
  const double w0 = std::min(o.warmup_s, last_start);
  const double w1 = o.duration_s > 0 ? std::min(o.duration_s, last_end) : last_start;
  double window_tokens = 0;
  int64_t window_done = 0;
  std::vector<double> ttft, ttft_all;
  for (const Outcome& x : outcomes) {
    if (x.status != 200 || x.completion_tokens <= 0) continue;
    if (x.end >= w0 && x.end <= w1) ++window_done;
    if (x.stream && !x.chunk_times.empty()) {
      const double per_chunk = double(x.completion_tokens) / double(x.chunk_times.size());
      for (double t : x.chunk_times)
        if (t >= w0 && t <= w1) window_tokens += per_chunk;
    } else if (x.end >= w0 && x.end <= w1) {
      window_tokens += double(x.completion_tokens);
    }
    if (x.first >= 0) {
      ttft_all.push_back(x.first - x.start);
      if (x.start >= w0 && x.start <= w1) ttft.push_back(x.first - x.start);
    }
  }
  const double window = w1 - w0;
  auto r1 = [](double v) { return std::round(v * 10) / 10; };
  auto r2 = [](double v) { return std::round(v * 100) / 100; };
  json j = {
      {"target", "http://" + o.host + ":" + std::to_string(o.port)},
      {"mix", o.mix},
      {"clients", o.clients},
      {"seed", o.seed},
      {"requests_sent", outcomes.size()},
      {"responses_by_status", by_status},
      {"responses_5xx", n_5xx},
      {"transport_errors", transport},
      {"stale_connection_retries", stale},
      {"client_hang_ups", hung_up},
      {"wrong_token_count", wrong_count},
      {"incomplete_streams", incomplete},
      {"other_errors", other_errors},
      {"error_samples", samples},
      {"streamed", streamed},
      {"prompt_tokens", prompt},
      {"completion_tokens", completion},
      {"latency_ms", summary_ms(latency)},
      {"ttft_ms", summary_ms(ttft)},
      {"ttft_ms_all", summary_ms(ttft_all)},
      {"overall", {{"wall_s", r2(last_end)}, {"completion_tok_s", r1(completion / std::max(1e-9, last_end))},
                   {"requests_per_s", r1(double(outcomes.size()) / std::max(1e-9, last_end))}}},
      {"steady", {{"from_s", r2(w0)}, {"to_s", r2(w1)},
                  {"completion_tok_s", window > 0 ? r1(window_tokens / window) : 0.0},
                  {"requests_per_s", window > 0 ? r1(double(window_done) / window) : 0.0}}},
  };
  if (o.mix == "stream") {
    j["max_tokens"] = o.max_tokens;
    j["prompt_words"] = {o.prompt_words_min, o.prompt_words_max};
  }
  std::printf("%s\n", j.dump(1).c_str());
  return 0;
}

// The OpenAI wire format (serve/openai_schema.h): request validation naming the field, response and stream
// bodies, the SSE framing, logprobs (raw, rounded, invalid UTF-8 tokens), and the client side reading back
// our own bodies and hand-written samples of OpenAI's documented shapes
// (https://platform.openai.com/docs/api-reference/chat/object, .../chat/streaming,
// https://platform.openai.com/docs/api-reference/completions/object).
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "retort/serve/openai_schema.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"

using namespace retort;
using nlohmann::json;

namespace {

const Tokenizer& smollm2() {
  static const Tokenizer tok = Tokenizer::from_hf_json(std::string(RETORT_TEST_DATA) + "/tokenizer/smollm2/tokenizer.json",
                                                       std::string(RETORT_TEST_DATA) +
                                                           "/tokenizer/smollm2/tokenizer_config.json");
  return tok;
}

int32_t eos() { return *smollm2().token_id("<|im_end|>"); }

// Runs f, expects an ApiError with this status, param and code; returns it.
template <class F>
ApiError expect_api_error(F&& f, int status, const std::string& param, const std::string& code = "") {
  try {
    f();
  } catch (const ApiError& e) {
    EXPECT_EQ(e.status, status) << e.what();
    EXPECT_EQ(e.param, param) << e.what();
    if (!code.empty()) {
      EXPECT_EQ(e.code, code) << e.what();
    }
    return e;
  }
  ADD_FAILURE() << "expected ApiError for param " << param;
  return ApiError(0, "", "");
}

json chat_body() {
  return json::parse(R"({"model": "m", "messages": [{"role": "system", "content": "Be brief."},
                                                     {"role": "user", "content": "Hi"},
                                                     {"role": "assistant", "content": "Hello"},
                                                     {"role": "user", "content": "Again"}]})");
}

json completion_body() { return json::parse(R"({"model": "m", "prompt": "Once upon a time"})"); }

// A token with raw logprob `lp` and alternatives: itself, then `alts` at lp-1, lp-2, ...; processed values
// are the raw ones minus 0.5 (to see which set a response reports).
GeneratedToken gen(int32_t id, float lp, std::vector<int32_t> alts = {}, bool self_in_top = true) {
  GeneratedToken g;
  g.token = id;
  g.logprob_raw = lp;
  g.logprob = lp - 0.5f;
  float v = lp;
  if (self_in_top) {
    g.top_raw.push_back({id, lp});
    g.top.push_back({id, lp - 0.5f});
  }
  for (int32_t a : alts) {
    v -= 1.0f;
    g.top_raw.push_back({a, v});
    g.top.push_back({a, v - 0.5f});
  }
  return g;
}

std::vector<GeneratedToken> gens(const std::vector<int32_t>& ids) {
  std::vector<GeneratedToken> out;
  for (size_t i = 0; i < ids.size(); ++i)
    out.push_back(gen(ids[i], -0.125f * float(i + 1), {int32_t(100 + i), int32_t(200 + i), int32_t(300 + i)}));
  return out;
}

// What the engine does with a token stream (decode/generate.cpp, Generator::advance): lossy decode, the
// EOS token not decoded, the text cut at the first stop string, stream pieces held back while they could
// begin a stop string. Returns the (token, piece) callbacks and the result.
struct Simulated {
  std::vector<std::pair<GeneratedToken, std::string>> steps;
  GenerationResult result;
};

Simulated simulate(const std::vector<GeneratedToken>& toks, const std::vector<std::string>& stop, int64_t prompt_tokens = 7) {
  const Tokenizer& tok = smollm2();
  StreamDecoder dec(tok);
  Simulated sim;
  std::string text;
  size_t emitted = 0;
  for (size_t i = 0; i < toks.size(); ++i) {
    const GeneratedToken& g = toks[i];
    const bool eog = g.token == eos();
    bool stopped = false;
    auto append = [&](const std::string& piece) {
      text += piece;
      for (const std::string& s : stop) {
        const size_t pos = text.find(s);
        if (pos != std::string::npos) {
          text.resize(pos);
          stopped = true;
        }
      }
    };
    if (!eog) append(dec.push(g.token));
    const char* reason = eog || stopped ? "stop" : i + 1 == toks.size() ? "length" : nullptr;
    if (reason && !stopped) append(dec.flush());
    size_t hold = 0;
    for (const std::string& s : stop)
      for (size_t l = std::min(s.size() - 1, text.size()); l > hold; --l)
        if (text.compare(text.size() - l, l, s, 0, l) == 0) hold = l;
    const size_t safe = reason ? text.size() : text.size() - hold;
    std::string piece;
    if (safe > emitted) {
      piece = text.substr(emitted, safe - emitted);
      emitted = safe;
    }
    sim.result.tokens.push_back(g);
    sim.steps.push_back({g, piece});
    if (reason) {
      sim.result.finish_reason = stopped && !eog ? "stop" : reason;
      break;
    }
  }
  sim.result.text = text;
  sim.result.prompt_tokens = prompt_tokens;
  return sim;
}

ResponseMeta meta(Endpoint kind) {
  ResponseMeta m;
  m.id = kind == Endpoint::chat ? "chatcmpl-test" : "cmpl-test";
  m.created = 1700000000;
  m.model = "smollm2";
  m.system_fingerprint = "fp_0123456789ab";
  return m;
}

json reparse(const OrderedJson& j) { return json::parse(to_body(j)); }

bool valid_utf8(const std::string& s) { return lossy_utf8(s) == s; }

// Token ids of `text` with at least one token that is not valid UTF-8 on its own (split characters).
std::vector<int32_t> split_char_ids(const std::string& text) {
  const std::vector<int32_t> ids = smollm2().encode(text);
  bool any = false;
  for (int32_t id : ids) any |= !valid_utf8(smollm2().token_bytes(id));
  EXPECT_TRUE(any) << "expected a token of '" << text << "' that splits a character";
  return ids;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Errors and bodies

TEST(OpenAiErrors, BodyShape) {
  const ApiError e = bad_request("messages[2].content", "Invalid type", "invalid_type");
  EXPECT_EQ(to_body(e.body()),
            R"({"error":{"message":"Invalid type","type":"invalid_request_error","param":"messages[2].content","code":"invalid_type"}})");
  const ApiError n = internal("boom");
  EXPECT_EQ(n.status, 500);
  EXPECT_EQ(to_body(n.body()), R"({"error":{"message":"boom","type":"server_error","param":null,"code":null}})");
  const ApiError m = not_found_model("gpt-9");
  EXPECT_EQ(m.status, 404);
  EXPECT_EQ(m.body()["error"]["code"], "model_not_found");
  EXPECT_EQ(m.body()["error"]["param"], "model");
  EXPECT_NE(std::string(m.what()).find("`gpt-9`"), std::string::npos);
  EXPECT_EQ(unauthorized("Incorrect API key provided.").status, 401);
  EXPECT_EQ(unauthorized("x").type, "authentication_error");
  EXPECT_EQ(forbidden("x").status, 403);
  EXPECT_EQ(too_large(1 << 20).status, 413);
  const ApiError r = rate_limited("Rate limit reached: 60 requests per minute.", 7);
  EXPECT_EQ(r.status, 429);
  EXPECT_EQ(r.type, "rate_limit_error");
  EXPECT_EQ(r.code, "rate_limit_exceeded");
  EXPECT_EQ(r.retry_after_s, 7);
  EXPECT_EQ(unavailable("queue full").status, 503);
  EXPECT_EQ(not_found_route("GET", "/v2/x").status, 404);
  // Invalid UTF-8 in a message never breaks the body.
  const ApiError u = bad_request("x", "bad \xff byte");
  EXPECT_NO_THROW(to_body(u.body()));
  EXPECT_EQ(u.body()["error"]["message"], "bad \xEF\xBF\xBD byte");
}

TEST(OpenAiErrors, ParseBody) {
  EXPECT_EQ(parse_body(R"({"a": 1})")["a"], 1);
  ApiError e = expect_api_error([] { parse_body(R"({"model": "m", "messages": [}")"); }, 400, "", "invalid_json");
  EXPECT_NE(std::string(e.what()).find("body is not valid JSON: "), std::string::npos) << e.what();
  EXPECT_NE(std::string(e.what()).find(" at byte 29"), std::string::npos) << e.what();
  EXPECT_EQ(std::string(e.what()).find("last read"), std::string::npos) << e.what();
  e = expect_api_error([] { parse_body("  \n"); }, 400, "", "invalid_json");
  EXPECT_NE(std::string(e.what()).find("empty"), std::string::npos);
  e = expect_api_error([] { parse_body("[1, 2]"); }, 400, "", "invalid_json");
  EXPECT_NE(std::string(e.what()).find("must be a JSON object, got an array"), std::string::npos) << e.what();
  expect_api_error([] { parse_body("\"str\""); }, 400, "", "invalid_json");
  expect_api_error([] { parse_body("{\"a\": \"\xff\"}"); }, 400, "", "invalid_json");  // invalid UTF-8
  expect_api_error([] { parse_body("{\"a\": 1} trailing"); }, 400, "", "invalid_json");
  e = expect_api_error([] { parse_body(R"({"temperature": 1e400})"); }, 400, "", "invalid_json");  // beyond double
  EXPECT_NE(std::string(e.what()).find("number overflow"), std::string::npos) << e.what();
  EXPECT_EQ(std::string(e.what()).find("[json.exception"), std::string::npos) << e.what();
  // Hostile nesting: refused, no stack overflow.
  const std::string deep = "{\"a\":" + std::string(200000, '[') + std::string(200000, ']') + "}";
  e = expect_api_error([&] { parse_body(deep); }, 400, "", "invalid_json");
  EXPECT_NE(std::string(e.what()).find("nested deeper"), std::string::npos);
  std::string ok = "{\"a\":" + std::string(60, '[') + std::string(60, ']') + "}";
  EXPECT_NO_THROW(parse_body(ok));
}

// ---------------------------------------------------------------------------------------------------------
// Chat requests

TEST(OpenAiChatRequest, ParsesEveryField) {
  json b = chat_body();
  b["messages"][0]["role"] = "developer";
  b["messages"][1]["content"] = json::parse(R"([{"type": "text", "text": "Hi"}, {"type": "text", "text": "there"}])");
  b["messages"][2]["content"] = nullptr;  // an assistant turn may be empty
  b["max_tokens"] = 50;
  b["max_completion_tokens"] = 40;
  b["temperature"] = 0.7;
  b["top_p"] = 0.9;
  b["top_k"] = 40;
  b["min_p"] = 0.05;
  b["seed"] = -3;
  b["stop"] = {"\n\n", "END"};
  b["n"] = 3;
  b["stream"] = true;
  b["stream_options"] = {{"include_usage", true}};
  b["logprobs"] = true;
  b["top_logprobs"] = 5;
  b["user"] = "alice";
  b["min_tokens"] = 2;
  b["ignore_eos"] = true;
  // Neutral values of refused features, and unknown fields, are accepted.
  b["presence_penalty"] = 0;
  b["frequency_penalty"] = 0.0;
  b["repetition_penalty"] = 1;
  b["logit_bias"] = json::object();
  b["response_format"] = {{"type", "text"}};
  b["tools"] = json::array();
  b["tool_choice"] = "none";
  b["parallel_tool_calls"] = false;
  b["metadata"] = {{"k", "v"}};
  b["store"] = false;
  b["some_future_field"] = {1, 2, 3};
  const ApiRequest r = parse_chat_request(b);
  EXPECT_EQ(r.kind, Endpoint::chat);
  EXPECT_EQ(r.model, "m");
  ASSERT_EQ(r.messages.size(), 4u);
  EXPECT_EQ(r.messages[0].role, "system");
  EXPECT_EQ(r.messages[0].content, "Be brief.");
  EXPECT_EQ(r.messages[1].content, "Hi\nthere");
  EXPECT_EQ(r.messages[2].role, "assistant");
  EXPECT_EQ(r.messages[2].content, "");
  ASSERT_TRUE(r.max_tokens);
  EXPECT_EQ(*r.max_tokens, 40);  // max_completion_tokens wins
  EXPECT_EQ(r.max_tokens_param, "max_completion_tokens");
  EXPECT_DOUBLE_EQ(r.sampling.temperature, 0.7);
  EXPECT_DOUBLE_EQ(r.sampling.top_p, 0.9);
  EXPECT_EQ(r.sampling.top_k, 40);
  EXPECT_DOUBLE_EQ(r.sampling.min_p, 0.05);
  EXPECT_EQ(r.seed, -3);
  EXPECT_EQ(r.stop, (std::vector<std::string>{"\n\n", "END"}));
  EXPECT_EQ(r.n, 3);
  EXPECT_TRUE(r.stream);
  EXPECT_TRUE(r.include_usage);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 5);
  EXPECT_EQ(r.user, "alice");
  EXPECT_EQ(r.min_tokens, 2);
  EXPECT_TRUE(r.ignore_eos);
}

TEST(OpenAiChatRequest, Defaults) {
  json b = chat_body();
  b.erase("model");
  b["temperature"] = nullptr;  // null = not given
  b["stop"] = "x";
  b["top_k"] = -1;             // vLLM's "off"
  b["top_logprobs"] = 0;       // harmless without logprobs
  b["max_tokens"] = 12.0;      // an integral decimal is an integer (pydantic)
  const ApiRequest r = parse_chat_request(b);
  EXPECT_EQ(r.model, "");
  EXPECT_EQ(*r.max_tokens, 12);
  EXPECT_EQ(r.max_tokens_param, "max_tokens");
  EXPECT_DOUBLE_EQ(r.sampling.temperature, 1.0);
  EXPECT_EQ(r.sampling.top_k, 0);
  EXPECT_EQ(r.stop, std::vector<std::string>{"x"});
  EXPECT_EQ(r.n, 1);
  EXPECT_FALSE(r.stream);
  EXPECT_FALSE(r.logprobs);
  EXPECT_FALSE(r.seed.has_value());
  EXPECT_FALSE(parse_chat_request(chat_body()).max_tokens.has_value());  // up to the context
}

TEST(OpenAiChatRequest, EveryRefusalNamesTheField) {
  struct Case {
    const char* patch;  // merged into a valid body (null removes a field)
    const char* param;
    const char* code;
  };
  const std::vector<Case> cases = {
      {R"({"messages": null})", "messages", "missing_required_parameter"},
      {R"({"messages": "hi"})", "messages", "invalid_type"},
      {R"({"messages": []})", "messages", "empty_array"},
      {R"({"messages": [{"role": "user", "content": "a"}, 5]})", "messages[1]", "invalid_type"},
      {R"({"messages": [{"content": "a"}]})", "messages[0].role", "missing_required_parameter"},
      {R"({"messages": [{"role": 1, "content": "a"}]})", "messages[0].role", "invalid_type"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "robot", "content": "b"}]})", "messages[1].role",
       "invalid_value"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                        {"role": "tool", "content": "c", "tool_call_id": "x"}]})", "messages[2].role",
       "unsupported_value"},
      {R"({"messages": [{"role": "user"}]})", "messages[0].content", "missing_required_parameter"},
      {R"({"messages": [{"role": "user", "content": null}]})", "messages[0].content", "missing_required_parameter"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": 5}]})", "messages[1].content",
       "invalid_type"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "a"},
                        {"type": "image_url", "image_url": {"url": "http://x"}}]}]})", "messages[0].content[1].type",
       "unsupported_value"},
      {R"({"messages": [{"role": "user", "content": [{"type": "text"}]}]})", "messages[0].content[0].text",
       "missing_required_parameter"},
      {R"({"messages": [{"role": "user", "content": ["a"]}]})", "messages[0].content[0]", "invalid_type"},
      {R"({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": null,
                        "tool_calls": [{"id": "1"}]}]})", "messages[1].tool_calls", "unsupported_parameter"},
      {R"({"model": 5})", "model", "invalid_type"},
      {R"({"temperature": "hot"})", "temperature", "invalid_type"},
      {R"({"temperature": 2.5})", "temperature", "decimal_above_max_value"},
      {R"({"temperature": -0.1})", "temperature", "decimal_below_min_value"},
      {R"({"top_p": 0})", "top_p", "decimal_below_min_value"},
      {R"({"top_p": 1.01})", "top_p", "decimal_above_max_value"},
      {R"({"top_k": -2})", "top_k", "integer_below_min_value"},
      {R"({"top_k": "5"})", "top_k", "invalid_type"},
      {R"({"top_k": 2.5})", "top_k", "invalid_type"},
      {R"({"min_p": 1.5})", "min_p", "decimal_above_max_value"},
      {R"({"seed": "x"})", "seed", "invalid_type"},
      {R"({"seed": 18446744073709551615})", "seed", "integer_above_max_value"},
      {R"({"stop": ""})", "stop", "invalid_value"},
      {R"({"stop": ["a", "b", "c", "d", "e"]})", "stop", "array_above_max_length"},
      {R"({"stop": ["a", 3]})", "stop[1]", "invalid_type"},
      {R"({"stop": ["a", ""]})", "stop[1]", "invalid_value"},
      {R"({"stop": 7})", "stop", "invalid_type"},
      {R"({"n": 0})", "n", "integer_below_min_value"},
      {R"({"n": 17})", "n", "integer_above_max_value"},
      {R"({"n": 1.5})", "n", "invalid_type"},
      {R"({"stream": "yes"})", "stream", "invalid_type"},
      {R"({"stream_options": {"include_usage": true}})", "stream_options", "invalid_value"},
      {R"({"stream": true, "stream_options": {"include_usage": "x"}})", "stream_options.include_usage", "invalid_type"},
      {R"({"stream": true, "stream_options": [1]})", "stream_options", "invalid_type"},
      {R"({"logprobs": 1})", "logprobs", "invalid_type"},
      {R"({"logprobs": true, "top_logprobs": 21})", "top_logprobs", "integer_above_max_value"},
      {R"({"logprobs": true, "top_logprobs": -1})", "top_logprobs", "integer_below_min_value"},
      {R"({"top_logprobs": 3})", "top_logprobs", "invalid_value"},
      {R"({"logprobs": false, "top_logprobs": 3})", "top_logprobs", "invalid_value"},
      {R"({"max_tokens": 0})", "max_tokens", "integer_below_min_value"},
      {R"({"max_tokens": "5"})", "max_tokens", "invalid_type"},
      {R"({"max_completion_tokens": -1})", "max_completion_tokens", "integer_below_min_value"},
      {R"({"max_tokens": 5, "min_tokens": 10})", "min_tokens", "invalid_value"},
      {R"({"min_tokens": -1})", "min_tokens", "integer_below_min_value"},
      {R"({"presence_penalty": 0.5})", "presence_penalty", "unsupported_value"},
      {R"({"frequency_penalty": -1})", "frequency_penalty", "unsupported_value"},
      {R"({"frequency_penalty": "x"})", "frequency_penalty", "invalid_type"},
      {R"({"repetition_penalty": 1.1})", "repetition_penalty", "unsupported_value"},
      {R"({"logit_bias": {"50256": -100}})", "logit_bias", "unsupported_parameter"},
      {R"({"logit_bias": [1]})", "logit_bias", "invalid_type"},
      {R"({"response_format": {"type": "json_object"}})", "response_format.type", "unsupported_value"},
      {R"({"response_format": {}})", "response_format.type", "missing_required_parameter"},
      {R"({"tools": [{"type": "function", "function": {"name": "f"}}]})", "tools", "unsupported_parameter"},
      {R"({"functions": [{"name": "f"}]})", "functions", "unsupported_parameter"},
      {R"({"tool_choice": "required"})", "tool_choice", "unsupported_value"},
      {R"({"tool_choice": {"type": "function", "function": {"name": "f"}}})", "tool_choice", "unsupported_value"},
      {R"({"user": 5})", "user", "invalid_type"},
      {R"({"ignore_eos": 1})", "ignore_eos", "invalid_type"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.patch);
    json b = chat_body();
    b.merge_patch(json::parse(c.patch));
    const ApiError e = expect_api_error([&] { parse_chat_request(b); }, 400, c.param, c.code);
    EXPECT_EQ(e.type, "invalid_request_error");
    const std::string msg = e.what();
    EXPECT_NE(msg.find(c.param), std::string::npos) << msg;  // the message names the field too
  }
  // An explicit null inside messages[] is an element, not "absent".
  json b = chat_body();
  b["messages"][1] = nullptr;
  expect_api_error([&] { parse_chat_request(b); }, 400, "messages[1]", "invalid_type");
}

TEST(OpenAiChatRequest, MessagesOfTypes) {
  // The wrong-type message says what was expected and what came (OpenAI's wording).
  json b = chat_body();
  b["temperature"] = "hot";
  const ApiError e = expect_api_error([&] { parse_chat_request(b); }, 400, "temperature", "invalid_type");
  EXPECT_STREQ(e.what(), "Invalid type for 'temperature': expected a number, but got a string instead.");
  b = chat_body();
  b["n"] = 20;
  const ApiError n = expect_api_error([&] { parse_chat_request(b); }, 400, "n");
  EXPECT_STREQ(n.what(), "Invalid 'n': integer above maximum value. Expected a value <= 16, but got 20 instead.");
}

// ---------------------------------------------------------------------------------------------------------
// Completions requests

TEST(OpenAiCompletionRequest, PromptForms) {
  json b = completion_body();
  ApiRequest r = parse_completion_request(b);
  EXPECT_EQ(r.kind, Endpoint::completion);
  EXPECT_EQ(r.prompt, "Once upon a time");
  EXPECT_FALSE(r.prompt_is_ids);
  EXPECT_EQ(*r.max_tokens, 16);  // the legacy default
  EXPECT_FALSE(r.logprobs);

  b["prompt"] = {"only one"};
  EXPECT_EQ(parse_completion_request(b).prompt, "only one");
  b["prompt"] = {1, 2, 3};
  r = parse_completion_request(b);
  EXPECT_TRUE(r.prompt_is_ids);
  EXPECT_EQ(r.prompt_ids, (std::vector<int32_t>{1, 2, 3}));
  b["prompt"] = json::parse("[[4, 5]]");
  EXPECT_EQ(parse_completion_request(b).prompt_ids, (std::vector<int32_t>{4, 5}));
  b["prompt"] = "";
  EXPECT_EQ(parse_completion_request(b).prompt, "");

  b = completion_body();
  b["logprobs"] = 0;  // the sampled token's logprob only
  b["max_tokens"] = 100;
  b["echo"] = false;
  b["best_of"] = 1;
  b["suffix"] = "";
  r = parse_completion_request(b);
  EXPECT_TRUE(r.logprobs);
  EXPECT_EQ(r.top_logprobs, 0);
  EXPECT_EQ(*r.max_tokens, 100);
  b["logprobs"] = 5;
  EXPECT_EQ(parse_completion_request(b).top_logprobs, 5);
}

TEST(OpenAiCompletionRequest, EveryRefusalNamesTheField) {
  struct Case {
    const char* patch;
    const char* param;
    const char* code;
  };
  const std::vector<Case> cases = {
      {R"({"prompt": null})", "prompt", "missing_required_parameter"},
      {R"({"prompt": 5})", "prompt", "invalid_type"},
      {R"({"prompt": []})", "prompt", "empty_array"},
      {R"({"prompt": ["a", "b"]})", "prompt", "unsupported_value"},
      {R"({"prompt": [[1], [2]]})", "prompt", "unsupported_value"},
      {R"({"prompt": [[]]})", "prompt[0]", "empty_array"},
      {R"({"prompt": [1, "a"]})", "prompt[1]", "invalid_type"},
      {R"({"prompt": [1, 2.5]})", "prompt[1]", "invalid_type"},
      {R"({"prompt": [-1]})", "prompt[0]", "integer_below_min_value"},
      {R"({"prompt": [[1, 3000000000]]})", "prompt[0][1]", "integer_above_max_value"},
      {R"({"logprobs": true})", "logprobs", "invalid_type"},
      {R"({"logprobs": 21})", "logprobs", "integer_above_max_value"},
      {R"({"logprobs": -1})", "logprobs", "integer_below_min_value"},
      {R"({"echo": true})", "echo", "unsupported_value"},
      {R"({"echo": "no"})", "echo", "invalid_type"},
      {R"({"best_of": 3})", "best_of", "unsupported_value"},
      {R"({"suffix": "tail"})", "suffix", "unsupported_parameter"},
      {R"({"max_tokens": 0})", "max_tokens", "integer_below_min_value"},
      {R"({"temperature": 3})", "temperature", "decimal_above_max_value"},
      {R"({"stop": ["a", "b", "c", "d", "e"]})", "stop", "array_above_max_length"},
      {R"({"n": 100})", "n", "integer_above_max_value"},
      {R"({"stream_options": {"include_usage": true}})", "stream_options", "invalid_value"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.patch);
    json b = completion_body();
    b.merge_patch(json::parse(c.patch));
    expect_api_error([&] { parse_completion_request(b); }, 400, c.param, c.code);
  }
  json b = completion_body();
  b["n"] = 2;
  b["best_of"] = 2;  // best_of == n is the same request
  EXPECT_EQ(parse_completion_request(b).n, 2);
}

TEST(OpenAiRequest, ClientBuildersRoundTrip) {
  json b = chat_body();
  b.merge_patch(json::parse(R"({"max_completion_tokens": 9, "temperature": 0.25, "top_p": 0.5, "top_k": 3,
      "min_p": 0.1, "seed": 42, "stop": ["x", "yz"], "n": 2, "stream": true, "stream_options": {"include_usage": true},
      "logprobs": true, "top_logprobs": 4, "user": "u", "min_tokens": 1, "ignore_eos": true})"));
  const ApiRequest r = parse_chat_request(b);
  const json built = build_chat_request(r);
  const ApiRequest back = parse_chat_request(built);
  EXPECT_EQ(built["max_completion_tokens"], 9);
  EXPECT_EQ(back.model, r.model);
  ASSERT_EQ(back.messages.size(), r.messages.size());
  for (size_t i = 0; i < r.messages.size(); ++i) {
    EXPECT_EQ(back.messages[i].role, r.messages[i].role);
    EXPECT_EQ(back.messages[i].content, r.messages[i].content);
  }
  EXPECT_EQ(back.max_tokens, r.max_tokens);
  EXPECT_EQ(back.max_tokens_param, r.max_tokens_param);
  EXPECT_EQ(back.sampling.temperature, r.sampling.temperature);
  EXPECT_EQ(back.sampling.top_p, r.sampling.top_p);
  EXPECT_EQ(back.sampling.top_k, r.sampling.top_k);
  EXPECT_EQ(back.sampling.min_p, r.sampling.min_p);
  EXPECT_EQ(back.seed, r.seed);
  EXPECT_EQ(back.stop, r.stop);
  EXPECT_EQ(back.n, r.n);
  EXPECT_EQ(back.stream, r.stream);
  EXPECT_EQ(back.include_usage, r.include_usage);
  EXPECT_EQ(back.logprobs, r.logprobs);
  EXPECT_EQ(back.top_logprobs, r.top_logprobs);
  EXPECT_EQ(back.user, r.user);
  EXPECT_EQ(back.min_tokens, r.min_tokens);
  EXPECT_EQ(back.ignore_eos, r.ignore_eos);
  // A default request writes only model and messages.
  EXPECT_EQ(build_chat_request(parse_chat_request(chat_body())).size(), 2u);

  json c = completion_body();
  c.merge_patch(json::parse(R"({"prompt": [5, 6, 7], "max_tokens": 30, "logprobs": 3, "temperature": 0, "seed": 1})"));
  const ApiRequest cr = parse_completion_request(c);
  const json cbuilt = build_completion_request(cr);
  EXPECT_FALSE(cbuilt.contains("messages"));
  const ApiRequest cback = parse_completion_request(cbuilt);
  EXPECT_TRUE(cback.prompt_is_ids);
  EXPECT_EQ(cback.prompt_ids, cr.prompt_ids);
  EXPECT_EQ(cback.max_tokens, 30);
  EXPECT_TRUE(cback.logprobs);
  EXPECT_EQ(cback.top_logprobs, 3);
  EXPECT_EQ(cback.sampling.temperature, 0.0);
  EXPECT_EQ(cback.seed, 1);
}

TEST(OpenAiRequest, ContextAndSeeds) {
  ApiRequest chat = parse_chat_request(chat_body());
  EXPECT_EQ(resolve_max_tokens(chat, 100, 2048), 1948);  // absent: up to the context
  chat.max_tokens = 1948;
  EXPECT_EQ(resolve_max_tokens(chat, 100, 2048), 1948);
  chat.max_tokens = 1949;
  ApiError e = expect_api_error([&] { resolve_max_tokens(chat, 100, 2048); }, 400, "max_tokens", "context_length_exceeded");
  EXPECT_NE(std::string(e.what()).find("maximum context length is 2048 tokens. However, you requested 2049 tokens (100 "
                                       "in the messages, 1949 in the completion)"),
            std::string::npos)
      << e.what();
  chat.max_tokens_param = "max_completion_tokens";
  expect_api_error([&] { resolve_max_tokens(chat, 100, 2048); }, 400, "max_completion_tokens", "context_length_exceeded");
  expect_api_error([&] { resolve_max_tokens(chat, 2048, 2048); }, 400, "messages", "context_length_exceeded");
  const ApiRequest comp = parse_completion_request(completion_body());
  expect_api_error([&] { resolve_max_tokens(comp, 3000, 2048); }, 400, "prompt", "context_length_exceeded");
  EXPECT_EQ(resolve_max_tokens(comp, 3, 2048), 16);

  expect_api_error([] { check_token_ids({1, 2, 49152}, 49152, "prompt"); }, 400, "prompt[2]", "invalid_value");
  EXPECT_NO_THROW(check_token_ids({0, 49151}, 49152, "prompt"));

  json b = chat_body();
  b["seed"] = 10;
  b["n"] = 3;
  b["temperature"] = 0.5;
  b["stop"] = "S";
  b["min_tokens"] = 50;
  b["logprobs"] = true;
  b["top_logprobs"] = 5;
  const ApiRequest r = parse_chat_request(b);
  EXPECT_EQ(choice_sampling(r, 0, 999).seed, 10u);
  EXPECT_EQ(choice_sampling(r, 2, 999).seed, 12u);
  EXPECT_EQ(choice_sampling(parse_chat_request(chat_body()), 1, 999).seed, 1000u);  // no seed: the fallback
  b["seed"] = -1;
  EXPECT_EQ(choice_sampling(parse_chat_request(b), 1, 0).seed, 0u);  // wraps mod 2^64
  const GenerationRequest g = generation_request(r, {1, 2, 3}, 1, 20, 999, 2);
  EXPECT_EQ(g.prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(g.sampling.seed, 11u);
  EXPECT_DOUBLE_EQ(g.sampling.temperature, 0.5);
  EXPECT_EQ(g.max_tokens, 20);
  EXPECT_EQ(g.min_tokens, 20);  // capped by max_tokens
  EXPECT_EQ(g.stop, std::vector<std::string>{"S"});
  EXPECT_EQ(g.top_logprobs, 2);  // the granted count

  const LogprobsSpec s = granted_logprobs(r, 3, 2);
  EXPECT_TRUE(s.enabled);
  EXPECT_EQ(s.top, 3);
  EXPECT_EQ(s.round_digits, 2);
  EXPECT_EQ(granted_logprobs(r).top, 5);
  EXPECT_FALSE(granted_logprobs(parse_chat_request(chat_body()), 5).enabled);
}

// ---------------------------------------------------------------------------------------------------------
// Responses

TEST(OpenAiResponse, WireLogprob) {
  EXPECT_EQ(wire_logprob(-0.31725305f, -1), -0.31725305);  // the float's shortest decimal
  EXPECT_EQ(float(wire_logprob(-0.31725305f, -1)), -0.31725305f);
  EXPECT_EQ(to_body(OrderedJson(wire_logprob(-0.1f, -1))), "-0.1");
  EXPECT_EQ(wire_logprob(-0.31725305f, 2), -0.32);
  EXPECT_EQ(wire_logprob(-0.31725305f, 0), 0.0);
  EXPECT_EQ(to_body(OrderedJson(wire_logprob(-0.001f, 1))), "0.0");  // no "-0.0"
  EXPECT_EQ(wire_logprob(-1.23456f, 3), -1.235);
  EXPECT_EQ(wire_logprob(-std::numeric_limits<float>::infinity(), -1), -9999.0);
  EXPECT_EQ(wire_logprob(std::nanf(""), 2), -9999.0);
  EXPECT_EQ(wire_logprob(-12345.0f, -1), -9999.0);
}

TEST(OpenAiResponse, TokenStrings) {
  EXPECT_EQ(lossy_utf8("abc"), "abc");
  EXPECT_EQ(lossy_utf8("\xF0\x9F"), "\xEF\xBF\xBD");          // an incomplete tail: one U+FFFD
  EXPECT_EQ(lossy_utf8("a\xE2\x82" "b"), "a\xEF\xBF\xBD" "b");  // one maximal subpart
  EXPECT_EQ(lossy_utf8("\xC0\xAF"), "\xEF\xBF\xBD\xEF\xBF\xBD");
  EXPECT_EQ(legacy_token_string("é"), "é");
  EXPECT_EQ(legacy_token_string("\xe2\x80"), "bytes:\\xe2\\x80");
}

TEST(OpenAiResponse, ChatBody) {
  const Tokenizer& tok = smollm2();
  std::vector<int32_t> ids = tok.encode("Hello world!");
  ids.push_back(eos());
  const Simulated sim = simulate(gens(ids), {});
  ASSERT_EQ(sim.result.text, "Hello world!");
  ASSERT_EQ(sim.result.finish_reason, "stop");

  LogprobsSpec lp;
  lp.enabled = true;
  lp.top = 2;
  const OrderedJson j = build_chat_response(meta(Endpoint::chat), {sim.result}, lp, tok);
  const std::string body = to_body(j);
  // OpenAI's key order.
  EXPECT_EQ(body.rfind(R"({"id":"chatcmpl-test","object":"chat.completion","created":1700000000,"model":"smollm2",)"
                       R"("system_fingerprint":"fp_0123456789ab","choices":[{"index":0,"message":{"role":"assistant",)"
                       R"("content":"Hello world!"},"logprobs":{"content":[{"token":"Hello","logprob":-0.125,)"
                       R"("bytes":[72,101,108,108,111],"top_logprobs":[{"token":"Hello","logprob":-0.125,"bytes":)"
                       R"([72,101,108,108,111]},{"token":)",
                       0),
            0u)
      << body;
  const auto& content = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(content.size(), ids.size() - 1);  // EOS not listed
  std::string joined;
  for (size_t i = 0; i < content.size(); ++i) {
    joined += content[i]["token"].get<std::string>();
    EXPECT_EQ(content[i]["top_logprobs"].size(), 2u);
    EXPECT_EQ(content[i]["logprob"].get<double>(), double(-0.125f * float(i + 1)));
  }
  EXPECT_EQ(joined, "Hello world!");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(j["usage"]["completion_tokens"], int64_t(ids.size()));  // EOS counted
  EXPECT_EQ(j["usage"]["total_tokens"], int64_t(ids.size()) + 7);

  // Without logprobs: null. Processed values on request. No fingerprint: null.
  ResponseMeta m = meta(Endpoint::chat);
  m.system_fingerprint = "";
  const OrderedJson plain = build_chat_response(m, {sim.result}, LogprobsSpec{}, tok);
  EXPECT_TRUE(plain["choices"][0]["logprobs"].is_null());
  EXPECT_TRUE(plain["system_fingerprint"].is_null());
  lp.processed = true;
  const OrderedJson proc = build_chat_response(meta(Endpoint::chat), {sim.result}, lp, tok);
  EXPECT_EQ(proc["choices"][0]["logprobs"]["content"][0]["logprob"].get<double>(), double(-0.625f));
  EXPECT_EQ(proc["choices"][0]["logprobs"]["content"][0]["top_logprobs"][1]["logprob"].get<double>(), double(-1.625f));
}

TEST(OpenAiResponse, RoundingAndCap) {
  const Tokenizer& tok = smollm2();
  std::vector<GeneratedToken> toks = {gen(tok.encode("Hi")[0], -0.123456f, {5, 6, 7, 8}),
                                      gen(tok.encode("!")[0], -std::numeric_limits<float>::infinity(), {9})};
  GenerationResult r;
  r.tokens = toks;
  r.text = "Hi!";
  r.finish_reason = "length";
  LogprobsSpec lp;
  lp.enabled = true;
  lp.top = 3;  // asked 5, policy granted 3
  lp.round_digits = 2;
  const OrderedJson j = build_chat_response(meta(Endpoint::chat), {r}, lp, tok);
  const auto& c = j["choices"][0]["logprobs"]["content"];
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(to_body(c[0]["logprob"]), "-0.12");
  EXPECT_EQ(c[0]["top_logprobs"].size(), 3u);
  EXPECT_EQ(to_body(c[0]["top_logprobs"][1]["logprob"]), "-1.12");
  EXPECT_EQ(c[1]["logprob"], -9999.0);
  EXPECT_EQ(c[1]["top_logprobs"].size(), 2u);  // fewer alternatives than granted: what there is
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(wire_finish_reason("timeout"), "length");
}

TEST(OpenAiResponse, StopStringTokensAndEosNotListed) {
  const Tokenizer& tok = smollm2();
  const std::vector<int32_t> ids = tok.encode("The answer is 42. END and more");
  const Simulated sim = simulate(gens(ids), {" END"});
  ASSERT_EQ(sim.result.text, "The answer is 42.");
  ASSERT_EQ(sim.result.finish_reason, "stop");
  LogprobsSpec lp;
  lp.enabled = true;
  const OrderedJson j = build_chat_response(meta(Endpoint::chat), {sim.result}, lp, tok);
  std::string joined;
  for (const auto& t : j["choices"][0]["logprobs"]["content"]) joined += t["token"].get<std::string>();
  EXPECT_EQ(joined, "The answer is 42.");  // the tokens of " END" are not listed
  EXPECT_EQ(j["usage"]["completion_tokens"], int64_t(sim.result.tokens.size()));  // but counted
}

TEST(OpenAiResponse, InvalidUtf8Tokens) {
  const Tokenizer& tok = smollm2();
  const std::string text = "Emoji 😀🤖 and 日本語 here";
  const std::vector<int32_t> ids = split_char_ids(text);
  const Simulated sim = simulate(gens(ids), {});
  ASSERT_EQ(sim.result.text, text);
  LogprobsSpec lp;
  lp.enabled = true;
  lp.top = 1;

  // Chat: token strings lossy, bytes exact; the bytes concatenate to the text.
  const OrderedJson j = build_chat_response(meta(Endpoint::chat), {sim.result}, lp, tok);
  EXPECT_NO_THROW(to_body(j));
  std::string bytes;
  bool saw_replacement = false;
  for (const auto& t : j["choices"][0]["logprobs"]["content"]) {
    for (const auto& b : t["bytes"]) bytes += char(b.get<int>());
    const std::string s = t["token"];
    EXPECT_TRUE(valid_utf8(s));
    saw_replacement |= s.find("\xEF\xBF\xBD") != std::string::npos;
  }
  EXPECT_EQ(bytes, text);
  EXPECT_TRUE(saw_replacement);

  // Legacy: "bytes:\xNN" strings; text_offset counts characters before each token's first character.
  const OrderedJson c = build_completion_response(meta(Endpoint::completion), {sim.result}, lp, tok);
  const auto& l = c["choices"][0]["logprobs"];
  ASSERT_EQ(l["tokens"].size(), ids.size());
  bool saw_bytes_form = false;
  const std::u32string chars = [&] {
    std::u32string out;
    for (size_t i = 0; i < text.size();) {
      const auto b = uint8_t(text[i]);
      const size_t len = b < 0x80 ? 1 : b < 0xE0 ? 2 : b < 0xF0 ? 3 : 4;
      out += char32_t(i);  // byte offset of each character
      i += len;
    }
    return out;
  }();
  size_t byte_pos = 0;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string s = l["tokens"][i];
    saw_bytes_form |= s.rfind("bytes:\\x", 0) == 0;
    // Expected offset: characters that start before the character holding this token's first byte.
    int64_t expect = 0;
    while (size_t(expect) + 1 < chars.size() && size_t(chars[size_t(expect) + 1]) <= byte_pos) ++expect;
    if (byte_pos >= text.size()) expect = int64_t(chars.size());
    EXPECT_EQ(l["text_offset"][i], expect) << "token " << i;
    byte_pos += tok.token_bytes(ids[i]).size();
  }
  EXPECT_TRUE(saw_bytes_form);

  // Read back: exact bytes from both forms.
  const ParsedCompletion pc = parse_chat_response(reparse(j));
  const ParsedCompletion pl = parse_completion_response(reparse(c));
  ASSERT_EQ(pc.choices[0].logprobs.size(), ids.size());
  ASSERT_EQ(pl.choices[0].logprobs.size(), ids.size());
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(pc.choices[0].logprobs[i].bytes, tok.token_bytes(ids[i]));
    EXPECT_TRUE(pc.choices[0].logprobs[i].exact_bytes);
    EXPECT_EQ(pl.choices[0].logprobs[i].bytes, tok.token_bytes(ids[i]));
    EXPECT_TRUE(pl.choices[0].logprobs[i].exact_bytes);
    EXPECT_EQ(pl.choices[0].logprobs[i].text_offset, l["text_offset"][i].get<int64_t>());
  }
}

TEST(OpenAiResponse, TextEndsInsidePartialCharacter) {
  // max_tokens cut a character in half: the engine's text ends with U+FFFD; the token is listed.
  const Tokenizer& tok = smollm2();
  const std::vector<int32_t> all = split_char_ids("😀");
  ASSERT_GE(all.size(), 2u);
  const std::vector<int32_t> ids(all.begin(), all.end() - 1);
  const Simulated sim = simulate(gens(ids), {});
  EXPECT_EQ(sim.result.text, "\xEF\xBF\xBD");
  LogprobsSpec lp;
  lp.enabled = true;
  const OrderedJson j = build_chat_response(meta(Endpoint::chat), {sim.result}, lp, tok);
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"].size(), ids.size());
  EXPECT_EQ(j["choices"][0]["message"]["content"], "\xEF\xBF\xBD");
}

TEST(OpenAiResponse, CompletionBody) {
  const Tokenizer& tok = smollm2();
  const std::vector<int32_t> ids = tok.encode(" there was a cat");
  std::vector<GeneratedToken> toks = gens(ids);
  toks[1] = gen(ids[1], -3.0f, {11, 12}, /*self_in_top=*/false);  // sampled outside the top alternatives
  const Simulated a = simulate(toks, {});
  const Simulated b = simulate(gens(tok.encode(" lived a king")), {});
  LogprobsSpec lp;
  lp.enabled = true;
  lp.top = 2;
  const OrderedJson j = build_completion_response(meta(Endpoint::completion), {a.result, b.result}, lp, tok);
  EXPECT_EQ(to_body(j).rfind(R"({"id":"cmpl-test","object":"text_completion","created":1700000000,"model":"smollm2",)"
                             R"("system_fingerprint":"fp_0123456789ab","choices":[{"index":0,"text":" there was a cat",)"
                             R"("logprobs":{"tokens":[)",
                             0),
            0u)
      << to_body(j);
  ASSERT_EQ(j["choices"].size(), 2u);
  EXPECT_EQ(j["choices"][1]["index"], 1);
  EXPECT_EQ(j["choices"][1]["text"], " lived a king");
  const auto& l = j["choices"][0]["logprobs"];
  EXPECT_EQ(l["tokens"].size(), ids.size());
  EXPECT_EQ(l["text_offset"][0], 0);
  // top_logprobs: the top 2 plus the sampled token (OpenAI: up to logprobs + 1), in rank order.
  EXPECT_EQ(l["top_logprobs"][0].size(), 2u);
  const auto& d1 = l["top_logprobs"][1];
  ASSERT_EQ(d1.size(), 3u);
  auto it = d1.begin();
  EXPECT_EQ(it.key(), legacy_token_string(tok.token_bytes(11)));
  EXPECT_EQ(*it, -4.0);
  ++it;
  EXPECT_EQ(it.key(), legacy_token_string(tok.token_bytes(12)));
  ++it;
  EXPECT_EQ(it.key(), legacy_token_string(tok.token_bytes(ids[1])));
  EXPECT_EQ(*it, -3.0);
  EXPECT_EQ(l["token_logprobs"][1], -3.0);
  // Usage: the prompt once, both completions' tokens.
  EXPECT_EQ(j["usage"]["prompt_tokens"], 7);
  EXPECT_EQ(j["usage"]["completion_tokens"], int64_t(a.result.tokens.size() + b.result.tokens.size()));

  // logprobs: 0 -> the sampled token only.
  lp.top = 0;
  const OrderedJson z = build_completion_response(meta(Endpoint::completion), {a.result}, lp, tok);
  for (const auto& d : z["choices"][0]["logprobs"]["top_logprobs"]) EXPECT_EQ(d.size(), 1u);
}

TEST(OpenAiResponse, ClientReadsOwnBodies) {
  const Tokenizer& tok = smollm2();
  std::vector<int32_t> ids = tok.encode("Paris is the capital.");
  ids.push_back(eos());
  const Simulated sim = simulate(gens(ids), {});
  LogprobsSpec lp;
  lp.enabled = true;
  lp.top = 3;
  const ParsedCompletion p = parse_chat_response(reparse(build_chat_response(meta(Endpoint::chat), {sim.result}, lp, tok)));
  EXPECT_EQ(p.id, "chatcmpl-test");
  EXPECT_EQ(p.object, "chat.completion");
  EXPECT_EQ(p.model, "smollm2");
  EXPECT_EQ(p.created, 1700000000);
  EXPECT_EQ(p.system_fingerprint, "fp_0123456789ab");
  ASSERT_EQ(p.choices.size(), 1u);
  EXPECT_EQ(p.choices[0].text, "Paris is the capital.");
  EXPECT_EQ(p.choices[0].finish_reason, "stop");
  EXPECT_TRUE(p.has_usage);
  EXPECT_EQ(p.usage.prompt_tokens, 7);
  EXPECT_EQ(p.usage.completion_tokens, int64_t(ids.size()));
  ASSERT_TRUE(p.choices[0].has_logprobs);
  ASSERT_EQ(p.choices[0].logprobs.size(), ids.size() - 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const ParsedTokenLogprob& t = p.choices[0].logprobs[i];
    EXPECT_EQ(t.bytes, tok.token_bytes(ids[i]));
    EXPECT_EQ(float(t.logprob), sim.result.tokens[i].logprob_raw);  // exact as float32
    ASSERT_EQ(t.top.size(), 3u);
    for (size_t k = 0; k < 3; ++k) {
      EXPECT_EQ(t.top[k].bytes, tok.token_bytes(sim.result.tokens[i].top_raw[k].token));
      EXPECT_EQ(float(t.top[k].logprob), sim.result.tokens[i].top_raw[k].logprob);
    }
  }
  const ParsedCompletion c = parse_completion_response(
      reparse(build_completion_response(meta(Endpoint::completion), {sim.result}, lp, tok)));
  EXPECT_EQ(c.object, "text_completion");
  ASSERT_EQ(c.choices[0].logprobs.size(), ids.size() - 1);
  for (size_t i = 0; i + 1 < ids.size(); ++i) {
    const ParsedTokenLogprob& t = c.choices[0].logprobs[i];
    EXPECT_EQ(t.bytes, tok.token_bytes(ids[i]));
    EXPECT_EQ(float(t.logprob), sim.result.tokens[i].logprob_raw);
    ASSERT_EQ(t.top.size(), 3u);  // the sampled token is among the top 3 here
    EXPECT_EQ(t.top[0].bytes, tok.token_bytes(ids[i]));  // sorted by logprob
    EXPECT_EQ(t.top[2].bytes, tok.token_bytes(sim.result.tokens[i].top_raw[2].token));
  }
}

// Hand-written from the OpenAI API reference's examples of the chat completion object with logprobs
// (https://platform.openai.com/docs/api-reference/chat/object) — the shape the real API returns, with the
// fields our server does not send (refusal, service_tier, *_tokens_details).
TEST(OpenAiClient, ReadsOpenAiChatSample) {
  const json body = json::parse(R"({
    "id": "chatcmpl-9X2rQkz4SampleA1b2C3",
    "object": "chat.completion",
    "created": 1717600000,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [{
      "index": 0,
      "message": {"role": "assistant", "content": "Hello! 👋", "refusal": null},
      "logprobs": {
        "content": [
          {"token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111],
           "top_logprobs": [{"token": "Hello", "logprob": -0.31725305, "bytes": [72, 101, 108, 108, 111]},
                            {"token": "Hi", "logprob": -1.3190403, "bytes": [72, 105]}]},
          {"token": "!", "logprob": -0.02380986, "bytes": [33],
           "top_logprobs": [{"token": "!", "logprob": -0.02380986, "bytes": [33]},
                            {"token": " there", "logprob": -3.787621, "bytes": [32, 116, 104, 101, 114, 101]}]},
          {"token": " \\xf0\\x9f\\x91", "logprob": -0.0011238, "bytes": [32, 240, 159, 145],
           "top_logprobs": [{"token": " \\xf0\\x9f\\x91", "logprob": -0.0011238, "bytes": [32, 240, 159, 145]}]},
          {"token": "\\x8b", "logprob": 0.0, "bytes": [139], "top_logprobs": []}
        ],
        "refusal": null
      },
      "finish_reason": "stop"
    }],
    "usage": {"prompt_tokens": 19, "completion_tokens": 4, "total_tokens": 23,
              "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
              "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                            "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0}},
    "service_tier": "default",
    "system_fingerprint": "fp_0ba0d124f1"
  })");
  const ParsedCompletion p = parse_chat_response(body);
  EXPECT_EQ(p.id, "chatcmpl-9X2rQkz4SampleA1b2C3");
  EXPECT_EQ(p.model, "gpt-4o-mini-2024-07-18");
  EXPECT_EQ(p.system_fingerprint, "fp_0ba0d124f1");
  ASSERT_EQ(p.choices.size(), 1u);
  EXPECT_EQ(p.choices[0].text, "Hello! 👋");
  EXPECT_EQ(p.choices[0].finish_reason, "stop");
  EXPECT_EQ(p.usage.prompt_tokens, 19);
  EXPECT_EQ(p.usage.completion_tokens, 4);
  const auto& lps = p.choices[0].logprobs;
  ASSERT_EQ(lps.size(), 4u);
  EXPECT_EQ(lps[0].token, "Hello");
  EXPECT_DOUBLE_EQ(lps[0].logprob, -0.31725305);
  ASSERT_EQ(lps[0].top.size(), 2u);
  EXPECT_EQ(lps[0].top[1].token, "Hi");
  EXPECT_DOUBLE_EQ(lps[0].top[1].logprob, -1.3190403);
  EXPECT_EQ(lps[2].bytes, " \xf0\x9f\x91");  // the bytes array wins over the token string
  EXPECT_TRUE(lps[2].exact_bytes);
  std::string all;
  for (const auto& t : lps) all += t.bytes;
  EXPECT_EQ(all, "Hello! 👋");
  EXPECT_TRUE(lps[3].top.empty());
}

// Legacy completions object (https://platform.openai.com/docs/api-reference/completions/object), as
// gpt-3.5-turbo-instruct returns it with logprobs: 2 — including the "bytes:" form of split characters.
TEST(OpenAiClient, ReadsOpenAiLegacySample) {
  const json body = json::parse(R"({
    "id": "cmpl-8zXbSampleLegacy0001",
    "object": "text_completion",
    "created": 1709000000,
    "model": "gpt-3.5-turbo-instruct",
    "choices": [{
      "text": " café ✓",
      "index": 0,
      "logprobs": {
        "tokens": [" caf", "é", " ", "bytes:\\xe2\\x9c", "bytes:\\x93"],
        "token_logprobs": [-1.2, -0.05, -0.3, -2.5, -0.0001],
        "top_logprobs": [{" caf": -1.2, " coffee": -0.9}, {"é": -0.05, "e": -3.1}, {" ": -0.3},
                         {"bytes:\\xe2\\x9c": -2.5, "bytes:\\xe2\\x9d": -1.0}, {"bytes:\\x93": -0.0001}],
        "text_offset": [0, 4, 5, 6, 6]
      },
      "finish_reason": "length"
    }],
    "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}
  })");
  const ParsedCompletion p = parse_completion_response(body);
  ASSERT_EQ(p.choices.size(), 1u);
  const ParsedChoice& c = p.choices[0];
  EXPECT_EQ(c.text, " café ✓");
  EXPECT_EQ(c.finish_reason, "length");
  ASSERT_EQ(c.logprobs.size(), 5u);
  EXPECT_EQ(c.logprobs[0].top[0].token, " coffee");  // sorted by logprob: dicts carry no order
  EXPECT_EQ(c.logprobs[1].bytes, "é");
  EXPECT_EQ(c.logprobs[3].bytes, "\xe2\x9c");
  EXPECT_TRUE(c.logprobs[3].exact_bytes);
  EXPECT_EQ(c.logprobs[3].top[0].bytes, "\xe2\x9d");
  EXPECT_EQ(c.logprobs[4].bytes, "\x93");
  EXPECT_EQ(c.logprobs[4].text_offset, 6);
  std::string all;
  for (const auto& t : c.logprobs) all += t.bytes;
  EXPECT_EQ(all, c.text);
  EXPECT_EQ(p.usage.completion_tokens, 5);
}

// llama.cpp's llama-server (2025-11), trimmed from real answers: each entry has the token "id"; special tokens
// come with no bytes (here the listed stop token <|im_end|>, id 2); /v1/completions answers with the chat shape.
TEST(OpenAiClient, ReadsLlamaServerSamples) {
  const json chat = json::parse(R"({
    "choices": [{"finish_reason": "stop", "index": 0,
      "message": {"role": "assistant", "content": "Je"},
      "logprobs": {"content": [
        {"id": 46719, "token": "Je", "bytes": [74, 101], "logprob": -2.64430570602417,
         "top_logprobs": [{"id": 30904, "token": "Bon", "bytes": [66, 111, 110], "logprob": -2.240111827850342},
                          {"id": 46719, "token": "Je", "bytes": [74, 101], "logprob": -2.64430570602417}]},
        {"id": 2, "token": "", "bytes": [], "logprob": -2.462106227874756,
         "top_logprobs": [{"id": 198, "token": "\n", "bytes": [10], "logprob": -1.2095742225646973},
                          {"id": 2, "token": "", "bytes": [], "logprob": -2.462106227874756}]}]}}],
    "created": 1796285381, "model": "x", "system_fingerprint": "b0-unknown", "object": "chat.completion",
    "usage": {"completion_tokens": 2, "prompt_tokens": 14, "total_tokens": 16},
    "id": "chatcmpl-nklkY0ejJcmDXALq1mX7IYUks33uzqIU", "timings": {"prompt_n": 14}
  })");
  const ParsedCompletion p = parse_chat_response(chat);
  EXPECT_EQ(p.system_fingerprint, "b0-unknown");
  const auto& lps = p.choices.at(0).logprobs;
  ASSERT_EQ(lps.size(), 2u);
  EXPECT_EQ(lps[0].id, 46719);
  EXPECT_EQ(lps[0].top[0].id, 30904);
  EXPECT_EQ(lps[1].id, 2);
  EXPECT_EQ(lps[1].bytes, "");
  EXPECT_TRUE(lps[1].exact_bytes);
  EXPECT_EQ(lps[1].top[1].id, 2);
  EXPECT_EQ(lps[1].top[1].bytes, "");

  const json completion = json::parse(R"({
    "choices": [{"text": " Paris", "index": 0, "finish_reason": "length",
      "logprobs": {"content": [
        {"id": 7042, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115], "logprob": -0.24842411279678345,
         "top_logprobs": [{"id": 7042, "token": " Paris", "bytes": [32, 80, 97, 114, 105, 115],
                           "logprob": -0.24842411279678345},
                          {"id": 260, "token": " the", "bytes": [32, 116, 104, 101],
                           "logprob": -2.7847447395324707}]}]}}],
    "created": 1796285711, "model": "x", "system_fingerprint": "b0-unknown", "object": "text_completion",
    "usage": {"completion_tokens": 1, "prompt_tokens": 5, "total_tokens": 6}, "id": "chatcmpl-r9ImRe6J"
  })");
  const ParsedCompletion c = parse_completion_response(completion);
  const auto& cl = c.choices.at(0).logprobs;
  ASSERT_EQ(cl.size(), 1u);
  EXPECT_EQ(cl[0].bytes, " Paris");
  EXPECT_EQ(cl[0].id, 7042);
  ASSERT_EQ(cl[0].top.size(), 2u);
  EXPECT_EQ(cl[0].top[1].bytes, " the");
  EXPECT_EQ(cl[0].top[1].id, 260);
  EXPECT_EQ(cl[0].text_offset, -1);
  // Servers without ids (OpenAI's own samples above) read as -1.
  EXPECT_EQ(parse_completion_response(json::parse(R"({"choices": [{"text": "a", "index": 0, "logprobs":
      {"tokens": ["a"], "token_logprobs": [-1.0], "top_logprobs": [{"a": -1.0}]}}]})")).choices[0].logprobs[0].id,
            -1);
}

TEST(OpenAiClient, ErrorBodies) {
  const ApiError e = parse_error_response(
      401, json::parse(R"({"error": {"message": "Incorrect API key provided: sk-abc***xyz.", "type": "invalid_request_error",
                                     "param": null, "code": "invalid_api_key"}})"));
  EXPECT_EQ(e.status, 401);
  EXPECT_EQ(e.code, "invalid_api_key");
  EXPECT_EQ(e.param, "");
  EXPECT_EQ(std::string(e.what()), "Incorrect API key provided: sk-abc***xyz.");
  // llama.cpp's shape: an integer code.
  const ApiError l = parse_error_response(
      400, json::parse(R"({"error": {"code": 400, "message": "bad", "type": "invalid_request_error"}})"));
  EXPECT_EQ(l.code, "400");
  // Our own body reads back the same.
  const ApiError ours = bad_request("messages[0].content", "m", "invalid_type");
  const ApiError back = parse_error_response(400, reparse(ours.body()));
  EXPECT_EQ(back.param, ours.param);
  EXPECT_EQ(back.code, ours.code);
  EXPECT_EQ(back.type, ours.type);
  EXPECT_THROW(parse_error_response(500, json::parse(R"({"x": 1})")), Error);
  // A response that is an error raises it.
  EXPECT_THROW(parse_chat_response(reparse(ours.body())), ApiError);
  // Missing fields name themselves.
  try {
    parse_chat_response(json::parse(R"({"choices": [{"index": 0, "message": {"content": "x"},
                                         "logprobs": {"content": [{"token": "x", "bytes": [1]}]}}]})"));
    ADD_FAILURE();
  } catch (const Error& err) {
    EXPECT_NE(std::string(err.what()).find("choices[0].logprobs.content[0].logprob"), std::string::npos) << err.what();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Streaming

namespace {

struct StreamRun {
  std::string wire;                  // every byte sent
  std::vector<std::string> payloads;  // SSE data payloads
};

// Feeds the simulated engine callbacks of several choices, interleaved round-robin, through one encoder.
StreamRun run_stream(Endpoint kind, const std::vector<Simulated>& sims, const LogprobsSpec& lp, bool include_usage) {
  StreamEncoder enc(kind, meta(kind), int(sims.size()), lp, include_usage, smollm2());
  StreamRun run;
  size_t max_steps = 0;
  for (const auto& s : sims) max_steps = std::max(max_steps, s.steps.size());
  for (size_t c = 0; c < sims.size(); ++c) run.wire += enc.open(int(c));
  for (size_t step = 0; step < max_steps; ++step)
    for (size_t c = 0; c < sims.size(); ++c) {
      if (step < sims[c].steps.size())
        run.wire += enc.on_token(int(c), sims[c].steps[step].first, sims[c].steps[step].second);
      if (step + 1 == sims[c].steps.size()) run.wire += enc.finish(int(c), sims[c].result);
    }
  std::vector<GenerationResult> results;
  for (const auto& s : sims) results.push_back(s.result);
  run.wire += enc.done(usage_of(results));
  SseParser parser;
  // Split the bytes at odd places, as TCP may.
  for (size_t i = 0; i < run.wire.size(); i += 7) {
    auto got = parser.feed(std::string_view(run.wire).substr(i, 7));
    run.payloads.insert(run.payloads.end(), got.begin(), got.end());
  }
  return run;
}

}  // namespace

TEST(OpenAiStream, ChatFramingAndContent) {
  const Tokenizer& tok = smollm2();
  std::vector<int32_t> a = tok.encode("Sure: 😀 done. STOP here");
  std::vector<int32_t> b = tok.encode("Short");
  b.push_back(eos());
  const std::vector<Simulated> sims = {simulate(gens(a), {" STOP"}), simulate(gens(b), {" STOP"})};
  ASSERT_EQ(sims[0].result.text, "Sure: 😀 done.");
  LogprobsSpec lp;
  lp.enabled = true;
  lp.top = 2;
  const StreamRun run = run_stream(Endpoint::chat, sims, lp, /*include_usage=*/true);

  // Framing: "data: <json>\n\n" events, the last "data: [DONE]\n\n".
  ASSERT_GE(run.payloads.size(), 4u);
  EXPECT_EQ(run.wire.substr(0, 6), "data: ");
  EXPECT_EQ(run.wire.substr(run.wire.size() - 14), "data: [DONE]\n\n");
  EXPECT_EQ(run.payloads.back(), "[DONE]");
  size_t n_events = 0;
  for (size_t p = 0; (p = run.wire.find("\n\n", p)) != std::string::npos; p += 2) ++n_events;
  EXPECT_EQ(n_events, run.payloads.size());

  // Every chunk: the chunk object, one id, usage null; the last before [DONE]: no choices, the usage.
  std::vector<json> chunks;
  for (size_t i = 0; i + 1 < run.payloads.size(); ++i) chunks.push_back(json::parse(run.payloads[i]));
  for (size_t i = 0; i < chunks.size(); ++i) {
    EXPECT_EQ(chunks[i]["object"], "chat.completion.chunk");
    EXPECT_EQ(chunks[i]["id"], "chatcmpl-test");
    EXPECT_EQ(chunks[i]["system_fingerprint"], "fp_0123456789ab");
    ASSERT_TRUE(chunks[i].contains("usage"));
    if (i + 1 < chunks.size()) {
      EXPECT_TRUE(chunks[i]["usage"].is_null());
      EXPECT_EQ(chunks[i]["choices"].size(), 1u);
    }
  }
  EXPECT_TRUE(chunks.back()["choices"].empty());
  EXPECT_EQ(chunks.back()["usage"]["completion_tokens"], int64_t(sims[0].result.tokens.size() + sims[1].result.tokens.size()));

  // Per choice: the role chunk first, content deltas, one finish chunk with an empty delta last.
  for (int c = 0; c < 2; ++c) {
    std::vector<json> mine;
    for (const json& ch : chunks)
      if (!ch["choices"].empty() && ch["choices"][0]["index"] == c) mine.push_back(ch["choices"][0]);
    ASSERT_GE(mine.size(), 3u);
    EXPECT_EQ(mine.front()["delta"], json::parse(R"({"role": "assistant", "content": ""})"));
    EXPECT_TRUE(mine.front()["finish_reason"].is_null());
    EXPECT_EQ(mine.back()["delta"], json::object());
    EXPECT_EQ(mine.back()["finish_reason"], "stop");
    for (size_t i = 1; i + 1 < mine.size(); ++i) {
      EXPECT_FALSE(mine[i]["delta"]["content"].get<std::string>().empty());
      EXPECT_TRUE(mine[i]["finish_reason"].is_null());
      // A delta's logprobs are the tokens whose text it begins: their strings start its text.
      std::string toks;
      for (const auto& t : mine[i]["logprobs"]["content"]) {
        std::string s;
        for (const auto& v : t["bytes"]) s += char(v.get<int>());
        toks += s;
      }
      EXPECT_FALSE(toks.empty());
    }
  }

  // The stream read back equals the non-streamed response, logprobs and usage included.
  ParsedCompletion streamed;
  for (const json& ch : chunks) merge_chunk(streamed, ch);
  std::vector<GenerationResult> results = {sims[0].result, sims[1].result};
  const ParsedCompletion whole = parse_chat_response(reparse(build_chat_response(meta(Endpoint::chat), results, lp, tok)));
  ASSERT_EQ(streamed.choices.size(), 2u);
  for (size_t c = 0; c < 2; ++c) {
    EXPECT_EQ(streamed.choices[c].text, whole.choices[c].text);
    EXPECT_EQ(streamed.choices[c].finish_reason, whole.choices[c].finish_reason);
    ASSERT_EQ(streamed.choices[c].logprobs.size(), whole.choices[c].logprobs.size());
    for (size_t i = 0; i < whole.choices[c].logprobs.size(); ++i) {
      EXPECT_EQ(streamed.choices[c].logprobs[i].bytes, whole.choices[c].logprobs[i].bytes);
      EXPECT_EQ(streamed.choices[c].logprobs[i].logprob, whole.choices[c].logprobs[i].logprob);
      EXPECT_EQ(streamed.choices[c].logprobs[i].top.size(), 2u);
    }
  }
  EXPECT_TRUE(streamed.has_usage);
  EXPECT_EQ(streamed.usage.completion_tokens, whole.usage.completion_tokens);
  EXPECT_EQ(streamed.usage.prompt_tokens, 7);
}

TEST(OpenAiStream, CompletionChunksAndNoUsage) {
  const Tokenizer& tok = smollm2();
  const std::vector<Simulated> sims = {simulate(gens(tok.encode(" 日本語 text, then END of it")), {"END"})};
  LogprobsSpec lp;
  lp.enabled = true;
  lp.top = 1;
  const StreamRun run = run_stream(Endpoint::completion, sims, lp, /*include_usage=*/false);
  std::vector<json> chunks;
  for (size_t i = 0; i + 1 < run.payloads.size(); ++i) chunks.push_back(json::parse(run.payloads[i]));
  ASSERT_GE(chunks.size(), 2u);
  for (const json& ch : chunks) {
    EXPECT_EQ(ch["object"], "text_completion");
    EXPECT_FALSE(ch.contains("usage"));
    EXPECT_EQ(ch["choices"].size(), 1u);
  }
  EXPECT_EQ(chunks.back()["choices"][0]["text"], "");
  EXPECT_EQ(chunks.back()["choices"][0]["finish_reason"], "stop");
  ParsedCompletion streamed;
  for (const json& ch : chunks) merge_chunk(streamed, ch);
  const ParsedCompletion whole = parse_completion_response(
      reparse(build_completion_response(meta(Endpoint::completion), {sims[0].result}, lp, tok)));
  EXPECT_EQ(streamed.choices[0].text, " 日本語 text, then ");
  EXPECT_EQ(streamed.choices[0].text, whole.choices[0].text);
  ASSERT_EQ(streamed.choices[0].logprobs.size(), whole.choices[0].logprobs.size());
  for (size_t i = 0; i < whole.choices[0].logprobs.size(); ++i) {
    EXPECT_EQ(streamed.choices[0].logprobs[i].token, whole.choices[0].logprobs[i].token);
    EXPECT_EQ(streamed.choices[0].logprobs[i].text_offset, whole.choices[0].logprobs[i].text_offset);
  }
  EXPECT_FALSE(streamed.has_usage);
}

TEST(OpenAiStream, WithoutLogprobsAndErrors) {
  const Tokenizer& tok = smollm2();
  const std::vector<Simulated> sims = {simulate(gens(tok.encode("abc def")), {})};
  const StreamRun run = run_stream(Endpoint::chat, sims, LogprobsSpec{}, false);
  for (size_t i = 0; i + 1 < run.payloads.size(); ++i) {
    const json ch = json::parse(run.payloads[i]);
    EXPECT_TRUE(ch["choices"][0]["logprobs"].is_null());
  }
  // The text arrives even when the engine's pieces did not carry it all (finish() sends the rest).
  StreamEncoder enc(Endpoint::chat, meta(Endpoint::chat), 1, LogprobsSpec{}, false, tok);
  std::string wire = enc.on_token(0, gen(tok.encode("abc")[0], -1), "");
  GenerationResult r;
  r.text = "abc";
  r.finish_reason = "length";
  r.tokens = {gen(tok.encode("abc")[0], -1)};
  wire += enc.finish(0, r) + enc.done(usage_of({r}));
  ParsedCompletion p;
  SseParser parser;
  for (const std::string& d : parser.feed(wire))
    if (d != "[DONE]") merge_chunk(p, json::parse(d));
  EXPECT_EQ(p.choices[0].text, "abc");
  EXPECT_EQ(p.choices[0].finish_reason, "length");
  // A mid-stream error: an error event, then [DONE]; the client side raises it.
  const std::string err = StreamEncoder::error(unavailable("shutting down"));
  EXPECT_EQ(err.rfind("data: {\"error\":{\"message\":\"shutting down\",\"type\":\"server_error\"", 0), 0u) << err;
  EXPECT_EQ(err.substr(err.size() - 14), "data: [DONE]\n\n");
  SseParser ep;
  const auto payloads = ep.feed(err);
  ASSERT_EQ(payloads.size(), 2u);
  ParsedCompletion acc;
  EXPECT_THROW(merge_chunk(acc, json::parse(payloads[0])), ApiError);
}

TEST(OpenAiStream, SseParser) {
  SseParser p;
  auto out = p.feed(": keep-alive\n\ndata: {\"a\":1}\r\n\r\nevent: x\ndata: line1\ndata: line2\n\ndata: [DON");
  ASSERT_EQ(out.size(), 2u);
  EXPECT_EQ(out[0], "{\"a\":1}");
  EXPECT_EQ(out[1], "line1\nline2");
  out = p.feed("E]\n\n");
  ASSERT_EQ(out.size(), 1u);
  EXPECT_EQ(out[0], "[DONE]");
  EXPECT_EQ(sse_event(OrderedJson{{"x", 1}}), "data: {\"x\":1}\n\n");
  EXPECT_EQ(sse_done(), "data: [DONE]\n\n");
}

// Hand-written from the API reference's streaming example (https://platform.openai.com/docs/api-reference/
// chat/streaming) with stream_options.include_usage: a role chunk, content chunks, the finish chunk, then
// the usage chunk with empty choices.
TEST(OpenAiClient, ReadsOpenAiStreamSample) {
  const std::string wire =
      "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\","
      "\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
      "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n"
      "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\","
      "\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":"
      "{\"content\":[{\"token\":\"Hello\",\"logprob\":-0.0009,\"bytes\":[72,101,108,108,111],\"top_logprobs\":[]}],"
      "\"refusal\":null},\"finish_reason\":null}],\"usage\":null}\n\n"
      "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\","
      "\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\" world\"},\"logprobs\":"
      "{\"content\":[{\"token\":\" world\",\"logprob\":-0.25,\"bytes\":[32,119,111,114,108,100],\"top_logprobs\":[]}],"
      "\"refusal\":null},\"finish_reason\":null}],\"usage\":null}\n\n"
      "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\","
      "\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":"
      "\"stop\"}],\"usage\":null}\n\n"
      "data: {\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\","
      "\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,"
      "\"total_tokens\":11}}\n\n"
      "data: [DONE]\n\n";
  SseParser parser;
  ParsedCompletion p;
  for (const std::string& d : parser.feed(wire))
    if (d != "[DONE]") merge_chunk(p, json::parse(d));
  EXPECT_EQ(p.id, "chatcmpl-123");
  EXPECT_EQ(p.system_fingerprint, "fp_44709d6fcb");
  ASSERT_EQ(p.choices.size(), 1u);
  EXPECT_EQ(p.choices[0].text, "Hello world");
  EXPECT_EQ(p.choices[0].finish_reason, "stop");
  ASSERT_EQ(p.choices[0].logprobs.size(), 2u);
  EXPECT_EQ(p.choices[0].logprobs[1].bytes, " world");
  EXPECT_TRUE(p.has_usage);
  EXPECT_EQ(p.usage.prompt_tokens, 9);
  EXPECT_EQ(p.usage.completion_tokens, 2);
}

// ---------------------------------------------------------------------------------------------------------
// Other endpoints

TEST(OpenAiOther, ModelsAndFingerprint) {
  ModelCard m;
  m.id = "smollm2-135m-instruct";
  m.created = 1700000000;
  m.max_model_len = 8192;
  EXPECT_EQ(to_body(build_models_response({m})),
            R"({"object":"list","data":[{"id":"smollm2-135m-instruct","object":"model","created":1700000000,)"
            R"("owned_by":"retort","max_model_len":8192}]})");
  const std::string fp = system_fingerprint("/m.gguf", 123, "abcd", "0.1.0");
  ASSERT_EQ(fp.size(), 15u);
  EXPECT_EQ(fp.substr(0, 3), "fp_");
  EXPECT_EQ(fp.find_first_not_of("0123456789abcdef", 3), std::string::npos);
  EXPECT_EQ(fp, system_fingerprint("/m.gguf", 123, "abcd", "0.1.0"));
  EXPECT_NE(fp, system_fingerprint("/m.gguf", 124, "abcd", "0.1.0"));
  EXPECT_NE(fp, system_fingerprint("/m.gguf", 123, "abce", "0.1.0"));
  EXPECT_NE(fp, system_fingerprint("/m.gguf", 123, "abcd", "0.1.1"));
  const ResponseMeta a = make_meta(Endpoint::chat, "x", fp), b = make_meta(Endpoint::completion, "x", fp);
  EXPECT_EQ(a.id.rfind("chatcmpl-", 0), 0u);
  EXPECT_EQ(a.id.size(), 9u + 24u);
  EXPECT_EQ(b.id.rfind("cmpl-", 0), 0u);
  EXPECT_NE(a.id.substr(9), b.id.substr(5));
  EXPECT_GT(a.created, 1700000000);
}

TEST(OpenAiOther, Tokenize) {
  const Tokenizer& tok = smollm2();
  TokenizeRequest r = parse_tokenize_request(json::parse(R"({"content": "Hello world"})"));
  EXPECT_FALSE(r.chat);
  EXPECT_EQ(r.text, "Hello world");
  EXPECT_FALSE(r.add_special);  // llama.cpp's default
  r = parse_tokenize_request(json::parse(R"({"prompt": "Hello", "model": "m"})"));
  EXPECT_TRUE(r.add_special);  // vLLM's default
  EXPECT_EQ(r.model, "m");
  r = parse_tokenize_request(json::parse(R"({"prompt": "Hello", "add_special_tokens": false})"));
  EXPECT_FALSE(r.add_special);
  r = parse_tokenize_request(json::parse(
      R"({"messages": [{"role": "user", "content": "Hi"}], "add_generation_prompt": false, "with_pieces": true})"));
  EXPECT_TRUE(r.chat);
  ASSERT_EQ(r.messages.size(), 1u);
  EXPECT_FALSE(r.add_generation_prompt);
  EXPECT_TRUE(r.with_pieces);
  expect_api_error([] { parse_tokenize_request(json::parse("{}")); }, 400, "content", "missing_required_parameter");
  expect_api_error([] { parse_tokenize_request(json::parse(R"({"content": 5})")); }, 400, "content", "invalid_type");
  expect_api_error([] { parse_tokenize_request(json::parse(R"({"content": "a", "prompt": "b"})")); }, 400, "");
  expect_api_error([] { parse_tokenize_request(json::parse(R"({"content": "a", "with_pieces": 1})")); }, 400,
                   "with_pieces", "invalid_type");
  expect_api_error([] { parse_tokenize_request(json::parse(R"({"messages": [{"role": "x", "content": "a"}]})")); }, 400,
                   "messages[0].role", "invalid_value");

  const std::vector<int32_t> ids = tok.encode("Hi 😀");
  TokenizeRequest plain;
  EXPECT_EQ(to_body(build_tokenize_response({1, 2}, plain, tok, 8192)), R"({"tokens":[1,2],"count":2,"max_model_len":8192})");
  TokenizeRequest pieces;
  pieces.with_pieces = true;
  pieces.return_token_strs = true;
  const OrderedJson j = build_tokenize_response(ids, pieces, tok, 8192);
  EXPECT_EQ(j["count"], ids.size());
  ASSERT_EQ(j["tokens"].size(), ids.size());
  std::string bytes;
  bool saw_array = false;
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_EQ(j["tokens"][i]["id"], ids[i]);
    const auto& piece = j["tokens"][i]["piece"];
    if (piece.is_string()) {
      bytes += piece.get<std::string>();
    } else {  // a split character: its byte values, as llama.cpp sends
      saw_array = true;
      for (const auto& v : piece) bytes += char(v.get<int>());
    }
    EXPECT_EQ(j["token_strs"][i], lossy_utf8(tok.token_text(ids[i])));
  }
  EXPECT_EQ(bytes, "Hi 😀");
  EXPECT_TRUE(saw_array);
  EXPECT_NO_THROW(to_body(j));
}

TEST(OpenAiOther, Detokenize) {
  const Tokenizer& tok = smollm2();
  const std::vector<int32_t> ids = tok.encode("Hello 😀");
  json b;
  b["tokens"] = ids;
  EXPECT_EQ(parse_detokenize_request(b, tok.n_vocab()), ids);
  const OrderedJson j = build_detokenize_response(ids, tok);
  EXPECT_EQ(j["content"], "Hello 😀");
  EXPECT_EQ(j["prompt"], "Hello 😀");
  // Half a character: valid JSON with U+FFFD.
  const std::vector<int32_t> half = split_char_ids("😀");
  EXPECT_EQ(build_detokenize_response({half[0]}, tok)["content"], "\xEF\xBF\xBD");
  expect_api_error([&] { parse_detokenize_request(json::parse(R"({"tokens": [1, 99999999]})"), tok.n_vocab()); }, 400,
                   "tokens[1]", "invalid_value");
  expect_api_error([&] { parse_detokenize_request(json::parse(R"({"tokens": [1, -5]})"), tok.n_vocab()); }, 400,
                   "tokens[1]");
  expect_api_error([&] { parse_detokenize_request(json::parse(R"({"tokens": [1, "a"]})"), tok.n_vocab()); }, 400,
                   "tokens[1]", "invalid_type");
  expect_api_error([&] { parse_detokenize_request(json::parse(R"({"tokens": "1 2"})"), tok.n_vocab()); }, 400, "tokens",
                   "invalid_type");
  expect_api_error([&] { parse_detokenize_request(json::parse(R"({})"), tok.n_vocab()); }, 400, "tokens",
                   "missing_required_parameter");
  EXPECT_EQ(parse_detokenize_request(json::parse(R"({"tokens": []})"), tok.n_vocab()).size(), 0u);
}

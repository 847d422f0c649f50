// End-to-end tests of the `retort` command, run as a user runs it: a child process (posix_spawn)
// with stdin from a file, stdout/stderr captured, exit status and signal checked.
// References: Hugging Face `tokenizers` golden ids (tests/data/tokenizer/gen_golden.py), the
// checkpoint's own config.json, the model card facts of SmolLM2-135M-Instruct (30 layers, 134.5M
// parameters, Q4_1 GGUF, ChatML), and the CLI's own outputs cross-checked against each other
// (greedy token = first raw alternative; stream = JSON text; chat = generate --chat).
// Cases that need the default model GTEST_SKIP() when it is absent. Each model run uses
// --max-tokens <= 8 and -t 2, and every command runs at most once (outputs are cached).
#include <fcntl.h>
#include <gtest/gtest.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "retort/protect/keys.h"
#include "retort/util/file.h"
#include "test_util.h"

extern char** environ;

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const std::string kData = RETORT_TEST_DATA;

struct CliRun {
  int code = -1;    // exit status when the child exited
  int signal = 0;   // the signal that killed it, else 0
  std::string out;  // stdout
  std::string err;  // stderr
};

std::string tmp_dir() {
  static const std::string d = [] {
    auto p = fs::temp_directory_path() / ("retort_test_cli_" + std::to_string(::getpid()));
    fs::create_directories(p);
    return p.string();
  }();
  return d;
}

std::string tmp_path(const std::string& name) { return tmp_dir() + "/" + name; }

struct RemoveTmpDir : ::testing::Environment {
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(tmp_dir(), ec);
  }
};
const auto* const kRemoveTmpDir = ::testing::AddGlobalTestEnvironment(new RemoveTmpDir);

std::string read_all(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// Runs `retort args...` with `input` on stdin; env entries "K=V" replace or add variables, a
// bare "K" removes K.
CliRun run_cli(const std::vector<std::string>& args, const std::string& input = "",
            const std::vector<std::string>& env = {}) {
  static int counter = 0;
  const std::string base = tmp_path("run" + std::to_string(counter++));
  const std::string in = base + ".in", out = base + ".out", err = base + ".err";
  retort::write_file_atomic(in, input);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, in.c_str(), O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_addopen(&fa, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);

  std::vector<std::string> argv_s = {RETORT_CLI_PATH};
  argv_s.insert(argv_s.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& s : argv_s) argv.push_back(s.data());
  argv.push_back(nullptr);

  std::vector<std::string> env_s;
  for (char** e = environ; *e; ++e) {
    const std::string kv = *e;
    const std::string key = kv.substr(0, kv.find('='));
    bool replaced = false;
    for (const auto& o : env) replaced |= o.substr(0, o.find('=')) == key;
    if (!replaced) env_s.push_back(kv);
  }
  for (const auto& o : env)
    if (o.find('=') != std::string::npos) env_s.push_back(o);  // a bare "K" only removes K
  std::vector<char*> envp;
  for (auto& s : env_s) envp.push_back(s.data());
  envp.push_back(nullptr);

  CliRun r;
  pid_t pid = 0;
  const int rc = posix_spawn(&pid, argv[0], &fa, nullptr, argv.data(), envp.data());
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) {
    r.err = std::string("posix_spawn failed for ") + RETORT_CLI_PATH + ": " + std::strerror(rc);
    return r;
  }
  int st = 0;
  while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
  }
  if (WIFEXITED(st)) r.code = WEXITSTATUS(st);
  if (WIFSIGNALED(st)) r.signal = WTERMSIG(st);
  r.out = read_all(out);
  r.err = read_all(err);
  return r;
}

// Each distinct command line runs once per test binary; later tests reuse its output.
const CliRun& cached(const std::vector<std::string>& args, const std::string& input = "") {
  static std::map<std::pair<std::vector<std::string>, std::string>, CliRun> cache;
  auto key = std::make_pair(args, input);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, run_cli(args, input)).first;
  return it->second;
}

std::string show(const CliRun& r) {
  return "exit " + std::to_string(r.code) + ", signal " + std::to_string(r.signal) + "\n--- stdout:\n" +
         r.out.substr(0, 2000) + "\n--- stderr:\n" + r.err.substr(0, 2000);
}

void expect_ok(const CliRun& r) {
  EXPECT_EQ(r.signal, 0) << show(r);
  EXPECT_EQ(r.code, 0) << show(r);
}

// Bad input: non-zero exit, no signal, no uncaught exception, an "error:" line naming every needle.
void expect_error(const CliRun& r, const std::vector<std::string>& needles) {
  EXPECT_EQ(r.signal, 0) << show(r);
  EXPECT_NE(r.code, 0) << show(r);
  EXPECT_NE(r.code, -1) << show(r);
  EXPECT_EQ(r.err.find("terminate called"), std::string::npos) << show(r);
  EXPECT_EQ(r.err.rfind("error: ", 0), 0u) << "stderr should start with \"error: \"\n" << show(r);
  for (const auto& n : needles) EXPECT_NE(r.err.find(n), std::string::npos) << "missing \"" << n << "\"\n" << show(r);
}

std::string model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base = home && *home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

bool have_model() { return fs::exists(model_path()); }

#define NEED_MODEL()                                                                                      \
  if (!have_model()) GTEST_SKIP() << "default model not found at " << model_path() << " (run scripts/setup.sh)"

json golden_case(const std::string& tokenizer, int i) {
  std::ifstream f(kData + "/tokenizer/" + tokenizer + "/golden.jsonl");
  std::string line;
  while (std::getline(f, line)) {
    json g = json::parse(line);
    if (g["i"] == i) return g;
  }
  ADD_FAILURE() << "no golden case " << i << " for " << tokenizer;
  return json::object();
}

// The corpus index of a text (tests/data/tokenizer/corpus.jsonl).
int corpus_index(const std::string& text) {
  std::ifstream f(kData + "/tokenizer/corpus.jsonl");
  std::string line;
  for (int i = 0; std::getline(f, line); ++i) {
    json c = json::parse(line);
    if (c.contains("text") && c["text"] == text) return i;
  }
  ADD_FAILURE() << "text not in the corpus: " << text;
  return -1;
}

json parse_one(const CliRun& r) {
  try {
    return json::parse(r.out);
  } catch (const json::exception& e) {
    ADD_FAILURE() << "stdout is not one JSON value: " << e.what() << "\n" << show(r);
    return json::object();
  }
}

std::vector<json> parse_lines(const CliRun& r) {
  std::vector<json> out;
  std::istringstream in(r.out);
  std::string line;
  while (std::getline(in, line)) {
    try {
      out.push_back(json::parse(line));
    } catch (const json::exception& e) {
      ADD_FAILURE() << "stdout line is not JSON: " << line << " (" << e.what() << ")";
    }
  }
  return out;
}

const std::string kHello = "Hello world";
const std::string kChatText = "<|im_start|>user\nhi<|im_end|>";

}  // namespace

// ---- tokenize -------------------------------------------------------------------------------

// Against the committed SmolLM2 tokenizer.json directory (no model needed, so these always run) and,
// when present, the default model's GGUF tokenizer.
const std::string kSmolDir = kData + "/tokenizer/smollm2";

TEST(CliTokenize, HelloWorldMatchesHfGolden) {
  const json g = golden_case("smollm2", corpus_index(kHello));
  const CliRun& r = cached({"tokenize", "-m", kSmolDir, kHello, "--json"});
  expect_ok(r);
  const json j = parse_one(r);
  EXPECT_EQ(j["ids"], g["ids"]);
  EXPECT_EQ(j["n_tokens"], g["ids"].size());
  EXPECT_EQ(j["pieces"], json::parse(R"(["Hello", " world"])"));
  // Plain output: ids on one line, the count on stderr.
  const CliRun& p = cached({"tokenize", "-m", kSmolDir, kHello});
  expect_ok(p);
  std::string want;
  for (const auto& id : g["ids"]) want += (want.empty() ? "" : " ") + std::to_string(id.get<int>());
  EXPECT_EQ(p.out, want + "\n");
  EXPECT_NE(p.err.find(std::to_string(g["ids"].size()) + " tokens"), std::string::npos) << show(p);
}

TEST(CliTokenize, GgufHelloWorldAndNoSpecial) {
  NEED_MODEL();
  const CliRun& r = cached({"tokenize", kHello, "--json"});  // the default model
  expect_ok(r);
  EXPECT_EQ(parse_one(r)["ids"], golden_case("smollm2", corpus_index(kHello))["ids"]);
  const CliRun& n = cached({"tokenize", kChatText, "--json", "--no-special"});
  expect_ok(n);
  EXPECT_EQ(parse_one(n)["ids"], golden_case("smollm2", corpus_index(kChatText))["ids_raw"]);
}

TEST(CliTokenize, NoSpecialEncodesSpecialTextAsText) {
  const json g = golden_case("smollm2", corpus_index(kChatText));
  ASSERT_NE(g["ids"], g["ids_raw"]);
  const CliRun& with = cached({"tokenize", "-m", kSmolDir, kChatText, "--json"});
  const CliRun& without = cached({"tokenize", "-m", kSmolDir, kChatText, "--json", "--no-special"});
  expect_ok(with);
  expect_ok(without);
  EXPECT_EQ(parse_one(with)["ids"], g["ids"]);
  EXPECT_EQ(parse_one(without)["ids"], g["ids_raw"]);
}

TEST(CliTokenize, DecodeRoundTrips) {
  const json g = golden_case("smollm2", corpus_index(kChatText));
  std::string ids;
  for (const auto& id : g["ids"]) ids += (ids.empty() ? "" : ",") + std::to_string(id.get<int>());
  const CliRun& r = cached({"tokenize", "-m", kSmolDir, "--decode", ids});
  expect_ok(r);
  EXPECT_EQ(r.out, kChatText + "\n");
  // JSON form, ids given as a JSON array.
  const CliRun& j = cached({"tokenize", "-m", kSmolDir, "--decode", g["ids"].dump(), "--json"});
  expect_ok(j);
  const json d = parse_one(j);
  EXPECT_EQ(d["ids"], g["ids"]);
  EXPECT_EQ(d["text"], kChatText);
}

TEST(CliTokenize, BadDecodeIdsAreErrors) {
  expect_error(cached({"tokenize", "-m", kSmolDir, "--decode", "abc"}), {"--decode", "'abc'", "not a token id"});
  expect_error(cached({"tokenize", "-m", kSmolDir, "--decode", "1,99999999"}), {"99999999", "outside the vocabulary"});
}

// Qwen2's NFC normalizer end to end: decomposed "re\u0301sume\u0301" hits the normalized added token "résumé".
TEST(CliTokenize, NormalizesNfc) {
  const json g = golden_case("qwen2_nfc", corpus_index("cafe\u0301 re\u0301sume\u0301 nai\u0308ve Zu\u0308rich Dvor\u030ca\u0301k"));
  const CliRun& r = cached({"tokenize", "-m", kData + "/tokenizer/qwen2_nfc",
                         "cafe\u0301 re\u0301sume\u0301 nai\u0308ve Zu\u0308rich Dvor\u030ca\u0301k", "--json"});
  expect_ok(r);
  EXPECT_EQ(parse_one(r)["ids"], g["ids"]);
}

// A byte-level BPE drops bytes it has no token for, as HF does (SmolLM2 lacks 0xFF); the CLI says so.
TEST(CliTokenize, WarnsAboutBytesWithoutToken) {
  const CliRun& r = cached({"tokenize", "-m", kSmolDir, "a\xff\xff" "b", "--json"});
  expect_ok(r);
  EXPECT_NE(r.err.find("warning: 2 bytes of the input have no token in this vocabulary"), std::string::npos) << show(r);
  EXPECT_NE(r.err.find("will not give the input back"), std::string::npos) << show(r);
  EXPECT_EQ(parse_one(r)["ids"].size(), 2u);  // "a", "b"
  const CliRun& clean = cached({"tokenize", "-m", kSmolDir, kHello, "--json"});
  EXPECT_EQ(clean.err.find("warning"), std::string::npos) << show(clean);
}

// Gemma 3's SentencePiece tokenizer keeps any bytes: each invalid one is its <0xXX> token.
TEST(CliTokenize, GemmaKeepsInvalidBytes) {
  if (!fs::exists(retort_test::gemma3_path()))
    GTEST_SKIP() << "Gemma 3 270M not found at " << retort_test::gemma3_path();
  const std::string input = "\xff\xfe abc";
  const CliRun& r = cached({"tokenize", "--model", "gemma3-270m", input, "--json"});
  expect_ok(r);
  EXPECT_EQ(r.err.find("warning"), std::string::npos) << show(r);
  const json j = parse_one(r);
  ASSERT_GE(j["ids"].size(), 3u);
  std::string hex;
  for (const auto& p : j["pieces_hex"]) hex += p.get<std::string>();
  EXPECT_EQ(hex, "fffe20616263");
  const CliRun& d = cached({"tokenize", "--model", "gemma3-270m", "--decode", j["ids"].dump()});
  expect_ok(d);
  EXPECT_EQ(d.out, input + "\n");
}

// ---- inspect --------------------------------------------------------------------------------

TEST(Cli, InspectDefaultModelJson) {
  NEED_MODEL();
  const CliRun& r = cached({"inspect", "smollm2-135m-instruct", "--json", "-t", "2"});
  expect_ok(r);
  const json j = parse_one(r);
  EXPECT_EQ(j["format"], "gguf");
  EXPECT_EQ(j["hparams"]["arch"], "llama");
  EXPECT_EQ(j["hparams"]["n_layer"], 30);
  EXPECT_EQ(j["hparams"]["n_embd"], 576);
  EXPECT_EQ(j["hparams"]["n_vocab"], 49152);
  EXPECT_EQ(std::llround(j["parameters"].get<double>() / 1e5), 1345) << j["parameters"];  // 134.5M
  ASSERT_TRUE(j["tensor_types"].contains("Q4_1")) << j["tensor_types"];
  EXPECT_GT(j["tensor_types"]["Q4_1"]["tensors"].get<int>(), 200);
  int64_t n_q41 = 0, n_listed = 0;
  for (const auto& t : j["tensors"]) {
    ++n_listed;
    if (t["type"] == "Q4_1") ++n_q41;
  }
  EXPECT_EQ(n_q41, j["tensor_types"]["Q4_1"]["tensors"].get<int64_t>());
  int64_t n_by_type = 0;
  for (const auto& [type, e] : j["tensor_types"].items()) n_by_type += e["tensors"].get<int64_t>();
  EXPECT_EQ(n_listed, n_by_type);
  EXPECT_EQ(j["tokenizer"]["pre_tokenizer"], "smollm");
  EXPECT_EQ(j["tokenizer"]["n_vocab"], 49152);
  EXPECT_EQ(j["tokenizer"]["special"]["eos"]["text"], "<|im_end|>");
  EXPECT_EQ(j["chat_template"]["format"], "chatml");
  EXPECT_EQ(j["metadata"]["general.architecture"], "llama");
  EXPECT_EQ(j["metadata"]["llama.block_count"], 30);  // typed values, not their printed form
  EXPECT_EQ(j["memory"]["file_bytes"].get<uint64_t>(), fs::file_size(model_path()));
}

TEST(Cli, InspectHfDirectory) {
  const std::string dir = kData + "/hf/tiny-qwen2";
  const json cfg = json::parse(read_all(dir + "/config.json"));
  const CliRun& j = cached({"inspect", dir, "--json"});
  expect_ok(j);
  const json x = parse_one(j);
  EXPECT_EQ(x["format"], "hf");
  EXPECT_EQ(x["hparams"]["arch"], "qwen2");
  EXPECT_EQ(x["hparams"]["n_layer"], cfg["num_hidden_layers"]);
  EXPECT_EQ(x["hparams"]["n_embd"], cfg["hidden_size"]);
  EXPECT_EQ(x["hparams"]["n_head_kv"], cfg["num_key_value_heads"]);
  EXPECT_EQ(x["hparams"]["qkv_bias"], true);
  EXPECT_TRUE(x["tensor_types"].contains("BF16")) << x["tensor_types"];
  EXPECT_EQ(x["tokenizer"]["n_vocab"], 256);
  // The human-readable form.
  const CliRun& t = cached({"inspect", dir});
  expect_ok(t);
  EXPECT_NE(t.out.find("(hf)"), std::string::npos) << t.out;
  EXPECT_NE(t.out.find("architecture qwen2: " + std::to_string(cfg["num_hidden_layers"].get<int>()) + " layers"),
            std::string::npos)
      << t.out;
  EXPECT_NE(t.out.find("chat         none"), std::string::npos) << t.out;
}

// ---- generate -------------------------------------------------------------------------------

namespace {

const std::string kPrompt = "The capital of France is";

const CliRun& greedy_json() {
  return cached({"generate", "--prompt", kPrompt, "--temperature", "0", "--max-tokens", "8", "--json",
                 "--top-logprobs", "5", "-t", "2"});
}

void expect_sorted_desc(const json& alts) {
  for (size_t k = 1; k < alts.size(); ++k)
    EXPECT_GE(alts[k - 1]["logprob"].get<double>(), alts[k]["logprob"].get<double>()) << alts;
}

}  // namespace

TEST(Cli, GenerateGreedyJsonWithTopLogprobs) {
  NEED_MODEL();
  const CliRun& r = greedy_json();
  expect_ok(r);
  const auto lines = parse_lines(r);
  ASSERT_EQ(lines.size(), 1u) << show(r);
  const json& x = lines[0];
  EXPECT_EQ(x["id"], 0);
  const std::string finish = x["finish_reason"];
  EXPECT_TRUE(finish == "length" || finish == "stop") << finish;
  const json& toks = x["tokens"];
  ASSERT_GE(toks.size(), 1u);
  EXPECT_LE(toks.size(), 8u);
  if (finish == "length") EXPECT_EQ(toks.size(), 8u);
  EXPECT_EQ(x["usage"]["completion_tokens"], toks.size());
  // Prompt length: the tokenizer's own count (no BOS for SmolLM2: add_bos_token is false).
  const CliRun& tk = cached({"tokenize", kPrompt, "--json", "--add-bos"});
  expect_ok(tk);
  EXPECT_EQ(x["usage"]["prompt_tokens"], parse_one(tk)["n_tokens"]);
  std::string text;
  for (const auto& t : toks) {
    SCOPED_TRACE(t.dump());
    text += t["token"].get<std::string>();
    const double lp = t["logprob"], lp_raw = t["logprob_raw"];
    EXPECT_TRUE(std::isfinite(lp) && lp <= 0) << lp;
    EXPECT_TRUE(std::isfinite(lp_raw) && lp_raw <= 0) << lp_raw;
    ASSERT_EQ(t["top_logprobs"].size(), 5u);
    ASSERT_EQ(t["top_logprobs_raw"].size(), 5u);
    expect_sorted_desc(t["top_logprobs"]);
    expect_sorted_desc(t["top_logprobs_raw"]);
    // Greedy: the chosen token is the most likely raw alternative, with the same logprob.
    EXPECT_EQ(t["top_logprobs_raw"][0]["id"], t["id"]);
    EXPECT_NEAR(t["top_logprobs_raw"][0]["logprob"].get<double>(), lp_raw, 1e-6);
    // Five distinct alternatives, each with its token text.
    std::vector<int> ids;
    for (const auto& a : t["top_logprobs_raw"]) ids.push_back(a["id"]);
    std::sort(ids.begin(), ids.end());
    EXPECT_EQ(std::adjacent_find(ids.begin(), ids.end()), ids.end());
  }
  EXPECT_EQ(x["text"], text);
  EXPECT_NE(r.err.find("tokens in"), std::string::npos) << show(r);  // the timing line goes to stderr
}

// --prompts: three lines (one with "messages", ids of two kinds and one missing), formatted with
// --chat --system, sampled at temperature 1 with a seed. CliRun twice: the same seed repeats exactly.
namespace {

const std::string kSystem = "You are terse.";

std::string prompts_file() {
  const std::string p = tmp_path("prompts.jsonl");
  if (!fs::exists(p))
    retort::write_file_atomic(p,
                              "{\"id\": \"first\", \"prompt\": \"Name a color.\"}\n"
                              "{\"id\": 7, \"messages\": [{\"role\": \"user\", \"content\": \"Say hi.\"}]}\n"
                              "\n"
                              "{\"prompt\": \"Count to three.\"}\n");
  return p;
}

std::vector<std::string> sampled_args() {
  return {"generate", "--prompts", prompts_file(), "--chat", "--system", kSystem, "--temperature", "1", "--seed",
          "1234", "--max-tokens", "4", "--json", "-t", "2"};
}

// ChatML as SmolLM2's template renders it when a system message is given.
std::string chatml(const std::string& user) {
  return "<|im_start|>system\n" + kSystem + "<|im_end|>\n<|im_start|>user\n" + user +
         "<|im_end|>\n<|im_start|>assistant\n";
}

}  // namespace

TEST(Cli, GeneratePromptsFileInOrderWithIds) {
  NEED_MODEL();
  const CliRun& r = cached(sampled_args());
  expect_ok(r);
  const auto lines = parse_lines(r);
  ASSERT_EQ(lines.size(), 3u) << show(r);
  EXPECT_EQ(lines[0]["id"], "first");
  EXPECT_EQ(lines[1]["id"], 7);
  EXPECT_EQ(lines[2]["id"], 4);  // no "id": the line number (the blank line 3 is skipped)
  // --chat --system reached every prompt: each prompt is its rendered ChatML conversation. One
  // tokenize of the three renders back to back (each starts with the special <|im_start|>, so the
  // ids are the three encodings concatenated); split before each "<|im_start|>" "system".
  const CliRun& tk = cached({"tokenize", chatml("Name a color.") + chatml("Say hi.") + chatml("Count to three."), "--json"});
  expect_ok(tk);
  const json pieces = parse_one(tk)["pieces"];
  std::vector<int64_t> counts;
  for (size_t k = 0; k < pieces.size(); ++k) {
    if (pieces[k] == "<|im_start|>" && k + 1 < pieces.size() && pieces[k + 1] == "system") counts.push_back(0);
    ASSERT_FALSE(counts.empty());
    ++counts.back();
  }
  ASSERT_EQ(counts.size(), 3u) << pieces;
  for (int i = 0; i < 3; ++i) {
    SCOPED_TRACE(i);
    EXPECT_LE(lines[i]["tokens"].size(), 4u);
    EXPECT_GE(lines[i]["tokens"].size(), 1u);
    EXPECT_EQ(lines[i]["usage"]["prompt_tokens"], counts[i]);
  }
}

TEST(Cli, GenerateSameSeedRepeats) {
  NEED_MODEL();
  const CliRun& a = cached(sampled_args());
  CliRun b = run_cli(sampled_args());
  expect_ok(a);
  expect_ok(b);
  EXPECT_FALSE(a.out.empty());
  EXPECT_EQ(a.out, b.out);  // ids, texts, logprobs, all of it
}

// Stream mode (no --json) with --chat, and `retort chat` on the same first message: both greedy, so
// both print the same reply.
TEST(Cli, ChatRepliesAndExits) {
  NEED_MODEL();
  const CliRun& c = cached({"chat", "--temperature", "0", "--max-tokens", "4", "-t", "2"}, "hi\n/exit\n");
  expect_ok(c);
  ASSERT_GE(c.out.size(), 2u) << show(c);
  EXPECT_EQ(c.out.back(), '\n');
  EXPECT_NE(c.out.find_first_not_of(" \n"), std::string::npos) << show(c);
  EXPECT_EQ(c.err.find("error"), std::string::npos) << show(c);
  const CliRun& g = cached({"generate", "--prompt", "hi", "--chat", "--temperature", "0", "--max-tokens", "4", "-t", "2"});
  expect_ok(g);
  EXPECT_EQ(c.out, g.out);
}

// ---- bad input ------------------------------------------------------------------------------

TEST(CliErrors, MissingModelPath) {
  expect_error(cached({"generate", "-m", "/nonexistent/dir/model.gguf", "--prompt", "x"}),
               {"/nonexistent/dir/model.gguf", "not found"});
}

TEST(CliErrors, TruncatedGguf) {
  // The first 1000 bytes of the model (or, without it, of a committed vocab-only GGUF).
  const std::string src = have_model() ? model_path() : kData + "/tokenizer/qwen2/tokenizer.gguf";
  const std::string p = tmp_path("truncated.gguf");
  retort::write_file_atomic(p, read_all(src).substr(0, 1000));
  expect_error(cached({"inspect", p}), {p, "truncated"});
}

TEST(CliErrors, WrongMagic) {
  const std::string p = tmp_path("wrong_magic.gguf");
  retort::write_file_atomic(p, "NOTG" + std::string(2000, 'x'));
  expect_error(cached({"inspect", p}), {p, "not a GGUF file"});
}

TEST(CliErrors, SafetensorsCorruptHeader) {
  const std::string dir = tmp_path("corrupt-qwen2");
  fs::create_directories(dir);
  for (const auto& e : fs::directory_iterator(kData + "/hf/tiny-qwen2"))
    fs::copy_file(e.path(), dir + "/" + e.path().filename().string(), fs::copy_options::overwrite_existing);
  std::string st = read_all(dir + "/model.safetensors");
  ASSERT_GT(st.size(), 16u);
  st.replace(8, 4, "{{{{");  // the JSON header after the 8-byte length
  retort::write_file_atomic(dir + "/model.safetensors", st);
  expect_error(cached({"inspect", dir}), {dir + "/model.safetensors", "header"});
  // A header length past the end of the file.
  std::string st2 = st;
  for (int k = 0; k < 8; ++k) st2[k] = k == 5 ? '\x01' : '\0';
  retort::write_file_atomic(dir + "/model.safetensors", st2);
  expect_error(run_cli({"inspect", dir}), {dir + "/model.safetensors"});
}

TEST(CliErrors, PromptsFileWithNonJsonLine) {
  const std::string p = tmp_path("bad_prompts.jsonl");
  retort::write_file_atomic(p, "{\"prompt\": \"fine\"}\n{\"prompt\": not json}\n");
  expect_error(cached({"generate", "--prompts", p}), {p + ":2:", "not valid JSON"});
  expect_error(cached({"generate", "--prompts", tmp_path("no_such.jsonl")}), {tmp_path("no_such.jsonl"), "cannot open"});
}

TEST(CliErrors, DeviceCudaOnCpuBuild) {
#ifdef RETORT_CUDA
  GTEST_SKIP() << "this build has CUDA";
#endif
  expect_error(cached({"generate", "--prompt", "hi", "--device", "cuda"}), {"--device cuda", "no CUDA"});
}

TEST(CliErrors, BadGenerateOptions) {
  expect_error(cached({"generate", "--prompt", "hi", "--max-tokens", "0"}), {"--max-tokens"});
  expect_error(cached({"generate", "--max-tokens", "4"}), {"--prompt", "--prompts"});
}

TEST(CliErrors, UnknownShortNameListsCacheAndSetup) {
  // A cache of our own, so the message is the same with or without the default model installed.
  const std::string home = tmp_path("home");
  fs::create_directories(home + "/models");
  retort::write_file_atomic(home + "/models/some-other-model.gguf", "");
  const CliRun r = run_cli({"inspect", "no-such-model"}, "", {"RETORT_HOME=" + home});
  expect_error(r, {"\"no-such-model\"", home + "/models", "some-other-model", "scripts/setup.sh"});
}

TEST(CliErrors, UnknownSubcommandExitsNonZero) {
  const CliRun& r = cached({"frobnicate"});
  EXPECT_EQ(r.signal, 0) << show(r);
  EXPECT_NE(r.code, 0) << show(r);
}

// ---- watermark ------------------------------------------------------------------------------

namespace {
std::string keygen(const std::string& name) {
  const std::string path = tmp_path(name);
  fs::remove(path);
  const CliRun r = run_cli({"watermark", "keygen", "-o", path});
  expect_ok(r);
  return path;
}
// A fixed key (64 hex digits) in a file: tests whose assertions are statistical thresholds use these so a
// run is reproducible (with fresh random keys each false-positive check fails about one run in 1,000).
std::string fixed_key(const std::string& name, const std::string& hex) {
  const std::string path = tmp_path(name);
  retort::write_file_atomic(path, hex + "\n");
  return path;
}
std::string trimmed(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}
}  // namespace

// keygen writes 64 hex digits, owner-only, and prints the commitment, never the key.
TEST(CliWatermark, KeygenPrintsOnlyTheCommitment) {
  const std::string path = tmp_path("keygen.key");
  fs::remove(path);
  const CliRun r = run_cli({"watermark", "keygen", "-o", path});
  expect_ok(r);
  const std::string hex = trimmed(read_all(path));
  ASSERT_EQ(hex.size(), 64u);
  EXPECT_EQ(fs::status(path).permissions() & fs::perms::all, fs::perms::owner_read | fs::perms::owner_write);
  EXPECT_EQ((r.out + r.err).find(hex), std::string::npos) << "the key itself was printed";
  EXPECT_NE(r.out.find(retort::key_from_hex(hex, "test").commitment()), std::string::npos) << show(r);
  // An existing file is not overwritten.
  const CliRun again = run_cli({"watermark", "keygen", "-o", path});
  EXPECT_NE(again.code, 0) << show(again);
  EXPECT_EQ(trimmed(read_all(path)), hex);
}

// Bad input gets an error naming what is wrong (and never echoes key material), or a
// "too short to test" result without a p-value; never a crash.
TEST(CliWatermark, BadInputErrorsAndTooShort) {
  const std::string key = keygen("bad-input.key");
  const std::string bad_key = tmp_path("bad.key");
  retort::write_file_atomic(bad_key, "not-a-key-secret-value\n");
  const CliRun wrong_format = run_cli({"watermark", "detect", "-m", kSmolDir, "--text", "hi", "--key-file", bad_key});
  expect_error(wrong_format, {bad_key, "64 hex digits"});
  EXPECT_EQ(wrong_format.err.find("not-a-key-secret-value"), std::string::npos) << "key file contents echoed";
  expect_error(run_cli({"watermark", "detect", "-m", kSmolDir, "--text", "hi"}, "", {"RETORT_WATERMARK_KEY"}),
               {"RETORT_WATERMARK_KEY", "--key-file"});
  const std::string jl = tmp_path("docs.jsonl");
  retort::write_file_atomic(jl, "{\"text\": \"a b c\"}\nnot json\n");
  expect_error(run_cli({"watermark", "detect", "-m", kSmolDir, "--jsonl", jl, "--key-file", key}), {jl + ":2", "JSON"});
  expect_error(run_cli({"watermark", "detect", "-m", kSmolDir, "--jsonl", jl, "--field", "body", "--key-file", key}),
               {jl + ":1", "\"body\""});
  // Empty text and text shorter than the context: reported too short, no p-value from nothing.
  for (const std::string& text : {std::string(""), std::string("Hi")}) {
    const CliRun r = run_cli({"watermark", "detect", "-m", kSmolDir, "--text", text, "--key-file", key, "--json"});
    expect_ok(r);
    const json j = parse_one(r);
    EXPECT_TRUE(j["documents"][0]["too_short"].get<bool>()) << show(r);
    EXPECT_TRUE(j["aggregate"]["too_short"].get<bool>()) << show(r);
  }
}

// A user's round trip: generate watermarked chat completions as JSONL, detect them from the
// text with the right key (every document), the wrong key (nothing), and per account.
TEST(CliWatermark, GenerateThenDetectKgwAndSynthidAccounts) {
  NEED_MODEL();
  const std::string key = fixed_key("roundtrip.key", "5f3c0a9e8d7b6c5a4f3e2d1c0b9a8f7e6d5c4b3a29181716151413121110f0e1");
  const std::string other = fixed_key("other.key", "a1b2c3d4e5f60718293a4b5c6d7e8f90123456789abcdef0fedcba9876543210");
  const std::string prompts = tmp_path("wm_prompts.jsonl");
  retort::write_file_atomic(prompts,
                            "{\"prompt\": \"Write about rivers.\"}\n{\"prompt\": \"Describe a busy market.\"}\n"
                            "{\"prompt\": \"Explain how bread is made.\"}\n");
  auto gen = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"generate", "--prompts", prompts, "--chat", "--temperature", "1", "--seed", "3",
                                     "--max-tokens", "64", "--ignore-eos", "--json", "--watermark-key-file", key};
    args.insert(args.end(), extra.begin(), extra.end());
    CliRun r = run_cli(args);
    expect_ok(r);
    return r;
  };
  // KGW δ = 4 (at δ = 2 a 64-token document misses p < 1e-4 about one time in six).
  const CliRun kgw = gen({"--watermark", "kgw", "--watermark-delta", "4"});
  const std::string kgw_out = tmp_path("kgw_out.jsonl");
  retort::write_file_atomic(kgw_out, kgw.out);
  const json right = parse_one(run_cli({"watermark", "detect", "--jsonl", kgw_out, "--key-file", key, "--json"}));
  ASSERT_EQ(right["documents"].size(), 3u);
  for (const auto& d : right["documents"]) EXPECT_LT(d["p_value"].get<double>(), 1e-4) << d;
  EXPECT_LT(right["aggregate"]["log10_p"].get<double>(), -12) << right["aggregate"];
  const json wrong = parse_one(run_cli({"watermark", "detect", "--jsonl", kgw_out, "--key-file", other, "--json"}));
  EXPECT_GT(wrong["aggregate"]["p_value"].get<double>(), 1e-3) << wrong["aggregate"];

  // SynthID with a per-account key: among 20 accounts the right one comes first and is the
  // only one significant after Holm–Bonferroni.
  const CliRun sid = gen({"--watermark", "synthid", "--watermark-account", "acct-7"});
  const std::string sid_out = tmp_path("sid_out.jsonl"), accounts = tmp_path("accounts.txt");
  retort::write_file_atomic(sid_out, sid.out);
  std::string acc;
  for (int i = 0; i < 20; ++i) acc += "acct-" + std::to_string(i) + "\n";
  retort::write_file_atomic(accounts, acc);
  const CliRun det = run_cli({"watermark", "detect", "--scheme", "synthid", "--jsonl", sid_out, "--key-file", key,
                              "--accounts", accounts, "--json"});
  expect_ok(det);
  const json ranked = parse_one(det)["accounts"];
  ASSERT_EQ(ranked.size(), 20u) << show(det);
  EXPECT_EQ(ranked[0]["account"], "acct-7") << ranked[0];
  EXPECT_LT(ranked[0]["p_holm"].get<double>(), 1e-3) << ranked[0];
  for (size_t i = 1; i < ranked.size(); ++i) EXPECT_GT(ranked[i]["p_holm"].get<double>(), 1e-3) << ranked[i];
}

// --entropy-model: the key holder's model reads each document's prompt (chat-formatted) and text, and
// positions where its next-token entropy is below --min-entropy are skipped (counted in the JSON); at
// threshold 0 nothing is skipped and the result is the unfiltered one. Bad combinations are errors.
TEST(CliWatermark, EntropyFilterReadsThePromptAndSkipsLowEntropyPositions) {
  NEED_MODEL();
  const std::string key = fixed_key("entropy.key", "0f1e2d3c4b5a69788796a5b4c3d2e1f000112233445566778899aabbccddeeff");
  const std::vector<std::string> asks = {"Write about rivers.", "What is 12 times 7? Answer with the number only.",
                                         "Name the days of the week in order."};
  const std::string prompts = tmp_path("entropy_prompts.jsonl");
  std::string pl;
  for (const auto& a : asks) pl += json{{"prompt", a}}.dump() + "\n";
  retort::write_file_atomic(prompts, pl);
  const CliRun g = run_cli({"generate", "--prompts", prompts, "--chat", "--temperature", "1", "--seed", "5", "--max-tokens",
                            "48", "--json", "--watermark", "kgw", "--watermark-key-file", key});
  expect_ok(g);
  const std::vector<json> gen = parse_lines(g);
  ASSERT_EQ(gen.size(), asks.size()) << show(g);
  std::string docs;
  for (size_t i = 0; i < gen.size(); ++i) docs += json{{"id", i}, {"prompt", asks[i]}, {"text", gen[i]["text"]}}.dump() + "\n";
  const std::string jl = tmp_path("entropy_docs.jsonl");
  retort::write_file_atomic(jl, docs);
  auto detect = [&](std::vector<std::string> extra) {
    std::vector<std::string> args = {"watermark", "detect", "--jsonl", jl, "--key-file", key, "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    const CliRun r = run_cli(args);
    expect_ok(r);
    return parse_one(r);
  };
  const json plain = detect({});
  const json filtered = detect({"--entropy-model", "smollm2-135m-instruct", "--min-entropy", "0.5"});
  const json zero = detect({"--entropy-model", "smollm2-135m-instruct", "--min-entropy", "0"});
  EXPECT_EQ(filtered["params"]["min_entropy"].get<double>(), 0.5);
  EXPECT_EQ(filtered["params"]["documents_with_prompt"].get<int64_t>(), 3);
  EXPECT_EQ(filtered["params"]["prompt_format"], "chat");
  EXPECT_FALSE(plain["documents"][0].contains("tokens_skipped_low_entropy"));
  int64_t skipped = 0;
  for (size_t i = 0; i < asks.size(); ++i) {
    const json& f = filtered["documents"][i];
    const json& p = plain["documents"][i];
    const json& z = zero["documents"][i];
    EXPECT_EQ(f["tokens"], p["tokens"]);
    EXPECT_TRUE(f["prompt_used"].get<bool>());
    skipped += f["tokens_skipped_low_entropy"].get<int64_t>();
    EXPECT_LE(f["tokens_scored"].get<int64_t>(), p["tokens_scored"].get<int64_t>()) << f;
    EXPECT_EQ(z["tokens_skipped_low_entropy"].get<int64_t>(), 0) << z;
    EXPECT_EQ(z["tokens_scored"], p["tokens_scored"]);
    EXPECT_EQ(z["score"], p["score"]);
  }
  EXPECT_GT(skipped, 0) << "a list of weekdays and a one-number answer have near-certain tokens";
  EXPECT_EQ(filtered["aggregate"]["tokens_skipped_low_entropy"].get<int64_t>(), skipped);
  // Text output names the filter and its column.
  const CliRun text = run_cli({"watermark", "detect", "--jsonl", jl, "--key-file", key, "--entropy-model",
                               "smollm2-135m-instruct"});
  expect_ok(text);
  EXPECT_NE(text.out.find("low-H"), std::string::npos) << show(text);
  expect_error(run_cli({"watermark", "detect", "--scheme", "synthid", "--jsonl", jl, "--key-file", key,
                        "--entropy-model", "smollm2-135m-instruct"}),
               {"--entropy-model", "synthid"});
  expect_error(run_cli({"watermark", "detect", "--jsonl", jl, "--key-file", key, "--entropy-model",
                        "smollm2-135m-instruct", "--min-entropy", "-1"}),
               {"--min-entropy"});
  expect_error(run_cli({"watermark", "detect", "--jsonl", jl, "--key-file", key, "--prompt", "hi"}), {"--prompt"});
}

// ---- distill main job ------------------------------------------------------------------------

// The main job end to end at toy size (capture → prune → ce and fkl runs → eval → export):
// flags override the config (every trainer flag, not only some), and a rerun with other
// training settings moves the earlier run aside instead of failing or reusing it.
TEST(CliDistill, MainJobFlagsOverrideConfigAndStaleRunsMoveAside) {
  NEED_MODEL();
  const std::string out = tmp_path("mainjob");
  fs::remove_all(out);
  const std::string config = std::string(RETORT_SOURCE_DIR) + "/configs/quickstart.json";
  // Two tasks of the shipped set, so the task step runs without the whole set's minute.
  const std::string tasks = tmp_path("mainjob-tasks.jsonl");
  {
    std::ifstream in(std::string(RETORT_SOURCE_DIR) + "/data/tasks/tasks.jsonl");
    std::ofstream t(tasks);
    std::string l;
    for (int i = 0; i < 2 && std::getline(in, l); ++i) t << l << "\n";
  }
  // --batch 2 (the config has 8): a step costs about a quarter. The first run trains both losses; the
  // reruns train fkl alone (--losses fkl), since what they check is how the fkl run and the stores move aside.
  auto job = [&](const std::string& steps, const std::string& capture_tokens, const std::string& losses) {
    return run_cli({"distill", "--config", config, "--out", out, "--train-limit", "8", "--heldout-limit", "4",
                    "--capture-max-tokens", capture_tokens, "--steps", steps, "--warmup", "2", "--clip", "0.5",
                    "--batch", "2", "--losses", losses, "--tasks", tasks, "--quiet"});
  };
  const CliRun first = job("2", "8", "ce,fkl");
  expect_ok(first);
  const json state = json::parse(read_all(out + "/train-fkl/checkpoints/step-000002/trainer_state.json"));
  EXPECT_EQ(state["config"]["warmup"], 2) << state["config"];
  EXPECT_EQ(state["config"]["clip"], 0.5) << state["config"];
  EXPECT_EQ(state["config"]["batch"], 2) << state["config"];
  EXPECT_TRUE(fs::exists(out + "/train-ce/checkpoints/step-000002"));
  std::ifstream metrics(out + "/train-fkl/metrics.jsonl");
  std::string line;
  ASSERT_TRUE(std::getline(metrics, line));
  const double lr = json::parse(read_all(config))["train"]["lr"].get<double>();
  EXPECT_DOUBLE_EQ(json::parse(line)["lr"].get<double>(), lr / 2);  // the config's lr × step 1 / warmup 2
  // The summary: each model's own greedy answers to the 4 held-out prompts (at most 8 tokens each), the
  // tasks for the teacher and the KD student.
  const json summary = json::parse(read_all(out + "/summary.json"));
  ASSERT_EQ(summary["table"].size(), 4u) << summary["table"];  // teacher, student before, SFT-only (ce), KD (fkl)
  for (const auto& row : summary["table"]) {
    if (row["model"] == "student before") continue;  // not measured: an untrained student
    ASSERT_TRUE(row.contains("answers")) << row;
    EXPECT_EQ(row["answers"]["answers"], 4) << row;
    EXPECT_LE(row["answers"]["mean_tokens"].get<double>(), 8.0) << row;
    EXPECT_TRUE(row["answers"]["teacher_nll"].is_number()) << row;
  }
  EXPECT_EQ(summary["tasks"]["overall"]["n"], 2) << summary["tasks"];
  EXPECT_TRUE(fs::exists(out + "/student-fkl-q8_0.gguf"));
  EXPECT_TRUE(fs::exists(out + "/train-fkl/final/model.safetensors"));

  const CliRun again = job("3", "8", "fkl");
  expect_ok(again);
  EXPECT_NE(again.err.find("moved it to " + out + "/train-fkl.previous-1"), std::string::npos) << show(again);
  EXPECT_TRUE(fs::exists(out + "/train-fkl.previous-1/checkpoints/step-000002"));
  EXPECT_TRUE(fs::exists(out + "/train-fkl/checkpoints/step-000003"));

  // Other capture settings: the stores are captured again and the run trained on the old train store
  // is moved aside with them — nothing reused that the config no longer describes, nothing deleted.
  const CliRun recaptured = job("3", "6", "fkl");
  expect_ok(recaptured);
  EXPECT_NE(recaptured.err.find("was captured with other settings (max_tokens 8 (now 6))"), std::string::npos)
      << show(recaptured);
  EXPECT_TRUE(fs::exists(out + "/data/train.previous-1/manifest.json"));
  EXPECT_TRUE(fs::exists(out + "/data/heldout.previous-1/manifest.json"));
  EXPECT_TRUE(fs::exists(out + "/train-fkl.previous-2/checkpoints/step-000003"));
  EXPECT_EQ(json::parse(read_all(out + "/data/train/manifest.json"))["generation"]["max_tokens"], 6);
  expect_error(run_cli({"distill", "--config", config, "--loss", "fkl"}), {"--losses", "--loss"});
}

// Tests for retort/distill/capture with the default model (skipped when it is absent):
// the stored signal equals what generate() returns for the same seeds; a teacher-forced score
// of the captured completions reproduces the stored top-k logprobs (two independent paths:
// the cached fused decode step vs one full forward); a limited run resumed equals a straight
// run; bad prompts files and mismatching resumes are clear errors; the CLI end to end.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>
#include <unistd.h>

#include "retort/decode/generate.h"
#include "retort/distill/capture.h"
#include "retort/distill/signal_store.h"
#include "retort/model/loader.h"
#include "retort/text/chat_template.h"
#include "retort/text/tokenizer.h"
#include "retort/util/error.h"
#include "retort/util/file.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using namespace retort_test;
using nlohmann::json;

namespace {

std::string default_model_path() {
  const char* home = std::getenv("RETORT_HOME");
  std::string base =
      home && *home ? home : std::string(std::getenv("HOME") ? std::getenv("HOME") : "") + "/.cache/retort";
  return base + "/models/smollm2-135m-instruct.gguf";
}

// Three prompts: a raw prompt (chat-formatted), a conversation, one with its own system message.
const std::vector<json> kPrompts = {
    {{"prompt", "What is the capital of France?"}},
    {{"messages", json::array({{{"role", "user"}, {"content", "Name three colors."}}})}},
    {{"prompt", "Say hello."}, {"system", "You are terse."}},
};

void write_jsonl(const std::string& path, const std::vector<json>& lines) {
  std::string s;
  for (const auto& j : lines) s += j.dump() + "\n";
  write_file_atomic(path, s);
}

CaptureOptions base_options(const std::string& prompts, const std::string& out) {
  CaptureOptions o;
  o.prompts_path = prompts;
  o.out_dir = out;
  o.samples_per_prompt = 2;
  o.max_tokens = 8;
  o.k = 5;
  o.sampling.temperature = 1.0;
  o.sampling.seed = 1234;
  o.batch = 6;  // every sample in one decode batch: fewest steps
  o.shard_samples = 4;
  o.progress = false;
  return o;
}

// Prompt ids built here from the template and tokenizer directly.
std::vector<int32_t> expected_prompt(const LoadedModel& m, const json& line) {
  std::vector<ChatMessage> msgs;
  if (line.contains("system")) msgs.push_back({"system", line["system"]});
  if (line.contains("messages"))
    for (const auto& x : line["messages"]) msgs.push_back({x["role"], x["content"]});
  else
    msgs.push_back({"user", line["prompt"]});
  ChatTemplate tpl = ChatTemplate::from_jinja(m.chat_template, *m.tokenizer);
  return m.tokenizer->encode(tpl.render(msgs, true), true, false);
}

std::map<int64_t, SignalSample> by_id(const SignalStore& st) {
  std::map<int64_t, SignalSample> out;
  for (int64_t i = 0; i < st.n_samples(); ++i) out[st.sample(i).id] = st.sample(i);
  return out;
}

template <class Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

class Capture : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!fs::exists(default_model_path())) return;
    model_ = new LoadedModel(load_model(default_model_path()));
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
  }
  void SetUp() override {
    if (!model_) GTEST_SKIP() << "default model not found at " << default_model_path() << " (run scripts/setup.sh)";
  }
  static LoadedModel* model_;
};
LoadedModel* Capture::model_ = nullptr;

}  // namespace

TEST_F(Capture, GenerateStoresWhatGenerateReturnsAndScoreAgrees) {
  TempDir tmp;
  const std::string prompts = tmp.str("prompts.jsonl");
  write_jsonl(prompts, kPrompts);
  CaptureOptions o = base_options(prompts, tmp.str("gen"));
  CaptureSummary sum = capture(*model_, "smollm2", o);
  EXPECT_EQ(sum.prompts, 3);
  EXPECT_EQ(sum.samples_total, 6);
  EXPECT_EQ(sum.samples_written, 6);
  EXPECT_EQ(sum.samples_skipped, 0);

  SignalStore st = SignalStore::open(o.out_dir);
  const StoreManifest& man = st.manifest();
  EXPECT_TRUE(man.complete);
  EXPECT_EQ(man.k, 5);
  EXPECT_EQ(man.n_vocab, model_->hparams.n_vocab);
  EXPECT_EQ(man.tokenizer_hash, model_->tokenizer->hash());
  EXPECT_EQ(man.teacher["sha256"].get<std::string>().size(), 64u);
  EXPECT_EQ(man.generation["seed"], 1234);
  EXPECT_EQ(man.prompts["count"], 3);
  EXPECT_TRUE(man.watermark.is_null());
  EXPECT_EQ(man.shards.size(), 2u);  // 6 samples, 4 per shard
  ASSERT_EQ(st.n_samples(), 6);

  // Regenerate every sample with generate() and its documented seed, all in one batch.
  std::vector<GenerationRequest> reqs;
  for (int64_t id = 0; id < 6; ++id) {
    GenerationRequest r;
    r.prompt = expected_prompt(*model_, kPrompts[id / 2]);
    r.sampling = o.sampling;
    r.sampling.seed = capture_sample_seed(o.sampling.seed, id / 2, id % 2);
    r.max_tokens = o.max_tokens;
    r.top_logprobs = o.k;
    reqs.push_back(std::move(r));
  }
  std::vector<GenerationResult> want = generate(*model_, reqs);
  auto got = by_id(st);
  ASSERT_EQ(got.size(), 6u);
  const int64_t k = o.k;
  for (int64_t id = 0; id < 6; ++id) {
    SCOPED_TRACE(cat("sample ", id));
    const SignalSample& s = got.at(id);
    ASSERT_EQ(std::vector<int32_t>(s.tokens, s.tokens + s.prompt_len), reqs[id].prompt);
    ASSERT_EQ(s.completion_len(), int64_t(want[id].tokens.size()));
    for (int64_t j = 0; j < s.completion_len(); ++j) {
      const GeneratedToken& t = want[id].tokens[j];
      EXPECT_EQ(s.tokens[s.prompt_len + j], t.token);
      // The kernels are batch-invariant (cpu_kernels.h): capture's batching gives the same bits.
      EXPECT_EQ(s.token_logprob[j], float(t.logprob_raw));
      double mass = 0;
      for (int64_t q = 0; q < k; ++q) {
        EXPECT_EQ(s.topk_ids[j * k + q], t.top_raw[q].token);
        EXPECT_EQ(s.topk_logprobs[j * k + q], float(t.top_raw[q].logprob));
        mass += std::exp(double(t.top_raw[q].logprob));
      }
      EXPECT_NEAR(s.tail_mass[j], std::max(0.0, 1.0 - mass), 1e-6);
    }
  }
  // The two samples of a prompt use distinct seeds: somewhere they differ.
  int differing = 0;
  for (int p = 0; p < 3; ++p) differing += want[2 * p].text != want[2 * p + 1].text;
  EXPECT_GT(differing, 0);

  // Score mode over the captured completions: the same prompts plus the decoded completion
  // (without the end-of-turn token, which score mode appends). Retokenization can differ from the
  // sampled tokens, so compare the common prefix and require that it covers most positions.
  std::vector<json> pairs;
  const std::set<int32_t> eos(model_->eos_ids.begin(), model_->eos_ids.end());
  for (int64_t id = 0; id < 6; ++id) {
    const SignalSample& s = got.at(id);
    std::vector<int32_t> comp(s.tokens + s.prompt_len, s.tokens + s.n_tokens);
    while (!comp.empty() && eos.count(comp.back())) comp.pop_back();
    json line = kPrompts[id / 2];
    line["completion"] = model_->tokenizer->decode(comp);
    pairs.push_back(line);
  }
  const std::string pairs_path = tmp.str("pairs.jsonl");
  write_jsonl(pairs_path, pairs);
  CaptureOptions so = base_options(pairs_path, tmp.str("score"));
  so.mode = "score";
  so.samples_per_prompt = 1;
  so.batch = 3;
  CaptureSummary ssum = capture(*model_, "smollm2", so);
  EXPECT_EQ(ssum.samples_written, 6);
  SignalStore sst = SignalStore::open(so.out_dir);
  EXPECT_EQ(sst.manifest().mode, "score");
  auto scored = by_id(sst);
  const std::vector<int32_t> im_end = model_->tokenizer->encode("<|im_end|>", true, false);
  ASSERT_EQ(im_end.size(), 1u);
  int64_t compared = 0, total = 0, whole = 0;
  for (int64_t id = 0; id < 6; ++id) {
    SCOPED_TRACE(cat("sample ", id));
    const SignalSample& g = got.at(id);
    const SignalSample& s = scored.at(id);
    // Every scored chat completion ends its turn with <|im_end|>; where the generated sample stopped
    // on it and retokenizes to the same tokens, the two samples are the same sequence throughout.
    EXPECT_EQ(s.tokens[s.n_tokens - 1], im_end[0]);
    if (std::equal(s.tokens, s.tokens + s.n_tokens, g.tokens, g.tokens + g.n_tokens)) ++whole;
    ASSERT_EQ(s.prompt_len, g.prompt_len);
    ASSERT_TRUE(std::equal(s.tokens, s.tokens + s.prompt_len, g.tokens));
    total += g.completion_len();
    for (int64_t j = 0; j < std::min(s.completion_len(), g.completion_len()); ++j) {
      if (s.tokens[s.prompt_len + j] != g.tokens[g.prompt_len + j]) break;
      ++compared;
      EXPECT_NEAR(s.token_logprob[j], g.token_logprob[j], 2e-4);
      for (int64_t q = 0; q < k; ++q) {
        EXPECT_NEAR(s.topk_logprobs[j * k + q], g.topk_logprobs[j * k + q], 2e-4) << "position " << j << " rank " << q;
        // Ids agree unless two candidates are tied to within the tolerance.
        bool near_tie = (q > 0 && g.topk_logprobs[j * k + q - 1] - g.topk_logprobs[j * k + q] < 4e-4) ||
                        (q + 1 < k && g.topk_logprobs[j * k + q] - g.topk_logprobs[j * k + q + 1] < 4e-4);
        if (!near_tie) EXPECT_EQ(s.topk_ids[j * k + q], g.topk_ids[j * k + q]) << "position " << j << " rank " << q;
      }
      EXPECT_NEAR(s.tail_mass[j], g.tail_mass[j], 2e-4);
    }
  }
  EXPECT_GE(compared * 2, total) << "retokenized completions diverged too early to compare";
  int64_t stopped = 0;
  for (int64_t id = 0; id < 6; ++id) stopped += got.at(id).tokens[got.at(id).n_tokens - 1] == im_end[0];
  std::cout << "score mode: " << whole << " of " << stopped << " generated samples that stopped on <|im_end|> "
            << "are reproduced token for token, end-of-turn included\n";
  if (stopped > 0) EXPECT_GT(whole, 0);
}

TEST_F(Capture, LimitThenResumeEqualsStraightRun) {
  TempDir tmp;
  const std::string prompts = tmp.str("prompts.jsonl");
  write_jsonl(prompts, kPrompts);
  CaptureOptions straight = base_options(prompts, tmp.str("straight"));
  straight.shard_samples = 3;
  capture(*model_, "smollm2", straight);

  CaptureOptions part = straight;
  part.out_dir = tmp.str("resumed");
  part.limit = 2;
  part.batch = 4;  // other batching must not matter
  CaptureSummary s1 = capture(*model_, "smollm2", part);
  EXPECT_EQ(s1.samples_written, 4);
  EXPECT_FALSE(SignalStore::open(part.out_dir).manifest().complete);
  part.limit = 0;
  CaptureSummary s2 = capture(*model_, "smollm2", part);
  EXPECT_EQ(s2.samples_skipped, 4);
  EXPECT_EQ(s2.samples_written, 2);
  CaptureSummary s3 = capture(*model_, "smollm2", part);  // nothing left to do
  EXPECT_EQ(s3.samples_written, 0);

  SignalStore a = SignalStore::open(straight.out_dir), b = SignalStore::open(part.out_dir);
  EXPECT_TRUE(b.manifest().complete);
  auto ma = by_id(a), mb = by_id(b);
  ASSERT_EQ(ma.size(), 6u);
  ASSERT_EQ(mb.size(), 6u);
  const int64_t k = straight.k;
  for (const auto& [id, x] : ma) {
    SCOPED_TRACE(cat("sample ", id));
    const SignalSample& y = mb.at(id);
    ASSERT_EQ(x.n_tokens, y.n_tokens);
    ASSERT_EQ(x.prompt_len, y.prompt_len);
    EXPECT_TRUE(std::equal(x.tokens, x.tokens + x.n_tokens, y.tokens));
    EXPECT_TRUE(std::equal(x.topk_ids, x.topk_ids + x.completion_len() * k, y.topk_ids));
    // Bit-identical: a token's logits do not depend on the batch it was computed in (the kernels are
    // batch-invariant on the float32 path), so a resume that regroups the batch changes nothing.
    EXPECT_TRUE(std::equal(x.topk_logprobs, x.topk_logprobs + x.completion_len() * k, y.topk_logprobs));
    EXPECT_TRUE(std::equal(x.token_logprob, x.token_logprob + x.completion_len(), y.token_logprob));
  }

  // Other settings on the same store: refused, with the way out.
  CaptureOptions other = part;
  other.sampling.temperature = 0.5;
  std::string err = error_of([&] { capture(*model_, "smollm2", other); });
  EXPECT_NE(err.find("generation settings differ"), std::string::npos) << err;
  EXPECT_NE(err.find("new --out"), std::string::npos) << err;
  CaptureOptions other_k = part;
  other_k.k = 6;
  err = error_of([&] { capture(*model_, "smollm2", other_k); });
  EXPECT_NE(err.find("k is 5 in the store, 6 now"), std::string::npos) << err;
  // Another prompts file (same name, new content).
  write_jsonl(prompts, {kPrompts[0], kPrompts[1]});
  err = error_of([&] { capture(*model_, "smollm2", part); });
  EXPECT_NE(err.find("prompts file differs"), std::string::npos) << err;
}

TEST_F(Capture, BadPromptsFilesNameTheLine) {
  TempDir tmp;
  auto err_for = [&](const std::string& text, const std::string& mode = "generate") {
    const std::string p = tmp.str("bad.jsonl");
    write_file_atomic(p, text);
    CaptureOptions o = base_options(p, tmp.str("out_" + mode));
    o.mode = mode;
    if (mode == "score") o.samples_per_prompt = 1;
    return error_of([&] { capture(*model_, "smollm2", o); });
  };
  std::string e = err_for("{\"prompt\": \"ok\"}\n{\"text\": \"no prompt\"}\n");
  EXPECT_NE(e.find("bad.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(e.find("\"prompt\""), std::string::npos) << e;
  e = err_for("{\"prompt\": 3}\n");
  EXPECT_NE(e.find("bad.jsonl:1"), std::string::npos) << e;
  e = err_for("{\"messages\": [{\"role\": \"user\"}]}\n");
  EXPECT_NE(e.find("\"content\""), std::string::npos) << e;
  e = err_for("{\"prompt\": \"a\"}\nnot json\n");
  EXPECT_NE(e.find("bad.jsonl:2"), std::string::npos) << e;
  e = err_for("{\"prompt\": \"a\", \"completion\": \"b\"}\n{\"prompt\": \"c\"}\n", "score");
  EXPECT_NE(e.find("bad.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(e.find("\"completion\""), std::string::npos) << e;
  e = err_for("\n\n");
  EXPECT_NE(e.find("no prompts"), std::string::npos) << e;
  // Nothing was written for the failed runs.
  EXPECT_FALSE(fs::exists(tmp.str("out_generate")));
  // Bad options.
  write_jsonl(tmp.str("ok.jsonl"), kPrompts);
  CaptureOptions o = base_options(tmp.str("ok.jsonl"), tmp.str("o"));
  o.k = 0;
  EXPECT_NE(error_of([&] { capture(*model_, "smollm2", o); }).find("--k"), std::string::npos);
  o = base_options(tmp.str("ok.jsonl"), tmp.str("o"));
  o.mode = "score";
  EXPECT_NE(error_of([&] { capture(*model_, "smollm2", o); }).find("--samples"), std::string::npos);
}

namespace {

// Runs the CLI with stderr merged into the output; returns the exit status.
int run_cli(const std::string& args, std::string* out) {
  std::string cmd = std::string(RETORT_CLI_PATH) + " " + args + " 2>&1";
  FILE* f = popen(cmd.c_str(), "r");
  if (!f) return -1;
  char buf[4096];
  size_t n;
  out->clear();
  while ((n = fread(buf, 1, sizeof buf, f)) > 0) out->append(buf, n);
  int st = pclose(f);
  return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

}  // namespace

TEST_F(Capture, Cli) {
  TempDir tmp;
  std::string out;
  write_file_atomic(tmp.str("bad.jsonl"), "{\"prompt\": \"hi\"}\n{\"messages\": \"oops\"}\n");
  int rc = run_cli(cat("capture --teacher ", default_model_path(), " --prompts ", tmp.str("bad.jsonl"), " --out ",
                       tmp.str("store"), " --quiet"),
                   &out);
  EXPECT_NE(rc, 0) << out;
  EXPECT_NE(out.find("bad.jsonl:2"), std::string::npos) << out;
  EXPECT_NE(out.find("\"messages\""), std::string::npos) << out;

  write_jsonl(tmp.str("ok.jsonl"), kPrompts);
  rc = run_cli(cat("capture --teacher ", default_model_path(), " --prompts ", tmp.str("ok.jsonl"), " --out ",
                   tmp.str("store"), " --limit 1 --samples 2 -n 4 --k 3 --seed 9 --threads 2 --quiet"),
               &out);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("captured 2 samples"), std::string::npos) << out;
  EXPECT_NE(out.find("tok/s"), std::string::npos) << out;
  SignalStore st = SignalStore::open(tmp.str("store"));
  EXPECT_EQ(st.n_samples(), 2);
  EXPECT_EQ(st.manifest().k, 3);
  EXPECT_FALSE(st.manifest().complete);
}

// Score mode closes a chat completion with the template's end-of-turn token, as a generated
// completion ends with its stop token; a completion that already carries the marker gets it once;
// a raw (--no-chat) completion gets none.
TEST_F(Capture, ScoreModeEndsChatTurnsWithEndOfTurnToken) {
  TempDir tmp;
  const auto& tok = *model_->tokenizer;
  const int32_t im_end = tok.encode("<|im_end|>", true, false).at(0);
  const json plain = {{"prompt", "Say hi."}, {"completion", "Hi there!"}};
  const json marked = {{"prompt", "Say hi."}, {"completion", "Hi there!<|im_end|>"}};
  const std::string path = tmp.str("pairs.jsonl");
  write_jsonl(path, {plain, marked});
  const std::vector<int32_t> body = tok.encode("Hi there!", false, false);
  for (bool chat : {true, false}) {
    SCOPED_TRACE(chat ? "chat" : "raw");
    CaptureOptions o = base_options(path, tmp.str(chat ? "chat" : "raw"));
    o.mode = "score";
    o.samples_per_prompt = 1;
    o.chat = chat;
    capture(*model_, "smollm2", o);
    SignalStore store = SignalStore::open(o.out_dir);  // the samples point into it
    auto got = by_id(store);
    const SignalSample& s = got.at(0);
    std::vector<int32_t> want = body;
    if (chat) want.push_back(im_end);
    EXPECT_EQ(std::vector<int32_t>(s.tokens + s.prompt_len, s.tokens + s.n_tokens), want);
    if (chat) {
      const SignalSample& m = got.at(1);
      EXPECT_EQ(std::vector<int32_t>(m.tokens + m.prompt_len, m.tokens + m.n_tokens), want);
      // The end-of-turn position is scored like the others: the teacher's logprob of stopping there.
      EXPECT_LT(s.token_logprob[s.completion_len() - 1], 0.0f);
      EXPECT_GT(s.token_logprob[s.completion_len() - 1], -30.0f);
    }
  }
}

// Checks of the shipped distillation prompt set, data/prompts/{train,heldout}.jsonl: every line is a
// JSON object with a non-empty "prompt" string (at most kMaxPromptBytes of valid UTF-8, no control
// characters but newline and tab) and a non-empty "category" string; the files hold at least
// 400 / 60 prompts; no prompt repeats within or across the files after lowercasing and collapsing
// whitespace (so a held-out prompt is never also a training prompt); every category has at least
// kMinPerCategory training prompts and every held-out category also occurs in train.
// The checker is a plain function that returns its findings, so it is also run on small broken
// files written here, to show that each rule actually fires.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "retort/io/jsonl.h"
#include "retort/util/error.h"

namespace {

namespace fs = std::filesystem;

const std::string kPromptDir = std::string(RETORT_SOURCE_DIR) + "/data/prompts";
constexpr size_t kMaxPromptBytes = 600;
constexpr int kMinTrain = 400;
constexpr int kMinHeldout = 60;
constexpr int kMinPerCategory = 10;

// True when `s` is well-formed UTF-8 (RFC 3629): shortest form only, no surrogates
// (U+D800..U+DFFF), nothing above U+10FFFF. Written here rather than trusting the JSON parser.
bool is_valid_utf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<unsigned char>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (b0 < 0x80) { ++i; continue; }
    if ((b0 & 0xE0) == 0xC0) { len = 2; cp = b0 & 0x1F; }
    else if ((b0 & 0xF0) == 0xE0) { len = 3; cp = b0 & 0x0F; }
    else if ((b0 & 0xF8) == 0xF0) { len = 4; cp = b0 & 0x07; }
    else return false;  // a continuation byte or 0xF8..0xFF where a character should start
    if (i + len > s.size()) return false;
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<unsigned char>(s[i + k]);
      if ((b & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (b & 0x3F);
    }
    const uint32_t min_cp = len == 2 ? 0x80 : len == 3 ? 0x800 : 0x10000;
    if (cp < min_cp || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// The key two prompts are compared by: ASCII-lowercased, runs of whitespace collapsed to one
// space, leading/trailing whitespace dropped ("Hello,\n  World " -> "hello, world").
std::string dedup_key(const std::string& s) {
  std::string out;
  bool pending_space = false;
  for (char c : s) {
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
      pending_space = !out.empty();
      continue;
    }
    if (pending_space) out += ' ';
    pending_space = false;
    out += (c >= 'A' && c <= 'Z') ? static_cast<char>(c - 'A' + 'a') : c;
  }
  return out;
}

struct PromptSetReport {
  int n_train = 0;
  int n_heldout = 0;
  std::map<std::string, int> train_per_category;
  std::map<std::string, int> heldout_per_category;
  std::vector<std::string> problems;  // one line each, "file:line: what is wrong"
};

// Reads one file into `seen` (dedup key -> "file:line" of its first occurrence) and the report.
void check_file(const std::string& path, bool is_train, std::map<std::string, std::string>& seen,
                PromptSetReport& r) {
  const std::string name = fs::path(path).filename().string();
  try {
    retort::for_each_jsonl_object(path, [&](const nlohmann::json& obj, int64_t line) {
      const std::string where = name + ":" + std::to_string(line);
      auto p = obj.find("prompt");
      if (p == obj.end() || !p->is_string()) {
        r.problems.push_back(where + ": \"prompt\" missing or not a string");
        return;
      }
      const std::string& prompt = p->get_ref<const std::string&>();
      if (dedup_key(prompt).empty()) r.problems.push_back(where + ": empty prompt");
      if (prompt.size() > kMaxPromptBytes)
        r.problems.push_back(where + ": prompt is " + std::to_string(prompt.size()) + " bytes (max " +
                             std::to_string(kMaxPromptBytes) + ")");
      if (!is_valid_utf8(prompt)) r.problems.push_back(where + ": prompt is not valid UTF-8");
      for (char c : prompt) {
        if (static_cast<unsigned char>(c) < 0x20 && c != '\n' && c != '\t') {
          r.problems.push_back(where + ": prompt has a control character");
          break;
        }
      }
      auto c = obj.find("category");
      if (c == obj.end() || !c->is_string() || c->get_ref<const std::string&>().empty()) {
        r.problems.push_back(where + ": \"category\" missing, not a string, or empty");
        return;
      }
      const std::string& category = c->get_ref<const std::string&>();
      const std::string key = dedup_key(prompt);
      auto [it, inserted] = seen.emplace(key, where);
      if (!inserted) r.problems.push_back(where + ": duplicate of " + it->second);
      if (is_train) {
        ++r.n_train;
        ++r.train_per_category[category];
      } else {
        ++r.n_heldout;
        ++r.heldout_per_category[category];
      }
    });
  } catch (const retort::Error& e) {
    r.problems.push_back(e.what());
  }
}

PromptSetReport check_prompt_set(const std::string& train_path, const std::string& heldout_path) {
  PromptSetReport r;
  std::map<std::string, std::string> seen;
  check_file(train_path, /*is_train=*/true, seen, r);
  check_file(heldout_path, /*is_train=*/false, seen, r);
  if (r.n_train < kMinTrain)
    r.problems.push_back("train has " + std::to_string(r.n_train) + " prompts (need " +
                         std::to_string(kMinTrain) + ")");
  if (r.n_heldout < kMinHeldout)
    r.problems.push_back("heldout has " + std::to_string(r.n_heldout) + " prompts (need " +
                         std::to_string(kMinHeldout) + ")");
  for (const auto& [category, n] : r.train_per_category)
    if (n < kMinPerCategory)
      r.problems.push_back("category '" + category + "' has " + std::to_string(n) +
                           " train prompts (need " + std::to_string(kMinPerCategory) + ")");
  for (const auto& [category, n] : r.heldout_per_category)
    if (!r.train_per_category.count(category))
      r.problems.push_back("heldout category '" + category + "' does not occur in train");
  return r;
}

std::string join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

TEST(Prompts, ShippedSetPassesEveryRule) {
  const auto r = check_prompt_set(kPromptDir + "/train.jsonl", kPromptDir + "/heldout.jsonl");
  EXPECT_TRUE(r.problems.empty()) << join(r.problems);
  EXPECT_GE(r.n_train, kMinTrain);
  EXPECT_GE(r.n_heldout, kMinHeldout);
  // The brief asks for diverse categories; 15 are written, keep at least 12 of them.
  EXPECT_GE(r.train_per_category.size(), 12u);
}

// ---- the checker on small broken sets: each rule must fire --------------------------------------

class PromptCheckerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() /
           ("retort_test_prompts_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) +
            "_" + ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }

  // A valid set: `n_train` prompts in two categories (halves) and `n_heldout` in the first one.
  static std::vector<std::string> good_lines(int n, const std::string& tag) {
    std::vector<std::string> lines;
    for (int i = 0; i < n; ++i) {
      nlohmann::json j = {{"prompt", "Prompt number " + std::to_string(i) + " of " + tag + "."},
                          {"category", i % 2 ? "alpha" : "beta"}};
      lines.push_back(j.dump());
    }
    return lines;
  }
  std::string write(const std::string& name, const std::vector<std::string>& lines) {
    const std::string path = (dir_ / name).string();
    std::ofstream out(path, std::ios::binary);
    for (const auto& l : lines) out << l << "\n";
    return path;
  }
  // Runs the checker with `train`/`heldout` and returns its findings as one string.
  std::string problems(const std::vector<std::string>& train, const std::vector<std::string>& heldout) {
    const auto r = check_prompt_set(write("train.jsonl", train), write("heldout.jsonl", heldout));
    return join(r.problems);
  }

  fs::path dir_;
};

TEST_F(PromptCheckerTest, GoodSyntheticSetHasNoProblems) {
  EXPECT_EQ(problems(good_lines(kMinTrain, "train"), good_lines(kMinHeldout, "heldout")), "");
}

TEST_F(PromptCheckerTest, TooFewPrompts) {
  const auto p = problems(good_lines(kMinTrain - 1, "train"), good_lines(kMinHeldout - 1, "heldout"));
  EXPECT_NE(p.find("train has 399 prompts"), std::string::npos) << p;
  EXPECT_NE(p.find("heldout has 59 prompts"), std::string::npos) << p;
}

TEST_F(PromptCheckerTest, LineThatIsNotJsonNamesFileAndLine) {
  auto train = good_lines(kMinTrain, "train");
  train[6] = R"({"prompt": "unterminated)";
  const auto p = problems(train, good_lines(kMinHeldout, "heldout"));
  EXPECT_NE(p.find("train.jsonl:7: not valid JSON"), std::string::npos) << p;
}

TEST_F(PromptCheckerTest, MissingEmptyOrNonStringPrompt) {
  auto train = good_lines(kMinTrain, "train");
  train[0] = R"({"category": "alpha"})";
  train[1] = R"({"prompt": "  \n ", "category": "alpha"})";
  train[2] = R"({"prompt": 42, "category": "alpha"})";
  train[3] = R"(["prompt", "category"])";
  const auto p = problems(train, good_lines(kMinHeldout, "heldout"));
  EXPECT_NE(p.find("train.jsonl:1: \"prompt\" missing or not a string"), std::string::npos) << p;
  EXPECT_NE(p.find("train.jsonl:2: empty prompt"), std::string::npos) << p;
  EXPECT_NE(p.find("train.jsonl:3: \"prompt\" missing or not a string"), std::string::npos) << p;
  EXPECT_NE(p.find("train.jsonl:4: not a JSON object"), std::string::npos) << p;
}

TEST_F(PromptCheckerTest, MissingCategory) {
  auto heldout = good_lines(kMinHeldout, "heldout");
  heldout[4] = R"({"prompt": "Name three colors."})";
  heldout[5] = R"({"prompt": "Name three birds.", "category": ""})";
  const auto p = problems(good_lines(kMinTrain, "train"), heldout);
  EXPECT_NE(p.find("heldout.jsonl:5: \"category\" missing"), std::string::npos) << p;
  EXPECT_NE(p.find("heldout.jsonl:6: \"category\" missing"), std::string::npos) << p;
}

TEST_F(PromptCheckerTest, PromptLengthLimitIsInBytes) {
  auto train = good_lines(kMinTrain, "train");
  // 300 two-byte characters (U+00E9) = 600 bytes: allowed; one more ASCII byte: too long.
  std::string e_acute;
  for (int i = 0; i < 300; ++i) e_acute += "\xC3\xA9";
  train[10] = nlohmann::json({{"prompt", e_acute}, {"category", "alpha"}}).dump();
  train[11] = nlohmann::json({{"prompt", e_acute + "x"}, {"category", "alpha"}}).dump();
  const auto p = problems(train, good_lines(kMinHeldout, "heldout"));
  EXPECT_EQ(p.find("train.jsonl:11:"), std::string::npos) << p;
  EXPECT_NE(p.find("train.jsonl:12: prompt is 601 bytes"), std::string::npos) << p;
}

TEST_F(PromptCheckerTest, InvalidUtf8IsRejected) {
  auto train = good_lines(kMinTrain, "train");
  train[20] = "{\"prompt\": \"caf\xC3\", \"category\": \"alpha\"}";  // truncated two-byte sequence
  const auto p = problems(train, good_lines(kMinHeldout, "heldout"));
  // Either the JSON parser or the checker's own validator must report line 21.
  EXPECT_NE(p.find("train.jsonl:21:"), std::string::npos) << p;
}

TEST_F(PromptCheckerTest, Utf8Validator) {
  EXPECT_TRUE(is_valid_utf8("plain ASCII"));
  EXPECT_TRUE(is_valid_utf8("caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));  // é € 😀
  EXPECT_FALSE(is_valid_utf8("\xC3"));                                     // truncated
  EXPECT_FALSE(is_valid_utf8("\x80"));                                     // lone continuation
  EXPECT_FALSE(is_valid_utf8("\xC0\xAF"));                                 // overlong '/'
  EXPECT_FALSE(is_valid_utf8("\xE0\x80\xAF"));                             // overlong, 3 bytes
  EXPECT_FALSE(is_valid_utf8("\xED\xA0\x80"));                             // surrogate U+D800
  EXPECT_FALSE(is_valid_utf8("\xF4\x90\x80\x80"));                         // U+110000
  EXPECT_FALSE(is_valid_utf8("\xFF"));
}

TEST_F(PromptCheckerTest, ControlCharacterIsRejected) {
  auto train = good_lines(kMinTrain, "train");
  train[30] = nlohmann::json({{"prompt", std::string("bell\x07 here")}, {"category", "alpha"}}).dump();
  train[31] = nlohmann::json({{"prompt", "two\nlines\tand a tab"}, {"category", "alpha"}}).dump();
  const auto p = problems(train, good_lines(kMinHeldout, "heldout"));
  EXPECT_NE(p.find("train.jsonl:31: prompt has a control character"), std::string::npos) << p;
  EXPECT_EQ(p.find("train.jsonl:32:"), std::string::npos) << p;
}

TEST_F(PromptCheckerTest, DuplicatesWithinAndAcrossFilesAfterNormalizing) {
  auto train = good_lines(kMinTrain, "train");
  auto heldout = good_lines(kMinHeldout, "heldout");
  train[40] = R"({"prompt": "Explain why the sky is blue.", "category": "alpha"})";
  train[41] = R"({"prompt": "  explain WHY the sky\n  is blue. ", "category": "beta"})";
  heldout[7] = R"({"prompt": "EXPLAIN why the   sky is blue.", "category": "alpha"})";
  const auto p = problems(train, heldout);
  EXPECT_NE(p.find("train.jsonl:42: duplicate of train.jsonl:41"), std::string::npos) << p;
  EXPECT_NE(p.find("heldout.jsonl:8: duplicate of train.jsonl:41"), std::string::npos) << p;
  // Different punctuation is a different prompt (only case and whitespace are normalized).
  EXPECT_EQ(dedup_key("Hello,\n  World "), "hello, world");
  EXPECT_NE(dedup_key("Explain why the sky is blue."), dedup_key("Explain why the sky is blue?"));
}

TEST_F(PromptCheckerTest, SmallOrUnknownCategory) {
  auto train = good_lines(kMinTrain, "train");
  auto heldout = good_lines(kMinHeldout, "heldout");
  for (int i = 0; i < kMinPerCategory - 1; ++i)
    train[50 + i] = nlohmann::json({{"prompt", "Rare prompt " + std::to_string(i)}, {"category", "rare"}}).dump();
  heldout[0] = R"({"prompt": "Only in held-out.", "category": "orphan"})";
  const auto p = problems(train, heldout);
  EXPECT_NE(p.find("category 'rare' has 9 train prompts (need 10)"), std::string::npos) << p;
  EXPECT_NE(p.find("heldout category 'orphan' does not occur in train"), std::string::npos) << p;
}

}  // namespace

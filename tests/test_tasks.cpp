// Tests for retort/distill/tasks: every scoring rule with its edge cases, the task file's checks
// (a bad line names FILE:LINE and the field), the shipped task set, the accuracy and "kept"
// arithmetic, and `retort eval --tasks` end to end on the default teacher.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "retort/distill/tasks.h"
#include "retort/model/loader.h"
#include "retort/util/error.h"
#include "test_util.h"

namespace fs = std::filesystem;
using namespace retort;
using namespace retort_test;
using nlohmann::json;

namespace {

Task make(json j) {
  j["id"] = "t";
  j["category"] = "c";
  if (!j.contains("prompt")) j["prompt"] = "p";
  return parse_task(j, "test");
}

bool right(const json& j, const std::string& reply) { return score_task(make(j), reply).correct; }

std::string write_lines(const TempDir& dir, const std::string& name, const std::vector<std::string>& lines) {
  std::ofstream f(dir / name);
  for (const auto& l : lines) f << l << "\n";
  return dir / name;
}

const std::string kGood = R"({"id": "a", "category": "c", "prompt": "p", "check": "number", "answer": "5"})";

}  // namespace

TEST(Tasks, NormalizeLowercasesAndDropsPunctuation) {
  EXPECT_EQ(normalize_answer("  The Capital, of   FRANCE is Paris!! "), "the capital of france is paris");
  EXPECT_EQ(normalize_answer("don't"), "dont");
  EXPECT_EQ(normalize_answer("don\u2019t"), "dont");
  EXPECT_EQ(normalize_answer("Carbon-Dioxide (CO2)"), "carbon dioxide co2");
  EXPECT_EQ(normalize_answer("Día soleado"), "día soleado");  // non-ASCII kept as is
  EXPECT_EQ(normalize_answer("?!..."), "");
  EXPECT_EQ(normalize_answer(""), "");
}

TEST(Tasks, NumberIsTheLastOnTheFirstLine) {
  auto n = [](const char* s) { return reply_number(s); };
  EXPECT_EQ(n("2 + 3 = 5"), 5.0);               // the restated question does not count
  EXPECT_EQ(n("Half of 10 is 5."), 5.0);        // the final dot is not a decimal point
  EXPECT_EQ(n("12 divided by 3 is 3."), 3.0);   // wrong answers are read as given
  EXPECT_EQ(n("The total is 1,000 apples"), 1000.0);
  EXPECT_EQ(n("1, 2, 3"), 3.0);                  // a comma not followed by three digits separates
  EXPECT_EQ(n("It is -4"), -4.0);
  EXPECT_EQ(n("10-3"), 3.0);                     // a minus after a digit is not a sign
  EXPECT_EQ(n("about 3.5 km"), 3.5);
  EXPECT_EQ(n("A week has seven days."), 7.0);  // number words zero..twenty
  EXPECT_EQ(n("Twenty"), 20.0);
  EXPECT_EQ(n("the 3rd"), 3.0);
  EXPECT_EQ(n("\n\n  42\nbecause 6 * 7 = 41"), 42.0);  // only the first non-blank line
  EXPECT_FALSE(n("H2O is water").has_value());  // digits inside a word are not a number
  EXPECT_FALSE(n("I do not know").has_value());
  EXPECT_FALSE(n("").has_value());
  EXPECT_FALSE(n("\n\n").has_value());

  json t = {{"check", "number"}, {"answer", "5"}};
  EXPECT_TRUE(right(t, "2 + 3 = 5"));
  EXPECT_TRUE(right(t, "5.0"));
  EXPECT_FALSE(right(t, "2 + 3 = 6"));
  EXPECT_FALSE(right(t, "5 is what 2 + 3 makes"));  // last number on the line: 3
  EXPECT_EQ(score_task(make(t), "9 - 4 = 3").got, "3");
  EXPECT_EQ(score_task(make(t), "no idea").got, "");
  EXPECT_TRUE(right({{"check", "number"}, {"answer", 0.5}}, "one half is 0.5"));  // a JSON number answer
}

TEST(Tasks, ContainsMatchesWholeWordsOfAnyRightAnswer) {
  json t = {{"check", "contains"}, {"answer", "Paris"}};
  EXPECT_TRUE(right(t, "The capital of France is Paris."));
  EXPECT_TRUE(right(t, "PARIS!"));
  EXPECT_FALSE(right(t, "Parisian food"));  // whole words only
  EXPECT_FALSE(right(t, ""));
  json multi = {{"check", "contains"}, {"answer", "carbon dioxide"}, {"accept", {"CO2"}}};
  EXPECT_TRUE(right(multi, "Plants take in carbon-dioxide."));
  EXPECT_TRUE(right(multi, "They absorb CO2"));
  EXPECT_FALSE(right(multi, "carbon and dioxide"));
  EXPECT_EQ(score_task(make(multi), "They absorb CO2").got, "CO2");
}

TEST(Tasks, StartsWithReadsTheFirstWords) {
  json t = {{"check", "starts_with"}, {"answer", "no"}};
  EXPECT_TRUE(right(t, "No, 7 is not an even number."));
  EXPECT_TRUE(right(t, "  no."));
  EXPECT_FALSE(right(t, "Nothing is certain"));
  EXPECT_FALSE(right(t, "Yes, no doubt"));
  EXPECT_EQ(score_task(make(t), "Yes, no doubt").got, "yes");
  EXPECT_TRUE(right({{"check", "starts_with"}, {"answer", "Sure thing"}}, "Sure, thing: here"));
}

TEST(Tasks, ChoiceFindsTheAnswerLetter) {
  const std::vector<std::string> ch = {"Carrot", "Apple", "Potato", "Onion"};
  auto l = [&](const char* s) { return reply_letter(s, ch); };
  EXPECT_EQ(l("B"), 'B');
  EXPECT_EQ(l(" B. Apple"), 'B');
  EXPECT_EQ(l("(B)"), 'B');
  EXPECT_EQ(l("B) Apple"), 'B');
  EXPECT_EQ(l("C:"), 'C');
  EXPECT_EQ(l("D\nbecause"), 'D');
  EXPECT_EQ(l("A. Carrot\n\nThe correct answer is D. Onion."), 'A');  // rule 1 first
  EXPECT_EQ(l("I think the answer is C."), 'C');                      // rule 2
  EXPECT_EQ(l("Answer: (D)"), 'D');
  EXPECT_EQ(l("An apple, of course."), 'B');                          // rule 3: one option's text
  EXPECT_FALSE(l("A dog is not a vegetable").has_value());            // an article is no letter
  EXPECT_FALSE(l("Apple or carrot").has_value());                     // two options: no answer
  EXPECT_FALSE(l("E.").has_value());                                  // only A..D exist
  EXPECT_FALSE(l("").has_value());
  EXPECT_FALSE(reply_letter("A", {}).has_value());

  json t = {{"check", "choice"}, {"choices", ch}, {"answer", "B"}};
  EXPECT_TRUE(right(t, "B. Apple"));
  EXPECT_FALSE(right(t, "A. Carrot"));
  EXPECT_FALSE(right(t, "I am not sure"));
  EXPECT_EQ(task_expected(make(t)), "B (Apple)");
}

TEST(Tasks, FormatRules) {
  EXPECT_EQ(count_words("Bright hot star."), 3);
  EXPECT_EQ(count_words("  Sun - hot  "), 2);  // a lone dash is no word
  EXPECT_EQ(count_words("día soleado claro"), 3);
  EXPECT_EQ(count_words(""), 0);
  EXPECT_TRUE(right({{"check", "word_count"}, {"n", 3}}, "Bright, hot, star!"));
  EXPECT_FALSE(right({{"check", "word_count"}, {"n", 3}}, "Sun: Sunshine"));
  EXPECT_EQ(score_task(make({{"check", "word_count"}, {"n", 1}}), "Blue").got, "1 word");

  EXPECT_EQ(count_lines("Red\nBlue\n\n  \nGreen\n"), 3);
  EXPECT_EQ(count_lines(""), 0);
  EXPECT_TRUE(right({{"check", "line_count"}, {"n", 2}}, "1. Cat\n2. Dog"));
  EXPECT_FALSE(right({{"check", "line_count"}, {"n", 3}}, "Here are three:\nRed\nBlue\nGreen"));

  EXPECT_TRUE(right({{"check", "uppercase"}}, "HELLO, WORLD! 123"));
  EXPECT_FALSE(right({{"check", "uppercase"}}, "Hello"));
  EXPECT_FALSE(right({{"check", "uppercase"}}, "123 !"));  // needs a letter
  EXPECT_TRUE(right({{"check", "lowercase"}}, "hello there."));
  EXPECT_FALSE(right({{"check", "lowercase"}}, "The sky"));
  EXPECT_EQ(score_task(make({{"check", "lowercase"}}), "The sky").got, "mixed case");
  // With an answer, the reply must also hold it: junk in the right case is not an answer.
  json dog = {{"check", "lowercase"}, {"answer", "dog"}};
  EXPECT_TRUE(right(dog, "dog."));
  EXPECT_FALSE(right(dog, "the the the"));
  EXPECT_FALSE(right(dog, "Dog"));
  EXPECT_EQ(score_task(make(dog), "the the").got, "lowercase, without \"dog\"");
  EXPECT_TRUE(right({{"check", "uppercase"}, {"answer", "good morning"}}, "GOOD MORNING!"));
  EXPECT_EQ(task_expected(make(dog)), "all lowercase, containing dog");

  json j = {{"check", "json_key"}, {"key", "name"}};
  EXPECT_TRUE(right(j, R"({"name": "Mara"})"));
  EXPECT_TRUE(right(j, "Here:\n```json\n{\n  \"name\": 1,\n  \"x\": [2]\n}\n```"));
  EXPECT_FALSE(right(j, R"({"nam": "Mara"})"));
  EXPECT_FALSE(right(j, R"({"name": "Mara")"));  // truncated
  EXPECT_FALSE(right(j, "name: Mara"));
  EXPECT_FALSE(right(j, R"({name: 'Mara'})"));    // not JSON
  EXPECT_EQ(score_task(make(j), "name: Mara").got, "no JSON object");
  EXPECT_EQ(score_task(make(j), R"({name: 'Mara'})").got, "invalid JSON");
  EXPECT_EQ(score_task(make(j), R"({"name": "Mara"})").got, "\"name\": \"Mara\"");
}

TEST(Tasks, BadTaskFilesNameFileLineAndField) {
  TempDir dir;
  auto bad = [&](const std::string& line, std::initializer_list<std::string> parts) {
    const std::string f = write_lines(dir, "t.jsonl", {kGood, "", line});
    expect_error([&] { load_tasks(f); }, parts);
  };
  const std::string f = dir / "t.jsonl";
  bad("{\"id\": ", {f + ":3:", "not valid JSON"});
  bad("[1, 2]", {f + ":3:", "JSON object"});
  bad(R"({"category": "c", "prompt": "p", "check": "number", "answer": "5"})", {f + ":3:", "\"id\"", "missing"});
  bad(R"({"id": "b", "category": "c", "prompt": "", "check": "number", "answer": "5"})", {":3:", "\"prompt\"", "empty"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "regex", "answer": "5"})",
      {":3:", "\"check\"", "unknown rule \"regex\"", "json_key"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "number", "anwser": "5"})",
      {":3:", "unknown field \"anwser\""});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "number"})", {":3:", "needs field \"answer\""});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "number", "answer": "five"})",
      {":3:", "\"answer\" must be a number"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "number", "answer": "5", "max_tokens": "ten"})",
      {":3:", "\"max_tokens\" must be an integer"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "number", "answer": "5", "max_tokens": 0})",
      {":3:", "\"max_tokens\" must be in 1..4096"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "choice", "choices": ["x", "y"], "answer": "C"})",
      {":3:", "\"answer\" must be one letter A..B"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "choice", "choices": "x", "answer": "A"})",
      {":3:", "\"choices\" must be an array of strings"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "word_count", "n": 0})", {":3:", "\"n\" must be"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "word_count", "n": 2, "answer": "X"})",
      {":3:", "\"answer\" is not used by check \"word_count\""});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "lowercase", "answer": "--"})",
      {":3:", "no letter or digit"});
  bad(R"({"id": "b", "category": "c", "prompt": "p", "check": "contains", "answer": "?!"})",
      {":3:", "no letter or digit"});
  bad(R"({"id": "a", "category": "c", "prompt": "p", "check": "uppercase"})", {":3:", "\"id\"", "earlier line"});
  expect_error([&] { load_tasks(write_lines(dir, "empty.jsonl", {"", "  "})); }, {"empty.jsonl", "no tasks"});
  expect_error([&] { load_tasks(dir / "missing.jsonl"); }, {"missing.jsonl", "not found"});
  EXPECT_EQ(load_tasks(write_lines(dir, "ok.jsonl", {"", kGood, ""})).at(0).line, 2);
}

// The shipped set: loads, is large enough, uses every rule, balances its answer letters and yes/no.
TEST(Tasks, ShippedTaskSetIsSound) {
  const auto tasks = load_tasks(std::string(RETORT_SOURCE_DIR) + "/data/tasks/tasks.jsonl");
  EXPECT_GE(tasks.size(), 100u);
  EXPECT_LE(tasks.size(), 150u);
  std::map<std::string, int> cats, letters, yesno;
  std::set<std::string> checks;
  for (const auto& t : tasks) {
    ++cats[t.category];
    checks.insert(t.check);
    if (t.check == "choice") ++letters[t.answer];
    if (t.check == "starts_with" && (t.answer == "yes" || t.answer == "no") && t.category == "facts") ++yesno[t.answer];
    EXPECT_LE(t.max_tokens, 64) << t.id;  // short replies: the set runs in about a minute on 2 cores
  }
  for (const auto& [c, n] : cats) EXPECT_GE(n, 20) << c;
  EXPECT_EQ(checks.size(), task_checks().size());
  for (char l : {'A', 'B', 'C', 'D'}) EXPECT_GE(letters[std::string(1, l)], 5) << l;  // always "A" scores ~25%
  EXPECT_EQ(yesno["yes"], yesno["no"]);
}

TEST(Tasks, AccuracyAndTheShareKept) {
  std::vector<Task> tasks;
  for (int i = 0; i < 4; ++i) {
    Task t;
    t.id = std::to_string(i);
    t.category = i < 3 ? "math" : "format";
    t.check = "uppercase";
    tasks.push_back(t);
  }
  auto run = [](std::vector<bool> ok) {
    TaskRun r;
    for (bool b : ok) r.outcomes.push_back({b ? "YES" : "no", "stop", {b, ""}, 1});
    return r;
  };
  const TaskRun teacher = run({true, true, false, false}), student = run({true, false, false, true});
  json a = task_accuracy(tasks, teacher);
  EXPECT_EQ(a["overall"]["correct"], 2);
  EXPECT_DOUBLE_EQ(a["overall"]["accuracy"].get<double>(), 0.5);
  ASSERT_EQ(a["categories"].size(), 2u);
  EXPECT_EQ(a["categories"][0]["category"], "math");  // first-seen order
  json c = compare_task_runs(tasks, teacher, student);
  EXPECT_DOUBLE_EQ(c["overall"]["kept"].get<double>(), 1.0);  // 0.5 / 0.5
  EXPECT_DOUBLE_EQ(c["categories"][0]["kept"].get<double>(), 0.5);  // 1/3 over 2/3
  EXPECT_TRUE(c["categories"][1]["kept"].is_null());               // the teacher got none right
  ASSERT_EQ(c["items"].size(), 4u);
  EXPECT_EQ(c["items"][3]["student"]["reply"], "YES");
  EXPECT_EQ(c["items"][3]["expected"], "all uppercase");
  const std::string text = task_table_text(c);
  EXPECT_NE(text.find("math"), std::string::npos);
  EXPECT_NE(text.find("50.0%"), std::string::npos);
  EXPECT_NE(text.find("overall"), std::string::npos);
  EXPECT_THROW(task_accuracy(tasks, run({true})), Error);
}

// `retort eval --tasks` on the default teacher, against itself: greedy and chat formatted, so both
// columns are the same replies and the student keeps exactly 100%; the easy sums come out right.
TEST(Tasks, EvalTasksEndToEnd) {
  const std::string model = smollm2_path();
  if (!fs::exists(model)) GTEST_SKIP() << "default model not found at " << model << " (run scripts/setup.sh)";
  TempDir dir;
  const std::string f = write_lines(
      dir, "tasks.jsonl",
      {R"({"id": "a1", "category": "arithmetic", "prompt": "What is 2 + 3? Reply with just the number.", "check": "number", "answer": "5", "max_tokens": 12})",
       R"({"id": "a2", "category": "arithmetic", "prompt": "What is 4 + 4? Reply with just the number.", "check": "number", "answer": "8", "max_tokens": 12})",
       R"({"id": "f1", "category": "facts", "prompt": "What is the capital of France? Answer in one word.", "check": "contains", "answer": "Paris", "max_tokens": 12})"});
  const std::string cmd = cat(RETORT_CLI_PATH, " eval --model ", model, " --teacher ", model, " --tasks ", f,
                              " --json --threads 2 2>", dir / "stderr.txt");
  std::string out;
  FILE* p = popen(cmd.c_str(), "r");
  ASSERT_NE(p, nullptr);
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  ASSERT_EQ(pclose(p), 0) << cmd << "\n" << out;
  json j = json::parse(out);
  const json& t = j["tasks"];
  EXPECT_EQ(t["overall"]["n"], 3);
  EXPECT_DOUBLE_EQ(t["overall"]["kept"].get<double>(), 1.0);
  ASSERT_EQ(t["items"].size(), 3u);
  for (const auto& it : t["items"]) EXPECT_EQ(it["teacher"]["reply"], it["student"]["reply"]) << it.dump();
  EXPECT_TRUE(t["items"][0]["teacher"]["correct"].get<bool>()) << t["items"][0].dump();  // "2 + 3 = 5"
  EXPECT_TRUE(t["items"][2]["teacher"]["correct"].get<bool>()) << t["items"][2].dump();
  EXPECT_EQ(t["categories"][0]["category"], "arithmetic");

  // A malformed file: exit status 1, FILE:LINE and the field named, before any model loads.
  const std::string badf = write_lines(dir, "bad.jsonl", {R"({"id": "x", "category": "c", "prompt": "p", "check": "number"})"});
  p = popen(cat(RETORT_CLI_PATH, " eval --model ", model, " --tasks ", badf, " 2>&1").c_str(), "r");
  ASSERT_NE(p, nullptr);
  out.clear();
  for (size_t n; (n = fread(buf, 1, sizeof buf, p)) > 0;) out.append(buf, n);
  const int status = pclose(p);
  EXPECT_EQ(WEXITSTATUS(status), 1) << out;
  EXPECT_NE(out.find(badf + ":1:"), std::string::npos) << out;
  EXPECT_NE(out.find("\"answer\""), std::string::npos) << out;
}
